"""PerceiverS: Perceiver AR with a multi-scale cascade of two cross-attentions (Yi et al., arXiv 2411.08307).

A crop of up to N input tokens; M latent queries sit on its last M positions. Latent i (at position p) reads:
1. cross-attention over every input at positions <= p (the whole causal context);
2. a second cross-attention, queried by the output of the first, over only the inputs in (p - S, p] (scale mask);
3. a causal self-attention stack over the latents.
The next-token loss is taken on the latent positions only. Positions are rotary at absolute positions, so cached
keys never change and a crop's offset does not matter.

Padding (left, from effective segmentation) is never attended by a real token. A padded query may see only itself,
so no attention row is empty (no NaN) and nothing flows from it to a real latent.

Cached generation (`step`, `prefill`) computes each input's cross-attention keys/values once, keeps the latent
self-attention keys/values in rings of M, and when the latent window is full re-encodes the most recent M/2
positions (Perceiver AR's policy). The current window [w0, w0 + M) always reads the context a training crop
ending at w0 + M would read, so incremental logits equal `forward` on that crop. A step with every lane at the
same position takes a lean one-token path (bottom of the file); prefill, re-encodes and lanes out of step the
general one (`_advance`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import BudgetError, ModelError
from core.models.config import (
    MAX_HEADS,
    MAX_LAYERS,
    MAX_MLP_RATIO,
    MAX_ROTARY_BASE,
    MAX_SEGMENT,
    MAX_TOKENS,
    MAX_VOCAB,
    MAX_WIDTH,
    budget_problems,
    config_from_dict,
    field_problems,
    range_problems,
)
from core.models.interface import LEFT_TO_RIGHT
from core.models.layers import Block, CrossAttentionBlock, RMSNorm
from core.models.packed import Matrix, PackedWeights, folded, inv_rms, matrix_kind, rms_eps
from core.models.perceivers_state import PerceiverSPlan, PerceiverSState, plan_state
from core.state import parse_budget
from core.tokenizer import PAD, VOCAB_SIZE


@dataclass(frozen=True)
class PerceiverSConfig:
    vocab_size: int = VOCAB_SIZE
    context: int = 4096  # N: inputs a crop holds
    latents: int = 256  # M: latent queries, on the last M positions
    scale: int = 512  # S: inputs the second cross-attention sees back from each latent
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4  # latent self-attention blocks (with the two cross-attentions: 6 attention layers)
    mlp_ratio: int = 4
    dropout: float = 0.0
    rope_base: float = 10000.0
    default_budget: str = "32MB"  # generation state budget per lane when the user names none

    def __post_init__(self) -> None:
        problems = field_problems(self)  # types first: the ranges and relations below assume them
        if not problems:
            problems = range_problems(self, {
                "vocab_size": (1, MAX_VOCAB), "context": (1, MAX_TOKENS), "latents": (1, MAX_SEGMENT),
                "scale": (1, MAX_TOKENS), "d_model": (2, MAX_WIDTH), "n_heads": (1, MAX_HEADS),
                "n_layers": (1, MAX_LAYERS), "mlp_ratio": (1, MAX_MLP_RATIO), "rope_base": (1, MAX_ROTARY_BASE)})
        if problems:
            raise ModelError("bad PerceiverS config: " + "; ".join(problems))
        if self.latents > self.context:
            problems.append(f"latents ({self.latents}) cannot exceed context ({self.context})")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            problems.append(f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.rope_base <= 1:
            problems.append(f"rope_base must be greater than 1, got {self.rope_base!r}")
        problems += budget_problems(self.default_budget)
        if problems:
            raise ModelError("bad PerceiverS config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PerceiverSConfig:
        return config_from_dict(cls, data, "PerceiverS")


def rotary(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (*P, head_dim/2) at absolute positions; angles in float64 so position 10^6 is as exact as 10."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64).unsqueeze(-1) * inv_freq
    return angles.cos().float(), angles.sin().float()


def visible(query_pos: torch.Tensor, key_pos: torch.Tensor, key_pad: torch.Tensor,
            window: int | None = None) -> torch.Tensor:
    """Training mask (B, 1, Q, K), True = may attend: causal, inside the scale window, never a padded key.

    query_pos (Q,), key_pos (K,) are crop positions; key_pad (B, K). A query may always see its own position
    (the diagonal), which only matters for padded queries: their rows are never empty.
    """
    distance = query_pos[:, None] - key_pos[None, :]  # (Q, K)
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    mask = allowed[None] & ~key_pad[:, None, :]  # (B, Q, K)
    return (mask | (distance == 0)[None]).unsqueeze(1)


class PerceiverS(PackedWeights, nn.Module):
    """The PerceiverS model (core.models.interface.LeftToRight): `forward` trains on crops, the rest generates."""

    arch = "perceivers"
    family = LEFT_TO_RIGHT

    def __init__(self, config: PerceiverSConfig):
        super().__init__()
        self.config = config
        c = config
        self.head_dim = c.d_model // c.n_heads
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.cross = CrossAttentionBlock(c.d_model, c.n_heads, c.mlp_ratio, c.dropout)  # whole causal context
        self.cross_local = CrossAttentionBlock(c.d_model, c.n_heads, c.mlp_ratio, c.dropout)  # last S inputs
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_ratio, c.dropout) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # ---- training -------------------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, T <= N), left-padded with PAD -> logits (B, M', V) at the last M' = min(M, T) positions, and
        the mean cross-entropy against targets (B, M') over non-PAD targets (0 when there are none)."""
        c = self.config
        batch, length = ids.shape
        if length > c.context:
            raise ModelError(f"crop of {length} tokens is longer than the model's context of {c.context}")
        n_latents = min(c.latents, length)
        pad = ids == PAD  # (B, T)
        positions = torch.arange(length, device=ids.device)
        cos, sin = rotary(positions, self.head_dim, c.rope_base)  # (T, hs/2)
        x = self.embed(ids)  # (B, T, C)
        query_pos = positions[-n_latents:]
        q_cos, q_sin = cos[-n_latents:], sin[-n_latents:]

        k, v = self.cross.keys_values(x, cos, sin)  # (B, nh, T, hs)
        h = self.cross(x[:, -n_latents:], k, v, q_cos, q_sin, visible(query_pos, positions, pad))  # (B, M', C)

        first = max(0, length - n_latents - c.scale + 1)  # older inputs are outside every latent's scale window
        k, v = self.cross_local.keys_values(x[:, first:], cos[first:], sin[first:])
        h = self.cross_local(h, k, v, q_cos, q_sin, visible(query_pos, positions[first:], pad[:, first:], c.scale))

        mask = visible(query_pos, query_pos, pad[:, -n_latents:])  # (B, 1, M', M')
        for block in self.blocks:
            q, k, v = block.project(h, q_cos, q_sin)
            h = block.finish(h, q, k, v, mask)
        logits = self.head(self.norm(h))  # (B, M', V)

        if targets is None:
            return logits, None
        if targets.shape != logits.shape[:2]:
            raise ModelError(f"targets {tuple(targets.shape)} do not match the latents {tuple(logits.shape[:2])}")
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD,
                                 reduction="sum")
        return logits, losses / (targets != PAD).sum().clamp(min=1)

    # ---- cached generation ----------------------------------------------------------------------------------

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1) -> PerceiverSPlan:
        """The generation context N_gen <= N that a budget ('64MB', bytes; default: the config's for each lane)
        buys; BudgetError naming the minimum if it buys none."""
        c = self.config
        budget = parse_budget(c.default_budget) * batch if budget_bytes is None else parse_budget(budget_bytes)
        return plan_state(budget, batch, c.context, c.latents, c.scale, c.n_layers, c.n_heads, c.d_model,
                          self.embed.weight.dtype)

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        """'': a plan never reads more context than the model was trained with, whatever the budget."""
        return ""

    def describe(self) -> str:
        c = self.config
        return (f"PerceiverS, {c.n_layers + 2} attention layers x {c.d_model}, reading up to {c.context:,} tokens "
                f"back, condensed to {c.latents}")

    def new_state(self, plan: PerceiverSPlan, batch: int | None = None) -> PerceiverSState:
        c = self.config
        if (plan.latents, plan.scale, plan.n_layers, plan.d_model) != (c.latents, c.scale, c.n_layers, c.d_model):
            raise BudgetError("this plan was made for a different PerceiverS model")
        self._watch_parameters()  # the weights `step` checks for changes
        return PerceiverSState(plan, plan.batch if batch is None else batch, self.embed.weight.device)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """One new id per lane (B,) -> next-token logits (B, V): the one-token path when the lanes are in step
        with room in their window, else the general path (a re-encode, or lanes at different positions)."""
        if ids.dim() != 1 or ids.shape[0] != state.batch:
            raise ModelError(f"step takes one id per lane ({state.batch},), got shape {tuple(ids.shape)}")
        tokens = ids.tolist()
        if min(tokens) < 0 or max(tokens) >= self.config.vocab_size:
            raise ModelError(f"token ids must lie in [0, {self.config.vocab_size})")
        logits = _lean_step(self._packed(), ids.to(state.ids.device), state, self.config.rope_base)
        return self.prefill(ids[:, None], state) if logits is None else logits

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """Read ids (B, T) into the state as T steps would (same result, batched) -> logits (B, V) of the last."""
        return self._read(ids, state, every=False)

    @torch.no_grad()
    def read(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """Read ids (B, T) into the state as T steps would -> the logits (B, T, V) after every id, each the one its
        step would give: a whole piece scored a latent window per call instead of an id per call (`core.metrics`)."""
        return self._read(ids, state, every=True)

    def _read(self, ids: torch.Tensor, state: PerceiverSState, every: bool) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[0] != state.batch or ids.shape[1] == 0:
            raise ModelError(f"expected ids of shape ({state.batch}, T >= 1), got {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ModelError(f"token ids must lie in [0, {self.config.vocab_size})")
        ids = ids.to(state.ids.device)
        packed = self._packed()
        phase = state.length - state.start  # lanes with the same phase fill and re-encode together
        if bool((phase == phase[0]).all()):
            return self._advance(packed, ids, state, None, every)
        shape = (state.batch, ids.shape[1], self.config.vocab_size) if every else (state.batch, self.config.vocab_size)
        logits = torch.empty(shape, device=ids.device, dtype=state.keys1.dtype)
        for value in phase.unique():
            lanes = (phase == value).nonzero().flatten()
            logits[lanes] = self._advance(packed, ids[lanes], state, lanes, every)
        return logits

    def _pack(self, kind: str) -> Packed:
        return pack(self, kind)

    def _advance(self, packed: Packed, ids: torch.Tensor, state: PerceiverSState,
                 lanes: torch.Tensor | None, every: bool = False) -> torch.Tensor:
        """Lanes sharing one phase read ids (b, T), a latent window at a time -> logits (b, V) of the last id, or
        (b, T, V) of every id."""
        m = self.config.latents
        keep = max(1, m // 2)
        done, total, outputs = 0 if every else self._skip(packed, ids, state, lanes), ids.shape[1], []
        while done < total:
            length = _rows(state.length, lanes).clone()  # (b,)
            start = _rows(state.start, lanes).clone()
            fresh = int(length[0] - start[0]) == m
            if fresh:  # window full: re-encode the most recent M/2 positions
                start = length - keep + 1
                _set_rows(state.start, lanes, start)
                _set_rows(state.latent_positions, lanes, -1)
            count = min(total - done, int(start[0]) + m - int(length[0]))
            first = start if fresh else length  # the latents computed now: positions first .. length + count - 1
            positions = first[:, None] + torch.arange(int(length[0] - first[0]) + count, device=ids.device)
            rotations = _rotations(positions, self.head_dim, self.config.rope_base, state.keys1.dtype)
            # Lanes at the same position write their rings with one slice (not an index per lane and token).
            lockstep = positions.shape[0] == 1 or bool((positions[:, 0] == positions[0, 0]).all())
            first_position = int(positions[0, 0]) if lockstep and lanes is None else None
            self._write_inputs(packed, ids[:, done:done + count], positions[:, -count:], rotations[:, -count:],
                               None if first_position is None else int(length[0]), state, lanes)
            _set_rows(state.length, lanes, length + count)
            logits = self._latents(packed, positions, rotations, first_position, state, lanes, count if every else 1)
            outputs = [*outputs, logits] if every else [logits]  # prefill keeps only the last: bounded memory
            done += count
        return torch.cat(outputs, dim=1) if every else outputs[-1][:, -1]

    def _skip(self, packed: Packed, ids: torch.Tensor, state: PerceiverSState, lanes: torch.Tensor | None) -> int:
        """How many leading ids of `ids` (b, T) a prefill need not compute latents for, once their inputs that
        matter are in the rings (0: none, nothing done).

        The window current after the last id starts at `final` (the windows' starts follow from the length
        alone); its latents read inputs from final + M - N_gen on, and no earlier window's latent survives its
        re-encode. So the inputs before that are never read and only the last window's latents are computed:
        the inputs go into the rings in the chunks reading every id would use (the same products, the same
        bits), and the state is left just before the last re-encode, which the caller's loop then makes.
        Time and memory are bounded by the context, whatever the primer's length.
        """
        m, context = self.config.latents, state.plan.context
        keep = max(1, m // 2)
        stride = m - keep + 1  # a re-encode keeps M/2 - 1 positions: each window starts this much later
        length = _rows(state.length, lanes).clone()  # (b,): lanes of one phase, maybe at different lengths
        start = int(_rows(state.start, lanes)[0] - length[0])  # relative to each lane's length, as all below
        windows = max(0, -(-(ids.shape[1] - start - m) // stride))  # re-encodes on the way
        final = start + windows * stride
        first_end = start + m  # reading every id writes the inputs in chunks ending at first_end + k stride
        needed = final + m - context  # the first input the final window reads
        if windows == 0 or needed < first_end or first_end <= 0:
            return 0
        begin = first_end + (needed - first_end) // stride * stride  # the last chunk end at or before it
        last = final + keep - 1  # the length at which the final re-encode happens: inputs up to there
        for chunk in range(begin, last, stride):
            positions = length[:, None] + torch.arange(chunk, chunk + stride, device=ids.device)  # (b, n)
            rotations = _rotations(positions, self.head_dim, self.config.rope_base, state.keys1.dtype)
            lockstep = positions.shape[0] == 1 or bool((positions[:, 0] == positions[0, 0]).all())
            first_position = int(positions[0, 0]) if lockstep and lanes is None else None
            self._write_inputs(packed, ids[:, chunk:chunk + stride], positions, rotations, first_position, state,
                               lanes)
        _set_rows(state.length, lanes, length + last)
        _set_rows(state.start, lanes, length + final - stride)  # the window before: full, so the loop re-encodes
        return last

    def _write_inputs(self, packed: Packed, ids: torch.Tensor, positions: torch.Tensor, rotations: torch.Tensor,
                      first_position: int | None, state: PerceiverSState, lanes: torch.Tensor | None) -> None:
        """Project ids (b, n) at `positions` (b, n) into both cross-attention rings (once per token)."""
        c = self.config
        batch, count = ids.shape
        x = F.embedding(ids, packed.embed)  # (b, n, C)
        kv = (packed.inputs_kv(x) * inv_rms(x, packed.eps)).view(batch * count, 2, 2, c.n_heads, self.head_dim)
        k = _rotate(kv[:, :, 0], rotations).view(batch, count, 2, c.n_heads, self.head_dim)  # 2 layers' keys
        v = kv[:, :, 1].view(batch, count, 2, c.n_heads, self.head_dim)
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)  # (b, n)
        for layer, (keys, values, slot_positions) in enumerate(
                ((state.keys1, state.values1, state.positions1), (state.keys2, state.values2, state.positions2))):
            _put(keys, rows, positions, k[:, :, layer], first_position)
            _put(values, rows, positions, v[:, :, layer], first_position)
            _put(slot_positions, rows, positions, positions, first_position)
        _put(state.ids, rows, positions, ids, first_position)

    def _latents(self, packed: Packed, positions: torch.Tensor, rotations: torch.Tensor, first_position: int | None,
                 state: PerceiverSState, lanes: torch.Tensor | None, outputs: int = 1) -> torch.Tensor:
        """Latents at `positions` (b, n) from the rings -> logits (b, outputs, V) of the last `outputs` of them;
        fills the latent rings."""
        c = self.config
        batch, count = positions.shape
        heads, head_dim = c.n_heads, self.head_dim
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)
        h = F.embedding(state.ids[rows, positions % c.latents].flatten(), packed.embed)  # (b n, C)
        start = _rows(state.start, lanes)[:, None, None]  # (b, 1, 1)
        context_start = (start + c.latents - state.plan.context).clamp(min=0)
        query = positions[:, :, None]  # (b, n, 1)

        key_pos = _rows(state.positions1, lanes)[:, None, :]  # (b, 1, N_gen)
        mask = _additive((key_pos >= context_start) & (key_pos <= query), h.dtype)  # (b, 1, n, N_gen)
        h = _cross_block(packed.cross[0], h, _rows(state.keys1, lanes), _rows(state.values1, lanes), rotations,
                         mask, packed.eps)

        key_pos = _rows(state.positions2, lanes)[:, None, :]  # (b, 1, R2)
        low = torch.maximum(context_start, query - c.scale + 1)
        mask = _additive((key_pos >= low) & (key_pos <= query), h.dtype)
        h = _cross_block(packed.cross[1], h, _rows(state.keys2, lanes), _rows(state.values2, lanes), rotations,
                         mask, packed.eps)

        _put(state.latent_positions, rows, positions, positions, first_position)
        key_pos = _rows(state.latent_positions, lanes)[:, None, :]  # (b, 1, M)
        mask = _additive((key_pos >= start) & (key_pos <= query), h.dtype)  # (b, 1, n, M), for every layer
        for layer, weights in enumerate(packed.blocks):
            qkv = (weights.qkv(h) * inv_rms(h, packed.eps)).view(batch * count, 3 * heads, head_dim)
            qk = _rotate(qkv[:, :2 * heads], rotations).view(batch, count, 2, heads, head_dim)
            keys, values = state.latent_keys[layer], state.latent_values[layer]
            _put(keys, rows, positions, qk[:, :, 1], first_position)
            _put(values, rows, positions, qkv[:, 2 * heads:].view(batch, count, heads, head_dim), first_position)
            out = F.scaled_dot_product_attention(qk[:, :, 0].transpose(1, 2), _rows(keys, lanes),
                                                 _rows(values, lanes), attn_mask=mask)  # (b, nh, n, hs)
            h = weights.out.add_to(h, out.transpose(1, 2).reshape(batch * count, c.d_model))
            h = _mlp(weights, h, packed.eps)
        last = h.view(batch, count, c.d_model)[:, -outputs:]  # (b, outputs, C)
        return (packed.head(last) * inv_rms(last, packed.eps)).to(state.keys1.dtype)  # (b, outputs, V)


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
    return Packed(weight, matrix(torch.cat([kv1, kv2])), matrix(step_in), cross, blocks,
                  matrix(folded(model.norm.weight, model.head.weight)), rms_eps(width, model.norm.eps, weight))


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
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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
        inv_freq = base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)
        self.freq = inv_freq.repeat(4)  # as `rotary`: angles in float64
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


def _lean_step(packed: Packed, ids: torch.Tensor, state: PerceiverSState, base: float) -> torch.Tensor | None:
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
