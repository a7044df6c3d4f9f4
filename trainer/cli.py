"""The trainer's subcommands of `recital`: `train FOLDER` (fine-tune a model, or train one from scratch) and
`corpus FOLDER` (scan and cache a folder of MIDI files, print what was read).

`recital` finds them through the `recital.commands` entry points (core/commands.py). `train`'s arguments work
under torchrun too (`torchrun --nproc_per_node=N -m trainer FOLDER ...`). Ctrl-C stops training after the current
step, saves a checkpoint and exits; `--resume` continues from it. A MIDI file `corpus` cannot read is listed with
its reason and skipped; it fails (exit 1) only when the folder has no MIDI files or none of them can be read.
"""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TextIO

from core.commands import Command
from core.errors import MidiError

TRAIN_HELP = "fine-tune a model on a folder of MIDI files (or train one from scratch)"


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from core.models.registry import architectures  # names only: no model is imported

    parser.add_argument("folder", help="folder of MIDI files (scanned recursively, cached)")
    parser.add_argument("--base", default="default", metavar="default|PATH|NAME|none",
                        help="model to fine-tune (default: the shipped default); 'none' trains from scratch")
    parser.add_argument("--arch", choices=architectures(),
                        help="architecture (needed with --base none; checked against the base otherwise)")
    parser.add_argument("--size", choices=("tiny", "small", "default"), default="default",
                        help="model size preset when training from scratch (default: default)")
    parser.add_argument("--codec", choices=_codecs(),
                        help="the codec of a model trained from scratch (default: notes, the one the shipped "
                             "models move to); a fine-tune keeps its base's codec")
    parser.add_argument("--out", metavar="NAME|PATH",
                        help="where the model goes: a name (in your models folder) or a path "
                             "(default: <folder name>-<arch>)")
    length = parser.add_argument_group("how long (at least one; both: whichever ends first)")
    length.add_argument("--steps", type=_positive(int), metavar="N", help="optimizer steps")
    length.add_argument("--minutes", type=_positive(float), metavar="M", help="wall-clock minutes")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint (none yet: start it)")
    parser.add_argument("--budget", metavar="SIZE",
                        help="DSMR memory budget per lane, e.g. 32MB (default: the model's)")
    parser.add_argument("--batch", type=_positive(int), default=8,
                        help="lanes (DSMR) or crops (PerceiverS) per micro-batch, over all processes (default 8)")
    parser.add_argument("--accum", type=_positive(int), default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--lr", type=_positive(float), help="peak learning rate (default 1e-3, 3e-4 from scratch)")
    parser.add_argument("--warmup", type=int, metavar="STEPS", help="warm-up steps (default: 5%% of --steps)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the data order, augmentation")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                        help="transposition (+-5 semitones) and tempo stretch (+-5%%); on when fine-tuning")
    parser.add_argument("--expressive", action="store_true",
                        help="perform score-like pieces at random (rubato, onset jitter, legato, pedal, dynamics)")
    parser.add_argument("--figuration", type=float, default=0.0, metavar="P",
                        help="play the held chords of this share of draws as keyboard figures (Alberti bass, "
                             "arpeggio, bass then chord; the top note kept): 0 to 1, default 0")
    parser.add_argument("--register", type=float, default=0.0, metavar="P",
                        help="play the bass line of this share of draws an octave lower, as a pianist spreads a "
                             "choral or string score over the keyboard: 0 to 1, default 0")
    parser.add_argument("--weights", metavar="JSON",
                        help="JSON file of draws per piece by collection (sub-folder), e.g. {\"bach\": 3, \"*\": 1}")
    parser.add_argument("--starts", metavar="JSON",
                        help="JSON file of extra draws per piece of a short passage read as a piece's beginning, by "
                             "collection (what a new piece begins like), e.g. {\"chopin\": 20}; default none")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="held-out pieces (default 0.1)")
    parser.add_argument("--val-every", type=_positive(int), default=200, metavar="STEPS",
                        help="validate (and keep the best model) every this many steps (default 200)")
    parser.add_argument("--checkpoint-every", type=_positive(int), metavar="STEPS",
                        help="save a resumable checkpoint every this many steps (default 100; given with "
                             "--resume, it applies from then on)")
    parser.add_argument("--checkpoint-minutes", type=_positive(float), metavar="M",
                        help="also save one whenever this many minutes passed since the last (default 5; given "
                             "with --resume, it applies from then on)")
    parser.add_argument("--patience", type=int, default=5,
                        help="stop after this many validations without improvement (0: never; default 5)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 also speeds up CPUs with native "
                             "bf16 (AVX512-BF16, AMX)")
    parser.add_argument("--workers", type=_positive(int), metavar="N", help="processes that scan the folder")


def _codecs() -> list[str]:
    from core.codecs import CODECS

    return sorted(CODECS)


def config_from_args(args: argparse.Namespace, command: str):
    from trainer.config import TrainConfig

    base = None if args.base.lower() == "none" else args.base
    codec = getattr(args, "codec", None)
    if base is None and codec is None:  # from scratch: the codec new models are trained on
        codec = "notes"
    return TrainConfig(
        folder=args.folder, out=args.out, base=base, arch=args.arch, size=args.size,
        model={"codec": codec} if codec else {}, steps=args.steps,
        minutes=args.minutes, budget=args.budget, batch=args.batch, accum=args.accum, lr=args.lr,
        warmup=args.warmup, seed=args.seed, augment=args.augment, expressive=args.expressive,
        figuration=args.figuration, register=args.register,
        weights=None if args.weights is None else str(Path(args.weights).expanduser().resolve()),
        starts=None if args.starts is None else str(Path(args.starts).expanduser().resolve()),
        val_fraction=args.val_fraction, val_every=args.val_every, checkpoint_every=args.checkpoint_every,
        checkpoint_minutes=args.checkpoint_minutes, patience=args.patience,
        resume=args.resume, device=args.device, precision=args.precision, workers=args.workers, command=command)


def run_train(args: argparse.Namespace) -> int:
    from trainer.loop import fine_tune

    command = ("recital train " + shlex.join(sys.argv[2:]) if sys.argv[1:2] == ["train"]
               else "python -m trainer " + shlex.join(sys.argv[1:]))
    config = config_from_args(args, command)
    stop = _StopOnInterrupt()
    view = ProgressView(sys.stderr)
    with stop:
        result = fine_tune(config, on_progress=view, should_stop=stop)
    view.close()
    ppl = ("no held-out pieces" if result.best_perplexity is None else
           f"held-out perplexity {result.initial_perplexity:.3f} -> best {result.best_perplexity:.3f}")
    how = {"finished": "finished", "time": "time is up", "early_stop": "stopped early (no improvement)",
           "stopped": "interrupted; continue with --resume"}[result.stopped]
    print(f"{how}: {result.steps} steps, {result.tokens:,} tokens in {result.wall_seconds / 60:.1f} min; {ppl}")
    print(f"model: {result.model_dir}")
    for line in how_to_use(result.model_dir):
        print(line)
    return 0 if result.stopped != "stopped" else 130


def how_to_use(model_dir: Path) -> list[str]:
    """What to type to use the trained model: its name when `--model NAME` finds it, else its full path."""
    from core.errors import ModelError
    from core.modeldir import WEIGHTS, resolve

    if not (model_dir / WEIGHTS).is_file():
        return []
    where = model_dir.resolve()
    try:
        by_name = resolve(where.name).resolve() == where  # a name may also be shadowed or read as a path
    except ModelError:
        by_name = False
    if by_name:
        return [f"use it: recital generate --model {shlex.quote(where.name)} --seconds 60 --out piece.mid",
                "Recital Studio lists it in its model picker."]
    return [f"use it: recital generate --model {shlex.quote(str(where))} --seconds 60 --out piece.mid",
            "In Recital Studio: Folder… beside the model picker opens it."]


class _StopOnInterrupt:
    """The first Ctrl-C asks the loop to stop after its step (it saves a checkpoint); a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)

    def __enter__(self):
        self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self.previous)


class ProgressView:
    """Progress events as a bar redrawn in place on a terminal, or one line per event elsewhere (logs)."""

    def __init__(self, stream: TextIO, width: int = 24):
        self.stream, self.width = stream, width
        self.tty = stream.isatty()
        self.best: float | None = None
        self.drawn = False
        self.last_line = 0.0

    def __call__(self, event) -> None:
        if event.best_perplexity is not None:
            self.best = event.best_perplexity
        if event.kind == "step":
            self._step(event)
        elif event.kind == "eval":
            self._line(f"step {event.step}: held-out perplexity {event.val_perplexity:.3f} "
                       f"(best {event.best_perplexity:.3f})")
        elif event.kind in ("phase", "message") and event.message and event.phase != "scan":
            self._line(event.message)
        elif event.kind == "message" and event.phase == "scan" and self.tty:
            self._draw(f"{event.message}")

    def _step(self, event) -> None:
        filled = int(self.width * event.fraction)
        total = f"/{event.total_steps}" if event.total_steps else ""
        ppl = f" ppl {self.best:.2f}" if self.best is not None else ""
        rate = f" {event.tokens_per_s:,.0f} tok/s" if event.tokens_per_s else ""
        eta = f" ETA {_clock(event.eta_s)}" if event.eta_s is not None and math.isfinite(event.eta_s) else ""
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] step {event.step}{total} "
                f"loss {event.loss:.3f}{ppl}{rate}{eta}")
        if self.tty:
            self._draw(text)
        elif time.monotonic() - self.last_line >= 10 or event.step == event.total_steps:
            self.last_line = time.monotonic()
            self._line(text)

    def _draw(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
        self.drawn = True

    def _line(self, text: str) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


# ---- recital corpus ----------------------------------------------------------------------------------------

CORPUS_HELP = "scan and cache a folder of MIDI files (recursively) for fine-tuning"


def add_corpus_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder to scan (.mid, .midi, .kar in any sub-folder)")
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="processes that read files in parallel (default: one per CPU core)")
    parser.add_argument("--no-cache", action="store_true",
                        help="read and encode every file again instead of reusing cached results")
    parser.add_argument("--codec", choices=_codecs(), default="performance",
                        help="the codec to encode with: the one of the model to train (default: performance)")


def run_corpus(args: argparse.Namespace) -> int:
    from trainer.corpus import Corpus

    bar = ProgressBar(sys.stderr, "reading") if sys.stderr.isatty() else None
    try:
        corpus = Corpus.build(args.folder, workers=args.workers, use_cache=not args.no_cache,
                              progress=bar.update if bar else None, codec=args.codec)
    finally:
        if bar:
            bar.close()
    summary = corpus.summary
    print(f"corpus of {summary.folder}" + ("" if corpus.codec == "performance" else f" ({corpus.codec!r} codec)"))
    rows = summary.rows()
    if summary.unended:  # notes a NoteOn started and no NoteOff ended: kept, ended at their track's end
        rows.append(("notes never ended", f"{summary.unended:,} (kept, ended where their track ends)"))
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    if summary.skipped:
        print("skipped:")
        for skipped in summary.skipped:
            print(f"  {_relative(skipped.path, summary.folder)}: {skipped.reason}")
    if summary.duplicates:
        print("duplicates (kept once):")
        for duplicate in summary.duplicates:
            print(f"  {_relative(duplicate.path, summary.folder)} = "
                  f"{_relative(duplicate.same_as, summary.folder)}")
    if len(corpus) == 0:
        raise MidiError(summary.folder, f"none of the {summary.files} MIDI files could be read")
    return 0


class ProgressBar:
    """A one-line progress bar redrawn in place (at most 10 times a second) on a terminal stream."""

    def __init__(self, stream: TextIO, label: str, width: int = 30):
        self.stream, self.label, self.width = stream, label, width
        self.last_draw = 0.0
        self.drawn = False

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last_draw < 0.1:
            return
        self.last_draw = now
        filled = self.width * done // max(total, 1)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {done}/{total} files")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Erase the bar so the table that follows starts on a clean line."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _relative(path: str, folder: str) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


TRAIN = Command(TRAIN_HELP, add_train_arguments, run_train)
CORPUS = Command(CORPUS_HELP, add_corpus_arguments, run_corpus)
