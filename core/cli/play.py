"""`recital play FILE`: listen on the built-in synth, send to a MIDI port, or render a WAV file."""

from __future__ import annotations

import argparse
import sys

HELP = "play a MIDI file on the synth or a MIDI port, or render it to WAV"
SOUNDFONT_FLAG = "--soundfont"  # SoundFont errors name it: the path came from there


def add_output_arguments(parser: argparse.ArgumentParser, synth_flag: str = "--synth") -> None:
    """--synth | --virtual | --port NAME, and --soundfont; `generate`/`continue` pass synth_flag="--play".

    The synth flag always lands in `args.synth`, so `open_chosen_sink` reads the same names everywhere.
    """
    parser.set_defaults(synth_flag=synth_flag)
    where = parser.add_mutually_exclusive_group()
    where.add_argument(synth_flag, dest="synth", action="store_true",
                       help="play on the built-in synth (fluidsynth)")
    where.add_argument("--virtual", action="store_true",
                       help='open a virtual MIDI output port named "Recital" and play to it (connect your DAW)')
    where.add_argument("--port", metavar="NAME", help="play to an existing MIDI output port (see `recital ports`)")
    parser.add_argument(SOUNDFONT_FLAG, metavar="PATH",
                        help="General MIDI SoundFont for the synth and --wav (default: $RECITAL_SOUNDFONT, "
                             "then the system's)")
    clock = parser.add_mutually_exclusive_group()
    clock.add_argument("--follow-clock", metavar="PORT",
                       help="follow the MIDI clock a DAW sends to this input port: start at the bar after its "
                            "Start, at its tempo, pause on its Stop")
    clock.add_argument("--send-clock", action="store_true",
                       help="be the clock master: send MIDI clock (Start, 24 per quarter note at the piece's "
                            "tempo, Stop) on the --virtual or --port output")


def check_clock_arguments(args: argparse.Namespace) -> None:
    """--follow-clock and --send-clock need something to play to; --send-clock needs a MIDI output."""
    from core.clock import ClockError

    heard = args.synth or args.virtual or args.port is not None
    if getattr(args, "follow_clock", None) is not None and not heard:
        raise ClockError(f"--follow-clock times the playback: give --virtual, --port NAME or {args.synth_flag} too")
    if getattr(args, "send_clock", False) and not (args.virtual or args.port is not None):
        raise ClockError("--send-clock sends MIDI clock on a MIDI output: give --virtual or --port NAME too")


def open_chosen_sink(args: argparse.Namespace, default_synth: bool = True):
    """The sink the flags name; when none is given, the synth (or None if not `default_synth`).

    The caller closes it. Raises DeviceError (one line) when the chosen device is missing.
    """
    from core.player import open_sink

    if args.port is not None:
        return open_sink(port=args.port)
    if args.virtual:
        return open_sink(virtual=True)
    if args.synth or default_synth:
        return open_sink(synth=True, soundfont=args.soundfont, soundfont_origin=SOUNDFONT_FLAG)
    return None


def open_live_player(args: argparse.Namespace, sink, grid, start: float):
    """The LivePlayer `generate`/`continue` play to while writing (None without a sink), following (its clock
    input closes with it) or sending MIDI clock as the flags say. `grid`/`start`: the piece's tempo map and
    where its new part begins."""
    from core.player import LivePlayer, open_clock_input

    if sink is None:
        return None
    if args.follow_clock is None:
        return LivePlayer(sink, start=start if args.send_clock else None,
                          send_clock=grid if args.send_clock else None)
    from core.clock import ClockFollower

    player = LivePlayer(sink, follower=ClockFollower(grid, start=start))
    try:
        open_clock_input(args.follow_clock, player, say=lambda line: print(f"note: {line}", file=sys.stderr,
                                                                             flush=True))
    except BaseException:
        player.stop()
        raise
    return player


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="MIDI file to play")
    add_output_arguments(parser)
    parser.add_argument("--wav", metavar="OUT",
                        help="render to this WAV file (44.1 kHz stereo); plays live as well only when "
                             "--synth, --virtual or --port is also given")
    parser.add_argument("--force", action="store_true", help="replace the --wav file if it exists")


def run(args: argparse.Namespace) -> int:
    from core.midi import read_performance
    from core.outputs import plan_outputs
    from core.player import play_performance

    check_clock_arguments(args)
    # Before reading: the WAV never replaces the MIDI file, nor (without --force) any other file.
    planned = plan_outputs([args.wav], inputs=[args.file], force=args.force) if args.wav else None
    perf = read_performance(args.file)
    minutes, seconds = divmod(int(round(perf.duration)), 60)
    if planned is not None:
        from core.synth import render_wav

        for note in planned.create_folders():
            print(f"note: {note}")
        path = render_wav(perf, args.wav, soundfont=args.soundfont, soundfont_origin=SOUNDFONT_FLAG)
        print(f"wrote {path} ({minutes}:{seconds:02d}, {len(perf)} notes)")
        if not (args.synth or args.virtual or args.port is not None):
            return 0
    sink = open_chosen_sink(args)
    try:
        where = getattr(sink, "name", None) or f"the synth ({getattr(sink, 'driver', '')})"
        print(f"playing {args.file} ({minutes}:{seconds:02d}, {len(perf)} notes) on {where}; Ctrl-C stops",
              file=sys.stderr)
        timing = play_performance(perf, sink, follow=args.follow_clock, send_clock=args.send_clock,
                                  say=lambda line: print(f"note: {line}", file=sys.stderr, flush=True)).summary()
    finally:
        sink.close()
    print(f"played {timing['messages']} messages; send timing error p50 {timing['p50_ms']:.2f} ms, "
          f"p99 {timing['p99_ms']:.2f} ms")
    return 0
