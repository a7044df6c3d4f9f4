"""Recital Studio, the PySide6 desktop app over the Qt-free core and trainer."""

from __future__ import annotations

import sys

from studio import compat  # noqa: F401  (PySide6 6.12 on Python 3.11 leaks None references: see there)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recital-studio`."""
    from studio.app import run

    return run(sys.argv[1:] if argv is None else argv)
