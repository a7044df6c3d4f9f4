"""Adapt a model to the primer in front of it (issue #17, "dynamic evaluation"): a few optimizer steps on the
primer's own next-token loss before continuing it.

The shipped models learned from score-derived music; a composer's primer (a piano texture, a style) is often far
from it. A few gradient steps on the primer itself move the model towards what it is about to continue. Always on
a copy: the loaded model, and anything on disk, never change; nothing adapted is ever saved.

Generic over left-to-right models: the loss is read through the architecture's training adapter
(`Training.piece_losses`, core/models/interface.py): DSMR reads the primer in segments through a state with
truncated backprop, PerceiverS in its sequential crops, a third model however it reads a piece. A model whose
packed step weights follow its parameters (core/models/packed.py) re-packs them on its next step.

Over-fitting is guarded by few steps and, optionally, early stopping on the primer's last part held out.
The defaults (`AdaptSettings`) were chosen by bench/adapt.py: bits per second of the real continuation.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ModelError
from core.models.interface import LEFT_TO_RIGHT

PARAMETERS = ("all", "norms")  # every parameter, or only the vectors (norm weights, biases): a lighter touch


@dataclass(frozen=True)
class AdaptSettings:
    """How to adapt: `steps` Adam updates of learning rate `lr` over the whole primer (each one pass of it),
    on `parameters` ("all" or "norms"); `held_out` the share of the primer's tail kept out of training to stop
    early when its loss rises (0: none). A primer shorter than `min_seconds` is not adapted to (too little to
    learn from: it would only over-fit)."""

    steps: int = 3
    lr: float = 1e-4
    parameters: str = "all"
    held_out: float = 0.0
    min_seconds: float = 5.0

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or not 1 <= self.steps <= 100:
            raise ModelError(f"adaptation steps must be a whole number from 1 to 100, got {self.steps!r}")
        if not 0 < self.lr <= 0.1:
            raise ModelError(f"the adaptation learning rate must be in (0, 0.1], got {self.lr!r}")
        if self.parameters not in PARAMETERS:
            raise ModelError(f"adaptation parameters must be one of {', '.join(PARAMETERS)}, got "
                             f"{self.parameters!r}")
        if not 0 <= self.held_out < 0.9:
            raise ModelError(f"the held-out share of the primer must be in [0, 0.9), got {self.held_out!r}")
        if not self.min_seconds >= 0:
            raise ModelError(f"the shortest primer to adapt to must be >= 0 seconds, got {self.min_seconds!r}")


def adapts_by_default(model) -> bool:
    """Whether `recital continue` and the studio adapt to the primer unless told not to: for left-to-right models
    of the note-level codec, where it measured better. bench/continuation.py, ten MAESTRO primers x 3 seeds, the
    notes DSMR default: adapting, the continuations came closer to what the pianist played in polyphony (4.26 ->
    3.93, the truth 3.76), pitch range (40.9 -> 46.5 of 54.2), onset regularity (0.05 -> 0.16 of 0.24) and bits/s
    of the truth (152.8 -> 144.0), kept the key as often (19 of 30), and went further in notes/s (11.3 -> 13.0 of
    9.5) and a little in held notes > 4 s (0.70 -> 0.47 per 30 s of 1.50) and re-strikes (0.97 -> 0.63 of 2.70),
    for 1.6 s before the first note. On an event-codec DSMR it measured worse: more held notes (12.5 -> 21.2 per
    30 s) piled up higher (polyphony 6.8 -> 9.1, the truth 3.8)."""
    from core import notecodec
    from core.codecs import codec_of

    return getattr(model, "family", None) == LEFT_TO_RIGHT and codec_of(model) is notecodec


@dataclass(frozen=True)
class Adapted:
    """An adapted copy of a model and what adapting cost and did."""

    model: torch.nn.Module
    seconds: float  # wall time of the whole adaptation (the copy included)
    steps: int  # optimizer steps kept (fewer than asked when stopped early or cancelled)
    primer_bits: float  # bits per id of the primer's trained part before adapting
    held_out_bits: tuple[float, ...]  # bits per id of the held-out tail after each step (0 steps first); () none


def adapt(model, primer_ids, *, steps: int = AdaptSettings.steps, lr: float = AdaptSettings.lr,
          parameters: str = AdaptSettings.parameters, held_out: float = AdaptSettings.held_out,
          budget: int | str | None = None, should_stop: Callable[[], bool] | None = None) -> Adapted:
    """A copy of `model` after `steps` Adam steps on the next-token loss of `primer_ids` (a BOS-first id
    sequence in the model's codec, as the session encodes it), read under `budget` bytes for one lane (None: the
    model's default). `should_stop()` is asked between steps (a cancelled generation stops adapting). ModelError
    when the model cannot be adapted or the ids are not its codec's."""
    began = time.perf_counter()
    settings = AdaptSettings(steps=steps, lr=lr, parameters=parameters, held_out=held_out)
    if getattr(model, "family", None) != LEFT_TO_RIGHT:
        raise ModelError(f"a {getattr(model, 'arch', type(model).__name__)} model does not read a primer left to "
                         "right, so it cannot adapt to one")
    ids = torch.as_tensor(np.asarray(primer_ids, dtype=np.int64)).flatten()
    if ids.numel() < 3:
        raise ModelError(f"a primer of {ids.numel()} ids is too short to adapt to (at least 3)")
    vocab_size = model.config.vocab_size
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:  # ids of another codec (core.codecs.codec_of(model))
        raise ModelError(f"the primer's ids must lie in [0, {vocab_size}) of the model's "
                         f"{getattr(model.config, 'codec', 'performance')!r} codec, got {int(ids.max())}")
    from core.models import registry

    training_class = registry.get(model.arch).training
    adapted = copy.deepcopy(model)  # the loaded model is never touched
    training = training_class(adapted)
    piece_losses = getattr(training, "piece_losses", None)
    if not callable(piece_losses):
        raise ModelError(f"the {model.arch} architecture cannot adapt to a primer: its training adapter does not "
                         "read a piece's losses (piece_losses)")

    flags = [p.requires_grad for p in adapted.parameters()]
    chosen = [p for p in adapted.parameters() if settings.parameters == "all" or p.dim() == 1]
    chosen_ids = {id(p) for p in chosen}
    for p in adapted.parameters():
        p.requires_grad_(id(p) in chosen_ids)
    optimizer = torch.optim.Adam(chosen, lr=settings.lr)
    split = ids.numel() - int(settings.held_out * ids.numel())  # targets at positions >= split are held out
    trained = max(1, split - 1)
    held: list[float] = []
    best: list[torch.Tensor] | None = None
    primer_bits, kept = float("nan"), 0
    was_training = adapted.training
    adapted.train(False)  # dropout off: the primer is read as generation reads it
    try:
        for step in range(settings.steps + 1):
            measuring = step == settings.steps  # the last pass only scores the held-out tail
            if measuring and not settings.held_out:
                break
            nats, held_nats, held_count = 0.0, 0.0, 0
            with torch.set_grad_enabled(not measuring):
                for losses, positions in piece_losses(ids, budget):
                    train = positions < split
                    if not measuring and bool(train.any()):
                        part = losses[train].sum()
                        (part / trained).backward()
                        nats += float(part.detach())
                    if not bool(train.all()):
                        held_nats += float(losses[~train].detach().sum())
                        held_count += int((~train).sum())
            if step == 0:
                primer_bits = nats / trained / np.log(2)
            if settings.held_out:
                held.append(held_nats / max(1, held_count) / np.log(2))
                if len(held) > 1 and held[-1] >= min(held[:-1]):  # worse than before the last step: undo it
                    with torch.no_grad():
                        for p, saved in zip(chosen, best, strict=True):
                            p.copy_(saved)
                    kept -= 1
                    break
                best = [p.detach().clone() for p in chosen]
            if measuring or (should_stop is not None and should_stop()):
                break
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            kept += 1
    finally:
        optimizer.zero_grad(set_to_none=True)
        for p, flag in zip(adapted.parameters(), flags, strict=True):
            p.requires_grad_(flag)
        adapted.train(was_training)
    return Adapted(adapted, time.perf_counter() - began, kept, primer_bits, tuple(held))
