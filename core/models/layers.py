"""Transformer pieces shared by DSMR and PerceiverS: norms, the one rotary position code, attention with explicit K/V, blocks.

Attention is split into `queries`, `keys_values` and `attend` so that a model can cache keys and values (they are
stored already rotated to their absolute positions: rotary attention depends only on the distance between a query
and a key, so a cached key never needs to be touched again) and feed them back as memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from core.tokenizer import BOS, EOS, NOTE_OFF, NOTE_ON, TIME_SHIFT

PITCHES = 128  # the width of the sounding-notes input: one bit per MIDI pitch


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def rotary_frequencies(head_dim: int, base: float, device: torch.device | str | None = None) -> torch.Tensor:
    """(head_dim // 2,) float64 rotary frequencies base^(-2i / head_dim): the one definition both models use."""
    return base ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)


def rotary(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (*P, head_dim/2) float32 at absolute `positions` (any shape P); angles in float64, so position 10^6
    is as exact as 10 (a float32 angle there is off by ~0.03 rad)."""
    angles = positions.to(torch.float64).unsqueeze(-1) * rotary_frequencies(head_dim, base, positions.device)
    return angles.cos().float(), angles.sin().float()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim. x: (B, H, T, D); cos/sin: (T, D/2) or (B, 1, T, D/2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def math_kernel_only(q: torch.Tensor) -> bool:
    """Whether attention on these queries' device and dtype must avoid the fused kernels: fp32 on CUDA, where the
    memory-efficient kernel read a misaligned address (torch 2.11 on an H200, a DSMR default's held-out scoring:
    memory and key lengths are not multiples of 8). Under bf16 autocast, as training runs, the fused ones worked."""
    return q.is_cuda and q.dtype == torch.float32  # is_cuda: a cheap check on every generated token


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """`F.scaled_dot_product_attention` (mask: bool, True = may attend, or an additive float bias), through the math
    kernel where `math_kernel_only` says so. Every model's attention goes through here."""
    if math_kernel_only(q):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Attention(nn.Module):
    """Multi-head attention whose keys/values may come from another sequence (cross-attention) or a cache."""

    def __init__(self, d_model: int, n_heads: int, d_kv_in: int | None = None):
        super().__init__()
        assert d_model % n_heads == 0, "d_model must be divisible by n_heads"
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        assert self.head_dim % 2 == 0, "head size must be even for rotary positions"
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.kv_proj = nn.Linear(d_kv_in or d_model, 2 * d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def queries(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return apply_rotary(self._heads(self.q_proj(x)), cos, sin)

    def keys_values(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(x).chunk(2, dim=-1)
        return apply_rotary(self._heads(k), cos, sin), self._heads(v)  # each (B, nh, T, hs)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """q (B, nh, Tq, hs), k/v (B, nh, Tk, hs), mask bool (Tq, Tk) or (B, 1, Tq, Tk), True = may attend."""
        out = attention(q, k, v, mask)
        batch, _, length, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, -1))


class MLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x), approximate="tanh")))


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x), memory) ; x + mlp(norm(x)).

    The caller supplies the keys/values to attend to (memory + this segment's own, already concatenated) and
    the mask, so the same block serves recurrent segments (DSMR), latent self-attention and single-step decoding.
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio * d_model, dropout)
        self.dropout = nn.Dropout(dropout)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q, k, v of this block's input (B, T, C) at the positions given by cos/sin."""
        h = self.attn_norm(x)
        q = self.attn.queries(h, cos, sin)
        k, v = self.attn.keys_values(h, cos, sin)
        return q, k, v

    def finish(self, x: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               mask: torch.Tensor | None) -> torch.Tensor:
        """The rest of the block once the keys/values to attend to (memory included) are known."""
        x = x + self.dropout(self.attn.attend(q, k, v, mask))
        return x + self.mlp(self.mlp_norm(x))


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention (queries from one stream, keys/values from another) followed by an MLP."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int = 4, dropout: float = 0.0):
        super().__init__()
        self.q_norm = RMSNorm(d_model)
        self.kv_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = MLP(d_model, mlp_ratio * d_model, dropout)
        self.dropout = nn.Dropout(dropout)

    def keys_values(self, context: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        return self.attn.keys_values(self.kv_norm(context), cos, sin)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        q = self.attn.queries(self.q_norm(x), cos, sin)
        x = x + self.dropout(self.attn.attend(q, k, v, mask))
        return x + self.mlp(self.mlp_norm(x))


# ---- the sounding-notes input --------------------------------------------------------------------------------------
# A NoteOff may come hundreds of tokens after its NoteOn, beyond what a model with a bounded memory still sees; the
# set of pitches sounding is therefore handed to the model with every id (issue #17). The rules are the codec's
# (core/tokenizer.py): NoteOn p makes p sound (a NoteOn of a sounding pitch re-strikes it: it still sounds),
# NoteOff p ends it, BOS (a new piece) and EOS (the end, where the decoder closes every note) end them all. The set
# at a position is the one after reading its id: what sounds while the model predicts the next id.


def _note_columns(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per id: its pitch column for a NoteOn (else PITCHES, a spare column), the same for a NoteOff, and whether it
    ends every note (BOS, EOS)."""
    pitch = (ids - NOTE_ON) % PITCHES
    is_on = (ids >= NOTE_ON) & (ids < NOTE_OFF)
    is_off = (ids >= NOTE_OFF) & (ids < TIME_SHIFT)
    spare = torch.full_like(ids, PITCHES)
    return torch.where(is_on, pitch, spare), torch.where(is_off, pitch, spare), (ids == BOS) | (ids == EOS)


def _start_marks(start: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """(B, PITCHES) long: -1 where a pitch sounds before the ids (a NoteOn just before them), -3 elsewhere."""
    if start is None:
        return torch.full((batch, PITCHES), -3, dtype=torch.long, device=device)
    return torch.where(start, -1, -3)


def sounding_notes(ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, PITCHES) bool: the pitches sounding after each id of `ids` (B, T), from the set `start` (B, PITCHES)
    sounding before them (None: nothing). Vectorised: per pitch, the last NoteOn so far against the last NoteOff
    or BOS/EOS so far (cumulative maxima of their positions)."""
    batch, length = ids.shape
    steps = torch.arange(length, device=ids.device).expand(batch, length)[..., None]  # (B, T, 1)
    on, off, ends = _note_columns(ids)
    never = torch.full((batch, length, PITCHES + 1), -3, dtype=torch.long, device=ids.device)
    last_on = never.scatter(2, on[..., None], steps).cummax(1).values[..., :PITCHES]
    last_off = never.scatter(2, off[..., None], steps).cummax(1).values[..., :PITCHES]
    last_end = torch.where(ends, steps[..., 0], -3).cummax(1).values[..., None]  # (B, T, 1)
    last_on = torch.maximum(last_on, _start_marks(start, batch, ids.device)[:, None])
    return last_on > torch.maximum(last_off, last_end)


SOUNDING_CHUNK = 1 << 16  # ids `sounding_after` reads at a time: its temporaries stay ~3 MB whatever the primer


def sounding_after(ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
    """(B, PITCHES) bool: the pitches sounding after all of `ids` (B, T): `sounding_notes(ids, start)[:, -1]` in
    bounded memory (a primer of a million ids skipped by a prefill): a chunk at a time, each read from the set the
    last one left (what sounds after a + b is what b leaves from what a left)."""
    if ids.shape[1] <= SOUNDING_CHUNK:
        return _sounding_after(ids, start)
    for begin in range(0, ids.shape[1], SOUNDING_CHUNK):
        start = _sounding_after(ids[:, begin:begin + SOUNDING_CHUNK], start)
    return start


def _sounding_after(ids: torch.Tensor, start: torch.Tensor | None) -> torch.Tensor:
    batch, length = ids.shape
    steps = torch.arange(length, device=ids.device).expand(batch, length)
    on, off, ends = _note_columns(ids)
    never = torch.full((batch, PITCHES + 1), -3, dtype=torch.long, device=ids.device)
    last_on = never.scatter_reduce(1, on, steps, "amax")[:, :PITCHES]
    last_off = never.scatter_reduce(1, off, steps, "amax")[:, :PITCHES]
    last_end = torch.where(ends, steps, -3).amax(1, keepdim=True)  # (B, 1)
    last_on = torch.maximum(last_on, _start_marks(start, batch, ids.device))
    return last_on > torch.maximum(last_off, last_end)


def sounding_step(sounding: torch.Tensor, ids: torch.Tensor) -> None:
    """Read one id per lane (B,) into the sounding sets (B, PITCHES) in place, by the rules of `sounding_notes`;
    no copy to Python (a generation step calls it)."""
    column = ((ids - NOTE_ON) % PITCHES)[:, None]  # (B, 1)
    note = (ids >= NOTE_ON) & (ids < TIME_SHIFT)
    value = torch.where(note, ids < NOTE_OFF, sounding.gather(1, column)[:, 0])  # a note sets its bit, others keep
    sounding.scatter_(1, column, value[:, None])
    sounding &= ~((ids == BOS) | (ids == EOS))[:, None]
