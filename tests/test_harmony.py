"""The harmony pull (core/harmony.py): the pitch classes sounding around a passage as a prior on a denoiser's keys;
infill applies it (`harmony`, `recital infill --harmony`), 0 turns it off, a bad weight is one clear error. A
left-to-right model's lanes are pulled towards the primer's last KEY_SECONDS, by default (`PrimerHarmony`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core import notecodec, tokenizer
from core.cli import main
from core.harmony import (
    HARMONY_SECONDS,
    HARMONY_WEIGHT,
    KEY_SECONDS,
    LEFT_TO_RIGHT_WEIGHT,
    SMOOTHING,
    HarmonyError,
    PrimerHarmony,
    default_weight,
    key_ids,
    key_pull,
    music_near,
    pitch_class_shares,
    with_harmony,
)
from core.infill import infill
from core.midi import Performance, read_performance, write_performance
from core.modeldir import save_model
from tests.conftest import PIANO_PIECE
from tests.test_infill import tiny
from tests.test_metrics import tiny_dsmr_of

pytestmark = pytest.mark.usefixtures("one_thread")


def chords(pitches: list[int], start: float, end: float, step: float = 0.5) -> Performance:
    """The same chord struck every `step` seconds over [start, end)."""
    onsets = np.arange(start, end, step)
    onset = np.repeat(onsets, len(pitches))
    return Performance.from_notes(onset, onset + step * 0.9, np.tile(np.array(pitches), len(onsets)),
                                  np.full(len(onset), 70))


def identity(logits: torch.Tensor, _ids: torch.Tensor) -> torch.Tensor:
    return logits


def test_the_pull_favours_the_classes_that_sound_and_rules_none_out():
    c_major = chords([48, 60, 64, 67], 0.0, 4.0)  # C twice as long as E or G
    shares = pitch_class_shares(c_major)
    assert shares.argmax() == 0 and shares[4] == pytest.approx(shares[7]) and shares.sum() == pytest.approx(1.0)
    assert shares.min() == pytest.approx(SMOOTHING / 12)  # the classes never played keep a little weight
    pull = key_pull(c_major, weight=1.0)
    assert pull[60] == 0 and pull[72] == 0 and pull[64] == pytest.approx(np.log(shares[4] / shares[0]))
    assert np.isfinite(pull).all() and pull[61] < pull[64] < 0
    assert np.allclose(key_pull(c_major, weight=2.0), 2 * pull)


@pytest.mark.parametrize("codec", [notecodec, tokenizer])
def test_the_pull_chooses_which_key_never_whether_a_note_comes(codec):
    """On the codec's key ids (Pitch, or NoteOn) the logits move by the pull and are renormalised: the keys
    together keep the model's probability; nothing else moves; a slot where no key may go stays as it was."""
    c_major = chords([48, 60, 64, 67], 0.0, 4.0)
    first = notecodec.PITCH if codec is notecodec else tokenizer.NOTE_ON
    torch.manual_seed(0)
    logits = torch.randn(2, 5, codec.VOCAB_SIZE)
    logits[1, 3, first:first + 128] = float("-inf")  # e.g. a slot the codec's order keeps for a Duration
    pulled = with_harmony(identity, c_major, codec, weight=1.0)(logits.clone(), None)
    keys = slice(first, first + 128)
    assert torch.equal(pulled[..., :first], logits[..., :first])
    assert torch.equal(pulled[..., first + 128:], logits[..., first + 128:])
    mass = torch.logsumexp(logits[..., keys], -1)
    assert torch.allclose(torch.logsumexp(pulled[..., keys], -1)[torch.isfinite(mass)], mass[torch.isfinite(mass)])
    assert torch.equal(pulled[1, 3], logits[1, 3])
    moved = pulled[0, 0, keys] - logits[0, 0, keys]
    assert torch.allclose(moved - moved[60], torch.from_numpy(key_pull(c_major)).float(), atol=1e-5)


def test_no_notes_or_no_weight_no_pull_and_a_bad_weight_is_refused():
    assert key_pull(Performance.empty()) is None and key_pull(chords([60], 0.0, 1.0), weight=0.0) is None
    assert with_harmony(identity, Performance.empty(), notecodec) is identity
    for bad in (-0.5, float("nan"), float("inf")):
        with pytest.raises(HarmonyError, match="harmony weight must be a number >= 0"):
            key_pull(chords([60], 0.0, 1.0), weight=bad)


def test_the_music_near_a_passage_is_what_sounds_within_harmony_seconds():
    piece = Performance.concat(Performance.concat(chords([60], 0.0, 1.0), chords([62], 10.0, 11.0)),
                               chords([65], 30.0, 31.0))  # C 0-0.95 s, D 10-10.95 s, F 30-30.95 s
    assert HARMONY_SECONDS == 8.0
    assert set(music_near(piece, 22.0, 23.0).pitch.tolist()) == {65}  # from 14 s: D ended before
    assert set(music_near(piece, 8.5, 9.0).pitch.tolist()) == {60, 62}  # from 0.5 s: the C struck at 0.5 s rings
    assert set(music_near(piece, 9.0, 9.5).pitch.tolist()) == {62}  # to 17.5 s: F comes later


@pytest.mark.parametrize("codec", ["notes", "performance"])
def test_a_strong_pull_keeps_the_new_notes_in_the_classes_around_the_region(codec):
    """An untrained model writes all sorts of keys; pulled hard, only the classes sounding around the region."""
    model = tiny(codec=codec)
    around = Performance.concat(chords([48, 55, 60, 64, 67], 0.0, 4.0), chords([48, 55, 60, 64, 67], 8.0, 12.0))
    allowed = {0, 4, 7}

    def classes(harmony: float) -> set[int]:
        found = set()
        for result in infill(model, around, 4.0, 8.0, variations=3, seed=5, density=6.0, harmony=harmony):
            inside = (result.onset >= 4.0) & (result.onset < 8.0)
            found |= set((result.pitch[inside] % 12).tolist())
        return found

    free = classes(0.0)
    assert free - allowed  # the model left alone strays outside C major's triad
    pulled = classes(50.0)
    assert pulled and pulled <= allowed


def test_recital_infill_takes_a_harmony_weight_and_refuses_a_negative_one(tmp_path, capsys, isolated_dirs):
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    model = save_model(tiny(codec="notes"), tmp_path / "smdim", "# Tiny SMDIM\n\nRandom weights, for tests only.\n")
    out = tmp_path / "out.mid"
    with pytest.raises(SystemExit) as stop:
        main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(model), "--harmony", "-1",
              "--out", str(out)])
    assert stop.value.code != 0
    assert "--harmony: must be >= 0 (0: off), got -1" in capsys.readouterr().err and not out.exists()
    assert main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(model), "--harmony", "0",
                 "--seed", "1", "--out", str(out)]) == 0
    assert out.exists()


@pytest.mark.parametrize("codec", [notecodec, tokenizer])
def test_a_left_to_right_continuation_is_pulled_by_the_primers_last_key_seconds(codec):
    """Every lane gets one fixed pull: the pitch classes of the primer's last KEY_SECONDS; an F# that ended
    before them counts for nothing."""
    c_major = chords([48, 60, 64, 67], 2.0, 2.0 + KEY_SECONDS + 2.0)
    primer = Performance.from_notes(np.r_[0.0, c_major.onset], np.r_[1.0, c_major.offset], np.r_[66, c_major.pitch],
                                    np.r_[70, c_major.velocity])
    harmony = PrimerHarmony(codec, codec.encode(primer, eos=False), weight=1.0)
    assert np.allclose(harmony.shift.numpy(), key_pull(c_major), atol=1e-5)
    assert harmony.shift[66] < harmony.shift[67] < harmony.shift[60] == 0  # C sounds twice in each chord
    logits = torch.zeros(3, codec.VOCAB_SIZE)
    pulled = harmony.pull(logits)
    keys = key_ids(codec)
    assert torch.equal(pulled[0], pulled[2]) and set(pulled[:, keys].argmax(-1).remainder(12).tolist()) <= {0, 4, 7}
    assert torch.allclose(torch.logsumexp(pulled[:, keys], -1), torch.logsumexp(logits[:, keys], -1))


def test_a_new_piece_has_no_key_to_keep():
    for codec in (notecodec, tokenizer):
        harmony = PrimerHarmony(codec, np.array([codec.BOS]), weight=1.0)
        logits = torch.randn(2, codec.VOCAB_SIZE)
        assert harmony.shift is None and harmony.pull(logits) is logits


def test_each_family_has_its_own_default_pull():
    assert default_weight(tiny_dsmr_of("notes")) == LEFT_TO_RIGHT_WEIGHT > 0
    assert default_weight(tiny(codec="notes")) == HARMONY_WEIGHT


@pytest.mark.parametrize("codec", ["notes", "performance"])
def test_a_strong_pull_keeps_a_left_to_right_continuation_in_the_primers_classes(codec):
    """An untrained model writes all sorts of keys after a C major primer; pulled hard, only the primer's classes;
    a bad weight is refused before anything is written."""
    from core.codecs import codec_named
    from core.generate import generate, prepare_primer

    model = tiny_dsmr_of(codec)
    module = codec_named(codec)
    primer = prepare_primer(module.encode(chords([48, 55, 60, 64, 67], 0.0, 4.0), eos=False), module.VOCAB_SIZE)

    def classes(harmony: float) -> set[int]:
        state = model.new_state(model.plan(1 << 20, 3), 3)
        lanes = np.stack(list(generate(model, primer, state, seed=3, max_tokens=300, max_seconds=4.0,
                                       stop_at_eos=False, harmony=harmony)), axis=1)  # the primer stays near
        notes = module.decode_continuations(primer.numpy(), list(lanes), with_primer=False)
        return set().union(*((notes.pitch % 12).tolist() for notes in notes))

    free = classes(0.0)
    assert free - {0, 4, 7}  # the model left alone strays outside C major's triad
    pulled = classes(50.0)
    assert pulled and pulled <= {0, 4, 7}
    with pytest.raises(HarmonyError, match="harmony weight must be a number >= 0"):
        next(generate(model, primer, model.new_state(model.plan(1 << 20, 1), 1), max_tokens=5, harmony=-1.0))


def test_recital_continue_pulls_a_left_to_right_model_towards_the_primers_key_by_default(
        tiny_model_dir, tmp_path, capsys, isolated_dirs):
    primer = tmp_path / "primer.mid"
    write_performance(chords([48, 60, 64, 67], 0.0, 4.0), primer)

    def continued(*flags: str) -> Performance:
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}.mid"
        assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "3", "--seed", "4",
                     "--no-adapt", "--out", str(out), *flags]) == 0
        return read_performance(out)

    def notes(piece: Performance) -> list[tuple]:
        return list(zip(piece.onset.tolist(), piece.pitch.tolist(), strict=True))

    plain = notes(continued())
    assert plain == notes(continued("--harmony", f"{LEFT_TO_RIGHT_WEIGHT}"))  # pulled towards the primer's key
    assert notes(continued("--harmony", "0")) != notes(continued("--harmony", "50"))
    with pytest.raises(SystemExit) as stop:
        main(["continue", str(primer), "--model", str(tiny_model_dir), "--harmony", "-1", "--out",
              str(tmp_path / "x.mid")])
    assert stop.value.code != 0 and "--harmony: must be >= 0 (0: off), got -1" in capsys.readouterr().err
