"""Generation as a studio job: continue the piece (from its end or the playhead) or write a new one, K takes.

`session_for(request, model)` builds the core's `GenerationSession` (primer, plan, token cap, state: every bad
setting refused before a step); `Generate.work()` runs it in the job's thread and reports, through signals only,
the notes of every take as they finish (batched about every 40 ms so the roll stays smooth), the state's memory,
and at the end one new `Performance` per take. Stopping keeps what was written so far.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from core.adapt import AdaptSettings
from core.generate import SamplingConfig
from core.midi import Performance
from core.session import GenerationSession
from core.tokenizer import NoteEvent
from studio.document import Piece, WriteControls
from studio.jobs import Job

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
    budget: int | None = None  # bytes for all takes together; None: the model's default for each take
    plan: object | None = None  # the slider's plan for this budget and batch (not made again), if any
    controls: WriteControls = WriteControls()  # key, range, density, dynamics (core/constraints.py)
    adapt: bool = False  # adapt a copy of the model to the piece first (core/adapt.py; a primer of a few seconds)
    keep_beat: bool = True  # pull when notes come towards the piece's beat (core/pulse.py; left-to-right models)
    recall_motifs: bool = True  # mix each take's memory of the piece's motifs in (core/motif.py; left-to-right)


def session_for(request: GenerateRequest, model) -> GenerationSession:
    """The core session of a request (RecitalError on any bad setting); tokenizing a long piece happens here."""
    from_nothing = request.new_piece or len(request.base) == 0
    return GenerationSession(
        model, None if from_nothing else request.base.whole, budget=request.budget, plan=request.plan,
        sampling=SamplingConfig(temperature=request.temperature, top_p=request.top_p), seconds=request.seconds,
        variations=request.variations, seed=request.seed, start=None if request.new_piece else request.start,
        adapt=AdaptSettings() if request.adapt and not from_nothing else None,
        pulse=None if request.keep_beat else 0.0, motifs=None if request.recall_motifs else 0.0,
        constraints=request.controls.constraints())


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
        self.session: GenerationSession | None = None

    def cancel(self) -> None:
        super().cancel()
        if self.session is not None:
            self.session.stop()

    def work(self) -> list[Performance]:
        self.session = session = session_for(self.request, self.model)
        if self.stopping:  # cancelled while the session was being made
            session.stop()
        pending: dict[int, list[NoteEvent]] = {}
        self.progress.emit(LiveNotes({}, 0.0, session.state.nbytes, reading=len(session.primer) > 1))
        last_emit = time.monotonic()
        for event in session:
            for lane, notes in enumerate(event.notes):
                ended = [note for note in notes if note.kind == "off"]
                if ended:
                    pending.setdefault(lane, []).extend(ended)
            now = time.monotonic()
            if now - last_emit >= EMIT_INTERVAL:
                self._emit(pending)
                pending, last_emit = {}, now
        self._emit(pending)
        return session.new_parts()

    def _emit(self, pending: dict[int, list[NoteEvent]]) -> None:
        session = self.session
        self.progress.emit(LiveNotes(pending, session.time(0) - session.start_time, session.state.nbytes))
