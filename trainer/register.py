"""Keyboard register: a score's bass line played an octave lower, as a pianist spreads a chorale over the keyboard.

Choral, string and folk scores sit in the middle of the keyboard, their voices close together; a pianist's hands are
far apart. Over 10 s windows (`python -m bench.texture`) MAESTRO's pitches span 39.8 semitones (3rd to 97th
percentile) and 38% of its notes lie below C4; the default recipe's draws, performed and figured, 26.1 and 31%; with
half of them re-voiced, 31.7 and 34%. Trained so for 85 minutes beside a control, the default DSMR's bits/s of
MAESTRO's continuations moved by 0.2 (issue #17, docs/piano-quality.md): a real difference, not one those bits
turn on. Each draw of a piece can be re-voiced at random: the notes that are the lowest sounding at their onset
while another note sounds (the bass line under the harmony) move an octave down where the piano has the key. A
tune alone is never touched, so a folk melody keeps its register. It works on the scored notes, after the keyboard
figuration (trainer/figuration.py) and before the expressive performance (trainer/expressive.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.codecs import DEFAULT
from core.midi import Performance, canonical
from trainer.expressive import change_notes
from trainer.figuration import LOWEST_KEY


@dataclass(frozen=True)
class Register:
    """How often a piece's bass line is moved an octave down."""

    probability: float = 0.5  # of draws re-voiced (the rest stay as scored)

    def __post_init__(self) -> None:
        from core.errors import ModelError

        if not 0.0 <= self.probability <= 1.0:
            raise ModelError(f"register probability must be in [0, 1], got {self.probability}")


def bass_notes(perf: Performance) -> np.ndarray:
    """(N,) bool: each note that is the lowest sounding at its onset while at least one other note sounds (struck
    with it or held from before). Notes of one onset are compared with each other and with the held ones."""
    onset, offset, pitch = perf.onset, perf.offset, perf.pitch.astype(np.int64)
    order = np.lexsort((pitch, onset))  # by onset, then pitch
    bass = np.zeros(len(perf), dtype=bool)
    held: list[tuple[float, int]] = []  # (offset, pitch) of the notes struck before the current onset
    start = 0
    while start < len(order):
        at = onset[order[start]]
        end = start
        while end < len(order) and onset[order[end]] == at:
            end += 1
        held = [(off, p) for off, p in held if off > at]  # still sounding
        lowest = order[start]  # the group's lowest (pitch order within an onset)
        below_held = all(pitch[lowest] < p for _, p in held)
        if below_held and (end - start > 1 or held):
            bass[lowest] = True
        held.extend((float(offset[i]), int(pitch[i])) for i in order[start:end])
        start = end
    return bass


def lower_bass(perf: Performance) -> Performance:
    """The piece with its bass line an octave down (a bass note the piano has no key for stays); itself when it has
    no bass line."""
    bass = bass_notes(perf) & (perf.pitch.astype(np.int64) - 12 >= LOWEST_KEY)  # a bass below A0 stays
    if not bass.any():
        return perf
    return canonical(perf.onset, perf.offset, perf.pitch.astype(np.int64) - 12 * bass, perf.velocity)


def lower_bass_ids(ids: np.ndarray, rng: np.random.Generator, register: Register = Register(),
                   codec: str = DEFAULT) -> np.ndarray:
    """A re-voiced piece (BOS ... EOS in, BOS ... EOS out, same dtype) in the codec named `codec`; with probability
    1 - `register.probability`, or when it has no bass line, the piece as it is."""
    ids = np.asarray(ids)
    if rng.random() >= register.probability:
        return ids
    return change_notes(ids, codec, lower_bass)
