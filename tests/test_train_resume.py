"""A run killed with SIGKILL resumes from its last complete checkpoint; a half-written one is never loaded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.loop import fine_tune

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import sys
from trainer.config import TrainConfig
from trainer.loop import fine_tune
fine_tune(TrainConfig(folder=sys.argv[1], out=sys.argv[2], base=None, arch="dsmr", model={model!r}, steps=100000,
                      batch=2, checkpoint_every=3, val_every=1000, workers=1, seed=1))
"""


def test_resume_after_kill_9(tmp_path, monkeypatch):
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_folder(tmp_path / "midi", 6, notes=30)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-c", RUN.format(model=TINY_DSMR), str(folder), str(out)],
                               cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and process.poll() is None:
            found = ckpt.latest_checkpoint(out) if (out / ckpt.CHECKPOINTS).is_dir() else None
            if found is not None and found.name >= "step-00000006":
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    saved = ckpt.latest_checkpoint(out)
    assert saved is not None
    saved_step = json.loads((saved / ckpt.STATE).read_text())["step"]
    assert saved_step % 3 == 0 and saved_step >= 6

    # What a kill in the middle of writing leaves: a temporary folder, and a numbered one missing files.
    half = out / ckpt.CHECKPOINTS / ".step-99999999-abc.tmp"
    half.mkdir()
    (half / ckpt.STATE).write_text('{"step": 99999999')
    broken = out / ckpt.CHECKPOINTS / "step-99999998"
    broken.mkdir()
    (broken / ckpt.WEIGHTS).write_bytes(b"partial")

    steps = []
    result = fine_tune(TrainConfig(folder=str(folder), out=str(out), base=None, arch="dsmr", model=TINY_DSMR,
                                   steps=saved_step + 3, batch=2, checkpoint_every=3, val_every=1000, workers=1,
                                   seed=1, resume=True, log_every=1),
                       on_progress=lambda e: steps.append(e.step) if e.kind == "step" else None)
    assert steps == [saved_step + 1, saved_step + 2, saved_step + 3]
    assert result.steps == saved_step + 3
    assert not half.exists()
    logged = [json.loads(line) for line in (out / ckpt.EVENTS).read_text().splitlines()]
    logged_steps = [e["step"] for e in logged if e["kind"] == "step"]
    assert logged_steps[-3:] == steps  # the event log goes on where the killed run's left off
