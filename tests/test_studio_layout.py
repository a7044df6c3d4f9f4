"""The studio on a laptop screen: Generate in view at 1366x768 and 1440x900, the composer-facing model summary
(no machine path, the full card a click away), budget rows that never overdraw, and a piano roll that opens
fitted to the piece."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PySide6.QtCore import QPoint, QRect, Qt  # noqa: E402

from core.midi import Performance  # noqa: E402
from core.modelcard import PATH  # noqa: E402
from core.modeldir import ModelInfo, load_model  # noqa: E402
from studio.budget import BudgetPanel  # noqa: E402
from studio.document import Piece  # noqa: E402
from studio.generatepanel import GeneratePanel, smaller_headings  # noqa: E402
from studio.pianoroll import MIN_PITCH_SPAN, PX_PER_SECOND, PianoRoll  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.window import MainWindow  # noqa: E402
from tests.test_studio_window import dialogs  # noqa: E402,F401  (the fixture)

MACHINE_CARD = """# mine: dsmr fine-tuned from /home/ana/.local/share/recital/models/default on 38 pieces (0.50 h)

- base model: /home/ana/.local/share/recital/models/default
- data: /home/ana/Music/My MIDI: 40 files, 38 pieces (36 train, 2 held out), 90,000 tokens, 0.50 hours of music
- recipe: `recital train /root/.cache/recital/corpus --out mine`
"""


def piece(pitches: list[int], seconds: float) -> Piece:
    onset = np.linspace(0, seconds - 0.5, len(pitches))
    return Piece(Performance.from_notes(onset, onset + 0.4, np.array(pitches), np.full(len(pitches), 80)),
                 Performance.empty())


def fully_visible(widget, window) -> bool:
    """The widget is shown, not clipped by any parent (a scroll area), and inside the window."""
    where = QRect(widget.mapTo(window, QPoint(0, 0)), widget.size())
    return (widget.isVisible() and widget.visibleRegion().boundingRect() == widget.rect()
            and window.rect().contains(where))


@pytest.fixture(params=["plain", "themed"])
def look(request, qapp):
    """The window as tests build it, and as the app shows it (studio.theme: Fusion, its font and stylesheet,
    which make every control wider); the application's look is restored afterwards."""
    if request.param == "plain":
        yield request.param
        return
    from studio import theme

    style, palette, font, sheet = qapp.style().name(), qapp.palette(), qapp.font(), qapp.styleSheet()
    theme.apply(qapp)
    yield request.param
    qapp.setStyleSheet(sheet)
    qapp.setFont(font)
    qapp.setPalette(palette)
    qapp.setStyle(style)


@pytest.mark.parametrize("size", [(1366, 768), (1440, 900)])
def test_generate_stays_in_view_and_every_setting_is_reachable_on_a_laptop(qtbot, tiny_model_dir, dialogs,  # noqa: F811
                                                                           size, look):
    w = MainWindow(Settings(model=str(tiny_model_dir)), extra_models=[tiny_model_dir], list_ports=False)
    qtbot.addWidget(w)
    w.transport.follow.setChecked(True)  # the transport at its widest: the clock input shown
    w.resize(*size)
    w.show()
    qtbot.waitExposed(w)
    qtbot.waitUntil(lambda: w.model is not None, timeout=20000)
    panel = w.panel
    assert w.size().width() == size[0] and w.size().height() == size[1]
    qtbot.waitUntil(lambda: fully_visible(panel.go, w))  # once the layout has settled
    assert panel.go.isEnabled()
    panel.set_takes(0, 3)  # the takes join the pinned footer: Generate stays in view
    panel.budget.set_live(3 * 1024 * 1024)  # generating: the live state row appears
    qtbot.waitUntil(lambda: fully_visible(panel.keep, w))
    assert fully_visible(panel.go, w)

    def reachable(control) -> bool:  # scrolled to if the settings are taller than the screen
        panel.scroll.ensureWidgetVisible(control)
        return fully_visible(control, w)

    for control in (panel.models, panel.card_button, panel.budget.slider, panel.mode_playhead, panel.seconds,
                    panel.temperature, panel.seed, panel.variations):
        qtbot.waitUntil(lambda control=control: reachable(control))
    w.jobs.shutdown()


def test_the_panel_shows_a_summary_without_machine_paths_and_the_full_card_on_a_click(qtbot, tiny_model_dir,
                                                                                      tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "mine")
    (folder / "card.md").write_text(MACHINE_CARD, encoding="utf-8")
    panel = GeneratePanel()
    qtbot.addWidget(panel)
    panel.set_models([ModelInfo("mine", folder, "user", "dsmr", 1, "")])
    summary = panel.card.text()
    assert summary.splitlines()[0] == "Fine-tuned from default on My MIDI: 38 pieces, 0.50 hours"
    assert "Remembers ~" in summary and "M parameters" in summary and "DSMR, 2 layers x 32" in summary
    assert PATH.search(summary) is None and "/home" not in summary and "recital train" not in summary
    qtbot.mouseClick(panel.card_button, Qt.LeftButton)
    card = panel.full_card.text.toPlainText()
    assert "recital train corpus --out mine" in card and "My MIDI: 40 files" in card
    assert PATH.search(card) is None and "/home" not in card and "/root" not in card
    (folder / "card.md").unlink()
    assert "no readable card" in panel.show_full_card().text.toPlainText()
    panel.set_models([])
    assert not panel.card_button.isEnabled() and panel.show_full_card() is None


def test_a_card_replaced_within_one_clock_tick_is_summarized_again(qtbot, tiny_model_dir, tmp_path):
    """A resumed fine-tune replaces a model's files whole; a file system's modification time can repeat within its
    clock tick, so the summary cache also tells files apart by inode and size."""
    folder = shutil.copytree(tiny_model_dir, tmp_path / "mine")
    card = folder / "card.md"
    card.write_text(MACHINE_CARD, encoding="utf-8")
    panel = GeneratePanel()
    qtbot.addWidget(panel)
    models = [ModelInfo("mine", folder, "user", "dsmr", 1, "")]
    panel.set_models(models)
    assert "38 pieces" in panel.card.text()
    before = card.stat()
    replacement = folder / "card.md.new"
    replacement.write_text(MACHINE_CARD.replace("38 pieces", "41 pieces"), encoding="utf-8")
    os.replace(replacement, card)  # as the trainer writes a card: whole, by rename
    os.utime(card, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same tick as before
    panel.set_models(models)
    assert "41 pieces" in panel.card.text()


def test_the_full_card_shows_headings_smaller_and_code_as_written():
    card = "# mine: dsmr\n\n## Data\n\n```toml\n# a comment in the settings\n```\n## Scores\n"
    assert smaller_headings(card) == ("### mine: dsmr\n\n#### Data\n\n```toml\n# a comment in the settings\n```\n"
                                      "#### Scores\n")


def test_budget_rows_leave_room_for_the_live_state_and_the_caption(qtbot, tiny_model_dir):
    budget = BudgetPanel()
    qtbot.addWidget(budget)
    budget.resize(360, 400)
    budget.set_model(load_model(tiny_model_dir))
    budget.set_live(100_000)
    budget.show()
    qtbot.waitExposed(budget)
    rows = len(budget.view.bars)
    assert rows == 2 and budget.bars.height() >= rows * budget.bars.row_height()
    assert budget.live.isVisible() and budget.live.geometry().top() >= budget.bars.geometry().bottom()
    caption = budget.caption
    assert caption.height() >= caption.heightForWidth(caption.width()) > 0  # wrapped, not cut off
    budget.set_live(None)
    assert not budget.live.isVisible()


def test_the_roll_fits_the_piece_not_the_whole_keyboard(qtbot):
    roll = PianoRoll()
    qtbot.addWidget(roll)
    roll.resize(900, 520)
    roll.show()
    qtbot.waitExposed(roll)
    roll.set_piece(piece([60, 64, 67, 72, 76, 79, 84, 55], 12.0))
    roll.fit()
    low, high = roll.visible_pitches()
    assert low <= 55 and high >= 84  # every note in view...
    assert high - low <= 84 - 55 + 8  # ...and little else (a margin, not C-1..C9)
    assert roll.view.y_scale > 1  # the keys grew to fill the height
    view = roll.view.mapToScene(roll.view.viewport().rect()).boundingRect()
    assert view.left() <= 0 and view.right() >= 12.0 * PX_PER_SECOND  # the whole duration across

    roll.view.setAttribute(Qt.WA_UnderMouse, True)  # the pointer resting over the roll, never moved
    roll.show_span(5.0, 40.0)  # as generating does: time zooms, the keys in view stay
    assert roll.visible_pitches() == (low, high)

    roll.set_piece(piece([62, 62, 62], 4.0))  # one pitch: two octaves around it, not one huge key
    roll.fit()
    low, high = roll.visible_pitches()
    assert low <= 62 <= high and high - low + 1 >= MIN_PITCH_SPAN - 1

    roll.set_piece(piece([21, 108], 4.0))  # the whole piano: every key, none cut off
    roll.fit()
    low, high = roll.visible_pitches()
    assert low <= 21 and high >= 108


def test_an_empty_roll_opens_on_the_middle_of_the_keyboard(qtbot):
    roll = PianoRoll()
    qtbot.addWidget(roll)
    roll.resize(900, 520)
    roll.show()
    qtbot.waitExposed(roll)
    low, high = roll.visible_pitches()
    assert low <= 60 <= high and low >= 36 and high <= 96
