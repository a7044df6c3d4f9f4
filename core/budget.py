"""Memory budgets, in one place: how one is read, written, defaulted and checked against this machine.

A budget is the bytes of recurrent state for the whole batch, every lane together: `recital generate --budget`,
the studio's slider and `model.plan(budget, batch)` all mean that, so the same budget shows the same numbers
everywhere. A model's config names its default for one lane (`default_budget`, a size like "8MB");
`default_budget(model, batch)` is the only place that turns it into bytes, so there is no other fallback.
"""

from __future__ import annotations

import os
import re

from core.errors import BudgetError

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}
_BUDGET = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*$")


def parse_budget(value: str | int) -> int:
    """'16MB', '512KB', '1.5GB', '1TB', '4096' or an int -> bytes. Units are binary (1 MB = 1024 * 1024 bytes).

    Any size the units can write is read (1TB and 1024GB alike); whether the machine holds the state it buys is
    the caller's check against the plan (a plan never uses more than its model can remember).
    """
    if isinstance(value, bool):
        raise BudgetError(f"memory budget must be a size like 16MB, not {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise BudgetError(f"memory budget must be positive, got {value} bytes")
        return value
    if not isinstance(value, str):
        raise BudgetError(f"memory budget must be a size like 16MB, not {value!r}")
    match = _BUDGET.match(value)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise BudgetError(f"cannot read memory budget {value!r}: use a size like 16MB, 512KB or 1.5GB")
    size = float(match.group(1)) * _UNITS[unit]
    if not size < 2**62:  # "999...9GB" reads as inf, which no int holds
        raise BudgetError(f"memory budget {value[:40]!r} is far too large (no machine holds 4 EB)")
    size = int(size)
    if size <= 0:
        raise BudgetError(f"memory budget must be positive, got {value!r}")
    return size


def format_bytes(size: int) -> str:
    """Bytes as the budget syntax writes them back (binary units), e.g. 12.3 MB."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def default_budget(model, batch: int = 1) -> int:
    """The model's own default for `batch` lanes: its config's budget per lane, once for each lane."""
    if batch < 1:
        raise BudgetError(f"batch must be at least 1, got {batch}")
    return parse_budget(model.config.default_budget) * batch


def resolve_budget(model, budget: int | str | None, batch: int = 1) -> int:
    """Bytes for the whole batch: the budget given (a size or bytes), or the model's default for every lane."""
    return default_budget(model, batch) if budget is None else parse_budget(budget)


def per_lane(budget: int, batch: int) -> int:
    """What one lane of a batch gets of a budget for all of them."""
    return budget // batch


class PlanCache:
    """The last plan made for each (model, budget, batch): a slider tick, its view and the request plan once."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._plan = None

    def plan(self, model, budget: int, batch: int):
        key = (id(model), budget, batch)
        if key != self._key:
            self._plan, self._key = None, None
            self._plan = model.plan(budget, batch)  # a BudgetError leaves the cache empty
            self._key = key
        return self._plan


def available_memory() -> int | None:
    """Bytes this machine can still give a process (Linux: MemAvailable), None when it cannot tell."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_state_fits(nbytes: int, asked: str) -> None:
    """Refuse a state this machine cannot hold, before allocating it (one line: what it needs, what there is).
    `asked` names what the user set that needs it, e.g. '--variations 4' or 'this budget'."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise BudgetError(f"{asked} needs {format_bytes(nbytes)} of state memory; this machine has "
                          f"{format_bytes(free)} available")
