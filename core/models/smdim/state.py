"""What a byte budget buys a denoiser: its window, the tokens one denoising pass reads at once.

A denoiser remembers nothing between passes: each pass reads its whole window (context and masked region) and
every unmasking step reads it again. What a budget pays for is the working memory of one pass, which grows
linearly with the window (the selective scan and the windowed attention are linear in length). The plan picks
the longest window, at most the one training used, whose estimated activations fit; the state is that
reservation (it allocates nothing until a pass runs, and a pass never holds more than the estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.budget import format_bytes
from core.errors import BudgetError
from core.models.interface import Memory
from core.models.smdim.scan import DEFAULT_CHUNK
from core.state import TOKENS_PER_SECOND

FLOAT_BYTES = 4  # generation runs in float32
SHORTEST_WINDOW = 16  # tokens: a window shorter than this holds no musical phrase


def pass_bytes(config, window: int, batch: int) -> int:
    """Estimated peak bytes of one denoising pass over `window` tokens for `batch` lanes: the activations that
    live at once inside one MFA block on the shortened sequence, the token-level ones (embeddings, logits and the
    sampler's copies of them) and the scan's chunk temporaries."""
    c = config
    inner = c.expand * c.d_model
    rank = dt_rank(c.d_model)
    positions = -(-window // c.stride)
    keys = 3 * c.attn_window if c.attn_window else positions  # keys each query scores
    per_position = (5 * c.d_model + 2 * inner + 2 * (4 * inner + rank + 2 * c.d_state) + 9 * c.d_model
                    + 2 * c.n_heads * min(keys, positions)
                    + 4 * inner + 2 * c.d_state)  # the stepwise scan's position-major u, delta, delta u, y, B, C
    per_token = 3 * c.d_embed + 4 * c.vocab_size
    chunk = 4 * min(DEFAULT_CHUNK, positions) * inner * c.d_state  # a chunk's decays and states, and temporaries
    return batch * FLOAT_BYTES * (positions * per_position + window * per_token + chunk)


def dt_rank(d_model: int) -> int:
    """Rank of a Mamba layer's step-size projection (Mamba's default, ceil(d_model / 16))."""
    return -(-d_model // 16)


@dataclass(frozen=True)
class SMDIMPlan:
    """What a budget bought: the window (tokens one pass reads, a multiple of the stride) and its bytes."""

    batch: int
    window: int
    trained_window: int
    budget: int | None
    nbytes: int

    def memories(self) -> tuple[Memory, ...]:
        """One part: the window a pass reads, at most the window training used."""
        return (Memory("window", self.window, self.trained_window),)

    def describe(self) -> str:
        return (f"SMDIM window {self.window} tokens (~{self.window / TOKENS_PER_SECOND:.0f} s of music) for "
                f"{format_bytes(self.nbytes)} of working memory per pass, batch {self.batch}")


def plan_window(config, budget: int, batch: int) -> SMDIMPlan:
    """The longest window in [SHORTEST_WINDOW, the trained window], a multiple of the stride, whose pass fits."""
    if batch < 1:
        raise BudgetError(f"batch must be at least 1, got {batch}")
    stride = config.stride
    low = -(-SHORTEST_WINDOW // stride) * stride
    high = max(low, config.window // stride * stride)
    if pass_bytes(config, low, batch) > budget:
        need = pass_bytes(config, low, batch)
        raise BudgetError(f"memory budget {format_bytes(budget)} ({budget} bytes) is too small for this SMDIM "
                          f"model at batch {batch}: it needs at least {format_bytes(need)} ({need} bytes)")
    while low < high:  # in units of the stride: the largest window that fits
        middle = (low // stride + high // stride + 1) // 2 * stride
        if pass_bytes(config, middle, batch) <= budget:
            low = middle
        else:
            high = middle - stride
    return SMDIMPlan(batch, low, config.window, budget, pass_bytes(config, low, batch))


class SMDIMState:
    """The plan's reservation for `batch` lanes: nothing is carried between passes, so there is nothing to reset."""

    def __init__(self, plan: SMDIMPlan, batch: int):
        if batch != plan.batch:
            raise BudgetError(f"the plan was made for batch {plan.batch}, not {batch}: plan again")
        self.plan = plan
        self.batch = batch

    @property
    def nbytes(self) -> int:
        return self.plan.nbytes

    @property
    def window(self) -> int:
        return self.plan.window

    def reset(self, lane: int) -> None:
        """Nothing to forget (a pass reads only the ids it is given); the lane must exist."""
        if not 0 <= lane < self.batch:
            raise IndexError(f"lane {lane} is outside a batch of {self.batch}")
