"""The Generate panel: model picker with its summary (the full card a click away), the memory budget, what to
write, and the takes.

It only gathers settings and shows state; the main window runs the job. `request(base, playhead)` turns the
controls into a `GenerateRequest`, `infill_request(base, region)` into Regenerate selection's `InfillRequest`
(with the context each side and the refinement steps set beside its button, on for a denoiser only). The
settings scroll when the screen is short (a 1366x768 laptop); the Generate and Regenerate buttons, the
latter's two settings, the progress and the takes stay pinned below them, always in view.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.adapt import adapts_by_default
from core.constraints import FROM_PRIMER, KEY_NAMES, ConstraintError, note_name, parse_note
from core.errors import RecitalError
from core.infill import CONTEXT_SECONDS
from core.modelcard import scrub_paths, summarize
from core.modeldir import CARD, ModelInfo, read_card
from core.models.interface import DENOISE
from studio.budget import BudgetPanel
from studio.document import Piece, WriteControls
from studio.generation import GenerateRequest
from studio.infilljob import InfillRequest, can_infill
from studio.pianoroll import Region

NO_MODEL_HINT = "No model yet: fine-tune one or pass a model folder"
NO_MODEL_SUMMARY = "Fine-tune one on your MIDI folder (Model ▸ Fine-tune…), or choose a model folder."
MAX_SEED = 2**31 - 1
DEFAULT_MODEL = "default"  # the shipped model picked when the composer has chosen none
# Regenerate selection: seconds of music read each side of the region (None: as much as the window holds), the
# core's CONTEXT_SECONDS (6 s) first chosen: on MAESTRO regions it fits the new notes to their surroundings as well
# as the whole window does, in ~60% of the time (core/infill.py). Less is faster.
CONTEXTS: tuple[float | None, ...] = (None, 16.0, 8.0, CONTEXT_SECONDS, 4.0)
MAX_STEPS = 4096  # the most unmasking passes a model's config may name (core/models/smdim/model.py)
CONTEXT_TIP = ("How much of the music on each side of the selection the model listens to while it writes. "
               "6 s fits the new notes to what surrounds them as well as the whole window does, in about 60% "
               "of the time; less is faster still and follows the surroundings less closely.")
STEPS_TIP = ("How many passes the model makes over the selection, settling more of its notes each time. "
             "More passes: more careful and slower (the time grows with them); fewer: quicker sketches. The "
             "model's own number is a good start.")
ONLY_DENOISERS = "\nFor a model that fills gaps from both sides (SMDIM); this one only writes onward."
ADAPT_TIP = ("Before continuing, tune a copy of the model to your piece for a second or two: it follows the "
             "piece's texture more closely. Never saved; the model stays as it is. On by default for the "
             "models where it measured better (the shipped default among them).")

BEAT_TIP = ("Let the new notes fall where the piece's notes fall in its beat (its last 20 s): the continuation "
            "keeps the primer's pulse instead of drifting off it. Loosely: a rubato or an off-beat note can "
            "still come. Has no effect on a new piece.")

MOTIFS_TIP = ("Let the model remember the piece: when the music comes back to a run of notes it played before, "
              "or to a moment the model hears as alike, what followed then becomes likelier now (a left-hand "
              "pattern goes on, a phrase returns, also a step higher), within the range the piece has used; a new "
              "note often ends with the notes still sounding, as under the pedal. The model still chooses.")


def summary_text(path: Path) -> str:
    """The composer-facing lines about the model at `path` (or what is wrong with it), with no machine path."""
    try:
        return "\n".join(summarize(path).lines())
    except RecitalError as error:
        return scrub_paths(str(error))


def full_card(path: Path) -> str:
    """The whole card.md as shown in the studio: markdown, machine paths replaced by folder names."""
    if not os.path.lexists(Path(path) / CARD):
        return f"This model has no readable card ({CARD} is missing)."
    try:
        text = read_card(Path(path))  # bounded, regular files only: a FIFO or /dev/zero link never hangs the studio
    except RecitalError as error:
        return scrub_paths(f"This model has no readable card ({error}).")
    return scrub_paths(text) if text.strip() else "This model's card is empty."


def smaller_headings(markdown: str) -> str:
    """Headings two levels down (a card's title as a heading, not a poster); code blocks are left as they are."""
    lines, fenced = [], False
    for line in markdown.splitlines():
        fenced ^= line.lstrip().startswith("```")
        lines.append(re.sub(r"^(#{1,4}) ", r"##\1 ", line) if not fenced else line)
    return "\n".join(lines) + "\n"


class CardDialog(QDialog):
    """The model's whole card (recipe, data tables, scores) for whoever wants the details."""

    def __init__(self, title: str, markdown: str, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle(f"Model card: {title}")
        self.resize(760, 560)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(True)
        self.text.setMarkdown(smaller_headings(markdown))
        buttons = QDialogButtonBox(QDialogButtonBox.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text, 1)
        layout.addWidget(buttons)


class GeneratePanel(QWidget):
    generate_clicked = Signal()
    stop_clicked = Signal()
    model_picked = Signal(str)  # model directory ("" when none)
    add_model_clicked = Signal()
    take_picked = Signal(int)
    keep_clicked = Signal()
    regenerate_clicked = Signal()  # write the roll's selected region anew (studio/infilljob.py)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumWidth(360)
        self.generating = False
        self.full_card: CardDialog | None = None
        self._summaries: dict[tuple, str] = {}
        body = QWidget()  # the settings: they scroll on a short screen
        layout = QVBoxLayout(body)
        layout.setContentsMargins(8, 4, 8, 4)
        layout.setSpacing(6)

        # -- model --
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
        model_layout.setSpacing(4)
        row = QHBoxLayout()
        self.models = QComboBox()
        self.models.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.add_model = QToolButton()
        self.add_model.setText("Folder…")
        self.add_model.setToolTip("Use a model directory from disk (config.json + model.safetensors + card.md)")
        row.addWidget(self.models, 1)
        row.addWidget(self.add_model)
        model_layout.addLayout(row)
        self.card = QLabel()
        self.card.setObjectName("hint")
        self.card.setWordWrap(True)
        self.card.setTextInteractionFlags(Qt.TextSelectableByMouse)
        model_layout.addWidget(self.card)
        self.card_button = QPushButton("Full card…")
        self.card_button.setObjectName("link")
        self.card_button.setToolTip("The model's whole card: how it was made, its data, its scores")
        self.card_button.setCursor(Qt.PointingHandCursor)
        model_layout.addWidget(self.card_button, 0, Qt.AlignRight)
        layout.addWidget(model_box)

        # -- memory --
        memory_box = QGroupBox("Memory budget")
        memory_layout = QVBoxLayout(memory_box)
        self.budget = BudgetPanel()
        memory_layout.addWidget(self.budget)
        layout.addWidget(memory_box)

        # -- what to write --
        write_box = QGroupBox("Write")
        grid = QGridLayout(write_box)
        grid.setVerticalSpacing(4)
        self.mode_end = QRadioButton("Continue from the end")
        self.mode_playhead = QRadioButton("Continue from the playhead")
        self.mode_playhead.setToolTip("What follows the playhead is replaced by the new music")
        self.mode_new = QRadioButton("New piece")
        self.mode_end.setChecked(True)
        self.modes = QButtonGroup(self)
        for row, button in enumerate((self.mode_end, self.mode_playhead, self.mode_new)):
            self.modes.addButton(button)
            grid.addWidget(button, row, 0, 1, 4)
        self.seconds = QDoubleSpinBox()
        self.seconds.setRange(1, 3600)
        self.seconds.setDecimals(0)
        self.seconds.setSuffix(" s")
        self.seconds.setValue(20)
        self.variations = QSpinBox()
        self.variations.setRange(1, 8)
        self.variations.setSuffix(" take")
        self.variations.valueChanged.connect(
            lambda n: self.variations.setSuffix(" take" if n == 1 else " takes"))
        self.variations.setToolTip("Write several versions at once and pick the one you like")
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(1.0)
        self.temperature.setToolTip("Lower: safer, more repetitive. Higher: bolder. 0: always the likeliest note")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.01)
        self.top_p.setValue(0.95)
        self.top_p.setToolTip("Sample only among the likeliest choices that make up this share (1: all)")
        seed_row = QHBoxLayout()
        self.seed = QSpinBox()
        self.seed.setRange(-1, MAX_SEED)
        self.seed.setSpecialValueText("random")
        self.seed.setValue(-1)
        self.seed.setToolTip("The same seed and settings write the same music")
        self.dice = QToolButton()
        self.dice.setText("⚄ Roll")
        self.dice.setToolTip("Roll a new seed")
        self.dice.clicked.connect(lambda: self.seed.setValue(random.randint(0, MAX_SEED)))
        seed_row.addWidget(self.seed, 1)
        seed_row.addWidget(self.dice)
        for row, pairs in enumerate(((("Length", self.seconds), ("Variations", self.variations)),
                                     (("Temperature", self.temperature), ("Top-p", self.top_p))), start=3):
            for column, (text, widget) in enumerate(pairs):
                label = QLabel(text)
                label.setBuddy(widget)
                grid.addWidget(label, row, 2 * column, Qt.AlignRight)
                grid.addWidget(widget, row, 2 * column + 1)
        grid.addWidget(QLabel("Seed"), 5, 0, Qt.AlignRight)
        grid.addLayout(seed_row, 5, 1, 1, 3)
        self.adapt = QCheckBox("Adapt to the primer")
        self.adapt.setChecked(False)  # until a model loads: then its default (core.adapt.adapts_by_default)
        self.adapt.setToolTip(ADAPT_TIP)
        self.adapt_ok = True  # False for a denoiser: it fills whole windows and is never adapted (core/session.py)
        self.adapt_chosen = False  # the composer ticked or unticked it: kept for every model from then on
        self.adapt.clicked.connect(self._adapt_chosen)
        grid.addWidget(self.adapt, 6, 0, 1, 4)
        self.keep_beat = QCheckBox("Keep the primer's beat")
        self.keep_beat.setChecked(True)  # the left-to-right models' default (core.pulse.default_weight)
        self.keep_beat.setToolTip(BEAT_TIP)
        grid.addWidget(self.keep_beat, 7, 0, 1, 4)
        self.recall_motifs = QCheckBox("Recall the piece")
        self.recall_motifs.setChecked(True)  # the left-to-right models' default (core.motif.default_weight)
        self.recall_motifs.setToolTip(MOTIFS_TIP)
        grid.addWidget(self.recall_motifs, 8, 0, 1, 4)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        layout.addWidget(write_box)
        self.limits = LimitsBox()  # key, range, density, dynamics: the document's (studio/document.py)
        layout.addWidget(self.limits)
        layout.addStretch(1)

        self.scroll = QScrollArea()
        self.scroll.setWidget(body)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)

        # -- go: pinned below the settings, never scrolled away --
        self.go = QPushButton("Generate")
        self.go.setObjectName("primary")
        self.go.setMinimumHeight(36)
        self.regenerate = QPushButton("Regenerate selection")
        self.regenerate.setEnabled(False)
        self.infill_ok, self.infill_tip = False, ""  # set by the window: a region and a model that can fill it
        self.infill_model = False  # the loaded model fills gaps (a denoiser): the settings below apply
        self.context = QComboBox()
        for seconds in CONTEXTS:
            self.context.addItem("Whole window" if seconds is None else f"{seconds:g} s")
        self.set_context(CONTEXT_SECONDS)
        self.steps = QSpinBox()
        self.steps.setRange(0, MAX_STEPS)  # 0: the model's own, shown by name
        self.steps.setSpecialValueText("model's")
        infill_settings = QGridLayout()
        infill_settings.setContentsMargins(0, 0, 0, 0)
        infill_settings.setVerticalSpacing(2)
        for row, (text, widget, tip) in enumerate((("Context each side", self.context, CONTEXT_TIP),
                                                   ("Refinement steps", self.steps, STEPS_TIP))):
            label = QLabel(text)
            label.setBuddy(widget)
            label.setToolTip(tip)
            infill_settings.addWidget(label, row, 0, Qt.AlignRight)
            infill_settings.addWidget(widget, row, 1)
        infill_settings.setColumnStretch(1, 1)
        self.hint = QLabel()
        self.hint.setObjectName("hint")
        self.hint.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.progress.setVisible(False)

        # -- takes --
        self.takes_box = QGroupBox("Takes")
        takes = QHBoxLayout(self.takes_box)
        self.previous_take = QToolButton()
        self.previous_take.setText("◀")
        self.take_label = QLabel()
        self.take_label.setAlignment(Qt.AlignCenter)
        self.next_take = QToolButton()
        self.next_take.setText("▶")
        self.keep = QPushButton("Keep this take")
        takes.addWidget(self.previous_take)
        takes.addWidget(self.take_label, 1)
        takes.addWidget(self.next_take)
        takes.addWidget(self.keep)
        self.takes_box.setVisible(False)
        footer = QWidget()
        footer.setObjectName("footer")
        footer_layout = QVBoxLayout(footer)
        footer_layout.setContentsMargins(8, 6, 8, 6)
        footer_layout.setSpacing(4)
        footer_layout.addWidget(self.go)
        footer_layout.addWidget(self.regenerate)
        footer_layout.addLayout(infill_settings)
        for widget in (self.progress, self.hint, self.takes_box):
            footer_layout.addWidget(widget)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        outer.addWidget(self.scroll, 1)
        outer.addWidget(footer)
        self.take, self.take_count = 0, 0

        self.go.clicked.connect(self._go)
        self.models.currentIndexChanged.connect(self._picked)
        self.add_model.clicked.connect(self.add_model_clicked)
        self.variations.valueChanged.connect(self.budget.set_batch)
        self.previous_take.clicked.connect(lambda: self.take_picked.emit(self.take - 1))
        self.next_take.clicked.connect(lambda: self.take_picked.emit(self.take + 1))
        self.keep.clicked.connect(self.keep_clicked)
        self.regenerate.clicked.connect(self.regenerate_clicked)
        self.card_button.clicked.connect(self.show_full_card)
        self.model_ready = False
        self.set_models([])

    # -- models --------------------------------------------------------------------------------------------

    def set_models(self, models: list[ModelInfo], extra: list[Path] = (), current: str = "") -> None:
        """Fill the picker: user and shipped models, then folders opened by hand; select `current` if listed,
        else the shipped default. A new model (a fine-tune that just finished) is listed, never picked by itself:
        when the selection stays the same, the loaded model and its budget stay as they are."""
        before = self.model_path
        self.models.blockSignals(True)
        self.models.clear()
        for info in models:
            where = "yours" if info.source == "user" else "shipped"
            self.models.addItem(f"{info.name}  ·  {info.arch} · {where}", str(info.path))
        known = {str(info.path) for info in models}
        for path in extra:
            if str(path) not in known:
                self.models.addItem(f"{Path(path).name}  ·  folder", str(path))
        self.models.setEnabled(self.models.count() > 0 and not self.generating)
        if self.models.count() == 0:
            self.models.addItem("No model found")
            self.models.setEnabled(False)
        index = self.models.findData(current) if current else -1
        if index < 0:
            shipped = [str(info.path) for info in models if info.source == "shipped" and info.name == DEFAULT_MODEL]
            index = self.models.findData(shipped[0]) if shipped else -1
        self.models.setCurrentIndex(max(index, 0))
        self.models.blockSignals(False)
        if before and self.model_path == before:
            self._show_summary()  # the same model: its card may have been rewritten, nothing else changed
        else:
            self._picked()

    @property
    def model_path(self) -> str:
        return self.models.currentData() or ""

    def _picked(self, *_args) -> None:
        path = self.model_path
        self._show_summary()
        self.model_ready = False
        self.infill_model = False
        self.budget.set_model(None)
        self.refresh()
        self.model_picked.emit(path)

    def _show_summary(self) -> None:
        path = self.model_path
        self.card_button.setEnabled(bool(path))
        if not path:
            self.card.setText(NO_MODEL_SUMMARY)
            return
        folder = Path(path)
        stamp = tuple(_stamp(folder / name) for name in ("config.json", CARD, "model.safetensors"))
        key = (path, stamp)  # a model rewritten in place (a resumed fine-tune) is summarized again
        if key not in self._summaries:
            self._summaries[key] = summary_text(folder)
        self.card.setText(self._summaries[key])

    def show_full_card(self) -> CardDialog | None:
        """Open the picked model's whole card in its own window (one at a time)."""
        path = self.model_path
        if not path:
            return None
        if self.full_card is not None:
            self.full_card.close()
        self.full_card = CardDialog(Path(path).name, full_card(Path(path)), self)
        self.full_card.show()
        return self.full_card

    def _adapt_chosen(self) -> None:
        self.adapt_chosen = True

    def set_model(self, model) -> None:
        """The picked model has loaded (None: it failed): the budget can plan with it."""
        self.model_ready = model is not None
        self.budget.set_model(model, self.variations.value())
        self.adapt_ok = getattr(model, "family", None) != DENOISE  # the box keeps its tick for the next model
        self.adapt.setEnabled(self.adapt_ok)
        if model is not None and not self.adapt_chosen:
            self.adapt.setChecked(adapts_by_default(model))
        self.adapt.setToolTip(ADAPT_TIP if self.adapt_ok else
                              f"Adapting to the primer is for left-to-right models; {model.arch} fills whole "
                              "windows and is never adapted.")
        self.keep_beat.setEnabled(self.adapt_ok)  # the box keeps its tick for the next model
        self.keep_beat.setToolTip(BEAT_TIP if self.adapt_ok else
                                  f"Keeping the primer's beat is for left-to-right models; {model.arch} writes "
                                  "its time steps in any order.")
        self.recall_motifs.setEnabled(self.adapt_ok)  # the box keeps its tick for the next model
        self.recall_motifs.setToolTip(MOTIFS_TIP if self.adapt_ok else
                                      f"Recalling the piece is for left-to-right models; {model.arch} "
                                      "writes its notes in any order.")
        self.infill_model = can_infill(model)
        own = getattr(getattr(model, "config", None), "steps", None) if self.infill_model else None
        self.steps.setSpecialValueText(f"model's ({own})" if own else "model's")
        self.refresh()

    # -- state ---------------------------------------------------------------------------------------------

    def set_infill(self, ok: bool, tip: str) -> None:
        """Regenerate selection possible (a region and a model that can fill it) or not, and `tip` why."""
        self.infill_ok, self.infill_tip = ok, tip
        self.refresh()

    def refresh(self) -> None:
        budget_ok = self.budget.view is not None and not self.budget.view.error
        self.regenerate.setEnabled(self.infill_ok and not self.generating)
        self.regenerate.setToolTip(self.infill_tip)
        for widget, tip in ((self.context, CONTEXT_TIP), (self.steps, STEPS_TIP)):
            widget.setEnabled(self.infill_model and not self.generating)
            widget.setToolTip(tip if self.infill_model or not self.model_ready else tip + ONLY_DENOISERS)
        name = "stop" if self.generating else "primary"
        if self.go.objectName() != name:  # red while it stops, blue while it starts
            self.go.setObjectName(name)
            self.go.style().unpolish(self.go)
            self.go.style().polish(self.go)
        if self.generating:
            self.go.setText("Stop")
            self.go.setEnabled(True)
            self.hint.setText("Writing… Stop keeps what is written so far.")
            self.hint.setVisible(True)
            return
        self.go.setText("Generate")
        if not self.model_path:
            self.hint.setText(NO_MODEL_HINT)
        elif not self.model_ready:
            self.hint.setText("Loading the model…")
        elif not budget_ok:
            self.hint.setText("Raise the memory budget: this one cannot hold the model's state.")
        else:
            self.hint.setText("")
        self.hint.setVisible(bool(self.hint.text()))  # no empty line under the button
        self.go.setEnabled(bool(self.model_path) and self.model_ready and budget_ok)

    def set_generating(self, on: bool) -> None:
        self.generating = on
        self.progress.setVisible(on)
        self.progress.setRange(0, 1000)
        self.progress.setValue(0)
        for widget in (self.models, self.add_model, self.variations, self.budget.slider, self.takes_box):
            widget.setEnabled(not on)
        if not on:
            self.budget.set_live(None)
        self.refresh()

    def set_progress(self, seconds: float, state_bytes: int, reading: bool = False) -> None:
        if reading:  # no new note before the whole primer is in the state: a busy bar, not 0%
            self.progress.setRange(0, 0)
            self.hint.setText("Reading your piece into the model's memory…")
        else:
            self.progress.setRange(0, 1000)
            self.progress.setValue(int(1000 * min(1.0, seconds / max(self.seconds.value(), 1e-9))))
            self.progress.setFormat(f"{min(seconds, self.seconds.value()):.1f} of {self.seconds.value():.0f} s written")
            self.hint.setText("Writing… Stop keeps what is written so far.")
        self.budget.set_live(state_bytes)

    def set_takes(self, take: int, count: int) -> None:
        self.take, self.take_count = take, count
        self.takes_box.setVisible(count > 1)
        self.take_label.setText(f"Take {take + 1} of {count}")
        self.previous_take.setEnabled(take > 0)
        self.next_take.setEnabled(take < count - 1)

    def _go(self) -> None:
        (self.stop_clicked if self.generating else self.generate_clicked).emit()

    def request(self, piece: Piece, playhead: float) -> GenerateRequest:
        """The settings as one request; the base is the piece up to where new music starts."""
        new = self.mode_new.isChecked()
        from_playhead = self.mode_playhead.isChecked()
        base = Piece.empty() if new else piece.before(playhead) if from_playhead else piece
        return GenerateRequest(base=base, start=playhead if from_playhead else None, new_piece=new,
                               seconds=self.seconds.value(), temperature=self.temperature.value(),
                               top_p=self.top_p.value(), seed=None if self.seed.value() < 0 else self.seed.value(),
                               variations=self.variations.value(), budget=self.budget.budget,
                               plan=self.budget.plan, adapt=self.adapt.isChecked() and self.adapt_ok,
                               keep_beat=self.keep_beat.isChecked() and self.adapt_ok,
                               recall_motifs=self.recall_motifs.isChecked() and self.adapt_ok,
                               controls=self.limits.controls())

    # -- regenerate selection --------------------------------------------------------------------------------

    @property
    def context_seconds(self) -> float | None:
        """Seconds of music Regenerate selection reads each side of the region; None: the whole window."""
        return CONTEXTS[self.context.currentIndex()]

    def set_context(self, seconds: float | None) -> None:
        """Pick `seconds` (one of CONTEXTS); anything else (a stale settings file's) picks the core's
        default."""
        self.context.setCurrentIndex(CONTEXTS.index(seconds if seconds in CONTEXTS else CONTEXT_SECONDS))

    def infill_request(self, piece: Piece, region: Region) -> InfillRequest:
        """Regenerate selection's settings as one request: the Write box's sampling, seed and takes, the
        Limits (their density bounds the region's new notes), the budget where the composer chose one (else
        the model's), and the context and steps beside its button."""
        seed = None if self.seed.value() < 0 else self.seed.value()
        return InfillRequest(base=piece, region=region, temperature=self.temperature.value(),
                             top_p=self.top_p.value(), seed=seed,
                             variations=self.variations.value(), controls=self.limits.controls(),
                             budget=self.budget.budget if self.budget.chosen else None,
                             context=self.context_seconds, steps=self.steps.value() or None)


class NoteSpinBox(QSpinBox):
    """A MIDI pitch shown and typed as a note name (C4 = 60 = middle C)."""

    def __init__(self, value: int):
        super().__init__()
        self.setRange(0, 127)
        self.setValue(value)

    def textFromValue(self, value: int) -> str:
        return note_name(value)

    def valueFromText(self, text: str) -> int:
        try:
            return parse_note(text)
        except ConstraintError:
            return self.value()

    def validate(self, text: str, pos: int) -> QValidator.State:
        try:
            parse_note(text)
        except ConstraintError:
            return QValidator.State.Intermediate
        return QValidator.State.Acceptable


class LimitsBox(QGroupBox):
    """What the model may write (core/constraints.py): a key (off, the primer's, any of 24), a pitch range, a
    density it is steered toward, and dynamics. `changed` on every edit; the window keeps them per document."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__("Limits", parent)
        grid = QGridLayout(self)
        grid.setVerticalSpacing(4)
        self.key = QComboBox()
        self.key.addItem("Off", "")
        self.key.addItem("From the primer", FROM_PRIMER)
        for name in KEY_NAMES:
            self.key.addItem(name, name)
        self.key.setToolTip("Write only the notes of this key (the piece's own notes are never changed)")
        self.low, self.high = NoteSpinBox(0), NoteSpinBox(127)
        self.low.setToolTip("The lowest note the model may write (C4 is middle C)")
        self.high.setToolTip("The highest note the model may write")
        self.density = QSlider(Qt.Horizontal)
        self.density.setRange(0, 16)
        self.density.setToolTip("Steer toward this many notes per second (a pull, not a rule; Regenerate "
                                "selection, and SMDIM anywhere, writes at most this many); left: off, and a "
                                "DSMR or PerceiverS take that runs away past 3x the piece's own notes/s is "
                                "steered back under")
        self.density_label = QLabel()
        self.density_label.setMinimumWidth(64)
        self.soft, self.loud = QSpinBox(), QSpinBox()
        for box, value in ((self.soft, 1), (self.loud, 127)):
            box.setRange(1, 127)
            box.setValue(value)
        self.soft.setToolTip("The softest velocity the model may play (1-127)")
        self.loud.setToolTip("The loudest velocity the model may play (1-127)")
        rows = (("Key", (self.key,)), ("Range", (self.low, QLabel("to"), self.high)),
                ("Density", (self.density, self.density_label)), ("Dynamics", (self.soft, QLabel("to"), self.loud)))
        for row, (text, widgets) in enumerate(rows):
            label = QLabel(text)
            label.setBuddy(widgets[0])
            grid.addWidget(label, row, 0, Qt.AlignRight)
            if len(widgets) == 1:
                grid.addWidget(widgets[0], row, 1, 1, 3)
            elif len(widgets) == 2:
                grid.addWidget(widgets[0], row, 1, 1, 2)
                grid.addWidget(widgets[1], row, 3)
            else:
                for column, widget in enumerate(widgets, start=1):
                    grid.addWidget(widget, row, column)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        self.key.currentIndexChanged.connect(self._edited)
        for box in (self.low, self.high, self.density, self.soft, self.loud):
            box.valueChanged.connect(self._edited)
        self._sync()

    def _edited(self, *_args) -> None:
        self._sync()
        self.changed.emit()

    def _sync(self) -> None:
        self.low.setMaximum(self.high.value())  # low never above high
        self.high.setMinimum(self.low.value())
        self.soft.setMaximum(self.loud.value())
        self.loud.setMinimum(self.soft.value())
        density = self.density.value()
        self.density_label.setText(f"{density} notes/s" if density else "off")

    def controls(self) -> WriteControls:
        return WriteControls(key=self.key.currentData() or "", low=self.low.value(), high=self.high.value(),
                             velocity_low=self.soft.value(), velocity_high=self.loud.value(),
                             density=float(self.density.value()))

    def set_controls(self, controls: WriteControls) -> None:
        """Show a document's limits (no `changed` while doing it)."""
        widgets = (self.key, self.low, self.high, self.density, self.soft, self.loud)
        for widget in widgets:
            widget.blockSignals(True)
        self.low.setRange(0, 127)
        self.high.setRange(0, 127)
        self.soft.setRange(1, 127)
        self.loud.setRange(1, 127)
        self.key.setCurrentIndex(max(self.key.findData(controls.key), 0))
        self.low.setValue(controls.low)
        self.high.setValue(controls.high)
        self.density.setValue(round(controls.density))
        self.soft.setValue(controls.velocity_low)
        self.loud.setValue(controls.velocity_high)
        for widget in widgets:
            widget.blockSignals(False)
        self._sync()


def _stamp(path: Path) -> tuple[int, int, int]:
    """What tells a rewritten file from the one summarized: its modification time alone can repeat within the
    file system's clock tick; a model's files are replaced whole (a new inode), and usually change size."""
    try:
        stat = path.stat()
    except OSError:
        return (0, 0, 0)
    return (stat.st_mtime_ns, stat.st_ino, stat.st_size)
