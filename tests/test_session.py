"""core/session.py: one generation session for every front end; arrays at any batch, the primer read once,
the token cap, the live notes the same as the pieces written, a stop from another thread, the memory check."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from core import budget as budgets
from core.codecs import codec_of
from core.errors import BudgetError, ModelError
from core.generate import SamplingConfig
from core.midi import write_performance
from core.modeldir import load_model
from core.session import Finished, GenerationSession, Token, read_primer
from core.tokenizer import BOS, EOS, PAD


@pytest.fixture
def model(tiny_model_dir, one_thread):
    return load_model(tiny_model_dir)


@pytest.fixture(params=["performance", "notes"])
def any_model(request, tiny_model_dir, one_thread):
    """The tiny model of each codec: the event codec's from its directory, a notes DSMR built here."""
    if request.param == "performance":
        return load_model(tiny_model_dir)
    import torch

    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    return DSMR(DSMRConfig(codec="notes", d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=64))


def notes(perf) -> list[tuple]:
    return sorted(zip(np.round(perf.onset, 6), np.round(perf.offset, 6), perf.pitch, perf.velocity, strict=True))


@pytest.mark.parametrize("variations", [1, 3])
def test_every_step_is_an_array_per_lane_and_the_last_event_says_why(any_model, variations):
    session = GenerationSession(any_model, seconds=2, variations=variations, seed=3)
    events = list(session)
    *steps, last = events
    assert steps and all(isinstance(e, Token) for e in steps) and isinstance(last, Finished)
    for index, step in enumerate(steps):
        assert step.step == index and step.ids.shape == (variations,) and step.ids.dtype == np.int64
        assert len(step.notes) == variations
    assert last.reason in ("done", "max_tokens") and last.steps == len(steps) == session.steps
    assert len(session.pieces()) == variations and session.state.batch == variations


def test_a_primer_is_the_same_read_from_a_file_a_performance_or_ids(any_model, scale, tmp_path):
    codec = codec_of(any_model)
    path = tmp_path / "scale.mid"
    write_performance(scale, path)
    ids = codec.encode(scale, eos=False)
    for primer in (path, str(path), scale, ids, ids.tolist()):
        assert np.array_equal(read_primer(primer, codec), ids)
    session = GenerationSession(any_model, scale, seconds=1)
    assert np.array_equal(session.primer, ids)  # encoded by the model's own codec
    assert session.primer[0] == BOS and EOS not in session.primer and session.primer.dtype == np.uint16
    assert session.start_time == pytest.approx(primer_end(codec, scale), abs=0.011)
    with pytest.raises(ModelError, match="one piece"):
        GenerationSession(any_model, [BOS, 5, EOS, 6])


def primer_end(codec, perf) -> float:
    """Where a continuation begins: the event codec's clock ends at the last release, the notes codec's at the
    last onset (a note's length is told where it starts, so the next notes may come while it sounds)."""
    return perf.duration if codec.NAME == "performance" else float(perf.onset.max())


def test_pieces_hold_the_primer_then_what_the_live_notes_showed(any_model, scale):
    model, decode = any_model, codec_of(any_model).decode
    session = GenerationSession(model, scale, seconds=3, variations=2, seed=5, sampling=SamplingConfig(top_p=0.9))
    live = [[], []]
    for event in session:
        for lane, events in enumerate(event.notes):
            live[lane] += [(round(e.onset, 6), round(e.time, 6), e.pitch, e.velocity) for e in events
                           if e.kind == "off"]
    before = session.primer_piece()
    assert notes(before) == notes(decode(session.primer))
    for lane, (piece, part) in enumerate(zip(session.pieces(), session.new_parts(), strict=True)):
        assert notes(piece) == notes(decode(np.concatenate([session.primer, session.lanes[lane]])))
        assert sorted(live[lane]) == notes(part)  # velocities carried on from the primer, as decoded
        assert len(piece) == len(before) + len(part)
        assert PAD not in session.lanes[lane]


def test_the_token_cap_follows_the_seconds_asked_and_stops_a_runaway(model):
    assert GenerationSession(model, seconds=2).max_tokens == 2 * 150 + 64
    assert GenerationSession(model).max_tokens is None  # no seconds: the caller stops it
    session = GenerationSession(model, seconds=1000, max_tokens=7)
    assert session.run().reason == "max_tokens" and session.steps == 7


def test_a_stop_from_another_thread_ends_it_after_the_step_and_keeps_what_was_written(model):
    session = GenerationSession(model, seconds=60, seed=1)
    events = iter(session)
    next(events)
    # joined before the next step: left to race, the stop thread lost to the piece's own end (60 s of music take
    # about 600 steps, a quarter of a second) whenever a busy machine scheduled it late
    stopper = threading.Thread(target=session.stop)
    stopper.start()
    stopper.join()
    rest = list(events)
    assert rest[-1].reason == "stopped" and session.stopping
    assert session.steps < 60 * 150 and len(session.lanes[0]) >= 1
    with pytest.raises(ModelError, match="runs once"):
        list(session)


def test_a_start_past_the_primer_continues_after_silence(any_model, scale):
    model, codec = any_model, codec_of(any_model)
    session = GenerationSession(model, scale, seconds=1, start=5.0)
    assert session.start_time == pytest.approx(5.0) and codec.ids_seconds(session.primer) == pytest.approx(5.0)
    assert notes(codec.decode(session.primer)) == notes(codec.decode(codec.encode(scale)))  # silence, no notes
    assert GenerationSession(model, scale, start=0.5).start_time == pytest.approx(primer_end(codec, scale),
                                                                                 abs=0.011)


def test_the_budget_is_the_models_default_per_lane_unless_given_and_a_plan_given_is_used(model):
    per_lane = budgets.parse_budget(model.config.default_budget)
    assert GenerationSession(model, variations=3).budget == 3 * per_lane
    assert GenerationSession(model, budget="1MB", variations=3).budget == 1024 * 1024
    plan = model.plan(2 * per_lane, 2)
    session = GenerationSession(model, budget=2 * per_lane, variations=2, plan=plan)
    assert session.plan is plan and session.state.nbytes == plan.nbytes <= 2 * per_lane


def test_a_state_the_machine_cannot_hold_is_refused_before_it_is_made(model, monkeypatch):
    monkeypatch.setattr(budgets, "available_memory", lambda: 1024)
    with pytest.raises(BudgetError, match="this budget for 4 variations needs .* this machine has 1.0 KB"):
        GenerationSession(model, variations=4)
    with pytest.raises(ModelError, match="variations"):
        GenerationSession(model, variations=0)


def test_a_denoiser_refuses_adapting_and_counts_the_windows_and_passes_it_fills(one_thread, monkeypatch):
    """Adapting to a primer is left to right: asked of a denoiser, it is refused, never skipped. What the denoiser
    did is counted as it is: the windows `denoise` filled and the passes (forward calls) they took."""
    from core.adapt import AdaptSettings
    from tests.test_smdim import tiny

    model = tiny(window=32)  # a short window: several windows for a few seconds
    with pytest.raises(ModelError, match="^adapting to the primer is for left-to-right models; a smdim model fills"):
        GenerationSession(model, np.array([BOS, 300, 100, 200]), seconds=2.0, adapt=AdaptSettings(min_seconds=0))
    calls = {"denoise": 0, "forward": 0}
    for name in calls:
        original = getattr(type(model), name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(model), name, spy)
    session = GenerationSession(model, None, seconds=6.0, variations=2, seed=1)
    assert (session.windows, session.passes) == (0, 0)
    session.run()
    assert session.windows == calls["denoise"] >= 2 and session.passes == calls["forward"]
    assert session.windows <= session.passes <= model.config.steps * session.windows
