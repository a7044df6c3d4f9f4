"""Issue #17, cause 1: does a model that is told which notes are sounding hold, re-strike and pile up fewer notes?

    python -m bench.sounding all --minutes 12            # train both arms side by side, then compare
    python -m bench.sounding train --sounding on --minutes 12 --out /tmp/arm-on
    python -m bench.sounding compare /tmp/arm-off /tmp/arm-on

Two DSMR models of the `small` preset are trained from scratch with the same seed, data and wall-clock minutes,
one with the sounding-notes input (`sounding_input`: a multi-hot of the pitches sounding after each id, projected
and added to the embedding) and one without; `all` trains them at the same time in two processes of one thread
each, so that both see the same load of a shared machine. Training: MAESTRO performances 1-8 of
../shared/midi/maestro, every piece trained on (no validation split); held out: 9 and 10, never trained on.

Compared on the held-out pieces: perplexity and bits per second of each whole piece (read under the model's
default budget), and bench/continuation.py's continuation statistics: the model reads a 20 s primer and writes
30 s, 3 seeds as 3 lanes, with `recital generate`'s defaults (top-p 0.95, --max-note 8 s, int8 step weights),
beside what the pianist played (notes held > 4 s, re-strikes within 120 ms, mean polyphony ...). Bits per second
of the truth given the primer too. No asserts: a shared machine; the trained models are never shipped.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.data import SHARED_MIDI, require_midi

MAESTRO = SHARED_MIDI / "maestro"
TRAIN_PIECES = range(1, 9)  # maestro_01 .. maestro_08
HELD_OUT = (9, 10)
SEEDS = 3  # continuation lanes per held-out primer


def piece_path(number: int) -> Path:
    return MAESTRO / f"maestro_{number:02d}.mid"


def training_folder(work: Path) -> Path:
    """A folder of links to the training pieces only (the trainer reads a folder)."""
    folder = work / "train-midi"
    folder.mkdir(parents=True, exist_ok=True)
    for number in TRAIN_PIECES:
        link = folder / piece_path(number).name
        if not link.exists():
            link.symlink_to(piece_path(number).resolve())
    return folder


# --- training -------------------------------------------------------------------------------------------------

def train(sounding: bool, out: Path, minutes: float, steps: int | None, lr: float, batch: int, precision: str,
          seed: int) -> Path:
    """One arm: a `small` DSMR from scratch, with or without the input; returns its model directory."""
    from trainer.config import TrainConfig
    from trainer.loop import fine_tune

    work = out.parent
    os.environ.setdefault("RECITAL_CACHE_DIR", str(work / "cache"))
    config = TrainConfig(folder=str(training_folder(work)), base=None, arch="dsmr", size="small",
                         model={"sounding_input": sounding}, out=str(out), minutes=minutes, steps=steps, lr=lr,
                         batch=batch, val_fraction=0.0, checkpoint_every=1_000_000, checkpoint_minutes=1e6,
                         patience=0, precision=precision, seed=seed, workers=1)
    label = "with" if sounding else "without"
    started = time.monotonic()

    def on_progress(event) -> None:
        if event.kind == "step" and event.step % 100 == 0:
            print(f"  [{label}] {(time.monotonic() - started) / 60:5.1f} min  step {event.step:>5}  "
                  f"loss {event.loss:.3f}", file=sys.stderr, flush=True)

    result = fine_tune(config, on_progress=on_progress)
    print(f"[{label} the input] {result.steps} steps, {result.tokens:,} tokens in {result.wall_seconds / 60:.1f} min "
          f"({result.tokens / max(result.wall_seconds, 1e-9):,.0f} tokens/s), stopped: {result.stopped}", flush=True)
    return Path(result.model_dir)


# --- comparing ------------------------------------------------------------------------------------------------

def whole_piece_scores(model, ids: np.ndarray) -> tuple[float, float]:
    """(nats summed over the piece's predicted ids, predicted ids), the piece read whole at the default budget."""
    import torch

    from core.metrics import piece_log_probs

    plan = model.plan(None, batch=1)
    with torch.inference_mode():
        log_probs = piece_log_probs(model, ids, model.new_state(plan, 1), torch.device("cpu"))
    return -float(np.sum(log_probs)), float(len(log_probs))


def compare(model_dirs: list[Path], labels: list[str]) -> str:
    """The held-out table of every model, beside the truth's statistics where they have one."""
    import torch

    from bench import continuation as cont
    from core.midi import read_performance
    from core.modeldir import load_model
    from core.tokenizer import encode, ids_seconds

    torch.set_num_threads(1)
    windows = cont.Windows()
    performances = [read_performance(piece_path(n)) for n in HELD_OUT]
    excerpts = [cont.cut(piece_path(n).stem, perf, windows) for n, perf in zip(HELD_OUT, performances, strict=True)]
    truth = cont.measure_truth(excerpts, windows)
    whole = [encode(perf).astype(np.int64) for perf in performances]
    seconds = sum(ids_seconds(ids) for ids in whole)
    rows: dict[str, list[str]] = {"perplexity, whole pieces": [], "bits per second, whole pieces": [],
                                  "bits/s of the truth given the primer": [], "notes held > 4 s": [],
                                  "re-strikes within 120 ms": [], "mean polyphony": [], "notes per second": [],
                                  "wall s (scoring + generating)": []}
    truth_row = {"notes held > 4 s": _mean(truth.continuations, "held_long"),
                 "re-strikes within 120 ms": _mean(truth.continuations, "restrikes"),
                 "mean polyphony": _mean(truth.continuations, "polyphony"),
                 "notes per second": _mean(truth.continuations, "notes_per_second")}
    for path in model_dirs:
        started = time.perf_counter()
        model = load_model(path)
        nats = [whole_piece_scores(model, ids) for ids in whole]
        total_nats, total_ids = sum(n for n, _ in nats), sum(t for _, t in nats)
        rows["perplexity, whole pieces"].append(f"{math.exp(total_nats / total_ids):.2f}")
        rows["bits per second, whole pieces"].append(f"{total_nats / math.log(2) / seconds:.1f}")
        model.use_step_weights("int8")
        column = cont.measure_continuations(model, cont.Configuration(str(path)), excerpts, windows, SEEDS)
        rows["bits/s of the truth given the primer"].append(f"{np.mean(column.bits_per_second):.1f}")
        for name, key in (("notes held > 4 s", "held_long"), ("re-strikes within 120 ms", "restrikes"),
                          ("mean polyphony", "polyphony"), ("notes per second", "notes_per_second")):
            rows[name].append(f"{_mean(column.continuations, key):.2f}")
        rows["wall s (scoring + generating)"].append(f"{time.perf_counter() - started:.0f}")
    header = ["", *labels, "truth"]
    table = [header] + [[name, *values, f"{truth_row[name]:.2f}" if name in truth_row else ""]
                        for name, values in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                    strict=True)))
             for row in table]
    note = (f"held out: maestro {', '.join(map(str, HELD_OUT))} ({seconds:.0f} s); continuations: 20 s primer, 30 s "
            f"written, {SEEDS} seeds each, per continuation means")
    return "\n".join([note, *lines])


def _mean(rows: list[dict], key: str) -> float:
    values = [row[key] for row in rows if row[key] is not None]
    return float(np.mean(values)) if values else float("nan")


# --- the command ----------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "all"):
        sub = commands.add_parser(name)
        sub.add_argument("--minutes", type=float, default=12.0, help="training wall time per arm")
        sub.add_argument("--steps", type=int, default=None, help="optimizer steps (with --minutes: whichever first)")
        sub.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (short runs learn faster high)")
        sub.add_argument("--batch", type=int, default=8)
        sub.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                         help="default: bf16 where the CPU has it natively")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--work", type=Path, default=None, help="folder for both arms (default: a temporary one)")
    train_parser = commands.choices["train"]
    train_parser.add_argument("--sounding", choices=("on", "off"), required=True)
    train_parser.add_argument("--out", type=Path, required=True)
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("models", type=Path, nargs="+", help="model directories (without, with the input)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_midi(MAESTRO)
    if args.command == "compare":
        labels = [path.name for path in args.models]
        print(compare(args.models, labels))
        return 0
    from bench.finetune import native_bf16

    precision = args.precision or ("bf16" if native_bf16() else "fp32")
    if args.command == "train":
        import torch

        torch.set_num_threads(1)
        train(args.sounding == "on", args.out.resolve(), args.minutes, args.steps, args.lr, args.batch, precision,
              args.seed)
        return 0
    work = (args.work or Path(tempfile.mkdtemp(prefix="recital-bench-sounding-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    training_folder(work)
    env = {**os.environ, "RECITAL_THREADS": "1", "RECITAL_CACHE_DIR": str(work / "cache")}
    arms = {"off": work / "without-input", "on": work / "with-input"}
    common = ["--minutes", str(args.minutes), "--lr", str(args.lr), "--batch", str(args.batch),
              "--precision", precision, "--seed", str(args.seed)]
    if args.steps:
        common += ["--steps", str(args.steps)]
    print(f"training both arms for {args.minutes:g} min each, side by side, in {work}", flush=True)
    runs = [subprocess.Popen([sys.executable, "-m", "bench.sounding", "train", "--sounding", flag, "--out",
                              str(out), *common], env=env) for flag, out in arms.items()]
    if any(run.wait() for run in runs):
        print("error: a training run failed (its output above)", file=sys.stderr)
        return 1
    print(compare([arms["off"], arms["on"]], ["without input", "with input"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
