"""Read + pedal-fold + encode, ours against miditok 3.1.0's MIDILike, end to end from the file on disk.

    python bench/tokenize.py [--repeat 5] [--long-repeat 15]

Per file: the median wall time of `--repeat` runs of each pipeline, and the tokens each produces; then the
read + fold + encode time of the longest MAESTRO performance and of the one nearest 15 minutes.

miditok is configured as close to our codec as it allows: 100 time-shift values (1/25 beat up to 4 beats:
20 ms .. 2 s at 120 BPM; miditok shifts are in beats, not milliseconds), 32 velocity bins, the full pitch
range, sustain pedal on/off tokens (it cannot fold the pedal into durations), no time signatures, PAD/BOS/EOS.
It keeps one token stream per track (drums included) where we merge all non-drum tracks into one stream.
Targets: >= 10x faster end to end; < 50 ms for a 15-minute performance. Numbers are noisy on a shared CPU.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where its name would hide the standard library's
# `tokenize` module from everything imported after it: put the project root there instead.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench.data import SHARED_MIDI, require_midi  # noqa: E402
from core.midi import read_performance  # noqa: E402
from core.tokenizer import encode  # noqa: E402

FOLDERS = ("maestro", "pop909", "multitrack")


def ours(path: Path) -> int:
    return len(encode(read_performance(path)))


def miditok_pipeline():
    """MIDILike configured like our codec, or None when miditok is not installed."""
    try:
        from miditok import MIDILike, TokenizerConfig
    except ImportError:
        return None
    config = TokenizerConfig(pitch_range=(0, 127), beat_res={(0, 4): 25}, num_velocities=32,
                             use_sustain_pedals=True, use_time_signatures=False, encode_ids_split="no",
                             special_tokens=["PAD", "BOS", "EOS"])
    tokenizer = MIDILike(config)

    def run(path: Path) -> int:
        sequences = tokenizer.encode(path)
        sequences = sequences if isinstance(sequences, list) else [sequences]
        return sum(len(s.ids) for s in sequences)

    return run


def median_ms(function, path: Path, repeat: int) -> tuple[float, int]:
    times, tokens = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        tokens = function(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per file and pipeline (median reported)")
    parser.add_argument("--long-repeat", type=int, default=15, help="runs for the long performances")
    args = parser.parse_args()

    files = [p for folder in FOLDERS for p in sorted(require_midi(SHARED_MIDI / folder).glob("*.mid"))]
    baseline = miditok_pipeline()
    if baseline is None:
        print("miditok is not installed (pip install 'recital[bench]'): timing ours only\n")

    header = f"{'file':<34} {'min':>5} {'notes':>6} | {'ours ms':>8} {'tokens':>7} | {'miditok ms':>10} " \
             f"{'tokens':>7} | {'speed-up':>8}"
    print(header)
    print("-" * len(header))
    total_ours = total_theirs = 0.0
    tokens_ours = tokens_theirs = 0
    durations: dict[Path, float] = {}
    for path in files:
        perf = read_performance(path)
        durations[path] = perf.duration
        ms, n = median_ms(ours, path, args.repeat)
        total_ours += ms
        tokens_ours += n
        row = f"{path.parent.name + '/' + path.name:<34.34} {perf.duration / 60:5.1f} {len(perf):6d} | {ms:8.2f} " \
              f"{n:7d} |"
        if baseline:
            their_ms, their_n = median_ms(baseline, path, args.repeat)
            total_theirs += their_ms
            tokens_theirs += their_n
            row += f" {their_ms:10.2f} {their_n:7d} | {their_ms / ms:7.1f}x"
        print(row)
    print("-" * len(header))
    row = f"{'total (' + str(len(files)) + ' files)':<34} {sum(durations.values()) / 60:5.0f} {'':>6} | " \
          f"{total_ours:8.1f} {tokens_ours:7d} |"
    if baseline:
        row += f" {total_theirs:10.1f} {tokens_theirs:7d} | {total_theirs / total_ours:7.1f}x"
    print(row)

    maestro = [p for p in files if p.parent.name == "maestro"]
    if maestro:
        longest = max(maestro, key=durations.get)
        near_15 = min((p for p in maestro if durations[p] >= 15 * 60), key=durations.get, default=longest)
        print(f"\nread + fold + encode, median of {args.long_repeat} runs (target < 50 ms for 15 minutes):")
        for label, path in (("nearest 15 min", near_15), ("longest", longest)):
            ms, n = median_ms(ours, path, args.long_repeat)
            line = f"  {label:<15} {path.name} ({durations[path] / 60:.1f} min, {n} tokens): ours {ms:.1f} ms"
            if baseline:
                their_ms, _ = median_ms(baseline, path, max(3, args.long_repeat // 3))
                line += f", miditok {their_ms:.1f} ms ({their_ms / ms:.1f}x)"
            print(line)


if __name__ == "__main__":
    main()
