"""Composer constraints over the note codec (core/constraints.py `NoteTracker`, issue #17): polyphony known from
each note's Duration, a Velocity forced before the first note, density steered between Pitch and TimeShift,
Durations never masked; and what a lane writes under the codec's grammar and the constraints, decoded: no note
outside the scale or the range, velocities in range, never more notes at once than asked, the primer kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core import notecodec as nc
from core.constraints import Constraints, NoteTracker
from core.midi import Performance
from core.models.dsmr import DSMR, DSMRConfig
from core.session import GenerationSession

D_MINOR = {2, 4, 5, 7, 9, 10, 0}
DURATIONS = slice(nc.DURATION, nc.TIME_SHIFT)


def duration(ticks: int) -> int:
    """The Duration id of exactly `ticks` (a bin that holds it)."""
    assert nc.BIN_TICKS[nc.duration_bin(ticks)] == ticks
    return nc.DURATION + int(nc.duration_bin(ticks))


def primer() -> Performance:
    """Loud notes outside D minor and outside C3-C6, one held past the end: what constraints must keep."""
    onset = np.array([0.0, 0.3, 0.6, 0.9, 1.2])
    return nc.decode(nc.encode(Performance.from_notes(onset, np.array([0.5, 0.8, 2.0, 2.0, 1.5]),
                                                      np.array([20, 61, 66, 110, 73]), np.full(5, 124))))


def write(constraints: Constraints, primer_ids: np.ndarray, lanes: int, seconds: float, seed: int,
          spread: float = 2.0, longest: float | None = None) -> list[np.ndarray]:
    """Each lane's ids after `primer_ids` until its music reaches `seconds`: random logits (a model that knows
    nothing), the codec's grammar and the constraints' mask, sampled as the generator does."""
    tracker = constraints.tracker(lanes, primer_ids, codec=nc)
    assert isinstance(tracker, NoteTracker)
    grammar = nc.Grammar(lanes, int(primer_ids[-1]), longest, eos=False)
    generator = torch.Generator().manual_seed(seed)
    written: list[list[int]] = [[] for _ in range(lanes)]
    clock = np.zeros(lanes)
    while (clock < seconds).any():
        logits = spread * torch.randn(lanes, nc.VOCAB_SIZE, generator=generator)
        limits = tracker.mask()
        assert (limits[:, DURATIONS] == 0).all()  # a note's length is the model's (and the grammar's) to choose
        allowed = logits + grammar.mask(torch.device("cpu"), torch.float32) + limits
        assert torch.isfinite(allowed).any(dim=1).all()  # never a lane with nothing to write
        ids = torch.multinomial(torch.softmax(allowed, dim=1), 1, generator=generator)[:, 0].numpy()
        tracker.read(ids)
        grammar.read(ids)
        for lane in np.flatnonzero(clock < seconds):
            written[lane].append(int(ids[lane]))
        clock += nc.shift_ticks(ids) * nc.TICK_SECONDS
    return [np.array(ids) for ids in written]


def most_at_once(piece: Performance, onsets: np.ndarray) -> int:
    """The most notes sounding at any of `onsets`, as the file sounds."""
    return max((int(((piece.onset <= t + 1e-9) & (piece.offset > t + 1e-9)).sum()) for t in onsets), default=0)


# -- what a lane writes ---------------------------------------------------------------------------------------------

@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), from_nothing=st.booleans(), polyphony=st.integers(1, 3))
def test_a_constrained_lane_never_writes_outside_its_limits_and_keeps_the_primer(seed, from_nothing, polyphony):
    constraints = Constraints.parse(key="D minor", range_="C3-C6", velocity="90-127", max_polyphony=polyphony,
                                    density=6)
    given_primer = Performance.empty() if from_nothing else primer()
    primer_ids = nc.encode(given_primer, eos=False)
    lanes = write(constraints, primer_ids, lanes=3, seconds=6, seed=seed)
    pieces = nc.decode_continuations(primer_ids, lanes)
    for piece, new in zip(pieces, nc.decode_continuations(primer_ids, lanes, with_primer=False), strict=True):
        assert len(new) > 0
        assert set((new.pitch % 12).tolist()) <= D_MINOR  # the scale lock
        assert new.pitch.min() >= 48 and new.pitch.max() <= 84  # C3-C6, exactly
        assert new.velocity.min() >= 90  # the default velocity (66) was replaced before the first note
        notes = set(zip(np.round(piece.onset, 6).tolist(), piece.pitch.tolist(), piece.velocity.tolist(),
                        strict=True))
        assert notes >= set(zip(np.round(given_primer.onset, 6).tolist(), given_primer.pitch.tolist(),
                                given_primer.velocity.tolist(), strict=True))  # the primer's notes, as they were
        assert most_at_once(piece, new.onset) <= polyphony  # decoded: the file never sounds more


def notes_per_second(density: float | None, seeds=(1, 2, 3)) -> float:
    """Mean notes/s written from nothing over 10 s, 4 lanes per seed."""
    rates = []
    for seed in seeds:
        lanes = write(Constraints(density=density), np.array([nc.BOS]), lanes=4, seconds=10, seed=seed)
        rates += [len(piece) / 10 for piece in nc.decode_continuations([nc.BOS], lanes)]
    return float(np.mean(rates))


def test_density_steers_notes_per_second_the_asked_way():
    free, sparse, dense = (notes_per_second(density) for density in (None, 2.0, 12.0))
    assert sparse < free < dense
    assert dense > 2 * sparse
    assert abs(np.log(dense / 12.0)) < abs(np.log(free / 12.0))  # nearer the asked rate than without it
    assert abs(np.log(sparse / 2.0)) < abs(np.log(free / 2.0))


@pytest.fixture(scope="module")
def notes_model(one_thread) -> DSMR:
    """A tiny random DSMR on the note codec."""
    torch.manual_seed(0)
    return DSMR(DSMRConfig(codec="notes", d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=64)).eval()


@pytest.mark.parametrize("seed, from_nothing, polyphony", [(1, True, 1), (2, False, 2), (3, False, 3)])
def test_a_constrained_notes_model_never_writes_outside_its_limits(notes_model, seed, from_nothing, polyphony):
    """Through the generator and the session, as `recital generate` / `continue` run a notes model."""
    constraints = Constraints.parse(key="D minor", range_="C3-C6", velocity="90-127", max_polyphony=polyphony,
                                    density=6)
    given_primer = None if from_nothing else primer()
    session = GenerationSession(notes_model, given_primer, seconds=6, variations=3, seed=seed,
                                constraints=constraints)
    session.run()
    for piece, new in zip(session.pieces(), session.new_parts(), strict=True):
        assert len(new) > 0
        assert set((new.pitch % 12).tolist()) <= D_MINOR and new.pitch.min() >= 48 and new.pitch.max() <= 84
        assert new.velocity.min() >= 90
        assert most_at_once(piece, new.onset) <= polyphony
        if given_primer is not None:
            old = piece.onset < session.start_time - 1e-9
            assert np.array_equal(piece.pitch[old], given_primer.pitch[given_primer.onset < session.start_time - 1e-9])


def test_density_steers_a_notes_model(notes_model):
    rates = {}
    for density in (None, 2.0, 12.0):
        session = GenerationSession(notes_model, None, seconds=10, variations=4, seed=1,
                                    constraints=Constraints(density=density))
        session.run()
        rates[density] = np.mean([len(new) / 10 for new in session.new_parts()])
    assert rates[2.0] < rates[None] < rates[12.0]


# -- the tracker ----------------------------------------------------------------------------------------------------

def test_the_tracker_knows_the_sounding_notes_from_their_durations():
    constraints = Constraints(max_polyphony=2)
    ids = np.array([nc.BOS, nc.PITCH + 60, duration(31), nc.TIME_SHIFT + 9, nc.PITCH + 64, duration(5)])
    tracker = constraints.tracker(2, ids, codec=nc)  # at tick 10: 60 (0-31) and 64 (10-15) sound
    assert tracker.polyphony().tolist() == [2, 2]
    mask = tracker.mask()
    assert mask.shape == (2, nc.VOCAB_SIZE)
    assert torch.isinf(mask[:, nc.PITCH:nc.DURATION]).all() and (mask[:, nc.DURATION:] == 0).all()
    tracker.read(np.array([nc.TIME_SHIFT + 4, nc.TIME_SHIFT + 3]))  # lane 0 to tick 15: 64 has ended
    assert tracker.polyphony().tolist() == [1, 2]
    assert (tracker.mask()[0] == 0).all() and torch.isinf(tracker.mask()[1, nc.PITCH:nc.DURATION]).all()
    tracker.read(np.array([nc.PITCH + 67, nc.TIME_SHIFT + 20]))  # lane 1 to tick 35: 60 ended at 31
    assert tracker.polyphony().tolist() == [1, 0]
    assert (tracker.mask()[0, DURATIONS] == 0).all()  # a Pitch waits for its Duration: never masked
    tracker.read(np.array([duration(1), nc.VELOCITY + 3]))  # a one-tick note struck at this tick still sounds
    assert tracker.polyphony().tolist() == [2, 0]
    assert torch.isinf(tracker.mask()[0, nc.PITCH:nc.DURATION]).all()
    tracker.read(np.array([nc.TIME_SHIFT, nc.TIME_SHIFT]))
    assert tracker.polyphony().tolist() == [1, 0]  # lane 0 at tick 16: 60 (to 31) sounds, 67 (15-16) ended


def test_strikes_of_one_pitch_at_one_tick_are_one_note_and_a_later_strike_replaces_it():
    tracker = Constraints(max_polyphony=4).tracker(1, np.array([nc.BOS]), codec=nc)
    for token in (nc.PITCH + 60, duration(50), nc.PITCH + 60, duration(2), nc.TIME_SHIFT + 9):
        tracker.read(np.array([token]))
    assert tracker.polyphony()[0] == 1  # one note, the longer: still sounding at tick 10
    for token in (nc.PITCH + 60, duration(3), nc.TIME_SHIFT + 3):
        tracker.read(np.array([token]))
    assert tracker.polyphony()[0] == 0  # struck again at 10: it ended there, the new one at 13
    primer_ids = np.array([nc.BOS, nc.PITCH + 60, duration(50), nc.PITCH + 60, duration(2), nc.TIME_SHIFT + 9])
    assert Constraints(max_polyphony=4).tracker(1, primer_ids, codec=nc).polyphony()[0] == 1  # the primer too


def test_a_velocity_is_forced_before_the_first_note_and_a_pending_pitch_keeps_its_duration():
    constraints = Constraints(velocity_low=100)
    tracker = constraints.tracker(2, np.array([nc.BOS, nc.VELOCITY + 12, nc.PITCH + 60]), codec=nc)
    grammar = nc.Grammar(2, nc.PITCH + 60, None, eos=False)
    allowed = torch.isfinite(tracker.mask() + grammar.mask(torch.device("cpu"), torch.float32))
    assert allowed[:, DURATIONS].all() and allowed[:, :nc.DURATION].sum() == 0  # the primer's note gets its length
    assert not allowed[:, nc.TIME_SHIFT:].any()
    tracker.read(np.array([duration(10), duration(10)]))
    grammar.read(np.array([duration(10), duration(10)]))
    allowed = torch.isfinite(tracker.mask() + grammar.mask(torch.device("cpu"), torch.float32))
    velocity = allowed[:, nc.VELOCITY:]  # velocity 50 is out: a Velocity in the range, nothing else
    assert velocity[:, 25:].all() and not velocity[:, :25].any()
    assert allowed[:, :nc.VELOCITY].sum() == 0
    tracker.read(np.array([nc.VELOCITY + 30, nc.TIME_SHIFT]))
    mask = tracker.mask()
    assert (mask[0, :nc.VELOCITY] == 0).all()  # lane 0 loud now: every note allowed
    assert torch.isinf(mask[1, nc.PITCH:nc.DURATION]).all()  # lane 1 still at velocity 50


@pytest.mark.parametrize("chunk", [3, 7, 1 << 16])
def test_a_long_primer_is_read_a_chunk_at_a_time_with_the_same_result(monkeypatch, chunk):
    rng = np.random.default_rng(5)
    onset = np.sort(rng.integers(0, 600, 60)) * nc.TICK_SECONDS
    piece = nc.decode(nc.encode(Performance.from_notes(onset, onset + rng.uniform(0.05, 3, 60),
                                                       rng.integers(40, 80, 60), rng.integers(20, 120, 60))))
    ids = np.concatenate([nc.encode(piece, eos=False), [nc.PITCH + 70]])  # ends on a Pitch waiting for its Duration
    constraints = Constraints(max_polyphony=3, density=4)
    whole = constraints.tracker(1, ids, codec=nc)
    import core.constraints

    monkeypatch.setattr(core.constraints, "PRIMER_CHUNK", chunk)
    parts = constraints.tracker(1, ids, codec=nc)
    for name in ("tick", "ends", "struck_now", "pending", "velocity"):
        assert np.array_equal(getattr(whole, name), getattr(parts, name)), name
    assert np.allclose(whole.recent, parts.recent)
    end = nc.ids_seconds(ids)  # the notes sounding at the primer's end are the decoded piece's
    assert whole.polyphony()[0] == int(((piece.onset <= end + 1e-9) & (piece.offset > end + 1e-9)).sum()) > 0
    assert whole.pending[0] == 70 and whole.velocity[0] == nc.velocity_bin(nc.last_velocity(ids))
