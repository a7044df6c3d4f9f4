"""SMDIM: discrete (absorbing-state) diffusion over music tokens with stacked MFA blocks (arXiv 2507.20128).

    ids (B, T), MASK where unknown
      -> embedding (d_embed per token; MASK is one id past the codec's, so the codec and its checks are unchanged)
      -> 1-D convolution, stride s: T/s positions of d_model channels (shorter and wider)
      -> MFA blocks: x += BiMamba(norm x)   a selective state-space layer read in both directions (long context,
                                            linear cost; each direction has its own conv, projections and decay)
                     x += MLP(norm x)       feed-forward
                     x += LocalAttn(norm x) self-attention over the `attn_window` positions each side (0: all),
                                            rotary positions, blocks of the window so its cost stays linear
      -> transposed convolution back to T tokens, plus the token's own embedding (a skip)
      -> logits (B, T, V) over the codec's ids (never MASK)

Every position sees the whole window (the model is bidirectional): a masked region is filled from both sides,
which is what infilling and continuation need. Training and sampling live in training.py and sampling.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from core.budget import parse_budget
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
    codec_problems,
    config_from_dict,
    field_problems,
    range_problems,
)
from core.models.interface import DENOISE, check_ids
from core.models.layers import MLP, RMSNorm, apply_rotary, attention, rotary
from core.models.packed import Int8, PackedWeights
from core.models.smdim.scan import KERNELS, selective_scan
from core.models.smdim.state import SMDIMPlan, SMDIMState, dt_rank, plan_window
from core.state import TOKENS_PER_SECOND
from core.tokenizer import PAD

MAX_STATE = 256  # d_state: a Mamba layer's state per channel
MAX_STRIDE = 64


@dataclass(frozen=True)
class SMDIMConfig:
    vocab_size: int | None = None  # the codec's ids (None: filled from the codec); MASK is vocab_size (an embedding row, never an output)
    codec: str = "performance"  # core/codecs.py; a config from before the field was trained on this one
    window: int = 1024  # tokens a training window holds: the longest window a plan buys
    d_embed: int = 192  # numbers per token
    d_model: int = 384  # channels of the MFA stack, on the sequence shortened by `stride`
    stride: int = 2  # tokens per position of the shortened sequence
    n_blocks: int = 4
    d_state: int = 16  # Mamba state per channel
    expand: int = 2  # Mamba inner channels = expand * d_model
    d_conv: int = 4  # Mamba's short convolution
    n_heads: int = 4
    attn_window: int = 64  # positions each side the attention sees, on the shortened sequence (0: all)
    mlp_ratio: int = 3
    dropout: float = 0.0
    rope_base: float = 10000.0
    steps: int = 32  # unmasking steps per window when the caller names none
    # Which masks each step commits when the caller names none (sampling.ORDERS): open-ended writing (a new piece,
    # a continuation) uses it; infill names its own (core/infill.py). "confidence" suits the event codec's SMDIM;
    # the notes SMDIM's surest id in an open window is a 1 s TimeShift, so under "confidence" it wrote new pieces
    # and continuations of near silence (0.1-0.4 notes/s after MAESTRO primers), under "random" (the reverse
    # process it was trained for) music (1.6-3.2 notes/s, ranges of 28-46 semitones). In the timed windows it
    # writes now (core/denoising.py), "random" too: 4 MAESTRO primers, 30 s each, masks at 1.25x the primer's
    # rate, notes/s 9.95 vs 4.84 under "confidence" (truth 7.91), pitch range 42.8 vs 31.8 (truth 50.5).
    order: str = "confidence"
    # Ids per second of music when no primer tells (a new piece's timed windows; the event codec's open regions:
    # how many ids to mask per second asked).
    tokens_per_second: float = TOKENS_PER_SECOND
    default_budget: str = "64MB"  # working memory of one pass per lane when the user names none

    def __post_init__(self) -> None:
        problems = field_problems(self)
        if not problems:
            problems = codec_problems(self)
        if not problems:
            problems = range_problems(self, {
                "vocab_size": (4, MAX_VOCAB), "window": (16, MAX_TOKENS), "d_embed": (1, MAX_WIDTH),
                "d_model": (2, MAX_WIDTH), "stride": (1, MAX_STRIDE), "n_blocks": (1, MAX_LAYERS),
                "d_state": (1, MAX_STATE), "expand": (1, MAX_MLP_RATIO), "d_conv": (1, 64),
                "n_heads": (1, MAX_HEADS), "attn_window": (0, MAX_SEGMENT), "mlp_ratio": (1, MAX_MLP_RATIO),
                "rope_base": (1, MAX_ROTARY_BASE), "steps": (1, 4096), "tokens_per_second": (1, 1000)})
        if problems:
            raise ModelError("bad SMDIM config: " + "; ".join(problems))
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            problems.append(f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if self.window % self.stride:
            problems.append(f"window {self.window} must be a multiple of the stride {self.stride}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        problems += budget_problems(self.default_budget)
        from core.models.smdim.sampling import ORDERS  # (it reads the model's codec: imported when needed)

        if self.order not in ORDERS:
            problems.append(f"order must be one of {', '.join(ORDERS)}, got {self.order!r}")
        if problems:
            raise ModelError("bad SMDIM config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SMDIMConfig:
        return config_from_dict(cls, data, "SMDIM")


class ScanDirection(nn.Module):
    """One reading direction of a Mamba layer: short causal conv, input-dependent step, B, C, decay, skip."""

    def __init__(self, inner: int, d_state: int, d_conv: int, rank: int):
        super().__init__()
        self.conv = nn.Conv1d(inner, inner, d_conv, groups=inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(inner, rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(rank, inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(inner, 1))
        self.D = nn.Parameter(torch.ones(inner))
        self.rank, self.d_state = rank, d_state
        # Mamba's step-size start: softplus(bias) log-uniform in [1e-3, 1e-1].
        dt = torch.exp(torch.rand(inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, u: torch.Tensor, kernel: str) -> torch.Tensor:
        """u (B, L, E) in this direction's order -> y (B, E, L). Everything stays position-major (B, L, .), the
        layout the projections write and the stepwise scan reads, so nothing is transposed in memory; kernel
        "loop" runs the previous path (the convolution on (B, E, L)) for comparison."""
        if kernel == "loop":
            u = u.transpose(1, 2)
            u = F.silu(self.conv(u)[..., :u.shape[-1]]).transpose(1, 2)
        else:
            u = F.silu(self.causal_conv(u))
        dt, b, c = self.x_proj(u).split([self.rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # (B, L, E)
        return selective_scan(u.transpose(1, 2), delta.transpose(1, 2), -torch.exp(self.A_log.float()).to(u.dtype),
                              b.transpose(1, 2), c.transpose(1, 2), self.D.to(u.dtype), kernel)

    def causal_conv(self, u: torch.Tensor) -> torch.Tensor:
        """`conv` (depthwise, causal) on u (B, L, E) as d_conv shifted multiply-adds: ~3x faster on a CPU than
        the convolution on the transposed layout, and its output is already position-major."""
        weight, width = self.conv.weight[:, 0], self.conv.weight.shape[-1]  # (E, d_conv)
        padded = F.pad(u, (0, 0, width - 1, 0))  # (B, d_conv - 1 + L, E)
        length = u.shape[1]
        out = torch.addcmul(self.conv.bias, padded[:, :length], weight[:, 0])
        for j in range(1, width):
            out = torch.addcmul(out, padded[:, j:j + length], weight[:, j])
        return out


class BiMamba(nn.Module):
    """A Mamba layer read forwards and backwards (shared input and output projections, gated by z)."""

    def __init__(self, d_model: int, expand: int, d_state: int, d_conv: int):
        super().__init__()
        inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * inner, bias=False)
        self.forwards = ScanDirection(inner, d_state, d_conv, dt_rank(d_model))
        self.backwards = ScanDirection(inner, d_state, d_conv, dt_rank(d_model))
        self.out_proj = nn.Linear(inner, d_model, bias=False)
        self.kernel = "auto"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, E)
        ahead = self.forwards(u, self.kernel).transpose(1, 2)  # (B, L, E): a view where the scan was stepwise
        back = self.backwards(u.flip(1), self.kernel).transpose(1, 2).flip(1)
        return self.out_proj((ahead + back) * F.silu(z))


class LocalAttention(nn.Module):
    """Bidirectional self-attention over `window` positions each side (0: every position), never on padding.

    Windowed, the sequence is cut into blocks of `window` queries that score their block and the two beside it,
    then the distance mask keeps |i - j| <= window: cost linear in length."""

    def __init__(self, d_model: int, n_heads: int, window: int, rope_base: float):
        super().__init__()
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.n_heads, self.window, self.rope_base = n_heads, window, rope_base

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x (B, L, C), valid (B, L) True where a position holds music (not only PAD) -> (B, L, C)."""
        batch, length, channels = x.shape
        heads, head_dim = self.n_heads, channels // self.n_heads
        q, k, v = self.qkv(x).view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, nh, L, hs)
        cos, sin = rotary(torch.arange(length, device=x.device), head_dim, self.rope_base)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        w = self.window
        if not w or length <= w:
            mask = valid[:, None, None, :] | torch.eye(length, dtype=torch.bool, device=x.device)
            out = attention(q, k, v, mask)
        else:
            out = self._blocked(q, k, v, valid, w)[:, :, :length]
        return self.out(out.transpose(1, 2).reshape(batch, length, channels))

    @staticmethod
    def _blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, w: int) -> torch.Tensor:
        batch, heads, length, head_dim = q.shape
        blocks = -(-length // w)
        pad = blocks * w - length
        q = F.pad(q, (0, 0, 0, pad)).view(batch, heads, blocks, w, head_dim)

        def neighbours(t: torch.Tensor) -> torch.Tensor:  # (B, ..., L, d) -> (B, ..., blocks, 3w, d)
            t = F.pad(t, (0, 0, w, pad + w))
            return torch.cat([t[..., i * w:(i + blocks) * w, :].unflatten(-2, (blocks, w)) for i in range(3)], -2)

        k, v = neighbours(k), neighbours(v)
        keys_valid = neighbours(valid[:, None, :, None].float())[:, 0, :, :, 0] > 0  # (B, blocks, 3w)
        query = torch.arange(w, device=q.device)[:, None] + w  # position in the 3w span
        distance = torch.arange(3 * w, device=q.device)[None, :] - query  # (w, 3w)
        mask = (distance.abs() <= w)[None, None] & keys_valid[:, :, None, :]  # (B, blocks, w, 3w)
        mask = (mask | (distance == 0)[None, None])[:, None]  # a query always sees itself: no empty row
        if q.is_cuda or torch.is_grad_enabled():
            out = attention(q, k, v, mask)  # (B, nh, blocks, w, hs)
        else:
            out = _attend(q, k, v, mask)
        return out.flatten(2, 3)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), where `mask`) v, written out: a denoising pass on a CPU. There PyTorch's fused
    attention took ~3x as long over these small blocks (a boolean mask broadcast over the heads is most of it); the
    mask is made an additive bias once, without the heads."""
    bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, float("-inf"))
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5).add_(bias)
    return torch.matmul(scores.softmax(-1), v)


class MFABlock(nn.Module):
    """Mamba, feed-forward, attention: each pre-normed with a residual."""

    def __init__(self, c: SMDIMConfig):
        super().__init__()
        self.mamba_norm = RMSNorm(c.d_model)
        self.mamba = BiMamba(c.d_model, c.expand, c.d_state, c.d_conv)
        self.mlp_norm = RMSNorm(c.d_model)
        self.mlp = MLP(c.d_model, c.mlp_ratio * c.d_model, c.dropout)
        self.attn_norm = RMSNorm(c.d_model)
        self.attn = LocalAttention(c.d_model, c.n_heads, c.attn_window, c.rope_base)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.mamba(self.mamba_norm(x)))
        x = x + self.mlp(self.mlp_norm(x))
        return x + self.dropout(self.attn(self.attn_norm(x), valid))


Constrain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits (B, T, V), ids (B, T)) -> logits


class ReducedLinear:
    """An nn.Linear's product in reduced precision, for denoising passes on a CPU: the weight on packed.Int8's
    grid (int8, one scale per output channel), held as bfloat16 integers (exact) for one bfloat16 GEMM, the scale
    and bias applied after in float32. A CPU with AVX-512 BF16 runs the GEMM ~4x faster than float32."""

    def __init__(self, linear: nn.Linear):
        grid = Int8(linear.weight.detach())
        self.w = grid.w.to(torch.bfloat16)
        self.scale = grid.row_scale
        self.bias = None if linear.bias is None else linear.bias.detach().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.to(torch.bfloat16), self.w).float().mul_(self.scale)  # 3x faster than bf16 * f32
        return out if self.bias is None else out.add_(self.bias)


class SMDIM(PackedWeights, nn.Module):
    """The SMDIM model (core.models.interface.Denoiser): `forward` scores a window, `denoise` fills one."""

    arch = "smdim"
    family = DENOISE

    def __init__(self, config: SMDIMConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size + 1, c.d_embed)  # + MASK
        self.down = nn.Conv1d(c.d_embed, c.d_model, c.stride, stride=c.stride)
        self.blocks = nn.ModuleList(MFABlock(c) for _ in range(c.n_blocks))
        self.norm = RMSNorm(c.d_model)
        self.up = nn.ConvTranspose1d(c.d_model, c.d_embed, c.stride, stride=c.stride)
        self.out_norm = RMSNorm(c.d_embed)
        self.head = nn.Linear(c.d_embed, c.vocab_size, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.dim() == 2:
                nn.init.normal_(module.weight, std=0.02)

    @property
    def mask_id(self) -> int:
        """The id of a masked position: one past the codec's ids."""
        return self.config.vocab_size

    def use_scan(self, kernel: str) -> None:
        """Which selective scan every layer runs: "auto", "torch", "cuda" or "loop" (see scan.selective_scan)."""
        if kernel not in KERNELS:
            raise ModelError(f"scan kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
        for block in self.blocks:
            block.mamba.kernel = kernel

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) of codec ids, MASK and PAD -> logits (B, T, V) for every position."""
        c = self.config
        length = ids.shape[1]
        padded = -(-length // c.stride) * c.stride
        ids = F.pad(ids, (0, padded - length), value=PAD)
        e = self.embed(ids)  # (B, T', d_embed)
        h = self.down(e.transpose(1, 2)).transpose(1, 2)  # (B, L, d_model)
        valid = (ids != PAD).view(ids.shape[0], -1, c.stride).any(-1)  # (B, L)
        for block in self.blocks:
            h = block(h, valid)
        h = self.up(self.norm(h).transpose(1, 2)).transpose(1, 2)  # (B, T', d_embed)
        return self.head(self.out_norm(e + h))[:, :length]

    # ---- the model interface --------------------------------------------------------------------------------

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1) -> SMDIMPlan:
        """The window a budget ('64MB', bytes; default: the config's for each lane) buys for `batch` lanes."""
        budget = parse_budget(self.config.default_budget) * batch if budget_bytes is None else parse_budget(
            budget_bytes)
        return plan_window(self.config, budget, batch)

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        """'': a plan never reads a longer window than training used, whatever the budget."""
        return ""

    def new_state(self, plan: SMDIMPlan, batch: int | None = None) -> SMDIMState:
        if plan.trained_window != self.config.window:
            raise BudgetError("this plan was made for a different SMDIM model")
        self._watch_parameters()  # the weights the reduced passes check for changes (after loading or moving)
        return SMDIMState(plan, plan.batch if batch is None else batch)

    def use_step_weights(self, kind: str) -> None:
        """How denoising passes (`predict`, `denoise`) multiply by the weights: "fp32" (exact, the default) or
        "int8" (every linear layer as ReducedLinear: probabilities within ~1e-4 of fp32, a pass ~1.3x faster on a
        CPU with AVX-512 BF16). Training and `forward` never use them."""
        super().use_step_weights(kind)

    def _pack(self, kind: str) -> dict[nn.Linear, ReducedLinear]:
        if kind == "fp32":
            return {}
        return {module: ReducedLinear(module) for module in self.modules() if isinstance(module, nn.Linear)}

    @contextmanager
    def _pass_weights(self) -> Iterator[None]:
        """The weights `use_step_weights` chose, for the passes inside: each linear layer's forward replaced by
        its reduced product for the while (nothing changes with "fp32")."""
        reduced = self._packed()
        for module, product in reduced.items():
            module.forward = product
        try:
            yield
        finally:
            for module in reduced:
                del module.forward

    def score(self, ids: torch.Tensor) -> torch.Tensor:
        """One denoising pass: `forward` with the weights `use_step_weights` chose -> float32 logits (B, T, V)."""
        with self._pass_weights():
            return self(ids).float()

    def describe(self) -> str:
        c = self.config
        return (f"SMDIM, a diffusion model that fills masked music from both sides: {c.n_blocks} Mamba + "
                f"attention blocks x {c.d_model} over {c.window:,}-token windows shortened {c.stride}x")

    @torch.no_grad()
    def predict(self, ids: torch.Tensor, state: SMDIMState) -> torch.Tensor:
        """One pass: ids (B, T <= window) with MASK where unknown -> logits (B, T, V)."""
        self._check(ids, state)
        return self.score(ids.to(self.embed.weight.device))

    @torch.no_grad()
    def denoise(self, ids: torch.Tensor, keep: torch.Tensor, state: SMDIMState, steps: int | None = None,
                sampling=None, generator: torch.Generator | None = None, constrain: Constrain | None = None,
                order: str | None = None, min_repeat: float = 0.0) -> torch.Tensor:
        """Fill every position where `keep` (B, T) is False, in `steps` passes in `order` (the config's by
        default), no key struck again within `min_repeat` seconds -> ids (B, T) with no MASK left; kept positions
        are returned unchanged. See sampling.unmask."""
        from core.models.smdim.sampling import unmask

        self._check(ids, state)
        if keep.shape != ids.shape or keep.dtype != torch.bool:
            raise ModelError(f"keep must be a bool tensor of the ids' shape {tuple(ids.shape)}, got "
                             f"{keep.dtype} {tuple(keep.shape)}")
        if bool((ids[keep] == self.mask_id).any()):
            raise ModelError("a kept position holds MASK: keep only known ids")
        return unmask(self, ids.to(self.embed.weight.device), keep.to(self.embed.weight.device),
                      steps or self.config.steps, sampling, generator, constrain, order or self.config.order,
                      min_repeat)

    def _check(self, ids: torch.Tensor, state: SMDIMState) -> None:
        check_ids(ids, 2, state.batch, self.config.vocab_size + 1, "denoise")
        if ids.shape[1] > state.window:
            raise ModelError(f"{ids.shape[1]} tokens are more than this plan's window of {state.window}")
