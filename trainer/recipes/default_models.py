"""Train, evaluate and export a shipped default model: one command, resumable across sessions.

    python -m trainer.recipes.music21_corpus                          # first: the MIDI cache of music21's corpus
    python -m trainer.recipes.default_models --arch dsmr --resume     # train (or go on), then export
    python -m trainer.recipes.default_models --arch perceivers --plan # data, weights and token shares only

Every setting lives in `default_models.toml` (beside this file); the command picks the model and may change the
length of the run (`--minutes`, `--steps`) or, for trials, its size and where things go (`--size`, `--data`,
`--run`, `--dest`). The run trains from scratch with `trainer.loop.fine_tune` (or, with `--init DIR`, goes on from
the weights of an earlier run's model, with a fresh optimizer and schedule) in a run folder outside the
repository (checkpoints every few minutes of wall time; `--resume` continues it, or starts it when there is none
yet, so the same command can be repeated in the background session after session). Only when the run ends (its
minutes or steps are used up, or it stops improving) is the best model scored on held-out corpus pieces and on
the MAESTRO performances (never trained on), stored in fp16 and written to `assets/models/<name>/` with a card
that says how to make it again. Ctrl-C or SIGTERM stops after the current step and keeps a checkpoint.

The codec (core.codecs) is the model's: the recipe's, or `--codec notes` (or `--set model.codec="notes"`); a run
keeps the codec it started with. An input only the event codec can feed (the sounding notes) is left out of a
"notes" model. `--init` may name a model of the other codec: the new model is warm-started from it by meaning
(trainer.transfer), and the card says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shlex
import shutil
import signal
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np

from core.codecs import CODECS
from core.errors import MidiError, ModelError, RecitalError
from core.modelcard import scrub_paths, shown_name
from core.models import registry
from trainer.recipes.recipe import (
    CONFIG_FILE,
    REPO,
    Recipe,
    data_plan,
    default_run_dir,
    load_recipe,
    parse_overrides,
    show_plan,
)

MAX_MODEL_BYTES = 25 * 1024 * 1024
RECIPE_STATE = "recipe.json"  # in the run folder: the data and weights the run started with
SCORES = "scores.json"  # in the run folder: the held-out scores of the exported model, with their meaning
TRAIN_DIR = "train"  # in the run folder: the training loop's output (checkpoints, events, best model)
SAMPLE_PIECES = 20  # generated for the card's sample check (python -m trainer.recipes.samples)


def check_data(folder: Path, is_default: bool) -> None:
    """The converted corpus must be there (and complete, for the default cache)."""
    hint = "convert music21's corpus first: python -m trainer.recipes.music21_corpus"
    if not folder.is_dir():
        raise MidiError(folder, f"no MIDI cache here; {hint}")
    if is_default and not (folder / "manifest.json").is_file():
        raise MidiError(folder, f"the conversion has not finished (no manifest.json); {hint}")
    if not any(folder.rglob("*.mid")):
        raise MidiError(folder, f"no MIDI files here; {hint}")


def init_origin(path: Path, recipe: Recipe) -> dict:
    """What a run started with `--init` begins from: the model directory, the repository revision it was read at
    and the training lines of its card (quoted in the new card, so that the whole history stays told). The model
    must be the one the recipe would train: same architecture, same config (the memory it was trained with aside),
    but it may read the other codec: then "transfer" names the codecs, and the run starts from a model
    transferred by meaning (`transfer_init`)."""
    import subprocess

    from core.modeldir import architecture, read_card, read_config
    from trainer.config import scratch_config
    from trainer.loop import ADDABLE_INPUTS

    path = path.expanduser().resolve()
    meta = read_config(path)
    if meta["arch"] != recipe.arch:
        raise ModelError(f"{path}: --init needs a {recipe.arch} model, this one is {meta['arch']}")
    config_class = architecture(recipe.arch)[1]  # the configs, with their defaults filled in: no model is built
    size = recipe.train.get("size", "default")
    wanted = config_class.from_dict(scratch_config(recipe.arch, size, recipe.model)).to_dict()
    found = config_class.from_dict(meta["config"]).to_dict()
    transfer = None
    ignored = {"trained_horizons"}
    if found.get("codec") != wanted.get("codec"):  # a warm start by meaning: the codec's own fields follow it
        transfer = {"from": found.get("codec"), "to": wanted.get("codec"),
                    "changes": {k: wanted[k] for k in ADDABLE_INPUTS if k in wanted}}
        ignored |= {"codec", "vocab_size", *ADDABLE_INPUTS}
    # An input the model lacks may be added (its weights start at zero: the run begins where the model was).
    added = {} if transfer else {k: True for k in ADDABLE_INPUTS if wanted.get(k) is True and found.get(k) is False}
    differ = sorted(k for k in wanted if k not in ignored and k not in added and wanted[k] != found.get(k))
    if differ:
        raise ModelError(f"{path}: --init needs the model the recipe trains; its "
                         + ", ".join(f"{k} is {found.get(k)!r}, not {wanted[k]!r}" for k in differ))
    card = read_card(path)
    training = card.partition("## Training")[2].split("\n## ")[0]
    try:
        revision = subprocess.run(["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        revision = None
    return {"path": str(path), "revision": revision, "added": added, "transfer": transfer,
            "training": [line for line in training.splitlines() if line.lstrip().startswith("- ")]}


INIT_DIR = "init"  # in the run folder: the --init model transferred to the run's codec (the run's base)


def transfer_init(init: dict, run_dir: Path, log) -> Path:
    """The --init model transferred by meaning to the run's codec, written into the run folder as the run's base;
    `init["transfer"]` gets the card's description of what was copied and how."""
    from core.modeldir import load_model, save_model
    from trainer.transfer import transferred

    source = load_model(Path(init["path"]))
    model, how = transferred(source, init["transfer"]["to"], init["transfer"]["changes"])
    init["transfer"]["how"] = how.describe()
    log(f"warm start: {how.describe()}")
    return save_model(model, run_dir / INIT_DIR, f"# {Path(init['path']).name}, {how.describe()}\n")


def choose_codec(args: argparse.Namespace, model: dict, saved: dict | None, log) -> dict:
    """The model settings with the run's codec: --codec, else --set model.codec or the recipe's, else (resuming)
    the codec the run started with. An input the codec cannot feed is left out, said once."""
    from core.codecs import DEFAULT, codec_named
    from trainer.loop import ADDABLE_INPUTS

    model = dict(model)
    if args.codec:
        model["codec"] = args.codec
    started = (saved or {}).get("model", {}).get("codec", DEFAULT) if saved else None
    if started is not None and model.get("codec", started) != started:
        raise ModelError(f"this run trains a {started!r} model: it cannot go on with the {model['codec']!r} codec "
                         "(use another --run for a new one)")
    codec = codec_named(model.get("codec", started or DEFAULT)).NAME
    model["codec"] = codec
    if codec != DEFAULT:
        for name in ADDABLE_INPUTS:
            if model.pop(name, False):
                log(f"{name} follows the event codec's NoteOn/NoteOff ids: a {codec!r} model is trained without it")
    return model


def fingerprint(corpus) -> str:
    """Which pieces a corpus holds (their content hashes, in order): a resumed run must see the same data."""
    return hashlib.sha256("".join(p.hash for p in corpus.index).encode()).hexdigest()[:16]


@contextmanager
def run_lock(run: Path):
    """One process trains a run folder at a time (another session's background run holds the lock)."""
    run.mkdir(parents=True, exist_ok=True)
    handle = open(run / ".lock", "w")
    try:
        try:
            import fcntl

            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # no fcntl (Windows): no lock
            pass
        except OSError:
            raise ModelError(f"{run}: another process is training this run (wait for it, or stop it)") from None
        yield
    finally:
        handle.close()


class StopFlag:
    """SIGINT or SIGTERM asks the loop to stop after its step (it checkpoints); a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step; continue with --resume", file=sys.stderr)

    def __enter__(self):
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# ---- evaluation and the card ------------------------------------------------------------------------------------

def evaluate(model, corpus, val: list[int], recipe: Recipe, log) -> dict:
    """Held-out scores (all, polyphonic, monophonic) on corpus pieces and on MAESTRO, under the model's default
    budget, as `recital eval` measures them: perplexity for a left-to-right model; for a denoiser, which reads no
    left-to-right order, its diffusion ELBO in bits per token and per second of music (an upper bound on the NLL)."""
    from core.budget import parse_budget
    from core.metrics import ElboReport, elbo_report, perplexity_report
    from core.midi import read_performance
    from core.models.interface import DENOISE
    from trainer.weights import collections

    budget = parse_budget(model.config.default_budget)
    denoises = getattr(model, "family", None) == DENOISE

    def score(pieces: list):
        return elbo_report(model, pieces, budget) if denoises else perplexity_report(model, pieces, budget)

    rng = np.random.default_rng([recipe.train.get("seed", 0), 11])
    chosen = sorted(rng.permutation(val)[:recipe.eval_pieces].tolist())
    names = collections(corpus, chosen)
    reports: dict = {}
    groups = {"polyphonic": [i for i, n in zip(chosen, names, strict=True) if n not in recipe.monophonic],
              "monophonic": [i for i, n in zip(chosen, names, strict=True) if n in recipe.monophonic]}
    for label, pieces in groups.items():
        if pieces:
            log(f"scoring {len(pieces)} held-out {label} pieces")
            reports[f"corpus, {label}"] = score([corpus.piece(i) for i in pieces])
    results = {label: report.to_json() for label, report in reports.items()}
    parts = list(results.values())
    if denoises and reports:  # all held-out pieces: the bound of the parts' pieces together
        results = {"corpus": ElboReport.total(list(reports.values())).to_json(), **results}
    elif parts:  # all held-out pieces: the token-weighted mean of the parts' log-perplexities
        tokens = sum(p["tokens"] for p in parts)
        nll = sum(math.log(p["perplexity"]) * p["tokens"] for p in parts)
        seconds = sum(p.get("seconds") or 0.0 for p in parts)
        results = {"corpus": {"perplexity": math.exp(nll / tokens), "tokens": tokens,
                              "pieces": sum(p["pieces"] for p in parts), "seconds": seconds,
                              "bits_per_second": nll / math.log(2) / seconds if seconds > 0 else None},
                   **results}
    maestro = sorted(recipe.maestro.glob("*.mid")) if recipe.maestro.is_dir() else []
    if maestro:
        log(f"scoring {len(maestro)} MAESTRO performances")
        results["maestro"] = score([read_performance(p) for p in maestro]).to_json()
    else:
        log(f"no MAESTRO files in {recipe.maestro}: not scored")
    for row in results.values():
        row.pop("by_position", None)
    return results


def score_line(label: str, row: dict) -> str:
    """One set's held-out number, as the log says it."""
    if "elbo_bits_per_token" in row:
        per_second = row["elbo_bits_per_second"]
        return (f"held-out ELBO, {label}: {row['elbo_bits_per_token']:.3f} bits/token"
                + (f", {per_second:.1f} bits/s" if per_second is not None else "")
                + f" ({row['pieces']} pieces, {row['tokens']:,} tokens)")
    per_second = row.get("bits_per_second")
    return (f"held-out perplexity, {label}: {row['perplexity']:.3f}"
            + (f", {per_second:.1f} bits/s" if per_second is not None else "")
            + f" ({row['pieces']} pieces, {row['tokens']:,} tokens)")


def perplexity_table(scores: dict, model_config: dict) -> list[str]:
    """The card's section of a left-to-right model's held-out scores: its perplexity (per id of its codec, so
    comparable only between models of one codec) and bits per second of music (comparable across codecs)."""
    def per_second(row: dict) -> str:
        value = row.get("bits_per_second")
        return "-" if value is None else f"{value:.1f}"

    return ["## Held-out perplexity", "",
            "Whole pieces read left to right under the model's default budget "
            f"({model_config.get('default_budget')}), from the fp16 weights as shipped, encoded with the model's "
            f"codec ({model_config.get('codec', 'performance')!r}). Perplexity is per id of that codec: it compares "
            "models of one codec only; bits per second of music (-log2 p over the pieces' seconds) compare across "
            "codecs.", "",
            "| set | pieces | tokens | perplexity | bits/s |", "| --- | ---: | ---: | ---: | ---: |"] + [
        f"| {label} | {row['pieces']:,} | {row['tokens']:,} | {row['perplexity']:.3f} | {per_second(row)} |"
        for label, row in scores.items()]


def elbo_table(scores: dict, model_config: dict) -> list[str]:
    """The card's section of a denoiser's held-out scores: its ELBO, and what the number means."""
    first = next(iter(scores.values()), {})
    lines = ["## Held-out ELBO", "",
             "A denoiser reads no left-to-right order, so it has no perplexity to measure; its number is the "
             "diffusion ELBO (`recital eval --model`): an upper bound on the negative log-likelihood, the bits the "
             "model would need at most, in bits per token and per second of music (the codec's seconds), so it "
             "sits beside the left-to-right models' -log2 p per second. Whole pieces, cut into the "
             f"{first.get('window', '?')}-token windows the default budget ({model_config.get('default_budget')}) "
             f"buys, each window scored on its own under {first.get('draws', '?')} seeded masks at stratified "
             "masking rates, from the fp16 weights as shipped.", "",
             "| set | pieces | tokens | seconds | bits/token | bits/s |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, row in scores.items():
        per_second = row["elbo_bits_per_second"]
        lines.append(f"| {label} | {row['pieces']:,} | {row['tokens']:,} | {row['seconds']:,.0f} | "
                     f"{row['elbo_bits_per_token']:.3f} | {'-' if per_second is None else f'{per_second:.1f}'} |")
    return lines


def card_text(*, recipe: Recipe, command: str, config_text: str, totals: dict, shares: dict, lengths: dict,
              run: dict, scores: dict, model_config: dict, parameters: int, weights_bytes: int,
              init: dict | None = None) -> str:
    """card.md of a default model: what it is, how to make it again, what it was trained on, how good it is."""
    elbo = any("elbo_bits_per_token" in row for row in scores.values())  # a denoiser's scores
    how = "trained further" if init else "trained from scratch"
    title = f"# {recipe.name}: {recipe.arch} {how} on music21's corpus ({totals['pieces']:,} pieces)"
    if elbo:
        corpus, maestro = scores.get("corpus", {}), scores.get("maestro", {}).get("elbo_bits_per_second")
        title += ((f", held-out ELBO {corpus['elbo_bits_per_token']:.2f} bits/token" if corpus else "")
                  + (f", MAESTRO {maestro:.1f} bits/s" if maestro is not None else ""))
    else:
        ppl = scores.get("corpus", {}).get("perplexity")
        maestro = scores.get("maestro", {}).get("perplexity")
        maestro_bits = scores.get("maestro", {}).get("bits_per_second")
        title += ((f", held-out perplexity {ppl:.2f}" if ppl is not None else "")
                  + (f", MAESTRO {maestro:.1f}" if maestro is not None else "")
                  + (f" ({maestro_bits:.1f} bits/s)" if maestro_bits is not None else ""))
    if model_config.get("codec", "performance") != "performance":
        title += f"; {model_config['codec']!r} codec"
    lines = [title, "", f"Recipe: `{command}` (settings: `trainer/recipes/default_models.toml`, [{recipe.arch}], "
             "quoted below).", "",
             "## Data", "",
             f"- {shown_name(totals['folder'])}: {totals['files']:,} files, {totals['pieces']:,} pieces "
             f"({totals['train_pieces']:,} train, {totals['val_pieces']:,} held out), {totals['tokens']:,} tokens, "
             f"{totals['hours']:.1f} hours; {totals['skipped']} files unreadable, {totals['duplicates']} duplicates",
             f"- polyphonic share of training tokens: {totals['polyphonic_share']:.1%} "
             f"(at least {recipe.min_polyphonic_share:.0%} asked)",
             "- augmentation: transposition +-{transpose} semitones, tempo x(1 +- {stretch}){figured}{register}"
             "{expressive}".format(
                 transpose=recipe.train.get("transpose", 5), stretch=recipe.train.get("stretch", 0.05),
                 figured=(f"; keyboard figuration of {recipe.train['figuration']:.0%} of draws (trainer.figuration: "
                          "held chords as Alberti basses, arpeggios, bass then chord)"
                          if recipe.train.get("figuration") else ""),
                 register=(f"; the bass line an octave down in {recipe.train['register']:.0%} of draws "
                           "(trainer.register)" if recipe.train.get("register") else ""),
                 expressive="; expressive performance (trainer.expressive defaults: rubato, onset jitter, legato, "
                            "pedal, phrase dynamics{})".format(
                                ", each piece at {}-{} of its written length".format(*recipe.train["expressive_tempo"])
                                if recipe.train.get("expressive_tempo") else "") if recipe.train.get("expressive")
                 else ""),
             "", "| collection | pieces | tokens | weight | share of training tokens |",
             "| --- | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name or '(top)'} | {row['pieces']:,} | {row['tokens']:,} | {row['weight']:.3g} | "
              f"{row['share']:.1%} |" for name, row in shares.items()]
    lines += ["", "Share of training tokens by piece length: "
              + ", ".join(f"{label} tokens {share:.0%}" for label, share in lengths.items()), "",
              "## Training", ""]
    picked = (f"shipped: the last step's model (step {run['last_step']:,}; the best on the held-out pieces was at "
              f"step {run['best_step']:,})" if run.get("picked") == "last"
              else f"best held-out model at step {run['best_step']:,}")
    this_run = [f"- {run['steps']:,} steps ({run['tokens']:,} training tokens), {picked}; ended: {run['stopped']}",
                f"- wall time: {_duration(run['wall_seconds'])} on {run['device']}"]
    if init:
        at = f" at revision {init['revision']}" if init.get("revision") else ""
        path = Path(init["path"])
        shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name  # no machine path in a card
        lines += [f"- started from the weights of `{shown}`{at}, with a fresh optimizer, warm-up and learning-"
                  "rate schedule; that model's card said of its training:"]
        if (init.get("transfer") or {}).get("how"):
            lines[-1] = (f"- warm-started from the weights of `{shown}`{at} ({init['transfer']['how']}), with a "
                         "fresh optimizer, warm-up and learning-rate schedule; that model's card said of its training:")
        lines += [f"  {line}" for line in init["training"]] or ["  - (no card)"]
        lines += ["- then, in this run:"] + [f"  {line}" for line in this_run]
    else:
        lines += this_run
    lines += [f"- {parameters / 1e6:.2f} M parameters, stored in fp16 ({weights_bytes / 2**20:.1f} MB)", ""]
    lines += (elbo_table if elbo else perplexity_table)(scores, model_config)
    lines += ["", "MAESTRO: expressive piano performances, never trained on (a different licence; the "
              "fine-tuning demo).", "", f"Date: {datetime.now().strftime('%Y-%m-%d')}", "",
              "## Model config", "", "```json", json.dumps(model_config, indent=1), "```", "",
              "## Recipe settings", "", "```toml", config_text.strip(), "```"]
    return scrub_paths("\n".join(lines) + "\n")  # the command and settings may name folders by absolute path


# ---- the command -------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.recipes.default_models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=registry.architectures(), required=True)
    parser.add_argument("--minutes", type=float, help="training minutes over all sessions (default: the recipe's)")
    parser.add_argument("--steps", type=int, help="stop after this many steps (as well)")
    parser.add_argument("--resume", action="store_true", help="continue the run (or start it if there is none yet)")
    parser.add_argument("--plan", action="store_true", help="show the data, weights and token shares; train nothing")
    parser.add_argument("--size", choices=("tiny", "small", "default"), help="model size (trials; default: recipe)")
    parser.add_argument("--no-expressive", action="store_true", help="train without expressive performance")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one training setting of the recipe (a TOML value), e.g. --set lr=1e-3")
    parser.add_argument("--init", type=Path, metavar="MODEL_DIR",
                        help="start a new run from this model's weights (same architecture and config) instead "
                             "of random ones, e.g. to train the shipped default further")
    parser.add_argument("--codec", choices=sorted(CODECS),
                        help="the model's codec (default: the recipe's; resuming: the run's); --init may name a "
                             "model of the other codec: it is transferred by meaning")
    parser.add_argument("--data", type=Path, help="MIDI folder (default: the music21_corpus cache)")
    parser.add_argument("--run", type=Path, help="run folder: checkpoints and events (default: user data dir)")
    parser.add_argument("--dest", type=Path, help="model directory written at the end (default: assets/models/NAME)")
    parser.add_argument("--config", type=Path, default=CONFIG_FILE, help="recipe file (default: %(default)s)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--workers", type=int, help="processes that scan the MIDI folder")
    parser.add_argument("--pick", choices=("best", "last"), default="best",
                        help="the model exported at the end: the best on the held-out corpus pieces (default) or "
                             "the last step's (when the held-out pieces are not the music the run is moving to)")
    args = parser.parse_args(argv)
    command = "python -m trainer.recipes.default_models " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        return run(args, command)
    except RecitalError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, command: str) -> int:
    from core.midi import atomic_write_bytes
    from core.modeldir import WEIGHTS, load_model, save_model
    from trainer import checkpoint as ckpt
    from trainer.cli import ProgressView
    from trainer.config import TrainConfig
    from trainer.corpus import Corpus
    from trainer.loop import fine_tune
    from trainer.recipes.music21_corpus import default_out_dir
    from trainer.recipes.samples import write_samples

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    recipe = load_recipe(args.config, args.arch)
    train_settings = dict(recipe.train)
    for name, value in (("minutes", args.minutes), ("steps", args.steps), ("size", args.size)):
        if value is not None:
            train_settings[name] = value
    model_settings = dict(recipe.model)
    train_settings.update(parse_overrides(args.set, model_settings))
    if args.no_expressive:
        train_settings["expressive"] = False
    data = (args.data or default_out_dir()).expanduser().resolve()
    check_data(data, args.data is None)
    run_dir = (args.run or default_run_dir(recipe.name)).expanduser().resolve()
    dest = (args.dest or REPO / "assets" / "models" / recipe.name).expanduser().resolve()
    state_file = run_dir / RECIPE_STATE
    resumable = args.resume and state_file.is_file() and ckpt.latest_checkpoint(run_dir / TRAIN_DIR) is not None
    saved_state = _read_state(state_file) if resumable else None
    model_settings = choose_codec(args, model_settings, saved_state, log)
    recipe = Recipe(**{**recipe.__dict__, "train": train_settings, "model": model_settings})
    codec = model_settings["codec"]

    log(f"reading {data} ({codec!r} codec)")
    corpus = Corpus.build(data, workers=args.workers, codec=codec)
    if len(corpus) < 4:
        raise MidiError(data, f"only {len(corpus)} readable pieces: too few to train a default model")
    plan = data_plan(corpus, recipe)
    show_plan(corpus, plan, log)
    if args.plan:
        return 0

    with run_lock(run_dir):
        state_file, train_dir = run_dir / RECIPE_STATE, run_dir / TRAIN_DIR
        have_checkpoint = train_dir.is_dir() and ckpt.latest_checkpoint(train_dir) is not None
        started = {"arch": recipe.arch, "data": str(data), "fingerprint": fingerprint(corpus),
                   "weights": plan["weights"], "train": recipe.train, "model": recipe.model, "command": command,
                   "init": None}
        first_command = command
        if have_checkpoint and not args.resume:
            raise ModelError(f"{run_dir} holds a run already: pass --resume to continue it, or --run elsewhere")
        if have_checkpoint:
            saved = json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {}
            if saved.get("fingerprint") != started["fingerprint"] or saved.get("arch") != recipe.arch:
                raise ModelError(f"{run_dir}: this run started on other data or another model ({saved.get('data')}, "
                                 f"{saved.get('arch')}); use another --run for a new one")
            # The run keeps the settings it started with; only its length may change (--minutes, --steps).
            length = {k: v for k, v in (("minutes", args.minutes), ("steps", args.steps)) if v is not None}
            recipe = Recipe(**{**recipe.__dict__, "train": {**saved.get("train", recipe.train), **length},
                               "weights": saved.get("weights", recipe.weights)})
            plan = data_plan(corpus, recipe)
            first_command = saved.get("command", command)
            init = saved.get("init")
            if args.init and (init is None or Path(init["path"]) != args.init.expanduser().resolve()):
                raise ModelError(f"{run_dir}: --init starts a new run, and this run began otherwise; "
                                 "resume it without --init, or use another --run")
            log(f"resuming the run in {run_dir}")
        else:
            others = [p.name for p in run_dir.iterdir()
                      if p.name not in (".lock", RECIPE_STATE, TRAIN_DIR, INIT_DIR)]
            if others or (train_dir.exists() and not state_file.is_file()):
                raise ModelError(f"{run_dir} is not empty and is not a recipe run: choose another --run")
            shutil.rmtree(train_dir, ignore_errors=True)  # a run stopped before its first checkpoint: start again
            shutil.rmtree(run_dir / INIT_DIR, ignore_errors=True)
            init = started["init"] = init_origin(args.init, recipe) if args.init else None
            if init and init["transfer"]:
                transfer_init(init, run_dir, log)
            atomic_write_bytes(state_file, json.dumps(started, indent=1).encode(), what="recipe state")
            log(f"starting a new run in {run_dir}")
        base = (str(run_dir / INIT_DIR) if init.get("transfer") else init["path"]) if init else None
        config = TrainConfig(folder=str(data), out=str(train_dir), base=base,
                             arch=recipe.arch, model=init.get("added", {}) if init else recipe.model,
                             weights=plan["weights"], resume=have_checkpoint, device=args.device,
                             workers=args.workers, command=first_command, **recipe.train)
        view = ProgressView(sys.stderr)
        with StopFlag() as stop:
            result = fine_tune(config, on_progress=view, should_stop=stop)
        view.close()
        if result.stopped == "stopped":
            log(f"stopped at step {result.steps}: continue with the same command and --resume")
            return 130

        log(f"training ended ({result.stopped}) at step {result.steps}; scoring and exporting the {args.pick} model")
        latest = ckpt.latest_checkpoint(train_dir)
        checkpoint_state = json.loads((latest / ckpt.STATE).read_text(encoding="utf-8"))
        device = args.device or ("cuda" if _cuda() else "cpu")
        model = load_model(train_dir, device)  # the best on the held-out pieces
        if args.pick == "last":  # the same model at the last checkpoint's weights
            from safetensors.torch import load_model as load_weights

            load_weights(model, str(latest / WEIGHTS), strict=True, device=device)
            log(f"exporting the last step's model (step {checkpoint_state['step']:,}), not the best on the held-out "
                f"pieces (step {checkpoint_state.get('best_step') or 0:,})")
        model = model.half().float()  # scored as shipped: fp16 weights, fp32 arithmetic
        scores = evaluate(model, corpus, plan["val"], recipe, log)
        totals = {"folder": str(data), "files": corpus.summary.files, "pieces": len(corpus),
                  "train_pieces": len(plan["train"]), "val_pieces": len(plan["val"]), "tokens": corpus.total_tokens,
                  "hours": corpus.hours, "skipped": len(corpus.summary.skipped),
                  "duplicates": len(corpus.summary.duplicates), "polyphonic_share": plan["polyphonic"]}
        run_info = {"steps": result.steps, "tokens": result.tokens, "wall_seconds": result.wall_seconds,
                    "stopped": result.stopped, "best_step": checkpoint_state.get("best_step") or 0, "device": device,
                    "picked": args.pick, "last_step": checkpoint_state.get("step")}
        parameters = sum(p.numel() for p in model.parameters())
        commands = first_command if first_command == command else f"{first_command}`, then `{command}"
        text = card_text(recipe=recipe, command=commands, config_text=args.config.read_text(encoding="utf-8"),
                         totals=totals, shares=plan["shares"], lengths=plan["lengths"], run=run_info, scores=scores,
                         model_config=model.config.to_dict(), parameters=parameters, weights_bytes=parameters * 2,
                         init=init)
        save_model(model.half().cpu(), dest, text)
        size = (dest / WEIGHTS).stat().st_size
        load_model(dest)  # the shipped directory loads
        atomic_write_bytes(run_dir / SCORES, json.dumps({"model": str(dest), "scores": scores}, indent=1).encode(),
                           what="held-out scores")
        for label, row in scores.items():
            log(score_line(label, row))
        log(f"scores: {run_dir / SCORES}")
        log(f"model: {dest} ({size / 2**20:.1f} MB)")
        count = min(SAMPLE_PIECES, len(plan["val"]) // 2)  # generated pieces, and as many held-out ones
        if count >= 2:
            write_samples(dest, corpus, plan["val"], run_dir / "samples",
                          f"python -m trainer.recipes.samples --arch {recipe.arch} --count {count}", count, log=log)
        else:
            log(f"only {len(plan['val'])} held-out pieces: no sample check in the card")
        if size > MAX_MODEL_BYTES:
            log(f"warning: the weights are over {MAX_MODEL_BYTES // 2**20} MB: too large to ship in the repository")
        return 0


def _read_state(path: Path) -> dict:
    """The run folder's recipe state; ModelError when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"{path}: cannot read the run's recipe state ({error})") from None


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 7200 else f"{seconds / 60:.1f} min"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
