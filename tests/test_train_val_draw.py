"""The held-out pieces that pick a run's best model: drawn by the training weights (a collection drawn 100x as
often gives the held-out number 100x its tokens' say), uniform by piece without weights (as before), and a run
saved before the setting resumes with the pieces it was scored on."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.loop import fine_tune, held_out_draw
from trainer.weights import collections

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    """tunes/ (40 short pieces) and piano/ (10 longer ones)."""
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "midi"
    write_folder(root / "tunes", 40, notes=20, seed=0)
    write_folder(root / "piano", 10, notes=60, seed=1)
    return Corpus.build(root, workers=1)


def config(**settings) -> TrainConfig:
    return TrainConfig(folder="unused", out="unused", arch="dsmr", steps=1, val_max_pieces=8, **settings)


def test_without_weights_the_draw_is_uniform_by_piece_as_before(corpus):
    val = list(range(len(corpus)))
    before = sorted(np.random.default_rng([0, 7]).permutation(val)[:8].tolist())  # the draw every run used
    assert held_out_draw(corpus, val, config()) == before
    assert held_out_draw(corpus, val, config(weights={"tunes": 0.01}, val_draw="pieces")) == before


def test_weighted_draws_follow_the_training_weights_and_are_seeded(corpus):
    val = list(range(len(corpus)))
    names = collections(corpus, val)
    weighted = config(weights={"tunes": 0.001, "piano": 1.0})
    picked = held_out_draw(corpus, val, weighted)
    assert picked == held_out_draw(corpus, val, weighted)  # the same pieces at every validation and resume
    assert len(picked) == 8 and len(set(picked)) == 8
    counts = Counter(names[i] for i in picked)
    assert counts["piano"] == 8  # the 10 piano pieces' tokens weigh ~30x the 40 tunes'
    uniform = Counter(names[i] for i in held_out_draw(corpus, val, config()))
    assert uniform["tunes"] > uniform["piano"]  # by piece, the tunes outnumber the piano pieces
    # a collection the training never draws is never held out, unless nothing else is
    assert all(names[i] == "piano" for i in held_out_draw(corpus, val, config(weights={"tunes": 0})))
    tunes_only = [i for i in val if names[i] == "tunes"]
    assert len(held_out_draw(corpus, tunes_only, config(weights={"tunes": 0}))) == 8


def test_a_bad_val_draw_is_refused():
    with pytest.raises(Exception, match="val_draw must be one of weighted, pieces"):
        config(val_draw="tokens")


def test_a_run_saved_before_the_setting_resumes_on_its_own_held_out_pieces(tmp_path, monkeypatch):
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "midi"
    write_folder(root / "tunes", 30, notes=20, seed=0)
    write_folder(root / "piano", 10, notes=60, seed=1)
    out = tmp_path / "run"
    settings = dict(folder=str(root), out=str(out), base=None, arch="dsmr", model=TINY_DSMR, batch=2, lr=1e-3, val_every=1,
                    val_fraction=0.5, val_max_pieces=4, weights={"tunes": 0.01}, workers=1, augment=False)
    fine_tune(TrainConfig(steps=1, val_draw="pieces", **settings))
    checkpoint = next((out / "checkpoints").glob("step-*")) / "state.json"
    state = json.loads(checkpoint.read_text())
    del state["config"]["val_draw"]  # as a checkpoint written before the setting existed
    checkpoint.write_text(json.dumps(state))
    events = out / "events.jsonl"
    first = [json.loads(line) for line in events.read_text().splitlines()]
    fine_tune(TrainConfig(steps=2, resume=True, **settings))  # the default is "weighted" now
    resumed = [json.loads(line) for line in events.read_text().splitlines()][len(first):]
    said = [e["message"] for e in first + resumed if "held-out pieces (" in (e.get("message") or "")]
    assert len(said) == 2 and "4 held-out pieces (held out by piece)" in said[1]
    assert said[0] == said[1]
