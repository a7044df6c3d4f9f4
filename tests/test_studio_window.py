"""Recital Studio's main window on a tiny random DSMR: open, continue (live notes in the roll), takes, undo,
the budget slider, save, stop/cancel, error dialogs, the unsaved-changes prompt, and a responsive event loop."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import time  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from core.midi import read_performance, write_performance  # noqa: E402
from studio.budget import slider_to_bytes  # noqa: E402
from studio.generatepanel import NO_MODEL_HINT  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.window import MainWindow  # noqa: E402
from tests.conftest import PIANO_PIECE  # noqa: E402


@pytest.fixture
def dialogs(monkeypatch, tmp_path):
    """Isolated user folders; every warning captured; the close prompt answers Discard unless told otherwise."""
    for name in ("RECITAL_CONFIG_DIR", "RECITAL_DATA_DIR", "RECITAL_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    seen = {"warnings": [], "questions": [], "answer": QMessageBox.Discard}

    def warning(_parent, title, text, *args, **kwargs):
        seen["warnings"].append((title, text))
        return QMessageBox.Ok

    def question(_parent, title, text, *args, **kwargs):
        seen["questions"].append((title, text))
        return seen["answer"]

    monkeypatch.setattr(QMessageBox, "warning", staticmethod(warning))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return seen


@pytest.fixture
def window(qtbot, tiny_model_dir, dialogs):
    w = MainWindow(Settings(seconds=2.0, model=str(tiny_model_dir)), extra_models=[tiny_model_dir],
                   list_ports=False)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.model is not None, timeout=20000)
    w.panel.seed.setValue(7)
    yield w
    w.jobs.shutdown()


def wait_generated(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: w.generation is None and not w.panel.generating, timeout=timeout)


def test_no_model_disables_generate(qtbot, dialogs, monkeypatch):
    monkeypatch.setattr("studio.window.list_models", lambda: [])  # as if the shipped models were removed
    w = MainWindow(Settings(), list_ports=False)
    qtbot.addWidget(w)
    assert not w.panel.go.isEnabled()
    assert w.panel.hint.text() == NO_MODEL_HINT


def test_model_loads_and_budget_slider_changes_horizons(window):
    panel = window.panel
    assert panel.go.isEnabled(), panel.hint.text()
    panel.budget.slider.setValue(0)  # 64 KB
    small = [bar.tokens for bar in panel.budget.view.bars]
    small_text = panel.budget.headline.text()
    panel.budget.slider.setValue(panel.budget.slider.value() + 8)  # twice the memory
    large = [bar.tokens for bar in panel.budget.view.bars]
    assert len(small) == len(large) == 2  # one bar per layer
    assert all(b >= a for a, b in zip(small, large, strict=True)) and large != small
    assert small[0] > small[1]  # two-scale: the lower layer remembers longer
    assert panel.budget.headline.text() != small_text
    assert "remembers" in panel.budget.headline.text()
    assert panel.budget.budget == slider_to_bytes(panel.budget.slider.value())


def test_open_continue_from_playhead_undo_and_save(qtbot, window, tmp_path):
    w = window
    assert w.open_file(PIANO_PIECE)
    primer = w.document.piece.primer
    assert len(w.roll.notes("primer")) == len(primer) > 0
    assert not w.document.modified

    live: list[int] = []
    w.roll.set_playhead(5.0, user=True)
    w.panel.mode_playhead.setChecked(True)
    job = w.generate()
    job.progress.connect(lambda notes: live.append(sum(len(v) for v in notes.notes.values())))
    wait_generated(qtbot, w)
    piece = w.document.piece
    assert len(piece.generated) > 0 and sum(live) == len(piece.generated)
    assert piece.primer.onset.max() < 5.0  # what followed the playhead was replaced
    assert piece.generated.onset.min() >= 5.0 - 1e-9
    assert len(w.roll.notes("generated")) == len(piece.generated)
    assert len(w.roll.notes("live")) == 0
    assert w.document.modified and w.isWindowModified()

    w.document.undo_stack.undo()
    assert len(w.document.piece.generated) == 0 and len(w.document.piece.primer) == len(primer)
    assert len(w.roll.notes("primer")) == len(primer)
    w.document.undo_stack.redo()
    assert len(w.roll.notes("generated")) == len(piece.generated)

    out = tmp_path / "out.mid"
    assert w._save_to(out)
    saved = read_performance(out)
    assert len(saved) > len(read_performance(PIANO_PIECE).slice_time(0, 5.0)) - 5
    assert not w.document.modified and w.windowTitle().startswith("out.mid")


def test_variations_switch_and_keep(qtbot, window, tmp_path, scale):
    w = window
    path = tmp_path / "scale.mid"
    write_performance(scale, path)
    assert w.open_file(path)
    w.panel.variations.setValue(3)
    w.generate()
    wait_generated(qtbot, w)
    assert len(w.takes) == 3 and w.panel.takes_box.isVisibleTo(w)
    first = w.document.piece
    w.pick_take(2)
    assert w.document.piece is w.takes[2] and w.panel.take == 2
    assert w.document.piece.primer is first.primer  # every take continues the same notes
    w.document.undo_stack.undo()
    assert w.document.piece is first
    w.keep_take()
    assert w.takes == [] and not w.panel.takes_box.isVisibleTo(w)


def test_new_piece_and_delete_selected_notes(qtbot, window):
    w = window
    w.panel.mode_new.setChecked(True)
    w.generate()
    wait_generated(qtbot, w)
    generated = w.document.piece.generated
    assert len(w.document.piece.primer) == 0 and len(generated) > 0
    items = w.roll.notes("generated")
    items[0].setSelected(True)
    w.delete_selected()
    assert len(w.document.piece.generated) == len(generated) - 1
    w.document.undo_stack.undo()
    assert len(w.document.piece.generated) == len(generated)


def test_stop_keeps_what_was_written_and_takes_effect_fast(qtbot, window):
    w = window
    w.panel.seconds.setValue(3000)
    job = w.generate()
    qtbot.waitUntil(lambda: w.panel.progress.value() > 0 or len(w.roll.notes("live")) > 0, timeout=20000)
    stopped_at = {}
    job.finished.connect(lambda: stopped_at.setdefault("t", time.monotonic()))
    start = time.monotonic()
    w.stop_generating()
    qtbot.waitUntil(lambda: "t" in stopped_at, timeout=5000)
    assert stopped_at["t"] - start < 0.1
    wait_generated(qtbot, w)
    assert 0 < w.document.piece.generated.duration < 3000
    assert w.panel.go.text() == "Generate"


def test_event_loop_never_stalls_while_generating(qtbot, window):
    w = window
    w.panel.seconds.setValue(40)
    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(lambda: beats.append(time.monotonic()))
    timer.start()
    started = time.monotonic()
    while time.monotonic() - started < 1.0:  # a tiny model may end its piece early: keep it busy for 1 s
        w.panel.seed.setValue(w.panel.seed.value() + 1)
        w.generate()
        wait_generated(qtbot, w, timeout=120000)
    timer.stop()
    gaps = [b - a for a, b in zip(beats, beats[1:], strict=False)]
    assert len(beats) > 20
    assert max(gaps) < 0.1, f"the GUI thread stalled {max(gaps) * 1000:.0f} ms"


def test_error_dialogs_say_what_and_where(qtbot, window, dialogs, tmp_path):
    w = window
    bad = tmp_path / "bad.mid"
    bad.write_bytes(b"this is not MIDI")
    assert not w.open_file(bad)
    title, text = dialogs["warnings"][-1]
    assert "Open" in title and str(bad) in text

    w.use_model(tmp_path)  # a folder that is not a model
    qtbot.waitUntil(lambda: len(dialogs["warnings"]) == 2, timeout=10000)
    assert "not a model directory" in dialogs["warnings"][-1][1]
    assert not w.panel.go.isEnabled()

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    w.render_wav(read_performance(PIANO_PIECE).slice_time(0, 1), str(blocker / "a.wav"))  # no folder there
    qtbot.waitUntil(lambda: len(dialogs["warnings"]) == 3, timeout=20000)
    assert dialogs["warnings"][-1][0].endswith("Export WAV")


def test_unsaved_changes_prompt_on_close(qtbot, window, dialogs, scale, tmp_path):
    w = window
    path = tmp_path / "scale.mid"
    write_performance(scale, path)
    w.open_file(path)
    w.clear_generated()  # nothing to clear: still clean
    assert not w.document.modified
    w.roll.notes("primer")[0].setSelected(True)
    w.delete_selected()
    assert w.document.modified
    dialogs["answer"] = QMessageBox.Cancel
    assert not w.close()
    assert dialogs["questions"] and "Save the changes" in dialogs["questions"][-1][1]
    dialogs["answer"] = QMessageBox.Discard
    assert w.close()


def test_drop_a_midi_file_opens_it(window, scale, tmp_path):
    w = window
    path = tmp_path / "dropped.mid"
    write_performance(scale, path)
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    event = QDropEvent(QPointF(10, 10), Qt.CopyAction, data, Qt.LeftButton, Qt.NoModifier)
    w.dropEvent(event)
    assert w.document.title == "dropped.mid" and len(w.document.piece.primer) == len(scale)


def test_settings_remembered_on_close(qtbot, window, tmp_path):
    w = window
    w.panel.temperature.setValue(0.8)
    w.panel.budget.slider.setValue(3)
    budget = w.panel.budget.budget
    assert w.close()
    settings = Settings.load()
    assert settings.temperature == pytest.approx(0.8)
    assert settings.budget_mb * 1024 * 1024 == pytest.approx(budget)
    assert Path(settings.model) == Path(w.panel.model_path)
