"""The fine-tune dialog: pick a folder (its corpus table: files read, skipped with reasons, hours of music),
a base model, how long, the memory budget; then watch a progress bar with ETA and the loss / held-out
perplexity plot. Cancel stops between steps and the trainer keeps a checkpoint; a finished model is announced
by `model_created(path)` so the picker lists it.

The scan (`ScanFolder`) and the run (`Train`, relaying a training process) are jobs; `train_config(...)` is
pure.
"""

from __future__ import annotations

import multiprocessing
import queue
from pathlib import Path
from types import SimpleNamespace

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from core.errors import ModelError, RecitalError
from core.modeldir import ModelInfo
from studio.jobs import Cancelled, Job, JobKeeper
from studio.lossplot import LossPlot


class ScanFolder(Job):
    """Scan a MIDI folder into the corpus cache; progress is (done, total) files."""

    def __init__(self, folder: str, workers: int | None = None):
        super().__init__()
        self.folder, self.workers = folder, workers

    def work(self):
        from trainer.corpus import Corpus

        def progress(done: int, total: int) -> None:
            self.check()  # raising here cancels the scan
            self.progress.emit((done, total))

        return Corpus.build(self.folder, workers=self.workers, progress=progress).summary


class Train(Job):
    """One `fine_tune` run in its own process (see studio.trainprocess); this thread relays its events.

    Progress events and the result arrive as attribute objects with the fields of trainer.loop's Progress
    and TrainResult. Cancel asks the run to stop; it saves a checkpoint and returns its result as usual.
    """

    POLL = 0.05  # seconds between looks at the cancel flag

    def __init__(self, config):
        super().__init__()
        self.config = config
        self._abandoned = False

    def abandon(self) -> None:
        self._abandoned = True

    def work(self):
        from studio.trainprocess import train_main

        context = multiprocessing.get_context("spawn")  # never fork a process that has threads
        events, stop = context.Queue(), context.Event()
        process = context.Process(target=train_main, args=(self.config.to_dict(), events, stop),
                                  name="recital-train", daemon=True)
        process.start()
        try:
            while True:
                if self.stopping:
                    stop.set()
                if self._abandoned:
                    process.terminate()  # checkpoints are written atomically: the last one stays whole
                    raise Cancelled
                try:
                    kind, payload = events.get(timeout=self.POLL)
                except queue.Empty:
                    if not process.is_alive() and events.empty():
                        raise ModelError(f"the training process ended unexpectedly (exit code "
                                         f"{process.exitcode})") from None
                    continue
                if kind == "progress":
                    self.progress.emit(SimpleNamespace(**payload))
                elif kind == "failed":
                    raise RecitalError(payload)
                else:
                    payload["model_dir"] = Path(payload["model_dir"])
                    return SimpleNamespace(**payload)
        finally:
            stop.set()
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join()


def train_config(folder: str, base: str, out: str, minutes: float | None, steps: int | None,
                 budget_mb: float | None, **extra):
    """The TrainConfig the dialog's fields describe (ModelError on a bad combination)."""
    from trainer.config import TrainConfig

    if not folder:
        raise ModelError("choose a folder of MIDI files to fine-tune on")
    if not base:
        raise ModelError("choose a base model to fine-tune")
    budget = f"{budget_mb:g}MB" if budget_mb else None
    return TrainConfig(folder=folder, base=base, out=out.strip() or None, minutes=minutes, steps=steps,
                       budget=budget, command="Recital Studio fine-tune", **extra)


def eta_text(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "estimating…"
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"about {seconds // 3600} h {seconds % 3600 // 60:02d} min left"
    if seconds >= 60:
        return f"about {seconds // 60} min {seconds % 60:02d} s left"
    return f"about {seconds} s left"


class FineTuneDialog(QDialog):
    model_created = Signal(str)  # directory of the new model

    def __init__(self, jobs: JobKeeper, models: list[ModelInfo], extra_models: list[Path] = (),
                 parent: QWidget | None = None, workers: int | None = None, train_options: dict | None = None,
                 current_model: str = ""):
        super().__init__(parent)
        self.setWindowTitle("Fine-tune a model on your music")
        self.resize(900, 640)
        self.jobs, self.workers = jobs, workers
        self.train_options = dict(train_options or {})
        self.scan: ScanFolder | None = None
        self.train: Train | None = None
        self.summary = None
        self.result = None
        layout = QVBoxLayout(self)

        # -- folder and its corpus table --
        folder_row = QHBoxLayout()
        self.folder = QLineEdit()
        self.folder.setPlaceholderText("A folder of your MIDI files (sub-folders included)")
        self.folder.setReadOnly(True)
        browse = QPushButton("Choose folder…")
        browse.clicked.connect(self.choose_folder)
        folder_row.addWidget(QLabel("Folder"))
        folder_row.addWidget(self.folder, 1)
        folder_row.addWidget(browse)
        layout.addLayout(folder_row)
        self.scan_progress = QProgressBar()
        self.scan_progress.setVisible(False)
        layout.addWidget(self.scan_progress)

        split = QSplitter(Qt.Horizontal)
        self.table = QTableWidget(0, 2)
        self.table.horizontalHeader().setVisible(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setShowGrid(False)
        self.table.setMinimumHeight(7 * 24 + 6)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeToContents)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.Stretch)
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.skipped = QTreeWidget()
        self.skipped.setHeaderLabels(["Skipped file", "Why"])
        self.skipped.setRootIsDecorated(False)
        split.addWidget(self.table)
        split.addWidget(self.skipped)
        split.setSizes([330, 540])
        layout.addWidget(split, 1)

        # -- settings --
        settings = QGroupBox("Run")
        form = QFormLayout(settings)
        self.base = QComboBox()
        for info in models:
            self.base.addItem(f"{info.name} ({info.arch})", str(info.path))
        for path in extra_models:
            if self.base.findData(str(path)) < 0:
                self.base.addItem(f"{Path(path).name} (folder)", str(path))
        form.addRow("Base model", self.base)
        picked = self.base.findData(str(current_model)) if current_model else -1
        self.base.setCurrentIndex(max(picked, 0))  # the model the window uses, when it is listed
        limit = QHBoxLayout()
        self.by_minutes = QRadioButton("Minutes")
        self.by_steps = QRadioButton("Steps")
        self.by_minutes.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.by_minutes)
        group.addButton(self.by_steps)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 24 * 60)
        self.minutes.setValue(15)
        self.minutes.setSuffix(" min")
        self.steps = QSpinBox()
        self.steps.setRange(1, 10_000_000)
        self.steps.setValue(500)
        for widget in (self.by_minutes, self.minutes, self.by_steps, self.steps):
            limit.addWidget(widget)
        self.by_minutes.toggled.connect(self.minutes.setEnabled)
        self.by_steps.toggled.connect(self.steps.setEnabled)
        self.steps.setEnabled(False)
        limit.addStretch(1)
        form.addRow("Train for", limit)
        self.budget = QDoubleSpinBox()
        self.budget.setRange(0, 65536)
        self.budget.setSpecialValueText("the model's own")
        self.budget.setSuffix(" MB")
        self.budget.setToolTip("DSMR: memory of the recurrent state per lane while training")
        form.addRow("Memory budget", self.budget)
        self.out = QLineEdit()
        self.out.setPlaceholderText("name of the new model (default: <folder>-<arch>)")
        form.addRow("New model", self.out)
        layout.addWidget(settings)

        # -- progress --
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.status = QLabel("Choose a folder to begin.")
        self.status.setObjectName("hint")
        self.plot = LossPlot()
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.plot, 1)

        buttons = QHBoxLayout()
        buttons.addStretch(1)
        self.start = QPushButton("Start fine-tuning")
        self.start.setObjectName("primary")
        self.start.setEnabled(False)
        self.cancel_button = QPushButton("Close")
        buttons.addWidget(self.start)
        buttons.addWidget(self.cancel_button)
        layout.addLayout(buttons)
        self.start.clicked.connect(self.start_training)
        self.cancel_button.clicked.connect(self.cancel_or_close)

    # -- folder ---------------------------------------------------------------------------------------------

    def choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder of MIDI files")
        if folder:
            self.scan_folder(folder)

    def scan_folder(self, folder: str) -> None:
        if self.scan is not None:
            self.scan.cancel()
        self.folder.setText(folder)
        self.summary = None
        self.start.setEnabled(False)
        self.table.setRowCount(0)
        self.skipped.clear()
        self.scan_progress.setVisible(True)
        self.scan_progress.setRange(0, 0)
        self.status.setText("Reading the folder…")
        job = self.scan = ScanFolder(folder, self.workers)
        job.progress.connect(self._scan_progress)
        job.succeeded.connect(self._scanned)
        job.failed.connect(self._failed)
        job.finished.connect(self._scan_finished)
        self.jobs.start(job)

    def _scan_progress(self, done_total) -> None:
        done, total = done_total
        self.scan_progress.setRange(0, max(total, 1))
        self.scan_progress.setValue(done)
        self.scan_progress.setFormat(f"reading files: {done} of {total}")

    def _scan_finished(self) -> None:
        self.scan_progress.setVisible(False)

    def _scanned(self, summary) -> None:
        self.scan = None
        self.summary = summary
        rows = summary.rows()
        self.table.setRowCount(len(rows))
        for row, (label, value) in enumerate(rows):
            self.table.setItem(row, 0, QTableWidgetItem(label))
            self.table.setItem(row, 1, QTableWidgetItem(value))
        for item in summary.skipped:
            self.skipped.addTopLevelItem(QTreeWidgetItem([Path(item.path).name, item.reason]))
        for item in summary.duplicates:
            self.skipped.addTopLevelItem(QTreeWidgetItem([Path(item.path).name,
                                                          f"duplicate of {Path(item.same_as).name}"]))
        if not summary.skipped and not summary.duplicates:
            self.skipped.addTopLevelItem(QTreeWidgetItem(["(none)", "every file was read"]))
        self.skipped.resizeColumnToContents(0)
        ready = summary.pieces > 0 and self.base.count() > 0
        self.start.setEnabled(ready)
        self.status.setText(f"{summary.pieces} pieces, {summary.hours:.2f} hours of music ready."
                            if ready else "No base model to fine-tune: pass a model folder to the studio."
                            if summary.pieces else "Nothing in this folder can be used.")

    # -- training -------------------------------------------------------------------------------------------

    def start_training(self) -> None:
        try:
            config = train_config(self.folder.text(), self.base.currentData() or "", self.out.text(),
                                  self.minutes.value() if self.by_minutes.isChecked() else None,
                                  self.steps.value() if self.by_steps.isChecked() else None,
                                  self.budget.value() or None, workers=self.workers, **self.train_options)
        except ModelError as error:
            self._failed(str(error))
            return
        self.plot.clear()
        self.result = None
        self.progress.setValue(0)
        self.status.setText("Starting…")
        self.start.setEnabled(False)
        self.cancel_button.setText("Cancel")
        job = self.train = Train(config)
        job.progress.connect(self._train_progress)
        job.succeeded.connect(self._trained)
        job.failed.connect(self._failed)
        job.finished.connect(self._train_finished)
        self.jobs.start(job)

    def _train_progress(self, event) -> None:
        if event.loss is not None and event.kind == "step":
            self.plot.add_loss(event.step, event.loss)
        if event.val_perplexity is not None:
            self.plot.add_perplexity(event.step, event.val_perplexity)
        if event.phase == "scan":
            self.status.setText(event.message or "reading the folder…")
            return
        if event.kind == "step":  # other events carry no fraction: the bar never runs backwards
            self.progress.setValue(max(self.progress.value(), int(1000 * min(1.0, max(0.0, event.fraction)))))
        parts = [f"step {event.step:,}" + (f" of {event.total_steps:,}" if event.total_steps else "")]
        if event.phase == "validate":
            parts.append("measuring held-out perplexity…")
        if event.loss is not None:
            parts.append(f"loss {event.loss:.3f}")
        if event.best_perplexity is not None:
            parts.append(f"best held-out perplexity {event.best_perplexity:.2f}")
        if event.tokens_per_s:
            parts.append(f"{event.tokens_per_s:,.0f} tokens/s")
        if event.phase == "train":
            parts.append(eta_text(event.eta_s))
        if event.message and event.kind in ("message", "checkpoint", "phase"):
            parts.append(event.message)
        self.status.setText("   ·   ".join(parts))

    def _trained(self, result) -> None:
        self.result = result
        self.progress.setValue(1000)
        how = {"finished": "finished", "time": "time is up", "early_stop": "stopped early (no more progress)",
               "stopped": "cancelled; the checkpoint is kept"}.get(result.stopped, result.stopped)
        ppl = (f", best held-out perplexity {result.best_perplexity:.2f}"
               if result.best_perplexity is not None else "")
        self.status.setText(f"Done ({how}) after {result.steps:,} steps{ppl}: saved {result.model_dir.name}, "
                            "now in the model list.")
        self.model_created.emit(str(result.model_dir))

    def _train_finished(self) -> None:
        self.train = None
        self.start.setEnabled(self.summary is not None)
        self.cancel_button.setText("Close")

    def _failed(self, message: str) -> None:
        from studio.errors import show_error

        self.status.setText(message)
        show_error(self, "Fine-tuning", message)

    @property
    def busy(self) -> bool:
        return self.train is not None or self.scan is not None

    def cancel_or_close(self) -> None:
        if self.train is not None:
            self.train.cancel()
            self.status.setText("Stopping after this step; the checkpoint is kept…")
            self.cancel_button.setEnabled(True)
        elif self.scan is not None:
            self.scan.cancel()
            self.scan = None
            self.status.setText("Scan cancelled.")
        else:
            self.accept()

    def reject(self) -> None:  # Esc or the window's close button
        if self.busy:
            self.cancel_or_close()
        else:
            super().reject()
