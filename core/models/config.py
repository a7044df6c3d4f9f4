"""Model configs read from a model directory's config.json: every field known, every value accepted by the class."""

from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from core.errors import ModelError

Config = TypeVar("Config")


def config_from_dict(cls: type[Config], data: dict, label: str) -> Config:
    """`cls(**data)`, or a ModelError naming the model (`label`) and what was wrong: unknown fields, bad values."""
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise ModelError(f"bad {label} config: unknown fields {', '.join(unknown)}")
    try:
        return cls(**data)
    except TypeError as error:
        raise ModelError(f"bad {label} config: {error}") from None
