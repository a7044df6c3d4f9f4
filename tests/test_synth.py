"""The built-in synth: SoundFont lookup, offline WAV render of known pieces, live audio and its clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from core import synth
from core.cli import main
from core.errors import DeviceError
from core.midi import Performance, read_performance, write_performance
from tests.conftest import midi_files

pytest_plugins = ("tests.jack",)  # the JACK server fixtures

SR = synth.SAMPLE_RATE
SILENT = 8  # fluidsynth dithers its 16-bit output: silence is +-1, a decaying note far above
ROOT = Path(__file__).resolve().parents[1]


def needs_synth() -> None:
    try:
        synth.load_fluidsynth()
        synth.find_soundfont()
    except DeviceError as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))


@pytest.fixture
def two_phrases() -> Performance:
    """A phrase at 0-1 s, silence, the same phrase at 4-5 s."""
    onset = np.array([0.0, 0.25, 0.5, 0.75])
    onset = np.concatenate([onset, onset + 4.0])
    return Performance.from_notes(onset, onset + 0.25, [60, 64, 67, 72] * 2, [90] * 8)


# --- SoundFont lookup -------------------------------------------------------------------------------------


def test_soundfont_lookup_order(tmp_path, monkeypatch):
    setting, env, system = (tmp_path / name for name in ("mine.sf2", "env.sf2", "system"))
    setting.write_bytes(b"x")
    env.write_bytes(b"x")
    system.mkdir()
    (system / "aaa.sf2").write_bytes(b"x")
    (system / "TimGM6mb.sf2").write_bytes(b"x")
    monkeypatch.setattr(synth, "soundfont_folders", lambda: [tmp_path / "missing", system])
    monkeypatch.setenv("RECITAL_SOUNDFONT", str(env))
    assert synth.find_soundfont(setting) == setting
    assert synth.find_soundfont(None) == env
    monkeypatch.delenv("RECITAL_SOUNDFONT")
    assert synth.find_soundfont(None) == system / "TimGM6mb.sf2"  # a known GM name before any other .sf2
    (system / "TimGM6mb.sf2").unlink()
    assert synth.find_soundfont(None) == system / "aaa.sf2"


def test_soundfont_errors_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "soundfont_folders", lambda: [tmp_path])
    monkeypatch.delenv("RECITAL_SOUNDFONT", raising=False)
    with pytest.raises(DeviceError, match="no such SoundFont file.*from the SoundFont setting"):
        synth.find_soundfont(tmp_path / "gone.sf2")
    monkeypatch.setenv("RECITAL_SOUNDFONT", str(tmp_path / "gone.sf2"))
    with pytest.raises(DeviceError, match=r"from \$RECITAL_SOUNDFONT"):
        synth.find_soundfont(None)
    monkeypatch.delenv("RECITAL_SOUNDFONT")
    with pytest.raises(DeviceError, match="no General MIDI SoundFont found.*install.*RECITAL_SOUNDFONT"):
        synth.find_soundfont(None)


@pytest.mark.parametrize("platform, expected", [("darwin", "/opt/homebrew/share/soundfonts"),
                                                ("win32", "C:/soundfonts"), ("linux", "/usr/share/sounds/sf2")])
def test_system_folders_cover_each_platform(monkeypatch, platform, expected):
    monkeypatch.setattr(synth.sys, "platform", platform)
    assert Path(expected) in synth.soundfont_folders()
    assert "install" in synth.install_hint(soundfont=True)


def test_a_file_that_is_no_soundfont_is_reported(tmp_path, scale):
    needs_synth()
    fake = tmp_path / "fake.sf2"
    fake.write_text("not a soundfont")
    with pytest.raises(DeviceError, match="fake.sf2: fluidsynth cannot load this SoundFont"):
        synth.render(scale, soundfont=fake)


def test_without_libfluidsynth_the_error_has_the_install_hint(monkeypatch, scale, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "fluidsynth", None)  # `import fluidsynth` now raises ImportError
    with pytest.raises(DeviceError, match="libfluidsynth is not installed.*install"):
        synth.render(scale)
    with pytest.raises(DeviceError, match="libfluidsynth is not installed"):
        synth.LiveSynth()
    piece = tmp_path / "scale.mid"
    write_performance(scale, piece)
    assert main(["play", str(piece), "--wav", str(tmp_path / "out.wav")]) == 1
    assert capsys.readouterr().err.startswith("error: the synth is unavailable: libfluidsynth is not installed")


def test_midi_out_and_generation_do_not_need_the_synth():
    code = ("import sys; sys.modules['fluidsynth'] = None; import core.player, core.midiport, core.tokenizer; "
            "from core.cli import build_parser; build_parser(); print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


# --- offline render ---------------------------------------------------------------------------------------


def test_render_is_loud_where_notes_are_and_silent_where_the_piece_is(two_phrases):
    needs_synth()
    audio = synth.render(two_phrases, tail=1.0)
    assert audio.dtype == np.int16 and audio.shape == (round(6.0 * SR), 2)
    level = np.abs(audio.astype(np.int32)).max(axis=1)  # (frames,)
    for start, end in ((0.0, 1.0), (4.0, 5.0)):
        segment = audio[int(start * SR):int(end * SR)].astype(np.float64)
        assert np.sqrt((segment ** 2).mean()) > 300  # clearly audible (> -40 dBFS RMS)
    assert level[int(2.0 * SR):int(4.0 * SR)].max() < SILENT  # the rest, once the release has decayed
    assert level[int(5.8 * SR):].max() < SILENT  # the tail ends in silence
    first_sound = np.flatnonzero(level[int(3.0 * SR):] >= SILENT)[0] / SR + 3.0
    assert first_sound == pytest.approx(4.0, abs=0.01)  # the second phrase starts on time
    assert (audio[:, 0] != audio[:, 1]).any()  # stereo, not a doubled mono channel


@pytest.mark.parametrize("path", midi_files("piano")[:1], ids=lambda p: getattr(p, "name", "none"))
def test_play_wav_renders_a_real_piece(path, tmp_path, capsys):
    needs_synth()
    perf = read_performance(path).slice_time(0.0, 8.0)
    piece = tmp_path / "excerpt.mid"
    write_performance(perf, piece)
    perf = read_performance(piece)
    out = tmp_path / "excerpt.wav"
    assert main(["play", str(piece), "--wav", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with wave.open(str(out)) as handle:
        assert (handle.getnchannels(), handle.getsampwidth(), handle.getframerate()) == (2, 2, 44100)
        frames = handle.getnframes()
        audio = np.frombuffer(handle.readframes(frames), dtype="<i2").reshape(-1, 2)
    assert frames == round((perf.duration + synth.TAIL_SECONDS) * SR)
    assert np.abs(audio.astype(np.int32)).max() > 1000
    first = np.flatnonzero(np.abs(audio.astype(np.int32)).max(axis=1) >= SILENT)[0] / SR
    assert first == pytest.approx(perf.onset[0], abs=0.01)


# --- live audio -------------------------------------------------------------------------------------------


def test_no_audio_device_is_a_clear_error(no_jack):
    needs_synth()
    with pytest.raises(DeviceError, match=r"no audio device found \(tried fluidsynth drivers: jack\)"):
        synth.LiveSynth(driver="jack")


def test_live_synth_plays_through_jack(jack):
    needs_synth()
    with synth.LiveSynth(driver="jack") as live:
        assert live.driver == "jack"
        live.note_on(60, 100)
        live.note_off(60)
        live.all_off()


# --- what the user reads ----------------------------------------------------------------------------------


def test_soundfont_flag_errors_name_the_flag(tmp_path, monkeypatch, capsys, scale):
    """A path from --soundfont is named after the flag; the variable and the system search name themselves."""
    piece = tmp_path / "scale.mid"
    write_performance(scale, piece)
    out = str(tmp_path / "out.wav")
    gone = tmp_path / "gone.sf2"
    monkeypatch.delenv("RECITAL_SOUNDFONT", raising=False)
    assert main(["play", str(piece), "--wav", out, "--soundfont", str(gone)]) == 1
    assert capsys.readouterr().err == f"error: --soundfont {gone}: no such SoundFont file\n"
    assert main(["play", str(piece), "--soundfont", str(gone)]) == 1  # the live synth, same words
    assert capsys.readouterr().err == f"error: --soundfont {gone}: no such SoundFont file\n"
    monkeypatch.setenv("RECITAL_SOUNDFONT", str(gone))
    assert main(["play", str(piece), "--wav", out]) == 1
    assert capsys.readouterr().err == f"error: {gone}: no such SoundFont file (from $RECITAL_SOUNDFONT)\n"
    monkeypatch.delenv("RECITAL_SOUNDFONT")
    needs_synth()
    fake = tmp_path / "fake.sf2"
    fake.write_text("not a soundfont")
    assert main(["play", str(piece), "--wav", out, "--soundfont", str(fake)]) == 1
    assert capsys.readouterr().err == (f"error: --soundfont {fake}: fluidsynth cannot load this SoundFont, "
                                       "not a valid .sf2/.sf3 file\n")
    monkeypatch.setattr(synth, "soundfont_folders", lambda: [tmp_path])
    with pytest.raises(DeviceError, match=r"fake.sf2: fluidsynth cannot load.*\(found in the system's SoundFont"):
        synth.render(scale)
    assert not Path(out).exists()


@pytest.mark.skipif(sys.platform != "linux", reason="the drivers and the libraries that print are Linux's")
def test_no_audio_device_prints_our_one_line_only(tmp_path, scale):
    """libjack and ALSA print a dozen lines while fluidsynth probes its drivers; the user reads one."""
    needs_synth()
    piece = tmp_path / "scale.mid"
    write_performance(scale, piece)
    empty = tmp_path / "asound.conf"
    empty.write_text("")
    # No sound server or card whatever the machine: a JACK server nobody runs, no PulseAudio or PipeWire
    # socket, ALSA without a configuration (so without a default device).
    env = {**os.environ, "JACK_DEFAULT_SERVER": f"recital-none-{os.getpid()}", "JACK_NO_START_SERVER": "1",
           "PULSE_SERVER": f"unix:{tmp_path}/no-pulse", "PIPEWIRE_REMOTE": f"{tmp_path}/no-pipewire",
           "ALSA_CONFIG_PATH": str(empty)}
    env.pop("RECITAL_DEVICE_LOG", None)

    def play(**extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "core", "play", str(piece)], capture_output=True, text=True,
                              cwd=ROOT, timeout=60, env={**env, **extra})

    result = play()
    drivers = ", ".join(synth.AUDIO_DRIVERS["linux"])
    assert result.returncode == 1
    assert result.stderr == (f"error: no audio device found (tried fluidsynth drivers: {drivers}); use --wav to "
                             "render to a file or --virtual/--port to play on a MIDI port\n")
    assert result.stdout == ""
    noisy = play(RECITAL_DEVICE_LOG="1")  # the libraries' own lines, kept for debugging a device
    assert noisy.returncode == 1 and len(noisy.stderr.splitlines()) > 1
    assert noisy.stderr.splitlines()[-1] == result.stderr.strip()
