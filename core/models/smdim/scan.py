"""The selective scan of a Mamba layer (Gu & Dao, arXiv 2312.00752), in two forms that compute the same numbers.

For each channel e and state dimension n, with inputs u (B, E, L), step sizes delta (B, E, L) (already positive),
the decay A (E, N) (negative), input and output projections B, C (B, N, L) and the skip D (E,):

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t          (B, E, N) per position
    y_t = C_t . h_t + D u_t

- `scan_recurrent` runs that recurrence one position at a time (`scan_step`): the reference, and the form a
  left-to-right reader would use.
- `scan_chunked` is the training form: chunks of `chunk` positions one after another, each scanned in parallel by
  doubling (log2(chunk) elementwise passes over the chunk), the state carried between chunks. Only products of
  decays in (0, 1] appear, never their inverses, so it is exact in float32 at any length; its activations grow
  linearly with L.
- `selective_scan` picks the path: mamba-ssm's CUDA kernel when that package is installed and the tensors live on
  a GPU (the optional extra `recital[cuda]`), the chunked PyTorch form otherwise (any CPU).
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
                 D: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """y (B, E, L): chunks in order, each scanned in parallel by doubling from the state the last one left."""
    batch, channels, length = u.shape
    h = u.new_zeros(batch, channels, A.shape[1])
    out = []
    for begin in range(0, length, chunk):
        part = slice(begin, min(begin + chunk, length))
        d = delta[:, :, part, None]  # (B, E, K, 1)
        decay = torch.exp(d * A[:, None, :])  # (B, E, K, N)
        x = (d * u[:, :, part, None]) * B[:, :, part].transpose(1, 2)[:, None]  # (B, E, K, N)
        decay, x = _doubling(decay, x)  # decay: product up to each t; x: the state from a zero start
        states = x + decay * h[:, :, None, :]  # (B, E, K, N)
        out.append((states * C[:, :, part].transpose(1, 2)[:, None]).sum(-1) + D[:, None] * u[:, :, part])
        h = states[:, :, -1]
    return torch.cat(out, dim=-1)


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
    return scan_chunked(u, delta, A, B, C, D, chunk)
