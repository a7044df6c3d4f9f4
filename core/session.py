"""One generation session: continue a primer (or start from nothing) into K variations, as a stream of events.

Every front end consumes this one object: `recital generate` / `continue` (and the live player behind them), the
studio's worker and the sample recipe. It owns, once each, what they used to repeat: the budget (the model's
default unless one is given, core/budget.py), the plan and the memory check, primer preparation (a MIDI file, a
Performance or ids; `prepare_primer` runs once), the token cap, the rule that keeps notes from hanging
(core/generate.py) and the time arithmetic, all in the model's codec (core/codecs.py: `codec_of(model)`). Lanes are
always arrays (B,), one per variation, at any batch.

    session = GenerationSession(model, primer="a.mid", seconds=30, variations=2, seed=1)
    for event in session:           # Token(step, ids (B,), notes per lane) ..., then Finished(reason, steps, ...)
        ...                         # session.stop() from any thread ends it after the current step
    pieces = session.pieces()       # one Performance per variation: the primer followed by what was written
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from core import notecodec, tokenizer
from core.adapt import AdaptSettings, adapt
from core.budget import check_state_fits, resolve_budget
from core.codecs import Codec, codec_of
from core.constraints import DENSITY_RANGE, Constraints
from core.denoising import denoise_stream, recent_notes, writes_timed
from core.errors import ModelError
from core.generate import MAX_NOTE_SECONDS, SamplingConfig, generate, prepare_primer
from core.grid import Grid
from core.harmony import check_weight, default_weight
from core.midi import MERGE_SECONDS, MIN_RESTRIKE_SECONDS, Performance, canonical
from core.models.interface import DENOISE, LEFT_TO_RIGHT
from core.motif import check_weight as check_motifs
from core.motif import default_weight as motif_weight
from core.pulse import check_weight as check_pulse
from core.pulse import default_weight as pulse_weight
from core.tokenizer import TICK_SECONDS, NoteEvent

TOKENS_PER_SECOND_LIMIT = 150  # token cap per second of music asked (dense piano is ~40): a runaway stops
CHUNK = 1 << 16  # ids or notes looked at at once: a long primer's temporaries stay small

Primer = str | Path | Performance | np.ndarray | torch.Tensor | list[int] | None


@dataclass(frozen=True)
class Token:
    """One step: an id per lane (PAD where a lane has finished) and the note events it completed, per lane."""

    step: int  # 0 for the first new id
    ids: np.ndarray  # (B,) int64
    notes: tuple[tuple[NoteEvent, ...], ...]  # per lane: "on" when a key goes down, "off" (a whole note) when up


@dataclass(frozen=True)
class Finished:
    """The session is over: why, after how many steps, and the notes still sounding, closed at each lane's end."""

    reason: str  # "done" (every lane reached its seconds or its end), "max_tokens", "stopped"
    steps: int
    notes: tuple[tuple[NoteEvent, ...], ...]


Event = Token | Finished


def read_primer(primer: Primer, codec: Codec = tokenizer) -> np.ndarray:
    """Token ids of a primer given as a MIDI file, a Performance (encoded by `codec`, the model's) or ids (None:
    nothing), not yet prepared."""
    if primer is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(primer, str | Path):
        from core.midi import read_performance

        primer = read_performance(primer)
    if isinstance(primer, Performance):
        return codec.encode(primer, eos=False)
    return np.asarray(primer, dtype=np.int64)


def _held(ids: np.ndarray) -> np.ndarray:
    """Prepared ids as the session holds them: uint16 when every id fits (any codec's vocabulary), else int64."""
    return ids.astype(np.uint16) if not len(ids) or int(ids.max()) < 1 << 16 else ids.astype(np.int64)


class _Counted:
    """A denoiser as `denoise_stream` calls it, counting the windows it fills and the unmasking passes (forward
    calls) they take: what a front end reports for it, since a window's ids all arrive after its last pass."""

    def __init__(self, model) -> None:
        self.model = model
        self.windows = self.passes = 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def denoise(self, *args, **kwargs) -> torch.Tensor:
        def count(_module, _inputs) -> None:
            self.passes += 1

        hook = self.model.register_forward_pre_hook(count)
        try:
            filled = self.model.denoise(*args, **kwargs)
        finally:
            hook.remove()
        self.windows += 1
        return filled


def _seconds(ids: np.ndarray, codec: Codec = tokenizer) -> float:
    """`codec.ids_seconds`, summed a chunk at a time (the same integer sum of ticks): no int64 copy of a long
    primer."""
    ticks = sum(int(codec.shift_ticks(ids[begin:begin + CHUNK]).sum()) for begin in range(0, len(ids), CHUNK))
    return float(ticks) * TICK_SECONDS


# A left-to-right model now and then runs away into a cloud of short notes that feeds on itself: on MAESTRO primers
# (bench/continuation.py, 30 lanes, adapting) 4 lanes of the DSMR default wrote 19-46 notes/s after primers of
# 5-7 (their pianists: 6-10), one over the whole keyboard. Steered back under this many times the primer's own
# notes/s (a ceiling, `Constraints.max_density`), 10 lanes were touched (46 -> 9, 39 -> 22, 30 -> 22, 19 -> 13)
# and the rest are the model's own: notes/s 13.0 -> 10.4 (the pianists 9.5). At 2x the ceiling also thinned regular
# dense figures (onset regularity 0.157 -> 0.118 over the 30); a target at the primer's rate (steered up as well as
# down) piled up long notes in a third of the lanes. 2x since the default drawn more often from keyboard works'
# beginnings and pulled towards the primer's beat (core/pulse.py), which keeps the figures regular: adapting, 3x /
# 2x, notes/s 12.18 / 10.73 (the pianists 9.46; the aim, within 25%: 11.82), polyphony 4.13 / 3.85 (3.76), range
# 50.8 / 49.0 (54.2), onset regularity 0.320 / 0.273 (0.235), key 29 / 28 of 30, re-strikes 0.23 / 0.10.
# A multiple alone let fast primers run away (weights of 2026-12-04, adapting: after maestro_03's 19.4 notes/s the
# lanes wrote 26-31 for 30 s, its pianist 13.1; notes/s over the 30 lanes 12.33, the aim 11.82) and is tight after
# slow ones. MAESTRO's pianists, over the same 2 s window the steering measures (95th percentile over each truth),
# go 2-8 notes/s above their primer's recent rate whatever its tempo (ratios 0.9-2.1: the faster the primer, the
# smaller; one pianist slows down, one doubles); so the ceiling is the smaller of the multiple and the rate plus RUNAWAY_HEADROOM: adapting, notes/s
# 12.33 -> 11.43, maestro_03's lanes 23-24, every other continuation aim kept (PerceiverS: 10.05 -> 9.52). The rate
# plus 5 alone: 11.58, but a slow primer's lanes got denser (maestro_02: 5.4 -> 7.5, its pianist 3.0); plus 6: 11.98;
# 1.5x alone: 11.47, which also holds a slow primer's flourishes to half again its rate.
RUNAWAY_FACTOR = 2.0
RUNAWAY_HEADROOM = 5.0  # notes/s above the primer's


def density_ceiling(max_density: float | str | None, model, primer: Performance | None,
                    end: float) -> float | None:
    """The notes/s a lane is steered back under (None: no ceiling) that `max_density` asks for (see
    GenerationSession) after `primer` ending at `end` seconds: FROM_PRIMER is `runaway_ceiling` of the notes/s of
    the primer's last seconds (`core.denoising.recent_notes`), none for a new piece or a primer of a few notes,
    and none for a denoiser, whose windows are given the primer's density already."""
    if max_density != notecodec.FROM_PRIMER:
        return max_density or None
    if getattr(model, "family", LEFT_TO_RIGHT) == DENOISE or primer is None:
        return None
    recent = recent_notes(primer, end)
    if recent is None:
        return None
    rate = len(recent) / max(end - float(recent.onset.min()), 1.0)
    return float(np.clip(runaway_ceiling(rate), *DENSITY_RANGE))


def runaway_ceiling(rate: float) -> float:
    """The notes/s a lane is steered back under after a primer of `rate` notes/s: RUNAWAY_FACTOR x it, or
    RUNAWAY_HEADROOM above it where that is lower (a primer faster than RUNAWAY_HEADROOM / (RUNAWAY_FACTOR - 1))."""
    return min(RUNAWAY_FACTOR * rate, rate + RUNAWAY_HEADROOM)


def repeat_guard(min_repeat: float | str | None, codec, primer_ids) -> float | None:
    """The re-strike guard in seconds (None: off) that `min_repeat` asks for (see GenerationSession) after
    `primer_ids` (None: a new piece) of `codec`: FROM_PRIMER reads a notes primer's repeats."""
    if min_repeat == notecodec.FROM_PRIMER:
        min_repeat = (notecodec.primer_min_repeat(primer_ids) if codec is notecodec and primer_ids is not None
                      else notecodec.MIN_REPEAT_SECONDS)
    return min_repeat or None


class GenerationSession:
    """Generate `variations` continuations of `primer` with `model`, `seconds` of new music each.

    budget: bytes (or a size like '16MB') for every lane together; None: the model's default for each lane.
    `plan`, when given, is the one the caller made for that budget and batch (the studio's slider), not made again.
    start: continue at this music time; past the primer's end, silence fills the gap (the studio's playhead).
    grid: the pieces' tempo map and time signatures (a primer read from a file brings its own, which wins; else
    120 BPM 4/4); bars: instead of `seconds`, write up to the bars-th bar line after the primer (`bars_seconds`).
    max_tokens: new ids per lane at most (default: 150 per second asked, so a runaway stops).
    max_note: seconds a note may sound (None or 0: no limit): the event codec releases a note held longer, the
    notes codec never chooses a longer duration (core/generate.py `note_rule`). min_repeat: seconds before a
    left-to-right notes model may strike a pitch again (None or 0: any time; notecodec.MIN_REPEAT_SECONDS says
    why), or `notecodec.FROM_PRIMER`: as fast as the primer repeats a key (`primer_min_repeat`; resolved into
    `self.min_repeat`); the event codec and a denoiser's windows have no such guard. allow_end: the model may end
    the piece before `seconds`. constraints: limits on what is written (core/constraints.py); a key 'from the
    primer' is read from the primer here. adapt: adapt a copy of the model to a primer of at least
    `adapt.min_seconds` first (core/adapt.py; None: never; a denoiser refuses it), in `adapt_to_primer()` or
    on the first step, which sets `adapt_seconds`. harmony: how hard each lane's keys are pulled towards the
    harmony (core/harmony.py: a left-to-right model's towards the primer's last KEY_SECONDS, a denoiser's window
    towards its lane's last HARMONY_SECONDS; 0: not at all; None: the model's default, `default_weight`).
    pulse: how hard a left-to-right model's time steps are pulled towards the primer's beat (core/pulse.py; 0: not
    at all; None: the model's default, `pulse.default_weight`). motifs: the share of the fitted mixture with which
    each lane's memory of its own notes, primer and all, joins a left-to-right model's predictions (core/motif.py;
    0: none; None: the model's default for this primer, `motif.default_weight`: none for a new piece).
    max_density: notes/s a lane of a left-to-right model is steered back under when it runs away
    (`Constraints.max_density`; None or 0: never), or `notecodec.FROM_PRIMER`: from the primer's notes/s
    (`density_ceiling`); a density in `constraints` steers instead. Every setting is checked here, and the state
    allocated (after the memory check), before the first step; reading the primer happens on the first step.
    """

    def __init__(self, model, primer: Primer = None, *, budget: int | str | None = None,
                 sampling: SamplingConfig | None = None, seconds: float | None = None, variations: int = 1,
                 seed: int | None = None, max_tokens: int | None = None, max_note: float | None = MAX_NOTE_SECONDS,
                 min_repeat: float | str | None = notecodec.FROM_PRIMER, allow_end: bool = False,
                 start: float | None = None, plan=None,
                 grid: Grid | None = None, bars: int | None = None,
                 constraints: Constraints | None = None, adapt: AdaptSettings | None = None,
                 harmony: float | None = None, max_density: float | str | None = notecodec.FROM_PRIMER,
                 pulse: float | None = None, motifs: float | None = None):
        if variations < 1:
            raise ModelError(f"variations must be at least 1, got {variations}")
        self.denoises = getattr(model, "family", LEFT_TO_RIGHT) == DENOISE  # it fills windows (core/denoising.py)
        if self.denoises and adapt is not None:  # asked for, never silently skipped
            raise ModelError(f"adapting to the primer is for left-to-right models; a {model.arch} model fills "
                             "whole windows by unmasking and is never adapted: continue without it")
        if bars is not None and (seconds is not None or bars < 1):
            raise ModelError("give the music's length in seconds or in bars (at least 1), not both")
        self.model = model
        self.codec = codec_of(model)  # every id here is the model's codec's: the primer's, the lanes', the pieces'
        self.batch = variations
        self.sampling = sampling or SamplingConfig()
        self.seed = seed
        self.max_note = max_note or None
        if not (min_repeat is None or min_repeat == notecodec.FROM_PRIMER
                or isinstance(min_repeat, int | float) and 0 <= min_repeat <= 1):
            raise ModelError(f"the shortest re-strike of a pitch must be 0 to 1 second (0: any) or "
                             f"'{notecodec.FROM_PRIMER}', got {min_repeat!r}")
        self.allow_end = allow_end
        self.harmony = default_weight(model) if harmony is None else harmony
        check_weight(self.harmony)
        self.pulse = pulse_weight(model) if pulse is None else pulse
        check_pulse(self.pulse)
        if self.denoises and self.pulse:  # asked for, never silently skipped
            raise ModelError(f"the pull towards the primer's beat is for left-to-right models; a {model.arch} model "
                             "unmasks its time steps in any order: continue without --pulse (or with 0)")
        if motifs is not None:
            check_motifs(motifs)
        if self.denoises and motifs:  # asked for, never silently skipped
            raise ModelError(f"the motif memory is for left-to-right models; a {model.arch} model fills whole "
                             "windows in any order: continue without --motifs (or with 0)")
        if motifs and codec_of(model).NAME != notecodec.NAME:
            raise ModelError(f"the motif memory reads the notes codec's ids; this model's codec is "
                             f"{codec_of(model).NAME!r}: continue without --motifs (or with 0)")
        if isinstance(primer, str | Path):
            from core.midi import read_performance

            primer = read_performance(primer)
        self.primer_notes = primer if isinstance(primer, Performance) else None  # as given, for exact_pieces
        self.grid = (self.primer_notes.grid if self.primer_notes is not None else None) or grid or Grid.constant()
        self.primer = _held(prepare_primer(read_primer(primer, self.codec), model.config.vocab_size).numpy())  # once,
        # for every lane: uint16, 2 bytes an id (a 1.5M-id primer is 3 MB, not 12); int64 only while generating
        self.start_time = _seconds(self.primer, self.codec)  # where new music begins
        self.motifs = motif_weight(model, self.primer) if motifs is None else motifs
        self._primer_read: Performance | None = None  # the primer's notes, once something here reads them
        self.min_repeat = repeat_guard(min_repeat, self.codec, self.primer)  # seconds, resolved
        constraints = self._with_ceiling(constraints, max_density)
        if start is not None and start > self.start_time:
            silence = self.codec.silence_ids(start - self.start_time)
            self.primer = _held(np.concatenate([self.primer, silence]))
            self.start_time = _seconds(self.primer, self.codec)  # on the grid, as the ids count it
        self.seconds = seconds if bars is None else self.grid.bars_seconds(self.start_time, bars)
        if self.denoises and constraints is not None:
            timed = writes_timed(model, self.seconds, allow_end)
            if timed and constraints.max_polyphony is not None:  # polyphony follows the music id by id
                raise ModelError(f"a {model.arch} model takes the scale, range, velocity and density limits, not "
                                 "polyphony")
            if not timed and (constraints.density, constraints.max_polyphony) != (None, None):
                raise ModelError(f"a {model.arch} model takes the scale, range and velocity limits, not density or "
                                 "polyphony")
        self.max_tokens = max_tokens if max_tokens is not None else (
            None if self.seconds is None else int(self.seconds * TOKENS_PER_SECOND_LIMIT) + 64)
        if constraints is not None and constraints.from_primer:
            constraints = constraints.resolve(self._primer_read_notes())
        self.constraints = constraints if constraints is not None and constraints.active else None
        self.budget = resolve_budget(model, budget, variations)
        self.plan = plan if plan is not None else model.plan(self.budget, variations)
        asked = "this budget" if variations == 1 else f"this budget for {variations} variations"
        check_state_fits(self.plan.nbytes, asked)
        self.state = model.new_state(self.plan, variations)
        self.lanes: list[list[int]] = [[] for _ in range(variations)]  # the new ids of each lane
        self.steps = 0
        self.read_seconds = 0.0  # wall time to read the primer (until the first new id)
        self.write_seconds = 0.0  # wall time from the first new id to the last
        self.windows = self.passes = 0  # a denoiser's: windows filled, unmasking passes they took (_Counted)
        self.finished: Finished | None = None
        self.adapt = adapt
        self.adapt_seconds: float | None = None  # wall time adapting to the primer took (None: not adapted)
        self._writer = None  # the model that writes: an adapted copy once adapted, else `model`
        self._decoders = [self._decoder() for _ in range(variations)]
        self._stop = threading.Event()
        self._pieces: list[Performance] | None = None

    def _with_ceiling(self, constraints: Constraints | None, max_density: float | str | None) -> Constraints | None:
        """`constraints` with the density ceiling `max_density` asks for (none where they hold a density)."""
        if max_density not in (None, 0, notecodec.FROM_PRIMER):
            if not isinstance(max_density, int | float) or not DENSITY_RANGE[0] <= max_density <= DENSITY_RANGE[1]:
                raise ModelError(f"the most notes per second must be {DENSITY_RANGE[0]:g} to {DENSITY_RANGE[1]:g} "
                                 f"(0: no ceiling) or '{notecodec.FROM_PRIMER}', got {max_density!r}")
            if self.denoises:
                raise ModelError(f"a {self.model.arch} model is given its density by the primer or --density, not "
                                 "a ceiling: leave --max-density out")
        if constraints is not None and constraints.density is not None:
            return constraints
        primer = None
        if max_density == notecodec.FROM_PRIMER and not self.denoises and len(self.primer) > 1:
            primer = self._primer_read_notes()
        ceiling = density_ceiling(max_density, self.model, primer, self.start_time)
        return constraints if ceiling is None else replace(constraints or Constraints(), max_density=ceiling)

    def _primer_read_notes(self) -> Performance:
        """The primer's notes, decoded once for the settings that read them (the ceiling, a key from the primer);
        the silence a later `start` appends adds none."""
        if self._primer_read is None:
            self._primer_read = self.codec.decode_continuations(self.primer, [[]])[0]
        return self._primer_read

    def _decoder(self) -> tokenizer.Decoder | notecodec.Decoder:
        """A decoder of one lane's new ids (the codec's), starting where the primer ends, at the primer's last
        velocity; with the notes codec, a primer's last Pitch still waits there for its Duration."""
        decoder = self.codec.Decoder(self.start_time)
        velocity = self.codec.last_velocity(self.primer)
        if velocity is not None:
            decoder.velocity = velocity
        if self.codec.NAME == notecodec.NAME and len(self.primer) and notecodec.PITCH <= int(self.primer[-1]) < \
                notecodec.DURATION:
            decoder.pending = int(self.primer[-1]) - notecodec.PITCH
        return decoder

    def limit_note(self) -> str:
        """What the user is told when the budget buys more memory than the model was trained to use ('' if not)."""
        return self.model.memory_limit_note(self.budget, self.batch)

    def stop(self) -> None:
        """End the session after the current step (any thread); what was written is kept."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def time(self, lane: int = 0) -> float:
        """Music time a lane has reached (seconds from the primer's start)."""
        return self._decoders[lane].time

    def adapt_to_primer(self) -> float | None:
        """Adapt a copy of the model to the primer, once, if asked and the primer is long enough -> the seconds it
        took (None: not adapted). The first step does it when the caller has not (off the GUI thread)."""
        if self._writer is None:
            self._writer = self.model
            if self.adapt is not None and self.start_time >= self.adapt.min_seconds and not self.stopping:
                done = adapt(self.model, self.primer, steps=self.adapt.steps, lr=self.adapt.lr,
                             parameters=self.adapt.parameters, held_out=self.adapt.held_out,
                             budget=self.budget // self.batch, should_stop=self._stop.is_set)
                self._writer, self.adapt_seconds = done.model, done.seconds
        return self.adapt_seconds

    def __iter__(self) -> Iterator[Event]:
        if self.finished is not None or self.steps or self.model is None:
            raise ModelError("a generation session runs once (and not after it was released)")
        self.adapt_to_primer()
        primer = torch.from_numpy(self.primer.astype(np.int64))  # the engines' ids; freed when the stream ends
        if self.denoises:
            counted = _Counted(self._writer)
            stream = denoise_stream(counted, primer, self.state, self.sampling,
                                    max_tokens=self.max_tokens, max_seconds=self.seconds,
                                    stop_at_eos=self.allow_end, seed=self.seed, max_note_seconds=self.max_note,
                                    constraints=self.constraints, harmony=self.harmony)
        else:
            stream = generate(self._writer, primer, self.state, self.sampling,
                              max_tokens=self.max_tokens, max_seconds=self.seconds, stop_at_eos=self.allow_end,
                              seed=self.seed, max_note_seconds=self.max_note, min_repeat_seconds=self.min_repeat,
                              constraints=self.constraints, harmony=self.harmony, pulse=self.pulse,
                              motifs=self.motifs)
        del primer
        began = time.perf_counter()
        first = None
        reason = "done"
        try:
            for ids in stream:
                first = first or time.perf_counter()
                notes = []
                for lane, token in enumerate(ids.tolist()):
                    if token:  # PAD: this lane has finished
                        self.lanes[lane].append(token)
                        notes.append(tuple(self._decoders[lane].feed(token)))
                    else:
                        notes.append(())
                self.steps += 1
                yield Token(self.steps - 1, ids, tuple(notes))
                if self._stop.is_set():
                    reason = "stopped"
                    break
            else:
                if self.max_tokens is not None and self.steps >= self.max_tokens:
                    reason = "max_tokens"
        finally:
            stream.close()
            now = time.perf_counter()
            self.read_seconds = (first or now) - began
            self.write_seconds = now - first if first else 0.0
            if self.denoises:
                self.windows, self.passes = counted.windows, counted.passes
        self.finished = Finished(reason, self.steps, tuple(tuple(d.finish()) for d in self._decoders))
        yield self.finished

    def run(self) -> Finished | None:
        """Iterate to the end (or a stop); the last event."""
        for _event in self:
            pass
        return self.finished

    def release(self) -> None:
        """Let go of the model (and an adapted copy) and the state once the session has run or was stopped: what
        it still answers (pieces, new_parts, lanes, times) needs only the ids. Writing a long piece then reuses
        their memory. A released session does not run again."""
        self.model = self._writer = self.state = None

    def primer_piece(self) -> Performance:
        return self._decoded()[0]

    def pieces(self) -> list[Performance]:
        """One Performance per variation: the primer followed by its new notes (the primer decoded once)."""
        return self._decoded()[1:]

    def new_parts(self) -> list[Performance]:
        """One Performance per variation: only the notes that start where the primer ends or later (the primer's
        notes are never collected here: a long primer costs no memory beyond its ids)."""
        parts = []
        for piece in self.codec.decode_continuations(self.primer, self.lanes, with_primer=False):
            new = piece.onset >= self.start_time - 1e-9
            parts.append(replace(Performance.from_notes(piece.onset[new], piece.offset[new], piece.pitch[new],
                                                        piece.velocity[new]) if new.any() else Performance.empty(),
                                 grid=self.grid))
        return parts

    def exact_pieces(self, parts: list[Performance] | None = None) -> list[Performance]:
        """One Performance per variation: the primer exactly as given (a file's notes, not their 10 ms
        re-encoding) followed by `parts` (default: `new_parts()`), on the session's grid: what `continue` writes.

        A new note that strikes a key the primer still holds (its release rounded up by the codec, by 5 ms at most)
        ends that note, as a piano would; no other primer note changes. A primer read from a file is canonical
        already: then only its notes still sounding where the new ones begin are resolved with them (`_joined`), and
        a piece costs its own notes, not a re-sort of the primer's.
        """
        base = self.primer_notes if self.primer_notes is not None else self.primer_piece()
        lean = is_canonical(base)
        pieces = []
        for part in self.new_parts() if parts is None else parts:
            if lean and np.isfinite(part.onset).all():
                piece = _joined(base, part)
            else:
                both = Performance.concat(base, part)
                piece = canonical(both.onset, both.offset, both.pitch, both.velocity)
            pieces.append(replace(piece, grid=self.grid))
        return pieces

    def _decoded(self) -> list[Performance]:
        if self._pieces is None:
            self._pieces = [replace(piece, grid=self.grid)
                            for piece in self.codec.decode_continuations(self.primer, [[], *self.lanes])]
        return self._pieces


def is_canonical(perf: Performance) -> bool:
    """Whether `canonical` would give `perf` back note for note, bit for bit (what `read_performance` returns is):
    float64 times and int16 pitches and velocities, sorted by (onset, pitch) with no key twice, no offset before
    its onset, and of each pitch no two strikes closer than 10 ms nor a note sounding past the next strike.
    Checked a chunk or a pitch at a time, in memory of a chunk; NaN fails every test."""
    onset, offset, pitch = perf.onset, perf.offset, perf.pitch
    if (onset.dtype, offset.dtype, pitch.dtype, perf.velocity.dtype) != (np.float64, np.float64, np.int16, np.int16):
        return False
    for begin in range(0, len(perf), CHUNK):
        on, end, key = onset[begin:begin + CHUNK + 1], offset[begin:begin + CHUNK], pitch[begin:begin + CHUNK + 1]
        if not ((end >= on[:len(end)]).all() and (key >= 0).all() and (key <= 127).all()):
            return False
        if not ((on[1:] > on[:-1]) | ((on[1:] == on[:-1]) & (key[1:] > key[:-1]))).all():
            return False
    for value in np.flatnonzero(np.bincount(pitch, minlength=128) > 1).tolist() if len(perf) else []:
        notes = np.flatnonzero(pitch == value)
        on = onset[notes]
        if not ((on[1:] - on[:-1] >= MERGE_SECONDS).all() and (offset[notes[:-1]] <= on[1:]).all()):
            return False
    return True


def _joined(base: Performance, part: Performance) -> Performance:
    """`canonical` of `base` (canonical: `is_canonical`) and `part` (finite onsets) together, touching only the
    primer notes the new ones can reach: those still sounding 20 ms before the first new onset.

    Why that is exact: `canonical` works pitch by pitch. A base note that ended before then is more than 10 ms
    before every new note (no merge) and ends before it (no clip); the notes after it of its pitch all sound then
    (a canonical note ends by the next strike), so they are resolved together with the new notes. The rest keep
    their places and their bits: the result is the base's untouched notes and the resolved ones, merged by
    (onset, pitch), which no two notes share.
    """
    if not len(part):
        return Performance(base.onset, base.offset, base.pitch, base.velocity)
    near = np.flatnonzero(base.offset >= part.onset.min() - 2 * MIN_RESTRIKE_SECONDS)
    both = Performance.concat(Performance(base.onset[near], base.offset[near], base.pitch[near],
                                          base.velocity[near]), part)
    resolved = canonical(both.onset, both.offset, both.pitch, both.velocity)
    # where each resolved note goes among the base's notes: before the first with a larger (onset, pitch)
    low = np.searchsorted(base.onset, resolved.onset, side="left")
    high = np.searchsorted(base.onset, resolved.onset, side="right")
    place = low.copy()
    for i in np.flatnonzero(high > low).tolist():
        place[i] += int(np.count_nonzero(base.pitch[low[i]:high[i]] < resolved.pitch[i]))
    # the base's runs between the notes taken out, with the resolved notes spliced in (runs of one place at once)
    pieces: list[tuple[Performance, int, int]] = []
    cursor, taken = 0, near.tolist()
    starts = np.flatnonzero(np.diff(place, prepend=-1)).tolist() + [len(place)]
    groups = [(int(place[a]), a, b) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    g = t = 0
    while g < len(groups) or t < len(taken):
        if t == len(taken) or (g < len(groups) and groups[g][0] <= taken[t]):
            at, a, b = groups[g]
            pieces += [(base, cursor, at), (resolved, a, b)]
            cursor, g = at, g + 1
        else:
            pieces.append((base, cursor, taken[t]))
            cursor, t = taken[t] + 1, t + 1
    pieces.append((base, cursor, len(base)))
    pieces = [(source, a, b) for source, a, b in pieces if b > a]
    return Performance(*(np.concatenate([getattr(source, name)[a:b] for source, a, b in pieces])
                         for name in ("onset", "offset", "pitch", "velocity")))
