"""Drag the piece (or only the generated part) out of the window as a .mid file, onto a DAW track or a folder.

`drag_file(perf, name)` writes the file the drag carries (pure, testable); `DragButton` starts the drag. The file
carries the piece's tempo map and time signatures (its primer's, or the new piece's 120 BPM 4/4), so the notes land
on the DAW's bars as they sit on the roll's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDrag
from PySide6.QtWidgets import QApplication, QToolButton, QWidget

from core.errors import MidiError
from core.grid import Grid
from core.midi import Performance, write_performance


def drag_folder() -> Path:
    folder = Path(tempfile.gettempdir()) / "recital-drag"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drag_file(perf: Performance, name: str, grid: Grid | None = None) -> Path:
    """Write `perf` as <temp>/recital-drag/<name>.mid for a drag (MidiError when there is nothing to drag), on
    `grid`, else the performance's own grid, else 120 BPM 4/4."""
    if len(perf) == 0:
        raise MidiError(name, "nothing to drag: this part has no notes yet")
    path = drag_folder() / f"{name}.mid"
    write_performance(perf, path, grid=grid)
    return path


def mime_for(path: Path) -> QMimeData:
    data = QMimeData()
    data.setUrls([QUrl.fromLocalFile(str(path))])
    return data


class DragButton(QToolButton):
    """A handle: press and drag it to carry what `source()` returns (a Performance and a file name)."""

    def __init__(self, text: str, source: Callable[[], tuple[Performance, str]], parent: QWidget | None = None):
        super().__init__(parent)
        self.setText(text)
        self.source = source
        self.setCursor(Qt.OpenHandCursor)
        self._pressed: QPoint | None = None

    def mousePressEvent(self, event) -> None:
        self._pressed = event.position().toPoint()
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:
        if self._pressed is None or not event.buttons() & Qt.LeftButton:
            return
        if (event.position().toPoint() - self._pressed).manhattanLength() < QApplication.startDragDistance():
            return
        self._pressed = None
        self.setDown(False)
        perf, name = self.source()
        try:
            path = drag_file(perf, name)
        except MidiError as error:
            self.window().statusBar().showMessage(str(error), 5000)
            return
        drag = QDrag(self)
        drag.setMimeData(mime_for(path))
        drag.exec(Qt.CopyAction)

    def mouseReleaseEvent(self, event) -> None:
        self._pressed = None
        super().mouseReleaseEvent(event)
