"""How the trainer trains SMDIM: absorbing-state diffusion on random windows of the pieces.

A micro-batch is `window`-token windows of training pieces, each drawn from (seed, step, micro, item) alone
(nothing to save to resume), PAD after a piece's end. The loss masks each window at its own rate t (stratified
over the batch so every batch spans (0, 1]), each non-PAD id independently with probability t, and takes the
cross-entropy of the masked ids weighted 1/t: the continuous-time ELBO of absorbing diffusion with the linear
schedule alpha_t = 1 - t (MDLM, Sahoo et al. 2024; SEDD). Summed, it is in expectation the negative log-likelihood
bound of the whole window, so the trainer's division by the window's ids makes it nats per token, comparable with
the left-to-right models' (an upper bound). Held-out pieces are scored at fixed rates and masks (reproducible).

The ids are the model's codec's (core.codecs.codec_of: the trainer serves the pieces encoded with it); PAD is the
same id in both codecs, and the seconds of music that bits per second divide by are the piece's in the model's
codec (core.metrics.ids_music_seconds: the clock, or the last note's end where the notes codec's clock stops at
the last onset), as `recital eval` counts them. A window is cut anywhere in a piece with either codec (with the
note-level one it may begin on a Duration whose Pitch is just before it): the windows a denoising pass reads
(core/infill.py, core/denoising.py) begin anywhere too, so training sees what filling sees.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from core.codecs import codec_of
from core.models.interface import PieceData
from core.models.smdim.model import SMDIM
from core.tokenizer import PAD

SHORTEST_T = 1e-3  # the masking rate's floor: weights 1/t stay finite
HELD_OUT_RATES = 8  # masking rates per held-out window (midpoints of equal strata of (0, 1])
_WINDOW = 7  # what a generator is for (part of its seed), beside trainer.data's


def mask_batch(ids: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
               rates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noisy ids (B, T), the masked positions (B, T) and each row's rate t (B,): non-PAD ids masked with
    probability t. rates: given, or stratified over the rows from one uniform draw."""
    batch = ids.shape[0]
    if rates is None:
        offset = torch.rand((), generator=generator, device=ids.device)
        rates = (offset + torch.arange(batch, device=ids.device) / batch) % 1.0
    rates = rates.clamp(min=SHORTEST_T)
    masked = (torch.rand(ids.shape, generator=generator, device=ids.device) < rates[:, None]) & (ids != PAD)
    return ids.masked_fill(masked, mask_id), masked, rates


def elbo_sum(module: torch.nn.Module, ids: torch.Tensor, mask_id: int, generator: torch.Generator | None = None,
             rates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed 1/t-weighted cross-entropy of the masked ids: nats, masked ids counted) of one masked draw."""
    noisy, masked, rates = mask_batch(ids, mask_id, generator, rates)
    logits = module(noisy)  # (B, T, V)
    losses = F.cross_entropy(logits[masked].float(), ids[masked], reduction="none")
    weights = (1.0 / rates)[:, None].expand_as(masked)[masked]
    return (losses * weights).sum(), masked.sum()


def piece_elbo(module: torch.nn.Module, piece: np.ndarray, window: int, draws: int = HELD_OUT_RATES,
               seed: int = 0, device: torch.device | str = "cpu") -> float:
    """ELBO bound in nats of one piece's ids (int64), cut into windows of `window` ids: each window masked `draws`
    times, at the midpoints of `draws` equal strata of the masking rate, with masks from a generator seeded `seed`
    for the piece, the bounds averaged over the draws. The same number for the same model, piece and settings."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    rates = (torch.arange(draws, device=device) + 0.5) / draws  # (draws,)
    total = 0.0
    for begin in range(0, len(piece), window):
        part = torch.from_numpy(piece[begin:begin + window]).to(device)[None].expand(draws, -1)  # (draws, w)
        with torch.no_grad():
            bound, _ = elbo_sum(module, part.contiguous(), module.mask_id, generator, rates)
        total += float(bound) / draws
    return total


class SMDIMTraining:
    """The SMDIM training adapter (core.models.interface.Training)."""

    presets = {
        "tiny": {"d_embed": 32, "d_model": 64, "n_blocks": 2, "n_heads": 2, "d_state": 8, "window": 256,
                 "attn_window": 16, "mlp_ratio": 2, "default_budget": "8MB"},
        "small": {"d_embed": 96, "d_model": 192, "n_blocks": 3, "n_heads": 4, "window": 512, "attn_window": 32},
        "default": {},
    }

    def __init__(self, model: SMDIM):
        self.model = model
        self.source: PieceData | None = None
        self.lanes: list[list[int]] = []

    def shortest_piece(self) -> int:
        return 16

    def start(self, source: PieceData, lanes: list[list[int]], total_lanes: int, budget: int, saved: dict) -> None:
        self.source, self.lanes = source, lanes

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        """The windows (b, window) as inputs and as targets: the loss masks them itself."""
        window = self.model.config.window
        source = self.source
        windows = np.full((len(self.lanes[micro]), window), PAD, dtype=np.int64)
        for row, item in enumerate(self.lanes[micro]):
            rng = np.random.default_rng([source.seed, _WINDOW, step, micro, item])
            piece = source.draw(rng)
            begin = int(rng.integers(max(1, len(piece) - window + 1)))
            crop = piece[begin:begin + window]
            windows[row, :len(crop)] = crop
        return windows, windows.copy()

    def position(self) -> dict:
        return {}

    def loss(self, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        """The 1/t-weighted masked cross-entropy summed over the micro-batch (its expectation: the NLL bound)."""
        return elbo_sum(module, targets, self.model.mask_id)[0]

    def held_out(self, pieces: Iterable[np.ndarray], budget: int, batch: int,
                 device: torch.device) -> tuple[float, float]:
        """(ELBO bound in nats, ids) of whole held-out pieces, cut into windows, each at HELD_OUT_RATES fixed
        rates with masks from a fixed seed: the same number for the same model."""
        nll, count = 0.0, 0.0
        for piece in pieces:
            bound, ids = self.piece_bound(np.asarray(piece, dtype=np.int64), device)
            nll += bound
            count += ids
        return nll, count

    def piece_bound(self, piece: np.ndarray, device: torch.device) -> tuple[float, int]:
        """(ELBO bound of one piece in nats, its ids): each window's bound averaged over the fixed rates."""
        return self.elbo(piece, self.model.config.window, HELD_OUT_RATES, 0, device), int((piece != PAD).sum())

    def elbo(self, piece: np.ndarray, window: int, draws: int, seed: int, device: torch.device | str) -> float:
        """The held-out bound of one piece in nats (core.models.interface.Training.elbo): `piece_elbo`."""
        return piece_elbo(self.model, piece, window, draws, seed, device)

    def record(self) -> None:
        """Nothing: a plan never reads a longer window than the config's, which is what training used."""


def bits_per_second(training: SMDIMTraining, pieces: Iterable[np.ndarray], device: torch.device | str = "cpu"
                    ) -> float:
    """The held-out ELBO in bits per second of music (the piece's seconds in the model's codec, as core.metrics
    counts them): comparable across codecs and models."""
    from core.metrics import ids_music_seconds  # scipy and the metrics: only when a report is made

    codec = codec_of(training.model)
    bits, seconds = 0.0, 0.0
    for piece in pieces:
        piece = np.asarray(piece, dtype=np.int64)
        bound, _ = training.piece_bound(piece, torch.device(device))
        bits += bound / math.log(2)
        seconds += ids_music_seconds(codec, piece)
    return bits / max(seconds, 1e-9)
