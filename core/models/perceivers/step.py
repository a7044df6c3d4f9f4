"""PerceiverS's packed generation weights and the helpers of its cached paths; the lean one-token step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from core.models.layers import RMSNorm, attention, rotary, rotary_frequencies, sounding_step
from core.models.packed import Dense, Matrix, folded, inv_rms, matrix_kind, rms_eps
from core.models.perceivers.state import PerceiverSState, window_stride

if TYPE_CHECKING:
    from core.models.perceivers.model import PerceiverS


# ---- the lean generation path ---------------------------------------------------------------------------------
# The same computation as the shared layers, over weights packed for few-row products (core/models/packed.py):
# each RMSNorm weight folded into the projection after it, q/k/v in one matrix, the inputs' keys and values of
# both cross-attentions in one, residual adds fused into the products where the dtype allows, masks made additive
# once per call. The cache tests hold it equal to `forward` in fp32; int8 is the fast form (`use_step_weights`).

@dataclass(frozen=True)
class PackedBlock:
    qkv: Matrix  # C -> 3C, the attention norm folded in (cross blocks: C -> C, queries only)
    out: Matrix  # C -> C
    up: Matrix  # C -> hidden, the MLP norm folded in
    down: Matrix  # hidden -> C


@dataclass(frozen=True)
class Packed:
    embed: torch.Tensor  # (V, C)
    inputs_kv: Matrix  # C -> 4C: keys and values of both cross-attentions, their kv norms folded in
    step_in: Matrix  # C -> 5C: a step's v1, k1, q1, k2, v2 (its latent is its input: one product for all five)
    cross: tuple[PackedBlock, PackedBlock]
    blocks: tuple[PackedBlock, ...]
    head: Matrix  # C -> V, the final norm folded in
    eps: torch.Tensor  # (1, 1, 1): C * eps (see packed.inv_rms)
    sounding: Dense | None = None  # 128 -> C, the sounding-notes input (model weights' dtype, both kinds)


@torch.no_grad()
def pack(model: PerceiverS, kind: str = "fp32") -> Packed:
    matrix = matrix_kind(kind)

    def block(norm: RMSNorm, attn, projections, mlp_norm: RMSNorm, mlp) -> PackedBlock:
        return PackedBlock(matrix(folded(norm.weight, *(p.weight for p in projections))),
                           matrix(attn.out_proj.weight), matrix(folded(mlp_norm.weight, mlp.up.weight)),
                           matrix(mlp.down.weight.detach(), transposed=True))

    cross = tuple(block(b.q_norm, b.attn, (b.attn.q_proj,), b.mlp_norm, b.mlp)
                  for b in (model.cross, model.cross_local))
    kv1, kv2 = (folded(b.kv_norm.weight, b.attn.kv_proj.weight) for b in (model.cross, model.cross_local))  # k; v
    q1 = folded(model.cross.q_norm.weight, model.cross.attn.q_proj.weight)
    width = model.config.d_model
    step_in = torch.cat([kv1[width:], kv1[:width], q1, kv2])  # v1, k1, q1, k2, v2: see _Lean
    blocks = tuple(block(b.attn_norm, b.attn, (b.attn.q_proj, b.attn.kv_proj), b.mlp_norm, b.mlp)
                   for b in model.blocks)
    weight = model.embed.weight.detach()
    sounding = Dense(model.sounding.weight.detach()) if model.sounding is not None else None
    return Packed(weight, matrix(torch.cat([kv1, kv2])), matrix(step_in), cross, blocks,
                  matrix(folded(model.norm.weight, model.head.weight)), rms_eps(width, model.norm.eps, weight),
                  sounding)


def _rotations(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> torch.Tensor:
    """(b, n, 2, hs): at each of `positions` (b, n), cos and signed sin over the whole head, so that rotary is
    x * cos + halves_swapped(x) * sin (see `_rotate`)."""
    cos, sin = (t.to(dtype) for t in rotary(positions, head_dim, base))  # (b, n, hs/2)
    return torch.stack([torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)], -2)


def _rotate(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """x (b n, ..., hs): the heads (of several kinds) at each position, rotated by rotations (b, n, 2, hs); equal
    to layers.apply_rotary."""
    rows = x.reshape(x.shape[0], -1, x.shape[-1])  # (b n, k, hs)
    table = rotations.reshape(-1, 2, 1, x.shape[-1])  # (b n, 2, 1, hs)
    rotated = torch.addcmul(rows * table[:, 0], rows.roll(x.shape[-1] // 2, -1), table[:, 1])
    return rotated.view(x.shape)


def _put(ring: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor, value: torch.Tensor,
         first_position: int | None) -> None:
    """ring[row, ..., position % R] = value for every (row, position) of rows/positions (b, n); value (b, n, ...).
    Rings are (B, R) or (B, nh, R, hs). `first_position`, when all B lanes write the same positions from there:
    one slice, unless the positions wrap around the ring."""
    size = ring.shape[1] if ring.dim() == 2 else ring.shape[2]
    count = positions.shape[1]
    slot = None if first_position is None else first_position % size
    if slot is not None and slot + count <= size:
        if ring.dim() == 2:
            ring[:, slot:slot + count] = value
        else:
            ring[:, :, slot:slot + count] = value.transpose(1, 2)
    elif ring.dim() == 2:
        ring[rows, positions % size] = value
    else:
        ring[rows, :, positions % size] = value


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, 1, n, K) float mask, 0 where allowed and -inf elsewhere: SDPA would convert a bool mask on every call."""
    return torch.where(allowed, 0.0, float("-inf")).to(dtype).unsqueeze(1)


def _mlp(weights: PackedBlock, h: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """h + MLP(norm(h)), h (rows, C)."""
    return weights.down.add_to(h, F.gelu(weights.up(h) * inv_rms(h, eps), approximate="tanh"))


def _cross_block(weights: PackedBlock, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotations: torch.Tensor,
                 mask: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """h (b n, C) queries k, v (b, nh, K, hs) -> h after the attention and MLP residuals."""
    batch, heads, _, head_dim = k.shape
    count = h.shape[0] // batch
    q = _rotate((weights.qkv(h) * inv_rms(h, eps)).view(batch * count, heads, head_dim), rotations)
    q = q.view(batch, count, heads, head_dim).transpose(1, 2)  # (b, nh, n, hs)
    out = attention(q, k, v, mask)
    h = weights.out.add_to(h, out.transpose(1, 2).reshape(h.shape))
    return _mlp(weights, h, eps)


def _lane_index(state: PerceiverSState, lanes: torch.Tensor | None) -> torch.Tensor:
    return torch.arange(state.batch, device=state.length.device) if lanes is None else lanes


def _rows(tensor: torch.Tensor, lanes: torch.Tensor | None) -> torch.Tensor:
    """The lanes' rows of a state tensor; a view (no copy) when all lanes take part."""
    return tensor if lanes is None else tensor[lanes]


def _set_rows(tensor: torch.Tensor, lanes: torch.Tensor | None, value: torch.Tensor | int) -> None:
    if lanes is None:
        tensor[...] = value
    else:
        tensor[lanes] = value


# ---- one token, all lanes in step -----------------------------------------------------------------------------
# The common case of generation: `_advance` with T = 1 when every lane is at the same position of a latent window
# with room left. Then the step's latent is its own input (one product projects the inputs' keys/values and the
# first query), every lane shares one rotation and one mask per ring (built from Python ints), and the work runs
# heads first: rotary is one batched product over a stack of head rotations (the values' heads get the
# identity), keys and values go into each ring with one copy, and attention is one baddbmm / softmax / bmm over
# the (heads x lanes) matrices of a ring, which beats SDPA's one-query path here. Under half of `_advance`'s
# dispatches; the same arithmetic up to rounding.

class _Lean:
    """A state's scratch for `_lean_step`: the rotation stack and the views of the rings it reads."""

    def __init__(self, state: PerceiverSState, base: float):
        heads, head_dim, batch = state.plan.n_heads, state.plan.d_model // state.plan.n_heads, state.batch
        dtype, device = state.kv1.dtype, state.kv1.device
        self.base, self.dtype = base, dtype
        # (5 nh, hs, hs): identity, then three groups of nh rotations, then identity. The step's projection
        # v1 k1 q1 k2 v2 multiplies all of it; a block's q k v its last 3 nh; the second query one rotation group.
        self.rotation = torch.eye(head_dim, dtype=dtype, device=device).repeat(5 * heads, 1, 1)
        self.rotating = self.rotation[heads:4 * heads].view(3 * heads, head_dim * head_dim)
        self.rotation_q = self.rotation[heads:2 * heads]
        self.rotation_qkv = self.rotation[2 * heads:]
        # A rotation R (x @ R == layers.apply_rotary(x)) has cos on its diagonal and, where pair (i, i + hs/2)
        # meets, +sin at (i, i + hs/2) and -sin at (i + hs/2, i): 2 hs entries, each cos(position * f + phase).
        half = head_dim // 2
        index = torch.arange(head_dim, device=device)
        self.slots = torch.cat([index * (head_dim + 1), index * head_dim + (index + half) % head_dim])  # (2 hs,)
        self.freq = rotary_frequencies(head_dim, base, device).repeat(4)  # as layers.rotary: angles in float64
        self.phase = torch.cat([torch.zeros(head_dim, dtype=torch.float64, device=device),
                                torch.full((half,), -math.pi / 2, dtype=torch.float64, device=device),
                                torch.full((half,), math.pi / 2, dtype=torch.float64, device=device)])

        def matrices(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """(nh, B, R, hs) ring halves -> keys transposed (nh B, hs, R) and values (nh B, R, hs), as views."""
            size = keys.shape[2]
            return keys.view(heads * batch, size, head_dim).transpose(1, 2), values.view(heads * batch, size, head_dim)

        self.ring1 = matrices(state.kv1[heads:], state.kv1[:heads])
        self.ring2 = matrices(state.kv2[:heads], state.kv2[heads:])
        self.latent = [(ring, *matrices(ring[:heads], ring[heads:])) for ring in state.latent_kv]  # (2 nh, B, M, hs)

    def rotate_to(self, position: int) -> None:
        """Fill the rotation groups for `position` (the same float64 angles, rounded as `rotary` rounds)."""
        values = torch.add(self.phase, self.freq, alpha=position).cos_().float().to(self.dtype)  # (2 hs,)
        self.rotating.index_copy_(1, self.slots, values.expand(self.rotating.shape[0], -1))


def lean_step(packed: Packed, ids: torch.Tensor, state: PerceiverSState, base: float) -> torch.Tensor | None:
    """One id per lane (B,) -> logits (B, V), as `_advance` would give; None (nothing done) unless every lane is
    at the same position and start, with room left in the latent window."""
    lengths, starts = state.length.tolist(), state.start.tolist()
    position, start = lengths[0], starts[0]
    plan = state.plan
    if position - start >= plan.latents or lengths.count(position) < len(lengths) or \
            starts.count(start) < len(starts):
        return None
    if state.lean is None or state.lean.base != base:
        state.lean = _Lean(state, base)
    lean = state.lean
    lean.rotate_to(position)
    heads, eps = plan.n_heads, packed.eps

    x = F.embedding(ids, packed.embed)  # (B, C): the new input, and the latent at its position
    if packed.sounding is not None:  # the pitches sounding after this id, as `_advance` adds them
        sounding_step(state.sounding, ids)
        x = packed.sounding.add_to(x, state.sounding.to(x.dtype))
        if position == start + window_stride(plan.latents) - 1:  # the set the next window starts from
            state.anchor.copy_(state.sounding)
    y = torch.bmm(_heads_first(packed.step_in(x) * inv_rms(x, eps), 5 * heads), lean.rotation)  # (5 nh, B, hs)
    state.kv1.select(2, position % plan.context).copy_(y.narrow(0, 0, 2 * heads))  # v1 k1 (k1 rotated)
    state.kv2.select(2, position % plan.local).copy_(y.narrow(0, 3 * heads, 2 * heads))  # k2 v2
    latent_slot = position % plan.latents
    state.positions1.select(1, position % plan.context).fill_(position)
    state.positions2.select(1, position % plan.local).fill_(position)
    state.latent_positions.select(1, latent_slot).fill_(position)
    state.ids.select(1, latent_slot).copy_(ids)
    state.length.add_(1)

    context_start = max(0, start + plan.latents - plan.context)
    mask = _ring_mask(plan.context, max(context_start, position - plan.context + 1), position, x)
    h = _lean_finish(packed.cross[0], x, _attend(y.narrow(0, 2 * heads, heads), *lean.ring1, mask), eps)

    q = torch.bmm(_heads_first(packed.cross[1].qkv(h) * inv_rms(h, eps), heads), lean.rotation_q)  # (nh, B, hs)
    low = max(context_start, position - plan.scale + 1, position - plan.local + 1)
    mask = _ring_mask(plan.local, low, position, x)
    h = _lean_finish(packed.cross[1], h, _attend(q, *lean.ring2, mask), eps)

    mask = _ring_mask(plan.latents, start, position, x)  # the window's latents so far
    for weights, (ring, keys, values) in zip(packed.blocks, lean.latent, strict=True):
        qkv = torch.bmm(_heads_first(weights.qkv(h) * inv_rms(h, eps), 3 * heads), lean.rotation_qkv)  # q k v
        ring.select(2, latent_slot).copy_(qkv.narrow(0, heads, 2 * heads))
        h = _lean_finish(weights, h, _attend(qkv.narrow(0, 0, heads), keys, values, mask), eps)
    return (packed.head(h) * inv_rms(h, eps)).to(lean.dtype)  # (B, V)


def _heads_first(y: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, heads * hs) -> (heads, B, hs), a view."""
    batch = y.shape[0]
    return y.view(heads, 1, -1) if batch == 1 else y.view(batch, heads, -1).transpose(0, 1)


def _attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q (nh, B, hs) against a ring's keys (nh B, hs, R) and values (nh B, R, hs) under mask (1, 1, R) ->
    (B, nh hs)."""
    heads, batch, head_dim = q.shape
    rows = q if batch == 1 else q.reshape(heads * batch, 1, head_dim)  # (nh B, 1, hs)
    scores = torch.baddbmm(mask, rows, keys, alpha=head_dim ** -0.5)
    out = torch.bmm(scores.softmax(-1), values)  # (nh B, 1, hs)
    return out.view(batch, -1) if batch == 1 else out.view(heads, batch, head_dim).transpose(0, 1).reshape(batch, -1)


def _lean_finish(weights: PackedBlock, h: torch.Tensor, out: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """h (B, C) after the attention output out (B, C) and the MLP, both residual."""
    return _mlp(weights, weights.out.add_to(h, out), eps)


def _ring_mask(size: int, low: int, high: int, like: torch.Tensor) -> torch.Tensor:
    """(1, 1, size) additive mask over a ring whose slot q % size holds position q: 0 on the slots of positions
    low .. high (at most `size` of them, at least one), -inf elsewhere."""
    mask = torch.full((1, 1, size), float("-inf"), dtype=like.dtype, device=like.device)
    first, count = low % size, high - low + 1
    head = min(count, size - first)
    mask.narrow(2, first, head).fill_(0.0)
    if count > head:  # the range wraps around the ring's end
        mask.narrow(2, 0, count - head).fill_(0.0)
    return mask
