"""A real JACK server (dummy backend) for the MIDI tests, started once per test session and stopped after.

The server gets its own name, so a JACK server the developer runs is never touched, and tests pick it (or a
name no server has, to test "no JACK server") through JACK_DEFAULT_SERVER. The period is 256 frames: JACK
delivers MIDI once per period, and the default 1,024 frames would quantise timing to 23 ms. The server runs
synchronously (-S): in jackd2's default asynchronous mode a client that misses a cycle on a busy machine
loses that cycle's MIDI or reads the previous one twice, which a test would mistake for a player bug.
Without jackd the tests skip, except under CI (CI=true), where they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time

import pytest

SERVER = f"recital-test-{os.getpid()}"
ABSENT_SERVER = f"recital-absent-{os.getpid()}"
PERIOD_FRAMES = 256
SAMPLE_RATE = 44100
PERIOD_SECONDS = PERIOD_FRAMES / SAMPLE_RATE

_process: subprocess.Popen | None = None


def _server_answers(name: str) -> bool:
    import rtmidi

    from core.midiport import _quiet_stderr

    saved = os.environ.get("JACK_DEFAULT_SERVER")
    os.environ["JACK_DEFAULT_SERVER"] = name
    try:
        with _quiet_stderr():
            rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name="recital-probe").delete()
        return True
    except rtmidi.RtMidiError:
        return False
    finally:
        if saved is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = saved


def _stop() -> None:
    global _process
    if _process is not None:
        _process.terminate()
        try:
            _process.wait(5)
        except subprocess.TimeoutExpired:
            _process.kill()
            _process.wait()
        _process = None


def ensure_server(config: pytest.Config) -> str:
    """Start the test JACK server unless it already runs; it is stopped when the pytest session ends."""
    global _process
    if _process is not None and _process.poll() is None:
        return SERVER
    jackd = shutil.which("jackd")
    if jackd is None:
        message = "jackd is not installed (apt-get install jackd2): the MIDI port tests need a JACK server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    _process = start_server(jackd, SERVER)
    config.add_cleanup(_stop)
    return SERVER


def start_server(jackd: str, name: str) -> subprocess.Popen:
    """Run `jackd -n name` with the dummy backend and wait until clients can connect."""
    log = tempfile.TemporaryFile()
    env = dict(os.environ, JACK_NO_AUDIO_RESERVATION="1")
    process = subprocess.Popen([jackd, "-n", name, "--no-realtime", "-S", "-d", "dummy", "-r", str(SAMPLE_RATE),
                                "-p", str(PERIOD_FRAMES)], stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 15
    while not _server_answers(name):
        if process.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            output = log.read().decode(errors="replace")[-2000:]
            process.kill()
            process.wait()
            pytest.fail(f"jackd did not start:\n{output}")
        time.sleep(0.1)
    return process


@pytest.fixture(scope="session")
def jack_server(request: pytest.FixtureRequest) -> str:
    return ensure_server(request.config)


@pytest.fixture
def jack(jack_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """This test talks to the test JACK server, through JACK even where an ALSA sequencer exists."""
    monkeypatch.setenv("JACK_DEFAULT_SERVER", jack_server)
    monkeypatch.setenv("RECITAL_MIDI_API", "jack")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    return jack_server


@pytest.fixture
def no_jack(monkeypatch: pytest.MonkeyPatch) -> str:
    """This test sees no JACK server (and no ALSA sequencer fallback): the "server stopped" case."""
    monkeypatch.setenv("JACK_DEFAULT_SERVER", ABSENT_SERVER)
    monkeypatch.setenv("RECITAL_MIDI_API", "jack")
    monkeypatch.setenv("JACK_NO_START_SERVER", "1")
    return ABSENT_SERVER


class Receiver:
    """A second JACK client connected to one of our ports, keeping (arrival time, message) pairs."""

    def __init__(self, port_part: str):
        import rtmidi

        self.messages: list[tuple[float, list[int]]] = []
        self._in = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="receiver")
        names = self._in.get_ports()
        from core.midiport import find_port

        self._in.open_port(find_port(names, port_part, "input"))
        self._in.set_callback(lambda event, _: self.messages.append((time.perf_counter(), event[0])))
        time.sleep(0.05)  # the connection is made asynchronously by the server

    def notes(self) -> list[tuple[str, int]]:
        """("on"|"off", pitch) of every note message, in arrival order."""
        return [("on" if m[0] & 0xF0 == 0x90 and m[2] > 0 else "off", m[1])
                for _, m in self.messages if m[0] & 0xF0 in (0x80, 0x90)]

    def close(self) -> None:
        self._in.cancel_callback()
        self._in.close_port()
        self._in.delete()


class LateListener:
    """A DAW-like client that waits for a port to appear (a command opens it later), connects, and keeps every
    message it receives until closed. Use as a context manager around the command."""

    def __init__(self, port_part: str = "Recital", timeout: float = 30.0):
        import threading

        self.port_part, self.timeout = port_part, timeout
        self.messages: list[list[int]] = []
        self.connected, self._done = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._listen)

    def _listen(self) -> None:
        import rtmidi

        from core.midiport import find_port

        probe = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name="listener")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and not any(self.port_part in p for p in probe.get_ports()):
            time.sleep(0.01)
        probe.open_port(find_port(probe.get_ports(), self.port_part, "input"))
        probe.set_callback(lambda event, _: self.messages.append(event[0]))
        self.connected.set()
        self._done.wait(2 * self.timeout)
        # the callback off and the port closed before the client goes: deleting a client whose callback the JACK
        # thread may be running crashed the whole test process (a segmentation fault in one suite run)
        probe.cancel_callback()
        probe.close_port()
        probe.delete()

    def note_ons(self) -> list[int]:
        """Pitches of the note-on messages received, in arrival order."""
        return [m[1] for m in self.messages if m[0] & 0xF0 == 0x90 and m[2] > 0]

    def __enter__(self) -> LateListener:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._done.set()
        self._thread.join()
