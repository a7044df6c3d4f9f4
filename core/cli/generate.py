"""`recital generate`: write a new piece (or K variations) with a model, under a state-memory budget."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.cli.play import add_output_arguments, open_chosen_sink
from core.generate import MAX_NOTE_SECONDS

HELP = "write a new piece with a model"
TOKENS_PER_SECOND_LIMIT = 150  # --max-tokens default per second of music: far above dense piano (~40)


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def add_generation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `generate` and `continue`."""
    parser.add_argument("--model", default="default", metavar="NAME_OR_PATH",
                        help="model name (see `recital models`) or model directory (default: default)")
    parser.add_argument("--seconds", type=positive_float, default=30.0, metavar="S",
                        help="seconds of new music to write (default: 30)")
    parser.add_argument("--out", required=True, metavar="FILE.mid", help="MIDI file to write")
    parser.add_argument("--max-note", type=float, default=MAX_NOTE_SECONDS, metavar="S",
                        help=f"release a note held longer than S seconds (0: never; default {MAX_NOTE_SECONDS:g})")
    parser.add_argument("--allow-end", action="store_true",
                        help="let the model end the piece before --seconds (default: it plays all of them)")
    parser.add_argument("--budget", metavar="SIZE",
                        help="memory the model's recurrent state may use in all, e.g. 16MB (default: the "
                             "model's default for each variation)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest ids (0: off)")
    parser.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (1: off; default 0.95)")
    parser.add_argument("--min-p", type=float, default=0.0, help="drop ids below min-p x the likeliest (0: off)")
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible piece")
    parser.add_argument("--variations", type=positive_int, default=1, metavar="K",
                        help="write K variations at once (FILE-1.mid ... FILE-K.mid)")
    parser.add_argument("--max-tokens", type=positive_int, metavar="N",
                        help=f"stop after N new tokens (default: {TOKENS_PER_SECOND_LIMIT} per second asked)")
    parser.add_argument("--exact", action="store_true",
                        help="generate with the model's exact fp32 weights (default: int8 where the model "
                             "offers it, about 1.5x faster)")
    parser.add_argument("--wav", metavar="OUT.wav",
                        help="also render the result to a 44.1 kHz stereo WAV file (OUT-k.wav for variations)")
    add_output_arguments(parser, synth_flag="--play")  # --play | --virtual | --port NAME: listen while writing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_generation_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return write_continuation(args, primer_ids=None)


def output_paths(out: str, count: int) -> list[Path]:
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{k}{path.suffix or '.mid'}") for k in range(1, count + 1)]


def write_continuation(args: argparse.Namespace, primer_ids) -> int:
    """Generate after `primer_ids` (None: from nothing), write the MIDI file(s), print what was done.

    With --play / --virtual / --port the first variation is heard while it is being written.
    """
    sink = open_chosen_sink(args, default_synth=False)  # before the model loads: a missing device fails fast
    try:
        return _write_continuation(args, primer_ids, sink)
    finally:
        if sink is not None:
            sink.close()


def _write_continuation(args: argparse.Namespace, primer_ids, sink) -> int:
    import numpy as np

    from core.generate import SamplingConfig, generate, prepare_primer, use_fast_step
    from core.midi import write_performance
    from core.modeldir import load_model
    from core.player import LivePlayer
    from core.state import format_bytes, parse_budget
    from core.tokenizer import Decoder, decode

    model = load_model(args.model)
    use_fast_step(model, exact=args.exact)
    sampling = SamplingConfig(args.temperature, args.top_k, args.top_p, args.min_p)
    batch = args.variations
    if args.budget is not None:
        budget = parse_budget(args.budget)
    else:  # the model's default is for one lane: each variation gets that much
        budget = parse_budget(getattr(model.config, "default_budget", "16MB")) * batch
    plan = model.plan(budget, batch)
    state = model.new_state(plan, batch)
    primer = prepare_primer(primer_ids, model.config.vocab_size).tolist()
    max_tokens = args.max_tokens or int(args.seconds * TOKENS_PER_SECOND_LIMIT) + 64
    print(f"model {args.model} ({model.arch}); {plan.describe()}")
    note = model.memory_limit_note(budget, batch) if hasattr(model, "memory_limit_note") else ""
    if note:
        print(f"note: {note}")

    lanes: list[list[int]] = [[] for _ in range(batch)]
    decoders = [Decoder() for _ in range(batch)]
    for decoder in decoders:  # the primer sets the clock and the sounding notes; its events are not new
        for token in primer:
            decoder.feed(token)
    stream = generate(model, primer, budget, sampling, max_tokens=max_tokens, max_seconds=args.seconds,
                      stop_at_eos=args.allow_end, max_note_seconds=args.max_note or None, batch=batch,
                      seed=args.seed, state=state)
    # Live playback of the first variation: a decoder of its new ids only, starting where the primer ends.
    player = LivePlayer(sink) if sink is not None else None
    listened = Decoder(decoders[0].time)
    start = time.perf_counter()
    first = None  # when the first new id came: reading the primer happens before it
    count = 0
    interrupted = False
    try:
        for step in stream:  # one id per lane
            tokens = [step] if batch == 1 else step.tolist()
            for lane, token in enumerate(tokens):
                if token:  # PAD: this variation has finished
                    lanes[lane].append(token)
                    decoders[lane].feed(token)
            if player is not None and tokens[0]:
                player.feed(listened.feed(tokens[0]), horizon=listened.time)
            count += 1
            first = first or time.perf_counter()
    except KeyboardInterrupt:  # keep what was written so far
        interrupted = True
        if player is not None:
            player.stop()
    except BaseException:
        if player is not None:
            player.stop()
        raise
    elapsed = time.perf_counter() - (first or start)

    before = decode(np.array(primer))
    for path, new in zip(output_paths(args.out, batch), lanes, strict=True):
        piece = decode(np.array(primer + new))
        write_performance(piece, path)
        line = f"wrote {path}: {len(piece)} notes, {piece.duration:.1f} s of music"
        if len(primer) > 1:
            line += (f" (new: {len(piece) - len(before)} notes, {piece.duration - before.duration:.1f} s "
                     f"after the primer's {before.duration:.1f} s)")
        print(line)
    total = sum(len(new) for new in lanes)
    rate = (count - 1) * batch / elapsed if count > 1 and elapsed > 0 else 0.0
    print(f"read the primer ({len(primer)} tokens) in {(first or start) - start:.1f} s; generated {total} "
          f"tokens in {elapsed:.1f} s ({rate:.0f} tokens/s at batch {batch}); state memory "
          f"{format_bytes(state.nbytes)} of {format_bytes(budget)} budget")
    if interrupted:
        print("stopped by Ctrl-C: the files hold what was written until then")
    elif count >= max_tokens:
        print(f"note: stopped at {max_tokens} tokens (--max-tokens) before {args.seconds:g} s of music")
    if args.wav:
        from core.synth import render_wav

        for path, new in zip(output_paths(args.wav, batch), lanes, strict=True):
            render_wav(decode(np.array(primer + new)), path, soundfont=args.soundfont)
            print(f"rendered {path}")
    if player is not None and not interrupted:
        player.feed(listened.finish(), horizon=listened.time)
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
