"""Training crops for PerceiverS: pure functions from a piece's token ids to (inputs, targets, positions).

A crop is the window piece[s:end] (at most N + 1 tokens), split into inputs (all but the last token, left-padded
to N) and next-token targets. The model's M latents sit on the last M inputs, so a crop trains the predictions of
piece positions end - M .. end - 1 (those >= 1: position 0 is BOS and has nothing before it).

- `effective` (PerceiverS): END uniform in [M + 1, T] (T = piece length), looking back up to N tokens and
  left-padding when the piece is shorter. Every position 1 .. T - 1 can be a target, the opening included, and a
  latent never sees context it would not have at generation time.
- `sequential`: the crops whose targets tile the piece: prefixes growing by M until they hold N, then windows
  sliding on by M (the last one ends at the piece's end).
- `baseline` (Perceiver AR): START uniform in [0, T - N - 1], a full window of N + 1 tokens. Positions before
  N + 1 - M are never targets of a piece longer than the window; that gap is what effective segmentation closes.

With `sounding` (a model with the sounding-notes input, issue #17) a crop also carries the pitches sounding before
its first input (a crop from inside a piece starts with notes held from before it), and `collate` appends them to
the inputs as 128 columns of 0/1 (`split_sounding` takes them off again): the model's sets are the piece's, as
generation, which reads the piece from its start, has them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.models.layers import PITCHES, sounding_after
from core.tokenizer import PAD

NO_POSITION = -1


@dataclass(frozen=True)
class Crop:
    inputs: np.ndarray  # (N,) int64, left-padded with PAD
    targets: np.ndarray  # (M,) int64: the next token after each latent; PAD where there is none
    positions: np.ndarray  # (M,) int64: the piece position each target is; NO_POSITION where PAD
    sounding: np.ndarray | None = None  # (128,) bool: the pitches sounding before the first input (asked for)


def _check(piece: np.ndarray, context: int, latents: int) -> int:
    if piece.ndim != 1 or len(piece) < 2:
        raise ValueError(f"a piece needs at least 2 tokens to predict one, got shape {piece.shape}")
    if not 1 <= latents <= context:
        raise ValueError(f"need 1 <= latents <= context, got latents={latents}, context={context}")
    return len(piece)


def sounding_before(piece: np.ndarray, start: int) -> np.ndarray:
    """(128,) bool: the pitches sounding after piece[:start] (core.models.layers.sounding_notes' rules)."""
    if start == 0:
        return np.zeros(PITCHES, dtype=bool)
    return sounding_after(torch.from_numpy(np.asarray(piece[:start], dtype=np.int64))[None])[0].numpy()


def crop_ending_at(piece: np.ndarray, end: int, context: int, latents: int, sounding: bool = False) -> Crop:
    """The crop whose last target is piece[end - 1] (2 <= end <= T); `sounding`: with the pitches sounding before
    its first input."""
    length = _check(piece, context, latents)
    if not 2 <= end <= length:
        raise ValueError(f"crop end {end} outside [2, {length}]")
    start = max(0, end - context - 1)
    window = piece[start:end].astype(np.int64)
    inputs = np.full(context, PAD, dtype=np.int64)
    inputs[context - len(window) + 1:] = window[:-1]
    targets = np.full(context, PAD, dtype=np.int64)
    targets[context - len(window) + 1:] = window[1:]
    positions = np.full(context, NO_POSITION, dtype=np.int64)
    positions[context - len(window) + 1:] = np.arange(start + 1, end)
    return Crop(inputs, targets[-latents:], positions[-latents:], sounding_before(piece, start) if sounding else None)


def effective(piece: np.ndarray, rng: np.random.Generator, context: int, latents: int,
              sounding: bool = False) -> Crop:
    """Effective segmentation: a random END in [M + 1, T], up to N tokens back from it."""
    length = _check(piece, context, latents)
    low = min(latents + 1, length)
    return crop_ending_at(piece, int(rng.integers(low, length + 1)), context, latents, sounding)


def sequential_count(length: int, latents: int) -> int:
    """How many sequential crops tile a piece of `length` tokens."""
    return -(-(length - 1) // latents)


def sequential(piece: np.ndarray, index: int, context: int, latents: int, sounding: bool = False) -> Crop:
    """The index-th crop of the sequential mode: targets index*M + 1 .. (index+1)*M (the last one clamped)."""
    length = _check(piece, context, latents)
    count = sequential_count(length, latents)
    if not 0 <= index < count:
        raise ValueError(f"sequential crop {index} outside [0, {count})")
    return crop_ending_at(piece, min((index + 1) * latents + 1, length), context, latents, sounding)


def baseline(piece: np.ndarray, rng: np.random.Generator, context: int, latents: int) -> Crop:
    """Perceiver AR's crop: a random START, a full window of N + 1 tokens (the whole piece when shorter)."""
    length = _check(piece, context, latents)
    start = int(rng.integers(0, max(0, length - context - 1) + 1))
    return crop_ending_at(piece, min(start + context + 1, length), context, latents)


SAMPLERS = ("effective", "sequential", "baseline")


def collate(crops: list[Crop]) -> tuple[np.ndarray, np.ndarray]:
    """Stack crops into inputs (B, N) and targets (B, M) for `PerceiverS.forward`; crops with their sounding sets:
    inputs (B, N + 128), each row's set after its ids (see `split_sounding`)."""
    inputs = np.stack([c.inputs for c in crops])
    if crops[0].sounding is not None:
        inputs = np.concatenate([inputs, np.stack([c.sounding for c in crops]).astype(np.int64)], axis=1)
    return inputs, np.stack([c.targets for c in crops])


def split_sounding(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Collated inputs with sounding sets (B, N + 128) -> the crops' ids (B, N) and the sets before them (B, 128)."""
    return inputs[:, :-PITCHES], inputs[:, -PITCHES:].bool()
