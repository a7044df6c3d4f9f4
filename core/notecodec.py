"""The note-level codec ("notes"): each note carries its duration at its onset.

The event codec ("performance", core/tokenizer.py) ends a note with a NoteOff, possibly hundreds of ids after its
NoteOn, so a model with a bounded memory loses track of what it left sounding: it holds, re-strikes and piles up
notes (issue #17, measured by bench/sounding.py: held notes 40 -> 0.2 per 30 s, bits per second 196 -> 164 with the
same model and data). Here a note is whole where it starts, as Aria's absolute tokenizer and the Anticipatory Music
Transformer's arrival-time triplets: per note, a Velocity id when the velocity bin changes, its Pitch id, then its
Duration id; TimeShift ids move the clock between onsets.

Id layout (VOCAB_SIZE = 327):

    0            PAD, 1 BOS, 2 EOS (as core/tokenizer.py: the models' BOS and PAD handling is the same)
    3 ..130      Pitch_<pitch>          pitch 0..127, the note's onset (the same ids as the event codec's NoteOn)
    131..194     Duration_<ticks>       64 bins: 1..16 ticks exactly (10-160 ms), then 48 log-spaced up to 800
    195..294     TimeShift_<ms>ms       10 ms .. 1000 ms in 10 ms steps (longer gaps: several shifts)
    295..326     Velocity_<bin>         the 32 bins of core/tokenizer.py; only when the bin changes

Time is the event codec's 10 ms grid: onsets are exact on it. A duration is rounded to the grid (at least one tick),
then to its nearest bin in log scale: exact up to 160 ms, within MAX_DURATION_ERROR (5.6%) of itself from there
to 8 s (bins are whole ticks: 18 lies between the bins 17 and 19); a note longer than 8 s is 8 s (the last bin).
Notes of one onset are in pitch order. Decoding never raises: a Pitch not followed at once by its Duration is
dropped, a Duration with no Pitch before it ignored, as are PAD, BOS and unknown ids; it stops at EOS. A key struck
again while its note still sounds ends that note there, and two strikes of a pitch at one tick are one note (the
longer, louder), as a piano (core.midi.canonical): the incremental `Decoder` and `decode` agree on every sequence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core import tokenizer
from core.midi import Performance, canonical
from core.tokenizer import (  # the grid, the velocity bins and the special ids are the event codec's
    BOS,
    DEFAULT_VELOCITY_BIN,
    EOS,
    PAD,
    TICK_SECONDS,
    VELOCITY_BINS,
    NoteEvent,
    bin_velocity,
    shift_count,
    velocity_bin,
    write_shifts,
)

NAME = "notes"  # what a model directory records (config.json "tokenizer")
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


def token_id(name: str) -> int:
    """Inverse of `token_name`."""
    for token in range(VOCAB_SIZE):
        if token_name(token) == name:
            return token
    raise ValueError(f"unknown token name {name!r}")


def encode(perf: Performance, bos: bool = True, eos: bool = True) -> np.ndarray:
    """Token ids (uint16) of a performance, vectorised."""
    on_tick = np.floor(perf.onset / TICK_SECONDS + 0.5).astype(np.int64)
    off_tick = np.floor(perf.offset / TICK_SECONDS + 0.5).astype(np.int64)
    order = np.lexsort((perf.pitch, on_tick))
    on_tick, pitch = on_tick[order], perf.pitch[order].astype(np.int64)
    dbin = duration_bin(np.maximum(off_tick[order] - on_tick, 1))
    vbin = velocity_bin(perf.velocity[order].astype(np.int64))
    delta = np.diff(on_tick, prepend=0)
    n_shift = shift_count(delta)
    needs_velocity = vbin != np.concatenate([[-1], vbin[:-1]])  # the first note states its velocity
    per_note = n_shift + needs_velocity + 2
    start = np.cumsum(per_note) - per_note + int(bos)
    out = np.empty(int(per_note.sum()) + int(bos) + int(eos), dtype=np.uint16)
    if bos:
        out[0] = BOS
    if eos:
        out[-1] = EOS
    write_shifts(out, start, delta, TIME_SHIFT)
    out[(start + n_shift)[needs_velocity]] = VELOCITY + vbin[needs_velocity]
    out[start + per_note - 2] = PITCH + pitch
    out[start + per_note - 1] = DURATION + dbin
    return out


_CHUNK = 1 << 16  # ids read at once: a long primer's temporaries stay small


@dataclass(frozen=True)
class Reading:
    """Where a reader of ids stands after them: the clock (ticks), the velocity bin, and a Pitch still waiting
    for its Duration (its pitch, -1 if none) — all that the next ids' meaning depends on."""

    tick: int = 0
    velocity_bin: int = DEFAULT_VELOCITY_BIN
    pending: int = -1


def read_notes(ids, at: Reading = Reading()) -> tuple[tuple[np.ndarray, ...], Reading, bool]:
    """The notes `ids` state, read from `at` (vectorised): (onset tick, end tick, pitch, velocity bin) arrays
    before same-pitch collisions are resolved, where the reading stands after them, and whether an EOS ended them
    (nothing after it is read)."""
    ids = np.asarray(ids).ravel().astype(np.int64)
    eos = np.flatnonzero(ids == EOS)
    ended = bool(len(eos))
    if ended:
        ids = ids[:eos[0]]
    empty = np.zeros(0, dtype=np.int64)
    if not len(ids):
        return (empty, empty, empty, empty), at, ended
    shift = np.where((ids >= TIME_SHIFT) & (ids < VELOCITY), ids - TIME_SHIFT + 1, 0)
    tick_before = at.tick + np.cumsum(shift) - shift  # (T,) the clock when each id is read
    is_velocity = (ids >= VELOCITY) & (ids < VOCAB_SIZE)
    last_velocity = np.maximum.accumulate(np.where(is_velocity, np.arange(len(ids)), -1))
    vbin = np.where(last_velocity >= 0, ids[np.maximum(last_velocity, 0)] - VELOCITY, at.velocity_bin)
    is_pitch = (ids >= PITCH) & (ids < DURATION)
    is_duration = (ids >= DURATION) & (ids < TIME_SHIFT)
    starts = np.flatnonzero(is_pitch[:-1] & is_duration[1:])  # a Pitch followed at once by its Duration
    onset, pitch = tick_before[starts], ids[starts] - PITCH
    length = BIN_TICKS[ids[starts + 1] - DURATION]
    velocity = vbin[starts]
    if at.pending >= 0 and is_duration[0]:  # the Pitch before these ids gets its Duration now
        onset = np.concatenate([[at.tick], onset])
        pitch = np.concatenate([[at.pending], pitch])
        length = np.concatenate([[BIN_TICKS[ids[0] - DURATION]], length])
        velocity = np.concatenate([[at.velocity_bin], velocity])
    after = Reading(int(tick_before[-1] + shift[-1]), int(vbin[-1]), int(ids[-1] - PITCH) if is_pitch[-1] else -1)
    return (onset, onset + length, pitch, velocity), after, ended


def _read_all(ids, at: Reading = Reading()) -> tuple[list[tuple[np.ndarray, ...]], Reading, bool]:
    """`read_notes` a chunk at a time (a primer of a million ids never makes a dozen million-long temporaries)."""
    ids = np.asarray(ids).ravel()
    found, ended = [], False
    for begin in range(0, len(ids), _CHUNK):
        notes, at, ended = read_notes(ids[begin:begin + _CHUNK], at)
        found.append(notes)
        if ended:
            break
    return found, at, ended


def _performance(found: list[tuple[np.ndarray, ...]]) -> Performance:
    """The Performance of notes read in parts (ticks and velocity bins), collisions resolved as a piano does."""
    onset, end, pitch, vbin = ([np.concatenate(column) for column in zip(*found, strict=True)] if found
                               else [np.zeros(0, dtype=np.int64)] * 4)
    return canonical(onset * TICK_SECONDS, end * TICK_SECONDS, pitch, vbin * 4 + 2)  # bin_velocity, vectorised


def decode(ids) -> Performance:
    """Performance of any id sequence (reads up to the first EOS); never raises."""
    return _performance(_read_all(ids)[0])


def decode_continuations(primer, continuations: Sequence, with_primer: bool = True) -> list[Performance]:
    """One Performance per continuation: `primer` followed by it, the primer read once for all of them.

    `with_primer=False` keeps only the notes that start after the primer (its clock, velocity and a Pitch waiting
    for its Duration carry over), in memory that does not grow with the primer.
    """
    primer_notes, at, ended = _read_all(primer)
    kept = primer_notes if with_primer else []
    pieces = []
    for continuation in continuations:
        notes = [] if ended else [read_notes(continuation, at)[0]]
        pieces.append(_performance(kept + notes))
    return pieces


def decode_after(primer, continuation) -> Performance:
    """The notes `continuation` starts after `primer` (whose clock and velocity carry over), times absolute."""
    return decode_continuations(primer, [continuation], with_primer=False)[0]


class Decoder:
    """Incremental decoder: one id in, zero or more note events out; never raises on any id sequence.

    The notes struck at one tick are told ("on") when the clock moves past it (a later strike of a pitch at the
    same tick merges into the note, as `decode` does); a note's "off" is told when the clock reaches its end, or
    at its re-strike, or by `finish` at its own end. So the events are exactly `decode`'s notes.
    """

    def __init__(self, start_time: float = 0.0):
        self.tick = 0
        self.start_time = start_time
        self.velocity = bin_velocity(DEFAULT_VELOCITY_BIN)
        self.pending: int | None = None  # a Pitch waiting for its Duration
        self.struck: dict[int, tuple[int, int]] = {}  # pitch -> (end tick, velocity) struck at this tick
        self.sounding: dict[int, tuple[int, int, int]] = {}  # pitch -> (onset tick, end tick, velocity)
        self.ended = False

    @property
    def time(self) -> float:
        """Seconds read so far (the position of the next event)."""
        return self.start_time + self.tick * TICK_SECONDS

    def _seconds(self, tick: int) -> float:
        return self.start_time + tick * TICK_SECONDS

    def _off(self, pitch: int, tick: int) -> NoteEvent:
        onset, _, velocity = self.sounding.pop(pitch)
        return NoteEvent("off", self._seconds(tick), pitch, velocity, self._seconds(onset))

    def _commit(self) -> list[NoteEvent]:
        """Tell the notes struck at this tick: a re-struck pitch's sounding note ends here first."""
        events = [self._off(pitch, self.tick) for pitch in sorted(self.struck) if pitch in self.sounding]
        for pitch in sorted(self.struck):
            end, velocity = self.struck[pitch]
            self.sounding[pitch] = (self.tick, end, velocity)
            events.append(NoteEvent("on", self.time, pitch, velocity, self.time))
        self.struck.clear()
        return events

    def _ended_by(self, tick: int) -> list[NoteEvent]:
        """The "off"s of the sounding notes that end by `tick`, in time order."""
        over = sorted((end, pitch) for pitch, (_, end, _) in self.sounding.items() if end <= tick)
        return [self._off(pitch, end) for end, pitch in over]

    def feed(self, token: int) -> list[NoteEvent]:
        token = int(token)
        if self.ended:
            return []
        pending, self.pending = self.pending, None
        if DURATION <= token < TIME_SHIFT:
            if pending is not None:
                end, velocity = self.tick + int(BIN_TICKS[token - DURATION]), self.velocity
                if pending in self.struck:  # two strikes at one tick: one note, the longer and louder
                    end, velocity = max(end, self.struck[pending][0]), max(velocity, self.struck[pending][1])
                self.struck[pending] = (end, velocity)
            return []
        if PITCH <= token < DURATION:
            self.pending = token - PITCH
            return []
        if TIME_SHIFT <= token < VELOCITY:
            events = self._commit()
            self.tick += token - TIME_SHIFT + 1
            return events + self._ended_by(self.tick)
        if VELOCITY <= token < VOCAB_SIZE:
            self.velocity = bin_velocity(token - VELOCITY)
            return []
        if token == EOS:
            return self.finish()
        return []  # PAD, BOS, out-of-range ids

    def finish(self) -> list[NoteEvent]:
        """Tell the notes of this tick, then every sounding note's end (at its own end), and stop."""
        if self.ended:
            return []
        events = self._commit() + self._ended_by(np.iinfo(np.int64).max)
        self.ended = True
        return events


def ids_seconds(ids) -> float:
    """Seconds of music `ids` span (their TimeShifts)."""
    return float(shift_ticks(ids).sum()) * TICK_SECONDS


def shift_ticks(ids) -> np.ndarray:
    """Ticks each id moves the clock by (0 for every id but a TimeShift)."""
    return tokenizer.shift_ticks(ids, TIME_SHIFT)


def onset_starts(ids) -> np.ndarray:
    """int64 positions where an onset's notes begin (its first Velocity or Pitch after BOS or a TimeShift): the
    places a piece may be cut and read as if it began there (`restart`)."""
    ids = np.asarray(ids).ravel().astype(np.int64)
    note = (ids >= PITCH) & (ids < DURATION) | (ids >= VELOCITY) & (ids < VOCAB_SIZE)
    before = np.concatenate([[BOS], ids[:-1]])
    return np.flatnonzero(note & ((before == BOS) | (before >= TIME_SHIFT) & (before < VELOCITY)))


def restart(ids, start: int, length: int) -> np.ndarray:
    """int64 BOS and up to `length` ids of `ids` from position `start` (an onset start), the velocity in force
    there (where a reader of the ids before it stands) stated first: the passage as a piece that begins with it
    (no EOS)."""
    ids = np.asarray(ids).ravel().astype(np.int64)
    head = [BOS]
    if not VELOCITY <= ids[start] < VOCAB_SIZE:
        head.append(VELOCITY + _read_all(ids[:start])[1].velocity_bin)
    body = ids[start:start + length]
    return np.concatenate([head, body[body != EOS]]).astype(np.int64)


def silence_ids(seconds: float) -> np.ndarray:
    """TimeShift ids that move the clock forward by `seconds` (rounded to the grid): whole seconds, then the rest."""
    return tokenizer.silence_ids(seconds, TIME_SHIFT)


def last_velocity(ids) -> int | None:
    """The MIDI velocity the last Velocity id of `ids` sets (None: no Velocity id)."""
    return tokenizer.last_velocity(ids, VELOCITY)


def grammar(eos: bool = False, longest_seconds: float | None = None) -> np.ndarray:
    """(VOCAB_SIZE, VOCAB_SIZE) bool: which ids may follow each id when continuing a piece. After a Pitch only a
    Duration (none longer than `longest_seconds`, but always the shortest); after anything else anything but a
    Duration or PAD and BOS, and EOS only where `eos`."""
    after_other = np.ones(VOCAB_SIZE, dtype=bool)
    after_other[[PAD, BOS]] = False
    after_other[EOS] = eos
    after_other[DURATION:TIME_SHIFT] = False
    allowed = np.tile(after_other, (VOCAB_SIZE, 1))
    allowed[PITCH:DURATION] = False
    durations = np.ones(DURATION_BINS, dtype=bool)
    if longest_seconds is not None:
        durations = BIN_TICKS * TICK_SECONDS <= longest_seconds + 1e-9
        durations[0] = True
    allowed[PITCH:DURATION, DURATION:TIME_SHIFT] = durations
    return allowed


# A key struck again within 40 ms is something a pianist essentially never does: in ten MAESTRO performances 14
# of 2,783 same-pitch repetitions under 120 ms are that close (gaps <20 ms: 1, 20-40 ms: 13, 40-60: 87, 60-80: 273,
# 80-100: 797, 100-120: 1,612), while a notes DSMR at 2,000 steps wrote 42 of its 232 there, as a stutter (a note
# struck, cut 10-30 ms later by its own re-strike and struck again: Pitch_71 Duration_2560ms TimeShift_30ms
# Pitch_71). It is the model's mode, not sampling's tail (a lower top-p makes it more frequent), so the generator
# forbids it outright (issue #17); 40 ms and more is left to the model, as pianists' trills and repeated notes are.
MIN_REPEAT_SECONDS = 0.04
_NEVER = -(1 << 40)  # the tick of a pitch never struck: far enough back for any gap

# How fast a primer repeats a key is part of its texture, and its continuation keeps it: in the ten MAESTRO
# performances the 2nd percentile of same-pitch gaps in the 20 s primer and in the real 30 s after it agree (0.09
# and 0.08 s where the pianist trills, 0.15-0.21 s in fast passage-work, 0.3 s and more in slow music), while a
# notes DSMR trained on score-derived music (string quartets' repeated-note accompaniments among it) falls into
# striking one chord every 60-120 ms after primers that never do, and feeds on its own repeats. `FROM_PRIMER`
# (the generator's default) sets the guard to that gap of the primer's last PRIMER_REPEAT_IDS ids x REPEAT_SHARE,
# from MIN_REPEAT_SECONDS to MAX_PRIMER_REPEAT_SECONDS; a primer with fewer than PRIMER_REPEATS repeats (or none:
# a new piece) keeps MIN_REPEAT_SECONDS.
FROM_PRIMER = "primer"
REPEAT_QUANTILE = 0.02
REPEAT_SHARE = 0.75  # room below the primer's own fastest repeats (the real continuations' gaps spread ~15%)
MAX_PRIMER_REPEAT_SECONDS = 0.2  # a slow primer does not forbid a repeated quaver
PRIMER_REPEATS = 20
PRIMER_REPEAT_IDS = 4096  # about 100 s of piano: the texture nearest the continuation


def primer_min_repeat(ids) -> float:
    """The re-strike guard (seconds) that keeps the repeated-note speed of a primer given as ids (FROM_PRIMER)."""
    ids = np.asarray(ids).ravel()[-PRIMER_REPEAT_IDS:]  # a Duration cut from its Pitch at the start is skipped
    (onset, _, pitch, _), _, _ = read_notes(ids)
    order = np.lexsort((onset, pitch))
    onset, pitch = onset[order], pitch[order]
    gaps = np.diff(onset)[pitch[1:] == pitch[:-1]]
    if len(gaps) < PRIMER_REPEATS:
        return MIN_REPEAT_SECONDS
    fastest = float(np.quantile(gaps, REPEAT_QUANTILE)) * TICK_SECONDS * REPEAT_SHARE
    return float(min(max(fastest, MIN_REPEAT_SECONDS), MAX_PRIMER_REPEAT_SECONDS))


class Grammar:
    """The generator's rule for this codec: each lane's next id must follow its last one (`grammar`), so every
    Pitch gets its Duration and no note is longer than `longest_seconds` — a note's length is chosen where it
    starts, so nothing is ever cut afterwards (the event codec's HeldNotes release is not needed).

    With `min_repeat_seconds` (> 0) a lane may not strike a pitch again sooner than that after it last struck it
    (MIN_REPEAT_SECONDS: why): the rule follows each lane's clock and each pitch's last strike, starting from the
    `primer`'s (the ids before the lanes, read once for all of them). Only Pitch ids are ever refused that way,
    so a lane always keeps a TimeShift (or, after a Pitch, a Duration) to write.
    """

    def __init__(self, batch: int, last_id: int, longest_seconds: float | None, eos: bool = True, *,
                 min_repeat_seconds: float = 0.0, primer: Sequence[int] | np.ndarray | None = None):
        self.allowed = torch.from_numpy(np.where(grammar(eos, longest_seconds), 0.0, float("-inf")))
        self.last = np.full(batch, last_id, dtype=np.int64)
        # a gap of fewer ticks than this is refused (0.04 s: 0-3 ticks, 40 ms allowed; 0: the rule is off)
        self.repeat_ticks = max(0, int(np.ceil(min_repeat_seconds / TICK_SECONDS - 1e-6)))
        self.tick = np.zeros(batch, dtype=np.int64)  # (B,) each lane's clock
        self.struck = np.full((batch, 128), _NEVER, dtype=np.int64)  # (B, pitch): tick of its last strike
        if self.repeat_ticks and primer is not None:
            tick, struck = _last_strikes(primer)
            self.tick[:] = tick
            self.struck[:] = struck

    def mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(B, V) additive mask for each lane's next id: 0 allowed, -inf not."""
        mask = self.allowed[torch.from_numpy(self.last)]  # (B, V), a copy
        if self.repeat_ticks:
            recent = torch.from_numpy(self.tick[:, None] - self.struck < self.repeat_ticks)  # (B, 128)
            mask[:, PITCH:DURATION].masked_fill_(recent, float("-inf"))
        return mask.to(device=device, dtype=dtype)

    def read(self, tokens: np.ndarray) -> None:
        """Follow one id per lane (B,)."""
        self.last = np.asarray(tokens, dtype=np.int64).copy()
        if self.repeat_ticks:
            lanes = np.flatnonzero((self.last >= PITCH) & (self.last < DURATION))
            self.struck[lanes, self.last[lanes] - PITCH] = self.tick[lanes]
            self.tick += shift_ticks(self.last)


def _last_strikes(ids) -> tuple[int, np.ndarray]:
    """The clock after `ids` (ticks) and the tick each pitch was last struck at (128,), `_NEVER` if not: read a
    chunk at a time (`read_notes`), a Pitch still waiting for its Duration at the end struck where it stands."""
    ids = np.asarray(ids).ravel()
    struck = np.full(128, _NEVER, dtype=np.int64)
    at = Reading()
    for begin in range(0, len(ids), _CHUNK):
        (onset, _, pitch, _), at, ended = read_notes(ids[begin:begin + _CHUNK], at)
        np.maximum.at(struck, pitch, onset)
        if ended:
            return at.tick, struck
    if at.pending >= 0:
        struck[at.pending] = at.tick
    return at.tick, struck
