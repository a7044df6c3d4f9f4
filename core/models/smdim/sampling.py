"""Iterative unmasking: how a denoiser fills the masked positions of a window in a few passes (MaskGIT order).

Each pass reads the whole window, draws an id for every still-masked position (the session's sampling filters:
temperature, top-k, top-p, min-p), and commits some of them; the rest stay masked for the next pass, which sees
the committed ones. How many stay masked after pass s of S follows a cosine schedule, n cos(pi/2 s/S), so the
first passes commit few ids (the ones the model is surest of) and the last commit many. Which ones are committed:
- "confidence": the most probable draws, with Gumbel noise that shrinks over the passes (MaskGIT's
  randomisation, CHOICE_NOISE; none at temperature 0), so the order is learned, not fixed;
- "random": a random order (the schedule of absorbing diffusion's reverse process).
Kept positions are never drawn and never change. PAD and BOS are never drawn: a filled position is music.
`constrain(logits (B, T, V), ids (B, T)) -> logits` runs before each draw (composer constraints plug in there).

With the note-level codec (core/notecodec.py) a note is a Pitch followed at once by its Duration, which a parallel
draw does not know by itself. So each pass also follows the codec's order where a neighbour is known (`note_order`):
a Duration only right after a known Pitch, a slot after a Pitch only a Duration, a slot before a known Duration only
a Pitch, a slot before any other known id no Pitch (and so EOS never follows a Pitch), a slot after a Velocity only a
Pitch where one may go, a slot before a known id other than a Pitch no Velocity; and a Pitch committed in a pass
takes its Duration in the same pass (`pair_notes`: the slot after it, committed now or still masked, is drawn
again among the Durations). Every Pitch of a filled window is then followed by its Duration, but one in its very
last slot, whose Duration the next window (reading it as context) writes.

A chord never strikes one key twice (the codec writes each key once per onset), and a pianist rarely strikes one
again within a tenth of a second; a parallel draw knows neither: masks side by side drew the same likely key in one
pass, and the copies were lost when the notes were read (of 655 notes the small default wrote into eight MAESTRO
regions, 74 doubled a key at its onset and about 100 re-struck one within infill's re-strike guard, so a region got
86% of the truth's notes from 125% of its ids). So a slot may not draw a key struck less than `min_repeat` seconds
(at least one tick: its own onset) of known time away (`doubled_keys`: a MASK between counts no time, so a repeat
whose time is not known yet waits for a later pass), and a key drawn that near another strike in one pass is drawn
again, once, among the keys not struck there (`undouble`): 631 of the 657 notes the same regions got then stood.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from core import notecodec
from core.codecs import codec_of
from core.errors import ModelError
from core.generate import SamplingConfig, sample
from core.notecodec import DURATION, PITCH, TIME_SHIFT, VELOCITY
from core.tokenizer import BOS, PAD

ORDERS = ("confidence", "random")
# "confidence": the scale of the Gumbel noise on the draws' log-probabilities at the first pass (x the sampling
# temperature; it shrinks to none by the last). At 1 the surest ids, which are the commonest keys, stood first and
# the rest followed them: bench/infill.py's 50 regions (3 seeds, one lane each) wrote 5 semitones narrower than the
# pianists. At 2, distance from the truth: notes/s 0.98 -> 0.87, polyphony 1.35 -> 1.21, pitch range 10.97 -> 10.19,
# pitch classes 0.401 -> 0.397, re-strikes 0.97 -> 0.94; at 4 (one seed) the range went 11.5: toward "random".
CHOICE_NOISE = 2.0


def still_masked(total: torch.Tensor, step: int, steps: int) -> torch.Tensor:
    """Positions per row (B,) left masked after pass `step` (1-based) of `steps`: total * cos(pi/2 step/steps)."""
    return torch.floor(total * math.cos(math.pi / 2 * step / steps)).long() if step < steps else total * 0


def unmask(model, ids: torch.Tensor, keep: torch.Tensor, steps: int, sampling: SamplingConfig | None = None,
           generator: torch.Generator | None = None, constrain=None, order: str = "confidence",
           min_repeat: float = 0.0) -> torch.Tensor:
    """ids (B, T) with every position where `keep` is False filled in `steps` passes of `model` (its `score`
    where it has one, else its forward: ids -> logits (B, T, V)); with the note-level codec no key is struck
    again within `min_repeat` seconds (at its own onset at least: `doubled_keys`)."""
    if order not in ORDERS:
        raise ModelError(f"unmasking order must be one of {', '.join(ORDERS)}, got {order!r}")
    if steps < 1:
        raise ModelError(f"unmasking steps must be at least 1, got {steps}")
    sampling = sampling or SamplingConfig()
    mask_id = model.mask_id
    notes = codec_of(model).NAME == notecodec.NAME
    within = max(1, math.ceil(min_repeat / notecodec.TICK_SECONDS - 1e-9))  # ticks apart a key's strikes must be
    one_pass = getattr(model, "score", model)
    x = ids.masked_fill(~keep, mask_id)
    masked = ~keep
    total = masked.sum(1)  # (B,)
    for step in range(1, steps + 1):
        if not masked.any():
            break
        logits = one_pass(x).float()  # (B, T, V)
        logits[..., PAD] = float("-inf")
        logits[..., BOS] = float("-inf")
        if constrain is not None:
            logits = constrain(logits, x)
        constrained = logits  # before the codec's order: what a Duration drawn again for a pair reads
        if notes:  # the codec's order, but where it and the hook leave a slot nothing (its time used up), the hook's
            forbidden = note_order(x, mask_id, logits.shape[-1]) | doubled_keys(x, mask_id, logits.shape[-1], within)
            ordered = logits.masked_fill(forbidden, float("-inf"))
            logits = torch.where(torch.isfinite(ordered).any(-1, keepdim=True), ordered, logits)
        rows, cols = masked.nonzero(as_tuple=True)
        chosen = logits[rows, cols]  # (n, V)
        drawn = sample(chosen, sampling, generator)  # (n,)
        score = torch.full(masked.shape, float("-inf"), device=x.device)
        if order == "confidence":
            confidence = torch.log_softmax(chosen, -1).gather(1, drawn[:, None])[:, 0]
            noise = CHOICE_NOISE * sampling.temperature * (1 - step / steps)
            if noise > 0:
                uniform = torch.rand(confidence.shape, generator=generator, device=x.device).clamp(1e-10, 1 - 1e-10)
                confidence = confidence + noise * -torch.log(-torch.log(uniform))
        else:
            confidence = torch.rand(drawn.shape, generator=generator, device=x.device)
        score[rows, cols] = confidence
        commit = masked.sum(1) - still_masked(total, step, steps)  # (B,) ids to commit in each row
        rank = score.argsort(1, descending=True).argsort(1)  # rank of each position's score within its row
        chosen_now = masked & (rank < commit[:, None])
        proposal = torch.full_like(x, mask_id)
        proposal[rows, cols] = drawn
        x = torch.where(chosen_now, proposal, x)
        if notes:
            x, chosen_now = pair_notes(x, chosen_now, masked, constrained, sampling, generator)
            x = undouble(x, chosen_now, logits, sampling, generator, within)  # after: a pair may remove time
        masked = masked & ~chosen_now
    return x


def note_order(x: torch.Tensor, mask_id: int, vocab_size: int) -> torch.Tensor:
    """(B, T, V) bool, True where an id may not go because of a known neighbour (MASK: not known yet), by the
    note-level codec: after a Pitch only a Duration; a Duration only after a Pitch; before a known Duration only
    a Pitch; before any other known id no Pitch (it would have no Duration); after a Velocity only a Pitch where
    one may go; before a known id that is not a Pitch no Velocity (the codec writes one only to change a note's
    loudness: the notes SMDIM, left free, filled half an infill region's slots with Velocities that set nothing).
    A slot with nothing after it (the window's end) is free on that side. Some id is always allowed."""
    before = torch.nn.functional.pad(x, (1, 0), value=BOS)[:, :-1]
    after = torch.nn.functional.pad(x, (0, 1), value=mask_id)[:, 1:]
    vocab = torch.arange(vocab_size, device=x.device)
    is_pitch = (vocab >= PITCH) & (vocab < DURATION)  # (V,)
    is_duration = (vocab >= DURATION) & (vocab < TIME_SHIFT)
    is_velocity = (vocab >= VELOCITY) & (vocab < notecodec.VOCAB_SIZE)
    after_pitch = ((before >= PITCH) & (before < DURATION))[..., None]  # (B, T, 1)
    after_velocity = ((before >= VELOCITY) & (before < notecodec.VOCAB_SIZE))[..., None]
    before_duration = ((after >= DURATION) & (after < TIME_SHIFT))[..., None]
    before_pitch = ((after >= PITCH) & (after < DURATION))[..., None]
    known_after = (after != mask_id)[..., None]
    before_other = known_after & ~before_duration
    return ((after_pitch & ~is_duration) | (~after_pitch & is_duration)
            | (~after_pitch & before_duration & ~is_pitch) | (before_other & is_pitch)
            | (after_velocity & ~before_other & ~is_pitch) | (known_after & ~before_pitch & is_velocity))


def _known_clock(x: torch.Tensor) -> np.ndarray:
    """(B, T) ticks of the known TimeShifts up to and including each position (a MASK moves no clock): a Pitch
    there sounds at that time, or later if a MASK before it becomes a TimeShift."""
    return np.cumsum(notecodec.shift_ticks(x.cpu().numpy()), axis=1)


def doubled_keys(x: torch.Tensor, mask_id: int, vocab_size: int, within: int = 1) -> torch.Tensor:
    """(B, T, V) bool, True at the Pitches a masked slot may not draw: the keys struck less than `within` ticks of
    known time from it on either side (`_known_clock`; 1: at its own onset)."""
    batch, length = x.shape
    clock = torch.from_numpy(_known_clock(x)).to(x.device, torch.float32)
    is_pitch = (x >= PITCH) & (x < DURATION)
    key = torch.nn.functional.one_hot((x - PITCH).clamp(0, 127), 128).bool() & is_pitch[..., None]  # (B, T, 128)
    struck = torch.where(key, clock[..., None], float("-inf"))
    last = struck.cummax(1).values  # each key's latest strike at or before each position
    ahead = torch.where(key, clock[..., None], float("inf")).flip(1).cummin(1).values.flip(1)
    near = (clock[..., None] - last < within) | (ahead - clock[..., None] < within)
    forbidden = torch.zeros(batch, length, vocab_size, dtype=torch.bool, device=x.device)
    forbidden[..., PITCH:DURATION] = near & (x == mask_id)[..., None]
    return forbidden


def undouble(x: torch.Tensor, chosen_now: torch.Tensor, logits: torch.Tensor, sampling: SamplingConfig,
             generator: torch.Generator | None, within: int = 1) -> torch.Tensor:
    """x with every Pitch committed in this pass that strikes a key struck less than `within` ticks of known time
    away (`_known_clock`; by one known before this pass, or committed now at an earlier position) drawn again from
    its `logits` (B, T, V) among the keys not struck that near; left as it is where every key is."""
    ids, now = x.cpu().numpy(), chosen_now.cpu().numpy()
    is_pitch = (ids >= PITCH) & (ids < DURATION)
    if not (is_pitch & now).any():
        return x
    clock = _known_clock(x)
    x = x.clone()
    for row in np.flatnonzero((is_pitch & now).any(1)).tolist():
        positions = np.flatnonzero(is_pitch[row])
        keys = ids[row, positions] - PITCH
        settled = ~now[row, positions]  # strikes that stand: known before this pass, then each one checked
        times = clock[row, positions]
        for index in np.flatnonzero(~settled).tolist():
            close = settled & (np.abs(times - times[index]) < within)
            taken = set(keys[close].tolist())
            if int(keys[index]) in taken:
                allowed = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
                allowed[PITCH:DURATION] = 0.0
                allowed[[PITCH + k for k in taken]] = float("-inf")
                options = logits[row, positions[index]] + allowed
                if torch.isfinite(options).any():
                    keys[index] = int(sample(options[None], sampling, generator)[0]) - PITCH
                    x[row, positions[index]] = PITCH + int(keys[index])
            settled[index] = True
    return x


def pair_notes(x: torch.Tensor, chosen_now: torch.Tensor, masked: torch.Tensor, logits: torch.Tensor,
               sampling: SamplingConfig, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Give every Pitch committed in this pass its Duration now: the slot after it, if it was masked before the
    pass (committed now to something else, or still masked), becomes a Duration drawn from its `logits` (B, T, V)
    among the Durations, and is committed. Left to right, so of two Pitches committed side by side the second
    becomes the first's Duration. -> (x, chosen_now) updated."""
    ids, was_masked, now = x.cpu().numpy(), masked.cpu().numpy(), chosen_now.cpu().numpy()
    is_pitch = (ids >= PITCH) & (ids < DURATION)
    lacking = np.zeros_like(was_masked)
    lacking[:, 1:] = is_pitch[:, :-1] & now[:, :-1] & was_masked[:, 1:] & ~((ids[:, 1:] >= DURATION)
                                                                           & (ids[:, 1:] < TIME_SHIFT))
    fixed = []
    for row, col in zip(*np.nonzero(lacking), strict=True):  # few, in order: a fix only ever removes the next one
        if not fixed or fixed[-1] != (row, col - 1):
            fixed.append((row, col))
    if not fixed:
        return x, chosen_now
    rows = torch.tensor([r for r, _ in fixed], device=x.device)
    cols = torch.tensor([c for _, c in fixed], device=x.device)
    only = torch.full((logits.shape[-1],), float("-inf"), device=logits.device)
    only[DURATION:TIME_SHIFT] = 0.0
    x = x.clone()
    x[rows, cols] = sample(logits[rows, cols] + only, sampling, generator)
    chosen_now = chosen_now.clone()
    chosen_now[rows, cols] = True
    return x, chosen_now
