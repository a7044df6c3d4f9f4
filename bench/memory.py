"""Peak memory of reading a primer against its length (issue #21): is it flat once past one segment?

    python -m bench.memory                          # 1k, 20k, 123k and 1.5M tokens, both shipped models
    python -m bench.memory --sizes 1000 20000       # a quick look
    python -m bench.memory --models default --skip-continue

For each size a synthetic primer is written to a temporary folder: dense random piano (about ten notes a second,
random pitches, lengths and velocities), as long as it takes to encode to that many tokens (1.5M tokens is about
eleven hours of music, a ~10 MB MIDI file). Then, per model and size, two fresh processes, one thread each
(RECITAL_THREADS=1):

- prefill: the model side alone. It loads the model and the primer's ids in the model's codec (.npy, written for
  each codec) and draws one token after them (core.generate.generate: prefill, the codec's note rule, one sample);
  seconds to read are timed inside it. Sizes count the event codec's ids: a "notes" model reads the same music
  in fewer (its row is the same primer, so rows compare models by the music they hold).
- continue: `recital continue PRIMER.mid --seconds 2` end to end: MIDI reading and encoding, generation, and
  writing the output (which holds the whole primer again); its seconds are its wall time.

Peak RSS is each child's own high-water mark (os.wait4's ru_maxrss), so runs never mix. A child's peak is not
the same twice: PerceiverS' prefill alone peaks at one of two levels ~16 MB apart from run to run, whatever the
primer (and the hash seed), so each child runs --repeat times (default 3) and the table gives the medians, with
each column's spread (largest - smallest) beside it. Ratios are of the medians, to the 20k
row (or the second size given). No asserts: this prints a table for the README and the issue, with the machine's
load when it was measured (the seconds columns are as noisy as the load; the RSS columns are not).

What a long primer still adds to `continue`, measured on the 1.5M-token primer (~21 MB over the 20k row, both
models): while the model reads it, its ids as the engines take them (int64, 12 MB), as the session keeps them
(uint16, 3 MB) and its notes as read (6 MB, for writing the primer exactly as it was). Writing the piece (its
notes again and symusic's MIDI encoding, ~30 MB) comes after the model and its state are let go, below that peak.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = (1_000, 20_000, 123_000, 1_500_000)
MODELS = ("default", "default-perceivers")
NOTES_PER_SECOND = 10.0


def synthetic_notes(count: int, seed: int = 0):
    """`count` dense random piano notes: onsets ~10 a second, 0.05-1.5 s long, pitches 36-96."""
    from core.midi import Performance

    rng = np.random.default_rng(seed)
    onset = np.cumsum(rng.exponential(1.0 / NOTES_PER_SECOND, count))
    offset = onset + rng.uniform(0.05, 1.5, count)
    pitch = rng.integers(36, 97, count)
    velocity = rng.integers(30, 110, count)
    return Performance.from_notes(onset, offset, pitch, velocity)


def write_primer(tokens: int, folder: Path) -> tuple[Path, Path, int]:
    """A MIDI file that the event codec encodes to about `tokens` tokens, and its ids in every codec
    (`ids_file(stem, codec)`, what `recital continue` reads from the file); returns the MIDI, the stem the
    ids files share, and the event codec's count."""
    from core.codecs import CODECS
    from core.midi import read_performance, write_performance
    from core.tokenizer import encode

    sample = len(encode(synthetic_notes(2000), eos=False)) / 2000  # tokens per note
    notes = max(1, int(tokens / sample))
    midi = folder / f"primer-{tokens}.mid"
    write_performance(synthetic_notes(notes), midi)
    read = read_performance(midi)
    stem = folder / f"primer-{tokens}"
    for name, codec in CODECS.items():
        np.save(ids_file(stem, name), codec.encode(read, eos=False).astype(np.uint16))
    return midi, stem, len(encode(read, eos=False))


def ids_file(stem: Path, codec: str) -> Path:
    """Where a primer's ids in `codec` are kept."""
    return stem.with_name(f"{stem.name}.{codec}.npy")


def run_child(command: list[str]) -> tuple[str, float, int]:
    """Run a fresh process; its output, wall seconds and peak RSS in bytes (its own ru_maxrss)."""
    env = dict(os.environ, RECITAL_THREADS="1", OMP_NUM_THREADS="1")
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed ({child.returncode}):\n{output[-2000:]}")
    return output, wall, usage.ru_maxrss * 1024


def prefill_child(model_name: str, stem: str) -> None:
    """In the child: read the primer (its ids in the model's codec) with the model and draw one token; print the
    seconds it took."""
    import torch

    from core.codecs import codec_of
    from core.generate import generate, prepare_primer, use_fast_step
    from core.modeldir import load_model

    torch.set_num_threads(1)
    model = load_model(model_name)
    use_fast_step(model)
    ids = np.load(ids_file(Path(stem), codec_of(model).NAME))
    start = time.perf_counter()
    next(generate(model, prepare_primer(ids, model.config.vocab_size), model.new_state(model.plan(None, 1)),
                  max_tokens=1, seed=0))
    print(f"read_s {time.perf_counter() - start:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="primer lengths in tokens")
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="model names or directories")
    parser.add_argument("--skip-continue", action="store_true", help="measure the model side only")
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement (medians shown)")
    parser.add_argument("--prefill-child", nargs=2, metavar=("MODEL", "STEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prefill_child:
        prefill_child(*args.prefill_child)
        return

    with tempfile.TemporaryDirectory(prefix="recital-memory-") as tmp:
        folder = Path(tmp)
        primers = []
        for size in args.sizes:
            start = time.perf_counter()
            midi, ids, count = write_primer(size, folder)
            print(f"primer of {count:,} tokens: {midi.stat().st_size / 1e6:.1f} MB of MIDI "
                  f"(made in {time.perf_counter() - start:.0f} s)", flush=True)
            primers.append((midi, ids, count))
        reference = 1 if len(primers) > 1 else 0
        print("load average while measuring: " + " ".join(f"{load:.2f}" for load in os.getloadavg()), flush=True)
        for model in args.models:
            rows = []
            for midi, ids, count in primers:
                prefills = [run_child([sys.executable, "-m", "bench.memory", "--prefill-child", model, str(ids)])
                            for _ in range(max(1, args.repeat))]
                read_s = [float(output.split("read_s")[-1]) for output, _, _ in prefills]
                row = [count, read_s, [rss for _, _, rss in prefills], None, None]
                if not args.skip_continue:
                    out = folder / f"out-{model.replace('/', '_')}-{count}.mid"
                    continues = []
                    for _ in range(max(1, args.repeat)):
                        continues.append(run_child([sys.executable, "-m", "core", "continue", str(midi), "--model",
                                                    model, "--seconds", "2", "--seed", "0", "--out", str(out)]))
                        out.unlink(missing_ok=True)
                    row[3:] = [[wall for _, wall, _ in continues], [rss for _, _, rss in continues]]
                rows.append(row)
                print(f"  {model} {count:,} tokens done", flush=True)
            print_table(model, rows, reference)


def print_table(model: str, rows: list[list], reference: int) -> None:
    """Medians of each row's runs, the RSS spread (largest - smallest, MB) beside them; ratios of the medians."""
    base = [None if runs is None else float(np.median(runs)) for runs in rows[reference][1:]]
    runs = len(rows[reference][2])
    print(f"\n{model}: peak RSS of a fresh process (one thread) against primer length, median of {runs} "
          f"run{'s' * (runs > 1)}; ratios to the {rows[reference][0]:,}-token row")
    head = f"{'primer tokens':>14} {'read s':>8} {'prefill RSS':>12} {'spread':>7} {'ratio':>6}"
    print(head if base[2] is None else f"{head} {'continue s':>11} {'continue RSS':>13} {'spread':>7} {'ratio':>6}")
    for count, read_s, prefill_rss, wall, continue_rss in rows:
        prefill = float(np.median(prefill_rss))
        line = (f"{count:>14,} {np.median(read_s):>8.2f} {prefill / 2**20:>9.0f} MB "
                f"{(max(prefill_rss) - min(prefill_rss)) / 2**20:>4.0f} MB {prefill / base[1]:>6.2f}")
        if wall is not None:
            peak = float(np.median(continue_rss))
            line += (f" {np.median(wall):>11.1f} {peak / 2**20:>10.0f} MB "
                     f"{(max(continue_rss) - min(continue_rss)) / 2**20:>4.0f} MB {peak / base[3]:>6.2f}")
        print(line)


if __name__ == "__main__":
    main()
