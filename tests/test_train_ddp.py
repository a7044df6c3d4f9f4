"""Two gloo processes with the same global batch train exactly like one process (the loss curve and the model)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch.distributed import TCPStore

from core.errors import RecitalError
from core.modeldir import load_model
from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR, TINY_PERCEIVERS
from trainer.config import TrainConfig
from trainer.distributed import leave
from trainer.loop import fine_tune


def _config(folder: Path, out: Path, arch: str) -> TrainConfig:
    return TrainConfig(folder=str(folder), out=str(out), base=None, arch=arch,
                       model=TINY_DSMR if arch == "dsmr" else TINY_PERCEIVERS, steps=4, batch=4, accum=2,
                       lr=1e-2, val_every=4, checkpoint_every=4, log_every=1, workers=1, val_fraction=0.2,
                       augment=True, device="cpu")


def _losses(config: TrainConfig) -> dict:
    losses = []
    result = fine_tune(config, on_progress=lambda e: losses.append(e.loss) if e.kind == "step" else None)
    return {"losses": losses, "perplexity": result.best_perplexity, "tokens": result.tokens}


def _join_as_torchrun_would(rank: int, world: int, port: int) -> None:
    """The variables torchrun gives a worker, the rendezvous on the store its agent (here the test) holds."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), TORCHELASTIC_USE_AGENT_STORE="True")


def _worker(rank: int, world: int, port: int, folder: str, out: str, arch: str, report: str) -> None:
    _join_as_torchrun_would(rank, world, port)
    torch.set_num_threads(1)
    outcome = _losses(_config(Path(folder), Path(out), arch))
    if rank == 0:
        Path(report).write_text(json.dumps(outcome))
    leave(0)  # as `python -m trainer` ends each process of a torchrun run


def _agent_store(world: int) -> TCPStore:
    """The rendezvous store on a port the OS picks, held from its bind until the workers are done, as torchrun's
    agent holds it: a port found free, closed and handed to the workers could be taken by another program before
    rank 0 bound it again (the run then fails with "address already in use")."""
    return TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)


@pytest.mark.parametrize("arch", ["dsmr"])  # PerceiverS shares the loop; its crops' split is in test_train_data
def test_two_processes_match_one(tmp_path, monkeypatch, arch):
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    folder = write_folder(tmp_path / "midi", 6, notes=30)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = _losses(_config(folder, tmp_path / "one", arch))
    finally:
        torch.set_num_threads(threads)
    report = tmp_path / "two.json"
    store = _agent_store(2)
    mp.spawn(_worker, args=(2, store.port, str(folder), str(tmp_path / "two"), arch, str(report)), nprocs=2,
             join=True)
    double = json.loads(report.read_text())
    assert len(single["losses"]) == len(double["losses"]) == 4
    assert single["tokens"] == double["tokens"]
    np.testing.assert_allclose(double["losses"], single["losses"], rtol=0, atol=2e-4)
    assert double["perplexity"] == pytest.approx(single["perplexity"], rel=1e-4)
    one, two = load_model(tmp_path / "one"), load_model(tmp_path / "two")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=name)


def test_torchrun_runs_the_trainer_module(tmp_path):
    """`torchrun -m trainer` as the README gives it: two processes, one summary, one model, exit status 0."""
    folder, out = write_folder(tmp_path / "midi", 6, notes=30), tmp_path / "model"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(RECITAL_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer",
         str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2", "--batch", "2",
         "--val-every", "2", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("finished: 2 steps") == 1, done.stdout  # rank 1's summary is not printed
    assert load_model(out).config.d_model > 0
    assert (out / "events.jsonl").is_file()


def _refused_worker(rank: int, world: int, port: int, folder: str, out: str, report: str) -> None:
    _join_as_torchrun_would(rank, world, port)
    torch.set_num_threads(1)
    try:
        _losses(_config(Path(folder), Path(out), "dsmr"))
        outcome = "trained"
    except RecitalError as error:
        outcome = str(error)
    Path(f"{report}.{rank}").write_text(outcome)
    leave(0)


def test_every_process_stops_when_the_run_folder_is_taken(tmp_path, monkeypatch):
    """Rank 0 alone locks the folder; the other ranks learn its refusal instead of waiting for it forever."""
    from trainer.rundir import RunLock

    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    folder, out = write_folder(tmp_path / "midi", 6, notes=30), tmp_path / "taken"
    out.mkdir()
    held = RunLock(out)
    try:
        report = tmp_path / "outcome"
        store = _agent_store(2)
        mp.spawn(_refused_worker, args=(2, store.port, str(folder), str(out), str(report)), nprocs=2, join=True)
    finally:
        held.release()
    refusal = f"another training is using {out} (pid {os.getpid()}): wait for it to end, or stop it"
    assert Path(f"{report}.0").read_text() == refusal
    assert Path(f"{report}.1").read_text() == f"the main process stopped: {refusal}"
    assert list(out.iterdir()) == []
