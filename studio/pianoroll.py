"""The piano roll: the piece as coloured bars (the composer's notes blue, the model's amber, velocity as
shade), a time ruler that places the playhead, a key column, horizontal zoom and scrolling, and live notes.

Scene units: x = seconds * PX_PER_SECOND, y = (127 - pitch) * KEY_HEIGHT. Zoom is a horizontal view scale,
so bars keep their height and the ruler relabels itself. `fit` shows the piece: its duration across, its pitch
range (a few keys either side) down, the keys growing to fill the height instead of showing C-1 to C9.

The background draws the piece's bars and beats (its tempo map and time signatures: a primer's file's, a new
piece's 120 BPM 4/4), the ruler numbers the bars above the clock, and both the playhead (a click in the ruler) and
a rubber-band selection snap to the nearest beat; Alt held while placing or selecting turns the snap off.

A region (the stretch "Regenerate selection" writes anew) is a time range dragged on the ruler or Shift-dragged on
the roll, with a pitch range too when Ctrl is held as well (a rectangle); it snaps to beats like the rest (Alt:
free), is drawn as a translucent band under the notes, survives redrawing the piece (switching takes) and is
cleared with Esc.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QPainter, QPen
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsItem,
    QGraphicsLineItem,
    QGraphicsRectItem,
    QGraphicsScene,
    QGraphicsView,
    QGridLayout,
    QToolTip,
    QWidget,
)

from core.grid import Grid
from core.midi import Performance
from core.tokenizer import NoteEvent
from studio import theme
from studio.document import Piece

PX_PER_SECOND = 60.0
KEY_HEIGHT = 7.0
RULER_HEIGHT = 34  # bar numbers above, the clock below
MIN_LINE_GAP = 6  # pixels: beats closer than this are not drawn, and bars are thinned to every 2nd, 4th, ...
MIN_LABEL_GAP = 28  # pixels between bar numbers in the ruler
KEYS_WIDTH = 46
MIN_SCALE, MAX_SCALE = 0.002, 20.0
MAX_KEY_SCALE = 3.0  # keys at most 21 pixels tall, however few pitches a piece has
PITCH_MARGIN = 2  # keys shown above and below a piece's range
MIN_PITCH_SPAN = 24  # a fitted roll shows at least two octaves
EMPTY_RANGE = (48, 84)  # C3..C6: what a roll without notes shows
BLACK_KEYS = {1, 3, 6, 8, 10}
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
DRAG_THRESHOLD = 4  # pixels a press on the ruler moves before it selects a region instead of placing the playhead
REGION_FILL = QColor(120, 170, 255, 48)
REGION_EDGE = QColor(120, 170, 255, 190)


def note_name(pitch: int) -> str:
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


@dataclass(frozen=True)
class Region:
    """The stretch chosen for regenerating: onsets in [start, end) seconds and, when `low`/`high` are set, only
    the pitches between them (inclusive); the notes above and below are kept."""

    start: float
    end: float
    low: int | None = None
    high: int | None = None

    def inside(self, onset: np.ndarray, pitch: np.ndarray) -> np.ndarray:
        """Which notes (by onset and pitch) the region covers: the ones a regeneration replaces."""
        mask = (onset >= self.start - 1e-9) & (onset < self.end - 1e-9)
        if self.low is not None:
            mask &= pitch >= self.low
        if self.high is not None:
            mask &= pitch <= self.high
        return mask

    def describe(self) -> str:
        span = f"{clock(self.start)}–{clock(self.end)}"
        return span if self.low is None or self.high is None else f"{span}, {note_name(self.low)}–{note_name(self.high)}"


def pitch_y(pitch: int) -> float:
    return (127 - pitch) * KEY_HEIGHT


@functools.cache
def _brush(part: str, velocity: int) -> QBrush:
    return QBrush(theme.note_color(theme.PRIMER if part == "primer" else theme.GENERATED, velocity))


@functools.cache
def _pen(part: str) -> QPen:
    pen = QPen((theme.PRIMER if part == "primer" else theme.GENERATED).darker(180))
    pen.setCosmetic(True)
    return pen


class NoteItem(QGraphicsRectItem):
    """One note; remembers which part of the piece it belongs to and its index there (for edits).

    Painting stays in C++ (no Python paint override) and brushes are shared, so a 20,000-note recital
    draws quickly; the tooltip is made on demand by the view.
    """

    def __init__(self, part: str, index: int, onset: float, offset: float, pitch: int, velocity: int):
        width = max(offset - onset, 0.01) * PX_PER_SECOND
        super().__init__(onset * PX_PER_SECOND, pitch_y(pitch) + 0.5, width, KEY_HEIGHT - 1.0)
        self.part, self.index = part, index
        self.note = (onset, offset, pitch, velocity)
        self.setBrush(_brush(part, int(velocity)))
        self.setPen(_pen(part))
        if part != "live":
            self.setFlag(QGraphicsItem.ItemIsSelectable)

    def describe(self) -> str:
        onset, offset, pitch, velocity = self.note
        return f"{note_name(pitch)}   velocity {velocity}   {onset:.2f}–{offset:.2f} s"


class _View(QGraphicsView):
    """The scrolling, zooming canvas; the ruler and key column follow it."""

    zoomed = Signal()

    def __init__(self, scene: QGraphicsScene, roll: PianoRoll):
        super().__init__(scene)
        self.roll = roll
        self.setFrameShape(QFrame.NoFrame)
        self.setDragMode(QGraphicsView.RubberBandDrag)
        self.setViewportUpdateMode(QGraphicsView.SmartViewportUpdate)
        self.setTransformationAnchor(QGraphicsView.AnchorViewCenter)  # the wheel zooms under the mouse instead
        self.setAlignment(Qt.AlignLeft | Qt.AlignTop)
        self.setBackgroundBrush(theme.BACKGROUND)
        self._band: QRectF | None = None  # the rubber band in scene units while one is dragged
        self._region_from: QPointF | None = None  # where a Shift-drag (a region) began, in scene units

    @property
    def x_scale(self) -> float:
        return self.transform().m11()

    @property
    def y_scale(self) -> float:
        return self.transform().m22()

    def zoom(self, factor: float, under_mouse: bool = False) -> None:
        """Scale time by `factor`, about the view's centre (or the point under the mouse, for the wheel: a zoom
        from a button or from code must not anchor at a pointer that merely rests over the roll)."""
        factor = max(MIN_SCALE / self.x_scale, min(MAX_SCALE / self.x_scale, factor))
        if under_mouse:
            self.setTransformationAnchor(QGraphicsView.AnchorUnderMouse)
        try:
            self.scale(factor, 1.0)
        finally:
            self.setTransformationAnchor(QGraphicsView.AnchorViewCenter)
        self.zoomed.emit()

    def viewportEvent(self, event) -> bool:
        if event.type() == QEvent.ToolTip:
            item = self.itemAt(event.pos())
            if isinstance(item, NoteItem):
                QToolTip.showText(event.globalPos(), item.describe(), self)
            else:
                QToolTip.hideText()
            return True
        return super().viewportEvent(event)

    def mousePressEvent(self, event) -> None:
        if event.button() == Qt.LeftButton and event.modifiers() & Qt.ShiftModifier:  # a region, not notes
            self._region_from = self.mapToScene(event.position().toPoint())
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self._region_from is not None:
            self._drag_region(event)
            return
        super().mouseMoveEvent(event)
        if not self.rubberBandRect().isNull():
            self._band = self.mapToScene(self.rubberBandRect()).boundingRect()

    def _drag_region(self, event) -> None:
        """The region from where the Shift-drag began to the pointer: time only, or a rectangle with Ctrl."""
        here = self.mapToScene(event.position().toPoint())
        start, end = self._region_from.x() / PX_PER_SECOND, here.x() / PX_PER_SECOND
        low = high = None
        if event.modifiers() & Qt.ControlModifier:
            top, bottom = sorted((self._region_from.y(), here.y()))
            low, high = 127 - int(bottom / KEY_HEIGHT), 127 - int(top / KEY_HEIGHT)
        self.roll.set_region(start, end, low, high, snap=not event.modifiers() & Qt.AltModifier)

    def keyPressEvent(self, event) -> None:
        if event.key() == Qt.Key_Escape and self.roll.region is not None:
            self.roll.clear_region()
            event.accept()
            return
        super().keyPressEvent(event)

    def mouseReleaseEvent(self, event) -> None:
        if self._region_from is not None:
            self._drag_region(event)
            self._region_from = None
            event.accept()
            return
        band, self._band = self._band, None
        super().mouseReleaseEvent(event)
        if band is not None and not event.modifiers() & Qt.AltModifier:  # Alt: exactly the notes the band touched
            low, high = 127 - int(band.bottom() / KEY_HEIGHT), 127 - int(band.top() / KEY_HEIGHT)
            self.roll.select_span(band.left() / PX_PER_SECOND, band.right() / PX_PER_SECOND, low, high,
                                  add=bool(event.modifiers() & Qt.ControlModifier))

    def wheelEvent(self, event) -> None:
        delta = event.angleDelta().y() or event.angleDelta().x()
        if event.modifiers() & Qt.ControlModifier:
            self.zoom(1.15 ** (delta / 120), under_mouse=True)
        elif event.modifiers() & Qt.ShiftModifier:
            bar = self.horizontalScrollBar()
            bar.setValue(bar.value() - delta)
        else:
            super().wheelEvent(event)

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:
        painter.fillRect(rect, theme.BACKGROUND)
        low = max(0, int(127 - rect.bottom() / KEY_HEIGHT))
        high = min(127, int(127 - rect.top() / KEY_HEIGHT) + 1)
        black = QColor("#191b20")
        for pitch in range(low, high + 1):
            y = pitch_y(pitch)
            if pitch % 12 in BLACK_KEYS:
                painter.fillRect(QRectF(rect.left(), y, rect.width(), KEY_HEIGHT), black)
            if pitch % 12 == 0:
                painter.setPen(QPen(QColor("#3a3f4b"), 0))
                painter.drawLine(QPointF(rect.left(), y + KEY_HEIGHT), QPointF(rect.right(), y + KEY_HEIGHT))
        bars, beats = self.roll.grid_lines(rect.left() / PX_PER_SECOND, rect.right() / PX_PER_SECOND)
        for seconds, colour in ((beats, "#2a2e36"), ([t for _, t in bars], "#4b5262")):
            painter.setPen(QPen(QColor(colour), 0))
            for t in seconds:
                x = t * PX_PER_SECOND
                painter.drawLine(QPointF(x, rect.top()), QPointF(x, rect.bottom()))


def time_step(x_scale: float) -> float:
    """Seconds between ruler ticks so labels sit at least ~70 pixels apart."""
    for step in (0.25, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300):
        if step * PX_PER_SECOND * x_scale >= 70:
            return step
    return 600


def clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}:{rest:04.1f}" if rest != int(rest) else f"{int(minutes)}:{int(rest):02d}"


class Ruler(QWidget):
    """Seconds along the top; a click or drag places the playhead."""

    def __init__(self, roll: PianoRoll):
        super().__init__(roll)
        self.roll = roll
        self.setFixedHeight(RULER_HEIGHT)
        self.setCursor(Qt.PointingHandCursor)
        self.setToolTip("Click to place the playhead (Continue from the playhead starts here); drag to select a "
                        "time range to regenerate (Esc clears it)")
        self._pressed_at: float | None = None  # the x of a press still held

    def paintEvent(self, _event) -> None:
        view = self.roll.view
        painter = QPainter(self)
        painter.fillRect(self.rect(), theme.PANEL)
        painter.setPen(theme.MUTED)
        step = time_step(view.x_scale)
        left = view.mapToScene(0, 0).x() / PX_PER_SECOND
        right = view.mapToScene(view.viewport().width(), 0).x() / PX_PER_SECOND
        region = self.roll.region
        if region is not None:
            x0, x1 = self._x(region.start), self._x(region.end)
            painter.fillRect(QRectF(x0, 0, x1 - x0, RULER_HEIGHT), REGION_FILL)
        bars, _beats = self.roll.grid_lines(left, right, gap=MIN_LABEL_GAP)
        for number, t in bars:  # the bar numbers, above the clock
            x = self._x(t)
            painter.drawLine(int(x), 0, int(x), 12)
            painter.drawText(int(x) + 3, 11, str(number))
        t = max(0.0, math.floor(left / step) * step)
        while t <= right:
            x = self._x(t)
            painter.drawLine(int(x), RULER_HEIGHT - 7, int(x), RULER_HEIGHT)
            painter.drawText(int(x) + 4, RULER_HEIGHT - 9, clock(t))
            t += step
        x = self._x(self.roll.playhead)
        painter.setPen(Qt.NoPen)
        painter.setBrush(theme.PLAYHEAD)
        painter.drawPolygon([QPointF(x - 6, 2), QPointF(x + 6, 2), QPointF(x, RULER_HEIGHT - 2)])
        painter.end()

    def _x(self, seconds: float) -> float:
        return self.roll.view.mapFromScene(QPointF(seconds * PX_PER_SECOND, 0)).x()

    def mousePressEvent(self, event) -> None:
        self._pressed_at = event.position().x()
        self.roll.view.setFocus()  # so that Esc clears a region dragged here
        self._place(event.position().x(), snap=not event.modifiers() & Qt.AltModifier)

    def mouseMoveEvent(self, event) -> None:
        if not event.buttons() & Qt.LeftButton or self._pressed_at is None:
            return
        x, snap = event.position().x(), not event.modifiers() & Qt.AltModifier
        if abs(x - self._pressed_at) >= DRAG_THRESHOLD:  # a drag: the time range between press and pointer
            self.roll.set_region(self._seconds(self._pressed_at), self._seconds(x), snap=snap)

    def mouseReleaseEvent(self, event) -> None:
        self._pressed_at = None

    def _seconds(self, x: float) -> float:
        return max(0.0, self.roll.view.mapToScene(int(x), 0).x() / PX_PER_SECOND)

    def _place(self, x: float, snap: bool = True) -> None:
        """The playhead under `x`, on the nearest beat unless `snap` is off (Alt held)."""
        seconds = self._seconds(x)
        self.roll.set_playhead(self.roll.snap(seconds) if snap else seconds, user=True)


class Keys(QWidget):
    """The key column: black and white keys with the C of each octave named."""

    def __init__(self, roll: PianoRoll):
        super().__init__(roll)
        self.roll = roll
        self.setFixedWidth(KEYS_WIDTH)

    def paintEvent(self, _event) -> None:
        view = self.roll.view
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor("#d9dce1"))
        key = KEY_HEIGHT * view.y_scale  # on screen
        font = painter.font()
        font.setPointSizeF(7.5)
        painter.setFont(font)
        for pitch in range(128):
            top = view.mapFromScene(QPointF(0, pitch_y(pitch))).y()
            if top > self.height() or top + key < 0:
                continue
            if pitch % 12 in BLACK_KEYS:
                painter.fillRect(QRectF(0, top, KEYS_WIDTH * 3 // 5, key), QColor("#23262d"))
            if pitch % 12 == 0:
                painter.setPen(QColor("#8a9099"))
                painter.drawLine(QPointF(0, top + key), QPointF(KEYS_WIDTH, top + key))
                painter.setPen(QColor("#1e2127"))
                painter.drawText(QRectF(0, top - 4, KEYS_WIDTH - 4, key + 6),
                                 Qt.AlignRight | Qt.AlignVCenter, f"C{pitch // 12 - 1}")
        painter.end()


class PianoRoll(QWidget):
    """The piece on screen; `playhead_moved(seconds)` when the composer places it, `region_changed(Region or
    None)` when a region is selected, changed or cleared."""

    playhead_moved = Signal(float)
    region_changed = Signal(object)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.scene = QGraphicsScene(self)
        self.view = _View(self.scene, self)
        self.ruler = Ruler(self)
        self.keys = Keys(self)
        layout = QGridLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        corner = QWidget(self)
        corner.setFixedSize(KEYS_WIDTH, RULER_HEIGHT)
        corner.setAutoFillBackground(True)
        layout.addWidget(corner, 0, 0)
        layout.addWidget(self.ruler, 0, 1)
        layout.addWidget(self.keys, 1, 0)
        layout.addWidget(self.view, 1, 1)
        self.playhead = 0.0
        self.duration = 0.0
        self.grid = Grid.constant()  # the piece's tempo map and time signatures (see set_piece)
        self.pitches: tuple[int, int] | None = None  # lowest and highest pitch drawn (None: no notes)
        self._fitted_once = False
        self._live: list[NoteItem] = []
        self.region: Region | None = None
        self._region_item: QGraphicsRectItem | None = None
        self._add_playhead()
        for bar in (self.view.horizontalScrollBar(), self.view.verticalScrollBar()):
            bar.valueChanged.connect(self._follow)
        self.view.zoomed.connect(self._follow)
        self._resize_scene(0.0)
        self.view.centerOn(0, pitch_y(66))  # until it is shown and fitted

    # -- content ----------------------------------------------------------------------------------------------

    def _add_playhead(self) -> None:
        self._line = QGraphicsLineItem()
        pen = QPen(theme.PLAYHEAD, 0)
        pen.setCosmetic(True)
        self._line.setPen(pen)
        self._line.setZValue(10)
        self.scene.addItem(self._line)

    def set_piece(self, piece: Piece) -> None:
        """Draw the piece anew (live notes are dropped)."""
        self._live.clear()
        self.scene.clear()  # one call, instead of removing thousands of notes one by one
        self._region_item = None
        self._add_playhead()
        self._draw_region()
        self.pitches = None
        self.grid = piece.grid
        for part, perf in (("primer", piece.primer), ("generated", piece.generated)):
            self._add(part, perf)
        self.duration = piece.duration
        self._resize_scene(self.duration)
        self._follow()

    def _add(self, part: str, perf: Performance) -> None:
        if len(perf):
            self._extend_pitches(int(perf.pitch.min()), int(perf.pitch.max()))
        for i, (on, off, pitch, vel) in enumerate(zip(perf.onset.tolist(), perf.offset.tolist(),
                                                      perf.pitch.tolist(), perf.velocity.tolist(), strict=True)):
            self.scene.addItem(NoteItem(part, i, on, off, pitch, vel))

    def add_live(self, events: list[NoteEvent], follow: bool = True) -> None:
        """Notes just generated (each an "off" event carrying its onset): drawn at once, scrolled into view."""
        for event in events:
            item = NoteItem("live", len(self._live), event.onset, event.time, event.pitch, event.velocity)
            self.scene.addItem(item)
            self._live.append(item)
            self._extend_pitches(event.pitch, event.pitch)
            self.duration = max(self.duration, event.time)
        if events:
            self._resize_scene(self.duration)
            if follow:
                self.view.ensureVisible(QRectF(self.duration * PX_PER_SECOND, self.view.mapToScene(
                    0, self.view.viewport().height() // 2).y(), 1, 1), 80, 0)

    def clear_live(self) -> None:
        for item in self._live:
            self.scene.removeItem(item)
        self._live.clear()

    def _extend_pitches(self, low: int, high: int) -> None:
        self.pitches = (low, high) if self.pitches is None else (min(self.pitches[0], low),
                                                                 max(self.pitches[1], high))

    def notes(self, part: str) -> list[NoteItem]:
        return [i for i in self.scene.items() if isinstance(i, NoteItem) and i.part == part]

    def selected(self) -> tuple[list[int], list[int]]:
        """Indices of the selected notes in the primer and in the generated part."""
        items = [i for i in self.scene.selectedItems() if isinstance(i, NoteItem)]
        return (sorted(i.index for i in items if i.part == "primer"),
                sorted(i.index for i in items if i.part == "generated"))

    def select_span(self, start: float, end: float, low: int, high: int, add: bool = False) -> None:
        """Select the notes with an onset between the beats nearest `start` and `end` and a pitch in [low, high]
        (`add`: keep what was selected): a rubber band, snapped to the beats."""
        start, end = self.snap(start), self.snap(end)
        for item in self.scene.items():
            if isinstance(item, NoteItem) and item.part != "live":
                onset, _offset, pitch, _velocity = item.note
                inside = start - 1e-6 <= onset < end - 1e-6 and low <= pitch <= high
                if inside or not add:
                    item.setSelected(inside)

    # -- the region ------------------------------------------------------------------------------------------

    def set_region(self, start: float, end: float, low: int | None = None, high: int | None = None,
                   snap: bool = True) -> None:
        """Select the seconds between `start` and `end` (either order; on the nearest beats unless `snap` is
        off), and the pitches [low, high] when both are given; a range that snaps to nothing clears it."""
        start, end = sorted((max(0.0, start), max(0.0, end)))
        if snap:
            start, end = self.snap(start), self.snap(end)
        if end - start < 1e-3:
            self.clear_region()
            return
        if low is not None and high is not None:
            low, high = sorted((max(0, min(127, low)), max(0, min(127, high))))
        else:
            low = high = None
        region = Region(start, end, low, high)
        if region != self.region:
            self.region = region
            self._draw_region()
            self.region_changed.emit(region)

    def clear_region(self) -> None:
        if self.region is not None:
            self.region = None
            self._draw_region()
            self.region_changed.emit(None)

    def _draw_region(self) -> None:
        """The translucent band of the region (time: the whole height; with pitches: just those keys)."""
        region = self.region
        if region is None:
            if self._region_item is not None:
                self.scene.removeItem(self._region_item)
                self._region_item = None
            self.ruler.update()
            return
        if self._region_item is None:
            self._region_item = QGraphicsRectItem()
            pen = QPen(REGION_EDGE, 0)
            pen.setCosmetic(True)
            self._region_item.setPen(pen)
            self._region_item.setBrush(QBrush(REGION_FILL))
            self._region_item.setZValue(-1)  # under the notes (their clicks and tooltips), over the grid
            self._region_item.setAcceptedMouseButtons(Qt.NoButton)
            self.scene.addItem(self._region_item)
        top, bottom = 0.0, 128 * KEY_HEIGHT
        if region.low is not None and region.high is not None:
            top, bottom = pitch_y(region.high), pitch_y(region.low) + KEY_HEIGHT
        self._region_item.setRect(QRectF(region.start * PX_PER_SECOND, top,
                                         (region.end - region.start) * PX_PER_SECOND, bottom - top))
        self.ruler.update()

    # -- the grid ---------------------------------------------------------------------------------------------

    def snap(self, seconds: float) -> float:
        """The beat nearest `seconds`."""
        beats = self.grid.beat_lines(seconds + 10.0, since=max(0.0, seconds - 10.0))
        return float(beats[abs(beats - seconds).argmin()]) if len(beats) else seconds

    def grid_lines(self, start: float, end: float, gap: float = MIN_LINE_GAP) -> tuple[list[tuple[int, float]],
                                                                                      list[float]]:
        """The bars (number from 1, seconds) and beats (seconds) to draw between `start` and `end` at this zoom:
        beats only while `gap` pixels apart, bars thinned to every 2nd, 4th, ... bar until they are."""
        pixels = PX_PER_SECOND * self.view.x_scale
        every_bar = self.grid.bar_lines(end)  # from 0, so that each line's index is its number
        numbered = [(i + 1, float(t)) for i, t in enumerate(every_bar.tolist()) if t >= start - 1e-9]
        gaps = np.diff(every_bar) * pixels if len(every_bar) > 1 else np.array([math.inf])
        every = 1
        while every < len(every_bar) and np.min(gaps) * every < gap:
            every *= 2
        bars = [(number, t) for number, t in numbered if (number - 1) % every == 0]
        beats = self.grid.beat_lines(end, since=max(start, 0.0))
        shown = len(beats) < 2 or np.min(np.diff(beats)) * pixels >= gap
        return bars, (beats.tolist() if shown else [])

    # -- playhead, zoom -------------------------------------------------------------------------------------

    def set_playhead(self, seconds: float, user: bool = False) -> None:
        self.playhead = max(0.0, seconds)
        x = self.playhead * PX_PER_SECOND
        self._line.setLine(x, 0, x, 128 * KEY_HEIGHT)
        self.ruler.update()
        if user:
            self.playhead_moved.emit(self.playhead)

    def zoom(self, factor: float) -> None:
        self.view.zoom(factor)

    def fit(self) -> None:
        """Zoom so the whole piece fits: its duration across the width, its pitch range down the height."""
        width = max(self.view.viewport().width(), 100)
        span = max(self.duration, 10.0) * 1.05 * PX_PER_SECOND
        self.view.zoom(width / span / self.view.x_scale)
        self.fit_pitches()
        self.view.horizontalScrollBar().setValue(0)

    def fit_pitches(self) -> None:
        """Scale the keys so the piece's pitch range, a few keys either side, fills the height; time stays put."""
        low, high = self.pitch_span()
        height = max(self.view.viewport().height(), 50)
        whole = height / (128 * KEY_HEIGHT)  # never smaller than the whole keyboard in view
        target = min(MAX_KEY_SCALE, max(whole, height / ((high - low + 1) * KEY_HEIGHT)))
        self.view.scale(1.0, target / self.view.y_scale)
        x = self.view.mapToScene(self.view.viewport().rect().center()).x()
        self.view.centerOn(x, (pitch_y(high) + pitch_y(low) + KEY_HEIGHT) / 2)
        self._follow()

    def pitch_span(self) -> tuple[int, int]:
        """The pitches `fit` shows: the piece's range with a margin, at least two octaves, within 0..127."""
        low, high = self.pitches or EMPTY_RANGE
        low, high = low - PITCH_MARGIN, high + PITCH_MARGIN
        if high - low + 1 < MIN_PITCH_SPAN:
            grow = MIN_PITCH_SPAN - (high - low + 1)
            low, high = low - grow // 2, high + grow - grow // 2
        if low < 0:
            low, high = 0, high - low
        if high > 127:
            low, high = max(0, low - (high - 127)), 127
        return low, high

    def visible_pitches(self) -> tuple[int, int]:
        """The lowest and highest pitch whose key is wholly in view."""
        rect = self.view.mapToScene(self.view.viewport().rect()).boundingRect()
        return (math.ceil(127 - (rect.bottom() - KEY_HEIGHT) / KEY_HEIGHT - 1e-6),
                math.floor(127 - rect.top() / KEY_HEIGHT + 1e-6))

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if not self._fitted_once:  # the first time it has a size: show the piece (or the middle of the keyboard)
            self._fitted_once = True
            self.fit()

    def show_span(self, start: float, end: float) -> None:
        """Zoom and scroll so the seconds [start, end] fill the width (where new notes are about to appear)."""
        width = max(self.view.viewport().width(), 100)
        self._resize_scene(max(self.duration, end))
        self.view.zoom(width / (max(end - start, 1.0) * PX_PER_SECOND) / self.view.x_scale)
        self.view.horizontalScrollBar().setValue(int(start * PX_PER_SECOND * self.view.x_scale))
        self._follow()

    def _resize_scene(self, duration: float) -> None:
        width = (max(duration, 10.0) + 30.0) * PX_PER_SECOND
        self.scene.setSceneRect(0, 0, width, 128 * KEY_HEIGHT)
        self.set_playhead(self.playhead)

    def _follow(self, *_args) -> None:
        self.ruler.update()
        self.keys.update()
