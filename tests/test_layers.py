"""The layers hold (studio over trainer over core; no Qt below the studio), and `recital` is still one command
whose trainer and studio subcommands come from their own layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_every_contract():
    tool = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert tool, "import-linter is a dev dependency: pip install -e .[dev]"
    done = subprocess.run([tool, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_one_command_holds_every_layers_subcommands():
    commands = build_parser()._subparsers._group_actions[0].choices
    assert {"generate", "continue", "eval", "play", "ports", "models", "train", "corpus", "studio"} <= set(commands)


def test_each_layer_runs_its_own_subcommands():
    commands = build_parser()._subparsers._group_actions[0].choices
    owner = {name: commands[name].get_default("run").__module__ for name in ("generate", "train", "corpus", "studio")}
    assert owner == {"generate": "core.cli.generate", "train": "trainer.cli", "corpus": "trainer.cli",
                     "studio": "studio.cli"}


def test_a_layer_that_is_not_installed_is_said_in_one_line(monkeypatch, capsys):
    import core.cli as cli

    class Missing:
        name = "train"

        def load(self):
            raise ModuleNotFoundError("No module named 'trainer'", name="trainer")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Missing()])
    assert main(["train", "folder", "--steps", "3"]) == 1
    assert capsys.readouterr().err == "error: recital train needs the trainer, which is not installed here\n"


def test_a_broken_layer_is_not_hidden_as_missing(monkeypatch):
    import core.cli as cli

    class Broken:
        name = "train"

        def load(self):
            raise ModuleNotFoundError("No module named 'somedependency'", name="somedependency")

    monkeypatch.setattr(cli, "entry_points", lambda group: [Broken()])
    with pytest.raises(ModuleNotFoundError):
        build_parser()
