"""`recital train` ends by saying how to use the model: the command it prints works as printed."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from core.cli import main as cli
from core.modeldir import list_models
from tests.test_train_data import write_folder

pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")

TRAIN = ["--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2", "--batch", "2", "--workers", "1",
         "--val-every", "2"]


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "midi", 6, notes=30)


def use_it(output: str) -> list[str]:
    """The printed `recital generate ...` command as arguments, one second long instead of sixty."""
    (line,) = [line for line in output.splitlines() if line.startswith("use it: ")]
    args = shlex.split(line.removeprefix("use it: "))
    assert args[:2] == ["recital", "generate"], line
    args[args.index("--seconds") + 1] = "1"
    return args[1:]


def test_a_named_model_is_used_by_its_name_and_listed_for_the_studio(folder, tmp_path, monkeypatch, capsys):
    assert cli(["train", str(folder), "--out", "my piano", *TRAIN]) == 0
    output = capsys.readouterr().out
    command = use_it(output)
    assert command[command.index("--model") + 1] == "my piano"
    assert "Recital Studio lists it in its model picker." in output
    assert "my piano" in [model.name for model in list_models() if model.source == "user"]

    monkeypatch.chdir(tmp_path)
    assert cli(command) == 0
    assert (tmp_path / "piece.mid").stat().st_size > 0


def test_a_model_saved_outside_the_models_folder_is_used_by_its_path(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli(["train", str(folder), "--out", "./runs/default", *TRAIN]) == 0
    output = capsys.readouterr().out
    command = use_it(output)
    # Its name is a shipped model's: only the full path finds this one, from any folder.
    assert command[command.index("--model") + 1] == str((tmp_path / "runs" / "default").resolve())
    assert "Folder… beside the model picker" in output

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert cli(command) == 0
    assert "runs/default" in capsys.readouterr().out
    assert (tmp_path / "elsewhere" / "piece.mid").stat().st_size > 0
