"""Augmentation per codec: on ids of either codec, transposition, stretch and the expressive performance are the
encoder's output for the same change made on the notes."""

from __future__ import annotations

import numpy as np
import pytest

from core import notecodec, tokenizer
from core.codecs import codec_named
from core.midi import Performance, canonical
from tests.test_expressive import ALWAYS, chorale
from trainer.augment import augment, stretch, transpose
from trainer.expressive import express_ids

CODECS = ("performance", "notes")


def random_piece(seed: int, notes: int = 300) -> Performance:
    """Chords, overlaps, notes near both ends of the keyboard, gaps over a second, velocities all over."""
    rng = np.random.default_rng(seed)
    onset = np.sort(rng.choice(np.cumsum(rng.uniform(0.0, 0.6, notes)), notes))  # repeats: chords
    length = np.exp(rng.uniform(np.log(0.01), np.log(9.0), notes))
    return canonical(onset, onset + length, rng.integers(0, 128, notes), rng.integers(1, 128, notes))


def quantised(perf: Performance, codec: str) -> Performance:
    """The notes as the codec keeps them (its decode of its encoding)."""
    module = codec_named(codec)
    return module.decode(module.encode(perf))


def moved(perf: Performance, semitones: int) -> Performance:
    pitch = perf.pitch.astype(np.int64) + semitones
    keep = (pitch >= 0) & (pitch < 128)
    return Performance.from_notes(perf.onset[keep], perf.offset[keep], pitch[keep], perf.velocity[keep])


def _rows(perf: Performance) -> np.ndarray:
    return np.stack([perf.onset, perf.offset, perf.pitch, perf.velocity], axis=1)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("semitones", [-7, -1, 3, 12])
def test_transposing_ids_is_encoding_the_transposed_notes(codec, seed, semitones):
    module = codec_named(codec)
    perf = quantised(random_piece(seed), codec)  # notes the codec holds exactly: no rounding on either side
    out = transpose(module.encode(perf), semitones, codec)
    assert np.array_equal(module.decode(out).pitch, moved(perf, semitones).pitch)
    assert len(module.decode(out)) < len(perf)  # some notes left the keyboard
    if codec == "notes":  # the note codec's ids are exactly the encoder's
        assert np.array_equal(out, module.encode(moved(perf, semitones)))
    else:
        assert np.array_equal(_rows(module.decode(out)), _rows(module.decode(module.encode(moved(perf, semitones)))))


def test_a_note_pushed_off_the_keyboard_loses_its_pitch_and_its_duration():
    perf = Performance.from_notes([0.0, 0.0, 0.5], [0.15, 0.4, 0.6], [60, 126, 64], [64, 100, 30])
    out = transpose(notecodec.encode(perf), 3, "notes")
    names = [notecodec.token_name(t) for t in out]
    assert names == ["BOS", "Velocity_16", "Pitch_63", "Duration_150ms", "TimeShift_500ms", "Velocity_7",
                     "Pitch_67", "Duration_100ms", "EOS"]  # no Velocity left behind for the dropped note


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("factor", [0.85, 0.97, 1.06, 1.15])
def test_stretching_ids_is_encoding_the_stretched_notes_within_a_tick(codec, seed, factor):
    module = codec_named(codec)
    perf = quantised(random_piece(seed), codec)
    out = module.decode(stretch(module.encode(perf), factor, codec))
    want = quantised(Performance.from_notes(perf.onset * factor, perf.offset * factor, perf.pitch, perf.velocity),
                     codec)
    assert len(out) == len(want)
    got, expected = _rows(out), _rows(want)
    assert np.array_equal(got[:, 2:], expected[:, 2:])  # pitches and velocities, in the same order
    assert np.abs(got[:, 0] - expected[:, 0]).max() <= tokenizer.TICK_SECONDS + 1e-9  # onsets: a tick at most
    length, wanted = got[:, 1] - got[:, 0], expected[:, 1] - expected[:, 0]
    # durations: the bin of the scaled length, which is within a tick of the scaled bin length
    limit = np.maximum(2 * tokenizer.TICK_SECONDS, wanted * 2 * notecodec.MAX_DURATION_ERROR) + 1e-9
    assert np.all(np.abs(length - wanted) <= limit)
    if codec == "notes":  # onsets of one tick in pitch order, velocities stated only on a change
        (onset, _, pitch, _), _, _ = notecodec.read_notes(stretch(module.encode(perf), factor, codec))
        order = np.lexsort((pitch, onset))
        assert np.array_equal(order, np.arange(len(order)))


@pytest.mark.parametrize("codec", CODECS)
def test_augment_keeps_bos_eos_and_dtype_and_is_seeded(codec):
    module = codec_named(codec)
    ids = module.encode(random_piece(9))
    first = augment(ids, np.random.default_rng(4), 5, 0.1, codec)
    assert first.dtype == ids.dtype and first[0] == module.BOS and first[-1] == module.EOS
    assert np.array_equal(first, augment(ids, np.random.default_rng(4), 5, 0.1, codec))
    assert augment(ids, np.random.default_rng(4), 0, 0.0, codec) is ids


def test_notes_augmentation_of_ids_without_bos_or_eos():
    ids = notecodec.encode(random_piece(2), bos=False, eos=False)
    out = stretch(transpose(ids, 2, "notes"), 1.1, "notes")
    assert out[0] != notecodec.BOS and out[-1] != notecodec.EOS and len(notecodec.decode(out)) > 0


# ---- the expressive performance on the note codec: the statistics test_expressive checks on the event codec ----

def test_a_flat_chorale_in_the_note_codec_gets_a_pianists_dynamics():
    ids = notecodec.encode(chorale())
    spans, seen, velocities = [], set(), []
    for seed in range(20):
        velocity = notecodec.decode(express_ids(ids, np.random.default_rng(seed), ALWAYS, "notes")).velocity
        spans.append(np.percentile(velocity, 95) - np.percentile(velocity, 5))
        seen.update((velocity // 4).tolist())
        velocities.append(velocity)
    assert min(spans) >= 15
    assert np.median(spans) >= 25
    assert len(seen) >= 24
    assert np.mean(np.concatenate(velocities) >= 112) < 0.01


@pytest.mark.parametrize("seed", range(6))
def test_a_note_codec_performance_keeps_every_note_and_is_a_valid_encoding(seed):
    ids = notecodec.encode(chorale())
    out = express_ids(ids, np.random.default_rng(seed), ALWAYS, "notes")
    assert out.dtype == ids.dtype and out[0] == notecodec.BOS and out[-1] == notecodec.EOS
    before, after = notecodec.decode(ids), notecodec.decode(out)
    assert len(after) == len(before)
    assert np.array_equal(np.sort(after.pitch), np.sort(before.pitch))
    assert np.array_equal(notecodec.encode(after), out)
    slowest, fastest = ALWAYS.tempo  # the piece's tempo, then rubato that keeps its length (+- the last offset)
    assert slowest * 0.85 * before.duration < after.duration < fastest * 1.15 * before.duration
    onsets = np.unique(after.onset)
    assert len(onsets) > 1.5 * len(np.unique(before.onset))  # the chords' notes no longer all strike together


def test_note_codec_performances_are_seeded_and_lengthen_notes_with_pedal():
    ids = notecodec.encode(chorale(bars=4))
    first = express_ids(ids, np.random.default_rng(5), ALWAYS, "notes")
    assert np.array_equal(first, express_ids(ids, np.random.default_rng(5), ALWAYS, "notes"))
    assert not np.array_equal(first, express_ids(ids, np.random.default_rng(6), ALWAYS, "notes"))
