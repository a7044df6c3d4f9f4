"""One dark theme for the whole app: a Fusion palette plus a short style sheet, and the piano roll's colours."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

BACKGROUND = QColor("#1e2127")
PANEL = QColor("#272b33")
RAISED = QColor("#323742")
TEXT = QColor("#e6e6e6")
MUTED = QColor("#9aa3b2")
ACCENT = QColor("#4aa3ff")
PRIMER = QColor("#4aa3ff")  # notes the composer brought
GENERATED = QColor("#ffb347")  # notes the model wrote
PLAYHEAD = QColor("#ff5c5c")
ERROR = QColor("#ff7b72")

STYLE = f"""
QWidget {{ font-size: 10pt; }}
QGroupBox {{ border: 1px solid {RAISED.name()}; border-radius: 6px; margin-top: 12px; padding: 6px 4px 4px 4px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: {MUTED.name()};
                    font-weight: bold; }}
QPushButton, QToolButton {{ background: {RAISED.name()}; border: 1px solid #454b57; border-radius: 5px;
                            padding: 5px 10px; }}
QPushButton:hover, QToolButton:hover {{ border-color: {ACCENT.name()}; }}
QPushButton:disabled, QToolButton:disabled {{ color: #6b7280; }}
QPushButton#primary {{ background: {ACCENT.name()}; color: #0b1220; font-weight: bold; border: none; }}
QPushButton#primary:disabled {{ background: #3a4a5e; color: #8090a0; }}
QPushButton#stop {{ background: {PLAYHEAD.name()}; color: #1a0b0b; font-weight: bold; border: none; }}
QToolButton:checked {{ background: #3d5a80; }}
QPushButton#link {{ background: transparent; border: none; color: {ACCENT.name()}; padding: 1px 2px; }}
QPushButton#link:hover {{ text-decoration: underline; }}
QPushButton#link:disabled {{ color: #6b7280; }}
QLabel#hint {{ color: {MUTED.name()}; }}
QLabel#warning {{ color: {GENERATED.name()}; }}
QComboBox, QSpinBox, QDoubleSpinBox, QLineEdit {{ background: {BACKGROUND.name()}; border: 1px solid #454b57;
                                                  border-radius: 4px; padding: 3px 6px; }}
QProgressBar {{ border: 1px solid #454b57; border-radius: 4px; text-align: center; background: {BACKGROUND.name()}; }}
QProgressBar::chunk {{ background: {ACCENT.name()}; border-radius: 3px; }}
QStatusBar {{ color: {MUTED.name()}; }}
"""


def apply(app: QApplication) -> None:
    """Fusion with a dark palette: the same look on every platform, readable in a dim studio."""
    app.setStyle("Fusion")
    palette = QPalette()
    palette.setColor(QPalette.Window, PANEL)
    palette.setColor(QPalette.WindowText, TEXT)
    palette.setColor(QPalette.Base, BACKGROUND)
    palette.setColor(QPalette.AlternateBase, PANEL)
    palette.setColor(QPalette.ToolTipBase, RAISED)
    palette.setColor(QPalette.ToolTipText, TEXT)
    palette.setColor(QPalette.Text, TEXT)
    palette.setColor(QPalette.Button, RAISED)
    palette.setColor(QPalette.ButtonText, TEXT)
    palette.setColor(QPalette.Highlight, ACCENT)
    palette.setColor(QPalette.HighlightedText, QColor("#0b1220"))
    palette.setColor(QPalette.PlaceholderText, MUTED)
    for role in (QPalette.WindowText, QPalette.Text, QPalette.ButtonText):
        palette.setColor(QPalette.Disabled, role, QColor("#6b7280"))
    app.setPalette(palette)
    font = QFont(app.font())
    font.setPointSizeF(max(font.pointSizeF(), 10.0))
    app.setFont(font)
    app.setStyleSheet(STYLE)


def note_color(base: QColor, velocity: int) -> QColor:
    """Velocity as shade: soft notes dim, loud notes bright."""
    shade = QColor(base)
    h, s, v, _ = shade.getHsvF()
    level = 0.35 + 0.65 * max(1, min(127, int(velocity))) / 127.0
    shade.setHsvF(h, s, v * level)
    return shade
