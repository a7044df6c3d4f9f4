"""The Generate panel: model picker with its card, the memory budget, what to write, and the takes.

It only gathers settings and shows state; the main window runs the job. `request(base, playhead)` turns the
controls into a `GenerateRequest`.
"""

from __future__ import annotations

import random
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from core.modeldir import ModelInfo
from studio.budget import BudgetPanel
from studio.document import Piece
from studio.generation import GenerateRequest

NO_MODEL_HINT = "No model yet: fine-tune one or pass a model folder"
MAX_SEED = 2**31 - 1


def card_text(path: Path, lines: int = 8) -> str:
    """The first lines of a model's card.md, without markdown decoration (tables and code fences are left out)."""
    try:
        text = (Path(path) / "card.md").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return "(no card)"
    kept = [line.strip().lstrip("#").strip() for line in text.splitlines() if line.strip()]
    kept = [line for line in kept if not line.startswith(("```", "|"))]
    return "\n".join(kept[:lines]) or "(empty card)"


class GeneratePanel(QWidget):
    generate_clicked = Signal()
    stop_clicked = Signal()
    model_picked = Signal(str)  # model directory ("" when none)
    add_model_clicked = Signal()
    take_picked = Signal(int)
    keep_clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumWidth(360)
        self.generating = False
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)

        # -- model --
        model_box = QGroupBox("Model")
        model_layout = QVBoxLayout(model_box)
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
        layout.addWidget(model_box)

        # -- memory --
        memory_box = QGroupBox("Memory budget")
        memory_layout = QVBoxLayout(memory_box)
        self.budget = BudgetPanel()
        memory_layout.addWidget(self.budget)
        layout.addWidget(memory_box)

        # -- what to write --
        write_box = QGroupBox("Write")
        form = QFormLayout(write_box)
        form.setLabelAlignment(Qt.AlignRight)
        self.mode_end = QRadioButton("Continue from the end")
        self.mode_playhead = QRadioButton("Continue from the playhead (replaces what follows)")
        self.mode_new = QRadioButton("New piece")
        self.mode_end.setChecked(True)
        self.modes = QButtonGroup(self)
        for button in (self.mode_end, self.mode_playhead, self.mode_new):
            self.modes.addButton(button)
        modes = QVBoxLayout()
        modes.setSpacing(2)
        for button in (self.mode_end, self.mode_playhead, self.mode_new):
            modes.addWidget(button)
        form.addRow(modes)
        self.seconds = QDoubleSpinBox()
        self.seconds.setRange(1, 3600)
        self.seconds.setDecimals(0)
        self.seconds.setSuffix(" s")
        self.seconds.setValue(20)
        form.addRow("Length", self.seconds)
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.05)
        self.temperature.setValue(1.0)
        self.temperature.setToolTip("Lower: safer, more repetitive. Higher: bolder. 0: always the likeliest note")
        form.addRow("Temperature", self.temperature)
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.01)
        self.top_p.setValue(0.95)
        self.top_p.setToolTip("Sample only among the likeliest choices that make up this share (1: all)")
        form.addRow("Top-p", self.top_p)
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
        form.addRow("Seed", seed_row)
        self.variations = QSpinBox()
        self.variations.setRange(1, 8)
        self.variations.setSuffix(" take")
        self.variations.valueChanged.connect(
            lambda n: self.variations.setSuffix(" take" if n == 1 else " takes"))
        self.variations.setToolTip("Write several versions at once and pick the one you like")
        form.addRow("Variations", self.variations)
        layout.addWidget(write_box)

        # -- go --
        self.go = QPushButton("Generate")
        self.go.setObjectName("primary")
        self.go.setMinimumHeight(36)
        self.hint = QLabel()
        self.hint.setObjectName("hint")
        self.hint.setWordWrap(True)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setFormat("%p%")
        self.progress.setVisible(False)
        layout.addWidget(self.go)
        layout.addWidget(self.progress)
        layout.addWidget(self.hint)

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
        layout.addWidget(self.takes_box)
        layout.addStretch(1)
        self.take, self.take_count = 0, 0

        self.go.clicked.connect(self._go)
        self.models.currentIndexChanged.connect(self._picked)
        self.add_model.clicked.connect(self.add_model_clicked)
        self.variations.valueChanged.connect(self.budget.set_batch)
        self.previous_take.clicked.connect(lambda: self.take_picked.emit(self.take - 1))
        self.next_take.clicked.connect(lambda: self.take_picked.emit(self.take + 1))
        self.keep.clicked.connect(self.keep_clicked)
        self.model_ready = False
        self.set_models([])

    # -- models --------------------------------------------------------------------------------------------

    def set_models(self, models: list[ModelInfo], extra: list[Path] = (), current: str = "") -> None:
        """Fill the picker: user and shipped models, then folders opened by hand; select `current` if listed."""
        self.models.blockSignals(True)
        self.models.clear()
        for info in models:
            where = "yours" if info.source == "user" else "shipped"
            self.models.addItem(f"{info.name}  ·  {info.arch} · {where}", str(info.path))
        known = {str(info.path) for info in models}
        for path in extra:
            if str(path) not in known:
                self.models.addItem(f"{Path(path).name}  ·  folder", str(path))
        self.models.setEnabled(self.models.count() > 0)
        if self.models.count() == 0:
            self.models.addItem("No model found")
            self.models.setEnabled(False)
        index = self.models.findData(current) if current else -1
        self.models.setCurrentIndex(max(index, 0))
        self.models.blockSignals(False)
        self._picked()

    @property
    def model_path(self) -> str:
        return self.models.currentData() or ""

    def _picked(self, *_args) -> None:
        path = self.model_path
        self.card.setText(card_text(Path(path)) if path else
                          "Fine-tune one on your MIDI folder (Model ▸ Fine-tune…), or choose a model folder.")
        self.model_ready = False
        self.budget.set_model(None)
        self.refresh()
        self.model_picked.emit(path)

    def set_model(self, model) -> None:
        """The picked model has loaded (None: it failed): the budget can plan with it."""
        self.model_ready = model is not None
        self.budget.set_model(model, self.variations.value())
        self.refresh()

    # -- state ---------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        budget_ok = self.budget.view is not None and not self.budget.view.error
        name = "stop" if self.generating else "primary"
        if self.go.objectName() != name:  # red while it stops, blue while it starts
            self.go.setObjectName(name)
            self.go.style().unpolish(self.go)
            self.go.style().polish(self.go)
        if self.generating:
            self.go.setText("Stop")
            self.go.setEnabled(True)
            self.hint.setText("Writing… Stop keeps what is written so far.")
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
                               variations=self.variations.value(), budget=self.budget.budget)
