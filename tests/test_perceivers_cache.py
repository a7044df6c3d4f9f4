"""PerceiverS cached generation: incremental == full forward, the M/2 re-encode policy, lanes, the budget; each
with and without the sounding-notes input, and on the note codec (issue #17)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from core.errors import BudgetError, ModelError
from core.models.layers import sounding_after
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.models.perceivers.state import state_bytes
from core.tokenizer import VOCAB_SIZE

CONFIG = PerceiverSConfig(context=24, latents=8, scale=5, d_model=16, n_heads=2, n_layers=2)
KEEP = CONFIG.latents // 2


pytestmark = pytest.mark.usefixtures("one_thread")


VARIANTS = {"plain": {}, "sounding": {"sounding_input": True}, "notes": {"codec": "notes", "vocab_size": None}}


def make(variant: str = "plain", config: PerceiverSConfig = CONFIG) -> PerceiverS:
    """A tiny model of a VARIANTS entry (the event codec, with the sounding-notes input, the note codec); with the
    sounding-notes input, its projection random (not the zero it starts at), so that the sets change the logits."""
    torch.manual_seed(0)
    model = PerceiverS(replace(config, **VARIANTS[variant])).eval()
    if model.config.sounding_input:
        with torch.no_grad():
            model.sounding.weight.normal_(0.0, 0.5)
    return model


@pytest.fixture(params=list(VARIANTS))
def model(request) -> PerceiverS:
    return make(request.param)


def random_ids(batch: int, length: int, seed: int = 1, vocab: int = VOCAB_SIZE) -> torch.Tensor:
    """Random ids past PAD, BOS, EOS of a codec of `vocab` ids (a model's: model.config.vocab_size)."""
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def budget_for(model: PerceiverS, context: int, batch: int = 1) -> int:
    c = model.config
    return state_bytes(batch, context, c.latents, c.scale, c.n_layers, c.d_model, 4, c.sounding_input)


def crop_forward(model: PerceiverS, ids: torch.Tensor, first: int, end: int) -> torch.Tensor:
    """The training forward's logits on the crop ids[:, first:end], given the notes sounding before it."""
    before = sounding_after(ids[:, :first]) if first > 0 else None
    return model(ids[:, first:end], sounding=before)[0]


@pytest.mark.parametrize("context", [24, 16, 8], ids=["N", "shorter", "M"])
def test_incremental_logits_equal_the_full_forward(model, context):
    """Step by step, through several re-encodes and a sliding context: each step's logits are those of the
    training forward on the crop the current latent window reads (inputs from context_start to start + M)."""
    plan = model.plan(budget_for(model, context, 2), batch=2)
    assert plan.context == context
    state = model.new_state(plan)
    ids = random_ids(2, 70 + CONFIG.latents, vocab=model.config.vocab_size)
    for t in range(70):
        logits = model.step(ids[:, t], state)
        start, context_start = int(state.start[0]), int(state.context_start[0])
        assert t - start < CONFIG.latents and start + CONFIG.latents - context_start <= context
        full = crop_forward(model, ids, context_start, start + CONFIG.latents)
        assert torch.allclose(logits, full[:, t - start], atol=1e-5), f"step {t}"


def test_window_fills_then_keeps_the_most_recent_half(model):
    state = model.new_state(model.plan(budget_for(model, 16)))
    ids = random_ids(1, 40, vocab=model.config.vocab_size)
    starts = []
    for t in range(40):
        model.step(ids[:, t], state)
        starts.append(int(state.start[0]))
    m = CONFIG.latents
    expected, start = [], 0
    for t in range(40):
        if t - start == m:
            start = t - KEEP + 1  # re-encode positions t - M/2 + 1 .. t
        expected.append(start)
    assert starts == expected
    assert starts[m - 1] == 0 and starts[m] == m - KEEP + 1
    assert int(state.length[0]) == 40


@pytest.mark.parametrize("variant", ["plain", "notes"])
def test_tokens_outside_the_window_are_forgotten(variant):
    """No latent depends on more than a training crop showed: inputs before context_start never matter (without
    the sounding-notes input: with it, they do, through the notes they leave sounding)."""
    model = make(variant)
    plan = model.plan(budget_for(model, 12))
    vocab = model.config.vocab_size
    ids = random_ids(1, 60, vocab=vocab)
    changed = ids.clone()
    changed[0, :20] = random_ids(1, 20, seed=9, vocab=vocab)
    first, second = model.new_state(plan), model.new_state(plan)
    for t in range(60):
        a, b = model.step(ids[:, t], first), model.step(changed[:, t], second)
        if int(first.context_start[0]) >= 20:
            assert torch.allclose(a, b, atol=1e-6), f"step {t} still saw a forgotten token"
        elif t >= 20:
            assert not torch.allclose(a, b)


def test_prefill_equals_stepping(model):
    plan = model.plan(budget_for(model, 16, 2), batch=2)
    ids = random_ids(2, 53, vocab=model.config.vocab_size)
    stepped, filled = model.new_state(plan), model.new_state(plan)
    for t in range(53):
        expected = model.step(ids[:, t], stepped)
    got = model.prefill(ids, filled)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(filled.start, stepped.start) and torch.equal(filled.length, stepped.length)
    after = model.step(ids[:, 0], filled), model.step(ids[:, 0], stepped)
    assert torch.allclose(*after, atol=1e-5)


def test_read_gives_the_logits_of_every_step(model):
    """`read` (what scoring uses) returns each step's logits, in chunks that start and end anywhere in a window,
    and with lanes out of phase (one reset mid-piece)."""
    plan = model.plan(budget_for(model, 16, 2), batch=2)
    ids = random_ids(2, 53, vocab=model.config.vocab_size)
    stepped, read = model.new_state(plan), model.new_state(plan)
    expected = torch.stack([model.step(ids[:, t], stepped) for t in range(53)], dim=1)  # (2, 53, V)
    got = torch.cat([model.read(ids[:, :5], read), model.read(ids[:, 5:22], read), model.read(ids[:, 22:], read)],
                    dim=1)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(read.start, stepped.start) and torch.equal(read.length, stepped.length)
    read.reset(1)
    stepped.reset(1)
    expected = torch.stack([model.step(ids[:, t], stepped) for t in range(10)], dim=1)
    assert torch.allclose(model.read(ids[:, :10], read), expected, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_the_one_token_path_equals_the_general_path(model, batch):
    """`step` (lanes in step: the lean path) and `prefill` of one token (the general path) give the same logits
    and leave the same state, through re-encodes and a sliding context."""
    plan = model.plan(budget_for(model, 12, batch), batch=batch)
    lean, general = model.new_state(plan), model.new_state(plan)
    ids = random_ids(batch, 45, vocab=model.config.vocab_size)
    for t in range(45):
        stepped, read = model.step(ids[:, t], lean), model.prefill(ids[:, t:t + 1], general)
        assert torch.allclose(stepped, read, atol=1e-5), f"step {t}"
    assert lean.lean is not None and general.lean is None  # each path was taken
    for a, b in zip(lean.tensors(), general.tensors(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_int8_prefill_reads_many_rows_as_steps_do(model):
    """Prefill and re-encodes multiply many rows at once (one bfloat16 GEMM on the int8 weights), steps a few
    (the int8 kernel): the same arithmetic, so both stay within rounding of each other."""
    model.use_step_weights("int8")
    plan = model.plan(budget_for(model, 16))
    ids = random_ids(1, 30, vocab=model.config.vocab_size)
    stepped, filled = model.new_state(plan), model.new_state(plan)
    for t in range(30):
        expected = model.step(ids[:, t], stepped)
    got = model.prefill(ids, filled)
    assert (got.softmax(-1) - expected.softmax(-1)).abs().max() < 1e-3


def test_int8_step_weights_for_any_width():
    """Widths that are not a multiple of 16 (the int8 kernel's limit) take the GEMM path: no crash, still close."""
    torch.manual_seed(0)
    model = PerceiverS(PerceiverSConfig(context=24, latents=8, scale=5, d_model=24, n_heads=2, n_layers=1)).eval()
    ids = random_ids(2, 20)

    def run() -> torch.Tensor:
        state = model.new_state(model.plan("1MB", batch=2))
        model.prefill(ids[:, :12], state)
        return torch.stack([model.step(ids[:, t], state) for t in range(12, 20)]).softmax(-1)

    exact = run()
    model.use_step_weights("int8")
    assert (run() - exact).abs().max() < 2e-3


def test_a_reset_lane_starts_over_while_the_other_goes_on(model):
    plan = model.plan(budget_for(model, 16, 2), batch=2)
    ids = random_ids(2, 40, vocab=model.config.vocab_size)
    state = model.new_state(plan)
    model.prefill(ids[:, :13], state)
    state.reset(1)
    alone = model.new_state(model.plan(budget_for(model, 16), batch=1))
    solo = model.new_state(model.plan(budget_for(model, 16), batch=1))
    model.prefill(ids[:1, :13], solo)
    for t in range(13, 40):
        both = model.step(torch.stack([ids[0, t], ids[1, t - 13]]), state)
        assert torch.allclose(both[0], model.step(ids[:1, t], solo)[0], atol=1e-5)
        assert torch.allclose(both[1], model.step(ids[1:, t - 13], alone)[0], atol=1e-5)
    with pytest.raises(IndexError):
        state.reset(2)


def test_allocated_bytes_never_exceed_the_budget(model):
    minimum = budget_for(model, CONFIG.latents, batch=3)
    for budget in [minimum, minimum + 1, *range(minimum, 4 * minimum, 997), 10**9]:
        plan = model.plan(budget, batch=3)
        state = model.new_state(plan)
        assert state.nbytes == plan.nbytes <= budget
        assert CONFIG.latents <= plan.context <= CONFIG.context
        # the longest that fits
        assert plan.context == CONFIG.context or budget_for(model, plan.context + 1, 3) > budget
        assert f"context {plan.context} tokens" in plan.describe()
    with pytest.raises(BudgetError, match=f"at least .* \\({minimum} bytes\\)"):
        model.plan(minimum - 1, batch=3)
    assert model.plan("1MB").context == CONFIG.context
    assert model.plan(None, batch=3).budget == 3 * 32 * 1024**2  # the config's default budget, per lane
    with pytest.raises(BudgetError):
        model.plan("lots")


def test_the_plan_is_the_longest_context_that_fits(model):
    for context in range(CONFIG.latents, CONFIG.context + 1):
        budget = budget_for(model, context)
        assert model.plan(budget).context == context
        assert context == CONFIG.latents or model.plan(budget - 1).context == context - 1


def test_bad_generation_inputs_are_refused(model):
    state = model.new_state(model.plan(budget_for(model, 16, 2), batch=2))
    with pytest.raises(ModelError):
        model.step(torch.tensor([[3, 4]]), state)
    with pytest.raises(ModelError):
        model.prefill(torch.zeros(1, 4, dtype=torch.long), state)
    with pytest.raises(ModelError):
        model.step(torch.tensor([3, model.config.vocab_size]), state)
    with pytest.raises(BudgetError):
        model.new_state(model.plan(budget_for(model, 16, 2), batch=2), batch=3)
    with pytest.raises(BudgetError, match="plan again"):  # as DSMR: a state has exactly its plan's lanes
        model.new_state(model.plan(budget_for(model, 16, 2), batch=2), batch=1)


def test_plans_say_what_the_context_remembers(model):
    (memory,) = model.plan(budget_for(model, 16)).memories()
    assert (memory.label, memory.tokens, memory.limit) == ("context", 16, CONFIG.context)
    # never more than it was trained with
    assert model.memory_limit_note(budget_for(model, CONFIG.context) * 4) == ""


def test_shared_generate_streams_from_a_perceivers_model(model):
    generate = pytest.importorskip("core.generate")
    def stream():
        state = model.new_state(model.plan(budget_for(model, 16, 2), batch=2))
        return generate.generate(model, generate.prepare_primer([1, 60, 300], model.config.vocab_size), state,
                                 max_tokens=40, seed=3, stop_at_eos=False)

    ids = list(stream())
    assert len(ids) == 40 and all(i.shape == (2,) for i in ids)
    again = list(stream())
    assert all((a == b).all() for a, b in zip(ids, again, strict=True))


def test_cli_generates_with_a_perceivers_model_directory(model, tmp_path, capsys):
    modeldir = pytest.importorskip("core.modeldir")
    pytest.importorskip("core.cli.generate")
    from core.cli import main

    path = modeldir.save_model(model, tmp_path / "tiny-perceivers", "# tiny PerceiverS\nrandom weights\n")
    loaded = modeldir.load_model(path)
    assert loaded.arch == "perceivers" and loaded.config == model.config
    out = tmp_path / "piece.mid"
    assert main(["generate", "--model", str(path), "--out", str(out), "--seconds", "3", "--max-tokens", "120",
                 "--seed", "1", "--budget", "6000"]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "(perceivers)" in printed
    assert f"context {model.plan(6000).context} tokens" in printed
    assert main(["generate", "--model", str(path), "--out", str(tmp_path / "other.mid"), "--budget", "1KB"]) == 1
    assert "too small for this PerceiverS model" in capsys.readouterr().err


def test_generation_follows_weight_updates(model):
    """The packed generation weights are rebuilt when a parameter changes (e.g. after a training step)."""
    ids = random_ids(1, 6, vocab=model.config.vocab_size)
    state = model.new_state(model.plan(budget_for(model, 16)))
    model.prefill(ids[:, :3], state)
    with torch.no_grad():
        model.blocks[0].mlp.up.weight.mul_(3.0)
        model.cross.kv_norm.weight.add_(0.5)
    fresh = model.new_state(model.plan(budget_for(model, 16)))
    logits = model.prefill(ids, fresh)
    full, _ = model(ids)
    assert torch.allclose(logits, full[:, -1], atol=1e-5)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_generation_in_other_precisions(dtype, variant):
    model = make(variant).to(dtype)
    element = torch.empty((), dtype=dtype).element_size()
    budget = state_bytes(1, 16, CONFIG.latents, CONFIG.scale, CONFIG.n_layers, CONFIG.d_model, element,
                         model.config.sounding_input)
    plan = model.plan(budget)
    state = model.new_state(plan)
    assert plan.context == 16 and state.nbytes == plan.nbytes <= budget
    # the crop of the latent window reaches past the 30 read
    ids = random_ids(1, 30 + CONFIG.latents, vocab=model.config.vocab_size)
    logits = model.prefill(ids[:, :30], state)
    full = crop_forward(model, ids, int(state.context_start[0]), int(state.start[0]) + CONFIG.latents)
    expected = full[:, 29 - int(state.start[0])]
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    tolerance = 1e-10 if dtype == torch.float64 else 0.02
    assert torch.allclose(logits, expected, atol=tolerance)
    start = int(state.start[0])
    assert start + CONFIG.latents > 31
    for t in range(30, start + CONFIG.latents):  # steps (the one-token path) to the end of the same window
        logits = model.step(ids[:, t], state)
        assert logits.dtype == dtype and torch.allclose(logits, full[:, t - start], atol=tolerance)


def test_int8_step_weights_stay_close_to_exact(model):
    """The fast form `recital generate` uses on a CPU: probabilities within ~1e-3 of the exact step, through
    re-encodes and lanes at different positions (one lane reset midway)."""
    ids = random_ids(2, 40, vocab=model.config.vocab_size)

    def run() -> torch.Tensor:
        state = model.new_state(model.plan(budget_for(model, 16, 2), batch=2))
        out = []
        for t in range(40):
            if t == 13:
                state.reset(1)
            out.append(model.step(ids[:, t], state).log_softmax(-1))
        return torch.stack(out)

    exact = run()
    model.use_step_weights("int8")
    quantised = run()
    assert not torch.equal(quantised, exact)  # the int8 matrices were used
    assert (quantised.exp() - exact.exp()).abs().max() < 2e-3
    model.use_step_weights("fp32")
    assert torch.allclose(run(), exact, atol=1e-5)
    with pytest.raises(ModelError, match="step weights"):
        model.use_step_weights("int4")
