"""bench.texture's measures on pieces whose texture is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from bench.texture import ROWS, draw_windows, texture, window
from core import notecodec
from core.midi import Performance


def piece() -> Performance:
    """A four-note chord C3 E3 G3 C4 at 0 s (the last note 20 ms late: still one chord), then G4 alone at 1 s and
    C5 alone at 2 s, each note held 0.5 s, velocities 60 and 80."""
    onset = np.array([0.0, 0.0, 0.0, 0.02, 1.0, 2.0])
    pitch = np.array([48, 52, 55, 60, 67, 72])
    return Performance.from_notes(onset, onset + 0.5, pitch, np.array([60, 80, 60, 80, 60, 80]))


def test_chords_leaps_register_and_spread_are_counted_as_a_pianist_hears_them():
    rows = texture(piece())
    assert set(rows) == set(ROWS)
    assert rows["notes/s"] == pytest.approx(6 / 2.0) and rows["groups/s"] == pytest.approx(3 / 2.0)
    assert rows["notes a group"] == pytest.approx(2.0)
    assert rows["single notes"] == pytest.approx(2 / 3) and rows["groups of 4+"] == pytest.approx(1 / 3)
    assert rows["octaves"] == 0.0  # C3 E3 G3 C4: neither the top two (G3 C4) nor the bottom two are an octave
    assert rows["span"] == 12.0
    assert rows["top leap"] == pytest.approx((7 + 5) / 2)  # C4 -> G4 -> C5
    assert rows["below C4"] == pytest.approx(3 / 6)
    assert rows["median length"] == pytest.approx(0.5) and rows["velocity sd"] == pytest.approx(10.0)
    assert 0 < rows["polyphony"] < 4


def test_an_octave_at_the_top_or_the_bottom_of_a_chord_counts():
    onset = np.zeros(3)
    for pitches, octave in (((48, 55, 67), 1.0), ((36, 48, 55), 1.0), ((48, 52, 55), 0.0)):
        perf = Performance.from_notes(onset, onset + 1, np.array(pitches), np.full(3, 70))
        assert texture(perf)["octaves"] == octave


def test_windows_with_too_few_notes_are_left_out_and_draws_are_read_from_their_first_note():
    perf = Performance.from_notes(np.arange(30) * 0.5 + 3.0, np.arange(30) * 0.5 + 3.4, np.full(30, 60),
                                  np.full(30, 70))
    assert window(perf, 3.0, 5.0) is None  # 10 notes
    assert len(window(perf, 3.0, 12.0)) == 24

    class Source:  # what draw_windows reads: a draw of ids
        def draw(self, rng):
            return notecodec.encode(perf).astype(np.int64)

    found = draw_windows(Source(), 2, 12.0, seed=0)
    assert len(found) == 2 and all(len(w) == 24 for w in found)
