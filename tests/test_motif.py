"""The motif memory (core/motif.py): what it matches, what it remembers, how it mixes, where it is on."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import notecodec
from core.midi import Performance, read_performance, write_performance
from core.motif import (
    MAX_MATCH,
    PITCH_SHARES,
    WEIGHT,
    LaneMotifs,
    MotifError,
    MotifMemory,
    default_weight,
    share_of,
)
from tests.test_infill import tiny
from tests.test_metrics import tiny_dsmr_of

PITCHES = slice(notecodec.PITCH, notecodec.PITCH + 128)
SHIFTS = slice(notecodec.TIME_SHIFT, notecodec.TIME_SHIFT + notecodec.MAX_SHIFT_TICKS)


def lane_of(notes: Performance) -> LaneMotifs:
    lane = LaneMotifs()
    for token in notecodec.encode(notes, eos=False):
        lane.read(int(token))
    return lane


def melody(pitches, gap: float = 0.25) -> Performance:
    onset = np.arange(len(pitches)) * gap
    return Performance.from_notes(onset, onset + 0.2, np.asarray(pitches), np.full(len(pitches), 70))


def longest_common_run(steps: list[int], j: int, n: int) -> int:
    """Intervals the runs into notes j and n share (brute force; the first note has none)."""
    length = 0
    while j - length >= 1 and n - length >= 1 and steps[j - length] == steps[n - length] and length < MAX_MATCH:
        length += 1
    return length


def test_the_runs_matched_one_note_at_a_time_are_the_longest_common_runs():
    rng = np.random.default_rng(0)
    pitches = 60 + np.cumsum(rng.choice([-2, 2, 3], size=150))  # few intervals: many runs repeat
    lane = LaneMotifs()
    for n, pitch in enumerate(pitches):
        lane._note(int(pitch))
        steps = [None] + list(np.diff(pitches[:n + 1]))
        assert [int(m) for m in lane.match[:n]] == [longest_common_run(steps, j, n) for j in range(n)]


def test_a_figure_played_again_a_step_lower_is_remembered_there_within_the_pieces_register():
    figure = [60, 64, 67, 64, 72, 67]
    lane = lane_of(melody(figure + [58, 62, 65, 62]))  # the figure again, a tone lower, four notes in
    remembered = lane.predict()
    assert remembered.match == 3  # the three intervals into the last note: +4, +3, -3
    assert remembered.pitch is not None and int(np.argmax(remembered.pitch)) == 70  # 72 a tone lower
    assert remembered.pitch[70] == 1.0
    higher = lane_of(melody(figure + [62, 66, 69, 66])).predict()  # a tone higher, it would go to 74: above the
    assert higher.match == 3 and higher.pitch is None  # piece's highest note, where a rising sequence climbs on
    assert lane_of(melody([60, 61, 63, 66])).predict().pitch is None  # no interval comes twice: nothing


def test_of_the_longest_matches_the_figure_at_its_own_pitch_wins_over_a_transposition():
    figure = [60, 64, 67, 64]
    lane = lane_of(melody(figure + [59, 63, 66, 65] + [57, 61, 64, 62] + [60, 64, 67]))
    remembered = lane.predict()  # the run +4 +3 was played at 60 (then 64), at 59 (then -1), at 57 (then -2)
    assert remembered.match == 2 and remembered.pitch is not None and remembered.pitch[64] == 1.0


def test_the_gap_after_a_remembered_note_is_remembered_and_a_gap_begun_is_not():
    onsets = np.array([0.0, 0.5, 0.6, 1.1, 1.2, 1.7])  # long, short, long, short ...
    pitches = np.array([60, 62, 60, 62, 60, 62])
    lane = lane_of(Performance.from_notes(onsets, onsets + 0.05, pitches, np.full(6, 70)))
    remembered = lane.predict()
    # the last note (62 after 60) follows the run of notes 1 and 3, after which the next onset came 10 ticks later
    assert remembered.gap is not None and int(np.argmax(remembered.gap)) + 1 == 10
    lane.read(notecodec.TIME_SHIFT + 4)  # a gap begun: its length is the model's to finish
    assert lane.predict().gap is None and lane.predict().pitch is not None


def test_the_mixture_keeps_each_kinds_mass_and_leaves_the_other_ids_alone():
    primer = notecodec.encode(melody([60, 64, 67, 60, 64, 67, 60, 64]), eos=False)
    memory = MotifMemory(notecodec, primer, batch=2)
    torch.manual_seed(0)
    logits = torch.randn(2, notecodec.VOCAB_SIZE) * 3
    mixed = memory.mix(logits)
    before, after = torch.log_softmax(logits, -1), torch.log_softmax(mixed, -1)
    for ids in (PITCHES, SHIFTS):  # which pitch and when: the kind's mass is the model's
        assert torch.allclose(torch.logsumexp(after[:, ids], -1), torch.logsumexp(before[:, ids], -1), atol=1e-5)
    others = torch.ones(notecodec.VOCAB_SIZE, dtype=torch.bool)
    others[PITCHES] = others[SHIFTS] = False
    assert torch.allclose(after[:, others], before[:, others], atol=1e-5)
    remembered = notecodec.PITCH + 67  # after 60 64 comes 67
    share = share_of(memory.lanes[0].predict().match, PITCH_SHARES)
    assert share > 0
    kind_mass = before[:, PITCHES].exp().sum(-1)
    expected = (1 - share) * before[:, remembered].exp() + share * kind_mass
    assert torch.allclose(after[:, remembered].exp(), expected, atol=1e-6)
    weaker = MotifMemory(notecodec, primer, batch=2, weight=0.5).mix(logits)
    assert (before[:, remembered] < torch.log_softmax(weaker, -1)[:, remembered]).all()
    assert (torch.log_softmax(weaker, -1)[:, remembered] < after[:, remembered]).all()


def test_no_weight_no_codec_no_memory_and_no_match_leave_the_logits_as_they_are():
    from core import tokenizer

    logits = torch.randn(1, notecodec.VOCAB_SIZE)
    primer = notecodec.encode(melody([60, 64, 67, 60, 64]), eos=False)
    assert not MotifMemory(notecodec, primer, 1, weight=0.0).active
    assert MotifMemory(notecodec, primer, 1, weight=0.0).mix(logits) is logits
    assert not MotifMemory(tokenizer, tokenizer.encode(melody([60, 64]), eos=False), 1).active
    fresh = MotifMemory(notecodec, np.array([notecodec.BOS]), 1)
    assert fresh.active and fresh.mix(logits) is logits  # nothing played yet: nothing remembered


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "1"])
def test_a_bad_weight_is_one_clear_error(weight):
    with pytest.raises(MotifError, match="motif weight must be a number from 0 to 1"):
        MotifMemory(notecodec, np.array([notecodec.BOS]), 1, weight)


def test_each_model_has_its_own_default_and_a_denoiser_refuses_the_memory():
    from core.errors import ModelError
    from core.session import GenerationSession

    primer = melody([60, 64, 67, 60, 64, 67])
    ids = notecodec.encode(primer, eos=False)
    model = tiny_dsmr_of("notes")
    assert default_weight(model, ids) == WEIGHT > 0
    assert default_weight(model) == default_weight(model, np.array([notecodec.BOS])) == 0.0  # a new piece: none
    assert GenerationSession(model, primer, seconds=2.0).motifs == WEIGHT
    assert GenerationSession(model, None, seconds=2.0).motifs == 0.0
    assert GenerationSession(model, None, seconds=2.0, motifs=0.5).motifs == 0.5  # asked for: given
    assert default_weight(tiny_dsmr_of("performance"), ids) == 0.0  # it reads the notes codec's ids only
    with pytest.raises(ModelError, match="motif memory reads the notes codec's ids; this model's codec is 'perf"):
        GenerationSession(tiny_dsmr_of("performance"), primer, seconds=2.0, motifs=1.0)  # asked for: never skipped
    denoiser = tiny(codec="notes")
    assert default_weight(denoiser, ids) == 0.0
    assert GenerationSession(denoiser, primer, seconds=2.0).motifs == 0.0
    with pytest.raises(ModelError, match="motif memory is for left-to-right models"):
        GenerationSession(denoiser, primer, seconds=2.0, motifs=1.0)


def test_with_the_memory_a_continuation_goes_on_with_the_figure_the_primer_repeats():
    """An untrained model draws its first pitch at random; with the memory (the primer's figure matched on every
    interval of it), most lanes go on with the figure's next note."""
    from core.generate import generate, prepare_primer

    model = tiny_dsmr_of("notes")
    figure = [48, 55, 60, 64, 60, 55]
    primer = prepare_primer(notecodec.encode(melody(figure * 6, gap=0.2), eos=False), notecodec.VOCAB_SIZE)

    def first_pitches(motifs: float) -> list[int]:
        state = model.new_state(model.plan(1 << 20, 16), 16)
        lanes = np.stack(list(generate(model, primer, state, seed=5, max_tokens=12, stop_at_eos=False,
                                       motifs=motifs)), axis=1)
        return [next(int(t) - notecodec.PITCH for t in lane if PITCHES.start <= t < PITCHES.stop) for lane in lanes
                if any(PITCHES.start <= t < PITCHES.stop for t in lane)]

    remembered, free = first_pitches(1.0), first_pitches(0.0)
    assert len(remembered) >= 12 and np.mean(np.array(remembered) == 48) > 0.5  # the share at a long match: 0.75
    assert np.mean(np.array(free) == 48) < 0.2


def test_the_truth_with_the_memory_is_scored_as_the_generator_reads_it_id_by_id():
    """`truth_bits` mixes each position with what the memories hold there (the context cache, then the motifs) and
    only then reads the id: scored with them one id ahead (the truth's own next note remembered), the bits would
    fall far lower."""
    from bench import continuation
    from core.budget import default_budget
    from core.contextcache import ContextCache

    model = tiny_dsmr_of("notes")
    piece = melody([60, 64, 67, 64] * 12, gap=0.25)
    excerpt = continuation.cut("piece", piece, continuation.Windows(primer=6.0, truth=6.0)).coded(notecodec)
    ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
    first = len(excerpt.primer_ids) - 1
    with torch.inference_mode():
        logits = model.read(torch.as_tensor(ids[None, :-1]),
                            model.new_state(model.plan(default_budget(model, 1), 1), 1))[0].float()
    memory = MotifMemory(notecodec, ids[:first + 1], 1, 1.0)
    cache = ContextCache(model, notecodec, 1, 1.0)
    cache.remember(logits[:first].numpy(), ids[1:first + 1])
    nats = 0.0
    for t in range(first, len(ids) - 1):
        nats -= float(torch.log_softmax(memory.mix(cache.mix(logits[t:t + 1])), -1)[0, ids[t + 1]])
        memory.read(ids[t + 1:t + 2])
        cache.read(ids[t + 1:t + 2])
    bits = continuation.truth_bits(model, excerpt, 6.0, motifs=1.0)
    assert bits.remembered == pytest.approx(nats / np.log(2) / 6.0, rel=1e-5)
    assert bits.remembered < 0.6 * bits.model  # the figure repeats: remembered, it costs far less
    assert continuation.truth_bits(model, excerpt, 6.0).remembered == pytest.approx(bits.model, rel=1e-6)


def test_recital_continue_remembers_the_primers_motifs_by_default(tmp_path, capsys, isolated_dirs):
    from core.cli import main
    from core.modeldir import save_model

    model_dir = save_model(tiny_dsmr_of("notes"), tmp_path / "tiny-notes", "# Tiny notes model\n\nFor tests.\n")
    primer = tmp_path / "primer.mid"
    write_performance(melody([48, 55, 60, 64, 60, 55] * 5, gap=0.2), primer)

    def pitches(*flags: str) -> list[int]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.mid"
        assert main(["continue", str(primer), "--model", str(model_dir), "--seconds", "3", "--seed", "4",
                     "--no-adapt", "--out", str(out), *flags]) == 0
        return read_performance(out).pitch.tolist()

    assert pitches() == pitches("--motifs", f"{WEIGHT}")
    assert pitches("--motifs", "0") != pitches("--motifs", "1")
    with pytest.raises(SystemExit) as stop:
        main(["continue", str(primer), "--model", str(model_dir), "--motifs", "2", "--out", str(tmp_path / "x.mid")])
    assert stop.value.code != 0 and "--motifs: must be from 0 to 1 (0: off), got 2" in capsys.readouterr().err


def test_a_lane_remembers_its_last_notes_only_and_a_long_primer_is_read_from_its_tail(monkeypatch):
    """The memory is bounded (each note costs a pass over it): a lane keeps its last MEMORY_NOTES notes and still
    recalls the figure they repeat; a primer of more notes is read from where its last MEMORY_NOTES begin."""
    from core import motif

    monkeypatch.setattr(motif, "MEMORY_NOTES", 64)
    figure = [60, 64, 67, 72, 67, 64]
    lane = lane_of(melody([48, 50, 53] * 10 + figure * 40 + figure[:3]))
    assert 64 <= len(lane.pitch) <= 80 and len(lane.match) == len(lane.step) == len(lane.next_gap) == len(lane.pitch)
    remembered = lane.predict()
    assert remembered.match == motif.MAX_MATCH and remembered.pitch[72] == 1.0
    assert remembered.gap is not None and int(np.argmax(remembered.gap)) + 1 == 25  # every 0.25 s
    ids = notecodec.encode(melody([48, 50, 53] * 10 + figure * 40 + figure[:3]), eos=False)
    memory = MotifMemory(notecodec, ids, 2)
    assert all(len(lane.pitch) == 64 for lane in memory.lanes)  # exactly the last 64 of 273 notes read
    assert memory.lanes[0].predict().pitch[72] == 1.0


def test_a_note_just_struck_is_remembered_to_end_with_the_notes_still_sounding():
    """A chord held 2 s (the pedal down), a note struck 0.5 s in: its length is likeliest the chord's 1.5 s left,
    mixed into the Duration ids at END_SHARE (their mass the model's); once its Duration is read, nothing."""
    from core.motif import DURATION_IDS, END_SHARE

    chord = Performance.from_notes(np.array([0.0, 0.0, 0.0, 0.5]), np.array([2.0, 2.0, 2.0, 0.7]),
                                   np.array([48, 55, 64, 67]), np.full(4, 70))
    ids = notecodec.encode(chord, eos=False)
    struck = int(np.flatnonzero(ids == notecodec.PITCH + 67)[0])
    lane = LaneMotifs()
    for token in ids[:struck + 1]:
        lane.read(int(token))
    remembered = lane.predict().duration
    left = int(notecodec.duration_bin(np.array([150]))[0])  # 1.5 s in ticks
    assert remembered is not None and int(np.argmax(remembered)) == left and remembered[left] > 0.6
    memory = MotifMemory(notecodec, ids[:struck + 1], batch=1)
    logits = torch.randn(1, notecodec.VOCAB_SIZE)
    before, after = torch.log_softmax(logits, -1), torch.log_softmax(memory.mix(logits), -1)
    mass = before[0, DURATION_IDS].exp().sum()
    assert torch.allclose(after[0, DURATION_IDS].exp().sum(), mass, atol=1e-5)
    expected = (1 - END_SHARE) * before[0, DURATION_IDS.start + left].exp() + END_SHARE * mass * remembered[left]
    assert torch.allclose(after[0, DURATION_IDS.start + left].exp(), expected, atol=1e-6)
    lane.read(int(ids[struck + 1]))  # its Duration
    assert lane.predict().duration is None
