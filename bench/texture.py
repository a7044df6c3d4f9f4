"""Texture of the training draws against the pianists': which way the score-derived corpus is still far from piano.

    python -m bench.texture                         # the recipe's draws as they are, 400 draws, 10 s windows
    python -m bench.texture --register 0.5 --register 1.0 --seconds 30

Issue #17: the models continue a piano primer with what they learned a texture is. This compares the default
DSMR recipe's training draws (trainer/recipes/default_models.toml: collection weights, beginnings, keyboard
figuration, expressive performance, transposition and stretch, drawn as the training loop draws them) with MAESTRO
(../shared/midi/maestro, windows from 60 s on, outside bench.continuation's), each over windows of `--seconds`,
and the same draws with the bass line an octave down on a share of them (`--register`, trainer/register.py).

Rows (means over windows): notes/s; onset groups/s (notes within 35 ms are one group, a chord as a pianist strikes
it); notes per group; share of single-note groups and of groups of 4 or more; share of groups of two or more whose
top or bottom two notes are an octave (or two) apart; span of a group (semitones, top to bottom); leap of the
top note from one group to the next (semitones); polyphony (notes sounding, every 50 ms); share of notes below C4;
pitch range (3rd to 97th percentile of the window's pitches, semitones); median note length (s); velocity sd.
Needs the music21 MIDI cache (python -m trainer.recipes.music21_corpus).
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.data import SHARED_MIDI, require_midi
from core import notecodec
from core.midi import Performance, read_performance

GROUP_SECONDS = 0.035
ROWS = ("notes/s", "groups/s", "notes a group", "single notes", "groups of 4+", "octaves", "span", "top leap",
        "polyphony", "below C4", "pitch range", "median length", "velocity sd")


def texture(perf: Performance) -> dict[str, float]:
    """The rows above for one window of notes (at least two)."""
    order = np.lexsort((perf.pitch, perf.onset))
    onset, offset = perf.onset[order], perf.offset[order]
    pitch, velocity = perf.pitch[order].astype(np.int64), perf.velocity[order].astype(np.float64)
    seconds = max(float(onset[-1] - onset[0]), 1.0)
    groups, first = [], 0
    for i in range(1, len(onset) + 1):
        if i == len(onset) or onset[i] - onset[first] > GROUP_SECONDS:
            groups.append(np.sort(pitch[first:i]))
            first = i
    sizes = np.array([len(g) for g in groups])
    chords = [g for g in groups if len(g) >= 2]
    tops = np.array([g[-1] for g in groups])
    times = np.arange(onset[0], onset[-1], 0.05)
    return {
        "notes/s": len(onset) / seconds, "groups/s": len(groups) / seconds, "notes a group": float(sizes.mean()),
        "single notes": float((sizes == 1).mean()), "groups of 4+": float((sizes >= 4).mean()),
        "octaves": float(np.mean([(g[-1] - g[-2]) % 12 == 0 or (g[1] - g[0]) % 12 == 0 for g in chords]))
        if chords else np.nan,
        "span": float(np.mean([g[-1] - g[0] for g in chords])) if chords else np.nan,
        "top leap": float(np.abs(np.diff(tops)).mean()) if len(tops) > 1 else np.nan,
        "polyphony": float(np.mean([((onset <= t) & (offset > t)).sum() for t in times])) if len(times) else np.nan,
        "below C4": float((pitch < 60).mean()),
        "pitch range": float(np.percentile(pitch, 97) - np.percentile(pitch, 3)),
        "median length": float(np.median(offset - onset)), "velocity sd": float(velocity.std()),
    }


def window(perf: Performance, start: float, seconds: float) -> Performance | None:
    keep = (perf.onset >= start) & (perf.onset < start + seconds)
    if keep.sum() < 20:
        return None
    return Performance(perf.onset[keep], perf.offset[keep], perf.pitch[keep], perf.velocity[keep])


def maestro_windows(seconds: float) -> list[Performance]:
    found = []
    for path in sorted(require_midi(SHARED_MIDI / "maestro").glob("*.mid")):
        perf = read_performance(path)
        for start in np.arange(60.0, min(float(perf.offset.max()), 600.0) - seconds, seconds):
            if (part := window(perf, float(start), seconds)) is not None:
                found.append(part)
    return found


def draw_windows(source, count: int, seconds: float, seed: int) -> list[Performance]:
    """The first `seconds` of `count` draws (pieces or beginnings) with at least 20 notes there."""
    rng = np.random.default_rng(seed)
    found = []
    while len(found) < count:
        perf = notecodec.decode(source.draw(rng))
        if len(perf) and (part := window(perf, float(perf.onset[0]), seconds)) is not None:
            found.append(part)
    return found


def recipe_source(register: float | None):
    """The default DSMR recipe's training source (as its run reads it: trainer.loop.training_source) over its
    training split, its bass lowered on `register` of the draws (None: as the recipe says)."""
    from trainer.config import TrainConfig
    from trainer.corpus import Corpus
    from trainer.loop import training_source
    from trainer.recipes.default_models import check_data
    from trainer.recipes.music21_corpus import default_out_dir
    from trainer.recipes.recipe import CONFIG_FILE, data_plan, load_recipe

    folder = default_out_dir()
    check_data(folder, True)
    recipe = load_recipe(CONFIG_FILE, "dsmr")
    corpus = Corpus.open(folder, recipe.model.get("codec", notecodec.NAME))
    plan = data_plan(corpus, recipe)
    settings = {**recipe.train, **({} if register is None else {"register": register})}
    config = TrainConfig(folder=str(folder), arch="dsmr", weights=plan["weights"], **settings)
    return training_source(config, corpus, plan["train"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--register", type=float, action="append", default=[],
                        help="also the draws with the bass an octave down on this share of them (repeatable)")
    parser.add_argument("--draws", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=10.0, help="window length")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    columns = {"MAESTRO": maestro_windows(args.seconds),
               "recipe draws": draw_windows(recipe_source(None), args.draws, args.seconds, args.seed)}
    for share in args.register:
        columns[f"register {share:g}"] = draw_windows(recipe_source(share), args.draws, args.seconds, args.seed)
    means = {name: {row: float(np.nanmean([texture(w)[row] for w in windows])) for row in ROWS}
             for name, windows in columns.items()}
    print(f"texture over {args.seconds:g} s windows ({', '.join(f'{n}: {len(w)}' for n, w in columns.items())})")
    print(f"{'':<16}" + "".join(f"{name:>16}" for name in columns))
    for row in ROWS:
        print(f"{row:<16}" + "".join(f"{means[name][row]:>16.3f}" for name in columns))


if __name__ == "__main__":
    main()
