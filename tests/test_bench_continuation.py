"""bench/continuation.py: the excerpt cut, and its main path on a tiny model and two fixture pieces."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bench import continuation
from core.midi import Performance
from core.tokenizer import TICK_SECONDS, decode, encode
from tests.conftest import midi_files

ROWS = ("notes held > 4 s", "notes cut at the 8 s --max-note", "re-strikes within 120 ms",
        "mean polyphony (notes sounding)", "notes/s", "pitch range (semitones)",
        "onset regularity at the primer's beat", "key = primer's or closely related",
        "bits/s of the truth given the primer", "median pitch range (semitones)", "notes below C4 (%)",
        "velocity mean", "velocity std", "repeated pitch 8-grams per minute", "MGEval mean overlap vs first")


def test_cut_ends_a_crossing_note_at_the_boundary_and_keeps_the_primer_a_prefix():
    perf = Performance.from_notes([0.0, 1.5, 1.996, 2.0, 3.5, 4.2], [1.0, 2.5, 2.1, 2.2, 5.0, 4.5],
                                  [60, 64, 65, 67, 72, 74], [80, 70, 60, 90, 100, 50])
    excerpt = continuation.cut("piece", perf, continuation.Windows(primer=2.0, truth=2.0))
    assert excerpt.primer.pitch.tolist() == [60, 64]  # 1.996 s rounds to the 2 s tick: the truth's
    assert excerpt.primer.offset.tolist() == [1.0, 2.0]  # the note crossing 2 s ended there
    assert excerpt.truth.pitch.tolist() == [65, 67, 72]  # 4.2 s is past the window
    assert excerpt.truth.offset[-1] == 4.0  # ended at the window's end
    assert excerpt.start == pytest.approx(2.0)
    ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
    assert np.array_equal(ids, encode(Performance.concat(excerpt.primer, excerpt.truth), eos=False))
    both = decode(ids)
    assert len(both) == 5 and np.all(np.abs(both.onset - np.sort([0, 1.5, 1.996, 2.0, 3.5])) <= TICK_SECONDS)


def test_bad_options_are_refused_in_one_line(capsys):
    with pytest.raises(SystemExit):
        continuation.parse_args(["--adapt", "maybe"])
    assert "--adapt takes off, on or off,on" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        continuation.parse_args(["--seeds", "0"])
    for bad in ("-1", "0,x", ",", "nan"):
        with pytest.raises(SystemExit):
            continuation.parse_args(["--harmony", bad])
        assert f"--harmony takes weights >= 0 or 'default', comma-separated; got '{bad}'" in capsys.readouterr().err
    assert continuation.parse_args(["--harmony", "0, 1.5,default"]).harmony == [0.0, 1.5, None]
    assert continuation.parse_args([]).harmony == [None]  # each model as `recital continue` pulls it


def test_a_harmony_weight_is_a_column_of_its_own(tiny_model_dir, tmp_path, capsys, one_thread):
    pieces = two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    assert continuation.main(["--midi", str(pieces), "--models", str(tiny_model_dir), "--seeds", "1", "--adapt",
                              "off", "--harmony", "default,50", "--windows", "4", "3", "5", "--variations", "1",
                              "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["continuations"]) == set(result["new_pieces"]) - {"MAESTRO 5-10 s"} == {"tiny",
                                                                                            "tiny +harmony 50"}
    assert result["continuations"]["tiny"]["stats"] != result["continuations"]["tiny +harmony 50"]["stats"]


def test_a_density_ceiling_is_a_column_of_its_own_and_new_pieces_are_written_once(tiny_model_dir, tmp_path,
                                                                                   capsys, one_thread):
    for bad in ("fast", "100", "-1", ","):
        with pytest.raises(SystemExit):
            continuation.parse_args(["--max-density", bad])
        assert f"--max-density takes 'primer', 0 or notes/s from 0.25 to 40, comma-separated; got '{bad}'" in (
            capsys.readouterr().err)
    assert continuation.parse_args([]).max_density == ["primer"]  # as `recital continue` steers
    pieces = two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    assert continuation.main(["--midi", str(pieces), "--models", str(tiny_model_dir), "--seeds", "2", "--adapt",
                              "off", "--max-density", "primer,0,0.25", "--windows", "4", "3", "5", "--variations",
                              "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["continuations"]) == {"tiny", "tiny max-density 0", "tiny max-density 0.25"}
    assert set(result["new_pieces"]) - {"MAESTRO 5-10 s"} == {"tiny"}  # no primer, no ceiling: written once
    lowest = result["continuations"]["tiny max-density 0.25"]["stats"]
    free = result["continuations"]["tiny max-density 0"]["stats"]
    assert sum(row["notes_per_second"] for row in lowest) < sum(row["notes_per_second"] for row in free)


def test_main_prints_every_row_on_a_tiny_model(tiny_model_dir, tmp_path, capsys, one_thread):
    pieces = two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    code = continuation.main(["--midi", str(pieces), "--models", str(tiny_model_dir), "--seeds", "2",
                              "--windows", "4", "3", "5", "--variations", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for row in ROWS:
        assert row in printed, row
    assert "seconds adapting before the first note" in printed
    result = json.loads(out.read_text())
    assert len(result["continuations"]["tiny"]["stats"]) == 2 * 2  # pieces x seeds
    assert len(result["continuations"]["tiny"]["bits_per_second"]) == 2
    assert all(b > 0 for b in result["continuations"]["tiny"]["bits_per_second"])
    tiny = result["continuations"]["tiny"]
    assert [sum(kinds.values()) for kinds in tiny["bits_per_second_by_kind"]] == pytest.approx(
        tiny["bits_per_second"], rel=1e-9)  # the kinds split each piece's bits
    assert len(tiny["pulled_bits_per_second"]) == 2  # under its default key and beat pulls
    assert "  of which NoteOn ids" in printed and "and under the column's key and beat pulls" in printed
    assert "the same with the column's memory of the piece" in printed and "repeated pitch 8-grams per minute (loops)" in printed
    assert tiny["remembered_bits_per_second"] == pytest.approx(tiny["bits_per_second"], rel=1e-6)  # events: no memory
    assert len(result["new_pieces"]["tiny"]["stats"]) == 2
    adapted = result["continuations"]["tiny +adapt"]
    assert len(adapted["bits_per_second"]) == len(adapted["adapt_seconds"]) == 2
    assert adapted["bits_per_second"] != result["continuations"]["tiny"]["bits_per_second"]
    assert "tiny +adapt" not in result["new_pieces"]  # a new piece has no primer to adapt to


def test_new_only_writes_the_new_pieces_table_alone(tiny_model_dir, tmp_path, capsys, one_thread):
    pieces = two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    code = continuation.main(["--new-only", "--midi", str(pieces), "--models", str(tiny_model_dir),
                              "--windows", "4", "3", "5", "--variations", "3", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "MGEval mean overlap" in printed
    assert "bits/s of the truth given the primer" not in printed  # no continuation was written
    result = json.loads(out.read_text())
    assert result["continuations"] == {}
    assert len(result["new_pieces"]["tiny"]["stats"]) == 3
    assert set(result["new_pieces"]) == {"tiny", "MAESTRO 5-10 s"}  # adaptation never applies to a new piece
    with pytest.raises(SystemExit):
        continuation.parse_args(["--new-only", "--controls"])


def test_a_folder_without_midi_stops_with_one_line(tmp_path):
    with pytest.raises(SystemExit) as stop:
        continuation.main(["--midi", str(tmp_path)])
    assert "no MIDI data at" in str(stop.value.code)


CONTROL_ROWS = ("pitch class in the primer's key (%)", "pitch in C3-C6 (%)", "velocity in 40-90 (%)",
                "at most 4 sounding at each onset (%)", "notes/s at density 2 (error)",
                "notes/s at density 6 (error)", "notes/s at density 12 (error)")


def test_controls_prints_every_row_on_a_tiny_model(tiny_model_dir, tmp_path, capsys, one_thread):
    pieces = two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    code = continuation.main(["--controls", "--midi", str(pieces), "--models", str(tiny_model_dir), "--seeds", "2",
                              "--windows", "4", "3", "5", "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for row in CONTROL_ROWS:
        assert row in printed, row
    assert "bits/s of the truth given the primer" not in printed  # --controls: that table alone
    controls = json.loads(out.read_text())["controls"]["tiny"]
    assert set(controls["obeyed"]) == {"key", "range", "velocity", "polyphony"}
    assert len(controls["notes_per_second"]["6"]) == 2 * 2  # pieces x seeds


def test_polyphony_at_onsets_counts_the_primer_and_not_a_note_just_ended():
    before = Performance.from_notes([0.0, 0.5], [2.0, 1.0], [60, 64], [80, 80])
    new = Performance.from_notes([1.0, 1.5, 3.0], [4.0, 1.8, 3.5], [67, 71, 72], [80, 80, 80])
    assert continuation.polyphony_at_onsets(before, new).tolist() == [2, 3, 2]


def test_a_denoiser_continues_through_the_session_and_has_no_bits_per_second():
    from tests.test_smdim import tiny

    model = tiny().eval()
    assert continuation.denoises(model)
    primer = encode(Performance.from_notes([0.0, 0.5], [0.4, 0.9], [60, 64], [80, 80]), eos=False)
    lanes = continuation.write_lanes(model, primer, 2.0, 2, seed=0)
    assert len(lanes) == 2 and all(lane.dtype == np.int64 for lane in lanes)
    notes = continuation.new_notes(primer, lanes, 1.0)
    assert all(len(part) == 0 or part.onset.min() >= 1.0 - 1e-9 for part in notes)
    again = continuation.write_lanes(model, primer, 2.0, 2, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(lanes, again, strict=True))  # seeded
    column = continuation.Column("smdim")
    table = continuation.continuation_table(continuation.Column("truth"), [column], continuation.Windows())
    line = next(row for row in table.splitlines() if row.startswith("bits/s of the truth given the primer"))
    assert line.split("primer", 1)[1].split()[:2] == ["-", "-"]  # the truth's cell, then the denoiser's


def test_cut_in_the_notes_codec_keeps_the_primer_a_prefix_and_starts_at_its_last_onset():
    from core import notecodec
    from core.codecs import codec_named

    perf = Performance.from_notes([0.0, 1.5, 1.996, 2.0, 3.5], [1.0, 2.5, 2.1, 2.2, 5.0],
                                  [60, 64, 65, 67, 72], [80, 70, 60, 90, 100])
    events = continuation.cut("piece", perf, continuation.Windows(primer=2.0, truth=2.0))
    notes = events.coded(notecodec)
    assert notes.codec == "notes" and notes.coded(notecodec) is notes
    assert events.coded(codec_named("performance")) is events
    assert notes.start == pytest.approx(1.5)  # the primer's last onset: its clock, not its last release
    ids = np.concatenate([notes.primer_ids, notes.truth_ids])
    assert np.array_equal(ids, notecodec.encode(Performance.concat(notes.primer, notes.truth), eos=False))
    after = notecodec.decode_after(notes.primer_ids, notes.truth_ids)
    assert after.pitch.tolist() == [65, 67, 72] and after.onset[0] == pytest.approx(2.0)


def test_new_notes_of_a_notes_lane_keep_a_new_note_at_the_primers_last_onset():
    from core import notecodec

    primer = notecodec.encode(Performance.from_notes([0.0, 1.0], [0.5, 1.5], [60, 64], [80, 80]), eos=False)
    start = notecodec.ids_seconds(primer)
    lane = np.array([notecodec.PITCH + 67, notecodec.DURATION + 20, notecodec.TIME_SHIFT + 49,
                     notecodec.PITCH + 72, notecodec.DURATION + 20])  # one note at 1.0 s, one at 1.5 s
    (notes,) = continuation.new_notes(primer, [lane], start, notecodec)
    assert notes.pitch.tolist() == [67, 72] and notes.onset.tolist() == pytest.approx([1.0, 1.5])


def tiny_notes_model_dir(tmp_path):
    """A tiny DSMR on the notes codec, random weights (seeded), saved under `tmp_path`."""
    import torch

    from core.modeldir import save_model
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    return save_model(DSMR(DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=256,
                                      n_long=1, default_budget="256KB", codec="notes")),
                      tmp_path / "tiny-notes", "# Tiny notes model\n\nRandom weights, for tests only.\n")


def two_piano_pieces(tmp_path):
    """A folder of two of tests/data's piano pieces: a MAESTRO stand-in."""
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for path in midi_files("piano")[:2]:
        shutil.copy(path, pieces / path.name)
    return pieces


def test_a_notes_model_and_a_performance_model_in_one_table(tiny_model_dir, tmp_path, capsys, one_thread):
    notes_dir, pieces = tiny_notes_model_dir(tmp_path), two_piano_pieces(tmp_path)
    out = tmp_path / "out.json"
    code = continuation.main(["--midi", str(pieces), "--models", f"{tiny_model_dir},{notes_dir}", "--seeds", "2",
                              "--adapt", "off", "--windows", "4", "3", "5", "--variations", "2",
                              "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for row in ROWS:
        assert row in printed, row
    cut = next(line for line in printed.splitlines() if line.startswith("notes cut at the 8 s"))
    assert cut.split()[-2:] == ["-", "0"]  # the notes model's cell, then the aim
    longest = next(line for line in printed.splitlines() if line.startswith("notes at the longest duration bin"))
    assert longest.split()[-3] == "-"  # the performance model's cell
    result = json.loads(out.read_text())["continuations"]
    assert result["tiny"]["codec"] == "performance" and result["tiny-notes"]["codec"] == "notes"
    for label in ("tiny", "tiny-notes"):
        bits = result[label]["bits_per_second"]
        assert len(bits) == 2 and all(np.isfinite(b) and b > 0 for b in bits)
        assert len(result[label]["stats"]) == 2 * 2
    assert all(row["at_longest_bin"] <= row["held_long"] for row in result["tiny-notes"]["stats"])  # 8 s > 4 s


def test_the_truth_is_scored_in_the_models_codec():
    import torch

    from core import notecodec
    from core.budget import default_budget
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    model = DSMR(DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=256, n_long=1,
                            codec="notes")).eval()
    perf = Performance.from_notes([0.0, 0.5, 1.0, 2.5, 3.0], [0.4, 0.9, 1.4, 2.9, 3.4], [60, 62, 64, 65, 67],
                                  [80, 80, 80, 80, 80])
    excerpt = continuation.cut("piece", perf, continuation.Windows(primer=2.0, truth=2.0))
    notes = excerpt.coded(notecodec)
    ids = torch.as_tensor(np.concatenate([notes.primer_ids, notes.truth_ids]))
    with torch.inference_mode():
        logits = model.read(ids[None, :-1], model.new_state(model.plan(default_budget(model, 1), 1), 1))[0]
        log_probs = torch.log_softmax(logits.float(), -1).gather(1, ids[1:, None])[:, 0].double().numpy()
    truth_nats = -log_probs[len(notes.primer_ids) - 1:].sum()
    assert continuation.truth_bits_per_second(model, excerpt, 2.0) == pytest.approx(
        truth_nats / np.log(2) / 2.0, rel=1e-5)


def test_the_truth_under_the_pulls_is_scored_as_the_generator_draws_it_id_by_id():
    """`truth_bits` pulls the same logits as `core.generate` does: the keys towards the primer's pitch classes, the
    time steps towards its beat, the beat's clock read id by id as the generator reads what it drew."""
    import torch

    from core import notecodec
    from core.budget import default_budget
    from core.harmony import PrimerHarmony
    from core.models.dsmr import DSMR, DSMRConfig
    from core.pulse import PrimerPulse

    torch.manual_seed(0)
    model = DSMR(DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=256, n_long=1,
                            codec="notes")).eval()
    onsets = np.concatenate([np.arange(0.0, 8.0, 0.5), [8.25, 8.5, 9.0, 9.75, 10.0, 11.0]])  # a beat, then off it
    scale = np.array([60, 62, 64, 65, 67, 69, 71, 72])
    perf = Performance.from_notes(onsets, onsets + 0.3, scale[np.arange(len(onsets)) % 8],
                                  np.where(np.arange(len(onsets)) % 2, 60, 90))
    excerpt = continuation.cut("piece", perf, continuation.Windows(primer=8.0, truth=4.0)).coded(notecodec)
    ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
    first = len(excerpt.primer_ids) - 1
    with torch.inference_mode():
        logits = model.read(torch.as_tensor(ids[None, :-1]), model.new_state(model.plan(default_budget(model, 1), 1),
                                                                            1))[0].float()
    keys = PrimerHarmony(notecodec, excerpt.primer_ids, 0.5)
    beat = PrimerPulse(notecodec, excerpt.primer_ids, 1, 2.0)
    assert keys.shift is not None and beat.active  # both pulls act on this primer
    plain, pulled, durations = 0.0, 0.0, 0.0
    for t in range(first, len(ids) - 1):
        row = logits[t:t + 1]
        nats = -float(torch.log_softmax(row, -1)[0, ids[t + 1]])
        plain += nats
        durations += nats if notecodec.DURATION <= ids[t + 1] < notecodec.TIME_SHIFT else 0.0
        pulled -= float(torch.log_softmax(beat.pull(keys.pull(row)), -1)[0, ids[t + 1]])
        beat.read(ids[t + 1:t + 2])  # the generator follows each lane's clock through the id it drew
    bits = continuation.truth_bits(model, excerpt, 4.0, harmony=0.5, pulse=2.0)
    assert bits.model == pytest.approx(plain / np.log(2) / 4.0, rel=1e-5)
    assert bits.pulled == pytest.approx(pulled / np.log(2) / 4.0, rel=1e-5)
    assert bits.pulled != pytest.approx(bits.model, rel=1e-3)  # the pulls moved the truth's likelihood
    # by kind: every note of the truth has its Pitch and Duration, a Velocity (60 and 90 by turns), TimeShifts
    assert set(bits.by_kind) == {"Pitch", "Duration", "TimeShift", "Velocity"}
    assert sum(bits.by_kind.values()) == pytest.approx(bits.model, rel=1e-9)
    assert bits.by_kind["Duration"] == pytest.approx(durations / np.log(2) / 4.0, rel=1e-5)
    unpulled = continuation.truth_bits(model, excerpt, 4.0)
    assert unpulled.pulled == pytest.approx(unpulled.model, rel=1e-6) == bits.model  # no pulls: the model's own
