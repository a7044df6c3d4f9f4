"""Sampling filters and the generate() engine: limits, seeds, batches, and primers longer than the memory."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.errors import ModelError
from core.generate import (
    SamplingConfig,
    apply_temperature,
    generate,
    min_p_filter,
    prepare_primer,
    sample,
    top_k_filter,
    top_p_filter,
)
from core.modeldir import load_model
from core.tokenizer import BOS, EOS, NOTE_OFF, NOTE_ON, PAD, TIME_SHIFT, VOCAB_SIZE

PROBS = torch.tensor([[0.5, 0.25, 0.15, 0.1]])
LOGITS = PROBS.log()


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits[0]).nonzero()[:, 0].tolist()


def test_filters_are_pure_and_keep_what_they_should():
    before = LOGITS.clone()
    assert kept(top_k_filter(LOGITS, 2)) == [0, 1]
    assert kept(top_k_filter(LOGITS, 0)) == [0, 1, 2, 3]
    assert kept(top_p_filter(LOGITS, 0.5)) == [0]
    assert kept(top_p_filter(LOGITS, 0.7)) == [0, 1]
    assert kept(top_p_filter(LOGITS, 0.01)) == [0]
    assert kept(top_p_filter(LOGITS, 1.0)) == [0, 1, 2, 3]
    assert kept(min_p_filter(LOGITS, 0.4)) == [0, 1]  # 0.15 < 0.4 * 0.5 <= 0.25
    assert torch.allclose(apply_temperature(LOGITS, 0.5).softmax(-1)[0, 0], torch.tensor(0.25 / 0.345), atol=1e-4)
    assert torch.equal(LOGITS, before)


def test_top_p_keeps_the_nucleus_in_any_order():
    shuffled = LOGITS[:, [2, 0, 3, 1]]  # probabilities 0.15, 0.5, 0.1, 0.25
    assert kept(top_p_filter(shuffled, 0.7)) == [1, 3]


def test_greedy_and_sampling_config_checks():
    assert sample(LOGITS, SamplingConfig(temperature=0)).tolist() == [0]
    for bad in (dict(temperature=-1), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=1.0),
                dict(temperature=math.nan)):
        with pytest.raises(ModelError):
            SamplingConfig(**bad)


def test_primer_gets_bos_and_loses_a_final_eos():
    assert prepare_primer(None, VOCAB_SIZE).tolist() == [BOS]
    assert prepare_primer([BOS, 5, 6, EOS], VOCAB_SIZE).tolist() == [BOS, 5, 6]
    assert prepare_primer(np.array([5, 6], dtype=np.uint16), VOCAB_SIZE).tolist() == [BOS, 5, 6]
    with pytest.raises(ModelError, match="one piece"):
        prepare_primer([BOS, 5, EOS, 6], VOCAB_SIZE)
    with pytest.raises(ModelError, match="lie in"):
        prepare_primer([BOS, VOCAB_SIZE], VOCAB_SIZE)


class Scripted(torch.nn.Module):
    """A model that always predicts the same id per lane (to test the stream's limits on their own)."""

    arch = "scripted"

    def __init__(self, favourites: list[int]):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=VOCAB_SIZE, default_budget=1024)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.favourites = torch.tensor(favourites)
        self.steps = 0

    def plan(self, budget_bytes, batch=1):
        return SimpleNamespace(nbytes=0, batch=batch, describe=lambda: "scripted")

    def new_state(self, plan, batch=None):
        return SimpleNamespace(batch=plan.batch, nbytes=0, reset=lambda lane: None)

    def _logits(self):
        logits = torch.full((len(self.favourites), VOCAB_SIZE), -30.0)
        logits[torch.arange(len(self.favourites)), self.favourites] = 30.0
        return logits

    def prefill(self, ids, state):
        return self._logits()

    def step(self, ids, state):
        self.steps += 1
        return self._logits()


def stream(model, primer=None, budget=1, sampling=None, batch=1, state=None, **limits):
    """The engine over a prepared primer and a fresh state (what a GenerationSession does)."""
    state = state or model.new_state(model.plan(budget, batch), batch)
    return generate(model, prepare_primer(primer, VOCAB_SIZE), state, sampling, **limits)


def ids(model, primer=None, budget=1, sampling=None, **limits) -> list[int]:
    """One lane's ids as ints; every step is an array (B,) whatever the batch."""
    out = list(stream(model, primer, budget, sampling, **limits))
    assert all(isinstance(step, np.ndarray) and step.shape == (1,) and step.dtype == np.int64 for step in out)
    return [int(step[0]) for step in out]


def test_max_seconds_counts_time_shifts_per_lane():
    second, half = TIME_SHIFT + 99, TIME_SHIFT + 49
    out = list(stream(Scripted([second, half]), max_seconds=3, batch=2))
    assert len(out) == 6  # lane 0 is done after 3 shifts of 1 s, lane 1 after 6 of 0.5 s
    assert [int(t[0]) for t in out] == [second] * 3 + [PAD] * 3
    assert all(int(t[1]) == half for t in out) and out[0].shape == (2,)


def test_eos_stops_and_max_tokens_limits():
    model = Scripted([EOS])
    assert ids(model) == [EOS]
    assert model.steps == 0  # nothing is computed after the last id
    assert ids(Scripted([NOTE_ON + 60]), max_tokens=5) == [NOTE_ON + 60] * 5
    kept_going = ids(Scripted([EOS]), max_tokens=4, stop_at_eos=False, seed=0)
    assert len(kept_going) == 4 and EOS not in kept_going  # the model may not end the piece


def test_pad_and_bos_are_never_drawn():
    for favourite in (PAD, BOS):
        drawn = ids(Scripted([favourite]), max_tokens=50, seed=0)
        assert len(drawn) <= 50 and PAD not in drawn and BOS not in drawn


def test_caller_can_stop_between_tokens():
    steps = stream(Scripted([NOTE_ON + 60]))  # no limit at all
    assert [int(next(steps)[0]) for _ in range(3)] == [NOTE_ON + 60] * 3
    steps.close()


def test_seed_makes_it_reproducible(tiny_model_dir):
    model = load_model(tiny_model_dir)
    sampling = SamplingConfig(temperature=1.0, top_p=0.95)
    first = ids(model, [BOS, NOTE_ON + 60], "256KB", sampling, max_tokens=30, seed=7)
    again = ids(model, [BOS, NOTE_ON + 60], "256KB", sampling, max_tokens=30, seed=7)
    other = ids(model, [BOS, NOTE_ON + 60], "256KB", sampling, max_tokens=30, seed=8)
    assert first == again and first != other


def test_greedy_stream_follows_the_model_and_variations_differ(tiny_model_dir):
    model = load_model(tiny_model_dir)
    primer = [BOS, NOTE_ON + 60, TIME_SHIFT + 20]
    greedy = ids(model, primer, "256KB", SamplingConfig(temperature=0), max_tokens=20, stop_at_eos=False)
    state = model.new_state(model.plan("256KB"))
    with torch.no_grad():
        logits = model.prefill(torch.tensor([primer]), state)
        expected = []
        for _ in range(20):
            token = logits.argmax(-1)
            expected.append(int(token))
            logits = model.step(token, state)
    assert greedy == expected
    batch = list(stream(model, primer, "256KB", SamplingConfig(), max_tokens=40, batch=3, seed=1,
                        stop_at_eos=False))
    lanes = np.stack(batch, axis=1)  # (3, 40)
    assert lanes.shape == (3, 40) and len({tuple(lane) for lane in lanes}) == 3


def test_primer_longer_than_memory_is_streamed_through(tiny_model_dir):
    model = load_model(tiny_model_dir)
    plan = model.plan("64KB")
    memory = max(plan.horizons) + plan.segment_len
    primer = [BOS] + [NOTE_ON + 40 + i % 40 for i in range(3 * memory)]
    state = model.new_state(plan)
    out = list(stream(model, primer, max_tokens=1, state=state))
    assert len(out) == 1
    assert state.positions.tolist() == [len(primer)]  # every primer id was read, none dropped
    assert state.nbytes <= 64 * 1024


def test_fast_step_is_close_to_exact_and_exact_is_exact(tiny_model_dir):
    from core.generate import use_fast_step

    model = load_model(tiny_model_dir)
    ids = torch.tensor([[1, 60, 300, 190, 62]])

    def last_logits():
        state = model.new_state(model.plan(None, 1), 1)
        with torch.no_grad():
            model.prefill(ids[:, :-1], state)
            return model.step(ids[:, -1], state)

    with torch.no_grad():
        reference = model.forward(ids, model.new_state(model.plan(None, 1), 1))[:, -1]
    use_fast_step(model)
    fast = last_logits()
    use_fast_step(model, exact=True)
    exact = last_logits()
    torch.testing.assert_close(exact, reference, atol=1e-4, rtol=0)
    assert not torch.equal(fast, exact)  # int8 really is in use
    torch.testing.assert_close(fast.softmax(-1), exact.softmax(-1), atol=5e-3, rtol=0)


def test_a_note_held_too_long_is_released():
    """A model that keeps a note on and only moves time (as one would that forgot the note): the generator ends
    the note once it has sounded max_note_seconds, and the model reads that NoteOff."""
    one_second = TIME_SHIFT + 99
    model = Scripted([one_second])
    out = ids(model, [BOS, NOTE_ON + 60, NOTE_ON + 64, one_second, NOTE_OFF + 64], max_tokens=8,
              max_note_seconds=3.0)
    # pitch 60 started at 0 s; after 3 s of new time shifts (4 s in all) it is released, once
    assert out[:3] == [one_second] * 3 and out[3] == NOTE_OFF + 60 and out[4:] == [one_second] * 4
    assert ids(Scripted([one_second]), [BOS, NOTE_ON + 60], max_tokens=8, max_note_seconds=None) == [one_second] * 8
