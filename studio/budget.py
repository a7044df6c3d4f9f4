"""The Memory budget slider and what it buys: per-layer horizons (DSMR) or the context (PerceiverS), in tokens
and in seconds of music, computed by the model's own planner (`model.plan`), and the live state memory.

`budget_view(model, budget, batch)` is pure (testable without a window); `BudgetPanel` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QFontMetricsF, QPainter
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

from core.errors import RecitalError
from core.state import TOKENS_PER_SECOND, format_bytes
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


def budget_view(model, budget: int, batch: int = 1) -> BudgetView:
    """What `budget` bytes buy this model for `batch` takes (the error, not an exception, when too small)."""
    try:
        plan = model.plan(budget, batch)
    except RecitalError as error:
        return BudgetView("", (), 0, "", str(error))
    config = model.config
    detail, limit = plan.describe(), ""
    if hasattr(plan, "horizons"):  # DSMR: one memory horizon per layer, plus the current segment
        trained = getattr(config, "trained_horizons", None)
        longest = max(trained) if trained else config.max_horizon  # the most any layer can be given
        bars = tuple(Bar(f"layer {i + 1}", m + plan.segment_len, longest + plan.segment_len)
                     for i, m in enumerate(plan.horizons))
        note = model.memory_limit_note(budget, batch)
        if note:
            detail, limit = f"{detail}; {note}", " (all this model can use)"
    else:  # PerceiverS: the context the first cross-attention reads
        bars = (Bar("context", plan.context, config.context),)
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
        self._moved(self.slider.value())

    @property
    def budget(self) -> int:
        return slider_to_bytes(self.slider.value())

    def set_budget(self, size: int) -> None:
        self.slider.setValue(bytes_to_slider(size))
        self._moved(self.slider.value())

    def set_model(self, model, batch: int = 1) -> None:
        self.model, self.batch = model, batch
        self._moved(self.slider.value())

    def set_batch(self, batch: int) -> None:
        self.batch = batch
        self._moved(self.slider.value())

    def set_live(self, state_bytes: int | None) -> None:
        """The state's memory while generating (None: not generating)."""
        self.live.setText("" if state_bytes is None else
                          f"state in use now: {format_bytes(state_bytes)} of {format_bytes(self.budget)}")
        self.live.setVisible(state_bytes is not None)

    def _moved(self, _position: int) -> None:
        size = self.budget
        self.value.setText(format_bytes(size))
        if self.model is None:
            self.view = None
            self.headline.setText("Pick a model to see what this budget buys.")
            self.headline.setObjectName("hint")
            self.bars.set_bars(())
        else:
            self.view = budget_view(self.model, size, self.batch)
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
