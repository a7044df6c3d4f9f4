"""Composer constraints (core/constraints.py): parsed with one-line errors, held exactly by what every model writes
(scale lock, range, velocity, polyphony: decoded from the output), density steered the asked way, the primer
never changed; the CLI flags and the studio's Write panel controls."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import notecodec, tokenizer
from core.cli import main
from core.codecs import ONSET, codec_named
from core.constraints import ConstraintError, Constraints, key_of, parse_key, parse_note, parse_range
from core.midi import Performance, read_performance
from core.modeldir import load_model
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.session import GenerationSession
from core.tokenizer import BOS, NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, VOCAB_SIZE, decode, encode
from tests.test_cli_generate import rejected
from tests.test_studio_window import dialogs  # noqa: F401  (the fixture)

D_MINOR = {2, 4, 5, 7, 9, 10, 0}


@pytest.fixture(scope="module")
def models(tiny_model_dir, one_thread) -> dict:
    """The tiny DSMR of conftest and a tiny PerceiverS, both random."""
    torch.manual_seed(0)
    perceivers = PerceiverS(PerceiverSConfig(context=64, latents=16, scale=32, d_model=32, n_heads=2, n_layers=1,
                                             default_budget="256KB"))
    return {"dsmr": load_model(tiny_model_dir), "perceivers": perceivers.eval()}


def primer() -> Performance:
    """Loud notes outside D minor and outside C3-C6: what constraints must keep."""
    onset = np.array([0.0, 0.3, 0.6, 0.9, 1.2])
    return Performance.from_notes(onset, np.array([0.5, 0.8, 2.0, 2.0, 1.5]), np.array([20, 61, 66, 110, 73]),
                                  np.full(5, 124))


def sounding_after_primer(perf: Performance) -> set[int]:
    ids = encode(perf, eos=False)
    sounding: set[int] = set()
    for token in ids.tolist():
        if NOTE_ON <= token < NOTE_OFF:
            sounding.add(token - NOTE_ON)
        elif NOTE_OFF <= token < TIME_SHIFT:
            sounding.discard(token - NOTE_OFF)
    return sounding


# -- the property: what a constrained model writes ------------------------------------------------------------

@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), arch=st.sampled_from(["dsmr", "perceivers"]), from_nothing=st.booleans())
def test_a_constrained_model_never_writes_outside_its_limits_and_keeps_the_primer(models, seed, arch,
                                                                                  from_nothing):
    constraints = Constraints.parse(key="D minor", range_="C3-C6", velocity="90-127", max_polyphony=2, density=6)
    given_primer = None if from_nothing else decode(encode(primer()))  # on the codec's grid
    session = GenerationSession(models[arch], given_primer, seconds=6, variations=3, seed=seed,
                                constraints=constraints)
    session.run()
    assert session.constraints == constraints
    for lane, (piece, new) in enumerate(zip(session.pieces(), session.new_parts(), strict=True)):
        assert len(new) > 0
        assert set((new.pitch % 12).tolist()) <= D_MINOR  # the scale lock
        assert new.pitch.min() >= 48 and new.pitch.max() <= 84  # C3-C6, exactly
        assert new.velocity.min() >= 90  # the default velocity (66) was replaced before the first note
        old = piece.onset < session.start_time - 1e-9  # the primer's notes, as they were
        if given_primer is not None:
            assert np.array_equal(piece.pitch[old], given_primer.pitch)
            assert np.array_equal(piece.velocity[old], given_primer.velocity)
            assert np.allclose(piece.onset[old], given_primer.onset)
        sounding = set() if given_primer is None else sounding_after_primer(given_primer)
        for token in session.lanes[lane]:  # polyphony, replayed from the ids written
            if NOTE_ON <= token < NOTE_OFF:
                sounding.add(token - NOTE_ON)
                assert len(sounding) <= 2
            elif NOTE_OFF <= token < TIME_SHIFT:
                sounding.discard(token - NOTE_OFF)
        for onset in new.onset:  # and as the file sounds: a note begun and ended at one tick lasts that tick
            assert int(((piece.onset <= onset + 1e-9) & (piece.offset > onset + 1e-9)).sum()) <= 2


def test_pitch_classes_lock_with_temperature_top_p_and_a_budget(models):
    from core.generate import SamplingConfig

    constraints = Constraints.parse(pitch_classes="0,2,4,7,9", velocity="40-60")
    session = GenerationSession(models["dsmr"], primer(), seconds=8, variations=2, seed=4, budget="64KB",
                                sampling=SamplingConfig(temperature=1.5, top_p=0.8), constraints=constraints)
    session.run()
    for new in session.new_parts():
        assert set((new.pitch % 12).tolist()) <= {0, 2, 4, 7, 9}
        assert 40 <= new.velocity.min() and new.velocity.max() <= 60


def rate(model, density: float | None, seeds=(1, 2, 3)) -> float:
    """Mean notes/s of what is written from nothing, over seeds and 4 lanes each."""
    rates = []
    for seed in seeds:
        session = GenerationSession(model, None, seconds=10, variations=4, seed=seed,
                                    constraints=Constraints(density=density))
        session.run()
        rates += [len(new) / 10 for new in session.new_parts()]
    return float(np.mean(rates))


@pytest.mark.parametrize("arch", ["dsmr", "perceivers"])
def test_density_steers_notes_per_second_the_asked_way(models, arch):
    free, sparse, dense = (rate(models[arch], density) for density in (None, 2.0, 12.0))
    assert sparse < free < dense
    assert dense > 2 * sparse


def test_a_key_from_the_primer(models):
    c_major = Performance.from_notes(np.arange(8) * 0.5, np.arange(8) * 0.5 + 0.45,
                                     np.array([60, 62, 64, 65, 67, 69, 71, 72]), np.full(8, 80))
    assert key_of(c_major)[0] == "C major"
    session = GenerationSession(models["dsmr"], c_major, seconds=4, seed=1,
                                constraints=Constraints.parse(key="primer"))
    assert session.constraints.pitch_classes == frozenset({0, 2, 4, 5, 7, 9, 11})
    assert "C major (from the primer)" in session.constraints.describe()
    session.run()
    assert set((session.new_parts()[0].pitch % 12).tolist()) <= {0, 2, 4, 5, 7, 9, 11}
    with pytest.raises(ConstraintError, match="needs a primer with notes"):
        GenerationSession(models["dsmr"], None, seconds=4, constraints=Constraints.parse(key="primer"))


# -- the masks ----------------------------------------------------------------------------------------------------

def test_the_token_mask_forbids_exactly_the_notes_and_velocities_outside_and_never_a_note_off():
    constraints = Constraints.parse(key="F# major", range_="C4-B4", velocity="40-90")
    mask = constraints.token_mask()
    assert mask.shape == (VOCAB_SIZE,)
    allowed_on = (torch.nonzero(mask[NOTE_ON:NOTE_OFF] == 0)[:, 0]).tolist()
    assert allowed_on == [61, 63, 65, 66, 68, 70, 71]  # F# major between C4 and B4
    assert (mask[NOTE_OFF:VELOCITY] == 0).all() and (mask[:NOTE_ON] == 0).all()
    allowed_bins = (torch.nonzero(mask[VELOCITY:] == 0)[:, 0]).tolist()
    assert allowed_bins == list(range(10, 23))  # velocities 42 ... 90
    assert torch.isinf(mask[NOTE_ON + 60]) and torch.isinf(mask[VELOCITY + 9])


@pytest.mark.parametrize("codec", [tokenizer, notecodec, "notes"])
def test_the_token_mask_is_over_the_codecs_ids(codec):
    """The same pitches and velocity bins in either codec: its onset ids and its Velocity ids, nothing else."""
    module = codec_named(codec) if isinstance(codec, str) else codec
    constraints = Constraints.parse(key="F# major", range_="C4-B4", velocity="40-90")
    mask = constraints.token_mask(codec=codec)
    assert mask.shape == (module.VOCAB_SIZE,)
    forbidden = set(torch.nonzero(torch.isinf(mask))[:, 0].tolist())
    onsets = {ONSET + p for p in range(128) if p not in (61, 63, 65, 66, 68, 70, 71)}
    velocities = {module.VELOCITY + b for b in range(32) if not 10 <= b < 23}
    assert forbidden == onsets | velocities
    assert torch.equal(constraints.token_mask(module.VOCAB_SIZE + 5, codec=codec)[:module.VOCAB_SIZE], mask)


def test_the_tracker_forces_a_velocity_holds_polyphony_and_reads_the_primer():
    constraints = Constraints(velocity_low=100, max_polyphony=2)
    ids = np.array([BOS, VELOCITY + 12, NOTE_ON + 60, TIME_SHIFT + 9, NOTE_ON + 64])  # velocity 50, 2 sounding
    tracker = constraints.tracker(2, ids)
    mask = tracker.mask()
    assert mask.shape == (2, VOCAB_SIZE)
    finite = torch.isfinite(mask[0])  # velocity 50 is out: a Velocity in the range or the end of a sounding note
    assert finite[VELOCITY + 25:].all() and not finite[VELOCITY:VELOCITY + 25].any()
    assert finite[NOTE_OFF + 60] and finite[NOTE_OFF + 64] and not finite[NOTE_OFF + 62]
    assert not finite[NOTE_ON:NOTE_OFF].any() and not finite[TIME_SHIFT:VELOCITY].any()
    tracker.read(np.array([VELOCITY + 30, NOTE_OFF + 60]))
    mask = tracker.mask()
    assert torch.isinf(mask[0, NOTE_ON:NOTE_OFF]).all()  # lane 0: loud now, but two notes sound
    assert (mask[0, NOTE_OFF:VELOCITY] == 0).all()
    tracker.read(np.array([NOTE_OFF + 64, VELOCITY + 31]))
    mask = tracker.mask()
    assert (mask[:, NOTE_ON:NOTE_OFF] == 0).all()  # lane 0: one note sounds; lane 1: loud, one note sounds


@pytest.mark.parametrize("codec", [tokenizer, notecodec])
def test_without_a_density_the_tracker_adds_no_bias_and_with_one_it_pulls_toward_it(codec):
    ids = np.array([1], dtype=np.int64)
    assert (Constraints(max_polyphony=3).tracker(1, ids, codec=codec).mask() == 0).all()
    tracker = Constraints(density=8).tracker(1, ids, codec=codec)
    assert tracker.density_bias()[0] == 0  # a neutral start
    tracker.read(np.array([codec.TIME_SHIFT + 99]))  # a silent second
    assert tracker.density_bias()[0] > 0
    note = [ONSET + 60] if codec is tokenizer else [ONSET + 60, notecodec.DURATION]
    for _ in range(30):  # thirty notes at once
        for token in note:
            tracker.read(np.array([token]))
    assert tracker.density_bias()[0] < 0
    mask = tracker.mask()
    assert mask[0, ONSET] < 0 < mask[0, codec.TIME_SHIFT]


# -- words --------------------------------------------------------------------------------------------------------

def test_keys_notes_and_ranges_are_read():
    assert parse_key("D minor") == ("D minor", frozenset(D_MINOR))
    assert parse_key("f# Major")[1] == frozenset({6, 8, 10, 11, 1, 3, 5})
    assert parse_key("Bb dorian") == ("Bb dorian", frozenset({10, 0, 1, 3, 5, 7, 8}))
    assert parse_note("C4") == 60 and parse_note("A0") == 21 and parse_note("C-1") == 0 and parse_note("127") == 127
    assert parse_range("C2-C7") == (36, 96) and parse_range("36 - 96") == (36, 96) and parse_range("C-1-G9") == (0, 127)
    assert Constraints.parse(key="D minor", range_="C2-C7", velocity="40-90", density=6,
                             max_polyphony=4).describe() == ("key D minor (D E F G A Bb C), range C2-C7, velocity "
                                                             "40-90, density 6 notes/s (steered), at most 4 notes "
                                                             "at once")
    assert Constraints.parse(pitch_classes="7,0,4").describe() == "pitch classes C E G"
    assert Constraints().describe() == "none" and not Constraints().active


@pytest.mark.parametrize("build, message", [
    (lambda: parse_key("D"), "key 'D': expected a tonic and a mode"),
    (lambda: parse_key("H minor"), "key 'H minor': expected"),
    (lambda: parse_key("D blues"), "modes: major, minor"),
    (lambda: Constraints.parse(pitch_classes="0,2,12"), "pitch classes '0,2,12': expected whole numbers 0-11"),
    (lambda: Constraints.parse(pitch_classes="do,re"), "pitch classes 'do,re'"),
    (lambda: Constraints.parse(range_="C7-C2"), "the low note is above the high one"),
    (lambda: Constraints.parse(range_="C2"), "range 'C2': expected LOW-HIGH"),
    (lambda: Constraints.parse(range_="C2-C11"), "note 'C11' is outside MIDI's pitches"),
    (lambda: Constraints.parse(velocity="90-40"), "velocity must be two MIDI velocities 1-127, low first"),
    (lambda: Constraints.parse(velocity="0-40"), "velocity must be two MIDI velocities"),
    (lambda: Constraints.parse(velocity="40-41"), "holds none of the velocities a model writes"),
    (lambda: Constraints(density=0.0), "density must be 0.25 to 40 notes per second"),
    (lambda: Constraints(max_polyphony=0), "max polyphony must be at least 1"),
    (lambda: Constraints.parse(key="C major", pitch_classes="0,4,7"), "give a key or pitch classes, not both"),
    (lambda: Constraints.parse(pitch_classes="1,3", range_="60-60"), "no pitch of pitch classes 1,3 lies in"),
    (lambda: Constraints.parse(key="primer").token_mask(), "must be resolved against the primer"),
])
def test_bad_values_are_one_line(build, message):
    with pytest.raises(ConstraintError) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)


# -- the command line ---------------------------------------------------------------------------------------------

def test_generate_and_continue_take_the_constraint_flags(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "piece.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "5", "--out", str(out), "--seed", "3",
                 "--key", "D minor", "--range", "C3-C6", "--velocity", "40-90", "--density", "6",
                 "--max-polyphony", "3"]) == 0
    text = capsys.readouterr().out
    assert ("constraints: key D minor (D E F G A Bb C), range C3-C6, velocity 40-90, density 6 notes/s (steered), "
            "at most 3 notes at once") in text
    piece = read_performance(out)
    assert len(piece) and set((piece.pitch % 12).tolist()) <= D_MINOR
    assert piece.pitch.min() >= 48 and piece.pitch.max() <= 84
    assert piece.velocity.min() >= 40 and piece.velocity.max() <= 90
    from core.midi import write_performance

    write_performance(primer(), tmp_path / "primer.mid")
    cont = tmp_path / "cont.mid"
    # 8 s: the untrained model writes 0-3 notes in 3 s (too few to tell a key by), 3-11 in 8
    assert main(["continue", str(tmp_path / "primer.mid"), "--model", str(tiny_model_dir), "--seconds", "8",
                 "--out", str(cont), "--seed", "1", "--key", "primer", "--range", "C2-C7"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("constraints: "))
    key = line.removeprefix("constraints: key ").split(" (from the primer)")[0]
    assert line.endswith("range C2-C7") and key == key_of(primer())[0]
    new = read_performance(cont)
    new = new.pitch[new.onset >= primer().duration - 1e-6]
    assert len(new) and set((new % 12).tolist()) <= parse_key(key)[1]


@pytest.mark.parametrize("flag, value, message", [
    ("--key", "D blues", "key 'D blues': expected a tonic and a mode"),
    ("--pitch-classes", "0,13", "pitch classes '0,13'"),
    ("--range", "C7-C2", "the low note is above the high one"),
    ("--velocity", "40", "velocity '40': expected LOW-HIGH"),
    ("--density", "0", "must be 0.25 to 40 notes per second"),
    ("--max-polyphony", "0", "must be >= 1"),
])
def test_bad_constraint_flags_are_one_line(tiny_model_dir, tmp_path, capsys, flag, value, message):
    err = rejected(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"), flag, value],
                   capsys)
    assert flag in err and message in err


def test_flags_that_cannot_combine_are_one_error_line(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "x.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(out), "--key", "C major",
                 "--pitch-classes", "0,4,7"]) == 1
    assert capsys.readouterr().err == "error: give a key or pitch classes, not both\n"
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(out), "--key", "primer"]) == 1
    assert "needs a primer with notes" in capsys.readouterr().err
    assert not out.exists()


# -- the studio ---------------------------------------------------------------------------------------------------

def test_the_write_panel_limits_reach_the_request_and_the_session(qtbot, models):
    from studio.document import Piece, WriteControls
    from studio.generatepanel import GeneratePanel
    from studio.generation import session_for

    panel = GeneratePanel()
    qtbot.addWidget(panel)
    assert panel.request(Piece.empty(), 0.0).controls == WriteControls()  # nothing limited by default
    assert WriteControls().constraints() is None
    limits = panel.limits
    limits.key.setCurrentIndex(limits.key.findData("D minor"))
    limits.low.setValue(parse_note("C3"))
    limits.high.lineEdit().setText("C6")  # typed as a note name
    limits.high.interpretText()
    limits.density.setValue(6)
    limits.soft.setValue(40)
    limits.loud.setValue(90)
    assert limits.density_label.text() == "6 notes/s" and limits.low.text() == "C3"
    request = panel.request(Piece(primer(), Performance.empty()), 0.0)
    assert request.controls == WriteControls("D minor", 48, 84, 40, 90, 6.0)
    session = session_for(request, models["dsmr"])
    assert session.constraints == Constraints.parse(key="D minor", range_="C3-C6", velocity="40-90", density=6)
    limits.key.setCurrentIndex(limits.key.findData("primer"))
    panel.mode_new.setChecked(True)  # a new piece has no primer to read a key from: one line, before any step
    with pytest.raises(ConstraintError, match="needs a primer with notes"):
        session_for(panel.request(Piece(primer(), Performance.empty()), 0.0), models["dsmr"])
    limits.low.setValue(100)  # the range never turns over: low stops at high
    assert limits.low.value() == 84


def test_the_limits_are_kept_per_document(qtbot, tiny_model_dir, tmp_path, dialogs):  # noqa: F811
    from studio.document import WriteControls
    from studio.settings import Settings
    from studio.window import MainWindow

    w = MainWindow(Settings(model=str(tiny_model_dir)), extra_models=[tiny_model_dir], list_ports=False)
    qtbot.addWidget(w)
    limits = w.panel.limits
    limits.key.setCurrentIndex(limits.key.findData("Bb major"))
    limits.loud.setValue(100)
    assert w.document.controls == WriteControls(key="Bb major", velocity_high=100)
    from core.midi import write_performance

    write_performance(primer(), tmp_path / "other.mid")
    w.document.open(tmp_path / "other.mid")  # another piece: its own limits (none yet)
    assert w.document.controls == WriteControls() and limits.controls() == WriteControls()
    limits.density.setValue(3)
    assert w.document.controls == WriteControls(density=3.0)
    w.document.save(tmp_path / "saved.mid")  # saving keeps the document's limits
    assert limits.controls() == WriteControls(density=3.0) == w.document.controls
    w.jobs.shutdown()
