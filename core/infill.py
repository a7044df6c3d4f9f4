"""Infilling (issue #18): regenerate one region of a piece, [start, end) seconds, with the music on both sides as
context, and keep everything else exactly as it was.

A denoiser (core.models.interface.Denoiser, e.g. SMDIM) fills masked positions from both sides. In token space
the piece becomes

    BOS  left context ... | region skeleton with MASK groups | ... right context  EOS

where the context is the codec's encoding of every note that is kept (the notes outside the region, the ones
crossing its left edge, and with keep_above / keep_below the kept voice inside it), and the region's skeleton is
what those kept notes say happens inside it, with groups of MASK slots among it, each as many as its share of the
region's time. The slots are counted from `density` x seconds, or from the region's own ids x MARGIN, bounded.

The codec is the model's (core.codecs.codec_of). With the event codec ("performance") the skeleton is the kept notes'
events and the TimeShifts between them, cut into slices of at most SLICE_TICKS with a group of masks before each
(a kept note crossing into the region has its NoteOff there), and its TimeShifts carry the region's time. The fill
keeps its own clock (a mask may hold a TimeShift too), mapped back onto the real one by a piecewise-linear warp
through the kept events of the region (its start and end, each kept id that is not a TimeShift), so a new note
always starts inside [start, end) and a kept voice stays in time with what is written around it.

With the note-level codec ("notes") a kept note is whole at its onset (Velocity, Pitch, Duration), and a new note
is a masked Pitch followed at once by a Duration (a Pitch without one is dropped, as notecodec.decode does; the
unmasking follows the codec's order, core.models.smdim.sampling). There the masks write the time themselves: the
region holds only the kept voice's notes, with a group of masks before each of its onsets and one after the last
(whole notes at a time, GROUP_UNIT slots; by time, leaning toward the busier side, EDGE_SECONDS), and each
group's TimeShifts may add up to its gap, the real time to the next kept onset or the region's end, and no more
(`time_rule`). A gap longer than PACE_TICKS is cut into equal parts
of at most that, a group each (`_paced`): one group over a whole region got most of its notes beside the known music
on either side and few between. So a new note starts at its group's start plus the time its group wrote before it,
its onsets spread over the gap as the model spaced them (`_spread`). (Measured on MAESTRO regions with a skeleton
of 250 ms slices, the notes SMDIM wrote TimeShifts into the masks as well, 2-15x the region's time, and the warp
squeezed its notes into staccato clusters.) Its slots are counted with the time: the region's own ids, TimeShifts
included.

The result is assembled at the note level so the rules hold exactly: every kept note is the input's own values;
a new note starts inside the region, ends by the region's end and before the next kept strike of its pitch, never
strikes a key a kept note holds, never strikes a key again faster than the music around the region does
(`restrike_guard`, the continuation's default guard), with the note-level codec lasts no longer than the music
around the region does (`length_guard`), and lies in the pitch range left to it. The keys the model draws are
pulled towards the pitch classes sounding within two bars or so of the region (core/harmony.py; `harmony=0`: not at
all). When context + region exceed the plan's window, the masks are filled window by window: each window sees a
quarter of a window of what comes before (the previous windows' fill included) and commits its masks up to a
quarter of a window before its end, so the next window overlaps it; the last one sees the right context itself.
`context` (seconds) bounds the music read each side of the region: the model reads only the ids within it, fewer
than a window when the region and both sides fit (a pass costs about its length); CONTEXT_SECONDS by default, None
reads as much as the window holds.

Left-to-right models (DSMR, PerceiverS) cannot see what follows a region: infill refuses them in one line that
names a denoiser (the benchmark's "continue and cut" baseline is theirs, bench/infill.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from core import notecodec, tokenizer
from core.budget import check_state_fits, resolve_budget
from core.codecs import Codec, codec_of
from core.constraints import DENSITY_RANGE, Constraints, note_name
from core.denoising import duration_limit
from core.errors import RecitalError
from core.generate import SamplingConfig
from core.harmony import HARMONY_WEIGHT, check_weight, music_near, with_harmony
from core.midi import Performance, canonical
from core.models.interface import DENOISE
from core.tokenizer import DEFAULT_VELOCITY_BIN, EOS, NOTE_OFF, NOTE_ON, TICK_SECONDS, bin_velocity

# Slots per token of the region's own music: room for a little more than was there. On bench/infill.py's 50
# regions (one seed) the notes default wrote, minus the pianists' notes/s: -0.98 at 1.0, +0.25 at 1.12, +1.31 at
# 1.25 (chosen while 30% of the notes it drew doubled or re-struck a key and were dropped: smdim/sampling.py).
# Paced in groups of a second (PACE_TICKS), whose ends leave some slots unused: -0.82 at 1.12, +0.14 at 1.22.
MARGIN = 1.22
MIN_SLOTS = 8  # a short region still gets a figure
MAX_SLOTS_PER_SECOND = 120  # the most slots a second of region gets (MAESTRO's dense passages use ~60 ids/s)
# Ids a note takes, by codec: the event codec's NoteOn and NoteOff and about one TimeShift or Velocity; the
# note-level codec's Pitch and Duration, and on MAESTRO about 0.9 TimeShift and 0.8 Velocity more.
TOKENS_PER_NOTE = {tokenizer.NAME: 3, notecodec.NAME: 4}
# The unmasking order of a region, whatever the model's default for open-ended writing: the surest ids first. A
# region's time is bounded (the notes codec's time rule, the event codec's skeleton), so the surest ids cannot run
# away into silence as they do in an open window; measured with the notes SMDIM on MAESTRO regions, closer to the
# truth than "random" on polyphony (1.85 vs 2.93 from it), pitch range (8.1 vs 16.1), pitch classes and held
# notes, further on notes/s (2.2 vs 1.1).
ORDER = "confidence"
GUARD_CONTEXT = 60.0  # seconds of kept music each side of the region that set its re-strike and length guards
# A new note lasts no longer than this share of the music around it does (`length_guard`). 0.98 until every key
# of a chord stood (core/models/smdim/sampling.py): then chords ran thick (bench/infill.py, one seed: polyphony
# 1.65 from the truth, +0.23); at 0.9, 1.32 (-0.74), range 11.5 -> 10.4, the other statistics alike.
LONGEST_QUANTILE = 0.9
LONGEST_FLOOR = 0.25  # and may always last this long (seconds)
LENGTH_NOTES = 8  # fewer notes than this around: no length guard (too few to tell)
SLICE_TICKS = 25  # the region's time is cut into TimeShifts of at most 250 ms, a group of masks before each
# The slots a group of masks holds come in multiples of this (the rest in the last group): a new note of the
# note-level codec takes [Velocity] Pitch Duration, which a group of one or two slots between kept onsets could
# not hold (every slot would be a lone Pitch or a Velocity). The event codec's NoteOn and NoteOff are one
# id each: any group size writes something.
GROUP_UNIT = {tokenizer.NAME: 1, notecodec.NAME: 3}
# The note-level codec's masks come in groups of at most this much time (1 s; None: one group per gap). As one
# group a region's fill crowded beside the music on either side (20 MAESTRO regions: 1.55x and 1.81x the mean
# density in the first and last eighth, 0.53x in the second); paced, 0.91-1.17x (the pianists: 0.94-1.15x). On
# bench/infill.py's 50 regions the gap between the fill's first / last 2 s and the 2 s beside them went, in notes/s,
# 4.85 / 6.17 -> 3.17 / 3.41 (the music's own edges: 2.92 / 2.63) and in polyphony 2.05 / 1.84 -> 1.34 / 1.51.
PACE_TICKS: int | None = 100
# Seconds of music the model reads each side of a region by default (None: as much as the window holds, ~9 s of
# MAESTRO each side of an 8 s region). bench/infill.py's 50 regions, the shipped default-smdim, seeds 0-2 (150
# regions each), the whole window / 6 s, distance from the truth: notes/s 0.96 / 1.01, polyphony 1.43 / 1.37, pitch
# range 10.6 / 10.5, pitch classes 0.399 / 0.402, re-strikes 0.89 / 0.97; the edges alike (left / right notes/s 3.39
# / 3.56 and 3.32 / 3.45): each within the spread between seeds, for ~60% of the time (an 8 s region: python -m
# bench.smdim --context).
CONTEXT_SECONDS: float | None = 6.0
# The note-level codec's masks are shared among its groups by their time and by how busy the music is beside the
# region: from the onsets per second of the EDGE_SECONDS before it, at its start, to those of the EDGE_SECONDS after
# it, at its end, linearly (`edge_densities`; none lower than EDGE_FLOOR x their mean; None: by time alone). Shared
# by time alone, a region between a quiet bar and a busy one began too busy and ended too quiet: bench/infill.py's
# 50 regions (seed 0), the fill's first and last 2 s against the 2 s beside them, notes/s 3.45 / 3.46 -> 2.66 / 2.50
# (the music's own edges: 2.92 / 2.63), polyphony 1.33 / 1.38 -> 1.21 / 1.31; the region as a whole alike. With
# CHOICE_NOISE 2 as well, 3 seeds: left / right notes/s 2.70 / 2.63, polyphony 1.45 / 1.33 (the README's table).
EDGE_SECONDS: float | None = 2.0
EDGE_FLOOR = 0.25


class InfillError(RecitalError):
    """A region or a setting infill cannot use (one line: what and where)."""


@dataclass(frozen=True)
class Layout:
    """One piece laid out for the model: ids (L,) with MASK where the model writes, and where the region lies."""

    ids: np.ndarray  # int64 (L,): BOS, kept ids, MASK groups, EOS
    masked: np.ndarray  # bool (L,)
    first: int  # index of the region's first id
    after: int  # index of the right context's first id (the region is ids[first:after])
    start_tick: int  # the region's start and end on the codec's grid
    end_tick: int
    codec: Codec  # what the ids are (the model's codec)
    clock: np.ndarray  # int64 (L,): the real tick before each id (a MASK: its group's start)
    # The note-level codec's time rule: the mask group of each slot (int64 (L,), -1 where none) and the ticks each
    # group's TimeShifts may add up to (int64 (G,)). None for the event codec, whose skeleton carries the time.
    group: np.ndarray | None = None
    gap: np.ndarray | None = None


def infill(model, piece: Performance, start: float, end: float, *, keep_above: int | None = None,
           keep_below: int | None = None, variations: int = 1, steps: int | None = None,
           density: float | None = None, seed: int | None = None, sampling: SamplingConfig | None = None,
           constraints: Constraints | None = None, budget: int | str | None = None,
           context: float | None = CONTEXT_SECONDS, harmony: float = HARMONY_WEIGHT) -> list[Performance]:
    """`variations` versions of `piece` with the notes that start in [start, end) written anew by `model` (a
    denoiser), each a whole piece on the input's grid.

    keep_above / keep_below: the region's notes at or above (at or below) this MIDI pitch stay, the model sees
    them and writes only below (above) it: an accompaniment under a melody, or over a bass. density: new notes
    per second at most (default: the constraints' density, else as many as the region's own music allows for).
    steps: unmasking passes per window (the model's default if None). constraints: limits on the new notes
    (core/constraints.py; their token mask is applied to every slot). budget: bytes for all variations together
    (None: the model's default for each); it buys the window. context: seconds of music each side of the region
    the model reads at most (CONTEXT_SECONDS; None: as much as the window holds around it). harmony: how hard the
    pitch classes sounding within HARMONY_SECONDS of the region pull the new notes' keys (core/harmony.py; 0: not
    at all).
    """
    check_region(piece, start, end)
    if getattr(model, "family", None) != DENOISE:
        raise InfillError(f"infill needs a model that fills a region from both sides, such as SMDIM "
                          f"(default-smdim); {model.arch} writes left to right only")
    if variations < 1:
        raise InfillError(f"variations must be at least 1, got {variations}")
    if steps is not None and steps < 1:
        raise InfillError(f"steps must be at least 1, got {steps}")
    if context is not None and not (math.isfinite(context) and context >= 0):
        raise InfillError(f"context must be a number of seconds >= 0 each side of the region, got {context}")
    check_weight(harmony)
    replaced, kept_voice = region_notes(piece, start, end, keep_above, keep_below)
    allowed = new_note_constraints(piece, replaced, constraints, keep_above, keep_below)
    density = density if density is not None else allowed.density
    if density is not None and not DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1]:
        raise InfillError(f"density must be {DENSITY_RANGE[0]:g} to {DENSITY_RANGE[1]:g} notes per second, "
                          f"got {density:g}")
    seconds = end - start
    codec = codec_of(model)
    slots = slot_count(piece, start, end, replaced, density, codec)
    kept = _select(piece, ~replaced)
    layout = lay_out(kept, start, end, slots, model.mask_id, codec)

    total = resolve_budget(model, budget, variations)
    plan = model.plan(total, variations)
    check_state_fits(plan.nbytes, "this budget" if variations == 1 else f"this budget for {variations} variations")
    state = model.new_state(plan, variations)
    generator = torch.Generator(device=next(model.parameters()).device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    model.eval()
    constrain = token_constrain(allowed, model.config.vocab_size, codec)
    around = music_around(kept, start, end)
    longest = length_guard(around) if codec is notecodec else None  # the event codec's notes end by NoteOffs
    if longest is not None:
        constrain = with_mask(constrain, duration_limit(model.config.vocab_size, longest))
    constrain = with_harmony(constrain, music_near(kept, start, end), codec, harmony)
    min_repeat = repeat_guard_of(around)
    filled = fill(model, layout, state, steps, sampling, generator, constrain, reach(layout, context),
                  min_repeat=min_repeat)
    cap = None if density is None else max(1, math.ceil(density * seconds))
    pieces = []
    for lane in range(variations):
        new = new_notes(filled[lane], layout, kept, start, end, allowed.pitches(), cap, min_repeat)
        both = Performance.concat(kept, new)
        pieces.append(replace(both, grid=piece.grid))
    return pieces


# -- the region --------------------------------------------------------------------------------------------------

def check_region(piece: Performance, start: float, end: float) -> None:
    """InfillError unless [start, end) is a region of at least one tick inside a piece with notes."""
    if not len(piece):
        raise InfillError("the piece has no notes: there is nothing to infill around")
    if not (math.isfinite(start) and math.isfinite(end)):
        raise InfillError(f"the region's start and end must be numbers of seconds, got {start} and {end}")
    if end <= start:
        raise InfillError(f"the region's end ({end:g} s) must come after its start ({start:g} s)")
    duration = piece.duration
    if start < 0 or start >= duration or end > duration + TICK_SECONDS:
        raise InfillError(f"the region {start:g}-{end:g} s lies outside the piece, which spans 0-{duration:.2f} s")
    if to_tick(end) <= to_tick(start):
        raise InfillError(f"the region {start:g}-{end:g} s is shorter than the codec's {TICK_SECONDS * 1000:g} ms")


def region_notes(piece: Performance, start: float, end: float, keep_above: int | None,
                 keep_below: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(replaced, kept voice): bool (n,) masks of the notes starting in the region that the model rewrites, and of
    those it keeps (at or above keep_above, at or below keep_below)."""
    for name, pitch in (("keep above", keep_above), ("keep below", keep_below)):
        if pitch is not None and not 0 <= pitch <= 127:
            raise InfillError(f"{name} must be a MIDI pitch 0-127, got {pitch}")
    inside = (piece.onset >= start) & (piece.onset < end)
    voice = np.zeros(len(piece), dtype=bool)
    if keep_above is not None:
        voice |= piece.pitch >= keep_above
    if keep_below is not None:
        voice |= piece.pitch <= keep_below
    return inside & ~voice, inside & voice


def new_note_constraints(piece: Performance, replaced: np.ndarray, constraints: Constraints | None,
                         keep_above: int | None, keep_below: int | None) -> Constraints:
    """What the new notes may be: the composer's constraints (a key 'from the primer' read from the kept notes)
    within the pitch range the kept voice leaves."""
    allowed = constraints or Constraints()
    if allowed.from_primer:
        allowed = allowed.resolve(_select(piece, ~replaced))
    low = max(allowed.low, 0 if keep_below is None else keep_below + 1)
    high = min(allowed.high, 127 if keep_above is None else keep_above - 1)
    if low > high:
        kept = " and ".join(part for part in (
            None if keep_above is None else f"at or above {note_name(keep_above)}",
            None if keep_below is None else f"at or below {note_name(keep_below)}") if part)
        raise InfillError(f"keeping the notes {kept} leaves no pitch to write in the range "
                          f"{note_name(allowed.low)}-{note_name(allowed.high)}")
    return replace(allowed, low=low, high=high)


def slot_count(piece: Performance, start: float, end: float, replaced: np.ndarray, density: float | None,
               codec: Codec = tokenizer) -> int:
    """MASK slots of the region: TOKENS_PER_NOTE per note `density` allows, else the replaced notes' own ids in
    `codec` x MARGIN (the event codec's without its TimeShifts, which the skeleton brings; the note-level codec's
    all of them, time included, since its masks write the region's time); at least MIN_SLOTS, at most
    MAX_SLOTS_PER_SECOND per second."""
    seconds = end - start
    if density is not None:
        wanted = density * seconds * TOKENS_PER_NOTE[codec.NAME]
    else:
        own = codec.encode(_select(piece, replaced).shifted(-start), bos=False, eos=False)  # timed from `start`
        wanted = (len(own) if codec is notecodec else int(np.sum(codec.shift_ticks(own) == 0))) * MARGIN
    return int(min(max(math.ceil(wanted), MIN_SLOTS), math.ceil(MAX_SLOTS_PER_SECOND * seconds)))


# -- token layout -----------------------------------------------------------------------------------------------

def lay_out(kept: Performance, start: float, end: float, slots: int, mask_id: int,
            codec: Codec = tokenizer) -> Layout:
    """The kept notes' ids in `codec` with `slots` MASKs in the region (see the module): between the event
    codec's skeleton TimeShifts, or between the note-level codec's kept notes with the time left to the masks."""
    ids = codec.encode(kept).astype(np.int64)
    start_tick, end_tick = to_tick(start), to_tick(end)
    ids, first = _cut(ids, start_tick, codec)
    ids, after = _cut(ids, end_tick, codec)
    if codec is notecodec:
        return _lay_out_notes(ids, first, after, start_tick, end_tick, slots, mask_id, edge_densities(kept, start, end))
    region = ids[first:after]
    # slices: every TimeShift of the region cut to at most SLICE_TICKS, a group of masks before each
    pieces: list[np.ndarray] = []
    ticks = codec.shift_ticks(region)
    slice_ticks = [t for tick in ticks[ticks > 0].tolist() for t in _split(tick)]
    groups = _group_sizes(slots, slice_ticks, GROUP_UNIT.get(codec.NAME, 1))
    slice_index = 0
    for token, tick in zip(region.tolist(), ticks.tolist(), strict=True):
        if not tick:
            pieces.append(np.array([token]))
            continue
        for part in _split(tick):
            pieces.append(np.full(groups[slice_index], mask_id))
            pieces.append(np.array([codec.TIME_SHIFT + part - 1]))
            slice_index += 1
    body = np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)
    out = np.concatenate([ids[:first], body, ids[after:]])
    shift = codec.shift_ticks(out)  # MASK moves no clock: the skeleton is the region's real time
    return Layout(out, out == mask_id, first, first + len(body), start_tick, end_tick, codec,
                  np.cumsum(shift) - shift)


def edge_densities(kept: Performance, start: float, end: float) -> tuple[float, float] | None:
    """How busy the kept music is in the EDGE_SECONDS before and after the region (onsets per second), each over
    their mean and at least EDGE_FLOOR; None where a side has no music at all (a region at the piece's end, or a
    continuation's window: nothing after it to match) or neither has onsets near the region."""
    if EDGE_SECONDS is None or not (kept.onset < start).any() or not (kept.onset >= end).any():
        return None
    before = np.sum((kept.onset >= start - EDGE_SECONDS) & (kept.onset < start)) / EDGE_SECONDS
    after = np.sum((kept.onset >= end) & (kept.onset < end + EDGE_SECONDS)) / EDGE_SECONDS
    if before + after <= 0:
        return None
    mean = (before + after) / 2
    return max(float(before / mean), EDGE_FLOOR), max(float(after / mean), EDGE_FLOOR)


def _lay_out_notes(ids: np.ndarray, first: int, after: int, start_tick: int, end_tick: int, slots: int,
                   mask_id: int, edges: tuple[float, float] | None = None) -> Layout:
    """The note-level codec's region: the kept voice's notes (their ids without the TimeShifts between them) with
    a group of masks before each onset and one after the last, as many as its share of the region's time, weighed
    from the busyness at the region's start, `edges[0]`, to that at its end, `edges[1]` (None: by time alone); each
    group's gap is the time up to that onset (or the region's end), which its TimeShifts may fill (`time_rule`)."""
    region = ids[first:after]
    ticks = notecodec.shift_ticks(region)
    gaps, onsets = [0], [[]]  # the time before each kept onset, and the ids there; the last entry: after them all
    for token, tick in zip(region.tolist(), ticks.tolist(), strict=True):
        if tick and onsets[-1]:
            gaps.append(0)
            onsets.append([])
        gaps[-1] += tick
        if not tick:
            onsets[-1].append(token)
    gaps, onsets = _paced(gaps, onsets)
    weights = np.array(gaps, dtype=np.float64)
    if edges is not None and len(gaps):
        middle = (np.cumsum(weights) - weights / 2) / max(end_tick - start_tick, 1)  # (G,) 0..1 in the region
        weights = weights * ((1 - middle) * edges[0] + middle * edges[1])
    sizes = _group_sizes(slots, weights.tolist(), GROUP_UNIT[notecodec.NAME])
    body, clock, group = [], [], []
    now = start_tick
    for index, (gap, kept, size) in enumerate(zip(gaps, onsets, sizes, strict=True)):
        body += [mask_id] * size + kept
        clock += [now] * size + [now + gap] * len(kept)
        group += [index] * size + [-1] * len(kept)
        now += gap
    left, right = ids[:first], ids[after:]
    left_shift, right_shift = notecodec.shift_ticks(left), notecodec.shift_ticks(right)
    out = np.concatenate([left, np.array(body, dtype=np.int64), right])
    clock = np.concatenate([np.cumsum(left_shift) - left_shift, np.array(clock, dtype=np.int64),
                            end_tick + np.cumsum(right_shift) - right_shift])
    group = np.concatenate([np.full(len(left), -1), np.array(group, dtype=np.int64), np.full(len(right), -1)])
    return Layout(out, out == mask_id, first, first + len(body), start_tick, end_tick, notecodec, clock,
                  group, np.array(gaps, dtype=np.int64))


def _paced(gaps: list[int], onsets: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Each gap longer than PACE_TICKS cut into equal parts of at most that, a group of masks each (the kept ids
    stay after the last part): a group's notes are spread over its own part of the time."""
    if PACE_TICKS is None:
        return gaps, onsets
    paced_gaps, paced_onsets = [], []
    for gap, kept in zip(gaps, onsets, strict=True):
        parts = max(1, math.ceil(gap / PACE_TICKS))
        bounds = [round(gap * k / parts) for k in range(parts + 1)]
        paced_gaps += [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        paced_onsets += [[]] * (parts - 1) + [kept]
    return paced_gaps, paced_onsets


def _group_sizes(slots: int, shares: list[float], unit: int) -> list[int]:
    """`slots` shared among groups in proportion to their `shares` (their ticks, or ticks x busyness), in whole
    multiples of `unit` (the last group takes the rest)."""
    bounds = unit * np.floor(slots / unit * np.cumsum(shares) / max(sum(shares), 1) + 0.5)
    bounds = np.minimum(bounds.astype(np.int64), slots)
    if len(bounds):
        bounds[-1] = slots
    return np.diff(bounds, prepend=0).tolist()


def to_tick(seconds: float) -> int:
    """Seconds on the codecs' grid of ticks (nearest)."""
    return int(math.floor(seconds / TICK_SECONDS + 0.5))


def _split(ticks: int) -> list[int]:
    """A TimeShift of `ticks` as slices of at most SLICE_TICKS, the same length within a tick."""
    count = -(-ticks // SLICE_TICKS)
    return [ticks // count + (1 if i < ticks % count else 0) for i in range(count)]


def _cut(ids: np.ndarray, tick: int, codec: Codec = tokenizer) -> tuple[np.ndarray, int]:
    """(ids, index): a TimeShift across `tick` split there, and the index of the first id at `tick` or later
    (the events at `tick` come after it; BOS before it; silence added before EOS when the music ends earlier)."""
    shift = codec.shift_ticks(ids)
    time_shift, longest = codec.TIME_SHIFT, codec.MAX_SHIFT_TICKS
    after = np.cumsum(shift)
    before = after - shift
    across = np.flatnonzero((before < tick) & (after > tick))
    if len(across):
        j = int(across[0])
        parts = [time_shift + tick - int(before[j]) - 1, time_shift + int(after[j]) - tick - 1]
        return np.concatenate([ids[:j], parts, ids[j + 1:]]), j + 1
    total = int(after[-1]) if len(after) else 0
    if tick > total:  # the region reaches past the last event: silence up to it, before EOS
        pad = [t for full in [tick - total] for t in [time_shift + longest - 1] * (full // longest)
               + ([time_shift + full % longest - 1] if full % longest else [])]
        end = len(ids) - 1 if len(ids) and ids[-1] == EOS else len(ids)
        return np.concatenate([ids[:end], pad, ids[end:]]), end + len(pad)
    return ids, max(1, int(np.argmax(before >= tick)))


# -- filling ----------------------------------------------------------------------------------------------------

Constrain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def token_constrain(allowed: Constraints, vocab_size: int, codec: Codec = tokenizer) -> Constrain:
    """The hook a denoiser calls before each draw: the constraints' token mask in `codec`, and no EOS inside a
    piece (the note-level codec's order, a Duration right after each Pitch, is the unmasking's own:
    core.models.smdim.sampling.note_order)."""
    mask = allowed.token_mask(vocab_size, codec=codec)
    mask[EOS] = float("-inf")

    def constrain(logits: torch.Tensor, _ids: torch.Tensor) -> torch.Tensor:
        return logits + mask.to(logits.device, logits.dtype)

    return constrain


def with_mask(constrain: Constrain, mask: torch.Tensor) -> Constrain:
    """`constrain`, then the additive mask `mask` (V,) on every slot."""
    def both(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return constrain(logits, ids) + mask.to(logits.device, logits.dtype)

    return both


def reach(layout: Layout, context: float | None) -> tuple[int, int]:
    """(lo, hi): the ids[lo:hi] the model may read, those the clock reaches within `context` seconds before the
    region's start or after its end (the region always; every id when context is None)."""
    if context is None:
        return 0, len(layout.ids)
    before = layout.clock  # the real clock before each id, non-decreasing
    ticks = min(to_tick(context), int(before[-1]))  # beyond the whole piece is the whole piece
    lo = int(np.searchsorted(before, layout.start_tick - ticks, side="left"))
    hi = int(np.searchsorted(before, layout.end_tick + ticks, side="right"))
    return min(lo, layout.first), max(hi, layout.after)


def windows(layout: Layout, window: int, bounds: tuple[int, int] | None = None) -> list[tuple[int, int, int, int]]:
    """(lo, hi, commit_from, commit_to) of each pass: the ids[lo:hi] a window reads (inside `bounds`, all ids
    by default) and the positions whose masks it commits. One window when the region and a quarter window of
    context each side fit, or everything within bounds does."""
    base, limit = bounds if bounds is not None else (0, len(layout.ids))
    positions = np.flatnonzero(layout.masked)
    if not len(positions):
        return []
    first, last = int(positions[0]), int(positions[-1]) + 1
    quarter = max(window // 4, 1)
    if last - first + 2 * quarter <= window or limit - base <= window:
        spare = window - (last - first)
        lo = max(base, min(first - spare // 2, limit - window))
        return [(lo, min(limit, lo + window), first, last)]
    out = []
    current = first
    while current < last:
        lo = max(base, current - quarter)
        hi = min(limit, lo + window)
        to = last if hi >= min(limit, last + quarter) else hi - quarter
        out.append((lo, hi, current, to))
        later = positions[positions >= to]
        current = int(later[0]) if len(later) else last
    return out


def fill(model, layout: Layout, state, steps: int | None, sampling: SamplingConfig | None,
         generator: torch.Generator, constrain: Constrain, bounds: tuple[int, int] | None = None,
         order: str = ORDER, min_repeat: float = 0.0) -> np.ndarray:
    """The layout's masks filled in every lane of `state`, window by window, reading only ids[bounds], unmasked
    in `order` (sampling.ORDERS), no key struck again within `min_repeat` seconds -> ids (B, L)."""
    device = next(model.parameters()).device
    batch = state.batch
    ids = torch.from_numpy(layout.ids)[None].repeat(batch, 1).to(device)
    masked = torch.from_numpy(layout.masked).to(device)
    for lo, hi, begin, stop in windows(layout, state.window, bounds):
        view = ids[:, lo:hi]
        keep = (view != model.mask_id)
        rule = constrain if layout.gap is None else time_rule(constrain, layout, ids, lo, hi)
        with torch.no_grad():
            out = model.denoise(view, keep, state, steps, sampling, generator, rule, order=order,
                                min_repeat=min_repeat)
        commit = torch.zeros(hi - lo, dtype=torch.bool, device=device)
        commit[begin - lo:stop - lo] = True
        commit &= masked[lo:hi]
        ids[:, lo:hi] = torch.where(commit[None], out, view)
    return ids.cpu().numpy()


def time_rule(constrain: Constrain, layout: Layout, ids: torch.Tensor, lo: int, hi: int) -> Constrain:
    """`constrain` for the window ids[:, lo:hi] (B, L) with the note-level codec's time rule added: the
    TimeShifts a group of masks holds never add up past its gap, the real time to the next kept onset or the
    region's end (a denoiser left to itself fills a region with as much time as it likes, and its notes would be
    squeezed into the real one). A draw that would overrun what its group has left is not offered; the TimeShifts
    one pass commits together can still overrun, and `_spread` fits such a group back into its gap."""
    group = layout.group[lo:hi]
    slots = np.flatnonzero(group >= 0)
    if not len(slots):
        return constrain
    count = len(layout.gap)
    elsewhere = np.flatnonzero(layout.group >= 0)
    elsewhere = elsewhere[(elsewhere < lo) | (elsewhere >= hi)]  # other windows' slots, committed or still MASK
    device = ids.device
    gap = torch.from_numpy(layout.gap).to(device)
    used_elsewhere = _group_ticks(ids[:, elsewhere], layout.group[elsewhere], count)
    slot_group = torch.from_numpy(group[slots]).to(device)
    slot_index = torch.from_numpy(slots).to(device)
    longest = torch.arange(1, notecodec.MAX_SHIFT_TICKS + 1, device=device)
    shifts = slice(notecodec.TIME_SHIFT, notecodec.TIME_SHIFT + notecodec.MAX_SHIFT_TICKS)

    def rule(logits: torch.Tensor, view: torch.Tensor) -> torch.Tensor:
        logits = constrain(logits, view)
        left = gap - used_elsewhere - _group_ticks(view[:, slot_index], group[slots], count)  # (B, G)
        over = longest > left[:, slot_group, None]  # (B, slots, MAX_SHIFT_TICKS)
        part = logits[:, slot_index, shifts]
        logits = logits.clone()
        logits[:, slot_index, shifts] = part.masked_fill(over, float("-inf"))
        return logits

    return rule


def _group_ticks(ids: torch.Tensor, group: np.ndarray, count: int) -> torch.Tensor:
    """(B, count) on ids' device: the ticks the note-level codec's TimeShifts among `ids` (B, n) add up to in each
    group (`group` (n,): each id's)."""
    ticks = torch.from_numpy(notecodec.shift_ticks(ids.cpu().numpy()))
    used = torch.zeros(ids.shape[0], count, dtype=torch.int64).index_add_(1, torch.from_numpy(group), ticks)
    return used.to(ids.device)


# -- back to notes ----------------------------------------------------------------------------------------------

def music_around(kept: Performance, start: float, end: float) -> Performance:
    """The kept notes starting within GUARD_CONTEXT seconds of the region [start, end): what its guards read."""
    return kept.slice_time(max(start - GUARD_CONTEXT, 0.0), end + GUARD_CONTEXT)


def restrike_guard(kept: Performance, start: float, end: float) -> float:
    """Seconds within which a new note may not strike its key again: the continuation's default guard
    (notecodec.FROM_PRIMER), read from the kept music within GUARD_CONTEXT seconds of the region, so a region
    repeats a key no faster than the piece around it does (SMDIM's fills re-struck keys 3-5 times per region
    where MAESTRO's pianists did about once)."""
    return repeat_guard_of(music_around(kept, start, end))


def repeat_guard_of(around: Performance) -> float:
    """`restrike_guard` of the music around a region, already cut (`music_around`)."""
    return notecodec.primer_min_repeat(notecodec.encode(around, bos=False, eos=False))


def length_guard(around: Performance) -> float | None:
    """Seconds a new note may last at most: the LONGEST_QUANTILE of the lengths of the notes `around` it (at least
    LONGEST_FLOOR), None with fewer than LENGTH_NOTES of them. The notes SMDIM writes chords held a second or more
    where a pianist plays quick figures: after the ten MAESTRO primers it continued at polyphony 6.67 where the
    pianists had 3.76, and 4.12 with its notes no longer than the primer's (core/denoising.py)."""
    if len(around) < LENGTH_NOTES:
        return None
    return max(LONGEST_FLOOR, float(np.quantile(around.offset - around.onset, LONGEST_QUANTILE)))


def new_notes(ids: np.ndarray, layout: Layout, kept: Performance, start: float, end: float,
              pitches: np.ndarray, cap: int | None, min_repeat: float = 0.0, until: float | None = None) -> Performance:
    """The notes one lane's fill starts in the region, on the real clock, clipped so every rule holds (ending by
    `until`, the region's end by default)."""
    played = layout.codec.last_velocity(ids[:layout.first])
    velocity = bin_velocity(DEFAULT_VELOCITY_BIN) if played is None else played
    if layout.codec is notecodec:
        notes = _notes_written(ids, layout, velocity)  # (onset, offset) in ticks, pitch, velocity
    else:
        notes = _events_written(ids, layout, velocity)
    if not notes:
        return Performance.empty()
    onset, offset, pitch, vel = (np.array(column) for column in zip(*notes, strict=True))
    return clip_new(onset * TICK_SECONDS, offset * TICK_SECONDS, pitch, vel, kept, start, end, pitches, cap,
                    min_repeat, until)


def _events_written(ids: np.ndarray, layout: Layout, velocity: int) -> list[tuple[float, float, int, int]]:
    """The event codec's new notes in the region: a masked NoteOn starts one, a masked NoteOn or NoteOff of its
    pitch ends it, the region's end ends what still sounds; Velocity ids (kept or new) set the velocity. The fill
    keeps its own clock (the masks may hold TimeShifts too), mapped back onto the real one piecewise-linearly
    through the kept ids of the region that are not TimeShifts, and its start and end."""
    first, after = layout.first, layout.after
    shift = tokenizer.shift_ticks(ids)
    own_before = np.cumsum(shift) - shift  # the fill's clock before each id
    anchors = [first] + [p for p in range(first, after) if not layout.masked[p] and not shift[p]]
    clock_x = np.array([own_before[p] for p in anchors] + [own_before[after]], dtype=np.float64)
    clock_y = np.array([layout.clock[p] for p in anchors] + [layout.end_tick], dtype=np.float64)
    clock_y[0] = layout.start_tick
    sounding: dict[int, tuple[int, int]] = {}
    notes: list[tuple[int, int, int, int]] = []
    for position in range(first, after):
        token, now = int(ids[position]), int(own_before[position])
        if tokenizer.VELOCITY <= token < tokenizer.VOCAB_SIZE:
            velocity = bin_velocity(token - tokenizer.VELOCITY)
        elif not layout.masked[position]:
            continue  # a kept note's event: the kept note is the input's own
        elif NOTE_ON <= token < NOTE_OFF or NOTE_OFF <= token < tokenizer.TIME_SHIFT:
            pitch = (token - NOTE_ON) % 128
            if pitch in sounding:
                onset, vel = sounding.pop(pitch)
                notes.append((onset, now, pitch, vel))
            if token < NOTE_OFF:
                sounding[pitch] = (now, velocity)
    end = int(own_before[after])
    notes += [(onset, end, pitch, vel) for pitch, (onset, vel) in sounding.items()]
    return [(float(np.interp(onset, clock_x, clock_y)), float(np.interp(offset, clock_x, clock_y)), pitch, vel)
            for onset, offset, pitch, vel in notes]


def _notes_written(ids: np.ndarray, layout: Layout, velocity: int) -> list[tuple[float, float, int, int]]:
    """The note-level codec's new notes in the region: a masked Pitch followed at once by a Duration is a note
    for the Duration's ticks (a Pitch without one is dropped, as notecodec.decode does); Velocity ids (kept or
    new) set the velocity. A note starts at its group's start plus the TimeShifts of the group before it, spread
    by `_spread` over the group's gap."""
    own = notecodec.shift_ticks(ids)
    found: list[tuple[int, int, int, int, int]] = []  # group, ticks its TimeShifts moved before it, pitch, length, vel
    elapsed, current = 0, -1
    for position in range(layout.first, layout.after):
        token, group = int(ids[position]), int(layout.group[position])
        if group != current:
            elapsed, current = 0, group
        if notecodec.VELOCITY <= token < notecodec.VOCAB_SIZE:
            velocity = bin_velocity(token - notecodec.VELOCITY)
        elif group >= 0 and notecodec.PITCH <= token < notecodec.DURATION:
            following = int(ids[position + 1])  # the right context (or EOS) follows the region: never out of range
            if notecodec.DURATION <= following < notecodec.TIME_SHIFT:
                length = int(notecodec.BIN_TICKS[following - notecodec.DURATION])
                found.append((group, elapsed, token - notecodec.PITCH, length, velocity))
        elapsed += int(own[position])
    in_group = layout.group >= 0
    total = np.bincount(layout.group[in_group], weights=own[in_group], minlength=len(layout.gap))
    scale = _spread(found, layout.gap, total)
    start = np.zeros(len(layout.gap), dtype=np.int64)
    start[layout.group[in_group]] = layout.clock[in_group]  # a slot's clock is its group's start
    return [(float(start[g] + moved * scale[g]), float(start[g] + moved * scale[g] + length), pitch, vel)
            for g, moved, pitch, length, vel in found]


def _spread(found: list[tuple[int, int, int, int, int]], gap: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(G,) the factor each group's written time is scaled by onto its gap: its onsets' span (the last onset plus
    the group's mean gap between onsets) stretched or shrunk to the gap, so the notes fill it as the model spaced
    them. Surest-first unmasking commits long TimeShifts beside the known music first: the notes SMDIM left 20%
    of a region (median) silent after its last onset where the pianists left 3%, and its infills thinned out
    before the right edge. A group of one onset keeps its time, scaled back only if a last pass overran the gap."""
    scale = np.minimum(1.0, gap / np.maximum(total, 1))
    for group in {g for g, *_ in found}:
        onsets = sorted({moved for g, moved, *_ in found if g == group})
        if len(onsets) > 1:
            scale[group] = gap[group] / (onsets[-1] + (onsets[-1] - onsets[0]) / (len(onsets) - 1))
    return scale


def clip_new(onset: np.ndarray, offset: np.ndarray, pitch: np.ndarray, velocity: np.ndarray, kept: Performance,
             start: float, end: float, pitches: np.ndarray, cap: int | None, min_repeat: float = 0.0,
             until: float | None = None) -> Performance:
    """New notes inside [start, end), ending by `until` (default `end`: a region's notes never sound past it; an
    open region after the music lets them ring) and before the next kept strike of their pitch, never on a key a
    kept note holds, never within `min_repeat` seconds of another strike of their key (kept or new, the earlier
    new one wins), only `pitches`, at most `cap` of them (thinned evenly)."""
    onset = np.clip(onset, start, None)
    offset = np.minimum(np.maximum(offset, onset + TICK_SECONDS), end if until is None else until)
    good = (onset < end) & pitches[pitch]
    struck: dict[int, float] = {}  # each key's latest new strike
    for index in np.flatnonzero(good)[np.argsort(onset[good], kind="stable")].tolist():
        key, now = int(pitch[index]), float(onset[index])
        same = kept.pitch == key
        held = same & (kept.onset <= now + 1e-9) & (kept.offset > now + 1e-9)
        near = same & (np.abs(kept.onset - now) < min_repeat)
        if held.any() or near.any() or now - struck.get(key, -math.inf) < min_repeat:
            good[index] = False
            continue
        struck[key] = now
        later = kept.onset[same & (kept.onset > now + 1e-9)]
        if len(later):
            offset[index] = min(offset[index], float(later.min()))
    good &= offset > onset
    if not good.any():
        return Performance.empty()
    new = canonical(onset[good], offset[good], pitch[good], velocity[good])
    if cap is not None and len(new) > cap:
        chosen = np.unique(np.round(np.linspace(0, len(new) - 1, cap)).astype(np.int64))
        new = Performance(new.onset[chosen], new.offset[chosen], new.pitch[chosen], new.velocity[chosen])
    return new


def _select(piece: Performance, which: np.ndarray) -> Performance:
    return Performance(piece.onset[which], piece.offset[which], piece.pitch[which], piece.velocity[which],
                       grid=piece.grid)
