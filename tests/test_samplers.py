"""PerceiverS training crops: alignment, and coverage (effective/sequential reach every position; baseline not)."""

from __future__ import annotations

import numpy as np
import pytest

from core.models.perceivers.crops import (
    NO_POSITION,
    baseline,
    collate,
    crop_ending_at,
    effective,
    sequential,
    sequential_count,
)
from core.tokenizer import PAD

CONTEXT, LATENTS = 32, 8
LENGTHS = [2, 6, 9, 20, 33, 34, 100, 257]  # shorter than M, about M, inside N, about N + 1, many windows


def piece(length: int) -> np.ndarray:
    return (np.arange(length) % 380 + 3).astype(np.uint16)  # distinct, never PAD


def covered(crops) -> set[int]:
    return {int(p) for crop in crops for p in crop.positions if p != NO_POSITION}


@pytest.mark.parametrize("length", LENGTHS)
def test_crops_align_inputs_targets_and_positions(length):
    tokens = piece(length)
    for end in range(2, length + 1):
        crop = crop_ending_at(tokens, end, CONTEXT, LATENTS)
        assert crop.inputs.shape == (CONTEXT,) and crop.targets.shape == crop.positions.shape == (LATENTS,)
        real = crop.inputs != PAD
        assert not real[:-1][np.diff(real.astype(int)) < 0].any(), "padding only on the left"
        assert crop.inputs[-1] == tokens[end - 2]
        for j, position in enumerate(crop.positions):
            if position == NO_POSITION:
                assert crop.targets[j] == PAD
                continue
            assert crop.targets[j] == tokens[position]
            assert crop.inputs[CONTEXT - LATENTS + j] == tokens[position - 1]
        assert real.sum() == min(end - 1, CONTEXT)


@pytest.mark.parametrize("length", LENGTHS)
def test_effective_covers_every_position_including_the_first(length):
    rng = np.random.default_rng(0)
    tokens = piece(length)
    crops = [effective(tokens, rng, CONTEXT, LATENTS) for _ in range(3000)]
    assert covered(crops) == set(range(1, length))
    assert 1 in covered(crops)


@pytest.mark.parametrize("length", LENGTHS)
def test_sequential_tiles_the_piece(length):
    tokens = piece(length)
    crops = [sequential(tokens, i, CONTEXT, LATENTS) for i in range(sequential_count(length, LATENTS))]
    assert covered(crops) == set(range(1, length))
    counts = np.bincount(np.concatenate([c.positions[c.positions >= 0] for c in crops]), minlength=length)
    assert (counts[1:length - LATENTS] == 1).all()  # only the last crop, clamped to the end, overlaps
    with pytest.raises(ValueError):
        sequential(tokens, len(crops), CONTEXT, LATENTS)


@pytest.mark.parametrize("length", [20, 100, 257])
def test_baseline_leaves_the_opening_unlearned(length):
    """The Perceiver AR crop: the gap effective segmentation closes."""
    rng = np.random.default_rng(0)
    crops = [baseline(piece(length), rng, CONTEXT, LATENTS) for _ in range(3000)]
    seen = covered(crops)
    first_reached = max(1, min(length, CONTEXT + 1) - LATENTS)
    assert seen == set(range(first_reached, length))
    assert 1 not in seen
    assert len(set(range(1, length)) - seen) == first_reached - 1


def test_collate_stacks_for_the_model():
    rng = np.random.default_rng(1)
    inputs, targets = collate([effective(piece(50), rng, CONTEXT, LATENTS) for _ in range(3)])
    assert inputs.shape == (3, CONTEXT) and targets.shape == (3, LATENTS) and inputs.dtype == np.int64


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        crop_ending_at(piece(10), 11, CONTEXT, LATENTS)
    with pytest.raises(ValueError):
        effective(piece(1), np.random.default_rng(), CONTEXT, LATENTS)
    with pytest.raises(ValueError):
        effective(piece(10), np.random.default_rng(), 4, 8)
