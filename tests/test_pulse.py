"""The pulse pull (core/pulse.py): the beat of the primer's last PULSE_SECONDS and where its onsets fall in it, as a
prior on a left-to-right continuation's TimeShifts: it chooses when the next note comes, never whether time moves
on; a new piece, or a primer with no beat, gets none; 0 turns it off; a bad weight is one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import musicstats, notecodec, tokenizer
from core.cli import main
from core.midi import Performance, read_performance, write_performance
from core.pulse import (
    LEFT_TO_RIGHT_WEIGHT,
    PULSE_SECONDS,
    SMOOTHING,
    PrimerPulse,
    PulseError,
    default_weight,
    phase_shares,
)
from core.tokenizer import TICK_SECONDS
from tests.test_infill import tiny
from tests.test_metrics import tiny_dsmr_of

pytestmark = pytest.mark.usefixtures("one_thread")


def beats(start: float, end: float, period: float = 0.5, pitches: tuple[int, ...] = (48, 60, 64)) -> Performance:
    """A chord on every beat of `period` seconds over [start, end), and a single note half way between each two."""
    on_beat = np.arange(start, end, period)
    off_beat = on_beat[:-1] + period / 2
    onset = np.r_[np.repeat(on_beat, len(pitches)), off_beat]
    pitch = np.r_[np.tile(np.array(pitches), len(on_beat)), np.full(len(off_beat), 67)]
    return Performance.from_notes(onset, onset + period * 0.4, pitch, np.full(len(onset), 70))


def shift_ids(codec) -> slice:
    return slice(codec.TIME_SHIFT, codec.TIME_SHIFT + codec.MAX_SHIFT_TICKS)


def test_phase_shares_peak_where_the_onsets_fall_and_rule_none_out():
    shares = phase_shares(np.array([0, 50, 100, 150, 25, 75]), np.array([1.0, 1, 1, 1, 0.5, 0.5]), 50)
    assert shares.shape == (50,) and shares.sum() == pytest.approx(1.0)
    assert shares.argmax() == 0 and shares[25] > shares[12]  # the weaker off-beat is still a peak
    assert shares.min() >= SMOOTHING / 50  # a phase no onset had keeps a little weight
    assert phase_shares(np.array([], dtype=np.int64), np.array([]), 50) is None


@pytest.mark.parametrize("codec", [notecodec, tokenizer])
def test_a_continuation_is_pulled_towards_the_primers_beat_and_its_phases(codec):
    """After a primer with a chord every 0.5 s (and a note half way), a lane standing on a beat is pulled to land
    on the next half beat; the TimeShifts together stay as likely as the model made them, every other id is
    untouched, and each lane follows its own clock."""
    primer_notes = beats(0.0, 12.0)
    primer = codec.encode(primer_notes, eos=False)
    period = musicstats.beat_period(primer_notes, 0.0, codec.ids_seconds(primer))
    pulse = PrimerPulse(codec, primer, batch=2, weight=2.0)
    assert pulse.active and pulse.period * TICK_SECONDS == pytest.approx(period)
    logits = torch.randn(2, codec.VOCAB_SIZE, generator=torch.Generator().manual_seed(0))
    pulled = pulse.pull(logits)
    shifts = shift_ids(codec)
    outside = torch.ones(codec.VOCAB_SIZE, dtype=torch.bool)
    outside[shifts] = False
    assert torch.equal(pulled[:, outside], logits[:, outside])  # which note, whether a note: unchanged
    assert torch.allclose(torch.logsumexp(pulled[:, shifts], -1), torch.logsumexp(logits[:, shifts], -1))
    gained = (pulled - logits)[:, shifts]  # per TimeShift of 1..100 ticks
    end_tick = pulse.tick[0]
    landing = (end_tick + torch.arange(1, codec.MAX_SHIFT_TICKS + 1)) % pulse.period
    on_grid = (landing % (pulse.period // 2)) == 0
    assert gained[0, on_grid].min() > gained[0, ~on_grid].max()  # on a beat or half way, never between
    pulse.read(np.array([codec.TIME_SHIFT + 9, tokenizer.BOS]))  # lane 0 moves 10 ticks, lane 1 stays
    assert pulse.tick.tolist() == [end_tick + 10, end_tick]
    moved = (pulse.pull(logits) - logits)[:, shifts]
    # the same grid, 10 ticks nearer (up to the constant that renormalises each lane)
    same = moved[0, :-10] - gained[0, 10:]
    assert torch.allclose(same, same[0].expand_as(same), atol=1e-4)
    assert torch.allclose(moved[1], gained[1], atol=1e-5)


@pytest.mark.parametrize("codec", [notecodec, tokenizer])
def test_no_primer_no_beat_or_weight_0_is_no_pull(codec):
    logits = torch.randn(2, codec.VOCAB_SIZE)
    steady = codec.encode(beats(0.0, 8.0), eos=False)
    one_note = codec.encode(Performance.from_notes(np.array([0.0]), np.array([3.0]), np.array([60]),
                                                   np.array([70])), eos=False)
    for ids, weight in ((np.array([codec.BOS]), 1.0), (steady, 0.0), (one_note, 1.0)):
        pulse = PrimerPulse(codec, ids, batch=2, weight=weight)
        assert not pulse.active and pulse.pull(logits) is logits


def test_only_the_primers_last_pulse_seconds_set_the_beat():
    """A slow beat long before the primer's end counts for nothing: the last PULSE_SECONDS are a fast one."""
    slow = beats(0.0, 30.0, period=1.2, pitches=(40,))
    fast = beats(30.0, 30.0 + PULSE_SECONDS, period=0.4)
    primer = Performance.concat(slow, fast)
    pulse = PrimerPulse(notecodec, notecodec.encode(primer, eos=False), batch=1, weight=1.0)
    assert pulse.period == 40


@pytest.mark.parametrize("weight", [-1.0, float("nan"), float("inf"), "1"])
def test_a_bad_weight_is_one_clear_error(weight):
    with pytest.raises(PulseError, match="pulse weight must be a number >= 0"):
        PrimerPulse(notecodec, np.array([notecodec.BOS]), batch=1, weight=weight)


def test_each_family_has_its_own_default_pull():
    """A left-to-right model gets the pull by default; a denoiser none, and asking for it is one clear error."""
    from core.errors import ModelError
    from core.session import GenerationSession

    assert default_weight(tiny_dsmr_of("notes")) == LEFT_TO_RIGHT_WEIGHT > 0
    denoiser = tiny(codec="notes")
    assert default_weight(denoiser) == 0.0  # its time steps are unmasked in any order
    primer = beats(0.0, 6.0)
    assert GenerationSession(denoiser, primer, seconds=2.0).pulse == 0.0
    assert GenerationSession(denoiser, primer, seconds=2.0, pulse=0.0).pulse == 0.0
    with pytest.raises(ModelError, match="pull towards the primer's beat is for left-to-right models"):
        GenerationSession(denoiser, primer, seconds=2.0, pulse=2.0)


@pytest.mark.parametrize("codec", ["notes", "performance"])
def test_a_strong_pull_puts_an_untrained_models_onsets_on_the_primers_grid(codec):
    """An untrained model starts its notes anywhere; pulled hard, on the primer's beat and half beat."""
    from core.codecs import codec_named
    from core.generate import generate, prepare_primer

    model = tiny_dsmr_of(codec)
    module = codec_named(codec)
    primer_notes = beats(0.0, 6.0)
    primer = prepare_primer(module.encode(primer_notes, eos=False), module.VOCAB_SIZE)
    end = module.ids_seconds(primer.numpy())

    def phases(pulse: float) -> np.ndarray:
        state = model.new_state(model.plan(1 << 20, 3), 3)
        lanes = np.stack(list(generate(model, primer, state, seed=3, max_tokens=400, max_seconds=6.0,
                                       stop_at_eos=False, pulse=pulse)), axis=1)
        notes = module.decode_continuations(primer.numpy(), list(lanes), with_primer=False)
        onsets = np.concatenate([piece.onset for piece in notes])
        onsets = onsets[onsets > end + 1e-6]  # a chord's later notes at the primer's last instant have no shift
        return np.round(onsets / TICK_SECONDS).astype(np.int64) % 25  # 0: on a beat or half way

    free = phases(0.0)
    assert len(free) and (free != 0).mean() > 0.5
    pulled = phases(50.0)
    assert len(pulled) and (pulled == 0).all()
    with pytest.raises(PulseError):
        next(generate(model, primer, model.new_state(model.plan(1 << 20, 1), 1), max_tokens=5, pulse=-1.0))


def test_recital_continue_pulls_towards_the_primers_beat_by_default(tiny_model_dir, tmp_path, capsys, isolated_dirs):
    primer = tmp_path / "primer.mid"
    write_performance(beats(0.0, 6.0), primer)

    def onsets(*flags: str) -> list[float]:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.mid"
        assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "3", "--seed", "4",
                     "--no-adapt", "--out", str(out), *flags]) == 0
        return read_performance(out).onset.tolist()

    plain = onsets()
    assert plain == onsets("--pulse", f"{LEFT_TO_RIGHT_WEIGHT}")  # pulled towards the primer's beat by default
    assert onsets("--pulse", "0") != onsets("--pulse", "50")
    with pytest.raises(SystemExit) as stop:
        main(["continue", str(primer), "--model", str(tiny_model_dir), "--pulse", "-1", "--out",
              str(tmp_path / "x.mid")])
    assert stop.value.code != 0 and "--pulse: must be >= 0 (0: off), got -1" in capsys.readouterr().err
