"""Convert music21's bundled corpus to MIDI files: the training data of the shipped default models.

    python -m trainer.recipes.music21_corpus [--out DIR] [--workers N] [--timeout S]

Needs `pip install music21` (a recipe dependency, not the app's). The output is a cache outside the repository
(default: <user cache dir>/recital/music21-midi), laid out as <collection>/<name>.mid, one file per piece: an ABC
file holding many tunes gives one file per tune (symusic reads ABC, one tune per call), and kern / MusicXML scores
go through music21 (slow, so in parallel, each with a time limit; a score whose repeat marks break the MIDI writer is
retried without them). A re-run converts only what is missing; `manifest.json` counts what was converted, skipped
and failed, by collection. MAESTRO is never part of this: it is our held-out expressive test.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path

import platformdirs

SCORE_SUFFIXES = {".mxl", ".xml", ".musicxml", ".krn"}
ABC_SUFFIX = ".abc"
# Roman-numeral analyses (.rntxt) and the theory exercises are not music to learn from.
SKIP_COLLECTIONS = {"theoryExercises", "demos", "leadSheet"}


def default_out_dir() -> Path:
    return Path(platformdirs.user_cache_dir("recital")) / "music21-midi"


@contextmanager
def _silenced():
    """Native parsers print warnings straight to fd 1/2; keep the progress output readable."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def split_abc(text: str) -> list[str]:
    """The tunes of an ABC file, each with the file header (lines before the first X:) in front."""
    blocks = re.split(r"(?m)^(?=X:)", text)
    header, tunes = blocks[0], [b for b in blocks[1:] if b.strip()]
    header = header if header.strip() else ""
    return [header + tune for tune in tunes]


def convert_abc(source: Path, out_dir: Path) -> Counter:
    """One MIDI file per tune of an ABC file; returns counts."""
    import symusic

    counts = Counter()
    text = source.read_text(encoding="latin-1")
    for index, tune in enumerate(split_abc(text)):
        target = out_dir / f"{source.stem}_{index:04d}.mid"
        if target.exists():
            counts["cached"] += 1
            continue
        try:
            with _silenced():
                score = symusic.Score.from_abc(tune)
        except Exception:
            counts["failed"] += 1
            continue
        if score.note_num() == 0:
            counts["empty"] += 1
            continue
        _write_atomic(target, score.dumps_midi())
        counts["converted"] += 1
    return counts


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout


def convert_score(source: Path, out_dir: Path, timeout: int) -> Counter:
    """A kern/MusicXML score through music21, under a time limit; repeats dropped if they break the writer."""
    import music21

    target = out_dir / f"{source.stem}.mid"
    if target.exists():
        return Counter(cached=1)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        with _silenced():
            score = music21.converter.parse(str(source))
            try:
                data = _midi_bytes(score)
            except Exception:
                for mark in list(score.recurse().getElementsByClass(("RepeatMark", "RepeatExpression"))):
                    mark.activeSite.remove(mark)
                for barline in score.recurse().getElementsByClass("Repeat"):
                    barline.activeSite.remove(barline)
                data = _midi_bytes(score)
    except _Timeout:
        return Counter(timeout=1)
    except Exception:
        return Counter(failed=1)
    finally:
        signal.alarm(0)
    _write_atomic(target, data)
    return Counter(converted=1)


def _midi_bytes(score) -> bytes:
    from music21 import midi

    midi_file = midi.translate.streamToMidiFile(score)
    return midi_file.writestr()


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)


def _convert_one(source: str, out_dir: str, timeout: int) -> tuple[str, dict]:
    path = Path(source)
    if path.suffix.lower() == ABC_SUFFIX:
        return source, dict(convert_abc(path, Path(out_dir)))
    return source, dict(convert_score(path, Path(out_dir), timeout))


def corpus_sources() -> list[tuple[str, Path]]:
    """(collection, path) of every file of music21's corpus that this recipe converts."""
    from music21 import corpus

    sources = []
    for path in sorted(corpus.getPaths()):
        path = Path(path)
        collection = path.parts[path.parts.index("corpus") + 1]
        suffix = path.suffix.lower()
        if collection in SKIP_COLLECTIONS or (suffix not in SCORE_SUFFIXES and suffix != ABC_SUFFIX):
            continue
        sources.append((collection, path))
    return sources


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out_dir())
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=int, default=120, help="seconds allowed per score")
    parser.add_argument("--only", help="convert only collections whose name contains this text")
    args = parser.parse_args(argv)
    try:
        sources = corpus_sources()
    except ImportError:
        print("error: this recipe needs music21: pip install music21", file=sys.stderr)
        return 1
    if args.only:
        sources = [(c, p) for c, p in sources if args.only in c]
    totals: dict[str, Counter] = {}
    started = time.time()
    with ProcessPoolExecutor(args.workers) as pool:
        futures = {pool.submit(_convert_one, str(path), str(args.out / collection), args.timeout): collection
                   for collection, path in sources}
        for done, future in enumerate(as_completed(futures), 1):
            collection = futures[future]
            _, counts = future.result()
            totals.setdefault(collection, Counter()).update(counts)
            if done % 50 == 0 or done == len(futures):
                print(f"\r{done}/{len(futures)} files, {time.time() - started:.0f} s", end="", file=sys.stderr)
    print(file=sys.stderr)
    kinds = ["converted", "cached", "empty", "failed", "timeout"]
    print(f"{'collection':<22}" + "".join(f"{k:>10}" for k in kinds))
    for collection in sorted(totals):
        print(f"{collection:<22}" + "".join(f"{totals[collection][k]:>10}" for k in kinds))
    manifest = {c: dict(v) for c, v in sorted(totals.items())}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    print(f"MIDI files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
