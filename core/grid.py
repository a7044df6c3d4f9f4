"""The musical grid of a piece: its tempo map and time signatures, and the arithmetic between seconds and bars.

Notes live in seconds everywhere in Recital (the codec knows nothing of beats); a `Grid` is what a DAW needs to
place those seconds on its bars. Positions on the grid are counted in quarter notes from the start ("quarters"),
which is how a MIDI file counts them (ticks / ticks per quarter), so a file's map is held exactly:

    grid = Grid.constant(bpm=90, numerator=6, denominator=8)
    grid.quarters(2.0)            # seconds -> quarter notes
    grid.seconds(3.0)             # quarter notes -> seconds
    grid.bar_lines(30.0)          # seconds of every bar line up to 30 s
    quantize(onsets, grid, "1/16", strength=1.0, swing=0.0)

A time signature change starts a new bar where it stands (as in a MIDI file); the last tempo and time signature
go on forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.errors import RecitalError

DEFAULT_BPM = 120.0
DEFAULT_METER = (4, 4)
DEFAULT_RESOLUTION = 480  # ticks per quarter note in the files Recital writes from nothing
MIN_BPM, MAX_BPM = 4.0, 1000.0  # a MIDI tempo holds 3.6..60,000,000 BPM; outside this it is not music
MAX_NUMERATOR = 64
DENOMINATORS = (1, 2, 4, 8, 16, 32, 64)
EPSILON = 1e-6  # quarters: positions this close are the same position (float noise of a seconds round trip)


class GridError(RecitalError):
    """A tempo, time signature, bar count or quantize setting that cannot be used: what was wrong, in one line."""


@dataclass(frozen=True)
class Tempo:
    """From `quarter` on, a quarter note lasts `mspq` microseconds."""

    quarter: float
    mspq: int

    @property
    def bpm(self) -> float:
        return 60_000_000.0 / self.mspq


@dataclass(frozen=True)
class Meter:
    """From `quarter` on (a bar begins there), bars of `numerator` / `denominator`."""

    quarter: float
    numerator: int
    denominator: int

    @property
    def bar_quarters(self) -> float:
        return self.numerator * 4.0 / self.denominator

    @property
    def beat_quarters(self) -> float:
        """The counted beat: the denominator's note, or three of them in a compound meter (6/8, 9/8, 12/16)."""
        unit = 4.0 / self.denominator
        compound = self.denominator >= 8 and self.numerator % 3 == 0 and self.numerator > 3
        return unit * 3 if compound else unit

    def __str__(self) -> str:
        return f"{self.numerator}/{self.denominator}"


@dataclass(frozen=True)
class Grid:
    """A tempo map and time signatures, each sorted and starting at quarter 0; `resolution` is the file's ticks
    per quarter note (kept so a primer's notes go back on the very ticks they were read from)."""

    tempos: tuple[Tempo, ...]
    meters: tuple[Meter, ...]
    resolution: int = DEFAULT_RESOLUTION

    def __post_init__(self) -> None:
        if not self.tempos or self.tempos[0].quarter != 0 or not self.meters or self.meters[0].quarter != 0:
            raise GridError("a grid's first tempo and first time signature stand at its start")
        starts = [t.quarter for t in self.tempos]
        ends = np.cumsum([0.0] + [(b - a) * t.mspq / 1e6 for a, b, t in
                                  zip(starts[:-1], starts[1:], self.tempos[:-1], strict=True)])
        object.__setattr__(self, "_tempo_quarters", np.asarray(starts, dtype=np.float64))
        object.__setattr__(self, "_tempo_seconds", ends)
        object.__setattr__(self, "_spq", np.asarray([t.mspq / 1e6 for t in self.tempos], dtype=np.float64))

    @staticmethod
    def constant(bpm: float = DEFAULT_BPM, numerator: int = DEFAULT_METER[0], denominator: int = DEFAULT_METER[1],
                 resolution: int = DEFAULT_RESOLUTION) -> Grid:
        """One tempo and one time signature for the whole piece (a new piece's `--bpm` and `--meter`)."""
        check_bpm(bpm)
        check_meter(numerator, denominator)
        return Grid((Tempo(0.0, round(60_000_000 / bpm)),), (Meter(0.0, numerator, denominator),), resolution)

    def describe(self) -> str:
        """'90 BPM 6/8', or the first of each and how many there are: '100 BPM 4/4 (2 tempos, 2 time signatures)'."""
        text = f"{self.tempos[0].bpm:.4g} BPM {self.meters[0]}"
        more = [f"{len(items)} {name}" for items, name in ((self.tempos, "tempos"), (self.meters, "time signatures"))
                if len(items) > 1]
        return text + (f" ({', '.join(more)})" if more else "")

    # -- seconds <-> quarters ------------------------------------------------------------------------------------

    def quarters(self, seconds):
        """Quarter notes from the start at `seconds` (a number or an array)."""
        t = np.asarray(seconds, dtype=np.float64)
        i = np.clip(np.searchsorted(self._tempo_seconds, t, side="right") - 1, 0, None)
        out = self._tempo_quarters[i] + (t - self._tempo_seconds[i]) / self._spq[i]
        return float(out) if out.ndim == 0 else out

    def seconds(self, quarters):
        """Seconds from the start at `quarters` quarter notes (a number or an array)."""
        q = np.asarray(quarters, dtype=np.float64)
        i = np.clip(np.searchsorted(self._tempo_quarters, q, side="right") - 1, 0, None)
        out = self._tempo_seconds[i] + (q - self._tempo_quarters[i]) * self._spq[i]
        return float(out) if out.ndim == 0 else out

    def tempo_changes(self) -> list[tuple[float, float]]:
        """(seconds, BPM) of every tempo."""
        return [(float(s), t.bpm) for s, t in zip(self._tempo_seconds, self.tempos, strict=True)]

    def meter_changes(self) -> list[tuple[float, int, int]]:
        """(seconds, numerator, denominator) of every time signature."""
        return [(self.seconds(m.quarter), m.numerator, m.denominator) for m in self.meters]

    # -- bars and beats -------------------------------------------------------------------------------------------

    def meter_at(self, quarter: float) -> Meter:
        index = max(0, int(np.searchsorted([m.quarter for m in self.meters], quarter + EPSILON, side="right")) - 1)
        return self.meters[index]

    def bar_start(self, quarter: float) -> float:
        """The quarter where the bar holding `quarter` begins."""
        meter = self.meter_at(quarter)
        bars = math.floor((quarter - meter.quarter) / meter.bar_quarters + EPSILON)
        return meter.quarter + max(bars, 0) * meter.bar_quarters

    def after_bars(self, quarter: float, bars: int) -> float:
        """The quarter `bars` bar lines after the bar line at (or last before) `quarter`, across meter changes."""
        position = self.bar_start(quarter)
        while bars > 0:
            meter = self.meter_at(position)
            later = [m.quarter for m in self.meters if m.quarter > position + EPSILON]
            step = min(bars, math.ceil((later[0] - position) / meter.bar_quarters - EPSILON)) if later else bars
            position += step * meter.bar_quarters
            bars -= step
            if later and position > later[0] + EPSILON:  # a meter change cut the last bar short: its line is there
                position = later[0]
        return position

    def bars_seconds(self, start: float, bars: int) -> float:
        """Seconds of new music from `start` to the `bars`-th bar line after it, so the piece ends on a bar line.

        A start within a sixteenth note after a bar line (a primer's last release, a hair late) counts from that
        bar line; a start later in a bar counts from the next one, so the part of a bar it finishes is extra.
        """
        quarter = self.quarters(start)
        line = self.bar_start(quarter)
        if quarter - line > 0.25 + EPSILON:
            line = self.after_bars(line, 1)
        return self.seconds(self.after_bars(line, bars)) - start

    def bar_lines(self, until: float, since: float = 0.0) -> np.ndarray:
        """Seconds of every bar line in [since, until]."""
        return self._lines(until, since, beats=False)

    def beat_lines(self, until: float, since: float = 0.0) -> np.ndarray:
        """Seconds of every beat (bar lines included) in [since, until]."""
        return self._lines(until, since, beats=True)

    def _lines(self, until: float, since: float, beats: bool) -> np.ndarray:
        low, high = self.quarters(max(since, 0.0)), self.quarters(until)
        out = []
        for index, meter in enumerate(self.meters):
            end = self.meters[index + 1].quarter if index + 1 < len(self.meters) else math.inf
            step = meter.beat_quarters if beats else meter.bar_quarters
            first = meter.quarter + max(0, math.ceil((low - meter.quarter) / step - EPSILON)) * step
            count = math.floor((high - first) / step + EPSILON) + 1
            if end < math.inf:
                count = min(count, math.ceil((end - first) / step - EPSILON))
            if count > 0:  # lines before the next meter's start (its own first line stands there)
                out.append(first + step * np.arange(count))
        if not out:
            return np.zeros(0)
        return self.seconds(np.concatenate(out))


def check_bpm(bpm: float) -> None:
    if not (math.isfinite(bpm) and MIN_BPM <= bpm <= MAX_BPM):
        raise GridError(f"a tempo must be between {MIN_BPM:g} and {MAX_BPM:g} BPM, got {bpm:g}")


def check_meter(numerator: int, denominator: int) -> None:
    if not 1 <= numerator <= MAX_NUMERATOR:
        raise GridError(f"a time signature's numerator must be 1 to {MAX_NUMERATOR}, got {numerator}")
    if denominator not in DENOMINATORS:
        raise GridError(f"a time signature's denominator must be one of {', '.join(map(str, DENOMINATORS))}, "
                        f"got {denominator}")


def parse_meter(text: str) -> tuple[int, int]:
    """'6/8' -> (6, 8); GridError for anything else."""
    top, slash, bottom = text.strip().partition("/")
    if not slash or not top.strip().isdigit() or not bottom.strip().isdigit():
        raise GridError(f"a time signature is written like 3/4 or 6/8, got {text!r}")
    check_meter(int(top), int(bottom))
    return int(top), int(bottom)


def parse_subdivision(text: str) -> float:
    """A grid step as a note value, in quarters: '1/16' -> 0.25, '1/8t' (triplet eighths) -> 1/3."""
    body = text.strip().lower()
    triplet = body.endswith("t")
    top, slash, bottom = body.rstrip("t").partition("/")
    if top != "1" or not slash or not bottom.isdigit() or int(bottom) not in DENOMINATORS:
        raise GridError(f"a grid is a note value like 1/8, 1/16 or 1/8t (triplets), 1/1 to 1/64; got {text!r}")
    quarters = 4.0 / int(bottom)
    return quarters * 2 / 3 if triplet else quarters


def quantize(onsets, grid: Grid, step: float, strength: float = 1.0, swing: float = 0.0,
             not_before: float = 0.0) -> np.ndarray:
    """Onsets (seconds) moved `strength` of the way to their nearest grid point, `step` quarters apart.

    Grid points count from each bar line; with `swing`, every second point is late by `swing` of a step (1/3:
    a triplet feel, 0.5: dotted). A point before `not_before` is never chosen (the notes a model wrote stay after
    the primer); the bar's end is always a point, so a bar whose length is no multiple of the step still ends on it.
    """
    if not step > 0:
        raise GridError(f"a quantize grid step must be positive, got {step}")
    if not 0.0 <= strength <= 1.0:
        raise GridError(f"quantize strength must be between 0 and 1, got {strength:g}")
    if not 0.0 <= swing <= 0.5:
        raise GridError(f"swing must be between 0 and 0.5, got {swing:g}")
    seconds = np.asarray(onsets, dtype=np.float64)
    if seconds.size == 0:
        return seconds.copy()
    quarters = np.atleast_1d(grid.quarters(seconds))
    floor_q = grid.quarters(not_before) - EPSILON
    pair = 2 * step
    targets = np.empty_like(quarters)
    for i, q in enumerate(quarters.tolist()):
        start = grid.bar_start(q)
        end = grid.after_bars(start, 1)
        j = math.floor((q - start) / pair + EPSILON)
        base = start + j * pair
        candidates = [base - pair + (1 + swing) * step, base, base + (1 + swing) * step, base + pair, end]
        candidates = [c for c in candidates if start - EPSILON <= c <= end + EPSILON and c >= floor_q]
        if not candidates:  # the whole bar lies before `not_before`: its next point after it
            candidates = [_first_point_after(grid, floor_q, step, swing)]
        targets[i] = min(candidates, key=lambda c: abs(c - q))
    moved = quarters + strength * (targets - quarters)
    return np.atleast_1d(grid.seconds(moved)).reshape(seconds.shape)


def _first_point_after(grid: Grid, quarter: float, step: float, swing: float) -> float:
    """The first grid point at or after `quarter`."""
    start = grid.bar_start(quarter)
    end = grid.after_bars(start, 1)
    k = 0
    while True:
        point = start + (k // 2) * 2 * step + (k % 2) * (1 + swing) * step
        if point >= quarter or point >= end - EPSILON:
            return min(point, end)
        k += 1
