"""The budgeted recurrent state of DSMR: how a memory budget in bytes becomes per-layer horizons, and the buffers.

One planner (`plan_horizons`) turns a budget and a schedule into per-layer memory horizons m_l; training,
generation, the CLI's `--budget` and the studio's slider all go through it. The state (`RecurrentState`) is
preallocated from the plan and never grows: layer l holds the keys/values of its last m_l tokens plus the
current segment of L tokens, for a batch of B lanes.

    bytes = B * sum_l (m_l + L) * 2 * d_model * element_size     (keys and values)
          + B * (max_l m_l + L)                                   (which slots hold a token of the lane's piece)
          + B * 8                                                  (the next position of each lane)
          + B * 128                                                (the sounding pitches, with `sounding_input`)

Schedules:
    full       every layer keeps the whole history up to `cap` tokens (the reference); the budget must hold it
    uniform    the budget spread evenly over the layers (each at most `cap`)
    two_scale  the lower `n_long` layers get `long_ratio` times the horizon of all the others (the default)
    [m_1, ..., m_n]  an explicit horizon per layer
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from core.budget import format_bytes, parse_budget
from core.errors import BudgetError
from core.models.interface import Memory
from core.models.layers import PITCHES
from core.state import TOKENS_PER_SECOND

SCHEDULES = ("full", "uniform", "two_scale")


class StateShape(Protocol):
    """What the planner needs to know about a model (DSMRConfig has these)."""

    n_layers: int
    d_model: int
    segment_len: int
    max_horizon: int


@dataclass(frozen=True)
class StatePlan:
    """Per-layer memory horizons for a batch of lanes, and exactly what their buffers cost."""

    schedule: str
    horizons: tuple[int, ...]  # m_l, tokens of memory per layer (lowest layer first)
    segment_len: int
    d_model: int
    batch: int
    element_size: int  # bytes per stored key/value number
    budget: int | None  # the budget the plan was made for, if any
    limits: tuple[int, ...] | None = None  # the longest horizon each layer was trained with (None: no cap known)
    sounding: bool = False  # the state carries each lane's sounding pitches (a model with `sounding_input`)

    @property
    def capacities(self) -> tuple[int, ...]:
        """Slots per layer: its memory plus the current segment."""
        return tuple(m + self.segment_len for m in self.horizons)

    @property
    def nbytes(self) -> int:
        kv = self.batch * sum(self.capacities) * 2 * self.d_model * self.element_size
        valid = self.batch * (max(self.horizons) + self.segment_len)
        return kv + valid + self.batch * 8 + self.batch * PITCHES * self.sounding

    def memories(self) -> tuple[Memory, ...]:
        """One part per layer: its horizon plus the segment being read, at most its trained horizon plus that."""
        limits = self.limits if self.limits is not None else self.horizons
        return tuple(Memory(f"layer {i}", m + self.segment_len, limit + self.segment_len)
                     for i, (m, limit) in enumerate(zip(self.horizons, limits, strict=True), start=1))

    def describe(self) -> str:
        """One line for the CLI and the slider: horizons, bytes, and how much music that remembers."""
        runs: list[list[int]] = []
        for m in self.horizons:
            if runs and runs[-1][0] == m:
                runs[-1][1] += 1
            else:
                runs.append([m, 1])
        horizons = ", ".join(f"{m}x{n}" if n > 1 else str(m) for m, n in runs)
        budget = f" of {format_bytes(self.budget)}" if self.budget is not None else ""
        longest = (max(self.horizons) + self.segment_len) / TOKENS_PER_SECOND
        shortest = (min(self.horizons) + self.segment_len) / TOKENS_PER_SECOND
        seconds = f"~{_seconds(longest)} s" if longest == shortest else f"~{_seconds(shortest)}-{_seconds(longest)} s"
        lanes = f" for {self.batch} lanes" if self.batch > 1 else ""
        return (f"{self.schedule} memory horizons [{horizons}] tokens + segment {self.segment_len}: "
                f"state {format_bytes(self.nbytes)}{budget}{lanes}, remembers {seconds} of music")


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _slot_bytes(config: StateShape, batch: int, element_size: int) -> int:
    """Bytes one token slot of one layer may cost, counting its validity byte in every layer (an upper bound)."""
    return batch * (2 * config.d_model * element_size + 1)


def minimum_budget(config: StateShape, batch: int = 1, element_size: int = 4, sounding: bool = False) -> int:
    """The smallest budget the planner accepts: every layer holds just the current segment (and, `sounding`,
    the lanes' sounding pitches)."""
    return (config.n_layers * config.segment_len * _slot_bytes(config, batch, element_size) + batch * 8
            + batch * PITCHES * sounding)


def plan_horizons(config: StateShape, budget_bytes: int | str | None, batch: int = 1,
                  schedule: str | list[int] | tuple[int, ...] = "two_scale", *, n_long: int | None = None,
                  long_ratio: float = 4.0, cap: int | None = None, element_size: int = 4,
                  sounding: bool = False) -> StatePlan:
    """Per-layer horizons whose state fits `budget_bytes` (None: only for `full` and explicit lists); `sounding`:
    the state also carries each lane's sounding pitches (a model with `sounding_input`).

    n_long defaults to a third of the layers (at least one); cap defaults to config.max_horizon.
    """
    if batch < 1:
        raise BudgetError(f"batch must be at least 1, got {batch}")
    n = config.n_layers
    cap = config.max_horizon if cap is None else int(cap)
    budget = None if budget_bytes is None else parse_budget(budget_bytes)
    name = schedule if isinstance(schedule, str) else "explicit"
    if budget is None and name not in ("full", "explicit"):
        raise BudgetError(f"the {name} schedule needs a memory budget")
    if budget is not None and budget < minimum_budget(config, batch, element_size, sounding):
        need = minimum_budget(config, batch, element_size, sounding)
        raise BudgetError(f"memory budget {format_bytes(budget)} ({budget} bytes) is too small for this model "
                          f"at batch {batch}: it needs at least {format_bytes(need)} ({need} bytes)")
    # Token slots of memory (beyond the current segments) that the budget pays for, over all layers.
    floor = minimum_budget(config, batch, element_size, sounding)
    spare = None if budget is None else (budget - floor) // _slot_bytes(config, batch, element_size)

    if name == "explicit":
        horizons = [int(m) for m in schedule]
        if len(horizons) != n or any(m < 0 for m in horizons):
            raise BudgetError(f"an explicit schedule needs {n} horizons >= 0, got {list(schedule)}")
    elif name == "full":
        horizons = [cap] * n
    elif name == "uniform":
        horizons = [min(cap, spare // n)] * n
    elif name == "two_scale":
        k = max(1, n // 3) if n_long is None else int(n_long)
        if not 0 <= k <= n:
            raise BudgetError(f"two_scale needs 0 <= n_long <= {n}, got {k}")
        if long_ratio < 1:
            raise BudgetError(f"two_scale needs long_ratio >= 1, got {long_ratio}")
        short = int(spare // (k * long_ratio + (n - k)))
        long = min(cap, int(short * long_ratio))
        horizons = [long] * k + [min(cap, short)] * (n - k)
    else:
        raise BudgetError(f"unknown memory schedule {schedule!r}: use one of {', '.join(SCHEDULES)} "
                          f"or a list of {n} horizons")
    plan = StatePlan(name, tuple(horizons), config.segment_len, config.d_model, batch, element_size, budget,
                     sounding=sounding)
    if budget is not None and plan.nbytes > budget:
        raise BudgetError(f"the {name} schedule {list(horizons)} needs {format_bytes(plan.nbytes)} "
                          f"({plan.nbytes} bytes) but the budget is {format_bytes(budget)} ({budget} bytes)")
    return plan


class RecurrentState:
    """Preallocated keys/values of every layer for B lanes, filled segment by segment; never reallocated.

    Layer l's buffers are (B, n_heads, m_l + L, head_dim): slots [0, m_l) hold the memory (the last m_l tokens
    before the current segment), slots [m_l, m_l + fill) the current segment so far. Keys are stored rotated to
    their absolute positions. `valid` (B, M + L), M = max m_l, says which slots hold a token of the lane's
    current piece; layer l reads its last m_l + L columns, so every layer shares one validity row per lane.
    """

    def __init__(self, plan: StatePlan, n_heads: int, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):
        if plan.d_model % n_heads:
            raise BudgetError(f"d_model {plan.d_model} is not divisible by {n_heads} heads")
        if torch.empty((), dtype=dtype).element_size() != plan.element_size:
            raise BudgetError(f"plan made for {plan.element_size}-byte numbers, state dtype is {dtype}")
        self.plan = plan
        self.segment_len = plan.segment_len
        self.horizons = plan.horizons
        self.max_horizon = max(plan.horizons)
        head_dim = plan.d_model // n_heads
        # One buffer per layer holds keys and values side by side: closing a segment shifts both in one copy.
        self.kv = [torch.zeros(plan.batch, 2, n_heads, cap, head_dim, dtype=dtype, device=device)
                   for cap in plan.capacities]  # each (B, 2, nh, m_l + L, hs)
        self.keys = [kv[:, 0] for kv in self.kv]  # views (B, nh, m_l + L, hs)
        self.values = [kv[:, 1] for kv in self.kv]
        self.valid = torch.zeros(plan.batch, self.max_horizon + self.segment_len, dtype=torch.bool, device=device)
        self.positions = torch.zeros(plan.batch, dtype=torch.long, device=device)  # next position per lane
        # The pitches sounding in each lane after the ids read so far (core.models.layers.sounding_notes); a
        # segment's first ids start from the set the previous segment left. None: the model has no such input.
        self.sounding = (torch.zeros(plan.batch, PITCHES, dtype=torch.bool, device=device) if plan.sounding
                         else None)
        self.fill = 0  # tokens of the current segment written so far (shared by all lanes)

    @property
    def batch(self) -> int:
        return self.plan.batch

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def tensors(self) -> list[torch.Tensor]:
        """Every buffer of the state (what `nbytes` counts)."""
        return [*self.kv, self.valid, self.positions] + ([self.sounding] if self.sounding is not None else [])

    def reset(self, lane: int) -> None:
        """Start a new piece in `lane`: it forgets everything; the other lanes go on."""
        if not 0 <= lane < self.batch:
            raise IndexError(f"lane {lane} out of range for a state of {self.batch} lanes")
        self.valid[lane] = False
        self.positions[lane] = 0
        if self.sounding is not None:
            self.sounding[lane] = False

    def close_segment(self) -> None:
        """The current segment is full: each layer keeps its last m_l tokens as memory for the next one."""
        length = self.segment_len
        for kv, m in zip(self.kv, self.horizons, strict=True):
            if m:  # source and target overlap when m > L: copy through a temporary then
                kv[:, :, :, :m] = kv[:, :, :, length:].clone() if m > length else kv[:, :, :, length:]
        if self.max_horizon:
            self.valid[:, :self.max_horizon] = self.valid[:, length:].clone()
        self.valid[:, self.max_horizon:] = False
        self.fill = 0
