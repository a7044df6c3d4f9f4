"""Error dialogs: core's one-line message, shown plainly (no traceback), and kept in the status bar."""

from __future__ import annotations

from PySide6.QtWidgets import QMessageBox, QWidget


def show_error(parent: QWidget | None, title: str, message: str) -> None:
    QMessageBox.warning(parent, f"Recital — {title}", message)
