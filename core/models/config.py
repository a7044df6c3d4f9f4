"""Model configs read from a model directory's config.json: every field known, typed and in range.

A config.json is user input: a hostile or damaged one must be refused with a one-line ModelError naming the
field before any model is built, because the sizes in it decide how much memory building takes (n_layers 1000 or
d_model 1e6 would otherwise allocate gigabytes first). The config classes call `field_problems` for the types
(int fields take ints only, never bools or floats such as 1e6; float fields take finite numbers) and
`range_problems` for the bounds below, then check what relates fields to each other.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from typing import TypeVar

from core.errors import ModelError

Config = TypeVar("Config")

# Upper bounds that no model Recital can train or run comes near, low enough that building one is never the
# first thing that fails (the weights file must hold every parameter anyway, and is checked before building).
MAX_WIDTH = 8192  # d_model
MAX_LAYERS = 256
MAX_HEADS = 256
MAX_MLP_RATIO = 64
MAX_VOCAB = 1 << 20
MAX_TOKENS = 1 << 20  # memory horizons and contexts, in tokens (about 7 hours of music)
MAX_SEGMENT = 16384  # tokens attended at once (DSMR segments, PerceiverS latents): masks grow as its square
MAX_ROTARY_BASE = 1e12
MAX_BUDGET_BYTES = 16 * 1024**3  # a config's default state budget per lane


def config_from_dict(cls: type[Config], data: dict, label: str) -> Config:
    """`cls(**data)`, or a ModelError naming the model (`label`) and what was wrong: unknown fields, bad values."""
    if not isinstance(data, dict):
        raise ModelError(f"bad {label} config: expected an object of fields, got {show(data)}")
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ModelError(f"bad {label} config: unknown fields {', '.join(show_key(k) for k in unknown)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise ModelError(f"bad {label} config: {error}") from None


def codec_problems(config: object) -> list[str]:
    """Check a config's `codec` (core/codecs.py) and give it the codec's vocab_size where it has none (None): a
    model's vocabulary is its codec's ids. One line per problem: an unknown codec, another vocab_size."""
    from core.codecs import CODECS

    codec = CODECS.get(config.codec)
    if codec is None:
        return [f"codec must be one of {', '.join(repr(n) for n in CODECS)}, got {show(config.codec)}"]
    if config.vocab_size is None:
        object.__setattr__(config, "vocab_size", codec.VOCAB_SIZE)  # frozen configs too
    elif config.vocab_size != codec.VOCAB_SIZE:
        return [f"vocab_size {show(config.vocab_size)} is not the {config.codec!r} codec's {codec.VOCAB_SIZE}"]
    return []


def field_problems(config: object) -> list[str]:
    """One line per field of a dataclass config whose value is not of its declared type."""
    hints = typing.get_type_hints(type(config))
    problems = []
    for f in fields(config):
        value = getattr(config, f.name)
        if not _fits(hints[f.name], value):
            problems.append(f"{f.name} must be {_describe(hints[f.name])}, got {show(value)}")
    return problems


def range_problems(config: object, limits: dict[str, tuple[float, float]]) -> list[str]:
    """One line per named (already type-checked) numeric field outside its inclusive [low, high]."""
    problems = []
    for name, (low, high) in limits.items():
        value = getattr(config, name)
        if not low <= value <= high:
            problems.append(f"{name} must be between {low:,} and {high:,}, got {show(value)}")
    return problems


def budget_problems(value: str) -> list[str]:
    """The problem with a config's default state budget per lane (a size like "8MB"), if any."""
    from core.budget import format_bytes, parse_budget
    from core.errors import BudgetError

    try:
        size = parse_budget(value)
    except BudgetError as error:
        return [f"default_budget: {error}"]
    if size > MAX_BUDGET_BYTES:
        return [f"default_budget must be at most {format_bytes(MAX_BUDGET_BYTES)}, got {show(value)}"]
    return []


def _fits(hint: object, value: object) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arm, value) for arm in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list | tuple) and all(_fits(item, v) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float) and _finite(value)
    if hint is str:
        return isinstance(value, str)
    return isinstance(value, hint)  # type: ignore[arg-type]


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def _describe(hint: object) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(arm) for arm in typing.get_args(hint))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0]).removeprefix('a ')}s"
    return {int: "a whole number", float: "a finite number", str: "a string", type(None): "null"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def show(value: object, limit: int = 40) -> str:
    """A short repr for messages: never the whole of a huge value (a 5,000-digit int cannot even be printed)."""
    if type(value) is int and value.bit_length() > 64:
        return f"a number of about {int(value.bit_length() * math.log10(2)) + 1:,} digits"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def show_key(key: str) -> str:
    """A field or tensor name for messages: as it is when it reads plainly, else a short repr."""
    return key if key.isprintable() and " " not in key and 0 < len(key) <= 60 else show(key)
