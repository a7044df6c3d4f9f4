"""PerceiverS speed and memory: training per context length; generation, cached against recompute.

    python -m bench.perceivers                  # default-size model, the full table (a few minutes)
    python -m bench.perceivers --quick          # smaller sweep
    python -m bench.perceivers --threads 2 --d-model 384

Tables (no asserts; CPU numbers are noisy when other jobs share the machine):
1. training: crops/s, target tokens/s (M per crop) and peak resident memory of one forward+backward, per N.
2. generation vs. context: tokens/s of `step` once N_gen inputs are held (one re-encode every M/2 steps
   included), with fp32 and int8 step weights, against recompute (a full forward over the last N_gen tokens
   per new token).
3. generation vs. piece length (N_gen = N): tokens/s at several positions of a long piece, fp32 and int8;
   flat once the context is full.
0. busy machine (bench/busy.py, run first): the shipped model's jobs at 1 and 2 threads, quiet and beside a
   process that keeps one core busy: Recital's thread policy against torch's default (`--busy only`).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import torch

from bench.busy import busy_table
from core.budget import format_bytes
from core.models.packed import STEP_WEIGHTS
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.models.perceivers.state import state_bytes
from core.tokenizer import VOCAB_SIZE


def make_config(args: argparse.Namespace, context: int | None = None) -> PerceiverSConfig:
    return PerceiverSConfig(context=context or args.context, latents=args.latents, scale=args.scale,
                            d_model=args.d_model, n_heads=args.n_heads, n_layers=args.n_layers)


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _train_one(args: argparse.Namespace, context: int, queue) -> None:
    """In a fresh process, so that its peak resident memory belongs to this context length alone."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = make_config(args, context)
    model = PerceiverS(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, VOCAB_SIZE, (args.batch, context))
    targets = torch.randint(3, VOCAB_SIZE, (args.batch, min(config.latents, context)))

    def step() -> None:
        _, loss = model(ids, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    small = min(config.latents, context)
    model(ids[:, -small:], targets[:, -small:])[1].backward()  # load the kernels before measuring memory
    model.zero_grad(set_to_none=True)
    before = _rss_bytes()
    step()  # warm-up; allocates gradients and optimizer state
    timings = []
    for _ in range(args.train_steps):
        start = time.perf_counter()
        step()
        timings.append(time.perf_counter() - start)
    seconds = sorted(timings)[len(timings) // 2]
    queue.put((context, args.batch / seconds, args.batch * min(config.latents, context) / seconds,
               args.batch * context / seconds, _rss_bytes() - before))


def training_table(args: argparse.Namespace) -> None:
    print(f"\n## Training (batch {args.batch}, forward + backward + AdamW, median of {args.train_steps})\n")
    print("| context N | crops/s | target tok/s | input tok/s | peak memory (RSS growth) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    context_lengths = [n for n in args.train_contexts if n >= args.latents]
    spawn = multiprocessing.get_context("spawn")
    for context in context_lengths:
        queue = spawn.Queue()
        process = spawn.Process(target=_train_one, args=(args, context, queue))
        process.start()
        row = queue.get()
        process.join()
        _, crops, targets, inputs, rss = row
        print(f"| {context} | {crops:.2f} | {targets:.0f} | {inputs:.0f} | {format_bytes(rss)} |", flush=True)


def _budget(config: PerceiverSConfig, context: int) -> int:
    return state_bytes(1, context, config.latents, config.scale, config.n_layers, config.d_model, 4)


@torch.no_grad()
def cached_rate(model: PerceiverS, context: int, fill: int, steps: int) -> tuple[float, float]:
    """Tokens per wall second and per CPU second of `step` after `fill` tokens were read, with a state whose
    context is `context`. With one thread and a machine to itself the two agree; when other jobs share the
    CPU, the second is the closer estimate of what an idle machine would do."""
    state = model.new_state(model.plan(_budget(model.config, context)))
    ids = torch.randint(3, VOCAB_SIZE, (1, fill + steps))
    model.prefill(ids[:, :fill], state)
    start, cpu = time.perf_counter(), time.process_time()
    for t in range(fill, fill + steps):
        model.step(ids[:, t], state)
    return steps / (time.perf_counter() - start), steps / (time.process_time() - cpu)


@torch.no_grad()
def recompute_rate(model: PerceiverS, context: int, steps: int) -> float:
    """Tokens/s of the uncached way: a full forward over the last `context` tokens for every new token."""
    ids = torch.randint(3, VOCAB_SIZE, (1, context + steps))
    start = time.perf_counter()
    for t in range(steps):
        model(ids[:, t + 1:t + 1 + context])
    return steps / (time.perf_counter() - start)


def generation_tables(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = make_config(args)
    model = PerceiverS(config).eval()
    params = sum(p.numel() for p in model.parameters())
    steps = max(args.gen_steps, config.latents // 2)  # at least one re-encode in every measurement
    print(f"\n## Generation vs. context (batch 1, {steps} steps, {args.threads} thread(s))\n")
    print("Step weights: fp32 is exact (equal to the training forward); int8 is the fast form "
          "(`use_step_weights`, what `recital generate` uses on a CPU).\n")
    print("| context N_gen | state | step weights | cached tok/s | cached tok/CPU-s | recompute tok/s | speed-up |")
    print("| ---: | ---: | :--- | ---: | ---: | ---: | ---: |")
    for context in [n for n in args.gen_contexts if config.latents <= n <= config.context]:
        recompute = recompute_rate(model, context, steps=args.recompute_steps)
        for kind in STEP_WEIGHTS:
            model.use_step_weights(kind)
            cached, cached_cpu = cached_rate(model, context, fill=context, steps=steps)
            print(f"| {context} | {format_bytes(_budget(config, context))} | {kind} | {cached:.0f} | {cached_cpu:.0f} | "
                  f"{recompute:.1f} | {cached / recompute:.0f}x |", flush=True)
    print(f"\n## Generation vs. piece length (N_gen = {config.context}, batch 1)\n")
    print("| tokens already read | " + " | ".join(f"{k} tok/s | {k} tok/CPU-s" for k in STEP_WEIGHTS) + " |")
    print("| ---: |" + " ---: | ---: |" * len(STEP_WEIGHTS))
    for fill in args.fills:
        cells = []
        for kind in STEP_WEIGHTS:
            model.use_step_weights(kind)
            wall, cpu = cached_rate(model, config.context, fill=fill, steps=steps)
            cells += [f"{wall:.0f}", f"{cpu:.0f}"]
        print(f"| {fill} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nmodel: {config.to_dict()} ({params / 1e6:.2f} M parameters)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=256)
    parser.add_argument("--scale", type=int, default=512)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--n-heads", type=int, default=4)
    parser.add_argument("--n-layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4, help="training batch")
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--gen-steps", type=int, default=256)
    parser.add_argument("--recompute-steps", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="fewer context lengths and steps")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--busy", choices=("skip", "only", "also"), default="also",
                        help="the busy-machine table (bench/busy.py, the shipped model): skip it, only it, or also")
    parser.add_argument("--busy-rounds", type=int, default=3)
    args = parser.parse_args()
    args.train_contexts = [512, 1024, 2048, 4096]
    args.gen_contexts = [256, 512, 1024, 2048, 4096]
    args.fills = [4096, 8192, 16384, 32768]
    if args.quick:
        args.train_contexts, args.gen_contexts, args.fills = [512, 4096], [512, 4096], [4096, 16384]
        args.train_steps, args.gen_steps, args.recompute_steps = 2, 128, 4
    if args.busy != "skip":
        busy_table("default-perceivers", args.busy_rounds)  # first: the one table that sets threads both ways
    if args.busy == "only":
        return
    if not args.skip_training:
        training_table(args)
    generation_tables(args)


if __name__ == "__main__":
    main()
