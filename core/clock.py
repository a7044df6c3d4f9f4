"""MIDI clock: follow a DAW's transport (Start, Stop, Continue, Song Position Pointer, 24 clocks per quarter note),
and be the clock master for one.

Pure logic, no ports: `ClockFollower` is fed (time, message) pairs and answers "where is the DAW now" and "when
will the DAW be at this point of the piece"; `clock_events` lists what a master sends, in the piece's seconds.

How the piece meets the DAW's timeline. Notes live in seconds; the piece's `Grid` (its file's tempo map, else
120 BPM 4/4) turns them into quarter notes, and quarter notes are what the DAW counts. The piece's time 0 is
placed on a DAW bar line, the *anchor*: after Start, the bar after the Start position (`count_in_bars` later:
one bar, which also gives the follower the DAW's tempo before the first note); after a Continue with no Start
seen, the next bar line at or after the song position. From then on the piece's quarter q sounds at the DAW's
quarter anchor + q (a continuation, which plays from after its primer, places the bar its new part begins in on
the anchor instead of the piece's first), at whatever tempo the DAW plays: the piece follows the DAW's tempo, not its own. A Stop
pauses; a Song Position Pointer moves the DAW (and so the piece) before Continue. The DAW's bars are taken to
be the piece's first time signature counted from song position 0 (MIDI clock carries no meter).

Tempo: a least-squares line through the arrival times of the last `window` clocks (48 = two beats), so the
jitter of one arrival (a JACK period, a busy thread) is averaged away; when the newest clocks stray from the
line in one direction for several clocks in a row the tempo has changed, and the line starts again from them.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from core.errors import RecitalError
from core.grid import Grid

PPQ = 24  # MIDI clocks per quarter note
CLOCK, START, CONTINUE, STOP, SONG_POSITION = 0xF8, 0xFA, 0xFB, 0xFC, 0xF2
CLOCKS_PER_SIXTEENTH = PPQ // 4  # a Song Position Pointer counts sixteenth notes ("MIDI beats")
WINDOW = 48  # clocks in the tempo fit: two beats
STRAY_CLOCKS = 3  # this many clocks in a row off the line, one way, mean a tempo change
STRAY_FLOOR = 0.002  # seconds: an arrival nearer the line than this is jitter, whatever the fit's spread
GAP_INTERVALS = 4.0  # a clock this many intervals after the last one begins a new run (the DAW paused the clock)
FIRST_GAP = 0.25  # seconds: the same with no tempo known yet (a clock slower than this is under 10 BPM)


class ClockError(RecitalError):
    """A clock setting that cannot be used, or no clock arriving: what was wrong, in one line."""


def song_position_message(sixteenths: int) -> list[int]:
    """The Song Position Pointer for `sixteenths` sixteenth notes from the song's start (14 bits)."""
    if not 0 <= sixteenths < 1 << 14:
        raise ClockError(f"a song position must be 0..16383 sixteenth notes, got {sixteenths}")
    return [SONG_POSITION, sixteenths & 0x7F, sixteenths >> 7]


@dataclass(frozen=True)
class ClockEvent:
    """One clock-master message at a music time (seconds of the piece): what the player sends besides notes."""

    kind: str  # "clock", "start", "continue", "stop", "position"
    time: float
    message: tuple[int, ...]


class ClockMaster:
    """The clock a master sends while a piece plays from `start` seconds, handed out in pieces as the music
    becomes known (a live generation's horizon moves on): Start (from 0) or a Song Position Pointer and
    Continue (from later), then 24 clocks per quarter note at the piece's tempo map, and Stop at the end.

    A start inside a sixteenth note is announced as the next one (a pointer counts whole sixteenths); the
    clocks begin there.
    """

    def __init__(self, grid: Grid | None = None, start: float = 0.0):
        self.grid = grid or Grid.constant()
        sixteenth = math.ceil(self.grid.quarters(max(start, 0.0)) * 4 - 1e-6)
        self.first_time = float(self.grid.seconds(sixteenth / 4))
        self._next_tick = sixteenth * CLOCKS_PER_SIXTEENTH
        if sixteenth == 0:
            self._opening = [ClockEvent("start", self.first_time, (START,))]
        else:
            self._opening = [ClockEvent("position", self.first_time, tuple(song_position_message(sixteenth))),
                             ClockEvent("continue", self.first_time, (CONTINUE,))]
        self.stopped = False

    def until(self, music: float) -> list[ClockEvent]:
        """The messages due up to `music` seconds that were not handed out yet."""
        if self.stopped:
            return []
        events, self._opening = self._opening, []
        last = math.floor(self.grid.quarters(music) * PPQ + 1e-6)
        if last >= self._next_tick:
            ticks = np.arange(self._next_tick, last + 1)
            times = np.atleast_1d(self.grid.seconds(ticks / PPQ))
            events += [ClockEvent("clock", t, (CLOCK,)) for t in times.tolist()]
            self._next_tick = last + 1
        return events

    def end(self, music: float) -> list[ClockEvent]:
        """The rest up to `music` seconds, then Stop there (the piece is over)."""
        events = self.until(music)
        if not self.stopped:
            events.append(ClockEvent("stop", max(music, self.first_time), (STOP,)))
            self.stopped = True
        return events


def clock_events(grid: Grid, start: float, end: float) -> list[ClockEvent]:
    """Everything a clock master sends while the piece plays from `start` to `end` seconds."""
    return ClockMaster(grid, start).end(end)


class ClockFollower:
    """The DAW's transport as its MIDI clock tells it: running or stopped, the song position, the tempo, and
    the mapping between the piece's seconds and wall-clock time (see the module's text).

    `feed(time, message)` with the arrival time (any steady clock in seconds, the same one later passed to
    `music_time`/`clock_time`) returns the message's kind ("clock", "start", "continue", "stop", "position")
    or None for anything else. `epoch` grows at every jump of the position (Start, Continue, a pointer), so a
    player knows to find its place again.
    """

    def __init__(self, grid: Grid | None = None, count_in_bars: int = 1, window: int = WINDOW, start: float = 0.0):
        """`start`: the piece's seconds where playing begins (a continuation's new part, after its primer): the
        bar holding it is the one placed on the anchor, so the music keeps its place in the bar."""
        if count_in_bars < 0:
            raise ClockError(f"the count-in must be 0 or more bars, got {count_in_bars}")
        if window < 3:
            raise ClockError(f"the tempo fit needs at least 3 clocks, got a window of {window}")
        self.grid = grid or Grid.constant()
        self.origin = self.grid.bar_start(float(self.grid.quarters(max(start, 0.0))))  # the piece's quarter on
        # the anchor
        self.count_in_bars = count_in_bars
        self.window = window
        self.running = False
        self.ticks = 0  # song position, in clocks, of the last clock counted (or of the next one, while pending)
        self._pending = True  # the next clock stands at `ticks` itself (the first after Start/Continue)
        self.anchor: float | None = None  # the DAW quarter where the piece's time 0 stands
        self.epoch = 0
        self.clocks = 0  # clocks received in all
        self.last_time: float | None = None  # arrival of the last clock
        self._index = 0  # a count of clocks that runs on regardless of the song position (for the tempo)
        self._points: deque[tuple[int, float]] = deque(maxlen=window)
        self._fit: tuple[float, float] | None = None  # (time of index 0, seconds per clock)
        self._strays: list[float] = []
        self._last_index = 0
        self.resumed_ticks = 0  # the song position (clocks) of the first clock since the last Start/Continue

    # -- what the DAW says --------------------------------------------------------------------------------------

    def feed(self, time: float, message) -> str | None:
        if not message:
            return None
        status = message[0]
        if status == CLOCK:
            self._clock(time)
            return "clock"
        if status == START:
            self.ticks, self._pending, self.running = 0, True, True
            self.anchor = self._bar_after(0.0)
            self.epoch += 1
            return "start"
        if status == CONTINUE:
            self._pending, self.running = True, True
            if self.anchor is None:  # a jump only the first time: else it resumes where it stopped (or at a
                self.anchor = self._bar_at_or_after(self.ticks / PPQ)  # pointer, which was a jump itself)
                self.epoch += 1
            return "continue"
        if status == STOP:
            if self.running and not self._pending:
                self.ticks += 1  # the next clock would have been the next position: Continue resumes there
            self.running, self._pending = False, True
            return "stop"
        if status == SONG_POSITION and len(message) >= 3:
            self.ticks = ((message[1] & 0x7F) | (message[2] & 0x7F) << 7) * CLOCKS_PER_SIXTEENTH
            self._pending = True
            self.epoch += 1
            return "position"
        return None

    def _clock(self, time: float) -> None:
        interval = self.seconds_per_clock
        if self.last_time is not None and time - self.last_time > (
                GAP_INTERVALS * interval if interval else FIRST_GAP):
            self._points.clear()  # the clock paused: the old line says nothing about the new run
            self._fit, self._strays = None, []
        self._index += 1
        self._add_point(self._index, time)
        self.clocks += 1
        self.last_time = time
        self._last_index = self._index
        if self.running:
            if self._pending:
                self._pending = False
                self.resumed_ticks = self.ticks
            else:
                self.ticks += 1

    def _add_point(self, index: int, time: float) -> None:
        if self._fit is not None and len(self._points) >= 8:
            origin, slope = self._fit
            residual = time - (origin + slope * index)
            spread = self._spread()
            if abs(residual) > max(3 * spread, STRAY_FLOOR):
                if self._strays and (self._strays[-1] > 0) != (residual > 0):
                    self._strays = []
                self._strays.append(residual)
            else:
                self._strays = []
            if len(self._strays) >= STRAY_CLOCKS:  # a new tempo: keep only the clocks that show it
                kept = list(self._points)[-(STRAY_CLOCKS - 1):]
                self._points.clear()
                self._points.extend(kept)
                self._strays = []
        self._points.append((index, time))
        self._fit = _line(self._points)

    def _spread(self) -> float:
        origin, slope = self._fit
        index = np.fromiter((p[0] for p in self._points), np.float64, len(self._points))
        times = np.fromiter((p[1] for p in self._points), np.float64, len(self._points))
        return float(np.sqrt(np.mean((times - (origin + slope * index)) ** 2)))

    # -- bars ----------------------------------------------------------------------------------------------------

    def _bar_quarters(self) -> float:
        return self.grid.meters[0].bar_quarters

    def _bar_at_or_after(self, quarter: float) -> float:
        bar = self._bar_quarters()
        return math.ceil(quarter / bar - 1e-9) * bar

    def _bar_after(self, quarter: float) -> float:
        return self._bar_at_or_after(quarter) + self.count_in_bars * self._bar_quarters()

    # -- tempo and position --------------------------------------------------------------------------------------

    @property
    def seconds_per_clock(self) -> float | None:
        """The fitted clock interval (None until two clocks of one run have come)."""
        return self._fit[1] if self._fit is not None else None

    @property
    def bpm(self) -> float | None:
        spc = self.seconds_per_clock
        return 60.0 / (spc * PPQ) if spc else None

    @property
    def position(self) -> float:
        """The song position in quarter notes (of the last clock while running; where Continue resumes, stopped)."""
        return self.ticks / PPQ

    def _last_clock_time(self) -> float | None:
        """The last clock's time on the fitted line (its arrival with the jitter averaged out)."""
        if self.last_time is None:
            return None
        if self._fit is None:
            return self.last_time
        origin, slope = self._fit
        return origin + slope * self._last_index

    def quarter_at(self, now: float) -> float | None:
        """The DAW's song position (quarters) at wall time `now`; None while stopped or before the first clock
        of this run. Between clocks it moves on at the fitted tempo, never more than one clock past the last."""
        if not self.running or self._pending or self.last_time is None:
            return None
        spc = self.seconds_per_clock
        if spc is None:
            return self.position
        ahead = min(max((now - self._last_clock_time()) / spc, 0.0), 1.0)
        return (self.ticks + ahead) / PPQ

    def time_of_quarter(self, quarter: float) -> float | None:
        """When the DAW will be at `quarter` (wall time) if its tempo holds; None while stopped or tempo unknown."""
        spc = self.seconds_per_clock
        if not self.running or self._pending or spc is None:
            return None
        return self._last_clock_time() + (quarter * PPQ - self.ticks) * spc

    def music_time(self, now: float) -> float | None:
        """The piece's seconds sounding at wall time `now` (negative before the anchor); None while stopped."""
        quarter = self.quarter_at(now)
        if quarter is None or self.anchor is None:
            return None
        return self._music_at(quarter)

    def _music_at(self, quarter: float) -> float:
        piece = quarter - self.anchor + self.origin
        if piece < 0:  # the count-in: before the piece, at its first tempo
            return piece * self.grid.tempos[0].mspq / 1e6
        return float(self.grid.seconds(piece))

    def resumed_music_time(self) -> float | None:
        """The piece's seconds at the first clock since the last Start or Continue (where playing resumed)."""
        if self.anchor is None or self._pending:
            return None
        return self._music_at(self.resumed_ticks / PPQ)

    def clock_time(self, music: float) -> float | None:
        """The wall time at which the piece reaches `music` seconds at the DAW's tempo; None when unknown."""
        if self.anchor is None:
            return None
        return self.time_of_quarter(self.anchor + float(self.grid.quarters(music)) - self.origin)


def _line(points) -> tuple[float, float] | None:
    """Least-squares (intercept, slope) of time against clock index; None with fewer than two points."""
    if len(points) < 2:
        return None
    index = np.fromiter((p[0] for p in points), np.float64, len(points))
    times = np.fromiter((p[1] for p in points), np.float64, len(points))
    centre_i, centre_t = index.mean(), times.mean()
    slope = float(np.dot(index - centre_i, times - centre_t) / np.dot(index - centre_i, index - centre_i))
    return centre_t - slope * centre_i, slope
