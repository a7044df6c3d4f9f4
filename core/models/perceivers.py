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
ending at w0 + M would read, so incremental logits equal `forward` on that crop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import BudgetError, ModelError
from core.models.layers import Block, CrossAttentionBlock, RMSNorm
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
    n_layers: int = 6  # latent self-attention blocks
    mlp_ratio: int = 4
    dropout: float = 0.0
    rope_base: float = 10000.0
    default_budget: str = "32MB"  # generation state budget at batch 1 when the user names none

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "context", "latents", "scale", "d_model", "n_heads", "n_layers", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems:
            if self.latents > self.context:
                problems.append(f"latents ({self.latents}) cannot exceed context ({self.context})")
            if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
                problems.append(f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if not isinstance(self.dropout, int | float) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        try:
            parse_budget(self.default_budget)
        except BudgetError as error:
            problems.append(f"default_budget: {error}")
        if problems:
            raise ModelError("bad PerceiverS config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PerceiverSConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelError(f"unknown PerceiverS config keys: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as error:
            raise ModelError(f"bad PerceiverS config: {error}") from None


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


class PerceiverS(nn.Module):
    arch = "perceivers"

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
        """The generation context N_gen <= N that a budget ('64MB', bytes; default: the config's) buys;
        BudgetError naming the minimum if it buys none."""
        c = self.config
        budget = parse_budget(c.default_budget if budget_bytes is None else budget_bytes)
        return plan_state(budget, batch, c.context, c.latents, c.scale, c.n_layers, c.n_heads, c.d_model,
                          self.embed.weight.dtype)

    def new_state(self, plan: PerceiverSPlan, batch: int | None = None) -> PerceiverSState:
        c = self.config
        if (plan.latents, plan.scale, plan.n_layers, plan.d_model) != (c.latents, c.scale, c.n_layers, c.d_model):
            raise BudgetError("this plan was made for a different PerceiverS model")
        return PerceiverSState(plan, plan.batch if batch is None else batch, self.embed.weight.device)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """One new id per lane (B,) -> next-token logits (B, V)."""
        if ids.dim() != 1:
            raise ModelError(f"step takes one id per lane (B,), got shape {tuple(ids.shape)}")
        return self.prefill(ids[:, None], state)

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """Read ids (B, T) into the state as T steps would (same result, batched) -> logits (B, V) of the last."""
        if ids.dim() != 2 or ids.shape[0] != state.batch or ids.shape[1] == 0:
            raise ModelError(f"expected ids of shape ({state.batch}, T >= 1), got {tuple(ids.shape)}")
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ModelError(f"token ids must lie in [0, {self.config.vocab_size})")
        ids = ids.to(state.ids.device)
        phase = state.length - state.start  # lanes with the same phase fill and re-encode together
        if bool((phase == phase[0]).all()):
            return self._advance(ids, state, None)
        logits = torch.empty(state.batch, self.config.vocab_size, device=ids.device, dtype=state.keys1.dtype)
        for value in phase.unique():
            lanes = (phase == value).nonzero().flatten()
            logits[lanes] = self._advance(ids[lanes], state, lanes)
        return logits

    def _advance(self, ids: torch.Tensor, state: PerceiverSState, lanes: torch.Tensor | None) -> torch.Tensor:
        """Lanes sharing one phase read ids (b, T), a latent window at a time -> logits (b, V) of the last id."""
        m = self.config.latents
        keep = max(1, m // 2)
        done, total = 0, ids.shape[1]
        while done < total:
            length = _rows(state.length, lanes).clone()  # (b,)
            start = _rows(state.start, lanes).clone()
            fresh = int(length[0] - start[0]) == m
            if fresh:  # window full: re-encode the most recent M/2 positions
                start = length - keep + 1
                _set_rows(state.start, lanes, start)
                _set_rows(state.latent_positions, lanes, -1)
            count = min(total - done, int(start[0]) + m - int(length[0]))
            self._write_inputs(ids[:, done:done + count], length, state, lanes)
            _set_rows(state.length, lanes, length + count)
            first = start if fresh else length
            logits = self._latents(first, int(length[0] - first[0]) + count, state, lanes)
            done += count
        return logits[:, -1]

    def _write_inputs(self, ids: torch.Tensor, first: torch.Tensor, state: PerceiverSState,
                      lanes: torch.Tensor | None) -> None:
        """Project ids (b, n) at positions first + [0, n) into both cross-attention rings (once per token)."""
        positions = first[:, None] + torch.arange(ids.shape[1], device=ids.device)  # (b, n)
        rope = _rope_tables(positions, self.head_dim, self.config.rope_base)
        x = self.embed(ids)  # (b, n, C)
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)  # (b, n)
        for block, keys, values, slot_positions in (
                (self.cross, state.keys1, state.values1, state.positions1),
                (self.cross_local, state.keys2, state.values2, state.positions2)):
            k, v = _keys_values(block.attn, _norm(block.kv_norm, x), rope)  # (b, n, nh, hs)
            slots = positions % keys.shape[2]
            keys[rows, :, slots] = k  # into (B, nh, R, hs)
            values[rows, :, slots] = v
            slot_positions[rows, slots] = positions
        state.ids[rows, positions % state.ids.shape[1]] = ids

    def _latents(self, first: torch.Tensor, count: int, state: PerceiverSState,
                 lanes: torch.Tensor | None) -> torch.Tensor:
        """Latents at positions first + [0, count) (b,) from the rings -> logits (b, count, V); fills latent rings.

        The blocks' own parameters through a lean functional path (fewer dispatches per generated token);
        the tests hold it equal to `forward`.
        """
        c = self.config
        positions = first[:, None] + torch.arange(count, device=first.device)  # (b, n)
        rope = _rope_tables(positions, self.head_dim, c.rope_base)
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)
        h = self.embed(state.ids[rows, positions % c.latents])  # (b, n, C)
        start = _rows(state.start, lanes)[:, None, None]  # (b, 1, 1)
        context_start = (start + c.latents - state.plan.context).clamp(min=0)
        query = positions[:, :, None]  # (b, n, 1)

        key_pos = _rows(state.positions1, lanes)[:, None, :]  # (b, 1, N_gen)
        mask = ((key_pos >= context_start) & (key_pos <= query)).unsqueeze(1)  # (b, 1, n, N_gen)
        h = _cross_block(self.cross, h, _rows(state.keys1, lanes), _rows(state.values1, lanes), rope, mask)

        key_pos = _rows(state.positions2, lanes)[:, None, :]  # (b, 1, R2)
        low = torch.maximum(context_start, query - c.scale + 1)
        mask = ((key_pos >= low) & (key_pos <= query)).unsqueeze(1)
        h = _cross_block(self.cross_local, h, _rows(state.keys2, lanes), _rows(state.values2, lanes), rope, mask)

        slots = positions % c.latents
        state.latent_positions[rows, slots] = positions
        key_pos = _rows(state.latent_positions, lanes)[:, None, :]  # (b, 1, M)
        mask = ((key_pos >= start) & (key_pos <= query)).unsqueeze(1)  # (b, 1, n, M)
        for layer, block in enumerate(self.blocks):
            x = _norm(block.attn_norm, h)
            q = _queries(block.attn, x, rope)
            k, v = _keys_values(block.attn, x, rope)  # (b, n, nh, hs)
            keys, values = state.latent_keys[layer], state.latent_values[layer]
            keys[rows, :, slots] = k
            values[rows, :, slots] = v
            h = h + _attend(block.attn, q, _rows(keys, lanes), _rows(values, lanes), mask)
            h = h + _mlp(block.mlp, _norm(block.mlp_norm, h))
        return F.linear(_norm(self.norm, h), self.head.weight)  # (b, n, V)


# ---- the lean generation path: the shared layers' computation, written with their parameters ------------------

def _rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, cos) and (-sin, sin) over the two halves, (b, n, 1, hs): rotary as x * cos + swap(x) * sin."""
    cos, sin = rotary(positions, head_dim, base)  # (b, n, hs/2)
    return torch.cat([cos, cos], -1).unsqueeze(2), torch.cat([-sin, sin], -1).unsqueeze(2)


def _rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """layers.apply_rotary on x (b, n, nh, hs), heads third."""
    half = x.shape[-1] // 2
    return torch.addcmul(x * rope[0], torch.cat([x[..., half:], x[..., :half]], -1), rope[1])


def _norm(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.eps)


def _queries(attn, x: torch.Tensor, rope) -> torch.Tensor:
    """(b, nh, n, hs) rotated queries of normed x (b, n, C)."""
    batch, length, _ = x.shape
    q = F.linear(x, attn.q_proj.weight).view(batch, length, attn.n_heads, attn.head_dim)
    return _rotate(q, rope).transpose(1, 2)


def _keys_values(attn, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated keys and values (b, n, nh, hs) of normed x (b, n, C), laid out for writing into a ring."""
    batch, length, _ = x.shape
    kv = F.linear(x, attn.kv_proj.weight).view(batch, length, 2, attn.n_heads, attn.head_dim)
    return _rotate(kv[:, :, 0], rope), kv[:, :, 1]


def _attend(attn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (b, nh, n, hs)
    batch, _, length, _ = out.shape
    return F.linear(out.transpose(1, 2).reshape(batch, length, -1), attn.out_proj.weight)


def _mlp(mlp, x: torch.Tensor) -> torch.Tensor:
    return F.linear(F.gelu(F.linear(x, mlp.up.weight), approximate="tanh"), mlp.down.weight)


def _cross_block(block: CrossAttentionBlock, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rope,
                 mask: torch.Tensor) -> torch.Tensor:
    h = h + _attend(block.attn, _queries(block.attn, _norm(block.q_norm, h), rope), k, v, mask)
    return h + _mlp(block.mlp, _norm(block.mlp_norm, h))


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
