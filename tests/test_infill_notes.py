"""SMDIM on the note-level codec (issues #17 and #18): the region's layout holds every kept note whole at its onset
and masks in groups that can hold a note, a masked Pitch becomes a note only with the Duration right after it, a
tiny notes SMDIM trains (its bound falls, its bits per second count the notes codec's seconds), infills a region
of a piece keeping everything outside bit for bit, `recital infill` runs on it saved, and the trainer trains one
from scratch on windows of the notes codec's ids."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from core import notecodec, tokenizer
from core.cli import main
from core.infill import (
    EDGE_FLOOR,
    GROUP_UNIT,
    PACE_TICKS,
    _select,
    edge_densities,
    infill,
    lay_out,
    length_guard,
    new_notes,
    time_rule,
)
from core.midi import Performance, read_performance, write_performance
from core.modeldir import load_model, save_model
from core.models.smdim import SMDIM, SMDIMConfig
from core.models.smdim.training import SMDIMTraining, bits_per_second
from core.tokenizer import TICK_SECONDS
from tests.conftest import PIANO_PIECE
from tests.test_infill import notes, region

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=4, stride=2,
            mlp_ratio=2, steps=4, default_budget="2MB", codec="notes")
MASK = notecodec.VOCAB_SIZE  # SMDIM's MASK: one past the codec's ids


@pytest.fixture(scope="module")
def piece() -> Performance:
    return read_performance(PIANO_PIECE).slice_time(0.0, 12.0)


# ---- the layout and the assembly ---------------------------------------------------------------------------------

def test_the_context_is_every_kept_note_whole_at_its_onset_and_the_masks_come_in_notes_with_the_time(piece):
    start, end, split = 3.0, 6.0, 67
    inside = region(piece, start, end)
    kept = _select(piece, ~inside | (piece.pitch >= split))
    layout = lay_out(kept, start, end, 40, MASK, notecodec)
    ids = layout.ids
    assert layout.codec is notecodec and ids[0] == notecodec.BOS and ids[-1] == notecodec.EOS
    crossing = (piece.onset < start) & (piece.offset > start)
    assert crossing.any()
    before = notecodec.decode(ids[:layout.first])  # a note crossing into the region is whole before it
    for index in np.flatnonzero(crossing):
        assert int(piece.pitch[index]) in before.pitch[np.isclose(before.onset, piece.onset[index], atol=6e-3)]
    body = ids[layout.first:layout.after]
    is_mask = body == MASK
    assert is_mask.sum() == 40
    # the region holds the kept voice's notes and no TimeShift: the masks write the time
    assert not notecodec.shift_ticks(body).any()
    voice = inside & (piece.pitch >= split)
    clock = layout.clock[layout.first:layout.after]
    pitch = (body >= notecodec.PITCH) & (body < notecodec.DURATION)
    assert sorted(body[pitch] - notecodec.PITCH) == sorted(piece.pitch[voice].tolist())
    for onset, key in zip(piece.onset[voice], piece.pitch[voice], strict=True):  # each at its real tick
        assert round(onset / TICK_SECONDS) in clock[pitch & (body == notecodec.PITCH + key)]
    # a group of masks before each kept onset and one after the last, those longer than PACE_TICKS cut in equal
    # parts; its gap is the time up to that onset
    assert len(layout.gap) >= len(np.unique(np.round(piece.onset[voice] / TICK_SECONDS))) + 1
    assert layout.gap.max() <= PACE_TICKS
    assert layout.gap.sum() == layout.end_tick - layout.start_tick == round((end - start) / TICK_SECONDS)
    group = layout.group[layout.first:layout.after]
    assert ((group >= 0) == is_mask).all() and (layout.group[:layout.first] == -1).all()
    starts = layout.start_tick + np.concatenate([[0], np.cumsum(layout.gap)[:-1]])
    assert (clock[is_mask] == starts[group[is_mask]]).all()
    sizes = np.bincount(group[is_mask], minlength=len(layout.gap))
    assert all(size % GROUP_UNIT["notes"] == 0 for size in sizes[:-1]) and sizes.sum() == 40
    # the clock runs on through the right context from the region's end
    shift = notecodec.shift_ticks(ids[layout.after:])
    assert (layout.clock[layout.after:] == layout.end_tick + np.cumsum(shift) - shift).all()


def test_a_long_gap_is_paced_in_groups_of_a_second_at_most_each_with_its_share_of_the_masks():
    """Left to unmask 3.5 s as one group, SMDIM wrote most of its notes beside the music on either side (20
    MAESTRO regions: 1.55x and 1.81x the mean density in the first and last eighth, 0.53x in the second); a group
    per second at most spreads them as the pianists do (0.91-1.17x)."""
    onset = np.array([0.0, 2.5, 5.0])
    kept = Performance.from_notes(onset, onset + 0.4, np.array([60, 62, 64]), np.array([80, 80, 80]))
    layout = lay_out(kept, 0.5, 4.0, 60, MASK, notecodec)  # 2 s to the kept onset at 2.5 s, then 1.5 s
    assert PACE_TICKS == 100 and layout.gap.tolist() == [100, 100, 75, 75]
    body = layout.ids[layout.first:layout.after]
    group = layout.group[layout.first:layout.after]
    sizes = np.bincount(group[group >= 0]).tolist()
    assert sum(sizes) == 60 and all(size % GROUP_UNIT["notes"] == 0 for size in sizes)
    shares = 60 * layout.gap / layout.gap.sum()
    assert np.all(np.abs(np.array(sizes) - shares) <= GROUP_UNIT["notes"])  # in proportion to the time, whole notes
    kept_at = np.flatnonzero(body == notecodec.PITCH + 62)[0]  # the kept note comes after the second part's masks
    assert (group[:kept_at][group[:kept_at] >= 0] <= 1).all() and (group[kept_at:][group[kept_at:] >= 0] >= 2).all()
    starts = layout.clock[layout.first:layout.after][group >= 0]
    assert sorted(set(starts.tolist())) == [50, 150, 250, 325]  # each group's clock is its own part's start


def test_the_masks_lean_toward_the_busier_side_of_the_region_and_spread_by_time_where_one_side_is_empty():
    """A region between a busy bar (8 onsets a second) and a quiet one (1 a second): its first second gets more of
    the masks than its last (bench/infill.py: the fill began too busy and ended too quiet beside such music)."""
    busy = np.arange(0.0, 2.0, 0.125)  # 16 onsets in the 2 s before the region
    quiet = np.array([6.0, 7.0])  # 2 in the 2 s after it
    onset = np.concatenate([busy, quiet])
    kept = Performance.from_notes(onset, onset + 0.1, np.full(len(onset), 60), np.full(len(onset), 80))
    assert edge_densities(kept, 2.0, 6.0) == pytest.approx((8 / 4.5, EDGE_FLOOR))  # 1 / 4.5: under the floor
    layout = lay_out(kept, 2.0, 6.0, 120, MASK, notecodec)
    group = layout.group[layout.first:layout.after]
    sizes = np.bincount(group[group >= 0])
    assert layout.gap.tolist() == [100] * 4 and sizes.sum() == 120
    assert sizes[0] > 2 * sizes[-1] and np.all(np.diff(sizes) <= GROUP_UNIT["notes"])  # busy to quiet, in steps
    alone = _select(kept, kept.onset < 2.0)  # nothing after the region (a continuation's window): by time alone
    assert edge_densities(alone, 2.0, 6.0) is None
    sizes = np.bincount(lay_out(alone, 2.0, 6.0, 120, MASK, notecodec).group[layout.first:][:120])
    assert np.all(np.abs(sizes - 30) <= GROUP_UNIT["notes"])


def one_group(slots: int) -> tuple[Performance, float, float, object]:
    """Notes at 0, 2 and 4 s, and the layout of the region 1-2 s between them: one group of `slots` masks."""
    onset = np.array([0.0, 2.0, 4.0])
    kept = Performance.from_notes(onset, onset + 0.5, np.array([60, 62, 64]), np.array([80, 80, 80]))
    layout = lay_out(kept, 1.0, 2.0, slots, MASK, notecodec)
    assert layout.gap.tolist() == [100] and int(layout.masked.sum()) == slots
    return kept, 1.0, 2.0, layout


def test_a_masked_pitch_is_a_note_only_with_its_duration_at_the_time_its_group_wrote():
    kept, start, end, layout = one_group(8)
    fill = layout.ids.copy()
    fill[layout.masked] = [notecodec.VELOCITY + 10, notecodec.PITCH + 70, notecodec.DURATION + 20,  # a note
                           notecodec.PITCH + 72, notecodec.TIME_SHIFT + 9,  # a lone Pitch; 100 ms
                           notecodec.PITCH + 74, notecodec.DURATION + 5, notecodec.PITCH + 76]  # a note; a lone one
    new = new_notes(fill, layout, kept, start, end, np.ones(128, dtype=bool), None)
    assert new.pitch.tolist() == [70, 74] and new.velocity.tolist() == [tokenizer.bin_velocity(10)] * 2
    # two onsets 100 ms apart: their span (the last onset plus the mean gap, 200 ms) is spread over the 1 s gap
    assert new.onset.tolist() == pytest.approx([1.0, 1.5])
    lengths = notecodec.BIN_TICKS[[20, 5]] * TICK_SECONDS  # durations are the model's own, never scaled
    assert new.offset.tolist() == pytest.approx((new.onset + lengths).tolist())


def test_a_groups_onsets_fill_its_gap_as_the_model_spaced_them():
    kept, start, end, layout = one_group(8)
    fill = layout.ids.copy()
    fill[layout.masked] = [notecodec.PITCH + 70, notecodec.DURATION + 20, notecodec.TIME_SHIFT + 59,
                           notecodec.PITCH + 72, notecodec.DURATION + 5, notecodec.TIME_SHIFT + 59,
                           notecodec.PITCH + 74, notecodec.DURATION + 5]  # onsets 0.6 s apart: 1.2 s in a 1 s gap
    new = new_notes(fill, layout, kept, start, end, np.ones(128, dtype=bool), None)
    assert new.pitch.tolist() == [70, 72, 74]
    assert new.onset.tolist() == pytest.approx([1.0, 1.0 + 1 / 3, 1.0 + 2 / 3])  # span 1.8 s onto the 1 s gap
    # one onset: its time is kept, scaled back only where the group overran its gap (0.6 of 1.2 s written)
    fill[layout.masked] = [notecodec.TIME_SHIFT + 59, notecodec.PITCH + 70, notecodec.DURATION + 20,
                           notecodec.TIME_SHIFT + 59, notecodec.VELOCITY + 3, notecodec.VELOCITY + 4,
                           notecodec.VELOCITY + 5, notecodec.VELOCITY + 6]
    new = new_notes(fill, layout, kept, start, end, np.ones(128, dtype=bool), None)
    assert new.pitch.tolist() == [70] and new.onset.tolist() == pytest.approx([1.5])


def test_the_time_rule_offers_a_group_only_the_time_it_has_left():
    kept, start, end, layout = one_group(6)
    slots = np.flatnonzero(layout.masked)
    ids = torch.from_numpy(layout.ids)[None].repeat(2, 1)
    ids[0, slots[0]] = notecodec.TIME_SHIFT + 59  # lane 0 has written 60 ticks of its 100, lane 1 nothing
    lo = int(slots[1])  # a window after the first slot: what an earlier window wrote counts too
    view = ids[:, lo:]
    rule = time_rule(lambda logits, _ids: logits, layout, ids, lo, len(layout.ids))
    logits = rule(torch.zeros(2, view.shape[1], notecodec.VOCAB_SIZE), view)
    shifts = logits[:, slots[1:] - lo, notecodec.TIME_SHIFT:notecodec.TIME_SHIFT + notecodec.MAX_SHIFT_TICKS]
    allowed = torch.isfinite(shifts).all(1)  # (lanes, TimeShift lengths 1..100)
    assert allowed[0].nonzero().max().item() + 1 == 40 and allowed[1].all()
    assert torch.isfinite(logits[:, :, :notecodec.TIME_SHIFT]).all()  # nothing else is touched
    outside = np.setdiff1d(np.arange(view.shape[1]), slots[1:] - lo)
    assert torch.isfinite(logits[:, outside]).all()


# ---- training, infilling, the command ----------------------------------------------------------------------------

class Pieces:
    """The trainer's PieceData as SMDIMTraining reads it: pieces already encoded with the model's codec."""

    seed = 0

    def __init__(self, pieces: list[np.ndarray]):
        self.pieces = pieces

    def __len__(self) -> int:
        return len(self.pieces)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        return self.pieces[int(rng.integers(len(self.pieces)))]


@pytest.fixture(scope="module")
def trained(piece) -> tuple[SMDIM, list[float]]:
    """A tiny notes SMDIM trained 60 steps on windows of one piece's notes encoding, and its bound before/after."""
    torch.manual_seed(0)
    model = SMDIM(SMDIMConfig(**TINY))
    ids = notecodec.encode(piece).astype(np.int64)
    training = SMDIMTraining(model)
    training.start(Pieces([ids]), [list(range(8))], 8, 0, {})
    bounds = [training.piece_bound(ids, torch.device("cpu"))[0]]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        inputs, targets = training.batch(step, 0)
        assert inputs.shape == (8, TINY["window"]) and np.isin(inputs, ids).all()  # windows of the served ids
        batch = torch.from_numpy(targets)
        loss = training.loss(model, torch.from_numpy(inputs), batch, 0) / int((batch != notecodec.PAD).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    bounds.append(training.piece_bound(ids, torch.device("cpu"))[0])
    return model, bounds


def test_a_tiny_notes_smdim_trains_and_counts_its_bits_per_second_in_the_notes_codec(trained, piece):
    model, (before, after) = trained
    assert after < 0.8 * before
    ids = notecodec.encode(piece).astype(np.int64)
    training = SMDIMTraining(model)
    bound, count = training.piece_bound(ids, torch.device("cpu"))
    assert count == len(ids)
    seconds = float(notecodec.decode(ids).offset.max())  # the last note's end: the clock stops at the last onset
    assert notecodec.ids_seconds(ids) < seconds == pytest.approx(piece.offset.max(), abs=0.1)
    assert bits_per_second(training, [ids]) == pytest.approx(bound / math.log(2) / seconds)


@pytest.mark.parametrize("start,end,keep_above", [(3.0, 6.0, None), (0.0, 2.5, None), (9.5, 12.0, None),
                                                  (2.0, 8.0, 67)])
def test_a_trained_notes_smdim_infills_keeping_everything_outside_bit_for_bit(trained, piece, start, end,
                                                                               keep_above):
    model, _ = trained
    results = infill(model, piece, start, end, keep_above=keep_above, variations=3, seed=7)
    kept = ~region(piece, start, end) | (piece.pitch >= (keep_above if keep_above is not None else 128))
    longest = max(length_guard(_select(piece, kept)), notecodec.BIN_TICKS[0] * TICK_SECONDS)
    for result in results:
        assert notes(piece, kept) <= notes(result)
        new = notes(result) - notes(piece, kept)
        assert len(new) == len(result) - int(kept.sum())
        for onset, offset, pitch, _ in new:
            assert start <= onset < end and onset < offset <= end and offset - onset <= longest + 1e-6
            assert keep_above is None or pitch < keep_above
            held = [(a, b) for a, b, p, _ in notes(piece, kept) if p == pitch]
            assert not any(a <= onset + 1e-9 < b for a, b in held)  # never on a key a kept note holds
    assert sum(len(r) - int(kept.sum()) for r in results) > 0  # the trained model writes notes


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_runs_a_saved_notes_smdim(trained, piece, tmp_path, capsys):
    model, _ = trained
    folder = save_model(model, tmp_path / "notes-smdim", "# Tiny notes SMDIM\n\nTrained on one piece, for tests.\n")
    assert json.loads((folder / "config.json").read_text())["tokenizer"]["name"] == "notes"
    assert load_model(folder).config.codec == "notes"
    source = tmp_path / "piece.mid"
    write_performance(piece, source)
    before = source.read_bytes()
    out = tmp_path / "new.mid"
    assert main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(folder), "--out", str(out),
                 "--seed", "1", "--steps", "4"]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "(smdim, notes codec)" in printed and "the region holds" in printed
    original, written = read_performance(source), read_performance(out)
    assert np.allclose(sorted(notes(original, ~region(original, 3.0, 6.0))),
                       sorted(notes(written, ~region(written, 3.0, 6.0))), atol=2e-3)
    assert source.read_bytes() == before  # the input is never written


@pytest.mark.usefixtures("isolated_dirs")
def test_the_trainer_trains_a_notes_smdim_from_scratch_on_notes_windows_and_it_infills(tmp_path, piece, monkeypatch):
    from tests.test_train_data import write_folder
    from trainer.config import TrainConfig
    from trainer.loop import fine_tune

    seen: list[np.ndarray] = []
    batch = SMDIMTraining.batch

    def spy(self, step, micro):
        inputs, targets = batch(self, step, micro)
        seen.append(inputs)
        return inputs, targets

    monkeypatch.setattr(SMDIMTraining, "batch", spy)
    folder = write_folder(tmp_path / "midi", 6, notes=30)
    result = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "trained"), base=None, arch="smdim",
                                   size="tiny", model={"codec": "notes"}, steps=2, batch=2, workers=1,
                                   val_fraction=0.2))
    assert result.steps == 2 and result.best_perplexity is not None
    model = load_model(tmp_path / "trained")
    assert model.config.codec == "notes" and model.config.vocab_size == notecodec.VOCAB_SIZE
    ids = np.concatenate(seen).ravel()
    pitches = (ids >= notecodec.PITCH) & (ids < notecodec.DURATION)
    follows = ids[1:][pitches[:-1]]
    assert pitches.any() and np.mean((follows >= notecodec.DURATION) & (follows < notecodec.TIME_SHIFT)) > 0.9
    start, end = 3.0, 6.0
    for result in infill(model, piece, start, end, variations=2, seed=3):
        assert notes(result, ~region(result, start, end)) == notes(piece, ~region(piece, start, end))


# ---- open-ended writing: continuing and new pieces by the time rule ----------------------------------------------

def test_a_continuation_is_filled_window_by_window_in_real_time_after_the_primer(trained, piece):
    from core.denoising import MASKED_SHARE, ids_rate, recent_notes
    from core.session import GenerationSession

    model, _ = trained
    primer = notecodec.encode(piece.slice_time(0.0, 6.0), eos=False).astype(np.int64)
    begin = notecodec.ids_seconds(primer)
    recent = recent_notes(notecodec.decode(primer), begin)
    longest = length_guard(recent)
    session = GenerationSession(model, primer, seconds=3.0, variations=3, seed=5)
    finished = session.run()
    assert finished.reason == "done"
    rate = ids_rate(recent, begin, model.config.tokens_per_second)
    assert model.plan(session.plan.nbytes, 1).window * MASKED_SHARE / rate < 3.0  # more than one window was written
    held = piece.slice_time(0.0, 6.0)
    for lane, new in zip(session.lanes, session.new_parts(), strict=True):
        lane = np.asarray(lane, dtype=np.int64)
        assert notecodec.PAD not in lane and notecodec.EOS not in lane
        assert notecodec.ids_seconds(lane) == pytest.approx(3.0, abs=TICK_SECONDS)  # exactly the time asked
        assert len(new) and (new.onset >= begin - 1e-9).all() and (new.onset < begin + 3.0).all()
        for onset, key in zip(new.onset, new.pitch, strict=True):  # never on a key the primer still holds
            assert not ((held.pitch == key) & (held.onset <= onset) & (held.offset > onset + 1e-9)).any()
        shortest = notecodec.BIN_TICKS[0] * TICK_SECONDS
        assert (new.offset - new.onset).max() <= max(longest, shortest) + 1e-6  # no longer than the primer's
    again = GenerationSession(model, primer, seconds=3.0, variations=3, seed=5)
    again.run()
    assert again.lanes == session.lanes  # a seed makes it reproducible


def primer_recent(ids: np.ndarray):
    """(the primer's recent notes or None, where it ends): what a timed window reads of a primer's ids."""
    from core.denoising import recent_notes

    end = notecodec.ids_seconds(ids)
    return recent_notes(notecodec.decode(ids), end), end


def test_the_masks_of_a_window_follow_the_primers_ids_per_second():
    from core.denoising import RATE_NOTES, ids_rate

    onset = np.arange(40) * 0.25  # a note every 250 ms for 10 s: velocity once, then TimeShift, Pitch, Duration
    dense = Performance.from_notes(onset, onset + 0.2, np.full(40, 60) + np.arange(40) % 12, np.full(40, 80))
    ids = notecodec.encode(dense, eos=False).astype(np.int64)
    assert ids_rate(*primer_recent(ids), 99.0) == pytest.approx((len(ids) - 1) / notecodec.ids_seconds(ids))
    sparse = notecodec.encode(dense.slice_time(0.0, (RATE_NOTES - 1) * 0.25), eos=False).astype(np.int64)
    assert ids_rate(*primer_recent(sparse), 99.0) == 99.0  # too few notes to tell: the model's own rate
    assert ids_rate(*primer_recent(np.array([notecodec.BOS])), 40.0) == 40.0  # a new piece


def test_a_timed_windows_notes_last_no_longer_than_the_primers_recent_notes():
    from core.infill import LONGEST_FLOOR, LONGEST_QUANTILE

    def primer_longest(ids: np.ndarray) -> float | None:  # what a timed window reads: the recent notes' guard
        recent, _ = primer_recent(ids)
        return None if recent is None else length_guard(recent)

    onset = np.arange(40) * 0.5
    lengths = np.where(np.arange(40) % 10 == 0, 3.0, 0.4)  # a long note in ten, the rest 0.4 s
    piece = Performance.from_notes(onset, onset + lengths, np.full(40, 60) + np.arange(40) % 12, np.full(40, 80))
    ids = notecodec.encode(piece, eos=False).astype(np.int64)
    recent = lengths[onset >= onset[-1] - 20.0]
    assert primer_longest(ids) == pytest.approx(float(np.quantile(recent, LONGEST_QUANTILE)), abs=0.02)
    assert 0.4 <= primer_longest(ids) < 3.0  # one note in ten held long does not set it
    staccato = Performance.from_notes(onset, onset + 0.05, piece.pitch, piece.velocity)
    assert primer_longest(notecodec.encode(staccato, eos=False).astype(np.int64)) == LONGEST_FLOOR
    assert primer_longest(np.array([notecodec.BOS])) is None  # a new piece: the model's own lengths


def test_a_new_piece_fills_the_seconds_asked_in_every_lane(trained):
    from core.session import GenerationSession

    model, _ = trained
    session = GenerationSession(model, None, seconds=2.0, variations=2, seed=1)
    session.run()
    for lane, notes_written in zip(session.lanes, session.pieces(), strict=True):
        assert notecodec.ids_seconds(np.asarray(lane)) == pytest.approx(2.0, abs=TICK_SECONDS)
        assert len(notes_written) and notes_written.onset.max() < 2.0


def test_a_density_sets_a_timed_windows_notes_and_polyphony_is_refused(trained, piece):
    from core.constraints import Constraints
    from core.denoising import MASKED_SHARE
    from core.errors import ModelError
    from core.session import GenerationSession

    model, _ = trained
    primer = notecodec.encode(piece.slice_time(0.0, 6.0), eos=False).astype(np.int64)
    written = {}
    for density in (1.0, 6.0):
        session = GenerationSession(model, primer, seconds=3.0, variations=2, seed=2,
                                    constraints=Constraints.parse(density=density))
        session.run()
        written[density] = [len(part) for part in session.new_parts()]
        windows = math.ceil(3.0 / (model.plan(session.plan.nbytes, 1).window * MASKED_SHARE / (density * 4)))
        assert all(0 < count <= math.ceil(density * 3.0) + windows for count in written[density]), (written, windows)
    assert sum(written[1.0]) < sum(written[6.0])
    with pytest.raises(ModelError, match="density limits, not polyphony"):
        GenerationSession(model, primer, seconds=3.0, constraints=Constraints.parse(max_polyphony=3))
    with pytest.raises(ModelError, match="not density or polyphony"):  # may end early: its length is its own
        GenerationSession(model, primer, seconds=3.0, allow_end=True, constraints=Constraints.parse(density=2.0))
