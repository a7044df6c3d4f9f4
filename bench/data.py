"""Where the benchmarks find real MIDI: ../shared/midi beside the clone (CI keeps it there), or RECITAL_SHARED_MIDI.

The test suite reads its own fixtures (tests/data); the benchmarks measure on real performances (MAESTRO, POP909,
MidiTok's multi-track files), which may not be redistributed, so they are never in the clone. A benchmark run
without them stops at once with one line saying where it looked, instead of measuring nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

SHARED_MIDI = Path(os.environ.get("RECITAL_SHARED_MIDI", Path(__file__).resolve().parents[2] / "shared" / "midi"))


def require_midi(path: str | Path) -> Path:
    """`path` when it is a MIDI file or a folder with .mid files in it; otherwise exit 1 with one line."""
    path = Path(path)
    found = path.is_file() if path.suffix.lower() in (".mid", ".midi") else path.is_dir() and any(path.glob("*.mid"))
    if not found:
        sys.exit(f"error: no MIDI data at {path}: the benchmarks read real MIDI from ../shared/midi beside the "
                 "clone (or from RECITAL_SHARED_MIDI), which this machine does not have")
    return path


def report_errors(run: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """`run(args)`'s exit status; a RecitalError (bad input, missing data) printed as one line, exit 1."""
    from core.errors import RecitalError

    try:
        return run(args)
    except RecitalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
