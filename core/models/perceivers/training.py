"""How the trainer trains PerceiverS: effective-segmentation crops, each drawn from its step and item alone.

A micro-batch is a batch of crops (trainer.data.CropBatches) whose loss is taken on the latent positions; the
batches depend only on (seed, step, micro, item), so nothing about the data needs saving to resume. Held-out
pieces are scored in the sequential crops, whose targets tile each piece once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from core.models.interface import PieceData
from core.models.perceivers.crops import sequential, sequential_count
from core.models.perceivers.model import PerceiverS
from core.tokenizer import PAD


class PerceiverSTraining:
    """The PerceiverS training adapter (core.models.interface.Training)."""

    presets = {
        "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 2, "context": 512, "latents": 64, "scale": 128,
                 "default_budget": "4MB"},
        "small": {"d_model": 128, "n_layers": 4, "n_heads": 4, "context": 2048, "latents": 128, "scale": 256},
        "default": {},
    }

    def __init__(self, model: PerceiverS):
        self.model = model
        self.crops = None

    def shortest_piece(self) -> int:
        return self.model.config.latents + 1

    def start(self, source: PieceData, lanes: list[list[int]], total_lanes: int, budget: int, saved: dict) -> None:
        config = self.model.config
        self.crops = source.crop_batches(lanes[0], config.context, config.latents)

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        return self.crops.batch(step, micro)

    def position(self) -> dict:
        return {}

    def loss(self, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        logits, _ = module(inputs)  # (b, M, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=PAD, reduction="sum")

    def held_out(self, pieces: Iterable[np.ndarray], budget: int, batch: int,
                 device: torch.device) -> tuple[float, float]:
        nll, count = 0.0, 0.0
        stream = self._sequential_crops(pieces)
        while group := list(islice(stream, max(1, batch))):
            inputs = torch.from_numpy(np.stack([x for x, _ in group])).to(device)
            targets = torch.from_numpy(np.stack([y for _, y in group])).to(device)
            nll += float(self.loss(self.model, inputs, targets, 0))
            count += float((targets != PAD).sum())
        return nll, count

    def _sequential_crops(self, pieces: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(inputs, targets) of every piece's sequential crops, made as batches need them: a long piece never
        holds all its crops (N ids each) at once. The last crop's targets already scored are PAD."""
        config = self.model.config
        for piece in pieces:
            piece = np.asarray(piece, dtype=np.int64)
            for i in range(sequential_count(len(piece), config.latents)):
                crop = sequential(piece, i, config.context, config.latents)
                fresh = crop.positions > i * config.latents  # the last crop overlaps the one before it
                yield crop.inputs, np.where(fresh, crop.targets, PAD)

    def piece_losses(self, ids: torch.Tensor, budget: int | str | None):
        """A piece (T,) read in its sequential crops, each cut to the context the plan for `budget` (one lane)
        reads and never padded: (nats (n,), target positions (n,)) per crop, each crop its own graph
        (core/adapt.py)."""
        latents, context = self.model.config.latents, self.model.plan(budget, 1).context
        for i in range(sequential_count(len(ids), latents)):
            end = min((i + 1) * latents + 1, len(ids))
            window = ids[max(0, end - context - 1):end]
            logits, _ = self.model(window[None, :-1])  # (1, M', V): the latents on the last M' inputs
            count = logits.shape[1]
            positions = torch.arange(end - count, end)
            fresh = positions > i * latents  # the last crop overlaps the one before it
            nats = F.cross_entropy(logits[0].float(), ids[end - count:end], reduction="none")
            yield nats[fresh], positions[fresh]

    def record(self) -> None:
        """Nothing: a plan never reads more context than the config's, which is what training used."""
