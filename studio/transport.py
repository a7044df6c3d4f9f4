"""Transport: play / stop / loop on the built-in synth, the virtual "Recital" MIDI port or any port; record a
primer from a MIDI input; panic. Playing uses core's LivePlayer (its own thread), so the GUI only moves the
playhead on a timer. Port listing runs as a job: probing MIDI systems can take a moment.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QToolButton, QWidget

from core.errors import DeviceError, RecitalError
from core.midi import Performance
from studio.jobs import Job, JobKeeper

SYNTH, VIRTUAL = "synth", "virtual"


class ListPorts(Job):
    def work(self):
        from core.midiport import list_ports

        return list_ports()


class TransportBar(QWidget):
    """The transport controls; the window gives it the piece to play and receives the playhead."""

    position = Signal(float)  # playhead while playing
    recorded = Signal(object)  # a Performance captured from the MIDI input
    failed = Signal(str)

    def __init__(self, jobs: JobKeeper, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs = jobs
        layout = QHBoxLayout(self)
        layout.setContentsMargins(8, 4, 8, 4)
        self.play = QToolButton()
        self.play.setText("▶  Play")
        self.play.setToolTip("Play from the playhead (Space)")
        self.loop = QToolButton()
        self.loop.setText("⟲  Loop")
        self.loop.setCheckable(True)
        self.record = QToolButton()
        self.record.setText("●  Record")
        self.record.setCheckable(True)
        self.record.setToolTip("Record a primer from the MIDI input; it replaces the piece (undo brings it back)")
        self.panic = QToolButton()
        self.panic.setText("Panic")
        self.panic.setToolTip("Silence every note on the output")
        self.output = QComboBox()
        self.output.addItem("Built-in piano", SYNTH)
        self.output.addItem("Virtual port “Recital”", VIRTUAL)
        self.output.setToolTip("Where playback goes; a DAW can listen on the virtual port")
        self.input = QComboBox()
        self.input.addItem("Virtual input “Recital In”", "")
        self.input.setToolTip("Where Record listens")
        self.follow = QToolButton()
        self.follow.setText("Follow DAW")
        self.follow.setCheckable(True)
        self.follow.setToolTip("Play when the DAW plays: wait for its Start, begin at the bar after it, at its "
                               "tempo, pause on its Stop (MIDI clock from the port beside)")
        self.clock_input = QComboBox()
        self.clock_input.addItem("Virtual input “Recital Clock”", "")
        self.clock_input.setToolTip("Where the DAW's MIDI clock comes in")
        self.time = QLabel("0:00.0")
        self.time.setMinimumWidth(64)
        for combo in (self.output, self.input, self.clock_input):  # port names can be long: the bar must fit 1366 px
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)
        for widget in (self.play, self.loop):
            layout.addWidget(widget)
        layout.addWidget(self.time)
        layout.addSpacing(12)
        layout.addWidget(QLabel("Out"))
        layout.addWidget(self.output)
        layout.addWidget(self.panic)
        layout.addSpacing(12)
        layout.addWidget(QLabel("In"))
        layout.addWidget(self.input)
        layout.addWidget(self.record)
        layout.addSpacing(12)
        layout.addWidget(self.follow)
        layout.addWidget(self.clock_input)
        self.clock_input.setVisible(False)  # where the clock comes in matters only while following it
        self.follow.toggled.connect(self.clock_input.setVisible)
        layout.addStretch(1)

        self.piece: Performance = Performance.empty()
        self.start_at = 0.0
        self.sink = None
        self.sink_key: str | None = None
        self.player = None
        self.recorder = None
        self._started = 0.0
        self._timer = QTimer(self)
        self._timer.setInterval(30)
        self._timer.timeout.connect(self._tick)
        self.play.clicked.connect(self.toggle)
        self.panic.clicked.connect(self.silence)
        self.record.toggled.connect(self._record)
        self.output.currentIndexChanged.connect(self._close_sink)

    # -- ports ------------------------------------------------------------------------------------------------

    def refresh_ports(self) -> None:
        job = ListPorts()
        job.succeeded.connect(self._ports)
        self.jobs.start(job)

    def _ports(self, ports) -> None:
        for name in ports.outputs:
            if "Recital" not in name:
                self.output.addItem(name, f"port:{name}")
        for name in ports.inputs:
            if "Recital" not in name:
                self.input.addItem(name, name)
                self.clock_input.addItem(name, name)

    def select_output(self, key: str) -> None:
        index = self.output.findData(key)
        if index >= 0:
            self.output.setCurrentIndex(index)

    # -- playing --------------------------------------------------------------------------------------------

    @property
    def playing(self) -> bool:
        return self.player is not None

    def toggle(self) -> None:
        if self.playing:
            self.stop()
        else:
            self.start()

    def set_piece(self, perf: Performance, start_at: float) -> None:
        self.piece, self.start_at = perf, start_at

    def _open_sink(self):
        key = self.output.currentData()
        if self.sink is not None and self.sink_key == key:
            return self.sink
        self._close_sink()
        from core.player import open_sink

        if key == SYNTH:
            self.sink = open_sink(synth=True)
        elif key == VIRTUAL:
            self.sink = open_sink(virtual=True)
        else:
            self.sink = open_sink(port=key.removeprefix("port:"))
        self.sink_key = key
        return self.sink

    def start(self) -> None:
        from core.player import LivePlayer, performance_events

        part = self.piece.slice_time(self.start_at, float("inf")).shifted(-self.start_at)
        if len(part) == 0:
            self.failed.emit("nothing to play after the playhead: move it back (click the ruler)")
            return
        try:
            sink = self._open_sink()
            if self.follow.isChecked():  # the DAW's clock: the piece unshifted, its playhead's bar on the DAW's
                self.player = self._following_player(sink)
        except RecitalError as error:
            self.failed.emit(str(error))
            return
        if self.player is not None:
            whole = self.piece.slice_time(self.start_at, float("inf"))
            self.player.feed(performance_events(whole), horizon=whole.duration)
        else:
            self.player = LivePlayer(sink, lookahead=0.0, start=0.0)
            self.player.feed(performance_events(part), horizon=part.duration)
        self.player.finish()
        self._length = part.duration
        self._started = time.perf_counter()
        self._timer.start()
        self.play.setText("■  Stop")

    def _following_player(self, sink):
        """A player on the DAW's clock from the chosen input (closed with it)."""
        from core.clock import ClockFollower
        from core.grid import Grid
        from core.player import LivePlayer, open_clock_input

        grid = self.piece.grid or Grid.constant()
        player = LivePlayer(sink, follower=ClockFollower(grid, start=self.start_at))
        try:
            open_clock_input(self.clock_input.currentData() or None, player)
        except BaseException:
            player.stop()
            raise
        return player

    def stop(self) -> None:
        self._timer.stop()
        if self.player is not None:
            player, self.player = self.player, None
            try:
                player.stop()
            except RecitalError as error:
                self.failed.emit(str(error))
        self.play.setText("▶  Play")

    def _tick(self) -> None:
        follower = getattr(self.player, "follower", None)
        if follower is not None:  # the playhead is where the DAW is; the end is when the player has finished
            music = follower.music_time(time.perf_counter())
            if self.player.wait(0):
                self.stop()
            elif music is not None and music >= self.start_at:
                self.show_time(music)
                self.position.emit(music)
            return
        elapsed = time.perf_counter() - self._started
        # The end is when the player has played out, not when this timer reckons it should have: its thread runs
        # on its own clock, from when it got to run, and a stop() here while it is late would cut the last notes.
        if elapsed >= self._length + 0.05 and self.player.wait(0):
            self.stop()
            if self.loop.isChecked():
                self.start()
                return
        elapsed = min(elapsed, self._length)
        self.show_time(self.start_at + elapsed)
        self.position.emit(self.start_at + elapsed)

    def show_time(self, seconds: float) -> None:
        self.time.setText(f"{int(seconds // 60)}:{seconds % 60:04.1f}")

    def silence(self) -> None:
        self.stop()
        if self.sink is not None:
            try:
                (getattr(self.sink, "panic", None) or self.sink.all_off)()
            except DeviceError as error:
                self.failed.emit(str(error))

    def _close_sink(self, *_args) -> None:
        self.stop()
        if self.sink is not None:
            sink, self.sink, self.sink_key = self.sink, None, None
            try:
                sink.close()
            except RecitalError:
                pass

    # -- recording --------------------------------------------------------------------------------------------

    def _record(self, on: bool) -> None:
        if on:
            from core.midiport import MidiRecorder

            try:
                self.recorder = MidiRecorder(self.input.currentData() or None)
            except RecitalError as error:
                self.record.blockSignals(True)
                self.record.setChecked(False)
                self.record.blockSignals(False)
                self.failed.emit(str(error))
                return
            self.recorder.start()
            self.record.setText("■  Stop recording")
        elif self.recorder is not None:
            recorder, self.recorder = self.recorder, None
            self.record.setText("●  Record")
            perf = recorder.stop()
            if len(perf):
                self.recorded.emit(perf)
            else:
                self.failed.emit(f"nothing was played on {recorder.name!r} while recording")

    def shutdown(self) -> None:
        """Stop playing and recording and release the ports (the window is closing)."""
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        self._close_sink()
