"""`recital continue primer.mid`: continue a MIDI file with a model; the output holds the primer and what follows."""

from __future__ import annotations

import argparse

from core.cli.generate import add_adapt_arguments, add_generation_arguments, write_continuation

HELP = "continue a MIDI file with a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("primer", metavar="PRIMER.mid", help="MIDI file to continue (read whole: the model's "
                                                             "state keeps as much of it as the budget allows)")
    add_generation_arguments(parser)
    add_adapt_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from core.midi import read_performance

    perf = read_performance(args.primer)
    print(f"primer {args.primer}: {len(perf)} notes, {perf.duration:.1f} s")
    return write_continuation(args, primer=perf, inputs=[args.primer])
