"""Tempo maps, bars and quantize (core/grid.py): the grid math, MIDI files that keep their tempo map and time
signatures through `recital continue`, new pieces' --bpm/--meter, --bars and --quantize on the generated notes."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pytest
import symusic

from core.cli import main
from core.grid import Grid, GridError, Meter, Tempo, parse_meter, parse_subdivision, quantize
from core.midi import Performance, read_performance, write_performance

TPQ = 960


@pytest.fixture
def grid() -> Grid:
    """4/4 at 100 BPM for four bars (9.6 s), then 3/4 at 72 BPM."""
    return Grid((Tempo(0.0, 600_000), Tempo(16.0, 833_333)), (Meter(0.0, 4, 4), Meter(16.0, 3, 4)))


def two_section_primer(path: Path) -> Path:
    """The primer of issue #19, made with mido: four bars of 4/4 at 100 BPM, then two of 3/4 at 72 BPM; every
    note a little off the beat (37 ticks late), so a quantize that touched the primer would show."""
    song = mido.MidiFile(ticks_per_beat=TPQ)
    track = mido.MidiTrack()
    song.tracks.append(track)
    track.append(mido.MetaMessage("set_tempo", tempo=600_000, time=0))
    track.append(mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0))
    events = []  # (tick, kind, pitch): 16 quarter notes of 4/4, then 6 quarter notes of 3/4
    for beat in range(22):
        start = beat * TPQ + 37
        events += [(start, "note_on", 60 + beat % 12), (start + TPQ // 2, "note_off", 60 + beat % 12)]
    events += [(16 * TPQ, "set_tempo", 833_333), (16 * TPQ, "time_signature", 0)]
    now = 0
    for tick, kind, value in sorted(events, key=lambda e: (e[0], e[1] != "set_tempo")):
        if kind == "set_tempo":
            track.append(mido.MetaMessage("set_tempo", tempo=value, time=tick - now))
        elif kind == "time_signature":
            track.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=tick - now))
        else:
            track.append(mido.Message(kind, note=value, velocity=70 if kind == "note_on" else 0, time=tick - now))
        now = tick
    song.save(path)
    return path


def note_ticks(path: Path) -> np.ndarray:
    """(onset tick, pitch) rows of a MIDI file's notes, as a DAW counts them."""
    score = symusic.Score(str(path))
    notes = np.concatenate([track.notes.numpy()["time"] for track in score.tracks])
    pitches = np.concatenate([track.notes.numpy()["pitch"] for track in score.tracks])
    order = np.lexsort((pitches, notes))
    return np.stack([notes[order], pitches[order]], axis=1).astype(np.int64)


# -- the grid math ----------------------------------------------------------------------------------------------

def test_seconds_and_quarters_round_trip_through_a_tempo_change(grid):
    seconds = np.linspace(-1.0, 40.0, 997)
    assert np.allclose(grid.seconds(grid.quarters(seconds)), seconds, atol=1e-9)
    assert grid.quarters(9.6) == pytest.approx(16.0)
    assert grid.seconds(19.0) == pytest.approx(9.6 + 3 * 0.833333)
    assert grid.tempo_changes()[1][0] == pytest.approx(9.6) and grid.tempo_changes()[1][1] == pytest.approx(72.0, 1e-4)


def test_bar_and_beat_lines_follow_the_tempo_map_and_the_time_signatures(grid):
    bars = grid.bar_lines(17.0)
    assert np.allclose(bars, [0.0, 2.4, 4.8, 7.2, 9.6, 9.6 + 2.5, 9.6 + 5.0], atol=1e-5)
    assert np.allclose(grid.beat_lines(3.0), [0.0, 0.6, 1.2, 1.8, 2.4, 3.0])
    assert np.allclose(np.diff(grid.beat_lines(14.0, since=9.6)), 0.833333, atol=1e-6)
    compound = Grid.constant(90, 6, 8)  # 6/8 counts two dotted quarters a bar
    assert np.allclose(compound.beat_lines(4.5), [0.0, 1.0, 2.0, 3.0, 4.0], atol=1e-5)
    assert np.allclose(compound.bar_lines(4.5), [0.0, 2.0, 4.0], atol=1e-5)


def test_a_meter_change_inside_a_bar_starts_a_new_bar():
    grid = Grid((Tempo(0.0, 500_000),), (Meter(0.0, 4, 4), Meter(6.0, 3, 4)))  # the second 4/4 bar cut at beat 3
    assert np.allclose(grid.quarters(grid.bar_lines(10.0)), [0.0, 4.0, 6.0, 9.0, 12.0, 15.0, 18.0])
    assert grid.after_bars(0.0, 3) == pytest.approx(9.0)


def test_bars_give_the_seconds_to_a_bar_line(grid):
    assert Grid.constant(90, 6, 8).bars_seconds(0.0, 4) == pytest.approx(8.0, abs=1e-5)
    assert grid.bars_seconds(0.0, 5) == pytest.approx(9.6 + 2.5, abs=1e-5)  # across the change to 3/4
    assert grid.bars_seconds(9.6, 2) == pytest.approx(5.0, abs=1e-5)
    assert grid.bars_seconds(9.65, 1) == pytest.approx(2.45, abs=1e-5)  # a hair after a bar line counts from it
    assert grid.bars_seconds(8.0, 1) == pytest.approx(9.6 + 2.5 - 8.0, abs=1e-5)  # mid-bar: that bar, then one
    assert grid.bars_seconds(30.0, 1) > 0


def test_quantize_moves_onsets_to_the_grid_with_strength_and_swing():
    grid = Grid.constant(120)  # a quarter is 0.5 s, an eighth 0.25 s
    onsets = np.array([0.02, 0.26, 0.49, 0.71, 1.1])
    assert np.allclose(quantize(onsets, grid, 0.5), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert np.allclose(quantize(onsets, grid, 0.5, strength=0.5), (onsets + [0.0, 0.25, 0.5, 0.75, 1.0]) / 2)
    swung = quantize(onsets, grid, 0.5, swing=1 / 3)  # off-beats a third of an eighth late: the triplet feel
    assert np.allclose(swung, [0.0, 0.25 + 0.25 / 3, 0.5, 0.75 + 0.25 / 3, 1.0])
    assert np.allclose(quantize(onsets, grid, 0.5, not_before=0.3), [0.5, 0.5, 0.5, 0.75, 1.0])


def test_quantize_counts_from_each_bar_line(grid):
    onsets = grid.seconds(np.array([16.3, 17.6, 21.9]))  # in the 3/4 section
    assert np.allclose(grid.quarters(quantize(onsets, grid, 1.0)), [16.0, 18.0, 22.0])
    odd = Grid.constant(120, 5, 8)  # bars of 2.5 quarters: a half-note grid ends each bar on its bar line
    assert np.allclose(odd.quarters(quantize(odd.seconds(np.array([2.3, 3.1])), odd, 2.0)), [2.5, 2.5])


def test_bad_grid_values_are_one_line_errors():
    assert parse_meter("6/8") == (6, 8) and parse_subdivision("1/16") == 0.25
    assert parse_subdivision("1/8t") == pytest.approx(1 / 3)
    for text in ("6/7", "0/4", "3", "3/4/4", "x/4"):
        with pytest.raises(GridError, match="time signature"):
            parse_meter(text)
    for text in ("1/3", "2/16", "16", "1/128"):
        with pytest.raises(GridError, match="note value"):
            parse_subdivision(text)
    with pytest.raises(GridError, match="BPM"):
        Grid.constant(0.5)
    with pytest.raises(GridError, match="swing"):
        quantize([0.0], Grid.constant(), 0.25, swing=0.7)


# -- MIDI files ---------------------------------------------------------------------------------------------------

def test_a_files_tempo_map_and_time_signatures_are_read_and_written_back(tmp_path):
    primer = read_performance(two_section_primer(tmp_path / "primer.mid"))
    assert [(round(t, 6), round(b, 3)) for t, b in primer.grid.tempo_changes()] == [(0.0, 100.0), (9.6, 72.0)]
    assert [(round(t, 6), n, d) for t, n, d in primer.grid.meter_changes()] == [(0.0, 4, 4), (9.6, 3, 4)]
    write_performance(primer, tmp_path / "again.mid")
    again = read_performance(tmp_path / "again.mid")
    assert again.grid == primer.grid  # the same tempos, signatures and resolution
    assert np.array_equal(note_ticks(tmp_path / "again.mid"), note_ticks(tmp_path / "primer.mid"))


def test_a_performance_built_in_memory_is_written_at_120_bpm_in_4_4(tmp_path):
    write_performance(Performance.from_notes([0.0, 0.5], [0.4, 1.0], [60, 64], [80, 80]), tmp_path / "a.mid")
    song = mido.MidiFile(tmp_path / "a.mid")
    metas = [m for m in song.tracks[0] if m.type in ("set_tempo", "time_signature")]
    assert [(m.type, getattr(m, "tempo", None)) for m in metas] == [("time_signature", None), ("set_tempo", 500000)]
    assert note_ticks(tmp_path / "a.mid")[:, 0].tolist() == [0, song.ticks_per_beat]


# -- the command line ---------------------------------------------------------------------------------------------

def test_continue_keeps_the_tempo_map_the_3_4_section_and_the_primers_notes(tiny_model_dir, tmp_path, capsys):
    primer = two_section_primer(tmp_path / "primer.mid")
    out = tmp_path / "more.mid"
    assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "3", "--out", str(out),
                 "--seed", "2"]) == 0
    assert "tempo 100 BPM 4/4 (2 tempos, 2 time signatures)" in capsys.readouterr().out
    written = read_performance(out)
    assert written.grid == read_performance(primer).grid
    song = mido.MidiFile(out)
    assert song.ticks_per_beat == TPQ
    primer_ticks, out_ticks = note_ticks(primer), note_ticks(out)
    assert len(out_ticks) > len(primer_ticks)
    assert np.array_equal(out_ticks[:len(primer_ticks)], primer_ticks)  # the primer's notes on their very ticks


def test_quantize_at_strength_1_puts_every_new_onset_on_the_grid_and_leaves_the_primer(tiny_model_dir, tmp_path):
    primer = two_section_primer(tmp_path / "primer.mid")
    out = tmp_path / "more.mid"
    assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "4", "--out", str(out),
                 "--seed", "4", "--quantize", "1/16", "--strength", "1"]) == 0
    primer_ticks, out_ticks = note_ticks(primer), note_ticks(out)
    assert np.array_equal(out_ticks[:len(primer_ticks)], primer_ticks)  # 37 ticks off the beat, as written
    new = out_ticks[len(primer_ticks):, 0]
    assert len(new) > 0 and new.min() >= 22 * TPQ  # after the primer's last bar line began
    assert (new % (TPQ // 4) == 0).all()  # every 3/4 bar starts on a sixteenth, so the grid is every 240 ticks


def test_swing_plays_the_off_beats_late(tiny_model_dir, tmp_path):
    out = tmp_path / "swung.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "6", "--out", str(out), "--seed", "5",
                 "--quantize", "1/8", "--swing", "0.5"]) == 0
    ticks = note_ticks(out)[:, 0]
    tpq = mido.MidiFile(out).ticks_per_beat
    within = ticks % tpq  # an eighth grid swung by half an eighth: on the beat, or three quarters of it after
    assert len(ticks) and set(within.tolist()) <= {0, 3 * tpq // 4}


def test_a_new_piece_with_bpm_and_meter_reads_back_with_them(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "new.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--bars", "2", "--bpm", "90", "--meter", "6/8",
                 "--out", str(out), "--seed", "1"]) == 0
    assert "tempo 90 BPM 6/8; 2 bars: 4.0 s of new music" in capsys.readouterr().out
    grid = read_performance(out).grid
    assert grid.tempos == (Tempo(0.0, 666_667),) and grid.meters == (Meter(0.0, 6, 8),)
    metas = {m.type: m for m in mido.MidiFile(out).tracks[0] if m.is_meta}
    assert (metas["time_signature"].numerator, metas["time_signature"].denominator) == (6, 8)
    assert mido.tempo2bpm(metas["set_tempo"].tempo) == pytest.approx(90, abs=1e-3)
    score = symusic.Score(str(out))
    ends = np.concatenate([t.notes.numpy()["time"] + t.notes.numpy()["duration"] for t in score.tracks])
    assert ends.max() <= 2 * 3 * score.tpq  # the piece ends on its second bar line, not past it


def test_bars_of_a_continuation_count_on_the_primers_grid(tiny_model_dir, tmp_path, capsys):
    primer = two_section_primer(tmp_path / "primer.mid")  # its last note ends mid-bar, in a bar of 3/4 at 72
    assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--bars", "2", "--out",
                 str(tmp_path / "more.mid"), "--seed", "3"]) == 0
    grid = read_performance(primer).grid
    end = read_performance(primer).duration
    assert grid.bar_start(grid.quarters(end)) == pytest.approx(19.0)  # the last note ends in the bar at 19
    expected = grid.seconds(28.0) - round(end, 2)  # the rest of that bar (to 22), then two bars of 3 quarters
    assert f"2 bars: {expected:.1f} s of new music" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--bpm", "0"], "--bpm: must be 4 to 1000"),
    (["--meter", "5/7"], "--meter: a time signature's denominator"),
    (["--quantize", "1/5"], "--quantize: a grid is a note value"),
    (["--strength", "1.5", "--quantize", "1/8"], "--strength: must be between 0 and 1"),
    (["--swing", "0.6", "--quantize", "1/8"], "--swing: must be between 0 and 0.5"),
    (["--bars", "2", "--seconds", "3"], "not allowed with argument"),
    (["--bars", "0"], "--bars: must be >= 1"),
])
def test_bad_grid_flags_are_refused_in_one_line(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--out", str(tmp_path / "x.mid"), *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and message in err, err


def test_strength_without_quantize_is_an_error_and_continue_takes_no_bpm(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(out), "--strength", "0.5"]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: --strength and --swing go with --quantize") and err.count("\n") == 1
    assert not out.exists()
    primer = two_section_primer(tmp_path / "primer.mid")
    with pytest.raises(SystemExit):
        main(["continue", str(primer), "--model", str(tiny_model_dir), "--out", str(out), "--bpm", "90"])
    assert "unrecognized arguments: --bpm 90" in capsys.readouterr().err


# -- the studio -------------------------------------------------------------------------------------------------

@pytest.fixture
def studio_piece(tmp_path):
    import os

    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from studio.document import Piece

    return Piece(read_performance(two_section_primer(tmp_path / "primer.mid")), Performance.empty())


def test_the_roll_draws_bar_lines_at_the_tempo_maps_seconds(qtbot, studio_piece):
    from studio.pianoroll import PX_PER_SECOND, PianoRoll

    roll = PianoRoll()
    qtbot.addWidget(roll)
    roll.resize(1200, 500)
    roll.set_piece(studio_piece)
    roll.view.zoom(1.0 / roll.view.x_scale)  # 60 pixels a second: every beat is drawn
    bars, beats = roll.grid_lines(0.0, 17.0)
    assert [n for n, _ in bars] == [1, 2, 3, 4, 5, 6, 7]
    assert np.allclose([t * PX_PER_SECOND for _, t in bars], np.array([0, 2.4, 4.8, 7.2, 9.6, 12.1, 14.6]) * 60,
                       atol=1e-3)
    assert np.allclose(np.diff(beats)[:3], 0.6) and np.allclose(np.diff(beats)[-3:], 0.833333, atol=1e-5)
    roll.view.zoom(0.01)  # far out: bars thinned to every 2nd, 4th, ..., beats left out
    bars, beats = roll.grid_lines(0.0, 200.0)
    assert beats == [] and len(bars) > 1 and bars[0][0] == 1 and (bars[1][0] - 1) & (bars[1][0] - 2) == 0
    roll.grab()  # paints the background and the ruler with their bars


def test_a_new_piece_has_120_bpm_4_4_and_the_playhead_and_selections_snap_to_beats(qtbot, studio_piece):
    from studio.document import Piece
    from studio.pianoroll import PianoRoll

    roll = PianoRoll()
    qtbot.addWidget(roll)
    roll.set_piece(Piece.empty())
    assert roll.grid.describe() == "120 BPM 4/4" and roll.snap(1.13) == pytest.approx(1.0)
    roll.set_piece(studio_piece)
    assert roll.snap(9.9) == pytest.approx(9.6) and roll.snap(10.3) == pytest.approx(9.6 + 0.833333)
    roll.select_span(0.55, 2.3, 0, 127)  # snapped to the beats at 0.6 and 2.4 s: the notes of beats 2 to 4
    primer, _generated = roll.selected()
    assert primer == [1, 2, 3]
    x = roll.view.mapFromScene(9.9 * 60, 0).x()
    roll.ruler._place(x)
    assert roll.playhead == pytest.approx(9.6)
    roll.ruler._place(x, snap=False)  # Alt held
    assert roll.playhead == pytest.approx(9.9, abs=0.05)


def test_drag_out_files_carry_the_tempo_map_and_time_signatures(studio_piece, tmp_path, monkeypatch):
    import tempfile
    from dataclasses import replace

    from studio.document import Piece
    from studio.dragout import drag_file

    new = Performance.from_notes([15.0, 15.5], [15.4, 16.0], [60, 64], [80, 80])
    piece = Piece(studio_piece.primer, replace(new, grid=studio_piece.primer.grid))
    # the drag folder lies in the temp folder, shared by every process of the machine: this test's own
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    whole = drag_file(piece.whole, "grid-whole")
    part = drag_file(piece.generated, "grid-new")
    for path in (whole, part):
        assert read_performance(path).grid == studio_piece.primer.grid
    assert np.allclose(read_performance(part).onset, [15.0, 15.5], atol=1e-3)  # to the nearest tick
    assert len(read_performance(whole)) == len(studio_piece.primer) + 2
    edited = piece.without([0], [])  # an edit keeps the grid
    assert edited.grid == studio_piece.primer.grid and edited.whole.grid == studio_piece.primer.grid
    assert Piece.empty().grid.describe() == "120 BPM 4/4"
