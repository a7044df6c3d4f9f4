"""Regenerate selection as a studio job: a denoising model writes a region of the piece anew, K takes.

`Regenerate.work()` runs the core's `infill` (core/infill.py) in the job's thread on the whole piece and reports
only through signals: one `Piece` per take at the end. Each take is the original piece with the notes the region
covers (onsets inside its seconds, and inside its pitches when it has some) replaced by the model's: every other
note stays exactly as it was, in its own part (the composer's blue, the model's amber), so switching takes changes
the region only, and undo gives back the original piece object itself.

The composer's Write panel sets how much music each side of the region the model reads (`context`: less is
faster) and its unmasking passes (`steps`); how many new notes a second the region gets comes from the panel's
Density limit (WriteControls -> the constraints' density, which core infill reads as its `density`).

The model comes from the studio's LoadModel job, which already chose its fast int8 pass weights (use_fast_step).
Its passes read a whole window at once, like `recital infill` and `recital eval`: they run on the "read" threads
of core/threads.py (the cores the load average leaves idle, at least one), not generation's single thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.generate import SamplingConfig
from core.infill import CONTEXT_SECONDS
from core.midi import Performance
from core.models.interface import DENOISE
from core.threads import use_threads
from studio.document import Piece, WriteControls
from studio.jobs import Job
from studio.pianoroll import Region

INFILL_MODEL = "default-smdim"  # the shipped model that can fill a region (a denoiser)


def core_infill(*args, **kwargs) -> list[Performance]:
    """core.infill.infill, imported when first used (it loads the denoising machinery)."""
    from core.infill import infill

    return infill(*args, **kwargs)


def can_infill(model) -> bool:
    """A model that fills masked music from both sides (family DENOISE) can regenerate a region (core.infill
    refuses the others: they cannot see what follows it)."""
    return getattr(model, "family", None) == DENOISE


def cannot_infill_reason(model) -> str:
    """Why Regenerate selection is off for a loaded `model` ('' when it is on)."""
    if model is None:
        return "Regenerate selection: waiting for the model to load"
    if can_infill(model):
        return ""
    return (f"Regenerate selection needs a model that fills gaps from both sides (SMDIM): pick {INFILL_MODEL} "
            "in the Model box. This model only writes onward from a point.")


@dataclass(frozen=True)
class InfillRequest:
    base: Piece  # the piece as it is: everything outside the region is kept
    region: Region
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int | None = None
    variations: int = 1
    controls: WriteControls = WriteControls()  # key, range, density, dynamics (core/constraints.py)
    budget: int | None = None  # bytes for all takes together (it buys the window); None: the model's default
    context: float | None = CONTEXT_SECONDS  # seconds of music read each side of the region; None: the window
    steps: int | None = None  # unmasking passes per window; None: the model's own (its config's `steps`)

    @property
    def keep_above(self) -> int | None:
        """The core keeps the region's notes at or above this pitch: the ones over its pitch range (None: none)."""
        high = self.region.high
        return None if high is None or high >= 127 else high + 1

    @property
    def keep_below(self) -> int | None:
        """The core keeps the region's notes at or below this pitch: the ones under its pitch range."""
        low = self.region.low
        return None if low is None or low <= 0 else low - 1

    @property
    def end(self) -> float:
        """The region's end, or the piece's where the selection runs past it (snapped to a beat after the last
        note): nothing past the end can be filled from both sides."""
        whole = self.base.duration
        return min(self.region.end, whole) if self.region.start < whole else self.region.end


def take_from(base: Piece, region: Region, result: Performance) -> Piece:
    """`base` with the notes `region` covers replaced by the ones `result` (a whole piece) has there."""
    new = _select(result, region.inside(result.onset, result.pitch))
    return Piece(_select(base.primer, ~region.inside(base.primer.onset, base.primer.pitch)),
                 Performance.concat(_select(base.generated, ~region.inside(base.generated.onset,
                                                                           base.generated.pitch)), new))


def _select(perf: Performance, keep: np.ndarray) -> Performance:
    return Performance(perf.onset[keep], perf.offset[keep], perf.pitch[keep], perf.velocity[keep], grid=perf.grid)


class Regenerate(Job):
    """Run one Regenerate selection request on a loaded model; the result is one `Piece` per take."""

    def __init__(self, request: InfillRequest, model):
        super().__init__()
        self.request = request
        self.model = model

    def work(self) -> list[Piece]:
        request, region = self.request, self.request.region
        with use_threads("read"):  # in this job's thread, inside the job's own "generate" setting
            results = core_infill(
                self.model, request.base.whole, region.start, request.end, keep_above=request.keep_above,
                keep_below=request.keep_below, variations=request.variations, seed=request.seed,
                sampling=SamplingConfig(temperature=request.temperature, top_p=request.top_p),
                constraints=request.controls.constraints(), budget=request.budget, steps=request.steps,
                context=request.context)
        self.check()  # stopped while the model worked: the piece stays as it was
        return [take_from(request.base, region, result) for result in results]
