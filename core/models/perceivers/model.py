"""PerceiverS: Perceiver AR with a multi-scale cascade of two cross-attentions (Yi et al., arXiv 2411.08307).

A crop of up to N input tokens; M latent queries sit on its last M positions. Latent i (at position p) reads:
1. cross-attention over every input at positions <= p (the whole causal context);
2. a second cross-attention, queried by the output of the first, over only the inputs in (p - S, p] (scale mask);
3. a causal self-attention stack over the latents.
The next-token loss is taken on the latent positions only. Positions are rotary at absolute positions, so cached
keys never change and a crop's offset does not matter.

Padding (left, from effective segmentation) is never attended by a real token. A padded query may see only itself,
so no attention row is empty (no NaN) and nothing flows from it to a real latent.

Cached generation (`step`, `prefill`) computes each input's cross-attention keys/values once, keeps the latent
self-attention keys/values in rings of M, and when the latent window is full re-encodes the most recent M/2
positions (Perceiver AR's policy). The current window [w0, w0 + M) always reads the context a training crop
ending at w0 + M would read, so incremental logits equal `forward` on that crop. A step with every lane at the
same position takes a lean one-token path (bottom of the file); prefill, re-encodes and lanes out of step the
general one (`_advance`); both over packed weights (core/models/perceivers/step.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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
)
from core.models.interface import LEFT_TO_RIGHT, check_ids
from core.models.layers import (
    PITCHES,
    Block,
    CrossAttentionBlock,
    RMSNorm,
    attention,
    rotary,
    sounding_after,
    sounding_notes,
)
from core.models.packed import PackedWeights, inv_rms
from core.models.perceivers.state import (
    PerceiverSPlan,
    PerceiverSState,
    plan_state,
    reencode_keep,
    window_stride,
)
from core.models.perceivers.step import (
    Packed,
    _additive,
    _cross_block,
    _lane_index,
    _mlp,
    _put,
    _rotate,
    _rotations,
    _rows,
    _set_rows,
    lean_step,
    pack,
)
from core.tokenizer import PAD


@dataclass(frozen=True)
class PerceiverSConfig:
    vocab_size: int | None = None  # the codec's ids (None: filled from the codec)
    codec: str = "performance"  # core/codecs.py; a config from before the field was trained on this one
    context: int = 4096  # N: inputs a crop holds
    latents: int = 256  # M: latent queries, on the last M positions
    scale: int = 512  # S: inputs the second cross-attention sees back from each latent
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4  # latent self-attention blocks (with the two cross-attentions: 6 attention layers)
    mlp_ratio: int = 4
    dropout: float = 0.0
    rope_base: float = 10000.0
    default_budget: str = "32MB"  # generation state budget per lane when the user names none
    # Issue #17: the pitches sounding after each id (a 128-wide multi-hot, core.models.layers.sounding_notes, from
    # the piece's start, not the crop's), projected by a Linear(128, d_model) initialised to zero and added to the
    # embedding of every id: the inputs the cross-attentions read and the latents alike; the state carries each
    # lane's set. Off (the default, and what a model directory from before it reads as) keeps the model as it
    # was; turned on over such a model's weights, it starts from exactly that model's numbers.
    sounding_input: bool = False

    def __post_init__(self) -> None:
        problems = field_problems(self)  # types first: the ranges and relations below assume them
        if not problems:
            problems = codec_problems(self)
        if not problems:
            problems = range_problems(self, {
                "vocab_size": (1, MAX_VOCAB), "context": (1, MAX_TOKENS), "latents": (1, MAX_SEGMENT),
                "scale": (1, MAX_TOKENS), "d_model": (2, MAX_WIDTH), "n_heads": (1, MAX_HEADS),
                "n_layers": (1, MAX_LAYERS), "mlp_ratio": (1, MAX_MLP_RATIO), "rope_base": (1, MAX_ROTARY_BASE)})
        if problems:
            raise ModelError("bad PerceiverS config: " + "; ".join(problems))
        if self.latents > self.context:
            problems.append(f"latents ({self.latents}) cannot exceed context ({self.context})")
        if self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2:
            problems.append(f"d_model {self.d_model} must split into {self.n_heads} heads of even size")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.rope_base <= 1:
            problems.append(f"rope_base must be greater than 1, got {self.rope_base!r}")
        if self.sounding_input and self.codec != "performance":  # the "notes" codec states each note's end itself
            problems.append(f"sounding_input follows the 'performance' codec's NoteOn/NoteOff ids, not {self.codec!r}'s")
        problems += budget_problems(self.default_budget)
        if problems:
            raise ModelError("bad PerceiverS config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PerceiverSConfig:
        return config_from_dict(cls, data, "PerceiverS")


def visible(query_pos: torch.Tensor, key_pos: torch.Tensor, key_pad: torch.Tensor,
            window: int | None = None) -> torch.Tensor:
    """Training mask (B, 1, Q, K), True = may attend: causal, inside the scale window, never a padded key.

    query_pos (Q,), key_pos (K,) are crop positions; key_pad (B, K). A query may always see its own position
    (the diagonal), which only matters for padded queries: their rows are never empty.
    """
    distance = query_pos[:, None] - key_pos[None, :]  # (Q, K)
    allowed = distance >= 0
    if window is not None:
        allowed = allowed & (distance < window)
    mask = allowed[None] & ~key_pad[:, None, :]  # (B, Q, K)
    return (mask | (distance == 0)[None]).unsqueeze(1)


class PerceiverS(PackedWeights, nn.Module):
    """The PerceiverS model (core.models.interface.LeftToRight): `forward` trains on crops, the rest generates."""

    arch = "perceivers"
    family = LEFT_TO_RIGHT

    def __init__(self, config: PerceiverSConfig):
        super().__init__()
        self.config = config
        c = config
        self.head_dim = c.d_model // c.n_heads
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.cross = CrossAttentionBlock(c.d_model, c.n_heads, c.mlp_ratio, c.dropout)  # whole causal context
        self.cross_local = CrossAttentionBlock(c.d_model, c.n_heads, c.mlp_ratio, c.dropout)  # last S inputs
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_ratio, c.dropout) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.d_model)
        self.head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.sounding = nn.Linear(PITCHES, c.d_model, bias=False) if c.sounding_input else None
        self.apply(self._init)
        if self.sounding is not None:  # zero: the input starts by changing nothing
            nn.init.zeros_(self.sounding.weight)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    # ---- training -------------------------------------------------------------------------------------------

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, sounding: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """ids (B, T <= N), left-padded with PAD -> logits (B, M', V) at the last M' = min(M, T) positions, and
        the mean cross-entropy against targets (B, M') over non-PAD targets (0 when there are none).

        sounding (B, 128) bool: the pitches sounding before the crop's first id (a crop from inside a piece: its
        notes still held from before); None: nothing. Read only by a model with `sounding_input`."""
        c = self.config
        batch, length = ids.shape
        if length > c.context:
            raise ModelError(f"crop of {length} tokens is longer than the model's context of {c.context}")
        n_latents = min(c.latents, length)
        pad = ids == PAD  # (B, T)
        positions = torch.arange(length, device=ids.device)
        cos, sin = rotary(positions, self.head_dim, c.rope_base)  # (T, hs/2)
        x = self.embed(ids)  # (B, T, C)
        if self.sounding is not None:  # the pitches sounding after each id, the piece's notes before the crop on
            x = x + self.sounding(sounding_notes(ids, sounding).to(x.dtype))
        query_pos = positions[-n_latents:]
        q_cos, q_sin = cos[-n_latents:], sin[-n_latents:]

        k, v = self.cross.keys_values(x, cos, sin)  # (B, nh, T, hs)
        h = self.cross(x[:, -n_latents:], k, v, q_cos, q_sin, visible(query_pos, positions, pad))  # (B, M', C)

        first = max(0, length - n_latents - c.scale + 1)  # older inputs are outside every latent's scale window
        k, v = self.cross_local.keys_values(x[:, first:], cos[first:], sin[first:])
        h = self.cross_local(h, k, v, q_cos, q_sin, visible(query_pos, positions[first:], pad[:, first:], c.scale))

        mask = visible(query_pos, query_pos, pad[:, -n_latents:])  # (B, 1, M', M')
        for block in self.blocks:
            q, k, v = block.project(h, q_cos, q_sin)
            h = block.finish(h, q, k, v, mask)
        logits = self.head(self.norm(h))  # (B, M', V)

        if targets is None:
            return logits, None
        if targets.shape != logits.shape[:2]:
            raise ModelError(f"targets {tuple(targets.shape)} do not match the latents {tuple(logits.shape[:2])}")
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD,
                                 reduction="sum")
        return logits, losses / (targets != PAD).sum().clamp(min=1)

    # ---- cached generation ----------------------------------------------------------------------------------

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1) -> PerceiverSPlan:
        """The generation context N_gen <= N that a budget ('64MB', bytes; default: the config's for each lane)
        buys; BudgetError naming the minimum if it buys none."""
        c = self.config
        budget = parse_budget(c.default_budget) * batch if budget_bytes is None else parse_budget(budget_bytes)
        return plan_state(budget, batch, c.context, c.latents, c.scale, c.n_layers, c.n_heads, c.d_model,
                          self.embed.weight.dtype, sounding=c.sounding_input)

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        """'': a plan never reads more context than the model was trained with, whatever the budget."""
        return ""

    def describe(self) -> str:
        c = self.config
        return (f"PerceiverS, {c.n_layers + 2} attention layers x {c.d_model}, reading up to {c.context:,} tokens "
                f"back, condensed to {c.latents}")

    def new_state(self, plan: PerceiverSPlan, batch: int | None = None) -> PerceiverSState:
        c = self.config
        if (plan.latents, plan.scale, plan.n_layers, plan.d_model) != (c.latents, c.scale, c.n_layers, c.d_model):
            raise BudgetError("this plan was made for a different PerceiverS model")
        if plan.sounding != c.sounding_input:
            raise BudgetError("the plan was made for a model " + ("without" if c.sounding_input else "with")
                              + " the sounding-notes input: plan again with this model")
        batch = plan.batch if batch is None else batch
        if batch != plan.batch:
            raise BudgetError(f"the plan was made for batch {plan.batch}, not {batch}: plan again")
        self._watch_parameters()  # the weights `step` checks for changes
        return PerceiverSState(plan, batch, self.embed.weight.device)

    @torch.no_grad()
    def output_weight(self) -> torch.Tensor:
        """(V, d): logits = this @ the normed last hidden state (the interface's `output_weight`)."""
        return self.head.weight

    def step(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """One new id per lane (B,) -> next-token logits (B, V): the one-token path when the lanes are in step
        with room in their window, else the general path (a re-encode, or lanes at different positions)."""
        check_ids(ids, 1, state.batch, self.config.vocab_size, "step")
        logits = lean_step(self._packed(), ids.to(state.ids.device), state, self.config.rope_base)
        return self.prefill(ids[:, None], state) if logits is None else logits

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """Read ids (B, T) into the state as T steps would (same result, batched) -> logits (B, V) of the last."""
        return self._read(ids, state, every=False)

    @torch.no_grad()
    def read(self, ids: torch.Tensor, state: PerceiverSState) -> torch.Tensor:
        """Read ids (B, T) into the state as T steps would -> the logits (B, T, V) after every id, each the one its
        step would give: a whole piece scored a latent window per call instead of an id per call (`core.metrics`)."""
        return self._read(ids, state, every=True)

    def _read(self, ids: torch.Tensor, state: PerceiverSState, every: bool) -> torch.Tensor:
        check_ids(ids, 2, state.batch, self.config.vocab_size, "read" if every else "prefill")
        ids = ids.to(state.ids.device)
        packed = self._packed()
        phase = state.length - state.start  # lanes with the same phase fill and re-encode together
        if bool((phase == phase[0]).all()):
            return self._advance(packed, ids, state, None, every)
        shape = (state.batch, ids.shape[1], self.config.vocab_size) if every else (state.batch, self.config.vocab_size)
        logits = torch.empty(shape, device=ids.device, dtype=state.keys1.dtype)
        for value in phase.unique():
            lanes = (phase == value).nonzero().flatten()
            logits[lanes] = self._advance(packed, ids[lanes], state, lanes, every)
        return logits

    def _pack(self, kind: str) -> Packed:
        return pack(self, kind)

    def _advance(self, packed: Packed, ids: torch.Tensor, state: PerceiverSState,
                 lanes: torch.Tensor | None, every: bool = False) -> torch.Tensor:
        """Lanes sharing one phase read ids (b, T), a latent window at a time -> logits (b, V) of the last id, or
        (b, T, V) of every id."""
        m = self.config.latents
        keep = reencode_keep(m)
        done, total, outputs = 0 if every else self._skip(packed, ids, state, lanes), ids.shape[1], []
        while done < total:
            length = _rows(state.length, lanes).clone()  # (b,)
            start = _rows(state.start, lanes).clone()
            fresh = int(length[0] - start[0]) == m
            if fresh:  # window full: re-encode the most recent M/2 positions
                start = length - keep + 1
                _set_rows(state.start, lanes, start)
                _set_rows(state.latent_positions, lanes, -1)
            count = min(total - done, int(start[0]) + m - int(length[0]))
            first = start if fresh else length  # the latents computed now: positions first .. length + count - 1
            positions = first[:, None] + torch.arange(int(length[0] - first[0]) + count, device=ids.device)
            rotations = _rotations(positions, self.head_dim, self.config.rope_base, state.keys1.dtype)
            # Lanes at the same position write their rings with one slice (not an index per lane and token).
            lockstep = positions.shape[0] == 1 or bool((positions[:, 0] == positions[0, 0]).all())
            first_position = int(positions[0, 0]) if lockstep and lanes is None else None
            chunk = ids[:, done:done + count]
            sets = None if packed.sounding is None else self._sounding_sets(chunk, positions, state, lanes)
            self._write_inputs(packed, chunk, positions[:, -count:], rotations[:, -count:],
                               None if first_position is None else int(length[0]), state, lanes,
                               None if sets is None else sets[:, -count:])
            _set_rows(state.length, lanes, length + count)
            logits = self._latents(packed, positions, rotations, first_position, state, lanes, count if every else 1,
                                   sets)
            outputs = [*outputs, logits] if every else [logits]  # prefill keeps only the last: bounded memory
            done += count
        return torch.cat(outputs, dim=1) if every else outputs[-1][:, -1]

    def _sounding_sets(self, chunk: torch.Tensor, positions: torch.Tensor, state: PerceiverSState,
                       lanes: torch.Tensor | None) -> torch.Tensor:
        """The pitches sounding after each latent position (b, n, 128) of `positions` (b, n), whose last ids are the
        new `chunk` (b, count) and the first (a re-encode) ids read before, still in the ring; moves the lanes'
        sets on past the chunk (and takes the next window's anchor when its id is read)."""
        count = chunk.shape[1]
        length = _rows(state.length, lanes)[:1]  # lanes of one phase: offsets below are the same in every lane
        new = sounding_notes(chunk, _rows(state.sounding, lanes))  # (b, count, 128)
        old = positions[:, :positions.shape[1] - count]  # a re-encode's positions read before (b, n - count)
        sets = new
        if old.shape[1]:  # they go on from the set before the window's start, the anchor
            rows = _lane_index(state, lanes)[:, None].expand_as(old)
            sets = torch.cat([sounding_notes(state.ids[rows, old % self.config.latents],
                                             _rows(state.anchor, lanes)), new], dim=1)
        _set_rows(state.sounding, lanes, new[:, -1])
        at = int(_rows(state.start, lanes)[0] - length[0]) + window_stride(self.config.latents) - 1
        if 0 <= at < count:  # the id before the next window's start
            _set_rows(state.anchor, lanes, new[:, at])
        return sets

    def _skip(self, packed: Packed, ids: torch.Tensor, state: PerceiverSState, lanes: torch.Tensor | None) -> int:
        """How many leading ids of `ids` (b, T) a prefill need not compute latents for, once their inputs that
        matter are in the rings (0: none, nothing done).

        The window current after the last id starts at `final` (the windows' starts follow from the length
        alone); its latents read inputs from final + M - N_gen on, and no earlier window's latent survives its
        re-encode. So the inputs before that are never read and only the last window's latents are computed:
        the inputs go into the rings in the chunks reading every id would use (the same products, the same
        bits), and the state is left just before the last re-encode, which the caller's loop then makes.
        Time and memory are bounded by the context, whatever the primer's length.
        """
        m, context = self.config.latents, state.plan.context
        keep, stride = reencode_keep(m), window_stride(m)  # each window starts `stride` later than the one before
        length = _rows(state.length, lanes).clone()  # (b,): lanes of one phase, maybe at different lengths
        start = int(_rows(state.start, lanes)[0] - length[0])  # relative to each lane's length, as all below
        windows = max(0, -(-(ids.shape[1] - start - m) // stride))  # re-encodes on the way
        final = start + windows * stride
        first_end = start + m  # reading every id writes the inputs in chunks ending at first_end + k stride
        needed = final + m - context  # the first input the final window reads
        if windows == 0 or needed < first_end or first_end <= 0:
            return 0
        begin = first_end + (needed - first_end) // stride * stride  # the last chunk end at or before it
        last = final + keep - 1  # the length at which the final re-encode happens: inputs up to there
        sounding = None
        if packed.sounding is not None:  # what the skipped ids left sounding is not skipped
            sounding = sounding_after(ids[:, :begin], _rows(state.sounding, lanes))
            if final == begin:  # the final window's anchor: the set before its start
                _set_rows(state.anchor, lanes, sounding)
        for chunk in range(begin, last, stride):
            positions = length[:, None] + torch.arange(chunk, chunk + stride, device=ids.device)  # (b, n)
            rotations = _rotations(positions, self.head_dim, self.config.rope_base, state.keys1.dtype)
            lockstep = positions.shape[0] == 1 or bool((positions[:, 0] == positions[0, 0]).all())
            first_position = int(positions[0, 0]) if lockstep and lanes is None else None
            sets = None
            if sounding is not None:
                sets = sounding_notes(ids[:, chunk:chunk + stride], sounding)  # (b, stride, 128)
                sounding = sets[:, -1]
                if chunk < final <= chunk + stride:
                    _set_rows(state.anchor, lanes, sets[:, final - 1 - chunk])
            self._write_inputs(packed, ids[:, chunk:chunk + stride], positions, rotations, first_position, state,
                               lanes, sets)
        if sounding is not None:
            _set_rows(state.sounding, lanes, sounding)
        _set_rows(state.length, lanes, length + last)
        _set_rows(state.start, lanes, length + final - stride)  # the window before: full, so the loop re-encodes
        return last

    def _write_inputs(self, packed: Packed, ids: torch.Tensor, positions: torch.Tensor, rotations: torch.Tensor,
                      first_position: int | None, state: PerceiverSState, lanes: torch.Tensor | None,
                      sets: torch.Tensor | None = None) -> None:
        """Project ids (b, n) at `positions` (b, n), with the pitches sounding after each (b, n, 128) for a model
        with the input, into both cross-attention rings (once per token)."""
        c = self.config
        batch, count = ids.shape
        x = F.embedding(ids, packed.embed)  # (b, n, C)
        if sets is not None:
            x = x + packed.sounding(sets.to(x.dtype))
        kv = (packed.inputs_kv(x) * inv_rms(x, packed.eps)).view(batch * count, 2, 2, c.n_heads, self.head_dim)
        k = _rotate(kv[:, :, 0], rotations).view(batch, count, 2, c.n_heads, self.head_dim)  # 2 layers' keys
        v = kv[:, :, 1].view(batch, count, 2, c.n_heads, self.head_dim)
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)  # (b, n)
        for layer, (keys, values, slot_positions) in enumerate(
                ((state.keys1, state.values1, state.positions1), (state.keys2, state.values2, state.positions2))):
            _put(keys, rows, positions, k[:, :, layer], first_position)
            _put(values, rows, positions, v[:, :, layer], first_position)
            _put(slot_positions, rows, positions, positions, first_position)
        _put(state.ids, rows, positions, ids, first_position)

    def _latents(self, packed: Packed, positions: torch.Tensor, rotations: torch.Tensor, first_position: int | None,
                 state: PerceiverSState, lanes: torch.Tensor | None, outputs: int = 1,
                 sets: torch.Tensor | None = None) -> torch.Tensor:
        """Latents at `positions` (b, n) (the pitches sounding after each, sets (b, n, 128), for a model with the
        input) from the rings -> logits (b, outputs, V) of the last `outputs` of them; fills the latent rings."""
        c = self.config
        batch, count = positions.shape
        heads, head_dim = c.n_heads, self.head_dim
        rows = _lane_index(state, lanes)[:, None].expand_as(positions)
        h = F.embedding(state.ids[rows, positions % c.latents].flatten(), packed.embed)  # (b n, C)
        if sets is not None:
            h = packed.sounding.add_to(h, sets.flatten(0, 1).to(h.dtype))
        start = _rows(state.start, lanes)[:, None, None]  # (b, 1, 1)
        context_start = (start + c.latents - state.plan.context).clamp(min=0)
        query = positions[:, :, None]  # (b, n, 1)

        key_pos = _rows(state.positions1, lanes)[:, None, :]  # (b, 1, N_gen)
        mask = _additive((key_pos >= context_start) & (key_pos <= query), h.dtype)  # (b, 1, n, N_gen)
        h = _cross_block(packed.cross[0], h, _rows(state.keys1, lanes), _rows(state.values1, lanes), rotations,
                         mask, packed.eps)

        key_pos = _rows(state.positions2, lanes)[:, None, :]  # (b, 1, R2)
        low = torch.maximum(context_start, query - c.scale + 1)
        mask = _additive((key_pos >= low) & (key_pos <= query), h.dtype)
        h = _cross_block(packed.cross[1], h, _rows(state.keys2, lanes), _rows(state.values2, lanes), rotations,
                         mask, packed.eps)

        _put(state.latent_positions, rows, positions, positions, first_position)
        key_pos = _rows(state.latent_positions, lanes)[:, None, :]  # (b, 1, M)
        mask = _additive((key_pos >= start) & (key_pos <= query), h.dtype)  # (b, 1, n, M), for every layer
        for layer, weights in enumerate(packed.blocks):
            qkv = (weights.qkv(h) * inv_rms(h, packed.eps)).view(batch * count, 3 * heads, head_dim)
            qk = _rotate(qkv[:, :2 * heads], rotations).view(batch, count, 2, heads, head_dim)
            keys, values = state.latent_keys[layer], state.latent_values[layer]
            _put(keys, rows, positions, qk[:, :, 1], first_position)
            _put(values, rows, positions, qkv[:, 2 * heads:].view(batch, count, heads, head_dim), first_position)
            out = attention(qk[:, :, 0].transpose(1, 2), _rows(keys, lanes), _rows(values, lanes),
                            mask)  # (b, nh, n, hs)
            h = weights.out.add_to(h, out.transpose(1, 2).reshape(batch * count, c.d_model))
            h = _mlp(weights, h, packed.eps)
        last = h.view(batch, count, c.d_model)[:, -outputs:]  # (b, outputs, C)
        return (packed.head(last) * inv_rms(last, packed.eps)).to(state.keys1.dtype)  # (b, outputs, V)
