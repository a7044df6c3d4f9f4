"""How many threads each kind of job uses: a small model's work is too short to share between cores.

torch starts one intra-op thread per core. A batch-1 step of the shipped models is a few hundred small matrix
products; split over two threads, each product waits for the slower thread, and when another program holds a
core that thread is descheduled for a whole time slice. bench/busy.py measured the shipped models on 2 cores
(tokens/s, 1 thread against 2; "busy": beside a process that keeps one core busy; other programs already ran,
load average 2.4, and in a first run 8):

- "generate" (sampling token by token, batch 1 to 8, the primer included): 1. DSMR batch 1: 1,265 / 1,315 quiet,
  1,284 / 397 busy (at load 8: 229 / 10); batch 4: 2,100 / 574. PerceiverS batch 1: 882 / 1,152 quiet,
  1,022 / 419 busy. A second thread gains a third at most and loses up to 20x: one thread.
- "read" (a whole piece at once: `recital eval` scoring): the cores the one-minute load average leaves idle,
  at least 1. Reading 2,048 tokens, PerceiverS: 4,299 / 6,735 quiet but 4,325 / 2,188 busy; DSMR 5,904 / 1,159
  already at load 2.4. Two threads pay only on an idle machine, which the load average tells.
- "train" (forward + backward over segments): every core this process may use, shared among the processes of
  one torchrun run. A step is large enough to split: DSMR 1,856 / 3,534 quiet, PerceiverS 1,829 / 2,730; busy,
  two threads lose (1,931 / 1,031): a user training beside other work sets RECITAL_THREADS=1.
- corpus scanning processes (trainer/corpus.py): one per core; each one is single-threaded MIDI parsing.

RECITAL_THREADS=N overrides every one of them.

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
                "infill": "read",
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
