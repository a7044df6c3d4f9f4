"""The `recital` command line: one module per subcommand, errors printed as one line without a traceback.

Each subcommand module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core import __version__
from core.errors import RecitalError
from core.threads import command_threads

# Subcommand name -> module under core.cli (`continue` is a Python keyword).
COMMANDS = {
    "generate": "generate",
    "continue": "continue_",
    "train": "train",
    "eval": "eval",
    "play": "play",
    "ports": "ports",
    "models": "models",
    "corpus": "corpus",
    "studio": "studio",
}
NOT_YET = {
    "generate": "write a new piece with a model",
    "continue": "continue a MIDI file with a model",
    "train": "fine-tune a model on a folder of MIDI files",
    "eval": "perplexity and MGEval comparison of generated and reference pieces",
    "play": "play a MIDI file on the synth or a MIDI port",
    "ports": "list MIDI output and input ports",
    "models": "list shipped and fine-tuned models",
    "corpus": "scan and cache a folder of MIDI files",
    "studio": "open Recital Studio",
}


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
        try:
            module = importlib.import_module(f"core.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"core.cli.{module_name}":
                raise
            command = sub.add_parser(name, help=f"{NOT_YET[name]} (not in this build yet)")
            command.set_defaults(run=_not_yet(name))
            continue
        command = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def _not_yet(name: str):
    def run(_args: argparse.Namespace) -> int:
        print(f"recital {name}: not in this build yet ({NOT_YET[name]}).", file=sys.stderr)
        return 2

    return run


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
