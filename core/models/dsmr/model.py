"""DSMR: a decoder-only Transformer that reads a whole piece in segments, each layer remembering its own horizon.

Depth-Structured Music Recurrence (Yi et al., arXiv 2602.19816). A piece is read left to right in segments of
L tokens. Every layer keeps the keys/values of earlier tokens as detached memory (Transformer-XL style), layer l
at most its last m_l tokens, and the horizons m_l share one byte budget (core/state.py plans them).

What a query sees. Memory is fixed per segment: when a segment closes, layer l keeps the last m_l tokens before
the next segment. Query i of a segment attends to its layer's memory plus the segment's tokens <= i, but only
tokens of its own piece: a BOS id starts a new piece in that lane (positions restart at 0, and nothing before
the BOS is visible to it or after it). Positions are rotary, at the token's index in the piece.

One code path (`_advance`) serves training (a whole segment, gradients inside it, memory detached) and prefill (a
primer streamed chunk by chunk). Incremental generation (`step`, one id per lane) runs a lean copy of the same
computation over packed weights (core/models/dsmr/step.py): per token it reads every weight and the whole state once, so
its speed is set by bytes (weights + budget) and by the number of dispatches; the tests hold it equal to `forward`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from core.budget import parse_budget
from core.errors import BudgetError, ModelError
from core.models.config import (
    MAX_HEADS,
    MAX_LAYERS,
    MAX_MLP_RATIO,
    MAX_ROTARY_BASE,
    MAX_SEGMENT,
    MAX_TOKENS,
    MAX_VOCAB,
    MAX_WIDTH,
    budget_problems,
    codec_problems,
    config_from_dict,
    field_problems,
    range_problems,
    show,
)
from core.models.dsmr.state import RecurrentState, StatePlan, plan_horizons
from core.models.dsmr.step import Packed, lean_step, pack
from core.models.interface import LEFT_TO_RIGHT, check_ids
from core.models.layers import PITCHES, Block, RMSNorm, rotary, sounding_after, sounding_notes
from core.models.packed import PackedWeights
from core.tokenizer import BOS, PAD


@dataclass
class DSMRConfig:
    """Model size plus the default memory schedule (a user's budget picks the horizons at run time)."""

    vocab_size: int | None = None  # the codec's ids (None: filled from the codec)
    codec: str = "performance"  # core/codecs.py; a config from before the field was trained on this one
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    mlp_ratio: int = 4
    segment_len: int = 512  # as the plain Transformer baseline: training then runs at ~90% of its speed
    dropout: float = 0.0
    rotary_base: float = 10000.0
    schedule: str = "two_scale"  # full | uniform | two_scale | explicit
    n_long: int = 2  # two_scale: how many lower layers get the long horizon
    long_ratio: float = 4.0  # two_scale: long horizon / short horizon
    horizons: list[int] | None = None  # explicit schedule
    max_horizon: int = 16384  # cap on any layer's memory (the `full` schedule's horizon)
    # State budget per lane when the user names none. Every generated token reads the whole state, and in training
    # attention costs grow with it: 8MB keeps 6 x 256 at ~400 tokens/s generating on one core (int8 step weights)
    # and its training near a plain Transformer's speed (bench/dsmr.py, bench/train.py).
    default_budget: str = "8MB"
    # The longest memory each layer was trained with (the trainer records it). Plans never go beyond it: attention
    # over distances a model never saw makes it worse, not better (the shipped default, trained at 8MB: held-out
    # MAESTRO perplexity 18.9 at 8MB, 25.8 at 32MB, 49 at 128MB before this cap). None: no cap (untrained).
    trained_horizons: list[int] | None = None
    # Issue #17: the pitches sounding after each id (a 128-wide multi-hot, core.models.layers.sounding_notes),
    # projected by a Linear(128, d_model) initialised to zero and added to the token embedding; the state carries
    # each lane's set. Off (the default, and what a model directory from before it reads as) keeps the model as it
    # was; turned on over such a model's weights, it starts from exactly that model's numbers.
    sounding_input: bool = False

    def __post_init__(self):
        problems = field_problems(self)  # types first: the ranges and relations below assume them
        if not problems:
            problems = codec_problems(self)
        if not problems:
            problems = range_problems(self, {
                "vocab_size": (1, MAX_VOCAB), "d_model": (2, MAX_WIDTH), "n_layers": (1, MAX_LAYERS),
                "n_heads": (1, MAX_HEADS), "mlp_ratio": (1, MAX_MLP_RATIO), "segment_len": (1, MAX_SEGMENT),
                "max_horizon": (1, MAX_TOKENS), "n_long": (0, self.n_layers), "long_ratio": (1, 1024),
                "rotary_base": (1, MAX_ROTARY_BASE)})
        if problems:
            raise ModelError("bad DSMR config: " + "; ".join(problems))
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.rotary_base <= 1:
            problems.append(f"rotary_base must be greater than 1, got {self.rotary_base!r}")
        if self.d_model % self.n_heads:
            problems.append(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        elif (self.d_model // self.n_heads) % 2:
            problems.append("head size d_model / n_heads must be even for rotary positions")
        if self.schedule not in ("full", "uniform", "two_scale", "explicit"):
            problems.append(f"unknown schedule {show(self.schedule)}")
        if self.schedule == "explicit" and (self.horizons is None or len(self.horizons) != self.n_layers):
            problems.append(f"the explicit schedule needs horizons for all {self.n_layers} layers")
        for name in ("horizons", "trained_horizons"):
            value = getattr(self, name)
            if value is not None and (len(value) != self.n_layers or any(not 0 <= m <= MAX_TOKENS for m in value)):
                problems.append(f"{name} must be {self.n_layers} whole numbers from 0 to {MAX_TOKENS:,}, got "
                                f"{show(value)}")
        if self.sounding_input and self.codec != "performance":  # the "notes" codec states each note's end itself
            problems.append(f"sounding_input follows the 'performance' codec's NoteOn/NoteOff ids, not {self.codec!r}'s")
        problems += budget_problems(self.default_budget)
        if problems:
            raise ModelError("bad DSMR config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DSMRConfig:
        return config_from_dict(cls, data, "DSMR")


class DSMR(PackedWeights, nn.Module):
    """The DSMR model (core.models.interface.LeftToRight): `forward` trains, `prefill`/`step`/`read` generate."""

    arch = "dsmr"
    family = LEFT_TO_RIGHT

    def __init__(self, config: DSMRConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config.d_model, config.n_heads, config.mlp_ratio, config.dropout)
                                    for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied: the embedding is the output layer too
        self.sounding = nn.Linear(PITCHES, config.d_model, bias=False) if config.sounding_input else None
        self.head_dim = config.d_model // config.n_heads
        self._causal: dict[tuple[int, torch.device], torch.Tensor] = {}
        self.apply(self._init)
        for block in self.blocks:  # residual branches start small (GPT-2)
            scale = 0.02 / math.sqrt(2 * config.n_layers)
            nn.init.normal_(block.attn.out_proj.weight, std=scale)
            nn.init.normal_(block.mlp.down.weight, std=scale)
        if self.sounding is not None:  # zero: the input starts by changing nothing
            nn.init.zeros_(self.sounding.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    # -- the budgeted state -------------------------------------------------------------------------------------

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1, schedule=None, *, beyond_training=False,
             **params) -> StatePlan:
        """Per-layer horizons for a budget and schedule (defaults: the config's, its budget for each lane).

        A layer never gets more memory than it was trained with (`trained_horizons`), whatever the budget:
        the plan then holds less than the budget allows. Training at a longer horizon passes
        `beyond_training=True` (the trainer records the new horizons).
        """
        c = self.config
        budget = parse_budget(c.default_budget) * batch if budget_bytes is None else parse_budget(budget_bytes)
        if schedule is None:
            schedule = c.horizons if c.schedule == "explicit" else c.schedule
        if schedule == "two_scale":
            params.setdefault("n_long", c.n_long)
            params.setdefault("long_ratio", c.long_ratio)
        plan = plan_horizons(c, budget, batch, schedule, element_size=self._element_size(),
                             sounding=c.sounding_input, **params)
        limits = tuple(c.trained_horizons) if c.trained_horizons is not None else (c.max_horizon,) * c.n_layers
        if c.trained_horizons is None or beyond_training:
            return replace(plan, limits=limits)
        return replace(plan, limits=limits,
                       horizons=tuple(min(m, t) for m, t in zip(plan.horizons, c.trained_horizons, strict=True)))

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        """What the user is told when the budget buys more memory than the model was trained to use ('' if not)."""
        if self.plan(budget_bytes, batch).horizons == self.plan(budget_bytes, batch, beyond_training=True).horizons:
            return ""
        return (f"this model was trained with at most {max(self.config.trained_horizons):,} tokens of memory per "
                "layer, so a larger budget would not help it (fine-tune it with a larger --budget to use one)")

    def new_state(self, plan: StatePlan, batch: int | None = None) -> RecurrentState:
        batch = plan.batch if batch is None else batch
        if batch != plan.batch:
            raise BudgetError(f"the plan was made for batch {plan.batch}, not {batch}: plan again")
        if plan.d_model != self.config.d_model or len(plan.horizons) != self.config.n_layers:
            raise BudgetError("the plan was made for another model size")
        if plan.sounding != self.config.sounding_input:
            raise BudgetError("the plan was made for a model " + ("without" if self.config.sounding_input else "with")
                              + " the sounding-notes input: plan again with this model")
        weight = self.embed.weight
        self._watch_parameters()  # the weights `step` checks for changes
        return RecurrentState(plan, self.config.n_heads, dtype=weight.dtype, device=weight.device)

    def describe(self) -> str:
        c = self.config
        return f"DSMR, {c.n_layers} layers x {c.d_model}, each layer with its own memory"

    def _element_size(self) -> int:
        return self.embed.weight.element_size()

    def _pack(self, kind: str) -> Packed:
        return pack(self, kind)

    # -- reading tokens -----------------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """Logits (B, T, V) of `ids` (B, T) read on from `state`, segment by segment; the state moves on.

        For training call it with one segment (T = L) at a time: gradients flow within the segment, the
        memory carried into the next one is detached (truncated backprop through time).
        """
        chunks = list(self._chunks(ids, state))
        return self.head(self.norm(chunks[0] if len(chunks) == 1 else torch.cat(chunks, dim=1)))

    def read(self, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """Logits (B, T, V) after every id of `ids` (B, T): `forward`, each equal to what its `step` would give."""
        return self(ids, state)

    def output_weight(self) -> torch.Tensor:
        """(V, d): logits = this @ the normed last hidden state (the interface's `output_weight`)."""
        return self.head.weight

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """Logits (B, V) for the next token after one id (B,) per lane (the lean path below; same numbers)."""
        check_ids(ids, 1, state.batch, self.config.vocab_size, "step")
        return lean_step(self._packed(), ids, state)

    def prefill(self, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """Read a primer (B, T) through the state, however long, in memory that does not grow with T.

        Returns the logits (B, V) after its last token; the same as stepping through it id by id. Segments are
        read one at a time and only the last hidden state is kept; the ids the final state cannot depend on
        (further back than every layer's reach) are not read at all (`_skip`).
        """
        check_ids(ids, 2, state.batch, self.config.vocab_size, "prefill")
        last = None
        for hidden in self._chunks(ids[:, self._skip(ids, state):], state):
            last = hidden[:, -1]
        return self.head(self.norm(last))

    def _skip(self, ids: torch.Tensor, state: RecurrentState) -> int:
        """How many leading ids of `ids` (B, T) the state after reading them all cannot depend on; the state is
        set as if it had read them (0: nothing skipped, the state untouched).

        Layer l's keys at a position depend on the layer below over its memory plus the segment so far, so the
        final state (layer l: its last m_l tokens before the current segment, and that segment) depends on no
        token more than sum_l (m_l + L) before the current segment's start. Skipping to a segment boundary
        before that keeps every segment's split, mask and numbers as they were: the result is bit for bit the
        same. Only a primer without a BOS after its first id is skipped into (a BOS resets positions).
        """
        seg, total = state.segment_len, ids.shape[1]
        head = (seg - state.fill) % seg  # ids that close the current segment; boundaries at head + k L
        reach = sum(state.horizons) + len(state.horizons) * seg
        if total - head < reach + seg:
            return 0
        bos = ids == BOS
        if bool(bos[:, 1:].any()):
            return 0
        last_start = head + (total - head) // seg * seg  # where the segment read last begins
        skip = last_start - (reach + seg - 1) // seg * seg  # a boundary at least `reach` before it
        if skip <= 0:
            return 0
        if state.sounding is not None:  # what the skipped ids left sounding is not skipped
            state.sounding.copy_(sounding_after(ids[:, :skip], state.sounding))
        state.valid.fill_(False)  # nothing the skipped ids left is visible to what follows
        state.positions.copy_(torch.where(bos[:, 0], 0, state.positions) + skip)
        state.fill = 0
        return skip

    def _chunks(self, ids: torch.Tensor, state: RecurrentState) -> Iterator[torch.Tensor]:
        """Hidden states (B, t, C) of `ids` (B, T) a chunk at a time, chunks ending at segment boundaries."""
        check_ids(ids, 2, state.batch, self.config.vocab_size, "reading")
        start = 0
        while start < ids.shape[1]:
            take = min(ids.shape[1] - start, state.segment_len - state.fill)
            yield self._advance(ids[:, start:start + take], state)
            start += take

    def _causal_mask(self, length: int, device: torch.device) -> torch.Tensor:
        """(T, T) lower triangle, built once per length."""
        key = (length, device)
        if key not in self._causal:
            self._causal[key] = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        return self._causal[key]

    def _advance(self, ids: torch.Tensor, state: RecurrentState) -> torch.Tensor:
        """Hidden states (B, T, C) of T ids that fit in the current segment; writes their K/V into the state."""
        batch, length = ids.shape
        fill, seg, top = state.fill, state.segment_len, state.max_horizon
        assert fill + length <= seg, "a chunk may not cross a segment boundary"
        old = top + fill  # global validity columns already written: memory + segment so far
        steps = torch.arange(length, device=ids.device)
        bos = ids == BOS  # (B, T)
        if length == 1:  # one id per lane: a BOS simply resets its lane first
            if bool(bos.any()):
                for lane in bos[:, 0].nonzero()[:, 0].tolist():
                    state.reset(lane)
            positions = state.positions[:, None]  # (B, 1)
            state.valid[:, old] = True
            mask = state.valid[:, None, None, :old + 1]  # (B, 1, 1, M + fill + 1)
        else:
            pieces = bos.cumsum(1)  # (B, T) BOS seen so far (inclusive): a piece number within the chunk
            same_piece = pieces == 0  # (B, T) still in the piece the state was reading
            last_bos = torch.where(bos, steps, -1).cummax(1).values
            positions = torch.where(same_piece, state.positions[:, None] + steps, steps - last_bos)  # (B, T)
            causal = self._causal_mask(length, ids.device)
            earlier = state.valid[:, None, :old] & same_piece[:, :, None]  # (B, T, M + fill)
            current = causal & (pieces[:, :, None] == pieces[:, None, :])  # (B, T, T)
            mask = torch.cat([earlier, current], dim=2)[:, None]  # (B, 1, T, M + fill + T)
            ended = pieces[:, -1] > 0  # lanes whose piece changed inside the chunk forget the old one
            state.valid[:, :old] &= ~ended[:, None]
            state.valid[:, old:old + length] = pieces == pieces[:, -1:]
        # Additive form once for all layers (SDPA would convert a boolean mask again in every layer).
        mask = torch.zeros(mask.shape, dtype=state.kv[0].dtype, device=ids.device).masked_fill_(~mask, float("-inf"))
        cos, sin = rotary(positions[:, None], self.head_dim, self.config.rotary_base)  # (B, 1, T, hs/2)

        training = torch.is_grad_enabled()
        x = self.embed(ids)  # (B, T, C)
        if self.sounding is not None:  # the pitches sounding after each id, from the set the state carries
            held = sounding_notes(ids, state.sounding)  # (B, T, 128)
            state.sounding.copy_(held[:, -1])
            x = x + self.sounding(held.to(x.dtype))
        for block, keys, values, m in zip(self.blocks, state.keys, state.values, state.horizons, strict=True):
            q, k, v = block.project(x, cos, sin)  # each (B, nh, T, hs)
            start, end = m + fill, m + fill + length
            layer_mask = mask[..., top - m:]  # this layer sees only its last m memory slots
            if training:  # attend to the detached past plus this chunk's own (differentiable) keys/values
                k_all = torch.cat([keys[:, :, :start], k], dim=2)
                v_all = torch.cat([values[:, :, :start], v], dim=2)
                keys[:, :, start:end] = k.detach()
                values[:, :, start:end] = v.detach()
            else:  # write in place and attend to the buffer itself: no copy of the state per token
                keys[:, :, start:end] = k
                values[:, :, start:end] = v
                k_all, v_all = keys[:, :, :end], values[:, :, :end]
            x = block.finish(x, q, k_all, v_all, layer_mask)
        state.positions.copy_(positions[:, -1] + 1)
        state.fill += length
        if state.fill == seg:
            state.close_segment()
        return x


def segment_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over (B, T, V) logits and (B, T) targets; PAD targets are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=PAD)
