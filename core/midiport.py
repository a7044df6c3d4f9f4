"""MIDI ports: send a piece to a DAW over a virtual "Recital" port (or any existing port), and record one in.

The MIDI system is chosen per platform: on Linux the ALSA sequencer, and JACK by itself when the sequencer is
missing (containers, some distributions); CoreMIDI on macOS; the Windows multimedia API on Windows, which has
no virtual ports. `RECITAL_MIDI_API=alsa|jack|coremidi|winmm` forces one. Every rtmidi failure becomes a
one-line `DeviceError` naming what is missing and how to get it; nothing here lets an rtmidi error escape.
`MidiOutput` is a `core.player.Sink`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.clock import CLOCK, CONTINUE, SONG_POSITION, START, STOP
from core.devicelog import loaded_libraries, silence_device_libraries
from core.errors import DeviceError
from core.midi import SUSTAIN_CC, Performance, canonical, fold_sustain

VIRTUAL_NAME = "Recital"
VIRTUAL_INPUT_NAME = "Recital In"
_CLOCK_STATUSES = frozenset((CLOCK, START, CONTINUE, STOP, SONG_POSITION))
CLIENT_NAME = "Recital"
CHANNEL = 0
API_ENV = "RECITAL_MIDI_API"

NOTE_OFF, NOTE_ON, CONTROL, PROGRAM = 0x80, 0x90, 0xB0, 0xC0
ALL_SOUND_OFF, RESET_CONTROLLERS, ALL_NOTES_OFF = 120, 121, 123


_libraries_silenced = False


def _rtmidi():
    try:
        import rtmidi
    except ImportError as error:  # the wheel bundles its backends; this is a broken install
        raise DeviceError(f"MIDI is unavailable: python-rtmidi cannot be imported ({error})") from None
    global _libraries_silenced
    if not _libraries_silenced:  # its libjack prints raw lines when a server is missing or stops
        silence_device_libraries()
        _libraries_silenced = True
    return rtmidi


def _api_names() -> dict[str, int]:
    rtmidi = _rtmidi()
    return {"alsa": rtmidi.API_LINUX_ALSA, "jack": rtmidi.API_UNIX_JACK,
            "coremidi": rtmidi.API_MACOSX_CORE, "winmm": rtmidi.API_WINDOWS_MM}


def api_order() -> list[int]:
    """The rtmidi APIs to try, in order: $RECITAL_MIDI_API if set, else this platform's usual ones."""
    rtmidi = _rtmidi()
    names = _api_names()
    forced = os.environ.get(API_ENV, "").strip().lower()
    if forced:
        if forced not in names:
            raise DeviceError(f"${API_ENV}={forced!r} is not a MIDI system (use one of: {', '.join(names)})")
        wanted = [names[forced]]
    elif sys.platform == "darwin":
        wanted = [rtmidi.API_MACOSX_CORE]
    elif sys.platform == "win32":
        wanted = [rtmidi.API_WINDOWS_MM]
    else:
        wanted = [rtmidi.API_LINUX_ALSA, rtmidi.API_UNIX_JACK]
    compiled = set(rtmidi.get_compiled_api())
    available = [api for api in wanted if api in compiled]
    if not available:
        raise DeviceError(f"this python-rtmidi build has no {'/'.join(_api_label(a) for a in wanted)} support")
    return available


def _api_label(api: int) -> str:
    rtmidi = _rtmidi()
    return {rtmidi.API_LINUX_ALSA: "ALSA", rtmidi.API_UNIX_JACK: "JACK", rtmidi.API_MACOSX_CORE: "CoreMIDI",
            rtmidi.API_WINDOWS_MM: "Windows MIDI"}.get(api, rtmidi.get_api_display_name(api))


def _why(api: int) -> str:
    """What a failed client of `api` most likely means, and how to fix it."""
    rtmidi = _rtmidi()
    if api == rtmidi.API_LINUX_ALSA:
        return "the ALSA sequencer is missing (/dev/snd/seq; try `sudo modprobe snd-seq`)"
    if api == rtmidi.API_UNIX_JACK:
        return ("no JACK server is running (start one: `jackd --no-realtime -d dummy -r 44100 -p 256 &`, "
                "or run under pipewire-jack)")
    return f"{_api_label(api)} cannot be opened"


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Hide what ALSA and libjack print on fd 2 while a client is created: our DeviceError says it better."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _client(kind: str, client_name: str = CLIENT_NAME):
    """A MidiOut ('out') or MidiIn ('in') client on the first MIDI system that opens; else a DeviceError."""
    rtmidi = _rtmidi()
    factory = rtmidi.MidiOut if kind == "out" else rtmidi.MidiIn
    reasons = []
    for api in api_order():
        try:
            with _quiet_stderr():
                return factory(api, name=client_name), api
        except rtmidi.RtMidiError:
            reasons.append(_why(api))
    raise DeviceError("no MIDI system available: " + " and ".join(reasons))


@dataclass(frozen=True)
class PortList:
    """The ports one MIDI system offers: outputs we can send to, inputs we can record from."""

    api: str
    outputs: list[str]
    inputs: list[str]


def list_ports() -> PortList:
    """Output and input ports of the MIDI system in use (DeviceError when there is none)."""
    rtmidi = _rtmidi()
    out, api = _client("out")
    try:
        inp = rtmidi.MidiIn(api, name=CLIENT_NAME)
        try:
            return PortList(_api_label(api), list(out.get_ports()), list(inp.get_ports()))
        finally:
            inp.delete()
    except rtmidi.RtMidiError as error:
        raise DeviceError(f"cannot list {_api_label(api)} MIDI ports ({error})") from None
    finally:
        out.delete()


def find_port(names: list[str], wanted: str, direction: str) -> int:
    """Index of the port `wanted` names: exact, then case-insensitive, then a unique substring, then a number."""
    for same in (lambda n: n == wanted, lambda n: n.lower() == wanted.lower()):
        for index, name in enumerate(names):
            if same(name):
                return index
    partial = [i for i, name in enumerate(names) if wanted.lower() in name.lower()]
    if len(partial) == 1:
        return partial[0]
    if wanted.isdigit() and int(wanted) < len(names):
        return int(wanted)
    listing = ", ".join(repr(n) for n in names) if names else "none"
    if len(partial) > 1:
        raise DeviceError(f"MIDI {direction} port {wanted!r} is ambiguous (matches: "
                          f"{', '.join(repr(names[i]) for i in partial)})")
    raise DeviceError(f"no MIDI {direction} port named {wanted!r} (available: {listing})")


def _no_virtual_ports(outputs: list[str], direction: str) -> DeviceError:
    listing = ", ".join(repr(n) for n in outputs) if outputs else "none yet"
    return DeviceError(f"virtual MIDI ports are not available on Windows: install a loopback driver such as "
                       f"loopMIDI and choose its port with --port (existing {direction} ports: {listing})")


def _open_port(client, api: int, port: str | int | None, virtual_name: str, direction: str) -> str:
    """Open `port` (a name, part of one, or a number) on an rtmidi client, or a virtual port when None;
    the opened port's name. rtmidi errors pass through to the caller, which words them."""
    if port is None:
        if api == _rtmidi().API_WINDOWS_MM:
            raise _no_virtual_ports(list(client.get_ports()), direction)
        with _quiet_stderr():
            client.open_virtual_port(virtual_name)
        return virtual_name
    names = list(client.get_ports())
    index = find_port(names, port, direction)
    with _quiet_stderr():
        client.open_port(index)
    return names[index]


SERVER_STOPPED = "the JACK server stopped during playback"
_JACK_NO_START_SERVER = 0x01
_JACK_SHUTDOWN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)  # void (*)(void *arg)


def _rtmidi_libjack() -> ctypes.CDLL | None:
    """The libjack python-rtmidi runs on (its wheel bundles one; else the system's), or None if none loaded."""
    paths = [p for p in loaded_libraries("libjack") if not Path(p).name.startswith(("libjackserver", "libjacknet"))]
    package = str(Path(_rtmidi().__file__).resolve().parents[1])
    for path in sorted(paths, key=lambda p: not p.startswith(package)):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if all(hasattr(library, name) for name in ("jack_client_open", "jack_on_shutdown", "jack_client_close")):
            return library
    return None


class JackWatch:
    """Notices a JACK server that stops: a quiet second client of the same server, whose shutdown callback
    sets `lost`. rtmidi's own client does not say when its server goes: its sends fill a buffer nobody reads.

    Costs nothing while the server runs (the client has no ports and is never activated). When libjack cannot
    be reached, `lost` is simply never set.
    """

    def __init__(self, client_name: str = CLIENT_NAME):
        self.lost = threading.Event()
        self._library = _rtmidi_libjack()
        self._client = None
        self._callback = _JACK_SHUTDOWN(lambda _arg: self.lost.set())  # kept: libjack holds the pointer
        if self._library is None:
            return
        library = self._library
        library.jack_client_open.restype = ctypes.c_void_p
        library.jack_client_open.argtypes = (ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_int))
        library.jack_on_shutdown.argtypes = (ctypes.c_void_p, _JACK_SHUTDOWN, ctypes.c_void_p)
        library.jack_client_close.argtypes = (ctypes.c_void_p,)
        status = ctypes.c_int(0)
        self._client = library.jack_client_open(f"{client_name} watch".encode(), _JACK_NO_START_SERVER,
                                                ctypes.byref(status))
        if self._client:
            library.jack_on_shutdown(self._client, self._callback, None)

    def close(self) -> None:
        if self._client:
            self._library.jack_client_close(self._client)
            self._client = None


class MidiOutput:
    """One open MIDI output (virtual or existing port), sending on channel 1; a `core.player.Sink`.

    Sounding notes are tracked so `all_off` releases them by explicit note-offs as well as CC 123 (some
    synths ignore the controller). Sends are serialised by a lock: the player thread and a panic button
    may send at once.
    """

    def __init__(self, port: str | None = None, program: int | None = 0, client_name: str = CLIENT_NAME):
        """`port=None` opens the virtual port "Recital"; a name opens that existing port.

        `program` (General MIDI, 0 = grand piano; None: leave the receiver's choice) is sent before the first
        note of each playback, not at open: nothing is connected to a fresh virtual port yet.
        """
        rtmidi = _rtmidi()
        self._lock = threading.Lock()
        self._sounding: set[int] = set()
        self._out, api = _client("out", client_name)
        self.api = _api_label(api)
        try:
            self.name = _open_port(self._out, api, port, VIRTUAL_NAME, "output")
        except rtmidi.RtMidiError as error:
            self._out.delete()
            what = f"port {port!r}" if port else f"the virtual port {VIRTUAL_NAME!r}"
            raise DeviceError(f"cannot open {self.api} MIDI {what} ({error})") from None
        except DeviceError:
            self._out.delete()
            raise
        self.program = program
        self._program_sent = False
        # rtmidi does not notice a JACK server that stops; this does, and every later send says so.
        self._watch = JackWatch(client_name) if api == rtmidi.API_UNIX_JACK else None

    def _send(self, message: list[int]) -> None:
        rtmidi = _rtmidi()
        if self._watch is not None and self._watch.lost.is_set():
            raise DeviceError(SERVER_STOPPED)
        try:
            self._out.send_message(message)
        except rtmidi.RtMidiError as error:
            raise DeviceError(f"MIDI port {self.name!r} stopped accepting messages ({error})") from None

    def send(self, message) -> None:
        """One raw message as it is (a clock master's Clock, Start, Stop, Song Position Pointer)."""
        with self._lock:
            self._send([int(byte) & 0xFF for byte in message])

    def program_change(self, program: int) -> None:
        """Switch the instrument now (and for every later playback)."""
        with self._lock:
            self.program = int(program) & 0x7F
            self._send([PROGRAM | CHANNEL, self.program])
            self._program_sent = True

    def note_on(self, pitch: int, velocity: int) -> None:
        with self._lock:
            if not self._program_sent and self.program is not None:
                self._send([PROGRAM | CHANNEL, int(self.program) & 0x7F])
                self._program_sent = True
            self._send([NOTE_ON | CHANNEL, pitch, max(1, min(127, velocity))])
            self._sounding.add(pitch)

    def note_off(self, pitch: int) -> None:
        with self._lock:
            self._send([NOTE_OFF | CHANNEL, pitch, 0])
            self._sounding.discard(pitch)

    def all_off(self) -> None:
        """Release every note this port started, then All Notes Off and a pedal lift on its channel."""
        with self._lock:
            for pitch in sorted(self._sounding):
                self._send([NOTE_OFF | CHANNEL, pitch, 0])
            self._sounding.clear()
            self._send([CONTROL | CHANNEL, SUSTAIN_CC, 0])
            self._send([CONTROL | CHANNEL, ALL_NOTES_OFF, 0])
            self._program_sent = False  # the next playback starts with its program change again

    def panic(self) -> None:
        """Silence everything on all 16 channels: note-offs for every key, sound off, controllers reset."""
        with self._lock:
            for channel in range(16):
                self._send([CONTROL | channel, ALL_SOUND_OFF, 0])
                self._send([CONTROL | channel, RESET_CONTROLLERS, 0])
                self._send([CONTROL | channel, ALL_NOTES_OFF, 0])
            for pitch in range(128):
                self._send([NOTE_OFF | CHANNEL, pitch, 0])
            self._sounding.clear()

    def close(self) -> None:
        if self._out is None:
            return
        try:
            self.all_off()
        except DeviceError:
            pass  # closing a port whose server went away must still release it
        time.sleep(0.02)  # JACK delivers once per period: let the last messages out before the port goes
        self._out.close_port()
        self._out.delete()
        self._out = None
        if self._watch is not None:
            self._watch.close()

    def __enter__(self) -> MidiOutput:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def performance_from_messages(messages: list[tuple[float, list[int]]], end_time: float | None = None,
                              ) -> Performance:
    """The notes of timed MIDI messages (seconds, bytes), pedal folded, first note at time 0.

    Channels are merged (a keyboard sends on one anyway); a note still held at the end is closed at
    `end_time` (default: the last message).
    """
    if end_time is None:
        end_time = messages[-1][0] if messages else 0.0
    held: dict[int, tuple[float, int]] = {}
    onset, offset, pitch, velocity, pedal_time, pedal_value = [], [], [], [], [], []

    def release(key: int, when: float) -> None:
        start, vel = held.pop(key)
        onset.append(start)
        offset.append(when)
        pitch.append(key)
        velocity.append(vel)

    for when, message in messages:
        if len(message) < 3:
            continue
        kind, data1, data2 = message[0] & 0xF0, message[1] & 0x7F, message[2] & 0x7F
        if kind == NOTE_ON and data2 > 0:
            if data1 in held:
                release(data1, when)
            held[data1] = (when, data2)
        elif kind in (NOTE_ON, NOTE_OFF) and data1 in held:
            release(data1, when)
        elif kind == CONTROL and data1 == SUSTAIN_CC:
            pedal_time.append(when)
            pedal_value.append(data2)
    for key in list(held):
        release(key, max(end_time, held[key][0]))
    if not onset:
        return Performance.empty()
    onset_a = np.asarray(onset, dtype=np.float64)
    offset_a = fold_sustain(onset_a, np.asarray(offset, dtype=np.float64), np.asarray(pedal_time, np.float64),
                            np.asarray(pedal_value, np.int64), end_time=end_time)
    start = float(onset_a.min())
    return canonical(onset_a - start, offset_a - start, pitch, velocity)


class _InputPort:
    """An rtmidi input, a named port or a virtual one others connect to, whose messages go to `callback`; closed
    by `close` or at the end of a with-block. The recorder and the clock input share it."""

    def _open(self, port: str | None, virtual_name: str, callback, client_name: str, purpose: str = "",
              configure=None) -> None:
        rtmidi = _rtmidi()
        self._in, api = _client("in", client_name)
        self.api = _api_label(api)
        try:
            if configure is not None:
                configure(self._in)
            self.name = _open_port(self._in, api, port, virtual_name, "input")
            self._in.set_callback(callback)
        except rtmidi.RtMidiError as error:
            self._in.delete()
            raise DeviceError(f"cannot open {self.api} MIDI input {port or virtual_name!r}{purpose} ({error})") \
                from None
        except DeviceError:
            self._in.delete()
            raise

    def close(self) -> None:
        if self._in is not None:
            self._in.cancel_callback()
            self._in.close_port()
            self._in.delete()
            self._in = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MidiRecorder(_InputPort):
    """Records an input port (or a virtual "Recital In" port a keyboard or DAW connects to) until stopped.

    Use: `rec = MidiRecorder("Keystation"); rec.start(); ...; perf = rec.stop()`. Times come from rtmidi's
    message deltas (the MIDI system's own timestamps), so a busy Python thread does not smear the timing.
    """

    def __init__(self, port: str | None = None, client_name: str = CLIENT_NAME):
        self._lock = threading.Lock()
        self._messages: list[tuple[float, list[int]]] = []
        self._clock = 0.0  # seconds, summed from rtmidi's deltas
        self._last_wall = time.perf_counter()  # when the last message arrived, to place `stop` on that clock
        self._recording = False
        self._open(port, VIRTUAL_INPUT_NAME, self._receive, client_name)

    def _receive(self, event: tuple[list[int], float], _data=None) -> None:
        message, delta = event
        with self._lock:
            self._clock += delta
            self._last_wall = time.perf_counter()
            if self._recording:
                self._messages.append((self._clock, list(message)))

    def start(self) -> None:
        with self._lock:
            self._messages.clear()
            self._recording = True

    @property
    def message_count(self) -> int:
        with self._lock:
            return len(self._messages)

    def stop(self) -> Performance:
        """Stop recording and close the port; the notes played since `start`, first note at 0 s."""
        with self._lock:
            self._recording = False
            messages = list(self._messages)
            end = self._clock + (time.perf_counter() - self._last_wall)
        self.close()
        return performance_from_messages(messages, end_time=end)


class MidiClockInput(_InputPort):
    """An input port whose MIDI clock and transport messages (Clock, Start, Continue, Stop, Song Position
    Pointer) go to `receive(time, message)` as they arrive, `time` read from `clock` (the player's) at once:
    for a `core.clock.ClockFollower` through `LivePlayer.clock_message`. Other messages are ignored.

    rtmidi drops timing messages unless asked; this asks. `port=None` opens a virtual input "Recital Clock"
    a DAW can send its clock to.
    """

    def __init__(self, port: str | None, receive, clock=time.perf_counter, client_name: str = CLIENT_NAME):
        self._receive, self._clock = receive, clock
        self._open(port, f"{VIRTUAL_NAME} Clock", self._arrived, client_name, " for its clock",
                   configure=lambda midi_in: midi_in.ignore_types(sysex=True, timing=False, active_sense=True))

    def _arrived(self, event: tuple[list[int], float], _data=None) -> None:
        message = event[0]
        if message and message[0] in _CLOCK_STATUSES:
            self._receive(self._clock(), message)

