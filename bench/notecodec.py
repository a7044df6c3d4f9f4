"""A note-level codec (issue #17, cause 1, arm (a)): each note carries its duration at its onset.

The event codec (core/tokenizer.py) ends a note with a NoteOff, possibly hundreds of ids after its NoteOn, so a
model with a bounded memory loses track of what it left sounding. Here a note is whole where it starts (as Aria's
absolute tokenizer and the Anticipatory Music Transformer's arrival-time triplets): per note, a Velocity id when
the velocity bin changes, its Pitch id, then its Duration id; TimeShift ids move the clock between onsets. An
experiment until bench/sounding.py has measured it against the sounding-notes input; nothing ships it.

Id layout (VOCAB_SIZE = 327):

    0            PAD, 1 BOS, 2 EOS (as core/tokenizer.py: the models' BOS and PAD handling is unchanged)
    3 ..130      Pitch_<pitch>          pitch 0..127, the note's onset
    131..194     Duration_<ticks>       64 bins: 1..16 ticks exactly (10-160 ms), then 48 log-spaced up to 800
    195..294     TimeShift_<ms>ms       10 ms .. 1000 ms in 10 ms steps (longer gaps: several shifts)
    295..326     Velocity_<bin>         the 32 bins of core/tokenizer.py; only when the bin changes

Time is the event codec's 10 ms grid: onsets are exact on it. A duration is rounded to the grid (at least one tick),
then to its nearest bin in log scale: exact up to 160 ms, within MAX_DURATION_ERROR (5.6%) of itself from there
to 8 s (bins are whole ticks: 18 lies between the bins 17 and 19); a note longer than 8 s is 8 s (the last bin:
what `recital generate --max-note` allows). Notes of one onset are in pitch order. `decode` never raises: a
Pitch not followed at once by its Duration is dropped, a Duration with no Pitch before it ignored, as are PAD, BOS
and unknown ids; it stops at EOS. A key struck again while its note still sounds ends that note there, as a piano
(core.midi.canonical).
"""

from __future__ import annotations

import numpy as np

from core.midi import Performance, canonical
from core.tokenizer import (
    BOS,
    DEFAULT_VELOCITY_BIN,
    EOS,
    PAD,
    TICK_SECONDS,
    VELOCITY_BINS,
    bin_velocity,
    velocity_bin,
)

PITCH = 3
DURATION = PITCH + 128
EXACT_TICKS = 16  # durations of 1..16 ticks have a bin each
LONGEST_TICKS = 800  # 8 s, the last bin
DURATION_BINS = 64
TIME_SHIFT = DURATION + DURATION_BINS
MAX_SHIFT_TICKS = 100  # one TimeShift spans at most 1 s
VELOCITY = TIME_SHIFT + MAX_SHIFT_TICKS
VOCAB_SIZE = VELOCITY + VELOCITY_BINS

_RATIO = (LONGEST_TICKS / EXACT_TICKS) ** (1 / (DURATION_BINS - EXACT_TICKS))
# Each bin's length in ticks: 1..16, then 16 * r^k rounded (r ~ 1.085, so no two coincide), the last exactly 800.
BIN_TICKS = np.concatenate([np.arange(1, EXACT_TICKS + 1),
                            np.round(EXACT_TICKS * _RATIO ** np.arange(1, DURATION_BINS - EXACT_TICKS + 1))]
                           ).astype(np.int64)
# A duration goes to the bin nearest it in log scale: the boundaries are the neighbours' geometric means.
_EDGES = np.sqrt(BIN_TICKS[:-1] * BIN_TICKS[1:].astype(np.float64))
# The largest relative error of a duration of whole ticks between 1 and 800 (the rounding from seconds to the
# grid comes before it, as in the event codec).
MAX_DURATION_ERROR = float(max(abs(BIN_TICKS[np.searchsorted(_EDGES, t)] - t) / t
                               for t in range(1, LONGEST_TICKS + 1)))


def duration_bin(ticks: np.ndarray) -> np.ndarray:
    """Durations in ticks (>= 1) -> bin 0..63 (the nearest in log scale; longer than 8 s: the last)."""
    return np.searchsorted(_EDGES, np.asarray(ticks, dtype=np.float64))


def token_name(token: int) -> str:
    """Readable name of one id, e.g. `Pitch_60`, `Duration_250ms`, `TimeShift_40ms`, `Velocity_20`."""
    token = int(token)
    names = {PAD: "PAD", BOS: "BOS", EOS: "EOS"}
    if token in names:
        return names[token]
    if PITCH <= token < DURATION:
        return f"Pitch_{token - PITCH}"
    if DURATION <= token < TIME_SHIFT:
        return f"Duration_{BIN_TICKS[token - DURATION] * 10}ms"
    if TIME_SHIFT <= token < VELOCITY:
        return f"TimeShift_{(token - TIME_SHIFT + 1) * 10}ms"
    if VELOCITY <= token < VOCAB_SIZE:
        return f"Velocity_{token - VELOCITY}"
    return f"Unknown_{token}"


def encode(perf: Performance, bos: bool = True, eos: bool = True) -> np.ndarray:
    """Token ids (uint16) of a performance, vectorised."""
    on_tick = np.floor(perf.onset / TICK_SECONDS + 0.5).astype(np.int64)
    off_tick = np.floor(perf.offset / TICK_SECONDS + 0.5).astype(np.int64)
    order = np.lexsort((perf.pitch, on_tick))
    on_tick, pitch = on_tick[order], perf.pitch[order].astype(np.int64)
    dbin = duration_bin(np.maximum(off_tick[order] - on_tick, 1))
    vbin = velocity_bin(perf.velocity[order].astype(np.int64))
    delta = np.diff(on_tick, prepend=0)
    n_shift = delta // MAX_SHIFT_TICKS + (delta % MAX_SHIFT_TICKS > 0)
    needs_velocity = vbin != np.concatenate([[-1], vbin[:-1]])  # the first note states its velocity
    per_note = n_shift + needs_velocity + 2
    start = np.cumsum(per_note) - per_note + int(bos)
    out = np.empty(int(per_note.sum()) + int(bos) + int(eos), dtype=np.uint16)
    if bos:
        out[0] = BOS
    if eos:
        out[-1] = EOS
    _write_shifts(out, start, delta)
    out[(start + n_shift)[needs_velocity]] = VELOCITY + vbin[needs_velocity]
    out[start + per_note - 2] = PITCH + pitch
    out[start + per_note - 1] = DURATION + dbin
    return out


def _write_shifts(out: np.ndarray, start: np.ndarray, delta: np.ndarray) -> None:
    """The TimeShift ids of gap delta[i] ticks from out[start[i]]: whole seconds, then the rest."""
    n_full = delta // MAX_SHIFT_TICKS
    remainder = delta % MAX_SHIFT_TICKS
    if n_full.any():
        within = np.arange(int(n_full.sum())) - np.repeat(np.cumsum(n_full) - n_full, n_full)
        out[np.repeat(start, n_full) + within] = TIME_SHIFT + MAX_SHIFT_TICKS - 1
    has_rest = remainder > 0
    out[(start + n_full)[has_rest]] = TIME_SHIFT + remainder[has_rest] - 1


def notes(ids, first: int = 0) -> tuple[list[tuple[float, float, int, int]], int]:
    """The notes of `ids` (up to the first EOS) whose Pitch id lies at index `first` or later, as (onset, offset,
    pitch, velocity), before same-pitch collisions are resolved; and the clock at the end, in ticks."""
    tick, velocity, pending = 0, bin_velocity(DEFAULT_VELOCITY_BIN), None
    found: list[tuple[float, float, int, int]] = []
    for index, token in enumerate(np.asarray(ids).ravel().astype(np.int64).tolist()):
        if token == EOS:
            break
        if DURATION <= token < TIME_SHIFT:
            if pending is not None and pending[0] >= first:
                onset = tick * TICK_SECONDS
                found.append((onset, onset + BIN_TICKS[token - DURATION] * TICK_SECONDS, pending[1], velocity))
            pending = None
            continue
        pending = None  # anything but a Duration after a Pitch drops it
        if PITCH <= token < DURATION:
            pending = (index, token - PITCH)
        elif TIME_SHIFT <= token < VELOCITY:
            tick += token - TIME_SHIFT + 1
        elif VELOCITY <= token < VOCAB_SIZE:
            velocity = bin_velocity(token - VELOCITY)
    return found, tick


def decode(ids) -> Performance:
    """Performance of any id sequence (reads up to the first EOS); never raises."""
    return _performance(notes(ids)[0])


def decode_after(primer, continuation) -> Performance:
    """The notes `continuation` starts after `primer` (whose clock and velocity carry over), times absolute."""
    primer = np.asarray(primer).ravel()
    return _performance(notes(np.concatenate([primer, np.asarray(continuation).ravel()]), first=len(primer))[0])


def _performance(found: list[tuple[float, float, int, int]]) -> Performance:
    onset, offset, pitch, velocity = zip(*found, strict=True) if found else ((), (), (), ())
    return canonical(onset, offset, pitch, velocity)


def ids_seconds(ids) -> float:
    """Seconds of music `ids` span (their TimeShifts)."""
    ids = np.asarray(ids).astype(np.int64)
    shifts = ids[(ids >= TIME_SHIFT) & (ids < VELOCITY)]
    return float((shifts - TIME_SHIFT + 1).sum()) * TICK_SECONDS


def shift_ticks(ids: np.ndarray) -> np.ndarray:
    """Ticks each id moves the clock by (0 for every id but a TimeShift)."""
    ids = np.asarray(ids).astype(np.int64)
    return np.where((ids >= TIME_SHIFT) & (ids < VELOCITY), ids - TIME_SHIFT + 1, 0)


def grammar() -> np.ndarray:
    """(VOCAB_SIZE, VOCAB_SIZE) bool: which ids may follow each id when continuing a piece. After a Pitch only a
    Duration; after anything else anything but a Duration or PAD, BOS, EOS (a continuation writes its seconds)."""
    after_other = np.ones(VOCAB_SIZE, dtype=bool)
    after_other[[PAD, BOS, EOS]] = False
    after_other[DURATION:TIME_SHIFT] = False
    allowed = np.tile(after_other, (VOCAB_SIZE, 1))
    allowed[PITCH:DURATION] = False
    allowed[PITCH:DURATION, DURATION:TIME_SHIFT] = True
    return allowed
