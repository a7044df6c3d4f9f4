"""New music from a denoiser (core.models.interface.Denoiser), as the token stream a generation session reads.

A left-to-right model writes one id after another (core/generate.py); a denoiser fills a masked region of a
window at once. To continue a primer it fills, window after window, a masked region after what is known: the
primer's (and then its own) last ids up to half the window as context, the rest masked. A new piece is the same
from BOS alone. How many ids to mask comes from the seconds asked and the tokens per second of the music the model
was trained on (with a margin, since a region's density is the model's choice); what is written is then cut at
the seconds asked, counted in the codec's TimeShifts like `generate` does, so every front end sees the same
stream: one array (B,) of ids per step, PAD for a lane that has finished.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch

from core import notecodec
from core.codecs import codec_of
from core.constraints import Constraints
from core.errors import ModelError
from core.generate import HeldNotes, LaneLimits, SamplingConfig, seeded_generator
from core.tokenizer import EOS, TICK_SECONDS

MARGIN = 1.25  # ids masked per id the training music's density predicts: most windows reach the seconds asked
EXTRA_IDS = 8  # and a few more: a short request still gets a phrase


def denoise_stream(model, primer: torch.Tensor, state, sampling: SamplingConfig | None = None, *,
                   max_tokens: int | None = None, max_seconds: float | None = None, stop_at_eos: bool = False,
                   seed: int | None = None, max_note_seconds: float | None = None, steps: int | None = None,
                   constraints: Constraints | None = None) -> Iterator[np.ndarray]:
    """Yield the ids (B,) that continue `primer` (prepared: BOS first, no EOS), one per step, one per lane of
    `state`, written a window at a time by `model.denoise`, until max_tokens or max_seconds (one is needed: a
    denoiser writes a region of a chosen length), both counted in the model's codec. Notes never sound longer than
    `max_note_seconds`: with the event codec a note held that long is released (its NoteOff replaces the id, and
    later windows read it so); with the notes codec no longer Duration is ever drawn (and the unmasking follows
    the codec's order: core/models/smdim/sampling.py). `constraints`: their position-independent part (scale,
    range, velocity: `Constraints.token_mask`) limits every id drawn; density and polyphony follow the music id by
    id and are for left-to-right models."""
    if max_tokens is None and max_seconds is None:
        raise ModelError(f"a {model.arch} model writes a region of a chosen length: give seconds or max tokens")
    codec = codec_of(model)
    limits = LaneLimits(state.batch, max_tokens, max_seconds, stop_at_eos, codec)
    batch, window = state.batch, state.window
    model.eval()
    device = next(model.parameters()).device
    generator = seeded_generator(device, seed)
    vocab_size = model.config.vocab_size
    limit = (constraints.token_mask(vocab_size, device=device, codec=codec) if constraints is not None
             else None)
    if codec.NAME == notecodec.NAME and max_note_seconds is not None:
        longest = duration_limit(vocab_size, max_note_seconds).to(device)
        limit = longest if limit is None else limit + longest
    constrain = _constrain(limit, None if stop_at_eos else EOS)
    history = primer.to(device)[None].expand(batch, -1)  # (B, T): what a window's context is cut from
    notes = HeldNotes(batch, max_note_seconds, primer.numpy()) if codec.NAME != notecodec.NAME else None
    while limits.more():
        context = min(history.shape[1], window // 2)  # the rest of the window is masked
        new = window - context
        if max_seconds is not None:
            left = float((max_seconds - limits.seconds[~limits.done]).max())
            new = min(new, math.ceil(left * model.config.tokens_per_second * MARGIN) + EXTRA_IDS)
        if max_tokens is not None:
            new = min(new, max_tokens - limits.produced)
        ids = torch.cat([history[:, history.shape[1] - context:],
                         torch.full((batch, new), model.mask_id, dtype=history.dtype, device=device)], dim=1)
        keep = torch.arange(context + new, device=device)[None].expand(batch, -1) < context
        with torch.no_grad():
            filled = model.denoise(ids, keep, state, steps, sampling, generator, constrain)
        written = filled[:, context:].cpu().numpy().copy()  # (B, new)
        for column in range(new):
            tokens = written[:, column]
            if notes is not None:
                notes.release(tokens)  # in place: a lane's over-long note ends here instead
            yield limits.close(tokens.copy())  # PAD where a lane has finished; the window keeps what was drawn
            if limits.over():
                return
        history = torch.cat([history, torch.from_numpy(written).to(device)], dim=1)
        history = history[:, -window:]  # no window reads further back


def duration_limit(vocab_size: int, longest_seconds: float) -> torch.Tensor:
    """(V,) additive: -inf on the notes codec's Durations longer than `longest_seconds` (never the shortest), as
    its generator grammar (`notecodec.grammar`) caps them."""
    too_long = notecodec.BIN_TICKS * TICK_SECONDS > longest_seconds + 1e-9
    too_long[0] = False
    mask = torch.zeros(vocab_size)
    mask[notecodec.DURATION + np.flatnonzero(too_long)] = float("-inf")
    return mask


def _constrain(limit: torch.Tensor | None, forbidden: int | None):
    """A constrain hook (logits (B, T, V), ids) -> logits: the additive mask `limit` (V,) and never `forbidden`."""
    def constrain(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if limit is not None:
            logits = logits + limit
        if forbidden is not None:
            logits[..., forbidden] = float("-inf")
        return logits
    return constrain
