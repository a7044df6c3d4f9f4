"""The sounding-notes input (issue #17): the codec's own idea of which notes sound, given to DSMR and PerceiverS
with every id, computed the same way by training, prefill and the lean step, carried in the state, and off by
default."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.errors import BudgetError, ModelError
from core.midi import read_performance
from core.modeldir import load_model, read_config, save_model
from core.models.dsmr import DSMR, DSMRConfig
from core.models.layers import PITCHES, sounding_after, sounding_notes, sounding_step
from core.models.perceivers import PerceiverS, PerceiverSConfig, state_bytes
from core.models.perceivers.crops import collate, crop_ending_at, split_sounding
from core.tokenizer import BOS, EOS, NOTE_OFF, NOTE_ON, Decoder, encode
from tests.conftest import PIANO_PIECE
from tests.test_dsmr import SEGMENT, piece_ids, segment_forward, stepped, tiny


def with_input(**overrides) -> DSMR:
    """A tiny DSMR with the input on and a random (non-zero) projection, so that the input changes the logits."""
    model = tiny(sounding_input=True, **overrides)
    with torch.no_grad():
        model.sounding.weight.normal_(0.0, 0.5)
    return model


def notes_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    """Ids over a few pitches, so notes start, re-strike and end often; BOS first."""
    generator = torch.Generator().manual_seed(seed)
    choices = torch.tensor([NOTE_ON + 60, NOTE_ON + 64, NOTE_ON + 67, NOTE_OFF + 60, NOTE_OFF + 64, NOTE_OFF + 67,
                            NOTE_OFF + 70, 259, 300, 370])
    ids = choices[torch.randint(len(choices), (batch, length), generator=generator)]
    ids[:, 0] = BOS
    return ids


def test_the_sounding_set_is_the_decoders(one_thread):
    """After every id of a real piece, the set is the pitches the codec's decoder holds sounding."""
    ids = encode(read_performance(PIANO_PIECE)).astype(np.int64)
    decoder, expected = Decoder(), []
    for token in ids.tolist():
        decoder.feed(token)
        expected.append([pitch in decoder.sounding for pitch in range(PITCHES)])
    found = sounding_notes(torch.from_numpy(ids)[None])[0]
    assert torch.equal(found, torch.tensor(expected))
    assert found.any(1).float().mean() > 0.5  # a piano piece: something sounds most of the time


@pytest.mark.parametrize("chunk", [1, 7, 64, 299])
def test_a_long_run_of_ids_is_read_a_chunk_at_a_time_with_the_same_final_set(chunk, monkeypatch):
    from core.models import layers

    ids = notes_ids(3, 300, seed=2)
    ids[0, 5], ids[2, 200] = EOS, BOS  # an end inside the first chunk, a new piece inside a later one
    start = torch.rand(3, PITCHES, generator=torch.Generator().manual_seed(1)) < 0.3
    whole = sounding_after(ids, start)
    monkeypatch.setattr(layers, "SOUNDING_CHUNK", chunk)
    assert torch.equal(sounding_after(ids, start), whole)
    assert torch.equal(sounding_after(ids), sounding_notes(ids)[:, -1])


def test_vectorised_final_and_stepwise_sets_agree():
    ids = notes_ids(3, 300)
    ids[1, 100], ids[2, 150] = BOS, EOS  # a new piece, an end: nothing sounds after either
    start = torch.rand(3, PITCHES, generator=torch.Generator().manual_seed(0)) < 0.3
    every = sounding_notes(ids, start)
    assert not every[1, 100].any() and not every[2, 150].any()
    assert not every[:, 0].any()  # BOS first: what `start` held is over
    assert torch.equal(sounding_after(ids, start), every[:, -1])
    state = start.clone()
    for t in range(ids.shape[1]):
        sounding_step(state, ids[:, t])
        assert torch.equal(state, every[:, t]), t
    assert torch.equal(sounding_notes(ids[:, 120:], every[:, 119]), every[:, 120:])  # a chunk goes on from its start


def test_zero_projection_gives_the_model_without_it_exactly(one_thread):
    plain = tiny()
    added = tiny(sounding_input=True)
    missing, unexpected = added.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["sounding.weight"] and not unexpected and not added.sounding.weight.any()
    ids = notes_ids(2, 3 * SEGMENT + 3)
    plan, plan_added = plain.plan("64KB", batch=2), added.plan("64KB", batch=2)
    assert torch.equal(segment_forward(added, ids, added.new_state(plan_added)),
                       segment_forward(plain, ids, plain.new_state(plan)))
    assert torch.equal(stepped(added, ids, added.new_state(plan_added)), stepped(plain, ids, plain.new_state(plan)))


@pytest.mark.parametrize("make_ids", [notes_ids, piece_ids])
def test_step_reproduces_segment_forward_with_the_input(make_ids, one_thread):
    """The sounding set crosses segment boundaries in training's state exactly as the step carries it."""
    model = with_input()
    plan = model.plan("64KB", batch=3)
    ids = make_ids(3, 6 * SEGMENT + 5)
    ids[1, 27] = BOS
    ids[2, 3 * SEGMENT] = BOS
    reference_state = model.new_state(plan)
    reference = segment_forward(model, ids, reference_state)
    state = model.new_state(plan)
    incremental = stepped(model, ids, state)
    assert torch.allclose(incremental, reference, atol=1e-4), (incremental - reference).abs().max()
    assert torch.equal(state.sounding, reference_state.sounding)
    assert torch.equal(state.sounding, sounding_notes(ids)[:, -1])
    with torch.no_grad():
        model.sounding.weight.zero_()
    assert not torch.allclose(segment_forward(model, ids, model.new_state(plan)), reference, atol=1e-2)  # it is used


def test_prefill_equals_stepping_short_and_skipped(one_thread):
    """Prefill reads the set like stepping; a long primer whose head is skipped still leaves its set."""
    model = with_input(trained_horizons=[6, 2, 2, 2])
    plan = model.plan("64KB", batch=2)
    ids = notes_ids(2, 12 * SEGMENT + 3)
    ids[:, 1:5] = torch.tensor([NOTE_ON + 40, NOTE_ON + 41, NOTE_ON + 42, 259])  # held from the start, never ended
    probe = model.new_state(plan)
    assert model._skip(ids, probe) > 0  # the primer is long enough to be skipped into
    for length in (SEGMENT + 3, ids.shape[1]):
        by_step, by_prefill = model.new_state(plan), model.new_state(plan)
        last = stepped(model, ids[:, :length], by_step)[:, -1]
        with torch.no_grad():
            logits = model.prefill(ids[:, :length], by_prefill)
        assert torch.allclose(logits, last, atol=1e-4)
        assert torch.equal(by_prefill.sounding, by_step.sounding)
        assert by_prefill.sounding[:, 40:43].all()


def test_int8_step_with_the_input_stays_close(one_thread):
    model = with_input(d_model=64, n_heads=4)
    plan = model.plan("64KB", batch=2)
    ids = notes_ids(2, 3 * SEGMENT + 2)
    exact = stepped(model, ids, model.new_state(plan)).softmax(-1)
    model.use_step_weights("int8")
    assert (stepped(model, ids, model.new_state(plan)).softmax(-1) - exact).abs().max() < 2e-3


def test_state_bytes_count_the_sounding_set_and_plans_must_match():
    plain, model = tiny(), with_input()
    plan = model.plan("64KB", batch=3)
    state = model.new_state(plan)
    assert state.nbytes == plan.nbytes <= 64 * 1024
    assert plan.horizons == plain.plan("64KB", batch=3).horizons
    assert plan.nbytes == plain.plan("64KB", batch=3).nbytes + 3 * PITCHES
    state.sounding[1, 60] = True
    state.reset(1)
    assert not state.sounding.any()
    with pytest.raises(BudgetError, match="sounding"):
        model.new_state(plain.plan("64KB", batch=3))
    with pytest.raises(BudgetError, match="sounding"):
        plain.new_state(plan)


def test_model_directories_record_the_input(tmp_path):
    old = tiny().config.to_dict()
    del old["sounding_input"]  # a directory written before the input existed
    assert DSMRConfig.from_dict(old).sounding_input is False
    with pytest.raises(ModelError, match="sounding_input"):
        DSMRConfig.from_dict({**old, "sounding_input": 1})
    model = with_input()
    path = save_model(model, tmp_path / "m", "# test\n")
    assert read_config(path)["config"]["sounding_input"] is True
    loaded = load_model(path)
    assert torch.equal(loaded.sounding.weight, model.sounding.weight)


def fine_tune_with_and_without_the_input(base, tmp_path):
    """Fine-tune `base` (a model directory without the input) 4 steps as it is and with the input added: both
    start at the same held-out perplexity, the added run trains the projection and records the input. -> the
    folder trained on."""
    from tests.test_train_data import write_folder
    from trainer.config import TrainConfig
    from trainer.loop import fine_tune, with_added_inputs

    folder = write_folder(tmp_path / "midi", 6, notes=30)
    runs = {}
    for name, model in (("plain", {}), ("added", {"sounding_input": True})):
        runs[name] = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / name), base=str(base), steps=4,
                                           batch=2, lr=2e-2, val_every=4, workers=1, val_fraction=0.2,
                                           model=model, seed=0))
    assert runs["added"].initial_perplexity == runs["plain"].initial_perplexity, runs
    assert runs["added"].best_perplexity < runs["added"].initial_perplexity, runs
    tuned = load_model(tmp_path / "added")
    assert tuned.config.sounding_input and tuned.sounding.weight.any()
    assert load_model(tmp_path / "plain").config.sounding_input is False
    assert with_added_inputs(tuned, {"sounding_input": True}) is tuned  # already there: the same model
    return folder


def test_fine_tuning_adds_the_input_to_a_base_without_it(tmp_path, isolated_dirs):
    """A run over an old model may turn the input on: it starts exactly where the base was (same held-out
    perplexity before the first step), trains the new projection, and records the input in the new directory."""
    from trainer.config import TrainConfig
    from trainer.loop import fine_tune

    torch.manual_seed(0)
    base = save_model(DSMR(DSMRConfig(d_model=16, n_layers=2, n_heads=2, segment_len=32, max_horizon=64, n_long=1,
                                      default_budget="64KB")), tmp_path / "base", "# base\n")
    folder = fine_tune_with_and_without_the_input(base, tmp_path)
    with pytest.raises(ModelError, match="from scratch"):
        fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "wider"), base=str(base), steps=1,
                              model={"d_model": 32}, workers=1))


# ---- PerceiverS: the same sets on every id its cross-attentions read and on its latents ---------------------------

PERCEIVERS = dict(context=24, latents=8, scale=5, d_model=16, n_heads=2, n_layers=2)


def perceivers(sounding: bool = True, **overrides) -> PerceiverS:
    """A tiny PerceiverS; with the input, its projection random (non-zero), so that the sets change the logits."""
    torch.manual_seed(0)
    model = PerceiverS(PerceiverSConfig(**{**PERCEIVERS, **overrides}, sounding_input=sounding)).eval()
    if sounding:
        with torch.no_grad():
            model.sounding.weight.normal_(0.0, 0.5)
    return model


def stepped_perceivers(model: PerceiverS, ids: torch.Tensor, state) -> torch.Tensor:
    return torch.stack([model.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)


def test_perceivers_zero_projection_gives_the_model_without_it_exactly(one_thread):
    plain = perceivers(sounding=False)
    added = PerceiverS(replace(plain.config, sounding_input=True)).eval()
    missing, unexpected = added.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["sounding.weight"] and not unexpected and not added.sounding.weight.any()
    ids = notes_ids(2, 40)
    before = sounding_after(notes_ids(2, 9, seed=5))
    assert torch.equal(added(ids[:, 10:34], sounding=before)[0], plain(ids[:, 10:34])[0])
    plan, plan_added = plain.plan("1MB", batch=2), added.plan("1MB", batch=2)
    assert torch.equal(stepped_perceivers(added, ids, added.new_state(plan_added)),
                       stepped_perceivers(plain, ids, plain.new_state(plan)))


def test_perceivers_step_equals_the_crop_forward_with_its_sets(one_thread):
    """Each step's logits are the forward's on the crop its latent window reads, given the notes sounding before
    the crop; without them (what a crop that forgot the piece's start would see) they are not."""
    model = perceivers()
    state = model.new_state(model.plan("1MB", batch=2))
    ids = notes_ids(2, 70 + model.config.latents)  # the crop of the last window reaches past the 70 read
    ids[:, 1:4] = torch.tensor([NOTE_ON + 40, NOTE_ON + 41, 259])  # held from the start, never ended
    forgot = 0
    for t in range(70):
        logits = model.step(ids[:, t], state)
        first, end = int(state.context_start[0]), int(state.start[0]) + model.config.latents
        crop = ids[:, first:end]
        before = sounding_after(ids[:, :first]) if first else None
        assert torch.allclose(logits, model(crop, sounding=before)[0][:, t - end], atol=1e-5), t
        forgot += first > 0 and not torch.allclose(logits, model(crop)[0][:, t - end], atol=1e-3)
    assert forgot > 20
    assert torch.equal(state.sounding, sounding_notes(ids[:, :70])[:, -1]) and state.sounding[:, 40:42].all()


@pytest.mark.parametrize("context", [8, 13, 24], ids=["M", "between", "N"])
def test_perceivers_prefill_of_a_long_primer_keeps_its_sets(context, one_thread):
    """A prefill skips most of a long primer (no latents for it), yet leaves the sets, the next window's anchor
    and the logits stepping leaves, for lanes in step and out of step."""
    model = perceivers(context=context)
    plan = model.plan(state_bytes(2, context, 8, 5, 2, 16, 4, sounding=True), batch=2)
    assert plan.context == context
    ids = notes_ids(2, 97)
    ids[:, 1:4] = torch.tensor([NOTE_ON + 40, NOTE_ON + 41, 259])
    for out_of_step in (False, True):
        by_step, by_prefill = model.new_state(plan), model.new_state(plan)
        if out_of_step:  # lane 1 three ids ahead: the lanes prefill in two phases
            for state in (by_step, by_prefill):
                model.prefill(ids[:, :3], state)
                state.reset(0)
        expected = stepped_perceivers(model, ids, by_step)[:, -1]
        assert torch.allclose(model.prefill(ids, by_prefill), expected, atol=1e-5)
        assert torch.equal(by_prefill.sounding, by_step.sounding) and torch.equal(by_prefill.anchor, by_step.anchor)
        assert torch.equal(by_prefill.start, by_step.start)
        assert by_prefill.sounding[:, 40:42].all()
        after = model.step(ids[:, 5], by_prefill), model.step(ids[:, 5], by_step)
        assert torch.allclose(*after, atol=1e-5)
    probe = model.new_state(plan)
    assert model._skip(model._packed(), ids, probe, None) > 0  # the primer is long enough to be skipped into


def test_perceivers_state_bytes_count_the_sets_and_plans_must_match():
    plain, model = perceivers(sounding=False), perceivers()
    plan = model.plan("64KB", batch=3)
    state = model.new_state(plan)
    assert state.nbytes == plan.nbytes <= 64 * 1024
    assert plan.nbytes == state_bytes(3, plan.context, 8, 5, 2, 16, 4) + 3 * 2 * PITCHES
    state.sounding[1, 60] = state.anchor[1, 61] = True
    state.reset(1)
    assert not state.sounding.any() and not state.anchor.any()
    with pytest.raises(BudgetError, match="sounding"):
        model.new_state(plain.plan("64KB", batch=3))
    with pytest.raises(BudgetError, match="sounding"):
        plain.new_state(plan)


def test_perceivers_model_directories_record_the_input(tmp_path):
    old = perceivers(sounding=False).config.to_dict()
    del old["sounding_input"]  # a directory written before the input existed
    assert PerceiverSConfig.from_dict(old).sounding_input is False
    with pytest.raises(ModelError, match="sounding_input"):
        PerceiverSConfig.from_dict({**old, "sounding_input": "yes"})
    model = perceivers()
    path = save_model(model, tmp_path / "m", "# test\n")
    assert read_config(path)["config"]["sounding_input"] is True
    assert torch.equal(load_model(path).sounding.weight, model.sounding.weight)


def test_perceivers_training_crops_carry_the_sets_before_them(one_thread):
    """A crop from inside a piece starts with the piece's notes still sounding: training reads them as generation
    does (the crop's sets after its ids, split off again by the loss)."""
    from core.models.perceivers.training import PerceiverSTraining

    piece = notes_ids(1, 200)[0].numpy()
    piece[1:3] = [NOTE_ON + 40, 259]
    sets = sounding_notes(torch.from_numpy(piece)[None])[0]
    crop = crop_ending_at(piece, 150, 24, 8, sounding=True)
    assert np.array_equal(crop.sounding, sets[150 - 24 - 2].numpy()) and crop.sounding[40]
    assert crop_ending_at(piece, 20, 24, 8, sounding=True).sounding.sum() == 0  # from BOS: nothing before
    assert crop_ending_at(piece, 150, 24, 8).sounding is None
    inputs, targets = collate([crop, crop_ending_at(piece, 60, 24, 8, sounding=True)])
    assert inputs.shape == (2, 24 + PITCHES)
    ids, before = split_sounding(torch.from_numpy(inputs))
    assert torch.equal(ids, torch.from_numpy(inputs[:, :24])) and torch.equal(before[0], torch.from_numpy(crop.sounding))
    model = perceivers(context=24)
    training = PerceiverSTraining(model)
    with torch.no_grad():
        loss = training.loss(model, torch.from_numpy(inputs), torch.from_numpy(targets), 0)
        logits = model(ids, sounding=before)[0]
        unaware = model(ids)[0]
    targets = torch.from_numpy(targets)
    assert torch.allclose(loss, F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum"))
    assert not torch.allclose(loss, F.cross_entropy(unaware.flatten(0, 1), targets.flatten(), reduction="sum"))
    with torch.no_grad():  # held-out crops and the piece's own windows: the same sets, the same numbers
        nats = torch.cat([n for n, _ in training.piece_losses(torch.from_numpy(piece), "1MB")])
        nll, count = training.held_out([piece], 0, 4, torch.device("cpu"))
    assert count == len(nats) == len(piece) - 1 and abs(nll - float(nats.sum())) < 1e-3


def test_perceivers_fine_tuning_adds_the_input_to_a_base_without_it(tmp_path, isolated_dirs):
    """A run over a PerceiverS without the input may turn it on: at step 0 the grown model gives the base's logits
    and held-out perplexity; the run trains the projection and records the input."""
    from trainer.loop import with_added_inputs

    torch.manual_seed(0)
    base_model = PerceiverS(PerceiverSConfig(context=48, latents=16, scale=24, d_model=16, n_heads=2, n_layers=2,
                                             default_budget="1MB"))
    base = save_model(base_model, tmp_path / "base", "# base\n")
    grown = with_added_inputs(load_model(base).eval(), {"sounding_input": True})
    assert grown.config.sounding_input and not grown.sounding.weight.any()
    ids = notes_ids(2, 48)
    before = sounding_after(notes_ids(2, 20, seed=3))
    assert torch.equal(grown(ids, sounding=before)[0], base_model.eval()(ids)[0])
    fine_tune_with_and_without_the_input(base, tmp_path)
