"""Sampling weights by collection: how often each piece is drawn, from the folder it sits in.

A corpus folder holds collections as sub-folders (`<folder>/bach/...`, `<folder>/essenFolksong/...`); a piece's
collection is the first folder of its path under the corpus folder ("" for a file at the top). The weights map
collection names to a multiplier: how many times, on average, each of its pieces is drawn per epoch (2.5: twice,
and a third time every other epoch; 0.2: in one epoch of five; 0: never). The key "*" sets the multiplier of the
collections not named (default 1). Pieces are still read whole, so a collection's share of the training tokens
is its multiplier times its tokens, over the same sum for every collection: `token_shares` says what it is.

Weights come as a dict or as the path of a JSON file holding one (a TrainConfig field, `recital train --weights`).

Starts (`TrainConfig.starts`, the same format, default 0) add draws of a short passage read from BOS (trainer.data):
a model that writes a piece from nothing begins it as the pieces it saw begin, and whole-piece draws give every
piece one beginning however long it is, so that without them a corpus of many short folk tunes and a few long
piano works teaches folk-tune beginnings. `start_shares` says which collections the beginnings come from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.errors import ModelError
from trainer.corpus import Corpus

DEFAULT_KEY = "*"
LENGTH_BUCKETS = (512, 2048, 8192)  # token-count edges of the length classes `length_shares` reports


def load_weights(spec: dict | str | Path, what: str = "weights") -> dict[str, float]:
    """The weights (or starts: `what`) of a dict or a JSON file, checked: names to non-negative finite numbers."""
    if isinstance(spec, str | Path):
        path = Path(spec).expanduser()
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelError(f"{path}: no such {what} file") from None
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise ModelError(f"{path}: cannot read the {what} ({error})") from None
        where = str(path)
    else:
        where = what
    if not isinstance(spec, dict) or not spec:
        raise ModelError(f"{where}: {what} must be a non-empty mapping of collection name to number")
    weights = {}
    for name, value in spec.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ModelError(f"{where}: the weight of {name!r} must be a number >= 0, got {value!r}")
        weights[str(name)] = float(value)
    return weights


def collection_of(path: str | Path, folder: Path) -> str:
    """The collection of a piece: the first folder of its path under the corpus folder ("" at the top)."""
    try:
        parts = Path(path).relative_to(folder).parts
    except ValueError:
        return ""
    return parts[0] if len(parts) > 1 else ""


def collections(corpus: Corpus, indices: list[int]) -> list[str]:
    """The collection of each of the pieces `indices`."""
    return [collection_of(corpus.index[i].path, corpus.folder) for i in indices]


def piece_weights(corpus: Corpus, indices: list[int], weights: dict[str, float]) -> np.ndarray:
    """float64 (len(indices),): each piece's multiplier. ModelError when no piece would ever be drawn."""
    default = weights.get(DEFAULT_KEY, 1.0)
    multipliers = np.array([weights.get(name, default) for name in collections(corpus, indices)], dtype=np.float64)
    if not (multipliers > 0).any():
        raise ModelError(f"the weights give every training piece of {corpus.folder} weight 0: nothing to train on")
    return multipliers


def start_draws(corpus: Corpus, indices: list[int], spec: dict | str | Path | None) -> np.ndarray | None:
    """float64 (len(indices),): each piece's extra start draws per epoch (collections not named: "*", else 0), from
    a dict or a JSON file as `load_weights` reads it; None for no starts."""
    if spec is None:
        return None
    starts = load_weights(spec, "starts")
    default = starts.get(DEFAULT_KEY, 0.0)
    return np.array([starts.get(name, default) for name in collections(corpus, indices)], dtype=np.float64)


def start_shares(corpus: Corpus, indices: list[int], multipliers: np.ndarray | None,
                 starts: np.ndarray | None) -> dict[str, float]:
    """Per collection, its expected share of the draws read from BOS (whole pieces and starts), largest first."""
    names = collections(corpus, indices)
    begun = np.ones(len(indices)) if multipliers is None else np.asarray(multipliers, dtype=np.float64)
    if starts is not None:
        begun = begun + starts
    total = float(begun.sum()) or 1.0
    shares = {name: float(begun[[n == name for n in names]].sum() / total) for name in sorted(set(names))}
    return dict(sorted(shares.items(), key=lambda item: -item[1]))


def token_shares(corpus: Corpus, indices: list[int], multipliers: np.ndarray | None = None) -> dict[str, dict]:
    """Per collection: pieces, tokens, multiplier and the expected share of training tokens, largest share first."""
    names = collections(corpus, indices)
    tokens = np.array([corpus.index[i].tokens for i in indices], dtype=np.float64)
    weight = np.ones(len(indices)) if multipliers is None else np.asarray(multipliers, dtype=np.float64)
    drawn = tokens * weight
    total = float(drawn.sum()) or 1.0
    rows: dict[str, dict] = {}
    for name in sorted(set(names)):
        mask = np.array([n == name for n in names])
        rows[name] = {"pieces": int(mask.sum()), "tokens": int(tokens[mask].sum()),
                      "weight": float(weight[mask][0]), "share": float(drawn[mask].sum() / total)}
    return dict(sorted(rows.items(), key=lambda item: -item[1]["share"]))


def length_shares(corpus: Corpus, indices: list[int], multipliers: np.ndarray | None = None) -> dict[str, float]:
    """Expected share of training tokens by piece length (in tokens): are the long pieces represented?"""
    tokens = np.array([corpus.index[i].tokens for i in indices], dtype=np.float64)
    drawn = tokens * (1.0 if multipliers is None else np.asarray(multipliers, dtype=np.float64))
    bucket = np.searchsorted(LENGTH_BUCKETS, tokens, side="right")
    edges = (0, *LENGTH_BUCKETS)
    labels = [f"{edges[b]:,}-{edges[b + 1]:,}" for b in range(len(LENGTH_BUCKETS))] + [f">={LENGTH_BUCKETS[-1]:,}"]
    total = float(drawn.sum()) or 1.0
    return {label: float(drawn[bucket == b].sum() / total) for b, label in enumerate(labels)}


def describe(shares: dict[str, dict], lengths: dict[str, float] | None = None,
             begun: dict[str, float] | None = None) -> str:
    """One line for the training log: 'bach 31.2% (x2), palestrina 20.1% (x1), ...; tokens by piece length ...;
    beginnings ...'."""
    text = ", ".join(f"{name or '(top)'} {row['share']:.1%} (x{row['weight']:g})" for name, row in shares.items())
    if lengths:
        text += "; by piece length: " + ", ".join(f"{label} tokens {share:.0%}" for label, share in lengths.items())
    if begun:
        text += "; beginnings read from BOS: " + ", ".join(f"{name or '(top)'} {share:.1%}"
                                                          for name, share in begun.items() if share >= 0.001)
    return "token share by collection: " + text
