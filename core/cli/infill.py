"""`recital infill piece.mid --start 12 --end 20 --out new.mid`: write one region of a piece anew, keep the rest.

The region is --start/--end in seconds or --bars A-B on the file's tempo map (bar A's line to bar B's end).
--keep-above / --keep-below keep a melody or a bass inside it and write the rest (an accompaniment). The model
is a denoiser that sees both sides of the region (SMDIM, of either codec; core/infill.py says what holds).
"""

from __future__ import annotations

import argparse
import re
import time

from core.cli.generate import (
    _number,
    bounded,
    budget,
    density,
    output_paths,
    positive_int,
    pull_weight,
    seed,
    temperature,
    top_p,
)
from core.infill import CONTEXT_SECONDS

HELP = "write one region of a MIDI file anew (bars 9-12, or an accompaniment under its melody), keep the rest"
DEFAULT_MODEL = "default-smdim"


seconds = bounded(_number, lambda value: value >= 0, "must be >= 0 seconds", "seconds")
WHOLE_WINDOW = "window"  # --context: as much music as the model's window holds


def context(text: str) -> float | str:
    """--context: seconds each side (>= 0), or "window"."""
    if text.strip().lower() == WHOLE_WINDOW:
        return WHOLE_WINDOW
    try:
        return seconds(text)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"{error} (or '{WHOLE_WINDOW}')") from None


def context_seconds(value: float | str) -> float | None:
    """A parsed --context as infill's `context`: None (as much as the window holds) for "window"."""
    return None if value == WHOLE_WINDOW else value


def bar_range(text: str) -> tuple[int, int]:
    """'9-12' -> (9, 12): bars counted from 1, both included."""
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST bars counted from 1, e.g. 9-12, got {text!r}")
    first, last = int(match.group(1)), int(match.group(2))
    if first < 1 or last < first:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST with 1 <= FIRST <= LAST, got {text!r}")
    return first, last


def pitch(text: str) -> int:
    from core.constraints import ConstraintError, parse_note

    try:
        return parse_note(text)
    except ConstraintError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("piece", metavar="PIECE.mid", help="MIDI file whose region is written anew (never changed)")
    where = parser.add_argument_group("the region (seconds, or bars on the file's tempo map)")
    where.add_argument("--start", type=seconds, metavar="S", help="the region's start in seconds")
    where.add_argument("--end", type=seconds, metavar="S", help="the region's end in seconds")
    where.add_argument("--bars", type=bar_range, metavar="A-B",
                       help="bars A to B (counted from 1, B included) of the file's tempo map and time signatures")
    parser.add_argument("--keep-above", type=pitch, metavar="PITCH",
                        help="keep the region's notes at or above PITCH (C5, 72) and write only below it")
    parser.add_argument("--keep-below", type=pitch, metavar="PITCH",
                        help="keep the region's notes at or below PITCH (C3, 48) and write only above it")
    parser.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH",
                        help=f"a denoiser (SMDIM) by name or directory (default: {DEFAULT_MODEL})")
    parser.add_argument("--out", required=True, metavar="FILE.mid",
                        help="MIDI file to write (never the input; a missing folder is created)")
    parser.add_argument("--force", action="store_true", help="replace output files that exist")
    parser.add_argument("--variations", type=positive_int, default=1, metavar="K",
                        help="write K versions at once (FILE-1.mid ... FILE-K.mid)")
    parser.add_argument("--steps", type=positive_int, metavar="N",
                        help="unmasking passes per window (default: the model's)")
    parser.add_argument("--density", type=density, metavar="N",
                        help="at most N new notes per second (default: about as many as the region had)")
    parser.add_argument("--seed", type=seed, help="random seed, for a reproducible result")
    parser.add_argument("--temperature", type=temperature, default=1.0,
                        help="sampling temperature (0: greedy; else 0.01 to 100)")
    parser.add_argument("--top-p", type=top_p, default=0.95, help="nucleus sampling mass (1: off; default 0.95)")
    parser.add_argument("--budget", type=budget, metavar="SIZE",
                        help="working memory for all variations, e.g. 64MB (default: the model's for each); it "
                             "buys the window the model reads at once")
    parser.add_argument("--context", type=context, metavar="SECONDS",
                        help=f"read at most SECONDS of music each side of the region (default: {CONTEXT_SECONDS:g}; "
                             "'window': as much as the model's window holds); less reads fewer ids, so each pass "
                             "costs less")
    parser.add_argument("--harmony", type=pull_weight, default=None, metavar="W",
                        help="how hard the pitch classes sounding within about two bars of the region pull the new "
                             "notes' keys (0: not at all; default 1)")
    parser.add_argument("--exact", action="store_true",
                        help="generate with the model's exact fp32 weights (default: int8 where the model "
                             "offers it, about 1.5x faster)")


def region_seconds(args: argparse.Namespace, piece) -> tuple[float, float]:
    """(start, end) from --start/--end or --bars; InfillError for a missing or mixed region."""
    import numpy as np

    from core.infill import InfillError

    if args.bars is not None:
        if args.start is not None or args.end is not None:
            raise InfillError("give the region as --start/--end or as --bars, not both")
        if piece.grid is None:
            raise InfillError(f"{args.piece} has no tempo map to count bars on; give --start and --end in seconds")
        first, last = args.bars
        lines = piece.grid.bar_lines(piece.duration + 3600.0)
        bars = int(np.sum(lines < piece.duration - 1e-9))  # bars that hold some of the piece
        if last > bars:
            raise InfillError(f"--bars {first}-{last}: the piece has {bars} bars")
        return float(lines[first - 1]), min(float(lines[last]), piece.duration)  # the last bar may end later
    if args.start is None or args.end is None:
        raise InfillError("give the region: --start S --end S (seconds) or --bars A-B")
    return args.start, args.end


def load_denoiser(name: str):
    """The model to infill with; the default's absence is one line saying what to pass."""
    from core.errors import ModelError
    from core.infill import InfillError
    from core.modeldir import load_model

    try:
        return load_model(name)
    except ModelError:
        if name != DEFAULT_MODEL:
            raise
        raise InfillError(f"no {DEFAULT_MODEL} model is installed: pass --model with an SMDIM model's name or "
                          "directory (recital models lists them; python -m trainer --arch smdim trains one)") from None


def run(args: argparse.Namespace) -> int:
    from core.codecs import codec_of
    from core.generate import SamplingConfig, use_fast_step
    from core.infill import check_region, infill
    from core.midi import read_performance, write_performance
    from core.outputs import plan_outputs

    piece = read_performance(args.piece)
    start, end = region_seconds(args, piece)
    check_region(piece, start, end)
    planned = plan_outputs(output_paths(args.out, args.variations), inputs=[args.piece], force=args.force)
    model = load_denoiser(args.model)
    use_fast_step(model, exact=args.exact)
    print(f"piece {args.piece}: {len(piece)} notes, {piece.duration:.1f} s; region {start:.2f}-{end:.2f} s; "
          f"model {args.model} ({model.arch}, {codec_of(model).NAME} codec)")
    began = time.perf_counter()
    pieces = infill(model, piece, start, end, keep_above=args.keep_above, keep_below=args.keep_below,
                    variations=args.variations, steps=args.steps, density=args.density, seed=args.seed,
                    sampling=SamplingConfig(args.temperature, 0, args.top_p), budget=args.budget,
                    **({} if args.context is None else {"context": context_seconds(args.context)}),
                    **({} if args.harmony is None else {"harmony": args.harmony}))
    took = time.perf_counter() - began
    for line in planned.create_folders():
        print(f"note: {line}")
    before = int(((piece.onset >= start) & (piece.onset < end)).sum())
    for path, result in zip(output_paths(args.out, args.variations), pieces, strict=True):
        write_performance(result, path)
        inside = int(((result.onset >= start) & (result.onset < end)).sum())
        print(f"wrote {path}: {len(result)} notes; the region holds {inside} (was {before})")
    print(f"infilled in {took:.1f} s")
    return 0
