"""A shipped default model's recipe (`default_models.toml`): read, checked, and turned into the run's data plan.

Shared by the recipe that trains the model (`default_models`) and the one that writes its sample check (`samples`),
so that neither imports the other.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from core.errors import ModelError

CONFIG_FILE = Path(__file__).with_name("default_models.toml")
REPO = Path(__file__).resolve().parents[2]
ARCH_ONLY = ("name", "eval_pieces", "model")  # keys of a model's table that are not TrainConfig fields


@dataclass(frozen=True)
class Recipe:
    """One model's recipe: the [data] table, [train] with the model's own table over it."""

    arch: str
    name: str
    train: dict  # TrainConfig fields
    model: dict  # model config fields over the size preset
    weights: dict[str, float]
    monophonic: tuple[str, ...]
    min_polyphonic_share: float
    maestro: Path
    eval_pieces: int


def load_recipe(path: Path, arch: str) -> Recipe:
    """The recipe of `arch` from the TOML file, checked; ModelError naming the file on any problem."""
    from trainer.config import TrainConfig
    from trainer.weights import load_weights

    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ModelError(f"{path}: cannot read the recipe ({error})") from None
    if arch not in table:
        raise ModelError(f"{path}: no [{arch}] table")
    data, own = table.get("data", {}), table[arch]
    train = {**table.get("train", {}), **{k: v for k, v in own.items() if k not in ARCH_ONLY}}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train) - known)
    if unknown:
        raise ModelError(f"{path}: unknown training settings {', '.join(unknown)}")
    try:
        return Recipe(arch=arch, name=str(own["name"]), train=train, model=dict(own.get("model", {})),
                      weights=load_weights(data["weights"]), monophonic=tuple(data.get("monophonic", ())),
                      min_polyphonic_share=float(data.get("min_polyphonic_share", 0.5)),
                      maestro=(REPO / data["maestro"]).resolve(),
                      eval_pieces=int(own.get("eval_pieces", data.get("eval_pieces", 300))))
    except KeyError as error:
        raise ModelError(f"{path}: the recipe needs {error.args[0]!r}") from None


def balance(weights: dict[str, float], tokens: dict[str, int], monophonic: tuple[str, ...],
            min_share: float) -> dict[str, float]:
    """The weight of every collection present, the monophonic ones scaled down (never up) if needed so that
    the polyphonic collections get at least `min_share` of the drawn tokens."""
    from trainer.weights import DEFAULT_KEY

    used = {name: weights.get(name, weights.get(DEFAULT_KEY, 1.0)) for name in sorted(tokens)}
    mono = sum(tokens[n] * w for n, w in used.items() if n in monophonic)
    poly = sum(tokens[n] * w for n, w in used.items() if n not in monophonic)
    if poly == 0:
        raise ModelError("the data holds no polyphonic collection with a positive weight")
    if mono > 0 and poly / (poly + mono) < min_share:
        factor = poly * (1.0 - min_share) / (min_share * mono)
        used = {n: w * factor if n in monophonic else w for n, w in used.items()}
    return used


def parse_overrides(items: list[str], model: dict | None = None) -> dict:
    """`KEY=VALUE` pairs with TOML values (1e-3, true, "text") as a dict; ModelError on a malformed one.

    `model.KEY=VALUE` sets a field of the model's config (e.g. model.codec="notes") in `model`, when given."""
    from trainer.config import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    settings = {}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        target = settings
        if key.startswith("model.") and model is not None:
            key, target = key.removeprefix("model."), model
        elif key not in known:
            raise ModelError(f"--set {item}: {key!r} is not a training setting")
        try:
            target[key] = tomllib.loads(f"value = {value.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            raise ModelError(f"--set {item}: {value!r} is not a TOML value (quote text: key=\"text\")") from None
    return settings


def data_plan(corpus, recipe: Recipe) -> dict:
    """The run's split (as the training loop makes it), balanced weights and expected token shares."""
    from trainer.weights import (
        collections,
        length_shares,
        piece_weights,
        start_draws,
        start_shares,
        token_shares,
    )

    train, val = corpus.split(recipe.train.get("val_fraction", 0.1), recipe.train.get("seed", 0))
    tokens: dict[str, int] = {}
    for i, name in zip(train, collections(corpus, train), strict=True):
        tokens[name] = tokens.get(name, 0) + corpus.index[i].tokens
    weights = balance(recipe.weights, tokens, recipe.monophonic, recipe.min_polyphonic_share)
    multipliers = piece_weights(corpus, train, weights)
    shares = token_shares(corpus, train, multipliers)
    begun = start_shares(corpus, train, multipliers, start_draws(corpus, train, recipe.train.get("starts")))
    return {"train": train, "val": val, "weights": weights, "shares": shares, "begun": begun,
            "lengths": length_shares(corpus, train, multipliers),
            "polyphonic": sum(row["share"] for name, row in shares.items() if name not in recipe.monophonic)}


def show_plan(corpus, plan: dict, log) -> None:
    log(f"{len(corpus):,} pieces ({len(plan['train']):,} train, {len(plan['val']):,} held out), "
        f"{corpus.total_tokens:,} tokens; polyphonic share of training tokens {plan['polyphonic']:.1%}")
    log(f"{'collection':<22}{'pieces':>8}{'tokens':>12}{'weight':>8}{'share':>8}")
    for name, row in plan["shares"].items():
        log(f"{name or '(top)':<22}{row['pieces']:>8,}{row['tokens']:>12,}{row['weight']:>8.3g}{row['share']:>8.1%}")
    log("by piece length: " + ", ".join(f"{label} tokens {share:.0%}" for label, share in plan["lengths"].items()))
    log("beginnings read from BOS: " + ", ".join(f"{name or '(top)'} {share:.1%}" for name, share
                                                 in plan["begun"].items() if share >= 0.001))


def default_run_dir(name: str) -> Path:
    from core.modeldir import user_models_dir

    return user_models_dir().parent / "runs" / name
