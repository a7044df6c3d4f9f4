"""The Memory budget slider and what it buys: per-layer horizons (DSMR) or the context (PerceiverS), in tokens
and in seconds of music, computed by the model's own planner (`model.plan`), and the live state memory.

`budget_view(model, budget, batch)` is pure (testable without a window); `BudgetPanel` draws it, planning once per
change of budget or takes (core/budget.py's PlanCache) and handing that plan on to the generation request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from core.budget import PlanCache, default_budget, format_bytes
from core.errors import RecitalError
from core.state import TOKENS_PER_SECOND
from studio import theme

MB = 1024 * 1024
STEPS_PER_DOUBLING = 8
LOWEST_MB_LOG2 = -4  # 1/16 MB
HIGHEST_MB_LOG2 = 12  # 4 GB


def slider_to_bytes(position: int) -> int:
    return int(round(2 ** (position / STEPS_PER_DOUBLING + LOWEST_MB_LOG2) * MB))


def bytes_to_slider(size: int) -> int:
    position = (math.log2(max(size, 1) / MB) - LOWEST_MB_LOG2) * STEPS_PER_DOUBLING
    return int(round(min(max(position, 0), (HIGHEST_MB_LOG2 - LOWEST_MB_LOG2) * STEPS_PER_DOUBLING)))


@dataclass(frozen=True)
class Bar:
    label: str  # "layer 1" / "context"
    tokens: int
    full: int  # the most this bar could hold (the model's cap), for the bar's length

    @property
    def seconds(self) -> float:
        return self.tokens / TOKENS_PER_SECOND


@dataclass(frozen=True)
class BudgetView:
    headline: str  # "remembers ~12-48 s of music"
    bars: tuple[Bar, ...]
    state_bytes: int
    detail: str  # the planner's own one-line description
    error: str = ""  # the budget cannot hold the state: why, and the minimum


def budget_view(model, budget: int, batch: int = 1, plans: PlanCache | None = None) -> BudgetView:
    """What `budget` bytes (for all takes together) buy this model for `batch` takes (the error, not an
    exception, when too small). `plans` keeps the plan, so a caller asking again plans nothing."""
    try:
        plan = (plans or PlanCache()).plan(model, budget, batch)
    except RecitalError as error:
        return BudgetView("", (), 0, "", str(error))
    detail, limit = plan.describe(), ""
    memories = plan.memories()  # DSMR: one per layer; PerceiverS: its context
    bars = tuple(Bar(m.label, m.tokens, m.limit) for m in memories)
    if any(m.tokens >= m.limit for m in memories):  # only then can training have capped it: ask the model why
        note = model.memory_limit_note(budget, batch)
        if note:
            detail, limit = f"{detail}; {note}", " (all this model can use)"
    low, high = min(b.seconds for b in bars), max(b.seconds for b in bars)
    span = f"~{_s(high)} s" if abs(high - low) < 0.05 else f"~{_s(low)}-{_s(high)} s"
    return BudgetView(f"remembers {span} of music{limit}", bars, plan.nbytes, detail)


def _s(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"


def bar_value(bar: Bar) -> str:
    return f"{bar.tokens:,} tok · {_s(bar.seconds)} s"


class HorizonBars(QWidget):
    """One horizontal bar per layer (or the context): tokens held, against the most the model can hold.

    Rows, label and value columns are measured with the font in use, so nothing below is overdrawn and no
    value is cut off on a screen with larger text.
    """

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.bars: tuple[Bar, ...] = ()
        self.set_bars(())

    def _font(self) -> QFont:
        font = QFont(self.font())
        font.setPointSizeF(max(8.5, font.pointSizeF() - 1.5))
        return font

    def row_height(self) -> float:
        return max(16.0, QFontMetricsF(self._font()).height() + 3)

    def set_bars(self, bars: tuple[Bar, ...]) -> None:
        self.bars = bars
        self.setFixedHeight(math.ceil(self.row_height() * len(bars)) + 4 if bars else 0)
        self.update()

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        font = self._font()
        painter.setFont(font)
        metrics = QFontMetricsF(font)
        label_w = max((metrics.horizontalAdvance(bar.label) for bar in self.bars), default=0) + 8
        value_w = max((metrics.horizontalAdvance(bar_value(bar)) for bar in self.bars), default=0) + 2
        track = max(8.0, self.width() - label_w - value_w - 8)
        height = self.row_height()
        for row, bar in enumerate(self.bars):
            y = 2 + row * height
            painter.setPen(theme.MUTED)
            painter.drawText(QRectF(0, y, label_w, height), Qt.AlignLeft | Qt.AlignVCenter, bar.label)
            painter.setPen(Qt.NoPen)
            painter.setBrush(QColor("#1b1e24"))
            top = y + (height - 10) / 2
            painter.drawRoundedRect(QRectF(label_w, top, track, 10), 4, 4)
            share = math.log1p(bar.tokens) / math.log1p(max(bar.full, bar.tokens, 1))  # log: short ones show too
            painter.setBrush(theme.ACCENT)
            painter.drawRoundedRect(QRectF(label_w, top, max(4.0, track * share), 10), 4, 4)
            painter.setPen(theme.TEXT)
            painter.drawText(QRectF(label_w + track + 8, y, value_w, height), Qt.AlignLeft | Qt.AlignVCenter,
                             bar_value(bar))
        painter.end()


class BudgetPanel(QWidget):
    """Slider in MB (log scale), the plan it buys for the picked model, and the live state memory."""

    changed = Signal(int)  # budget in bytes

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.model = None
        self.batch = 1
        self.slider = QSlider(Qt.Horizontal)
        self.slider.setRange(0, (HIGHEST_MB_LOG2 - LOWEST_MB_LOG2) * STEPS_PER_DOUBLING)
        self.slider.setToolTip("Memory the model's recurrent state may use while generating")
        self.value = QLabel()
        self.value.setMinimumWidth(70)
        self.value.setAlignment(Qt.AlignRight | Qt.AlignVCenter)
        self.headline = QLabel()
        self.headline.setWordWrap(True)
        self.caption = QLabel()
        self.caption.setObjectName("hint")
        self.caption.setWordWrap(True)
        self.bars = HorizonBars()
        self.live = QLabel()  # shown only while generating, in its own row below the bars
        self.live.setObjectName("hint")
        self.live.setWordWrap(True)
        self.live.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.slider, 1)
        row.addWidget(self.value)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(row)
        layout.addWidget(self.headline)
        layout.addWidget(self.caption)
        layout.addWidget(self.bars)
        layout.addWidget(self.live)
        self.slider.valueChanged.connect(self._moved)
        self.view: BudgetView | None = None
        self.plans = PlanCache()  # one plan per (budget, takes): the view and the request share it
        self.chosen = False  # the user has set the budget; until then it is the model's default for each take
        self._setting = False
        self._exact: int | None = None  # a size set in bytes (the model's default), shown as it is, not rounded
        self._moved(self.slider.value())

    @property
    def budget(self) -> int:
        """Bytes for all takes: the size set (e.g. 3 x 256 KB), else the slider's step."""
        if self._exact is not None and bytes_to_slider(self._exact) == self.slider.value():
            return self._exact
        return slider_to_bytes(self.slider.value())

    @property
    def plan(self):
        """The plan the slider shows for the current budget and takes (None: no model, or too small)."""
        if self.model is None or self.view is None or self.view.error:
            return None
        return self.plans.plan(self.model, self.budget, self.batch)

    def set_budget(self, size: int) -> None:
        """Show `size` (not a choice of the user's: `chosen` stays as it was)."""
        self._setting, self._exact = True, size
        try:
            self.slider.setValue(bytes_to_slider(size))
            self._moved(self.slider.value())
        finally:
            self._setting = False

    def set_model(self, model, batch: int = 1) -> None:
        self.model, self.batch = model, batch
        self._default_unless_chosen()

    def set_batch(self, batch: int) -> None:
        self.batch = batch
        self._default_unless_chosen()

    def _default_unless_chosen(self) -> None:
        """The model's default for every take, unless the user chose a budget that this model can use."""
        if self.model is not None and not self.chosen:
            self.set_budget(default_budget(self.model, self.batch))
            return
        self._moved(self.slider.value())
        if self.model is not None and self.view is not None and self.view.error:  # too small for this model
            self.set_budget(default_budget(self.model, self.batch))

    def set_live(self, state_bytes: int | None) -> None:
        """The state's memory while generating (None: not generating)."""
        self.live.setText("" if state_bytes is None else
                          f"state in use now: {format_bytes(state_bytes)} of {format_bytes(self.budget)}")
        self.live.setVisible(state_bytes is not None)

    def _moved(self, _position: int) -> None:
        if not self._setting and _position != getattr(self, "_shown", _position):
            self.chosen, self._exact = True, None  # the user (or a caller of the slider itself) moved it
        self._shown = _position
        size = self.budget
        self.value.setText(format_bytes(size))
        if self.model is None:
            self.view = None
            self.headline.setText("Pick a model to see what this budget buys.")
            self.headline.setObjectName("hint")
            self.bars.set_bars(())
        else:
            self.view = budget_view(self.model, size, self.batch, self.plans)
            if self.view.error:
                self.headline.setText(f"Too small: {self.view.error.split(': ', 1)[-1]}")
                self.headline.setObjectName("warning")
            else:
                takes = f" ({self.batch} takes)" if self.batch > 1 else ""
                self.headline.setText(f"State {format_bytes(self.view.state_bytes)}{takes}: {self.view.headline}")
                self.headline.setObjectName("")
            self.headline.setToolTip(self.view.detail)
            self.bars.set_bars(self.view.bars)
        bars = self.view.bars if self.view is not None else ()
        self.caption.setText("" if not bars else "Each layer's memory, in tokens · seconds of music:"
                             if len(bars) > 1 else "How far back it reads, in tokens · seconds of music:")
        self.caption.setVisible(bool(bars))
        self.headline.style().unpolish(self.headline)
        self.headline.style().polish(self.headline)
        self.changed.emit(size)
