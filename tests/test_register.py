"""Keyboard register: the bass line under the harmony moves an octave down; a tune alone and the upper voices stay."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from core import notecodec
from core.errors import ModelError
from core.midi import Performance
from core.tokenizer import decode, encode
from trainer.cli import add_train_arguments, config_from_args
from trainer.config import TrainConfig
from trainer.data import PieceSource
from trainer.register import Register, bass_notes, lower_bass, lower_bass_ids

ALWAYS = Register(probability=1.0)


def chorale(count: int = 4, seconds: float = 1.0, chord=(48, 55, 64, 72)) -> Performance:
    """`count` block chords (bass, two inner voices, the tune), the bass a step up on every other one."""
    onset = np.repeat(np.arange(count) * seconds, len(chord))
    pitch = np.tile(chord, count) + np.repeat(np.arange(count) % 2 * 2, len(chord))
    return Performance.from_notes(onset, onset + seconds, pitch, np.full(len(onset), 80))


def test_the_lowest_voice_of_each_chord_moves_an_octave_down_and_nothing_else_moves():
    piece = chorale()
    voiced = lower_bass(piece)
    assert sorted(voiced.pitch[voiced.pitch < 48].tolist()) == [36, 36, 38, 38]
    upper = piece.pitch > 50
    assert sorted(voiced.pitch[voiced.pitch >= 48].tolist()) == sorted(piece.pitch[upper].tolist())
    assert np.array_equal(np.sort(voiced.onset), np.sort(piece.onset))  # the same rhythm, the same lengths
    assert np.array_equal(np.sort(voiced.offset - voiced.onset), np.sort(piece.offset - piece.onset))


def test_a_bass_struck_under_held_notes_is_bass_and_one_above_them_is_not():
    # 60 and 67 held for 2 s; 48 struck under them at 1 s (bass), 64 struck between them at 1.5 s (not bass).
    piece = Performance.from_notes(np.array([0.0, 0.0, 1.0, 1.5]), np.array([2.0, 2.0, 1.5, 2.0]),
                                   np.array([60, 67, 48, 64]), np.full(4, 70))
    bass = dict(zip(piece.pitch.tolist(), bass_notes(piece).tolist(), strict=True))
    assert bass == {60: True, 67: False, 48: True, 64: False}


def test_a_tune_alone_keeps_its_register_and_a_bass_off_the_keyboard_stays():
    tune = Performance.from_notes(np.arange(8) * 0.5, np.arange(8) * 0.5 + 0.5, 60 + np.arange(8), np.full(8, 70))
    assert not bass_notes(tune).any()
    assert lower_bass(tune) is tune
    deep = chorale(count=2, chord=(30, 40, 52))  # 30 - 12 = 18 lies below A0
    voiced = lower_bass(deep)
    assert voiced.pitch.min() == 30 and sorted(voiced.pitch.tolist()) == sorted(deep.pitch.tolist())
    assert lower_bass(Performance.empty()) is not None


@pytest.mark.parametrize("codec", ["notes", "performance"])
def test_re_voiced_ids_round_trip_in_either_codec_and_are_seeded(codec):
    piece = chorale(count=6)
    enc, dec = (notecodec.encode, notecodec.decode) if codec == "notes" else (encode, decode)
    ids = enc(piece).astype(np.int64)
    once = lower_bass_ids(ids, np.random.default_rng(3), ALWAYS, codec)
    assert np.array_equal(once, lower_bass_ids(ids, np.random.default_rng(3), ALWAYS, codec))
    assert once.dtype == ids.dtype and once[0] == ids[0] and once[-1] == ids[-1]  # BOS ... EOS
    decoded = dec(once)
    assert len(decoded) == len(piece) and decoded.pitch.min() == piece.pitch.min() - 12
    assert lower_bass_ids(ids, np.random.default_rng(3), Register(probability=0.0), codec) is ids


def test_about_the_share_asked_of_the_draws_is_re_voiced():
    ids = notecodec.encode(chorale()).astype(np.int64)
    voiced = sum(lower_bass_ids(ids, np.random.default_rng(seed), Register(probability=0.3)) is not ids
                 for seed in range(400))
    assert 80 <= voiced <= 160  # 120 expected; a binomial's sd is ~9


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_bad_shares_are_refused_by_the_setting_and_the_trainer(share):
    with pytest.raises(ModelError, match="register probability must be in \\[0, 1\\]"):
        Register(probability=share)
    with pytest.raises(ModelError, match=f"register is a share of draws in \\[0, 1\\], got {share}"):
        TrainConfig(folder="x", arch="dsmr", steps=1, register=share)


def test_the_command_line_passes_the_share_to_the_run(tmp_path):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--steps", "2", "--register", "0.25"])
    assert config_from_args(args, "recital train").register == 0.25


def test_a_training_source_re_voices_its_draws_reproducibly(corpus_of):
    corpus = corpus_of(chorale(count=8))
    plain = PieceSource(corpus, [0], seed=0, augmenting=False)
    voiced = PieceSource(corpus, [0], seed=0, augmenting=False, register=ALWAYS)
    again = PieceSource(corpus, [0], seed=0, augmenting=False, register=ALWAYS)
    assert np.array_equal(plain.item(0), np.asarray(corpus.piece(0), dtype=np.int64))
    decode_of = notecodec.decode if corpus.codec == notecodec.NAME else decode
    assert decode_of(voiced.item(0)).pitch.min() == decode_of(plain.item(0)).pitch.min() - 12
    assert np.array_equal(voiced.item(0), again.item(0)) and np.array_equal(voiced.item(5), again.item(5))
