"""Write assets/primers/primer.mid: the first eight bars of Bach's Prelude in C major (BWV 846), performed.

    .venv/bin/python scripts/make_primer.py

The bundled primer the README's first command continues. Public-domain music, written here note by note: each
bar is one chord broken into the prelude's pattern (bass held for the half bar, the second note held, three
sixteenths repeated), at 66 quarter notes per minute with a phrase-long swell, accents on the strong sixteenths
and a few milliseconds of seeded timing spread, so the primer is expressive as a composer's own playing is.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from core.midi import Performance, write_performance

OUT = Path(__file__).resolve().parents[1] / "assets" / "primers" / "primer.mid"
PITCHES = {"B3": 59, "C4": 60, "D4": 62, "E4": 64, "F#4": 66, "G4": 67, "A4": 69, "C5": 72, "D5": 74, "E5": 76,
           "F5": 77, "G5": 79, "A5": 81}
BARS = ["C4 E4 G4 C5 E5", "C4 D4 A4 D5 F5", "B3 D4 G4 D5 F5", "C4 E4 G4 C5 E5",
        "C4 E4 A4 E5 A5", "C4 D4 F#4 A4 D5", "B3 D4 G4 D5 G5", "B3 C4 E4 G4 C5"]
SIXTEENTH = 60 / 66 / 4  # seconds


def prelude(seed: int = 846) -> Performance:
    rng = np.random.default_rng(seed)
    notes = []  # (onset, offset, pitch, velocity)
    for bar, chord in enumerate(BARS):
        n = [PITCHES[name] for name in chord.split()]
        for half in range(2):
            start = (bar * 16 + half * 8) * SIXTEENTH
            swell = 58 + 8 * math.sin(math.pi * (bar * 2 + half) / 16)
            for i, pitch in enumerate([n[0], n[1], n[2], n[3], n[4], n[2], n[3], n[4]]):
                onset = max(start + i * SIXTEENTH + rng.normal(0, 0.006), 0.0)
                length = SIXTEENTH * (8 if i == 0 else 7 if i == 1 else 1.1)
                accent = 10 if i == 0 else 4 if i in (2, 5) else 0
                velocity = int(np.clip(swell + accent + rng.normal(0, 3), 30, 100))
                notes.append((onset, onset + length, pitch, velocity))
    notes.sort(key=lambda note: (note[0], note[2]))
    onset, offset, pitch, velocity = (np.array(column) for column in zip(*notes, strict=True))
    return Performance(onset, offset, pitch.astype(np.int16), velocity.astype(np.int16))


if __name__ == "__main__":
    perf = prelude()
    write_performance(perf, OUT)
    print(f"wrote {OUT}: {len(perf)} notes, {perf.duration:.1f} s")
