"""Live player timing and offline render speed, each against a plain baseline, in one run.

1. A real MAESTRO excerpt is played to the virtual "Recital" port on a JACK server (dummy backend, 256-frame
   periods), with a DAW stand-in (another process) connected to it. Reported per player:
   - send error: actual minus scheduled send time of every message (target: p99 < 5 ms);
   - arrival: when the other process received each message, minus its scheduled time (adds JACK's period);
   - inter-onset error: received gaps between note-ons minus the file's gaps.
   Players: Recital's LivePlayer (real-time thread priority where allowed, and without it); the same while
   a thread generates with torch, or runs pure Python (the worst case for the GIL); and the usual
   baseline, a loop that `time.sleep`s until each message.
2. WAV render speed (x real time) of a whole MAESTRO piece: `core.synth.render` against the fluidsynth
   command-line renderer (`fluidsynth -F`) with the same SoundFont.

Run: .venv/bin/python bench/player.py [--seconds 60] [--piece maestro_01.mid]. Starts its own jackd.
Numbers are noisy on a shared machine; say so when quoting them.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/ (whose module names could shadow the standard library's)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from bench.data import SHARED_MIDI, require_midi  # noqa: E402
from core.midi import Performance, read_performance  # noqa: E402
from core.midiport import MidiOutput  # noqa: E402
from core.player import Timing, performance_events, play_performance  # noqa: E402
from core.synth import find_soundfont, render  # noqa: E402

SERVER = f"recital-bench-{os.getpid()}"

RECEIVER = r"""
import json, sys, time, rtmidi
probe = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="daw")
while not any("Recital" in p for p in probe.get_ports()):
    time.sleep(0.01)
probe.open_port([i for i, p in enumerate(probe.get_ports()) if "Recital" in p][0])
got = []
probe.set_callback(lambda event, _: got.append((time.perf_counter(), event[0])))
print("ready", flush=True)
sys.stdin.readline()
print(json.dumps(got), flush=True)
"""


def start_jack() -> subprocess.Popen:
    jackd = shutil.which("jackd")
    if jackd is None:
        sys.exit("jackd is not installed (apt-get install jackd2)")
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    server = subprocess.Popen([jackd, "-n", SERVER, "--no-realtime", "-S", "-d", "dummy", "-r", "44100", "-p",
                               "256"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    os.environ.update(JACK_DEFAULT_SERVER=SERVER, RECITAL_MIDI_API="jack", JACK_NO_START_SERVER="1")
    time.sleep(1.0)
    return server


def sleep_player(perf: Performance, sink) -> Timing:
    """Baseline: sleep until each message's time, then send it (what most simple players do)."""
    timing = Timing()
    start = time.perf_counter()
    for event in performance_events(perf):
        at = start + event.time
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        if event.kind == "on":
            sink.note_on(event.pitch, event.velocity)
        else:
            sink.note_off(event.pitch)
        timing.scheduled.append(at)
        timing.actual.append(time.perf_counter())
        timing.events.append(event)
    sink.all_off()
    return timing


def busy_python(stop: threading.Event) -> None:
    """Worst case: a thread that never leaves the interpreter (pure-Python work holds the GIL)."""
    total = 0
    while not stop.is_set():
        for i in range(2000):
            total += i * i


def busy_torch(stop: threading.Event) -> None:
    """A generator's shape: a small model step in torch (which releases the GIL), then sampling in Python."""
    import torch

    torch.set_num_threads(1)
    weight = torch.randn(384, 384)
    state = torch.randn(64, 384)
    while not stop.is_set():
        for _ in range(4):  # layers
            state = torch.tanh(state @ weight)
        probs = torch.softmax(state[-1], dim=0)
        int(torch.multinomial(probs, 1))


def measure(perf: Performance, play) -> dict[str, float]:
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    with MidiOutput() as out:
        assert receiver.stdout.readline().strip() == "ready"
        time.sleep(0.1)
        timing = play(perf, out)
        time.sleep(0.1)
    receiver.stdin.write("\n")
    receiver.stdin.flush()
    got = json.loads(receiver.stdout.readline())
    receiver.wait()
    arrivals = [t for t, m in got if m[0] & 0xF0 in (0x80, 0x90)][:len(timing.scheduled)]
    lost = len(timing.scheduled) - len(arrivals)
    arrival_ms = (np.asarray(arrivals) - np.asarray(timing.scheduled[:len(arrivals)])) * 1000
    ons = [t for t, m in got if m[0] & 0xF0 == 0x90 and m[2] > 0]
    ioi_ms = np.abs(np.diff(ons) - np.diff(perf.onset[:len(ons)])) * 1000
    send = timing.errors_ms()
    return {"messages": len(send), "lost": lost, "rt": float(timing.realtime),
            "send p50": np.percentile(send, 50), "send p99": np.percentile(send, 99), "send max": send.max(),
            "arrival p50": np.percentile(arrival_ms, 50), "arrival p99": np.percentile(arrival_ms, 99),
            "ioi p99": np.percentile(ioi_ms, 99), "ioi max": ioi_ms.max()}


def normal_priority(perf: Performance, sink) -> Timing:
    return play_performance(perf, sink, realtime=False)


def with_thread(work):
    import torch  # noqa: F401 - imported here, not in the thread: an import holds the GIL for a second

    def play(perf: Performance, sink) -> Timing:
        stop = threading.Event()
        thread = threading.Thread(target=work, args=(stop,))
        thread.start()
        try:
            return play_performance(perf, sink)
        finally:
            stop.set()
            thread.join()

    return play


def timing_table(perf: Performance) -> None:
    server = start_jack()
    try:
        rows = [("LivePlayer", measure(perf, play_performance)),
                ("LivePlayer, normal priority", measure(perf, normal_priority)),
                ("LivePlayer + torch generation thread", measure(perf, with_thread(busy_torch))),
                ("LivePlayer + pure-Python thread (worst case)", measure(perf, with_thread(busy_python))),
                ("baseline: time.sleep loop", measure(perf, sleep_player))]
    finally:
        server.terminate()
        server.wait()
    columns = list(rows[0][1])
    print("| player | " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for name, row in rows:
        cells = [f"{row[c]:.0f}" if c in ("messages", "lost", "rt") else f"{row[c]:.2f}" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("(rt: 1 where the player thread got real-time priority; times in ms; send = actual - scheduled send time in the player; arrival = received by another process "
          "- scheduled; ioi = |received inter-onset - file inter-onset|)")


def render_table(path: Path) -> None:
    perf = read_performance(path)
    soundfont = find_soundfont()
    start = time.perf_counter()
    render(perf)
    ours = time.perf_counter() - start
    rows = [("core.synth.render", ours)]
    fluidsynth = shutil.which("fluidsynth")
    if fluidsynth:
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            subprocess.run([fluidsynth, "-ni", "-q", "-g", "1.0", "-r", "44100", "-F", str(Path(folder) / "b.wav"),
                            str(soundfont), str(path)], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            rows.append(("baseline: fluidsynth -F (CLI)", time.perf_counter() - start))
    print(f"\nWAV render of {path.name} ({perf.duration:.0f} s, {len(perf)} notes, SoundFont {soundfont.name}):")
    print("| renderer | seconds | x real time |")
    print("| --- | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {perf.duration / seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--piece", default="maestro_01.mid")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the excerpt played live")
    args = parser.parse_args()
    path = require_midi(SHARED_MIDI / "maestro" / args.piece)
    excerpt = read_performance(path).slice_time(0.0, args.seconds)
    print(f"Live timing: {path.name}, first {args.seconds:.0f} s ({len(excerpt)} notes), JACK dummy, "
          f"256-frame periods (5.8 ms), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    timing_table(excerpt)
    render_table(path)


if __name__ == "__main__":
    main()
