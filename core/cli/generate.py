"""`recital generate`: write a new piece (or K variations) with a model, under a state-memory budget."""

from __future__ import annotations

import argparse
import ctypes
import math
import signal
import sys
import threading
from pathlib import Path

from core.cli.play import add_output_arguments, check_clock_arguments, open_chosen_sink, open_live_player
from core.generate import MAX_NOTE_SECONDS
from core.harmony import HARMONY_SECONDS, HARMONY_WEIGHT, KEY_SECONDS, LEFT_TO_RIGHT_WEIGHT
from core.motif import WEIGHT as MOTIF_WEIGHT
from core.notecodec import FROM_PRIMER, MAX_PRIMER_REPEAT_SECONDS, MIN_REPEAT_SECONDS
from core.pulse import LEFT_TO_RIGHT_WEIGHT as PULSE_WEIGHT
from core.pulse import PULSE_SECONDS
from core.session import RUNAWAY_FACTOR, RUNAWAY_HEADROOM, TOKENS_PER_SECOND_LIMIT

HELP = "write a new piece with a model"
MAX_SECONDS = 24 * 3600.0  # a day of music: the longest piece worth asking for in one command
MAX_SEED = 2**63 - 1  # torch seeds are 64-bit


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None


def bounded(parse, ok, need: str, name: str):
    """An argparse type: `parse` the text, then refuse a value that is not `ok` in one line, saying what it must
    be (`need`) and what was given. `name` is the one argparse would show for a parse error."""
    def check(text: str):
        value = parse(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{need}, got {text}")
        return value
    check.__name__ = name
    return check


positive_float = bounded(_number, lambda value: value > 0, "must be > 0", "positive_float")
positive_int = bounded(_whole, lambda value: value >= 1, "must be >= 1", "positive_int")
seconds_of_music = bounded(positive_float, lambda value: value <= MAX_SECONDS,
                           f"must be at most {MAX_SECONDS:.0f} (one day)", "seconds_of_music")
# 0 is greedy; below 0.01 the scaled logits overflow to inf, above 100 all ids are alike
temperature = bounded(_number, lambda value: value == 0 or 0.01 <= value <= 100,
                      "must be 0 (greedy) or between 0.01 and 100", "temperature")
note_seconds = bounded(_number, lambda value: value >= 0, "must be >= 0 (0: no limit)", "note_seconds")
pull_weight = bounded(_number, lambda value: value >= 0, "must be >= 0 (0: off)", "a weight")
motif_share = bounded(_number, lambda value: 0 <= value <= 1, "must be from 0 to 1 (0: off)", "a share")
_repeat_number = bounded(_number, lambda value: 0 <= value <= 1, f"must be '{FROM_PRIMER}' or between 0 (off) and 1",
                         "repeat_seconds")


def repeat_seconds(text: str) -> float | str:
    """--min-repeat: 'primer' (as fast as the primer repeats a key) or seconds from 0 (off) to 1."""
    return FROM_PRIMER if text == FROM_PRIMER else _repeat_number(text)


top_k = bounded(_whole, lambda value: value >= 0, "must be >= 0 (0: off)", "top_k")
top_p = bounded(_number, lambda value: 0 < value <= 1, "must be more than 0 and at most 1 (1: off)", "top_p")
min_p = bounded(_number, lambda value: 0 <= value < 1, "must be at least 0 and below 1 (0: off)", "min_p")
seed = bounded(_whole, lambda value: 0 <= value <= MAX_SEED, "must be between 0 and 2^63-1", "seed")
strength = bounded(_number, lambda value: 0 <= value <= 1, "must be between 0 and 1", "strength")
swing = bounded(_number, lambda value: 0 <= value <= 0.5, "must be between 0 and 0.5", "swing")
adapt_steps = bounded(positive_int, lambda value: value <= 100, "must be at most 100", "adapt_steps")


def budget(text: str) -> int:
    from core.budget import parse_budget
    from core.errors import BudgetError

    try:
        return parse_budget(text)
    except BudgetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _checked(parse):
    """An argparse type that checks a constraint's text with core.constraints' `parse` and keeps the text."""
    def check(text: str) -> str:
        from core.constraints import ConstraintError

        try:
            parse(text)
        except ConstraintError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text
    return check


def _key(text: str) -> str:
    from core.constraints import FROM_PRIMER, parse_key

    return text if text.strip().lower() == FROM_PRIMER else parse_key(text)


def density(text: str) -> float:
    from core.constraints import DENSITY_RANGE

    value = _number(text)
    if not DENSITY_RANGE[0] <= value <= DENSITY_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be {DENSITY_RANGE[0]:g} to {DENSITY_RANGE[1]:g} notes per second, "
                                         f"got {text}")
    return value


def max_density(text: str) -> float | str:
    """--max-density: 'primer' (core.session.runaway_ceiling of its notes/s), 0 (off) or notes per second."""
    if text.strip().lower() == FROM_PRIMER:
        return FROM_PRIMER
    return 0.0 if _number(text) == 0 else density(text)


def add_constraint_arguments(parser: argparse.ArgumentParser) -> None:
    """What the model may write (core/constraints.py): applied at every step, never to the primer."""
    from core.constraints import parse_pitch_classes, parse_range, parse_velocity

    group = parser.add_argument_group("constraints")
    group.add_argument("--key", type=_checked(_key), metavar="KEY",
                       help="write only the notes of this key, e.g. 'D minor', 'F# major', 'Bb dorian'; "
                            "'primer': the primer's key")
    group.add_argument("--pitch-classes", type=_checked(parse_pitch_classes), metavar="LIST",
                       help="write only these pitch classes (0 = C ... 11 = B), e.g. 0,2,4,7,9")
    group.add_argument("--range", type=_checked(parse_range), metavar="LOW-HIGH",
                       help="write only pitches in this range, e.g. C2-C7 (C4 = middle C) or 36-96")
    group.add_argument("--velocity", type=_checked(parse_velocity), metavar="LOW-HIGH",
                       help="write only velocities in this range (1-127), e.g. 40-90")
    group.add_argument("--density", type=density, metavar="N",
                       help="steer toward N notes per second (a pull, not a rule)")
    group.add_argument("--max-polyphony", type=positive_int, metavar="N",
                       help="never more than N notes sounding at once")


def bpm(text: str) -> float:
    from core.grid import MAX_BPM, MIN_BPM

    value = _number(text)
    if not MIN_BPM <= value <= MAX_BPM:
        raise argparse.ArgumentTypeError(f"must be {MIN_BPM:g} to {MAX_BPM:g} beats per minute, got {text}")
    return value


def _grid_value(parse):
    """An argparse type from a core.grid parser (its GridError becomes argparse's one-line message)."""
    def check(text: str):
        from core.grid import GridError

        try:
            return parse(text)
        except GridError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    check.__name__ = parse.__name__
    return check


def add_grid_arguments(parser: argparse.ArgumentParser) -> None:
    """Quantize: only the notes the model writes move (core/grid.py), on the piece's bars."""
    from core.grid import parse_subdivision

    group = parser.add_argument_group("quantize (only the notes the model writes; the primer stays as it is)")
    group.add_argument("--quantize", type=_grid_value(parse_subdivision), metavar="NOTE",
                       help="move each new onset toward its nearest grid point, a NOTE apart: 1/4, 1/8, 1/16, "
                            "1/8t (triplets) ...; note lengths are kept")
    group.add_argument("--strength", type=strength, metavar="0..1",
                       help="how far toward the grid point (1: onto it; default 1)")
    group.add_argument("--swing", type=swing, metavar="0..0.5",
                       help="every second grid point late by this much of a step (1/3: triplet feel; default 0)")


def add_new_piece_arguments(parser: argparse.ArgumentParser) -> None:
    """A new piece's tempo and time signature, written into the file (a continuation keeps its primer's)."""
    from core.grid import DEFAULT_BPM, DEFAULT_METER, parse_meter

    parser.add_argument("--bpm", type=bpm, default=DEFAULT_BPM,
                        help=f"the new piece's tempo in beats (quarter notes) per minute (default {DEFAULT_BPM:g})")
    parser.add_argument("--meter", type=_grid_value(parse_meter), default=DEFAULT_METER, metavar="N/D",
                        help="the new piece's time signature, e.g. 3/4 or 6/8 (default 4/4)")


def check_grid_arguments(args: argparse.Namespace) -> None:
    """--strength and --swing say how to quantize: without --quantize they would silently do nothing."""
    from core.grid import GridError

    if args.quantize is None and (args.strength is not None or args.swing is not None):
        raise GridError("--strength and --swing go with --quantize (e.g. --quantize 1/16 --strength 0.8)")


def new_piece_grid(args: argparse.Namespace):
    """The grid of a new piece (--bpm, --meter); None for a continuation, which keeps its primer's."""
    from core.grid import Grid

    return Grid.constant(args.bpm, *args.meter) if getattr(args, "bpm", None) is not None else None


def quantized(part, session, args: argparse.Namespace):
    """A variation's new notes with their onsets quantized (lengths kept), never before the primer's end."""
    from dataclasses import replace

    from core.grid import quantize
    from core.midi import Performance

    if args.quantize is None or not len(part):
        return part
    onset = quantize(part.onset, session.grid, args.quantize, 1.0 if args.strength is None else args.strength,
                     args.swing or 0.0, not_before=session.start_time)
    return replace(Performance.from_notes(onset, part.offset + (onset - part.onset), part.pitch, part.velocity),
                   grid=part.grid)


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `generate` and `continue`."""
    parser.add_argument("--model", default="default", metavar="NAME_OR_PATH",
                        help="model name (see `recital models`) or model directory (default: default)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=seconds_of_music, default=30.0, metavar="S",
                        help="seconds of new music to write (default: 30; at most a day)")
    length.add_argument("--bars", type=positive_int, metavar="N",
                        help="write up to the N-th bar line after the primer (the primer's tempo map and time "
                             "signatures; a new piece's --bpm and --meter)")
    parser.add_argument("--out", required=True, metavar="FILE.mid",
                        help="MIDI file to write (never one of the inputs; a missing folder is created)")
    parser.add_argument("--force", action="store_true",
                        help="replace output files that exist (--out, --wav, each variation's)")
    parser.add_argument("--max-note", type=note_seconds, default=MAX_NOTE_SECONDS, metavar="S",
                        help=f"no note sounds longer than S seconds: released then, or with a model on the notes "
                             f"codec never given a longer duration (0: no limit; default {MAX_NOTE_SECONDS:g})")
    parser.add_argument("--min-repeat", type=repeat_seconds, default=FROM_PRIMER, metavar="S",
                        help=f"a model on the notes codec never strikes a key again sooner than S seconds after "
                             f"it last struck it, the primer's strikes included: no stutter (0: off; default "
                             f"'{FROM_PRIMER}': as fast as the primer repeats its keys, {MIN_REPEAT_SECONDS:g} to "
                             f"{MAX_PRIMER_REPEAT_SECONDS:g} s, {MIN_REPEAT_SECONDS:g} without one; a performance model or a "
                             f"denoiser such as SMDIM is not affected)")
    parser.add_argument("--max-density", type=max_density, default=FROM_PRIMER, metavar="N",
                        help=f"a variation that runs away into more than N notes per second is steered back under "
                             f"(0: never; default '{FROM_PRIMER}': {RUNAWAY_FACTOR:g}x the notes/s of the primer's "
                             f"last 20 s, at most {RUNAWAY_HEADROOM:g} above them, none for a new piece; --density "
                             f"steers instead; a denoiser such as SMDIM takes its density from the primer already)")
    parser.add_argument("--harmony", type=pull_weight, default=None, metavar="W",
                        help=f"pull the keys each variation draws towards the harmony, W hard: a left-to-right "
                             f"model's towards the pitch classes of the primer's last {KEY_SECONDS:g} s (none for a "
                             f"new piece), a denoiser's such as SMDIM towards each variation's last "
                             f"{HARMONY_SECONDS:g} s (0: not at all; default: {LEFT_TO_RIGHT_WEIGHT:g} and "
                             f"{HARMONY_WEIGHT:g})")
    parser.add_argument("--pulse", type=pull_weight, default=None, metavar="W",
                        help=f"pull when each variation's notes come towards the beat of the primer's last "
                             f"{PULSE_SECONDS:g} s and where its onsets fall in it, W hard: a left-to-right model "
                             f"keeps the primer's pulse (0: not at all; none for a new piece, a primer without a beat "
                             f"or a denoiser such as SMDIM; default: {PULSE_WEIGHT:g})")
    parser.add_argument("--motifs", type=motif_share, default=None, metavar="W",
                        help=f"mix each variation's memory of the piece, the primer's included, into what the "
                             f"model predicts, W of the fitted shares: what followed the same run of intervals before "
                             f"(a figure played again, a phrase a step higher) and what followed the moments the "
                             f"model heard most like this one come back more often, and a new note often ends with "
                             f"the notes still sounding (0: off; default: {MOTIF_WEIGHT:g} when continuing, none for "
                             f"a new piece or a denoiser such as SMDIM)")
    parser.add_argument("--allow-end", action="store_true",
                        help="let the model end the piece before --seconds (default: it plays all of them)")
    parser.add_argument("--budget", type=budget, metavar="SIZE",
                        help="memory the model's recurrent state may use in all, e.g. 16MB (default: the "
                             "model's default for each variation)")
    parser.add_argument("--temperature", type=temperature, default=1.0,
                        help="sampling temperature (0: greedy; else 0.01 to 100)")
    parser.add_argument("--top-k", type=top_k, default=0, help="sample among the k likeliest ids (0: off)")
    parser.add_argument("--top-p", type=top_p, default=0.95, help="nucleus sampling mass (1: off; default 0.95)")
    parser.add_argument("--min-p", type=min_p, default=0.0, help="drop ids below min-p x the likeliest (0: off)")
    parser.add_argument("--seed", type=seed, help="random seed (0 to 2^63-1), for a reproducible piece")
    parser.add_argument("--variations", type=positive_int, default=1, metavar="K",
                        help="write K variations at once (FILE-1.mid ... FILE-K.mid)")
    parser.add_argument("--max-tokens", type=positive_int, metavar="N",
                        help=f"stop after N new tokens (default: {TOKENS_PER_SECOND_LIMIT} per second asked)")
    parser.add_argument("--exact", action="store_true",
                        help="generate with the model's exact fp32 weights (default: int8 where the model "
                             "offers it, about 1.5x faster)")
    parser.add_argument("--wav", metavar="OUT.wav",
                        help="also render the result to a 44.1 kHz stereo WAV file (OUT-k.wav for variations)")
    add_grid_arguments(parser)
    add_output_arguments(parser, synth_flag="--play")  # --play | --virtual | --port NAME: listen while writing
    add_constraint_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser)
    add_new_piece_arguments(parser)
    parser.set_defaults(adapt=False, adapt_steps=None)  # a new piece has no primer to adapt to


def add_adapt_arguments(parser: argparse.ArgumentParser) -> None:
    """`continue`'s primer adaptation (core/adapt.py): never written to disk; on by default where it measured
    better (`adapts_by_default`: left-to-right models of the note-level codec, the shipped default among them)."""
    from core.adapt import AdaptSettings

    switch = parser.add_mutually_exclusive_group()
    switch.add_argument("--adapt", dest="adapt", action="store_true", default=None,
                        help="first adapt a copy of the model to a primer of at least "
                             f"{AdaptSettings.min_seconds:g} s (a second or a few; never saved). The default for "
                             "a notes-codec model such as the shipped default: measured, its continuations keep "
                             "the primer's range, rhythm and key better")
    switch.add_argument("--no-adapt", dest="adapt", action="store_false",
                        help="continue with the model as it is (the default for other models)")
    parser.add_argument("--adapt-steps", type=adapt_steps, metavar="N",
                        help=f"optimizer steps on the primer (1-100, default {AdaptSettings.steps}): more adapt "
                             "further and take longer")


def adapt_settings(args: argparse.Namespace, model):
    """The session's `adapt` from --adapt / --no-adapt / --adapt-steps and `model` (None: not adapting):
    --adapt-steps implies --adapt; with neither switch, the model's default (core.adapt.adapts_by_default)."""
    from core.adapt import AdaptSettings, adapts_by_default
    from core.errors import ModelError

    if args.adapt is False and args.adapt_steps is not None:
        raise ModelError(f"--no-adapt and --adapt-steps {args.adapt_steps} contradict each other: give one")
    wanted = args.adapt if args.adapt is not None else args.adapt_steps is not None or adapts_by_default(model)
    if not wanted:
        return None
    return AdaptSettings() if args.adapt_steps is None else AdaptSettings(steps=args.adapt_steps)


def run(args: argparse.Namespace) -> int:
    return write_continuation(args, primer=None)


def output_paths(out: str, count: int, suffix: str = ".mid") -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k}{path.suffix or suffix}") for k in range(1, count + 1)]


def check_outputs(args: argparse.Namespace, inputs: list[str]):
    """Every file the command will write (each variation's MIDI and WAV), checked before any work starts."""
    from core.outputs import plan_outputs

    paths = output_paths(args.out, args.variations)
    if args.wav:
        paths += output_paths(args.wav, args.variations, suffix=".wav")
    return plan_outputs(paths, inputs=inputs, force=args.force)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be, so that a stopped generation keeps what it wrote (exit 143)."""

    exit_code = 143


def _terminated(_signum, _frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the files being written are finished
    raise Terminated()


def _return_free_memory() -> None:
    """Hand the C allocator's free pages back to the system (glibc's malloc_trim; elsewhere nothing): what the
    model, its state and reading a long primer freed stays counted in the process otherwise, and writing the piece
    would come on top of it."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
            pass


def read_and_written_line(session, state_bytes: int) -> str:
    """What a left-to-right model did: read the primer id by id, then wrote one id per lane a step."""
    from core.budget import format_bytes

    total = sum(len(new) for new in session.lanes)
    elapsed, count, batch = session.write_seconds, session.steps, session.batch
    rate = (count - 1) * batch / elapsed if count > 1 and elapsed > 0 else 0.0
    return (f"read the primer ({len(session.primer)} tokens) in {session.read_seconds:.1f} s; generated {total} "
            f"tokens in {elapsed:.1f} s ({rate:.0f} tokens/s at batch {batch}); state memory "
            f"{format_bytes(state_bytes)} of {format_bytes(session.budget)} budget")


def denoised_line(session, state_bytes: int, window: int) -> str:
    """What a denoiser did: it fills windows by unmasking them in passes, so a window's ids all arrive at its end
    and a tokens/s at batch says nothing; its time is all of it (the first window is part of `read_seconds`) and
    its memory is one pass's working memory, not a state."""
    from core.budget import format_bytes

    total = sum(len(new) for new in session.lanes)
    elapsed = session.read_seconds + session.write_seconds
    music = sum(max(0.0, session.time(lane) - session.start_time) for lane in range(session.batch))
    rate = music / elapsed if elapsed > 0 else 0.0
    windows = f"{session.windows} window" + ("" if session.windows == 1 else "s")
    after = f"after the primer's {len(session.primer)} tokens" if len(session.primer) > 1 else "from nothing"
    return (f"filled {windows} of up to {window} tokens {after} in {session.passes} unmasking passes: {total} "
            f"tokens, {music:.1f} s of music in {elapsed:.1f} s ({rate:.1f} s of music per second, batch "
            f"{session.batch}); working memory {format_bytes(state_bytes)} per pass of "
            f"{format_bytes(session.budget)} budget")


def write_continuation(args: argparse.Namespace, primer, inputs: list[str] | None = None) -> int:
    """Generate after `primer` (a Performance or ids; None: from nothing), write the MIDI file(s), say what was done.

    Every output is checked first (`inputs`: the files the command read, which it never writes). With --play /
    --virtual / --port the first variation is heard while it is being written. SIGTERM stops it like Ctrl-C.
    """
    check_grid_arguments(args)
    check_clock_arguments(args)
    planned = check_outputs(args, inputs or [])
    sink = open_chosen_sink(args, default_synth=False)  # before the model loads: a missing device fails fast
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _write_continuation(args, primer, sink, planned)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if sink is not None:
            sink.close()


def _write_continuation(args: argparse.Namespace, primer, sink, planned) -> int:
    from core.constraints import Constraints
    from core.generate import SamplingConfig, use_fast_step
    from core.midi import write_performance
    from core.modeldir import load_model
    from core.session import GenerationSession

    constraints = Constraints.parse(args.key, args.pitch_classes, args.range, args.velocity, args.density,
                                    args.max_polyphony)  # each flag checked by argparse; here, how they combine
    model = load_model(args.model)
    use_fast_step(model, exact=args.exact)
    batch = args.variations
    session = GenerationSession(  # the budget given for all variations, else the model's default for each
        model, primer, budget=args.budget, sampling=SamplingConfig(args.temperature, args.top_k, args.top_p,
                                                                   args.min_p),
        seconds=None if args.bars else args.seconds, bars=args.bars, grid=new_piece_grid(args), variations=batch,
        seed=args.seed, max_tokens=args.max_tokens,
        max_note=args.max_note, min_repeat=args.min_repeat, allow_end=args.allow_end, constraints=constraints,
        adapt=adapt_settings(args, model), harmony=args.harmony,
        max_density=args.max_density, pulse=args.pulse, motifs=args.motifs)
    print(f"model {args.model} ({model.arch}); {session.plan.describe()}")
    if session.seconds is not None and session.seconds > MAX_SECONDS:
        from core.grid import GridError

        raise GridError(f"--bars {args.bars} is {session.seconds / 3600:.0f} hours of music at this tempo; at most "
                        f"a day is written in one command")
    print(f"tempo {session.grid.describe()}" + (f"; {args.bars} bars: {session.seconds:.1f} s of new music"
                                                if args.bars else ""))
    if session.constraints is not None:
        print(f"constraints: {session.constraints.describe()}")
    note = session.limit_note()
    if note:
        print(f"note: {note}")

    player = open_live_player(args, sink, session.grid, session.start_time)  # the first variation, heard while
    # it is written (following or sending MIDI clock when asked)
    interrupted: KeyboardInterrupt | None = None
    finished = None
    try:
        if session.adapt is not None and len(session.primer) > 1:
            print("adapting a copy of the model to the primer (--no-adapt skips it)", flush=True)
            took = session.adapt_to_primer()
            print(f"adapted to the primer in {took:.1f} s" if took is not None else
                  f"note: not adapted: the primer is shorter than {session.adapt.min_seconds:g} s", flush=True)
        print("generating (Ctrl-C or SIGTERM stops it and keeps what was written)", flush=True)
        for event in session:
            if player is not None and event.notes[0]:
                player.feed(list(event.notes[0]), horizon=session.time(0))
            finished = event
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: keep what was written so far
        interrupted = stop
        if player is not None:
            player.stop()
    except BaseException:
        if player is not None:
            player.stop()
        raise

    state_bytes, window = session.state.nbytes, getattr(session.state, "window", None)
    del model
    session.release()  # done with: a long piece's notes and its MIDI encoding reuse the model's and state's memory
    _return_free_memory()
    before = session.primer_notes if session.primer_notes is not None else session.primer_piece()
    # the primer exactly as read (its notes and grid), then each variation's new notes, quantized if asked
    pieces = session.exact_pieces([quantized(part, session, args) for part in session.new_parts()])
    if args.bars:  # end on the bar line: the last time shift may have run past it, and notes were closed there
        pieces = [piece.slice_time(0.0, session.start_time + session.seconds) for piece in pieces]
    for line in planned.create_folders():
        print(f"note: {line}")
    for path, piece in zip(output_paths(args.out, batch), pieces, strict=True):
        write_performance(piece, path)
        line = f"wrote {path}: {len(piece)} notes, {piece.duration:.1f} s of music"
        if len(session.primer) > 1:
            line += (f" (new: {len(piece) - len(before)} notes, {piece.duration - before.duration:.1f} s "
                     f"after the primer's {before.duration:.1f} s)")
        print(line)
    print(denoised_line(session, state_bytes, window) if session.denoises else
          read_and_written_line(session, state_bytes))
    if interrupted is not None:
        how = "SIGTERM" if isinstance(interrupted, Terminated) else "Ctrl-C"
        print(f"stopped by {how}: the files hold what was written until then")
    elif finished is not None and finished.reason == "max_tokens":
        print(f"note: stopped at {session.max_tokens} tokens (--max-tokens) before {session.seconds:g} s of music")
    if args.wav:
        from core.synth import render_wav

        for path, piece in zip(output_paths(args.wav, batch, suffix=".wav"), pieces, strict=True):
            render_wav(piece, path, soundfont=args.soundfont,
                       soundfont_origin="--soundfont")
            print(f"rendered {path}")
    if interrupted is not None:
        sys.stdout.flush()
        return getattr(interrupted, "exit_code", 130)
    if player is not None:
        player.feed(list(finished.notes[0]), horizon=session.time(0))
        player.finish()
        print("playing to the end (Ctrl-C stops)")
        try:
            while not player.wait(0.1):
                pass
        except KeyboardInterrupt:
            player.stop()
            return 130
        player.close()
    return 0
