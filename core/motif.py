"""The piece's own motifs, as a memory mixed into what a continuation plays next.

A pianist repeats: a bar, a left-hand figure, a phrase a step higher, a few seconds after playing it. The DSMR
default's upper layers remember about 85 ids (a few seconds), so when the music comes back to a figure it played
beyond that, the model has to guess it afresh. A cache of the piece's own notes, as language models mix one into
their predictions (Grave et al., "Improving neural language models with a continuous cache", 2017), remembers them:
the run of pitch intervals leading into the last note is matched against every earlier note's (transposition-free,
so a sequence a step lower matches too), and the notes that followed the longest matches say which pitch comes next
and when the next onset comes. Of the longest matches, those at the last note's own pitch speak where there are any
(the figure as it was); a remembered pitch outside the range the piece has played so far is dropped (a figure that
rises as it repeats would otherwise climb on: the DSMR default's continuations spanned 63 semitones against the
pianists' 54, and kept the key in 25 of 30, without that guard). Each is mixed into the model's distribution over
that kind of id, the share growing with the length of the match (`PITCH_SHARES`, `SHIFT_SHARES`), scaled by
`weight`: p = (1 - share) p_model + share * p_model(kind) * p_memory. Only which pitch and when change, never whether
a note comes: the mixture keeps each kind's mass where the model put it.

A note's length is remembered otherwise: durations after the same matches gave about 0.1 bits/s, but a note just
struck often ends with a note already sounding (a chord let go at once, the pedal lifted: a performance's lengths
are pedal-folded), so each sounding note's end, as a length from now, is mixed into the Duration ids (`END_SHARE`).

The shares are fitted by bench/motif.py on 29 windows of the ten MAESTRO performances from 60 s on, outside
bench/continuation.py's, together with the context cache's (core/contextcache.py, mixed in before this memory); on
its windows the truth given the primer costs the DSMR default, adapting, 134.8 -> 129.7 bits/s with this memory
(pitches 36.2 -> 32.8, durations 36.1 -> 35.3, time steps 31.7 -> 30.9), 127.6 with the cache too. Velocities
remembered the same way gave about 0.1: left to the model (and the cache). The repeats inside the truth give most of
it: a memory of the primer alone gave 0.5. Only the notes codec's models; for another the memory is inactive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from core import notecodec
from core.codecs import Codec
from core.errors import RecitalError

MAX_MATCH = 32  # intervals of context matched at most: longer runs count as this long
# Notes a lane remembers (minutes of music): each note costs one pass over them, and a primer of hours is read in
# seconds; the oldest quarter is forgotten at once when a lane holds a quarter more.
MEMORY_NOTES = 4096
NO_STEP = 1_000  # the "interval" into a piece's first note: it matches no other
# The share of the mixture by the length of the longest match (intervals): up to 2, 3-4, 5-7, 8-12, 13 or more.
MATCH_BUCKETS = np.array([2, 4, 7, 12])  # a match of length m falls in bucket searchsorted(MATCH_BUCKETS, m)
PITCH_SHARES = np.array([0.05, 0.35, 0.50, 0.70, 0.75])
SHIFT_SHARES = np.array([0.10, 0.25, 0.45, 0.40, 0.55])
SHIFT_SPREAD = 2.0  # ticks: each remembered gap a two-sided exponential this wide over the TimeShift ids
# A note often ends with notes already sounding (a chord let go at once, the pedal lifted: MAESTRO's lengths are
# pedal-folded): each sounding note's end, as a duration from now, a two-sided exponential this many bins wide over
# the Duration ids, mixed in at END_SHARE whether a run matched or not: half what bench/motif.py fits (0.25), as the
# context cache's durations (core/contextcache.py SHARES): at the fit a continuation's notes grew short.
END_SPREAD = 0.5
END_SHARE = 0.125
WEIGHT = 1.0  # the share's scale a continuation gets unless told otherwise (0: no memory)
PITCH_IDS = slice(notecodec.PITCH, notecodec.PITCH + 128)
SHIFT_IDS = slice(notecodec.TIME_SHIFT, notecodec.TIME_SHIFT + notecodec.MAX_SHIFT_TICKS)
DURATION_IDS = slice(notecodec.DURATION, notecodec.DURATION + notecodec.DURATION_BINS)


class MotifError(RecitalError):
    """A motif weight that is not a number from 0 to 1."""


def check_weight(weight: float) -> None:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and 0 <= weight <= 1):
        raise MotifError(f"the motif weight must be a number from 0 to 1 (0: off), got {weight!r}")


def default_weight(model, primer_ids: np.ndarray | None = None) -> float:
    """The memory a generation gets unless told otherwise: WEIGHT for a left-to-right model of the notes codec
    continuing a primer with notes in it (the README, "Recalling the piece's motifs"); none for a new piece (with
    nothing of a composer's to recall, a lane recalling only itself went round in circles: 5 of 20 new pieces of
    the DSMR default repeated 91-182 pitch 8-grams a minute, MAESTRO's pianists at most 36), for a denoiser (it
    fills windows in any order, so no run of notes leads into the one it draws) or for another codec."""
    from core.codecs import codec_of
    from core.models.interface import DENOISE

    if getattr(model, "family", None) == DENOISE or codec_of(model).NAME != notecodec.NAME:
        return 0.0
    ids = np.asarray(primer_ids if primer_ids is not None else [], dtype=np.int64)
    has_notes = bool(((ids >= notecodec.PITCH) & (ids < notecodec.DURATION)).any())
    return WEIGHT if has_notes else 0.0


def share_of(match: int, shares: np.ndarray) -> float:
    """The mixture's share for a longest match of `match` intervals (0: no match, no share)."""
    return 0.0 if match < 1 else float(shares[np.searchsorted(MATCH_BUCKETS, match)])


class LaneMotifs:
    """One lane's notes so far, and how long a run of intervals each earlier note shares with the run into the
    last one (updated in one pass a note: the run into note j + 1 matches the new run if its interval does and the
    run into j matched the old one)."""

    def __init__(self) -> None:
        self.pitch = np.zeros(0, dtype=np.int64)
        self.onset = np.zeros(0, dtype=np.int64)  # ticks
        self.step = np.zeros(0, dtype=np.int64)  # interval into each note (NO_STEP into the first)
        self.match = np.zeros(0, dtype=np.int64)  # intervals the run into note j shares with the run into the last
        self.next_gap = np.zeros(0, dtype=np.int64)  # ticks from note j's onset to the next later onset (0: not yet)
        self.end = np.zeros(0, dtype=np.int64)  # the tick each note ends at (0: its Duration not read yet)
        self.tick = 0
        self.after_shift = False  # the last id moved the clock: the next TimeShift continues a gap already begun
        self.after_pitch = False  # the last id was a Pitch: its Duration comes next
        self._logs: Logs | None = None  # `logs()` until the next change

    def copy(self) -> LaneMotifs:
        other = LaneMotifs()
        other.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()})
        return other

    def read(self, token: int) -> None:
        """Follow one id of the notes codec."""
        if self.after_pitch:
            self.after_pitch, self._logs = False, None
            if DURATION_IDS.start <= token < DURATION_IDS.stop:
                self.end[-1] = self.onset[-1] + notecodec.BIN_TICKS[token - DURATION_IDS.start]
                return
        if notecodec.TIME_SHIFT <= token < notecodec.VELOCITY:
            self.tick += token - notecodec.TIME_SHIFT + 1
            self._logs = None if not self.after_shift else self._logs
            self.after_shift = True
            return
        if self.after_shift:
            self.after_shift, self._logs = False, None
        if notecodec.PITCH <= token < notecodec.DURATION:
            self._note(token - notecodec.PITCH)
            self.after_pitch, self._logs = True, None

    def _note(self, pitch: int) -> None:
        unresolved = (self.next_gap == 0) & (self.onset < self.tick)  # the onset before this one's notes
        self.next_gap[unresolved] = self.tick - self.onset[unresolved]
        n = len(self.pitch)
        step = pitch - int(self.pitch[-1]) if n else NO_STEP
        match = np.zeros(n + 1, dtype=np.int64)
        if n > 1:
            match[1:n] = np.where(self.step[1:n] == step, np.minimum(self.match[:n - 1] + 1, MAX_MATCH), 0)
        self.pitch = np.append(self.pitch, pitch)
        self.onset = np.append(self.onset, self.tick)
        self.step = np.append(self.step, step)
        self.next_gap = np.append(self.next_gap, 0)
        self.end = np.append(self.end, 0)
        self.match = match
        if len(self.pitch) > MEMORY_NOTES + MEMORY_NOTES // 4:  # forget the oldest: the runs into the rest stay
            for name in ("pitch", "onset", "step", "match", "next_gap", "end"):
                setattr(self, name, getattr(self, name)[-MEMORY_NOTES:].copy())

    def followers(self) -> tuple[int, np.ndarray]:
        """(the longest match's length, the earlier notes j whose run matches that long): the notes j + 1 followed
        the same run of intervals as the last note; of those, the ones played at the last note's own pitch where
        there are any (the figure as it was, not a transposition of it); (0, none) before any match."""
        n = len(self.pitch)
        if n < 2:
            return 0, np.zeros(0, dtype=np.int64)
        earlier = self.match[:n - 1]  # j + 1 must already be known
        best = int(earlier.max())
        if best < 1:
            return 0, np.zeros(0, dtype=np.int64)
        js = np.flatnonzero(earlier == best)
        same = js[self.pitch[js] == self.pitch[-1]]
        return best, same if len(same) else js

    def predict(self) -> Remembered:
        """What the notes that followed the longest matches say of the next pitch and the next gap, and the notes
        still sounding of the length of a note just struck."""
        duration = self.ends() if self.after_pitch else None
        best, js = self.followers()
        if not best:
            return Remembered(0, None, None, duration)
        pitches = self.pitch[-1] + self.step[js + 1]
        # within the register the piece has played: a figure that rises as it repeats would climb on
        pitches = pitches[(pitches >= self.pitch.min()) & (pitches <= self.pitch.max())]
        pitch = np.bincount(pitches, minlength=128) / len(pitches) if len(pitches) else None
        gaps = np.minimum(self.next_gap[js], notecodec.MAX_SHIFT_TICKS)
        gaps = gaps[gaps > 0]
        gap = None
        if len(gaps) and not self.after_shift:
            ticks = np.arange(1, notecodec.MAX_SHIFT_TICKS + 1)
            bumps = np.exp(-np.abs(ticks[:, None] - gaps[None, :]) / SHIFT_SPREAD).sum(1)
            gap = bumps / bumps.sum()
        return Remembered(best, pitch, gap, duration)

    def ends(self) -> np.ndarray | None:
        """The distribution of a new note's Duration bin if it ends with a note already sounding (None: none
        sounds)."""
        sounding = self.end > self.tick
        if not sounding.any():
            return None
        bins = notecodec.duration_bin(self.end[sounding] - self.tick)
        bumps = np.exp(-np.abs(np.arange(notecodec.DURATION_BINS)[:, None] - bins[None, :]) / END_SPREAD).sum(1)
        return bumps / bumps.sum()

    def logs(self) -> Logs:
        """`predict()` as (match, the logs of the pitch, gap and duration distributions), kept until the lane
        changes (a Velocity id changes nothing remembered, nor a TimeShift after one: most steps reuse it)."""
        if self._logs is None:
            remembered = self.predict()
            with np.errstate(divide="ignore"):
                self._logs = (remembered.match,) + tuple(
                    None if p is None else np.log(p) for p in (remembered.pitch, remembered.gap, remembered.duration))
        return self._logs


@dataclass(frozen=True)
class Remembered:
    """A lane's memory of what comes next: the longest match (intervals; 0: none), the distribution of the next
    pitch over the 128 keys and of the next gap over the TimeShift ids (1..MAX_SHIFT_TICKS ticks; None: nothing
    remembered: no match, or the last id already began a gap), and of the Duration bin of a note just struck
    (None: not just after a Pitch, or no note sounds)."""

    match: int
    pitch: np.ndarray | None
    gap: np.ndarray | None
    duration: np.ndarray | None = None


Logs = tuple[int, np.ndarray | None, np.ndarray | None, np.ndarray | None]  # match, log pitch, log gap, log duration


def mixed(log_probs: np.ndarray, log_memory: np.ndarray, share: float) -> np.ndarray:
    """One kind's log probabilities (n,) with a distribution over the same ids (its logs) mixed in at `share` of
    the mass the model gives them together: log((1 - share) p + share * mass * memory). In logs, so that no id the
    model made merely unlikely becomes impossible."""
    top = log_probs.max()
    mass = top + np.log(np.exp(log_probs - top).sum())
    return np.logaddexp(np.log1p(-share) + log_probs, np.log(share) + mass + log_memory)


class MotifMemory:
    """Every lane's motifs (module docstring): `mix` the lanes' next-id logits, `read` the ids they drew. The
    primer is read once for all lanes; without a primer the lanes remember their own notes from the first."""

    def __init__(self, codec: Codec, primer_ids: np.ndarray | None, batch: int, weight: float = WEIGHT):
        check_weight(weight)
        self.weight = float(weight)
        self.active = weight > 0 and codec.NAME == notecodec.NAME
        self.lanes: list[LaneMotifs] = []
        if not self.active:
            return
        primer = LaneMotifs()
        ids = np.asarray(primer_ids if primer_ids is not None else [], dtype=np.int64).ravel()
        notes = np.flatnonzero((ids >= notecodec.PITCH) & (ids < notecodec.DURATION))
        if len(notes) > MEMORY_NOTES:  # only the notes it would remember are read (onsets count from there)
            ids = ids[notes[-MEMORY_NOTES]:]
        for token in ids:
            primer.read(int(token))
        self.lanes = [primer] + [primer.copy() for _ in range(batch - 1)]

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) of the lanes' next ids as the log of the mixture (the same where nothing is
        remembered)."""
        if not self.active:
            return logits
        rows = [lane.logs() for lane in self.lanes]
        if all(pitch is None and gap is None and duration is None for _, pitch, gap, duration in rows):
            return logits
        log_probs = torch.log_softmax(logits.float(), -1).cpu().numpy()  # (B, V), a copy of its own
        for b, (match, log_pitch, log_gap, log_duration) in enumerate(rows):
            for log_memory, ids, share in ((log_pitch, PITCH_IDS, share_of(match, PITCH_SHARES)),
                                           (log_gap, SHIFT_IDS, share_of(match, SHIFT_SHARES)),
                                           (log_duration, DURATION_IDS, END_SHARE)):
                share = share * self.weight
                if log_memory is not None and share > 0:
                    log_probs[b, ids] = mixed(log_probs[b, ids], log_memory, share)
        return torch.from_numpy(log_probs).to(logits.device, logits.dtype)

    def read(self, tokens: np.ndarray) -> None:
        """Follow one id per lane (B,)."""
        for lane, token in zip(self.lanes, np.asarray(tokens, dtype=np.int64).ravel(), strict=True):
            lane.read(int(token))
