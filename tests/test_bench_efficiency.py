"""bench/efficiency.py's core: a schedule trained from scratch through trainer.fine_tune, measured."""

from __future__ import annotations

import numpy as np
import pytest

from bench.efficiency import SCHEDULES, model_config, schedule_budgets, train_schedule
from core.errors import ModelError
from core.midi import Performance, write_performance

TINY = {"d_model": 16, "n_layers": 3, "n_heads": 2, "segment_len": 16, "max_horizon": 64, "n_long": 1}


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Six short random pieces (enough to hold some out), and a private corpus cache."""
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for i in range(6):
        onset = np.cumsum(rng.uniform(0.05, 0.3, 60))
        perf = Performance.from_notes(onset, onset + 0.2, rng.integers(40, 90, 60), rng.integers(30, 110, 60))
        write_performance(perf, pieces / f"piece_{i}.mid")
    return pieces


def test_budgets_put_two_scale_and_uniform_at_the_ratio_of_full():
    config = model_config("tiny", TINY)
    budgets = schedule_budgets(config, 0.41)
    assert budgets["two_scale"] == budgets["uniform"] == int(budgets["full"] * 0.41)
    with pytest.raises(ModelError):
        schedule_budgets(config, 1.5)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_train_schedule_reports_quality_memory_and_speed(folder, tmp_path, schedule):
    budgets = schedule_budgets(model_config("tiny", TINY), 0.41)
    run = train_schedule(schedule, budgets[schedule], folder, tmp_path / "out", size="tiny", overrides=TINY,
                         steps=4, batch=2, validations=2)
    assert run.schedule == schedule and run.steps == 4
    assert run.state_bytes <= budgets[schedule] and run.batch_state_bytes == 2 * run.state_bytes
    if schedule == "full":
        assert run.horizons == (64, 64, 64)
    else:  # two_scale: the lowest layer remembers more than the others; uniform: all alike
        assert (run.horizons[0] > run.horizons[1]) == (schedule == "two_scale")
    assert run.best_perplexity is not None and run.best_perplexity <= run.initial_perplexity
    assert run.tokens > 0 and 0 < run.train_wall and 0 < run.train_cpu and run.wall_rate > 0
    assert (tmp_path / "out" / "config.json").exists()


def test_unknown_schedule_is_a_model_error(folder, tmp_path):
    with pytest.raises(ModelError):
        train_schedule("sideways", 1 << 20, folder, tmp_path / "out", size="tiny", overrides=TINY, steps=1)
