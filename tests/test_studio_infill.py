"""Regenerate selection in the studio: a region dragged on the ruler or Shift-dragged on the roll (snapped to the
beats, a pitch range with Ctrl), written anew by a denoising model off the GUI thread, takes that change the region
only, one undo back to the original, a left-to-right model refused with a tooltip, errors in a dialog.

The window tests inject a fake `core_infill` (recording its thread and arguments) so that what the studio does
with the results is checked exactly; the tiny SMDIM loaded is real, so the model picker and its family are too.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QEvent, QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtTest import QTest  # noqa: E402
from PySide6.QtWidgets import QApplication, QMessageBox  # noqa: E402

from core.errors import RecitalError  # noqa: E402
from core.midi import Performance, write_performance  # noqa: E402
from studio.document import Piece  # noqa: E402
from studio.infilljob import INFILL_MODEL, take_from  # noqa: E402
from studio.pianoroll import PX_PER_SECOND, PianoRoll, Region, pitch_y  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.window import MainWindow  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SMDIM_TINY = dict(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=4, stride=2,
                  mlp_ratio=2, steps=4, default_budget="2MB")


@pytest.fixture(scope="module")
def smdim_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny SMDIM model directory (a denoiser: it can fill a region)."""
    import torch

    from core.modeldir import save_model
    from core.models.smdim.model import SMDIM, SMDIMConfig

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("models") / "tiny-smdim"
    return save_model(SMDIM(SMDIMConfig(**SMDIM_TINY)), path, "# Tiny SMDIM\n\nRandom weights, for tests only.\n")


@pytest.fixture
def dialogs(monkeypatch, tmp_path):
    """Isolated user folders; every warning captured; the close prompt answers Discard."""
    for name in ("RECITAL_CONFIG_DIR", "RECITAL_DATA_DIR", "RECITAL_CACHE_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    warnings: list[tuple[str, str]] = []

    def warning(_parent, title, text, *args, **kwargs):
        warnings.append((title, text))
        return QMessageBox.Ok

    monkeypatch.setattr(QMessageBox, "warning", staticmethod(warning))
    monkeypatch.setattr(QMessageBox, "question", staticmethod(lambda *args, **kwargs: QMessageBox.Discard))
    return warnings


def open_window(qtbot, model_dir: Path) -> MainWindow:
    w = MainWindow(Settings(seconds=2.0, model=str(model_dir)), extra_models=[model_dir], list_ports=False)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.model is not None, timeout=20000)
    w.panel.seed.setValue(7)
    return w


@pytest.fixture
def window(qtbot, smdim_dir, dialogs):
    w = open_window(qtbot, smdim_dir)
    yield w
    w.jobs.shutdown()


def chords(seconds: int = 8) -> Performance:
    """Three voices (48, 60, 72), a note each every half second (the beats of 120 BPM), velocities apart."""
    onset = np.repeat(np.arange(seconds * 2) * 0.5, 3)
    pitch = np.tile([48, 60, 72], seconds * 2)
    return Performance.from_notes(onset, onset + 0.4, pitch, 40 + (np.arange(len(onset)) % 50))


def open_piece(w: MainWindow, tmp_path: Path, perf: Performance) -> Piece:
    path = tmp_path / "piece.mid"
    write_performance(perf, path)
    assert w.open_file(path)
    return w.document.piece


class FakeInfill:
    """Stands in for core.infill.infill: each variation k replaces the notes the region covers by one note of
    pitch 30 + k (keep_below + 1 + k) per half second; it records its calls and the threads they ran on."""

    def __init__(self, error: RecitalError | None = None):
        self.calls: list[dict] = []
        self.threads: list[threading.Thread] = []
        self.error = error

    def __call__(self, model, piece, start, end, *, keep_above=None, keep_below=None, variations=1, seed=None,
                 sampling=None, constraints=None, **rest):
        self.threads.append(threading.current_thread())
        self.calls.append(dict(model=model, piece=piece, start=start, end=end, keep_above=keep_above,
                               keep_below=keep_below, variations=variations, seed=seed, sampling=sampling,
                               constraints=constraints, **rest))
        if self.error is not None:
            raise self.error
        replaced = (piece.onset >= start) & (piece.onset < end)
        if keep_above is not None:
            replaced &= piece.pitch < keep_above
        if keep_below is not None:
            replaced &= piece.pitch > keep_below
        kept = Performance(piece.onset[~replaced], piece.offset[~replaced], piece.pitch[~replaced],
                           piece.velocity[~replaced])
        results = []
        for k in range(variations):
            onset = np.arange(start, end - 1e-9, 0.5)
            pitch = (30 if keep_below is None else keep_below + 1) + k
            new = Performance.from_notes(onset, onset + 0.3, np.full(len(onset), pitch), np.full(len(onset), 90))
            results.append(Performance.concat(kept, new))
        return results


def notes(perf: Performance) -> list[tuple]:
    return sorted(zip(perf.onset.round(6).tolist(), perf.offset.round(6).tolist(), perf.pitch.tolist(),
                      perf.velocity.tolist(), strict=True))


def split(piece: Piece, region: Region) -> tuple[list[tuple], list[tuple]]:
    """The notes of the whole piece outside the region and inside it."""
    whole = piece.whole
    inside = region.inside(whole.onset, whole.pitch)
    pick = lambda mask: Performance(whole.onset[mask], whole.offset[mask], whole.pitch[mask], whole.velocity[mask])  # noqa: E731
    return notes(pick(~inside)), notes(pick(inside))


# -- selecting a region -------------------------------------------------------------------------------------------


def send_mouse(widget, kind: QEvent.Type, pos: QPointF, modifiers=Qt.NoModifier) -> None:
    """A left-button press, drag (button held) or release at `pos` in `widget` (QTest's move carries no button)."""
    buttons = Qt.NoButton if kind == QEvent.MouseButtonRelease else Qt.LeftButton
    button = Qt.NoButton if kind == QEvent.MouseMove else Qt.LeftButton
    event = QMouseEvent(kind, pos, widget.mapToGlobal(pos), button, buttons, modifiers)
    QApplication.sendEvent(widget, event)


def drag(widget, start: QPointF, end: QPointF, modifiers=Qt.NoModifier) -> None:
    send_mouse(widget, QEvent.MouseButtonPress, start, modifiers)
    send_mouse(widget, QEvent.MouseMove, (start + end) / 2, modifiers)
    send_mouse(widget, QEvent.MouseMove, end, modifiers)
    send_mouse(widget, QEvent.MouseButtonRelease, end, modifiers)


@pytest.fixture
def roll(qtbot):
    roll = PianoRoll()
    qtbot.addWidget(roll)
    roll.resize(1200, 500)
    roll.show()
    roll.set_piece(Piece(chords(), Performance.empty()))  # no file: 120 BPM 4/4, a beat every 0.5 s
    roll.view.zoom(1.0 / roll.view.x_scale)  # 60 pixels a second
    roll.view.horizontalScrollBar().setValue(0)
    return roll


def on_view(roll: PianoRoll, seconds: float, pitch: int) -> QPointF:
    return QPointF(roll.view.mapFromScene(QPointF(seconds * PX_PER_SECOND, pitch_y(pitch) + 3)))


def on_ruler(roll: PianoRoll, seconds: float) -> QPointF:
    return QPointF(roll.view.mapFromScene(QPointF(seconds * PX_PER_SECOND, 0)).x(), 20)


def test_a_drag_on_the_ruler_selects_a_time_range_snapped_to_beats_and_a_click_places_the_playhead(roll):
    seen = []
    roll.region_changed.connect(seen.append)
    drag(roll.ruler, on_ruler(roll, 1.13), on_ruler(roll, 3.4))
    assert roll.region == Region(pytest.approx(1.0), pytest.approx(3.5))
    assert roll.playhead == pytest.approx(1.0)  # the press placed it, the drag did not move it
    assert seen[-1] == roll.region and roll.region.low is None
    drag(roll.ruler, on_ruler(roll, 4.4), on_ruler(roll, 2.1))  # backwards
    assert (roll.region.start, roll.region.end) == (pytest.approx(2.0), pytest.approx(4.5))
    drag(roll.ruler, on_ruler(roll, 1.13), on_ruler(roll, 3.4), Qt.AltModifier)  # Alt: not snapped
    assert roll.region.start == pytest.approx(1.13, abs=0.03) and roll.region.end == pytest.approx(3.4, abs=0.03)
    region = roll.region
    send_mouse(roll.ruler, QEvent.MouseButtonPress, on_ruler(roll, 6.0))  # a click: the playhead only
    send_mouse(roll.ruler, QEvent.MouseButtonRelease, on_ruler(roll, 6.0))
    assert roll.playhead == pytest.approx(6.0) and roll.region == region
    roll.grab()  # paints the band in the roll and the ruler


def test_shift_drag_on_the_roll_selects_time_and_with_ctrl_pitches_and_esc_clears(roll):
    drag(roll.view.viewport(), on_view(roll, 2.1, 70), on_view(roll, 4.9, 58), Qt.ShiftModifier)
    assert roll.region == Region(pytest.approx(2.0), pytest.approx(5.0))
    assert roll.selected() == ([], [])  # a region is not a note selection
    drag(roll.view.viewport(), on_view(roll, 2.1, 70), on_view(roll, 4.9, 58), Qt.ShiftModifier | Qt.ControlModifier)
    assert roll.region == Region(pytest.approx(2.0), pytest.approx(5.0), 58, 70)
    band = roll._region_item.rect()
    assert band.top() == pytest.approx(pitch_y(70)) and band.bottom() == pytest.approx(pitch_y(58) + 7.0)
    assert band.left() == pytest.approx(2.0 * PX_PER_SECOND) and band.width() == pytest.approx(3.0 * PX_PER_SECOND)
    roll.set_piece(Piece(chords(), Performance.empty()))  # drawn anew (a take switched): the region stays
    assert roll._region_item is not None and roll.region.low == 58
    roll.view.setFocus()
    QTest.keyClick(roll.view, Qt.Key_Escape)
    assert roll.region is None and roll._region_item is None
    drag(roll.view.viewport(), on_view(roll, 2.1, 70), on_view(roll, 2.2, 70), Qt.ShiftModifier)
    assert roll.region is None  # less than a beat: snapped to nothing, no region


def test_a_take_replaces_the_notes_the_region_covers_and_keeps_every_other_note_in_its_part():
    base = Piece(chords(4), Performance.from_notes([2.25], [2.5], [84], [70]))
    region = Region(1.0, 3.0, 55, 65)  # the middle voice (60) between 1 and 3 s
    result = Performance.from_notes([1.0, 1.5, 2.0, 3.0], [1.2, 1.7, 2.2, 3.2], [55, 60, 72, 60], [80] * 4)
    take = take_from(base, region, result)
    assert notes(take.primer) == [n for n in notes(base.primer) if not (1.0 <= n[0] < 3.0 and n[2] == 60)]
    assert len(take.primer) == len(base.primer) - 4
    assert notes(take.generated) == sorted(notes(base.generated) + [(1.0, 1.2, 55, 80), (1.5, 1.7, 60, 80)])


# -- the window -----------------------------------------------------------------------------------------------------


def wait_done(qtbot, w: MainWindow) -> None:
    qtbot.waitUntil(lambda: w.generation is None and not w.panel.generating, timeout=60000)


def test_regenerate_runs_off_the_gui_thread_takes_change_the_region_only_and_undo_restores_it(
        qtbot, window, tmp_path, monkeypatch):
    w = window
    fake = FakeInfill()
    monkeypatch.setattr("studio.infilljob.core_infill", fake)
    original = open_piece(w, tmp_path, chords())
    assert not w.panel.regenerate.isEnabled() and "Select a stretch" in w.panel.regenerate.toolTip()
    w.roll.set_region(2.1, 4.9)
    assert w.panel.regenerate.isEnabled() and w.regenerate_action.isEnabled()
    w.panel.variations.setValue(3)
    w.panel.temperature.setValue(0.8)
    qtbot.mouseClick(w.panel.regenerate, Qt.LeftButton)
    assert w.panel.generating and not w.panel.regenerate.isEnabled()  # one job at a time
    wait_done(qtbot, w)
    assert fake.threads and all(t is not threading.main_thread() for t in fake.threads)
    call = fake.calls[0]
    assert (call["start"], call["end"], call["variations"], call["seed"]) == (2.0, 5.0, 3, 7)
    assert call["keep_above"] is None and call["keep_below"] is None and call["model"] is w.model
    assert call["sampling"].temperature == pytest.approx(0.8)
    assert notes(call["piece"]) == notes(original.whole)

    region = w.roll.region
    assert len(w.takes) == 3 and w.panel.takes_box.isVisibleTo(w) and w.document.piece is w.takes[0]
    outside, inside = split(original, region)
    seen_inside = []
    for k in range(3):
        w.pick_take(k)
        take_outside, take_inside = split(w.document.piece, region)
        assert take_outside == outside  # the rest of the piece, exactly
        assert {n[2] for n in take_inside} == {30 + k}  # this take's notes in the region
        seen_inside.append(take_inside)
        assert len(w.roll.notes("primer")) + len(w.roll.notes("generated")) == len(w.document.piece)
    assert seen_inside[0] != seen_inside[1] != seen_inside[2]
    assert w.roll.region == region  # the band stays for another try

    for _ in range(w.document.undo_stack.index() - 1):  # back past the take switches
        w.document.undo_stack.undo()
    assert w.document.piece is w.takes[0]
    w.document.undo_stack.undo()  # one undo: the regeneration is gone
    assert w.document.piece is original and notes(w.document.piece.whole) == notes(original.whole)


def test_regenerate_reads_on_the_read_threads_with_the_int8_pass_weights(qtbot, window, smdim_dir, tmp_path,
                                                                         monkeypatch):
    """As `recital infill`: whole-window passes on core/threads.py's "read" threads (not generation's one), with
    the fast pass weights LoadModel chose."""
    import torch

    from core import threads
    from core.modeldir import load_model

    w = window
    monkeypatch.setattr(threads, "threads_for", lambda job: {"read": 2, "generate": 1, "train": 3}[job])
    fake, counts = FakeInfill(), []

    def counting(*args, **kwargs):
        counts.append(torch.get_num_threads())  # in the job's thread, where its setting holds
        return fake(*args, **kwargs)

    monkeypatch.setattr("studio.infilljob.core_infill", counting)
    open_piece(w, tmp_path, chords())
    w.roll.set_region(2.0, 4.0)
    w.regenerate()
    wait_done(qtbot, w)
    assert counts == [2] and len(w.takes) == 1
    if hasattr(torch, "_weight_int8pack_mm"):  # where torch has them, use_fast_step turns them on
        ids = torch.tensor([[1, 60, 300, 190, 62, w.model.mask_id, 320]])
        with torch.no_grad():
            fast, exact = w.model.score(ids), load_model(smdim_dir).score(ids)
        assert not torch.equal(fast, exact)
        torch.testing.assert_close(fast.softmax(-1), exact.softmax(-1), atol=5e-3, rtol=0)


def test_a_pitch_range_keeps_the_notes_above_and_below_it(qtbot, window, tmp_path, monkeypatch):
    w = window
    fake = FakeInfill()
    monkeypatch.setattr("studio.infilljob.core_infill", fake)
    original = open_piece(w, tmp_path, chords())
    w.roll.set_region(1.0, 3.0, 55, 65)  # the middle voice only
    w.panel.variations.setValue(1)
    w.regenerate()
    wait_done(qtbot, w)
    assert (fake.calls[0]["keep_above"], fake.calls[0]["keep_below"]) == (66, 54)  # the core's: kept, inclusive
    piece = w.document.piece
    in_time = lambda perf: [n for n in notes(perf) if 1.0 <= n[0] < 3.0]  # noqa: E731
    assert [n for n in in_time(piece.whole) if n[2] in (48, 72)] == [n for n in in_time(original.whole)
                                                                       if n[2] in (48, 72)]
    assert [n[2] for n in in_time(piece.whole) if 55 <= n[2] <= 65] == [55] * 4  # the new middle voice
    assert not w.panel.takes_box.isVisibleTo(w)  # one take: nothing to switch
    w.document.undo_stack.undo()
    assert w.document.piece is original


def test_errors_from_infill_show_in_a_dialog_and_leave_the_piece(qtbot, window, dialogs, tmp_path, monkeypatch):
    w = window
    monkeypatch.setattr("studio.infilljob.core_infill",
                        FakeInfill(RecitalError("infill: the region 2.0-5.0 s has no room for notes")))
    original = open_piece(w, tmp_path, chords())
    w.roll.set_region(2.0, 5.0)
    w.regenerate()
    wait_done(qtbot, w)
    assert dialogs == [("Recital — Regenerate selection", "infill: the region 2.0-5.0 s has no room for notes")]
    assert w.document.piece is original and not w.document.modified
    assert w.panel.regenerate.isEnabled()  # ready for another try


def test_a_left_to_right_model_cannot_regenerate_and_says_which_can(qtbot, tiny_model_dir, dialogs, tmp_path,
                                                                    monkeypatch):
    fake = FakeInfill()
    monkeypatch.setattr("studio.infilljob.core_infill", fake)
    w = open_window(qtbot, tiny_model_dir)
    try:
        open_piece(w, tmp_path, chords())
        w.roll.set_region(1.0, 3.0)
        assert not w.panel.regenerate.isEnabled() and not w.regenerate_action.isEnabled()
        assert INFILL_MODEL in w.panel.regenerate.toolTip()
        assert w.regenerate() is None and fake.calls == [] and not w.document.modified
    finally:
        w.jobs.shutdown()


def test_the_real_infill_on_a_tiny_smdim_rewrites_the_region_only(qtbot, window, dialogs, tmp_path):
    w = window
    original = open_piece(w, tmp_path, chords())
    w.roll.set_region(2.0, 4.0, 55, 65)  # the middle voice: the model writes between the bass and the top
    w.panel.variations.setValue(2)
    w.regenerate()
    wait_done(qtbot, w)
    assert dialogs == [] and len(w.takes) == 2
    region = w.roll.region
    outside, _inside = split(original, region)
    for k in range(2):
        w.pick_take(k)
        take_outside, take_inside = split(w.document.piece, region)
        assert take_outside == outside
        assert all(2.0 <= n[0] < 4.0 and 55 <= n[2] <= 65 for n in take_inside)
        assert set(take_inside) <= set(notes(w.document.piece.generated))  # the model's notes, drawn amber
    while w.document.undo_stack.index() > 1:  # back past the take switches
        w.document.undo_stack.undo()
    assert w.document.piece is w.takes[0]
    w.document.undo_stack.undo()
    assert w.document.piece is original


def test_a_region_past_the_piece_is_refused_by_the_core_in_a_dialog(qtbot, window, dialogs, tmp_path):
    w = window
    original = open_piece(w, tmp_path, chords())  # 8 s
    w.roll.set_region(12.0, 14.0)
    w.regenerate()
    wait_done(qtbot, w)
    assert len(dialogs) == 1 and dialogs[0][0] == "Recital — Regenerate selection"
    assert "outside the piece" in dialogs[0][1] and "\n" not in dialogs[0][1]
    assert w.document.piece is original and not w.document.modified


def test_the_picker_lists_an_smdim_with_a_summary_that_says_it_fills_from_both_sides(window, smdim_dir):
    panel = window.panel
    assert panel.models.currentData() == str(smdim_dir) and panel.models.currentText().startswith("tiny-smdim")
    lines = panel.card.text().splitlines()
    assert lines[1].startswith("Remembers ~") and "at once, before and after what it writes" in lines[1]
    assert lines[3].startswith("How it works: SMDIM, a diffusion model that fills masked music from both sides")
    assert window.panel.regenerate.toolTip().startswith("Select a stretch")  # loaded, ready once a region is


def test_an_smdim_is_never_asked_to_adapt_and_the_core_would_refuse_it(qtbot, window, dialogs, tmp_path,
                                                                     tiny_model_dir):
    """Adapting to the primer is for left-to-right models: for a denoiser the box is off (its tick kept for the
    next model), the request never asks, a continuation runs without a dialog, and the core refuses it."""
    from dataclasses import replace

    from core.errors import ModelError
    from studio.generation import session_for

    w = window
    w.panel.adapt.setChecked(True)
    assert not w.panel.adapt.isEnabled() and "left-to-right models; smdim" in w.panel.adapt.toolTip()
    assert w.panel.keep_beat.isChecked() and not w.panel.keep_beat.isEnabled()  # nor keeps the primer's beat
    assert "left-to-right models; smdim" in w.panel.keep_beat.toolTip()
    assert w.panel.recall_motifs.isChecked() and not w.panel.recall_motifs.isEnabled()  # nor recalls motifs
    assert "left-to-right models; smdim" in w.panel.recall_motifs.toolTip()
    original = open_piece(w, tmp_path, chords())
    request = w.panel.request(w.document.piece, 0.0)
    assert request.adapt is False and request.keep_beat is False and request.recall_motifs is False
    assert not request.new_piece
    with pytest.raises(ModelError, match="adapting to the primer is for left-to-right models; a smdim model"):
        session_for(replace(request, adapt=True), w.model)
    w.generate()
    wait_done(qtbot, w)
    assert dialogs == [] and len(w.document.piece.generated) > 0 and w.document.piece.primer == original.primer
    other = open_window(qtbot, tiny_model_dir)  # a left-to-right model: the box is on again
    try:
        assert other.panel.adapt.isEnabled() and not other.panel.adapt.toolTip().startswith("Adapting")
        assert other.panel.keep_beat.isEnabled() and other.panel.keep_beat.isChecked()
        assert other.panel.recall_motifs.isEnabled() and other.panel.recall_motifs.isChecked()
    finally:
        other.jobs.shutdown()


# -- Regenerate selection's own settings: context each side, refinement steps (issue #18) ----------------------


def test_the_infill_request_from_the_panel_carries_each_setting(window, tmp_path):
    """Context, steps, sampling, takes, the Limits' density (core infill reads its `density` from the
    constraints, so the panel has no second density control) and a chosen budget all reach the request."""
    from core.infill import CONTEXT_SECONDS
    from studio.generatepanel import CONTEXTS, MAX_STEPS

    w = window
    panel = w.panel
    piece = open_piece(w, tmp_path, chords())
    region = Region(2.0, 4.0)
    default = panel.infill_request(piece, region)
    assert (default.context, default.steps, default.budget) == (CONTEXT_SECONDS, None, None)  # the core's defaults
    assert default.base is piece and default.region == region
    assert panel.context.currentText() == "6 s" and panel.steps.text() == "model's (4)"  # SMDIM_TINY

    assert [panel.context.itemText(i) for i in range(panel.context.count())] == ["Whole window", "16 s", "8 s",
                                                                                 "6 s", "4 s"]
    for index, seconds in enumerate(CONTEXTS):
        panel.context.setCurrentIndex(index)
        assert panel.infill_request(piece, region).context == seconds
    panel.steps.setValue(12)
    panel.temperature.setValue(0.7)
    panel.top_p.setValue(0.9)
    panel.variations.setValue(2)
    panel.limits.density.setValue(6)
    panel.budget.set_budget(3 * 1024 * 1024)
    panel.budget.chosen = True
    request = panel.infill_request(piece, region)
    assert (request.context, request.steps, request.seed, request.variations) == (4.0, 12, 7, 2)
    assert (request.temperature, request.top_p) == pytest.approx((0.7, 0.9))
    assert request.budget == 3 * 1024 * 1024 and request.controls.constraints().density == 6.0
    panel.steps.setValue(MAX_STEPS)
    assert panel.infill_request(piece, region).steps == MAX_STEPS


def test_the_job_calls_core_infill_with_context_steps_and_density(qtbot, window, tmp_path, monkeypatch):
    from studio.generatepanel import CONTEXTS

    w = window
    fake = FakeInfill()
    monkeypatch.setattr("studio.infilljob.core_infill", fake)
    open_piece(w, tmp_path, chords())
    w.roll.set_region(2.0, 4.0)
    w.regenerate()
    wait_done(qtbot, w)
    assert (fake.calls[0]["context"], fake.calls[0]["steps"], fake.calls[0]["constraints"]) == (6.0, None, None)
    w.panel.context.setCurrentIndex(CONTEXTS.index(4.0))
    w.panel.steps.setValue(3)
    w.panel.limits.density.setValue(5)
    w.regenerate()
    wait_done(qtbot, w)
    call = fake.calls[1]
    assert (call["context"], call["steps"], call["constraints"].density) == (4.0, 3, 5.0)
    assert "density" not in call  # one density only: the constraints', which core infill reads


def test_the_settings_are_only_on_for_a_model_that_fills_gaps_and_while_nothing_runs(qtbot, window, tiny_model_dir,
                                                                                     tmp_path, monkeypatch):
    w = window
    panel = w.panel
    assert panel.context.isEnabled() and panel.steps.isEnabled()  # before any selection: set them first
    assert "listens to" in panel.context.toolTip() and "passes" in panel.steps.toolTip()
    monkeypatch.setattr("studio.infilljob.core_infill", FakeInfill())
    open_piece(w, tmp_path, chords())
    w.roll.set_region(2.0, 4.0)
    panel.set_generating(True)
    assert not panel.context.isEnabled() and not panel.steps.isEnabled()
    panel.set_generating(False)
    assert panel.context.isEnabled()
    other = open_window(qtbot, tiny_model_dir)  # a left-to-right model: nothing to regenerate with
    try:
        assert not other.panel.context.isEnabled() and not other.panel.steps.isEnabled()
        assert "SMDIM" in other.panel.context.toolTip() and "SMDIM" in other.panel.steps.toolTip()
        assert other.panel.steps.text() == "model's"  # no number of passes: it has none
    finally:
        other.jobs.shutdown()


def test_bad_values_cannot_be_entered_and_a_bad_settings_file_gives_usable_ones(qtbot, smdim_dir, dialogs):
    """The steps box stays in 0 (the model's) .. MAX_STEPS whatever is typed; the context box offers only its
    choices; a settings file with values the panel does not offer falls back to the defaults or the bounds."""
    from core.infill import CONTEXT_SECONDS
    from studio.generatepanel import MAX_STEPS

    w = MainWindow(Settings(model=str(smdim_dir), infill_context=3.3, infill_steps=-5), extra_models=[smdim_dir],
                   list_ports=False)
    qtbot.addWidget(w)
    try:
        panel = w.panel
        assert panel.context_seconds == CONTEXT_SECONDS and panel.steps.value() == 0  # the defaults
        assert not panel.context.isEditable()
        panel.steps.lineEdit().selectAll()
        QTest.keyClicks(panel.steps, "-3")
        panel.steps.interpretText()
        assert panel.steps.value() == 0
        panel.steps.lineEdit().selectAll()
        QTest.keyClicks(panel.steps, "99999")
        panel.steps.interpretText()
        assert 0 <= panel.steps.value() <= MAX_STEPS
        panel.steps.setValue(10**9)
        assert panel.steps.value() == MAX_STEPS
    finally:
        w.jobs.shutdown()
    big = MainWindow(Settings(model=str(smdim_dir), infill_steps=10**9), extra_models=[smdim_dir], list_ports=False)
    qtbot.addWidget(big)
    try:
        assert big.panel.steps.value() == MAX_STEPS
    finally:
        big.jobs.shutdown()


@pytest.mark.parametrize(("index", "stored", "seconds"), [(2, 8.0, 8.0), (0, 0.0, None)],
                         ids=["8 s", "whole window"])
def test_context_and_steps_are_remembered_on_close(qtbot, window, dialogs, index, stored, seconds):
    from core.infill import CONTEXT_SECONDS

    assert Settings().infill_context == CONTEXT_SECONDS  # a first start: the core's default
    w = window
    w.panel.context.setCurrentIndex(index)
    w.panel.steps.setValue(6)
    w.close()
    settings = Settings.load()
    assert (settings.infill_context, settings.infill_steps) == (stored, 6)
    again = MainWindow(settings, list_ports=False)
    qtbot.addWidget(again)
    try:
        assert again.panel.context_seconds == seconds and again.panel.steps.value() == 6
    finally:
        again.jobs.shutdown()


def test_the_real_infill_reads_the_context_asked_in_the_steps_asked(qtbot, window, dialogs, tmp_path, monkeypatch):
    """The tiny SMDIM really runs with 4 s each side and 2 passes: the calls reach core infill and the model's
    denoise, and the region is the only thing rewritten."""
    from core.infill import infill
    from studio.generatepanel import CONTEXTS

    w = window
    seen, passes = [], []
    monkeypatch.setattr("studio.infilljob.core_infill",
                        lambda *args, **kwargs: seen.append(kwargs) or infill(*args, **kwargs))
    denoise = type(w.model).denoise
    monkeypatch.setattr(type(w.model), "denoise",
                        lambda self, ids, keep, state, steps=None, *rest, **named: passes.append(steps)
                        or denoise(self, ids, keep, state, steps, *rest, **named))
    original = open_piece(w, tmp_path, chords(16))
    w.roll.set_region(8.0, 10.0)
    w.panel.context.setCurrentIndex(CONTEXTS.index(4.0))
    w.panel.steps.setValue(2)
    w.regenerate()
    wait_done(qtbot, w)
    assert dialogs == [] and (seen[0]["context"], seen[0]["steps"]) == (4.0, 2) and passes and set(passes) == {2}
    outside, _inside = split(original, w.roll.region)
    take_outside, take_inside = split(w.document.piece, w.roll.region)
    assert take_outside == outside and all(8.0 <= n[0] < 10.0 for n in take_inside)


@pytest.mark.parametrize("themed", [False, True])
def test_on_a_laptop_the_settings_sit_beside_regenerate_and_generate_stays_in_view(qtbot, smdim_dir, dialogs,
                                                                                   tmp_path, qapp, themed):
    """1366x768 with a selection, three takes and the progress bar: Generate, Regenerate selection, its two
    settings and the takes are all whole on screen (pinned below the settings, which scroll)."""
    from studio import theme
    from tests.test_studio_layout import fully_visible

    before = qapp.style().name(), qapp.palette(), qapp.font(), qapp.styleSheet()
    if themed:
        theme.apply(qapp)
    w = MainWindow(Settings(model=str(smdim_dir)), extra_models=[smdim_dir], list_ports=False)
    qtbot.addWidget(w)
    try:
        w.resize(1366, 768)
        w.show()
        qtbot.waitExposed(w)
        qtbot.waitUntil(lambda: w.model is not None, timeout=20000)
        open_piece(w, tmp_path, chords())
        w.roll.set_region(2.0, 4.0)
        panel = w.panel
        panel.set_takes(0, 3)
        panel.progress.setVisible(True)
        footer = (panel.go, panel.regenerate, panel.context, panel.steps, panel.keep)
        qtbot.waitUntil(lambda: all(fully_visible(widget, w) for widget in footer))
        assert panel.regenerate.isEnabled() and panel.context.isEnabled() and panel.steps.isEnabled()
        assert panel.scroll.viewport().height() > 300  # the settings keep a usable height above them
    finally:
        w.jobs.shutdown()
        style, palette, font, sheet = before
        qapp.setStyleSheet(sheet)
        qapp.setFont(font)
        qapp.setPalette(palette)
        qapp.setStyle(style)
