"""Issue #17, cause 1: does a model that is told which notes are sounding hold, re-strike and pile up fewer notes?
And does one that reads whole notes (each with its duration at its onset) do better still?

    python -m bench.sounding all --minutes 12            # train the three arms side by side, then compare
    python -m bench.sounding all --minutes 12 --arms off,on   # the two event-codec arms only
    python -m bench.sounding train --sounding on --minutes 12 --out /tmp/arm-on
    python -m bench.sounding train --notes --minutes 12 --out /tmp/arm-notes
    python -m bench.sounding compare /tmp/arm-off /tmp/arm-on /tmp/arm-notes

Two DSMR models of the `small` preset are trained from scratch with the same seed, data and wall-clock minutes,
one with the sounding-notes input (`sounding_input`: a multi-hot of the pitches sounding after each id, projected
and added to the embedding) and one without; `all` trains them (and the third arm below) at the same time, one
process of one thread each, so that all see the same load of a shared machine. Training: MAESTRO performances 1-8 of
../shared/midi/maestro, every piece trained on (no validation split); held out: 9 and 10, never trained on.

Compared on the held-out pieces: perplexity and bits per second of each whole piece (read under the model's
default budget), and bench/continuation.py's continuation statistics: the model reads a 20 s primer and writes
30 s, 3 seeds as 3 lanes, with `recital generate`'s defaults (top-p 0.95, --max-note 8 s, int8 step weights),
beside what the pianist played (notes held > 4 s, re-strikes within 120 ms, mean polyphony ...). Bits per second
of the truth given the primer too. No asserts: a shared machine; the trained models are never shipped.

The third arm ("notes", issue #17's candidate (a)): the same `small` DSMR, vocabulary that of the note-level codec
(core/notecodec.py), trained by a plain loop here (written before the trainer read that codec) that
copies fine_tune's: the same lane streams (trainer.data.PieceSource, DSMR's training adapter), AdamW and its
groups, warm-up and cosine decay by wall-clock fraction, clipping, bf16 autocast, seed, no augmentation, and the
same minutes. It continues the same primers (bench.continuation.cut, re-encoded) by its own step/state loop: top-p
0.95, the codec's grammar (a duration after each pitch, nowhere else), int8 step weights, 3 seeds as 3 lanes,
until 30 s of time shifts; its notes are capped at 8 s by the codec as the others' by --max-note. Perplexity is
per id of each codec and does not compare across them; bits per second do (the same seconds for every arm).

Measured (all --minutes 15, three arms beside two long trainings on 2 cores, load average 5.3-7.0; ~530 steps,
~1.1 M tokens each), without input / with input / note-level codec / truth: bits per second of the whole pieces
195.8 / 179.4 / 163.8; of the truth given the primer 221.3 / 214.6 / 185.0; notes held > 4 s 40.2 / 49.5 / 0.17 /
0; re-strikes within 120 ms 80.5 / 23.5 / 14.5 / 0.5; mean polyphony 21.3 / 23.0 / 3.4 / 5.3; notes/s 19.8 / 14.1
/ 8.3 / 10.3. The note-level codec is ahead on every line but notes/s (a little sparse).
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
# Each arm of `all`: its folder, its column's label, and how `train` is told which it is.
ARMS = {"off": ("without-input", "without input", ["--sounding", "off"]),
        "on": ("with-input", "with input", ["--sounding", "on"]),
        "notes": ("note-codec", "note-level codec", ["--notes"])}


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


NOTES_MODEL = "notecodec-dsmr.pt"  # the notes arm's weights and config (not a model directory: another codec)


class _NotePieces:
    """The training pieces in the note-level codec, shaped as trainer.data.PieceSource reads a corpus."""

    def __init__(self, pieces: list[np.ndarray]):
        from types import SimpleNamespace

        self.pieces = pieces
        self.index = [SimpleNamespace(tokens=len(ids)) for ids in pieces]

    def piece(self, i: int) -> np.ndarray:
        return self.pieces[i]


def train_notes(out: Path, minutes: float, steps: int | None, lr: float, batch: int, precision: str,
                seed: int) -> Path:
    """The notes arm: a `small` DSMR over the note-level codec, trained as fine_tune trains the other two."""
    import contextlib

    import torch

    from core import notecodec
    from core.budget import parse_budget
    from core.midi import read_performance
    from core.modeldir import build_model
    from core.models.dsmr.training import DSMRTraining
    from core.tokenizer import PAD
    from trainer.config import TrainConfig, scratch_config
    from trainer.data import PieceSource
    from trainer.loop import lr_at

    started = time.monotonic()
    config = TrainConfig(folder=str(out.parent), base=None, arch="dsmr", size="small", out=str(out),
                         minutes=minutes, steps=steps, lr=lr, batch=batch, val_fraction=0.0, patience=0,
                         precision=precision, seed=seed)
    pieces = [notecodec.encode(read_performance(piece_path(n))).astype(np.int64) for n in TRAIN_PIECES]
    source = PieceSource(_NotePieces(pieces), list(range(len(pieces))), seed, config.augmenting)
    torch.manual_seed(seed)
    model = build_model("dsmr", scratch_config("dsmr", "small", {"codec": "notes"}))
    training = DSMRTraining(model)
    training.start(source, [list(range(batch))], batch, parse_budget(model.config.default_budget), {})
    training.record()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.peak_lr, betas=(0.9, 0.95))
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if config.autocasts("cpu")
                else contextlib.nullcontext())
    model.train()
    step, tokens = 0, 0
    while (steps is None or step < steps) and time.monotonic() - started < minutes * 60:
        fraction = max(step / steps if steps else 0.0, (time.monotonic() - started) / (minutes * 60))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, step, min(1.0, fraction))
        inputs, targets = (torch.from_numpy(a) for a in training.batch(step, 0))
        count = max(int((targets != PAD).sum()), 1)
        with autocast:
            nll = training.loss(model, inputs, targets, 0)
        (nll / count).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = float(nll.detach()) / count
        if not math.isfinite(loss):
            raise SystemExit(f"error: the notes arm's loss became {loss} at step {step + 1}: try a lower --lr")
        step, tokens = step + 1, tokens + count
        if step % 100 == 0:
            print(f"  [notes] {(time.monotonic() - started) / 60:5.1f} min  step {step:>5}  loss {loss:.3f}",
                  file=sys.stderr, flush=True)
    wall = time.monotonic() - started
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"config": model.config.to_dict(), "weights": model.state_dict()}, out / NOTES_MODEL)
    print(f"[note-level codec] {step} steps, {tokens:,} tokens in {wall / 60:.1f} min "
          f"({tokens / max(wall, 1e-9):,.0f} tokens/s)", flush=True)
    return out


def load_notes_model(folder: Path):
    """The notes arm's DSMR, weights loaded, in eval mode."""
    import torch

    from core.models.dsmr.model import DSMR, DSMRConfig

    saved = torch.load(folder / NOTES_MODEL, map_location="cpu", weights_only=True)
    model = DSMR(DSMRConfig.from_dict(saved["config"]))
    model.load_state_dict(saved["weights"])
    return model.eval()


# --- comparing ------------------------------------------------------------------------------------------------

def whole_piece_scores(model, ids: np.ndarray) -> tuple[float, float]:
    """(nats summed over the piece's predicted ids, predicted ids), the piece read whole at the default budget."""
    import torch

    from core.metrics import piece_log_probs

    plan = model.plan(None, batch=1)
    with torch.inference_mode():
        log_probs = piece_log_probs(model, ids, model.new_state(plan, 1), torch.device("cpu"))
    return -float(np.sum(log_probs)), float(len(log_probs))


STATS = (("notes held > 4 s", "held_long"), ("notes cut at 8 s", "cut_at_limit"),
         ("re-strikes within 120 ms", "restrikes"), ("mean polyphony", "polyphony"),
         ("notes per second", "notes_per_second"), ("pitch range (semitones)", "pitch_range"))


def compare(model_dirs: list[Path], labels: list[str]) -> str:
    """The held-out table of every model (an event-codec model directory, or a notes arm's folder), beside the
    truth's statistics where they have one."""
    import torch

    from bench import continuation as cont
    from core.midi import read_performance
    from core.tokenizer import encode, ids_seconds

    torch.set_num_threads(1)
    windows = cont.Windows()
    performances = [read_performance(piece_path(n)) for n in HELD_OUT]
    excerpts = [cont.cut(piece_path(n).stem, perf, windows) for n, perf in zip(HELD_OUT, performances, strict=True)]
    truth = cont.measure_truth(excerpts, windows)
    seconds = sum(ids_seconds(encode(perf)) for perf in performances)  # every arm's bits are per these seconds
    rows: dict[str, list[str]] = {"perplexity per id of its codec": [], "bits per second, whole pieces": [],
                                  "bits/s of the truth given the primer": [], **{name: [] for name, _ in STATS},
                                  "wall s (scoring + generating)": []}
    for path in model_dirs:
        started = time.perf_counter()
        notes_arm = (path / NOTES_MODEL).is_file()
        measured = (measure_notes_arm(path, performances, excerpts, windows) if notes_arm
                    else measure_events_arm(path, performances, excerpts, windows))
        total_nats, total_ids, column = measured
        rows["perplexity per id of its codec"].append(f"{math.exp(total_nats / total_ids):.2f}")
        rows["bits per second, whole pieces"].append(f"{total_nats / math.log(2) / seconds:.1f}")
        rows["bits/s of the truth given the primer"].append(f"{np.mean(column.bits_per_second):.1f}")
        for name, key in STATS:
            rows[name].append(f"{_mean(column.continuations, key):.2f}")
        rows["wall s (scoring + generating)"].append(f"{time.perf_counter() - started:.0f}")
    truth_row = {name: f"{_mean(truth.continuations, key):.2f}" for name, key in STATS}
    header = ["", *labels, "truth"]
    table = [header] + [[name, *values, truth_row.get(name, "")] for name, values in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths,
                                                                                                    strict=True)))
             for row in table]
    note = (f"held out: maestro {', '.join(map(str, HELD_OUT))} ({seconds:.0f} s); continuations: 20 s primer, 30 s "
            f"written, {SEEDS} seeds each, per continuation means")
    return "\n".join([note, *lines])


def measure_events_arm(path: Path, performances: list, excerpts: list, windows) -> tuple[float, float, object]:
    """An event-codec model: (nats, predicted ids) of the whole pieces and its continuations' Column."""
    from bench import continuation as cont
    from core.modeldir import load_model
    from core.tokenizer import encode

    model = load_model(path)
    nats = [whole_piece_scores(model, encode(perf).astype(np.int64)) for perf in performances]
    model.use_step_weights("int8")
    column = cont.measure_continuations(model, cont.Configuration(str(path)), excerpts, windows, SEEDS)
    return sum(n for n, _ in nats), sum(t for _, t in nats), column


def measure_notes_arm(path: Path, performances: list, excerpts: list, windows) -> tuple[float, float, object]:
    """The notes arm: the same pieces and primers in the note-level codec; continued by `continue_notes`."""
    from bench import continuation as cont
    from core import notecodec

    model = load_notes_model(path)
    nats = [whole_piece_scores(model, notecodec.encode(perf).astype(np.int64)) for perf in performances]
    model.use_step_weights("int8")
    column = cont.Column(path.name)
    for index, excerpt in enumerate(excerpts):
        recoded = excerpt.coded(notecodec)  # its clock starts at the primer's last onset
        primer_ids, start = recoded.primer_ids, recoded.start
        period, key = cont.primer_context(excerpt, windows)
        for lane in continue_notes(model, primer_ids, windows.truth, SEEDS, seed=index):
            notes = notecodec.decode_after(primer_ids, lane)
            column.continuations.append(cont.continuation_stats(notes, start, windows.truth, period, key))
        column.bits_per_second.append(cont.truth_bits_per_second(model, recoded, windows.truth))
        print(f"  notes arm: {excerpt.name} continued ({SEEDS} lanes) and scored", file=sys.stderr, flush=True)
    return sum(n for n, _ in nats), sum(t for _, t in nats), column


def continue_notes(model, primer_ids: np.ndarray, seconds: float, lanes: int, seed: int) -> list[np.ndarray]:
    """`lanes` continuations of `seconds` after a note-level primer, one batch, through the model's own
    prefill/step and state (as core.generate drives a left-to-right model): top-p 0.95 under the codec's grammar,
    the model's default budget per lane, a lane done once its time shifts reach `seconds`."""
    import torch

    from bench.continuation import TOKENS_PER_SECOND_LIMIT, TOP_P
    from core import notecodec
    from core.budget import default_budget
    from core.generate import SamplingConfig, sample, seeded_generator

    device = torch.device("cpu")
    allowed = torch.from_numpy(notecodec.grammar())
    ticks = torch.from_numpy(notecodec.shift_ticks(np.arange(notecodec.VOCAB_SIZE)))
    state = model.new_state(model.plan(default_budget(model, lanes), lanes), lanes)
    primer = torch.as_tensor(primer_ids, dtype=torch.int64)[None].repeat(lanes, 1)
    generator = seeded_generator(device, seed)
    sampling = SamplingConfig(top_p=TOP_P)
    clock = torch.zeros(lanes, dtype=torch.int64)
    done = torch.zeros(lanes, dtype=torch.bool)
    written: list[list[int]] = [[] for _ in range(lanes)]
    last = primer[:, -1]
    with torch.inference_mode():
        logits = model.prefill(primer, state)
        for _ in range(int(seconds * TOKENS_PER_SECOND_LIMIT) + 64):
            ids = sample(logits.float().masked_fill(~allowed[last], float("-inf")), sampling, generator)
            for lane in (~done).nonzero()[:, 0].tolist():
                written[lane].append(int(ids[lane]))
            clock += torch.where(done, 0, ticks[ids])
            done |= clock >= round(seconds / notecodec.TICK_SECONDS)
            if bool(done.all()):
                break
            logits, last = model.step(ids, state), ids
    return [np.asarray(ids, dtype=np.int64) for ids in written]


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
        sub.add_argument("--work", type=Path, default=None, help="folder for the arms (default: a temporary one)")
    train_parser = commands.choices["train"]
    arm = train_parser.add_mutually_exclusive_group(required=True)
    arm.add_argument("--sounding", choices=("on", "off"), help="an event-codec arm, with or without the input")
    arm.add_argument("--notes", action="store_true", help="the note-level codec's arm (core/notecodec.py)")
    train_parser.add_argument("--out", type=Path, required=True)
    commands.choices["all"].add_argument("--arms", default=",".join(ARMS),
                                         help=f"which arms, comma-separated (default {','.join(ARMS)})")
    compare_parser = commands.add_parser("compare")
    compare_parser.add_argument("models", type=Path, nargs="+",
                                help="model directories (without, with the input) and notes arms' folders")
    args = parser.parse_args(argv)
    if args.command == "all":
        args.arms = [part.strip() for part in args.arms.split(",") if part.strip()]
        if not args.arms or any(part not in ARMS for part in args.arms) or len(set(args.arms)) < len(args.arms):
            parser.error(f"--arms takes some of {', '.join(ARMS)}, each once; got {','.join(args.arms) or 'none'}")
    return args


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
        if args.notes:
            train_notes(args.out.resolve(), args.minutes, args.steps, args.lr, args.batch, precision, args.seed)
        else:
            train(args.sounding == "on", args.out.resolve(), args.minutes, args.steps, args.lr, args.batch,
                  precision, args.seed)
        return 0
    work = (args.work or Path(tempfile.mkdtemp(prefix="recital-bench-sounding-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "RECITAL_THREADS": "1", "RECITAL_CACHE_DIR": str(work / "cache")}
    os.environ["RECITAL_CACHE_DIR"] = env["RECITAL_CACHE_DIR"]
    from trainer.corpus import Corpus

    # Scanned once here, so the event-codec arms' minutes do not pay for it (the notes arm encodes in a second).
    Corpus.build(training_folder(work), workers=1)
    common = ["--minutes", str(args.minutes), "--lr", str(args.lr), "--batch", str(args.batch),
              "--precision", precision, "--seed", str(args.seed)]
    if args.steps:
        common += ["--steps", str(args.steps)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"training {len(args.arms)} arms for {args.minutes:g} min each, side by side, in {work} (load average "
          f"before: {load}; {os.cpu_count()} cores)", flush=True)
    runs = [subprocess.Popen([sys.executable, "-m", "bench.sounding", "train", *ARMS[arm][2], "--out",
                              str(work / ARMS[arm][0]), *common], env=env) for arm in args.arms]
    if any(run.wait() for run in runs):
        print("error: a training run failed (its output above)", file=sys.stderr)
        return 1
    print(f"load average after training: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    print(compare([work / ARMS[arm][0] for arm in args.arms], [ARMS[arm][1] for arm in args.arms]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
