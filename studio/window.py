"""The main window: piano roll, generate panel, transport, files, fine-tuning, undo/redo.

It owns the document and wires widgets to jobs; every long task (loading a model, generating, rendering,
scanning, training) is a job in its own thread, and the window reacts to its signals.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QEvent, Qt, QTimer
from PySide6.QtGui import QAction, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.errors import RecitalError
from core.midi import MIDI_SUFFIXES, Performance
from core.modeldir import list_models
from studio import theme
from studio.document import Document, Piece
from studio.dragout import DragButton
from studio.errors import show_error
from studio.generatepanel import GeneratePanel
from studio.generation import Generate, LiveNotes
from studio.infilljob import Regenerate, cannot_infill_reason
from studio.jobs import JobKeeper, LoadModel, RenderWav
from studio.pianoroll import PianoRoll
from studio.settings import Settings
from studio.transport import TransportBar

MB = 1024 * 1024


class MainWindow(QMainWindow):
    def __init__(self, settings: Settings | None = None, extra_models: list[Path] = (),
                 list_ports: bool = True):
        super().__init__()
        self.settings = settings or Settings()
        self.extra_models = [Path(p).resolve() for p in extra_models]
        self.jobs = JobKeeper(self)
        self.document = Document(self)
        self.loaded: dict[str, object] = {}  # model directory -> loaded model
        self.loading: LoadModel | None = None
        self.generation: Generate | Regenerate | None = None  # the writing job under way (one at a time)
        self.takes: list[Piece] = []
        self.setAcceptDrops(True)
        self._fit_screen(1360, 820)

        # -- widgets --
        self.roll = PianoRoll()
        self.panel = GeneratePanel()
        self.transport = TransportBar(self.jobs)
        toolbar = QHBoxLayout()
        toolbar.setContentsMargins(8, 6, 8, 2)
        legend = QLabel(f"<span style='color:{theme.PRIMER.name()}'>■</span> yours &nbsp;&nbsp; "
                        f"<span style='color:{theme.GENERATED.name()}'>■</span> written by the model")
        legend.setObjectName("hint")
        toolbar.addWidget(legend)
        toolbar.addStretch(1)
        self.drag_piece = DragButton("⇱ Drag piece", self._drag_piece)
        self.drag_piece.setToolTip("Drag the whole piece out as a MIDI file (onto a DAW track or a folder)")
        self.drag_new = DragButton("⇱ Drag new part", self._drag_new)
        self.drag_new.setToolTip("Drag only the notes the model wrote out as a MIDI file")
        toolbar.addWidget(self.drag_piece)
        toolbar.addWidget(self.drag_new)
        toolbar.addSpacing(12)
        for text, tip, slot in (("−", "Zoom out (Ctrl+wheel)", lambda: self.roll.zoom(1 / 1.4)),
                                ("+", "Zoom in (Ctrl+wheel)", lambda: self.roll.zoom(1.4)),
                                ("Fit", "Show the whole piece", self.roll.fit)):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            toolbar.addWidget(button)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.setSpacing(0)
        left_layout.addLayout(toolbar)
        left_layout.addWidget(self.roll, 1)
        left_layout.addWidget(self.transport)
        self.panel.setMinimumWidth(390)  # its settings scroll by themselves; Generate stays in view
        split = QSplitter(Qt.Horizontal)
        split.addWidget(left)
        split.addWidget(self.panel)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setCollapsible(1, False)
        split.setSizes([940, 420])
        self.setCentralWidget(split)
        self._build_menus()
        QShortcut(QKeySequence(Qt.Key_Space), self, self.transport.toggle)

        # -- wiring --
        self.document.changed.connect(self._piece_changed)
        self.document.path_changed.connect(self._title)
        self.document.path_changed.connect(lambda: self.panel.limits.set_controls(self.document.controls))
        self.panel.limits.changed.connect(lambda: setattr(self.document, "controls", self.panel.limits.controls()))
        self.document.undo_stack.cleanChanged.connect(self._title)
        self.roll.playhead_moved.connect(self._playhead_moved)
        self.transport.position.connect(self.roll.set_playhead)
        self.transport.failed.connect(lambda message: self.error("Playback", message))
        self.transport.recorded.connect(self._recorded)
        self.panel.generate_clicked.connect(self.generate)
        self.panel.stop_clicked.connect(self.stop_generating)
        self.panel.model_picked.connect(self._model_picked)
        self.panel.add_model_clicked.connect(self.add_model_folder)
        self.panel.take_picked.connect(self.pick_take)
        self.panel.keep_clicked.connect(self.keep_take)
        self.panel.regenerate_clicked.connect(self.regenerate)
        self.panel.model_picked.connect(self._update_infill)
        self.roll.region_changed.connect(self._update_infill)

        # -- settings --
        self.panel.seconds.setValue(self.settings.seconds)
        self.panel.temperature.setValue(self.settings.temperature)
        self.panel.top_p.setValue(self.settings.top_p)
        if self.settings.adapt_chosen:  # else the picked model's default, when it loads
            self.panel.adapt.setChecked(self.settings.adapt)
            self.panel.adapt_chosen = True
        self.panel.keep_beat.setChecked(self.settings.keep_beat)
        self.panel.recall_motifs.setChecked(self.settings.recall_motifs)
        self.panel.variations.setValue(self.settings.variations)
        self.panel.set_context(self.settings.infill_context or None)
        self.panel.steps.setValue(self.settings.infill_steps)  # out of range: clamped to it
        if self.settings.budget_mb > 0:  # 0: never chosen, the model's default for each take
            self.panel.budget.set_budget(int(self.settings.budget_mb * MB))
            self.panel.budget.chosen = True
        self.refresh_models(self.settings.model)
        self.transport.select_output(self.settings.output)
        if list_ports:
            self.transport.refresh_ports()
        self._title()
        self.statusBar().showMessage("Open a MIDI file (or drop one here), or write a new piece.")

    def _fit_screen(self, width: int, height: int) -> None:
        """Open at `width` x `height`, or smaller where the screen is (a 1366x768 laptop has less room)."""
        screen = self.screen() or QApplication.primaryScreen()
        if screen is not None:
            room = screen.availableGeometry()
            width, height = min(width, room.width()), min(height, room.height() - 40)  # the title bar
        self.resize(width, height)

    # -- menus ----------------------------------------------------------------------------------------------

    def _build_menus(self) -> None:
        def action(menu, text, slot, shortcut=None, tip=""):
            act = QAction(text, self)
            if shortcut:
                act.setShortcut(shortcut)
            act.setStatusTip(tip)
            act.triggered.connect(slot)
            menu.addAction(act)
            return act

        files = self.menuBar().addMenu("&File")
        action(files, "&New", self.new_piece, QKeySequence.New)
        action(files, "&Open MIDI…", self.open_dialog, QKeySequence.Open)
        action(files, "&Save", self.save, QKeySequence.Save)
        action(files, "Save &As…", self.save_as, QKeySequence.SaveAs)
        action(files, "&Export WAV…", self.export_wav, tip="Render with the built-in piano")
        files.addSeparator()
        action(files, "&Quit", self.close, QKeySequence.Quit)
        edit = self.menuBar().addMenu("&Edit")
        undo = self.document.undo_stack.createUndoAction(self, "&Undo")
        undo.setShortcut(QKeySequence.Undo)
        redo = self.document.undo_stack.createRedoAction(self, "&Redo")
        redo.setShortcut(QKeySequence.Redo)
        edit.addAction(undo)
        edit.addAction(redo)
        edit.addSeparator()
        action(edit, "&Delete selected notes", self.delete_selected, QKeySequence.Delete)
        action(edit, "&Clear the generated part", self.clear_generated)
        edit.addSeparator()
        self.regenerate_action = action(edit, "&Regenerate selection", self.regenerate, "Ctrl+R",
                                        "Write the selected stretch anew (drag on the ruler to select one)")
        self.regenerate_action.setEnabled(False)
        action(edit, "Clear the &region", self.roll.clear_region, tip="Esc in the roll does the same")
        models = self.menuBar().addMenu("&Model")
        action(models, "&Fine-tune on a folder…", self.fine_tune)
        action(models, "&Use a model folder…", self.add_model_folder)
        action(models, "&Refresh the list", lambda: self.refresh_models(self.panel.model_path))
        view = self.menuBar().addMenu("&View")
        action(view, "Zoom &in", lambda: self.roll.zoom(1.4), QKeySequence.ZoomIn)
        action(view, "Zoom &out", lambda: self.roll.zoom(1 / 1.4), QKeySequence.ZoomOut)
        action(view, "&Fit the piece", self.roll.fit, "Ctrl+0")

    # -- document -------------------------------------------------------------------------------------------

    def _title(self, *_args) -> None:
        self.setWindowTitle(f"{self.document.title}[*] — Recital Studio")
        self.setWindowModified(self.document.modified)

    def _piece_changed(self) -> None:
        if not isinstance(self.generation, Generate):  # a generation draws its live notes itself
            self.roll.set_piece(self.document.piece)
        self.transport.set_piece(self.document.piece.whole, self.roll.playhead)
        self._title()

    def place_playhead(self, seconds: float) -> None:
        self.roll.set_playhead(seconds)
        self._playhead_moved(seconds)

    def _playhead_moved(self, seconds: float) -> None:
        self.transport.set_piece(self.document.piece.whole, seconds)
        self.transport.show_time(seconds)

    def error(self, title: str, message: str) -> None:
        self.statusBar().showMessage(message, 10000)
        show_error(self, title, message)

    def maybe_save(self) -> bool:
        """True when it is fine to drop the current piece (saved, discarded, or unchanged)."""
        if not self.document.modified:
            return True
        answer = QMessageBox.question(
            self, "Unsaved changes", f"Save the changes to {self.document.title}?",
            QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel, QMessageBox.Save)
        if answer == QMessageBox.Save:
            return self.save()
        return answer == QMessageBox.Discard

    def new_piece(self) -> None:
        if self.maybe_save():
            self.takes = []
            self.roll.clear_region()
            self.panel.set_takes(0, 0)
            self.document.replace(Piece.empty())
            self.place_playhead(0.0)
            self.roll.fit()

    def open_dialog(self) -> None:
        if not self.maybe_save():
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open a MIDI file", self.settings.last_folder,
                                              "MIDI files (*.mid *.midi *.kar);;All files (*)")
        if path:
            self.open_file(path)

    def open_file(self, path: str | Path) -> bool:
        try:
            self.document.open(path)
        except RecitalError as error:
            self.error("Open", str(error))
            return False
        self.settings.last_folder = str(Path(path).parent)
        self.takes = []
        self.roll.clear_region()
        self.panel.set_takes(0, 0)
        self.place_playhead(self.document.piece.duration)
        self.roll.fit()
        QTimer.singleShot(0, self.roll.fit)  # again once the window has its real size
        piece = self.document.piece
        self.statusBar().showMessage(f"Opened {Path(path).name}: {len(piece)} notes, {piece.duration:.1f} s")
        return True

    def save(self) -> bool:
        # An opened file is not replaced by a re-encoding of it unasked (as `recital continue` refuses its
        # primer): until the document has saved a file of its own, Save is Save As, whose dialog asks.
        if (self.document.path is None or not self.document.written
                or self.document.path.suffix.lower() not in MIDI_SUFFIXES):
            return self.save_as()
        return self._save_to(self.document.path)

    def save_as(self) -> bool:
        start = str(Path(self.settings.last_folder) / f"{Path(self.document.title).stem}.mid")
        path, _ = QFileDialog.getSaveFileName(self, "Save as MIDI", start, "MIDI files (*.mid)")
        if not path:
            return False
        if Path(path).suffix.lower() not in MIDI_SUFFIXES:
            path += ".mid"  # a name the dialog did not ask about: ask here before replacing it
            if Path(path).exists() and QMessageBox.question(
                    self, "Save as MIDI", f"{Path(path).name} already exists. Replace it?") != QMessageBox.Yes:
                return False
        return self._save_to(Path(path))

    def _save_to(self, path: Path) -> bool:
        try:
            self.document.save(path)
        except RecitalError as error:
            self.error("Save", str(error))
            return False
        self.settings.last_folder = str(path.parent)
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return True

    def export_wav(self) -> None:
        piece = self.document.piece.whole
        if len(piece) == 0:
            self.error("Export WAV", "nothing to render: the piece has no notes yet")
            return
        start = str(Path(self.settings.last_folder) / f"{Path(self.document.title).stem}.wav")
        path, _ = QFileDialog.getSaveFileName(self, "Export WAV", start, "WAV audio (*.wav)")
        if path:
            self.render_wav(piece, path)

    def render_wav(self, perf: Performance, path: str) -> RenderWav:
        job = RenderWav(perf, path, self.settings.soundfont)
        job.succeeded.connect(self._rendered)
        job.failed.connect(self._render_failed)
        self.statusBar().showMessage(f"Rendering {Path(path).name}…")
        return self.jobs.start(job)

    def _rendered(self, path) -> None:
        self.statusBar().showMessage(f"Wrote {path}", 8000)

    def _render_failed(self, message: str) -> None:
        self.error("Export WAV", message)

    def _drag_piece(self) -> tuple[Performance, str]:
        return self.document.piece.whole, Path(self.document.title).stem

    def _drag_new(self) -> tuple[Performance, str]:
        return self.document.piece.generated, f"{Path(self.document.title).stem}-generated"

    # -- edits ----------------------------------------------------------------------------------------------

    def delete_selected(self) -> None:
        primer, generated = self.roll.selected()
        if primer or generated:
            self.document.apply(self.document.piece.without(primer, generated),
                                f"Delete {len(primer) + len(generated)} notes")

    def clear_generated(self) -> None:
        if len(self.document.piece.generated):
            self.document.apply(Piece(self.document.piece.primer, Performance.empty()), "Clear generated part")

    def _recorded(self, perf: Performance) -> None:
        self.document.apply(Piece(perf, Performance.empty()), "Record primer")
        self.place_playhead(perf.duration)
        self.roll.fit()

    # -- models ---------------------------------------------------------------------------------------------

    def refresh_models(self, current: str = "") -> None:
        try:
            models = list_models()
        except RecitalError as error:
            self.error("Models", str(error))
            models = []
        extra = list(self.extra_models)
        if not current and extra:
            current = str(extra[0])
        self.panel.set_models(models, extra, current)

    def add_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "A model directory (config.json, model.safetensors)")
        if folder:
            self.use_model(folder)

    def use_model(self, folder: str | Path) -> None:
        path = Path(folder).resolve()
        if path not in self.extra_models:
            self.extra_models.append(path)
        self.refresh_models(str(path))

    def _model_picked(self, path: str) -> None:
        self.settings.model = path
        if not path:
            return
        if path in self.loaded:
            self._model_ready(path, self.loaded[path])
            return
        if self.loading is not None:
            self.loading.cancel()  # its result is ignored: the picker has moved on
        job = self.loading = LoadModel(path)
        job.succeeded.connect(self._model_loaded)
        job.failed.connect(self._model_failed)
        self.jobs.start(job)

    def _model_loaded(self, model) -> None:
        job = self.sender()
        path = job.path if isinstance(job, LoadModel) else self.panel.model_path
        self.loaded[path] = model
        if job is self.loading:
            self.loading = None
        if path == self.panel.model_path:
            self._model_ready(path, model)

    def _model_ready(self, path: str, model) -> None:
        self.panel.set_model(model)  # a budget never chosen, or too small for this model: the model's default
        self._update_infill()

    def _model_failed(self, message: str) -> None:
        self.loading = None
        self.panel.set_model(None)
        self._update_infill()
        self.error("Model", message)

    # -- generating -----------------------------------------------------------------------------------------

    @property
    def model(self):
        return self.loaded.get(self.panel.model_path)

    def generate(self) -> Generate | None:
        if self.generation is not None or self.model is None:
            return None
        self.transport.stop()
        request = self.panel.request(self.document.piece, self.roll.playhead)
        job = Generate(request, self.model)
        self.generation = job
        self.roll.set_piece(request.base)
        start = 0.0 if request.new_piece else request.start if request.start is not None else request.base.duration
        self.roll.show_span(max(0.0, start - 20.0), start + request.seconds + 5.0)  # context, then what comes
        self.panel.set_generating(True)
        job.progress.connect(self._live)
        job.succeeded.connect(self._generated)
        job.failed.connect(self._generate_failed)
        job.finished.connect(self._generate_finished)
        self.statusBar().showMessage("Writing…")
        return self.jobs.start(job)

    def stop_generating(self) -> None:
        """Stop at the next token; what was written is kept (it arrives as the job's result)."""
        if self.generation is not None:
            self.generation.cancel()
            self.statusBar().showMessage("Stopping…")

    def _live(self, live: LiveNotes) -> None:
        if self.sender() is not self.generation:
            return
        self.roll.add_live(live.notes.get(0, []))  # take 1 is drawn live; the others arrive at the end
        self.panel.set_progress(live.seconds, live.state_bytes, live.reading)

    def _generated(self, parts: list[Performance]) -> None:
        job = self.sender()
        request = job.request
        if job.stopping and not any(len(part) for part in parts):
            self.generation = None
            self.roll.clear_live()
            self.roll.set_piece(self.document.piece)  # nothing written: the piece stays as it was
            self.statusBar().showMessage("Stopped before any note was written; the piece is unchanged", 8000)
            return
        base = Piece.empty() if request.new_piece else request.base
        self.takes = [base.with_generated(part) for part in parts]
        count = len(self.takes)
        label = "New piece" if request.new_piece else "Continue"
        self.generation = None
        self.roll.clear_live()
        self.document.apply(self.takes[0], f"{label} ({count} takes)" if count > 1 else label)
        self.roll.fit_pitches()  # the new notes may reach beyond the keys in view
        self.panel.set_takes(0, count if count > 1 else 0)
        added = len(parts[0])
        stopped = " (stopped early)" if job.stopping else ""
        self.statusBar().showMessage(f"Wrote {added} notes{stopped}" + (
            f"; {count} takes: switch between them in the Takes box" if count > 1 else ""), 8000)

    def _generate_failed(self, message: str) -> None:
        self.generation = None
        self.roll.clear_live()
        self.roll.set_piece(self.document.piece)
        self.error("Generate", message)

    def _generate_finished(self) -> None:
        if self.sender() is self.generation:
            self.generation = None
        self.panel.set_generating(False)

    # -- regenerating a region ------------------------------------------------------------------------------

    def _update_infill(self, *_args) -> None:
        """Regenerate selection on or off (button and menu), its tooltip saying why."""
        region = self.roll.region
        reason = cannot_infill_reason(self.model) if self.panel.model_path else "Regenerate selection: no model"
        if not reason and region is None:
            reason = ("Select a stretch to regenerate first: drag on the ruler, or Shift-drag on the roll "
                      "(Shift+Ctrl-drag: a pitch range too)")
        tip = reason or (f"Write {region.describe()} anew, as many takes as Variations says; the rest of the "
                         "piece stays exactly as it is (Ctrl+R)")
        self.panel.set_infill(not reason, tip)
        self.regenerate_action.setEnabled(not reason)

    def regenerate(self) -> Regenerate | None:
        """Write the selected region anew with the picked (denoising) model, off the GUI thread; K takes."""
        region = self.roll.region
        if self.generation is not None or region is None or cannot_infill_reason(self.model):
            return None
        self.transport.stop()
        panel = self.panel
        job = Regenerate(panel.infill_request(self.document.piece, region), self.model)
        self.generation = job
        panel.set_generating(True)
        panel.progress.setRange(0, 0)  # one call into the model: busy, not a percentage
        panel.hint.setText("Regenerating the selection… Stop leaves the piece as it was.")
        job.succeeded.connect(self._regenerated)
        job.failed.connect(self._regenerate_failed)
        job.cancelled.connect(lambda: self.statusBar().showMessage("Stopped: the piece is unchanged", 8000))
        job.finished.connect(self._generate_finished)
        self.statusBar().showMessage(f"Regenerating {region.describe()}…")
        return self.jobs.start(job)

    def _regenerated(self, takes: list[Piece]) -> None:
        job = self.sender()
        self.generation = None
        self.takes = takes
        count = len(takes)
        self.document.apply(takes[0], f"Regenerate selection ({count} takes)" if count > 1 else "Regenerate selection")
        self.roll.fit_pitches()
        self.panel.set_takes(0, count if count > 1 else 0)
        self.statusBar().showMessage(f"Regenerated {job.request.region.describe()}" + (
            f"; {count} takes: switch between them in the Takes box" if count > 1 else ""), 8000)

    def _regenerate_failed(self, message: str) -> None:
        self.generation = None
        self.error("Regenerate selection", message)

    def pick_take(self, index: int) -> None:
        if 0 <= index < len(self.takes) and index != self.panel.take:
            self.document.apply(self.takes[index], f"Switch to take {index + 1}")
            self.panel.set_takes(index, len(self.takes))

    def keep_take(self) -> None:
        self.statusBar().showMessage(f"Kept take {self.panel.take + 1}", 5000)
        self.takes = []
        self.panel.set_takes(0, 0)

    # -- fine-tuning ----------------------------------------------------------------------------------------

    def fine_tune(self, workers: int | None = None, train_options: dict | None = None):
        from studio.finetune import FineTuneDialog

        dialog = FineTuneDialog(self.jobs, list_models(), self.extra_models, self, workers=workers,
                                train_options=train_options, current_model=self.panel.model_path)
        dialog.model_created.connect(self._model_created)
        dialog.setAttribute(Qt.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def _model_created(self, path: str) -> None:
        self.refresh_models(self.panel.model_path)
        self.statusBar().showMessage(f"New model ready: {Path(path).name}", 8000)

    # -- window ---------------------------------------------------------------------------------------------

    def dragEnterEvent(self, event) -> None:
        if any(Path(url.toLocalFile()).suffix.lower() in MIDI_SUFFIXES for url in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = [url.toLocalFile() for url in event.mimeData().urls()
                 if Path(url.toLocalFile()).suffix.lower() in MIDI_SUFFIXES]
        if files and self.maybe_save():
            self.open_file(files[0])
            event.acceptProposedAction()

    def closeEvent(self, event: QEvent) -> None:
        if not self.maybe_save():
            event.ignore()
            return
        if self.generation is not None:
            self.generation.cancel()
        self.transport.shutdown()
        self.jobs.shutdown()
        self._remember()
        event.accept()

    def _remember(self) -> None:
        s = self.settings
        s.seconds, s.temperature = self.panel.seconds.value(), self.panel.temperature.value()
        s.top_p, s.variations = self.panel.top_p.value(), self.panel.variations.value()
        s.adapt, s.adapt_chosen = self.panel.adapt.isChecked(), self.panel.adapt_chosen
        s.keep_beat, s.recall_motifs = self.panel.keep_beat.isChecked(), self.panel.recall_motifs.isChecked()
        s.infill_context, s.infill_steps = self.panel.context_seconds or 0.0, self.panel.steps.value()
        s.budget_mb = self.panel.budget.budget / MB if self.panel.budget.chosen else 0.0
        s.output = self.transport.output.currentData() or "synth"
        s.save()
