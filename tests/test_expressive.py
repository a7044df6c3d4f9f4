"""Expressive augmentation: the vectorised decode, the time warp, and performances of a flat, quantised chorale."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ModelError
from core.midi import Performance, read_performance
from core.tokenizer import BOS, EOS, TICK_SECONDS, decode, encode
from tests.conftest import midi_files
from trainer.expressive import (
    MIN_GAP,
    Expression,
    express_ids,
    keep_strikes_apart,
    notes_from_ids,
    perform,
    time_warp,
    warp,
)

ALWAYS = Expression(probability=1.0)


def chorale(bars: int = 24, velocity: int = 90) -> Performance:
    """Four voices in quarter notes at 100 BPM, one velocity: what a music21 chorale looks like."""
    rng = np.random.default_rng(7)
    beat = 0.6
    onset, pitch = [], []
    for beat_index in range(bars * 4):
        for base in (48, 55, 62, 69):
            onset.append(beat_index * beat)
            pitch.append(base + int(rng.integers(0, 7)))
    onset = np.array(onset)
    return Performance.from_notes(onset, onset + beat, pitch, np.full(len(onset), velocity))


def _notes(perf: Performance) -> list[tuple]:
    return sorted(zip(perf.onset.tolist(), perf.offset.tolist(), perf.pitch.tolist(), perf.velocity.tolist(),
                      strict=True))


# ---- the vectorised decode -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", midi_files("piano", "pop"), ids=lambda p: getattr(p, "name", "none"))
def test_notes_from_ids_equals_decode_on_real_files(path):
    ids = encode(read_performance(path))
    assert _notes(notes_from_ids(ids)) == _notes(decode(ids))


@pytest.mark.parametrize("seed", range(8))
def test_notes_from_ids_equals_decode_on_any_ids(seed):
    """Unmatched offs, re-strikes, ids out of range, an EOS in the middle: the same notes as the decoder."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(-3, 400, 3000)
    if seed % 2:
        ids[2000] = EOS
    assert _notes(notes_from_ids(ids)) == _notes(decode(ids))
    assert len(notes_from_ids(np.array([BOS, EOS]))) == 0


# ---- pieces of the performance ---------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_the_time_warp_is_strictly_increasing_keeps_the_length_and_bends_time(seed):
    times, warped = time_warp(np.random.default_rng(seed), 60.0, ALWAYS)
    assert np.all(np.diff(warped) > 0)
    assert warped[0] == 0.0 and warped[-1] == pytest.approx(times[-1])
    assert np.abs(warped - times).max() > 0.05  # there is rubato
    probe = np.sort(np.random.default_rng(seed).uniform(0, 60, 500))
    assert np.all(np.diff(warp(probe, (times, warped))) >= 0)


def test_strikes_of_one_key_are_kept_a_tick_apart():
    rng = np.random.default_rng(3)
    pitch = rng.integers(60, 64, 400)
    onset = np.sort(rng.uniform(0, 5, 400))
    moved = keep_strikes_apart(onset, pitch)
    assert np.all(moved >= onset)
    for p in np.unique(pitch):
        assert np.all(np.diff(np.sort(moved[pitch == p])) >= MIN_GAP - 1e-9)
    spaced = np.arange(10) * 0.5
    assert np.array_equal(keep_strikes_apart(spaced, np.full(10, 60)), spaced)


# ---- performances ---------------------------------------------------------------------------------------------

def test_a_flat_chorale_gets_a_pianists_dynamics():
    ids = encode(chorale())  # every note at velocity 90
    spans, seen, velocities = [], set(), []
    for seed in range(20):
        velocity = decode(express_ids(ids, np.random.default_rng(seed), ALWAYS)).velocity
        spans.append(np.percentile(velocity, 95) - np.percentile(velocity, 5))
        seen.update((velocity // 4).tolist())
        velocities.append(velocity)
    assert min(spans) >= 15  # every performance has dynamics
    assert np.median(spans) >= 25
    assert len(seen) >= 24  # of the codec's 32 velocity bins, over twenty performances
    assert np.mean(np.concatenate(velocities) >= 112) < 0.01  # as MAESTRO's pianists: fortissimo is rare
    # Within one performance the velocities spread as a pianist's do (MAESTRO's first minutes: sd 15.1), not only
    # from one performance's level to the next's: a model learns its new pieces' dynamics from this.
    assert 13 <= np.mean([velocity.std() for velocity in velocities]) <= 19
    assert 52 <= np.mean([velocity.mean() for velocity in velocities]) <= 68  # MAESTRO's pieces average 55-70


@pytest.mark.parametrize("seed", range(6))
def test_a_performance_keeps_every_note_and_round_trips_through_the_codec(seed):
    ids = encode(chorale())
    out = express_ids(ids, np.random.default_rng(seed), ALWAYS)
    assert out.dtype == ids.dtype and out[0] == BOS and out[-1] == EOS
    before, after = decode(ids), decode(out)
    assert len(after) == len(before)
    assert np.array_equal(np.sort(after.pitch), np.sort(before.pitch))
    assert np.array_equal(encode(after), out)  # a valid encoding: decoding and encoding again changes nothing
    slowest, fastest = ALWAYS.tempo  # the piece's tempo, then rubato that keeps its length (+- the last offset)
    assert slowest * 0.85 * before.duration < after.duration < fastest * 1.15 * before.duration


def test_jitter_moves_onsets_by_a_few_milliseconds():
    still = Expression(probability=1.0, tempo=(1.0, 1.0), rubato=(0.0, 0.0), legato=(0.0, 0.0), pedal=0.0,
                       jitter=(0.004, 0.004))
    perf = chorale()
    played = perform(perf, np.random.default_rng(0), still)
    moved = np.sort(played.onset) - np.sort(perf.onset)
    assert np.abs(moved).max() <= 2.5 * 0.004 + MIN_GAP
    assert np.abs(moved).mean() > 0.001  # something moved
    chords = np.round(played.onset / 0.6)  # every note still belongs to its beat
    assert np.array_equal(np.sort(chords), np.sort(np.round(perf.onset / 0.6)))


def test_pedal_and_legato_lengthen_notes_but_never_over_the_next_strike():
    detached = chorale()
    detached = Performance(detached.onset, detached.onset + 0.3, detached.pitch, detached.velocity)  # staccato
    pedalled = Expression(probability=1.0, tempo=(1.0, 1.0), rubato=(0.0, 0.0), jitter=(0.0, 0.0), pedal=1.0,
                          legato=(0.5, 0.9))
    played = perform(detached, np.random.default_rng(1), pedalled)
    assert (played.offset - played.onset).mean() > 1.3 * 0.3
    for p in np.unique(played.pitch):
        mine = played.pitch == p
        assert np.all(played.offset[mine][:-1] <= played.onset[mine][1:] + 1e-9)


def test_touch_holds_each_key_for_a_share_of_its_written_length():
    perf = chorale()  # every note written 0.6 s long
    plain = dict(probability=1.0, tempo=(1.0, 1.0), rubato=(0.0, 0.0), jitter=(0.0, 0.0), legato=(0.0, 0.0),
                 pedal=0.0)
    half = perform(perf, np.random.default_rng(0), Expression(touch=(0.5, 0.5), touch_spread=(0.0, 0.0), **plain))
    assert np.allclose(half.offset - half.onset, 0.3, atol=TICK_SECONDS)
    assert np.allclose(np.sort(half.onset), np.sort(perf.onset))
    spread = perform(perf, np.random.default_rng(0), Expression(touch=(0.5, 0.5), touch_spread=(0.4, 0.4), **plain))
    lengths = spread.offset - spread.onset
    assert 0.25 < np.median(lengths) < 0.35 and np.std(np.log(lengths)) > 0.3  # about half, note by note apart
    assert lengths.min() >= TICK_SECONDS - 1e-9


def test_the_tempo_plays_the_whole_piece_faster_by_one_factor():
    perf = chorale()  # a beat every 0.6 s
    plain = dict(probability=1.0, rubato=(0.0, 0.0), jitter=(0.0, 0.0), legato=(0.0, 0.0), pedal=0.0,
                 touch=(1.0, 1.0), touch_spread=(0.0, 0.0))
    half = perform(perf, np.random.default_rng(0), Expression(tempo=(0.5, 0.5), **plain))
    assert np.allclose(np.sort(half.onset), np.sort(perf.onset) * 0.5, atol=1e-9)
    assert np.allclose(half.offset - half.onset, 0.3, atol=TICK_SECONDS)
    written = perform(perf, np.random.default_rng(0), Expression(**plain))  # the default keeps the written tempo
    assert np.allclose(np.sort(written.onset), np.sort(perf.onset), atol=1e-9)
    paces = [np.median(np.diff(np.unique(perform(perf, np.random.default_rng(seed),
                                                 Expression(tempo=(0.5, 1.0), **plain)).onset))) / 0.6
             for seed in range(40)]
    assert 0.5 - 1e-9 <= min(paces) < 0.6 and 0.9 < max(paces) <= 1.0 + 1e-9  # the whole range is used


def test_a_run_performs_its_draws_at_the_tempo_it_asks_for():
    from trainer.config import TrainConfig
    from trainer.loop import expression

    def config(**settings) -> TrainConfig:
        return TrainConfig(folder="f", steps=1, **settings)

    assert expression(config()) is None
    assert expression(config(expressive=True)) == Expression()
    assert expression(config(expressive=True, expressive_tempo=[0.5, 1.0])).tempo == (0.5, 1.0)
    for bad in ([0.0, 1.0], [1.0, 0.5], [0.5], "fast", [True, 1.0]):
        with pytest.raises(ModelError, match="expressive_tempo"):
            config(expressive=True, expressive_tempo=bad)


def test_performances_are_seeded():
    ids = encode(chorale(bars=4))
    first = express_ids(ids, np.random.default_rng(5), ALWAYS)
    assert np.array_equal(first, express_ids(ids, np.random.default_rng(5), ALWAYS))
    assert not np.array_equal(first, express_ids(ids, np.random.default_rng(6), ALWAYS))


def test_probability_zero_keeps_the_score_and_empty_pieces_stay_empty():
    ids = encode(chorale(bars=2))
    assert express_ids(ids, np.random.default_rng(0), Expression(probability=0.0)) is ids
    empty = np.array([BOS, EOS], dtype=np.uint16)
    assert np.array_equal(express_ids(empty, np.random.default_rng(0), ALWAYS), empty)
    single = encode(Performance.from_notes([0.0], [TICK_SECONDS], [60], [64]))
    assert len(decode(express_ids(single, np.random.default_rng(0), ALWAYS))) == 1


@pytest.mark.parametrize("bad", [{"probability": 1.5}, {"jitter": (0.01, 0.001)}, {"level": (-5.0, 10.0)},
                                 {"phrase_seconds": (0.0, 1.0)}, {"tempo": (0.0, 1.0)}, {"tempo": (1.0, 0.5)}])
def test_bad_expression_settings_are_refused(bad):
    with pytest.raises(ModelError):
        Expression(**bad)
