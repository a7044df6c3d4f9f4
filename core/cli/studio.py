"""`recital studio [FILE.mid] [--model DIR]`: open Recital Studio, the desktop app."""

from __future__ import annotations

import argparse

HELP = "open Recital Studio, the desktop app"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from studio.app import add_arguments as studio_arguments

    studio_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from studio.app import start

    return start(args.file, args.model)
