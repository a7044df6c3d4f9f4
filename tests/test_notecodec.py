"""The note-level codec (core/notecodec.py): round trip, grid, chords, long notes,
empty pieces, any id sequence, and the continuation grammar."""

from __future__ import annotations

import numpy as np
import pytest

from core import notecodec as nc
from core.midi import Performance
from core.tokenizer import BOS, EOS, PAD, TICK_SECONDS, bin_velocity, velocity_bin


def grid(seconds: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(seconds) / TICK_SECONDS + 0.5) * TICK_SECONDS


def random_piece(seed: int, count: int = 300) -> Performance:
    """Notes at random times and lengths (10 ms to 7.9 s), no two of one pitch overlapping."""
    rng = np.random.default_rng(seed)
    onset = np.sort(rng.uniform(0, 120, count))
    length = np.exp(rng.uniform(np.log(0.01), np.log(7.9), count))
    pitch = rng.integers(21, 109, count)
    for p in np.unique(pitch):  # a note of a pitch ends before the next one of it starts
        where = np.flatnonzero(pitch == p)
        room = np.diff(onset[where]) - 0.05
        length[where[:-1]] = np.minimum(length[where[:-1]], np.maximum(room, 0.01))
    keep = np.ones(count, dtype=bool)
    for p in np.unique(pitch):  # two of a pitch closer than the room to end one are thinned out
        where = np.flatnonzero(pitch == p)
        keep[where[1:][np.diff(onset[where]) < 0.07]] = False
    return Performance.from_notes(onset[keep], onset[keep] + length[keep], pitch[keep],
                                  rng.integers(1, 128, count)[keep])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_round_trip_within_the_duration_bins(seed: int) -> None:
    piece = random_piece(seed)
    back = nc.decode(nc.encode(piece))
    assert len(back) == len(piece)
    order = np.lexsort((piece.pitch, grid(piece.onset)))
    np.testing.assert_allclose(back.onset, grid(piece.onset)[order], atol=1e-9)  # onsets exact on the grid
    np.testing.assert_array_equal(back.pitch, piece.pitch[order])
    np.testing.assert_array_equal(back.velocity, [bin_velocity(b) for b in velocity_bin(piece.velocity[order])])
    ticks = np.maximum(np.round((grid(piece.offset) - grid(piece.onset)) / TICK_SECONDS), 1)[order]
    got = np.round((back.offset - back.onset) / TICK_SECONDS)
    short = ticks <= nc.EXACT_TICKS
    np.testing.assert_array_equal(got[short], ticks[short])  # exact up to 160 ms
    assert np.all(np.abs(got - ticks) / ticks <= nc.MAX_DURATION_ERROR + 1e-12)
    assert nc.MAX_DURATION_ERROR < 0.06


def test_bins_are_distinct_and_end_at_eight_seconds() -> None:
    assert len(nc.BIN_TICKS) == nc.DURATION_BINS == len(set(nc.BIN_TICKS.tolist()))
    assert np.all(np.diff(nc.BIN_TICKS) > 0)
    assert nc.BIN_TICKS[0] == 1 and nc.BIN_TICKS[-1] == nc.LONGEST_TICKS == 800
    assert nc.token_name(nc.DURATION + nc.DURATION_BINS - 1) == "Duration_8000ms"


def test_a_chord_is_its_pitches_in_order_at_one_onset() -> None:
    chord = Performance.from_notes([1.0, 1.0, 1.0], [2.0, 1.5, 3.0], [67, 60, 64], [80, 80, 80])
    ids = nc.encode(chord)
    names = [nc.token_name(i) for i in ids]
    assert names == ["BOS", "TimeShift_1000ms", "Velocity_20", "Pitch_60", "Duration_500ms", "Pitch_64",
                     "Duration_2000ms", "Pitch_67", "Duration_1040ms", "EOS"]  # 1 s: the bin of 1.04 s
    back = nc.decode(ids)
    np.testing.assert_array_equal(back.onset, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(back.offset, [1.5, 3.0, 2.04])


def test_a_note_longer_than_the_last_bin_lasts_eight_seconds() -> None:
    piece = Performance.from_notes([0.5, 1.0], [30.5, 1.2], [40, 72], [64, 64])
    back = nc.decode(nc.encode(piece))
    np.testing.assert_allclose(back.offset - back.onset, [8.0, 0.2])


def test_long_gaps_are_several_shifts_and_seconds_add_up() -> None:
    piece = Performance.from_notes([0.0, 3.57], [0.1, 3.6], [60, 62], [64, 64])
    ids = nc.encode(piece)
    assert [nc.token_name(i) for i in ids[4:9]] == ["TimeShift_1000ms"] * 3 + ["TimeShift_570ms", "Pitch_62"]
    assert nc.ids_seconds(ids) == pytest.approx(3.57)
    assert nc.shift_ticks(ids).sum() == 357


def test_velocity_is_stated_only_when_it_changes() -> None:
    piece = Performance.from_notes([0.0, 0.1, 0.2], [0.1, 0.2, 0.3], [60, 61, 62], [64, 65, 100])
    names = [nc.token_name(i) for i in nc.encode(piece)]
    assert [n for n in names if n.startswith("Velocity")] == ["Velocity_16", "Velocity_25"]


def test_an_empty_piece() -> None:
    ids = nc.encode(Performance.empty())
    assert ids.tolist() == [BOS, EOS]
    assert len(nc.decode(ids)) == 0
    assert nc.encode(Performance.empty(), bos=False, eos=False).tolist() == []
    assert len(nc.decode([])) == 0


def test_any_ids_decode_without_raising() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        ids = rng.integers(-5, nc.VOCAB_SIZE + 50, rng.integers(0, 400))
        piece = nc.decode(ids)
        assert np.all(piece.offset > piece.onset) and np.all((piece.pitch >= 0) & (piece.pitch < 128))
    # A Pitch whose Duration does not follow at once is dropped; a Duration alone is ignored; EOS ends the piece.
    ids = [BOS, nc.PITCH + 60, nc.TIME_SHIFT, nc.DURATION + 3, nc.PITCH + 62, nc.DURATION + 4, PAD,
           nc.PITCH + 64, EOS, nc.DURATION + 5, nc.PITCH + 65, nc.DURATION + 5]
    back = nc.decode(ids)
    assert back.pitch.tolist() == [62]
    np.testing.assert_allclose([back.onset[0], back.offset[0]], [0.01, 0.06])


def test_a_key_struck_again_ends_its_sounding_note() -> None:
    ids = [BOS, nc.PITCH + 60, nc.DURATION + nc.DURATION_BINS - 1, nc.TIME_SHIFT + 49, nc.PITCH + 60,
           nc.DURATION + 9]
    back = nc.decode(ids)
    np.testing.assert_allclose(back.onset, [0.0, 0.5])
    np.testing.assert_allclose(back.offset, [0.5, 0.6])


def test_decode_after_keeps_only_the_continuation_with_the_primer_clock() -> None:
    primer = nc.encode(Performance.from_notes([0.0, 2.0], [1.0, 2.5], [60, 64], [100, 100]), eos=False)
    continuation = [nc.TIME_SHIFT + 9, nc.PITCH + 67, nc.DURATION + 9]
    new = nc.decode_after(primer, continuation)
    assert new.pitch.tolist() == [67]
    np.testing.assert_allclose([new.onset[0], new.offset[0]], [2.1, 2.2])
    assert new.velocity.tolist() == [bin_velocity(velocity_bin(100))]


def test_the_grammar_asks_a_duration_after_a_pitch_and_nowhere_else() -> None:
    allowed = nc.grammar()
    durations = np.arange(nc.DURATION, nc.TIME_SHIFT)
    assert allowed[nc.PITCH + 60].sum() == nc.DURATION_BINS and allowed[nc.PITCH + 60, durations].all()
    for after in (BOS, nc.DURATION + 3, nc.TIME_SHIFT + 5, nc.VELOCITY + 2):
        assert not allowed[after, durations].any() and not allowed[after, [PAD, BOS, EOS]].any()
        assert allowed[after, nc.PITCH:nc.DURATION].all() and allowed[after, nc.TIME_SHIFT:].all()


def test_the_benchmark_continues_a_primer_in_the_codec(one_thread) -> None:
    """bench/sounding.py's notes arm: a tiny random DSMR over the codec writes lanes that follow the grammar, end
    once their shifts reach the seconds asked, and decode to notes after the primer."""
    import torch

    from bench.sounding import continue_notes
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    model = DSMR(DSMRConfig(codec="notes", d_model=32, n_layers=2, n_heads=2, segment_len=16,
                            max_horizon=64, default_budget="64KB")).eval()
    primer = nc.encode(Performance.from_notes([0.0, 0.5, 0.5], [1.0, 0.7, 2.0], [60, 64, 67], [70, 70, 90]),
                       eos=False).astype(np.int64)
    lanes = continue_notes(model, primer, 2.0, lanes=3, seed=1)
    allowed = nc.grammar()
    for lane in lanes:
        assert len(lane) and all(allowed[a, b] for a, b in zip(np.concatenate([primer[-1:], lane[:-1]]), lane,
                                                                strict=True))
        ticks = nc.shift_ticks(lane)
        assert ticks.sum() >= 200 and ticks[:-1].sum() < 200  # stopped at the shift that reached 2 s
        new = nc.decode_after(primer, lane)
        assert np.all(new.onset >= nc.ids_seconds(primer)) and np.all(new.onset < 0.5 + 2.0)
    assert continue_notes(model, primer, 2.0, lanes=3, seed=1)[0].tolist() == lanes[0].tolist()  # seeded


def _streamed(ids) -> list[tuple[float, float, int, int]]:
    """The notes the incremental Decoder tells for `ids`: each "off" is a whole note."""
    decoder = nc.Decoder()
    events = [e for token in ids for e in decoder.feed(int(token))] + decoder.finish()
    ons = [(e.time, e.pitch) for e in events if e.kind == "on"]
    offs = sorted((e.onset, e.time, e.pitch, e.velocity) for e in events if e.kind == "off")
    assert sorted(ons) == sorted((onset, pitch) for onset, _, pitch, _ in offs)  # every note told once each way
    told = [e.time for e in events if e.kind == "on"]
    assert told == sorted(told)  # strikes are told in time order
    return offs


@pytest.mark.parametrize("seed", range(6))
def test_the_incremental_decoder_tells_exactly_the_decoded_notes(seed: int) -> None:
    """Random ids, biased toward well-formed notes with re-strikes and same-tick duplicates, and real pieces."""
    rng = np.random.default_rng(seed)
    if seed < 3:
        ids = nc.encode(random_piece(seed, 120))
    else:
        kinds = rng.choice(4, 600, p=[0.35, 0.35, 0.2, 0.1])
        ids = np.where(kinds == 0, nc.PITCH + rng.integers(58, 64, 600),
                       np.where(kinds == 1, nc.DURATION + rng.integers(0, nc.DURATION_BINS, 600),
                                np.where(kinds == 2, nc.TIME_SHIFT + rng.integers(0, 30, 600),
                                         rng.integers(0, nc.VOCAB_SIZE, 600))))
    piece = nc.decode(ids)
    want = sorted(zip(piece.onset.tolist(), piece.offset.tolist(), piece.pitch.tolist(), piece.velocity.tolist(),
                      strict=True))
    got = _streamed(ids)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a[2:] == b[2:] and a[0] == pytest.approx(b[0]) and a[1] == pytest.approx(b[1])


def test_decoding_in_chunks_and_after_a_primer_reads_as_one_sequence(monkeypatch) -> None:
    ids = nc.encode(random_piece(4, 200), eos=False)
    whole = nc.decode(ids)
    monkeypatch.setattr(nc, "_CHUNK", 7)  # a Pitch and its Duration fall on two sides of a chunk's edge
    chunked = nc.decode(ids)
    np.testing.assert_array_equal(chunked.onset, whole.onset)
    np.testing.assert_array_equal(chunked.offset, whole.offset)
    for cut in (1, 2, 3, 50, 51):
        first, rest = nc.decode_continuations(ids[:cut], [ids[cut:]])[0], nc.decode(ids)
        np.testing.assert_array_equal(first.offset, rest.offset)
        after = nc.decode_continuations(ids[:cut], [ids[cut:]], with_primer=False)[0]
        starts = {(round(o, 6), p) for o, p in zip(whole.onset, whole.pitch, strict=True)}
        assert {(round(o, 6), p) for o, p in zip(after.onset, after.pitch, strict=True)} <= starts


def test_the_generator_grammar_caps_durations_and_follows_each_lane() -> None:
    import torch

    rule = nc.Grammar(batch=2, last_id=BOS, longest_seconds=0.5)
    first = rule.mask(torch.device("cpu"), torch.float32)
    assert first.shape == (2, nc.VOCAB_SIZE)
    assert torch.isinf(first[:, nc.DURATION:nc.TIME_SHIFT]).all() and first[:, EOS].eq(0).all()
    rule.read(np.array([nc.PITCH + 60, nc.TIME_SHIFT]))
    after = rule.mask(torch.device("cpu"), torch.float32)
    lengths = nc.BIN_TICKS * TICK_SECONDS
    open_durations = after[0, nc.DURATION:nc.TIME_SHIFT].isfinite().numpy()
    assert open_durations.any() and np.all(lengths[open_durations] <= 0.5 + 1e-9)
    assert torch.isinf(after[0, :nc.DURATION]).all() and torch.isinf(after[0, nc.TIME_SHIFT:]).all()
    assert torch.isinf(after[1, nc.DURATION:nc.TIME_SHIFT]).all() and after[1, nc.PITCH].item() == 0
    tiny = nc.grammar(longest_seconds=0.0)[nc.PITCH + 60, nc.DURATION:nc.TIME_SHIFT]
    assert tiny.tolist() == [True] + [False] * (nc.DURATION_BINS - 1)  # the shortest note always stays


def test_silence_and_last_velocity() -> None:
    assert nc.ids_seconds(nc.silence_ids(2.345)) == pytest.approx(2.35)
    assert nc.last_velocity([nc.VELOCITY + 3, nc.PITCH, nc.VELOCITY + 20]) == bin_velocity(20)
    assert nc.last_velocity([nc.PITCH]) is None
    assert nc.token_id("Duration_8000ms") == nc.DURATION + nc.DURATION_BINS - 1


def test_strikes_one_tick_apart_stay_two_notes_despite_float_rounding() -> None:
    """0.29 - 0.28 < 0.01 in floats: decode must not merge strikes a whole tick apart (the Decoder does not)."""
    ids = [BOS, nc.TIME_SHIFT + 27, nc.PITCH + 60, nc.DURATION + nc.DURATION_BINS - 1, nc.TIME_SHIFT,
           nc.PITCH + 60, nc.DURATION + 3]
    back = nc.decode(ids)
    np.testing.assert_allclose(back.onset, [0.28, 0.29])
    np.testing.assert_allclose(back.offset, [0.29, 0.33])
    assert _streamed(ids) == sorted(zip(back.onset.tolist(), back.offset.tolist(), back.pitch.tolist(),
                                        back.velocity.tolist(), strict=True))


# -- the re-strike guard (MIN_REPEAT_SECONDS) ------------------------------------------------------------------------

def refused_pitches(rule: nc.Grammar, lane: int) -> set[int]:
    """The pitches `rule` refuses a lane now (its mask -inf on their Pitch ids)."""
    import torch

    mask = rule.mask(torch.device("cpu"), torch.float32)[lane, nc.PITCH:nc.DURATION]
    return set(np.flatnonzero(torch.isinf(mask).numpy()).tolist())


def test_the_generator_grammar_refuses_a_pitch_struck_again_within_min_repeat() -> None:
    """Each lane on its own clock: a pitch is refused for 0-30 ms after its strike, allowed at 40 ms; 0: never."""
    rule = nc.Grammar(2, BOS, None, min_repeat_seconds=nc.MIN_REPEAT_SECONDS)
    assert nc.MIN_REPEAT_SECONDS == 0.04 and refused_pitches(rule, 0) == refused_pitches(rule, 1) == set()
    for tokens in ([nc.PITCH + 60, nc.PITCH + 61], [nc.DURATION + 3, nc.DURATION + 3],
                   [nc.PITCH + 62, nc.TIME_SHIFT + 3]):  # lane 0: 60 and 62 at tick 0; lane 1: 61, then 40 ms
        rule.read(np.array(tokens))
    assert refused_pitches(rule, 1) == set()  # 61 struck exactly 40 ms ago
    rule.read(np.array([nc.DURATION, nc.PITCH + 61]))
    assert refused_pitches(rule, 0) == {60, 62}  # the same tick
    for lane0, expected in ((nc.TIME_SHIFT + 2, {60, 62}), (nc.TIME_SHIFT, set())):  # 30 ms later, then 40 ms
        rule.read(np.array([lane0, nc.DURATION]))
        assert refused_pitches(rule, 0) == expected
    assert refused_pitches(rule, 1) == {61}
    off = nc.Grammar(1, BOS, None, min_repeat_seconds=0.0)
    off.read(np.array([nc.PITCH + 60]))
    off.read(np.array([nc.DURATION]))
    assert refused_pitches(off, 0) == set()


@pytest.mark.parametrize("chunk", [3, 7, 1 << 16])
def test_the_primers_last_strikes_are_read_once_in_chunks(monkeypatch, chunk) -> None:
    """Strikes of the primer count, read a chunk at a time with the same result; a primer's last Pitch still
    waiting for its Duration is struck where the clock stands; an unpaired Pitch inside it is no strike."""
    monkeypatch.setattr(nc, "_CHUNK", chunk)
    primer = [BOS, nc.PITCH + 50, nc.DURATION, nc.TIME_SHIFT + 97, nc.PITCH + 60, nc.DURATION + 9,
              nc.PITCH + 70, nc.TIME_SHIFT + 1, nc.VELOCITY + 3, nc.PITCH + 61, nc.DURATION + 2, nc.TIME_SHIFT,
              nc.PITCH + 64]  # 50 at 0 ms, 60 at 980, 61 at 1000, 64 (pending) at 1010; 70 has no Duration
    rule = nc.Grammar(3, primer[-1], None, min_repeat_seconds=0.04, primer=primer)
    assert rule.tick.tolist() == [101] * 3
    assert refused_pitches(rule, 0) == set(range(128))  # the pending Pitch takes its Duration first
    rule.read(np.array([nc.DURATION + 5] * 3))
    assert refused_pitches(rule, 0) == refused_pitches(rule, 2) == {60, 61, 64}  # 30, 10 and 0 ms ago
    rule.read(np.array([nc.TIME_SHIFT, nc.TIME_SHIFT + 3, nc.PITCH + 50]))
    assert refused_pitches(rule, 0) == {61, 64} and refused_pitches(rule, 1) == set()
    rule.read(np.array([nc.TIME_SHIFT, nc.TIME_SHIFT, nc.DURATION]))
    assert refused_pitches(rule, 2) == {50, 60, 61, 64}  # 50 just now, the primer's strikes still 0-30 ms ago
    ignored = nc.Grammar(1, primer[-1], None, min_repeat_seconds=0.04)  # no primer given: nothing struck yet
    ignored.read(np.array([nc.DURATION]))
    assert refused_pitches(ignored, 0) == set()


def repeated(gap: float, count: int, start: float = 0.0, pitch: int = 60) -> Performance:
    """`count` strikes of one pitch `gap` seconds apart, with a held bass note under them (never repeated)."""
    onset = np.concatenate([[start], start + gap * np.arange(count)])
    return Performance.from_notes(onset, onset + np.concatenate([[gap * count], np.full(count, gap / 2)]),
                                  np.concatenate([[36], np.full(count, pitch)]), np.full(count + 1, 80))


@pytest.mark.parametrize(("gap", "guard"), [(0.1, 0.075), (0.2, 0.15), (0.5, nc.MAX_PRIMER_REPEAT_SECONDS),
                                            (0.04, nc.MIN_REPEAT_SECONDS)])
def test_the_guard_from_a_primer_keeps_how_fast_it_repeats_a_key(gap: float, guard: float) -> None:
    """FROM_PRIMER: the primer's 2nd-percentile same-pitch gap x 0.75, within MIN_REPEAT_SECONDS and
    MAX_PRIMER_REPEAT_SECONDS."""
    assert nc.primer_min_repeat(nc.encode(repeated(gap, 40))) == pytest.approx(guard, abs=1e-9)


def test_a_primer_with_few_repeats_or_none_keeps_the_piano_limit() -> None:
    assert nc.primer_min_repeat(nc.encode(repeated(0.1, nc.PRIMER_REPEATS))) == nc.MIN_REPEAT_SECONDS  # 19 gaps
    assert nc.primer_min_repeat(nc.encode(repeated(0.1, nc.PRIMER_REPEATS + 1))) == pytest.approx(0.075)
    assert nc.primer_min_repeat([BOS]) == nc.primer_min_repeat([]) == nc.MIN_REPEAT_SECONDS


def test_the_guard_follows_the_primers_last_ids() -> None:
    """A trill long ago does not open fast repeats after a primer that has since slowed down: only the last
    PRIMER_REPEAT_IDS ids count (cut anywhere, a Duration without its Pitch is skipped)."""
    early, late = repeated(0.08, 3000, pitch=72), repeated(0.3, 1500, start=300.0)
    ids = nc.encode(Performance.from_notes(*(np.concatenate([getattr(early, a), getattr(late, a)])
                                             for a in ("onset", "offset", "pitch", "velocity"))))
    assert len(ids) > 2 * nc.PRIMER_REPEAT_IDS + 600
    assert nc.primer_min_repeat(ids) == nc.MAX_PRIMER_REPEAT_SECONDS
    assert nc.primer_min_repeat(ids[:len(ids) // 2]) == pytest.approx(0.06)
    for cut in range(1, 4):  # the window starting on a Pitch, a Duration or a TimeShift
        assert nc.primer_min_repeat(ids[:-cut]) == nc.MAX_PRIMER_REPEAT_SECONDS


def test_a_lane_always_keeps_an_id_to_write() -> None:
    """Lanes that strike pitches as often as the rule lets them, among few pitches: every mask row leaves an id
    open, a TimeShift wherever the last id is not a Pitch, and what they write never re-strikes within 40 ms."""
    import torch

    rng = np.random.default_rng(3)
    lanes = 6
    rule = nc.Grammar(lanes, BOS, 0.5, eos=False, min_repeat_seconds=nc.MIN_REPEAT_SECONDS)
    written = [[] for _ in range(lanes)]
    for _ in range(600):
        open_ = torch.isfinite(rule.mask(torch.device("cpu"), torch.float32)).numpy()
        assert open_.any(axis=1).all()
        after_other = ~((rule.last >= nc.PITCH) & (rule.last < nc.DURATION))
        assert open_[after_other, nc.TIME_SHIFT:nc.VELOCITY].all()
        pitches = open_[:, nc.PITCH + 60:nc.PITCH + 63]  # the only keys these lanes like
        tokens = np.empty(lanes, dtype=np.int64)
        for lane in range(lanes):
            if not after_other[lane]:
                tokens[lane] = nc.DURATION + rng.choice(np.flatnonzero(open_[lane, nc.DURATION:nc.TIME_SHIFT]))
            elif pitches[lane].any() and rng.random() < 0.9:
                tokens[lane] = nc.PITCH + 60 + rng.choice(np.flatnonzero(pitches[lane]))
            else:
                tokens[lane] = nc.TIME_SHIFT + rng.integers(2)
            assert open_[lane, tokens[lane]]
            written[lane].append(int(tokens[lane]))
        rule.read(tokens)
    for ids in written:
        ids = np.array(ids)
        ticks = np.cumsum(nc.shift_ticks(ids)) - nc.shift_ticks(ids)
        struck = (ids >= nc.PITCH) & (ids < nc.DURATION)
        assert struck.sum() > 100
        for pitch in (60, 61, 62):
            assert np.diff(ticks[struck & (ids == nc.PITCH + pitch)]).min() >= 4
