"""Sampling weights by collection: the weighted piece sequence, token shares, and a weighted, expressive run."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from core.cli import main as cli
from core.errors import ModelError
from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.data import LaneStream, PieceSource
from trainer.expressive import Expression
from trainer.loop import fine_tune
from trainer.weights import (
    collection_of,
    collections,
    length_shares,
    load_weights,
    piece_weights,
    token_shares,
)

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three collections of synthetic pieces: chorales/ (3), tunes/ (4), quartets/ (2)."""
    root = tmp_path / "midi"
    for seed, (name, count) in enumerate([("chorales", 3), ("tunes", 4), ("quartets", 2)]):
        write_folder(root / name, count, notes=30 + 20 * seed, seed=seed)
    return root


@pytest.fixture
def corpus(folder) -> Corpus:
    return Corpus.build(folder, workers=1)


def test_a_piece_belongs_to_the_first_folder_under_the_corpus(tmp_path):
    assert collection_of(tmp_path / "bach" / "x" / "a.mid", tmp_path) == "bach"
    assert collection_of(tmp_path / "a.mid", tmp_path) == ""
    assert collection_of("/elsewhere/a.mid", tmp_path) == ""


def test_weights_load_from_a_dict_or_a_json_file_and_bad_ones_are_refused(tmp_path):
    assert load_weights({"bach": 2, "*": 0.5}) == {"bach": 2.0, "*": 0.5}
    path = tmp_path / "w.json"
    path.write_text(json.dumps({"bach": 3}))
    assert load_weights(str(path)) == {"bach": 3.0}
    for bad in ({"bach": -1}, {"bach": "x"}, {"bach": True}, {"bach": float("nan")}, {}, [1, 2]):
        with pytest.raises(ModelError):
            load_weights(bad)
    with pytest.raises(ModelError, match="no such weights file"):
        load_weights(str(tmp_path / "missing.json"))
    path.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        load_weights(path)


def test_each_epoch_draws_pieces_as_often_as_their_weights_say(corpus):
    indices = list(range(len(corpus)))
    names = collections(corpus, indices)
    weights = piece_weights(corpus, indices, {"chorales": 3, "tunes": 0, "*": 0.5})
    source = PieceSource(corpus, indices, seed=1, augmenting=False, weights=weights)
    epochs = [source._permutation(e) for e in range(40)]
    for order in epochs[:5]:
        counts = Counter(order.tolist())
        assert all(counts[j] == 3 for j in indices if names[j] == "chorales")
        assert all(counts[j] == 0 for j in indices if names[j] == "tunes")
    halves = [sum(int((order == j).sum()) for order in epochs) for j in indices if names[j] == "quartets"]
    assert all(10 <= h <= 30 for h in halves)  # 0.5 per epoch: about 20 in 40 epochs
    # The endless sequence is the epochs back to back, each piece the corpus's own tokens.
    flat = np.concatenate(epochs[:3])
    for n in (0, len(flat) // 2, len(flat) - 1):
        assert np.array_equal(source.item(n), corpus.piece(int(flat[n])))


def test_a_weighted_stream_resumes_from_its_position(corpus):
    indices = list(range(len(corpus)))
    weights = piece_weights(corpus, indices, {"chorales": 2.5, "*": 0.3})
    source = PieceSource(corpus, indices, seed=0, augmenting=True, expression=Expression(), weights=weights)
    stream = LaneStream(source, [0, 1], 2, 32)
    for _ in range(25):
        stream.next_batch()
    fresh = PieceSource(corpus, indices, seed=0, augmenting=True, expression=Expression(), weights=weights)
    resumed = LaneStream(fresh, [0, 1], 2, 32, position=stream.position())
    for _ in range(10):
        a, b = stream.next_batch(), resumed.next_batch()
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_expressive_draws_differ_from_the_score_and_repeat_by_seed(corpus):
    indices = list(range(len(corpus)))
    plain = PieceSource(corpus, indices, seed=0, augmenting=False)
    played = PieceSource(corpus, indices, seed=0, augmenting=False, expression=Expression(probability=1.0))
    again = PieceSource(corpus, indices, seed=0, augmenting=False, expression=Expression(probability=1.0))
    assert not np.array_equal(played.item(0), plain.item(0))
    assert np.array_equal(played.item(0), again.item(0))
    assert not np.array_equal(played.piece(0, 1), played.piece(0, 2))


def test_token_shares_follow_weights_times_tokens(corpus):
    indices = list(range(len(corpus)))
    weights = piece_weights(corpus, indices, {"chorales": 4, "tunes": 1, "quartets": 0})
    shares = token_shares(corpus, indices, weights)
    assert sum(row["share"] for row in shares.values()) == pytest.approx(1.0)
    assert shares["quartets"]["share"] == 0.0 and shares["quartets"]["pieces"] == 2
    ratio = shares["chorales"]["share"] / shares["tunes"]["share"]
    assert ratio == pytest.approx(4 * shares["chorales"]["tokens"] / shares["tunes"]["tokens"])
    assert sum(length_shares(corpus, indices, weights).values()) == pytest.approx(1.0)
    with pytest.raises(ModelError, match="weight 0"):
        piece_weights(corpus, indices, {"*": 0})


def test_a_weighted_expressive_run_logs_the_shares(folder, tmp_path):
    events = []
    config = TrainConfig(folder=str(folder), out=str(tmp_path / "out"), base=None, arch="dsmr", model=TINY_DSMR,
                         steps=4, batch=2, val_every=2, checkpoint_every=100, log_every=1, workers=1,
                         val_fraction=0.2, expressive=True, weights={"chorales": 3, "*": 1})
    result = fine_tune(config, on_progress=events.append)
    assert result.stopped == "finished" and result.steps == 4
    share_lines = [e.message for e in events if e.message.startswith("token share by collection")]
    assert len(share_lines) == 1 and "chorales" in share_lines[0] and "(x3)" in share_lines[0]


def test_the_cli_takes_expressive_weights_and_checkpoint_minutes(folder, tmp_path, capsys):
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"tunes": 2}))
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path / "cli"), "--workers", "1", "--expressive", "--weights",
                str(weights), "--checkpoint-minutes", "0.000001"])  # every step is later than that
    assert code == 0
    state = json.loads(next((tmp_path / "cli" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["config"]["expressive"] is True and state["config"]["weights"] == str(weights.resolve())
    assert state["config"]["checkpoint_minutes"] == 0.000001
    events = [json.loads(line) for line in (tmp_path / "cli" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "checkpoint" and "message" in e] == [1, 2]  # by time
