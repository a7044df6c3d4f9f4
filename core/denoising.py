"""New music from a denoiser (core.models.interface.Denoiser), as the token stream a generation session reads.

A left-to-right model writes one id after another (core/generate.py); a denoiser fills a masked region of a
window at once. To continue a primer it fills, window after window, a masked region after what is known: the
primer's (and then its own) last ids up to half the window as context, the rest masked. A new piece is the same
from BOS alone. Every front end sees the same stream: one array (B,) of ids per step, PAD for a lane that has
finished (or, between timed windows, has nothing more in this one).

With the note-level codec the region is real time (`timed_stream`): infill's layout of an empty region after the
music, as many masks as the primer's ids per second fill in it, whose TimeShifts may add up to its length and no
more (core/infill.py's time rule). With the event codec, or when the model may end the piece, the region is ids:
how many to mask comes from the seconds asked and the tokens per second of the music the model was trained on
(with a margin, since an open region's density is the model's choice), and what is written is cut at the seconds
asked, counted in the codec's TimeShifts like `generate` does.
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
from core.harmony import HARMONY_WEIGHT, music_near, with_harmony
from core.midi import Performance
from core.tokenizer import EOS, PAD, TICK_SECONDS

MARGIN = 1.25  # ids masked per id the training music's density predicts: most windows reach the seconds asked
EXTRA_IDS = 8  # and a few more: a short request still gets a phrase
RATE_SECONDS = 20.0  # the primer's last seconds whose ids per second set a timed window's masks
RATE_NOTES = 8  # fewer notes than this in them (a new piece): the model's training music's rate
MIN_SLOTS = 8  # a short window still gets a figure
MASKED_SHARE = 0.5  # of a timed window: its masks; the rest reads the music before them
# A timed window's masks per id of the primer's rate: its groups of a second (infill.PACE_TICKS) leave some unused.
# bench/continuation.py, ten MAESTRO primers x 3 seeds, notes/s written: 8.18 at 1.0, 9.31 at 1.12 (the pianists 9.46).
TIMED_MARGIN = 1.12


def denoise_stream(model, primer: torch.Tensor, state, sampling: SamplingConfig | None = None, *,
                   max_tokens: int | None = None, max_seconds: float | None = None, stop_at_eos: bool = False,
                   seed: int | None = None, max_note_seconds: float | None = None, steps: int | None = None,
                   constraints: Constraints | None = None, harmony: float = HARMONY_WEIGHT
                   ) -> Iterator[np.ndarray]:
    """Yield the ids (B,) that continue `primer` (prepared: BOS first, no EOS), one per step, one per lane of
    `state`, written a window at a time by `model.denoise`, until max_tokens or max_seconds (one is needed: a
    denoiser writes a region of a chosen length), both counted in the model's codec. Notes never sound longer than
    `max_note_seconds`: with the event codec a note held that long is released (its NoteOff replaces the id, and
    later windows read it so); with the notes codec no longer Duration is ever drawn (and the unmasking follows
    the codec's order: core/models/smdim/sampling.py). `constraints`: their position-independent part (scale,
    range, velocity: `Constraints.token_mask`) limits every id drawn; in timed windows a density sets how many
    notes each holds; polyphony follows the music id by id and is for left-to-right models. `harmony`: the pull of
    a timed window's keys towards its lane's last HARMONY_SECONDS (core/harmony.py); windows of ids have none."""
    if max_tokens is None and max_seconds is None:
        raise ModelError(f"a {model.arch} model writes a region of a chosen length: give seconds or max tokens")
    codec = codec_of(model)
    if writes_timed(model, max_seconds, stop_at_eos):
        yield from timed_stream(model, primer, state, sampling, max_tokens=max_tokens, max_seconds=max_seconds,
                                seed=seed, max_note_seconds=max_note_seconds, steps=steps, constraints=constraints,
                                harmony=harmony)
        return
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


def writes_timed(model, max_seconds: float | None, stop_at_eos: bool) -> bool:
    """Whether `denoise_stream` writes in timed windows (`timed_stream`): a note-level codec's model asked for a
    length of music it may not end early."""
    return codec_of(model).NAME == notecodec.NAME and max_seconds is not None and not stop_at_eos


def timed_stream(model, primer: torch.Tensor, state, sampling: SamplingConfig | None = None, *,
                 max_tokens: int | None = None, max_seconds: float, seed: int | None = None,
                 max_note_seconds: float | None = None, steps: int | None = None,
                 constraints: Constraints | None = None, harmony: float = HARMONY_WEIGHT) -> Iterator[np.ndarray]:
    """`denoise_stream` for the note-level codec, by its time rule (core/infill.py): each window is an empty
    region of real time after what is known, as many masks as the primer's ids per second fill in that time
    (`ids_rate`, x TIMED_MARGIN), whose TimeShifts may add up to the region's time and no more. Left to choose its
    own time in an open window, the notes SMDIM wrote 1.77 notes/s after the ten MAESTRO primers where the pianists
    played 9.46, over a range of 37 semitones (54 played); told the time (and its notes' lengths), 8.29 notes/s over
    46 semitones, polyphony 4.1 (played 3.8; bench/continuation.py).

    The new notes are those infill reads from the masks (a note may ring past its window; none strikes a key the
    music holds or repeats one faster than the primer does), encoded again with the window's closing silence, so
    each lane's ids span exactly the seconds written. Lanes are filled one after another (each its own piece so
    far); a lane with fewer ids in a window yields PAD while the others finish theirs, and LaneLimits ends it at
    `max_seconds`. No new note lasts longer than the primer's recent notes do (infill's `length_guard`), nor than
    `max_note_seconds`. A density in `constraints` (notes per second) sets the masks instead of the primer
    (TOKENS_PER_NOTE ids a note) and caps the notes of each window, as infill's does. Each window's keys are
    pulled towards the pitch classes of its lane's last HARMONY_SECONDS (core/harmony.py; `harmony` 0: not at all)."""
    from core import infill

    limits = LaneLimits(state.batch, max_tokens, max_seconds, False, notecodec)
    device = next(model.parameters()).device
    generator = seeded_generator(device, seed)
    model.eval()
    allowed = constraints or Constraints()
    constrain = infill.token_constrain(allowed, model.config.vocab_size, notecodec)
    primer_ids = primer.numpy()
    whole = notecodec.decode(primer_ids)  # read once: each lane's music so far begins as it
    now = int(notecodec.shift_ticks(primer_ids).sum())  # ticks: where the next window begins, every lane alike
    recent = recent_notes(whole, now * TICK_SECONDS)
    longest = None if recent is None else infill.length_guard(recent)  # no new note outlasts the primer's
    if longest is not None:
        max_note_seconds = longest if max_note_seconds is None else min(max_note_seconds, longest)
    if max_note_seconds is not None:
        constrain = infill.with_mask(constrain, duration_limit(model.config.vocab_size, max_note_seconds))
    pitches = allowed.pitches()
    pieces = [whole] * state.batch  # each lane's music so far
    density = allowed.density
    rate = (density * infill.TOKENS_PER_NOTE[notecodec.NAME] if density is not None
            else ids_rate(recent, now * TICK_SECONDS, model.config.tokens_per_second))
    one_lane = model.new_state(model.plan(state.nbytes, 1), 1)  # a lane at a time, within the lanes' budget
    per_window = one_lane.window * MASKED_SHARE / rate  # seconds whose masks fill that share of a window
    while limits.more() and not limits.over():
        left = max_seconds - float(limits.seconds[~limits.done].min())
        ticks = max(1, min(infill.to_tick(left), infill.to_tick(per_window)))
        start, end = now * TICK_SECONDS, (now + ticks) * TICK_SECONDS
        slots = max(MIN_SLOTS, math.ceil(rate * ticks * TICK_SECONDS * TIMED_MARGIN))
        cap = None if density is None else max(1, math.ceil(density * (end - start)))
        written = []  # each lane's ids of this window
        for index, piece in enumerate(pieces):
            layout = infill.lay_out(piece, start, end, slots, model.mask_id, notecodec)
            rule = with_harmony(constrain, music_near(piece, start, start), notecodec, harmony)
            bounds = (0, len(layout.ids) - 1)  # the piece's EOS stays unread: the music goes on
            guard = infill.restrike_guard(piece, start, end)
            filled = infill.fill(model, layout, one_lane, steps, sampling, generator, rule, bounds,
                                 order=model.config.order, min_repeat=guard)[0]
            new = infill.new_notes(filled, layout, piece, start, end, pitches, cap, guard, until=math.inf)
            pieces[index] = Performance.concat(piece, new)
            written.append(_window_ids(new, now, ticks))
        now += ticks
        for column in range(max(len(lane) for lane in written)):
            tokens = np.array([lane[column] if column < len(lane) else PAD for lane in written], dtype=np.int64)
            yield limits.close(tokens)
            if limits.over():
                return


def recent_notes(piece: Performance, end: float) -> Performance | None:
    """The notes of a primer's last RATE_SECONDS (`piece`, ending at `end` seconds), or None when they are fewer
    than RATE_NOTES (a new piece, a primer of a few notes): too few to tell how the music goes."""
    recent = piece.slice_time(max(end - RATE_SECONDS, 0.0), end + TICK_SECONDS)
    return recent if len(recent) >= RATE_NOTES else None


def ids_rate(recent: Performance | None, end: float, fallback: float) -> float:
    """Ids per second of a primer's `recent_notes` (the density a timed window is given), up to its `end`, or
    `fallback` (the model's training music's) when there are too few."""
    if recent is None:
        return fallback
    first = float(recent.onset.min())
    return len(notecodec.encode(recent.shifted(-first), bos=False, eos=False)) / max(end - first, 1.0)


def _window_ids(new: Performance, start_tick: int, ticks: int) -> np.ndarray:
    """The note-level codec's ids of a window's new notes, from its start, closed by the silence up to its end:
    they span exactly `ticks`."""
    ids = notecodec.encode(new.shifted(-start_tick * TICK_SECONDS), bos=False, eos=False).astype(np.int64)
    rest = ticks - int(notecodec.shift_ticks(ids).sum())
    return np.concatenate([ids, notecodec.silence_ids(rest * TICK_SECONDS).astype(np.int64)])


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
