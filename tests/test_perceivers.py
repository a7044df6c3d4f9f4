"""PerceiverS training forward: causality at both cross-attention scales, left-padded crops, the loss; each on
both codecs (issue #17)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core.errors import ModelError
from core.models.perceivers import PerceiverS, PerceiverSConfig, visible
from core.tokenizer import PAD, VOCAB_SIZE

CONFIG = PerceiverSConfig(context=24, latents=8, scale=3, d_model=16, n_heads=2, n_layers=2)


@pytest.fixture(params=["performance", "notes"])
def model(request) -> PerceiverS:
    torch.manual_seed(0)
    return PerceiverS(replace(CONFIG, codec=request.param, vocab_size=None)).eval()


def random_ids(batch: int, length: int, seed: int = 1, vocab: int = VOCAB_SIZE) -> torch.Tensor:
    """Random ids past PAD, BOS, EOS of a codec of `vocab` ids (a model's: model.config.vocab_size)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, length), generator=generator)


def left_pad(ids: torch.Tensor, length: int) -> torch.Tensor:
    return F.pad(ids, (length - ids.shape[1], 0), value=PAD)


def test_config_round_trip_and_errors():
    assert PerceiverSConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ModelError, match="bad PerceiverS config: unknown fields width"):
        PerceiverSConfig.from_dict({**CONFIG.to_dict(), "width": 3})
    with pytest.raises(ModelError, match="latents"):
        PerceiverSConfig(context=8, latents=16)
    with pytest.raises(ModelError, match="heads"):
        PerceiverSConfig(d_model=30, n_heads=4)


def test_logits_sit_on_the_last_latents(model):
    logits, loss = model(random_ids(2, 24, vocab=model.config.vocab_size))
    assert logits.shape == (2, 8, model.config.vocab_size) and loss is None
    short, _ = model(random_ids(2, 5, vocab=model.config.vocab_size))
    assert short.shape == (2, 5, model.config.vocab_size)
    with pytest.raises(ModelError, match="longer than the model's context"):
        model(random_ids(1, 25, vocab=model.config.vocab_size))


def test_visible_mask_is_causal_scaled_and_skips_padding():
    positions = torch.arange(6)
    pad = torch.tensor([[True, True, False, False, False, False]])
    mask = visible(positions[-3:], positions, pad, window=2)[0, 0]  # queries 3, 4, 5
    expected = torch.tensor([[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    padded_query = visible(positions[:2], positions, pad)[0, 0]  # padded queries see only themselves
    assert torch.equal(padded_query, torch.eye(6, dtype=torch.bool)[:2])


@pytest.mark.parametrize("real", [24, 11, 5], ids=["full", "padded", "shorter-than-latents"])
def test_no_output_depends_on_a_later_token(model, real):
    """Changing any token after position p never changes the output at latent position p."""
    ids = left_pad(random_ids(1, real, vocab=model.config.vocab_size), 24)
    base, _ = model(ids)
    first_latent = 24 - CONFIG.latents
    for p in range(first_latent, 24):
        changed = ids.clone()
        changed[0, p + 1:] = random_ids(1, 24, seed=p, vocab=model.config.vocab_size)[0, p + 1:]
        out, _ = model(changed)
        j = p - first_latent
        assert torch.allclose(out[0, :j + 1], base[0, :j + 1], atol=1e-6), f"latent {p} saw the future"
        if p < 23 and 24 - real <= p:
            assert not torch.allclose(out[0, j + 1:], base[0, j + 1:]), "later latents should see the change"


def test_second_cross_attention_sees_only_the_last_s_inputs(model):
    """With the whole-context layer bypassed, inputs older than S before the first latent cannot matter."""
    model.cross.forward = lambda x, *args: x  # only the scale-masked cross-attention reads the inputs now
    ids = random_ids(1, 24, vocab=model.config.vocab_size)
    base, _ = model(ids)
    oldest_seen = 24 - CONFIG.latents - CONFIG.scale + 1  # first latent's scale window starts here
    for p in range(0, 24):
        changed = ids.clone()
        changed[0, p] = 3 if ids[0, p] != 3 else 4
        out, _ = model(changed)
        assert torch.allclose(out, base, atol=1e-6) == (p < oldest_seen), f"input {p}"


def test_whole_context_layer_sees_the_oldest_input(model):
    ids = random_ids(1, 24, vocab=model.config.vocab_size)
    changed = ids.clone()
    changed[0, 0] = 3 if ids[0, 0] != 3 else 4
    assert not torch.allclose(model(changed)[0][0, 0], model(ids)[0][0, 0])


@pytest.mark.parametrize("real", [11, 5])
def test_left_padding_changes_nothing(model, real):
    """A left-padded crop gives the real latents the same logits as the unpadded crop: padding is never read."""
    ids = random_ids(2, real, vocab=model.config.vocab_size)
    unpadded, _ = model(ids)
    padded, _ = model(left_pad(ids, 24))
    n = unpadded.shape[1]
    assert torch.allclose(padded[:, -n:], unpadded, atol=1e-5)


def test_loss_is_on_latents_only_and_ignores_pad(model):
    ids = left_pad(random_ids(2, 20, vocab=model.config.vocab_size), 24)
    targets = random_ids(2, 8, seed=7, vocab=model.config.vocab_size)
    targets[1, :3] = PAD
    logits, loss = model(ids, targets)
    keep = targets != PAD
    expected = F.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(loss, expected, atol=1e-6)
    with pytest.raises(ModelError, match="do not match"):
        model(ids, targets[:, :4])


def test_fully_padded_row_gives_no_nan(model):
    model.train()
    ids = torch.cat([torch.full((1, 24), PAD), random_ids(1, 24, vocab=model.config.vocab_size)])
    targets = torch.cat([torch.full((1, 8), PAD), random_ids(1, 8, seed=3, vocab=model.config.vocab_size)])
    logits, loss = model(ids, targets)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    alone, alone_loss = model(ids[1:], targets[1:])
    assert torch.allclose(loss, alone_loss, atol=1e-6)
    _, empty = model(ids[:1], targets[:1])
    assert empty.item() == 0.0
