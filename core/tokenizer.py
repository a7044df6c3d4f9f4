"""The performance-event codec of Music Transformer / PerceiverS: notes in seconds <-> token ids.

Id layout (VOCAB_SIZE = 391):

    0            PAD       (ignored by every loss)
    1            BOS       (start of a piece)
    2            EOS       (end of a piece)
    3 ..130      NoteOn_<pitch>       pitch 0..127
    131..258     NoteOff_<pitch>      pitch 0..127
    259..358     TimeShift_<ms>ms     10 ms .. 1000 ms in 10 ms steps (longer gaps: several shifts)
    359..390     Velocity_<bin>       32 bins of 4 MIDI velocities; emitted only when the bin changes

Time is quantised to a 10 ms grid. At one grid step, note-offs come before note-ons (so a re-struck key
ends its previous note first), each sorted by pitch. `decode` never raises: unmatched note-offs are ignored,
a note-on of a sounding pitch re-strikes it, and notes still sounding at the end are closed there.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.midi import Performance

NAME = "performance"  # what a model directory records (config.json "tokenizer"); see core/codecs.py
PAD, BOS, EOS = 0, 1, 2
NOTE_ON = 3
NOTE_OFF = NOTE_ON + 128
TIME_SHIFT = NOTE_OFF + 128
VELOCITY = TIME_SHIFT + 100
VOCAB_SIZE = VELOCITY + 32

TICK_SECONDS = 0.01  # the time grid
MAX_SHIFT_TICKS = 100  # one TimeShift token spans at most 1 s
VELOCITY_BINS = 32
DEFAULT_VELOCITY_BIN = 16  # assumed before the first Velocity token


def velocity_bin(velocity: np.ndarray | int) -> np.ndarray | int:
    """MIDI velocity 1..127 -> bin 0..31 (4 velocities per bin)."""
    return np.clip(velocity, 0, 127) // 4


def bin_velocity(bin_: int) -> int:
    """Bin 0..31 -> the MIDI velocity at its centre, 2..126."""
    return int(bin_) * 4 + 2


def token_name(token: int) -> str:
    """Readable name of one id, e.g. `NoteOn_60`, `TimeShift_250ms`, `Velocity_20`."""
    token = int(token)
    if token == PAD:
        return "PAD"
    if token == BOS:
        return "BOS"
    if token == EOS:
        return "EOS"
    if NOTE_ON <= token < NOTE_OFF:
        return f"NoteOn_{token - NOTE_ON}"
    if NOTE_OFF <= token < TIME_SHIFT:
        return f"NoteOff_{token - NOTE_OFF}"
    if TIME_SHIFT <= token < VELOCITY:
        return f"TimeShift_{(token - TIME_SHIFT + 1) * 10}ms"
    if VELOCITY <= token < VOCAB_SIZE:
        return f"Velocity_{token - VELOCITY}"
    return f"Unknown_{token}"


def token_id(name: str) -> int:
    """Inverse of `token_name`."""
    for token in range(VOCAB_SIZE):
        if token_name(token) == name:
            return token
    raise ValueError(f"unknown token name {name!r}")


def encode(perf: Performance, bos: bool = True, eos: bool = True) -> np.ndarray:
    """Token ids (uint16) of a performance; vectorised, so a 15-minute recital takes a few ms.

    Intermediates are int32 (ticks of up to 248 days) and freed as soon as they are used: a primer of hours
    costs a few arrays of its events, not a dozen of int64.
    """
    on_tick = np.floor(perf.onset / TICK_SECONDS + 0.5).astype(np.int32)
    off_tick = np.maximum(np.floor(perf.offset / TICK_SECONDS + 0.5).astype(np.int32), on_tick + 1)  # >= one tick
    n = len(perf)
    # Events: offs (kind 0) sort before ons (kind 1) at the same tick; then by pitch. One integer key orders by
    # (tick, kind, pitch) like np.lexsort, at a fraction of its cost.
    tick = np.concatenate([off_tick, on_tick])
    del on_tick, off_tick
    pitch = np.concatenate([perf.pitch, perf.pitch]).astype(np.int32)
    key = (tick.astype(np.int64) * 2 + (np.arange(2 * n) >= n)) * 128 + pitch
    order = np.argsort(key, kind="stable")
    del key
    is_on = order >= n  # the second half holds the note-ons
    vbin = velocity_bin(perf.velocity.astype(np.int32))[order[is_on] - n]  # (ons,) in event order
    tick, pitch = tick[order], pitch[order]
    del order

    delta = np.diff(tick, prepend=0)
    del tick
    n_shift = shift_count(delta)
    needs_velocity = np.zeros(len(delta), dtype=bool)
    needs_velocity[is_on] = vbin != np.concatenate([[-1], vbin[:-1]])  # the first note-on states its velocity
    per_event = n_shift + needs_velocity + 1
    start = np.cumsum(per_event) - per_event + int(bos)
    total = int(per_event.sum()) + int(bos) + int(eos)
    out = np.empty(total, dtype=np.uint16)
    if bos:
        out[0] = BOS
    if eos:
        out[-1] = EOS
    write_shifts(out, start, delta)
    del delta
    out[(start + n_shift)[needs_velocity]] = VELOCITY + vbin[needs_velocity[is_on]]
    event_pos = start + per_event - 1
    out[event_pos] = np.where(is_on, NOTE_ON + pitch, NOTE_OFF + pitch)
    return out


def shift_count(delta: np.ndarray) -> np.ndarray:
    """How many TimeShift tokens each gap of `delta` ticks takes: whole seconds, then the rest."""
    return delta // MAX_SHIFT_TICKS + (delta % MAX_SHIFT_TICKS > 0)


def write_shifts(out: np.ndarray, start: np.ndarray, delta: np.ndarray, first: int = TIME_SHIFT) -> None:
    """Write the TimeShift tokens of gap delta[i] into out[start[i]:start[i] + shift_count(delta)[i]] (`first`: the
    codec's TimeShift_10ms id; both codecs write time this way)."""
    n_full = delta // MAX_SHIFT_TICKS
    remainder = delta % MAX_SHIFT_TICKS
    if n_full.any():  # full-second shifts: n_full[i] tokens from start[i]
        group_start = np.repeat(start, n_full)
        within = np.arange(int(n_full.sum())) - np.repeat(np.cumsum(n_full) - n_full, n_full)
        out[group_start + within] = first + MAX_SHIFT_TICKS - 1
    has_rem = remainder > 0
    out[(start + n_full)[has_rem]] = first + remainder[has_rem] - 1


@dataclass(frozen=True)
class NoteEvent:
    """One event the incremental decoder has finished reading.

    kind "on": a key goes down at `time`; kind "off": it comes up at `time`, and `onset` tells when it went
    down (so a piano roll can draw the whole note). Velocity is the note's MIDI velocity.
    """

    kind: str
    time: float
    pitch: int
    velocity: int
    onset: float


class Decoder:
    """Incremental decoder: one id in, zero or more note events out; never raises on any id sequence."""

    def __init__(self, start_time: float = 0.0):
        self.tick = 0
        self.start_time = start_time
        self.velocity = bin_velocity(DEFAULT_VELOCITY_BIN)
        self.sounding: dict[int, tuple[int, int]] = {}  # pitch -> (onset tick, velocity)
        self.ended = False

    @property
    def time(self) -> float:
        """Seconds read so far (the position of the next event)."""
        return self.start_time + self.tick * TICK_SECONDS

    def _seconds(self, tick: int) -> float:
        return self.start_time + tick * TICK_SECONDS

    def _close(self, pitch: int, end_tick: int) -> NoteEvent:
        onset_tick, velocity = self.sounding.pop(pitch)
        end_tick = max(end_tick, onset_tick + 1)
        return NoteEvent("off", self._seconds(end_tick), pitch, velocity, self._seconds(onset_tick))

    def feed(self, token: int) -> list[NoteEvent]:
        token = int(token)
        if self.ended:
            return []
        if NOTE_ON <= token < NOTE_OFF:
            pitch = token - NOTE_ON
            events = [self._close(pitch, self.tick)] if pitch in self.sounding else []
            self.sounding[pitch] = (self.tick, self.velocity)
            events.append(NoteEvent("on", self.time, pitch, self.velocity, self.time))
            return events
        if NOTE_OFF <= token < TIME_SHIFT:
            pitch = token - NOTE_OFF
            return [self._close(pitch, self.tick)] if pitch in self.sounding else []
        if TIME_SHIFT <= token < VELOCITY:
            self.tick += token - TIME_SHIFT + 1
            return []
        if VELOCITY <= token < VOCAB_SIZE:
            self.velocity = bin_velocity(token - VELOCITY)
            return []
        if token == EOS:
            return self.finish()
        return []  # PAD, BOS, out-of-range ids

    def finish(self) -> list[NoteEvent]:
        """Close every sounding note at the current time (or one tick after its onset) and stop."""
        events = [self._close(pitch, self.tick) for pitch in sorted(self.sounding)]
        self.ended = True
        return events


def decode(ids) -> Performance:
    """Performance of any id sequence (reads up to the first EOS); never raises."""
    return decode_continuations(ids, [[]])[0]


def decode_continuations(primer, continuations: Sequence, with_primer: bool = True) -> list[Performance]:
    """One Performance per continuation: `primer` followed by it, the primer read once for all of them.

    A long primer (a million ids) is decoded once, not once per variation, and never copied into each one.
    `with_primer=False` keeps only the notes that start after the primer (its clock, velocity and sounding notes
    still carry over): what a caller that has the primer's notes already needs, in memory that does not grow with it.
    """
    decoder = Decoder()
    notes: list[tuple[float, float, int, int]] = []  # (onset, offset, pitch, velocity) of the primer's ended notes
    _read(decoder, primer, notes if with_primer else None)
    if not with_primer:  # the notes still sounding began in the primer: not the continuation's
        decoder.sounding.clear()
    pieces = []
    for continuation in continuations:
        lane, lane_notes = copy.deepcopy(decoder), list(notes)
        _read(lane, continuation, lane_notes)
        lane_notes += [(e.onset, e.time, e.pitch, e.velocity) for e in lane.finish()]
        onset, offset, pitch, velocity = zip(*lane_notes, strict=True) if lane_notes else ((), (), (), ())
        pieces.append(Performance.from_notes(onset, offset, pitch, velocity))
    return pieces


_CHUNK = 1 << 16  # ids turned into Python ints at once: a long primer is never one list of a million ints


def _read(decoder: Decoder, ids, notes: list | None) -> None:
    """Feed ids (up to the first EOS) and collect the notes they end (None: only follow them)."""
    ids = np.asarray(ids).ravel()
    for start in range(0, len(ids), _CHUNK):
        for token in ids[start:start + _CHUNK].astype(np.int64).tolist():
            if decoder.ended:
                return
            events = decoder.feed(token)
            if notes is not None:
                notes += [(e.onset, e.time, e.pitch, e.velocity) for e in events if e.kind == "off"]


def shift_ticks(ids, first: int = TIME_SHIFT) -> np.ndarray:
    """Ticks each id moves the clock by (0 for every id but a TimeShift): the codec's one time arithmetic
    (`first`: the codec's TimeShift_10ms id)."""
    ids = np.asarray(ids)
    return np.where((ids >= first) & (ids < first + MAX_SHIFT_TICKS), ids.astype(np.int64) - first + 1, 0)


def ids_seconds(ids) -> float:
    """Seconds of music `ids` span (their TimeShifts), on the codec's grid."""
    return float(shift_ticks(ids).sum()) * TICK_SECONDS


def silence_ids(seconds: float, first: int = TIME_SHIFT) -> np.ndarray:
    """TimeShift ids that move the clock forward by `seconds` (rounded to the grid): whole seconds, then the rest."""
    ticks = np.array([int(round(seconds / TICK_SECONDS))])
    out = np.empty(int(shift_count(ticks)[0]), dtype=np.int64)
    write_shifts(out, np.array([0]), ticks, first)
    return out


def last_velocity(ids, first: int = VELOCITY) -> int | None:
    """The MIDI velocity the last Velocity id of `ids` sets (None: no Velocity id; `first`: the codec's
    Velocity_0 id)."""
    ids = np.asarray(ids).ravel()
    where = np.flatnonzero((ids >= first) & (ids < first + VELOCITY_BINS))
    return bin_velocity(int(ids[where[-1]]) - first) if len(where) else None
