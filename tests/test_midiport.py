"""MIDI out and in against a real JACK server: a second client hears what Recital sends, and records it back."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.errors import DeviceError
from core.midi import Performance, read_performance, write_performance
from core.midiport import (
    ALL_NOTES_OFF,
    ALL_SOUND_OFF,
    CONTROL,
    NOTE_OFF,
    NOTE_ON,
    PROGRAM,
    MidiOutput,
    MidiRecorder,
    find_port,
    list_ports,
    performance_from_messages,
)
from core.player import LivePlayer, performance_events, play_performance
from tests.conftest import PIANO_PIECE, midi_files

pytest_plugins = ("tests.jack",)  # the JACK server fixtures: jack, no_jack, jack_server

ROOT = Path(__file__).resolve().parents[1]
ARRIVAL_DEADLINE = 20.0  # seconds a message may take to reach another client before the test gives up: a hang


def wait_for(condition, seconds: float = ARRIVAL_DEADLINE) -> bool:
    """Poll `condition` until it holds (True) or `seconds` pass (False): messages arrive when the server's
    cycle and the scheduler allow, so a test waits for them instead of sleeping a fixed time."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT, env={**os.environ, **env})


# --- pure parts -------------------------------------------------------------------------------------------


def test_find_port_prefers_exact_then_case_then_unique_substring():
    names = ["Midi Through:Port-0 14:0", "Recital:Recital 128:0", "loopMIDI Port 1"]
    assert find_port(names, "loopMIDI Port 1", "output") == 2
    assert find_port(names, "loopmidi port 1", "output") == 2
    assert find_port(names, "recital", "output") == 1
    assert find_port(names, "0", "output") == 0


def test_find_port_errors_list_what_exists():
    names = ["Synth A", "Synth B"]
    with pytest.raises(DeviceError, match="ambiguous.*'Synth A'.*'Synth B'"):
        find_port(names, "synth", "output")
    with pytest.raises(DeviceError, match=r"no MIDI output port named 'Piano' \(available: 'Synth A', 'Synth B'\)"):
        find_port(names, "Piano", "output")
    with pytest.raises(DeviceError, match=r"available: none"):
        find_port([], "Piano", "input")


def test_messages_become_a_pedal_folded_performance():
    messages = [
        (10.0, [NOTE_ON, 60, 80]),
        (10.5, [NOTE_ON, 64, 70]),
        (10.6, [0x80, 60, 0]),  # released while no pedal: ends here
        (10.7, [CONTROL, 64, 127]),  # pedal down
        (10.8, [NOTE_ON, 64, 0]),  # note-on with velocity 0 is a release: sustained by the pedal
        (11.5, [CONTROL, 64, 0]),  # pedal up: 64 ends here
        (12.0, [NOTE_ON | 1, 67, 90]),  # another channel counts too; still held at the end
    ]
    perf = performance_from_messages(messages, end_time=13.0)
    assert perf.pitch.tolist() == [60, 64, 67]
    np.testing.assert_allclose(perf.onset, [0.0, 0.5, 2.0])
    np.testing.assert_allclose(perf.offset, [0.6, 1.5, 3.0])
    assert perf.velocity.tolist() == [80, 70, 90]
    assert len(performance_from_messages([])) == 0


# --- against the JACK server ------------------------------------------------------------------------------


def test_virtual_port_is_listed_for_other_clients(jack):
    with MidiOutput() as out:
        assert out.name == "Recital" and out.api == "JACK"
        inputs = list_ports().inputs
        assert any("Recital" in name for name in inputs), inputs


@pytest.mark.parametrize("path", midi_files("piano")[:1], ids=lambda p: getattr(p, "name", "none"))
def test_second_client_receives_every_note_in_order_on_time(jack, path):
    from tests.jack import Receiver

    perf = read_performance(path).slice_time(0.0, 6.0)
    assert len(perf) > 20
    expected = [(event.kind, event.pitch) for event in performance_events(perf)]
    with MidiOutput() as out:
        receiver = Receiver("Recital")
        try:
            timing = play_performance(perf, out)
            assert wait_for(lambda: len(receiver.notes()) >= len(expected)), receiver.notes()
        finally:
            receiver.close()
    assert receiver.notes()[:len(expected)] == expected
    assert receiver.messages[0][1] == [PROGRAM, 0]  # the program change opens the playback
    # On time by construction: every message is scheduled at its music time on one steady clock (so the clock
    # cannot drift over the piece), and none leaves before its time. How late a busy machine makes them (send,
    # arrival and inter-onset error) is a scheduling matter, measured by bench/player.py, never asserted.
    assert timing.events == performance_events(perf)
    scheduled, music = np.asarray(timing.scheduled), np.array([event.time for event in timing.events])
    np.testing.assert_allclose(scheduled - scheduled[0], music - music[0], rtol=0, atol=1e-9)
    assert (np.asarray(timing.actual) >= scheduled - 1e-9).all()


def test_stop_releases_sounding_notes_and_panic_silences_all_channels(jack, scale):
    from tests.jack import Receiver

    held = Performance(scale.onset, scale.offset + 5.0, scale.pitch, scale.velocity)  # notes ring for 5 s
    with MidiOutput() as out:
        receiver = Receiver("Recital")
        try:
            player = LivePlayer(out, lookahead=0.0, start=0.0)
            player.feed(performance_events(held))
            assert wait_for(lambda: [kind for kind, _ in receiver.notes()].count("on") >= 2)  # two notes sound
            player.stop()
            assert wait_for(lambda: [CONTROL, ALL_NOTES_OFF, 0] in [m for _, m in receiver.messages])  # the last
            notes = receiver.notes()
            assert ("on", 60) in notes and ("on", 62) in notes
            started = {p for kind, p in notes if kind == "on"}
            released = {p for kind, p in notes if kind == "off"}
            assert started <= released
            receiver.messages.clear()
            out.panic()
            assert wait_for(lambda: [NOTE_OFF, 127, 0] in [m for _, m in receiver.messages])  # panic's last
            sound_off = {m[0] & 0x0F for _, m in receiver.messages if m[0] & 0xF0 == CONTROL and m[1] == ALL_SOUND_OFF}
            assert sound_off == set(range(16))
        finally:
            receiver.close()


def test_existing_port_by_name_and_a_missing_one(jack):
    import rtmidi

    sink = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="DAW")
    sink.open_virtual_port("piano in")
    got = []
    sink.set_callback(lambda event, _: got.append(event[0]))
    try:
        with MidiOutput("DAW:piano in") as out:
            out.note_on(60, 90)
            out.note_off(60)
            assert wait_for(lambda: [NOTE_OFF, 60, 0] in got), got
        assert [PROGRAM, 0] in got and [NOTE_ON, 60, 90] in got and [NOTE_OFF, 60, 0] in got
        with pytest.raises(DeviceError, match="no MIDI output port named 'Nowhere'.*DAW:piano in"):
            MidiOutput("Nowhere")
    finally:
        sink.cancel_callback()  # before the client goes: the JACK thread may be running the callback (jack.py)
        sink.close_port()
        sink.delete()


class StampedRecorder(MidiRecorder):
    """A MidiRecorder that also notes when each message reached Python (perf_counter)."""

    def __init__(self, *args, **kwargs):
        self.arrivals: list[float] = []
        super().__init__(*args, **kwargs)

    def _receive(self, event, _data=None) -> None:
        super()._receive(event, _data)
        self.arrivals.append(time.perf_counter())


def test_recorder_captures_notes_and_pedal_from_a_keyboard(jack):
    import rtmidi

    script = [(0.0, [NOTE_ON, 60, 100]), (0.2, [NOTE_OFF, 60, 0]), (0.3, [CONTROL, 64, 127]),
              (0.3, [NOTE_ON, 64, 70]), (0.4, [NOTE_OFF, 64, 0]), (0.7, [CONTROL, 64, 0]),
              (0.8, [NOTE_ON, 67, 50])]
    sent: list[float] = []  # when each message was handed to the MIDI system
    with StampedRecorder() as recorder:
        keyboard = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="keyboard")
        keyboard.open_port(find_port(keyboard.get_ports(), "Recital In", "output"))
        recorder.start()
        start = time.perf_counter()
        for when, message in script:
            while time.perf_counter() < start + when:
                time.sleep(0.0005)
            sent.append(time.perf_counter())
            keyboard.send_message(message)
        assert wait_for(lambda: recorder.message_count == len(script)), recorder.message_count
        before_stop = time.perf_counter()
        perf = recorder.stop()
        keyboard.delete()
    assert perf.pitch.tolist() == [60, 64, 67]
    assert perf.velocity.tolist() == [100, 70, 50]
    # Times come from the MIDI system's stamps, each taken between the message's send and its arrival in
    # Python: so a recorded time (from the first message) lies between these bounds, however late a busy
    # machine sends or delivers (the keyboard's own lateness is in `sent`, the delivery's in `arrivals`).
    sent, arrived = np.asarray(sent), np.asarray(recorder.arrivals)
    assert len(arrived) == len(script)
    low, high = sent - arrived[0], arrived - sent[0]
    on, off = [0, 3, 6], [1, 5]  # script rows: the three note-ons; the release of 60 and the pedal lift
    assert ((low[on] - 1e-4 <= perf.onset) & (perf.onset <= high[on] + 1e-4)).all(), (perf.onset, low, high)
    assert ((low[off] - 1e-4 <= perf.offset[:2]) & (perf.offset[:2] <= high[off] + 1e-4)).all(), \
        (perf.offset, low, high)  # 64 held by the pedal until it lifts
    assert perf.offset[2] >= low[6] + (before_stop - arrived[6]) - 1e-4  # still held when stopped: closed then


# --- no server: the clear error -------------------------------------------------------------------------


def test_without_a_jack_server_ports_raise_a_clear_error(no_jack):
    with pytest.raises(DeviceError, match="no JACK server is running") as error:
        list_ports()
    assert "\n" not in str(error.value)
    with pytest.raises(DeviceError, match="no JACK server is running"):
        MidiOutput()
    with pytest.raises(DeviceError, match="no JACK server is running"):
        MidiRecorder("anything")


def test_port_commands_fail_with_one_line_after_the_server_stops(jack_server):
    from tests.jack import start_server

    jackd = shutil.which("jackd")
    name = f"recital-stopping-{os.getpid()}"
    server = start_server(jackd, name)
    env = {"JACK_DEFAULT_SERVER": name, "RECITAL_MIDI_API": "jack", "JACK_NO_START_SERVER": "1"}
    assert _run_cli("ports", env=env).returncode == 0
    server.terminate()
    server.wait(5)
    piece = str(PIANO_PIECE)
    for args in (("ports",), ("play", piece, "--virtual"), ("play", piece, "--port", "DAW")):
        result = _run_cli(*args, env=env)
        assert result.returncode == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no MIDI system available: no JACK server"), \
            result.stderr


def test_play_to_the_virtual_port_from_the_command_line(jack, tmp_path):
    from tests.jack import LateListener

    piece = tmp_path / "cli.mid"
    # A rest first: the listener connects once the command's port appears, which on a busy machine may
    # take more than a moment; notes before that would be lost.
    onset = 2.0 + np.arange(6) * 0.1
    write_performance(Performance.from_notes(onset, onset + 0.08, [60, 62, 64, 65, 67, 69], [80] * 6), piece)
    with LateListener() as listener:
        result = _run_cli("play", str(piece), "--virtual", env={})
    received = listener.messages
    assert result.returncode == 0, result.stderr
    assert "played 12 messages" in result.stdout
    assert [m[1] for m in received if m[0] == NOTE_ON] == [60, 62, 64, 65, 67, 69]


def test_linux_falls_back_from_alsa_to_jack_by_itself(jack, monkeypatch):
    if Path("/dev/snd/seq").exists():
        pytest.skip("this machine has an ALSA sequencer, so there is nothing to fall back from")
    monkeypatch.delenv("RECITAL_MIDI_API")
    monkeypatch.setattr(sys, "platform", "linux")
    with MidiOutput() as out:
        assert out.api == "JACK"


def test_windows_has_no_virtual_ports_and_says_what_to_do(monkeypatch):
    import rtmidi

    import core.midiport as midiport

    class WindowsOut:
        def get_ports(self):
            return ["Microsoft GS Wavetable Synth", "loopMIDI Port"]

        def delete(self):
            pass

    monkeypatch.setattr(midiport, "_client", lambda kind, name=midiport.CLIENT_NAME: (WindowsOut(),
                                                                                     rtmidi.API_WINDOWS_MM))
    with pytest.raises(DeviceError, match="virtual MIDI ports are not available on Windows: install a loopback "
                                          "driver such as loopMIDI.*'Microsoft GS Wavetable Synth', 'loopMIDI Port'"):
        MidiOutput()
    with pytest.raises(DeviceError, match="not available on Windows"):
        MidiRecorder()


def test_a_jack_server_that_stops_mid_play_stops_the_player_with_one_line(jack_server, tmp_path):
    """The server goes away while `recital play --virtual` plays: it stops, says so, and exits 1."""
    import select

    from tests.jack import start_server

    name = f"recital-dying-{os.getpid()}"
    server = start_server(shutil.which("jackd"), name)
    piece = tmp_path / "long.mid"
    onset = np.arange(600) * 0.1  # a minute of notes: the server is gone long before the end
    write_performance(Performance.from_notes(onset, onset + 0.05, 60 + np.arange(600) % 24, [80] * 600), piece)
    env = {**os.environ, "JACK_DEFAULT_SERVER": name, "RECITAL_MIDI_API": "jack", "JACK_NO_START_SERVER": "1"}
    env.pop("RECITAL_DEVICE_LOG", None)
    player = subprocess.Popen([sys.executable, "-m", "core", "play", str(piece), "--virtual"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([player.stderr], [], [], 60)  # "playing ...": the port is open
        assert ready, "the player did not start"
        first = player.stderr.readline()
        assert first.startswith(f"playing {piece}"), first
        time.sleep(0.5)  # some notes go out while the server still runs
    finally:
        server.terminate()
        server.wait(10)
    try:
        out, err = player.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        player.kill()
        out, err = player.communicate()
        pytest.fail(f"the player went on after the server stopped: {out!r} {err!r}")
    assert player.returncode == 1
    assert err == "error: the JACK server stopped during playback\n"
    assert "played" not in out
