"""Generation as a studio job: continue the piece (from its end or the playhead) or write a new one, K takes.

`prepare(request, model)` is pure (the job calls it in its thread): it builds the primer ids, the decoders that read them, the state plan and
the token limit. `Generate.work()` streams `core.generate.generate` and reports, through signals only, the
note events of every take as they finish (batched about every 40 ms so the roll stays smooth), the state's
memory, and at the end one new `Performance` per take. Stopping keeps what was written so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from core.generate import SamplingConfig, generate, prepare_primer
from core.midi import Performance
from core.tokenizer import MAX_SHIFT_TICKS, TICK_SECONDS, TIME_SHIFT, Decoder, NoteEvent, encode
from studio.document import Piece
from studio.jobs import Job

TOKENS_PER_SECOND_LIMIT = 150  # token cap per second of music asked (dense piano is ~40): a runaway stops
EMIT_INTERVAL = 0.04  # seconds between batches of live notes


@dataclass(frozen=True)
class GenerateRequest:
    base: Piece  # the notes kept (everything after `start` is replaced)
    start: float | None  # continue after this music time; None: from the end of `base`
    new_piece: bool  # ignore `base` and write from nothing
    seconds: float = 20.0
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int | None = None
    variations: int = 1
    budget: int | None = None  # bytes for the whole batch; None: the model's default


@dataclass
class Prepared:
    primer: list[int]  # BOS + the kept piece's ids (+ silence up to the playhead)
    decoders: list[Decoder]  # one per take, already past the primer
    start_time: float  # music time where new notes begin
    plan: object  # the model's StatePlan / PerceiverSPlan
    max_tokens: int
    sampling: SamplingConfig


def silence_ids(seconds: float) -> list[int]:
    """TimeShift ids that move the clock forward by `seconds` (on the 10 ms grid)."""
    ticks = int(round(seconds / TICK_SECONDS))
    ids = [TIME_SHIFT + MAX_SHIFT_TICKS - 1] * (ticks // MAX_SHIFT_TICKS)
    if ticks % MAX_SHIFT_TICKS:
        ids.append(TIME_SHIFT + ticks % MAX_SHIFT_TICKS - 1)
    return ids


def prepare(request: GenerateRequest, model) -> Prepared:
    """Everything a generation needs before its first step (RecitalError on any bad setting)."""
    sampling = SamplingConfig(temperature=request.temperature, top_p=request.top_p)
    if request.new_piece or len(request.base) == 0:
        primer = prepare_primer(None, model.config.vocab_size).tolist()
    else:
        primer = prepare_primer(encode(request.base.whole, eos=False), model.config.vocab_size).tolist()
    decoder = Decoder()
    for token in primer:
        decoder.feed(token)
    if not request.new_piece and request.start is not None and request.start > decoder.time:
        primer += silence_ids(request.start - decoder.time)  # the playhead sits after the last note
    budget = request.budget if request.budget is not None else getattr(model.config, "default_budget", None)
    plan = model.plan(budget, request.variations)
    decoders = []
    for _ in range(request.variations):
        lane = Decoder()
        for token in primer:
            lane.feed(token)
        decoders.append(lane)
    max_tokens = int(request.seconds * TOKENS_PER_SECOND_LIMIT) + 64
    return Prepared(primer, decoders, decoders[0].time, plan, max_tokens, sampling)


@dataclass(frozen=True)
class LiveNotes:
    """A batch of finished notes, per take, and how far take 1 has come."""

    notes: dict[int, list[NoteEvent]]  # take -> "off" events (each a whole note)
    seconds: float  # music written so far in take 1
    state_bytes: int
    reading: bool = False  # still reading the primer into the state (before the first new note)


class Generate(Job):
    """Run one generation request on a loaded model."""

    def __init__(self, request: GenerateRequest, model):
        super().__init__()
        self.request = request
        self.model = model
        self.prepared: Prepared | None = None

    def work(self) -> list[Performance]:
        self.prepared = p = prepare(self.request, self.model)  # tokenizing a long piece happens here too
        request = self.request
        state = self.model.new_state(p.plan, request.variations)
        stream = generate(self.model, p.primer, sampling=p.sampling, max_tokens=p.max_tokens,
                          max_seconds=request.seconds, stop_at_eos=False, batch=request.variations,
                          seed=request.seed, state=state)
        takes: list[list[NoteEvent]] = [[] for _ in p.decoders]
        pending: dict[int, list[NoteEvent]] = {}
        self.progress.emit(LiveNotes({}, 0.0, state.nbytes, reading=len(p.primer) > 1))
        last_emit = time.monotonic()
        try:
            for step in stream:
                tokens = [step] if request.variations == 1 else step.tolist()
                for lane, token in enumerate(tokens):
                    if token:  # PAD: this take has finished
                        for event in p.decoders[lane].feed(token):
                            if event.kind == "off":
                                takes[lane].append(event)
                                pending.setdefault(lane, []).append(event)
                now = time.monotonic()
                if now - last_emit >= EMIT_INTERVAL:
                    self._emit(pending, state)
                    pending, last_emit = {}, now
                if self.stopping:
                    break  # stop: keep what was written
        finally:
            stream.close()
        for lane, decoder in enumerate(p.decoders):
            for event in decoder.finish():
                takes[lane].append(event)
                pending.setdefault(lane, []).append(event)
        self._emit(pending, state)
        return [_performance(events) for events in takes]

    def _emit(self, pending: dict[int, list[NoteEvent]], state) -> None:
        seconds = self.prepared.decoders[0].time - self.prepared.start_time
        self.progress.emit(LiveNotes(pending, seconds, state.nbytes))


def _performance(events: list[NoteEvent]) -> Performance:
    if not events:
        return Performance.empty()
    return Performance.from_notes(np.array([e.onset for e in events]), np.array([e.time for e in events]),
                                  np.array([e.pitch for e in events]), np.array([e.velocity for e in events]))
