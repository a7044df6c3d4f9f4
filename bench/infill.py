"""Infilling (issue #18): an SMDIM rewrites regions of real performances, measured against what the pianist played
there, beside two baselines in the same run.

    python -m bench.infill --model PATH                  # 10 MAESTRO pieces x 5 regions x 3 seeds
    python -m bench.infill --model PATH --pieces 3 --regions 2 --seeds 2 --json out.json
    python -m bench.infill --model default-smdim,PATH --steps 64   # two denoisers side by side, 64 passes

Regions: in each performance of ../shared/midi/maestro, five regions of 4, 5, 6, 7 and 8 s starting at 20, 40,
60, 80 and 100 s (a piece too short for one is skipped there). The truth is the notes the pianist started inside
the region, ended at its end at the latest. Three columns write it anew:
- infill: `core.infill.infill` with each model given (a denoiser; several, comma-separated, get a column each, in
  one run on the same regions), its default 32 steps (--steps: another count), top-p 0.95, one lane per seed in
  one batch, with the int8 pass weights as `recital infill` (--exact: fp32) and --context seconds each side
  (default: the core's CONTEXT_SECONDS, 6; "window": as much as the window holds);
- continue: the shipped DSMR `default` continuing the notes before the region (a composer's file cut there) for the
  region's seconds, cut at its end (what a left-to-right model can do);
- random: notes drawn from the piece's own statistics outside the region (its notes per second; its pitches,
  lengths and velocities at random), onsets uniform in the region.

Statistics (core/musicstats.py, as the continuation benchmark): notes per second, polyphony (50 ms samples over
the region), pitch range, pitch-class overlap (the shared mass of the duration-weighted pitch-class histograms,
1 = the same), notes held > 4 s, re-strikes within 120 ms. Each column's row is its mean absolute distance from
the truth's value per region and seed (pitch-class overlap: 1 - overlap with the truth); a second table gives the
mean signed difference, written minus truth, so a fill too sparse and one too dense are told apart (the JSON keeps
every region's own statistics beside the truth's). Edge continuity: the same
statistics of the first 2 s inside the region against the 2 s before it (left edge), and of the last 2 s against
the 2 s after it (right edge), as mean absolute differences; the truth's own row is the music's. Speed: seconds to
infill an 8 s region (32 steps, one variation) with the model given and with an untrained default-size SMDIM on
the threads given (speed does not depend on weights), of the model's codec. The "aim" lines print issue #18's
targets. No asserts.

Each model reads its own codec (core.codecs.codec_of: infill lays the region out in the denoiser's, the session
encodes the baseline's primer in its own), and every statistic is of the notes written, so a "notes" SMDIM and a
"performance" one are measured alike; the header names both models' codecs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

from bench.data import SHARED_MIDI, require_midi
from core import musicstats as ms
from core.cli.infill import WHOLE_WINDOW, context, context_seconds
from core.infill import CONTEXT_SECONDS
from core.midi import Performance

MAESTRO = SHARED_MIDI / "maestro"
STARTS = (20.0, 40.0, 60.0, 80.0, 100.0)
LENGTHS = (4.0, 5.0, 6.0, 7.0, 8.0)
EDGE = 2.0  # seconds each side of an edge
TOP_P = 0.95
STATS = ("notes_per_second", "polyphony", "pitch_range", "pc_overlap", "held_long", "restrikes")
LABELS = {"notes_per_second": "notes/s", "polyphony": "polyphony", "pitch_range": "pitch range (semitones)",
          "pc_overlap": "pitch-class overlap (1 - x)", "held_long": "notes held > 4 s", "restrikes": "re-strikes"}
BASELINES = ("continue", "random")
COLUMNS = ("infill", *BASELINES)  # with one denoiser; with several, each is a column named by its model


@dataclass(frozen=True)
class Region:
    name: str
    piece: Performance
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


def regions(folder, count: int, per_piece: int) -> list[Region]:
    from core.midi import read_performance

    out = []
    for path in sorted(folder.glob("*.mid"))[:count]:
        piece = read_performance(path)
        for start, length in list(zip(STARTS, LENGTHS, strict=True))[:per_piece]:
            if start + length + EDGE < piece.duration:
                out.append(Region(path.stem, piece, start, start + length))
    return out


def inside(perf: Performance, start: float, end: float) -> Performance:
    """Notes starting in [start, end), ended at `end` at the latest."""
    return perf.slice_time(start, end)


def pc_overlap(a: Performance, b: Performance) -> float:
    """Shared mass of the two duration-weighted pitch-class histograms (1: the same; 0 if either is silent)."""
    wa, wb = ms.pitch_class_weights(a), ms.pitch_class_weights(b)
    if wa.sum() <= 0 or wb.sum() <= 0:
        return 0.0
    return float(np.minimum(wa / wa.sum(), wb / wb.sum()).sum())


def stats(notes: Performance, start: float, end: float, reference: Performance) -> dict:
    return {"notes_per_second": ms.notes_per_second(notes, end - start),
            "polyphony": ms.polyphony(notes, start, end), "pitch_range": ms.pitch_range(notes),
            "pc_overlap": pc_overlap(notes, reference), "held_long": ms.held_long(notes),
            "restrikes": ms.restrikes(notes)}


def distance(a: dict, b: dict) -> dict:
    return {key: (1.0 - a[key]) if key == "pc_overlap" else abs(a[key] - b[key]) for key in STATS}


def measure(region: Region, written: Performance) -> dict:
    """One written region: its distances from the truth, and its two edges' gaps to the music beside them."""
    s, e = region.start, region.end
    truth = inside(region.piece, s, e)
    new = inside(written, s, e)
    before = inside(region.piece, s - EDGE, s)
    after = inside(region.piece, e, e + EDGE)
    first, last = inside(new, s, s + EDGE), inside(new, e - EDGE, e)
    written, real = stats(new, s, e, truth), stats(truth, s, e, truth)
    return {"truth": distance(written, real),
            "left": distance(stats(first, s, s + EDGE, before), stats(before, s - EDGE, s, before)),
            "right": distance(stats(last, e - EDGE, e, after), stats(after, e, e + EDGE, after)),
            "written": written, "real": real}


# -- the three columns ------------------------------------------------------------------------------------------

def by_infill(model, region: Region, seeds: int, context: float | None = CONTEXT_SECONDS,
              steps: int | None = None) -> list[Performance]:
    from core.generate import SamplingConfig
    from core.infill import infill

    return infill(model, region.piece, region.start, region.end, variations=seeds, seed=0, steps=steps,
                  sampling=SamplingConfig(top_p=TOP_P), context=context)


def by_continuing(model, region: Region, seeds: int) -> list[Performance]:
    from core.generate import SamplingConfig
    from core.session import GenerationSession

    primer = region.piece.slice_time(0.0, region.start)  # a composer's file cut at the region's start
    session = GenerationSession(model, primer, sampling=SamplingConfig(top_p=TOP_P), seconds=region.seconds,
                                variations=seeds, seed=0)
    session.run()
    return [inside(part, region.start, region.end) for part in session.new_parts()]


def by_chance(region: Region, seeds: int) -> list[Performance]:
    piece = region.piece
    outside = ~((piece.onset >= region.start) & (piece.onset < region.end))
    rate = int(outside.sum()) / max(piece.duration - region.seconds, 1e-9)
    lengths = (piece.offset - piece.onset)[outside]
    out = []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        count = rng.poisson(rate * region.seconds)
        pick = rng.integers(0, int(outside.sum()), size=(3, count))
        onset = np.sort(rng.uniform(region.start, region.end, count))
        out.append(Performance.from_notes(onset, np.minimum(onset + lengths[pick[1]], region.end),
                                          piece.pitch[outside][pick[0]], piece.velocity[outside][pick[2]]))
    return out


def speed(model, piece: Performance, repeats: int = 3, context: float | None = CONTEXT_SECONDS) -> float:
    """Median seconds to infill 8 s (32 steps, one variation)."""
    from core.infill import infill

    times = []
    for seed in range(repeats):
        began = time.perf_counter()
        infill(model, piece, 20.0, 28.0, steps=32, seed=seed, context=context)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


# -- the run ----------------------------------------------------------------------------------------------------

def table(results: dict, columns: list[str]) -> str:
    """The three tables; `columns` are the denoisers' columns, then the baselines (BASELINES), and each aim is
    judged for every denoiser (named when there are several)."""
    denoisers = [c for c in columns if c not in BASELINES]

    def mean(column: str, part: str, key: str) -> float:
        return float(np.mean([row[part][key] for row in results[column]]))

    def verdict(met: dict[str, bool]) -> str:
        if len(met) == 1:
            return "yes" if next(iter(met.values())) else "no"
        return ", ".join(f"{name} {'yes' if ok else 'no'}" for name, ok in met.items())

    lines = ["| distance from the truth (mean per region and seed) | " + " | ".join(columns) + " | aim |",
             "|---|" + "---|" * (len(columns) + 1)]
    for key in STATS:
        values = {c: mean(c, "truth", key) for c in columns}
        met = {d: all(values[d] < values[b] for b in BASELINES if b in values) for d in denoisers}
        lines.append(f"| {LABELS[key]} | " + " | ".join(f"{v:.3f}" for v in values.values())
                     + f" | infill closest: {verdict(met)} |")
    lines += ["", "| edge gap (first/last 2 s inside vs 2 s outside) | " + " | ".join(
        f"{c} left | {c} right" for c in columns) + " | aim: infill right <= left |",
        "|---|" + "---|---|" * len(columns) + "---|"]
    for key in STATS:
        cells = [f"{mean(c, 'left', key):.3f} | {mean(c, 'right', key):.3f}" for c in columns]
        met = {d: mean(d, "right", key) <= mean(d, "left", key) + 1e-9 for d in denoisers}
        lines.append(f"| {LABELS[key]} | " + " | ".join(cells) + f" | {verdict(met)} |")
    # which way each column misses: a distance alone does not say whether a fill is too dense or too sparse
    lines += ["", "| written minus truth (mean per region and seed) | " + " | ".join(columns) + " |",
              "|---|" + "---|" * len(columns)]
    for key in (k for k in STATS if k != "pc_overlap"):
        signed = [float(np.mean([row["written"][key] - row["real"][key] for row in results[c]])) for c in columns]
        lines.append(f"| {LABELS[key]} | " + " | ".join(f"{v:+.3f}" for v in signed) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.infill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="default-smdim",
                        help="the denoiser that infills (name or directory); several, comma-separated, side by side")
    parser.add_argument("--baseline", default="default", help="the left-to-right model that continues")
    parser.add_argument("--pieces", type=int, default=10)
    parser.add_argument("--regions", type=int, default=5, help="regions per piece (at most 5)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, metavar="N", help="unmasking passes per window (default: the model's)")
    parser.add_argument("--context", type=context, default=CONTEXT_SECONDS, metavar="SECONDS",
                        help=f"music the infill reads each side of a region (default: {CONTEXT_SECONDS:g}; "
                             f"'{WHOLE_WINDOW}': as much as the window holds)")
    parser.add_argument("--exact", action="store_true", help="infill with fp32 pass weights (default: int8)")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--no-default-speed", dest="default_speed", action="store_false",
                        help="skip timing the untrained default-size SMDIM")
    args = parser.parse_args(argv)
    args.context = context_seconds(args.context)
    return args


def main(argv: list[str] | None = None) -> int:
    import torch

    from core.codecs import codec_of
    from core.generate import use_fast_step
    from core.modeldir import load_model
    from core.models.smdim import SMDIM, SMDIMConfig

    args = parse_args(argv)
    if args.steps is not None and args.steps < 1:
        print(f"error: --steps must be at least 1, got {args.steps}", file=sys.stderr)
        return 2
    names = list(dict.fromkeys(name.strip() for name in args.model.split(",") if name.strip()))
    if not names:
        print(f"error: --model names no model: {args.model!r}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    chosen = regions(require_midi(MAESTRO), args.pieces, args.regions)
    models = {name: load_model(name).eval() for name in names}
    for model in models.values():
        use_fast_step(model, exact=args.exact)
    # one denoiser keeps the column name "infill"; several are named by their models
    labels = {name: "infill" if len(names) == 1 else name for name in names}
    baseline = load_model(args.baseline)
    use_fast_step(baseline)
    columns = [*labels.values(), *BASELINES]
    writers = {labels[name]: (lambda r, m=model: by_infill(m, r, args.seeds, args.context, args.steps))
               for name, model in models.items()}
    writers["continue"] = lambda r: by_continuing(baseline, r, args.seeds)
    writers["random"] = lambda r: by_chance(r, args.seeds)
    results: dict[str, list[dict]] = {c: [] for c in ("truth", *columns)}
    spent = dict.fromkeys(columns, 0.0)
    for index, region in enumerate(chosen):
        for column, write in writers.items():
            began = time.perf_counter()
            for written in write(region):
                results[column].append(measure(region, written))
            spent[column] += time.perf_counter() - began
        results["truth"].append(measure(region, region.piece))
        print(f"  {index + 1}/{len(chosen)} {region.name} {region.start:g}-{region.end:g} s", file=sys.stderr,
              flush=True)
    piece = chosen[0].piece
    fast = {name: speed(model, piece, context=args.context) for name, model in models.items()}
    codec = codec_of(models[names[0]])
    big = SMDIM(SMDIMConfig(codec=codec.NAME)).eval()  # the same codec as the model: its vocabulary, its layout
    use_fast_step(big, exact=args.exact)
    fast_big = speed(big, piece, repeats=1, context=args.context) if args.default_speed else float("nan")
    steps_said = "the model's default" if args.steps is None else str(args.steps)
    described = ", ".join(f"{name} (codec {codec_of(model).NAME})" for name, model in models.items())
    print(f"{len(chosen)} regions of {args.pieces} MAESTRO pieces x {args.seeds} seeds; "
          f"model{'s' if len(names) > 1 else ''} {described}, baseline {args.baseline} (codec "
          f"{codec_of(baseline).NAME}); {args.threads} threads; {'fp32' if args.exact else 'int8'} pass weights; "
          f"unmasking steps: {steps_said}; "
          f"context {'the window' if args.context is None else f'{args.context:g} s'} each side")
    print(table(results, columns))
    print()
    print("| truth's own edges | left | right |\n|---|---|---|")
    for key in STATS:
        left = np.mean([row["left"][key] for row in results["truth"]])
        right = np.mean([row["right"][key] for row in results["truth"]])
        print(f"| {LABELS[key]} | {left:.3f} | {right:.3f} |")
    print()
    print(f"| speed: infill 8 s, 32 steps, 1 variation, {args.threads} threads | seconds | aim |\n|---|---|---|")
    for name, model in models.items():
        print(f"| {name} ({model.config.window}-token window) | {fast[name]:.2f} | < 3 |")
    if args.default_speed:
        print(f"| untrained default-size SMDIM ({big.config.window}-token window, codec {codec.NAME}) | "
              f"{fast_big:.2f} | < 3 |")
    print("wall time per column: " + ", ".join(f"{c} {spent[c]:.0f} s" for c in columns))
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"results": results, "speed": {"models": fast, "default_size": fast_big},
                       "steps": args.steps, "codecs": {"models": {n: codec_of(m).NAME for n, m in models.items()},
                                                        "baseline": codec_of(baseline).NAME}}, file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
