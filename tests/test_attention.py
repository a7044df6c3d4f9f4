"""Every model's attention (core.models.layers.attention): the mask's meaning, and the math-kernel path that fp32 on
CUDA takes (the memory-efficient kernel read a misaligned address there), run here on the CPU."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from core.models import layers
from core.models.layers import attention, math_kernel_only


def reference(q, k, v, mask):
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1) @ v


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, length, 16, generator=generator) for length in (5, 13, 13))  # 13: not a multiple of 8
    mask = torch.rand(5, 13, generator=generator) < 0.6
    mask[:, 0] = True  # every query sees something
    return q, k, v, mask


def test_fp32_on_cuda_alone_avoids_the_fused_kernels():
    assert math_kernel_only(SimpleNamespace(is_cuda=True, dtype=torch.float32))
    assert not math_kernel_only(torch.zeros(1))  # the CPU
    assert not math_kernel_only(SimpleNamespace(is_cuda=True, dtype=torch.bfloat16))
    assert not math_kernel_only(SimpleNamespace(is_cuda=True, dtype=torch.float16))


@pytest.mark.parametrize("math_only", [False, True])
def test_attention_attends_where_the_mask_allows(inputs, monkeypatch, math_only):
    monkeypatch.setattr(layers, "math_kernel_only", lambda q: math_only)
    q, k, v, mask = inputs
    torch.testing.assert_close(attention(q, k, v, mask), reference(q, k, v, mask), rtol=1e-5, atol=1e-5)


def test_without_a_mask_every_key_is_seen(inputs):
    q, k, v, _ = inputs
    everything = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool)
    torch.testing.assert_close(attention(q, k, v), reference(q, k, v, everything), rtol=1e-5, atol=1e-5)
