"""What a run leaves on disk, always written atomically (a temporary file or folder, then a rename).

    <out>/config.json, model.safetensors, card.md   the best model so far (a model directory: `recital models`)
    <out>/events.jsonl                              one JSON object per progress event (the studio plots it)
    <out>/.run.lock                                 locked by the process training it (trainer.rundir)
    <out>/checkpoints/step-00001200/                the last resumable state:
        model.safetensors                           weights at that step (not necessarily the best)
        trainer.pt                                  optimizer state and RNG states (tensors only: loaded with
                                                    weights_only, so never unpickles code)
        state.json                                  step, data position, timers, best perplexity, settings

A checkpoint folder is built as `.step-*.tmp` and renamed when complete; resume takes the highest-numbered
complete `step-*` folder and ignores temporaries (the resumed run removes them), so a run killed mid-write loses at most one
checkpoint interval and never loads a half-written one. A failed write (a full disk) leaves the previous files and
says in one line what could not be written: the writers raise OSError, safetensors' SafetensorError or torch.save's
RuntimeError ('unexpected pos').
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from core.errors import ModelError
from core.modelcard import scrub_paths, shown_name
from core.modeldir import CARD, CONFIG, WEIGHTS, save_model

CHECKPOINTS = "checkpoints"
EVENTS = "events.jsonl"
TRAINER, STATE = "trainer.pt", "state.json"


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _write_errors() -> tuple[type[BaseException], ...]:
    """What the writers raise when a write fails (a full disk, a vanished folder)."""
    from safetensors import SafetensorError

    return OSError, RuntimeError, SafetensorError


def _reason(error: BaseException) -> str:
    text = str(error).strip()
    if getattr(error, "errno", None) == errno.ENOSPC or "No space left" in text:
        return "the disk is full"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return text.splitlines()[0][:200] if text else type(error).__name__


def _failure(what: Path, error: BaseException) -> ModelError:
    return ModelError(f"{what}: cannot write ({_reason(error)}); the previous files are kept")


def check_writable(out: Path) -> None:
    """Fail before training, not after it, when `out` cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as error:
        raise ModelError(f"{out}: the output directory is not writable ({error.strerror or error})") from None


def write_model(model: torch.nn.Module, out: Path, card: str) -> None:
    """Put the model directory's three files into `out`, each replaced atomically (other files stay)."""
    staging = out / f".staging-{os.getpid()}"
    try:
        save_model(model, staging, card)  # nothing left behind on failure
        for name in (CONFIG, WEIGHTS, CARD):
            os.replace(staging / name, out / name)
    except ModelError as error:  # save_model's OSError, told about `out` rather than the hidden staging folder
        raise _failure(out, error.__context__ if isinstance(error.__context__, OSError) else error) from None
    except _write_errors() as error:
        raise _failure(out, error) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def save_checkpoint(out: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict) -> Path:
    """Write checkpoint `step` completely, then drop the older ones; returns its folder."""
    from safetensors.torch import save_model as save_weights

    folder = out / CHECKPOINTS
    final = folder / f"step-{step:08d}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}-", suffix=".tmp", dir=folder))
    except OSError as error:
        raise _failure(folder, error) from None
    try:
        save_weights(model, str(tmp / WEIGHTS))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, tmp / TRAINER)
        (tmp / STATE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        _fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except _write_errors() as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _failure(final, error) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in folder.glob("step-*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in `out`, or None. Only reads: a run may be writing the next one."""
    folder = out / CHECKPOINTS
    if not folder.is_dir():
        return None
    complete = [p for p in folder.glob("step-*")
                if all((p / name).is_file() for name in (WEIGHTS, TRAINER, STATE))]
    for path in sorted(complete, reverse=True):
        try:
            json.loads((path / STATE).read_text(encoding="utf-8"))
            return path
        except (OSError, ValueError):
            continue
    return None


def remove_leftovers(out: Path) -> None:
    """Delete what interrupted writes left (temporaries, incomplete checkpoints): only the run that owns `out`."""
    folder = out / CHECKPOINTS
    latest = latest_checkpoint(out)
    for path in [*folder.glob(".step-*.tmp"), *folder.glob("step-*")]:
        if path != latest:
            shutil.rmtree(path, ignore_errors=True)
    for staging in out.glob(".staging-*"):
        shutil.rmtree(staging, ignore_errors=True)


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore weights, optimizer and RNG states from a checkpoint folder; returns its state.json."""
    from safetensors.torch import load_model as load_weights

    try:
        state = json.loads((path / STATE).read_text(encoding="utf-8"))
        load_weights(model, str(path / WEIGHTS), strict=True)
        saved = torch.load(path / TRAINER, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
    except Exception as error:  # a damaged file of any kind: say which checkpoint
        raise ModelError(f"{path}: cannot resume from this checkpoint ({str(error).strip()[:200]})") from None
    torch.set_rng_state(saved["rng"]["torch"])
    if "cuda" in saved["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(saved["rng"]["cuda"])
    return state


class EventLog:
    """events.jsonl of a run: appended one line per event, flushed at once (a killed run keeps its history)."""

    def __init__(self, out: Path):
        self.path = out / EVENTS
        try:
            self.handle = open(self.path, "a", encoding="utf-8")
        except OSError as error:
            raise _failure(self.path, error) from None

    def write(self, event: dict) -> None:
        try:
            self.handle.write(json.dumps(event) + "\n")
            self.handle.flush()
        except OSError as error:
            raise _failure(self.path, error) from None

    def close(self) -> None:
        try:
            self.handle.close()
        except OSError:
            pass


def card_text(*, name: str, arch: str, base: str | None, data: dict, steps: int, wall_seconds: float,
              tokens: int, best_perplexity: float | None, date: str, command: str, model_config: dict,
              augmenting: bool) -> str:
    """card.md: the first line is what `recital models` shows. Folders and models are named, never placed: a card
    travels with its model, the paths of the machine that trained it do not."""
    ppl = f"{best_perplexity:.3f}" if best_perplexity is not None else "not measured (too few pieces to hold out)"
    base = shown_name(base) if base else None
    origin = f"fine-tuned from {base}" if base else "trained from scratch"
    lines = [
        f"# {name}: {arch} {origin} on {data['pieces']} pieces ({data['hours']:.2f} h)",
        "",
        f"- base model: {base or 'none (from scratch)'}",
        f"- data: {shown_name(data['folder'])}: {data['files']} files, {data['pieces']} pieces "
        f"({data['train_pieces']} train, {data['val_pieces']} held out), {data['tokens']:,} tokens, "
        f"{data['hours']:.2f} hours of music, encoded with the {data.get('codec', 'performance')!r} codec",
        f"- augmentation: {'transposition and tempo stretch' if augmenting else 'none'}",
        f"- steps: {steps:,} ({tokens:,} training tokens)",
        f"- wall time: {wall_seconds / 60:.1f} min",
        f"- best held-out perplexity: {ppl}",
        f"- date: {date}",
        f"- recipe: `{scrub_paths(command)}`" if command else "- recipe: (Python API)",
        "",
        "Model config:",
        "",
        "```json",
        json.dumps(model_config, indent=1),
        "```",
    ]
    return "\n".join(lines) + "\n"
