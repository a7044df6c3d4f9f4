"""The built-in piano: fluidsynth with a General MIDI SoundFont, rendered offline to WAV or played live.

Everything here needs libfluidsynth and a SoundFont; when either is missing the user gets a `DeviceError` with
the install hint for their system, and the rest of Recital (generation, MIDI files, MIDI out) works without it.
`LiveSynth` is a `core.player.Sink`, so the live player can drive it exactly like a MIDI port.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import wave
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from core.devicelog import silence_device_libraries
from core.errors import DeviceError
from core.midi import Performance, atomic_write_bytes

SAMPLE_RATE = 44100
CHANNEL = 0
PIANO = 0  # General MIDI program 1, Acoustic Grand Piano
DEFAULT_GAIN = 1.0  # fluidsynth's 0.2 is very quiet for GM pianos; 1.0 peaks near -10 dBFS on dense MAESTRO pieces
TAIL_SECONDS = 1.0  # rendered after the last note ends so the release and reverb decay

SOUNDFONT_ENV = "RECITAL_SOUNDFONT"
# Preferred General MIDI SoundFonts, best first; any other .sf2 in a system folder is the last resort.
PREFERRED_NAMES = ("FluidR3_GM.sf2", "default-GM.sf2", "default.sf2", "GeneralUser GS v1.471.sf2",
                   "GeneralUser GS.sf2", "TimGM6mb.sf2", "MuseScore_General.sf2")

# Live audio drivers, tried in order until fluidsynth opens one.
AUDIO_DRIVERS = {
    "linux": ("pipewire", "pulseaudio", "jack", "alsa"),
    "darwin": ("coreaudio",),
    "win32": ("wasapi", "dsound"),
}


def soundfont_folders() -> list[Path]:
    """System folders that may hold a GM SoundFont on this platform, most standard first."""
    home = Path.home()
    folders = [home / ".local/share/soundfonts", home / ".local/share/sounds/sf2"]
    if sys.platform == "darwin":
        folders += [Path("/opt/homebrew/share/soundfonts"), Path("/usr/local/share/soundfonts"),
                    Path("/opt/homebrew/share/fluid-synth/sf2"), Path("/usr/local/share/fluid-synth/sf2"),
                    home / "Library/Audio/Sounds/Banks", Path("/Library/Audio/Sounds/Banks")]
    elif sys.platform == "win32":
        for variable in ("ProgramData", "ProgramFiles", "USERPROFILE"):
            base = os.environ.get(variable)
            if base:
                folders += [Path(base) / "soundfonts", Path(base) / "FluidSynth" / "sf2"]
        folders += [Path("C:/soundfonts"), Path("C:/tools/fluidsynth/sf2")]
    else:
        folders += [Path("/usr/share/sounds/sf2"), Path("/usr/share/soundfonts"),
                    Path("/usr/local/share/soundfonts"), Path("/usr/share/sounds/sf3"),
                    Path("/home/linuxbrew/.linuxbrew/share/soundfonts")]
    return folders


SETTING = "the SoundFont setting"  # where a `soundfont` argument comes from, unless the caller names a flag
SYSTEM = "found in the system's SoundFont folders"


def soundfont_problem(path: Path, origin: str, reason: str) -> str:
    """One line about a SoundFont: led by the flag it came from ("--soundfont PATH: ..."), else ending with
    where it came from (the setting, $RECITAL_SOUNDFONT, the system search)."""
    if origin.startswith("-"):
        return f"{origin} {path}: {reason}"
    return f"{path}: {reason} ({'' if origin == SYSTEM else 'from '}{origin})"


def locate_soundfont(setting: str | Path | None = None, origin: str = SETTING) -> tuple[Path, str]:
    """The SoundFont to use and where it came from: the user's setting (named by `origin`, e.g. "--soundfont"),
    else $RECITAL_SOUNDFONT, else one found in the system folders.

    A setting or variable that names a missing file is an error (not silently replaced by another SoundFont).
    """
    for value, source in ((setting, origin), (os.environ.get(SOUNDFONT_ENV), f"${SOUNDFONT_ENV}")):
        if value:
            path = Path(value).expanduser()
            if not path.is_file():
                raise DeviceError(soundfont_problem(path, source, "no such SoundFont file"))
            return path, source
    folders = [folder for folder in soundfont_folders() if folder.is_dir()]
    for name in PREFERRED_NAMES:
        for folder in folders:
            if (folder / name).is_file():
                return folder / name, SYSTEM
    for folder in folders:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".sf2", ".sf3") and p.is_file())
        if found:
            return found[0], SYSTEM
    raise DeviceError(f"no General MIDI SoundFont found; {install_hint(soundfont=True)}, "
                      f"or set {SOUNDFONT_ENV}=/path/to/piano.sf2")


def find_soundfont(setting: str | Path | None = None, origin: str = SETTING) -> Path:
    """The SoundFont `locate_soundfont` chooses."""
    return locate_soundfont(setting, origin)[0]


def install_hint(soundfont: bool = False) -> str:
    """How to install fluidsynth (and a SoundFont) on this platform, as one clause."""
    if sys.platform == "darwin":
        return "install it with `brew install fluid-synth`" + (
            " and put a GM SoundFont in /opt/homebrew/share/soundfonts" if soundfont else "")
    if sys.platform == "win32":
        return ("install FluidSynth (https://github.com/FluidSynth/fluidsynth/releases) and add its bin folder "
                "to PATH" + (", and put a GM SoundFont in C:\\soundfonts" if soundfont else ""))
    return "install it with `sudo apt-get install fluidsynth libfluidsynth3" + (
        " timgm6mb-soundfont`" if soundfont else "`")


def load_fluidsynth():
    """The pyfluidsynth module, or a DeviceError saying libfluidsynth is missing and how to install it."""
    try:
        # pyfluidsynth prints where it found the library to stdout when $CI is set: that is not ours to say.
        with contextlib.redirect_stdout(io.StringIO()):
            import fluidsynth
    except (ImportError, OSError) as error:
        raise DeviceError(f"the synth is unavailable: libfluidsynth is not installed ({error}); "
                          f"{install_hint()}") from None
    return fluidsynth


@contextmanager
def _fluid_quiet(fluidsynth) -> Iterator[None]:
    """Silence fluidsynth's own stderr logging while we probe; we report failures ourselves."""
    setter = fluidsynth._fl.fluid_set_log_function
    setter.restype = ctypes.c_void_p
    setter.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)
    levels = range(0, 5)  # FLUID_PANIC .. FLUID_DBG
    previous = [setter(level, None, None) for level in levels]
    try:
        yield
    finally:
        for level, function in zip(levels, previous, strict=True):
            setter(level, function, None)


def _new_synth(soundfont: str | Path | None, sample_rate: int, gain: float, program: int,
               origin: str = SETTING):
    """A fluidsynth Synth with the SoundFont loaded and `program` selected on channel 0."""
    fluidsynth = load_fluidsynth()
    path, origin = locate_soundfont(soundfont, origin)
    # Chorus off: GM pianos send no chorus (CC 93 is 0), yet the effect unit costs a third of the render time.
    synth = fluidsynth.Synth(gain=gain, samplerate=sample_rate, **{"synth.chorus.active": 0})
    with _fluid_quiet(fluidsynth):
        sfid = synth.sfload(str(path))
    if sfid < 0:
        synth.delete()
        raise DeviceError(soundfont_problem(path, origin, "fluidsynth cannot load this SoundFont, not a valid "
                                                          ".sf2/.sf3 file"))
    synth.program_select(CHANNEL, sfid, 0, program)
    return fluidsynth, synth


def render(perf: Performance, soundfont: str | Path | None = None, sample_rate: int = SAMPLE_RATE,
           tail: float = TAIL_SECONDS, gain: float = DEFAULT_GAIN, program: int = PIANO,
           soundfont_origin: str = SETTING) -> np.ndarray:
    """Audio of a performance, offline: int16 (frames, 2), `perf.duration + tail` seconds long.

    Note-ons and -offs take effect at their exact sample: the synth renders straight into one preallocated
    buffer up to each event time, so the cost is synthesis alone (hundreds of times real time).
    """
    fluidsynth, synth = _new_synth(soundfont, sample_rate, gain, program, soundfont_origin)
    try:
        frames = int(round((perf.duration + tail) * sample_rate))
        out = np.zeros((frames, 2), dtype=np.int16)  # (frames, 2) interleaved L R
        on = np.round(perf.onset * sample_rate).astype(np.int64)
        off = np.maximum(np.round(perf.offset * sample_rate).astype(np.int64), on + 1)
        n = len(perf)
        at = np.concatenate([off, on])
        is_on = np.concatenate([np.zeros(n, bool), np.ones(n, bool)])
        pitch = np.concatenate([perf.pitch, perf.pitch]).astype(np.int64)
        velocity = np.concatenate([perf.velocity, perf.velocity]).astype(np.int64)
        order = np.lexsort((pitch, is_on, at))  # offs before ons at one sample, so a re-strike sounds
        base = out.ctypes.data
        cursor = 0
        for i in order.tolist():
            position = min(int(at[i]), frames)
            if position > cursor:
                _write(fluidsynth, synth, base, cursor, position - cursor)
                cursor = position
            if is_on[i]:
                synth.noteon(CHANNEL, int(pitch[i]), int(velocity[i]))
            else:
                synth.noteoff(CHANNEL, int(pitch[i]))
        if frames > cursor:
            _write(fluidsynth, synth, base, cursor, frames - cursor)
        return out
    finally:
        synth.delete()


def _write(fluidsynth, synth, base: int, start: int, count: int) -> None:
    """Render `count` frames into the interleaved int16 buffer at `base`, from frame `start`."""
    block = 1 << 16  # fluidsynth takes an int length; keep each call modest
    while count > 0:
        n = min(count, block)
        pointer = base + start * 4  # 2 channels x 2 bytes
        fluidsynth.fluid_synth_write_s16(synth.synth, n, pointer, 0, 2, pointer, 1, 2)
        start += n
        count -= n


def wav_bytes(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit stereo WAV file holding `audio` (int16 (frames, 2))."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as handle:
        handle.setnchannels(2)
        handle.setsampwidth(2)
        handle.setframerate(sample_rate)
        handle.writeframes(np.ascontiguousarray(audio, dtype="<i2").tobytes())
    return buffer.getvalue()


def render_wav(perf: Performance, path: str | Path, soundfont: str | Path | None = None,
               sample_rate: int = SAMPLE_RATE, tail: float = TAIL_SECONDS, soundfont_origin: str = SETTING
               ) -> Path:
    """Render a performance to a 44.1 kHz stereo 16-bit WAV file (written atomically); returns the path.
    `soundfont_origin`: where `soundfont` came from, for errors (a flag such as "--soundfont", or a setting)."""
    path = Path(path)
    audio = render(perf, soundfont=soundfont, sample_rate=sample_rate, tail=tail, soundfont_origin=soundfont_origin)
    atomic_write_bytes(path, wav_bytes(audio, sample_rate), what="WAV file")
    return path


class LiveSynth:
    """Fluidsynth playing through the system's audio output: a `core.player.Sink`.

    `Synth.start()` reports a failed driver only by leaving `audio_driver` unset, so each driver is opened
    directly and checked; when none opens, the error says that no audio device was found.
    """

    def __init__(self, soundfont: str | Path | None = None, driver: str | None = None,
                 gain: float = DEFAULT_GAIN, program: int = PIANO, soundfont_origin: str = SETTING):
        self._fluidsynth, self._synth = _new_synth(soundfont, SAMPLE_RATE, gain, program, soundfont_origin)
        drivers = (driver,) if driver else AUDIO_DRIVERS.get(sys.platform, AUDIO_DRIVERS["linux"])
        os.environ.setdefault("JACK_NO_START_SERVER", "1")  # probing JACK must not launch a server
        silence_device_libraries()  # libjack and ALSA print a dozen lines per failed driver; we print one
        self.driver = None
        with _fluid_quiet(self._fluidsynth):
            for name in drivers:
                self._synth.setting("audio.driver", name)
                handle = self._fluidsynth.new_fluid_audio_driver(self._synth.settings, self._synth.synth)
                if handle:
                    self._synth.audio_driver = handle  # Synth.delete() frees it
                    self.driver = name
                    break
        if self.driver is None:
            self._synth.delete()
            self._synth = None
            raise DeviceError(f"no audio device found (tried fluidsynth drivers: {', '.join(drivers)}); "
                              "use --wav to render to a file or --virtual/--port to play on a MIDI port")

    def note_on(self, pitch: int, velocity: int) -> None:
        self._synth.noteon(CHANNEL, pitch, velocity)

    def note_off(self, pitch: int) -> None:
        self._synth.noteoff(CHANNEL, pitch)

    def all_off(self) -> None:
        self._synth.all_notes_off(CHANNEL)

    def close(self) -> None:
        if self._synth is not None:
            self._synth.all_sounds_off(CHANNEL)
            self._synth.delete()
            self._synth = None

    def __enter__(self) -> LiveSynth:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
