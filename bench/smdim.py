"""SMDIM's MFA stack against an all-attention stack of the same width and depth: one denoising pass per length.

    python -m bench.smdim                       # default-size SMDIM, 1k, 4k and 16k tokens, one thread
    python -m bench.smdim --lengths 1024 4096 --threads 2 --repeats 3

Both models share everything but the blocks: the embedding, the strided convolution that shortens the sequence,
its transpose and the head. SMDIM's blocks are bidirectional Mamba + feed-forward + windowed attention; the
reference's are Transformer blocks (full bidirectional attention + feed-forward, PyTorch's fused attention) on
the same shortened sequence, the "Transformer diffusion model" the paper compares against. One pass is what each
unmasking step costs. Each (model, length) runs in a fresh process: its peak resident memory during the pass,
above what it held before it (model, ids, a warm-up at 256 tokens), is its own. No asserts: CPU numbers are
noisy when other jobs share the machine; the claim is about growth (near-linear against quadratic).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time

import torch
from torch import nn

from core.models.layers import Block, rotary
from core.models.smdim import SMDIM, SMDIMConfig
from core.tokenizer import VOCAB_SIZE


class AttentionStack(nn.Module):
    """Full bidirectional Transformer blocks in place of the MFA blocks, everything else SMDIM's."""

    def __init__(self, smdim: SMDIM):
        super().__init__()
        c = smdim.config
        self.smdim = smdim
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_ratio) for _ in range(c.n_blocks))
        smdim.blocks = nn.ModuleList()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m, c = self.smdim, self.smdim.config
        e = m.embed(ids)
        h = m.down(e.transpose(1, 2)).transpose(1, 2)
        cos, sin = rotary(torch.arange(h.shape[1]), c.d_model // c.n_heads, c.rope_base)
        for block in self.blocks:
            q, k, v = block.project(h, cos, sin)
            h = block.finish(h, q, k, v, None)
        h = m.up(m.norm(h).transpose(1, 2)).transpose(1, 2)
        return m.head(m.out_norm(e + h))


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _measure(kind: str, length: int, args: argparse.Namespace, queue) -> None:
    """In a fresh process: seconds of each pass and the peak memory one pass added."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SMDIMConfig(window=max(length, 1024), d_model=args.d_model, d_embed=args.d_model // 2,
                         n_blocks=args.blocks, stride=args.stride)
    model = SMDIM(config) if kind == "mfa" else AttentionStack(SMDIM(config))
    model.eval()
    ids = torch.randint(3, VOCAB_SIZE, (1, length))
    with torch.no_grad():
        model(torch.randint(3, VOCAB_SIZE, (1, 256)))
        before = _rss()
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - began)
    queue.put((statistics.median(times), _rss() - before))


def run(kind: str, length: int, args: argparse.Namespace) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(kind, length, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--d-model", type=int, default=SMDIMConfig.d_model)
    parser.add_argument("--blocks", type=int, default=SMDIMConfig.n_blocks)
    parser.add_argument("--stride", type=int, default=SMDIMConfig.stride)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"one denoising pass, batch 1, d_model {args.d_model}, {args.blocks} blocks, stride {args.stride}, "
          f"{args.threads} thread(s), median of {args.repeats}")
    print(f"{'tokens':>7} | {'MFA s':>8} | {'attn s':>8} | {'attn/MFA':>8} | {'MFA MB':>8} | {'attn MB':>8} | "
          f"{'attn/MFA':>8}")
    previous = None
    for length in args.lengths:
        mfa_s, mfa_b = run("mfa", length, args)
        att_s, att_b = run("attention", length, args)
        print(f"{length:>7} | {mfa_s:>8.2f} | {att_s:>8.2f} | {att_s / mfa_s:>8.2f} | {mfa_b / 2**20:>8.1f} | "
              f"{att_b / 2**20:>8.1f} | {att_b / max(mfa_b, 1):>8.2f}", flush=True)
        if previous is not None:
            grow = length / previous[0]
            print(f"{'':>7}   x{grow:g} tokens: MFA time x{mfa_s / previous[1]:.1f}, attention time "
                  f"x{att_s / previous[2]:.1f}")
        previous = (length, mfa_s, att_s)


if __name__ == "__main__":
    main()
