"""Trainer data: token-level augmentation, whole-piece DSMR lane streams, PerceiverS crop batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.midi import Performance, write_performance
from core.models.dsmr import DSMR, DSMRConfig
from core.tokenizer import BOS, EOS, NOTE_OFF, NOTE_ON, PAD, TIME_SHIFT, decode, encode
from tests.conftest import PIANO_PIECE
from trainer.augment import stretch, transpose
from trainer.corpus import Corpus
from trainer.data import CropBatches, LaneStream, PieceSource


def random_performance(rng: np.random.Generator, notes: int, low: int = 21, high: int = 108) -> Performance:
    onset = np.cumsum(rng.uniform(0.02, 0.6, notes))
    duration = rng.uniform(0.05, 1.5, notes)
    pitch = rng.integers(low, high + 1, notes)
    velocity = rng.integers(20, 120, notes)
    return Performance.from_notes(onset, onset + duration, pitch, velocity)


def write_folder(folder: Path, pieces: int, notes: int = 60, seed: int = 0) -> Path:
    """A folder of synthetic MIDI files of different lengths."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(pieces):
        write_performance(random_performance(rng, notes + 13 * i), folder / f"piece_{i:02d}.mid")
    return folder


@pytest.fixture
def corpus(tmp_path, monkeypatch) -> Corpus:
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    return Corpus.build(write_folder(tmp_path / "midi", 5, notes=20), workers=1)


# ---- augmentation --------------------------------------------------------------------------------------------

def _notes(perf: Performance) -> list[tuple]:
    return sorted(zip(perf.onset.round(2), perf.offset.round(2), perf.pitch, perf.velocity, strict=True))


@pytest.mark.parametrize("semitones", [-5, 3, 5])
def test_transpose_moves_every_note_and_drops_those_out_of_range(semitones):
    rng = np.random.default_rng(1)
    perf = random_performance(rng, 200, low=0, high=127)
    ids = encode(perf)
    moved = decode(transpose(ids, semitones))
    original = decode(ids)
    keep = (original.pitch + semitones >= 0) & (original.pitch + semitones <= 127)
    assert 0 < keep.sum() < len(original)  # the test covers dropped notes
    expected = Performance.from_notes(original.onset[keep], original.offset[keep], original.pitch[keep] + semitones,
                                      original.velocity[keep])
    assert _notes(moved) == _notes(expected)
    assert transpose(ids, 0) is ids


@pytest.mark.parametrize("factor", [0.95, 1.05])
def test_stretch_scales_every_time(factor):
    perf = random_performance(np.random.default_rng(2), 150)
    ids = encode(perf)
    out = stretch(ids, factor)
    assert out[0] == BOS and out[-1] == EOS
    shifts = out[(out >= TIME_SHIFT) & (out < TIME_SHIFT + 100)]
    assert len(shifts) > 0
    before, after = decode(ids), decode(out)
    assert len(after) == len(before)
    # Each time is rounded to the 10 ms grid once, so within one tick (plus the one-tick minimum duration).
    assert np.abs(np.sort(after.onset) - np.sort(before.onset) * factor).max() <= 0.0051
    assert np.array_equal(np.sort(after.pitch), np.sort(before.pitch))
    duration = after.offset.sum() - after.onset.sum()
    assert duration == pytest.approx((before.offset.sum() - before.onset.sum()) * factor, rel=0.02)


def test_stretch_of_long_gaps_writes_full_second_shifts():
    perf = Performance.from_notes(np.array([0.0, 3.5]), np.array([0.5, 4.0]), np.array([60, 62]),
                                  np.array([64, 64]))
    out = decode(stretch(encode(perf), 1.04))
    assert out.onset.tolist() == pytest.approx([0.0, 3.64])


def test_augmented_real_piece_keeps_its_notes_in_range():
    path = PIANO_PIECE
    from core.midi import read_performance
    from trainer.augment import augment

    ids = encode(read_performance(path))
    out = augment(ids, np.random.default_rng(0), 5, 0.05)
    notes = out[(out >= NOTE_ON) & (out < TIME_SHIFT)]
    assert out.dtype == ids.dtype and len(notes) > 0.99 * ((ids >= NOTE_ON) & (ids < TIME_SHIFT)).sum()
    assert out[0] == BOS and out[-1] == EOS


# ---- DSMR lane streams -----------------------------------------------------------------------------------------

def _lane_tokens(stream: LaneStream, lane: int, batches: int) -> tuple[np.ndarray, np.ndarray]:
    inputs, targets = zip(*[stream.next_batch() for _ in range(batches)], strict=True)
    return np.concatenate([x[lane] for x in inputs]), np.concatenate([y[lane] for y in targets])


def test_each_lane_walks_its_pieces_whole_and_in_order(corpus):
    source = PieceSource(corpus, list(range(len(corpus))), seed=3, augmenting=False)
    total_lanes, segment = 3, 16
    stream = LaneStream(source, [0, 1, 2], total_lanes, segment)
    inputs, targets = _lane_tokens(stream, 1, 40)  # 640 tokens of lane 1
    expected = np.concatenate([source.item(1 + k * total_lanes) for k in range(20)])
    assert np.array_equal(inputs, expected[:len(inputs)])
    # A piece's EOS predicts nothing; every other token predicts the next one; pieces begin with BOS.
    assert np.all(targets[inputs == EOS] == PAD)
    following = np.flatnonzero(inputs[:-1] != EOS)
    assert np.array_equal(targets[following], inputs[following + 1])
    assert np.all(inputs[np.flatnonzero(inputs[:-1] == EOS) + 1] == BOS)
    # The sequence cycles through every piece once per epoch, each epoch in its own order.
    first_epoch = sorted(int(np.asarray(source.item(n))[1:10].sum()) for n in range(len(source)))
    assert first_epoch == sorted(int(np.asarray(corpus.piece(i))[1:10].sum()) for i in range(len(corpus)))


def test_lanes_split_over_processes_read_the_same_tokens(corpus):
    source = PieceSource(corpus, list(range(len(corpus))), seed=0, augmenting=True)
    whole = LaneStream(source, [0, 1, 2, 3], 4, 16)
    halves = [LaneStream(source, [0, 1], 4, 16), LaneStream(source, [2, 3], 4, 16)]
    for _ in range(12):
        inputs, targets = whole.next_batch()
        parts = [h.next_batch() for h in halves]
        assert np.array_equal(inputs, np.concatenate([p[0] for p in parts]))
        assert np.array_equal(targets, np.concatenate([p[1] for p in parts]))


def test_a_stream_resumes_from_its_position(corpus):
    source = PieceSource(corpus, list(range(len(corpus))), seed=0, augmenting=True)
    stream = LaneStream(source, [0, 1], 2, 16)
    for _ in range(7):
        stream.next_batch()
    resumed = LaneStream(source, [0, 1], 2, 16, position=stream.position())
    for _ in range(5):
        a, b = stream.next_batch(), resumed.next_batch()
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_a_lane_resets_at_a_piece_boundary():
    """A piece starting inside a lane's segment gets the same logits as the piece read alone from a fresh state."""
    torch.manual_seed(0)
    model = DSMR(DSMRConfig(d_model=16, n_layers=2, n_heads=2, segment_len=8, max_horizon=32, n_long=1,
                            default_budget="64KB")).eval()
    rng = np.random.default_rng(0)
    first = np.concatenate([[BOS], rng.integers(3, 300, 11), [EOS]])  # 13 tokens: ends inside segment 2
    second = np.concatenate([[BOS], rng.integers(3, 300, 18), [EOS]])
    lane = np.concatenate([first, second])[:24]
    plan = model.plan("64KB", batch=1)
    with torch.no_grad():
        state = model.new_state(plan, 1)
        streamed = torch.cat([model(torch.as_tensor(lane[None, i:i + 8]), state) for i in range(0, 24, 8)], 1)
        alone = model(torch.as_tensor(second[None, :11]), model.new_state(plan, 1))
    assert torch.allclose(streamed[0, 13:24], alone[0], atol=1e-5)


# ---- PerceiverS crops --------------------------------------------------------------------------------------

def test_crop_batches_depend_only_on_step_and_item(corpus):
    source = PieceSource(corpus, list(range(len(corpus))), seed=0, augmenting=True)
    whole = CropBatches(source, [0, 1, 2, 3], context=64, latents=16)
    parts = [CropBatches(source, [0, 1], 64, 16), CropBatches(source, [2, 3], 64, 16)]
    inputs, targets = whole.batch(step=5, micro=1)
    assert inputs.shape == (4, 64) and targets.shape == (4, 16)
    split = [p.batch(5, 1) for p in parts]
    assert np.array_equal(inputs, np.concatenate([s[0] for s in split]))
    assert not np.array_equal(inputs, whole.batch(6, 1)[0])
    # Targets are the next tokens of the inputs' last positions.
    real = targets[:, :-1] != PAD
    assert np.array_equal(targets[:, :-1][real], inputs[:, -15:][real])
    assert ((inputs >= NOTE_ON) & (inputs < NOTE_OFF)).any()
