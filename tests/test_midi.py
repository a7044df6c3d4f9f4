"""read_performance / write_performance: tempo maps, pedal folding, merging, and every kind of bad input."""

from __future__ import annotations

import os

import mido
import numpy as np
import pytest

from core.errors import MidiError
from core.midi import (
    Performance,
    canonical,
    find_midi_files,
    fold_sustain,
    read_performance,
    write_performance,
)
from tests.conftest import DATA, PIANO_PIECE, midi_files


def write_mido(path, messages_per_track, ticks_per_beat=480, tempo=500000):
    """A MIDI file from (delta_ticks, mido.Message) lists, one list per track."""
    midi = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    for i, messages in enumerate(messages_per_track):
        track = mido.MidiTrack()
        if i == 0:
            track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
        for delta, message in messages:
            track.append(message.copy(time=delta))
        midi.tracks.append(track)
    midi.save(path)
    return path


def on(note, vel=80, ch=0):
    return mido.Message("note_on", note=note, velocity=vel, channel=ch)


def off(note, ch=0):
    return mido.Message("note_off", note=note, velocity=0, channel=ch)


def pedal(value, ch=0):
    return mido.Message("control_change", control=64, value=value, channel=ch)


def test_tempo_map_gives_seconds(tmp_path):
    # 480 ticks at 120 BPM = 0.5 s; then tempo halves to 60 BPM: 480 ticks = 1 s.
    midi = mido.MidiFile(ticks_per_beat=480)
    track = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=500000, time=0),
        on(60).copy(time=0), off(60).copy(time=480),
        mido.MetaMessage("set_tempo", tempo=1000000, time=0),
        on(62).copy(time=0), off(62).copy(time=480),
    ])
    midi.tracks.append(track)
    midi.save(tmp_path / "t.mid")
    perf = read_performance(tmp_path / "t.mid")
    np.testing.assert_allclose(perf.onset, [0.0, 0.5], atol=1e-4)
    np.testing.assert_allclose(perf.offset, [0.5, 1.5], atol=1e-4)


def test_sustain_pedal_extends_released_notes(tmp_path):
    # Pedal down at 0; C released at 0.25 s; pedal up at 1 s -> C sounds to 1 s. E released after the lift.
    path = write_mido(tmp_path / "p.mid", [[
        (0, pedal(127)), (0, on(60)), (240, off(60)), (0, on(64)),
        (720, pedal(0)), (240, off(64)),
    ]])
    perf = read_performance(path)
    assert perf.pitch.tolist() == [60, 64]
    np.testing.assert_allclose(perf.offset, [1.0, 1.25], atol=1e-4)


def test_restrike_under_pedal_ends_sustained_note(tmp_path):
    path = write_mido(tmp_path / "r.mid", [[
        (0, pedal(100)), (0, on(60)), (120, off(60)), (240, on(60)), (120, off(60)), (480, pedal(0)),
    ]])
    perf = read_performance(path)
    np.testing.assert_allclose(perf.onset, [0.0, 0.375], atol=1e-4)
    np.testing.assert_allclose(perf.offset, [0.375, 1.0], atol=1e-4)  # first ends at the re-strike


def test_pedal_held_to_end_of_file(tmp_path):
    path = write_mido(tmp_path / "h.mid", [[(0, pedal(127)), (0, on(60)), (240, off(60)), (0, on(62)),
                                            (960, off(62))]])
    perf = read_performance(path)
    np.testing.assert_allclose(perf.offset, [1.25, 1.25], atol=1e-4)  # to the last release


def test_fold_sustain_is_per_interval():
    onset = np.array([0.0, 2.0, 4.0])
    offset = np.array([0.5, 2.5, 4.5])
    folded = fold_sustain(onset, offset, np.array([0.1, 1.0, 2.2, 3.0]), np.array([127, 0, 127, 0]), 5.0)
    np.testing.assert_allclose(folded, [1.0, 3.0, 4.5])


def test_drums_dropped_and_tracks_merged(tmp_path):
    path = write_mido(tmp_path / "m.mid", [
        [(0, on(60)), (480, off(60))],
        [(240, on(67, ch=1)), (480, off(67, ch=1))],
        [(0, on(36, ch=9)), (100, off(36, ch=9))],
    ])
    perf = read_performance(path)
    assert perf.pitch.tolist() == [60, 67]


def test_same_pitch_doubled_in_two_tracks_is_one_note():
    perf = canonical([0.0, 0.004, 1.0], [0.5, 0.8, 1.5], [60, 60, 60], [50, 90, 70])
    assert len(perf) == 2
    np.testing.assert_allclose(perf.offset, [0.8, 1.5])
    assert perf.velocity.tolist() == [90, 70]


def test_write_then_read_round_trip(tmp_path, scale):
    write_performance(scale, tmp_path / "out.mid")
    back = read_performance(tmp_path / "out.mid")
    np.testing.assert_allclose(back.onset, scale.onset, atol=2e-3)
    np.testing.assert_allclose(back.offset, scale.offset, atol=2e-3)
    assert back.pitch.tolist() == scale.pitch.tolist()
    assert back.velocity.tolist() == scale.velocity.tolist()
    assert mido.MidiFile(tmp_path / "out.mid").type in (0, 1)  # a strict reader opens it too


def test_write_leaves_no_temporary_files(tmp_path, scale):
    write_performance(scale, tmp_path / "a.mid")
    assert [p.name for p in tmp_path.iterdir()] == ["a.mid"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.mid").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("path", midi_files("piano", "pop", "multitrack"), ids=lambda p: p and p.name)
def test_real_files_read(path):
    perf = read_performance(path)
    assert len(perf) > 500
    assert np.all(np.diff(perf.onset) >= 0)
    assert np.all(perf.offset >= perf.onset)
    assert perf.pitch.min() >= 0 and perf.pitch.max() <= 127
    assert perf.velocity.min() >= 1 and perf.velocity.max() <= 127


def test_piano_pedal_lengthens_notes():
    path = PIANO_PIECE
    perf = read_performance(path)
    raw = mido.MidiFile(path)
    assert any(m.type == "control_change" and m.control == 64 for m in raw.tracks[-1])
    # Folding makes the mean sounding time clearly longer than the keys are held.
    import symusic
    notes = symusic.Score(path, ttype="second").tracks[0].notes.numpy()
    assert (perf.offset - perf.onset).mean() > 1.3 * notes["duration"].mean()


# ---- bad input: always MidiError with the path, never another exception, never a write ----------------

def test_out_of_range_controller_read_leniently_or_rejected_strictly():
    path = DATA / "broken" / "control-168.mid"
    perf = read_performance(path)
    assert len(perf) > 1000
    with pytest.raises(MidiError, match="corrupt MIDI data.*168"):
        read_performance(path, strict=True)


def test_file_without_notes():
    path = DATA / "broken" / "empty.mid"
    with pytest.raises(MidiError, match="no notes"):
        read_performance(path)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (os.urandom(2000), "not a Standard MIDI File"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x00\x10\x00\x90\x3c", "corrupt"),
])
def test_bad_bytes(tmp_path, data, reason):
    path = tmp_path / "bad.mid"
    path.write_bytes(data)
    with pytest.raises(MidiError, match=reason) as error:
        read_performance(path)
    assert error.value.path == str(path)
    assert path.read_bytes() == data


def test_zero_tempo(tmp_path):
    ok = write_mido(tmp_path / "ok.mid", [[(0, on(60)), (480, off(60))]])
    data = bytearray(ok.read_bytes())
    at = data.index(b"\xff\x51\x03") + 3
    data[at:at + 3] = b"\0\0\0"
    path = tmp_path / "tempo0.mid"
    path.write_bytes(bytes(data))
    with pytest.raises(MidiError, match="invalid tempo of 0"):
        read_performance(path)


def test_absurdly_slow_tempo(tmp_path):
    # The slowest tempo a file can state (16.7 s per beat) with a note 4 million ticks in: weeks long.
    path = write_mido(tmp_path / "slow.mid", [[(4_000_000, on(60)), (480, off(60))]], tempo=0xFFFFFF)
    with pytest.raises(MidiError, match="stretches the piece to .* hours"):
        read_performance(path)


def test_huge_file_refused_without_reading(tmp_path):
    path = tmp_path / "huge.mid"
    with open(path, "wb") as handle:
        handle.write(b"MThd")
        handle.truncate(500 * 2**20)  # sparse: 500 MB on paper, nothing on disk
    with pytest.raises(MidiError, match="500 MB"):
        read_performance(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(MidiError, match="no such file"):
        read_performance(tmp_path / "nope.mid")
    with pytest.raises(MidiError, match="folder"):
        read_performance(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.mid"
    path.write_bytes(b"MThd")
    path.chmod(0)
    with pytest.raises(MidiError, match="cannot"):
        read_performance(path)


def test_unreadable_file_as_root(tmp_path, monkeypatch):
    """Root ignores permission bits, so simulate the OS refusing the read."""
    path = tmp_path / "locked.mid"
    path.write_bytes(b"MThd" + b"\0" * 20)

    def refuse(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("builtins.open", refuse)
    with pytest.raises(MidiError, match="cannot read the file \\(Permission denied\\)"):
        read_performance(path)


def test_find_midi_files(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ["x.MID", "a/y.midi", "a/b/z.kar", "a/notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in find_midi_files(tmp_path)] == ["y.midi", "z.kar", "x.MID"] or \
        sorted(p.name for p in find_midi_files(tmp_path)) == ["x.MID", "y.midi", "z.kar"]
    with pytest.raises(MidiError, match="no such folder"):
        find_midi_files(tmp_path / "missing")


def test_write_to_unwritable_place(tmp_path, scale):
    target = tmp_path / "file"
    target.write_bytes(b"keep")
    with pytest.raises(MidiError, match="cannot write"):
        write_performance(scale, target / "under_a_file.mid")
    assert target.read_bytes() == b"keep"


def test_performance_helpers(scale):
    assert len(scale) == 8 and scale.duration == pytest.approx(1.95)
    part = scale.slice_time(0.5, 1.0)
    assert part.pitch.tolist() == [64, 65]
    both = Performance.concat(scale, scale.shifted(2.0))
    assert len(both) == 16 and both.onset[-1] == pytest.approx(3.75)


# --- notes that never end ----------------------------------------------------------------------------------

def end_of_track():
    return mido.MetaMessage("end_of_track")


def test_a_note_that_never_ends_is_kept_until_its_track_ends(tmp_path):
    # 120 BPM: 480 ticks = 0.5 s. Pitch 60 has no NoteOff; its track ends at 1920 ticks (2 s).
    path = write_mido(tmp_path / "u.mid", [[(0, on(60)), (0, on(64)), (480, off(64)), (0, on(67)),
                                            (480, off(67)), (960, end_of_track())]])
    perf = read_performance(path)
    assert perf.unended == 1
    assert perf.pitch.tolist() == [60, 64, 67]
    assert perf.offset.tolist() == [2.0, 0.5, 1.0]


def test_a_key_struck_twice_and_released_once_leaves_the_second_strike_unended(tmp_path):
    path = write_mido(tmp_path / "twice.mid", [[(0, on(60)), (480, on(60)), (480, off(60)), (960, end_of_track())]])
    perf = read_performance(path)
    assert perf.unended == 1
    assert list(zip(perf.onset.tolist(), perf.offset.tolist(), strict=True)) == [(0.0, 0.5), (0.5, 2.0)]


def test_unended_notes_end_with_their_own_track_and_drums_stay_out(tmp_path):
    path = write_mido(tmp_path / "two.mid", [
        [(0, on(60)), (480, off(60)), (0, end_of_track())],  # ends at 0.5 s
        [(0, on(72)), (0, on(36, ch=9)), (480, on(74)), (480, off(74)), (960, end_of_track())],  # ends at 2 s
    ])
    perf = read_performance(path)
    assert perf.unended == 1  # the drum's NoteOn is not a piano note
    assert dict(zip(perf.pitch.tolist(), perf.offset.tolist(), strict=True)) == {60: 0.5, 72: 2.0, 74: 1.0}


def test_a_track_without_end_of_track_ends_its_notes_at_its_last_event(tmp_path):
    path = write_mido(tmp_path / "cut.mid", [[(0, on(60)), (0, on(62)), (480, off(62)), (480, pedal(0))]])
    data = path.read_bytes()
    assert data.endswith(b"\x00\xff\x2f\x00")  # mido adds End of Track: take it away, and fix the length
    start = data.index(b"MTrk")
    events = data[start + 8:-4]
    cut = tmp_path / "cut2.mid"
    cut.write_bytes(data[:start] + b"MTrk" + len(events).to_bytes(4, "big") + events)
    perf = read_performance(cut)
    assert perf.unended == 1 and perf.offset.tolist() == [1.0, 0.5]


def test_a_damaged_delta_time_of_many_continuation_bytes_is_read_as_at_most_four():
    """A run of 0x80+ bytes where a delta time stands is never one huge number: summed into ticks it overflowed
    int64 in the scan for unended notes (a file the fuzzer made: OverflowError instead of a reading or a MidiError)."""
    from core.midi import VARLEN_BYTES, _read_varlen, _unended_notes

    assert _read_varlen(b"\x81\x80\x80\x00", 0, 4) == (0x200000, 4)  # the standard's four bytes
    assert _read_varlen(b"\xff" * 12 + b"\x00", 0, 13) == (0x0FFFFFFF, VARLEN_BYTES)
    damaged = b"\xff" * 12 + b"\x00\x90\x3c\x40\x00\x90\x40\x40\x00\xff\x2f\x00"  # a delta of 13 bytes, notes
    data = (b"MThd" + (6).to_bytes(4, "big") + b"\x00\x00\x00\x01\x01\xe0"
            + b"MTrk" + len(damaged).to_bytes(4, "big") + damaged)
    rows = _unended_notes(data)  # read as 13 bytes it was 2^84 ticks: OverflowError
    assert rows.dtype == np.int64 and rows.shape[1] == 4


def test_the_probe_and_the_exact_scan_agree(tmp_path):
    from core.midi import _may_have_unended, _parse_score, _unended_notes

    files = {"clean": [[(0, on(60)), (480, off(60)), (0, on(62, vel=0))]],
             "unended": [[(0, on(60)), (480, on(61))]], "running": [[(0, on(60)), (480, on(60, vel=0))]],
             "drum only": [[(0, on(60)), (480, off(60)), (0, on(36, ch=9))]]}
    for name, tracks in files.items():
        path = write_mido(tmp_path / f"{name}.mid", tracks)
        data = path.read_bytes()
        expected = 2 if name == "unended" else 0  # a drum's NoteOn is no piano note, ended or not
        assert _may_have_unended(data, _parse_score(path, data, False).end(), False) == bool(expected), name
        assert len(_unended_notes(data)) == read_performance(path).unended == expected, name


def test_recital_corpus_counts_the_notes_that_never_ended(tmp_path, isolated_dirs, capsys):
    from core.cli import main

    folder = tmp_path / "pieces"
    folder.mkdir()
    write_mido(folder / "a.mid", [[(0, on(60)), (0, on(64)), (480, off(64)), (480, end_of_track())]])
    write_mido(folder / "b.mid", [[(0, on(62)), (0, on(65)), (0, on(69)), (960, end_of_track())]])
    write_mido(folder / "c.mid", [[(0, on(67)), (480, off(67))]])
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    assert "notes never ended  4 (kept, ended where their track ends)" in capsys.readouterr().out
    assert main(["corpus", str(folder), "--workers", "1"]) == 0  # from the cache: the same count
    assert "notes never ended  4 " in capsys.readouterr().out
