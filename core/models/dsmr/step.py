"""DSMR's lean step path: one id per lane through weights packed for one-row products (see the comment below)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from core.models.dsmr.state import RecurrentState
from core.models.layers import RMSNorm, attention, rotary_frequencies, sounding_step
from core.models.packed import Dense, Matrix, folded, inv_rms, matrix_kind, rms_eps
from core.tokenizer import BOS

if TYPE_CHECKING:
    from core.models.dsmr.model import DSMR


# ---- the lean step path -----------------------------------------------------------------------------------------
# One id per lane, no gradients: the same computation as `_advance` with T = 1, with the weights packed for
# one-row products: each RMSNorm weight folded into the projection after it (its 1/rms applied after the product),
# q/k/v in one matrix, stored (in, out) so a one-row product reads them contiguously (F.linear's layout for the
# down projection, which is faster there), residual adds fused into the products (addmm), rotary as one small
# product per layer, and the validity mask made additive once per step for all layers. The tests hold it equal to
# `forward` (fp32); int8 weights are the opt-in fast form (`use_step_weights`).

@dataclass(frozen=True)
class PackedLayer:
    qkv: Matrix  # C -> 3C, attention norm folded in
    out: Matrix  # C -> C
    up: Matrix  # C -> hidden, MLP norm folded in
    down: Matrix  # hidden -> C


@dataclass(frozen=True)
class Packed:
    embed: torch.Tensor  # (V, C)
    layers: tuple[PackedLayer, ...]
    head: Matrix  # C -> V, final norm folded in
    inv_freq: torch.Tensor  # (hs,) float64: the rotary frequencies twice, for both halves
    sign: torch.Tensor  # (hs,): -1 on the first half, +1 on the second
    swap: torch.Tensor  # (hs,): index of the other half's partner (rotary pairs i and i + hs/2)
    norm_eps: torch.Tensor  # (1,): C * eps (see packed.inv_rms)
    n_heads: int
    sounding: Dense | None = None  # 128 -> C, the sounding-notes input (model weights' dtype, both kinds)


@torch.no_grad()
def pack(model: DSMR, kind: str = "fp32") -> Packed:
    matrix = matrix_kind(kind)
    width = model.config.d_model

    def folded_norm(norm: RMSNorm, *linears: nn.Linear) -> torch.Tensor:
        return folded(norm.weight, *(lin.weight for lin in linears))

    layers = []
    for block in model.blocks:
        attn = block.attn
        layers.append(PackedLayer(matrix(folded_norm(block.attn_norm, attn.q_proj, attn.kv_proj)),
                                  matrix(attn.out_proj.weight), matrix(folded_norm(block.mlp_norm, block.mlp.up)),
                                  matrix(block.mlp.down.weight.detach(), transposed=True)))
    half = rotary_frequencies(model.head_dim, model.config.rotary_base, model.embed.weight.device)
    count = len(half)
    sign = torch.cat([-torch.ones_like(half), torch.ones_like(half)]).float()
    swap = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(half.device)
    return Packed(model.embed.weight.detach(), tuple(layers), matrix(folded_norm(model.norm, model.head)),
                  torch.cat([half, half]), sign, swap, rms_eps(width, model.norm.eps, model.embed.weight),
                  model.config.n_heads,
                  Dense(model.sounding.weight.detach()) if model.sounding is not None else None)


def lean_step(packed: Packed, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
    """Logits (B, V) after one id per lane; writes its keys/values into the state (as `_advance` with T = 1)."""
    batch = ids.shape[0]
    fill, top = state.fill, state.max_horizon
    old = top + fill  # the new token's global validity column
    if bool((ids == BOS).any()):  # a BOS resets its lane first
        for lane in (ids == BOS).nonzero()[:, 0].tolist():
            state.reset(lane)
    state.valid[:, old] = True
    dtype = state.kv[0].dtype
    bias = torch.zeros(batch, 1, 1, old + 1, dtype=dtype, device=ids.device).masked_fill_(
        ~state.valid[:, None, None, :old + 1], float("-inf"))  # (B, 1, 1, M + fill + 1) additive mask
    # Rotary as one product per layer: rotated = x @ R, R (B, hs, hs) holding cos on the diagonal and the signed
    # sin where each pair (i, i + hs/2) meets; the angles as `_advance` computes them.
    angles = state.positions[:, None].to(torch.float64) * packed.inv_freq  # (B, hs), as layers.rotary
    cos, sin = angles.cos().float(), angles.sin().float()
    rotation = torch.diag_embed(cos) + torch.diag_embed(sin * packed.sign)[:, packed.swap]
    rotation = rotation.to(dtype)  # (B, hs, hs)
    heads = packed.n_heads
    x = F.embedding(ids, packed.embed)  # (B, C)
    if packed.sounding is not None:  # the pitches sounding after this id, as `_advance` adds them
        sounding_step(state.sounding, ids)
        x = packed.sounding.add_to(x, state.sounding.to(x.dtype))
    width = x.shape[1]
    head_dim = width // heads
    norm_eps = packed.norm_eps
    for layer, keys, values, m in zip(packed.layers, state.keys, state.values, state.horizons, strict=True):
        qkv = (layer.qkv(x) * inv_rms(x, norm_eps)).view(batch, 3 * heads, head_dim)  # (x @ W) / rms(x)
        qk = torch.bmm(qkv.narrow(1, 0, 2 * heads), rotation)  # (B, 2 nh, hs) rotated queries and keys
        end = m + fill + 1
        keys.select(2, end - 1).copy_(qk.narrow(1, heads, heads))  # this token's key and value
        values.select(2, end - 1).copy_(qkv.narrow(1, 2 * heads, heads))
        out = attention(qk.narrow(1, 0, heads).unsqueeze(2), keys.narrow(2, 0, end), values.narrow(2, 0, end),
                        bias.narrow(3, top - m, end))  # (B, nh, 1, hs)
        x = layer.out.add_to(x, out.view(batch, width))
        hidden = F.gelu(layer.up(x) * inv_rms(x, norm_eps), approximate="tanh")
        x = layer.down.add_to(x, hidden)
    state.positions += 1
    state.fill += 1
    if state.fill == state.segment_len:
        state.close_segment()
    return (packed.head(x) * inv_rms(x, norm_eps)).to(dtype)
