"""How a layer adds subcommands to the one `recital` command without the core importing it.

core/cli holds the core's commands (generate, continue, play, ports, models, eval). The layers above contribute
theirs as `Command` objects named in the `recital.commands` entry-point group of pyproject.toml (the trainer's
`train` and `corpus`, the studio's `studio`); `core.cli` finds them through importlib.metadata, so the bottom layer
never imports the top (import-linter's contracts in pyproject.toml hold it to that).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

GROUP = "recital.commands"


@dataclass(frozen=True)
class Command:
    """One subcommand: a line of help, its arguments, and what it runs (the exit status)."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
