"""PerceiverS generation state: what a byte budget buys (the plan) and the preallocated buffers (the state).

The state holds, per lane of the batch:
- the keys/values of the inputs for the first cross-attention, over the generation context N_gen (a ring);
- those of the second (scale-masked) cross-attention, over only the last min(N_gen, S + M - 1) inputs: its scale
  mask hides everything older than S positions from every latent, and a re-encode of up to M latents reaches
  M - 1 positions further back;
- the latent self-attention keys/values, M per layer (a ring);
- the ids of the last M inputs (re-encoding needs them) and the absolute position held by every ring slot;
- with the sounding-notes input (issue #17), two sets of 128 pitches: those sounding after the last id read, and
  those sounding before the next latent window's first position (a re-encode recomputes the sets of the window's
  first latents from it and the ids it keeps: the sets cannot be run backwards from the latest one).

Nothing grows after `PerceiverSState.__init__`; `nbytes` is counted from the tensors themselves, and the plan's
formula is tested against it, so `state.nbytes == plan.nbytes <= budget` holds for any budget.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core.budget import format_bytes
from core.errors import BudgetError
from core.models.interface import Memory
from core.models.layers import PITCHES
from core.state import TOKENS_PER_SECOND

INDEX_BYTES = 8  # int64 positions and ids


def local_ring(context: int, latents: int, scale: int) -> int:
    """Inputs the second cross-attention must keep: S back from the oldest of up to M latents computed at once."""
    return min(context, scale + latents - 1)


def reencode_keep(latents: int) -> int:
    """Latent positions a re-encode computes again from the window it leaves: the most recent M/2 (at least 1)."""
    return max(1, latents // 2)


def window_stride(latents: int) -> int:
    """How much later each latent window starts than the one before (a re-encode keeps M/2 - 1 old positions)."""
    return latents - reencode_keep(latents) + 1


def state_bytes(batch: int, context: int, latents: int, scale: int, n_layers: int, d_model: int,
                element_size: int, sounding: bool = False) -> int:
    """Bytes of a PerceiverSState; mirrors the buffers allocated in PerceiverSState.__init__ one for one."""
    local = local_ring(context, latents, scale)
    kv = 2 * (context + local + n_layers * latents) * d_model * element_size  # keys and values
    index = (context + local + latents) * INDEX_BYTES  # slot positions of the three rings
    index += latents * INDEX_BYTES + 2 * INDEX_BYTES  # ids of the last M inputs; length and window start
    return batch * (kv + index + 2 * PITCHES * sounding)  # the two sounding sets (bool), with the input


@dataclass(frozen=True)
class PerceiverSPlan:
    """What a budget bought: the generation context N_gen (<= the trained context N) and its bytes."""

    batch: int
    context: int  # N_gen: inputs the first cross-attention sees during generation
    latents: int  # M
    scale: int  # S
    n_layers: int
    n_heads: int
    d_model: int
    dtype: torch.dtype
    budget: int
    trained_context: int  # N: the context the model was trained with
    sounding: bool = False  # the state carries the lanes' sounding pitches (a model with `sounding_input`)

    @property
    def local(self) -> int:
        return local_ring(self.context, self.latents, self.scale)

    @property
    def nbytes(self) -> int:
        return state_bytes(self.batch, self.context, self.latents, self.scale, self.n_layers, self.d_model,
                           _element_size(self.dtype), self.sounding)

    def memories(self) -> tuple[Memory, ...]:
        """One part: the context the first cross-attention reads, at most the trained context."""
        return (Memory("context", self.context, self.trained_context),)

    def describe(self) -> str:
        return (f"PerceiverS state {format_bytes(self.nbytes)} of a {format_bytes(self.budget)} budget: "
                f"context {self.context} tokens (~{self.context / TOKENS_PER_SECOND:.0f} s of music; the "
                f"scale-masked layer keeps {self.local}), "
                f"{self.latents} latents x {self.n_layers} layers, batch {self.batch}")


def _element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def plan_state(budget: int, batch: int, max_context: int, latents: int, scale: int, n_layers: int, n_heads: int,
               d_model: int, dtype: torch.dtype, sounding: bool = False) -> PerceiverSPlan:
    """The longest generation context N_gen in [M, N] whose state fits `budget` bytes (bytes grow with N_gen);
    `sounding`: the state also carries the lanes' sounding pitches (a model with `sounding_input`)."""
    if batch < 1:
        raise BudgetError(f"batch must be at least 1, got {batch}")
    element = _element_size(dtype)

    def cost(context: int) -> int:
        return state_bytes(batch, context, latents, scale, n_layers, d_model, element, sounding)

    minimum = cost(latents)
    if budget < minimum:
        raise BudgetError(f"memory budget {format_bytes(budget)} ({budget} bytes) is too small for this PerceiverS "
                          f"model at batch {batch}: it needs at least {format_bytes(minimum)} ({minimum} bytes)")
    low, high = latents, max_context  # cost(low) <= budget; find the largest such context
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return PerceiverSPlan(batch, low, latents, scale, n_layers, n_heads, d_model, dtype, budget, max_context,
                          sounding)


class PerceiverSState:
    """Preallocated rings for cached generation; lanes are independent (each has its own length and window)."""

    def __init__(self, plan: PerceiverSPlan, batch: int, device: torch.device | str = "cpu"):
        if not 1 <= batch <= plan.batch:
            raise BudgetError(f"the plan was made for batch {plan.batch}; a state for batch {batch} does not fit")
        self.plan = plan
        self.batch = batch
        heads, head_dim = plan.n_heads, plan.d_model // plan.n_heads
        kv = dict(dtype=plan.dtype, device=device)
        index = dict(dtype=torch.long, device=device)
        # Keys and values of a ring share one tensor, heads first: a step writes both with one copy, and its
        # attention reads each lane's heads as one batch of matrices. The first ring holds the values first: a
        # step's input projection comes out as v1, k1, q1, k2, v2 (see perceivers._Lean).
        self.kv1 = torch.zeros(2 * heads, batch, plan.context, head_dim, **kv)  # (2 nh, B, N_gen, hs)
        self.values1, self.keys1 = (part.transpose(0, 1) for part in self.kv1.split(heads))  # (B, nh, N_gen, hs)
        self.kv2 = torch.zeros(2 * heads, batch, plan.local, head_dim, **kv)  # (2 nh, B, R2, hs)
        self.keys2, self.values2 = (part.transpose(0, 1) for part in self.kv2.split(heads))
        self.latent_kv = torch.zeros(plan.n_layers, 2 * heads, batch, plan.latents, head_dim, **kv)
        self.latent_keys, self.latent_values = (part.transpose(1, 2) for part in self.latent_kv.split(heads, 1))
        self.positions1 = torch.full((batch, plan.context), -1, **index)  # absolute position in each slot
        self.positions2 = torch.full((batch, plan.local), -1, **index)
        self.latent_positions = torch.full((batch, plan.latents), -1, **index)
        self.ids = torch.zeros(batch, plan.latents, **index)  # ids of the last M inputs, slot = position % M
        self.length = torch.zeros(batch, **index)  # inputs consumed so far
        self.start = torch.zeros(batch, **index)  # first position of the current latent window
        # The pitches sounding after the last id read (core.models.layers.sounding_notes), and those sounding
        # before the next window's start (start + window_stride), taken when the id before it is read. None: the
        # model has no sounding-notes input.
        bits = dict(dtype=torch.bool, device=device)
        self.sounding = torch.zeros(batch, PITCHES, **bits) if plan.sounding else None
        self.anchor = torch.zeros(batch, PITCHES, **bits) if plan.sounding else None
        self.lean = None  # scratch of the model's one-token path (rotations, views), made on its first step

    def tensors(self) -> list[torch.Tensor]:
        sets = [self.sounding, self.anchor] if self.sounding is not None else []
        return [self.kv1, self.kv2, self.latent_kv, self.positions1, self.positions2, self.latent_positions, self.ids,
                self.length, self.start, *sets]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @property
    def context_start(self) -> torch.Tensor:
        """First input the current window's latents may see (B,): the window ends where a training crop would."""
        return (self.start + self.plan.latents - self.plan.context).clamp(min=0)

    def reset(self, lane: int) -> None:
        """Forget everything lane `lane` has read; the buffers stay where they are."""
        if not 0 <= lane < self.batch:
            raise IndexError(f"lane {lane} is outside a batch of {self.batch}")
        for positions in (self.positions1, self.positions2, self.latent_positions):
            positions[lane] = -1
        self.length[lane] = 0
        self.start[lane] = 0
        if self.sounding is not None:
            self.sounding[lane] = False
            self.anchor[lane] = False
