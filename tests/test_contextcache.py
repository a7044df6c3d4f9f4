"""The context cache (core/contextcache.py): its keys, what it holds, how it mixes, and the primer read for it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import contextcache, notecodec
from core.contextcache import KINDS, SHARES, ContextCache, Moments, Unembedding
from core.generate import generate, prepare_primer, read_primer
from core.models.perceivers import PerceiverS, PerceiverSConfig
from tests.test_metrics import tiny_dsmr_of
from tests.test_motif import melody


def tiny_perceivers_notes() -> PerceiverS:
    torch.manual_seed(0)
    return PerceiverS(PerceiverSConfig(context=64, latents=16, scale=32, d_model=32, n_heads=2, n_layers=1,
                                       codec="notes", default_budget="1MB")).eval()


def primer_ids(repeats: int = 4) -> torch.Tensor:
    return prepare_primer(notecodec.encode(melody([60, 64, 67, 72, 67, 64] * repeats, gap=0.2), eos=False),
                          notecodec.VOCAB_SIZE)


@pytest.mark.parametrize("make", [lambda: tiny_dsmr_of("notes"), tiny_perceivers_notes])
def test_the_keys_are_the_hidden_states_the_output_layer_read(make):
    """The logits less their mean, read back through the centred output layer, are the normed hidden state."""
    model = make()
    seen = []
    hook = model.head.register_forward_hook(lambda module, inputs, output: seen.append((inputs[0], output)))
    ids = primer_ids()[None, :60]  # within the PerceiverS's context
    with torch.no_grad():
        model(ids, model.new_state(model.plan(None, 1), 1)) if model.arch == "dsmr" else model(ids)
    hook.remove()
    hidden, logits = (x.reshape(-1, x.shape[-1]) for x in seen[0])
    keys = Unembedding(model.output_weight())(torch.log_softmax(logits, -1).numpy())
    truth = torch.nn.functional.normalize(hidden, dim=-1).numpy()
    assert len(keys) > 10 and np.abs((keys * truth).sum(-1) - 1).max() < 1e-3


def test_moments_keep_the_last_capacity_ids_in_order(monkeypatch):
    monkeypatch.setattr(contextcache, "CAPACITY", 8)
    moments = Moments(2)
    for i in range(30):
        moments.add(np.full((1, 2), i, np.float32), np.array([i]))
        assert len(moments.next) <= 10 and list(moments.next) == list(range(i + 1 - len(moments.next), i + 1))
        assert (moments.keys[:, 0] == moments.next).all()
    moments.add(np.arange(40, dtype=np.float32)[:, None].repeat(2, 1), np.arange(100, 140))  # more than it holds
    assert list(moments.next) == list(range(132, 140))


def cache_of(model, rows: np.ndarray, after: list[int], batch: int = 2, weight: float = 1.0) -> ContextCache:
    cache = ContextCache(model, notecodec, batch, weight)
    cache.remember(rows, np.array(after))
    return cache


def test_the_mixture_follows_the_likest_moment_and_keeps_each_kinds_mass():
    model = tiny_dsmr_of("notes")
    torch.manual_seed(1)
    rows = torch.randn(3, notecodec.VOCAB_SIZE) * 3  # three moments, far apart
    pitch, other_pitch, duration = notecodec.PITCH + 60, notecodec.PITCH + 64, notecodec.DURATION + 5
    cache = cache_of(model, rows.numpy(), [pitch, other_pitch, duration])
    logits = rows[:1].repeat(2, 1)  # both lanes are at the first moment again
    before, after = torch.log_softmax(logits, -1), torch.log_softmax(cache.mix(logits), -1)
    for ids in KINDS:
        assert torch.allclose(torch.logsumexp(after[:, ids], -1), torch.logsumexp(before[:, ids], -1), atol=1e-5)
    specials = slice(0, notecodec.PITCH)
    assert torch.allclose(after[:, specials], before[:, specials], atol=1e-5)
    pitches = before[:, KINDS[0]].exp().sum(-1)
    top = SHARES[0, -1]  # the likest moment is this one: the highest bucket
    expected = (1 - top) * before[:, pitch].exp() + top * pitches  # its next pitch takes (almost) all the share
    assert torch.allclose(after[:, pitch].exp(), expected, rtol=1e-3)
    assert after[0, other_pitch] < before[0, other_pitch]  # another moment's pitch, far less alike: not raised
    durations = before[:, KINDS[1]].exp().sum(-1)  # the only duration held, whatever the likeness
    expected = (1 - SHARES[1, -1]) * before[:, duration].exp() + SHARES[1, -1] * durations
    assert torch.allclose(after[:, duration].exp(), expected, rtol=1e-3)
    half = torch.log_softmax(cache_of(model, rows.numpy(), [pitch, other_pitch, duration], weight=0.5).mix(logits), -1)
    assert (before[:, pitch] < half[:, pitch]).all() and (half[:, pitch] < after[:, pitch]).all()


def test_each_lane_remembers_what_it_drew_and_nothing_held_leaves_the_logits():
    from core import tokenizer

    model = tiny_dsmr_of("notes")
    logits = torch.randn(2, notecodec.VOCAB_SIZE)
    assert not ContextCache(model, notecodec, 2, 0.0).active
    assert ContextCache(model, notecodec, 2, 0.0).mix(logits) is logits
    assert not ContextCache(model, tokenizer, 2, 1.0).active
    cache = ContextCache(model, notecodec, 2, 1.0)
    assert torch.allclose(cache.mix(logits), torch.log_softmax(logits, -1), atol=1e-6)  # nothing held yet
    cache.read(np.array([notecodec.PITCH + 60, notecodec.PITCH + 62]))
    assert [list(lane.next) for lane in cache.lanes] == [[notecodec.PITCH + 60], [notecodec.PITCH + 62]]
    mixed = torch.log_softmax(cache.mix(logits), -1)  # each lane's own moment, at cosine 1
    assert mixed[0, notecodec.PITCH + 60] > torch.log_softmax(logits, -1)[0, notecodec.PITCH + 60]
    assert mixed[1, notecodec.PITCH + 62] > torch.log_softmax(logits, -1)[1, notecodec.PITCH + 62]
    assert torch.allclose(mixed[0, notecodec.PITCH + 62], torch.log_softmax(logits, -1)[0, notecodec.PITCH + 62]
                          + np.log(1 - SHARES[0, -1]), atol=1e-5)  # lane 0 never drew 62


@pytest.mark.parametrize("make", [lambda: tiny_dsmr_of("notes"), tiny_perceivers_notes])
def test_the_primer_read_for_the_cache_leaves_the_model_where_prefill_does(make, monkeypatch):
    """Read for the cache (its tail a chunk at a time, the rest prefilled), a primer gives the logits and the state
    that `prefill` gives, and the cache holds the tail's moments with the ids that followed them."""
    monkeypatch.setattr(contextcache, "CAPACITY", 20)
    monkeypatch.setattr("core.generate.CAPACITY", 20)
    monkeypatch.setattr("core.generate.READ_CHUNK", 7)
    model = make()
    primer = primer_ids(repeats=6)  # 100+ ids: prefill, then 21 read in chunks of 7
    plan = model.plan(None, 2)
    plain, cached = model.new_state(plan, 2), model.new_state(plan, 2)
    cache = ContextCache(model, notecodec, 2, 1.0)
    with torch.no_grad():
        expected = model.prefill(primer[None].expand(2, -1), plain)
        got = read_primer(model, primer, cached, 2, cache)
        assert torch.allclose(got, expected, atol=1e-4)
        step = torch.full((2,), notecodec.PITCH + 60)
        assert torch.allclose(model.step(step, cached), model.step(step, plain), atol=1e-4)
    assert list(cache.primer.next) == primer[-20:].tolist()


def test_a_continuation_with_the_memories_is_reproducible_and_reads_a_long_primer(monkeypatch):
    monkeypatch.setattr("core.generate.CAPACITY", 16)
    model = tiny_dsmr_of("notes")
    primer = primer_ids(repeats=6)

    def lanes(motifs: float) -> np.ndarray:
        state = model.new_state(model.plan(1 << 20, 3), 3)
        return np.stack(list(generate(model, primer, state, seed=3, max_tokens=40, stop_at_eos=False,
                                      motifs=motifs)), axis=1)

    first, again = lanes(1.0), lanes(1.0)
    assert (first == again).all() and first.shape == (3, 40)
    assert not (first == lanes(0.0)).all()  # the memories change what is drawn
