"""Generation on the note-level codec (issue #17): the engine follows the codec's grammar (a Duration after every
Pitch, none longer than --max-note, EOS never after a Pitch) and counts its seconds; a denoiser's unmasking keeps
each Pitch with its Duration; the player sends each note at its own times; the studio draws whole notes; `recital
generate` / `continue` run a notes model directory end to end; adapting reads the notes primer."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the studio's piano roll, without a screen

from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from core import notecodec as nc  # noqa: E402
from core.adapt import AdaptSettings, adapt  # noqa: E402
from core.cli import main  # noqa: E402
from core.constraints import Constraints  # noqa: E402
from core.errors import ModelError  # noqa: E402
from core.generate import SamplingConfig, generate, prepare_primer  # noqa: E402
from core.midi import Performance, read_performance  # noqa: E402
from core.modeldir import load_model, save_model  # noqa: E402
from core.models.dsmr import DSMR, DSMRConfig  # noqa: E402
from core.models.smdim import SMDIM, SMDIMConfig  # noqa: E402
from core.models.smdim.sampling import doubled_keys, note_order, pair_notes, undouble, unmask  # noqa: E402
from core.player import LivePlayer, Schedule, performance_events, play_along  # noqa: E402
from core.session import GenerationSession  # noqa: E402
from tests.conftest import PIANO_PIECE  # noqa: E402
from tests.test_player import FakeSink  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NOTES_DSMR = dict(codec="notes", d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=64)
NOTES_SMDIM = dict(codec="notes", d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64,
                   attn_window=4, stride=2, mlp_ratio=2, steps=4, default_budget="2MB")
LONGEST = nc.DURATION + nc.DURATION_BINS - 1  # the 8 s bin


def notes_dsmr(**fields) -> DSMR:
    torch.manual_seed(0)
    return DSMR(DSMRConfig(**{**NOTES_DSMR, **fields}))


def is_pitch(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return (ids >= nc.PITCH) & (ids < nc.DURATION)


def is_duration(ids) -> np.ndarray:
    ids = np.asarray(ids)
    return (ids >= nc.DURATION) & (ids < nc.TIME_SHIFT)


def assert_paired(ids, longest: float | None = None) -> None:
    """Every Pitch is followed at once by a Duration and every Duration follows a Pitch (no longer than
    `longest` seconds)."""
    ids = np.asarray(ids)
    pitch, duration = is_pitch(ids), is_duration(ids)
    assert not (pitch[:-1] & ~duration[1:]).any() and not pitch[-1:].any(), ids
    assert not (duration[1:] & ~pitch[:-1]).any() and not duration[:1].any(), ids
    if longest is not None:
        assert (nc.BIN_TICKS[ids[duration] - nc.DURATION] * nc.TICK_SECONDS <= longest + 1e-9).all()


class Ranked(torch.nn.Module):
    """A notes model that ranks the ids the same fixed way after anything: with greedy sampling it writes the
    first of `ranking` the generator lets it write (to test the grammar on its own)."""

    arch = "ranked"

    def __init__(self, ranking: list[int]):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=nc.VOCAB_SIZE, default_budget=1024, codec="notes")
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.full((nc.VOCAB_SIZE,), -100.0)
        self.logits[torch.tensor(ranking)] = torch.arange(len(ranking), 0, -1, dtype=torch.float)

    def plan(self, budget_bytes, batch=1):
        return SimpleNamespace(nbytes=0, batch=batch, describe=lambda: "ranked")

    def new_state(self, plan, batch=None):
        return SimpleNamespace(batch=plan.batch, nbytes=0, reset=lambda lane: None)

    def prefill(self, ids, state):
        return self.logits.expand(ids.shape[0], -1).clone()

    def step(self, ids, state):
        return self.logits.expand(len(ids), -1).clone()


def greedy(model, primer=None, batch: int = 1, **limits) -> np.ndarray:
    """(B, T) ids the engine writes greedily after `primer` (re-strikes allowed unless `min_repeat_seconds` says
    otherwise: a Ranked model strikes its favourite pitch at every tick)."""
    limits = {"min_repeat_seconds": 0.0, **limits}
    state = model.new_state(model.plan(1, batch), batch)
    out = list(generate(model, prepare_primer(primer, nc.VOCAB_SIZE), state, SamplingConfig(temperature=0),
                        **limits))
    return np.stack(out, axis=1)


# ---- the engine ----------------------------------------------------------------------------------------------

def test_every_pitch_gets_its_duration_chosen_no_longer_than_max_note():
    """The model always wants a note of 8 s: each Pitch gets the longest Duration within --max-note (nothing is
    released afterwards: no id is replaced), and the longest of all without a limit."""
    ranking = [nc.PITCH + 60, *range(LONGEST, nc.DURATION - 1, -1), nc.TIME_SHIFT + 49]
    capped = greedy(Ranked(ranking), max_tokens=6, max_note_seconds=0.5)[0]
    within = nc.DURATION + int(np.flatnonzero(nc.BIN_TICKS <= 50).max())
    assert capped.tolist() == [nc.PITCH + 60, within] * 3
    assert nc.BIN_TICKS[within - nc.DURATION] == 50
    assert greedy(Ranked(ranking), max_tokens=4, max_note_seconds=None)[0].tolist() == [nc.PITCH + 60, LONGEST] * 2
    shortest = greedy(Ranked(ranking), max_tokens=2, max_note_seconds=0.001)[0]  # below the grid: the shortest bin
    assert shortest.tolist() == [nc.PITCH + 60, nc.DURATION]


def test_eos_never_follows_a_pitch_and_a_primers_last_pitch_gets_its_duration():
    ranking = [nc.EOS, nc.DURATION + 5, nc.PITCH + 60]
    primer = [nc.BOS, nc.PITCH + 64]
    ended = greedy(Ranked(ranking), primer, max_tokens=10, stop_at_eos=True)[0]
    assert ended.tolist() == [nc.DURATION + 5, nc.EOS]
    piece = nc.decode(np.concatenate([primer, ended]))
    assert piece.pitch.tolist() == [64] and piece.offset.tolist() == [pytest.approx(0.06)]
    kept_going = greedy(Ranked(ranking), primer, max_tokens=5, stop_at_eos=False)[0]
    assert kept_going.tolist() == [nc.DURATION + 5, nc.PITCH + 60, nc.DURATION + 5, nc.PITCH + 60,
                                   nc.DURATION + 5]


def test_max_seconds_counts_the_notes_codecs_time_shifts_per_lane():
    """Id 294 is 1 s in the notes codec (0.36 s in the event codec): a lane stops after three of them."""
    second = nc.TIME_SHIFT + nc.MAX_SHIFT_TICKS - 1
    out = greedy(Ranked([second]), batch=2, max_seconds=3)
    assert out.shape == (2, 3) and (out == second).all()


def test_a_notes_session_follows_the_grammar_its_constraints_and_max_note():
    """A tiny random notes DSMR, sampled: every note paired and no longer than max_note, the pieces what the live
    notes showed; with a key and a range every new Pitch is in them."""
    model = notes_dsmr()
    constraints = Constraints.parse("C major", None, "C4-C5", None, None, None)
    for given in (None, constraints):
        session = GenerationSession(model, seconds=4, variations=2, seed=2, max_note=0.3, constraints=given)
        live = [[], []]
        for event in session:
            for lane, events in enumerate(event.notes):
                live[lane] += [(e.onset, e.time, e.pitch) for e in events if e.kind == "off"]
        for lane, part in zip(session.lanes, session.new_parts(), strict=True):
            assert_paired(lane, longest=0.3)
            assert (part.offset - part.onset <= 0.3 + 1e-9).all()
        assert sum(len(part) for part in session.new_parts())
        for lane, part in enumerate(session.new_parts()):
            assert sorted(live[lane]) == sorted(zip(part.onset, part.offset, part.pitch, strict=True))
        if given is not None:
            pitches = np.concatenate([np.asarray(lane)[is_pitch(lane)] - nc.PITCH for lane in session.lanes])
            assert len(pitches) and ((pitches >= 60) & (pitches <= 72)).all()
            assert np.isin(pitches % 12, [0, 2, 4, 5, 7, 9, 11]).all()


class Restriker(torch.nn.Module):
    """A notes model in the stutter's mode: after a TimeShift it wants the pitch it struck last (else Pitch 60)
    again above all, then a 10 ms TimeShift; after a Duration the 10 ms TimeShift; any other pitch is possible.
    Hand-made logits with no hidden state: its sessions run without the piece's memory (`motifs=0`), which reads
    a model's hidden states (core/contextcache.py); the guard is applied after it either way."""

    arch = "restriker"

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=nc.VOCAB_SIZE, default_budget=1024, codec="notes")
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def plan(self, budget_bytes, batch=1):
        return SimpleNamespace(nbytes=0, batch=batch, describe=lambda: "restriker")

    def new_state(self, plan, batch=None):
        return SimpleNamespace(batch=plan.batch, nbytes=0, reset=lambda lane: None,
                               pitch=np.full(plan.batch, 60), last=np.full(plan.batch, nc.BOS))

    def _logits(self, state) -> torch.Tensor:
        logits = torch.full((state.batch, nc.VOCAB_SIZE), -6.0)
        logits[:, nc.PITCH:nc.DURATION] = -2.0
        logits[:, nc.DURATION + 9] = 0.0  # a 100 ms note
        lanes = torch.arange(state.batch)
        logits[lanes, torch.from_numpy(nc.PITCH + state.pitch)] = torch.from_numpy(
            np.where(is_duration(state.last), -6.0, 8.0)).float()
        logits[:, nc.TIME_SHIFT] = 4.0
        return logits

    def _read(self, ids: np.ndarray, state) -> None:
        state.pitch = np.where(is_pitch(ids), ids - nc.PITCH, state.pitch)
        state.last = ids

    def prefill(self, ids, state):
        for column in ids.T.numpy():
            self._read(column, state)
        return self._logits(state)

    def step(self, ids, state):
        self._read(ids.numpy(), state)
        return self._logits(state)


def closest_restrike(ids) -> int:
    """The fewest ticks between two strikes of one pitch in `ids` (a large number if no pitch is struck twice)."""
    ids = np.asarray(ids, dtype=np.int64)
    ticks = np.cumsum(nc.shift_ticks(ids)) - nc.shift_ticks(ids)
    struck = np.flatnonzero(is_pitch(ids))
    gaps = [np.diff(ticks[struck][ids[struck] == pitch]) for pitch in np.unique(ids[struck])]
    return int(min((gap.min() for gap in gaps if len(gap)), default=1 << 30))


def test_no_pitch_is_struck_again_within_40_ms_and_0_lets_the_stutter_back():
    """A model that wants to strike its last pitch again 10 ms later, sampled: with the guard (the default) no two
    strikes of a pitch in what the session writes, the primer's last ones included, are closer than 40 ms; the
    grammar holds; --min-repeat 0 lets the stutter back (10 ms gaps)."""
    primer = Performance.from_notes(np.array([0.0, 0.5]), np.array([0.4, 0.6]), np.array([64, 60]),
                                    np.full(2, 80))
    assert nc.MIN_REPEAT_SECONDS == 0.04
    for seed in range(3):
        guarded = GenerationSession(Restriker(), primer, motifs=0.0, seconds=3, variations=3, seed=seed, max_tokens=5000)
        guarded.run()
        for lane in guarded.lanes:
            assert_paired(lane)
            assert is_pitch(lane).sum() >= 10  # it keeps striking, never closer than 4 ticks
            assert closest_restrike(np.concatenate([guarded.primer, lane])) >= 4
        free = GenerationSession(Restriker(), primer, motifs=0.0, seconds=3, variations=3, seed=seed, min_repeat=0)
        free.run()
        assert all(closest_restrike(lane) <= 1 for lane in free.lanes)  # 10 ms apart (or one tick: 0)
    wider = GenerationSession(Restriker(), primer, motifs=0.0, seconds=3, seed=0, min_repeat=0.1)
    wider.run()
    assert closest_restrike(np.concatenate([wider.primer, wider.lanes[0]])) >= 10
    for wrong in (-0.01, 1.5, float("nan"), "often"):
        with pytest.raises(ModelError, match="^the shortest re-strike of a pitch must be 0 to 1 second"):
            GenerationSession(Restriker(), primer, motifs=0.0, seconds=1, min_repeat=wrong)


def test_by_default_the_guard_keeps_the_primers_repeat_speed():
    """A primer that repeats a key every 100 ms lets the Restriker repeat its own as fast, less 25% (75 ms: never
    closer than 8 ticks), not 10 ms; a number given is used as it is."""
    onset = np.arange(40) * 0.1
    primer = Performance.from_notes(onset, onset + 0.05, np.full(40, 60), np.full(40, 80))
    session = GenerationSession(Restriker(), primer, motifs=0.0, seconds=3, variations=2, seed=0, max_tokens=5000)
    assert session.min_repeat == pytest.approx(0.075)
    session.run()
    for lane in session.lanes:
        assert is_pitch(lane).sum() >= 10 and closest_restrike(np.concatenate([session.primer, lane])) == 8
    assert GenerationSession(Restriker(), primer, motifs=0.0, seconds=1, min_repeat=0.05).min_repeat == 0.05


def test_the_primers_last_strikes_count():
    """Greedy: the primer struck Pitch 60 at its last tick (and its last id is a Pitch waiting for its Duration, or
    a TimeShift after it): the model's first Pitch 60 comes 40 ms after that strike, then every 40 ms; without the
    guard at once."""
    struck = [nc.BOS, nc.PITCH + 64, nc.DURATION + 9, nc.TIME_SHIFT + 20, nc.PITCH + 60]
    shift = nc.TIME_SHIFT  # 10 ms
    ended_with_pitch = greedy(Restriker(), struck, max_tokens=12, min_repeat_seconds=0.04)[0]
    assert ended_with_pitch.tolist() == [nc.DURATION + 9, shift, shift, shift, shift, nc.PITCH + 60,
                                         nc.DURATION + 9, shift, shift, shift, shift, nc.PITCH + 60]
    after_a_shift = [*struck, nc.DURATION + 9, shift, shift]  # 20 ms after the strike already
    assert greedy(Restriker(), after_a_shift, max_tokens=3, min_repeat_seconds=0.04)[0].tolist() == [
        shift, shift, nc.PITCH + 60]
    assert greedy(Restriker(), after_a_shift, max_tokens=3)[0].tolist() == [nc.PITCH + 60, nc.DURATION + 9, shift]


def test_a_lane_whose_only_pitch_was_just_struck_writes_time():
    """Constraints allow Pitch 60 alone and the guard refuses it for 40 ms after each strike: the lanes still
    always have an id to write (a TimeShift), and strike 60 every 40 ms."""
    only_c4 = Constraints.parse(None, "0", "C4-C4", None, None, None)
    session = GenerationSession(Restriker(), None, seconds=2, variations=2, seed=1, max_tokens=5000,
                                constraints=only_c4)
    session.run()
    for lane in session.lanes:
        lane = np.asarray(lane)
        assert_paired(lane)
        assert set((lane[is_pitch(lane)] - nc.PITCH).tolist()) == {60}
        assert closest_restrike(lane) == 4
        assert nc.ids_seconds(lane) >= 2


# ---- the denoiser ---------------------------------------------------------------------------------------------

def test_note_order_masks_by_the_known_neighbours():
    mask_id = nc.VOCAB_SIZE
    x = torch.tensor([[nc.BOS, nc.PITCH + 60, mask_id, mask_id, mask_id, nc.DURATION + 3, mask_id, nc.TIME_SHIFT,
                       mask_id]])
    forbidden = note_order(x, mask_id, nc.VOCAB_SIZE)[0]  # (T, V)
    allowed = [set(np.flatnonzero(~row.numpy()).tolist()) for row in forbidden]
    durations, pitches = set(range(nc.DURATION, nc.TIME_SHIFT)), set(range(nc.PITCH, nc.DURATION))
    assert allowed[2] == durations  # after a Pitch
    assert allowed[3] == set(range(nc.VOCAB_SIZE)) - durations  # after a masked slot: anything but a Duration
    assert allowed[4] == pitches  # before a known Duration
    velocities = set(range(nc.VELOCITY, nc.VOCAB_SIZE))
    assert allowed[6] == set(range(nc.VOCAB_SIZE)) - durations - pitches - velocities  # before a TimeShift
    assert allowed[8] == set(range(nc.VOCAB_SIZE)) - durations  # the window's end: free on that side


def test_note_order_puts_a_velocity_only_before_a_pitch_and_never_leaves_a_slot_nothing():
    mask_id = nc.VOCAB_SIZE
    v, p, ts = nc.VELOCITY, nc.PITCH + 60, nc.TIME_SHIFT
    x = torch.tensor([[nc.BOS, v + 5, mask_id, mask_id, v + 7, mask_id, ts, v + 3, mask_id, p]])
    forbidden = note_order(x, mask_id, nc.VOCAB_SIZE)[0]
    allowed = [set(np.flatnonzero(~row.numpy()).tolist()) for row in forbidden]
    everything = set(range(nc.VOCAB_SIZE))
    durations, pitches = set(range(nc.DURATION, nc.TIME_SHIFT)), set(range(nc.PITCH, nc.DURATION))
    velocities = set(range(nc.VELOCITY, nc.VOCAB_SIZE))
    assert allowed[2] == pitches  # after a Velocity
    assert allowed[3] == everything - durations - pitches - velocities  # before a known Velocity
    # after a Velocity where no Pitch may go (it would have no Duration): the Velocity stays a no-op, the slot open
    assert allowed[5] == everything - durations - pitches - velocities
    assert allowed[8] == everything - durations - pitches  # before a known Pitch a Velocity may go
    assert all(allowed[position] for position in (2, 3, 5, 8))


def test_where_the_order_and_the_hook_leave_a_slot_nothing_the_hook_decides():
    """A slot between a Duration and a known TimeShift may only be a TimeShift by the codec's order; a hook that
    forbids every TimeShift (infill's time rule with the time used up) leaves it nothing, so the hook's own
    logits decide there, and the draw never fails."""
    torch.manual_seed(0)
    model = SMDIM(SMDIMConfig(**NOTES_SMDIM)).eval()
    mask_id = model.mask_id
    ids = torch.tensor([[nc.BOS, nc.PITCH + 60, nc.DURATION + 3, mask_id, nc.TIME_SHIFT + 9]])
    keep = ids != mask_id

    def no_time_left(logits, _ids):
        logits = logits.clone()
        logits[..., nc.TIME_SHIFT:nc.VELOCITY] = float("-inf")
        logits[..., nc.EOS] = float("-inf")
        return logits

    assert note_order(ids, mask_id, nc.VOCAB_SIZE)[0, 3, nc.TIME_SHIFT:nc.VELOCITY].logical_not().all()
    for seed in range(5):
        out = unmask(model, ids, keep, 1, SamplingConfig(), torch.Generator().manual_seed(seed), no_time_left)
        drawn = int(out[0, 3])
        assert drawn != mask_id and not nc.TIME_SHIFT <= drawn < nc.VELOCITY and drawn not in (nc.PAD, nc.BOS, nc.EOS)


def test_a_pitch_committed_in_a_pass_takes_its_duration_in_that_pass():
    """Pitches drawn side by side in one pass: the second becomes the first's Duration, the third keeps its Pitch
    and the still-masked slot after it becomes its Duration; a Pitch whose next slot was known is left alone."""
    mask_id = nc.VOCAB_SIZE
    p = nc.PITCH + 60
    before = torch.tensor([[nc.BOS, mask_id, mask_id, mask_id, mask_id, mask_id, nc.TIME_SHIFT]])
    masked = before == mask_id
    x = torch.tensor([[nc.BOS, p, p + 1, p + 2, mask_id, nc.TIME_SHIFT + 3, nc.TIME_SHIFT]])
    chosen = torch.tensor([[False, True, True, True, False, True, False]])
    logits = torch.zeros(1, 7, nc.VOCAB_SIZE)
    logits[0, :, nc.DURATION + 7] = 50.0  # the model's favourite Duration everywhere
    logits[0, :, nc.PITCH + 70] = 60.0  # a Pitch it likes more: never chosen for a pair
    fixed, committed = pair_notes(x, chosen, masked, logits, SamplingConfig(temperature=0), None)
    assert fixed[0].tolist() == [nc.BOS, p, nc.DURATION + 7, p + 2, nc.DURATION + 7, nc.TIME_SHIFT + 3,
                                 nc.TIME_SHIFT]
    assert committed[0].tolist() == [False, True, True, True, True, True, False]
    assert_paired(fixed[0, 1:6].numpy())


def test_a_slot_may_not_strike_a_key_already_struck_near_its_onset():
    """Between the nearest known TimeShifts a Pitch sounds at the slot's onset: its key is forbidden there; across
    a TimeShift it is forbidden only within `within` ticks of known time (a MASK moves no clock)."""
    mask_id = nc.VOCAB_SIZE
    p, d, ts = nc.PITCH + 60, nc.DURATION + 3, nc.TIME_SHIFT  # ts + k - 1: a shift of k ticks
    x = torch.tensor([[nc.BOS, p, d, mask_id, p + 4, d, ts + 4, mask_id, mask_id, ts + 9, mask_id]])

    def forbidden_keys(within: int, position: int) -> set[int]:
        row = doubled_keys(x, mask_id, nc.VOCAB_SIZE, within)[0, position]
        assert not row[:nc.PITCH].any() and not row[nc.DURATION:].any()  # only Pitches are ever forbidden
        return set((np.flatnonzero(row.numpy()) - nc.PITCH).tolist())

    assert forbidden_keys(1, 3) == {60, 64}  # at their onset, either side of the slot
    assert forbidden_keys(1, 7) == set() and forbidden_keys(5, 7) == set()  # 5 ticks later: not "within" 5
    assert forbidden_keys(6, 7) == {60, 64} and forbidden_keys(6, 8) == {60, 64}
    assert forbidden_keys(6, 10) == set() and forbidden_keys(16, 10) == {60, 64}  # 5 + 10 ticks after them
    assert not doubled_keys(x, mask_id, nc.VOCAB_SIZE, 100)[0, [1, 2, 4]].any()  # known ids are never drawn


def test_a_key_drawn_twice_at_one_onset_in_one_pass_is_drawn_again():
    """The earlier strike keeps its key (known before the pass, or committed now further left); a later one in
    the pass at the same onset is drawn again among the other keys; one a TimeShift away is left alone."""
    p, d, ts = nc.PITCH + 60, nc.DURATION + 3, nc.TIME_SHIFT + 9
    x = torch.tensor([[nc.BOS, p, d, p, d, p + 2, d, p + 2, d, ts, p, d]])
    chosen = torch.tensor([[False, False, False, True, True, True, True, True, True, False, True, True]])
    logits = torch.zeros(1, x.shape[1], nc.VOCAB_SIZE)
    logits[0, :, p] = 60.0  # the model's favourite key everywhere, then 64, then 62
    logits[0, :, nc.PITCH + 64] = 50.0
    logits[0, :, p + 2] = 40.0
    fixed = undouble(x, chosen, logits, SamplingConfig(temperature=0), None)[0].tolist()
    assert fixed[3] == nc.PITCH + 64  # 60 was struck there before the pass
    assert fixed[5] == p + 2 and fixed[7] not in (p, p + 2, nc.PITCH + 64)  # 62 first now; 60, 62, 64 taken
    assert fixed[10] == p  # after a 100 ms TimeShift: not within one tick
    assert undouble(x, chosen, logits, SamplingConfig(temperature=0), None, within=11)[0, 10] != p


class OneKey(torch.nn.Module):
    """A notes denoiser that likes key 60 best everywhere, then 62 and 64, then a one-tick TimeShift: left to
    itself it strikes 60 at every slot a Pitch may take."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=nc.VOCAB_SIZE, codec="notes")
        self.mask_id = nc.VOCAB_SIZE
        self.logits = torch.full((nc.VOCAB_SIZE,), -100.0)
        self.logits[[nc.PITCH + 60, nc.PITCH + 62, nc.PITCH + 64, nc.DURATION + 3, nc.TIME_SHIFT]] = torch.tensor(
            [10.0, 9.0, 8.0, 7.0, 5.0])

    def score(self, x):
        return self.logits.expand(*x.shape, -1).clone()


@pytest.mark.parametrize("min_repeat", [0.0, 0.1])
def test_a_denoiser_never_strikes_a_key_twice_within_min_repeat(min_repeat):
    """A model that would strike one key at every slot fills a window with no key struck twice within
    `min_repeat` (0: never twice at one onset), in one pass or several."""
    model = OneKey()
    within = max(1, round(min_repeat / nc.TICK_SECONDS))
    ids = torch.full((2, 48), model.mask_id)
    ids[:, 0] = nc.BOS
    keep = ids != model.mask_id
    for steps in (1, 4, 12):
        out = unmask(model, ids, keep, steps, SamplingConfig(temperature=0), None, min_repeat=min_repeat).numpy()
        for lane in out:
            clock = np.cumsum(np.where((lane >= nc.TIME_SHIFT) & (lane < nc.VELOCITY), lane - nc.TIME_SHIFT + 1, 0))
            strikes = [(int(clock[i]), int(lane[i])) for i in np.flatnonzero(is_pitch(lane))]
            assert len(strikes) >= 3
            for index, (tick, key) in enumerate(strikes):
                assert all(abs(tick - t) >= within for t, k in strikes[:index] if k == key), (steps, lane)


def test_a_notes_denoiser_writes_whole_notes_within_max_note():
    torch.manual_seed(0)
    model = SMDIM(SMDIMConfig(**{**NOTES_SMDIM, "window": 32}))  # a short window: several for a few seconds
    for seed in range(3):
        session = GenerationSession(model, None, seconds=20.0, variations=2, seed=seed, max_note=0.3)
        session.run()
        assert session.windows >= 2
        for lane, piece in zip(session.lanes, session.pieces(), strict=True):
            assert_paired(lane, longest=0.3)
            assert nc.ids_seconds(lane) >= 20.0 and 0 < len(piece) <= int(is_pitch(lane).sum())  # one key twice at a tick: one note


# ---- playing and drawing --------------------------------------------------------------------------------------

def told(ids) -> list[tuple[list, float]]:
    """The notes Decoder's events id by id, each batch with the horizon it was told at (then `finish`)."""
    decoder, out = nc.Decoder(0.0), []
    for token in ids:
        out.append((decoder.feed(token), decoder.time))
    out.append((decoder.finish(), decoder.time))
    return out


def test_the_player_sends_every_note_at_its_own_times_however_late_its_end_is_told():
    """A note's end is told when the clock reaches it, or at the end (past the last id's time): the schedule keeps
    each event until its own time, whether the generator runs ahead or falls behind (stalls shift the clock)."""
    piece = Performance.from_notes(np.array([0.0, 0.5, 1.0, 1.0]), np.array([2.5, 0.7, 1.2, 3.0]),
                                   np.array([60, 64, 67, 48]), np.full(4, 80))
    ids = nc.encode(piece)
    batches = told(ids)
    assert any(e.time > horizon for events, horizon in batches for e in events)  # ends told ahead of the clock
    expected = [(e.kind, e.pitch, e.time) for e in performance_events(nc.decode(ids))]
    for seconds_per_id in (0.0, 0.2):  # all at once, or slower than the music (stalls)
        schedule, sent, now, fed = Schedule(lookahead=0.3, start=0.0), [], 0.0, 0
        while not schedule.done and now < 30:
            while fed < len(batches) and fed * seconds_per_id <= now:
                events, horizon = batches[fed]
                schedule.add(events, now, horizon=horizon)
                fed += 1
                if fed == len(batches):
                    schedule.finish(now)
            sent += [(at, event) for at, event in schedule.pop_due(now)]
            now = round(now + 0.01, 9)
        assert [(e.kind, e.pitch, e.time) for _, e in sent] == expected
        origins = [round(at - e.time, 6) for at, e in sent]  # clock minus music time: moves only on a stall
        assert origins == sorted(origins)
        if seconds_per_id == 0.0:
            assert len(set(origins)) == 1
        else:
            assert schedule.stalls >= 1


def test_play_along_decodes_with_the_models_codec(scale):
    ids = nc.encode(scale.shifted(0.1)).tolist()
    sink = FakeSink()
    with LivePlayer(sink, lookahead=0.2) as player:
        passed = list(play_along(iter(ids), player, codec=nc))
    assert passed == ids
    assert sink.sent == [(e.kind, e.pitch) for e in performance_events(nc.decode(ids))]


def test_the_studio_draws_the_whole_notes_a_notes_model_writes(qtbot, scale):
    from studio.document import Piece
    from studio.generation import Generate, GenerateRequest
    from studio.pianoroll import PianoRoll

    job = Generate(GenerateRequest(Piece(scale, Performance.empty()), None, False, seconds=3.0, seed=1), notes_dsmr())
    batches = []
    job.progress.connect(lambda live: batches.append(live))
    parts = job.work()
    roll = PianoRoll()
    qtbot.addWidget(roll)
    for live in batches:
        roll.add_live(live.notes.get(0, []))
    drawn = sorted((round(on, 6), round(off, 6), pitch, velocity)
                   for on, off, pitch, velocity in (item.note for item in roll.notes("live")))
    part = parts[0]
    assert len(part) and drawn == sorted(zip(np.round(part.onset, 6).tolist(), np.round(part.offset, 6).tolist(),
                                             part.pitch.tolist(), part.velocity.tolist(), strict=True))


# ---- the commands -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def notes_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-notes"
    return save_model(notes_dsmr(default_budget="256KB"), path, "# Tiny notes model\n\nRandom weights, for tests "
                                                                "only.\n")


def test_generate_and_continue_run_a_notes_model_and_max_note_caps_its_durations(notes_model_dir, tmp_path,
                                                                                   capsys):
    assert load_model(notes_model_dir).config.codec == "notes"
    out = tmp_path / "piece.mid"
    base = ["generate", "--model", str(notes_model_dir), "--seconds", "6", "--seed", "3"]
    assert main([*base, "--out", str(out)]) == 0
    free = read_performance(out)
    assert len(free) and (free.offset - free.onset).max() > 0.5  # a random model picks long notes too
    assert main([*base, "--out", str(out), "--force", "--max-note", "0.3"]) == 0
    capped = read_performance(out)
    assert len(capped) and (capped.offset - capped.onset).max() <= 0.3 + 0.002  # the file's tick rounding
    assert f"wrote {out}" in capsys.readouterr().out

    cont = tmp_path / "cont.mid"
    assert main(["continue", str(PIANO_PIECE), "--model", str(notes_model_dir), "--seconds", "3", "--seed", "1",
                 "--max-note", "0.3", "--out", str(cont)]) == 0
    primer, written = read_performance(PIANO_PIECE), read_performance(cont)
    old = {(round(on, 3), p) for on, p in zip(primer.onset.tolist(), primer.pitch.tolist(), strict=True)}
    new = np.array([(on, p) not in old for on, p in zip(np.round(written.onset, 3).tolist(),
                                                         written.pitch.tolist(), strict=True)])
    assert new.any() and len(written) - new.sum() == len(primer)  # every primer note kept, new ones after
    assert (written.offset[new] - written.onset[new]).max() <= 0.3 + 0.002
    assert "new:" in capsys.readouterr().out


def test_min_repeat_reaches_the_engine_from_generate_and_continue(notes_model_dir, tmp_path, capsys, monkeypatch):
    """--min-repeat (default 'primer': the primer's own repeat speed, 0.04 s without one; 0: off) goes through the
    session to the engine; a value outside 0-1 s is refused in one line (exit 2) and nothing is written."""
    import core.session

    seen, real = [], core.session.generate

    def recording(*args, **kwargs):
        seen.append(kwargs["min_repeat_seconds"])
        return real(*args, **kwargs)

    monkeypatch.setattr(core.session, "generate", recording)
    out = tmp_path / "piece.mid"
    base = ["generate", "--model", str(notes_model_dir), "--seconds", "2", "--seed", "3", "--out", str(out)]
    assert main(base) == 0
    assert main([*base, "--force", "--min-repeat", "0"]) == 0
    cont = tmp_path / "cont.mid"
    assert main(["continue", str(PIANO_PIECE), "--model", str(notes_model_dir), "--seconds", "1", "--seed", "1",
                 "--min-repeat", "0.1", "--out", str(cont)]) == 0
    assert seen == [0.04, None, 0.1]  # a new piece has no primer to follow: the piano's limit
    for given in ([], ["--min-repeat", "primer"]):  # the default: as fast as the primer repeats its keys
        assert main(["continue", str(PIANO_PIECE), "--model", str(notes_model_dir), "--seconds", "1", "--seed", "1",
                     *given, "--out", str(cont), "--force"]) == 0
    primer_ids = nc.encode(read_performance(PIANO_PIECE))
    assert seen[3:] == [nc.primer_min_repeat(primer_ids)] * 2 and 0.04 <= seen[3] <= 0.2
    capsys.readouterr()
    refused = tmp_path / "refused.mid"
    for wrong in ("-0.01", "1.5", "nan", "often"):
        with pytest.raises(SystemExit) as exit_:
            main([*base[:-1], str(refused), "--min-repeat", wrong])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "--min-repeat" in err, err
    assert not refused.exists()


# ---- adapting ----------------------------------------------------------------------------------------------------

def test_adapting_a_notes_model_reads_the_primer_in_its_codec():
    from tests.test_adapt import primer_nats, riff

    model = notes_dsmr()
    ids = nc.encode(riff(8.0), eos=False).astype(np.int64)
    adapted = adapt(model, ids, steps=5, lr=1e-2)
    assert primer_nats(adapted.model, ids) < 0.9 * primer_nats(model, ids)
    with pytest.raises(ModelError, match=r"^the primer's ids must lie in \[0, 327\) of the model's 'notes' codec"):
        adapt(model, [nc.BOS, 60, 390], steps=1)  # the event codec's NoteOff of pitch 127
    session = GenerationSession(model, riff(8.0), seconds=1, seed=1, adapt=AdaptSettings(min_seconds=0))
    session.run()
    assert session.adapt_seconds is not None and session.pieces()[0].pitch[:4].tolist() == [60, 64, 67, 72]
