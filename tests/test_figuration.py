"""Keyboard figuration: held chords become figures under an untouched tune; everything else stays as written."""

from __future__ import annotations

import numpy as np
import pytest

from core import notecodec
from core.errors import ModelError
from core.midi import Performance
from core.tokenizer import decode, encode
from trainer.config import TrainConfig
from trainer.data import PieceSource
from trainer.figuration import PATTERNS, Figuration, figure, figure_ids, figure_voices

ALWAYS = Figuration(probability=1.0, bass_octave=0.0)
CHORD = (48, 55, 64, 72)  # bass, two inner voices, the tune on top


def held_chords(count: int = 4, seconds: float = 1.2, chord=CHORD) -> Performance:
    """`count` block chords of four voices, each held `seconds`: a slow chorale."""
    onset = np.repeat(np.arange(count) * seconds, len(chord))
    pitch = np.tile(chord, count) + np.repeat(np.arange(count) % 2 * 2, len(chord))  # C, D, C, D ...
    return Performance.from_notes(onset, onset + seconds, pitch, np.full(len(onset), 80))


def notes_of(perf: Performance) -> set[tuple]:
    return set(zip(np.round(perf.onset, 6).tolist(), np.round(perf.offset, 6).tolist(), perf.pitch.tolist(),
                   strict=True))


@pytest.mark.parametrize("seed", range(6))
def test_a_held_chord_keeps_its_tune_and_plays_its_harmony_as_a_figure(seed):
    piece = held_chords()
    figured = figure(piece, np.random.default_rng(seed), ALWAYS)
    top = {(round(a, 6), round(b, 6), p) for a, b, p in notes_of(piece) if p in (72, 74)}
    assert len(top) == 4 and top <= notes_of(figured)  # the tune exactly as written
    for index in range(4):
        start, end = index * 1.2, (index + 1) * 1.2
        lower = {p + index % 2 * 2 for p in CHORD[:-1]}
        inside = (figured.onset >= start - 1e-9) & (figured.onset < end - 1e-9) & (figured.pitch < 72)
        assert set(figured.pitch[inside].tolist()) == lower  # the same harmony, every voice struck
        assert len(np.unique(np.round(figured.onset[inside], 6))) >= 2  # in steps, not one block
        assert (figured.offset[inside] <= end + 1e-9).all()
    assert set(figured.pitch.tolist()) <= {p + shift for p in CHORD for shift in (0, 2)}  # no note invented


def test_each_pattern_strikes_every_voice_from_the_bass_up():
    assert figure_voices("alberti", 3) == [(0,), (2,), (1,), (2,)]
    assert figure_voices("arpeggio", 4) == [(0,), (1,), (2,), (3,), (2,), (1,)]
    assert figure_voices("bass-chord", 3) == [(0,), (1, 2)]
    for pattern in PATTERNS:
        for voices in range(2, 6):
            cycle = figure_voices(pattern, voices)
            assert cycle[0] == (0,)
            assert {v for step in cycle for v in step} == set(range(voices))
    with pytest.raises(ValueError, match="alberti"):
        figure_voices("stride", 3)


def test_a_tune_short_chords_and_dyads_stay_as_written():
    tune = Performance.from_notes(np.arange(8) * 0.5, np.arange(8) * 0.5 + 0.5, 60 + np.arange(8), np.full(8, 70))
    assert figure(tune, np.random.default_rng(0), ALWAYS) is tune
    short = held_chords(seconds=ALWAYS.shortest * 0.9)
    assert figure(short, np.random.default_rng(0), ALWAYS) is short
    dyads = held_chords(chord=(48, 72))
    assert figure(dyads, np.random.default_rng(0), ALWAYS) is dyads
    assert figure(Performance.empty(), np.random.default_rng(0), ALWAYS) is not None


def test_a_voice_held_past_the_figure_sounds_on():
    piece = held_chords(count=1)
    longer = Performance.from_notes(piece.onset, np.where(piece.pitch == 55, 3.0, piece.offset), piece.pitch,
                                    piece.velocity)
    figured = figure(longer, np.random.default_rng(0), ALWAYS)
    assert (55 in figured.pitch[(figured.onset >= 1.2 - 1e-9)]) and figured.offset.max() == pytest.approx(3.0)


def test_a_doubled_bass_sounds_an_octave_below_and_never_off_the_keyboard():
    doubling = Figuration(probability=1.0, bass_octave=1.0)
    figured = figure(held_chords(count=1), np.random.default_rng(0), doubling)
    low = figured.pitch == 36
    assert low.sum() == 1 and figured.onset[low][0] == 0.0 and figured.offset[low][0] == pytest.approx(1.2)
    deep = figure(held_chords(count=1, chord=(30, 40, 45, 52)), np.random.default_rng(0), doubling)
    assert deep.pitch.min() == 30  # 18 is below the piano's A0


@pytest.mark.parametrize("codec", ["notes", "performance"])
def test_figured_ids_round_trip_in_either_codec_and_are_seeded(codec):
    piece = held_chords(count=6)
    enc, dec = (notecodec.encode, notecodec.decode) if codec == "notes" else (encode, decode)
    ids = enc(piece).astype(np.int64)
    once = figure_ids(ids, np.random.default_rng(3), ALWAYS, codec)
    assert np.array_equal(once, figure_ids(ids, np.random.default_rng(3), ALWAYS, codec))
    assert once.dtype == ids.dtype and len(once) > len(ids)
    assert once[0] == ids[0] and once[-1] == ids[-1]  # BOS ... EOS
    assert len(dec(once)) > len(piece)
    never = Figuration(probability=0.0)
    assert figure_ids(ids, np.random.default_rng(3), never, codec) is ids


@pytest.mark.parametrize("bad", [dict(probability=1.5), dict(step=(0.0, 0.2)), dict(step=(0.3, 0.1)),
                                 dict(articulation=(0.0, 1.0)), dict(shortest=0.0), dict(bass_octave=-0.1)])
def test_bad_figuration_settings_are_refused(bad):
    with pytest.raises(ModelError, match="figuration"):
        Figuration(**bad)


def test_the_trainer_refuses_a_share_outside_zero_to_one():
    with pytest.raises(ModelError, match="figuration is a share of draws in \\[0, 1\\], got 2"):
        TrainConfig(folder="x", arch="dsmr", steps=1, figuration=2)


def test_a_training_source_figures_its_draws_reproducibly(corpus_of):
    corpus = corpus_of(held_chords(count=8))
    plain = PieceSource(corpus, [0], seed=0, augmenting=False)
    figured = PieceSource(corpus, [0], seed=0, augmenting=False, figuration=ALWAYS)
    again = PieceSource(corpus, [0], seed=0, augmenting=False, figuration=ALWAYS)
    assert np.array_equal(plain.item(0), np.asarray(corpus.piece(0), dtype=np.int64))
    assert len(figured.item(0)) > len(plain.item(0))
    assert np.array_equal(figured.item(0), again.item(0)) and np.array_equal(figured.item(5), again.item(5))
