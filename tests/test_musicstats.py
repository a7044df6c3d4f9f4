"""core.musicstats on hand-made performances whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from core import musicstats as ms
from core.midi import Performance


def notes(*rows: tuple[float, float, int]) -> Performance:
    """(onset, offset, pitch) rows at velocity 80."""
    onset, offset, pitch = zip(*rows, strict=True) if rows else ((), (), ())
    return Performance.from_notes(onset, offset, pitch, np.full(len(onset), 80))


def chords(progression: list[tuple[int, ...]], seconds: float = 1.0) -> Performance:
    """Block chords, one every `seconds`, each held that long."""
    return notes(*((i * seconds, (i + 1) * seconds, p) for i, chord in enumerate(progression) for p in chord))


def pulse(period: float, seconds: float, jitter: float = 0.0, seed: int = 0) -> Performance:
    rng = np.random.default_rng(seed)
    onset = np.arange(0.0, seconds, period) + rng.uniform(-jitter, jitter, int(np.ceil(seconds / period)))
    onset = np.clip(onset, 0.0, None)
    return Performance.from_notes(onset, onset + 0.1, np.full(len(onset), 60), np.full(len(onset), 80))


# --- key ------------------------------------------------------------------------------------------------------

def test_c_major_scale_is_in_c_major(scale):
    assert ms.estimate_key(scale) == ms.Key(0, minor=False)


def test_c_major_cadence_is_in_c_major():
    piece = chords([(48, 60, 64, 67), (53, 60, 65, 69), (55, 59, 62, 67), (48, 60, 64, 67)])
    assert str(ms.estimate_key(piece)) == "C major"


def test_a_minor_piece_is_in_a_minor():
    # i - iv - V (with its G#) - i, the tonic held longest
    piece = chords([(45, 57, 60, 64), (50, 57, 62, 65), (52, 56, 59, 64), (45, 57, 60, 64), (45, 57, 60, 64)])
    assert ms.estimate_key(piece) == ms.Key(9, minor=True)


def test_transposed_piece_moves_its_key():
    piece = chords([(48, 60, 64, 67), (53, 60, 65, 69), (55, 59, 62, 67), (48, 60, 64, 67)])
    up = Performance.from_notes(piece.onset, piece.offset, piece.pitch + 2, piece.velocity)
    assert str(ms.estimate_key(up)) == "D major"


def test_no_key_without_notes_or_in_the_chromatic_total():
    assert ms.estimate_key(Performance.empty()) is None
    assert ms.estimate_key(notes(*((i, i + 1, 60 + i) for i in range(12)))) is None
    assert ms.estimate_key(notes((0, 1, 60), (1, 2, 72))).tonic == 0  # a lone C: its tonic, whichever mode


@pytest.mark.parametrize("name,tonic,minor,fifths", [
    ("C major", 0, False, 0), ("A minor", 9, True, 0), ("E minor", 4, True, 1), ("D minor", 2, True, -1),
    ("Bb major", 10, False, -2), ("B major", 11, False, 5), ("F# major", 6, False, 6), ("Db major", 1, False, -5),
])
def test_key_signatures(name, tonic, minor, fifths):
    key = ms.Key(tonic, minor)
    assert str(key) == name
    assert key.fifths == fifths


def test_closely_related_keys():
    c = ms.Key(0, False)
    for related in (ms.Key(7, False), ms.Key(5, False), ms.Key(9, True), ms.Key(4, True), ms.Key(2, True),
                    ms.Key(0, True), c):
        assert ms.closely_related(c, related), related
        assert ms.closely_related(related, c), related
    for far in (ms.Key(2, False), ms.Key(3, False), ms.Key(6, False), ms.Key(11, True)):
        assert not ms.closely_related(c, far), far
    assert ms.closely_related(ms.Key(6, False), ms.Key(1, False))  # F# and Db: across the enharmonic seam
    assert not ms.closely_related(c, None)
    assert not ms.closely_related(None, None)


# --- onset regularity -----------------------------------------------------------------------------------------

def test_strict_120_bpm_pulse_is_regular_at_half_a_second():
    piece = pulse(0.5, 30.0)
    assert ms.beat_period(piece) == pytest.approx(0.5)
    assert ms.onset_regularity(piece, 0.5) > 0.95
    assert ms.onset_regularity(piece, 0.37) < 0.05  # off the beat: no correlation


def test_a_pianists_pulse_still_reads_as_regular():
    piece = pulse(0.5, 30.0, jitter=0.015)
    assert ms.beat_period(piece) == pytest.approx(0.5)
    assert ms.onset_regularity(piece, 0.5) > 0.5


def test_random_onsets_are_not_regular():
    rng = np.random.default_rng(1)
    onset = np.sort(rng.uniform(0, 30, 60))
    piece = Performance.from_notes(onset, onset + 0.1, np.full(60, 60), np.full(60, 80))
    assert abs(ms.onset_regularity(piece, 0.5)) < 0.15


def test_regularity_reads_the_window_asked():
    piece = pulse(0.5, 30.0)
    assert ms.onset_regularity(piece, 0.5, start=10.0, end=20.0) > 0.95
    assert ms.onset_regularity(piece, 0.5, start=40.0, end=50.0) == 0.0  # silent window


def test_no_beat_no_regularity():
    assert ms.beat_period(Performance.empty()) is None
    assert ms.beat_period(notes((0, 0.1, 60))) is None
    assert ms.onset_regularity(pulse(0.5, 10.0), None) == 0.0


# --- counts and densities -------------------------------------------------------------------------------------

def test_restrike_counted_within_120_ms_only():
    assert ms.restrikes(notes((0, 0.05, 60), (0.1, 0.3, 60))) == 1
    assert ms.restrikes(notes((0, 0.05, 60), (0.2, 0.3, 60))) == 0
    assert ms.restrikes(notes((0, 0.05, 60), (0.05, 0.3, 62))) == 0  # another pitch is no re-strike
    trill = notes(*((i * 0.05, i * 0.05 + 0.04, 60 + 2 * (i % 2)) for i in range(8)))
    assert ms.restrikes(trill) == 6  # each key every 100 ms: 3 re-strikes of each of the two


def test_held_long_and_cut_at_limit():
    piece = notes((0, 3, 60), (0, 4.5, 62), (0, 8.0, 64), (0, 8.3, 65), (0, 9.5, 67), (1, 8.5, 69))
    assert ms.held_long(piece) == 5
    assert ms.held_long(piece, seconds=8.0) == 2
    assert ms.cut_at_limit(piece, 8.0) == 2  # 8.0 and 8.3; 7.5 s is under it, 9.5 s too far past
    assert ms.cut_at_limit(piece, 8.0, reach=0.01) == 1
    assert ms.lasting_at_least(piece, 8.0) == 3  # 8.0, 8.3 and 9.5 s; 7.5 s is under it
    assert ms.lasting_at_least(piece, 8.004) == 3 and ms.lasting_at_least(piece, 8.01) == 2  # half a tick
    assert ms.lasting_at_least(Performance.empty(), 8.0) == 0


def test_polyphony_samples_every_50_ms():
    chord = notes((0, 1, 60), (0, 1, 64), (0, 1, 67))
    assert ms.polyphony(chord) == pytest.approx(3.0)
    assert ms.polyphony(chord, 0.0, 2.0) == pytest.approx(1.5)  # silent half
    staggered = notes((0, 1, 60), (0.5, 1, 64))
    assert ms.polyphony(staggered) == pytest.approx(1.5)
    assert ms.polyphony(Performance.empty(), 0.0, 1.0) == 0.0


def test_rates_range_register_and_dynamics():
    piece = Performance.from_notes([0, 0.5, 1, 1.5], [0.4, 0.9, 1.4, 1.9], [36, 48, 60, 84], [40, 60, 80, 100])
    assert ms.notes_per_second(piece, 2.0) == 2.0
    assert ms.pitch_range(piece) == 48
    assert ms.share_below(piece) == 0.5  # 36 and 48 are below C4; C4 itself is not
    mean, std = ms.velocity_stats(piece)
    assert mean == 70.0
    assert std == pytest.approx(np.std([40, 60, 80, 100]))


def test_empty_stretch_reads_as_silence():
    empty = Performance.empty()
    assert (ms.held_long(empty), ms.cut_at_limit(empty, 8.0), ms.restrikes(empty), ms.pitch_range(empty)) == \
        (0, 0, 0, 0)
    assert (ms.polyphony(empty), ms.share_below(empty), ms.velocity_stats(empty)) == (0.0, 0.0, (0.0, 0.0))
    assert ms.notes_per_second(empty, 0.0) == 0.0
