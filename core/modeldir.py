"""Model directories: config.json + model.safetensors + card.md, saved atomically, found by name or path.

    config.json        {"format": 1, "arch": "dsmr", "config": {...model config, schedule included...},
                        "tokenizer": {"name": "notes", "vocab_size": 327}}  (the codec: core/codecs.py)
    model.safetensors  weights only (loading never unpickles code)
    card.md            what it was trained on, how long, held-out perplexity

A name is looked up among the user's models (platformdirs user_data_dir("recital")/models, or
$RECITAL_DATA_DIR/models) and then the shipped ones (assets/models/<name>, package data of `recital_assets`;
"default" is the shipped DSMR model).
Anything that looks like a path (has a slash, starts with . or ~) is a path.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from core.codecs import CODECS, DEFAULT, codec_of
from core.errors import ModelError
from core.models.config import show, show_key

FORMAT = 1
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



def user_models_dir() -> Path:
    """Where fine-tuned models are saved and found by name."""
    base = os.environ.get("RECITAL_DATA_DIR") or platformdirs.user_data_dir("recital")
    return Path(base) / "models"


def architecture(arch: str):
    """(model class, config class) of an arch name, from the registry; ModelError if unknown or not in this build."""
    from core.models import registry

    entry = registry.get(arch)
    return entry.model_class, entry.config_class


def build_model(arch: str, config: dict) -> torch.nn.Module:
    """A freshly initialised model of `arch` from its config dict."""
    from core.models import registry

    return registry.build(arch, config)


# -- saving ---------------------------------------------------------------------------------------------------

def save_model(model: torch.nn.Module, path: str | Path, card_text: str) -> Path:
    """Write a model directory at `path`; it appears complete or not at all (an old one is replaced)."""
    from safetensors.torch import save_model as save_weights

    path = Path(path).expanduser()
    meta = {"format": FORMAT, "arch": model.arch, "config": model.config.to_dict(),
            "tokenizer": {"name": codec_of(model).NAME, "vocab_size": model.config.vocab_size}}
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
    """config.json of a model directory, checked down to every model config field; ModelError naming the file."""
    file = path / CONFIG
    try:
        meta = _read_json(file, CONFIG_LIMIT, "model config")
    except FileNotFoundError:
        raise ModelError(f"{path}: not a model directory (no {CONFIG})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("arch"), str) or not isinstance(
            meta.get("config"), dict):
        raise ModelError(f"{file}: malformed model config (needs \"arch\" and \"config\")")
    version = meta.get("format", FORMAT)
    if type(version) is not int or version < 1:
        raise ModelError(f"{file}: \"format\" must be a whole number from 1, got {show(version)}")
    if version > FORMAT:
        raise ModelError(f"{file}: made by a newer Recital (format {show(version)}); please update")
    tokenizer = meta.get("tokenizer", {})
    if not isinstance(tokenizer, dict):
        raise ModelError(f"{file}: \"tokenizer\" must be an object with a name and a vocab_size, got "
                         f"{show(tokenizer)}")
    name, vocab = tokenizer.get("name", DEFAULT), tokenizer.get("vocab_size")
    codec = CODECS.get(name) if isinstance(name, str) else None
    if codec is None or type(vocab) is not int or vocab != codec.VOCAB_SIZE:
        known = ", ".join(f"{n!r} with {c.VOCAB_SIZE}" for n, c in CODECS.items())
        raise ModelError(f"{file}: made for tokenizer {show(name)} with {show(vocab)} ids; this build reads {known}")
    config_codec = meta["config"].get("codec", DEFAULT)  # a config from before the field: the event codec
    if config_codec != name:
        raise ModelError(f"{file}: the model config says codec {show(config_codec)} but \"tokenizer\" says {show(name)}")
    if meta["config"].get("vocab_size", codec.VOCAB_SIZE) != codec.VOCAB_SIZE:
        raise ModelError(f"{file}: model vocab_size {show(meta['config']['vocab_size'])} does not match the "
                         f"tokenizer's {codec.VOCAB_SIZE}")
    try:
        architecture(meta["arch"])[1].from_dict(meta["config"])  # every field typed and in range
    except ModelError as error:
        raise ModelError(f"{file}: {error}") from None
    return meta


def load_model(name_or_path: str | Path = "default", device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model of a directory (by name or path), weights loaded, in eval mode.

    Nothing is allocated for the model until its config is valid and the weights file's header lists exactly
    the tensors that config implies (names, shapes, byte sizes) with all their bytes present: a config cannot
    make loading take more memory than its weights file holds.
    """
    from safetensors.torch import load_model as load_weights

    path = resolve(name_or_path)
    meta = read_config(path)
    model_class, config_class = architecture(meta["arch"])
    config = config_class.from_dict(meta["config"])
    weights = path / WEIGHTS
    with torch.device("meta"):  # shapes only, no memory
        skeleton = model_class(config)
    check_weights(weights, skeleton)
    model = model_class(config)
    try:
        load_weights(model, str(weights), strict=True)
    except Exception as error:  # the header was checked: what is left is damage safetensors found in the data
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{weights}: is damaged ({reason[:200]})") from None
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise ModelError(f"{weights}: {name} contains NaN/inf values (damaged?)")
    return model.to(device).eval()


# -- the weights file's header against the config --------------------------------------------------------------

# safetensors dtypes a float parameter may be stored in, with their sizes in bytes (loading converts them)
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on a header


def check_weights(file: Path, skeleton: torch.nn.Module) -> None:
    """ModelError unless `file` is a complete safetensors file of exactly `skeleton`'s tensors (a model built on
    the meta device: its shapes, no data). "is damaged" for a broken file, "do not fit the config" for another
    model's weights."""
    try:
        fd, size = _open_regular(file, "weights file")
    except FileNotFoundError:
        raise ModelError(f"{file.parent}: no weights ({WEIGHTS} is missing)") from None
    with open(fd, "rb") as handle:
        if size < 8:
            raise ModelError(f"{file}: is damaged (truncated: {size:,} bytes, not even its header's length)")
        length = int.from_bytes(handle.read(8), "little")
        if length > min(HEADER_LIMIT, size - 8):
            raise ModelError(f"{file}: is damaged (its header claims {length:,} bytes of a {size:,}-byte file)")
        raw = handle.read(length)
    try:
        header = _parse_json(raw.decode("utf-8"))
    except (_Unreadable, UnicodeDecodeError) as error:
        raise ModelError(f"{file}: is damaged (unreadable header: {error})") from None
    if not isinstance(header, dict):
        raise ModelError(f"{file}: is damaged (its header is not an object)")
    header.pop("__metadata__", None)
    end = 0
    for name, entry in header.items():
        end = max(end, _tensor_end(file, name, entry))
    if size != 8 + length + end:
        raise ModelError(f"{file}: is damaged (truncated: {size:,} of {8 + length + end:,} bytes)"
                         if size < 8 + length + end else
                         f"{file}: is damaged ({size - 8 - length - end:,} bytes past its last tensor)")
    problem = _misfit(header, skeleton)
    if problem:
        count = sum(p.numel() for p in skeleton.parameters())
        raise ModelError(f"{file}: weights do not fit the config ({problem}; the config needs {count:,} "
                         "parameters)")


def _tensor_end(file: Path, name: str, entry: object) -> int:
    """Where a header entry's bytes end, once its fields are checked against each other."""
    if not isinstance(entry, dict) or entry.get("dtype") not in FLOAT_DTYPES \
            or not isinstance(entry.get("shape"), list) or not isinstance(entry.get("data_offsets"), list) \
            or any(type(n) is not int or n < 0 for n in [*entry["shape"], *entry["data_offsets"]]) \
            or len(entry["data_offsets"]) != 2 or len(entry["shape"]) > 8:
        raise ModelError(f"{file}: is damaged (the header entry of tensor {show_key(name)} is malformed: "
                         f"{show(entry, 80)})")
    begin, end = entry["data_offsets"]
    numel = math.prod(entry["shape"])
    if end - begin != numel * FLOAT_DTYPES[entry["dtype"]]:
        raise ModelError(f"{file}: is damaged (tensor {show_key(name)} of shape {entry['shape']} has "
                         f"{end - begin:,} bytes)")
    return end


def _misfit(header: dict, skeleton: torch.nn.Module) -> str:
    """What differs between a checked header and the tensors of `skeleton` ('' if nothing). Tied tensors (one
    parameter under two names) are saved once, under either name."""
    groups: dict[int, list[str]] = {}
    tensors = skeleton.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        groups.setdefault(id(tensor), []).append(name)
    missing, known = [], set()
    for names in groups.values():
        known.update(names)
        stored = [n for n in names if n in header]
        if not stored:
            missing.append(names[0])
        for name in stored:
            want, got = list(tensors[name].shape), header[name]["shape"]
            if want != got:
                return f"{name} is {_shape(got)} in the file, the config needs {_shape(want)}"
    unexpected = sorted(set(header) - known)
    if missing or unexpected:
        parts = [f"{what} {', '.join(show_key(n) for n in names[:3])}{' ...' if len(names) > 3 else ''}"
                 for what, names in (("missing", missing), ("unexpected", unexpected)) if names]
        return "; ".join(parts)
    return ""


def _shape(shape: list[int]) -> str:
    return "x".join(str(n) for n in shape) or "a scalar"


# -- reading a directory's files: regular files only, bounded, JSON without surprises ---------------------------

CONFIG_LIMIT = 1024 * 1024
CARD_LIMIT = 1024 * 1024
_KINDS = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device",
          stat.S_IFDIR: "a directory", stat.S_IFSOCK: "a socket"}


class _Unreadable(Exception):
    """JSON that parses only into something Recital must not use; the message says why."""


def _open_regular(file: Path, what: str) -> tuple[int, int]:
    """An open descriptor of `file` and its size. Anything but a regular file (after symlinks) is a ModelError:
    a named pipe would block a read forever, /dev/zero never ends. FileNotFoundError is left to the caller."""
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK)  # a named pipe opens at once instead of waiting
    except FileNotFoundError:
        raise
    except OSError as error:
        raise ModelError(f"{file}: cannot read the {what} ({error.strerror or error})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise ModelError(f"{file}: cannot read the {what} (it is {kind}, not a file)")
    return fd, info.st_size


def _read_bytes(file: Path, limit: int, what: str) -> bytes:
    """At most `limit` bytes of a regular file, or a ModelError saying it is larger."""
    fd, size = _open_regular(file, what)
    with open(fd, "rb") as handle:
        data = handle.read(limit + 1) if size <= limit else b""
    if size > limit or len(data) > limit:
        raise ModelError(f"{file}: cannot read the {what} (over {limit:,} bytes: {max(size, len(data)):,})")
    return data


def _read_json(file: Path, limit: int, what: str) -> object:
    data = _read_bytes(file, limit, what)
    try:
        return _parse_json(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise ModelError(f"{file}: cannot read the {what} (not UTF-8 text at byte {error.start})") from None
    except _Unreadable as error:
        raise ModelError(f"{file}: cannot read the {what} ({error})") from None


def _parse_json(text: str) -> object:
    """JSON with only finite numbers; _Unreadable (not RecursionError, not ValueError) for anything else."""
    def refuse(token: str) -> float:
        raise _Unreadable(f"{token[:24]} is not a finite number")

    def number(token: str) -> float:
        value = float(token)
        return value if math.isfinite(value) else refuse(token)

    try:
        return json.loads(text, parse_constant=refuse, parse_float=number)
    except RecursionError:
        raise _Unreadable("nested too deeply") from None
    except json.JSONDecodeError as error:
        raise _Unreadable(f"not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None
    except ValueError:  # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits
        raise _Unreadable(f"an integer of more than {sys.get_int_max_str_digits():,} digits") from None


def read_card(path: Path) -> str:
    """card.md of a model directory ('' when there is none); ModelError when it is not a readable text file."""
    try:
        return _read_bytes(path / CARD, CARD_LIMIT, "model card").decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


# -- listing --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: Path
    source: str  # "user" or "shipped"
    arch: str  # "?" when the directory is unreadable
    size_bytes: int  # of the weights file
    summary: str  # first line of the card, or the reason it cannot be read


def list_models() -> list[ModelInfo]:
    """Every model directory found by name: the user's first, then the shipped ones. A directory that cannot be
    read is listed with the reason; it never stops the listing."""
    found = []
    for source, folder in (("user", user_models_dir()), ("shipped", SHIPPED_DIR)):
        try:
            paths = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir()
                           and (os.path.lexists(p / CONFIG) or os.path.lexists(p / WEIGHTS)))  # not a run's folder
        except OSError:  # no such folder (the usual case for the user's), or not a readable one
            continue
        for path in paths:
            try:
                arch, summary = read_config(path)["arch"], _card_summary(read_card(path))
            except ModelError as error:
                arch, summary = "?", f"unreadable: {error}"
            found.append(ModelInfo(path.name, path, source, arch, _file_size(path / WEIGHTS), summary))
    return found


def _card_summary(card: str) -> str:
    text = [line.strip().lstrip("#").strip() for line in card.splitlines() if line.strip()]
    return text[0][:200] if text else ""


def _file_size(file: Path) -> int:
    """Size of a regular file, 0 for anything else (missing, a pipe, a device)."""
    try:
        info = os.stat(file)
    except OSError:
        return 0
    return info.st_size if stat.S_ISREG(info.st_mode) else 0
