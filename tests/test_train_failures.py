"""A way out of every training failure (issue #21): a run killed before its first checkpoint starts again, a
failed run leaves nothing that looks like a model, one process per run folder, checkpoint intervals on a
resume, and a full disk in one line with the previous files kept."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cli
from core.errors import MidiError, ModelError
from core.midi import Performance, write_performance
from core.modeldir import list_models, load_model, user_models_dir
from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR, tiny
from trainer import checkpoint as ckpt
from trainer import rundir
from trainer.config import CHECKPOINT_EVERY, CHECKPOINT_MINUTES
from trainer.loop import fine_tune

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")

# A run that dies at its second step as under kill -9: os._exit runs no cleanup, no finally, no atexit.
KILLED_AT_STEP_2 = """
import os, sys
from trainer.config import TrainConfig
from trainer.loop import fine_tune

def die(event):
    if event.kind == "step" and event.step == 2:
        os._exit(9)

fine_tune(TrainConfig(folder=sys.argv[1], out=sys.argv[2], base=None, arch="dsmr", model={model!r}, steps=50,
                      batch=2, checkpoint_every=40, val_every=1000, log_every=1, workers=1), on_progress=die)
"""

HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from trainer.rundir import RunLock
RunLock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "midi", 6, notes=30)


def _python(script: str, *args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, env=env, **kwargs)


def _messages(events) -> list[str]:
    return [e.message for e in events if e.kind == "message"]


# ---- a run killed before its first checkpoint --------------------------------------------------------------

def test_a_run_killed_before_its_first_checkpoint_can_be_started_again_or_resumed(folder, tmp_path, capsys):
    killed = tmp_path / "killed"
    process = _python(KILLED_AT_STEP_2.format(model=TINY_DSMR), str(folder), str(killed), stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 9, err.decode()
    assert (killed / ckpt.EVENTS).is_file() and ckpt.latest_checkpoint(killed) is None
    assert rundir.state(killed) == "unfinished"
    again = tmp_path / "again"
    shutil.copytree(killed, again)

    # --resume: nothing to resume, so it starts from the beginning, and says so naming the folder once
    events = []
    result = fine_tune(tiny(folder, killed, steps=3, resume=True), on_progress=events.append)
    assert result.steps == 3 and ckpt.latest_checkpoint(killed).name == "step-00000003"
    said = [m for m in _messages(events) if "nothing to resume" in m]
    assert said == [f"nothing to resume in {killed} (no checkpoint yet): starting from the beginning"]
    logged = [json.loads(line) for line in (killed / ckpt.EVENTS).read_text().splitlines()]
    assert [e["step"] for e in logged if e["kind"] == "step"] == [1, 2, 3]  # the killed run's events are gone
    load_model(killed)

    # a fresh start with the same --out: allowed, and said
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                "--batch", "2", "--workers", "1", "--out", str(again)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{again} held a run that stopped before its first checkpoint: starting it again" in err
    assert err.count(str(again)) == 1 and ckpt.latest_checkpoint(again).name == "step-00000002"


def test_resume_with_no_run_there_starts_one_and_says_so(folder, tmp_path):
    events = []
    out = tmp_path / "new"
    fine_tune(tiny(folder, out, steps=2, resume=True), on_progress=events.append)
    assert f"nothing to resume in {out} (no checkpoint yet): starting from the beginning" in _messages(events)
    assert ckpt.latest_checkpoint(out).name == "step-00000002"


def test_a_folder_that_is_not_a_run_is_never_cleared(folder, tmp_path, tiny_model_dir, capsys):
    """A model directory without checkpoints (the user's, or a finished run whose checkpoints were deleted)."""
    mine = tmp_path / "mine"
    shutil.copytree(tiny_model_dir, mine)
    before = {p.name: p.read_bytes() for p in mine.iterdir()}
    for resume in (False, True):
        with pytest.raises(ModelError, match="holds files that are not a training run's: choose another --out"):
            fine_tune(tiny(folder, mine, resume=resume))
        assert {p.name: p.read_bytes() for p in mine.iterdir()} == before  # no lock file left either
    finished = tmp_path / "finished"
    fine_tune(tiny(folder, finished, steps=2))
    shutil.rmtree(finished / ckpt.CHECKPOINTS)
    assert rundir.state(finished) == "occupied"  # its event log says it finished
    with pytest.raises(ModelError, match="already exists"):
        fine_tune(tiny(folder, finished, steps=2))
    load_model(finished)


# ---- a failed run leaves nothing that looks like a model -----------------------------------------------------

def test_a_failed_run_leaves_nothing_that_recital_models_lists(folder, tmp_path, capsys):
    def train(source: Path, *more: str) -> int:
        return cli(["train", str(source), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                    "--batch", "2", "--workers", "1", "--out", "mine", *more])

    (tmp_path / "empty").mkdir()
    assert train(tmp_path / "empty") == 1
    assert "no MIDI files" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mid").write_bytes(b"not midi at all")
    assert train(broken) == 1
    assert "could be read" in capsys.readouterr().err
    assert not (user_models_dir() / "mine").exists()
    assert [m for m in list_models() if m.source == "user"] == []

    # after the model at step 0 was written: a failure before the first checkpoint removes it too
    def fail_at_step_2(event) -> None:
        if event.kind == "step" and event.step == 2:
            raise RuntimeError("a failure in the middle of the run")

    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="middle of the run"):
        fine_tune(tiny(folder, out, steps=10, checkpoint_every=100), on_progress=fail_at_step_2)
    assert not out.exists()

    # an empty folder chosen as --out stays, empty
    chosen = tmp_path / "chosen"
    chosen.mkdir()
    short = tmp_path / "short"
    short.mkdir()
    for i in range(3):
        write_performance(Performance.from_notes(np.array([0.0]), np.array([0.5]), np.array([60 + i]),
                                                 np.array([64])), short / f"{i}.mid")
    with pytest.raises(MidiError, match="shorter than one segment"):
        fine_tune(tiny(short, chosen))
    assert list(chosen.iterdir()) == []


def test_a_folder_holding_only_an_event_log_is_not_a_model(tmp_path):
    """What a run killed before its first save leaves: `recital models` does not list it."""
    run = user_models_dir() / "half"
    run.mkdir(parents=True)
    (run / ckpt.EVENTS).write_text('{"kind": "phase"}\n')
    assert [m.name for m in list_models() if m.source == "user"] == []


# ---- one process per run folder ----------------------------------------------------------------------------

def test_a_second_training_of_the_same_folder_is_refused_until_the_first_ends(folder, tmp_path):
    out = tmp_path / "out"
    fine_tune(tiny(folder, out, steps=2))
    events_before = (out / ckpt.EVENTS).read_bytes()
    holder = _python(HOLD_THE_LOCK, str(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert holder.stdout.readline().decode().strip() == "locked", holder.stderr.read().decode()
        for resume in (True, False):
            with pytest.raises(ModelError) as refused:
                fine_tune(tiny(folder, out, steps=4, resume=resume))
            assert str(refused.value) == (f"another training is using {out} (pid {holder.pid}): wait for it to "
                                          "end, or stop it")
        assert (out / ckpt.EVENTS).read_bytes() == events_before  # nothing written, nothing interleaved
    finally:
        holder.kill()  # as kill -9: the kernel releases the lock
        holder.wait()
    result = fine_tune(tiny(folder, out, steps=4, resume=True))
    assert result.steps == 4 and not (out / rundir.LOCK).exists()


def test_the_lock_is_held_for_the_whole_run(folder, tmp_path):
    out = tmp_path / "out"
    refusals = []

    def try_to_lock(event) -> None:
        if event.kind == "step" and event.step == 1:
            with pytest.raises(ModelError, match=f"another training is using .* \\(pid {os.getpid()}\\)"):
                rundir.RunLock(out)
            refusals.append(event.step)

    fine_tune(tiny(folder, out, steps=2), on_progress=try_to_lock)
    assert refusals == [1]
    rundir.RunLock(out).release()  # free once the run ended


# ---- checkpoint intervals: by time as well as steps, and on a resume ------------------------------------------

def _saved(events) -> list[int]:
    return [e.step for e in events if e.kind == "checkpoint" and e.message.startswith("saved")]


def _recorded(out: Path) -> dict:
    return json.loads((ckpt.latest_checkpoint(out) / ckpt.STATE).read_text())["config"]


def test_checkpoint_intervals_default_and_apply_on_a_resume(folder, tmp_path):
    out = tmp_path / "out"

    def run(steps: int, **given) -> list[int]:
        """The steps a run (a resume after the first) saved checkpoints at."""
        events = []
        settings = dict(checkpoint_every=None, val_every=100, patience=0, resume=steps > 2)
        fine_tune(tiny(folder, out, steps=steps, **{**settings, **given}), on_progress=events.append)
        run.messages = _messages(events)
        return _saved(events)

    assert run(2) == [2]
    recorded = _recorded(out)
    assert (recorded["checkpoint_every"], recorded["checkpoint_minutes"]) == (CHECKPOINT_EVERY, CHECKPOINT_MINUTES)
    assert CHECKPOINT_MINUTES <= 5
    assert run(4, checkpoint_every=3) == [3, 4] and _recorded(out)["checkpoint_every"] == 3  # given: applied
    assert "checkpoints from now on every 3 steps (the resumed run's setting)" in run.messages
    assert run(8) == [6, 8] and _recorded(out)["checkpoint_every"] == 3  # not given: the run's own
    assert not [m for m in run.messages if "checkpoints from now on" in m]
    assert run(11, checkpoint_minutes=1e-6) == [9, 10, 11] and _recorded(out)["checkpoint_minutes"] == 1e-6


def test_the_cli_leaves_checkpoint_intervals_unset_unless_given(folder):
    import argparse

    from trainer import cli as train

    parser = argparse.ArgumentParser()
    train.add_train_arguments(parser)
    config = train.config_from_args(parser.parse_args([str(folder), "--steps", "2"]), "recital train")
    assert config.checkpoint_every is None and config.checkpoint_minutes is None
    config = train.config_from_args(parser.parse_args([str(folder), "--steps", "2", "--checkpoint-every", "7",
                                                       "--checkpoint-minutes", "2"]), "recital train")
    assert (config.checkpoint_every, config.checkpoint_minutes) == (7, 2.0)


# ---- a full disk: one line, the previous files kept -----------------------------------------------------------

def _safetensor_error():
    from safetensors import SafetensorError

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                           '"No space left on device" })')


def _full_disk_once_checkpointed(monkeypatch, out: Path, module, name: str, error, where: str) -> None:
    """`module.name` fails with `error` for writes into `where` (checkpoints, staging) once a checkpoint exists."""
    real = getattr(module, name)

    def write(obj, path, *args, **kwargs):
        if where in str(path) and ckpt.latest_checkpoint(out) is not None:
            raise error
        return real(obj, path, *args, **kwargs)

    monkeypatch.setattr(module, name, write)


@pytest.mark.parametrize("kind", ["safetensors", "torch.save"])
def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(folder, tmp_path, monkeypatch,
                                                                                    capsys, kind):
    import safetensors.torch

    out = tmp_path / "out"
    if kind == "safetensors":
        _full_disk_once_checkpointed(monkeypatch, out, safetensors.torch, "save_model", _safetensor_error(),
                                     ckpt.CHECKPOINTS)
    else:
        _full_disk_once_checkpointed(monkeypatch, out, torch, "save", RuntimeError(
            "[enforce fail at inline_container.cc:626] . unexpected pos 1345792 vs 1345680"), ckpt.CHECKPOINTS)
    with pytest.raises(ModelError) as failed:
        fine_tune(tiny(folder, out, steps=6, val_every=100))
    reason = "the disk is full" if kind == "safetensors" else "[enforce fail at inline_container.cc:626] . " \
                                                              "unexpected pos 1345792 vs 1345680"
    assert str(failed.value) == (f"{out / ckpt.CHECKPOINTS / 'step-00000006'}: cannot write ({reason}); the "
                                 "previous files are kept")
    assert ckpt.latest_checkpoint(out).name == "step-00000003"
    assert not list((out / ckpt.CHECKPOINTS).glob(".*"))
    load_model(out)
    monkeypatch.undo()
    assert fine_tune(tiny(folder, out, steps=6, val_every=100, resume=True)).steps == 6


def test_a_full_disk_while_saving_the_model_is_one_line_on_the_cli(tmp_path, monkeypatch, capsys):
    """Two pieces: nothing held out, so every checkpoint saves the model (the latest weights) too."""
    import safetensors.torch

    folder, out = write_folder(tmp_path / "two", 2, notes=40), tmp_path / "out"
    fine_tune(tiny(folder, out, steps=3))
    weights = (out / "model.safetensors").read_bytes()
    _full_disk_once_checkpointed(monkeypatch, out, safetensors.torch, "save_model", _safetensor_error(),
                                 ".staging-")
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--steps", "6", "--batch", "2",
                "--workers", "1", "--out", str(out), "--resume"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: {out}: cannot write (the disk is full); the previous files are kept"
    assert (out / "model.safetensors").read_bytes() == weights
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging left, no lock
    assert ckpt.latest_checkpoint(out).name == "step-00000003"


def test_a_full_disk_while_logging_events(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_open = open

    class Full:
        """The event log's file once the disk is full: every write fails."""

        def __init__(self, handle):
            self.handle = handle

        def write(self, text: str) -> int:
            if ckpt.latest_checkpoint(out) is not None:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.handle.write(text)

        def flush(self) -> None:
            self.handle.flush()

        def close(self) -> None:
            self.handle.close()

    def fake_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        return Full(handle) if Path(path).name == ckpt.EVENTS else handle

    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    with pytest.raises(ModelError) as failed:
        fine_tune(tiny(folder, out, steps=6, val_every=100))
    assert str(failed.value) == f"{out / ckpt.EVENTS}: cannot write (the disk is full); the previous files are kept"
    assert ckpt.latest_checkpoint(out).name == "step-00000003"
    load_model(out)


def test_a_filesystem_without_locks_trains_and_says_so(folder, tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    events = []
    out = tmp_path / "out"
    assert fine_tune(tiny(folder, out, steps=1), on_progress=events.append).steps == 1
    assert f"cannot lock {out} (No locks available): make sure no other training uses it" in _messages(events)
