"""Training speed: the DSMR streaming loop (memory included) against a plain causal Transformer step.

    python -m bench.train                      # 6 x 256 and 6 x 384, segment 512, batch 8, fp32 (+ DSMR in bf16)
    python -m bench.train --steps 2 --sizes 256 --budget 8MB

Both models have the same blocks (core.models.layers), the same size and segment, and take a full optimizer step
(forward, backward, AdamW). The plain step attends within its segment only (scaled_dot_product_attention with a
causal mask); DSMR reads the next segment of 8 lanes each walking a whole MAESTRO performance, with the per-lane
recurrent state of `--budget` (two-scale horizons). A third table times the data pipeline alone (lane streams
with augmentation) to show it is not the bottleneck. The bf16 column is DSMR under CPU bf16 autocast (`recital
train --precision bf16`: it pays off on CPUs with native bf16, AVX512-BF16 or AMX). No asserts: CPU numbers are
noisy when the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from bench.data import SHARED_MIDI, require_midi
from core.budget import parse_budget
from core.models.dsmr import DSMR, DSMRConfig, segment_loss
from core.models.layers import Block, RMSNorm, rotary
from core.tokenizer import VOCAB_SIZE

MAESTRO = SHARED_MIDI / "maestro"


class PlainTransformer(nn.Module):
    """A causal Transformer over one segment: the baseline step, built from the same blocks as DSMR."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB_SIZE, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.head_dim = d_model // n_heads

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        cos, sin = rotary(torch.arange(length), self.head_dim, 10000.0)
        mask = torch.ones(length, length, dtype=torch.bool).tril()
        x = self.embed(ids)  # (B, T, C)
        for block in self.blocks:
            q, k, v = block.project(x, cos, sin)
            x = block.finish(x, q, k, v, mask)
        return F.linear(self.norm(x), self.embed.weight)  # (B, T, V)


def _streams(batch: int, segment: int, seed: int = 0):
    from trainer.corpus import Corpus
    from trainer.data import LaneStream, PieceSource

    corpus = Corpus.build(MAESTRO, workers=1)
    source = PieceSource(corpus, list(range(len(corpus))), seed, augmenting=True)
    return corpus, LaneStream(source, list(range(batch)), batch, segment)


def time_plain(d_model: int, heads: int, args) -> float:
    torch.manual_seed(0)
    model = PlainTransformer(d_model, args.layers, heads)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _, stream = _streams(args.batch, args.segment)
    batches = [stream.next_batch() for _ in range(args.steps + 1)]
    elapsed = 0.0
    for i, (inputs, targets) in enumerate(batches):
        start = time.perf_counter()
        logits = model(torch.from_numpy(inputs))
        segment_loss(logits, torch.from_numpy(targets)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:  # the first step warms up the kernels
            elapsed += time.perf_counter() - start
    return args.steps * args.batch * args.segment / elapsed


def time_dsmr(d_model: int, heads: int, args, bf16: bool = False) -> tuple[float, str]:
    """DSMR training tokens/s; `bf16`: the forward under CPU bf16 autocast (`recital train --precision bf16`)."""
    torch.manual_seed(0)
    model = DSMR(DSMRConfig(d_model=d_model, n_layers=args.layers, n_heads=heads, segment_len=args.segment))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _, stream = _streams(args.batch, args.segment)
    plan = model.plan(parse_budget(args.budget) * args.batch, batch=args.batch)
    state = model.new_state(plan, args.batch)
    elapsed = 0.0
    for i in range(args.steps + 1):
        inputs, targets = stream.next_batch()
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(torch.from_numpy(inputs), state)
            loss = segment_loss(logits.float(), torch.from_numpy(targets))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i:
            elapsed += time.perf_counter() - start
    return args.steps * args.batch * args.segment / elapsed, plan.describe()


def time_data(args) -> tuple[float, int]:
    corpus, stream = _streams(args.batch, args.segment, seed=1)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        inputs, _ = stream.next_batch()
        count += inputs.size
    return count / (time.perf_counter() - start), corpus.total_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 384], help="d_model values (head size 64)")
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--segment", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (after one warm-up step)")
    parser.add_argument("--budget", default=DSMRConfig.default_budget, help="DSMR state budget per lane (default: the model's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    require_midi(MAESTRO)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("RECITAL_CACHE_DIR", tempfile.mkdtemp(prefix="recital-bench-"))

    print(f"training tokens/s, fp32, segment {args.segment}, batch {args.batch}, {args.layers} layers, "
          f"{torch.get_num_threads()} threads")
    print(f"{'model':<10} {'plain step':>11} {'DSMR stream':>12} {'DSMR/plain':>11} {'DSMR bf16':>10}  DSMR memory")
    for d_model in args.sizes:
        heads = d_model // 64
        plain = time_plain(d_model, heads, args)
        dsmr, plan = time_dsmr(d_model, heads, args)
        bf16, _ = time_dsmr(d_model, heads, args, bf16=True)
        print(f"{args.layers}x{d_model:<8} {plain:>11,.0f} {dsmr:>12,.0f} {dsmr / plain:>10.0%} {bf16:>10,.0f}  {plan}")
    rate, tokens = time_data(args)
    print(f"\ndata pipeline alone (8 lane streams, transposition + tempo stretch, corpus of {tokens:,} tokens): "
          f"{rate:,.0f} tokens/s")


if __name__ == "__main__":
    main()
