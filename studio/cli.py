"""The studio's subcommand of `recital`: `recital studio [FILE.mid] [--model DIR]` opens Recital Studio.

`recital` finds it through the `recital.commands` entry points (core/commands.py); Qt loads only when it runs.
"""

from __future__ import annotations

import argparse

from core.commands import Command

HELP = "open Recital Studio, the desktop app"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from studio.app import add_arguments as studio_arguments

    studio_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from studio.app import start

    return start(args.file, args.model)


STUDIO = Command(HELP, add_arguments, run)
