"""The live player: its clock logic on a fake clock, its thread with a fake sink, and a slow generator on JACK."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.errors import DeviceError
from core.midi import Performance, read_performance
from core.player import LivePlayer, Schedule, performance_events, play_along, play_performance
from core.tokenizer import EOS, NoteEvent, decode, encode
from tests.conftest import DATA

pytest_plugins = ("tests.jack",)  # the JACK server fixtures

STEP = 0.001  # the fake clock's tick


def notes(onsets, length=0.05, pitch=60) -> list[NoteEvent]:
    events = []
    for i, t in enumerate(onsets):
        events += [NoteEvent("on", t, pitch + i % 12, 80, t), NoteEvent("off", t + length, pitch + i % 12, 80, t)]
    return sorted(events, key=lambda e: (e.time, e.kind == "on"))


def simulate(events: list[NoteEvent], music_per_clock: float, chunk: float, lookahead: float,
             limit: float = 60.0) -> tuple[list[tuple[float, float, NoteEvent]], Schedule]:
    """A generator that makes `chunk` seconds of music at a time, at `music_per_clock` x real time, feeding
    a Schedule on a fake clock; returns (clock time sent, scheduled time, event) and the schedule."""
    schedule = Schedule(lookahead, start=0.0)
    end = max(e.time for e in events)
    made = 0.0  # music generated so far
    given = 0  # events handed over so far (events are in time order)
    next_chunk_at = chunk / music_per_clock
    sent = []
    now = 0.0
    while not schedule.done and now < limit:
        if made < end and now >= next_chunk_at:
            made = min(end, made + chunk)
            ready = sum(1 for e in events if e.time <= made)
            schedule.add(events[given:ready], now, horizon=made)
            given = ready
            next_chunk_at += chunk / music_per_clock
            if made >= end:
                schedule.finish(now)
        sent += [(now, scheduled, event) for scheduled, event in schedule.pop_due(now)]
        now = round(now + STEP, 9)
    return sent, schedule


def onset_gaps(sent) -> np.ndarray:
    return np.diff([now for now, _, event in sent if event.kind == "on"])


def test_fast_generation_plays_on_a_steady_clock():
    events = notes(np.arange(30) * 0.1)
    sent, schedule = simulate(events, music_per_clock=4.0, chunk=0.2, lookahead=0.5)
    assert [e for _, _, e in sent] == events
    assert schedule.stalls == 0
    np.testing.assert_allclose(onset_gaps(sent), 0.1, atol=1.5 * STEP)
    assert max(now - scheduled for now, scheduled, _ in sent) < 1.5 * STEP


def test_slow_generation_waits_instead_of_bunching():
    events = notes(np.arange(30) * 0.1)
    sent, schedule = simulate(events, music_per_clock=0.5, chunk=0.3, lookahead=0.6)
    assert [e for _, _, e in sent] == events
    assert schedule.stalls > 0 and schedule.stalled_seconds > 1.0
    gaps = onset_gaps(sent)
    assert gaps.min() >= 0.1 - 1.5 * STEP  # never closer than written
    assert (np.abs(gaps - 0.1) < 1.5 * STEP).mean() > 0.6  # and mostly exactly as written
    # Each message left when its (shifted) schedule said: the stalls moved the clock, not the notes.
    assert max(now - scheduled for now, scheduled, _ in sent) < 1.5 * STEP
    # Half-speed generation of 2.95 s of music: playing took about twice as long.
    assert sent[-1][0] > 4.5


def test_nothing_plays_until_the_lookahead_is_buffered_or_the_stream_ends():
    schedule = Schedule(lookahead=1.0)
    schedule.add(notes([2.0, 2.2]), now=0.0, horizon=2.5)  # starts at the first event (2.0): 0.5 s buffered
    assert schedule.pop_due(10.0) == []
    schedule.add([], now=10.0, horizon=3.1)
    due = schedule.pop_due(10.0)
    assert [e.time for _, e in due] == [2.0]
    schedule = Schedule(lookahead=1.0)
    schedule.add(notes([0.0]), now=0.0, horizon=0.3)
    assert schedule.pop_due(0.5) == []
    schedule.finish(0.6)
    assert len(schedule.pop_due(0.6)) == 1


def test_a_stall_freezes_the_music_at_the_horizon():
    schedule = Schedule(lookahead=0.0, start=0.0)
    schedule.add(notes([0.0, 0.5, 1.0]), now=0.0, horizon=0.6)
    assert len(schedule.pop_due(0.0)) == 1
    assert len(schedule.pop_due(0.7)) == 3  # the off at 0.05, the on at 0.5 and its off at 0.55
    assert schedule.pop_due(5.0) == []  # past the horizon: frozen at 0.6, the note at 1.0 must not go
    schedule.add([], now=5.0, horizon=1.2)
    assert schedule.pop_due(5.0) == []
    due = schedule.pop_due(5.4)  # resumed at clock 5.0 from music 0.6: music 1.0 is clock 5.4
    assert [(round(at, 6), e.time) for at, e in due] == [(5.4, 1.0)]
    assert schedule.stalls == 1 and schedule.stalled_seconds == pytest.approx(5.0 - 0.6)


def test_note_offs_go_before_note_ons_at_one_instant():
    schedule = Schedule(lookahead=0.0, start=0.0)
    schedule.add([NoteEvent("on", 0.5, 60, 80, 0.5), NoteEvent("off", 0.5, 60, 80, 0.0),
                  NoteEvent("on", 0.0, 60, 80, 0.0)], now=0.0, horizon=0.5)
    schedule.finish(0.0)
    order = [(e.kind, e.time) for _, e in schedule.pop_due(0.0) + schedule.pop_due(1.0)]
    assert order == [("on", 0.0), ("off", 0.5), ("on", 0.5)]


class FakeSink:
    """Keeps what it was sent; can be told to fail."""

    def __init__(self, fail_after: int | None = None):
        self.sent: list[tuple[str, int]] = []
        self.all_offs = 0
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def note_on(self, pitch: int, velocity: int) -> None:
        self._record("on", pitch)

    def note_off(self, pitch: int) -> None:
        self._record("off", pitch)

    def _record(self, kind: str, pitch: int) -> None:
        with self.lock:
            if self.fail_after is not None and len(self.sent) >= self.fail_after:
                raise DeviceError("MIDI port 'Recital' stopped accepting messages (gone)")
            self.sent.append((kind, pitch))

    def all_off(self) -> None:
        self.all_offs += 1


def test_play_along_passes_tokens_through_and_plays_their_notes(scale):
    ids = encode(scale.shifted(0.1)).tolist()
    sink = FakeSink()
    with LivePlayer(sink, lookahead=0.2) as player:
        passed = list(play_along(iter(ids), player))
    assert passed == ids[:ids.index(EOS) + 1]
    assert sink.sent == [(e.kind, e.pitch) for e in performance_events(decode(ids))]
    assert sink.all_offs >= 1
    assert len(player.timing.scheduled) == 2 * len(scale)


def wait_for(condition, seconds: float = 20.0) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False, a hang): a thread runs when the
    scheduler lets it, so a test waits for what it needs instead of sleeping a fixed time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def test_stop_silences_at_once():
    sink = FakeSink()
    player = LivePlayer(sink, lookahead=0.0, start=0.0)
    player.feed(notes(np.arange(100) * 0.05), horizon=5.0)
    assert wait_for(lambda: len(sink.sent) > 0)  # playing
    player.stop()
    count = len(sink.sent)
    time.sleep(0.1)  # room for a message the stopped player must not send
    assert count < 200 and len(sink.sent) == count and sink.all_offs == 1


def test_an_error_in_the_loop_stops_the_music():
    sink = FakeSink()
    with pytest.raises(RuntimeError, match="generator failed"):
        with LivePlayer(sink, lookahead=0.0, start=0.0) as player:
            player.feed(notes(np.arange(100) * 1.0), horizon=100.0)  # a message every 0.5 s or so
            raise RuntimeError("generator failed")
    count = len(sink.sent)
    time.sleep(0.1)  # room for a message the stopped player must not send
    assert sink.all_offs == 1 and len(sink.sent) == count < 10


def test_a_failing_sink_is_reported_to_the_feeding_thread():
    sink = FakeSink(fail_after=3)
    perf = Performance.from_notes(np.arange(5) * 0.01, np.arange(5) * 0.01 + 0.005, [60] * 5, [80] * 5)
    with pytest.raises(DeviceError, match="stopped accepting"):
        play_performance(perf, sink)


@pytest.mark.parametrize("path", [DATA / "piano" / "06-etude.mid"], ids=lambda p: p.name)  # dense from the start
def test_slow_generation_on_the_virtual_port_pauses_without_bunching(jack, path):
    """Tokens arrive in bursts slower than the music: the DAW hears every note, in order, never early."""
    from core.midiport import MidiOutput
    from tests.jack import Receiver

    perf = read_performance(path).slice_time(0.0, 3.0)
    assert len(perf) > 20
    ids = encode(perf).tolist()
    burst = len(ids) // 10  # ten bursts of ~0.3 s of music, each 0.45 s apart: generation at 2/3 real time

    def slow_generator():
        for i, token in enumerate(ids):
            if i % burst == burst - 1:
                time.sleep(0.45)
            yield token

    played = decode(ids)
    expected = [(e.kind, e.pitch) for e in performance_events(played)]
    with MidiOutput() as out:
        receiver = Receiver("Recital")
        try:
            with LivePlayer(out, lookahead=0.3) as player:
                list(play_along(slow_generator(), player))
            assert wait_for(lambda: len(receiver.notes()) >= len(expected)), receiver.notes()
        finally:
            receiver.close()
    assert receiver.notes()[:len(expected)] == expected
    # The pauses are in the player's schedule, which the received times follow as closely as the machine
    # lets them (bench/player.py measures how closely): never closer than written, never before their time,
    # and the stalls lengthened the whole.
    timing = player.timing
    assert [(e.kind, e.pitch) for e in timing.events] == expected
    scheduled = np.asarray(timing.scheduled)
    ons = scheduled[[e.kind == "on" for e in timing.events]]
    heard, written = np.diff(ons), np.diff(played.onset)
    assert (heard >= written - 1e-9).all(), f"bunched by {(written - heard).max() * 1000:.1f} ms"
    assert (np.asarray(timing.actual) >= scheduled - 1e-9).all()
    assert timing.stalls > 0
    assert ons[-1] - ons[0] > played.onset[-1] - played.onset[0] + 0.2
