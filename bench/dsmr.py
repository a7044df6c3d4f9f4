"""DSMR speed and memory: memory schedules in training, cached generation against recomputation.

    python -m bench.dsmr              # the full tables (several minutes on 2 CPU cores)
    python -m bench.dsmr --quick      # a shorter piece, fewer positions

Large tensors allocated and freed every segment make glibc return memory to the kernel and fault it back in;
on a VM that can dominate training time. MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
in the environment keeps it in the process.

Tables (no asserts; CPU numbers are noisy when other jobs share the machine):
1. training, one real MAESTRO piece streamed whole in segments (truncated BPTT, AdamW): tokens/s, peak resident
   memory and recurrent-state bytes for `full` (every layer the whole cap) against `two_scale` and `uniform` at
   0.41x of full's state budget (the paper's ratio), each in a fresh process.
2. generation at the default size: tokens/s of `step` at batch 1 and 8, 1 and 2 threads, fp32 and int8
   weights (dynamic quantisation of the Linear layers), against the naive loop that recomputes the last
   segment for every new token with no cache.
3. generation against piece length: tokens/s and state bytes at several positions of one long piece.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch

from core.midi import read_performance
from core.models.dsmr import DSMR, DSMRConfig, segment_loss
from core.state import format_bytes, parse_budget
from core.tokenizer import BOS, encode

MAESTRO = Path(__file__).resolve().parents[2] / "shared" / "midi" / "maestro"


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def train_config(args) -> DSMRConfig:
    return DSMRConfig(d_model=args.train_d_model, n_layers=6, n_heads=args.train_d_model // 64,
                      segment_len=args.train_segment, max_horizon=args.full_cap)


def _train_one(args, schedule: str, budget: int | None, queue) -> None:
    """Stream the piece once; in a fresh process so its peak memory is its own."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.as_tensor(encode(read_performance(args.piece)).astype("int64"))[: args.train_tokens + 1]
    model = DSMR(train_config(args)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    plan = model.plan(budget or 1 << 40, schedule=schedule)  # full: no budget but its cap
    state = model.new_state(plan)
    length = model.config.segment_len
    base = _rss()
    start, tokens = time.perf_counter(), 0
    for offset in range(0, len(ids) - 1, length):
        chunk, targets = ids[None, offset:offset + length], ids[None, offset + 1:offset + length + 1]
        if chunk.shape[1] != targets.shape[1]:
            chunk = chunk[:, :targets.shape[1]]
        loss = segment_loss(model(chunk, state), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += chunk.shape[1]
    elapsed = time.perf_counter() - start
    queue.put((plan.horizons, state.nbytes, tokens / elapsed, _rss(), _rss() - base))


def training_table(args) -> None:
    config = train_config(args)
    probe = DSMR(config)
    full = probe.plan(1 << 40, schedule="full")
    budget = int(full.nbytes * 0.41)
    print(f"\n1. training: {Path(args.piece).name} streamed whole ({args.train_tokens} tokens max), "
          f"d_model {config.d_model} x 6 layers, segments of {config.segment_len}, batch 1, "
          f"{args.threads} threads")
    print(f"{'schedule':<10} {'horizons':<28} {'state':>10} {'x full':>7} {'tokens/s':>9} {'x full':>7} "
          f"{'peak RSS':>10} {'RSS growth':>11}")
    context = multiprocessing.get_context("spawn")
    reference = None
    for schedule, limit in (("full", None), ("two_scale", budget), ("uniform", budget)):
        queue = context.Queue()
        worker = context.Process(target=_train_one, args=(args, schedule, limit, queue))
        worker.start()
        horizons, nbytes, rate, peak, growth = queue.get()
        worker.join()
        reference = reference or (nbytes, rate)
        print(f"{schedule:<10} {str(list(horizons)):<28} {format_bytes(nbytes):>10} "
              f"{nbytes / reference[0]:>6.2f}x {rate:>9.0f} {rate / reference[1]:>6.2f}x "
              f"{format_bytes(peak):>10} {format_bytes(growth):>11}")


def _timed(run, steps: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `run` called `steps` times."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        run()
    return time.perf_counter() - wall, time.process_time() - cpu


def step_rates(models: dict, budget: str, batch: int, position: int, steps: int, repeats: int
               ) -> tuple[dict, int]:
    """Median tokens/s (wall, CPU) of each way to step, all lanes counted, once `position` tokens were read.

    `models` maps a name to (model, step function); the ways take turns, `repeats` rounds, so a burst of load
    from other jobs hits them alike. Also returns the state bytes.
    """
    generator = torch.Generator().manual_seed(0)
    primer = torch.randint(3, 359, (batch, max(1, position)), generator=generator)
    primer[:, 0] = BOS
    token = torch.full((batch,), 60)
    runs, nbytes = {}, 0
    with torch.no_grad():
        for name, (model, step) in models.items():
            state = model.new_state(model.plan(parse_budget(budget) * batch, batch))  # the budget is per lane
            model.prefill(primer, state)
            for _ in range(5):
                step(model, token, state)
            runs[name], nbytes = (lambda m=model, f=step, s=state: f(m, token, s)), state.nbytes
        samples = {name: [] for name in models}
        for _ in range(repeats):
            for name, run in runs.items():
                wall, cpu = _timed(run, steps)
                samples[name].append((steps * batch / wall, steps * batch / cpu))
    return {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for name, v in samples.items()}, nbytes


def lean_fp32(model: DSMR, token: torch.Tensor, state) -> torch.Tensor:
    return model.step(token, state)


def segment_path(model: DSMR, token: torch.Tensor, state) -> torch.Tensor:
    """The step before the lean path: the general segment code with T = 1 (what `forward` runs)."""
    return model(token[:, None], state)[:, 0]


def int8_model(model: DSMR) -> DSMR:
    """A copy of the model whose `step` uses int8 weights."""
    quantised = copy.deepcopy(model)
    quantised.use_step_weights("int8")
    return quantised


def naive_rate(model: DSMR, batch: int, steps: int) -> float:
    """No cache: every new token re-reads the last segment from a fresh state (memory-less); CPU tokens/s."""
    length = model.config.segment_len
    window = torch.randint(3, 359, (batch, length))
    plan = model.plan(None, batch, schedule=[0] * model.config.n_layers)
    with torch.no_grad():
        _, cpu = _timed(lambda: model.prefill(window, model.new_state(plan, batch)), steps)
    return steps * batch / cpu


def generation_tables(args) -> None:
    torch.set_num_threads(args.gen_threads)
    torch.manual_seed(0)
    model = DSMR(DSMRConfig()).eval()
    ways = {"segment path, fp32 (before)": (model, segment_path), "lean step, fp32": (model, lean_fp32),
            "lean step, int8 weights": (int8_model(model), lean_fp32)}
    c = model.config
    plan = model.plan(args.budget)
    params = sum(p.numel() for p in model.parameters())
    print(f"\n2. generation: default size d_model {c.d_model} x {c.n_layers} layers ({params / 1e6:.1f} M "
          f"parameters), segments of {c.segment_len}, budget {args.budget} per lane, {args.gen_threads} thread(s), "
          f"position {args.warm_position}: {plan.describe()}")
    print(f"medians of {args.repeats} alternating rounds of {args.steps} steps; CPU tokens/s = tokens per second "
          "of this process's CPU time (less sensitive to other jobs than wall time)")
    print(f"{'step':<30} {'batch':>5} {'tokens/s':>9} {'CPU tok/s':>10} {'state':>10}")
    for batch in (1, 8):
        rates, nbytes = step_rates(ways, args.budget, batch, args.warm_position, args.steps, args.repeats)
        for name, (wall, cpu) in rates.items():
            print(f"{name:<30} {batch:>5} {wall:>9.0f} {cpu:>10.0f} {format_bytes(nbytes):>10}")
    print(f"{'naive recompute, fp32':<30} {1:>5} {'':>9} {naive_rate(model, 1, max(4, args.steps // 20)):>10.0f}")

    print(f"\n3. generation against piece length (batch 1, lean step, {args.gen_threads} thread(s)): CPU tokens/s")
    lean = {"fp32": (model, lean_fp32), "int8": ways["lean step, int8 weights"]}
    print(f"{'position':>9} {'fp32':>8} {'int8':>8} {'state':>10}")
    for position in args.positions:
        rates, nbytes = step_rates(lean, args.budget, 1, position, args.steps, args.repeats)
        print(f"{position:>9} {rates['fp32'][1]:>8.0f} {rates['int8'][1]:>8.0f} {format_bytes(nbytes):>10}")

    print("\n4. generation against the memory budget (batch 1, lean step): every step reads the whole state")
    print(f"{'budget':>7} {'fp32 CPU tok/s':>15} {'int8 CPU tok/s':>15}  plan")
    for budget in args.budgets:
        rates, _ = step_rates(lean, budget, 1, args.warm_position, args.steps, args.repeats)
        print(f"{budget:>7} {rates['fp32'][1]:>15.0f} {rates['int8'][1]:>15.0f}  {model.plan(budget).describe()}")

    print("\n5. model size (batch 1, lean step, default budget): CPU tokens/s")
    print(f"{'size':<8} {'params':>8} {'fp32':>8} {'int8':>8}")
    for width in args.widths:
        torch.manual_seed(0)
        sized = DSMR(DSMRConfig(d_model=width, n_heads=width // 64)).eval()
        rates, _ = step_rates({"fp32": (sized, lean_fp32), "int8": (int8_model(sized), lean_fp32)},
                              args.budget, 1, args.warm_position, args.steps, args.repeats)
        params = sum(p.numel() for p in sized.parameters()) / 1e6
        print(f"6x{width:<6} {params:>7.1f}M {rates['fp32'][1]:>8.0f} {rates['int8'][1]:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter piece and fewer positions")
    parser.add_argument("--piece", default=str(MAESTRO / "maestro_01.mid"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--train-d-model", type=int, default=256)
    parser.add_argument("--train-segment", type=int, default=256)
    parser.add_argument("--full-cap", type=int, default=2048, help="the full reference's horizon per layer")
    parser.add_argument("--train-tokens", type=int, default=10_000)
    parser.add_argument("--budget", default=DSMRConfig.default_budget)
    parser.add_argument("--steps", type=int, default=200, help="generation steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed rounds (medians reported)")
    parser.add_argument("--gen-threads", type=int, default=1, help="threads for the generation tables")
    parser.add_argument("--budgets", nargs="+", default=["4MB", "8MB", "16MB", "32MB"])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--warm-position", type=int, default=3000)
    parser.add_argument("--positions", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.train_tokens, args.steps, args.positions, args.repeats = 2048, 100, [1000, 4000], 3
    print("DSMR benchmark (CPU; numbers are noisy when other jobs share the machine)")
    if not args.skip_training:
        training_table(args)
    generation_tables(args)


if __name__ == "__main__":
    main()
