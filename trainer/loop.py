"""The training loop: `fine_tune(config, on_progress, should_stop)`, shared by the CLI, the studio and recipes.

One step: `accum` micro-batches (DSMR: the next segment of a group of lanes, each group with its own recurrent
state; PerceiverS: effective-segmentation crops), the loss of each a sum over its targets divided by the step's
target count over every process, so a step is the same mean whatever the number of processes; AdamW with linear
warm-up then cosine decay, gradient clipping; bf16 autocast on CUDA, fp32 on CPU (bf16 there on request).

Everything that differs between architectures (how batches are cut, the loss, how held-out pieces are scored
whole: DSMR streamed under its budget schedule, PerceiverS in the sequential crops) is the model's training adapter
(core.models.interface.Training, from the registry); the loop never names an architecture. The best model is kept in the output directory; `patience` validations without improvement stop the run.

No Qt here: the studio runs `fine_tune` in a worker thread and turns `on_progress` events into signals; it stops
the run through `should_stop`, which the loop polls between steps (then saves a checkpoint and returns).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from core.budget import parse_budget
from core.codecs import DEFAULT as DEFAULT_CODEC
from core.codecs import codec_of
from core.errors import MidiError, ModelError, RecitalError
from core.modeldir import _looks_like_path, build_model, read_config, resolve, user_models_dir
from core.models import registry
from core.threads import use_threads
from core.tokenizer import PAD
from trainer import checkpoint as ckpt
from trainer import rundir
from trainer.config import TrainConfig, scratch_config
from trainer.corpus import Corpus
from trainer.data import PieceSource
from trainer.distributed import World, join
from trainer.expressive import Expression
from trainer.figuration import Figuration
from trainer.register import Register
from trainer.weights import (
    describe,
    length_shares,
    load_weights,
    piece_weights,
    start_draws,
    start_shares,
    token_shares,
)

MIN_PIECES_TO_SPLIT = 4  # fewer pieces: train on all of them and report the training loss only


@dataclass(frozen=True)
class Progress:
    """One progress event. `kind`: phase | step | eval | checkpoint | message | done."""

    kind: str
    phase: str  # scan | prepare | train | validate | checkpoint | done
    step: int = 0
    total_steps: int | None = None
    fraction: float = 0.0  # of the run done (steps or minutes, whichever ends it first)
    loss: float | None = None
    lr: float | None = None
    val_perplexity: float | None = None
    best_perplexity: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    elapsed_s: float = 0.0
    message: str = ""

    def to_json(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if v is not None and v != ""}
        data["time"] = datetime.now(UTC).isoformat(timespec="seconds")
        return data


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    stopped: str  # finished | time | early_stop | stopped
    best_perplexity: float | None  # None when nothing was held out
    initial_perplexity: float | None  # held-out perplexity before this run's first step
    final_loss: float | None
    tokens: int  # training tokens (targets) seen
    wall_seconds: float


ProgressCallback = Callable[[Progress], None]


def fine_tune(config: TrainConfig, on_progress: ProgressCallback | None = None,
              should_stop: Callable[[], bool] | None = None) -> TrainResult:
    """Train as `config` says; returns where the model is and how it went. Errors are core.errors types."""
    world = join(config.device)
    try:
        with use_threads("train"):  # every core this process may use (core/threads.py)
            return _Run(config, world, on_progress, should_stop).run()
    finally:
        world.close()


# Model fields a run over a base may turn on: each adds an input whose new weights start at zero, so the model
# begins exactly where the base was (issue #17: the notes sounding, `sounding_input`).
ADDABLE_INPUTS = ("sounding_input",)


def held_out_draw(corpus: Corpus, val: list[int], c: TrainConfig) -> list[int]:
    """The held-out pieces scored at each validation, at most `val_max_pieces` of the held-out split, seeded.

    "weighted" draws them without replacement with the chance the training draws give each piece's tokens (its
    collection's weight x its tokens), so the number that picks the best model is of the music the run learns: a
    uniform draw of music21's corpus holds 90% folk-tune tokens and no keyboard piece. Without weights, and with
    "pieces", a uniform draw by piece."""
    rng = np.random.default_rng([c.seed, 7])
    if c.val_by_weights and len(val) > c.val_max_pieces:
        try:
            chance = piece_weights(corpus, val, load_weights(c.weights))
        except ModelError:  # the held-out split has no piece the training draws: score it as it is
            chance = np.ones(len(val))
        chance *= np.array([corpus.index[i].tokens for i in val], dtype=np.float64)
        count = min(c.val_max_pieces, int((chance > 0).sum()))
        picked = rng.choice(len(val), size=count, replace=False, p=chance / chance.sum())
        return sorted(int(val[i]) for i in picked)
    return sorted(rng.permutation(val)[:c.val_max_pieces].tolist())


def held_out_by(c: TrainConfig) -> str:
    """How the held-out pieces were drawn, for the log."""
    return "held out by the training weights" if c.val_by_weights else "held out by piece"


def expression(c: TrainConfig) -> Expression | None:
    """How the run performs its draws (None: as scored)."""
    if not c.expressive:
        return None
    return Expression() if c.expressive_tempo is None else Expression(tempo=tuple(map(float, c.expressive_tempo)))


def training_source(c: TrainConfig, corpus: Corpus, train: list[int]) -> PieceSource:
    """The endless, augmented sequence of training draws a run with settings `c` reads from `train` (corpus
    indices): its collection weights and beginnings, figuration, register, performance, transposition and stretch.
    bench.texture reads the default recipe's draws through here too."""
    weights = None if c.weights is None else piece_weights(corpus, train, load_weights(c.weights))
    return PieceSource(corpus, train, c.seed, c.augmenting, c.transpose, c.stretch, expression(c), weights,
                       start_draws(corpus, train, c.starts),
                       figuration=Figuration(probability=c.figuration) if c.figuration else None,
                       register=Register(probability=c.register) if c.register else None)


def with_added_inputs(model: torch.nn.Module, added: dict) -> torch.nn.Module:
    """The base `model` with the inputs `added` ({field: True}) turned on: its weights kept, the new ones as the
    model initialises them (zero). ModelError when the base has weights the new model would not keep."""
    if not added or all(getattr(model.config, k, None) == v for k, v in added.items()):
        return model
    config = type(model.config).from_dict({**model.config.to_dict(), **added})
    grown = type(model)(config)
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = {name for name in grown.state_dict() if name not in model.state_dict()}
    if unexpected or set(missing) - new:
        raise ModelError(f"cannot add {', '.join(added)} to the base model: its weights do not fit "
                         f"({', '.join([*unexpected, *missing][:3])})")
    return grown.train(model.training)


def output_dir(out: str | None, folder: str, arch: str) -> Path:
    """--out: a path as given, a bare name inside the user models dir; default '<folder name>-<arch>'."""
    name = out or f"{Path(folder).resolve().name}-{arch}"
    return Path(name).expanduser() if _looks_like_path(name) else user_models_dir() / name


def lr_at(config: TrainConfig, step: int, fraction: float) -> float:
    """Linear warm-up over the first steps, then cosine decay to lr * min_lr_ratio at the end of the run."""
    peak, warmup = config.peak_lr, config.warmup_steps()
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.steps is not None and (config.minutes is None or fraction * config.steps <= step + 1):
        fraction = (step - warmup) / max(1, config.steps - warmup)
    fraction = min(1.0, max(0.0, fraction))
    low = peak * config.min_lr_ratio
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * fraction))


class _Run:
    def __init__(self, config: TrainConfig, world: World, on_progress: ProgressCallback | None,
                 should_stop: Callable[[], bool] | None):
        self.config, self.world = config, world
        self.on_progress, self.should_stop = on_progress, should_stop
        self.log: ckpt.EventLog | None = None
        self.lock: rundir.RunLock | None = None  # rank 0's hold on the output directory
        self.created = False  # this run created the output directory
        self.checkpointed = False  # this run wrote a checkpoint (a failure keeps the directory from then on)
        self.base_path: Path | None = None

    # ---- reporting --------------------------------------------------------------------------------------

    def emit(self, event: Progress) -> None:
        if not self.world.main:
            return
        if self.log is not None:
            self.log.write(event.to_json())
        if self.on_progress is not None:
            self.on_progress(event)

    # ---- setting up -------------------------------------------------------------------------------------

    def _target(self) -> tuple[Path, bool]:
        """The output directory, and whether it holds a checkpoint to resume. Reads only: nothing is claimed yet.

        A --resume without --arch or --out looks in both architectures' default folders. With nothing to resume,
        the base model is checked here (before the output directory is touched).
        """
        c = self.config
        if c.resume:
            archs = [c.arch] if c.arch else registry.architectures()
            for out in dict.fromkeys(output_dir(c.out, c.folder, arch) for arch in archs):
                if out.is_dir() and ckpt.latest_checkpoint(out) is not None:
                    return out, True
        if c.base is None:
            return output_dir(c.out, c.folder, c.arch), False
        try:
            path = resolve(c.base)
        except ModelError as error:
            if c.base != "default":
                raise
            raise ModelError(f"no default model is shipped in this build yet: pass --base PATH to a model "
                             f"directory, or --base none --arch {'|'.join(registry.architectures())} --size "
                             "tiny|small|default to "
                             f"train from scratch ({error})") from None
        meta = read_config(path)
        if c.arch is not None and meta["arch"] != c.arch:
            raise ModelError(f"{path}: the base model is a {meta['arch']} model, not {c.arch}")
        if "codec" in c.model:  # a fine-tune keeps its base's codec: saying so is allowed, another one is not
            found = meta["config"].get("codec", DEFAULT_CODEC)
            if c.model["codec"] != found:
                raise ModelError(f"{path}: the base model reads the {found!r} codec, not {c.model['codec']!r}: a "
                                 "model of another codec is trained from scratch (--base none)")
            c.model = {k: v for k, v in c.model.items() if k != "codec"}
        if c.model and (set(c.model) - set(ADDABLE_INPUTS) or any(v is not True for v in c.model.values())):
            raise ModelError("model settings can only be chosen when training from scratch (--base none); over a "
                             f"base, only an added input ({', '.join(f'{k}: true' for k in ADDABLE_INPUTS)})")
        self.base_path = path
        out = output_dir(c.out, c.folder, meta["arch"])
        return out, bool(c.resume and out.is_dir() and ckpt.latest_checkpoint(out) is not None)

    def _claim(self, out: Path, expected: bool) -> tuple[bool, str | None]:
        """Rank 0 locks `out` and reads what is there; every rank learns whether the run resumes (or the error).

        Returns (resuming, a note to report once the event log is open).
        """
        outcome: tuple[str | None, bool, str | None] | None = None
        error: RecitalError | None = None
        if self.world.main:
            try:
                resuming, note = self._take(out, expected)
                outcome = (None, resuming, note)
            except RecitalError as failure:
                error, outcome = failure, (str(failure), False, None)
        message, resuming, note = self.world.gather(outcome)[0]
        if error is not None:
            raise error
        if message is not None:
            raise ModelError(f"the main process stopped: {message}")
        return resuming, note

    def _take(self, out: Path, expected: bool) -> tuple[bool, str | None]:
        c = self.config
        self.created = not out.exists()
        ckpt.check_writable(out)
        self.lock = rundir.RunLock(out)
        found = rundir.state(out)
        if expected and found != "resumable":  # its checkpoint went away: the base was never checked
            raise ModelError(f"{out} changed while this run was starting (another training?): try again")
        if found == "resumable":
            if not c.resume:
                raise ModelError(f"{out} already exists: pass --resume to continue its run, or choose another --out")
            return True, None
        if found == "occupied":
            what = "nothing to resume there (no checkpoint), and it" if c.resume else "it already exists and"
            raise ModelError(f"{out}: {what} holds files that are not a training run's: choose another --out")
        note = None
        if found == "unfinished":
            rundir.clear(out)
            note = f"{out} held a run that stopped before its first checkpoint: starting it again"
        if c.resume:
            note = f"nothing to resume in {out} (no checkpoint yet): starting from the beginning"
        return False, note

    def _model(self, out: Path, resuming: bool) -> tuple[torch.nn.Module, str | None]:
        """The model to train and the base's name (None from scratch); resuming, the checkpoint's settings too."""
        c = self.config
        if resuming:
            self.checkpoint_path = ckpt.latest_checkpoint(out)
            if self.checkpoint_path is None:
                raise ModelError(f"{out}: its checkpoint disappeared while this run was starting")
            self.saved = json.loads((self.checkpoint_path / ckpt.STATE).read_text(encoding="utf-8"))
            meta = read_config(out)
            return build_model(meta["arch"], meta["config"]), self.saved["config"]["base"]
        if c.base is None:
            torch.manual_seed(c.seed)
            return build_model(c.arch, scratch_config(c.arch, c.size, c.model)), None
        from core.modeldir import load_model

        return with_added_inputs(load_model(self.base_path), c.model), str(c.base)

    def _settings(self, resuming: bool) -> tuple[TrainConfig, str | None]:
        """The settings this run trains with, and a note when a resume changes how often it checkpoints.

        Resuming, the run keeps its own settings but for its length, where it runs, and the checkpoint intervals
        given now (applied from here on and recorded in the next checkpoint).
        """
        c = self.config
        note = None
        if resuming:
            saved = TrainConfig.from_dict(self.saved["config"])
            if "val_draw" not in self.saved["config"]:  # a run from before the setting: its held-out pieces stay
                saved.val_draw = "pieces"
            for name in ("steps", "minutes", "device", "precision", "workers", "log_every"):
                setattr(saved, name, getattr(c, name))
            changed = []
            for name, unit in (("checkpoint_every", "steps"), ("checkpoint_minutes", "minutes")):
                value = getattr(c, name)
                if value is not None and value != getattr(saved, name):
                    setattr(saved, name, value)
                    changed.append(f"{value:g} {unit}")
            if changed:
                note = f"checkpoints from now on every {' and every '.join(changed)} (the resumed run's setting)"
            saved.resume = True
            c = saved
        return c.with_checkpoint_defaults(), note

    def _corpus(self, codec: str) -> Corpus:
        """The training folder encoded with the trained model's codec (scanned by rank 0, opened by the rest)."""
        c, world = self.config, self.world
        corpus = None
        if world.main:
            self.emit(Progress("phase", "scan", message=f"reading {c.folder}"))

            def scanned(done: int, total: int) -> None:
                self.emit(Progress("message", "scan", fraction=done / max(total, 1),
                                   message=f"read {done} of {total} files"))
            corpus = Corpus.build(c.folder, workers=c.workers, progress=scanned, codec=codec)
            if corpus.summary.repaired:
                self.emit(Progress("message", "prepare", message=(
                    f"the corpus cache had {len(corpus.summary.repaired)} damaged files: rebuilt from the MIDI "
                    "files")))
        world.barrier()
        if corpus is None:
            corpus = Corpus.open(c.folder, codec)
        if len(corpus) == 0:
            raise MidiError(corpus.folder, f"none of the {corpus.summary.files} MIDI files could be read")
        return corpus

    def _split(self, corpus: Corpus, shortest: int) -> tuple[list[int], list[int]]:
        c = self.config
        if len(corpus) < MIN_PIECES_TO_SPLIT or c.val_fraction == 0:
            train, val = list(range(len(corpus))), []
            if c.val_fraction > 0:
                self.emit(Progress("message", "prepare", message=(
                    f"only {len(corpus)} pieces: too few to hold any out (need {MIN_PIECES_TO_SPLIT}); "
                    "reporting the training loss only")))
        else:
            train, val = corpus.split(c.val_fraction, c.seed)
            val = held_out_draw(corpus, val, c)
        if all(corpus.index[i].tokens < shortest for i in train):
            longest = max(corpus.index[i].tokens for i in train)
            raise MidiError(corpus.folder, f"every training piece is shorter than one segment ({shortest} "
                                           f"tokens; the longest has {longest}): add longer pieces or train "
                                           "a model with shorter segments")
        return train, val

    # ---- the run ----------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Claim the output directory, train, and let go of it; a run that fails before its first checkpoint
        leaves nothing behind (the directory as it was, or no directory)."""
        started = time.monotonic()
        out, expected = self._target()
        abandon = False
        try:
            resuming, note = self._claim(out, expected)
            try:
                return self._train(out, resuming, note, started)
            except BaseException:
                abandon = self.world.main and not resuming and not self.checkpointed
                raise
        finally:
            self._release(out, abandon)

    def _release(self, out: Path, abandon: bool) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if abandon:
            rundir.clear(out)
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if abandon and self.created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only when empty: nothing but this run's files were there

    def _train(self, out: Path, resuming: bool, note: str | None, started: float) -> TrainResult:
        """Set up, validate the starting point, step until a limit, and keep what was reached."""
        self.started = started
        self._setup(out, resuming, note)
        c, progress = self.config, self.progress
        step = progress["step"]
        if step == 0:
            self._validate_start()
        self.training.record()  # from here on the model has been trained with this run's settings
        self.model.train()
        self.window_tokens, self.window_start = 0, time.monotonic()
        stopped = "finished"
        self.emit(Progress("phase", "train", step=step, total_steps=c.steps))
        while True:
            stopped, seconds = self._should_stop(step)
            if stopped != "finished" or (c.steps is not None and step >= c.steps):
                break
            lr = lr_at(c, step, self._fraction_done(step, seconds))
            loss = self._step(step, lr)
            step += 1
            last = c.steps is not None and step >= c.steps
            if step % c.log_every == 0 or last or step == 1:
                self._report(step, loss, lr)
            if step % c.val_every == 0 or last:
                self._validate_and_keep(step)
                if c.patience and progress["bad_evals"] >= c.patience:
                    stopped = "early_stop"
                    break
            if step % c.checkpoint_every == 0 or last or seconds - self.checkpointed_at >= c.checkpoint_minutes * 60:
                self.checkpointed_at = seconds
                self._checkpoint(step)
        if stopped == "time" and progress["validated_step"] != step:  # the steps since the last validation may be the best
            self._validate_and_keep(step)
            self.saved_at = None  # the last checkpoint must record this validation
        if self.saved_at != step:  # stopped between checkpoints: keep everything so far
            self._checkpoint(step)
        self.emit(Progress("done", "done", step=step, total_steps=c.steps, fraction=1.0, loss=progress["loss"],
                           best_perplexity=progress["best_perplexity"], elapsed_s=self._elapsed(), message=stopped))
        return TrainResult(self.out, step, stopped, progress["best_perplexity"], progress["initial_perplexity"],
                           progress["loss"], progress["tokens"], self._elapsed())

    # ---- set-up -------------------------------------------------------------------------------------------------

    def _setup(self, out: Path, resuming: bool, note: str | None) -> None:
        """The model, its training adapter, the data, the optimizer and the progress so far (a resume's)."""
        world = self.world
        self.out = out
        model, self.base = self._model(out, resuming)
        c, changed = self._settings(resuming)
        self.config = c
        if world.main:
            self.log = ckpt.EventLog(out)
        unguarded = self.lock.unguarded if self.lock is not None else None
        if unguarded:
            unguarded = f"cannot lock {out} ({unguarded}): make sure no other training uses it"
        for message in (note, changed, unguarded):
            if message:
                self.emit(Progress("message", "prepare", message=message))
        self.training = registry.get(model.arch).training(model)
        corpus = self.corpus = self._corpus(codec_of(model).NAME)
        corpus.check_codec(model)
        train, self.val = self._split(corpus, self.training.shortest_piece())
        self.data = {"folder": str(corpus.folder), "files": corpus.summary.files, "pieces": len(corpus),
                     "train_pieces": len(train), "val_pieces": len(self.val), "tokens": corpus.total_tokens,
                     "hours": corpus.hours, "codec": corpus.codec}
        self.emit(Progress("phase", "prepare", message=(
            f"{model.arch}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; {len(train)} "
            f"training and {len(self.val)} held-out pieces ({held_out_by(c)}), {corpus.total_tokens:,} tokens, "
            f"{corpus.hours:.2f} h")))

        if c.batch % world.size:
            raise ModelError(f"batch {c.batch} does not split evenly over {world.size} processes")
        self.local = local = c.batch // world.size
        self.device = device = world.device
        model.to(device)
        self.budget = parse_budget(c.budget or model.config.default_budget)
        source = training_source(c, corpus, train)
        weights, starts = source.weights, source.starts
        if weights is not None or starts is not None:
            self.emit(Progress("message", "prepare", message=describe(
                token_shares(corpus, train, weights), length_shares(corpus, train, weights),
                None if starts is None else start_shares(corpus, train, weights, starts))))
        decay = [p for p in model.parameters() if p.dim() >= 2]
        no_decay = [p for p in model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay},
                                            {"params": no_decay, "weight_decay": 0.0}],
                                           lr=c.peak_lr, betas=(0.9, 0.95), fused=device.type == "cuda")
        self.progress = progress = {
            "step": 0, "tokens": 0, "train_seconds": 0.0, "best_perplexity": None, "best_step": None,
            "initial_perplexity": None, "bad_evals": 0, "loss": None, "data": None, "validated_step": None}
        if resuming:
            if world.main:
                ckpt.remove_leftovers(out)
            saved = ckpt.load_checkpoint(self.checkpoint_path, model, self.optimizer)
            progress.update({k: saved[k] for k in progress if k in saved})
            self.emit(Progress("message", "prepare", step=progress["step"],
                               message=f"resuming from {self.checkpoint_path.name}"))
        # Micro-batch m of this process reads global lanes (or crop items) m * batch + rank * local + j.
        lanes = [[m * c.batch + world.rank * local + j for j in range(local)] for m in range(c.accum)]
        self.training.start(source, lanes, c.batch * c.accum, self.budget,
                            (progress["data"] or {}).get("lanes", {}))
        self.raw = model
        self.model = torch.nn.parallel.DistributedDataParallel(model) if world.size > 1 else model
        self.autocast = c.autocasts(device.type)
        self.saved_at = progress["step"] if resuming else -1  # the step of the last checkpoint written
        self.resume_seconds = progress["train_seconds"]
        self.checkpointed_at = self.resume_seconds  # run seconds at the last checkpoint (the same on every process)

    def _elapsed(self) -> float:
        return self.resume_seconds + time.monotonic() - self.started

    def _fraction_done(self, step: int, seconds: float) -> float:
        c = self.config
        parts = []
        if c.steps is not None:
            parts.append(step / c.steps)
        if c.minutes is not None:
            parts.append(seconds / (c.minutes * 60))
        return min(1.0, max(parts))

    def _should_stop(self, step: int) -> tuple[str, float]:
        """('finished' to go on, or why the run stops: time | stopped) and the run's seconds, agreed by every
        process."""
        c = self.config
        user_stop = bool(self.should_stop and self.should_stop())
        seconds, stop_votes = self.world.sum([self._elapsed(), float(user_stop)])
        seconds /= self.world.size
        if c.steps is not None and step >= c.steps:
            return "finished", seconds
        if c.minutes is not None and seconds >= c.minutes * 60:
            return "time", seconds
        return ("stopped" if stop_votes > 0 else "finished"), seconds

    # ---- one step -----------------------------------------------------------------------------------------------

    def _step(self, step: int, lr: float) -> float:
        """One optimizer step at learning rate `lr` over `accum` micro-batches; the mean loss per target over
        every process. The progress counts it."""
        c, world, device, model = self.config, self.world, self.device, self.model
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = [self.training.batch(step, m) for m in range(c.accum)]
        (count,) = world.sum([float(sum(int((targets != PAD).sum()) for _, targets in batches))])
        count = max(count, 1.0)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        loss_sum = 0.0
        for m, (inputs, targets) in enumerate(batches):
            inputs = torch.from_numpy(inputs).to(device, non_blocking=True)
            targets = torch.from_numpy(targets).to(device, non_blocking=True)
            sync = m == len(batches) - 1 or world.size == 1
            with (contextlib.nullcontext() if sync else model.no_sync()), autocast:
                nll = self.training.loss(model, inputs, targets, m)
                (nll * (world.size / count)).backward()
            loss_sum += float(nll.detach())
        if c.clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), c.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        (loss_sum,) = world.sum([loss_sum])
        loss = loss_sum / count
        if not math.isfinite(loss):
            raise ModelError(f"the training loss became {loss} at step {step + 1}: try a lower --lr")
        progress = self.progress
        progress["step"], progress["loss"] = step + 1, loss
        progress["tokens"] += int(count)
        self.window_tokens += int(count)
        return loss

    # ---- validation ---------------------------------------------------------------------------------------------

    def _validate(self, step: int) -> float | None:
        """Held-out perplexity over every process's share of the held-out pieces (None: nothing held out)."""
        if not self.val:
            return None
        world = self.world
        self.emit(Progress("phase", "validate", step=step, total_steps=self.config.steps))
        pieces = [self.corpus.piece(i) for i in self.val[world.rank::world.size]]
        was_training = self.raw.training
        self.raw.eval()
        try:
            with torch.no_grad():
                nll, count = self.training.held_out(pieces, self.budget, self.local, self.device)
        finally:
            self.raw.train(was_training)
        nll, count = world.sum([nll, count])
        return math.exp(nll / count)

    def _validate_start(self) -> None:
        """The starting point's held-out perplexity: the first best, kept as the model."""
        progress = self.progress
        initial = self._validate(0)
        progress["validated_step"] = 0
        progress["initial_perplexity"] = progress["best_perplexity"] = initial
        progress["best_step"] = 0
        if initial is not None:
            self.emit(Progress("eval", "validate", step=0, val_perplexity=initial, best_perplexity=initial))
        self._save_best(0, initial)

    def _validate_and_keep(self, step: int) -> None:
        """Held-out perplexity now; the best model so far is kept (and counts toward early stopping)."""
        progress = self.progress
        progress["validated_step"] = step
        perplexity = self._validate(step)
        if perplexity is None:
            return
        best = progress["best_perplexity"]
        if best is None or perplexity < best:
            progress["best_perplexity"], progress["best_step"], progress["bad_evals"] = perplexity, step, 0
            self._save_best(step, perplexity)
        else:
            progress["bad_evals"] += 1
        self.emit(Progress("eval", "validate", step=step, total_steps=self.config.steps, loss=progress["loss"],
                           val_perplexity=perplexity, best_perplexity=progress["best_perplexity"]))
        self.model.train()

    # ---- checkpoints --------------------------------------------------------------------------------------------

    def _save_best(self, step: int, perplexity: float | None) -> None:
        """Write the model directory (weights, config, card) as it is now."""
        if not self.world.main:
            return
        c, raw = self.config, self.raw
        card = ckpt.card_text(
            name=self.out.name, arch=raw.arch, base=self.base, data=self.data, steps=step,
            wall_seconds=self.progress["train_seconds"] + time.monotonic() - self.started,
            tokens=self.progress["tokens"], best_perplexity=perplexity, date=datetime.now().strftime("%Y-%m-%d"),
            command=c.command, model_config=raw.config.to_dict(), augmenting=c.augmenting)
        ckpt.write_model(raw, self.out, card)

    def _checkpoint(self, step: int) -> None:
        """A resumable checkpoint: weights, optimizer, progress and every process's data position."""
        world = self.world
        self.saved_at = step
        merged = {}
        for part in world.gather(self.training.position()):
            merged.update(part)
        if world.main:
            self.emit(Progress("checkpoint", "checkpoint", step=step))
            state = dict(self.progress, step=step, data={"lanes": merged}, config=self.config.to_dict(),
                         world=world.size, train_seconds=self._elapsed())
            if self.val == []:  # nothing held out: the latest weights are the model (written first: a checkpoint
                self._save_best(step, None)  # never gets ahead of the model it says it kept)
            path = ckpt.save_checkpoint(self.out, step, self.raw, self.optimizer, state)
            self.checkpointed = True
            self.emit(Progress("checkpoint", "checkpoint", step=step, message=f"saved {path.name}"))
        world.barrier()

    # ---- reporting ----------------------------------------------------------------------------------------------

    def _report(self, step: int, loss: float, lr: float) -> None:
        """A progress event: the loss, the rate since the last one, and how long the rest should take."""
        now = time.monotonic()
        rate = self.window_tokens / max(now - self.window_start, 1e-9)
        self.window_tokens, self.window_start = 0, now
        elapsed = self._elapsed()
        fraction = self._fraction_done(step, elapsed)
        eta = elapsed / fraction - elapsed if fraction > 0 else None
        self.emit(Progress("step", "train", step=step, total_steps=self.config.steps, fraction=fraction, loss=loss,
                           lr=lr, tokens_per_s=rate, eta_s=eta, elapsed_s=elapsed,
                           best_perplexity=self.progress["best_perplexity"]))
