"""The performance-event codec: id layout, names, exact round trip on real music, a decoder that never raises."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core import tokenizer as tk
from core.midi import Performance, read_performance
from core.tokenizer import BOS, EOS, VOCAB_SIZE, Decoder, decode, encode, token_id, token_name
from tests.conftest import midi_files


def test_vocabulary_layout():
    assert VOCAB_SIZE == 3 + 128 + 128 + 100 + 32
    assert [token_name(i) for i in (0, 1, 2)] == ["PAD", "BOS", "EOS"]
    assert token_name(tk.NOTE_ON + 60) == "NoteOn_60"
    assert token_name(tk.NOTE_OFF + 127) == "NoteOff_127"
    assert token_name(tk.TIME_SHIFT) == "TimeShift_10ms"
    assert token_name(tk.TIME_SHIFT + 24) == "TimeShift_250ms"
    assert token_name(tk.TIME_SHIFT + 99) == "TimeShift_1000ms"
    assert token_name(tk.VELOCITY + 20) == "Velocity_20"
    assert all(token_id(token_name(i)) == i for i in range(VOCAB_SIZE))


def test_encode_small_piece(scale):
    names = [token_name(i) for i in encode(scale)]
    assert names[:5] == ["BOS", "Velocity_7", "NoteOn_60", "TimeShift_200ms", "NoteOff_60"]
    assert names[-1] == "EOS"
    assert encode(scale).dtype == np.uint16


def test_long_gap_becomes_several_shifts():
    perf = Performance.from_notes([0.0, 2.53], [0.1, 2.6], [60, 62], [64, 64])
    names = [token_name(i) for i in encode(perf, bos=False, eos=False)]
    assert names == ["Velocity_16", "NoteOn_60", "TimeShift_100ms", "NoteOff_60", "TimeShift_1000ms",
                     "TimeShift_1000ms", "TimeShift_430ms", "NoteOn_62", "TimeShift_70ms", "NoteOff_62"]


def test_velocity_emitted_only_on_change():
    perf = Performance.from_notes([0, 0.5, 1.0, 1.5], [0.4, 0.9, 1.4, 1.9], [60, 61, 62, 63], [64, 66, 80, 81])
    names = [token_name(i) for i in encode(perf)]
    assert [n for n in names if n.startswith("Velocity")] == ["Velocity_16", "Velocity_20"]


def test_offs_before_ons_at_the_same_time():
    perf = Performance.from_notes([0.0, 0.5], [0.5, 1.0], [60, 60], [64, 64])
    names = [token_name(i) for i in encode(perf, bos=False, eos=False)]
    assert names == ["Velocity_16", "NoteOn_60", "TimeShift_500ms", "NoteOff_60", "NoteOn_60",
                     "TimeShift_500ms", "NoteOff_60"]
    assert len(decode(encode(perf))) == 2


def assert_round_trip(perf: Performance) -> None:
    back = decode(encode(perf))
    assert len(back) == len(perf)
    order = np.lexsort((perf.pitch, np.floor(perf.onset * 100 + 0.5)))  # decoded notes are on the 10 ms grid
    expected_offset = np.maximum(perf.offset, perf.onset + 0.01)[order]  # notes < 10 ms become 10 ms
    assert np.abs(back.onset - perf.onset[order]).max() <= 0.010 + 1e-9
    assert np.abs(back.offset - expected_offset).max() <= 0.010 + 1e-9
    assert (back.pitch == perf.pitch[order]).all()
    assert (tk.velocity_bin(back.velocity) == tk.velocity_bin(perf.velocity[order])).all()


@pytest.mark.parametrize("path", midi_files("piano", "pop", "multitrack"), ids=lambda p: p and p.name)
def test_round_trip_real_music(path):
    assert_round_trip(read_performance(path))


def test_very_short_notes_become_one_tick():
    perf = Performance.from_notes([1.0, 2.0], [1.001, 2.0], [60, 61], [64, 64])
    back = decode(encode(perf))
    np.testing.assert_allclose(back.offset - back.onset, [0.01, 0.01])


def test_decoder_is_incremental_and_matches_decode(scale):
    ids = encode(scale)
    decoder = Decoder()
    events = [event for token in ids for event in decoder.feed(token)]
    ons = [e for e in events if e.kind == "on"]
    offs = [e for e in events if e.kind == "off"]
    assert [e.pitch for e in ons] == scale.pitch.tolist()
    assert [e.time for e in ons] == pytest.approx(scale.onset.tolist())
    assert [e.onset for e in offs] == pytest.approx(scale.onset.tolist())
    assert [e.time for e in offs] == pytest.approx(scale.offset.tolist())
    assert decoder.ended  # the EOS closed it


def test_decode_tolerates_sampler_output():
    ids = [tk.NOTE_OFF + 40,  # unmatched off: ignored
           tk.NOTE_ON + 60, tk.TIME_SHIFT + 9, tk.NOTE_ON + 60,  # re-strike ends the first note
           tk.NOTE_ON + 64, tk.NOTE_OFF + 64,  # zero-length note lasts one tick
           tk.TIME_SHIFT + 49, 0, BOS, 9999]  # PAD, BOS, an out-of-range id: ignored; then dangling 60
    perf = decode(ids)
    assert perf.pitch.tolist() == [60, 60, 64]
    np.testing.assert_allclose(perf.onset, [0.0, 0.1, 0.1])
    np.testing.assert_allclose(perf.offset, [0.1, 0.6, 0.11])


def test_decode_stops_at_eos():
    ids = [tk.NOTE_ON + 60, tk.TIME_SHIFT + 9, EOS, tk.NOTE_ON + 70, tk.TIME_SHIFT]
    assert decode(ids).pitch.tolist() == [60]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=-5, max_value=VOCAB_SIZE + 5), max_size=400))
def test_decode_never_raises(ids):
    perf = decode(ids)
    assert np.all(perf.offset > perf.onset)
    assert np.all((perf.pitch >= 0) & (perf.pitch <= 127))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 30), st.floats(0, 3), st.integers(0, 127), st.integers(1, 127)),
                min_size=1, max_size=60))
def test_round_trip_any_canonical_performance(notes):
    from core.midi import canonical
    onset, length, pitch, velocity = map(np.array, zip(*notes, strict=True))
    assert_round_trip(canonical(onset, onset + length, pitch, velocity))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=200),
       st.lists(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=80), min_size=1, max_size=4))
def test_continuations_decode_as_primer_plus_each(primer, continuations):
    """The primer read once and shared: each piece equals decoding primer + continuation whole."""
    pieces = tk.decode_continuations(np.array(primer, dtype=np.int64), continuations)
    for piece, new in zip(pieces, continuations, strict=True):
        whole = decode(primer + new)
        for field in ("onset", "offset", "pitch", "velocity"):
            np.testing.assert_array_equal(getattr(piece, field), getattr(whole, field))


def test_shift_ticks_is_the_clock_of_a_decoder():
    ids = np.array([tk.TIME_SHIFT + 9, tk.NOTE_ON + 60, tk.TIME_SHIFT + 99, tk.VELOCITY + 3, tk.TIME_SHIFT])
    decoder = Decoder()
    for token in ids:
        decoder.feed(token)
    assert tk.shift_ticks(ids).tolist() == [10, 0, 100, 0, 1]
    assert tk.shift_ticks(ids).sum() * tk.TICK_SECONDS == pytest.approx(decoder.time)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=200),
       st.lists(st.integers(0, VOCAB_SIZE - 1), max_size=80))
def test_continuations_without_the_primer_are_the_notes_after_it(primer, new):
    """with_primer=False: the notes that start after the primer, as decoding the whole would give them."""
    primer = primer + [tk.TIME_SHIFT]  # a primer's notes then all start before its end
    whole = tk.decode_continuations(primer, [new])[0]
    start = tk.shift_ticks(np.array(primer, dtype=np.int64)).sum() * tk.TICK_SECONDS
    if EOS in primer:
        return  # the primer ended the piece: nothing after it is read either way
    after = tk.decode_continuations(primer, [new], with_primer=False)[0]
    late = whole.onset >= start - 1e-9
    kept = after.onset >= start - 1e-9
    for field in ("onset", "offset", "pitch", "velocity"):
        np.testing.assert_array_equal(getattr(after, field)[kept], getattr(whole, field)[late])
