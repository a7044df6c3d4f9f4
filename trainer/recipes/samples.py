"""The listening check of a default model: generated pieces, their numbers, and MGEval against held-out music.

    python -m trainer.recipes.samples --arch dsmr            # after default_models has exported the model

Generates `--count` new pieces of `--seconds` with the shipped model as `recital generate` would (default
sampling and budget, int8 step on a CPU), writes them as MIDI (and the first few as WAV when fluidsynth is there)
into the run folder for listening and looking at, and compares them with as many held-out corpus pieces (the
validation split of the recipe, never trained on), cut to the same length: mgeval's overlap areas per feature.
A second draw of held-out pieces, compared the same way, is the ceiling: what real music of the corpus scores.
Per piece it reports what a listener notices first: how long it plays, how dense, how wide, the longest
silence, and how much it repeats itself. The results replace the card's "Generated samples" section.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from core.errors import RecitalError
from core.models import registry

SECTION = "## Generated samples"
WAV_PIECES = 4  # rendered to audio for listening


def crop(perf, seconds: float):
    """The first `seconds` of a performance: notes that start before it, cut off there."""
    from core.midi import Performance

    keep = perf.onset < seconds
    return Performance(perf.onset[keep], np.minimum(perf.offset[keep], seconds), perf.pitch[keep],
                       perf.velocity[keep])


def longest_silence(perf) -> float:
    """Seconds of the longest stretch inside the piece where no note sounds."""
    if len(perf) == 0:
        return 0.0
    order = np.argsort(perf.onset)
    sounding_until = np.maximum.accumulate(perf.offset[order])
    gaps = perf.onset[order][1:] - sounding_until[:-1]
    return float(max(gaps.max(initial=0.0), 0.0))


def piece_row(perf) -> dict:
    from core.metrics import repeated_ngrams_per_minute

    duration = float(perf.duration)
    return {"seconds": duration, "notes": len(perf), "notes_per_second": len(perf) / duration if duration else 0.0,
            "pitch_range": int(perf.pitch.max() - perf.pitch.min()) if len(perf) else 0,
            "velocities": int(len(np.unique(perf.velocity))), "longest_silence": longest_silence(perf),
            "repeated_8grams_per_minute": repeated_ngrams_per_minute(perf)}


def generate_pieces(model, count: int, seconds: float, seed: int) -> tuple[list, float]:
    """`count` new pieces, generated side by side (one lane each) -> performances, tokens per second."""
    from core.generate import SamplingConfig
    from core.session import GenerationSession

    start = time.perf_counter()
    session = GenerationSession(model, sampling=SamplingConfig(top_p=0.95), seconds=seconds, variations=count,
                                seed=seed)  # `recital generate`'s defaults: the model's budget for each piece
    session.run()
    rate = sum(len(lane) for lane in session.lanes) / (time.perf_counter() - start)
    return session.pieces(), rate


def sample_report(model, corpus, held_out: list[int], out: Path, count: int = 20, seconds: float = 40.0,
                  seed: int = 0, log=print) -> dict:
    """Generate, write, compare; returns the numbers the card shows (see the module docstring)."""
    from core import metrics
    from core.codecs import codec_named
    from core.midi import write_performance

    if len(held_out) < 2 * count:
        raise RecitalError(f"the comparison needs {2 * count} held-out pieces, the split has {len(held_out)}")
    rng = np.random.default_rng([seed, 29])
    chosen = rng.permutation(held_out)[:2 * count].tolist()
    decode = codec_named(corpus.codec).decode  # the corpus holds the model's codec's ids
    pieces = [crop(decode(np.asarray(corpus.piece(i))), seconds) for i in chosen]
    reference, ceiling = pieces[:count], pieces[count:]

    log(f"generating {count} pieces of {seconds:g} s")
    generated, rate = generate_pieces(model, count, seconds, seed)
    folder = out / "generated"
    folder.mkdir(parents=True, exist_ok=True)
    for index, perf in enumerate(generated):
        write_performance(perf, folder / f"sample-{index:02d}.mid")
    (out / "reference").mkdir(exist_ok=True)
    for index, perf in enumerate(reference):  # to listen to side by side
        write_performance(perf, out / "reference" / f"held-out-{index:02d}.mid")
    _render_some(generated[:WAV_PIECES], folder, log)

    comparison = metrics.compare_sets(generated, reference)
    baseline = metrics.compare_sets(ceiling, reference)
    rows = [piece_row(perf) for perf in generated]
    return {"count": count, "seconds": seconds, "seed": seed, "tokens_per_second": rate,
            "generated": comparison.to_json(), "held_out": baseline.to_json(), "pieces": rows,
            "held_out_pieces": [piece_row(perf) for perf in reference], "folder": str(folder)}


def _render_some(perfs: list, folder: Path, log) -> None:
    from core.synth import render_wav

    try:
        for index, perf in enumerate(perfs):
            render_wav(perf, folder / f"sample-{index:02d}.wav")
    except RecitalError as error:  # no fluidsynth or soundfont here: the MIDI files are still written
        log(f"no WAV files: {error}")


def section_text(report: dict, command: str) -> str:
    """The card's "Generated samples" section."""
    generated, held_out = report["generated"]["features"], report["held_out"]["features"]
    lines = [SECTION, "",
             f"{report['count']} new pieces of up to {report['seconds']:g} s, default sampling (top-p 0.95) and "
             f"budget, seed {report['seed']}, generated side by side at {report['tokens_per_second']:.0f} tokens/s "
             f"(`{command}`). MGEval (overlap area of the distance distributions, higher is closer) against "
             f"{report['count']} held-out corpus pieces cut to the same length; the second column compares "
             f"{report['count']} other held-out pieces the same way: what real music of the corpus scores.", "",
             "| feature | generated OA | held-out OA |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {row['oa']:.3f} | {held_out[name]['oa']:.3f} |" for name, row in generated.items()]
    lines += [f"| **mean** | **{report['generated']['mean_oa']:.3f}** | **{report['held_out']['mean_oa']:.3f}** |",
              "", "Per piece (generated vs the held-out pieces), mean [min, max]:", "",
              "| | generated | held-out |", "| --- | --- | --- |"]
    for key, label in (("seconds", "seconds"), ("notes_per_second", "notes per second"),
                       ("pitch_range", "pitch range (semitones)"), ("velocities", "distinct velocities"),
                       ("longest_silence", "longest silence (s)"),
                       ("repeated_8grams_per_minute", "repeated pitch 8-grams per minute")):
        cells = []
        for rows in (report["pieces"], report["held_out_pieces"]):
            values = np.array([row[key] for row in rows], dtype=float)
            cells.append(f"{values.mean():.1f} [{values.min():.1f}, {values.max():.1f}]")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def replace_section(card: str, section: str) -> str:
    """The card with its "Generated samples" section replaced (or added before "## Model config")."""
    if SECTION in card:
        before, rest = card.split(SECTION, 1)
        following = rest.find("\n## ")
        return before + section + ("\n" + rest[following + 1:] if following >= 0 else "")
    marker = "## Model config"
    if marker in card:
        before, after = card.split(marker, 1)
        return before + section + "\n" + marker + after
    return card.rstrip("\n") + "\n\n" + section


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.recipes.samples", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=registry.architectures(), required=True)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", type=Path, help="model directory (default: assets/models/<the recipe's name>)")
    parser.add_argument("--out", type=Path, help="where the pieces go (default: the run folder's samples/)")
    parser.add_argument("--no-card", action="store_true", help="print only; leave the card as it is")
    args = parser.parse_args(argv)
    try:
        return run(args, "python -m trainer.recipes.samples " + " ".join(sys.argv[1:] if argv is None else argv))
    except RecitalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, command: str) -> int:
    from core.modeldir import load_model
    from trainer.corpus import Corpus
    from trainer.recipes.music21_corpus import default_out_dir
    from trainer.recipes.recipe import CONFIG_FILE, REPO, data_plan, default_run_dir, load_recipe

    recipe = load_recipe(CONFIG_FILE, args.arch)
    model_dir = (args.model or REPO / "assets" / "models" / recipe.name).resolve()
    from core.codecs import codec_of

    model = load_model(model_dir)  # a missing or broken model fails here, before the corpus is read
    corpus = Corpus.build(default_out_dir(), codec=codec_of(model).NAME)
    held_out = data_plan(corpus, recipe)["val"]
    out = (args.out or default_run_dir(recipe.name) / "samples").resolve()
    section = write_samples(model_dir, corpus, held_out, out, command, args.count, args.seconds, args.seed,
                            update_card=not args.no_card)
    print(section)
    return 0


def write_samples(model_dir: Path, corpus, held_out: list[int], out: Path, command: str, count: int = 20,
                  seconds: float = 40.0, seed: int = 0, update_card: bool = True, log=None) -> str:
    """The report of the model in `model_dir` (as shipped: int8 step on a CPU) into `out`, and its section into
    the card; returns the section."""
    from core.generate import use_fast_step
    from core.midi import atomic_write_bytes
    from core.modeldir import load_model

    def stderr(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    log = log or stderr
    model = load_model(model_dir)
    use_fast_step(model)
    report = sample_report(model, corpus, held_out, out, count, seconds, seed, log)
    section = section_text(report, command)
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=1).encode(), what="sample report")
    if update_card:
        card = model_dir / "card.md"
        atomic_write_bytes(card, replace_section(card.read_text(encoding="utf-8"), section).encode(), what="card")
        log(f"updated {card}")
    log(f"pieces to listen to and look at: {report['folder']}")
    return section


if __name__ == "__main__":
    raise SystemExit(main())
