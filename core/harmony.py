"""The harmony of the music around a passage, as a soft pull on the keys a model draws for it.

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
(README, "Infilling"). A left-to-right continuation drifts out of its primer's key the same way (the DSMR default
kept it in 18 of 30): its keys are pulled towards the primer's own pitch classes (`PrimerHarmony`).
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
HARMONY_WEIGHT = 1.0  # how hard the pull is on a denoiser (0: none)
LEFT_TO_RIGHT_WEIGHT = 0.5  # and on a left-to-right model continuing a primer (`default_weight`)
KEY_SECONDS = 20.0  # a left-to-right continuation is pulled towards the primer's pitch classes of this long
LONGEST_COUNTED = 2.0  # a note counts for at most this many seconds: a held bass does not outweigh the figures
SMOOTHING = 0.05  # this share of the weight spread over all twelve classes: none is ever ruled out
FIRST_KEY = {notecodec.NAME: notecodec.PITCH, tokenizer.NAME: tokenizer.NOTE_ON}  # the id of key 0, by codec


class HarmonyError(RecitalError):
    """A harmony weight that is not a number >= 0."""


def default_weight(model) -> float:
    """The pull a generation gets unless told otherwise: HARMONY_WEIGHT for a denoiser (SMDIM continuing ten
    MAESTRO primers kept the primer's key or a close one in 25 of 30 continuations with it, 8 without),
    LEFT_TO_RIGHT_WEIGHT towards the primer's key for a left-to-right model (`PrimerHarmony`).

    bench/continuation.py, the notes DSMR default adapting to the ten MAESTRO primers with the density ceiling, 3
    seeds, weight 0 / 0.5 / 0.75 / 1 (0.75 in a second run): key kept 18 / 29 / 30 / 30 of 30, pitch range 43.4 /
    49.4 / 47.7 / 48.1 semitones (the pianists 54.2), onset regularity 0.139 / 0.146 / 0.171 / 0.192 (0.235), but
    re-strikes within 120 ms 0.27 / 0.80 / 1.47 / 1.00 per 30 s (aim < 1) and notes/s 10.40 / 10.57 / 11.80 /
    11.91 (9.46): 0.5 keeps the key without the stutter. Without adapting, 0 -> 0.75: key 19 -> 29 of 30,
    regularity 0.066 -> 0.153, range 40.7 -> 42.9. Pulled instead towards each lane's own last HARMONY_SECONDS (the
    weights of 2026-12-02, before the ceiling): key 26 -> 23 and 37/60 -> 47/60 in two runs, notes/s 12.6 -> 14.3,
    re-strikes adapted 0.25 -> 6.2; new pieces pulled towards their own last bars went round in circles (repeated
    pitch 8-grams 17 -> 114 a minute, MGEval 0.60 -> 0.43): a new piece has no primer, so no pull."""
    return HARMONY_WEIGHT if getattr(model, "family", None) == DENOISE else LEFT_TO_RIGHT_WEIGHT


def check_pull_weight(weight: float, pull: str, error: type[RecitalError]) -> None:
    """One rule for the weight of every pull (the key's here, the beat's in core/pulse.py): a number >= 0."""
    if not (isinstance(weight, (int, float)) and math.isfinite(weight) and weight >= 0):
        raise error(f"the {pull} weight must be a number >= 0 (0: off), got {weight!r}")


def check_weight(weight: float) -> None:
    check_pull_weight(weight, "harmony", HarmonyError)


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


class PrimerHarmony:
    """The pitch classes of the primer's last KEY_SECONDS as one fixed pull on the key of every lane's next id:
    `with_harmony` for a left-to-right model, which writes one id per lane per step with only the music behind
    it to go by. Fixed, not following each lane's own last bars as a denoiser's windows do: a lane that strayed
    pulled itself further (bench/continuation.py, `default_weight`). No primer, or none sounding in its last
    KEY_SECONDS: no pull (a new piece has no key to keep)."""

    def __init__(self, codec: Codec, primer_ids: np.ndarray, weight: float = LEFT_TO_RIGHT_WEIGHT):
        check_weight(weight)
        primer = codec.decode(primer_ids)
        recent = primer.offset > codec.ids_seconds(primer_ids) - KEY_SECONDS
        pull = _pull(_shares(primer.offset[recent] - primer.onset[recent], primer.pitch[recent]), weight)
        self.shift = None if pull is None else torch.from_numpy(pull).float()  # (128,) or None
        self.keys = key_ids(codec)

    def pull(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) of the lanes' next ids, their keys pulled (`pulled`: which key, never whether one)."""
        return logits if self.shift is None else pulled(logits, self.shift, self.keys)
