"""A small live plot of training loss and held-out perplexity, drawn with QPainter (no plotting dependency).

Both curves share one axis in nats per token: held-out perplexity p is drawn at ln(p), and the axis labels
on the right read as perplexity, so the two curves can be compared directly.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QWidget

from studio import theme


class LossPlot(QWidget):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.train: list[tuple[float, float]] = []  # (step, loss)
        self.held_out: list[tuple[float, float]] = []  # (step, perplexity)
        self.setMinimumHeight(180)

    def clear(self) -> None:
        self.train.clear()
        self.held_out.clear()
        self.update()

    def add_loss(self, step: float, loss: float) -> None:
        if math.isfinite(loss):
            self.train.append((step, loss))
            self.update()

    def add_perplexity(self, step: float, perplexity: float) -> None:
        if math.isfinite(perplexity) and perplexity > 0:
            self.held_out.append((step, perplexity))
            self.update()

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.Antialiasing)
        painter.fillRect(self.rect(), theme.BACKGROUND)
        area = QRectF(48, 26, self.width() - 48 - 56, self.height() - 26 - 28)
        points = self.train + [(s, math.log(p)) for s, p in self.held_out]
        painter.setPen(theme.MUTED)
        if not points:
            painter.drawText(self.rect(), Qt.AlignCenter, "Loss and held-out perplexity appear here while training")
            painter.end()
            return
        x_max = max(s for s, _ in points) or 1.0
        y_low = min(v for _, v in points)
        y_high = max(v for _, v in points)
        if y_high - y_low < 1e-6:
            y_low, y_high = y_low - 0.5, y_high + 0.5
        pad = (y_high - y_low) * 0.08
        y_low, y_high = max(0.0, y_low - pad), y_high + pad

        def at(step: float, value: float) -> QPointF:
            return QPointF(area.left() + area.width() * step / x_max,
                           area.bottom() - area.height() * (value - y_low) / (y_high - y_low))

        grid = QPen(QColor("#2c3039"), 1)
        for i in range(5):
            value = y_low + (y_high - y_low) * i / 4
            y = at(0, value).y()
            painter.setPen(grid)
            painter.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            painter.setPen(theme.MUTED)
            painter.drawText(QRectF(0, y - 8, 44, 16), Qt.AlignRight | Qt.AlignVCenter, f"{value:.2f}")
            painter.drawText(QRectF(area.right() + 4, y - 8, 52, 16), Qt.AlignLeft | Qt.AlignVCenter,
                             f"{math.exp(value):.3g}")
        painter.drawText(QRectF(area.left(), area.bottom() + 6, area.width(), 16), Qt.AlignCenter,
                         f"step (0 – {x_max:.0f})")
        painter.drawText(QRectF(0, 4, 120, 16), Qt.AlignLeft, "loss (nats)")
        painter.drawText(QRectF(self.width() - 124, 4, 120, 16), Qt.AlignRight, "perplexity")
        if self.train:
            path = QPainterPath(at(*self.train[0]))
            for step, loss in self.train[1:]:
                path.lineTo(at(step, loss))
            painter.setPen(QPen(theme.ACCENT, 2))
            painter.drawPath(path)
        if self.held_out:
            painter.setPen(QPen(theme.GENERATED, 2))
            previous = None
            for step, ppl in self.held_out:
                point = at(step, math.log(ppl))
                if previous is not None:
                    painter.drawLine(previous, point)
                painter.setBrush(theme.GENERATED)
                painter.drawEllipse(point, 3.5, 3.5)
                previous = point
        legend = [(theme.ACCENT, f"training loss {self.train[-1][1]:.3f}" if self.train else "training loss")]
        if self.held_out:
            legend.append((theme.GENERATED, f"held-out perplexity {self.held_out[-1][1]:.2f}"))
        x = area.left() + 60
        for color, text in legend:
            painter.setPen(Qt.NoPen)
            painter.setBrush(color)
            painter.drawRoundedRect(QRectF(x, 8, 12, 8), 2, 2)
            painter.setPen(theme.TEXT)
            painter.drawText(QPointF(x + 16, 16), text)
            x += 16 + painter.fontMetrics().horizontalAdvance(text) + 18
        painter.end()
