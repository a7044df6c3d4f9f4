"""Start Recital Studio: `recital-studio [FILE.mid] [--model DIR]` or `recital studio ...`."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = "Recital Studio: continue, compose, play and fine-tune piano music under a memory budget."


def build_parser(prog: str = "recital-studio") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", nargs="?", metavar="FILE.mid", help="a MIDI file to open")
    parser.add_argument("--model", action="append", default=[], metavar="DIR",
                        help="a model directory to offer in the picker (repeatable)")


def make_window(file: str | None = None, models: list[str] = (), list_ports: bool = True):
    """The main window with the user's settings, `models` added to the picker and `file` opened."""
    from studio.settings import Settings
    from studio.window import MainWindow

    window = MainWindow(Settings.load(), extra_models=list(models), list_ports=list_ports)
    if file:
        window.open_file(file)
    return window


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return start(args.file, args.model)


def start(file: str | None, models: list[str]) -> int:
    from PySide6.QtWidgets import QApplication

    from studio import theme

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "recital-studio"])
    app.setApplicationName("Recital Studio")
    app.setOrganizationName("Recital")
    theme.apply(app)
    window = make_window(file, models)
    window.show()
    return int(app.exec())
