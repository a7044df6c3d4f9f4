"""Keyboard figuration: a score's held chords played the way a pianist's left hand plays them.

The training corpus is choral and string music written as block chords, its voices struck together and held; a
piano primer's accompaniment moves instead: Alberti basses, broken chords, a waltz's bass then chord. Continuing
one, the models wrote the band of held chords they learned (issue #17). Each draw of a piece can be "figured" at
random: wherever three or more notes are struck together and the lower ones hold for a while, the top note (the
tune) stays as written and the lower notes (the harmony) are played as one figure of the piece's pattern, in equal
steps of a fraction of a second, the bass now and then doubled an octave below. Same harmony, same tune, a
keyboard texture. A melody alone is never touched. It works on the scored notes, before the expressive
performance (trainer/expressive.py) plays them with rubato, pedal and dynamics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.codecs import DEFAULT
from core.midi import Performance, canonical
from trainer.expressive import change_notes

LOWEST_KEY = 21  # A0: a bass doubled or moved an octave down never goes below the piano (also trainer.register)
# Which of a chord's lower notes (0: the bass, ..., top: the highest of them) sound at each step of a figure.
PATTERNS = ("alberti", "arpeggio", "bass-chord")


@dataclass(frozen=True)
class Figuration:
    """How often and how a piece is figured; (low, high) pairs are drawn uniformly per piece."""

    probability: float = 0.5  # of draws that are figured (the rest stay as scored)
    step: tuple[float, float] = (0.12, 0.3)  # seconds per step of a figure (about an eighth to a sixteenth)
    shortest: float = 0.35  # a chord whose lower notes hold less than this stays as written
    articulation: tuple[float, float] = (0.6, 1.0)  # share of its step a figure's note sounds
    bass_octave: float = 0.5  # probability a figured piece's basses are doubled an octave below

    def __post_init__(self) -> None:
        from core.errors import ModelError

        if not 0.0 <= self.probability <= 1.0:
            raise ModelError(f"figuration probability must be in [0, 1], got {self.probability}")
        if not 0.0 <= self.bass_octave <= 1.0:
            raise ModelError(f"figuration bass_octave must be in [0, 1], got {self.bass_octave}")
        for name in ("step", "articulation"):
            low, high = getattr(self, name)
            if not 0 < low <= high:
                raise ModelError(f"figuration {name} must be a (low, high) pair with 0 < low <= high, got "
                                 f"{(low, high)}")
        if self.shortest <= 0:
            raise ModelError(f"figuration shortest must be positive, got {self.shortest}")


def figure_voices(pattern: str, voices: int) -> list[tuple[int, ...]]:
    """One cycle of `pattern` over `voices` >= 2 lower notes: the voices (0 = bass) struck at each step."""
    top = voices - 1
    middle = tuple(range(1, top)) or (0,)
    if pattern == "alberti":  # bass, top, the middle, top
        return [(0,), (top,), middle, (top,)]
    if pattern == "arpeggio":  # up from the bass and back down
        return [(v,) for v in range(voices)] + [(v,) for v in range(top - 1, 0, -1)]
    if pattern == "bass-chord":  # oom-pah: the bass alone, then the rest together
        return [(0,), tuple(range(1, voices))]
    raise ValueError(f"unknown figure pattern {pattern!r}; known: {', '.join(PATTERNS)}")


def figure(perf: Performance, rng: np.random.Generator, figuration: Figuration = Figuration()) -> Performance:
    """The piece with its held chords' lower notes played as figures (one pattern, step and articulation drawn
    for the piece); every other note as it was."""
    if len(perf) == 0:
        return perf
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    step = rng.uniform(*figuration.step)
    articulation = rng.uniform(*figuration.articulation)
    double_bass = rng.random() < figuration.bass_octave
    onset, offset = perf.onset.astype(np.float64), perf.offset.astype(np.float64)
    pitch, velocity = perf.pitch.astype(np.int64), perf.velocity.astype(np.int64)
    keep = np.ones(len(perf), dtype=bool)
    new: list[tuple[float, float, int, int]] = []  # (onset, offset, pitch, velocity) of the figures' notes
    _, first, count = np.unique(onset, return_index=True, return_counts=True)  # each onset's first note, sorted
    for begin, size in zip(first[count >= 3].tolist(), count[count >= 3].tolist(), strict=True):
        chord = np.arange(begin, begin + size)
        chord = chord[np.argsort(pitch[chord], kind="stable")]
        lower = chord[:-1]  # the top note is the tune
        start = onset[begin]
        span = float(offset[lower].min()) - start
        if span < figuration.shortest:
            continue
        steps = max(2, int(round(span / step)))
        each = span / steps
        cycle = figure_voices(pattern, len(lower))
        loud = int(round(float(velocity[lower].mean())))
        for k in range(steps):
            for voice in cycle[k % len(cycle)]:
                at = start + k * each
                new.append((at, at + each * articulation, int(pitch[lower[voice]]), loud))
        for note in lower:  # a voice held past the figure sounds on, struck again where the figure ends
            if offset[note] - (start + span) >= each:
                new.append((start + span, float(offset[note]), int(pitch[note]), int(velocity[note])))
        keep[lower] = False
        bass = int(pitch[lower[0]]) - 12
        if double_bass and bass >= LOWEST_KEY:
            new.append((start, start + span, bass, loud))
    if keep.all():
        return perf
    added = np.array(new, dtype=np.float64).reshape(-1, 4)
    return canonical(np.concatenate([onset[keep], added[:, 0]]), np.concatenate([offset[keep], added[:, 1]]),
                     np.concatenate([pitch[keep], added[:, 2]]), np.concatenate([velocity[keep], added[:, 3]]))


def figure_ids(ids: np.ndarray, rng: np.random.Generator, figuration: Figuration = Figuration(),
               codec: str = DEFAULT) -> np.ndarray:
    """A figured piece (BOS ... EOS in, BOS ... EOS out, same dtype) in the codec named `codec`; with probability
    1 - `figuration.probability`, or when it has no chord to figure, the piece as it is."""
    ids = np.asarray(ids)
    if rng.random() >= figuration.probability:
        return ids
    return change_notes(ids, codec, lambda perf: figure(perf, rng, figuration))
