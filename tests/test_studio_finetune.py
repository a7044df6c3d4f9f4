"""The fine-tune dialog: scanning a folder into the corpus table, a run to completion whose model appears in
the picker, cancel keeping a checkpoint, and the errors of a bad folder."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import Qt, QTimer  # noqa: E402

import core.modeldir as modeldir  # noqa: E402
from core.midi import Performance, write_performance  # noqa: E402
from core.modeldir import user_models_dir  # noqa: E402
from studio.finetune import Train, eta_text, train_config  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.window import MainWindow  # noqa: E402
from tests.test_studio_window import dialogs  # noqa: E402,F401  (the fixture)

TRAIN = {"batch": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 1, "val_fraction": 0.2, "lr": 2e-2}


def write_pieces(folder: Path, count: int, notes: int = 30) -> Path:
    """`count` small random piano pieces, plus one file that is not MIDI."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        onset = np.sort(rng.uniform(0, notes * 0.2, notes))
        perf = Performance.from_notes(onset, onset + rng.uniform(0.1, 0.5, notes), rng.integers(48, 84, notes),
                                      rng.integers(30, 110, notes))
        write_performance(perf, folder / f"piece{i}.mid")
    (folder / "notes.mid").write_text("not a MIDI file")
    return folder


@pytest.fixture
def window(qtbot, tiny_model_dir, dialogs):  # noqa: F811
    w = MainWindow(Settings(model=str(tiny_model_dir)), extra_models=[tiny_model_dir], list_ports=False)
    qtbot.addWidget(w)
    yield w
    w.jobs.shutdown()


class WatchedContext:
    """A multiprocessing context that keeps every process it makes (and is otherwise the real one)."""

    def __init__(self, context):
        self._context = context
        self.processes: list = []

    def __getattr__(self, name: str):
        return getattr(self._context, name)

    def Process(self, *args, **kwargs):  # noqa: N802 - multiprocessing's name
        process = self._context.Process(*args, **kwargs)
        self.processes.append(process)
        return process


def scanned(qtbot, dialog, folder: Path) -> None:
    dialog.scan_folder(str(folder))
    qtbot.waitUntil(lambda: dialog.summary is not None, timeout=30000)


def test_scan_fills_the_corpus_table_and_names_skipped_files(qtbot, window, tmp_path):
    dialog = window.fine_tune(workers=1)
    scanned(qtbot, dialog, write_pieces(tmp_path / "midi", 5))
    rows = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text() for r in range(dialog.table.rowCount())}
    assert rows["files ok"] == "5" and rows["skipped"] == "1" and rows["pieces"] == "5"
    assert "hours of music" in rows
    skipped = dialog.skipped.topLevelItem(0)
    assert skipped.text(0) == "notes.mid" and skipped.text(1)
    assert dialog.start.isEnabled()


def test_fine_tune_runs_to_completion_and_the_model_joins_the_picker(qtbot, window, tmp_path, tiny_model_dir,
                                                                    monkeypatch):
    dialog = window.fine_tune(workers=1, train_options=TRAIN)
    scanned(qtbot, dialog, write_pieces(tmp_path / "midi", 6))
    dialog.by_steps.setChecked(True)
    dialog.steps.setValue(4)
    dialog.out.setText("my-style")
    # The window never stalls because training runs in a process of its own, relayed by a job's thread: no
    # fine_tune in this process, and the GUI thread answers while the relay is in the middle of the run.
    in_process: list[threading.Thread] = []
    monkeypatch.setattr("trainer.loop.fine_tune", lambda *args, **kwargs: in_process.append(
        threading.current_thread()) or pytest.fail("fine_tune ran in the studio's own process"))
    contexts: list[WatchedContext] = []
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context",
                        lambda method=None: contexts.append(WatchedContext(get_context(method))) or contexts[-1])
    beat, answers = threading.Event(), []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(beat.set)
    timer.start()

    def wait_for_gui(event) -> None:  # in the relay's thread, at the first training step it relays
        if event.kind == "step" and not answers:
            beat.clear()
            answers.append(beat.wait(30))  # 30 s: a GUI thread that cannot answer, never a slow one

    relays: list[threading.Thread] = []
    work = Train.work

    def relay(job: Train):  # the job's work, in whatever thread runs it, listening before anything is sent
        relays.append(threading.current_thread())
        job.progress.connect(wait_for_gui, Qt.DirectConnection)
        return work(job)

    monkeypatch.setattr(Train, "work", relay)
    with qtbot.waitSignal(dialog.model_created, timeout=120000) as created:
        dialog.start_training()
    timer.stop()
    processes = [process for context in contexts for process in context.processes]
    assert not in_process and len(processes) == 1 and processes[0].name == "recital-train"
    assert len(relays) == 1 and relays[0] is not threading.main_thread()
    assert answers == [True], "the GUI thread stopped handling events during the run"
    assert Path(created.args[0]).name == "my-style"
    assert dialog.result.stopped == "finished" and dialog.result.steps == 4
    assert [step for step, _ in dialog.plot.train] == [1, 2, 3, 4]
    assert dialog.plot.held_out  # held-out perplexity was measured and drawn
    assert dialog.progress.value() == 1000 and "my-style" in dialog.status.text()
    qtbot.waitUntil(lambda: dialog.train is None, timeout=60000)  # the process has ended
    assert processes[0].exitcode == 0  # the run's process has ended, and cleanly
    names = [window.panel.models.itemText(i) for i in range(window.panel.models.count())]
    assert any(name.startswith("my-style") for name in names)
    assert window.panel.model_path == str(tiny_model_dir)  # listed, not picked: the composer's choice stays


def test_a_new_model_is_listed_but_never_picked_by_itself(qtbot, window, tiny_model_dir):
    qtbot.waitUntil(lambda: window.model is not None, timeout=20000)
    loaded = window.model
    newest = shutil.copytree(tiny_model_dir, user_models_dir() / "aaa-newest")  # first in the list
    dialog = window.fine_tune()
    dialog.model_created.emit(str(newest))  # what a finished run announces
    listed = [window.panel.models.itemData(i) for i in range(window.panel.models.count())]
    assert listed[0] == str(newest)
    assert window.panel.model_path == str(tiny_model_dir) and window.settings.model == str(tiny_model_dir)
    assert window.model is loaded and window.panel.go.isEnabled()  # not reloaded: budget and plan kept
    assert "New model ready: aaa-newest" in window.statusBar().currentMessage()
    dialog.close()


def test_with_no_model_remembered_the_shipped_default_is_picked_not_the_newest_fine_tune(
        qtbot, dialogs, tiny_model_dir, tmp_path, monkeypatch):  # noqa: F811
    shipped = tmp_path / "shipped"
    for name in ("default", "default-perceivers"):
        shutil.copytree(tiny_model_dir, shipped / name)
    monkeypatch.setattr(modeldir, "SHIPPED_DIR", shipped)
    newest = shutil.copytree(tiny_model_dir, user_models_dir() / "aaa-newest")
    w = MainWindow(Settings(), list_ports=False)
    qtbot.addWidget(w)
    assert w.panel.models.itemData(0) == str(newest)  # the user's models come first in the list...
    assert w.panel.model_path == str(shipped / "default")  # ...but the default is what a first start uses
    qtbot.waitUntil(lambda: w.model is not None, timeout=20000)
    w.jobs.shutdown()


def test_cancel_stops_the_run_and_keeps_a_checkpoint(qtbot, window, tmp_path):
    dialog = window.fine_tune(workers=1, train_options=TRAIN)
    scanned(qtbot, dialog, write_pieces(tmp_path / "midi", 6))
    dialog.minutes.setValue(30)
    dialog.out.setText("cut-short")
    dialog.start_training()
    qtbot.waitUntil(lambda: len(dialog.plot.train) >= 1, timeout=60000)
    dialog.cancel_or_close()
    qtbot.waitUntil(lambda: dialog.result is not None, timeout=30000)
    assert dialog.result.stopped == "stopped"
    assert (dialog.result.model_dir / "model.safetensors").is_file()
    assert "cancelled" in dialog.status.text()
    qtbot.waitUntil(lambda: dialog.train is None, timeout=60000)  # the process has ended
    assert dialog.cancel_button.text() == "Close" and dialog.start.isEnabled()


def test_a_folder_without_midi_shows_the_reason(qtbot, window, dialogs, tmp_path):  # noqa: F811
    dialog = window.fine_tune(workers=1)
    empty = tmp_path / "empty"
    empty.mkdir()
    dialog.scan_folder(str(empty))
    qtbot.waitUntil(lambda: len(dialogs["warnings"]) == 1, timeout=10000)
    assert "no MIDI files" in dialogs["warnings"][0][1] and str(empty) in dialogs["warnings"][0][1]
    assert not dialog.start.isEnabled()


def test_train_config_and_eta_text():
    config = train_config("/music", "/models/base", " ", None, 100, 16.0)
    assert config.steps == 100 and config.minutes is None and config.budget == "16MB" and config.out is None
    with pytest.raises(Exception, match="choose a folder"):
        train_config("", "/models/base", "", 5.0, None, None)
    assert eta_text(None) == "estimating…"
    assert eta_text(75) == "about 1 min 15 s left"
    assert eta_text(7300) == "about 2 h 01 min left"


def test_closing_the_window_during_a_run_ends_it(qtbot, window, tmp_path):
    dialog = window.fine_tune(workers=1, train_options=TRAIN)
    scanned(qtbot, dialog, write_pieces(tmp_path / "midi", 6))
    dialog.minutes.setValue(30)
    dialog.start_training()
    qtbot.waitUntil(lambda: len(dialog.plot.train) >= 1, timeout=60000)
    job = dialog.train
    window.jobs.shutdown(ms=0)  # no grace: the training process is ended, the relay thread too
    assert job.thread.isFinished() and not window.jobs.jobs
