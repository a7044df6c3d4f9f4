"""MIDI clock: the follower's transport state machine, tempo and positions from synthetic clock streams (with
jitter), the player driven by it on a fake clock and sink, the clock master's messages, and a real JACK round
trip (a sender plays Start and clocks, the player's first note comes after Start and none before)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from core.clock import (
    CLOCK,
    CONTINUE,
    START,
    STOP,
    ClockError,
    ClockFollower,
    ClockMaster,
    clock_events,
    song_position_message,
)
from core.grid import Grid
from core.player import FollowSchedule, LivePlayer
from core.tokenizer import NoteEvent
from tests.jack import jack, jack_server  # noqa: F401 - fixtures


def clocks(follower: ClockFollower, start: float, count: int, bpm: float, jitter: float = 0.0,
           seed: int = 0) -> float:
    """Feed `count` clocks at `bpm` from time `start` (each arrival off by up to `jitter` s); the next time."""
    interval = 60.0 / bpm / 24
    noise = np.random.default_rng(seed).uniform(0, jitter, count)
    for i in range(count):
        follower.feed(start + i * interval + noise[i], [CLOCK])
    return start + count * interval


def test_start_counts_position_from_the_first_clock_after_it():
    follower = ClockFollower()
    assert not follower.running and follower.quarter_at(0.0) is None
    assert follower.feed(0.0, [START]) == "start"
    assert follower.running and follower.quarter_at(0.0) is None  # waiting for the first clock
    clocks(follower, 0.0, 1, 120)
    assert follower.position == 0.0  # the first clock after Start is the downbeat itself
    clocks(follower, 60 / 120 / 24, 48, 120)
    assert follower.position == 2.0  # 48 more clocks: two quarter notes


def test_stop_continue_and_song_position():
    follower = ClockFollower()
    follower.feed(0.0, [START])
    after = clocks(follower, 0.0, 25, 120)  # positions 0 .. 24/24
    assert follower.feed(after, [STOP]) == "stop"
    assert not follower.running and follower.quarter_at(after) is None
    assert follower.position == 25 / 24  # Continue resumes on the clock after the last one
    follower.feed(after + 1.0, [CONTINUE])
    clocks(follower, after + 1.0, 1, 120)
    assert follower.position == 25 / 24
    follower.feed(after + 2.0, [STOP])
    epoch = follower.epoch
    assert follower.feed(after + 2.0, song_position_message(32)) == "position"  # bar 3 in 4/4: 32 sixteenths
    assert follower.epoch == epoch + 1
    assert follower.position == 8.0
    follower.feed(after + 3.0, [CONTINUE])
    clocks(follower, after + 3.0, 1, 120)
    assert follower.position == 8.0


def test_song_position_message_bytes():
    assert song_position_message(0) == [0xF2, 0, 0]
    assert song_position_message(300) == [0xF2, 300 & 0x7F, 300 >> 7]
    with pytest.raises(ClockError, match="0..16383"):
        song_position_message(1 << 14)


@pytest.mark.parametrize("bpm", [60.0, 96.0, 120.0, 174.0])
def test_tempo_from_jittered_clock_intervals(bpm: float):
    follower = ClockFollower()
    follower.feed(0.0, [START])
    clocks(follower, 0.0, 96, bpm, jitter=0.003)  # a JACK period of jitter on every arrival
    assert follower.bpm == pytest.approx(bpm, rel=0.005)


def test_tempo_change_is_followed_within_two_beats():
    follower = ClockFollower()
    follower.feed(0.0, [START])
    now = clocks(follower, 0.0, 24 * 8, 120, jitter=0.003)
    clocks(follower, now, 48, 96, jitter=0.003, seed=1)
    assert follower.bpm == pytest.approx(96, rel=0.005)
    assert follower.position == pytest.approx(10.0 - 1 / 24)


def test_a_paused_clock_starts_a_new_tempo_fit():
    follower = ClockFollower()
    now = clocks(follower, 0.0, 48, 120)  # clocks while stopped still give the tempo
    assert follower.bpm == pytest.approx(120)
    assert follower.position == 0.0  # but not the position
    clocks(follower, now + 10.0, 1, 90)  # long silence, then a lone clock: no tempo known
    assert follower.bpm is None


def test_piece_starts_at_the_bar_after_start_and_follows_the_tempo():
    grid = Grid.constant(bpm=60, numerator=3, denominator=4)  # the piece's own tempo: one second per quarter
    follower = ClockFollower(grid)
    follower.feed(0.0, [START])
    assert follower.anchor == 3.0  # the bar after Start (3/4): one bar of count-in
    clocks(follower, 0.0, 24 * 2 + 1, 120)  # up to quarter 2, at 120 BPM: half a second per quarter
    assert follower.music_time(follower.last_time) < 0  # still in the count-in
    # The piece's second 1 (its quarter 1) is the DAW's quarter 4: 2 quarters after the last clock.
    assert follower.clock_time(1.0) == pytest.approx(follower.last_time + 1.0)
    assert follower.music_time(follower.last_time + 0.25 / 24) == pytest.approx(-1.0 + 0.5 / 24)
    # Without clocks it moves on no more than one clock past the last: a DAW that hangs does not run away.
    assert follower.music_time(follower.last_time + 10.0) == pytest.approx(-1.0 + 1 / 24)


def test_continue_without_start_anchors_at_the_next_bar_line():
    follower = ClockFollower(count_in_bars=1)
    follower.feed(0.0, song_position_message(18))  # 4.5 quarters: inside bar 2
    follower.feed(0.0, [CONTINUE])
    assert follower.anchor == 8.0
    follower.feed(0.0, [START])
    assert follower.anchor == 4.0


def test_follower_rejects_bad_settings():
    with pytest.raises(ClockError, match="count-in"):
        ClockFollower(count_in_bars=-1)
    with pytest.raises(ClockError, match="window"):
        ClockFollower(window=2)


def note(time_: float, pitch: int = 60) -> list[NoteEvent]:
    return [NoteEvent("on", time_, pitch, 80, time_), NoteEvent("off", time_ + 0.25, pitch, 80, time_)]


def test_follow_schedule_waits_for_start_plays_from_the_anchor_and_finds_its_place_after_a_jump():
    follower = ClockFollower(Grid.constant(bpm=120), count_in_bars=0)
    schedule = FollowSchedule(follower)
    schedule.add(note(0.0, 60) + note(1.0, 62) + note(2.0, 64))
    schedule.finish()
    assert schedule.pop_due(0.0) == []  # stopped: nothing
    follower.feed(0.0, [START])
    assert schedule.pop_due(0.0) == []  # Start, but no clock yet
    clocks(follower, 0.0, 1, 120)
    assert [e.pitch for _, e in schedule.pop_due(0.0)] == [60]  # the downbeat's note, on the first clock
    now = clocks(follower, 0.5 / 24, 24 * 2 - 1, 120)  # up to quarter 2 - 1/24: the piece's 1 s minus a bit
    assert [(e.kind, e.pitch) for _, e in schedule.pop_due(now - 0.5 / 24)] == [("off", 60)]
    follower.feed(now, [STOP])
    assert schedule.pop_due(now) == []
    follower.feed(now, song_position_message(15))  # quarter 3.75: the piece's 1.875 s
    follower.feed(now, [CONTINUE])
    clocks(follower, now + 1.0, 1, 120)
    assert [(e.kind, e.pitch) for _, e in schedule.pop_due(now + 1.0)] == []  # note 62's on is behind
    later = clocks(follower, now + 1.0 + 0.5 / 24, 6, 120)  # to quarter 4: the piece's 2 s
    assert [(e.kind, e.pitch) for _, e in schedule.pop_due(later)] == [("on", 64)]


def test_follow_schedule_skips_late_note_ons_and_sends_late_note_offs():
    follower = ClockFollower(count_in_bars=0)
    schedule = FollowSchedule(follower)
    follower.feed(0.0, [START])
    now = clocks(follower, 0.0, 48, 120)
    assert schedule.pop_due(now) == []
    schedule.add(note(0.5, 67))  # both events are behind the DAW already
    due = schedule.pop_due(now)
    assert schedule.late == 1 and [(e.kind, e.pitch) for _, e in due] == [("off", 67)]


class FakeSink:
    def __init__(self):
        self.sent: list[tuple] = []
        self.lock = threading.Lock()

    def note_on(self, pitch: int, velocity: int) -> None:
        with self.lock:
            self.sent.append(("on", pitch))

    def note_off(self, pitch: int) -> None:
        with self.lock:
            self.sent.append(("off", pitch))

    def all_off(self) -> None:
        with self.lock:
            self.sent.append(("all_off",))

    def send(self, message) -> None:
        with self.lock:
            self.sent.append(("raw", tuple(message)))


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the player did not get there"
        time.sleep(0.005)


def test_player_plays_only_after_start_and_releases_on_stop():
    sink, clock = FakeSink(), FakeClock()
    follower = ClockFollower(Grid.constant(bpm=120), count_in_bars=0)
    player = LivePlayer(sink, clock=clock, realtime=False, follower=follower)
    try:
        player.feed(note(0.0, 60) + [NoteEvent("on", 0.5, 62, 80, 0.5)], horizon=0.5)
        player.finish()
        time.sleep(0.05)
        assert sink.sent == []  # no Start yet: nothing plays
        player.clock_message(0.0, [START])
        player.clock_message(0.0, [CLOCK])
        wait_for(lambda: ("on", 60) in sink.sent)
        clock.now = 0.01
        player.clock_message(0.01, [STOP])
        wait_for(lambda: ("all_off",) in sink.sent)
        assert ("on", 62) not in sink.sent
        player.clock_message(1.0, [CONTINUE])
        for i in range(30):  # the rest of the piece at 120 BPM
            clock.now = 1.0 + i * 0.5 / 24
            player.clock_message(clock.now, [CLOCK])
        wait_for(lambda: ("on", 62) in sink.sent)
        assert player.wait(10)
    finally:
        player.stop()
    assert sink.sent.index(("on", 60)) < sink.sent.index(("all_off",)) < sink.sent.index(("on", 62))


def test_clock_master_messages_for_a_tempo():
    events = clock_events(Grid.constant(bpm=100), 0.0, 1.2)
    assert events[0].message == (START,) and events[0].time == 0.0
    ticks = [e for e in events if e.kind == "clock"]
    assert len(ticks) == 1 + int(1.2 / (0.6 / 24) + 1e-9)  # one at 0, then every 0.6 / 24 s
    assert np.allclose(np.diff([e.time for e in ticks]), 0.6 / 24)
    assert events[-1].message == (STOP,) and events[-1].time == 1.2


def test_clock_master_follows_the_tempo_map_and_starts_later_with_a_song_position():
    from core.grid import Meter, Tempo

    grid = Grid((Tempo(0.0, 500_000), Tempo(4.0, 1_000_000)), (Meter(0.0, 4, 4),))  # 120, then 60 BPM at 2 s
    master = ClockMaster(grid, start=2.1)  # 4.2 quarters: announced as sixteenth 17
    opening = master.until(2.2)
    assert [e.kind for e in opening[:2]] == ["position", "continue"]
    assert opening[0].message == (0xF2, 17, 0) and opening[0].time == pytest.approx(2.25)
    assert opening[2:] == []  # the first clock is at 2.25 s
    later = master.until(3.0)
    assert [e.time for e in later] == pytest.approx(2.25 + np.arange(19) / 24)
    assert master.end(3.0)[-1].kind == "stop" and master.until(9.0) == []


def test_player_sends_the_clock_with_the_notes():
    sink = FakeSink()
    player = LivePlayer(sink, lookahead=0.0, start=0.0, realtime=False, send_clock=Grid.constant(bpm=600))
    player.feed(note(0.0, 60), horizon=0.25)
    player.close()
    raw = [m for m in sink.sent if m[0] == "raw"]
    assert raw[0] == ("raw", (START,)) and raw[-1] == ("raw", (STOP,))
    assert sum(m == ("raw", (CLOCK,)) for m in raw) == 1 + 24 * 2.5  # 0.25 s at 600 BPM: 2.5 quarters
    assert sink.sent.index(("raw", (START,))) < sink.sent.index(("on", 60))


def test_following_and_sending_at_once_is_refused():
    with pytest.raises(ValueError, match="not both"):
        LivePlayer(FakeSink(), realtime=False, follower=ClockFollower(), send_clock=Grid.constant())


def test_jack_sender_start_and_clocks_drive_the_first_note(jack):  # noqa: F811
    import rtmidi

    from core.midiport import MidiClockInput, MidiOutput
    from tests.jack import Receiver

    daw = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="daw")
    daw.open_virtual_port("daw clock")
    with MidiOutput() as out:
        receiver = Receiver("Recital")
        follower = ClockFollower(Grid.constant(bpm=120), count_in_bars=0)
        player = LivePlayer(out, realtime=False, follower=follower)
        try:
            with MidiClockInput("daw clock", player.clock_message):
                player.feed(note(0.0, 60) + note(0.25, 64), horizon=0.5)
                player.finish()
                time.sleep(0.3)
                assert receiver.notes() == []  # no Start: not a note
                for _ in range(30):  # clocks while stopped: still not a note
                    daw.send_message([CLOCK])
                    time.sleep(0.5 / 24)
                assert receiver.notes() == []
                daw.send_message([START])
                started = time.perf_counter()
                for _ in range(24 * 2):
                    daw.send_message([CLOCK])
                    time.sleep(0.5 / 24)
                assert player.wait(10)
        finally:
            player.close()
            receiver.close()
            daw.delete()
    ons = [t for t, m in receiver.messages if m[0] & 0xF0 == 0x90 and m[2] > 0]
    assert [p for kind, p in receiver.notes() if kind == "on"] == [60, 64]
    assert ons[0] > started


def test_studio_follow_switch_plays_on_the_daws_start(qtbot, monkeypatch, scale):
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import core.midiport
    import core.player
    from studio.jobs import JobKeeper
    from studio.transport import TransportBar

    sink, inputs = FakeSink(), []

    class FakeClockInput:
        def __init__(self, port, receive, clock=time.perf_counter):
            self.name, self.receive, self.closed = port or "Recital Clock", receive, False
            inputs.append(self)

        def close(self):
            self.closed = True

    monkeypatch.setattr(core.player, "open_sink", lambda **kwargs: sink)
    monkeypatch.setattr(core.midiport, "MidiClockInput", FakeClockInput)
    bar = TransportBar(JobKeeper())
    qtbot.addWidget(bar)
    bar.set_piece(scale.slice_time(0, 0.3), 0.0)
    bar.follow.setChecked(True)
    bar.toggle()
    assert bar.playing and inputs and bar.player.follower is not None
    time.sleep(0.05)
    assert sink.sent == []  # waiting for the DAW
    receive = inputs[0].receive
    receive(time.perf_counter(), [START])
    for _ in range(24 * 6):  # a bar of count-in and two quarters at 240 BPM
        receive(time.perf_counter(), [CLOCK])
        time.sleep(0.25 / 24)
    qtbot.waitUntil(lambda: not bar.playing, timeout=5000)
    assert [m for m in sink.sent if m[0] == "on"] and inputs[0].closed


def test_continue_after_stop_resumes_without_replaying_the_note_played_at_the_stop():
    follower = ClockFollower(Grid.constant(bpm=120), count_in_bars=0)
    schedule = FollowSchedule(follower)
    schedule.add(note(0.0, 60) + note(0.5, 62) + note(1.0, 64))
    follower.feed(0.0, [START])
    now = clocks(follower, 0.0, 24, 120)  # up to quarter 23/24; the next clock (quarter 1) is due at `now`
    played = [e.pitch for _, e in schedule.pop_due(0.0) + schedule.pop_due(now + 1e-4) if e.kind == "on"]
    assert played == [60, 62]  # quarter 1's note at its predicted time
    follower.feed(now, [STOP])  # the Stop took the place of quarter 1's clock
    follower.feed(now + 1.0, [CONTINUE])
    later = clocks(follower, now + 1.0, 25, 120)
    assert [e.pitch for _, e in schedule.pop_due(later) if e.kind == "on"] == [64]
