"""Primer adaptation (issue #17, core/adapt.py) measured: does adapting to the primer make the real continuation
more likely, and what does it cost before the first note?

    python -m bench.adapt                                  # both shipped models, 10 MAESTRO pieces, every setting
    python -m bench.adapt --models default --pieces 3 --settings 3:1e-4:all

For each piece of ../shared/midi/maestro (never trained on): primer 0-20 s, truth 20-50 s (bench/continuation.py's
cut). Bits per second of the truth given the primer, read in one pass by the model as it is and by each adapted
copy; the copy adapts on the primer alone (the truth is never seen). Seconds: the wall time of `adapt` on this
machine at the thread count printed (the load average is printed too: a shared machine). No asserts.
A setting is STEPS:LR:PARAMETERS[:HELD_OUT], e.g. 3:1e-4:all or 8:3e-4:all:0.2 (early stop on the last 20%).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from bench.continuation import MAESTRO, SHIPPED, Windows, read_excerpts, truth_bits_per_second
from bench.data import require_midi

SETTINGS = ("3:1e-4:all", "3:3e-4:all", "5:1e-3:norms", "8:3e-4:all:0.2")


def parse_setting(text: str) -> dict:
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"a setting is STEPS:LR:PARAMETERS[:HELD_OUT], got {text!r}")
    try:
        return {"steps": int(parts[0]), "lr": float(parts[1]), "parameters": parts[2],
                "held_out": float(parts[3]) if len(parts) == 4 else 0.0}
    except ValueError:
        raise argparse.ArgumentTypeError(f"a setting is STEPS:LR:PARAMETERS[:HELD_OUT], got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SHIPPED), help="model names or folders, comma-separated")
    parser.add_argument("--pieces", type=int, default=10, metavar="N", help="first N MAESTRO pieces (default 10)")
    parser.add_argument("--settings", nargs="+", type=parse_setting, default=[parse_setting(s) for s in SETTINGS],
                        metavar="SETTING", help=f"settings to try (default: {' '.join(SETTINGS)})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every measurement as JSON")
    args = parser.parse_args(argv)

    import torch

    from core.adapt import adapt
    from core.codecs import codec_of
    from core.modeldir import load_model

    torch.set_num_threads(args.threads)
    windows = Windows()
    excerpts, _ = read_excerpts(require_midi(MAESTRO), args.pieces, windows)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.threads} thread(s); "
          f"{len(excerpts)} pieces, primer 0-{windows.primer:g} s ({np.mean([len(e.primer_ids) for e in excerpts]):.0f}"
          f" ids on average), truth {windows.primer:g}-{windows.primer + windows.truth:g} s")
    results: dict = {}
    rows = []
    for name in (m.strip() for m in args.models.split(",") if m.strip()):
        model = load_model(name)
        base = [truth_bits_per_second(model, e, windows.truth) for e in excerpts]
        results[name] = {"none": base}
        rows.append((name, "none", float(np.mean(base)), 0, "", ""))
        print(f"  {name} unadapted: {np.mean(base):.2f} bits/s", file=sys.stderr, flush=True)
        for setting in args.settings:
            label = ":".join(str(v) for v in setting.values())
            bits, seconds, steps = [], [], []
            for excerpt in excerpts:  # the primer in the model's own codec's ids, as `recital continue` reads it
                adapted = adapt(model, excerpt.coded(codec_of(model)).primer_ids, **setting)
                bits.append(truth_bits_per_second(adapted.model, excerpt, windows.truth))
                seconds.append(adapted.seconds)
                steps.append(adapted.steps)
            better = sum(b < a for a, b in zip(base, bits, strict=True))
            results[name][label] = {"bits": bits, "seconds": seconds, "steps": steps}
            rows.append((name, label, float(np.mean(bits)), better, f"{np.mean(seconds):.2f}",
                         f"{np.mean(steps):.1f}"))
            print(f"  {name} {label}: {np.mean(bits):.2f} bits/s, {np.mean(seconds):.2f} s", file=sys.stderr,
                  flush=True)
    print(f"{'model':<20} {'setting':<18} {'bits/s of truth':>16} {'pieces better':>14} {'adapt s':>8} "
          f"{'steps':>6}")
    for name, label, bits, better, seconds, steps in rows:
        print(f"{name:<20} {label:<18} {bits:>16.2f} {f'{better}/{len(excerpts)}' if label != 'none' else '':>14} "
              f"{seconds:>8} {steps:>6}")
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
