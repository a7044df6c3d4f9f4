"""How many threads each kind of job uses: a small model's work is too short to share between cores.

torch starts one intra-op thread per core. A batch-1 step of the shipped models is a few hundred small matrix
products of about 50 microseconds each; split over two threads, each product waits for the slower thread, and
when another program holds a core that thread is descheduled for a whole time slice. So a second thread buys
little on a quiet machine and loses almost everything on a busy one (bench/busy.py; README, "Threads").

Jobs and their threads (RECITAL_THREADS=N overrides every one of them):

- "generate" (sampling token by token, batch 1 to 8, the primer included): 1.
- "read" (a whole piece at once: `recital eval` scoring): 1.
- "train" (forward + backward over segments, large enough to split): every core this process may use,
  shared among the processes of one torchrun run.
- corpus scanning processes (trainer/corpus.py): one per core; each one is single-threaded MIDI parsing.

`torch.set_num_threads` is per thread in practice: it sets the calling thread's OpenMP count and the default that
threads started later take up, not threads already running torch code. So a job sets it in the thread that runs
it, for its duration (`use_threads`), and the studio's workers do so in their own threads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from core.errors import RecitalError

ENV = "RECITAL_THREADS"
JOBS = ("generate", "read", "train")
# The job each `recital` command does; commands that run no model (play, ports, corpus, ...) set nothing and
# never import torch.
COMMAND_JOBS = {"generate": "generate", "continue": "generate", "studio": "generate", "eval": "read",
                "train": "train"}


class ThreadSettingError(RecitalError):
    """A thread count in the environment that is not a positive whole number."""


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and `taskset` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _override() -> int | None:
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ThreadSettingError(f"${ENV}={value!r}: expected a positive number of threads")
    return int(value)


def threads_for(job: str) -> int:
    """The intra-op threads of `job` (one of JOBS): $RECITAL_THREADS if set, else the measured choice."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r} (one of {', '.join(JOBS)})")
    override = _override()
    if override is not None:
        return override
    if job == "train":
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # set by torchrun
        return max(1, cores() // max(1, processes))
    if job == "read":
        return max(1, min(cores(), idle_cores()))
    return 1


def idle_cores() -> int:
    """Cores other programs leave free, by the one-minute load average (rounded): all of them on an idle
    machine, none when something keeps every core busy. Where the OS has no load average, one."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 1
    return max(0, int(cores() - load + 0.5))


def data_workers() -> int:
    """Processes that scan a corpus: one per core (each parses MIDI on one thread)."""
    return cores()


@contextmanager
def use_threads(job: str) -> Iterator[int]:
    """Run the block with `job`'s threads in this thread; the previous count comes back after it."""
    import torch

    count = threads_for(job)
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield count
    finally:
        torch.set_num_threads(previous)


def command_threads(command: str) -> AbstractContextManager:
    """The threads of the job a `recital` command does, for its duration (`use_threads`), with one inter-op
    thread where torch still allows it (Recital forks no graph work); nothing for a command that runs no model.
    """
    job = COMMAND_JOBS.get(command)
    if job is None:
        return nullcontext()
    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # inter-op work already ran in this process: the pool exists and keeps its size
        pass
    return use_threads(job)
