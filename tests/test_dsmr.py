"""DSMR: incremental generation sees exactly what training saw, memory horizons bound what is remembered."""

from __future__ import annotations

import pytest
import torch

from core.errors import BudgetError, ModelError
from core.models.dsmr import DSMR, DSMRConfig, segment_loss
from core.tokenizer import BOS, PAD

SEGMENT = 8


def tiny(**overrides) -> DSMR:
    torch.manual_seed(0)
    config = dict(d_model=32, n_layers=4, n_heads=4, segment_len=SEGMENT, max_horizon=64, n_long=1,
                  long_ratio=3.0, default_budget="64KB")
    config.update(overrides)
    return DSMR(DSMRConfig(**config)).eval()


def piece_ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 391, (batch, length), generator=generator)
    ids[:, 0] = BOS
    return ids


def segment_forward(model: DSMR, ids: torch.Tensor, state) -> torch.Tensor:
    """The training path: one segment at a time, with gradients on."""
    with torch.enable_grad():
        out = [model(ids[:, i:i + SEGMENT], state) for i in range(0, ids.shape[1], SEGMENT)]
    return torch.cat(out, dim=1).detach()


def stepped(model: DSMR, ids: torch.Tensor, state) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model.step(ids[:, i], state) for i in range(ids.shape[1])], dim=1)


@pytest.mark.parametrize("schedule", ["two_scale", "uniform", [20, 9, 3, 0]])
def test_step_reproduces_segment_forward_across_boundaries_and_resets(schedule):
    model = tiny()
    plan = model.plan("64KB", batch=3, schedule=schedule)
    assert len(set(plan.horizons)) > 1 or schedule == "uniform"
    ids = piece_ids(3, 6 * SEGMENT + 5)  # six boundaries and a partial segment
    ids[1, 27] = BOS  # lane 1: a new piece starts in the middle of a segment
    ids[2, 3 * SEGMENT] = BOS  # lane 2: a new piece starts on a segment boundary
    reference = segment_forward(model, ids, model.new_state(plan))
    incremental = stepped(model, ids, model.new_state(plan))
    assert torch.allclose(incremental, reference, atol=1e-4), (incremental - reference).abs().max()

    # The reset lane forgot its first piece: it reads its second piece as a fresh state would.
    fresh = model.plan("64KB", batch=1, schedule=list(plan.horizons))
    alone = stepped(model, ids[2:, 3 * SEGMENT:], model.new_state(fresh))
    assert torch.allclose(incremental[2, 3 * SEGMENT:], alone[0], atol=1e-4)


def test_prefill_equals_stepping_and_leaves_the_same_state():
    model = tiny()
    plan = model.plan("64KB", batch=2)
    ids = piece_ids(2, 3 * SEGMENT + 3)
    by_step, by_prefill = model.new_state(plan), model.new_state(plan)
    last = stepped(model, ids, by_step)[:, -1]
    with torch.no_grad():
        logits = model.prefill(ids, by_prefill)
    assert torch.allclose(logits, last, atol=1e-4)
    assert by_step.fill == by_prefill.fill and torch.equal(by_step.positions, by_prefill.positions)
    after = piece_ids(2, 2, seed=5)[:, 1]
    with torch.no_grad():
        assert torch.allclose(model.step(after, by_step), model.step(after, by_prefill), atol=1e-4)


def test_explicit_reset_of_one_lane():
    model = tiny()
    plan = model.plan("64KB", batch=2)
    ids = piece_ids(2, 2 * SEGMENT, seed=3)
    state = model.new_state(plan)
    stepped(model, ids, state)
    state.reset(0)
    other = piece_ids(2, SEGMENT + 4, seed=4)
    continued = stepped(model, other, state)
    fresh = stepped(model, other[:1], model.new_state(model.plan("64KB", schedule=list(plan.horizons))))
    assert torch.allclose(continued[0], fresh[0], atol=1e-4)
    assert not torch.allclose(continued[1], fresh[0], atol=1e-2)  # lane 1 still remembers its piece


def test_horizon_bounds_what_a_segment_remembers():
    model = tiny()
    ids = piece_ids(1, 2 * SEGMENT)
    changed = ids.clone()
    changed[0, 3] = 77 if ids[0, 3] != 77 else 78  # alter a token of the first segment

    def second_segment(plan, tokens):
        return stepped(model, tokens, model.new_state(plan))[0, SEGMENT:]

    no_memory = model.plan("64KB", schedule=[0, 0, 0, 0])
    assert torch.equal(second_segment(no_memory, ids), second_segment(no_memory, changed))
    memory = model.plan("64KB", schedule=[SEGMENT, 0, 0, 0])
    assert not torch.allclose(second_segment(memory, ids), second_segment(memory, changed))


def test_positions_continue_across_segments():
    model = tiny()
    state = model.new_state(model.plan("64KB"))
    stepped(model, piece_ids(1, 2 * SEGMENT + 3), state)
    assert state.positions.tolist() == [2 * SEGMENT + 3] and state.fill == 3


def test_training_memory_is_detached_and_loss_ignores_pad():
    model = tiny().train()
    state = model.new_state(model.plan("64KB", batch=2))
    ids = piece_ids(2, 3 * SEGMENT + 1)
    for start in range(0, 3 * SEGMENT, SEGMENT):
        logits = model(ids[:, start:start + SEGMENT], state)
        targets = ids[:, start + 1:start + SEGMENT + 1].clone()
        loss = segment_loss(logits, targets)
        loss.backward()  # would fail if the memory still held the previous segment's graph
        assert not any(k.requires_grad for k in state.keys)
    targets[:, 2:] = PAD
    expected = torch.nn.functional.cross_entropy(logits[:, :2].reshape(-1, 391), targets[:, :2].reshape(-1))
    assert torch.allclose(segment_loss(logits, targets), expected)
    assert len(model._causal) == 1  # the causal mask was built once for this segment length


def test_state_bytes_fit_the_budget_and_plans_must_match():
    model = tiny()
    plan = model.plan()
    state = model.new_state(plan)
    assert state.nbytes == plan.nbytes <= 64 * 1024
    with pytest.raises(BudgetError, match="batch"):
        model.new_state(plan, batch=2)
    with pytest.raises(BudgetError, match="at least"):
        model.plan("1KB")


def test_bad_calls_are_the_same_model_errors_as_perceivers():
    """A wrong shape or an id outside the vocabulary is a ModelError (an out-of-range id used to crash inside
    the embedding with an IndexError), before the state is touched."""
    model = tiny()
    state = model.new_state(model.plan("64KB", batch=2))
    for call, ids in ((model.step, torch.tensor([[3, 4]])), (model.step, torch.tensor([3, 391])),
                      (model.prefill, torch.zeros(1, 4, dtype=torch.long)),
                      (model.prefill, torch.zeros(2, 0, dtype=torch.long)),
                      (model.read, torch.full((2, 3), -1)), (model.step, torch.tensor([3, 4, 5]))):
        with pytest.raises(ModelError):
            call(ids, state)
    assert state.fill == 0 and not state.valid.any()


def test_plans_say_what_each_layer_remembers():
    model = tiny(trained_horizons=[16, 4, 4, 4])
    memories = model.plan("64KB").memories()
    assert [m.label for m in memories] == ["layer 1", "layer 2", "layer 3", "layer 4"]
    assert [(m.tokens, m.limit) for m in memories] == [(16 + SEGMENT, 16 + SEGMENT)] + [(4 + SEGMENT,) * 2] * 3
    untrained = tiny().plan("64KB", batch=2)
    assert all(m.tokens <= m.limit == 64 + SEGMENT for m in untrained.memories())


def test_no_layer_is_planned_more_memory_than_it_was_trained_with():
    model = tiny(trained_horizons=[16, 4, 4, 4])
    assert model.plan("64KB").horizons == (16, 4, 4, 4)  # a big budget stops at the trained horizons
    assert model.plan("64KB", beyond_training=True).horizons == tiny().plan("64KB").horizons
    assert tiny().plan("16KB").horizons == (15, 5, 5, 5)  # a small budget: each layer the lesser of the two
    assert model.plan("16KB").horizons == (15, 4, 4, 4)
    assert model.plan("64KB").nbytes < tiny().plan("64KB").nbytes  # and the state holds only that
    with pytest.raises(ModelError, match="trained_horizons"):
        tiny(trained_horizons=[16, 4])


def test_config_round_trip_and_errors():
    config = DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=8, schedule="explicit", horizons=[4, 2])
    assert DSMRConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ModelError, match="divisible"):
        DSMRConfig(d_model=30, n_heads=4)
    with pytest.raises(ModelError, match="unknown fields"):
        DSMRConfig.from_dict({"d_model": 32, "wings": 2})
    with pytest.raises(ModelError, match="explicit"):
        DSMRConfig(schedule="explicit")
    model = DSMR(config)
    assert model.plan("64KB").horizons == (4, 2)


def test_step_follows_changed_weights():
    model = tiny()
    plan = model.plan("64KB", batch=2)
    ids = piece_ids(2, SEGMENT + 3)
    stepped(model, ids, model.new_state(plan))  # packs the weights
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    reference = segment_forward(model, ids, model.new_state(plan))
    assert torch.allclose(stepped(model, ids, model.new_state(plan)), reference, atol=1e-4)


def test_int8_step_weights_stay_close_to_exact():
    model = tiny(d_model=64, n_heads=4)
    plan = model.plan("64KB", batch=2)
    ids = piece_ids(2, 3 * SEGMENT + 2)
    exact = stepped(model, ids, model.new_state(plan)).log_softmax(-1)
    model.use_step_weights("int8")
    quantised = stepped(model, ids, model.new_state(plan)).log_softmax(-1)
    assert not torch.equal(quantised, exact)  # the int8 matrices were used
    assert (quantised.exp() - exact.exp()).abs().max() < 2e-3
    assert (quantised - exact).abs().max() < 0.05
    model.use_step_weights("fp32")
    assert torch.allclose(stepped(model, ids, model.new_state(plan)).log_softmax(-1), exact, atol=1e-5)
    with pytest.raises(ModelError, match="step weights"):
        model.use_step_weights("int4")
