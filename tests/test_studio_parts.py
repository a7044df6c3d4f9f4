"""Studio parts without a window: the budget slider's scale, the generation request, settings, drag files,
the document's undo, and the guard that keeps None alive under PySide6 on Python 3.11."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import sys  # noqa: E402
import tempfile  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from core.budget import PlanCache  # noqa: E402
from core.errors import MidiError  # noqa: E402
from core.midi import Performance, read_performance  # noqa: E402
from core.modeldir import load_model  # noqa: E402
from core.tokenizer import TIME_SHIFT, Decoder, silence_ids  # noqa: E402
from studio.budget import budget_view, bytes_to_slider, slider_to_bytes  # noqa: E402
from studio.document import Document, Piece  # noqa: E402
from studio.dragout import drag_file, mime_for  # noqa: E402
from studio.generation import GenerateRequest, session_for  # noqa: E402
from studio.settings import Settings  # noqa: E402


def test_slider_scale_is_logarithmic_and_round_trips():
    assert slider_to_bytes(0) == 64 * 1024
    assert slider_to_bytes(bytes_to_slider(32 * 1024 * 1024)) == 32 * 1024 * 1024
    assert slider_to_bytes(8) == 2 * slider_to_bytes(0)  # 8 steps per doubling
    assert bytes_to_slider(1) == 0 and bytes_to_slider(1 << 50) == bytes_to_slider(4 << 30)


def test_budget_view_for_dsmr_and_a_budget_too_small():
    from core.models.dsmr import DSMR, DSMRConfig

    model = DSMR(DSMRConfig(d_model=16, n_layers=3, n_heads=2, segment_len=512, max_horizon=4096, n_long=1))
    small = budget_view(model, 64 * 1024)
    assert small.error and "too small" in small.error and not small.bars
    view = budget_view(model, 1024 * 1024)
    assert [bar.label for bar in view.bars] == ["layer 1", "layer 2", "layer 3"]
    assert view.bars[0].tokens > view.bars[1].tokens == view.bars[2].tokens  # two-scale
    assert view.state_bytes <= 1024 * 1024 and "remembers" in view.headline
    assert budget_view(model, 2 * 1024 * 1024).bars[1].tokens > view.bars[1].tokens


def test_budget_view_says_when_the_model_can_use_no_more_memory():
    from core.models.dsmr import DSMR, DSMRConfig

    config = dict(d_model=16, n_layers=3, n_heads=2, segment_len=512, max_horizon=4096, n_long=1)
    capped = DSMR(DSMRConfig(**config, trained_horizons=[600, 150, 150]))
    view = budget_view(capped, 8 * 1024 * 1024)
    assert [bar.tokens for bar in view.bars] == [1112, 662, 662] and view.bars[0].full == 1112
    assert "trained with at most 600 tokens" in view.detail and "all this model can use" in view.headline
    below = budget_view(capped, 256 * 1024)  # below the cap: the budget decides
    assert [bar.tokens for bar in below.bars] == [840, 594, 594] and "trained with" not in below.detail
    assert "trained with" not in budget_view(DSMR(DSMRConfig(**config)), 8 * 1024 * 1024).detail
    planned = []
    plan = capped.plan
    capped.plan = lambda *args, **kwargs: planned.append(args) or plan(*args, **kwargs)
    cache = PlanCache()
    budget_view(capped, 256 * 1024, 1, cache)  # below the cap: one plan, no note asked of the model
    assert budget_view(capped, 256 * 1024, 1, cache) == below and len(planned) == 1


def test_budget_view_for_perceivers_is_its_context():
    from core.models.perceivers import PerceiverS, PerceiverSConfig

    model = PerceiverS(PerceiverSConfig(d_model=16, n_layers=1, n_heads=2, context=1024, latents=16, scale=32))
    small, large = budget_view(model, 96 * 1024), budget_view(model, 4 * 1024 * 1024)
    assert [bar.label for bar in large.bars] == ["context"] and large.bars[0].tokens == 1024
    assert small.bars[0].tokens < large.bars[0].tokens


def test_silence_ids_move_the_clock(scale):
    decoder = Decoder()
    for token in silence_ids(2.37):
        decoder.feed(token)
    assert decoder.time == pytest.approx(2.37)
    assert all(TIME_SHIFT <= t < TIME_SHIFT + 100 for t in silence_ids(2.37))


def test_a_request_continues_after_the_playhead(tiny_model_dir, scale):
    model = load_model(tiny_model_dir)
    piece = Piece(scale, Performance.empty())
    from_end = session_for(GenerateRequest(piece, None, False, seconds=3, variations=2), model)
    assert from_end.start_time == pytest.approx(scale.duration, abs=0.011)
    assert from_end.plan.batch == 2 and from_end.max_tokens >= 3 * 100
    later = session_for(GenerateRequest(piece, 5.0, False), model)
    assert later.start_time == pytest.approx(5.0)
    new = session_for(GenerateRequest(piece, 5.0, True), model)
    assert new.primer.tolist() == [1] and new.start_time == 0.0  # BOS only


def test_a_request_without_a_budget_gives_every_take_the_models_default(tiny_model_dir):
    """It used to plan the default of one take for all of them together (a quarter each for 4 takes)."""
    model = load_model(tiny_model_dir)
    session = session_for(GenerateRequest(Piece.empty(), None, True, seconds=1, variations=4), model)
    assert session.plan.horizons == model.plan(None, 1).horizons and session.plan.batch == 4


def test_a_request_uses_the_sliders_plan(tiny_model_dir):
    model = load_model(tiny_model_dir)
    plan = model.plan(1024 * 1024, 2)
    request = GenerateRequest(Piece.empty(), None, True, seconds=1, variations=2, budget=1024 * 1024, plan=plan)
    assert session_for(request, model).plan is plan


def test_piece_before_and_without(scale):
    piece = Piece(scale, scale.shifted(2.0))
    cut = piece.before(1.0)
    assert len(cut.primer) == 4 and len(cut.generated) == 0
    assert len(piece.without([0, 1], [7])) == len(piece) - 3
    assert piece.duration == pytest.approx(scale.duration + 2.0)


def test_document_undo_and_clean_state(qtbot, scale, tmp_path):
    doc = Document()
    doc.replace(Piece(scale, Performance.empty()))
    assert not doc.modified
    doc.apply(Piece(scale, scale.shifted(3.0)), "Continue")
    assert doc.modified and len(doc.piece.generated) == len(scale)
    doc.undo_stack.undo()
    assert not doc.modified and len(doc.piece.generated) == 0
    doc.undo_stack.redo()
    doc.save(tmp_path / "x.mid")
    assert not doc.modified and len(read_performance(tmp_path / "x.mid")) == 2 * len(scale)


def test_settings_survive_a_damaged_file(tmp_path):
    path = tmp_path / "studio.json"
    Settings(budget_mb=12.5, output="virtual").save(path)
    assert Settings.load(path).budget_mb == 12.5 and Settings.load(path).output == "virtual"
    path.write_text('{"budget_mb": "lots", "temperature": 0.7, "seconds": 30}')
    loaded = Settings.load(path)
    assert loaded.budget_mb == Settings().budget_mb and loaded.temperature == 0.7 and loaded.seconds == 30
    path.write_text("not json")
    assert Settings.load(path) == Settings()


def test_drag_file_writes_the_part(scale, tmp_path, monkeypatch):
    # the drag folder lies in the temp folder, shared by every process of the machine: this test's own
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    path = drag_file(scale, "my piece")
    assert path.parent == tmp_path / "recital-drag"
    assert path.name == "my piece.mid" and len(read_performance(path)) == len(scale)
    assert mime_for(path).urls()[0].toLocalFile() == str(path)
    with pytest.raises(MidiError, match="nothing to drag"):
        drag_file(Performance.empty(), "empty")


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="None is immortal from Python 3.12")
def test_void_qt_calls_cannot_free_none(qtbot):
    from PySide6.QtGui import QColor

    import studio  # noqa: F401  (installs the guard)

    color = QColor()
    for _ in range(20000):
        color.setRgb(1, 2, 3)
    assert sys.getrefcount(None) > 1 << 39
    assert np.isnan(np.nan)  # numpy still fine after many calls
