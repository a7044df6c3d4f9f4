"""The motif memory (core/motif.py) fitted and measured: how much likelier does remembering the piece's own notes
make what a pianist plays next?

    python -m bench.motif                       # the DSMR default, adapting as `recital continue` does
    python -m bench.motif --models default,default-perceivers --no-adapt

The shares of the mixture (by the length of the longest match, for pitches and for the time steps) are fitted on
windows of the ten MAESTRO performances of ../shared/midi/maestro taken from 60 s on (primer 20 s, truth 30 s, every
60 s while the piece lasts, at most --fit-windows a piece), then measured on bench/continuation.py's own windows
(primer 0-20 s, truth 20-50 s), which the fit never reads. For each model: the truth's bits per second as the model
predicts it, with the shares core/motif.py ships, and with the shares fitted here; split into pitches, time steps
and the rest. No asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.continuation import MAESTRO, SHIPPED, Configuration, Excerpt, Windows, adapted, cut
from bench.data import report_errors, require_midi
from core.codecs import codec_of
from core.midi import Performance

SHARES = np.round(np.arange(0.0, 0.96, 0.05), 2)  # the grid each bucket's share is fitted on
KINDS = ("pitches", "time steps")
FIRST_FIT = 60.0  # seconds: the fit's windows start here, after bench/continuation.py's (0-50 s)
FIT_EVERY = 60.0  # seconds between the starts of a piece's fit windows


@dataclass
class Scored:
    """Every truth id of some excerpts: which kind the memory speaks for (0 pitch, 1 time step, -1 neither), the
    bucket of its longest match (-1: none), the model's log p of the id, and the memory's log p of it times the
    model's mass on that kind (-inf where it remembers nothing of it)."""

    kind: np.ndarray
    bucket: np.ndarray
    model: np.ndarray
    memory: np.ndarray
    seconds: float  # of truth, all excerpts together

    def nats(self, pitch_shares: np.ndarray, shift_shares: np.ndarray) -> np.ndarray:
        """(ids,) each id's nats under the mixture with these shares (by bucket) for pitches and time steps."""
        table = np.stack([pitch_shares, shift_shares])  # (2, buckets)
        share = np.where((self.kind >= 0) & (self.bucket >= 0), table[np.maximum(self.kind, 0),
                                                                      np.maximum(self.bucket, 0)], 0.0)
        with np.errstate(divide="ignore"):
            return -np.logaddexp(np.log1p(-share) + self.model, np.log(share) + self.memory)


def windows_from(perf: Performance, name: str, windows: Windows, count: int, codec,
                 first: float = FIRST_FIT) -> list[Excerpt]:
    """Up to `count` excerpts of `perf` whose primers start at `first`, `first` + FIT_EVERY, ... seconds (each
    window whole within the piece)."""
    excerpts = []
    start = first
    while len(excerpts) < count and perf.onset.max(initial=0.0) >= start + windows.primer + windows.truth:
        keep = perf.onset >= start
        moved = Performance.from_notes(perf.onset[keep] - start, perf.offset[keep] - start, perf.pitch[keep],
                                       perf.velocity[keep])
        excerpt = cut(f"{name}@{start:g}s", moved, windows, codec)
        if len(excerpt.primer) and len(excerpt.truth):
            excerpts.append(excerpt)
        start += FIT_EVERY
    return excerpts


def score(model, config: Configuration, excerpts: list[Excerpt], seconds: float) -> Scored:
    """Each excerpt's truth read by the model (adapted to its primer first when `config.adapt`, as `recital
    continue` does), with what a motif memory of primer and truth so far says of each id."""
    import torch

    from core.budget import default_budget
    from core.metrics import chunk_logits
    from core.motif import MATCH_BUCKETS, PITCH_IDS, SHIFT_IDS, MotifMemory

    kinds, buckets, model_lp, memory_lp = [], [], [], []
    for excerpt in excerpts:
        reader = adapted(model, config, excerpt)
        ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
        first = len(excerpt.primer_ids) - 1
        state = reader.new_state(reader.plan(default_budget(reader, 1), 1), 1)
        lane = MotifMemory(codec_of(reader), ids[:first + 1], 1).lanes[0]  # the primer read as `recital continue` does
        with torch.inference_mode():
            for start, logits in chunk_logits(reader, ids, state, torch.device("cpu")):
                log_probs = torch.log_softmax(logits, -1).double().numpy()
                for t in range(max(first, start), start + len(logits)):
                    row, target = log_probs[t - start], int(ids[t + 1])
                    match, log_pitch, log_gap = lane.logs()
                    kind, log_memory, ids_of = -1, None, None
                    if PITCH_IDS.start <= target < PITCH_IDS.stop:
                        kind, log_memory, ids_of = 0, log_pitch, PITCH_IDS
                    elif SHIFT_IDS.start <= target < SHIFT_IDS.stop:
                        kind, log_memory, ids_of = 1, log_gap, SHIFT_IDS
                    kinds.append(kind)
                    model_lp.append(row[target])
                    if log_memory is None:
                        buckets.append(-1)
                        memory_lp.append(-np.inf)
                    else:
                        buckets.append(int(np.searchsorted(MATCH_BUCKETS, match)))
                        memory_lp.append(np.logaddexp.reduce(row[ids_of]) + log_memory[target - ids_of.start])
                    lane.read(target)
    return Scored(np.array(kinds), np.array(buckets), np.array(model_lp), np.array(memory_lp),
                  seconds * len(excerpts))


def fit(scored: Scored, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """The share of each bucket, for pitches and for time steps, that makes the fit's truths likeliest (each
    bucket of each kind on its own: they mix into different ids)."""
    fitted = np.zeros((2, buckets))
    for kind in range(2):
        for bucket in range(buckets):
            chosen = (scored.kind == kind) & (scored.bucket == bucket)
            if not chosen.any():
                continue
            sub = Scored(scored.kind[chosen], scored.bucket[chosen], scored.model[chosen], scored.memory[chosen], 1)
            costs = []
            for share in SHARES:
                table = np.zeros((2, buckets))
                table[kind, bucket] = share
                costs.append(sub.nats(table[0], table[1]).sum())
            fitted[kind, bucket] = SHARES[int(np.argmin(costs))]
    return fitted[0], fitted[1]


def bits_row(scored: Scored, pitch_shares: np.ndarray, shift_shares: np.ndarray) -> list[float]:
    """[all, pitches, time steps, the rest] bits per second."""
    nats = scored.nats(pitch_shares, shift_shares) / np.log(2) / scored.seconds
    return [float(nats.sum()), float(nats[scored.kind == 0].sum()), float(nats[scored.kind == 1].sum()),
            float(nats[scored.kind == -1].sum())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--midi", type=Path, default=MAESTRO, help="folder of performances (default: MAESTRO's)")
    parser.add_argument("--models", default=SHIPPED[0], help="model names or folders, comma-separated "
                        f"(default {SHIPPED[0]}; left-to-right models of the notes codec)")
    parser.add_argument("--no-adapt", action="store_true", help="read with the model as it is, not adapted")
    parser.add_argument("--fit-windows", type=int, default=3, metavar="N",
                        help="fit windows a piece at most (default 3)")
    parser.add_argument("--windows", type=float, nargs=3, default=(20.0, 30.0, FIRST_FIT),
                        metavar=("PRIMER", "TRUTH", "FIT_FROM"), help="seconds of primer and truth, and where the "
                        f"fit's windows start (default 20 30 {FIRST_FIT:g}: after the benchmark's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every measurement as JSON")
    args = parser.parse_args(argv)
    if min(args.windows[:2]) <= 0 or args.windows[2] < sum(args.windows[:2]):
        parser.error(f"--windows: primer and truth above 0, the fit from their end on; got {args.windows}")
    return report_errors(run, args)


def run(args: argparse.Namespace) -> int:
    """Fit and measure each model of `args` (the tables printed)."""
    import torch

    from core import motif
    from core.midi import read_performance
    from core.modeldir import load_model

    torch.set_num_threads(args.threads)
    primer, truth, fit_from = args.windows
    windows = Windows(primer=primer, truth=truth)
    paths = sorted(require_midi(args.midi).glob("*.mid"))[:10]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.threads} thread(s); "
          f"{'not ' if args.no_adapt else ''}adapting to each primer", flush=True)
    buckets = len(motif.MATCH_BUCKETS) + 1
    results = {}
    for name in args.models.split(","):
        started = time.perf_counter()
        model = load_model(name).float().eval()
        codec = codec_of(model)
        if codec.NAME != "notes":
            print(f"{name}: its codec is {codec.NAME!r}; the motif memory reads the notes codec's ids", file=sys.stderr)
            return 2
        performances = [(path.stem, read_performance(path)) for path in paths]
        test = [cut(stem, perf, windows, codec) for stem, perf in performances]
        fitting = [e for stem, perf in performances
                   for e in windows_from(perf, stem, windows, args.fit_windows, codec, fit_from)]
        if not fitting:
            print(f"{args.midi}: no piece lasts {fit_from + primer + truth:g} s: nothing to fit on", file=sys.stderr)
            return 2
        config = Configuration(name, adapt=not args.no_adapt)
        fit_scored = score(model, config, fitting, windows.truth)
        pitch_fit, shift_fit = fit(fit_scored, buckets)
        test_scored = score(model, config, test, windows.truth)
        none = np.zeros(buckets)
        rows = {"the model alone": bits_row(test_scored, none, none),
                "with core/motif.py's shares": bits_row(test_scored, motif.PITCH_SHARES, motif.SHIFT_SHARES),
                "with the shares fitted here": bits_row(test_scored, pitch_fit, shift_fit)}
        edges = [f"<={motif.MATCH_BUCKETS[0]}"] + [f"{a + 1}-{b}" for a, b in
                                                   zip(motif.MATCH_BUCKETS[:-1], motif.MATCH_BUCKETS[1:], strict=True)]
        edges.append(f">={motif.MATCH_BUCKETS[-1] + 1}")
        print(f"\n{name}: fitted on {len(fitting)} windows from {fit_from:g} s on, measured on the {len(test)} "
              f"excerpts of bench.continuation ({time.perf_counter() - started:.0f} s)")
        print("| longest match (intervals) | " + " | ".join(edges) + " |")
        print("| --- |" + " ---: |" * buckets)
        for label, values in (("pitch shares (fitted)", pitch_fit), ("time-step shares (fitted)", shift_fit),
                              ("pitch shares (core/motif.py)", motif.PITCH_SHARES),
                              ("time-step shares (core/motif.py)", motif.SHIFT_SHARES)):
            print(f"| {label} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
        matched = [int(((test_scored.kind == k) & (test_scored.bucket == b)).sum()) for k in range(2)
                   for b in range(buckets)]
        print(f"truth ids with a match, pitches / time steps by bucket: {matched[:buckets]} / {matched[buckets:]}")
        print("\n| bits/s of the truth given the primer | all | pitches | time steps | the rest |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for label, values in rows.items():
            print(f"| {label} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        results[name] = {"pitch_shares_fitted": pitch_fit.tolist(), "shift_shares_fitted": shift_fit.tolist(),
                         "bits_per_second": rows, "fit_windows": len(fitting)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
