"""One generation session: continue a primer (or start from nothing) into K variations, as a stream of events.

Every front end consumes this one object: `recital generate` / `continue` (and the live player behind them), the
studio's worker and the sample recipe. It owns, once each, what they used to repeat: the budget (the model's
default unless one is given, core/budget.py), the plan and the memory check, primer preparation (a MIDI file, a
Performance or ids; `prepare_primer` runs once), the token cap, the release of held notes (core/generate.py) and the
time arithmetic (the codec's: core/tokenizer.py). Lanes are always arrays (B,), one per variation, at any batch.

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

from core.adapt import AdaptSettings, adapt
from core.budget import check_state_fits, resolve_budget
from core.constraints import Constraints
from core.denoising import denoise_stream
from core.errors import ModelError
from core.generate import MAX_NOTE_SECONDS, SamplingConfig, generate, prepare_primer
from core.grid import Grid
from core.midi import Performance, canonical
from core.models.interface import DENOISE, LEFT_TO_RIGHT
from core.tokenizer import (
    VELOCITY,
    VOCAB_SIZE,
    Decoder,
    NoteEvent,
    bin_velocity,
    decode_continuations,
    encode,
    ids_seconds,
    silence_ids,
)

TOKENS_PER_SECOND_LIMIT = 150  # token cap per second of music asked (dense piano is ~40): a runaway stops

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


def read_primer(primer: Primer) -> np.ndarray:
    """Token ids of a primer given as a MIDI file, a Performance or ids (None: nothing), not yet prepared."""
    if primer is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(primer, str | Path):
        from core.midi import read_performance

        primer = read_performance(primer)
    if isinstance(primer, Performance):
        return encode(primer, eos=False)
    return np.asarray(primer, dtype=np.int64)


class GenerationSession:
    """Generate `variations` continuations of `primer` with `model`, `seconds` of new music each.

    budget: bytes (or a size like '16MB') for every lane together; None: the model's default for each lane.
    `plan`, when given, is the one the caller made for that budget and batch (the studio's slider), not made again.
    start: continue at this music time; past the primer's end, silence fills the gap (the studio's playhead).
    grid: the pieces' tempo map and time signatures (a primer read from a file brings its own, which wins; else
    120 BPM 4/4); bars: instead of `seconds`, write up to the bars-th bar line after the primer (`bars_seconds`).
    max_tokens: new ids per lane at most (default: 150 per second asked, so a runaway stops).
    max_note: seconds a note may be held before it is released (None or 0: never). allow_end: the model may end
    the piece before `seconds`. constraints: limits on what is written (core/constraints.py); a key 'from the
    primer' is read from the primer here. adapt: adapt a copy of the model to a primer of at least
    `adapt.min_seconds` first (core/adapt.py; None: never), in `adapt_to_primer()` or on the first step, which
    sets `adapt_seconds`. Every setting is checked here, and the state allocated (after the memory
    check), before the first step; reading the primer happens on the first step.
    """

    def __init__(self, model, primer: Primer = None, *, budget: int | str | None = None,
                 sampling: SamplingConfig | None = None, seconds: float | None = None, variations: int = 1,
                 seed: int | None = None, max_tokens: int | None = None, max_note: float | None = MAX_NOTE_SECONDS,
                 allow_end: bool = False, start: float | None = None, plan=None,
                 grid: Grid | None = None, bars: int | None = None,
                 constraints: Constraints | None = None, adapt: AdaptSettings | None = None):
        if variations < 1:
            raise ModelError(f"variations must be at least 1, got {variations}")
        self.denoises = getattr(model, "family", LEFT_TO_RIGHT) == DENOISE  # it fills windows (core/denoising.py)
        if self.denoises and constraints is not None and (constraints.density, constraints.max_polyphony) != (
                None, None):  # those follow the music id by id
            raise ModelError(f"a {model.arch} model takes the scale, range and velocity limits, not density or "
                             "polyphony")
        adapt = None if self.denoises else adapt  # adapting to a primer (core/adapt.py) is left to right
        if bars is not None and (seconds is not None or bars < 1):
            raise ModelError("give the music's length in seconds or in bars (at least 1), not both")
        self.model = model
        self.batch = variations
        self.sampling = sampling or SamplingConfig()
        self.seed = seed
        self.max_note = max_note or None
        self.allow_end = allow_end
        if isinstance(primer, str | Path):
            from core.midi import read_performance

            primer = read_performance(primer)
        self.primer_notes = primer if isinstance(primer, Performance) else None  # as given, for exact_pieces
        self.grid = (self.primer_notes.grid if self.primer_notes is not None else None) or grid or Grid.constant()
        self.primer = prepare_primer(read_primer(primer), model.config.vocab_size).numpy()  # once, for every lane
        if start is not None and start > ids_seconds(self.primer):
            self.primer = np.concatenate([self.primer, silence_ids(start - ids_seconds(self.primer))])
        self.start_time = ids_seconds(self.primer)  # where new music begins
        self.seconds = seconds if bars is None else self.grid.bars_seconds(self.start_time, bars)
        self.max_tokens = max_tokens if max_tokens is not None else (
            None if self.seconds is None else int(self.seconds * TOKENS_PER_SECOND_LIMIT) + 64)
        if constraints is not None and constraints.from_primer:
            constraints = constraints.resolve(decode_continuations(self.primer, [[]])[0])
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
        self.finished: Finished | None = None
        self.adapt = adapt
        self.adapt_seconds: float | None = None  # wall time adapting to the primer took (None: not adapted)
        self._writer = None  # the model that writes: an adapted copy once adapted, else `model`
        self._decoders = [self._decoder() for _ in range(variations)]
        self._stop = threading.Event()
        self._pieces: list[Performance] | None = None

    def _decoder(self) -> Decoder:
        """A decoder of one lane's new ids, starting where the primer ends, at the primer's last velocity."""
        decoder = Decoder(self.start_time)
        velocities = self.primer[(self.primer >= VELOCITY) & (self.primer < VOCAB_SIZE)]
        if len(velocities):
            decoder.velocity = bin_velocity(int(velocities[-1]) - VELOCITY)
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
        if self.finished is not None or self.steps:
            raise ModelError("a generation session runs once")
        self.adapt_to_primer()
        if self.denoises:
            stream = denoise_stream(self._writer, torch.from_numpy(self.primer), self.state, self.sampling,
                                    max_tokens=self.max_tokens, max_seconds=self.seconds,
                                    stop_at_eos=self.allow_end, seed=self.seed, max_note_seconds=self.max_note,
                                    constraints=self.constraints)
        else:
            stream = generate(self._writer, torch.from_numpy(self.primer), self.state, self.sampling,
                              max_tokens=self.max_tokens, max_seconds=self.seconds, stop_at_eos=self.allow_end,
                              seed=self.seed, max_note_seconds=self.max_note, constraints=self.constraints)
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
        self.finished = Finished(reason, self.steps, tuple(tuple(d.finish()) for d in self._decoders))
        yield self.finished

    def run(self) -> Finished | None:
        """Iterate to the end (or a stop); the last event."""
        for _event in self:
            pass
        return self.finished

    def primer_piece(self) -> Performance:
        return self._decoded()[0]

    def pieces(self) -> list[Performance]:
        """One Performance per variation: the primer followed by its new notes (the primer decoded once)."""
        return self._decoded()[1:]

    def new_parts(self) -> list[Performance]:
        """One Performance per variation: only the notes that start where the primer ends or later (the primer's
        notes are never collected here: a long primer costs no memory beyond its ids)."""
        parts = []
        for piece in decode_continuations(self.primer, self.lanes, with_primer=False):
            new = piece.onset >= self.start_time - 1e-9
            parts.append(replace(Performance.from_notes(piece.onset[new], piece.offset[new], piece.pitch[new],
                                                        piece.velocity[new]) if new.any() else Performance.empty(),
                                 grid=self.grid))
        return parts

    def exact_pieces(self, parts: list[Performance] | None = None) -> list[Performance]:
        """One Performance per variation: the primer exactly as given (a file's notes, not their 10 ms
        re-encoding) followed by `parts` (default: `new_parts()`), on the session's grid: what `continue` writes.

        A new note that strikes a key the primer still holds (its release rounded up by the codec, by 5 ms at most)
        ends that note, as a piano would; no other primer note changes.
        """
        base = self.primer_notes if self.primer_notes is not None else self.primer_piece()
        pieces = []
        for part in self.new_parts() if parts is None else parts:
            both = Performance.concat(base, part)
            pieces.append(replace(canonical(both.onset, both.offset, both.pitch, both.velocity), grid=self.grid))
        return pieces

    def _decoded(self) -> list[Performance]:
        if self._pieces is None:
            self._pieces = [replace(piece, grid=self.grid)
                            for piece in decode_continuations(self.primer, [[], *self.lanes])]
        return self._pieces
