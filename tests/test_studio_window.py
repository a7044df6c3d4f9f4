"""Recital Studio's main window on a tiny random DSMR: open, continue (live notes in the roll), takes, undo,
the budget slider, save, stop/cancel, error dialogs, the unsaved-changes prompt, and a responsive event loop.

Nothing here is timed: "stop takes effect fast" is counted in model steps, "the GUI never stalls" is shown by
the GUI thread answering while a model step is under way. The times themselves are measured by bench/studio.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402

from core.midi import read_performance, write_performance  # noqa: E402
from core.pulse import LEFT_TO_RIGHT_WEIGHT as PULSE_WEIGHT  # noqa: E402
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


def wait_generated(qtbot, w, timeout=60000):
    qtbot.waitUntil(lambda: w.generation is None and not w.panel.generating, timeout=timeout)


def count_live_notes(monkeypatch, w) -> list[int]:
    """The notes the window draws live, batch by batch: counted where the roll receives them (the job may emit
    before a test could connect to its signal)."""
    counts: list[int] = []
    add_live = w.roll.add_live

    def counted(events, *args, **kwargs):
        counts.append(len(events))
        return add_live(events, *args, **kwargs)

    monkeypatch.setattr(w.roll, "add_live", counted)
    return counts


@dataclass
class ModelCall:
    kind: str  # "prefill" or "step"
    thread: threading.Thread
    stop_requested: bool  # the job had been asked to stop when this call began


@dataclass
class WatchedModel:
    """A model's prefill and step calls, recorded as they begin; `answer_at` holds step numbers (counted from 1
    per watch) at which the calling thread first waits for the GUI thread to handle an event."""

    jobs: list = field(default_factory=list)  # the job that calls the model (the last one started)
    calls: list[ModelCall] = field(default_factory=list)
    answer_at: set[int] = field(default_factory=set)
    answers: list[bool] = field(default_factory=list)  # per wait: did the GUI thread answer?
    beat: threading.Event = field(default_factory=threading.Event)

    def wait_for_gui(self) -> None:
        """Block this (job) thread until the GUI thread's timer beats again: it only can if the GUI thread is
        free to handle events while the job is inside a model call. 30 s is a deadlock, never slowness."""
        self.beat.clear()
        self.answers.append(self.beat.wait(30))

    @property
    def steps(self) -> list[ModelCall]:
        return [call for call in self.calls if call.kind == "step"]


def watch_model(monkeypatch, model) -> WatchedModel:
    """Watch the calls of `model`'s class, so a copy the job makes (adapting to the primer) is watched too."""
    watched = WatchedModel()
    for kind in ("prefill", "step"):
        original = getattr(type(model), kind)

        def call(self, *args, _kind=kind, _original=original, **kwargs):
            job = watched.jobs[-1] if watched.jobs else None
            watched.calls.append(ModelCall(_kind, threading.current_thread(), job is not None and job.stopping))
            if _kind == "prefill" and watched.answer_at or _kind == "step" and len(watched.steps) in watched.answer_at:
                watched.wait_for_gui()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(type(model), kind, call)
    return watched


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


def test_open_continue_from_playhead_undo_and_save(qtbot, window, tmp_path, monkeypatch):
    w = window
    assert w.open_file(PIANO_PIECE)
    primer = w.document.piece.primer
    assert len(w.roll.notes("primer")) == len(primer) > 0
    assert not w.document.modified

    live = count_live_notes(monkeypatch, w)
    w.roll.set_playhead(5.0, user=True)
    w.panel.mode_playhead.setChecked(True)
    w.generate()
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


def test_stop_keeps_what_was_written_and_takes_effect_at_the_next_token(qtbot, window, monkeypatch):
    w = window
    w.panel.seconds.setValue(3000)  # far more than the test waits for: only Stop ends this job
    watched = watch_model(monkeypatch, w.model)
    live = count_live_notes(monkeypatch, w)
    watched.jobs.append(w.generate())
    qtbot.waitUntil(lambda: sum(live) > 0, timeout=60000)
    w.stop_generating()
    wait_generated(qtbot, w)  # the job's finished signal arrived
    # The job checks the stop flag after every token: a step that began after the request is at most the one
    # that the flag missed by a hair; its token is the last.
    after = sum(call.stop_requested for call in watched.steps)
    assert len(watched.steps) > 0 and after <= 1, f"{after} model steps began after Stop was pressed"
    generated = w.document.piece.generated
    assert len(generated) == sum(live) > 0  # every note drawn live is kept, and nothing else
    assert generated.duration < 3000
    assert w.panel.go.text() == "Generate"


def test_the_model_runs_off_the_gui_thread_which_keeps_handling_events(qtbot, window, monkeypatch):
    w = window
    assert w.open_file(PIANO_PIECE)  # a primer: reading it (prefill) is the job's longest model call
    w.panel.seconds.setValue(40)
    watched = watch_model(monkeypatch, w.model)
    watched.answer_at = {1, 20}  # inside the prefill and two steps, the GUI thread must answer
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(watched.beat.set)
    timer.start()
    watched.jobs.append(w.generate())
    wait_generated(qtbot, w, timeout=120000)
    timer.stop()
    assert [call.kind for call in watched.calls[:2]] == ["prefill", "step"] and len(watched.steps) >= 20
    gui = threading.main_thread()
    assert all(call.thread is not gui for call in watched.calls), "a model call ran on the GUI thread"
    assert len({call.thread for call in watched.calls}) == 1  # the job's own thread, for every call
    assert watched.answers == [True, True, True], "the GUI thread stopped handling events during a model call"
    assert len(w.document.piece.generated) > 0


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


def test_the_budget_is_the_models_default_for_each_take_until_chosen_and_each_tick_plans_once(window):
    from core.budget import default_budget, format_bytes

    panel, model = window.panel, window.model
    assert not panel.budget.chosen and panel.budget.budget == default_budget(model, 1)
    panel.variations.setValue(3)  # never chosen: it follows the takes
    assert panel.budget.budget == default_budget(model, 3) and panel.budget.plan.batch == 3
    assert format_bytes(default_budget(model, 3)) in panel.budget.value.text()
    planned, noted = [], []
    plan, note = model.plan, model.memory_limit_note
    model.plan = lambda *args, **kwargs: planned.append(args) or plan(*args, **kwargs)
    model.memory_limit_note = lambda *args: noted.append(args) or ""  # the model's own business: not counted
    try:
        panel.budget.slider.setValue(panel.budget.slider.value() + 1)
        assert len(planned) == 1 and len(noted) <= 1 and panel.budget.chosen  # the studio plans once
        request = panel.request(window.document.piece, 0.0)
        assert request.plan is panel.budget.plan and request.budget == panel.budget.budget and len(planned) == 1
    finally:
        model.plan, model.memory_limit_note = plan, note
    panel.variations.setValue(1)  # chosen: the budget stays, now for one take
    assert panel.budget.budget == request.budget


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
    assert not settings.adapt_chosen  # never touched: each model's own default next time


def reopened_panel(qtbot, tiny_model_dir):
    """The Write panel of a window opened again on the saved settings, once its model has loaded."""
    again = MainWindow(Settings.load(), extra_models=[tiny_model_dir], list_ports=False)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: again.model is not None, timeout=20000)
    again.jobs.shutdown()
    return again.panel


def test_the_recall_motifs_box_reaches_the_session_and_is_remembered(qtbot, window, tiny_model_dir):
    """On by default: the session gets the model's own motif memory (core/motif.py); unticked, none; the choice is
    remembered."""
    from dataclasses import replace

    from core.midi import Performance
    from core.motif import WEIGHT, default_weight
    from studio.document import Piece
    from studio.generation import session_for
    from tests.test_metrics import tiny_dsmr_of

    w = window
    assert w.panel.recall_motifs.isChecked() and w.panel.recall_motifs.isEnabled()
    piece = w.document.piece
    on = w.panel.request(piece, 0.0)
    assert on.recall_motifs and session_for(on, w.model).motifs == default_weight(w.model)
    w.panel.recall_motifs.click()
    off = w.panel.request(piece, 0.0)
    assert not off.recall_motifs and session_for(off, w.model).motifs == 0.0
    notes_model = tiny_dsmr_of("notes")  # this window's tiny model reads the event codec: no memory of its own
    piece = Piece(read_performance(PIANO_PIECE), Performance.empty())  # something to recall
    on, off = replace(on, base=piece), replace(off, base=piece)
    assert session_for(on, notes_model).motifs == WEIGHT > 0 and session_for(off, notes_model).motifs == 0.0
    assert session_for(replace(on, new_piece=True), notes_model).motifs == 0.0  # a new piece recalls nothing
    assert w.close()
    assert Settings.load().recall_motifs is False
    assert not reopened_panel(qtbot, tiny_model_dir).recall_motifs.isChecked()


def test_the_keep_beat_box_reaches_the_session_and_is_remembered(qtbot, window, tiny_model_dir):
    """On by default: the session gets the model's own pull towards the primer's beat (core/pulse.py); unticked,
    none; the choice is remembered."""
    from studio.generation import session_for

    w = window
    assert w.panel.keep_beat.isChecked() and w.panel.keep_beat.isEnabled()
    piece = w.document.piece
    on = w.panel.request(piece, 0.0)
    assert on.keep_beat and session_for(on, w.model).pulse == PULSE_WEIGHT
    w.panel.keep_beat.click()
    off = w.panel.request(piece, 0.0)
    assert not off.keep_beat and session_for(off, w.model).pulse == 0.0
    assert w.close()
    assert Settings.load().keep_beat is False
    assert not reopened_panel(qtbot, tiny_model_dir).keep_beat.isChecked()


def test_a_chosen_adapt_box_is_remembered_and_restored(qtbot, window, tiny_model_dir):
    w = window
    assert not w.panel.adapt.isChecked()  # the tiny event-codec model's default
    w.panel.adapt.click()
    assert w.close()
    settings = Settings.load()
    assert settings.adapt and settings.adapt_chosen
    again = MainWindow(settings, extra_models=[tiny_model_dir], list_ports=False)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: again.model is not None, timeout=20000)
    assert again.panel.adapt.isChecked() and again.panel.adapt_chosen  # the model's default does not override it
    again.jobs.shutdown()
