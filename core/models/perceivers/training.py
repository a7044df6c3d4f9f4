"""How the trainer trains PerceiverS: effective-segmentation crops, each drawn from its step and item alone.

A micro-batch is a batch of crops (trainer.data.CropBatches) whose loss is taken on the latent positions; the
batches depend only on (seed, step, micro, item), so nothing about the data needs saving to resume. Held-out
pieces are scored in the sequential crops, whose targets tile each piece once. A model with the sounding-notes
input gets, with each crop, the pitches sounding before it (crops.split_sounding).

The ids are the model's codec's (core.codecs.codec_of: the trainer serves the pieces encoded with it, PAD the same
id in both codecs); nothing here reads what an id means, except the sounding-notes input, which follows the event
codec's NoteOn/NoteOff ids and which a "notes" config refuses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from core.models.interface import PieceData
from core.models.layers import sounding_after
from core.models.perceivers.crops import collate, sequential, sequential_count, split_sounding
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
        self.crops = source.crop_batches(lanes[0], config.context, config.latents, sounding=config.sounding_input)

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        return self.crops.batch(step, micro)

    def position(self) -> dict:
        return {}

    def loss(self, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        before = None
        if self.model.config.sounding_input:  # the crops' sets ride after their ids
            inputs, before = split_sounding(inputs)
        logits, _ = module(inputs, sounding=before)  # (b, M, V)
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
                crop = sequential(piece, i, config.context, config.latents, config.sounding_input)
                fresh = crop.positions > i * config.latents  # the last crop overlaps the one before it
                (inputs,), _ = collate([crop])  # with the crop's sounding set, as `loss` reads it
                yield inputs, np.where(fresh, crop.targets, PAD)

    def piece_losses(self, ids: torch.Tensor, budget: int | str | None):
        """A piece (T,) read in its sequential crops, each cut to the context the plan for `budget` (one lane)
        reads and never padded: (nats (n,), target positions (n,)) per crop, each crop its own graph
        (core/adapt.py)."""
        latents, context = self.model.config.latents, self.model.plan(budget, 1).context
        before, read = None, 0  # the pitches sounding after ids[:read]: crops start later and later
        for i in range(sequential_count(len(ids), latents)):
            end = min((i + 1) * latents + 1, len(ids))
            first = max(0, end - context - 1)
            window = ids[first:end]
            if self.model.config.sounding_input and first > read:  # only the ids since the last crop's start
                before, read = sounding_after(ids[None, read:first], before), first
            logits, _ = self.model(window[None, :-1], sounding=before)  # (1, M', V): latents on the last inputs
            count = logits.shape[1]
            positions = torch.arange(end - count, end)
            fresh = positions > i * latents  # the last crop overlaps the one before it
            nats = F.cross_entropy(logits[0].float(), ids[end - count:end], reduction="none")
            yield nats[fresh], positions[fresh]

    def record(self) -> None:
        """Nothing: a plan never reads more context than the config's, which is what training used."""
