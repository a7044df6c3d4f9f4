"""The memory budget: parsing, the planner's invariant (state bytes <= budget), and the preallocated buffers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.budget import parse_budget
from core.errors import BudgetError
from core.models.dsmr.state import RecurrentState, minimum_budget, plan_horizons


@dataclass
class Shape:
    n_layers: int = 6
    d_model: int = 32
    segment_len: int = 16
    max_horizon: int = 256


@pytest.mark.parametrize("text, expected", [
    ("16MB", 16 * 1024**2), ("512KB", 512 * 1024), ("1.5GB", int(1.5 * 1024**3)), ("4096", 4096),
    (" 2 mb ", 2 * 1024**2), ("100B", 100), ("3MiB", 3 * 1024**2), (".5KB", 512), (7, 7),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("garbage", ["", "MB", "sixteen", "16XB", "-5MB", "1e3", "0", 0, -1, 1.5, None, True])
def test_parse_budget_rejects_garbage(garbage):
    with pytest.raises(BudgetError):
        parse_budget(garbage)


schedules = st.one_of(
    st.sampled_from(["full", "uniform", "two_scale"]),
    st.lists(st.integers(0, 400), min_size=6, max_size=6),
)


@settings(max_examples=300, deadline=None)
@given(budget=st.integers(1, 40_000_000), batch=st.integers(1, 8), schedule=schedules,
       n_long=st.integers(0, 6), ratio=st.floats(1.0, 16.0), element_size=st.sampled_from([2, 4]))
def test_plan_never_exceeds_budget(budget, batch, schedule, n_long, ratio, element_size):
    shape = Shape()
    params = {"n_long": n_long, "long_ratio": ratio} if schedule == "two_scale" else {}
    try:
        plan = plan_horizons(shape, budget, batch, schedule, element_size=element_size, **params)
    except BudgetError as error:
        # Refused only when the budget cannot hold the minimum, or a fixed schedule does not fit.
        assert budget < minimum_budget(shape, batch, element_size) or not isinstance(schedule, str) \
            or schedule == "full", str(error)
        return
    assert plan.nbytes <= budget
    assert len(plan.horizons) == shape.n_layers
    assert all(0 <= m <= shape.max_horizon or not isinstance(schedule, str) for m in plan.horizons)


def test_too_small_budget_names_the_minimum():
    shape = Shape()
    need = minimum_budget(shape, batch=2)
    with pytest.raises(BudgetError, match=f"at least .*{need} bytes"):
        plan_horizons(shape, need - 1, batch=2, schedule="two_scale")
    plan = plan_horizons(shape, need, batch=2, schedule="two_scale")
    assert plan.horizons == (0,) * 6 and plan.nbytes <= need


def test_two_scale_gives_lower_layers_the_long_horizon():
    plan = plan_horizons(Shape(), "1MB", 1, "two_scale", n_long=2, long_ratio=4)
    long, short = plan.horizons[0], plan.horizons[-1]
    assert plan.horizons == (long,) * 2 + (short,) * 4
    assert short > 0 and long == min(256, 4 * short)


def test_uniform_spreads_and_full_caps():
    uniform = plan_horizons(Shape(max_horizon=10_000), "1MB", 1, "uniform")
    assert len(set(uniform.horizons)) == 1 and uniform.horizons[0] > 100
    full = plan_horizons(Shape(), None, 1, "full")
    assert full.horizons == (256,) * 6 and full.budget is None
    with pytest.raises(BudgetError, match="needs"):
        plan_horizons(Shape(), full.nbytes - 1, 1, "full")


def test_bad_schedules():
    with pytest.raises(BudgetError, match="unknown memory schedule"):
        plan_horizons(Shape(), "1MB", 1, "spiral")
    with pytest.raises(BudgetError, match="6 horizons"):
        plan_horizons(Shape(), "1MB", 1, [1, 2, 3])
    with pytest.raises(BudgetError, match="needs a memory budget"):
        plan_horizons(Shape(), None, 1, "uniform")


def test_describe_is_one_line_with_bytes_and_seconds():
    plan = plan_horizons(Shape(segment_len=400, max_horizon=100_000), "64MB", 1, "two_scale", n_long=2)
    text = plan.describe()
    assert "\n" not in text and "two_scale" in text and "of 64.0 MB" in text and " s of music" in text
    assert f"{plan.horizons[0]}x2" in text


def test_state_is_preallocated_to_the_plan_and_resets_one_lane():
    plan = plan_horizons(Shape(), None, 3, [8, 8, 4, 4, 0, 0])
    state = RecurrentState(plan, n_heads=4)
    assert state.nbytes == plan.nbytes
    assert [k.shape for k in state.keys] == [(3, 4, m + 16, 8) for m in (8, 8, 4, 4, 0, 0)]
    state.valid[:] = True
    state.positions[:] = 50
    state.reset(1)
    assert state.valid[0].all() and not state.valid[1].any() and state.valid[2].all()
    assert state.positions.tolist() == [50, 0, 50]
    with pytest.raises(IndexError):
        state.reset(3)


def test_close_segment_keeps_the_last_tokens_of_each_layer():
    plan = plan_horizons(Shape(n_layers=2, segment_len=4), None, 1, [6, 2])
    state = RecurrentState(plan, n_heads=2)
    buffers = [k.data_ptr() for k in state.keys]
    for keys in state.keys:  # slot j holds the number j
        keys.copy_(torch.arange(keys.shape[2], dtype=torch.float32)[None, None, :, None].expand_as(keys))
    state.valid[:, 6:] = True
    state.fill = 4
    state.close_segment()
    assert state.keys[0][0, 0, :6, 0].tolist() == [4, 5, 6, 7, 8, 9]
    assert state.keys[1][0, 0, :2, 0].tolist() == [4, 5]
    assert state.valid[0].tolist() == [False, False, True, True, True, True] + [False] * 4
    assert state.fill == 0 and [k.data_ptr() for k in state.keys] == buffers
