"""Transport with a fake output and a fake MIDI input: play from the playhead, stop, loop, panic, record a
primer into the document, and device errors shown as dialogs; `recital studio` parses its arguments."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

import core.midiport  # noqa: E402
import core.player  # noqa: E402
from core.errors import DeviceError  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.window import MainWindow  # noqa: E402
from tests.test_studio_window import dialogs  # noqa: E402,F401  (the fixture)


class FakeSink:
    def __init__(self):
        self.on, self.off, self.silenced, self.closed = [], [], 0, False

    def note_on(self, pitch, velocity):
        self.on.append(pitch)

    def note_off(self, pitch):
        self.off.append(pitch)

    def all_off(self):
        self.silenced += 1

    def panic(self):
        self.silenced += 100

    def close(self):
        self.closed = True


@pytest.fixture
def window(qtbot, dialogs):  # noqa: F811
    w = MainWindow(Settings(), list_ports=False)
    qtbot.addWidget(w)
    yield w
    w.jobs.shutdown()


@pytest.fixture
def sink(monkeypatch):
    fake = FakeSink()
    monkeypatch.setattr(core.player, "open_sink", lambda **kwargs: fake)
    return fake


def test_play_from_the_playhead_moves_it_and_stops(qtbot, window, sink, scale, tmp_path):
    from core.midi import write_performance

    write_performance(scale, tmp_path / "s.mid")
    window.open_file(tmp_path / "s.mid")
    window.place_playhead(1.0)  # the last four notes of the scale
    positions = []
    window.transport.position.connect(positions.append)
    window.transport.toggle()
    assert window.transport.playing
    qtbot.waitUntil(lambda: not window.transport.playing, timeout=5000)
    assert sink.on == scale.pitch[4:].tolist() and sorted(sink.off) == sorted(sink.on)
    assert positions and positions[0] >= 1.0 and positions[-1] == pytest.approx(scale.duration, abs=0.06)
    assert window.transport.time.text().startswith("0:0")
    window.transport.silence()
    assert sink.silenced >= 100


def test_a_late_player_is_never_cut_short(qtbot, window, sink, scale, monkeypatch):
    """The player thread runs on its own clock, from whenever the OS lets it run: one held up past the piece's
    end (a busy machine, a model loading beside it) still plays every note, the transport waits for it."""
    import time

    from studio.document import Piece

    part = scale.slice_time(0, 0.5)
    window.document.apply(Piece(part, scale.slice_time(0, 0)), "edit")
    window.place_playhead(0.0)
    note_on = sink.note_on
    held_until = time.perf_counter() + part.duration + 0.3  # past the end, and past the timer's idea of it

    def held_up(pitch, velocity):  # the first note's send is where the thread is held
        while not sink.on and time.perf_counter() < held_until:
            time.sleep(0.005)
        note_on(pitch, velocity)

    monkeypatch.setattr(sink, "note_on", held_up)
    window.transport.toggle()
    qtbot.waitUntil(lambda: not window.transport.playing, timeout=5000)
    assert sink.on == part.pitch.tolist() and sorted(sink.off) == sorted(sink.on)


def test_loop_starts_again(qtbot, window, sink, scale):
    from studio.document import Piece

    window.document.apply(Piece(scale.slice_time(0, 0.3), scale.slice_time(0, 0)), "edit")
    window.place_playhead(0.0)
    window.transport.loop.setChecked(True)
    window.transport.toggle()
    qtbot.waitUntil(lambda: len(sink.on) >= 4, timeout=5000)  # two notes, at least twice
    window.transport.toggle()
    assert not window.transport.playing


def test_nothing_after_the_playhead_and_missing_devices_explain_themselves(qtbot, window, dialogs, monkeypatch,  # noqa: F811
                                                                          scale):
    from studio.document import Piece

    window.document.apply(Piece(scale, scale.slice_time(0, 0)), "edit")
    window.place_playhead(100.0)
    window.transport.toggle()
    assert "nothing to play after the playhead" in dialogs["warnings"][-1][1]

    def no_device(**kwargs):
        raise DeviceError("no audio device found (tried fluidsynth drivers: alsa)")

    monkeypatch.setattr(core.player, "open_sink", no_device)
    window.place_playhead(0.0)
    window.transport.toggle()
    assert "no audio device found" in dialogs["warnings"][-1][1] and not window.transport.playing


def test_record_captures_a_primer_and_undo_restores(qtbot, window, monkeypatch, scale):
    class FakeRecorder:
        name = "Keys"

        def __init__(self, port):
            self.port = port

        def start(self):
            pass

        def stop(self):
            return scale

        def close(self):
            pass

    monkeypatch.setattr(core.midiport, "MidiRecorder", FakeRecorder)
    window.transport.record.setChecked(True)
    assert window.transport.recorder.port is None  # the virtual "Recital In" port
    window.transport.record.setChecked(False)
    assert len(window.document.piece.primer) == len(scale) and window.roll.playhead == pytest.approx(scale.duration)
    window.document.undo_stack.undo()
    assert len(window.document.piece) == 0


def test_recital_studio_command_arguments():
    from core.cli import build_parser

    args = build_parser().parse_args(["studio", "piece.mid", "--model", "a", "--model", "b"])
    assert args.file == "piece.mid" and args.model == ["a", "b"]
