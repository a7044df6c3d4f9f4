"""A third architecture in one file, the shape a new model takes: a toy left-to-right model that predicts the next
id from the last one (an embedding and a head), its plan, its state and its training adapter, registered with
`register_toy()`. Nothing outside this file knows it; tests/test_toy_architecture.py runs it everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.budget import format_bytes, parse_budget
from core.errors import BudgetError, ModelError
from core.models import registry
from core.models.config import budget_problems, config_from_dict, field_problems, range_problems
from core.models.interface import LEFT_TO_RIGHT, Memory, check_ids
from core.models.packed import matrix_kind
from core.tokenizer import PAD, VOCAB_SIZE

ARCH = "toy"
LANE_BYTES = 8  # a state remembers one id per lane


@dataclass(frozen=True)
class ToyConfig:
    vocab_size: int = VOCAB_SIZE
    d_model: int = 16
    window: int = 16  # tokens per training crop
    default_budget: str = "1KB"

    def __post_init__(self) -> None:
        problems = field_problems(self) or range_problems(self, {"d_model": (1, 1024), "window": (2, 4096)})
        problems += budget_problems(self.default_budget)
        if problems:
            raise ModelError("bad toy config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ToyConfig:
        return config_from_dict(cls, data, "toy")


@dataclass(frozen=True)
class ToyPlan:
    batch: int
    budget: int | None

    @property
    def nbytes(self) -> int:
        return self.batch * LANE_BYTES

    def memories(self) -> tuple[Memory, ...]:
        return (Memory("last id", 1, 1),)

    def describe(self) -> str:
        return f"toy state {format_bytes(self.nbytes)} for {self.batch} lanes: remembers the last id"


class ToyState:
    def __init__(self, plan: ToyPlan):
        self.plan = plan
        self.last = torch.zeros(plan.batch, dtype=torch.long)

    @property
    def batch(self) -> int:
        return self.plan.batch

    @property
    def nbytes(self) -> int:
        return self.last.numel() * self.last.element_size()

    def reset(self, lane: int) -> None:
        self.last[lane] = 0


class Toy(nn.Module):
    arch: ClassVar[str] = ARCH
    family: ClassVar[str] = LEFT_TO_RIGHT

    def __init__(self, config: ToyConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))  # (B, T, V): each position predicts from its own id

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1) -> ToyPlan:
        budget = parse_budget(self.config.default_budget) * batch if budget_bytes is None else parse_budget(
            budget_bytes)
        if budget < batch * LANE_BYTES:
            raise BudgetError(f"memory budget {budget} bytes is too small for {batch} toy lanes")
        return ToyPlan(batch, budget)

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        return ""

    def new_state(self, plan: ToyPlan, batch: int | None = None) -> ToyState:
        if batch is not None and batch != plan.batch:
            raise BudgetError(f"the plan was made for batch {plan.batch}, not {batch}: plan again")
        return ToyState(plan)

    def use_step_weights(self, kind: str) -> None:
        matrix_kind(kind)  # the same kinds are accepted; the toy has one path

    def describe(self) -> str:
        return f"a toy that predicts from the last id ({self.config.d_model} numbers per id)"

    def read(self, ids: torch.Tensor, state: ToyState) -> torch.Tensor:
        check_ids(ids, 2, state.batch, self.config.vocab_size, "read")
        state.last.copy_(ids[:, -1])
        return self(ids)

    def prefill(self, ids: torch.Tensor, state: ToyState) -> torch.Tensor:
        return self.read(ids, state)[:, -1]

    def output_weight(self) -> torch.Tensor:
        return self.head.weight

    def step(self, ids: torch.Tensor, state: ToyState) -> torch.Tensor:
        check_ids(ids, 1, state.batch, self.config.vocab_size, "step")
        state.last.copy_(ids)
        return self(ids[:, None])[:, 0]


class ToyTraining:
    """Random windows of `window + 1` tokens, drawn from (seed, step, micro, item) alone."""

    presets: ClassVar[dict[str, dict]] = {"tiny": {"d_model": 8}, "small": {}, "default": {}}

    def __init__(self, model: Toy):
        self.model = model

    def shortest_piece(self) -> int:
        return 2

    def start(self, source, lanes: list[list[int]], total_lanes: int, budget: int, saved: dict) -> None:
        self.source, self.lanes = source, lanes

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        window = self.model.config.window
        inputs = np.full((len(self.lanes[micro]), window), PAD, dtype=np.int64)
        targets = np.full_like(inputs, PAD)
        for row, item in enumerate(self.lanes[micro]):
            rng = np.random.default_rng([self.source.seed, step, micro, item])
            piece = self.source.draw(rng)
            start = int(rng.integers(max(1, len(piece) - window)))
            crop = piece[start:start + window + 1]
            inputs[row, :len(crop) - 1], targets[row, :len(crop) - 1] = crop[:-1], crop[1:]
        return inputs, targets

    def position(self) -> dict:
        return {}

    def loss(self, module: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        logits = module(inputs)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                               ignore_index=PAD, reduction="sum")

    def held_out(self, pieces: Iterable[np.ndarray], budget: int, batch: int,
                 device: torch.device) -> tuple[float, float]:
        nll, count = 0.0, 0.0
        for piece in pieces:
            ids = torch.as_tensor(np.asarray(piece, dtype=np.int64), device=device)
            nll += float(self.loss(self.model, ids[None, :-1], ids[None, 1:], 0))
            count += len(ids) - 1
        return nll, count

    def piece_losses(self, ids: torch.Tensor, budget: int | str | None):
        """The whole piece in one part: each id predicted from the one before it (primer adaptation)."""
        logits = self.model(ids[None, :-1])[0]
        yield F.cross_entropy(logits.float(), ids[1:], reduction="none"), torch.arange(1, len(ids))

    def record(self) -> None:
        """Nothing to record: the toy remembers one id whatever the run."""


def register_toy() -> None:
    registry.register(ARCH, Toy, ToyConfig, ToyTraining)
