"""The density ceiling (core/session.py `density_ceiling`, `Constraints.max_density`): a lane that runs away into
more notes than `runaway_ceiling` of its primer's notes/s is steered back under, and a lane below it is the
model's own, id for id."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from core import notecodec, tokenizer
from core.cli import main
from core.codecs import ONSET
from core.constraints import ConstraintError, Constraints
from core.errors import ModelError
from core.midi import Performance, read_performance, write_performance
from core.models.interface import DENOISE, LEFT_TO_RIGHT
from core.notecodec import FROM_PRIMER
from core.session import RUNAWAY_FACTOR, RUNAWAY_HEADROOM, GenerationSession, density_ceiling, runaway_ceiling
from tests.test_cli_generate import rejected
from tests.test_metrics import tiny_dsmr_of


def steady(notes: int = 20, every: float = 0.5) -> Performance:
    """`notes` notes, one every `every` seconds: a primer of a known notes/s."""
    onset = np.arange(notes) * every
    return Performance.from_notes(onset, onset + 0.4, 60 + np.arange(notes) % 7, np.full(notes, 80))


@pytest.fixture(scope="module")
def models(one_thread) -> dict:
    return {codec: tiny_dsmr_of(codec) for codec in ("performance", "notes")}


def lanes(model, primer, **settings) -> tuple[GenerationSession, list[list[int]]]:
    session = GenerationSession(model, primer, seconds=10, variations=3, seed=1, **settings)
    session.run()
    return session, session.lanes


# -- the ceiling a primer sets ------------------------------------------------------------------------------------

def test_the_ceiling_is_a_multiple_of_a_slow_primers_rate_and_a_headroom_over_a_fast_ones():
    knee = RUNAWAY_HEADROOM / (RUNAWAY_FACTOR - 1)  # where the two meet
    assert runaway_ceiling(knee) == pytest.approx(RUNAWAY_FACTOR * knee) == pytest.approx(knee + RUNAWAY_HEADROOM)
    assert runaway_ceiling(knee / 2) == pytest.approx(RUNAWAY_FACTOR * knee / 2)  # slow: the multiple is lower
    assert runaway_ceiling(knee * 3) == pytest.approx(knee * 3 + RUNAWAY_HEADROOM)  # fast: the headroom is
    assert runaway_ceiling(knee * 3) < RUNAWAY_FACTOR * knee * 3


def test_the_ceiling_follows_the_primers_recent_notes_per_second():
    left_to_right = SimpleNamespace(family=LEFT_TO_RIGHT)
    primer = steady(40, 0.25)  # 4 notes/s over its 10 s
    assert density_ceiling(FROM_PRIMER, left_to_right, primer, 10.0) == pytest.approx(runaway_ceiling(4.0))
    fast = steady(200, 0.05)  # 20 notes/s: the headroom, not the multiple
    assert density_ceiling(FROM_PRIMER, left_to_right, fast, 10.0) == pytest.approx(20.0 + RUNAWAY_HEADROOM)
    assert density_ceiling(FROM_PRIMER, left_to_right, None, 0.0) is None  # a new piece
    assert density_ceiling(FROM_PRIMER, left_to_right, steady(5), 2.5) is None  # too few notes to tell
    assert density_ceiling(FROM_PRIMER, SimpleNamespace(family=DENOISE), primer, 10.0) is None  # paced already
    assert density_ceiling(5.0, left_to_right, primer, 10.0) == 5.0
    assert density_ceiling(0, left_to_right, primer, 10.0) is None
    assert density_ceiling(FROM_PRIMER, left_to_right, steady(40, 0.01), 0.4) == 40.0  # within the range asked


def test_a_session_puts_the_ceiling_in_its_constraints_unless_a_density_is_asked(models):
    model = models["performance"]
    session = GenerationSession(model, steady(), seconds=5)
    assert session.constraints.max_density == pytest.approx(runaway_ceiling(20 / 9.9))  # over the primer's end
    assert session.constraints == Constraints(max_density=session.constraints.max_density)  # and nothing else
    assert session.constraints.describe().startswith(f"at most {runaway_ceiling(20 / 9.9):.2f} notes/s (steered down)")
    assert GenerationSession(model, steady(), seconds=5, max_density=0).constraints is None
    assert GenerationSession(model, None, seconds=5).constraints is None  # a new piece: nothing to be a multiple of
    asked = GenerationSession(model, steady(), seconds=5, constraints=Constraints(density=3.0))
    assert asked.constraints == Constraints(density=3.0)  # the composer's density steers instead
    keyed = GenerationSession(model, steady(), seconds=5, max_density=7.5,
                              constraints=Constraints.parse(range_="C3-C6"))
    assert (keyed.constraints.low, keyed.constraints.max_density) == (48, 7.5)


@pytest.mark.parametrize("value, message", [(100.0, "must be 0.25 to 40"), ("fast", "must be 0.25 to 40"),
                                            (0.1, "(0: no ceiling) or 'primer'")])
def test_a_bad_ceiling_is_one_error(models, value, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GenerationSession(models["performance"], steady(), seconds=5, max_density=value)


def test_constraints_check_and_describe_a_ceiling():
    with pytest.raises(ConstraintError, match="max density must be 0.25 to 40 notes per second, got 50"):
        Constraints(max_density=50.0)
    assert Constraints(max_density=8.0).describe() == "at most 8 notes/s (steered down)"
    assert Constraints(density=4.0, max_density=8.0).describe() == "density 4 notes/s (steered)"


# -- what the tracker does under it --------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", [tokenizer, notecodec])
def test_under_the_ceiling_no_bias_over_it_toward_time_and_back_to_none_after(codec):
    tracker = Constraints(max_density=8.0).tracker(1, np.array([1], dtype=np.int64), codec=codec)
    assert tracker.density_bias()[0] == 0 and (tracker.mask() == 0).all()
    tracker.read(np.array([codec.TIME_SHIFT + 99]))  # a silent second: a density would pull notes up, not this
    assert tracker.density_bias()[0] == 0 and (tracker.mask() == 0).all()
    note = [ONSET + 60] if codec is tokenizer else [ONSET + 60, notecodec.DURATION]
    for _ in range(30):  # thirty notes at once: far over the ceiling
        for token in note:
            tracker.read(np.array([token]))
    assert tracker.density_bias()[0] < 0
    mask = tracker.mask()
    assert mask[0, ONSET] < 0 < mask[0, codec.TIME_SHIFT]
    for _ in range(20):  # twenty silent seconds: the recent notes and the integral decay back
        tracker.read(np.array([codec.TIME_SHIFT + 99]))
    assert tracker.density_bias()[0] == 0 and (tracker.mask() == 0).all()


# -- what a model writes under it ----------------------------------------------------------------------------------

@pytest.mark.parametrize("codec", ["performance", "notes"])
def test_lanes_under_the_ceiling_are_the_models_own_and_a_low_one_thins_them(models, codec):
    model = models[codec]
    # a primer of 6 notes/s: its ceiling (11) is above what these lanes write in any stretch (after one of 2 notes/s,
    # a ceiling of 6 was above a lane's mean but not its busiest seconds, and steering it moved its ids)
    free_session, free = lanes(model, steady(60, 1 / 6), max_density=0)
    ceiling_session, under = lanes(model, steady(60, 1 / 6))  # the primer's ceiling, above what these lanes write
    assert ceiling_session.constraints.max_density > max(len(part) for part in free_session.new_parts()) / 10
    assert under == free
    low_session, low = lanes(model, steady(), max_density=1.0)
    assert sum(map(len, low_session.new_parts())) < sum(map(len, free_session.new_parts())) / 2
    assert low != free


def test_continue_takes_max_density_and_says_the_ceiling(tmp_path, capsys, models):
    from core.modeldir import save_model

    model_dir = save_model(models["notes"], tmp_path / "notes-model", "# Tiny\n\nRandom weights, for tests.\n")
    write_performance(steady(), tmp_path / "primer.mid")
    out = tmp_path / "cont.mid"
    arguments = ["continue", str(tmp_path / "primer.mid"), "--model", str(model_dir), "--seconds", "2", "--seed",
                 "1", "--no-adapt"]
    assert main([*arguments, "--out", str(out)]) == 0
    read_back = GenerationSession(models["notes"], read_performance(tmp_path / "primer.mid"), seconds=2)
    ceiling = read_back.constraints.max_density  # the primer as the command reads it: 20 notes over ~9.5 s
    assert ceiling == pytest.approx(runaway_ceiling(20 / 9.49), rel=0.01)
    assert f"constraints: at most {ceiling:.2f} notes/s (steered down)" in capsys.readouterr().out
    assert main([*arguments, "--out", str(tmp_path / "free.mid"), "--max-density", "0"]) == 0
    assert "constraints:" not in capsys.readouterr().out
    assert main([*arguments, "--out", str(tmp_path / "two.mid"), "--max-density", "2"]) == 0
    assert "constraints: at most 2 notes/s (steered down)" in capsys.readouterr().out


@pytest.mark.parametrize("value, message", [("fast", "--max-density"), ("0.1", "must be 0.25 to 40 notes per second")])
def test_a_bad_max_density_flag_is_one_line(tiny_model_dir, tmp_path, capsys, value, message):
    err = rejected(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"),
                    "--max-density", value], capsys)
    assert message in err
