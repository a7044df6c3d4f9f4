"""The DSMR paper's efficiency table on our data: memory schedules trained from scratch for the same steps.

    python -m bench.efficiency                 # tiny preset, 150 steps per schedule (~7-30 min on 2 shared cores)
    python -m bench.efficiency --quick         # tiny preset, 40 steps (~3-4 min)
    python -m bench.efficiency --size small --steps 120 --cap 2048   # 192 x 4: ~1 h on 2 busy cores

Three runs of `trainer.fine_tune` (the trainer's own loop: lane streams, AdamW, validation by
core.metrics.perplexity_report), one per schedule, from the same seed on the same pieces (MAESTRO: 8 training
pieces streamed whole, 2 held out and scored whole under each run's own schedule and budget):

    full       every layer keeps `--cap` tokens of memory: the full-memory reference
    two_scale  the lower n_long layers 4x the horizon of the others, at `--ratio` x full's state bytes
    uniform    the same budget as two_scale spread evenly over the layers

Two views of the same runs: (a) uniform against two_scale at equal budget (which schedule spends the bytes
better), (b) the full reference against two_scale (issue 3's targets: two-scale state <= 0.41x the reference's,
training throughput >= 1.36x it).

Per schedule: best held-out perplexity, recurrent-state bytes (per lane, and for the training batch), peak
memory, training tokens/s (wall and per CPU second of the process, optimizer steps only: validation and
checkpoints are left out), generation tokens/s at batch 1 (the lean `step`, fp32, after a primer long enough
to fill every layer's memory).

Peak memory is the growth of the resident set (ru_maxrss) of a fresh spawned process over its RSS just before
training: weights, optimizer, activations, state and validation included; not tracemalloc, which misses
torch's allocations. The generation runs take turns (`--gen-repeats` rounds, medians), so a burst of load from
other jobs hits them alike; training runs one after another (`--rounds` > 1 repeats them in turns, medians of
the speeds). No asserts: CPU numbers are noisy when other jobs share the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.data import SHARED_MIDI, require_midi
from core.budget import format_bytes
from core.errors import ModelError
from core.models.dsmr import DSMRConfig
from core.models.dsmr.state import plan_horizons
from trainer.config import scratch_config

MAESTRO = SHARED_MIDI / "maestro"
SCHEDULES = ("full", "two_scale", "uniform")


def _rss() -> int:
    """Peak resident set of this process so far, bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _current_rss() -> int:
    """Resident set now, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def model_config(size: str, overrides: dict) -> DSMRConfig:
    return DSMRConfig.from_dict(scratch_config("dsmr", size, overrides))


def schedule_budgets(config: DSMRConfig, ratio: float) -> dict[str, int]:
    """Per-lane state bytes of each schedule: full keeps its cap (config.max_horizon), the others `ratio` x that."""
    full = plan_horizons(config, None, 1, "full").nbytes
    if not 0 < ratio <= 1:
        raise ModelError(f"--ratio must be in (0, 1], got {ratio}")
    return {"full": full, "two_scale": int(full * ratio), "uniform": int(full * ratio)}


@dataclass(frozen=True)
class ScheduleRun:
    """One schedule trained from scratch: quality, memory and training speed."""

    schedule: str
    horizons: tuple[int, ...]
    budget: int  # per-lane budget the run trained and validated under
    state_bytes: int  # per-lane recurrent state (plan bytes at batch 1)
    batch_state_bytes: int  # the training state: all lanes
    steps: int
    tokens: int
    best_perplexity: float | None
    initial_perplexity: float | None
    train_wall: float  # seconds of optimizer steps (validation and checkpoints excluded)
    train_cpu: float  # CPU seconds of the process over the same spans
    peak_growth: int  # ru_maxrss growth over the RSS before training, bytes
    model_dir: str

    @property
    def wall_rate(self) -> float:
        return self.tokens / max(self.train_wall, 1e-9)

    @property
    def cpu_rate(self) -> float:
        return self.tokens / max(self.train_cpu, 1e-9)


class _StepClock:
    """Adds up the wall and CPU time of optimizer steps from fine_tune's progress events (log_every=1).

    A span ends at every step event and starts again after it; validation (phase validate .. eval event) and
    checkpoints (.. the 'saved' event) restart the span, so their time is never counted.
    """

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.mark: tuple[float, float] | None = None

    def __call__(self, event) -> None:
        now = (time.perf_counter(), time.process_time())
        if event.kind == "step" and self.mark is not None:
            self.wall += now[0] - self.mark[0]
            self.cpu += now[1] - self.mark[1]
        if event.kind in ("step", "eval") or (event.kind == "checkpoint" and event.message) \
                or (event.kind == "phase" and event.phase == "train"):
            self.mark = (time.perf_counter(), time.process_time())
        elif event.kind in ("phase", "checkpoint"):  # validation or a checkpoint starts: stop the clock
            self.mark = None


def train_schedule(schedule: str, budget: int, folder: str | Path, out: str | Path, *, size: str = "small",
                   overrides: dict | None = None, steps: int = 120, batch: int = 8, lr: float = 1e-3,
                   validations: int = 3, seed: int = 0, device: str = "cpu") -> ScheduleRun:
    """Train a `size` DSMR with `schedule` under `budget` bytes per lane for `steps` steps via trainer.fine_tune."""
    from trainer.config import TrainConfig
    from trainer.loop import fine_tune

    if schedule not in SCHEDULES:
        raise ModelError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES)}")
    model = dict(overrides or {}, schedule=schedule)
    config = model_config(size, model)
    plan = plan_horizons(config, budget, 1, schedule, n_long=config.n_long, long_ratio=config.long_ratio)
    clock = _StepClock()
    before = _current_rss()
    result = fine_tune(TrainConfig(
        folder=str(folder), out=str(Path(out).resolve()), base=None, arch="dsmr", size=size, model=model,
        steps=steps, budget=str(budget), batch=batch, lr=lr, seed=seed, augment=False, val_fraction=0.2,
        val_every=max(1, steps // max(1, validations)), checkpoint_every=steps, patience=0, log_every=1,
        device=device, workers=1), on_progress=clock)
    return ScheduleRun(schedule, plan.horizons, budget, plan.nbytes, plan.nbytes * batch, result.steps,
                       result.tokens, result.best_perplexity, result.initial_perplexity, clock.wall, clock.cpu,
                       max(0, _rss() - before), str(result.model_dir))


def _worker(kwargs: dict, threads: int | None, queue) -> None:
    """train_schedule in a fresh process, so its peak memory is its own."""
    if threads:
        torch.set_num_threads(threads)
    try:
        queue.put(train_schedule(**kwargs))
    except Exception as error:  # report it to the parent instead of hanging it
        queue.put(error)


def generation_rates(models: dict[str, tuple[torch.nn.Module, int]], primer: torch.Tensor, steps: int,
                     repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) tokens/s of `step` at batch 1 per model, after `primer` (T,); the models take turns."""
    runs = {}
    with torch.inference_mode():
        for name, (model, budget) in models.items():
            state = model.new_state(model.plan(budget, batch=1), 1)
            model.prefill(primer[None], state)
            token = primer[-1:].clone()
            for _ in range(3):
                model.step(token, state)
            runs[name] = (model, state, token)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        for _ in range(repeats):
            for name, (model, state, token) in runs.items():
                wall, cpu = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    model.step(token, state)
                samples[name].append((steps / (time.perf_counter() - wall), steps / (time.process_time() - cpu)))
    return {name: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
            for name, v in samples.items()}


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def _view(title: str, runs: dict[str, ScheduleRun], gen: dict[str, tuple[float, float]], names: tuple[str, str]
          ) -> None:
    """Two schedules side by side; the second column divided by the first."""
    first, second = (runs[n] for n in names)
    print(f"\n{title}")
    rows = [
        ("horizons", str(list(first.horizons)), str(list(second.horizons)), ""),
        ("state per lane", format_bytes(first.state_bytes), format_bytes(second.state_bytes),
         _ratio(second.state_bytes, first.state_bytes)),
        ("best held-out perplexity", f"{first.best_perplexity:.2f}" if first.best_perplexity else "-",
         f"{second.best_perplexity:.2f}" if second.best_perplexity else "-",
         _ratio(second.best_perplexity, first.best_perplexity)),
        ("train tokens/s (wall)", f"{first.wall_rate:,.0f}", f"{second.wall_rate:,.0f}",
         _ratio(second.wall_rate, first.wall_rate)),
        ("train tokens/CPU s", f"{first.cpu_rate:,.0f}", f"{second.cpu_rate:,.0f}",
         _ratio(second.cpu_rate, first.cpu_rate)),
        ("peak RSS growth", format_bytes(first.peak_growth), format_bytes(second.peak_growth),
         _ratio(second.peak_growth, first.peak_growth)),
        ("generate tokens/s (wall)", f"{gen[names[0]][0]:,.0f}", f"{gen[names[1]][0]:,.0f}",
         _ratio(gen[names[1]][0], gen[names[0]][0])),
        ("generate tokens/CPU s", f"{gen[names[0]][1]:,.0f}", f"{gen[names[1]][1]:,.0f}",
         _ratio(gen[names[1]][1], gen[names[0]][1])),
    ]
    print(f"{'':<26} {names[0]:>20} {names[1]:>20} {'ratio':>7}")
    for label, a, b, r in rows:
        print(f"{label:<26} {a:>20} {b:>20} {r:>7}")


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default=str(MAESTRO), help="MIDI pieces (8 train / 2 held out for 10)")
    parser.add_argument("--size", default="tiny", choices=("tiny", "small"))
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per schedule")
    parser.add_argument("--batch", type=int, default=8, help="lanes per step")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (short runs: higher than 3e-4)")
    parser.add_argument("--cap", type=int, default=None, help="full's horizon per layer (default 8 segments)")
    parser.add_argument("--ratio", type=float, default=0.41, help="two_scale/uniform budget over full's state")
    parser.add_argument("--validations", type=int, default=1, help="held-out scorings per run (the last at the end)")
    parser.add_argument("--rounds", type=int, default=1, help="train every schedule this many times, in turns")
    parser.add_argument("--gen-steps", type=int, default=100, help="generated tokens per timing")
    parser.add_argument("--gen-repeats", type=int, default=5, help="timing rounds, schedules in turns")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 40 steps, one validation (~3 min)")
    args = parser.parse_args()
    require_midi(args.folder)
    if args.quick:
        args.size, args.steps, args.validations, args.gen_repeats = "tiny", 40, 1, 3
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("RECITAL_CACHE_DIR", tempfile.mkdtemp(prefix="recital-bench-"))
    from core.modeldir import load_model
    from trainer.corpus import Corpus

    segment = model_config(args.size, {}).segment_len
    overrides = {"max_horizon": args.cap or 8 * segment}
    config = model_config(args.size, overrides)
    budgets = schedule_budgets(config, args.ratio)
    corpus = Corpus.build(args.folder, workers=1)  # scanned once here; the runs open the cache
    train, val = corpus.split(0.2, 0)
    print(f"DSMR {args.size} ({config.d_model} x {config.n_layers} layers, segment {config.segment_len}), from "
          f"scratch, {args.steps} steps of {args.batch} lanes x {config.segment_len} tokens, lr {args.lr}; "
          f"{len(train)} training pieces streamed whole, {len(val)} held out ({sum(corpus.index[i].tokens for i in val):,}"
          f" tokens) scored whole {args.validations}x; full cap {config.max_horizon} tokens per layer, two_scale "
          f"and uniform at {args.ratio}x full's state; {torch.get_num_threads()} threads; {_load()}", flush=True)

    context = multiprocessing.get_context("spawn")
    outs = Path(tempfile.mkdtemp(prefix="recital-efficiency-"))
    samples: dict[str, list[ScheduleRun]] = {name: [] for name in SCHEDULES}
    for round_ in range(args.rounds):
        for schedule in SCHEDULES:
            kwargs = dict(schedule=schedule, budget=budgets[schedule], folder=args.folder,
                          out=outs / f"{schedule}-{round_}", size=args.size, overrides=overrides,
                          steps=args.steps, batch=args.batch, lr=args.lr, validations=args.validations)
            queue = context.Queue()
            worker = context.Process(target=_worker, args=(kwargs, args.threads, queue))
            worker.start()
            run = queue.get()
            worker.join()
            if isinstance(run, Exception):
                raise run
            samples[schedule].append(run)
            print(f"  trained {schedule}: best perplexity {run.best_perplexity:.2f} (from "
                  f"{run.initial_perplexity:.2f}), {run.wall_rate:,.0f} tokens/s, {_load()}", flush=True)
    runs = {}
    for name, rows in samples.items():  # the first round's model and quality; median speeds over rounds
        first = rows[0]
        runs[name] = ScheduleRun(**{**first.__dict__, "train_wall": statistics.median(r.train_wall for r in rows),
                                    "train_cpu": statistics.median(r.train_cpu for r in rows),
                                    "peak_growth": max(r.peak_growth for r in rows)})

    models = {name: (load_model(run.model_dir), run.budget) for name, run in runs.items()}
    primer_length = config.max_horizon + 2 * config.segment_len  # every layer's memory full
    primer = torch.as_tensor(corpus.piece(val[0])[:primer_length].astype("int64"))
    gen = generation_rates(models, primer, args.gen_steps, args.gen_repeats)

    print(f"\nall schedules ({args.rounds} round(s); train speeds exclude validation; peak = RSS growth of a "
          "fresh process during fine_tune; generation batch 1, fp32 lean step, medians)")
    print(f"{'schedule':<10} {'horizons':<24} {'state/lane':>10} {'train state':>11} {'best ppl':>9} "
          f"{'train tok/s':>11} {'tok/CPU s':>10} {'peak RSS':>9} {'gen tok/s':>10} {'gen tok/CPU s':>13}")
    for name, run in runs.items():
        ppl = f"{run.best_perplexity:.2f}" if run.best_perplexity else "-"
        print(f"{name:<10} {str(list(run.horizons)):<24} {format_bytes(run.state_bytes):>10} "
              f"{format_bytes(run.batch_state_bytes):>11} {ppl:>9} {run.wall_rate:>11,.0f} {run.cpu_rate:>10,.0f} "
              f"{format_bytes(run.peak_growth):>9} {gen[name][0]:>10,.0f} {gen[name][1]:>13,.0f}")
    _view(f"(a) equal budget ({format_bytes(budgets['two_scale'])} per lane): uniform vs two_scale", runs, gen,
          ("uniform", "two_scale"))
    _view(f"(b) full-memory reference vs two_scale at {args.ratio}x its state (targets: state <= 0.41x, training "
          "throughput >= 1.36x)", runs, gen, ("full", "two_scale"))
    print(f"\n{_load()}")


if __name__ == "__main__":
    main()
