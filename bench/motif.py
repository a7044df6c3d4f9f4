"""The piece's memories (core/contextcache.py, core/motif.py) fitted and measured: how much likelier does
remembering the piece make what a pianist plays next?

    python -m bench.motif                       # the DSMR default, adapting as `recital continue` does
    python -m bench.motif --models default,default-perceivers --no-adapt

Three memories mix into what the model predicts, each into the ids of its kind, keeping the kind's mass: the context
cache (the ids that followed the moments most like the present one, by the model's own hidden state: its shares by
kind and by the best cosine, and how sharply it prefers the likest, SHARPNESS), then the motif memory (the pitch and
time step after the longest earlier match of the run of intervals: its shares by match length) and the ends of the
notes sounding (a note just struck ends with one of them: END_SHARE). Each kind's parameters touch only its own
ids, so each kind is fitted on its own, by coordinate descent over a grid of shares, for every sharpness of
SHARPNESS_GRID, the best kept. The fit reads windows of the ten MAESTRO performances of ../shared/midi/maestro from
60 s on (primer 20 s, truth 30 s, every 60 s while the piece lasts, at most --fit-windows a piece); the rows are
measured on bench/continuation.py's own windows (primer 0-20 s, truth 20-50 s), which the fit never reads: the
truth's bits per second with each memory as shipped, all three as shipped, and all three as fitted here, split by
kind. No asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from bench.continuation import MAESTRO, SHIPPED, Configuration, Excerpt, Windows, adapted, cut
from bench.data import report_errors, require_midi
from core.codecs import codec_of
from core.midi import Performance

SHARES = np.round(np.arange(0.0, 0.96, 0.05), 2)  # the grid each share is fitted on
KINDS = ("pitches", "durations", "time steps", "velocities")  # core/contextcache.py's KINDS, in its order
MOTIF_KINDS = {0: 0, 2: 1}  # kind -> row of the motif memory's shares (pitches, time steps)
SHARPNESS_GRID = (15.0, 30.0, 60.0)
FIRST_FIT = 60.0  # seconds: the fit's windows start here, after bench/continuation.py's (0-50 s)
FIT_EVERY = 60.0  # seconds between the starts of a piece's fit windows
ROUNDS = 3  # of coordinate descent


@dataclass
class Memories:
    """Every memory's parameters: the context cache's shares (kinds x likeness buckets) and sharpness (kinds),
    the motif memory's shares (pitches and time steps x match buckets), the ends' share (one, as an array: every
    share is fitted in place the same way)."""

    cache: np.ndarray
    sharpness: np.ndarray
    motif: np.ndarray
    end: np.ndarray  # (1,)

    @classmethod
    def shipped(cls) -> Memories:
        from core import contextcache, motif

        return cls(contextcache.SHARES.copy(), contextcache.SHARPNESS.copy(),
                   np.stack([motif.PITCH_SHARES, motif.SHIFT_SHARES]), np.array([motif.END_SHARE]))

    def only(self, cache: bool = False, motifs: bool = False, ends: bool = False) -> Memories:
        return Memories(self.cache * cache, self.sharpness, self.motif * motifs, self.end * ends)

    def to_dict(self) -> dict:
        return {"cache_shares": self.cache.tolist(), "sharpness": self.sharpness.tolist(),
                "motif_shares": self.motif.tolist(), "end_share": float(self.end[0])}


@dataclass
class Scored:
    """Every truth id of some excerpts with what each memory says of it: its kind (KINDS' index; -1 another),
    the model's log p of it and of its kind, the context cache's likeness bucket (-1: nothing held) and log p of
    it within its kind for each sharpness of SHARPNESS_GRID, the motif memory's match bucket (-1: none) and log p
    within the kind (pitches and time steps), the ends' log p within the kind (durations). A memory's log p is NaN
    where it holds nothing of that kind (it is not mixed in: no share), -inf where it holds others only."""

    kind: np.ndarray
    model: np.ndarray
    mass: np.ndarray
    likeness: np.ndarray
    cache: np.ndarray  # (ids, sharpnesses)
    match: np.ndarray
    motif: np.ndarray
    ends: np.ndarray
    seconds: float  # of truth, all excerpts together

    def select(self, chosen: np.ndarray) -> Scored:
        return Scored(**{name: getattr(self, name)[chosen] for name in PER_ID}, seconds=self.seconds)

    def nats(self, memories: Memories) -> np.ndarray:
        """(ids,) each id's nats under the mixtures (the cache first, then the motifs or the ends)."""
        kind = np.maximum(self.kind, 0)
        column = np.searchsorted(SHARPNESS_GRID, memories.sharpness)[kind]
        cache = np.take_along_axis(self.cache, column[:, None], 1)[:, 0]
        share = np.where((self.kind >= 0) & (self.likeness >= 0) & ~np.isnan(cache),
                         memories.cache[kind, np.maximum(self.likeness, 0)], 0.0)
        with np.errstate(divide="ignore"):
            log_p = np.logaddexp(np.log1p(-share) + self.model, np.log(share) + self.mass + np.nan_to_num(
                cache, nan=-np.inf))
            motif_row = np.array([MOTIF_KINDS.get(k, 0) for k in range(len(KINDS))])[kind]
            motif = np.where(np.isin(self.kind, list(MOTIF_KINDS)) & (self.match >= 0),
                             memories.motif[motif_row, np.maximum(self.match, 0)], 0.0)
            remembered = np.where(self.kind == 1, self.ends, self.motif)
            share = np.where(np.isnan(remembered), 0.0, np.where(self.kind == 1, memories.end, motif))
            return -np.logaddexp(np.log1p(-share) + log_p, np.log(share) + self.mass + np.nan_to_num(
                remembered, nan=-np.inf))


PER_ID = [f.name for f in fields(Scored) if f.name != "seconds"]  # the columns with a value for each id


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
    continue` does), with what each memory of primer and truth so far says of each id, read through the memories'
    own classes (core/contextcache.py `ContextCache`, core/motif.py `MotifMemory`) as `recital continue` reads."""
    import torch

    from core.budget import default_budget
    from core.contextcache import KIND_OF_ID, ContextCache, likeness_bucket, recalled
    from core.contextcache import KINDS as CACHE_KINDS
    from core.metrics import chunk_logits
    from core.motif import MATCH_BUCKETS, MotifMemory

    columns: dict[str, list] = {name: [] for name in PER_ID}
    for excerpt in excerpts:
        reader = adapted(model, config, excerpt)
        ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
        first = len(excerpt.primer_ids) - 1
        state = reader.new_state(reader.plan(default_budget(reader, 1), 1), 1)
        lane = MotifMemory(codec_of(reader), ids[:first + 1], 1).lanes[0]  # the primer read as `recital continue` does
        cache = ContextCache(reader, codec_of(reader), 1, 1.0)
        with torch.inference_mode():
            for start, logits in chunk_logits(reader, ids, state, torch.device("cpu")):
                log_probs = torch.log_softmax(logits, -1).double().numpy()
                primer_rows = log_probs[:max(first - start, 0)]
                cache.remember(primer_rows, ids[start + 1:start + 1 + len(primer_rows)])
                for t in range(max(first, start), start + len(logits)):
                    row, target = log_probs[t - start], int(ids[t + 1])
                    kind = int(KIND_OF_ID[target])
                    ids_of = CACHE_KINDS[max(kind, 0)]
                    cosine, after = cache.moments(row[None])[0]
                    cached = [np.nan] * len(SHARPNESS_GRID)
                    if kind >= 0 and len(cosine):
                        for i, sharpness in enumerate(SHARPNESS_GRID):
                            memory = recalled(cosine, after, np.full(len(CACHE_KINDS), sharpness))[kind]
                            if memory is not None:
                                with np.errstate(divide="ignore"):
                                    cached[i] = np.log(memory[target - ids_of.start])
                    match, log_pitch, log_gap, log_duration = lane.logs()
                    remembered = {0: log_pitch, 1: log_duration, 2: log_gap}.get(kind)
                    log_memory = np.nan if remembered is None else remembered[target - ids_of.start]
                    columns["kind"].append(kind)
                    columns["model"].append(row[target])
                    columns["mass"].append(np.logaddexp.reduce(row[ids_of]) if kind >= 0 else 0.0)
                    columns["likeness"].append(likeness_bucket(cosine) if len(cosine) else -1)
                    columns["cache"].append(cached)
                    columns["match"].append(int(np.searchsorted(MATCH_BUCKETS, match)) if match >= 1 else -1)
                    columns["motif"].append(log_memory if kind in MOTIF_KINDS else np.nan)
                    columns["ends"].append(log_memory if kind == 1 else np.nan)
                    lane.read(target)
                    cache.read(np.array([target]))
    arrays = {name: np.array(values, dtype=np.int64 if name in ("kind", "likeness", "match") else np.float64)
              for name, values in columns.items()}
    arrays["cache"] = arrays["cache"].reshape(-1, len(SHARPNESS_GRID))
    return Scored(**arrays, seconds=seconds * len(excerpts))


def fit(scored: Scored) -> Memories:
    """The parameters that make the fit's truths likeliest: each kind on its own (its parameters touch only its
    ids), for each sharpness of the grid by ROUNDS of coordinate descent over the shares' grid, the best kept."""
    fitted = Memories.shipped().only()
    for kind in range(len(KINDS)):
        sub = scored.select(scored.kind == kind)
        best = None
        for sharpness in SHARPNESS_GRID:
            trial = Memories(fitted.cache.copy(), fitted.sharpness.copy(), fitted.motif.copy(), fitted.end.copy())
            trial.sharpness[kind] = sharpness
            slots = [(trial.cache, (kind, bucket)) for bucket in range(trial.cache.shape[1])]  # (array, index)
            if kind in MOTIF_KINDS:
                slots += [(trial.motif, (MOTIF_KINDS[kind], bucket)) for bucket in range(trial.motif.shape[1])]
            if kind == 1:
                slots.append((trial.end, 0))
            for _ in range(ROUNDS):
                for shares, at in slots:
                    costs = []
                    for share in SHARES:
                        shares[at] = share
                        costs.append(sub.nats(trial).sum())
                    shares[at] = SHARES[int(np.argmin(costs))]
            cost = sub.nats(trial).sum()
            if best is None or cost < best[0]:
                best = (cost, trial)
        fitted = best[1]
    return fitted


def bits_row(scored: Scored, memories: Memories) -> list[float]:
    """[all, then each kind of KINDS, the rest] bits per second."""
    nats = scored.nats(memories) / np.log(2) / scored.seconds
    return [float(nats.sum())] + [float(nats[scored.kind == k].sum()) for k in range(len(KINDS))] + [
        float(nats[scored.kind < 0].sum())]


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


def table(title: str, columns: list[str], rows: list[tuple[str, list[float]]], digits: int = 2) -> None:
    print(f"| {title} | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for label, values in rows:
        print(f"| {label} | " + " | ".join(f"{v:.{digits}f}" for v in values) + " |")


def run(args: argparse.Namespace) -> int:
    """Fit and measure each model of `args` (the tables printed)."""
    import torch

    from core import contextcache, motif
    from core.midi import read_performance
    from core.modeldir import load_model

    torch.set_num_threads(args.threads)
    primer, truth, fit_from = args.windows
    windows = Windows(primer=primer, truth=truth)
    paths = sorted(require_midi(args.midi).glob("*.mid"))[:10]
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.threads} thread(s); "
          f"{'not ' if args.no_adapt else ''}adapting to each primer", flush=True)
    shipped = Memories.shipped()
    results = {}
    for name in args.models.split(","):
        started = time.perf_counter()
        model = load_model(name).float().eval()
        codec = codec_of(model)
        if codec.NAME != "notes":
            print(f"{name}: its codec is {codec.NAME!r}; the memories read the notes codec's ids", file=sys.stderr)
            return 2
        performances = [(path.stem, read_performance(path)) for path in paths]
        test = [cut(stem, perf, windows, codec) for stem, perf in performances]
        fitting = [e for stem, perf in performances
                   for e in windows_from(perf, stem, windows, args.fit_windows, codec, fit_from)]
        if not fitting:
            print(f"{args.midi}: no piece lasts {fit_from + primer + truth:g} s: nothing to fit on", file=sys.stderr)
            return 2
        config = Configuration(name, adapt=not args.no_adapt)
        fitted = fit(score(model, config, fitting, windows.truth))
        test_scored = score(model, config, test, windows.truth)
        rows = {"the model alone": bits_row(test_scored, shipped.only()),
                "the context cache (as shipped)": bits_row(test_scored, shipped.only(cache=True)),
                "the motifs and the ends (as shipped)": bits_row(test_scored, shipped.only(motifs=True, ends=True)),
                "all three, as shipped": bits_row(test_scored, shipped),
                "all three, as fitted here": bits_row(test_scored, fitted)}
        print(f"\n{name}: fitted on {len(fitting)} windows from {fit_from:g} s on, measured on the {len(test)} "
              f"excerpts of bench.continuation ({time.perf_counter() - started:.0f} s)\n")
        likeness = [f"<{contextcache.SIMILARITY_BUCKETS[0]:g}"] + [
            f"{a:g}-{b:g}" for a, b in zip(contextcache.SIMILARITY_BUCKETS[:-1], contextcache.SIMILARITY_BUCKETS[1:],
                                           strict=True)] + [f">={contextcache.SIMILARITY_BUCKETS[-1]:g}"]
        table("context cache: share by the best cosine", likeness + ["sharpness"],
              [(f"{kind} ({source})", list(memories.cache[k]) + [memories.sharpness[k]])
               for k, kind in enumerate(KINDS) for source, memories in (("fitted", fitted), ("shipped", shipped))])
        print()
        matches = [f"<={motif.MATCH_BUCKETS[0]}"] + [f"{a + 1}-{b}" for a, b in zip(
            motif.MATCH_BUCKETS[:-1], motif.MATCH_BUCKETS[1:], strict=True)] + [f">={motif.MATCH_BUCKETS[-1] + 1}"]
        table("motif memory: share by the longest match (intervals)", matches,
              [(f"{kind} ({source})", list(memories.motif[row])) for kind, row in (("pitches", 0), ("time steps", 1))
               for source, memories in (("fitted", fitted), ("shipped", shipped))])
        print(f"\nthe ends of the notes sounding, share in the durations: {fitted.end[0]:.2f} fitted, "
              f"{shipped.end[0]:.2f} shipped\n")
        table("bits/s of the truth given the primer", ["all"] + list(KINDS) + ["the rest"], list(rows.items()), 1)
        results[name] = {"fitted": fitted.to_dict(), "shipped": shipped.to_dict(), "bits_per_second": rows,
                         "fit_windows": len(fitting)}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
