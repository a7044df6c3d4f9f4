"""Recital Studio, the PySide6 desktop app over the Qt-free core and trainer."""

from __future__ import annotations

import sys

from studio import compat  # noqa: F401  (PySide6 6.12 on Python 3.11 leaks None references: see there)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `recital-studio`."""
    try:
        from studio.app import run
    except ModuleNotFoundError as error:
        if error.name != "studio.app":
            raise
        print("Recital Studio is not in this build yet; use the `recital` command line.", file=sys.stderr)
        return 2
    return run(sys.argv[1:] if argv is None else argv)
