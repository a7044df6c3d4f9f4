"""How the trainer trains DSMR: whole pieces streamed in segments through one recurrent state per lane group.

Each micro-batch is the next segment of its own group of lanes (trainer.data.LaneStream), read through that
group's state, so memory carries from one step to the next (truncated backprop through time). The run plans its
state at the run's budget beyond what the model was trained with, and records the horizons it trained at.
Held-out pieces are scored whole, streamed under the budget schedule (core.metrics.perplexity_report).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import ModelError
from core.models.dsmr.model import DSMR
from core.models.dsmr.state import RecurrentState, StatePlan
from core.models.interface import PieceData
from core.tokenizer import PAD


class DSMRTraining:
    """The DSMR training adapter (core.models.interface.Training)."""

    presets = {
        "tiny": {"d_model": 64, "n_layers": 2, "n_heads": 2, "segment_len": 128, "max_horizon": 1024,
                 "n_long": 1, "default_budget": "2MB"},
        "small": {"d_model": 192, "n_layers": 4, "n_heads": 3, "segment_len": 256, "default_budget": "4MB"},
        "default": {},
    }

    def __init__(self, model: DSMR):
        self.model = model
        self.streams: list = []
        self.states: list[RecurrentState] = []
        self.plan: StatePlan | None = None

    def shortest_piece(self) -> int:
        return self.model.config.segment_len

    def start(self, source: PieceData, lanes: list[list[int]], total_lanes: int, budget: int, saved: dict) -> None:
        local = len(lanes[0])
        segment = self.model.config.segment_len
        self.streams = [source.lane_stream(group, total_lanes, segment, stream_position(group, saved))
                        for group in lanes]
        self.plan = self.model.plan(budget * local, batch=local, beyond_training=True)
        self.states = [self.model.new_state(self.plan, local) for _ in self.streams]
        for stream, state in zip(self.streams, self.states, strict=True):  # a resumed lane goes on mid-piece
            state.positions.copy_(torch.tensor(stream.offset))

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        return self.streams[micro].next_batch()

    def position(self) -> dict:
        merged: dict[str, list[int]] = {}
        for stream in self.streams:
            merged.update({str(g): [k, o] for g, k, o in zip(stream.lanes, stream.k, stream.offset, strict=True)})
        return merged

    def loss(self, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        logits = module(inputs, self.states[micro])  # (b, L, V)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=PAD, reduction="sum")

    def held_out(self, pieces: Iterable[np.ndarray], budget: int, batch: int,
                 device: torch.device) -> tuple[float, float]:
        from core.metrics import perplexity_report

        pieces = [np.asarray(p, dtype=np.int64) for p in pieces]
        if not pieces:
            return 0.0, 0.0
        report = perplexity_report(self.model, pieces, budget)
        return math.log(report.perplexity) * report.tokens, float(report.tokens)

    def piece_losses(self, ids: torch.Tensor, budget: int | str | None):
        """A piece (T,) read a segment at a time through a fresh state at `budget` for one lane, as generation
        reads it: (nats (n,), target positions (n,)) per segment; the memory carried on is detached (truncated
        backprop), so each segment's loss is its own graph (core/adapt.py)."""
        state = self.model.new_state(self.model.plan(budget, 1), 1)
        segment = self.model.config.segment_len
        for start in range(0, len(ids) - 1, segment):
            end = min(start + segment, len(ids) - 1)
            logits = self.model(ids[None, start:end], state)[0]  # (n, V)
            yield (F.cross_entropy(logits.float(), ids[start + 1:end + 1], reduction="none"),
                   torch.arange(start + 1, end + 1))

    def record(self) -> None:
        config = self.model.config
        config.trained_horizons = longest_horizons(config.trained_horizons, self.plan.horizons)


def longest_horizons(trained: list[int] | None, run: tuple[int, ...]) -> list[int]:
    """Each layer's longest memory seen in training, once a run at `run` horizons has trained it too."""
    return list(run) if trained is None else [max(a, b) for a, b in zip(trained, run, strict=True)]


def stream_position(lanes: list[int], saved: dict) -> dict | None:
    """A LaneStream position for `lanes` from the saved {lane: [k, offset]} (None: start fresh)."""
    if not saved:
        return None
    missing = [g for g in lanes if str(g) not in saved]
    if missing:
        raise ModelError(f"the checkpoint has no data position for lanes {missing}: resume with the same --batch")
    return {"lanes": lanes, "k": [saved[str(g)][0] for g in lanes], "offset": [saved[str(g)][1] for g in lanes]}
