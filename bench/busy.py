"""Threads on a busy machine: the same seeded jobs with Recital's thread policy and with torch's default,
on a quiet machine and beside a process that keeps one core busy (bench/dsmr.py and bench/perceivers.py).

    python -m bench.busy                                  # both shipped models, every job kind
    python -m bench.busy --model default --rounds 3

A job is timed in rounds that alternate the thread counts, so a burst of load from other programs hits each
alike; each cell is a median. The busy process is a Python loop in a subprocess, started before the busy rounds
and terminated after them. The machine's load average is printed first: "quiet" means no load of ours, not an
idle machine, when other programs run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import torch

from bench.data import SHARED_MIDI, require_midi
from core import threads

DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, read before anything sets it
MAESTRO = SHARED_MIDI / "maestro"


def load_line() -> str:
    """The load averages and core count, for a table's heading."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {threads.cores()} cores"


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """A process that keeps one core busy (a Python loop) until the block ends, or until this process is gone
    (killed by a timeout, say: the loop watches its parent, so it never outlives the benchmark)."""
    loop = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    process = subprocess.Popen([sys.executable, "-c", loop])
    try:
        time.sleep(0.5)  # let the scheduler see it
        yield process
    finally:
        process.terminate()
        process.wait(10)


def median_rates(jobs: dict[str, Callable[[], int]], counts: list[int], rounds: int) -> dict:
    """{(job, threads): median tokens/s}: each job run `rounds` times per thread count, the counts alternating
    (set on purpose before each run; the default is restored after)."""
    samples: dict[tuple[str, int], list[float]] = {}
    try:
        for _ in range(rounds):
            for job, run in jobs.items():
                for count in counts:
                    torch.set_num_threads(count)
                    start = time.perf_counter()
                    tokens = run()
                    samples.setdefault((job, count), []).append(tokens / (time.perf_counter() - start))
    finally:
        torch.set_num_threads(DEFAULT_THREADS)
    return {key: statistics.median(values) for key, values in samples.items()}


def _primer(tokens: int, codec=None) -> list[int]:
    """The first `tokens` ids of a MAESTRO performance in `codec` (a model's; None: the event codec)."""
    from core import tokenizer
    from core.midi import read_performance

    performance = read_performance(require_midi(MAESTRO / "maestro_01.mid"))
    return (codec or tokenizer).encode(performance, eos=False)[:tokens].tolist()


def train_job(model, primer: list[int]) -> Callable[[], int]:
    """One training step (forward, backward, AdamW) on a copy of `model`: 2 lanes of one DSMR segment, or one
    PerceiverS crop of 1,024 inputs; returns the target tokens."""
    from core.models.dsmr import segment_loss

    trained = copy.deepcopy(model).train()
    optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-5)
    if model.arch == "dsmr":
        length = model.config.segment_len
        ids = torch.tensor(primer[:length + 1] * 2).reshape(2, -1)
        plan = trained.plan(None, 2)

        def loss() -> torch.Tensor:  # a segment read from an empty memory each time: every step alike
            return segment_loss(trained(ids[:, :-1], trained.new_state(plan, 2)), ids[:, 1:])
        targets = ids[:, 1:].numel()
    else:
        ids = torch.tensor(primer[:1024])[None]
        latents = model.config.latents
        goal = torch.tensor(primer[1024 - latents + 1:1024 + 1])[None]

        def loss() -> torch.Tensor:
            return trained(ids, goal)[1]
        targets = goal.numel()

    def run() -> int:
        optimizer.zero_grad(set_to_none=True)
        loss().backward()
        optimizer.step()
        return targets
    return run


def model_jobs(model, primer_tokens: int, seed: int = 0, tokens: int = 250,
               training: bool = True) -> dict[str, Callable[[], int]]:
    """The job kinds of the policy on one model: each a function that does the job once, returning tokens."""
    from core.codecs import codec_of
    from core.generate import generate, prepare_primer, use_fast_step

    primer = _primer(max(primer_tokens, 1025), codec_of(model))
    train = train_job(model, primer) if training else None  # a copy, before the step weights change
    use_fast_step(model)  # as `recital generate` and the studio run it

    def seeded(batch: int) -> Callable[[], int]:
        def run() -> int:
            state = model.new_state(model.plan(None, batch))  # the model's default budget for each lane
            stream = generate(model, prepare_primer(None, model.config.vocab_size), state, max_tokens=tokens,
                              stop_at_eos=False, seed=seed)
            return batch * sum(1 for _ in stream)
        return run

    def read() -> int:
        with torch.no_grad():
            model.prefill(torch.tensor(primer[:primer_tokens])[None], model.new_state(model.plan(None, 1), 1))
        return primer_tokens

    jobs = {("generate", f"generate {tokens} tokens, batch 1 (seed {seed})"): seeded(1),
            ("generate", f"generate {tokens} tokens, batch 4"): seeded(4),
            ("read", f"read a {primer_tokens}-token primer"): read}
    if train is not None:
        jobs["train", "train: one step" if model.arch == "perceivers" else "train: one step, 2 lanes"] = train
    return jobs


def policy_marks(job: str, count: int) -> list[str]:
    """Whether Recital's policy (without RECITAL_THREADS) runs `job` on `count` threads, now and beside one
    more busy core: reading takes the cores the load average leaves idle, so its choice may differ."""
    if os.environ.get(threads.ENV):
        return ["ours"] if count == threads.threads_for(job) else []
    now = threads.threads_for(job)
    busy = max(1, min(threads.cores(), threads.idle_cores() - 1)) if job == "read" else now
    if now == busy:
        return ["ours"] if count == now else []
    return [mark for mark, n in (("ours quiet", now), ("ours busy", busy)) if n == count]


def busy_table(model_name: str, rounds: int = 3, primer_tokens: int = 2048, training: bool = True) -> None:
    """One table: every job of `model_jobs`, quiet and beside a busy core, at the policy's threads and at
    torch's default (every other count up to the cores too), tokens/s."""
    from core.modeldir import load_model

    model = load_model(model_name)
    jobs = model_jobs(model, primer_tokens, training=training)
    counts = list(range(1, max(DEFAULT_THREADS, threads.cores()) + 1))
    print(f"\nbusy machine: shipped model {model_name!r} ({model.arch}); {load_line()} at the start; "
          f"medians of {rounds} alternating rounds, tokens/s; 'busy': beside a process that keeps one core busy; "
          f"ours: Recital's thread policy (core/threads.py); default: torch's ({DEFAULT_THREADS})", flush=True)
    marks = {(name, count): policy_marks(job, count) for job, name in jobs for count in counts}  # before we load
    runs = {name: run for (_, name), run in jobs.items()}
    quiet = median_rates(runs, counts, rounds)
    with busy_core():
        busy = median_rates(runs, counts, rounds)
    print(f"{'job':<38} {'threads':>7} {'':<18} {'quiet':>7} {'busy':>7} {'busy/quiet':>10}")
    for _, name in jobs:
        for count in counts:
            who = ", ".join(marks[name, count] + (["default"] if count == DEFAULT_THREADS else []))
            q, b = quiet[(name, count)], busy[(name, count)]
            print(f"{name:<38} {count:>7} {who:<18} {q:>7.0f} {b:>7.0f} {b / q:>10.0%}")
    print(f"at the end: {load_line()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["default", "default-perceivers"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--primer", type=int, default=2048, help="tokens of the primer the read job reads")
    parser.add_argument("--skip-training", action="store_true")
    args = parser.parse_args()
    for name in args.model:
        busy_table(name, args.rounds, args.primer, training=not args.skip_training)


if __name__ == "__main__":
    main()
