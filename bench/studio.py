"""The studio's promptness, on a quiet machine and beside a busy core: how long the GUI thread goes without
handling an event while a shipped model writes, and how long Stop takes to end the job.

    python -m bench.studio                            # the shipped default, 3 rounds each
    python -m bench.studio --model default-perceivers --rounds 5 --seconds 20

The tests prove the mechanisms (every model call off the GUI thread, which answers while one runs; at most one
model step after Stop); this measures the times. Rows:
- GUI gap: the longest and the 99th-percentile interval between beats of a 10 ms timer on the GUI thread, over
  one generation (a new piece, or a continuation of a MAESTRO excerpt: its primer read first);
- Stop: from the request to the job's last model step ending (the job's view), and to the finished signal
  handled on the GUI thread (the composer's view); and the model steps begun after the request.
Each cell is the median of the rounds, with the worst in brackets. The window is the real one, drawn
offscreen; the busy process is bench/busy.py's (a Python loop on one core).
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import argparse  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from bench.busy import busy_core, load_line  # noqa: E402
from bench.data import SHARED_MIDI, require_midi  # noqa: E402

BEAT_MS = 10
PRIMER_SECONDS = 60.0  # the MAESTRO excerpt a continuation reads first


def run_until(condition: Callable[[], bool], timeout: float = 600.0) -> None:
    """Run the GUI thread's event loop until `condition` holds (checked every 2 ms) or `timeout` passes."""
    loop = QEventLoop()
    check = QTimer()
    check.setInterval(2)
    check.timeout.connect(lambda: condition() and loop.quit())
    check.start()
    QTimer.singleShot(int(timeout * 1000), loop.quit)
    loop.exec()
    check.stop()


class StepClock:
    """Wraps a model's step: when each began and ended, and whether Stop had been asked before it began."""

    def __init__(self, model):
        self.stop_asked = threading.Event()
        self.calls: list[tuple[float, float, bool]] = []
        original = type(model).step  # the class's: a copy the job makes (adapting to the primer) is timed too

        def step(model_self, *args, **kwargs):
            began, asked = time.perf_counter(), self.stop_asked.is_set()
            try:
                return original(model_self, *args, **kwargs)
            finally:
                self.calls.append((began, time.perf_counter(), asked))

        type(model).step = step

    def reset(self) -> None:
        self.stop_asked.clear()
        self.calls.clear()


def generation_gaps(window, beats: list[float], seed: int) -> dict[str, float]:
    """One generation with the window's settings: the GUI thread's longest and p99 beat interval (ms)."""
    window.panel.seed.setValue(seed)
    beats.clear()
    window.generate()
    run_until(lambda: window.generation is None and not window.panel.generating)
    gaps = np.diff(beats) * 1000
    return {"max": float(gaps.max()), "p99": float(np.percentile(gaps, 99))}


def stop_latency(window, clock: StepClock, seed: int) -> dict[str, float]:
    """Generate a long piece, press Stop once notes are being drawn: the latencies (ms) and later steps."""
    window.panel.seed.setValue(seed)
    seconds = window.panel.seconds.value()
    window.panel.seconds.setValue(3000)
    clock.reset()
    window.generate()
    run_until(lambda: len(window.roll.notes("live")) > 0 or window.generation is None)
    run_until(lambda: False, timeout=0.2)  # into the flow of writing
    clock.stop_asked.set()
    asked = time.perf_counter()
    window.stop_generating()
    run_until(lambda: window.generation is None and not window.panel.generating)
    finished = time.perf_counter()
    window.panel.seconds.setValue(seconds)
    last_step = max(end for _, end, _ in clock.calls)
    return {"job": (max(last_step, asked) - asked) * 1000, "gui": (finished - asked) * 1000,
            "steps": float(sum(after for _, _, after in clock.calls))}


def new_piece(window) -> None:
    """An empty piece in "New piece" mode, the last one dropped without the unsaved-changes prompt."""
    window.document.undo_stack.setClean()
    window.new_piece()
    window.panel.mode_new.setChecked(True)


def measure(window, clock: StepClock, primer, rounds: int) -> dict[str, list[dict[str, float]]]:
    beats: list[float] = []
    timer = QTimer()
    timer.setInterval(BEAT_MS)
    timer.timeout.connect(lambda: beats.append(time.perf_counter()))
    timer.start()
    rows: dict[str, list[dict[str, float]]] = {"GUI gap, new piece": [], "GUI gap, continue": [], "Stop": []}
    for seed in range(rounds):
        new_piece(window)
        rows["GUI gap, new piece"].append(generation_gaps(window, beats, seed))
        window.document.undo_stack.setClean()
        window.open_file(primer)
        window.panel.mode_end.setChecked(True)
        rows["GUI gap, continue"].append(generation_gaps(window, beats, seed))
        new_piece(window)
        rows["Stop"].append(stop_latency(window, clock, seed))
    timer.stop()
    return rows


def cell(samples: list[dict[str, float]], key: str) -> str:
    values = [sample[key] for sample in samples]
    return f"{statistics.median(values):.0f} ({max(values):.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a shipped model's name or a model directory")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="music each measured generation writes")
    args = parser.parse_args()

    import tempfile
    from pathlib import Path

    from core.midi import read_performance, write_performance
    from core.modeldir import resolve
    from studio.settings import Settings
    from studio.window import MainWindow

    excerpt = read_performance(require_midi(SHARED_MIDI / "maestro" / "maestro_01.mid")).slice_time(
        0.0, PRIMER_SECONDS)
    app = QApplication.instance() or QApplication([])
    with tempfile.TemporaryDirectory() as folder:
        os.environ["RECITAL_CONFIG_DIR"] = str(Path(folder) / "config")  # the user's settings stay untouched
        primer = Path(folder) / "primer.mid"
        write_performance(excerpt, primer)
        path = str(resolve(args.model))
        window = MainWindow(Settings(seconds=args.seconds, model=path), extra_models=[Path(path)], list_ports=False)
        run_until(lambda: window.model is not None, timeout=300)
        if window.model is None:
            raise SystemExit(f"error: the model {args.model!r} did not load")
        clock = StepClock(window.model)
        print(f"studio promptness: model {args.model!r} ({window.model.arch}), {args.seconds:g} s of music per "
              f"generation, a {PRIMER_SECONDS:g} s MAESTRO primer to continue, {args.rounds} rounds; "
              f"{load_line()}", flush=True)
        quiet = measure(window, clock, primer, args.rounds)
        with busy_core():
            busy = measure(window, clock, primer, args.rounds)
        window.jobs.shutdown()
        window.document.undo_stack.setClean()
        window.close()
    del app
    print(f"{'':<40} {'quiet':>14} {'busy core':>14}   (median (worst) of {args.rounds})")
    for row in ("GUI gap, new piece", "GUI gap, continue"):
        for key, label in (("max", "longest, ms"), ("p99", "p99, ms")):
            print(f"{row + ' ' + label:<40} {cell(quiet[row], key):>14} {cell(busy[row], key):>14}")
    for key, label in (("job", "Stop to last step, ms"), ("gui", "Stop to finished (GUI), ms"),
                       ("steps", "Stop: steps begun after")):
        print(f"{label:<40} {cell(quiet['Stop'], key):>14} {cell(busy['Stop'], key):>14}")
    print(f"at the end: {load_line()}")


if __name__ == "__main__":
    main()
