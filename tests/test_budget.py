"""core/budget.py: sizes read and written back, the model's default as the only default, one plan per budget."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from core import budget as budgets
from core.budget import (
    PlanCache,
    check_state_fits,
    default_budget,
    format_bytes,
    parse_budget,
    resolve_budget,
)
from core.errors import BudgetError
from core.modeldir import load_model

MB = 1024 * 1024


@pytest.mark.parametrize("text, expected", [("16MB", 16 * MB), ("512kb", 512 * 1024), ("1.5GB", 3 * 1024**3 // 2),
                                            ("4096", 4096), (" 2 MiB ", 2 * MB), (123, 123), ("1TB", 1024**4)])
def test_sizes_are_read_in_binary_units(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("bad", ["", "MB", "-1MB", "0", "16 parsecs", True, 0, -5, 1.5, "9" * 400 + "GB"])
def test_bad_sizes_are_refused_in_one_line(bad):
    with pytest.raises(BudgetError) as error:
        parse_budget(bad)
    assert "\n" not in str(error.value)


def test_sizes_are_written_back_as_the_syntax_reads_them():
    assert [format_bytes(n) for n in (12, 2048, 12 * MB + MB // 10, 3 * 1024**3)] == [
        "12 B", "2.0 KB", "12.1 MB", "3.0 GB"]
    assert parse_budget(format_bytes(8 * MB).replace(" ", "")) == 8 * MB


def test_the_default_is_the_models_for_each_lane_and_nowhere_else():
    model = SimpleNamespace(config=SimpleNamespace(default_budget="3MB"))
    assert default_budget(model) == 3 * MB and default_budget(model, 4) == 12 * MB
    assert resolve_budget(model, None, 4) == 12 * MB  # no budget: every lane gets the model's default
    assert resolve_budget(model, "5MB", 4) == 5 * MB  # a budget given is for all lanes together
    with pytest.raises(BudgetError, match="batch"):
        default_budget(model, 0)


def test_a_budget_plans_once_until_it_changes(tiny_model_dir):
    model = load_model(tiny_model_dir)
    calls = []
    plan = model.plan
    model.plan = lambda size, batch: calls.append((size, batch)) or plan(size, batch)
    cache = PlanCache()
    first = cache.plan(model, 2 * MB, 2)
    assert cache.plan(model, 2 * MB, 2) is first and calls == [(2 * MB, 2)]
    cache.plan(model, 2 * MB, 3)
    cache.plan(model, 4 * MB, 3)
    assert len(calls) == 3
    with pytest.raises(BudgetError):
        cache.plan(model, 1024, 1)  # too small: refused, and nothing stale is kept
    assert cache.plan(model, 4 * MB, 3).batch == 3 and len(calls) == 5


def test_a_state_the_machine_cannot_hold_is_refused_with_both_numbers(monkeypatch):
    monkeypatch.setattr(budgets, "available_memory", lambda: MB)
    check_state_fits(MB // 2, "this budget")
    with pytest.raises(BudgetError, match=r"^--variations 9 needs 2\.0 MB of state memory; this machine has 1\.0 MB"):
        check_state_fits(2 * MB, "--variations 9")
    monkeypatch.setattr(budgets, "available_memory", lambda: None)  # cannot tell: no refusal
    check_state_fits(2**50, "this budget")
