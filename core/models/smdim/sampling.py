"""Iterative unmasking: how a denoiser fills the masked positions of a window in a few passes (MaskGIT order).

Each pass reads the whole window, draws an id for every still-masked position (the session's sampling filters:
temperature, top-k, top-p, min-p), and commits some of them; the rest stay masked for the next pass, which sees
the committed ones. How many stay masked after pass s of S follows a cosine schedule, n cos(pi/2 s/S), so the
first passes commit few ids (the ones the model is surest of) and the last commit many. Which ones are committed:
- "confidence": the most probable draws, with Gumbel noise that shrinks over the passes (MaskGIT's
  randomisation; none at temperature 0), so the order is learned, not fixed;
- "random": a random order (the schedule of absorbing diffusion's reverse process).
Kept positions are never drawn and never change. PAD and BOS are never drawn: a filled position is music.
`constrain(logits (B, T, V), ids (B, T)) -> logits` runs before each draw (composer constraints plug in there).
"""

from __future__ import annotations

import math

import torch

from core.errors import ModelError
from core.generate import SamplingConfig, sample
from core.tokenizer import BOS, PAD

ORDERS = ("confidence", "random")


def still_masked(total: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """Positions per row (B,) left masked after pass `step` (1-based) of `steps`: total * cos(pi/2 step/steps)."""
    return torch.floor(total * math.cos(math.pi / 2 * step / steps)).long() if step < steps else total * 0


def unmask(model, ids: torch.Tensor, keep: torch.Tensor, steps: int, sampling: SamplingConfig | None = None,
           generator: torch.Generator | None = None, constrain=None, order: str = "confidence") -> torch.Tensor:
    """ids (B, T) with every position where `keep` is False filled in `steps` passes of `model` (its `score`
    where it has one, else its forward: ids -> logits (B, T, V))."""
    if order not in ORDERS:
        raise ModelError(f"unmasking order must be one of {', '.join(ORDERS)}, got {order!r}")
    if steps < 1:
        raise ModelError(f"unmasking steps must be at least 1, got {steps}")
    sampling = sampling or SamplingConfig()
    mask_id = model.mask_id
    one_pass = getattr(model, "score", model)
    x = ids.masked_fill(~keep, mask_id)
    masked = ~keep
    total = masked.sum(1)  # (B,)
    for step in range(1, steps + 1):
        if not masked.any():
            break
        logits = one_pass(x).float()  # (B, T, V)
        logits[..., PAD] = float("-inf")
        logits[..., BOS] = float("-inf")
        if constrain is not None:
            logits = constrain(logits, x)
        rows, cols = masked.nonzero(as_tuple=True)
        chosen = logits[rows, cols]  # (n, V)
        drawn = sample(chosen, sampling, generator)  # (n,)
        score = torch.full(masked.shape, float("-inf"), device=x.device)
        if order == "confidence":
            confidence = torch.log_softmax(chosen, -1).gather(1, drawn[:, None])[:, 0]
            noise = sampling.temperature * (1 - step / steps)
            if noise > 0:
                uniform = torch.rand(confidence.shape, generator=generator, device=x.device).clamp(1e-10, 1 - 1e-10)
                confidence = confidence + noise * -torch.log(-torch.log(uniform))
        else:
            confidence = torch.rand(drawn.shape, generator=generator, device=x.device)
        score[rows, cols] = confidence
        commit = masked.sum(1) - still_masked(total, step, steps)  # (B,) ids to commit in each row
        rank = score.argsort(1, descending=True).argsort(1)  # rank of each position's score within its row
        chosen_now = masked & (rank < commit[:, None])
        proposal = torch.full_like(x, mask_id)
        proposal[rows, cols] = drawn
        x = torch.where(chosen_now, proposal, x)
        masked = masked & ~chosen_now
    return x
