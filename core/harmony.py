"""The harmony of the music around a passage, as a soft pull on the keys a denoiser draws for it.

A small denoiser reads both sides of a region and still picks its pitch classes worse than random notes drawn from
the piece's own statistics do (bench/infill.py: pitch-class overlap with the pianist's notes 0.514 vs 0.477 random
and 0.425 for the DSMR default continuing from the left): what it writes drifts out of the harmony around it. So
the pitch classes that sound within HARMONY_SECONDS of the passage, weighted by how long they sound, become a prior
multiplied into the model's distribution over keys (a product of experts: `weight` x log share added to each
key's logit, then renormalised so a note is as likely as before: only which key changes). Smoothed, so a class the
music around never played stays possible, only less likely: a chromatic passing note is still there to draw. On
the same 50 regions, weight 1: pitch-class overlap 0.514 -> 0.388 (now closer than the DSMR continuing) and pitch
range 13.0 -> 11.5 semitones from the truth; SMDIM continuing the ten MAESTRO primers (each timed window pulled
by its lane's last HARMONY_SECONDS) kept the primer's key or a close one in 8 of 10 continuations, 3 without
(README, "Infilling").
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from core import notecodec, tokenizer
from core.codecs import Codec
from core.errors import RecitalError
from core.midi import Performance
from core.models.interface import DENOISE

HARMONY_SECONDS = 8.0  # the music this far either side of a passage sets its harmony: about two bars
HARMONY_WEIGHT = 1.0  # how hard the pull is (0: none)
LONGEST_COUNTED = 2.0  # a note counts for at most this many seconds: a held bass does not outweigh the figures
SMOOTHING = 0.05  # this share of the weight spread over all twelve classes: none is ever ruled out
FIRST_KEY = {notecodec.NAME: notecodec.PITCH, tokenizer.NAME: tokenizer.NOTE_ON}  # the id of key 0, by codec


class HarmonyError(RecitalError):
    """A harmony weight that is not a number >= 0."""


def default_weight(model) -> float:
    """The pull a generation gets unless told otherwise: HARMONY_WEIGHT for a denoiser (SMDIM continuing ten
    MAESTRO primers kept the primer's key or a close one in 25 of 30 continuations with it, 8 without), none for
    a left-to-right model, which reads the music behind it id by id. bench/continuation.py --harmony 0,1, the
    notes DSMR default of 2026-12-02, two runs (3 and 6 seeds a primer): key kept 26/30 -> 23/30 and 37/60 ->
    47/60, pitch range 41 -> 46 and 42 -> 51 semitones (the pianists 54), but notes/s 12.6 -> 14.3 and 13.6 ->
    14.3 (9.5) and polyphony 3.8 -> 4.3 and 4.0 -> 4.4 (3.8) further from the truth; adapted to the primer,
    re-strikes 0.25 -> 6.2 per 30 s; and new pieces, pulled towards their own last bars, went round in circles
    (repeated pitch 8-grams 17 -> 114 a minute, MGEval 0.60 -> 0.43). A composer asks for it (`--harmony 1`)
    where the key matters more than the density."""
    return HARMONY_WEIGHT if getattr(model, "family", None) == DENOISE else 0.0


def check_weight(weight: float) -> None:
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
        raise HarmonyError(f"the harmony weight must be a number >= 0 (0: off), got {weight!r}")


def pitch_class_shares(notes: Performance) -> np.ndarray | None:
    """(12,) the share of the time each pitch class sounds among `notes` (each counted LONGEST_COUNTED seconds at
    most), smoothed by SMOOTHING; None for no notes."""
    return _shares(notes.offset - notes.onset, notes.pitch)


def _shares(seconds: np.ndarray, pitch: np.ndarray) -> np.ndarray | None:
    """`pitch_class_shares` of notes sounding `seconds` each."""
    if not len(seconds):
        return None
    weights = np.bincount(np.asarray(pitch, dtype=np.int64) % 12, weights=np.minimum(seconds, LONGEST_COUNTED),
                          minlength=12)
    total = float(weights.sum())
    if total <= 0:
        return None
    shares = weights / total
    return (1 - SMOOTHING) * shares + SMOOTHING / 12


def key_pull(notes: Performance, weight: float = HARMONY_WEIGHT) -> np.ndarray | None:
    """(128,) `weight` x log(share / largest share) of each key's pitch class among `notes` (0 for the commonest
    class); None when there are no notes or `weight` is 0 (no pull)."""
    check_weight(weight)
    return _pull(pitch_class_shares(notes), weight)


def _pull(shares: np.ndarray | None, weight: float) -> np.ndarray | None:
    if shares is None or weight == 0:
        return None
    return weight * np.log(shares / shares.max())[np.arange(128) % 12]


def pulled(logits: torch.Tensor, shift: torch.Tensor, keys: slice) -> torch.Tensor:
    """`logits` (..., V) with `shift` (..., 128, broadcast) added to the ids `keys`, renormalised so the keys
    together stay as likely as before (where any key may be drawn at all): the pull chooses which key, never
    whether a note comes."""
    before = logits[..., keys]
    after = before + shift.to(logits.device, logits.dtype)
    mass_before = torch.logsumexp(before, -1, keepdim=True)
    mass_after = torch.logsumexp(after, -1, keepdim=True)
    logits = logits.clone()
    logits[..., keys] = torch.where(torch.isfinite(mass_before), after - mass_after + mass_before, before)
    return logits


def key_ids(codec: Codec) -> slice:
    """The codec's 128 key ids (Pitch, or NoteOn)."""
    first = FIRST_KEY[codec.NAME]
    return slice(first, first + 128)


def with_harmony(constrain: Callable, notes: Performance, codec: Codec, weight: float = HARMONY_WEIGHT) -> Callable:
    """`constrain` (logits (B, T, V), ids -> logits), then the `key_pull` of `notes` on the codec's key ids
    (Pitch, or NoteOn), renormalised at each slot so the keys together stay as likely as the model made them:
    the harmony chooses which key, never whether a note comes (added alone, it thinned a sparse fill to nothing)."""
    pull = key_pull(notes, weight)
    if pull is None:
        return constrain
    keys = key_ids(codec)
    shift = torch.from_numpy(pull).float()

    def harmonised(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return pulled(constrain(logits, ids), shift, keys)

    return harmonised


def music_near(piece: Performance, start: float, end: float) -> Performance:
    """The notes of `piece` sounding within HARMONY_SECONDS before `start` or after `end` (or between)."""
    lo, hi = start - HARMONY_SECONDS, end + HARMONY_SECONDS
    near = (piece.offset > lo) & (piece.onset < hi)
    return Performance(piece.onset[near], piece.offset[near], piece.pitch[near], piece.velocity[near])


class LaneHarmony:
    """Each lane's pitch classes of its last HARMONY_SECONDS, as a pull on the key of its next id: `with_harmony`
    for a left-to-right model, which writes one id per lane per step with only the music behind it to go by.

    It follows the ids as they are written (`read`): TimeShifts move a lane's clock, a note counts from its
    onset for its length (the notes codec's Duration, which follows its Pitch at once; the event codec's NoteOff,
    a note still sounding counts up to now), each at most LONGEST_COUNTED seconds, and leaves the window
    HARMONY_SECONDS after it ends. The primer is every lane's beginning, read once."""

    def __init__(self, codec: Codec, batch: int, primer_ids: np.ndarray, weight: float = HARMONY_WEIGHT):
        check_weight(weight)
        self.codec, self.weight, self.keys = codec, weight, key_ids(codec)
        self.notes_codec = codec.NAME == notecodec.NAME
        primer = codec.decode(primer_ids)
        clock = codec.ids_seconds(primer_ids)
        recent = primer.offset > clock - HARMONY_SECONDS
        self.clock = np.full(batch, clock)
        self.onset = [list(primer.onset[recent]) for _ in range(batch)]  # each lane's notes in its window
        self.offset = [list(primer.offset[recent]) for _ in range(batch)]
        self.pitch = [list(primer.pitch[recent].astype(np.int64)) for _ in range(batch)]
        self.waiting: list[int | None] = [None] * batch  # notes codec: a Pitch whose Duration comes next
        self.open: list[dict[int, float]] = [{} for _ in range(batch)]  # event codec: sounding pitch -> onset
        self.shift = torch.zeros(batch, 128)
        for lane in range(batch):
            self._update(lane)

    def read(self, tokens: np.ndarray) -> None:
        """Follow one id per lane (B,)."""
        codec = self.codec
        for lane, token in enumerate(tokens.tolist()):
            if codec.TIME_SHIFT <= token < codec.TIME_SHIFT + codec.MAX_SHIFT_TICKS:
                self.clock[lane] += (token - codec.TIME_SHIFT + 1) * tokenizer.TICK_SECONDS
            elif self.notes_codec and notecodec.PITCH <= token < notecodec.DURATION:
                self.waiting[lane] = token - notecodec.PITCH
                continue
            elif self.notes_codec and notecodec.DURATION <= token < notecodec.TIME_SHIFT:
                if self.waiting[lane] is None:
                    continue
                ticks = int(notecodec.BIN_TICKS[token - notecodec.DURATION])
                self._add(lane, self.clock[lane], self.clock[lane] + ticks * tokenizer.TICK_SECONDS,
                          self.waiting[lane])
            elif not self.notes_codec and tokenizer.NOTE_ON <= token < tokenizer.NOTE_OFF:
                self.open[lane][token - tokenizer.NOTE_ON] = self.clock[lane]
                continue
            elif not self.notes_codec and tokenizer.NOTE_OFF <= token < tokenizer.TIME_SHIFT:
                onset = self.open[lane].pop(token - tokenizer.NOTE_OFF, None)
                if onset is None:
                    continue
                self._add(lane, onset, self.clock[lane], token - tokenizer.NOTE_OFF)
            else:
                continue
            self.waiting[lane] = None
            self._update(lane)

    def pull(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) of the lanes' next ids, their keys pulled (`pulled`: which key, never whether one)."""
        return pulled(logits, self.shift, self.keys)

    def _add(self, lane: int, onset: float, offset: float, pitch: int) -> None:
        self.onset[lane].append(onset)
        self.offset[lane].append(offset)
        self.pitch[lane].append(pitch)

    def _update(self, lane: int) -> None:
        """Drop the notes that left the lane's window; its pull from those left and the notes still sounding."""
        clock, onset, offset, pitch = self.clock[lane], self.onset[lane], self.offset[lane], self.pitch[lane]
        keep = [i for i, end in enumerate(offset) if end > clock - HARMONY_SECONDS]
        if len(keep) < len(offset):
            self.onset[lane], self.offset[lane], self.pitch[lane] = ([row[i] for i in keep]
                                                                     for row in (onset, offset, pitch))
        sounding = self.open[lane]
        seconds = np.array([b - a for a, b in zip(self.onset[lane], self.offset[lane], strict=True)]
                           + [clock - start for start in sounding.values()])
        pitches = np.array(self.pitch[lane] + list(sounding), dtype=np.int64)
        pull = _pull(_shares(seconds, pitches), self.weight)
        self.shift[lane] = 0.0 if pull is None else torch.from_numpy(pull).float()
