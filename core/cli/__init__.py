"""The `recital` command line: one module per core subcommand, errors printed as one line without a traceback.

Each core subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`. The layers
above add theirs through the `recital.commands` entry points (core/commands.py), so this package imports neither.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from importlib.metadata import entry_points

from core import __version__
from core.commands import GROUP, Command
from core.errors import RecitalError
from core.threads import command_threads

# The core's subcommands: name -> module under core.cli (`continue` is a Python keyword). The trainer's and the
# studio's come from the `recital.commands` entry points (core/commands.py).
COMMANDS = {
    "generate": "generate",
    "continue": "continue_",
    "infill": "infill",
    "eval": "eval",
    "play": "play",
    "ports": "ports",
    "models": "models",
}
LAYERS = {"trainer": "the trainer", "studio": "Recital Studio", "PySide6": "PySide6 (Qt)"}


class OneLineParser(argparse.ArgumentParser):
    """argparse whose rejections are one line that points at --help, not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="recital", description="Recital: continue or write piano pieces with long-context models.")
    parser.add_argument("--version", action="version", version=f"recital {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"core.cli.{module_name}")
        _add(sub, name, Command(module.HELP, module.add_arguments, module.run))
    for entry in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if entry.name not in COMMANDS:
            _add(sub, entry.name, _load(entry))
    return parser


def _add(sub, name: str, command: Command) -> None:
    parser = sub.add_parser(name, help=command.help, description=command.help)
    command.add_arguments(parser)
    parser.set_defaults(run=command.run)


def _load(entry) -> Command:
    """A layer's command, or one that says in a line which part of Recital is not installed here."""
    try:
        return entry.load()
    except ModuleNotFoundError as error:
        top = (error.name or "").split(".")[0]
        if top not in LAYERS:
            raise
        missing = f"recital {entry.name} needs {LAYERS[top]}, which is not installed here"

        def run(_args: argparse.Namespace) -> int:
            raise RecitalError(missing)

        return Command(f"({missing})", lambda parser: parser.add_argument("rest", nargs=argparse.REMAINDER),
                       run)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        with command_threads(args.command):  # core/threads.py: one thread for generation, all for training
            return int(args.run(args) or 0)
    except RecitalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as error:  # Ctrl-C: 130; generate's SIGTERM (a KeyboardInterrupt too): 143
        print("interrupted", file=sys.stderr)
        return getattr(error, "exit_code", 130)


if __name__ == "__main__":
    sys.exit(main())
