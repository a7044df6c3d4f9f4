"""Weights packed for generation: the matrices both models' lean step paths multiply one row (or a few) by.

Generating one token reads every weight once, so a step's speed on a CPU is set by the bytes it reads and the
number of operations it dispatches. Packing serves both: each RMSNorm weight is folded into the matrix after it
(its 1/rms applied after the product, `inv_rms`), projections that read the same input share one matrix, and a
matrix is stored in the layout its one-row product reads fastest. `Int8` halves to quarters the bytes again: one
scale per output channel, bfloat16 activations, logits within ~1e-3 of fp32 in probability; `Dense` keeps the
model's own dtype and reproduces `forward`.

`PackedWeights` is the part of a model that keeps its packed copy current: packed on first use, packed again
whenever a parameter changed (training, loading, moving), in the form `use_step_weights` chose.
"""

from __future__ import annotations

import torch

from core.errors import ModelError

STEP_WEIGHTS = ("fp32", "int8")


class Dense:
    """A matrix for one-row products in the model's dtype: x @ w, or residual + x @ w in one call."""

    def __init__(self, weight: torch.Tensor, transposed: bool = False):
        # weight: (out, in) as nn.Linear holds it. Stored (in, out), or kept (out, in) and read transposed (F.linear's
        # layout, faster for the MLP's down projection).
        self.w = weight.t() if transposed else weight.t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """residual + x @ w; x and residual 2-D."""
        return torch.addmm(residual, x, self.w)


class Int8:
    """A matrix as int8 with one scale per output channel, applied to bfloat16 activations. A few rows (a step) go
    through the int8 kernel; many rows (a prefill, a re-encode) through one bfloat16 GEMM against the integers
    (exact in bfloat16), scaled after: the same arithmetic, about twice as fast there."""

    MANY_ROWS = 16

    def __init__(self, weight: torch.Tensor, transposed: bool = False):
        weight = weight.float()  # (out, in)
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        self.w = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()
        self.scale = scale.to(torch.bfloat16)
        self.row_scale = scale  # (out,) float32, for the many-row product
        # The int8 kernel crashes (PyTorch 2.13, CPU) on several rows when `in` is not a multiple of 16.
        self.few = self.MANY_ROWS if self.w.shape[1] % 16 == 0 else 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> (..., out): bfloat16 for a few rows, float32 for many."""
        if x.dim() == 2 and x.shape[0] < self.few:  # the step's shape: no reshaping
            return torch._weight_int8pack_mm(x.to(torch.bfloat16), self.w, self.scale)
        rows = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        if rows.shape[0] < self.few:
            out = torch._weight_int8pack_mm(rows, self.w, self.scale)  # (rows, out) bf16
        else:
            out = torch.nn.functional.linear(rows, self.w.to(torch.bfloat16)) * self.row_scale  # (rows, out) f32
        return out.view(*x.shape[:-1], out.shape[-1])

    def add_to(self, residual: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return residual + self(x)  # promoted to the residual's dtype


Matrix = Dense | Int8


def matrix_kind(kind: str) -> type[Dense] | type[Int8]:
    if kind not in STEP_WEIGHTS:
        raise ModelError(f"step weights must be one of {', '.join(STEP_WEIGHTS)}, got {kind!r}")
    if kind == "int8" and not hasattr(torch, "_weight_int8pack_mm"):
        raise ModelError("int8 step weights need a PyTorch build with _weight_int8pack_mm")
    return Int8 if kind == "int8" else Dense


def rms_eps(width: int, eps: float, like: torch.Tensor) -> torch.Tensor:
    """(1,) holding C * eps, the constant `inv_rms` adds; in `like`'s dtype and device."""
    return torch.full((1,), width * eps, dtype=like.dtype, device=like.device)


def inv_rms(x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """(..., 1): 1 / sqrt(sum(x^2) + C eps) over the last dimension, RMSNorm's scale over sqrt(C) (the sqrt(C) is
    folded into the packed weights, see `folded`). It commutes with the product after it. Rows (n, C), a step's
    shape, take three dispatches (the norm, squared plus C eps, rsqrt); other shapes five."""
    if x.dim() == 2:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (n, 1)
        return torch.addcmul(eps, norm, norm).rsqrt_()
    rows = x.reshape(-1, x.shape[-1])
    return torch.baddbmm(eps, rows[:, None], rows[:, :, None]).rsqrt_().view(*x.shape[:-1], 1)


def folded(norm_weight: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
    """(out, C): linear weights (out_i, C) stacked, times the norm weight and sqrt(C), so that
    (x @ result.T) * inv_rms(x) == linear(rms_norm(x) * norm_weight)."""
    width = norm_weight.shape[0]
    return torch.cat(weights) * (norm_weight[None, :] * width ** 0.5)


class PackedWeights:
    """Mixed into a model with a `_pack(kind)` method: `_packed()` returns its packed weights, kept current."""

    def use_step_weights(self, kind: str) -> None:
        """How `step` stores its weights: "fp32" (the model's own dtype, exact; the default) or "int8" (about 1.5x
        the tokens/s of fp32 on a CPU; probabilities within ~1e-3). Training and `forward` never use them."""
        matrix_kind(kind)
        self.__dict__["_step_weights"] = kind
        self.__dict__.pop("_packed_key", None)

    def _watch_parameters(self) -> None:
        """Take the current parameter list as the one `_packed` checks for changes (after loading or moving)."""
        self.__dict__["_packed_params"] = list(self.parameters())

    def _packed(self):
        if "_packed_params" not in self.__dict__:  # a plain list (not a submodule), refreshed by new_state
            self._watch_parameters()
        key = [(p.data_ptr(), p._version) for p in self.__dict__["_packed_params"]]
        if self.__dict__.get("_packed_key") != key:
            self.__dict__["_packed_weights"] = self._pack(self.__dict__.get("_step_weights", "fp32"))
            self.__dict__["_packed_key"] = key
        return self.__dict__["_packed_weights"]
