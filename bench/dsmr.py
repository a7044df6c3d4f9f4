"""DSMR speed and memory: memory schedules in training, cached generation against recomputation.

    python -m bench.dsmr              # the full tables (several minutes on 2 CPU cores)
    python -m bench.dsmr --quick      # a shorter piece, fewer positions

Large tensors allocated and freed every segment make glibc return memory to the kernel and fault it back in;
on a VM that can dominate training time. MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=17179869184
in the environment keeps it in the process.

Tables (no asserts; CPU numbers are noisy when other jobs share the machine, so the ways compared take turns and
the tables report medians, also in CPU time of the process, which load disturbs less than wall time):
1. training, one real MAESTRO piece streamed whole in segments (truncated BPTT, AdamW): tokens/s, peak resident
   memory and recurrent-state bytes for `full` (every layer the whole cap) against `two_scale` and `uniform` at
   0.41x of full's state budget (the paper's ratio), each run in a fresh process.
1b. training against a plain causal Transformer step of the same size and segment (8 lanes streaming pieces).
2. generation at the default size: tokens/s at batch 1 and 8 of the segment code path stepping one id (what
   `step` ran before the lean path), the lean `step` with fp32 weights (exact, the default) and with int8
   weights (`use_step_weights("int8")`), and the naive loop that recomputes the last segment per token.
3. generation against piece length: tokens/s and state bytes at several positions of one long piece.
4. generation against the memory budget; 5. against the model size.
0. busy machine (bench/busy.py, run first): the shipped model's jobs (a seeded 250-token generation at batch 1
   and 4, reading a primer, a training step) at 1 and 2 threads, quiet and beside a process that keeps one core
   busy: Recital's thread policy against torch's default. `--busy only` runs just this table.
"""

from __future__ import annotations

import argparse
import copy
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench.busy import busy_table
from bench.data import SHARED_MIDI, require_midi
from core.budget import format_bytes, parse_budget
from core.midi import read_performance
from core.models.dsmr import DSMR, DSMRConfig, segment_loss
from core.tokenizer import BOS, encode

MAESTRO = SHARED_MIDI / "maestro"


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
    start, cpu, tokens = time.perf_counter(), time.process_time(), 0
    for offset in range(0, len(ids) - 1, length):
        chunk, targets = ids[None, offset:offset + length], ids[None, offset + 1:offset + length + 1]
        if chunk.shape[1] != targets.shape[1]:
            chunk = chunk[:, :targets.shape[1]]
        loss = segment_loss(model(chunk, state), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tokens += chunk.shape[1]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    queue.put((plan.horizons, state.nbytes, tokens / elapsed, tokens / cpu, _rss(), _rss() - base))


def training_table(args) -> None:
    config = train_config(args)
    probe = DSMR(config)
    full = probe.plan(1 << 40, schedule="full")
    budget = int(full.nbytes * 0.41)
    print(f"\n1. schedules in training: {Path(args.piece).name} streamed whole ({args.train_tokens} tokens max), "
          f"d_model {config.d_model} x 6 layers, segments of {config.segment_len}, batch 1, {args.threads} "
          f"thread(s), AdamW; two_scale and uniform at 0.41x full's state (the paper's ratio). Each run in a fresh "
          f"process, the schedules taking turns for {args.train_repeats} rounds; medians (CPU = tokens per second "
          "of the process's CPU time)")
    print(f"{'schedule':<10} {'horizons':<30} {'state':>9} {'x full':>7} {'tokens/s':>9} {'x full':>7} "
          f"{'CPU tok/s':>10} {'x full':>7} {'peak RSS':>10} {'RSS growth':>11}")
    context = multiprocessing.get_context("spawn")
    runs = (("full", None), ("two_scale", budget), ("uniform", budget))
    results = {name: [] for name, _ in runs}
    for _ in range(args.train_repeats):
        for schedule, limit in runs:
            queue = context.Queue()
            worker = context.Process(target=_train_one, args=(args, schedule, limit, queue))
            worker.start()
            results[schedule].append(queue.get())
            worker.join()
    reference = None
    for schedule, rows in results.items():
        horizons, nbytes = rows[0][:2]
        wall = statistics.median(r[2] for r in rows)
        cpu = statistics.median(r[3] for r in rows)
        peak, growth = max(r[4] for r in rows), max(r[5] for r in rows)
        reference = reference or (nbytes, wall, cpu)
        print(f"{schedule:<10} {str(list(horizons)):<30} {format_bytes(nbytes):>9} {nbytes / reference[0]:>6.2f}x "
              f"{wall:>9.0f} {wall / reference[1]:>6.2f}x {cpu:>10.0f} {cpu / reference[2]:>6.2f}x "
              f"{format_bytes(peak):>10} {format_bytes(growth):>11}")


def against_plain_table(args) -> None:
    """DSMR's streaming step against a plain causal Transformer step of the same size and segment."""
    from bench.train import PlainTransformer, _streams

    os.environ.setdefault("RECITAL_CACHE_DIR", tempfile.mkdtemp(prefix="recital-bench-"))
    torch.set_num_threads(args.threads)
    width, batch = args.train_d_model, args.plain_batch
    print(f"\n1b. training against a plain causal Transformer (bench/train.py's, same blocks): 6 x {width}, batch "
          f"{batch} lanes streaming MAESTRO pieces, fp32, AdamW, {args.threads} thread(s); the two take turns step "
          f"by step, medians of {args.plain_steps} steps after 3 warm-up steps (which fill DSMR's memory)")
    print(f"{'segment':>7} {'budget':>7} {'plain':>7} {'DSMR':>7} {'ratio':>6} {'plain CPU':>10} {'DSMR CPU':>9} "
          f"{'ratio':>6}  DSMR memory (per lane budget x {batch} lanes)")

    def stepper(model, stream, state=None):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step() -> None:
            inputs, targets = stream.next_batch()
            ids = torch.from_numpy(inputs)
            logits = model(ids) if state is None else model(ids, state)
            segment_loss(logits, torch.from_numpy(targets)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return step

    for segment in args.plain_segments:
        for budget in args.plain_budgets:
            torch.manual_seed(0)
            plain = PlainTransformer(width, 6, width // 64)
            torch.manual_seed(0)
            model = DSMR(DSMRConfig(d_model=width, n_heads=width // 64, segment_len=segment))
            plan = model.plan(parse_budget(budget) * batch, batch=batch)
            steps = {"plain": stepper(plain, _streams(batch, segment)[1]),
                     "dsmr": stepper(model, _streams(batch, segment)[1], model.new_state(plan, batch))}
            for step in steps.values():
                for _ in range(3):
                    step()
            samples = {name: [] for name in steps}
            for _ in range(args.plain_steps):
                for name, step in steps.items():
                    wall, cpu = _timed(step, 1)
                    samples[name].append((batch * segment / wall, batch * segment / cpu))
            (pw, pc), (dw, dc) = ((statistics.median(w for w, _ in samples[name]),
                                   statistics.median(c for _, c in samples[name])) for name in ("plain", "dsmr"))
            print(f"{segment:>7} {budget:>7} {pw:>7,.0f} {dw:>7,.0f} {dw / pw:>6.0%} {pc:>10,.0f} {dc:>9,.0f} "
                  f"{dc / pc:>6.0%}  {plan.describe()}", flush=True)


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

    print(f"\n5. model size (batch 1, lean step, budget {args.size_budget}: 6 x 384 needs more than 8MB): CPU tokens/s")
    print(f"{'size':<8} {'params':>8} {'fp32':>8} {'int8':>8}")
    for width in args.widths:
        torch.manual_seed(0)
        sized = DSMR(DSMRConfig(d_model=width, n_heads=width // 64)).eval()
        rates, _ = step_rates({"fp32": (sized, lean_fp32), "int8": (int8_model(sized), lean_fp32)},
                              args.size_budget, 1, args.warm_position, args.steps, args.repeats)
        params = sum(p.numel() for p in sized.parameters()) / 1e6
        print(f"6x{width:<6} {params:>7.1f}M {rates['fp32'][1]:>8.0f} {rates['int8'][1]:>8.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter piece and fewer positions")
    parser.add_argument("--piece", default=str(MAESTRO / "maestro_01.mid"))
    parser.add_argument("--threads", type=int, default=1, help="threads for the training tables")
    parser.add_argument("--train-d-model", type=int, default=256)
    parser.add_argument("--train-segment", type=int, default=256)
    parser.add_argument("--full-cap", type=int, default=2048, help="the full reference's horizon per layer")
    parser.add_argument("--train-tokens", type=int, default=6_000)
    parser.add_argument("--train-repeats", type=int, default=2, help="rounds of the schedule table")
    parser.add_argument("--plain-segments", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--plain-budgets", nargs="+", default=[DSMRConfig.default_budget, "16MB"])
    parser.add_argument("--plain-batch", type=int, default=8)
    parser.add_argument("--plain-steps", type=int, default=5)
    parser.add_argument("--budget", default=DSMRConfig.default_budget)
    parser.add_argument("--steps", type=int, default=200, help="generation steps per timed round")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timed rounds (medians reported)")
    parser.add_argument("--gen-threads", type=int, default=1, help="threads for the generation tables")
    parser.add_argument("--budgets", nargs="+", default=["8MB", "12MB", "16MB", "32MB"])
    parser.add_argument("--widths", type=int, nargs="+", default=[256, 384])
    parser.add_argument("--size-budget", default="16MB", help="budget of the model-size table")
    parser.add_argument("--warm-position", type=int, default=3000)
    parser.add_argument("--positions", type=int, nargs="+", default=[1000, 4000, 16000, 64000])
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--busy", choices=("skip", "only", "also"), default="also",
                        help="the busy-machine table (bench/busy.py, the shipped model): skip it, only it, or also")
    parser.add_argument("--busy-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.train_tokens, args.steps, args.positions, args.repeats = 2048, 100, [1000, 4000], 3
        args.plain_steps, args.plain_budgets = 3, [DSMRConfig.default_budget]
    if not args.skip_training:  # the training tables stream real pieces
        require_midi(args.piece)
        require_midi(MAESTRO)
    print("DSMR benchmark (CPU; numbers are noisy when other jobs share the machine)")
    if args.busy != "skip":
        busy_table("default", args.busy_rounds)  # first: the one table that sets threads both ways
    if args.busy == "only":
        return
    if not args.skip_training:
        training_table(args)
        against_plain_table(args)
    if not args.skip_generation:
        generation_tables(args)


if __name__ == "__main__":
    main()
