"""Data-side cost of the expressive augmentation, against the token-level augmentation and the decoder it avoids.

    python -m bench.expressive                 # MAESTRO files and a synthetic chorale, 5 draws each
    python -m bench.expressive --repeat 20

Training reads a few thousand tokens per second on this CPU; the augmentation of one piece draw must cost a
small part of that. Rows: the token-level transposition + stretch (trainer.augment), the vectorised decode alone
(trainer.expressive.notes_from_ids) beside core.tokenizer.decode (its reference, a Python loop), the whole
expressive performance (decode, rubato, jitter, legato, pedal, dynamics, encode), and the keyboard figuration
(trainer.figuration) and the bass line an octave down (trainer.register), each on every draw. No asserts: a
shared machine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bench.data import SHARED_MIDI, require_midi
from core.midi import Performance, read_performance
from core.tokenizer import decode, encode
from trainer.augment import augment
from trainer.expressive import Expression, express_ids, notes_from_ids
from trainer.figuration import Figuration, figure_ids
from trainer.register import Register, lower_bass_ids

MAESTRO = SHARED_MIDI / "maestro"


def chorale(beats: int = 400) -> Performance:
    rng = np.random.default_rng(0)
    onset = np.repeat(np.arange(beats) * 0.6, 4)
    pitch = np.tile([48, 55, 62, 69], beats) + rng.integers(0, 7, 4 * beats)
    return Performance.from_notes(onset, onset + 0.6, pitch, np.full(len(onset), 90))


def rate(function, pieces: list[np.ndarray], repeat: int) -> float:
    """Tokens per second of `function(ids, rng)` over the pieces."""
    started = time.perf_counter()
    tokens = 0
    for r in range(repeat):
        for ids in pieces:
            function(ids, np.random.default_rng(r))
            tokens += len(ids)
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    sets = {"chorale (synthetic, 4 min)": [encode(chorale())]}
    maestro = sorted(require_midi(MAESTRO).glob("*.mid"))
    sets[f"maestro ({len(maestro)} files)"] = [encode(read_performance(p)) for p in maestro]
    always = Expression(probability=1.0)
    rows = [
        ("transpose + stretch", lambda ids, rng: augment(ids, rng, 5, 0.05), args.repeat),
        ("core.tokenizer.decode", lambda ids, rng: decode(ids), 1),
        ("notes_from_ids", lambda ids, rng: notes_from_ids(ids), args.repeat),
        ("expressive performance", lambda ids, rng: express_ids(ids, rng, always), args.repeat),
        ("keyboard figuration", lambda ids, rng: figure_ids(ids, rng, Figuration(probability=1.0)), args.repeat),
        ("bass an octave down", lambda ids, rng: lower_bass_ids(ids, rng, Register(probability=1.0)), args.repeat),
    ]
    print(f"{'tokens/s':<26}" + "".join(f"{name:>30}" for name in sets))
    for label, function, repeat in rows:
        print(f"{label:<26}" + "".join(f"{rate(function, pieces, repeat):>30,.0f}" for pieces in sets.values()))
    tokens = {name: sum(len(ids) for ids in pieces) for name, pieces in sets.items()}
    print(f"{'(tokens per set)':<26}" + "".join(f"{count:>30,}" for count in tokens.values()))


if __name__ == "__main__":
    main()
