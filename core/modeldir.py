"""Model directories: config.json + model.safetensors + card.md, saved atomically, found by name or path.

    config.json        {"format": 1, "arch": "dsmr", "config": {...model config, schedule included...},
                        "tokenizer": {"name": "performance", "vocab_size": 391}}
    model.safetensors  weights only (loading never unpickles code)
    card.md            what it was trained on, how long, held-out perplexity

A name is looked up among the user's models (platformdirs user_data_dir("recital")/models, or
$RECITAL_DATA_DIR/models) and then the shipped ones (assets/models/<name>, package data of `recital_assets`;
"default" is the shipped DSMR model).
Anything that looks like a path (has a slash, starts with . or ~) is a path.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from core.errors import ModelError
from core.tokenizer import VOCAB_SIZE

FORMAT = 1
TOKENIZER = "performance"
CONFIG, WEIGHTS, CARD = "config.json", "model.safetensors", "card.md"


def _shipped_models_dir() -> Path:
    """assets/models, installed as package data of `recital_assets`: inside a wheel's install as in a clone.

    Without that package (a clone run without installing it) the clone's own assets/models is used.
    """
    from importlib import resources

    try:
        return Path(str(resources.files("recital_assets") / "models"))
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[1] / "assets" / "models"


SHIPPED_DIR = _shipped_models_dir()

# arch -> (module, model class, config class), imported only when a model of that arch is built. The config
# class has to_dict/from_dict; the model class takes a config and has `arch` and `config`.
ARCHITECTURES = {
    "dsmr": ("core.models.dsmr", "DSMR", "DSMRConfig"),
    "perceivers": ("core.models.perceivers", "PerceiverS", "PerceiverSConfig"),
}


def user_models_dir() -> Path:
    """Where fine-tuned models are saved and found by name."""
    base = os.environ.get("RECITAL_DATA_DIR") or platformdirs.user_data_dir("recital")
    return Path(base) / "models"


def architecture(arch: str):
    """(model class, config class) of an arch name; ModelError if unknown or not in this build."""
    if arch not in ARCHITECTURES:
        raise ModelError(f"unknown model architecture {arch!r}: known are {', '.join(sorted(ARCHITECTURES))}")
    module_name, model_name, config_name = ARCHITECTURES[arch]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ModelError(f"the {arch} architecture is not in this build ({module_name} is missing)") from None
    return getattr(module, model_name), getattr(module, config_name)


def build_model(arch: str, config: dict) -> torch.nn.Module:
    """A freshly initialised model of `arch` from its config dict."""
    model_class, config_class = architecture(arch)
    return model_class(config_class.from_dict(config))


# -- saving ---------------------------------------------------------------------------------------------------

def save_model(model: torch.nn.Module, path: str | Path, card_text: str) -> Path:
    """Write a model directory at `path`; it appears complete or not at all (an old one is replaced)."""
    from safetensors.torch import save_model as save_weights

    path = Path(path).expanduser()
    meta = {"format": FORMAT, "arch": model.arch, "config": model.config.to_dict(),
            "tokenizer": {"name": TOKENIZER, "vocab_size": VOCAB_SIZE}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as error:
        raise ModelError(f"{path}: cannot create the model directory ({error.strerror or error})") from None
    try:
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card_text if card_text.endswith("\n") else card_text + "\n", encoding="utf-8")
        save_weights(model, str(tmp / WEIGHTS))
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelError(f"{path}: cannot write the model directory ({error.strerror or error})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# -- finding and loading --------------------------------------------------------------------------------------

def _looks_like_path(name: str) -> bool:
    return "/" in name or os.sep in name or name.startswith((".", "~"))


def resolve(name_or_path: str | Path) -> Path:
    """The directory a model name or path refers to; ModelError saying where it looked."""
    text = str(name_or_path)
    if not text:
        raise ModelError("empty model name")
    if isinstance(name_or_path, Path) or _looks_like_path(text):
        path = Path(text).expanduser()
        if not path.is_dir():
            raise ModelError(f"{path}: no such model directory")
        return path
    candidates = [user_models_dir() / text, SHIPPED_DIR / text]
    for path in candidates:
        if path.is_dir():
            return path
    if text == "default":
        raise ModelError(f"no default model is shipped in this build ({SHIPPED_DIR / 'default'}): "
                         "pass --model PATH to a model directory")
    raise ModelError(f"no model named {text!r} (looked in {candidates[0]} and {candidates[1]}); "
                     "`recital models` lists them")


def read_config(path: Path) -> dict:
    """config.json of a model directory, checked; ModelError naming the file on any problem."""
    file = path / CONFIG
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: not a model directory (no {CONFIG})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelError(f"{file}: cannot read the model config ({error})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str) or not isinstance(
            meta.get("config"), dict):
        raise ModelError(f"{file}: malformed model config (needs \"arch\" and \"config\")")
    if meta.get("format", FORMAT) > FORMAT:
        raise ModelError(f"{file}: made by a newer Recital (format {meta['format']}); please update")
    tokenizer = meta.get("tokenizer", {})
    vocab = tokenizer.get("vocab_size") if isinstance(tokenizer, dict) else None
    if tokenizer.get("name", TOKENIZER) != TOKENIZER or vocab != VOCAB_SIZE:
        raise ModelError(f"{file}: made for tokenizer {tokenizer.get('name')!r} with {vocab} ids; this build "
                         f"reads {TOKENIZER!r} with {VOCAB_SIZE}")
    if meta["config"].get("vocab_size", VOCAB_SIZE) != VOCAB_SIZE:
        raise ModelError(f"{file}: model vocab_size {meta['config']['vocab_size']} does not match the "
                         f"tokenizer's {VOCAB_SIZE}")
    return meta


def load_model(name_or_path: str | Path = "default", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a directory (by name or path), weights loaded, in eval mode."""
    from safetensors.torch import load_model as load_weights

    path = resolve(name_or_path)
    meta = read_config(path)
    try:
        model = build_model(meta["arch"], meta["config"])
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from None
    weights = path / WEIGHTS
    if not weights.is_file():
        raise ModelError(f"{path}: no weights ({WEIGHTS} is missing)")
    try:
        load_weights(model, str(weights), strict=True)
    except Exception as error:  # safetensors raises several types for corrupt or mismatched files
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{weights}: weights do not fit the config ({reason[:200]})") from None
    return model.to(device).eval()


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    source: str  # "user" or "shipped"
    arch: str  # "?" when the directory is unreadable
    size_bytes: int  # of the weights file
    summary: str  # first line of the card, or the reason it cannot be read


def list_models() -> list[ModelInfo]:
    """Every model directory found by name: the user's first, then the shipped ones."""
    found = []
    for source, folder in (("user", user_models_dir()), ("shipped", SHIPPED_DIR)):
        if not folder.is_dir():
            continue
        for path in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                arch, summary = read_config(path)["arch"], _card_summary(path)
            except ModelError as error:
                arch, summary = "?", f"unreadable: {error}"
            weights = path / WEIGHTS
            size = weights.stat().st_size if weights.is_file() else 0
            found.append(ModelInfo(path.name, path, source, arch, size, summary))
    return found


def _card_summary(path: Path) -> str:
    try:
        lines = (path / CARD).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    text = [line.strip().lstrip("#").strip() for line in lines if line.strip()]
    return text[0] if text else ""
