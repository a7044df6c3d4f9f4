"""The live player: note events in (as a generator produces them), timed MIDI/synth messages out.

Time is music time (seconds of the piece) mapped to a steady clock by one offset. Playback starts once
`lookahead` seconds of music are buffered; when generation falls behind and the clock reaches the last
music time the decoder has finished (its *horizon*), the clock stops there and resumes, shifted, once the
buffer is refilled. So a slow generator makes a pause, never a bunch of late notes. Every message's
scheduled and actual send time is recorded, for the timing benchmark.

Use from a generation loop (the CLI's `--play`, the studio's worker):

    sink = open_sink(virtual=True)                  # or synth=True, or port="name"
    try:
        with LivePlayer(sink) as player:            # exit waits for the music to finish, then all-off;
            ids = list(play_along(generate(...), player, start_time=primer_seconds))  # an error: stop()
    finally:
        sink.close()

`player.stop()` (e.g. from a stop button, any thread) silences at once; `play_performance` plays a file.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from core import tokenizer
from core.clock import STOP, ClockFollower, ClockMaster
from core.grid import Grid
from core.midi import Performance
from core.tokenizer import NoteEvent

if TYPE_CHECKING:  # core.codecs brings the notes codec and torch: `recital play` never needs them
    from core.codecs import Codec

DEFAULT_LOOKAHEAD = 1.0  # seconds of music buffered before playing (and after a stall)
SPIN_SECONDS = 0.002  # the last stretch before a message is busy-waited: OS timers overshoot by ~0.1-1 ms
# While a player runs, a thread that holds the GIL (a sampling loop in Python) must hand it over within this
# many seconds instead of CPython's default 5 ms, or the player's wake-up waits for it (bench/player.py).
SWITCH_INTERVAL = 0.0005
RT_PRIORITY = 10  # low among real-time threads: below JACK's (usually 70+), above every normal thread
NO_CLOCK_SECONDS = 5.0  # following a DAW's clock: say so when none has come in this long

_switch_lock = threading.Lock()
_switch_users = 0
_switch_saved = 0.005


def _raise_priority() -> bool:
    """Real-time (SCHED_RR) priority for the calling thread, where the OS allows it; False otherwise."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(RT_PRIORITY))  # 0: this thread, on Linux
    except (OSError, ValueError):
        return False
    return True


@contextmanager
def _prompt_thread_switches() -> Iterator[None]:
    """Shorten the interpreter's thread switch interval while any player runs; restore it after the last."""
    global _switch_users, _switch_saved
    with _switch_lock:
        if _switch_users == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, SWITCH_INTERVAL))
        _switch_users += 1
    try:
        yield
    finally:
        with _switch_lock:
            _switch_users -= 1
            if _switch_users == 0:
                sys.setswitchinterval(_switch_saved)


class Sink(Protocol):
    """Where the player's messages go: a MIDI port (core.midiport.MidiOutput) or the synth (core.synth)."""

    def note_on(self, pitch: int, velocity: int) -> None: ...

    def note_off(self, pitch: int) -> None: ...

    def all_off(self) -> None: ...


@dataclass
class Timing:
    """What the player sent and when: scheduled vs actual clock times of every message, and the stalls."""

    scheduled: list[float] = field(default_factory=list)
    actual: list[float] = field(default_factory=list)
    events: list[NoteEvent] = field(default_factory=list)
    stalls: int = 0
    stalled_seconds: float = 0.0
    late: int = 0  # following a clock: notes that came from the generator after their time, skipped
    realtime: bool = False  # whether the player thread ran at real-time priority

    def errors_ms(self) -> np.ndarray:
        """Actual minus scheduled send time of each message, in milliseconds."""
        return (np.asarray(self.actual) - np.asarray(self.scheduled)) * 1000.0

    def summary(self) -> dict[str, float]:
        errors = self.errors_ms()
        if len(errors) == 0:
            return {"messages": 0, "p50_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0}
        return {"messages": len(errors), "p50_ms": float(np.percentile(errors, 50)),
                "p99_ms": float(np.percentile(errors, 99)), "max_ms": float(errors.max())}


class Schedule:
    """The player's clock logic, free of threads and real time: which events are due at clock time `now`.

    States: *buffering* (`origin is None`: the music waits at `position`) and *playing* (music time t sounds
    at clock time `origin + t`). Buffering ends when `lookahead` seconds past `position` are known (or the
    stream is finished); playing stops (a stall) when the clock passes the horizon before the stream ends.
    """

    def __init__(self, lookahead: float = DEFAULT_LOOKAHEAD, start: float | None = None):
        self.lookahead = lookahead
        self.position = start  # music time where the clock waits; None: the first event's time
        self.origin: float | None = None
        self.horizon = float("-inf")  # music up to here is final
        self.finished = False
        self.stalls = 0
        self.stalled_seconds = 0.0
        self._stall_started: float | None = None
        self._heap: list[tuple[float, int, int, NoteEvent]] = []
        self._overdue: list[tuple[float, NoteEvent]] = []  # due before a stall, not yet handed out
        self._order = itertools.count()

    def add(self, events: Iterable[NoteEvent], now: float, horizon: float | None = None) -> None:
        """Events the decoder finished; `horizon`: music time up to which nothing more will come."""
        self._check_stall(now)
        latest = self.horizon
        for event in events:
            # Offs before ons at one instant, so a re-struck key sounds again.
            heapq.heappush(self._heap, (event.time, event.kind == "on", next(self._order), event))
            latest = max(latest, event.time)
        # An event may lie past the horizon (a note-off one tick after its onset; with the notes codec a note's
        # end told when the stream finishes, seconds ahead): it waits in the heap for its own time.
        self.horizon = max(self.horizon, horizon if horizon is not None else latest)
        if self.position is None and self._heap:
            self.position = self._heap[0][0]

    def finish(self, now: float) -> None:
        """No more events will come: play the rest without waiting for a buffer."""
        self._check_stall(now)
        self.finished = True

    @property
    def done(self) -> bool:
        return self.finished and not self._heap and not self._overdue

    def _check_stall(self, now: float) -> None:
        """Stop the clock at the horizon if it got there before generation did (before the horizon moves).

        Events up to the horizon still belong before the stall: they are set aside with their times.
        """
        if self.origin is not None and not self.finished and now - self.origin > self.horizon:
            self._overdue += self._pop_until(self.horizon)
            self.position = self.horizon
            self._stall_started = self.origin + self.horizon
            self.origin = None
            self.stalls += 1

    def _pop_until(self, music_time: float) -> list[tuple[float, NoteEvent]]:
        due = []
        while self._heap and self._heap[0][0] <= music_time:
            t, _, _, event = heapq.heappop(self._heap)
            due.append((self.origin + t, event))
        return due

    def pop_due(self, now: float) -> list[tuple[float, NoteEvent]]:
        """Events whose clock time has come, with that scheduled clock time, in playing order."""
        self._check_stall(now)
        due, self._overdue = self._overdue, []
        if self.origin is None:
            # After a stall the horizon must move on (by the lookahead, and by something even with none).
            needed = self.lookahead if self._stall_started is None else max(self.lookahead, 1e-9)
            if self.position is None or not (self.finished or self.horizon - self.position >= needed):
                return due
            self.origin = now - self.position
            if self._stall_started is not None:
                self.stalled_seconds += now - self._stall_started
                self._stall_started = None
        return due + self._pop_until(now - self.origin)

    def next_time(self) -> float | None:
        """Clock time of the next due event; None while buffering (only new input can move things)."""
        if self._overdue:
            return self._overdue[0][0]
        if self.origin is None or not self._heap:
            return None
        return self.origin + self._heap[0][0]


class FollowSchedule:
    """The clock logic when a DAW's MIDI clock drives the music (`core.clock.ClockFollower`): which events are
    due at wall time `now`, free of threads and ports.

    The music is where the follower says it is: nothing is due while the DAW is stopped, a jump of its
    position (Start, Continue, a song position) finds the place again (back or forward), and the DAW never
    waits for the generator: a note-on that arrives after its time is skipped (counted in `late`), a late
    note-off is sent at once.
    """

    def __init__(self, follower: ClockFollower):
        self.follower = follower
        self.finished = False
        self.late = 0
        self._events: list[tuple[float, bool, int, object]] = []  # sorted; everything before `_cursor` is past
        self._cursor = 0
        self._overdue: list[object] = []
        self._epoch: int | None = None
        self._until = float("-inf")  # music time played up to (since the last jump)
        self._order = itertools.count()

    def add(self, events: Iterable) -> None:
        for event in events:
            entry = (event.time, event.kind == "on", next(self._order), event)
            if self._epoch is not None and event.time <= self._until:  # after its time: off at once, on never
                if event.kind == "on":
                    self.late += 1
                else:
                    self._overdue.append(event)
                continue
            self._events.insert(bisect.bisect_right(self._events, entry[:3], key=lambda e: e[:3]), entry)

    def finish(self) -> None:
        self.finished = True

    @property
    def done(self) -> bool:
        return self.finished and self._cursor >= len(self._events) and not self._overdue

    def jumped(self) -> bool:
        """Whether the DAW's position jumped since the last `pop_due` (the player releases its notes then)."""
        return self.follower.epoch != self._epoch

    def pop_due(self, now: float) -> list[tuple[float, object]]:
        """Events due at `now` with their scheduled wall time (the follower's, for the timing record)."""
        due = [(now, event) for event in self._overdue]
        self._overdue = []
        music = self.follower.music_time(now)
        if music is None:
            return due
        if self.follower.epoch != self._epoch:  # a new start: from the first event at or after its position
            self._epoch = self.follower.epoch
            resumed = self.follower.resumed_music_time()
            self._cursor = bisect.bisect_left(self._events, resumed - 1e-9, key=lambda e: e[0])
        end = bisect.bisect_right(self._events, music, key=lambda e: e[0])
        for _, _, _, event in self._events[self._cursor:end]:
            scheduled = self.follower.clock_time(event.time)
            due.append((now if scheduled is None else scheduled, event))
        self._cursor = max(self._cursor, end)
        self._until = music
        return due

    def next_time(self) -> float | None:
        """Wall time of the next event at the DAW's present tempo; None when unknown (wait for the next clock)."""
        if self._overdue:
            return float("-inf")
        if self._cursor >= len(self._events) or self.follower.epoch != self._epoch:
            return None
        return self.follower.clock_time(self._events[self._cursor][0])


class LivePlayer:
    """Plays note events on a background thread as they are fed; safe to feed from the generating thread.

    `feed(events, horizon)` after each token, `finish()` at the end; leaving the `with` block (or `close()`)
    waits for the music to end and sends all-notes-off. `stop()` ends at once. An error in the sink (say, the
    JACK server went away) stops the player and is raised by the next `feed`/`close`.
    """

    def __init__(self, sink: Sink, lookahead: float = DEFAULT_LOOKAHEAD, start: float | None = None,
                 clock: Callable[[], float] = time.perf_counter, realtime: bool = True,
                 follower: ClockFollower | None = None, send_clock: Grid | None = None):
        """`realtime`: ask the OS for round-robin real-time priority for the player thread, as audio
        programs do; granted where the user may (root, or an `rtprio` limit, usual for audio groups), and
        silently skipped elsewhere (`timing.realtime` tells which).

        `follower`: the time source is a DAW's MIDI clock instead of the wall clock: feed its messages to
        `clock_message` (core.midiport.MidiClockInput does); the music plays where the DAW is, pauses on its
        Stop and never waits for a buffer. `send_clock`: the player is the clock master instead: it sends
        Start (or a song position and Continue), 24 clocks per quarter note of this grid and Stop on the sink
        (which must have `send`, as a MIDI port does)."""
        if follower is not None and send_clock is not None:
            raise ValueError("a player follows a clock or sends one, not both")
        self.sink = sink
        self.realtime = realtime
        self.clock = clock
        self.follower = follower
        self.schedule = Schedule(lookahead, start) if follower is None else FollowSchedule(follower)
        self._master = ClockMaster(send_clock, start or 0.0) if send_clock is not None else None
        self._clock_input = self._say = None
        self._clock_name = ""
        self.timing = Timing()
        self._cond = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="recital-player", daemon=True)
        self._thread.start()

    def feed(self, events: Iterable[NoteEvent], horizon: float | None = None) -> None:
        self._raise_error()
        events = list(events)
        with self._cond:
            if self.follower is not None:
                self.schedule.add(events)
            else:
                if self._master is not None:
                    known = max([horizon if horizon is not None else float("-inf")] + [e.time for e in events])
                    events += self._master.until(known)
                self.schedule.add(events, self.clock(), horizon)
            self._cond.notify()

    def attach(self, clock_input, name: str, say: Callable[[str], None] | None = None) -> None:
        """The followed clock's input port: closed with the player; `say` hears, once, that no clock has come
        from `name` for NO_CLOCK_SECONDS (the player goes on waiting)."""
        self._clock_input, self._clock_name, self._say = clock_input, name, say

    def clock_message(self, time: float, message) -> None:
        """A message from the followed DAW's clock input, with its arrival time on this player's clock."""
        with self._cond:
            self.follower.feed(time, message)
            self._cond.notify()

    def finish(self) -> None:
        with self._cond:
            if self.follower is not None:
                self.schedule.finish()
            else:
                if self._master is not None:
                    self.schedule.add(self._master.end(self.schedule.horizon), self.clock())
                self.schedule.finish(self.clock())
            self._cond.notify()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until everything fed has been played (after `finish`); False on timeout."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop now (any thread): nothing more is sent, every sounding note is released."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join()
            self._close_clock_input()
        if self._master is not None and not self._master.stopped:
            self._master.stopped = True
            self.sink.send([STOP])
        self.sink.all_off()

    def close(self) -> None:
        """Finish, let the music play out, release every note, and report a sink error if there was one."""
        self.finish()
        self.wait()
        self._close_clock_input()
        self.sink.all_off()
        self._raise_error()

    def _close_clock_input(self) -> None:
        if self._clock_input is not None:
            clock_input, self._clock_input = self._clock_input, None
            clock_input.close()

    def __enter__(self) -> LivePlayer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or Ctrl-C in the generating loop: silence at once, keep the original error
            self.stop()

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _run(self) -> None:
        try:
            if self.realtime:
                self.timing.realtime = _raise_priority()
            with _prompt_thread_switches():
                self._play() if self.follower is None else self._follow()
        except BaseException as error:  # reported to the feeding thread
            self._error = error

    def _play(self) -> None:
        cond, schedule, clock = self._cond, self.schedule, self.clock
        while True:
            with cond:
                if self._stopped:
                    return
                now = clock()
                due = schedule.pop_due(now)
                if not due:
                    if schedule.done:
                        self.timing.stalls = schedule.stalls
                        self.timing.stalled_seconds = schedule.stalled_seconds
                        return
                    wake = schedule.next_time()
                    if wake is None:
                        cond.wait()
                        continue
                    if wake - now > SPIN_SECONDS:
                        cond.wait(wake - now - SPIN_SECONDS)
                        continue
            if not due:
                while clock() < wake:  # the last ~2 ms: a busy wait is the only precise timer
                    pass
                continue
            self._send(due)
            with cond:
                self.timing.stalls = schedule.stalls
                self.timing.stalled_seconds = schedule.stalled_seconds

    def _send(self, due: list[tuple[float, NoteEvent]]) -> None:
        for scheduled, event in due:
            if event.kind == "on":
                self.sink.note_on(event.pitch, event.velocity)
            elif event.kind == "off":
                self.sink.note_off(event.pitch)
            else:  # a clock master's message (core.clock.ClockEvent)
                self.sink.send(event.message)
            self.timing.scheduled.append(scheduled)
            self.timing.actual.append(self.clock())
            self.timing.events.append(event)

    def _follow(self) -> None:
        """`_play` with the DAW's clock as the time source: release every note on its Stop or a jump."""
        cond, schedule, clock = self._cond, self.schedule, self.clock
        sounding = False
        since = clock()
        while True:
            wake = None
            with cond:
                if self._stopped:
                    return
                now = clock()
                if self._say is not None and not self.follower.clocks and now - since >= NO_CLOCK_SECONDS:
                    say, self._say = self._say, None
                    say(f"no MIDI clock has come on {self._clock_name!r} in {NO_CLOCK_SECONDS:g} s: is the DAW "
                        f"set to send clock to this port? still waiting (Ctrl-C stops)")
                release = sounding and (schedule.jumped() or not self.follower.running)
                due = schedule.pop_due(now)
                self.timing.late = schedule.late
                if not due and not release:
                    if schedule.done:
                        return
                    wake = schedule.next_time()
                    if wake is None:
                        cond.wait(NO_CLOCK_SECONDS if self._say is not None else None)
                        continue
                    if wake - now > SPIN_SECONDS:
                        cond.wait(wake - now - SPIN_SECONDS)
                        continue
            if release:
                self.sink.all_off()
                sounding = False
            if due:
                self._send(due)
                sounding = True
            elif wake is not None:
                while clock() < wake and self.follower.running:  # the last ~2 ms, as in `_play`
                    pass


def play_along(tokens: Iterable[int], player: LivePlayer, start_time: float = 0.0,
               codec: Codec = tokenizer) -> Iterator[int]:
    """Yield each token id unchanged while its note events go to `player` (the decoder, `codec`'s: the model's,
    lives here).

    `start_time` is the music time of the first generated token (the primer's length for a continuation).
    When the tokens run out, the player is told the stream is finished. The horizon is the decoder's clock; an
    event may come later than it (the notes codec tells a note's end when it is struck): the player keeps it
    until its own time.
    """
    decoder = codec.Decoder(start_time)
    for token in tokens:
        player.feed(decoder.feed(token), horizon=decoder.time)
        yield token
        if decoder.ended:
            break
    player.feed(decoder.finish(), horizon=decoder.time)
    player.finish()


def performance_events(perf: Performance) -> list[NoteEvent]:
    """The note-on/note-off events of a performance in playing order (offs first at one instant)."""
    events = []
    for onset, offset, pitch, velocity in zip(perf.onset.tolist(), perf.offset.tolist(), perf.pitch.tolist(),
                                              perf.velocity.tolist(), strict=True):
        events.append(NoteEvent("on", onset, pitch, velocity, onset))
        events.append(NoteEvent("off", offset, pitch, velocity, onset))
    events.sort(key=lambda e: (e.time, e.kind == "on", e.pitch))
    return events


def play_performance(perf: Performance, sink: Sink, clock: Callable[[], float] = time.perf_counter,
                     realtime: bool = True, follow: str | None = None, send_clock: bool = False,
                     say: Callable[[str], None] | None = None) -> Timing:
    """Play a whole piece on `sink` from time 0 (blocking; Ctrl-C stops it cleanly); the timing record.

    `follow`: the MIDI input port (a name, part of one or a number) whose clock drives playback: the piece
    waits for the DAW's Start, plays at its tempo from the bar after, pauses on Stop, and ends when it has
    played out. `send_clock`: send MIDI clock at the piece's tempo on `sink` instead. `say` hears the
    one-line notes meant for the user (waiting for the DAW, no clock arriving).
    """
    grid = perf.grid or Grid.constant()
    follower = ClockFollower(grid) if follow is not None else None
    player = LivePlayer(sink, lookahead=0.0, start=0.0, clock=clock, realtime=realtime, follower=follower,
                        send_clock=grid if send_clock else None)
    try:
        if follower is not None:
            open_clock_input(follow, player, say)  # closed with the player
        player.feed(performance_events(perf), horizon=perf.duration)
        player.finish()
        while not player.wait(0.1):  # join in short steps so Ctrl-C reaches this thread
            pass
    except BaseException:
        player.stop()
        raise
    player.close()
    return player.timing


def open_clock_input(port: str | None, player: LivePlayer, say: Callable[[str], None] | None = None):
    """Open the MIDI input `port` and feed its clock to `player` (which has a follower); the player closes it
    when it stops or closes."""
    from core.midiport import MidiClockInput

    clock_in = MidiClockInput(port, player.clock_message, clock=player.clock)
    player.attach(clock_in, clock_in.name, say)
    if say is not None:
        say(f"following the MIDI clock on {clock_in.name!r}: playback starts at the bar after the DAW's "
            f"Start, at its tempo, and pauses on its Stop")
    return clock_in


def open_sink(synth: bool = False, virtual: bool = False, port: str | None = None,
              soundfont: str | Path | None = None, soundfont_origin: str | None = None):
    """The sink the user chose: the built-in synth, the virtual "Recital" MIDI port, or a named port.

    The caller closes it (`.close()`); each raises a one-line DeviceError when its device is missing.
    `soundfont_origin` names where `soundfont` came from for its errors (e.g. "--soundfont").
    """
    if sum([synth, virtual, port is not None]) != 1:
        raise ValueError("choose exactly one of synth, virtual, port")
    if synth:
        from core.synth import SETTING, LiveSynth

        return LiveSynth(soundfont, soundfont_origin=soundfont_origin or SETTING)
    from core.midiport import MidiOutput

    return MidiOutput(None if virtual else port)
