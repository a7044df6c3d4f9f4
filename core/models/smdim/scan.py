"""The selective scan of a Mamba layer (Gu & Dao, arXiv 2312.00752), in two forms that compute the same numbers.

For each channel e and state dimension n, with inputs u (B, E, L), step sizes delta (B, E, L) (already positive),
the decay A (E, N) (negative), input and output projections B, C (B, N, L) and the skip D (E,):

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t          (B, E, N) per position
    y_t = C_t . h_t + D u_t

- `scan_recurrent` runs that recurrence one position at a time (`scan_step`): the reference, and the form a
  left-to-right reader would use.
- `scan_chunked` is the training form: chunks of `chunk` positions one after another, the state carried between
  them, each scanned in parallel by doubling (log2(chunk) elementwise passes) or position by position. Only
  products of decays in (0, 1] appear, never their inverses, so it is exact in float32 at any length. With
  gradients it keeps only each chunk's starting state and recomputes the chunk in the backward pass.
- `selective_scan` picks the path: mamba-ssm's CUDA kernel when that package is installed and the tensors live on
  a GPU (the optional extra `recital[cuda]`); else the chunked PyTorch form, in parallel on a GPU and position by
  position within each chunk on a CPU (measured 5-10x faster there: bench numbers in the commit).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 16  # positions scanned at once: 64 does 1.5x the doubling work and its backward is ~6x slower on a CPU


def cuda_kernel():
    """mamba-ssm's `selective_scan_fn`, or None when the package (or its compiled kernel) is not installed."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def scan_step(h: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
              C: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One position: state h (B, E, N), u and delta (B, E), B and C (B, N) -> (new state, y (B, E))."""
    h = torch.exp(delta[:, :, None] * A) * h + (delta * u)[:, :, None] * B[:, None, :]
    return h, (h * C[:, None, :]).sum(-1) + D * u


def scan_recurrent(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor) -> torch.Tensor:
    """y (B, E, L), one position after another from a zero state."""
    batch, channels, length = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    out = []
    for t in range(length):
        h, y = scan_step(h, u[:, :, t], delta[:, :, t], A, B[:, :, t], C[:, :, t], D)
        out.append(y)
    return torch.stack(out, dim=-1)


def scan_chunked(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: torch.Tensor, chunk: int = DEFAULT_CHUNK, inner: str = "doubling") -> torch.Tensor:
    """y (B, E, L): chunks in order from the state the last one left, each scanned in parallel by doubling
    (inner "doubling": log2(chunk) passes, what a GPU wants) or position by position (inner "loop": less work,
    5-10x faster on a CPU, where parallel passes buy nothing).

    With gradients, only the state at each chunk's start is kept (B, E, N per chunk); the backward pass scans
    the chunks again, last first, one chunk's graph at a time (as mamba-ssm's kernel recomputes): training
    memory is the inputs plus one chunk, not a (B, E, L, N) state per doubling pass."""
    inputs = (u, delta, A, B, C, D)
    scan_chunk = _INNER[inner]
    if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
        return _RecomputedScan.apply(*inputs, chunk, scan_chunk)
    return _scan(*inputs, chunk, scan_chunk)[0]


def _scan(u, delta, A, B, C, D, chunk: int, scan_chunk) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """y (B, E, L) and the state at the start of every chunk."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    out, starts = [], []
    for begin in range(0, u.shape[-1], chunk):
        part = slice(begin, begin + chunk)
        starts.append(h)
        y, h = scan_chunk(u[:, :, part], delta[:, :, part], A, B[:, :, part], C[:, :, part], D, h)
        out.append(y)
    return torch.cat(out, dim=-1), starts


def _chunk_doubling(u, delta, A, B, C, D, h) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of K positions from state h (B, E, N) -> (y (B, E, K), the state after it), in parallel."""
    d = delta[..., None]  # (B, E, K, 1)
    decay = torch.exp(d * A[:, None, :])  # (B, E, K, N)
    x = (d * u[..., None]) * B.transpose(1, 2)[:, None]  # (B, E, K, N)
    decay, x = _doubling(decay, x)  # decay: product up to each t; x: the state from a zero start
    states = x + decay * h[:, :, None, :]  # (B, E, K, N)
    return (states * C.transpose(1, 2)[:, None]).sum(-1) + D[:, None] * u, states[:, :, -1]


def _chunk_loop(u, delta, A, B, C, D, h) -> tuple[torch.Tensor, torch.Tensor]:
    """The same chunk position by position (work-efficient: the CPU's choice)."""
    d = delta[..., None]
    decay = torch.exp(d * A[:, None, :])  # (B, E, K, N)
    x = (d * u[..., None]) * B.transpose(1, 2)[:, None]  # (B, E, K, N)
    readout = C.transpose(1, 2)  # (B, K, N)
    out = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + x[:, :, t]
        out.append(torch.einsum("ben,bn->be", h, readout[:, t]))
    return torch.stack(out, dim=-1) + D[:, None] * u, h


_INNER = {"doubling": _chunk_doubling, "loop": _chunk_loop}


class _RecomputedScan(torch.autograd.Function):
    """The chunked scan whose backward recomputes each chunk from its saved starting state."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, chunk, scan_chunk):
        y, starts = _scan(u, delta, A, B, C, D, chunk, scan_chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, torch.stack(starts))
        ctx.chunk, ctx.scan_chunk = chunk, scan_chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        chunk = ctx.chunk
        grads = [torch.zeros_like(t) for t in (u, delta, A, B, C, D)]
        grad_h = torch.zeros_like(starts[0])
        for index in reversed(range(len(starts))):
            part = slice(index * chunk, (index + 1) * chunk)
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_() for t in (u[:, :, part], delta[:, :, part], A,
                                                                B[:, :, part], C[:, :, part], D, starts[index])]
                y, h = ctx.scan_chunk(*leaves)
                found = torch.autograd.grad((y, h), leaves, (grad_y[:, :, part], grad_h))
            for target, grad in zip((grads[0], grads[1], None, grads[3], grads[4]), found[:5], strict=True):
                if target is not None:
                    target[:, :, part] = grad
            grads[2] += found[2]
            grads[5] += found[5]
            grad_h = found[6]
        return (*grads, None, None)


def _doubling(decay: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = decay_t h_{t-1} + x_t along dim 2 (Hillis-Steele): after the pass at distance d
    each position holds the combination of the 2d positions ending there."""
    length = x.shape[2]
    step = 1
    while step < length:
        x = torch.cat([x[:, :, :step], x[:, :, step:] + decay[:, :, step:] * x[:, :, :-step]], dim=2)
        decay = torch.cat([decay[:, :, :step], decay[:, :, step:] * decay[:, :, :-step]], dim=2)
        step *= 2
    return decay, x


def selective_scan(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor, kernel: str = "auto", chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """y (B, E, L) of the selective scan. kernel: "auto" (mamba-ssm's CUDA kernel where it runs, else PyTorch),
    "torch" (the chunked PyTorch form) or "cuda" (mamba-ssm's; ModelError when it cannot run here)."""
    if kernel not in ("auto", "torch", "cuda"):
        from core.errors import ModelError

        raise ModelError(f"scan kernel must be auto, torch or cuda, got {kernel!r}")
    fused = cuda_kernel() if kernel != "torch" and u.is_cuda else None
    if kernel == "cuda" and fused is None:
        from core.errors import ModelError

        raise ModelError("the cuda scan needs mamba-ssm (pip install 'recital[cuda]') and tensors on a GPU")
    if fused is not None:
        dtype = u.dtype
        y = fused(u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
                  D.float().contiguous(), z=None, delta_bias=None, delta_softplus=False)
        return y.to(dtype)
    return scan_chunked(u, delta, A, B, C, D, chunk, "doubling" if u.is_cuda else "loop")
