"""`recital corpus FOLDER`: scan and cache a folder of MIDI files, then print what was found.

A file that cannot be read is listed with its reason and skipped; the command fails (exit 1) only when the
folder has no MIDI files or none of them can be read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

from core.errors import MidiError

HELP = "scan and cache a folder of MIDI files (recursively) for fine-tuning"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder to scan (.mid, .midi, .kar in any sub-folder)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="processes that read files in parallel (default: one per CPU core)")
    parser.add_argument("--no-cache", action="store_true",
                        help="read and encode every file again instead of reusing cached results")


def run(args: argparse.Namespace) -> int:
    from trainer.corpus import Corpus

    bar = ProgressBar(sys.stderr, "reading") if sys.stderr.isatty() else None
    try:
        corpus = Corpus.build(args.folder, workers=args.workers, use_cache=not args.no_cache,
                              progress=bar.update if bar else None)
    finally:
        if bar:
            bar.close()
    summary = corpus.summary
    print(f"corpus of {summary.folder}")
    rows = summary.rows()
    if summary.unended:  # notes a NoteOn started and no NoteOff ended: kept, ended at their track's end
        rows.append(("notes never ended", f"{summary.unended:,} (kept, ended where their track ends)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if summary.skipped:
        print("skipped:")
        for skipped in summary.skipped:
            print(f"  {_relative(skipped.path, summary.folder)}: {skipped.reason}")
    if summary.duplicates:
        print("duplicates (kept once):")
        for duplicate in summary.duplicates:
            print(f"  {_relative(duplicate.path, summary.folder)} = "
                  f"{_relative(duplicate.same_as, summary.folder)}")
    if len(corpus) == 0:
        raise MidiError(summary.folder, f"none of the {summary.files} MIDI files could be read")
    return 0


class ProgressBar:
    """A one-line progress bar redrawn in place (at most 10 times a second) on a terminal stream."""

    def __init__(self, stream: TextIO, label: str, width: int = 30):
        self.stream, self.label, self.width = stream, label, width
        self.last_draw = 0.0
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} files")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Erase the bar so the table that follows starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _relative(path: str, folder: str) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
