"""The piece being worked on: the composer's notes and the model's notes, with undo/redo of every change.

A `Piece` is immutable (two `Performance`s); every change (a generation, a take switch, deleted notes, an
opened file, a recorded primer) pushes one `SetPiece` command on the document's QUndoStack, so undo/redo and
the unsaved-changes prompt come from the stack alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from core.constraints import Constraints
from core.grid import Grid
from core.midi import Performance, read_performance, write_performance


@dataclass(frozen=True)
class Piece:
    primer: Performance  # the composer's notes (opened, recorded, or kept from earlier)
    generated: Performance  # notes the model wrote

    @staticmethod
    def empty() -> Piece:
        return Piece(Performance.empty(), Performance.empty())

    @property
    def whole(self) -> Performance:
        return replace(Performance.concat(self.primer, self.generated), grid=self.grid)

    @property
    def grid(self) -> Grid:
        """The piece's tempo map and time signatures: its primer's file's (or its generation's), else 120 BPM 4/4."""
        return self.primer.grid or self.generated.grid or Grid.constant()

    @property
    def duration(self) -> float:
        return max(self.primer.duration, self.generated.duration)

    def __len__(self) -> int:
        return len(self.primer) + len(self.generated)

    def before(self, seconds: float) -> Piece:
        """The piece up to `seconds` (notes starting later dropped, notes sounding then cut there)."""
        return Piece(self.primer.slice_time(0.0, seconds), self.generated.slice_time(0.0, seconds))

    def with_generated(self, new: Performance) -> Piece:
        return Piece(self.primer, Performance.concat(self.generated, new))

    def without(self, primer_indices: list[int], generated_indices: list[int]) -> Piece:
        return Piece(_drop(self.primer, primer_indices), _drop(self.generated, generated_indices))


def _drop(perf: Performance, indices: list[int]) -> Performance:
    if not indices:
        return perf
    keep = np.ones(len(perf), dtype=bool)
    keep[np.asarray(indices, dtype=np.int64)] = False
    return Performance(perf.onset[keep], perf.offset[keep], perf.pitch[keep], perf.velocity[keep], grid=perf.grid)


@dataclass(frozen=True)
class WriteControls:
    """The Write panel's limits on what the model writes, as the composer set them for this document."""

    key: str = ""  # "": no scale lock; "primer": the key of the piece; else a key name, "D minor"
    low: int = 0  # pitch range (MIDI)
    high: int = 127
    velocity_low: int = 1  # dynamics
    velocity_high: int = 127
    density: float = 0.0  # notes per second steered toward; 0: off

    def constraints(self) -> Constraints | None:
        """The core's constraints (ConstraintError on a combination that cannot be met); None: nothing limited."""
        made = Constraints.parse(key=self.key or None, range_=f"{self.low}-{self.high}",
                                 velocity=f"{self.velocity_low}-{self.velocity_high}",
                                 density=self.density or None)
        return made if made.active else None


class SetPiece(QUndoCommand):
    """Replace the whole piece (pieces are small: a few arrays), remembering the previous one."""

    def __init__(self, document: Document, new: Piece, text: str):
        super().__init__(text)
        self.document = document
        self.old = document.piece
        self.new = new

    def redo(self) -> None:
        self.document._set(self.new)

    def undo(self) -> None:
        self.document._set(self.old)


class Document(QObject):
    """The current piece, its file, and its undo stack."""

    changed = Signal()  # the piece changed (draw it again)
    path_changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self.piece = Piece.empty()
        self.path: Path | None = None
        self.written = False  # `path` holds what this document saved (not a file it opened): Save may replace it
        self.undo_stack = QUndoStack(self)
        self.controls = WriteControls()  # the Write panel's limits for this piece (a new document: none)

    def _set(self, piece: Piece) -> None:
        self.piece = piece
        self.changed.emit()

    def apply(self, piece: Piece, text: str) -> None:
        """Change the piece as one undoable step."""
        self.undo_stack.push(SetPiece(self, piece, text))

    @property
    def modified(self) -> bool:
        return not self.undo_stack.isClean()

    @property
    def title(self) -> str:
        return self.path.name if self.path else "Untitled"

    def open(self, path: str | Path) -> None:
        """Read a MIDI file as the composer's notes (MidiError on anything unreadable): a fresh history."""
        perf = read_performance(path)
        self.replace(Piece(perf, Performance.empty()), Path(path))

    def replace(self, piece: Piece, path: Path | None = None) -> None:
        """Start over with `piece` (a new or opened document): history cleared, nothing unsaved."""
        self.undo_stack.clear()
        self.path = path
        self.written = False
        self.controls = WriteControls()
        self._set(piece)
        self.path_changed.emit()

    def save(self, path: str | Path) -> None:
        """Write the whole piece as one MIDI file (atomically); the document is clean afterwards."""
        write_performance(self.piece.whole, path)
        self.path = Path(path)
        self.written = True
        self.undo_stack.setClean()
        self.path_changed.emit()
