"""The thread policy: one thread for generation, the idle cores for reading, every core for training,
RECITAL_THREADS over all, set per thread for a job's duration and restored after it; and where it applies."""

from __future__ import annotations

import threading

import pytest
import torch

from core import threads
from core.errors import RecitalError


@pytest.fixture
def policy(monkeypatch):
    """The policy as a user sees it: no RECITAL_THREADS (the test suite sets 1), one process, two cores."""
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)


@pytest.fixture
def restore_threads():
    count = torch.get_num_threads()
    yield
    torch.set_num_threads(count)


def test_generation_uses_one_thread_and_training_every_core(policy, monkeypatch):
    assert threads.threads_for("generate") == 1
    assert threads.threads_for("train") == 2
    monkeypatch.setattr(threads, "cores", lambda: 16)
    assert threads.threads_for("train") == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: four processes share the cores
    assert threads.threads_for("train") == 4
    assert threads.data_workers() == 16
    with pytest.raises(ValueError, match="unknown job 'sing'"):
        threads.threads_for("sing")


@pytest.mark.parametrize("load, idle, read", [(0.0, 2, 2), (0.4, 2, 2), (0.6, 1, 1), (1.3, 1, 1), (2.0, 0, 1),
                                              (7.5, 0, 1)])
def test_reading_uses_the_cores_the_load_leaves_idle(policy, monkeypatch, load, idle, read):
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (load, 0.0, 0.0))
    assert threads.idle_cores() == idle
    assert threads.threads_for("read") == read


def test_recital_threads_overrides_every_job(policy, monkeypatch):
    monkeypatch.setenv(threads.ENV, "3")
    assert [threads.threads_for(job) for job in threads.JOBS] == [3, 3, 3]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_override_is_a_one_line_error(policy, monkeypatch, value):
    monkeypatch.setenv(threads.ENV, value)
    with pytest.raises(RecitalError, match=rf"^\$RECITAL_THREADS='{value}': expected a positive number of threads$"):
        threads.threads_for("generate")


def test_a_job_sets_its_threads_for_its_duration_only(policy, restore_threads):
    torch.set_num_threads(2)
    with threads.use_threads("generate") as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(RuntimeError, match="inside"):
        with threads.use_threads("generate"):
            raise RuntimeError("inside")
    assert torch.get_num_threads() == 2


def test_a_worker_threads_job_leaves_the_main_thread_alone(policy, restore_threads):
    """What the studio relies on: its worker sets one thread; the GUI thread keeps its count."""
    torch.set_num_threads(2)
    seen = []

    def worker() -> None:
        torch.ones(4).sum()  # the thread's own count is fixed at its first parallel op
        with threads.use_threads("generate"):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2


def test_commands_that_run_a_model_get_their_jobs_threads(policy, monkeypatch, restore_threads):
    torch.set_num_threads(2)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # an idle machine
    for command, expected in (("generate", 1), ("continue", 1), ("eval", 2), ("studio", 1), ("train", 2)):
        with threads.command_threads(command):
            assert torch.get_num_threads() == expected, command
        assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    with threads.command_threads("ports"):  # no model: nothing changes
        assert torch.get_num_threads() == 1


def test_the_cli_reports_a_bad_override_as_one_line(monkeypatch, capsys, tiny_model_dir, tmp_path):
    from core.cli import main

    monkeypatch.setenv(threads.ENV, "lots")
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid")]) == 1
    assert capsys.readouterr().err == "error: $RECITAL_THREADS='lots': expected a positive number of threads\n"
    assert not (tmp_path / "x.mid").exists()


def test_the_cli_generates_on_the_policys_threads(policy, monkeypatch, tiny_model_dir, tmp_path, restore_threads):
    """`recital generate` runs its model on one thread (torch's default would be every core)."""
    import core.session
    from core.cli import main

    seen = []
    real = core.session.generate

    def watched(*args, **kwargs):
        for token in real(*args, **kwargs):
            seen.append(torch.get_num_threads())
            yield token

    monkeypatch.setattr(core.session, "generate", watched)
    torch.set_num_threads(2)
    out = tmp_path / "piece.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(out), "--max-tokens", "8",
                 "--seed", "1"]) == 0
    assert out.exists() and seen and set(seen) == {1}
    assert torch.get_num_threads() == 2  # restored for whoever called main()
