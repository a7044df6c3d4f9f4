"""The selective scan of a Mamba layer (Gu & Dao, arXiv 2312.00752), in two forms that compute the same numbers.

For each channel e and state dimension n, with inputs u (B, E, L), step sizes delta (B, E, L) (already positive),
the decay A (E, N) (negative), input and output projections B, C (B, N, L) and the skip D (E,):

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t          (B, E, N) per position
    y_t = C_t . h_t + D u_t

- `scan_recurrent` runs that recurrence one position at a time (`scan_step`): the reference, and the form a
  left-to-right reader would use.
- `scan_chunked` is the training form: chunks of `chunk` positions one after another, the state carried between
  them, each scanned in parallel by doubling (log2(chunk) elementwise passes, a GPU's form), position by position
  under autograd ("loop", the CPU's form until the stepwise one), or "stepwise": each chunk's decays and inputs
  computed at once into buffers every chunk reuses, then one fused multiply-add per position in place, with a
  backward pass written out (the adjoint recurrence run the same way) instead of autograd's graph of thousands of
  small steps. Only products of decays in (0, 1] appear, never their inverses, so every form is exact in float32
  at any length. With gradients each keeps only each chunk's starting state and recomputes the chunk backwards.
- `selective_scan` picks the path: mamba-ssm's CUDA kernel when that package is installed and the tensors live on
  a GPU (the optional extra `recital[cuda]`); else the chunked PyTorch form, by doubling on a GPU and stepwise on
  a CPU. Why not a matrix form on a CPU (decays between every s <= t of a chunk, exp(cum_t - cum_s)): A is per
  channel and state here, not a scalar per head as in Mamba-2, so that form is K/2 times the exponentials of the
  stepwise one over a (B, K, K, E, N) tensor, not a matrix product (the decays' exponentials were a third of a
  default-size pass before they were taken by exp2).
"""

from __future__ import annotations

import torch

DEFAULT_CHUNK = 16  # positions scanned at once: 64 does 1.5x the doubling work; stepwise, 16 keeps a chunk in cache
LOG2_E = 1.4426950408889634  # exp(x) = exp2(x log2 e)
KERNELS = ("auto", "torch", "cuda", "loop")  # "loop": the CPU's previous form, kept to measure against


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
    (inner "doubling": log2(chunk) passes, what a GPU wants) or position by position (inner "loop" under
    autograd, or "stepwise" in place with its backward written out: less work, what a CPU wants).

    With gradients, only the state at each chunk's start is kept (B, E, N per chunk); the backward pass scans
    the chunks again, last first, one chunk's graph at a time (as mamba-ssm's kernel recomputes): training
    memory is the inputs plus one chunk, not a (B, E, L, N) state per doubling pass."""
    inputs = (u, delta, A, B, C, D)
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    if inner == "stepwise":
        return _StepwiseScan.apply(*inputs, chunk) if grad else _stepwise(*inputs, chunk)[0]
    scan_chunk = _INNER[inner]
    if grad:
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


def _position_major(u, delta, B, C) -> tuple[torch.Tensor, ...]:
    """u, delta, delta u (B, L, E) and B, C (B, L, N), contiguous: a chunk's rows are one block of memory
    (a copy only where the caller's tensor is not already a transposed (B, L, .) one, as the model's delta is)."""
    d = delta.transpose(1, 2).contiguous()
    u = u.transpose(1, 2).contiguous()
    return u, d, d * u, B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous()


def _prepare(decay: torch.Tensor, x: torch.Tensor, d: torch.Tensor, du: torch.Tensor, A2: torch.Tensor,
             b: torch.Tensor) -> None:
    """A chunk's decays exp(delta A) and inputs delta u B written into `decay` and `x` (B, K, E, N) from its rows
    of d, du (B, K, E) and b (B, K, N). A2 is A log2(e): PyTorch's exp2 is ~4x faster than its exp on a CPU,
    and the decays were a third of a pass."""
    torch.mul(d[..., None], A2, out=decay).exp2_()
    torch.mul(du[..., None], b[:, :, None, :], out=x)


def _positions(decay: torch.Tensor, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(x_t, decay_t) views of each position of two (B, K, E, N) buffers, made once for every chunk that reuses
    the buffers: taking them apart again for each chunk was a tenth of a batch-1 scan."""
    return list(zip(x.unbind(1), decay.unbind(1), strict=True))


def _step(positions: list[tuple[torch.Tensor, torch.Tensor]], h: torch.Tensor) -> torch.Tensor:
    """The chunk's states h_t = decay_t h_(t-1) + x_t written over x_t (`_positions`, the chunk's first k), one
    fused multiply-add per position into memory already there; -> the last state (a view of the buffer)."""
    for x_t, decay_t in positions:
        h = x_t.addcmul_(decay_t, h)
    return h


def _stepwise(u, delta, A, B, C, D, chunk: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """y (B, E, L) and the state at the start of every chunk: each chunk prepared at once into two buffers that
    every chunk reuses, then stepped position by position in place."""
    batch, channels, length = u.shape
    u, d, du, b, c = _position_major(u, delta, B, C)
    size = min(chunk, length)
    decay = u.new_empty(batch, size, channels, A.shape[1])
    states = torch.empty_like(decay)
    positions = _positions(decay, states)
    y = torch.empty_like(u)  # (B, L, E)
    h = u.new_zeros(batch, channels, A.shape[1])
    starts = []
    A2 = A * LOG2_E
    for begin in range(0, length, chunk):
        part, k = slice(begin, begin + chunk), min(chunk, length - begin)
        starts.append(h)
        _prepare(decay[:, :k], states[:, :k], d[:, part], du[:, part], A2, b[:, part])
        h = _step(positions[:k], h).clone()
        y[:, part] = torch.matmul(states[:, :k], c[:, part, :, None])[..., 0]  # C_t . h_t
    return y.addcmul_(u, D).transpose(1, 2), starts


class _StepwiseScan(torch.autograd.Function):
    """The CPU's scan with gradients: forward as `_stepwise`, keeping each chunk's starting state; the backward
    pass recomputes a chunk's states from it and runs the adjoint recurrence g_t = C_t dy_t + decay_(t+1) g_(t+1)
    (g: the loss's gradient with respect to h_t) position by position in place, last chunk first, then takes the
    inputs' gradients of the chunk at once. The same products as `scan_recurrent`, summed in another order."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, chunk):
        y, starts = _stepwise(u, delta, A, B, C, D, chunk)
        ctx.save_for_backward(u, delta, A, B, C, D, torch.stack(starts))
        ctx.chunk = chunk
        return y

    @staticmethod
    def backward(ctx, grad_y):
        u, delta, A, B, C, D, starts = ctx.saved_tensors
        chunk = ctx.chunk
        batch, channels, length = u.shape
        u, d, du, b, c = _position_major(u, delta, B, C)
        dy = grad_y.transpose(1, 2).contiguous()  # (B, L, E)
        grad_u, grad_delta = torch.empty_like(u), torch.empty_like(u)
        grad_B, grad_C = torch.empty_like(b), torch.empty_like(c)
        grad_A = torch.zeros_like(A)
        size = min(chunk, length)
        decay = u.new_empty(batch, size, channels, A.shape[1])
        states, g, work = torch.empty_like(decay), torch.empty_like(decay), torch.empty_like(decay)
        positions = _positions(decay, states)
        grad_h = torch.zeros_like(starts[0])  # the gradient of the state the chunk leaves to the next
        A2 = A * LOG2_E
        for index in reversed(range(len(starts))):
            begin = index * chunk
            part, k = slice(begin, begin + chunk), min(chunk, length - begin)
            a, s, gk, wk = decay[:, :k], states[:, :k], g[:, :k], work[:, :k]
            h0 = starts[index]
            _prepare(a, s, d[:, part], du[:, part], A2, b[:, part])
            _step(positions[:k], h0)
            torch.mul(dy[:, part, :, None], c[:, part, None, :], out=gk)  # from y_t = C_t . h_t
            gk[:, -1] += grad_h
            for t in range(k - 2, -1, -1):
                gk[:, t].addcmul_(a[:, t + 1], gk[:, t + 1])
            grad_C[:, part] = torch.matmul(dy[:, part, None, :], s)[:, :, 0]
            grad_h = a[:, 0] * gk[:, 0]
            # the decay's gradient g_t h_(t-1) decay_t: the states shifted one position, h0 first
            wk[:, 1:] = s[:, :-1]
            wk[:, 0] = h0
            g_log = wk.mul_(a).mul_(gk)  # the gradient of delta_t A
            g_x = torch.matmul(gk, b[:, part, :, None])[..., 0]  # (B, K, E): sum over N of g_t B_t
            grad_delta[:, part] = torch.mul(g_log, A, out=s).sum(-1).addcmul_(g_x, u[:, part])
            grad_u[:, part] = g_x * d[:, part]
            grad_B[:, part] = torch.matmul(du[:, part, None, :], gk)[:, :, 0]
            grad_A += g_log.mul_(d[:, part, :, None]).sum((0, 1))
        grad_u.addcmul_(dy, D)
        grad_D = (dy * u).sum((0, 1))
        return (grad_u.transpose(1, 2), grad_delta.transpose(1, 2), grad_A, grad_B.transpose(1, 2),
                grad_C.transpose(1, 2), grad_D, None)


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
    "torch" (the chunked PyTorch form), "cuda" (mamba-ssm's; ModelError when it cannot run here) or "loop" (the
    chunked form stepped under autograd, what a CPU ran before the stepwise form: for benchmarks)."""
    if kernel not in KERNELS:
        from core.errors import ModelError

        raise ModelError(f"scan kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    fused = cuda_kernel() if kernel in ("auto", "cuda") and u.is_cuda else None
    if kernel == "cuda" and fused is None:
        from core.errors import ModelError

        raise ModelError("the cuda scan needs mamba-ssm (pip install 'recital[cuda]') and tensors on a GPU")
    if fused is not None:
        dtype = u.dtype
        y = fused(u.contiguous(), delta.contiguous(), A.float().contiguous(), B.contiguous(), C.contiguous(),
                  D.float().contiguous(), z=None, delta_bias=None, delta_softplus=False)
        return y.to(dtype)
    if kernel == "loop":
        return scan_chunked(u, delta, A, B, C, D, chunk, "loop")
    return scan_chunked(u, delta, A, B, C, D, chunk, "doubling" if u.is_cuda else "stepwise")
