"""SMDIM: the scan's two forms agree, the windowed attention is the banded one, unmasking keeps what it is told to
keep and fills the rest with music, the loss learns, and the model runs through model directories, `recital
generate`, a generation session and the trainer like the other architectures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.adapt import AdaptSettings
from core.cli import main
from core.errors import BudgetError, ModelError
from core.generate import SamplingConfig
from core.midi import read_performance
from core.modeldir import load_model, save_model
from core.models import registry
from core.models.interface import DENOISE, Denoiser
from core.models.smdim import SMDIM, SMDIMConfig
from core.models.smdim.model import LocalAttention
from core.models.smdim.sampling import still_masked
from core.models.smdim.scan import cuda_kernel, scan_chunked, scan_recurrent, selective_scan
from core.models.smdim.training import SMDIMTraining, bits_per_second, elbo_sum, mask_batch
from core.session import GenerationSession
from core.tokenizer import BOS, EOS, PAD, VOCAB_SIZE, encode
from tests.conftest import PIANO_PIECE
from tests.test_train_data import write_folder
from trainer.config import TrainConfig
from trainer.loop import fine_tune

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=4, stride=2,
            mlp_ratio=2, steps=4, default_budget="2MB")


def tiny(**fields) -> SMDIM:
    torch.manual_seed(0)
    return SMDIM(SMDIMConfig(**{**TINY, **fields}))


def scan_inputs(batch: int, channels: int, length: int, state: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(length)
    u = torch.randn(batch, channels, length, generator=g, dtype=dtype)
    delta = F.softplus(torch.randn(batch, channels, length, generator=g, dtype=dtype))
    A = -torch.rand(channels, state, generator=g, dtype=dtype) * 4
    B = torch.randn(batch, state, length, generator=g, dtype=dtype)
    C = torch.randn(batch, state, length, generator=g, dtype=dtype)
    D = torch.randn(channels, generator=g, dtype=dtype)
    return u, delta, A, B, C, D


# ---- the selective scan ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("inner", ["doubling", "loop", "stepwise"])
@pytest.mark.parametrize("length,chunk", [(1, 4), (37, 8), (64, 64), (100, 16), (130, 128)])
def test_the_chunked_scans_equal_the_recurrence(length, chunk, inner):
    inputs = scan_inputs(2, 5, length, 3)
    assert torch.allclose(scan_chunked(*inputs, chunk=chunk, inner=inner), scan_recurrent(*inputs), atol=1e-10,
                          rtol=1e-10)


def test_the_scan_agrees_in_float32_over_a_long_sequence_with_strong_decay():
    u, delta, A, B, C, D = scan_inputs(1, 4, 600, 4, torch.float32)
    delta = delta * 5  # decays of exp(-20) per position: no inverse of a decay ever appears, nothing overflows
    reference = scan_recurrent(u, delta, A, B, C, D)
    for inner in ("doubling", "stepwise"):
        y = scan_chunked(u, delta, A, B, C, D, inner=inner)
        assert torch.isfinite(y).all() and torch.allclose(y, reference, atol=1e-4)


def test_the_scans_gradients_agree_though_the_chunked_ones_recompute_each_chunk():
    inputs = [t.requires_grad_() for t in scan_inputs(1, 3, 20, 2)]
    grads = []
    for scan in (lambda *a: scan_chunked(*a, chunk=8), lambda *a: scan_chunked(*a, chunk=8, inner="loop"),
                 lambda *a: scan_chunked(*a, chunk=8, inner="stepwise"), scan_recurrent):
        for t in inputs:
            t.grad = None
        scan(*inputs).square().sum().backward()
        grads.append([t.grad.clone() for t in inputs])
    for other in grads[:3]:
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(other, grads[3], strict=True))


def test_the_stepwise_scans_written_out_backward_is_the_true_gradient_over_uneven_chunks():
    inputs = [t.requires_grad_() for t in scan_inputs(2, 3, 11, 2)]  # chunks of 4, 4 and 3; two rows
    assert torch.autograd.gradcheck(lambda *a: scan_chunked(*a, chunk=4, inner="stepwise"), inputs)


def test_a_cpu_model_runs_the_stepwise_scan_and_the_old_loop_still_agrees(monkeypatch):
    from core.models.smdim import scan

    model = tiny().eval()
    ids = torch.randint(3, VOCAB_SIZE, (2, 64))
    with torch.no_grad():
        stepwise = model(ids)
        model.use_scan("loop")
        assert torch.allclose(model(ids), stepwise, atol=1e-5)
        calls = []
        monkeypatch.setattr(scan, "_stepwise", lambda *inputs: calls.append(inputs) or (inputs[0], []))
        model(ids)
        assert not calls  # "loop" is the old form
        model.use_scan("auto")
        model(ids)
        assert len(calls) == 2 * model.config.n_blocks  # both directions of every block, stepwise
    with pytest.raises(ModelError, match="auto, torch, cuda, loop"):
        model.use_scan("fast")


def test_the_cuda_kernel_is_refused_with_a_reason_where_it_cannot_run():
    if cuda_kernel() is not None and torch.cuda.is_available():
        pytest.skip("mamba-ssm and a GPU are here: the kernel runs (see the agreement test)")
    with pytest.raises(ModelError, match="mamba-ssm"):
        selective_scan(*scan_inputs(1, 2, 4, 2), kernel="cuda")


@pytest.mark.skipif(cuda_kernel() is None or not torch.cuda.is_available(),
                    reason="needs mamba-ssm (pip install 'recital[cuda]') and a CUDA GPU")
def test_mamba_ssms_cuda_kernel_agrees_with_the_pytorch_scan():
    inputs = [t.float().cuda() for t in scan_inputs(2, 64, 300, 16)]
    fused = selective_scan(*inputs, kernel="cuda")
    assert torch.allclose(fused, selective_scan(*inputs, kernel="torch"), atol=1e-3, rtol=1e-3)
    model = tiny().cuda().eval()
    ids = torch.randint(3, VOCAB_SIZE, (2, 64), device="cuda")
    model.use_scan("cuda")
    with torch.no_grad():
        a = model(ids)
        model.use_scan("torch")
        assert torch.allclose(a, model(ids), atol=1e-3)


def test_the_position_major_causal_convolution_is_the_conv1d_it_replaces():
    from core.models.smdim.model import ScanDirection

    torch.manual_seed(2)
    direction = ScanDirection(6, 3, 4, 2).double()
    u = torch.randn(2, 9, 6, dtype=torch.float64)  # (B, L, E)
    reference = direction.conv(u.transpose(1, 2))[..., :9].transpose(1, 2)
    assert torch.allclose(direction.causal_conv(u), reference, atol=1e-12)
    changed = u.clone()
    changed[:, 5] += 1.0  # causal: a change reaches only its own and later positions
    assert torch.equal(direction.causal_conv(changed)[:, :5], direction.causal_conv(u)[:, :5])


def test_reduced_pass_weights_stay_close_follow_training_and_never_touch_forward():
    model = tiny().eval()
    ids = torch.randint(3, VOCAB_SIZE, (2, 64))
    with torch.no_grad():
        exact = model(ids)
        assert torch.equal(model.score(ids), exact)  # fp32 by default: the pass is forward
        model.use_step_weights("int8")
        reduced = model.score(ids)
        assert not torch.equal(reduced, exact)
        assert (reduced.softmax(-1) - exact.softmax(-1)).abs().max() < 1e-3
        assert torch.equal(model(ids), exact)  # forward (training's) keeps the float weights
        model.head.weight.mul_(2)  # the weights change (a training step): the reduced copy follows
        assert (model.score(ids).softmax(-1) - model(ids).softmax(-1)).abs().max() < 1e-3
        model.use_step_weights("fp32")
        assert torch.equal(model.score(ids), model(ids))
    with pytest.raises(ModelError, match="fp32, int8"):
        model.use_step_weights("fp8")


# ---- the layers --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("grad", [True, False], ids=["fused (training)", "written out (a CPU's denoising pass)"])
def test_windowed_attention_is_banded_attention_and_never_reads_padding(grad):
    torch.manual_seed(1)
    attention = LocalAttention(16, 2, 3, 10000.0)
    x = torch.randn(2, 11, 16)
    valid = torch.ones(2, 11, dtype=torch.bool)
    valid[1, 8:] = False
    with torch.set_grad_enabled(grad):
        windowed = attention(x, valid)
    attention.window = 0  # every position, then the band as an explicit mask
    q, k, v = attention.qkv(x).view(2, 11, 3, 2, 8).permute(2, 0, 3, 1, 4)
    from core.models.layers import apply_rotary, rotary

    cos, sin = rotary(torch.arange(11), 8, 10000.0)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    distance = torch.arange(11)[None, :] - torch.arange(11)[:, None]
    mask = ((distance.abs() <= 3)[None] & valid[:, None, :]) | (distance == 0)[None]
    dense = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
    dense = attention.out(dense.transpose(1, 2).reshape(2, 11, 16))
    assert torch.allclose(windowed, dense, atol=1e-5)
    x2 = x.clone()
    x2[1, 9:] = 100.0  # padded positions change: the real ones' outputs do not
    attention.window = 3
    with torch.set_grad_enabled(grad):
        assert torch.allclose(attention(x2, valid)[1, :8], windowed[1, :8], atol=1e-5)


def test_the_backward_scan_carries_a_later_id_beyond_the_attention_window():
    model = tiny().double().eval()  # float64: a freshly initialised model's long-range effect is ~1e-8
    ids = torch.randint(3, VOCAB_SIZE, (1, 40))
    changed = ids.clone()
    changed[0, 30] = (ids[0, 30] + 1 - 3) % (VOCAB_SIZE - 3) + 3
    with torch.no_grad():
        effect = (model(ids) - model(changed)).abs().amax(-1)[0]
    assert effect[10] > 1e-12  # 20 ids earlier, past the attention's 4 positions (8 ids) each side
    changed = ids.clone()
    changed[0, 5] = (ids[0, 5] + 1 - 3) % (VOCAB_SIZE - 3) + 3
    with torch.no_grad():
        assert (model(ids) - model(changed)).abs().amax(-1)[0, 30] > 1e-12  # and the forward scan an earlier one


# ---- unmasking ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("order", ["confidence", "random"])
@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_denoising_keeps_every_kept_id_and_fills_every_masked_one_with_music(order, temperature):
    model = tiny().eval()
    state = model.new_state(model.plan(batch=3), 3)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(3, VOCAB_SIZE, (3, 50), generator=g)
    keep = torch.rand(3, 50, generator=g) < 0.5
    keep[1] = False  # nothing known
    keep[2, :45] = True  # a short region after a context
    ids = ids.masked_fill(~keep, model.mask_id)
    out = model.denoise(ids, keep, state, steps=3, sampling=SamplingConfig(temperature=temperature),
                        generator=torch.Generator().manual_seed(0), order=order)
    assert out.shape == ids.shape and torch.equal(out[keep], ids[keep])
    filled = out[~keep]
    assert ((filled >= 0) & (filled < VOCAB_SIZE)).all() and not ((filled == PAD) | (filled == BOS)).any()


def test_the_constrain_hook_decides_what_is_drawn():
    model = tiny().eval()
    state = model.new_state(model.plan())
    ids = torch.full((1, 20), model.mask_id)
    ids[0, 0] = BOS
    keep = ids != model.mask_id
    seen = []

    def only_time_shifts(logits, current):
        seen.append(int((current == model.mask_id).sum()))
        logits[..., :259] = float("-inf")
        logits[..., 359:] = float("-inf")
        return logits

    out = model.denoise(ids, keep, state, steps=4, constrain=only_time_shifts,
                        generator=torch.Generator().manual_seed(0))
    assert ((out[0, 1:] >= 259) & (out[0, 1:] < 359)).all()
    assert seen == sorted(seen, reverse=True) and seen[0] == 19 and len(seen) == 4


def unmask_orders(monkeypatch) -> list[str]:
    """The order of every unmasking call from now on, in the list returned (sampling.unmask watched)."""
    import core.models.smdim.sampling as sampling

    orders = []
    unmask = sampling.unmask

    def spy(*args):
        orders.append(args[7])  # model, ids, keep, steps, sampling, generator, constrain, order, min_repeat
        return unmask(*args)

    monkeypatch.setattr(sampling, "unmask", spy)
    return orders


def test_the_configs_order_unmasks_when_the_caller_names_none(monkeypatch):
    from core.models.smdim.sampling import ORDERS

    orders = unmask_orders(monkeypatch)
    ids = torch.full((1, 20), 0)
    ids[0, 0] = BOS
    for order in ORDERS:
        model = tiny(order=order).eval()
        keep = torch.arange(20)[None] == 0
        state = model.new_state(model.plan())
        model.denoise(ids.masked_fill(~keep, model.mask_id), keep, state, steps=2)
        model.denoise(ids.masked_fill(~keep, model.mask_id), keep, state, steps=2, order="confidence")
    assert orders == ["confidence", "confidence", "random", "confidence"]
    with pytest.raises(ModelError, match="order must be one of confidence, random, got 'best'"):
        SMDIMConfig(order="best")


def test_the_cosine_schedule_commits_few_first_and_everything_by_the_last_step():
    total = torch.tensor([100, 7, 0])
    left = [still_masked(total, s, 8) for s in range(1, 9)]
    assert left[-1].tolist() == [0, 0, 0] and all((a >= b).all() for a, b in zip(left, left[1:], strict=False))
    assert 100 - int(left[0][0]) < 100 - int(left[3][0]) - (100 - int(left[2][0]))  # fewer early than later


def test_bad_denoising_calls_are_model_errors():
    model = tiny().eval()
    state = model.new_state(model.plan())
    ids = torch.randint(3, VOCAB_SIZE, (1, 10))
    with pytest.raises(ModelError, match="kept position holds MASK"):
        model.denoise(ids.masked_fill(ids > 0, model.mask_id), torch.ones(1, 10, dtype=torch.bool), state)
    with pytest.raises(ModelError, match="window"):
        model.denoise(torch.randint(3, VOCAB_SIZE, (1, 65)), torch.ones(1, 65, dtype=torch.bool), state)
    with pytest.raises(ModelError, match="keep must be"):
        model.denoise(ids, torch.ones(1, 9, dtype=torch.bool), state)
    with pytest.raises(ModelError, match="token ids"):
        model.denoise(ids + VOCAB_SIZE, torch.ones(1, 10, dtype=torch.bool), state)
    with pytest.raises(ModelError, match="order"):
        model.denoise(ids, torch.zeros(1, 10, dtype=torch.bool), state, order="left")


# ---- plan, config ------------------------------------------------------------------------------------------------

def test_a_plan_is_the_window_the_budget_buys_never_longer_than_training():
    model = SMDIM(SMDIMConfig(**TINY))
    assert isinstance(model, Denoiser) and model.family == DENOISE
    big = model.plan("1GB", 2)
    assert big.window == 64 and big.memories()[0].tokens == 64 and big.memories()[0].limit == 64
    small = model.plan(big.nbytes // 2, 2)
    assert small.window < 64 and small.window % 2 == 0 and small.nbytes <= big.nbytes // 2
    assert model.new_state(small, 2).nbytes == small.nbytes and "window" in small.describe()
    with pytest.raises(BudgetError, match="too small for this SMDIM model"):
        model.plan(1000)
    with pytest.raises(BudgetError, match="batch 2"):
        model.new_state(big, 3)


def test_a_bad_config_is_a_model_error_naming_the_field():
    with pytest.raises(ModelError, match="multiple of the stride"):
        SMDIMConfig(window=101, stride=2)
    with pytest.raises(ModelError, match="d_state"):
        SMDIMConfig.from_dict({"d_state": 1e6})


def test_the_default_size_ships_under_25_mb_in_fp16():
    model = SMDIM(SMDIMConfig())
    assert sum(p.numel() for p in model.parameters()) * 2 <= 25 * 1024**2


# ---- training ----------------------------------------------------------------------------------------------------

def test_masking_never_touches_padding_and_follows_each_rows_rate():
    ids = torch.randint(3, VOCAB_SIZE, (4, 2000))
    ids[:, 1500:] = PAD
    noisy, masked, rates = mask_batch(ids, VOCAB_SIZE, torch.Generator().manual_seed(0),
                                      torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert not masked[:, 1500:].any() and torch.equal(noisy[~masked], ids[~masked])
    assert (noisy[masked] == VOCAB_SIZE).all() and masked[3, :1500].all()
    assert abs(masked[1, :1500].float().mean() - 0.25) < 0.05 and rates[0] > 0


def test_the_loss_decreases_on_a_repeated_sequence():
    model = tiny(window=32)
    training = SMDIMTraining(model)
    phrase = torch.tensor([BOS] + [60 + 3, 300, 60 + 131, 64 + 3, 300, 64 + 131, 67 + 3, 280, 67 + 131] * 3
                          + [EOS, PAD, PAD])[None].expand(8, -1)
    before = training.piece_bound(phrase[0].numpy(), torch.device("cpu"))[0]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = training.loss(model, phrase, phrase, 0) / int((phrase != PAD).sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = training.piece_bound(phrase[0].numpy(), torch.device("cpu"))[0]
    assert after < 0.5 * before


def test_the_held_out_bound_is_reproducible_and_in_bits_per_second():
    model = tiny().eval()
    training = SMDIMTraining(model)
    piece = np.asarray(encode(read_performance(PIANO_PIECE)),
                       dtype=np.int64)[:300]
    first, second = training.held_out([piece], 0, 1, torch.device("cpu")), training.held_out([piece], 0, 1,
                                                                                              torch.device("cpu"))
    assert first == second and first[1] == 300 and first[0] > 0
    rate = bits_per_second(training, [piece])
    assert rate > 0 and np.isfinite(rate)
    with torch.no_grad():
        weighted, count = elbo_sum(model, torch.from_numpy(piece)[None], model.mask_id,
                                   torch.Generator().manual_seed(0), torch.tensor([1.0]))
    assert int(count) == 300 and float(weighted) > 0  # t = 1: every id masked, weight 1


# ---- everywhere the other models go -------------------------------------------------------------------------------

@pytest.fixture
def smdim_dir(tmp_path):
    return save_model(tiny(), tmp_path / "smdim", "# Tiny SMDIM\n\nRandom weights, for tests only.\n")


def test_the_model_directory_round_trips(smdim_dir):
    original = tiny().eval()
    loaded = load_model(smdim_dir)
    assert isinstance(loaded, SMDIM) and loaded.config == original.config and "smdim" in registry.architectures()
    ids = torch.randint(3, VOCAB_SIZE, (1, 30))
    with torch.no_grad():
        assert torch.allclose(loaded(ids), original(ids))


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_generate_writes_a_piece(smdim_dir, tmp_path):
    out = tmp_path / "new.mid"
    assert main(["generate", "--model", str(smdim_dir), "--seconds", "2", "--out", str(out), "--seed", "3"]) == 0
    assert out.stat().st_size > 0


def test_a_session_continues_a_primer_keeping_it_and_stopping_at_the_seconds(smdim_dir):
    model = load_model(smdim_dir)
    primer = np.asarray(encode(read_performance(PIANO_PIECE),
                               eos=False), dtype=np.int64)[:100]
    session = GenerationSession(model, primer, seconds=1.5, variations=2, seed=0, max_tokens=200)
    finished = session.run()
    assert finished.reason in ("done", "max_tokens") and session.steps > 0
    assert len(session.pieces()) == 2 and session.primer[0] == BOS
    for lane in session.lanes:
        assert all(token not in (PAD, BOS) and token < VOCAB_SIZE for token in lane)
    with pytest.raises(ModelError, match="for left-to-right models; a smdim model fills whole windows"):
        GenerationSession(model, primer, seconds=1.5, adapt=AdaptSettings(min_seconds=0.0))  # asked: refused
    again = GenerationSession(model, primer, seconds=1.5, variations=2, seed=0, max_tokens=200)
    again.run()
    assert again.lanes == session.lanes  # a seed makes it reproducible


@pytest.mark.usefixtures("isolated_dirs")
def test_one_training_step_from_scratch(tmp_path):
    folder = write_folder(tmp_path / "midi", 6, notes=30)
    result = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "trained"), base=None, arch="smdim",
                                   size="tiny", steps=1, batch=2, workers=1, val_fraction=0.2))
    assert result.steps == 1 and result.best_perplexity is not None
    trained = load_model(tmp_path / "trained")
    assert isinstance(trained, SMDIM) and trained.config.d_model == SMDIMTraining.presets["tiny"]["d_model"]


def test_the_shipped_recipe_has_an_smdim_run():
    from trainer.recipes.recipe import CONFIG_FILE, load_recipe

    recipe = load_recipe(CONFIG_FILE, "smdim")
    assert recipe.name == "default-smdim" and recipe.train["size"] in SMDIMTraining.presets
    assert recipe.model["codec"] == load_recipe(CONFIG_FILE, "dsmr").model["codec"] == "notes"  # the same codec
    config = TrainConfig(folder=".", base=None, arch="smdim", weights=recipe.weights, **recipe.train)
    assert config.minutes > 0 and not config.fine_tuning


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_eval_scores_a_denoiser_by_its_elbo_not_left_to_right(smdim_dir, capsys):
    assert main(["eval", str(PIANO_PIECE.parent), "--model", str(smdim_dir)]) == 0
    out = capsys.readouterr().out
    assert "diffusion ELBO:" in out and "bits/s" in out and "upper bound" in out and "perplexity:" not in out


def test_a_session_keeps_the_scale_range_and_velocity_limits_and_refuses_density(smdim_dir):
    from core.constraints import Constraints
    from core.tokenizer import NOTE_OFF, NOTE_ON, VELOCITY

    model = load_model(smdim_dir)
    limits = Constraints.parse(key="C major", range_="48-72", velocity="40-80")
    session = GenerationSession(model, None, seconds=2.0, variations=2, seed=1, max_tokens=150,
                                constraints=limits)
    session.run()
    written = np.concatenate([np.asarray(lane, dtype=np.int64) for lane in session.lanes])
    pitches = written[(written >= NOTE_ON) & (written < NOTE_OFF)] - NOTE_ON
    bins = written[(written >= VELOCITY) & (written < VOCAB_SIZE)] - VELOCITY
    assert len(written) > 0 and set((pitches % 12).tolist()) <= {0, 2, 4, 5, 7, 9, 11}
    assert ((pitches >= 48) & (pitches <= 72)).all() and ((bins * 4 + 3 >= 40) & (bins * 4 <= 80)).all()
    with pytest.raises(ModelError, match="not density or polyphony"):
        GenerationSession(model, None, seconds=1.0, constraints=Constraints.parse(density=3.0))
