"""Start draws: passages read from BOS that set what a new piece begins like, by collection, not by piece count."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from core import notecodec
from core.cli import main as cli
from core.errors import ModelError
from core.tokenizer import BOS, EOS, PAD
from tests.test_train_data import write_folder
from tests.test_train_loop import TINY_DSMR
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.data import PieceSource
from trainer.loop import fine_tune
from trainer.weights import collections, piece_weights, start_draws, start_shares

pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture
def folder(tmp_path):
    """Two collections: tunes/ (6 short pieces) and piano/ (2 long ones)."""
    root = tmp_path / "midi"
    write_folder(root / "tunes", 6, notes=20, seed=0)
    write_folder(root / "piano", 2, notes=300, seed=1)
    return root


@pytest.fixture
def notes_corpus(folder) -> Corpus:
    return Corpus.build(folder, workers=1, codec=notecodec.NAME)


def _notes(perf) -> list[tuple]:
    return sorted(zip(np.round(perf.onset, 2).tolist(), perf.pitch.tolist(), perf.velocity.tolist(), strict=True))


def test_a_notes_passage_restarted_at_an_onset_is_the_same_music_from_there(notes_corpus):
    ids = notes_corpus.piece(len(notes_corpus) - 1).astype(np.int64)
    onsets = notecodec.onset_starts(ids)
    whole = notecodec.decode(ids)
    assert onsets[0] == 1 or notecodec.TIME_SHIFT <= ids[onsets[0] - 1] < notecodec.VELOCITY
    assert len(np.unique(np.round(whole.onset, 2))) == len(onsets)  # one start per onset time
    for at in (onsets[0], onsets[len(onsets) // 2], onsets[-1]):
        passage = notecodec.restart(ids, int(at), 60)
        assert passage[0] == BOS and EOS not in passage
        assert notecodec.VELOCITY <= passage[1] < notecodec.VOCAB_SIZE  # the loudness in force is stated first
        read = notecodec.decode(passage)
        cut = notecodec.ids_seconds(ids[:at])
        later = [n for n in _notes(whole) if n[0] >= round(cut, 2) - 1e-6][:len(read.pitch)]
        shifted = [(round(o + cut, 2), p, v) for o, p, v in _notes(read)]
        assert [n[1:] for n in shifted] == [n[1:] for n in later]
        assert [n[0] for n in shifted] == pytest.approx([n[0] for n in later], abs=0.011)


def test_epochs_hold_the_start_draws_and_a_start_is_a_short_passage_from_bos(notes_corpus):
    indices = list(range(len(notes_corpus)))
    names = collections(notes_corpus, indices)
    starts = start_draws(notes_corpus, indices, {"piano": 5})
    assert [s for s, n in zip(starts, names, strict=True) if n == "tunes"] == [0] * 6
    source = PieceSource(notes_corpus, indices, seed=3, augmenting=True, starts=starts, start_tokens=40)
    order = source._permutation(0)
    counts = Counter(order.tolist())
    pieces = len(indices)
    assert all(counts[j] == 1 for j in indices)  # every piece once, whole
    assert all(counts[j + pieces] == (5 if names[j] == "piano" else 0) for j in indices)
    n = int(np.flatnonzero(order >= pieces)[0])
    passage = source.item(n)
    assert passage[0] == BOS and EOS not in passage and len(passage) <= 40 + 2
    again = PieceSource(notes_corpus, indices, seed=3, augmenting=True, starts=starts, start_tokens=40)
    assert np.array_equal(again.item(n), passage)  # a start depends on the run's seed and its draw only
    stream = again.lane_stream([0], 1, 16)
    targets = np.concatenate([stream.next_batch()[1] for _ in range(400)])
    assert (targets == PAD).sum() >= 2  # every drawn passage's last id has no target, as an EOS has none


def test_without_starts_the_sequence_and_the_draws_are_the_weighted_ones(notes_corpus):
    indices = list(range(len(notes_corpus)))
    weights = piece_weights(notes_corpus, indices, {"tunes": 0.5, "*": 2})
    plain = PieceSource(notes_corpus, indices, seed=0, augmenting=False, weights=weights)
    assert all(len(plain._permutation(e)) == int((plain._permutation(e) < len(indices)).sum()) for e in range(3))
    lengths = plain.lengths * weights
    rng, expected = np.random.default_rng(7), np.random.default_rng(7)
    for _ in range(5):  # draw: a piece in proportion to its tokens times its weight, as PerceiverS's crops were
        j = int(expected.choice(len(lengths), p=lengths / lengths.sum()))
        expected.integers(2**62)
        assert np.array_equal(plain.draw(rng), notes_corpus.piece(j))


def test_draws_give_starts_their_tokens_share(notes_corpus):
    indices = list(range(len(notes_corpus)))
    names = collections(notes_corpus, indices)
    starts = start_draws(notes_corpus, indices, {"tunes": 40})
    source = PieceSource(notes_corpus, indices, seed=0, augmenting=False, starts=starts, start_tokens=30)
    rng = np.random.default_rng(0)
    drawn = [source.draw(rng) for _ in range(400)]
    short = sum(EOS not in d for d in drawn) / len(drawn)  # a start has no EOS (the tunes are longer than 30 ids)
    tune_tokens = notes_corpus.index[indices[names.index("tunes")]].tokens
    assert tune_tokens > 32
    whole = source.lengths.sum()
    expected = 6 * 30 * 40 / (whole + 6 * 30 * 40)
    assert short == pytest.approx(expected, abs=0.07)


def test_start_shares_count_whole_pieces_and_starts():
    class Index:
        def __init__(self, path):
            self.path, self.tokens = path, 100

    class Fake:
        folder = __import__("pathlib").Path("/c")
        index = [Index(f"/c/tunes/{i}.mid") for i in range(8)] + [Index(f"/c/piano/{i}.mid") for i in range(2)]

    indices = list(range(10))
    plain = start_shares(Fake, indices, None, None)
    assert plain == {"tunes": 0.8, "piano": pytest.approx(0.2)}
    starts = start_draws(Fake, indices, {"piano": 3})
    shares = start_shares(Fake, indices, np.full(10, 0.5), starts)  # tunes 8 x 0.5 = 4; piano 2 x (0.5 + 3) = 7
    assert shares == {"piano": pytest.approx(7 / 11), "tunes": pytest.approx(4 / 11)}
    assert list(shares) == ["piano", "tunes"]


def test_a_run_with_starts_logs_where_beginnings_come_from_and_bad_starts_are_refused(folder, tmp_path):
    events = []
    config = TrainConfig(folder=str(folder), out=str(tmp_path / "out"), base=None, arch="dsmr",
                         model={**TINY_DSMR, "codec": "notes"}, steps=3, batch=2, val_every=3, checkpoint_every=100,
                         log_every=1, workers=1, val_fraction=0.2, starts={"piano": 10})
    assert fine_tune(config, on_progress=events.append).steps == 3
    lines = [e.message for e in events if e.message.startswith("token share by collection")]
    assert len(lines) == 1 and "beginnings read from BOS: piano" in lines[0]
    with pytest.raises(ModelError, match="starts must be a mapping"):
        TrainConfig(folder=str(folder), out=str(tmp_path / "x"), base=None, arch="dsmr", steps=1, starts=[1])
    with pytest.raises(ModelError, match="'piano' must be a number >= 0"):
        fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "y"), base=None, arch="dsmr",
                              model=TINY_DSMR, steps=1, batch=2, workers=1, starts={"piano": -1}))


def test_the_cli_takes_a_starts_file(folder, tmp_path, capsys):
    starts = tmp_path / "starts.json"
    starts.write_text(json.dumps({"piano": 4}))
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path / "cli"), "--workers", "1", "--starts", str(starts)])
    assert code == 0
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["tokenizer"]["name"] == "notes"
    assert "beginnings read from BOS: " in capsys.readouterr().err
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                "--batch", "2", "--out", str(tmp_path / "cli2"), "--workers", "1", "--starts",
                str(tmp_path / "missing.json")])
    assert code != 0 and "no such starts file" in capsys.readouterr().err
