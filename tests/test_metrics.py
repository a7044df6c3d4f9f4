"""Evaluation: features against hand-computed values, OA/KLD behaviour, repetition, perplexity, `recital eval`."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from scipy import stats

from core import metrics
from core.cli import main
from core.errors import RecitalError
from core.midi import Performance, read_performance, write_performance
from core.tokenizer import BOS, EOS, VOCAB_SIZE, encode
from tests.conftest import midi_files

# --- synthetic pieces ----------------------------------------------------------------------------------------


@pytest.fixture
def chord() -> Performance:
    """C major triad struck 4 times, every 0.5 s, each 0.4 s long."""
    onset = np.repeat(np.arange(4) * 0.5, 3)
    return Performance.from_notes(onset, onset + 0.4, np.tile([60, 64, 67], 4), np.full(12, 80))


def c_major_piece(rng: np.random.Generator, notes: int = 200) -> Performance:
    """Random notes of the C major scale over two octaves, one every 0.25 s with a little timing noise."""
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    degree = rng.integers(0, 14, notes)
    pitch = 60 + 12 * (degree // 7) + scale[degree % 7]
    onset = np.arange(notes) * 0.25 + rng.uniform(0, 0.02, notes)
    return Performance.from_notes(onset, onset + 0.22, pitch, np.full(notes, 70))


def random_piece(rng: np.random.Generator, notes: int = 120) -> Performance:
    """Chromatic random notes over the whole keyboard with random timing and lengths."""
    onset = np.sort(rng.uniform(0, 40, notes))
    return Performance.from_notes(onset, onset + rng.uniform(0.02, 3.0, notes), rng.integers(21, 109, notes),
                                  rng.integers(20, 120, notes))


# --- per-piece features ---------------------------------------------------------------------------------------


def test_length_classes_are_half_octaves_from_62ms_to_2s():
    assert metrics.LENGTH_CLASSES == 12
    assert metrics.LENGTH_EDGES[0] == 0.0625 and metrics.LENGTH_EDGES[-1] == 2.0
    np.testing.assert_allclose(metrics.LENGTH_EDGES[1:] / metrics.LENGTH_EDGES[:-1], math.sqrt(2))
    assert metrics.length_class(np.array([0.0, 0.0625, 0.2, 0.4, 1.9, 2.0, 60.0])).tolist() == [0, 1, 4, 6, 10, 11, 11]


def test_scale_features_by_hand(scale):
    # C D E F G A B C', one every 0.25 s, 0.2 s long: 7 pitch classes, 8 notes, octave range.
    f = metrics.piece_features(scale, segments=4)
    assert f["PC"] == 7 and f["NC"] == 8 and f["PR"] == 12
    assert f["PI"] == pytest.approx(12 / 7)  # steps 2 2 1 2 2 2 1
    assert f["IOI"] == pytest.approx(0.25)
    pch = np.zeros(12)
    pch[[2, 4, 5, 7, 9, 11]] = 0.125
    pch[0] = 0.25  # two Cs
    np.testing.assert_allclose(f["PCH"], pch)
    pctm = np.zeros((12, 12))
    for a, b in [(0, 2), (2, 4), (4, 5), (5, 7), (7, 9), (9, 11), (11, 0)]:
        pctm[a, b] = 1 / 7
    np.testing.assert_allclose(f["PCTM"], pctm)
    np.testing.assert_allclose(f["NLH"], np.eye(12)[4])  # 0.2 s is in [177 ms, 250 ms)
    assert f["NLTM"][4, 4] == 1 and f["NLTM"].sum() == 1
    # 4 segments of (1.95 s / 4): two notes in each.
    np.testing.assert_array_equal(f["PC/seg"], [2, 2, 2, 2])
    np.testing.assert_array_equal(f["NC/seg"], [2, 2, 2, 2])
    np.testing.assert_allclose(f["IOI/seg"], [0.25] * 4)
    np.testing.assert_allclose(f["PCH/seg"][0], np.eye(12)[0] / 2 + np.eye(12)[2] / 2)
    np.testing.assert_allclose(f["PCH/seg"][3], np.eye(12)[11] / 2 + np.eye(12)[0] / 2)


def test_repeated_chord_features_by_hand(chord):
    f = metrics.piece_features(chord)
    assert f["PC"] == 3 and f["NC"] == 3 and f["PR"] == 7
    assert f["PI"] == pytest.approx(49 / 11)  # |4| |3| |-7| repeated, 11 intervals
    assert f["IOI"] == pytest.approx(1.5 / 11)  # chord notes count as 0-second intervals, as in mgeval
    np.testing.assert_allclose(f["PCH"][[0, 4, 7]], [1 / 3] * 3)
    assert f["PCTM"][0, 4] == pytest.approx(4 / 11) and f["PCTM"][7, 0] == pytest.approx(3 / 11)
    np.testing.assert_allclose(f["NLH"], np.eye(12)[6])  # 0.4 s is in [354 ms, 500 ms)
    assert {name: f[name].shape for name in metrics.FEATURES} == {
        "PC": (), "NC": (), "PCH": (12,), "PCTM": (12, 12), "PR": (), "PI": (), "IOI": (), "NLH": (12,),
        "NLTM": (12, 12), "PC/seg": (64,), "NC/seg": (64,), "PCH/seg": (64, 12), "IOI/seg": (64,)}
    # 1.9 s in 64 segments: 4 segments hold a strike; the silent ones read as sparse, not dense.
    assert (f["PC/seg"] > 0).sum() == 4 and f["PC/seg"].max() == 3
    assert f["IOI/seg"].max() == pytest.approx(1.9 / 64)


def test_empty_and_single_note_pieces_do_not_crash():
    empty = metrics.piece_features(Performance.empty())
    assert all(not np.any(value) for value in empty.values())
    one = metrics.piece_features(Performance.from_notes([1.0], [1.5], [60], [80]))
    assert one["PC"] == 1 and one["PI"] == 0 and one["IOI"] == pytest.approx(0.5)
    assert np.isfinite(np.concatenate([v.ravel() for v in one.values()])).all()


# --- overlap area and KL divergence --------------------------------------------------------------------------


def test_overlap_of_two_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    result = metrics.compare_distributions(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000))
    # Two unit Gaussians one sigma apart overlap by 2 * Phi(-1/2); KL(N(0,1) || N(1,1)) = 1/2.
    assert result.oa == pytest.approx(2 * stats.norm.cdf(-0.5), abs=0.03)
    assert result.kld == pytest.approx(0.5, abs=0.1)
    assert result.flags == ()


def test_identical_samples_overlap_fully_and_disjoint_ones_not_at_all():
    values = np.random.default_rng(1).gamma(2.0, 1.0, 300)
    same = metrics.compare_distributions(values, values)
    assert same.oa == pytest.approx(1.0, abs=1e-3) and same.kld == pytest.approx(0.0, abs=1e-6)
    apart = metrics.compare_distributions(values, values + 100)
    assert apart.oa < 1e-3 and apart.kld > 10


def test_zero_variance_is_flagged_not_crashed():
    both_equal = metrics.compare_distributions(np.zeros(20), np.zeros(30))
    assert both_equal.oa == pytest.approx(1.0, abs=1e-3) and both_equal.kld == pytest.approx(0.0, abs=1e-6)
    assert len(both_equal.flags) == 2
    both_apart = metrics.compare_distributions(np.full(20, 2.0), np.full(5, 9.0))
    assert both_apart.oa < 1e-3 and np.isfinite(both_apart.kld)
    one_flat = metrics.compare_distributions(np.full(20, 1.0), np.random.default_rng(2).normal(1.0, 0.5, 50))
    assert one_flat.flags == ("constant reference distances",)
    assert 0.3 < one_flat.oa < 1.0 and one_flat.kld >= 0
    single = metrics.compare_distributions(np.array([3.0]), np.array([3.0, 3.5]))
    assert 0 <= single.oa <= 1 and np.isfinite(single.kld)


def test_a_set_against_itself_overlaps_almost_fully():
    rng = np.random.default_rng(3)
    pieces = [c_major_piece(rng) for _ in range(12)]
    itself = metrics.compare_sets(pieces, pieces)
    # Inter-set distances also hold the 12 zero self-distances, so OA stays a little below 1.
    assert itself.mean_oa > 0.85
    fresh = metrics.compare_sets([c_major_piece(rng) for _ in range(12)], pieces)
    assert fresh.mean_oa > 0.7
    assert all(f.kld >= 0 for f in itself.features + fresh.features)


def test_random_notes_against_c_major_overlap_hardly_at_all():
    rng = np.random.default_rng(4)
    reference = [c_major_piece(rng) for _ in range(12)]
    generated = [random_piece(rng) for _ in range(12)]
    result = metrics.compare_sets(generated, reference)
    oa = {f.name: f.oa for f in result.features}
    for name in set(metrics.FEATURES) - {"PCH/seg"}:  # a 64th of a piece holds too few notes to tell
        assert oa[name] < 0.05, name
    assert result.mean_oa < 0.1
    assert all(f.kld >= 0 for f in result.features)
    assert set(result.to_json()["features"]) == set(metrics.FEATURES)


def test_identical_pieces_and_empty_pieces_give_defined_numbers(chord):
    result = metrics.compare_sets([chord, Performance.empty()], [chord, chord, chord])
    assert all(0 <= f.oa <= 1 and np.isfinite(f.kld) and f.kld >= 0 for f in result.features)
    assert "constant reference distances" in result.features[0].flags


def test_too_small_sets_are_refused(chord):
    with pytest.raises(RecitalError, match="at least 2"):
        metrics.compare_sets([chord], [chord])
    with pytest.raises(RecitalError, match="no pieces"):
        metrics.compare_sets([], [chord, chord])


def real_set(folder: str) -> list[Performance]:
    return [read_performance(path) for path in midi_files(folder)]


def test_piano_and_pop_sets_differ():
    piano, pop = real_set("piano"), real_set("pop")
    piano_features, pop_features = metrics.set_features(piano), metrics.set_features(pop)
    # Piano performances use more distinct notes than these pop arrangements.
    assert piano_features["NC"].min() > pop_features["NC"].max()
    held_out = metrics.compare_sets(piano[:4], piano[4:]).mean_oa
    other_style = metrics.compare_sets(pop, piano[4:]).mean_oa
    assert held_out > other_style + 0.1


# --- repetition -----------------------------------------------------------------------------------------------


def test_token_autocorrelation_by_hand():
    loop = np.array([BOS] + [10, 20, 30] * 40 + [EOS])  # BOS/EOS are dropped
    r = metrics.token_autocorrelation(loop, max_lag=6)
    # chance of a match = 3 * (1/3)^2 = 1/3; lag 1 never matches: (0 - 1/3) / (2/3).
    np.testing.assert_allclose(r, [-0.5, -0.5, 1.0, -0.5, -0.5, 1.0])
    np.testing.assert_allclose(metrics.token_autocorrelation(np.full(10, 7), 3), [1, 1, 1])
    assert len(metrics.token_autocorrelation(np.array([BOS, 5, EOS]))) == 0
    noise = np.random.default_rng(5).integers(3, 300, 20000)
    assert np.abs(metrics.token_autocorrelation(noise, 20)).max() < 0.02


def test_repeated_ngrams_per_minute_by_hand(chord):
    # 60 64 67 x4: 10 trigrams, 3 distinct -> 7 repeats in 1.9 s.
    assert metrics.repeated_ngrams_per_minute(chord, n=3) == pytest.approx(7 / (1.9 / 60))
    assert metrics.repeated_ngrams_per_minute(chord, n=3, intervals=True) == pytest.approx(7 / (1.9 / 60))
    assert metrics.repeated_ngrams_per_minute(chord, n=13) == 0.0


def test_transposed_repeats_count_only_as_intervals(scale):
    up = Performance.concat(scale, Performance(scale.onset + 2, scale.offset + 2, scale.pitch + 5,
                                                scale.velocity))
    assert metrics.repeated_ngrams_per_minute(up, n=8) == 0
    assert metrics.repeated_ngrams_per_minute(up, n=8, intervals=True) > 0


def test_repetition_stats_find_the_loop(scale):
    rng = np.random.default_rng(6)
    looped = [Performance.from_notes(np.concatenate([scale.onset + 2 * i for i in range(repeats)]),
                                     np.concatenate([scale.offset + 2 * i for i in range(repeats)]),
                                     np.tile(scale.pitch, repeats), np.tile(scale.velocity, repeats))
              for repeats in (15, 20, 25)]
    varied = [c_major_piece(rng) for _ in range(3)]
    loop_stats, varied_stats = metrics.repetition_stats(looped), metrics.repetition_stats(varied)
    for key in metrics.REPETITION_MEASURES.values():
        assert loop_stats.summary()[key]["mean"] > varied_stats.summary()[key]["mean"], key
    assert loop_stats.autocorrelation.shape == (metrics.AUTOCORRELATION_LAGS,)


# --- perplexity -----------------------------------------------------------------------------------------------


class BigramModel(torch.nn.Module):
    """Fake model of the common interface: p(next = prev + 1 mod V) = 1/2, the rest uniform; uniform for the
    first `warmup` steps of a piece, to give the position buckets something to show."""

    def __init__(self, vocab: int, warmup: int = 0):
        super().__init__()
        probs = np.full((vocab, vocab), 0.5 / (vocab - 1))
        probs[np.arange(vocab), (np.arange(vocab) + 1) % vocab] = 0.5
        self.table = torch.nn.Parameter(torch.tensor(np.log(probs), dtype=torch.float32))
        self.vocab, self.warmup, self.plans = vocab, warmup, []

    def plan(self, budget_bytes: int, batch: int = 1) -> dict:
        self.plans.append((budget_bytes, batch))
        return {"bytes": budget_bytes}

    def new_state(self, plan: dict, batch: int) -> dict:
        return {"position": 0, "batch": batch}

    def step(self, ids: torch.Tensor, state: dict) -> torch.Tensor:  # ids (B,) -> logits (B, V)
        state["position"] += 1
        if state["position"] <= self.warmup:
            return torch.zeros(len(ids), self.vocab)
        return self.table[ids]

    def prefill(self, ids: torch.Tensor, state: dict) -> torch.Tensor:  # ids (B, T) -> logits (B, V)
        return self.read(ids, state)[:, -1]

    def read(self, ids: torch.Tensor, state: dict) -> torch.Tensor:  # ids (B, T) -> logits (B, T, V)
        return torch.stack([self.step(ids[:, t], state) for t in range(ids.shape[1])], dim=1)


def test_perplexity_of_a_bigram_model_by_hand():
    model = BigramModel(vocab=8)
    pieces = [np.arange(1, 13) % 8, np.arange(1, 30) % 8]  # always the predicted continuation: p = 1/2
    report = metrics.perplexity_report(model, pieces, budget=1 << 20)
    assert report.perplexity == pytest.approx(2.0, rel=1e-5)
    assert report.tokens == 11 + 28 and report.pieces == 2
    assert model.plans == [(1 << 20, 1)]


def test_perplexity_by_position():
    model = BigramModel(vocab=8, warmup=3)  # uniform (perplexity 8) for positions 1-3, then 2
    report = metrics.perplexity_report(model, [np.arange(1, 13) % 8], budget=1000, bucket_edges=[0, 4, 100])
    assert report.bucket_tokens.tolist() == [3, 8]
    np.testing.assert_allclose(report.bucket_perplexity, [8.0, 2.0], rtol=1e-5)
    assert report.perplexity == pytest.approx(2 ** (17 / 11), rel=1e-5)  # exp((3 ln 8 + 8 ln 2) / 11)
    assert report.to_json()["by_position"][1] == {"start": 4, "end": 100, "tokens": 8,
                                                  "perplexity": pytest.approx(2.0, rel=1e-5)}


def test_perplexity_of_performances_is_token_weighted(scale, chord):
    uniform = BigramModel(vocab=VOCAB_SIZE, warmup=10**9)
    report = metrics.perplexity_report(uniform, [scale, chord], budget=1000)
    assert report.perplexity == pytest.approx(VOCAB_SIZE, rel=1e-4)
    assert report.bucket_edges[:2] == (0, 256) and report.bucket_tokens.sum() == report.tokens
    with pytest.raises(RecitalError):
        metrics.perplexity_report(uniform, [np.array([BOS])], budget=1000)


class UniformModel(BigramModel):
    """Uniform over a codec's ids (every id costs ln V nats), its config naming that codec."""

    def __init__(self, codec: str):
        from core.codecs import codec_named

        super().__init__(vocab=codec_named(codec).VOCAB_SIZE, warmup=10**9)
        self.config = type("Config", (), {"codec": codec})()


@pytest.mark.parametrize("codec, predicted", [
    # BOS, Velocity, 4 onsets x 3 notes of NoteOn and NoteOff, shifts 0.4 s / 0.1 s between them (7), EOS
    ("performance", 1 + 24 + 7 + 1),
    # BOS, Velocity, 4 onsets x 3 notes of Pitch and Duration, a 0.5 s shift between onsets (3), EOS
    ("notes", 1 + 24 + 3 + 1)])
def test_bits_per_second_of_a_uniform_model_by_hand(chord, codec, predicted):
    from core.codecs import codec_named

    vocab = codec_named(codec).VOCAB_SIZE
    report = metrics.perplexity_report(UniformModel(codec), [chord], budget=1000)
    assert report.codec == codec and report.tokens == predicted
    assert report.seconds == pytest.approx(1.9)  # the last triad ends at 1.5 + 0.4 s, whatever the codec
    assert report.perplexity == pytest.approx(vocab, rel=1e-5)
    assert report.bits_per_token == pytest.approx(math.log2(vocab), rel=1e-5)
    assert report.bits_per_second == pytest.approx(predicted * math.log2(vocab) / 1.9, rel=1e-5)
    assert report.to_json()["bits_per_second"] == report.bits_per_second


def test_piece_seconds_are_the_same_for_either_codec_and_ids(chord, scale):
    from core import notecodec, tokenizer

    for piece in (chord, scale):
        seconds = metrics.piece_seconds(piece)
        assert seconds == pytest.approx(float(piece.offset.max()))
        assert metrics.ids_music_seconds(tokenizer, tokenizer.encode(piece)) == pytest.approx(seconds)
        # the notes codec's clock stops at the last onset: the last note's length (binned) carries it to the end
        assert notecodec.ids_seconds(notecodec.encode(piece)) < seconds - 0.1
        last = float((piece.offset - piece.onset)[np.argmax(piece.offset)])
        assert metrics.ids_music_seconds(notecodec, notecodec.encode(piece)) == pytest.approx(
            seconds, abs=last * notecodec.MAX_DURATION_ERROR + 1e-9)
    assert metrics.piece_seconds(Performance.from_notes([], [], [], [])) == 0.0


def tiny_dsmr_of(codec: str):
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    return DSMR(DSMRConfig(d_model=32, n_layers=2, n_heads=4, segment_len=8, max_horizon=32, n_long=1,
                           codec=codec)).eval()


def test_a_notes_model_and_a_performance_model_score_the_same_pieces_in_bits_per_second(scale, chord):
    from core.codecs import codec_named

    seconds = scale.offset.max() + chord.offset.max()
    for codec in ("performance", "notes"):
        model = tiny_dsmr_of(codec)
        report = metrics.perplexity_report(model, [scale, chord], budget=64 * 1024)
        ids = [codec_named(codec).encode(piece).astype(np.int64) for piece in (scale, chord)]  # its own codec
        with torch.inference_mode():
            nats = -sum(float(metrics.piece_log_probs(model, piece, model.new_state(model.plan(64 * 1024, 1), 1),
                                                      torch.device("cpu")).sum()) for piece in ids)
        assert report.codec == codec and report.tokens == sum(len(piece) - 1 for piece in ids)
        assert report.seconds == pytest.approx(seconds)
        assert report.nats == pytest.approx(nats, rel=1e-6)
        assert math.isfinite(report.bits_per_second)
        assert report.bits_per_second == pytest.approx(nats / math.log(2) / seconds, rel=1e-6)


# --- recital eval ---------------------------------------------------------------------------------------------


def write_set(folder, pieces) -> None:
    folder.mkdir()
    for i, piece in enumerate(pieces):
        write_performance(piece, folder / f"piece_{i:02d}.mid")


def test_eval_cli_writes_json_and_report(tmp_path, capsys):
    rng = np.random.default_rng(7)
    write_set(tmp_path / "generated", [random_piece(rng) for _ in range(4)])
    write_set(tmp_path / "reference", [c_major_piece(rng) for _ in range(5)])
    (tmp_path / "reference" / "broken.mid").write_bytes(b"MThd")
    code = main(["eval", str(tmp_path / "generated"), str(tmp_path / "reference"),
                 "--json", str(tmp_path / "out.json"), "--report", str(tmp_path / "out.html")])
    assert code == 0
    printed = capsys.readouterr()
    assert "mean OA" in printed.out and "PCH/seg" in printed.out and "repeated pitch 8-grams" in printed.out
    assert "skipped" in printed.err and "broken.mid" in printed.err
    result = json.loads((tmp_path / "out.json").read_text())
    assert list(result["features"]) == list(metrics.FEATURES)
    oas = [result["features"][name]["oa"] for name in metrics.FEATURES]
    assert all(0 <= oa <= 1 for oa in oas) and result["mean_oa"] == pytest.approx(np.mean(oas))
    assert all(result["features"][name]["kld"] >= 0 for name in metrics.FEATURES)
    assert result["generated_pieces"] == 4 and result["reference_pieces"] == 5
    page = (tmp_path / "out.html").read_text()
    svgs = re.findall(r"<svg.*?</svg>", page, flags=re.DOTALL)
    assert len(svgs) == len(metrics.FEATURES) + 1  # one per feature, one autocorrelation plot
    for svg in svgs:
        ET.fromstring(svg)  # well-formed
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_eval_cli_usage_errors(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 1
    assert "GENERATED_DIR REFERENCE_DIR" in capsys.readouterr().err
    assert main(["eval", "--model", "m", str(tmp_path), str(tmp_path)]) == 1
    assert "one FOLDER" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "missing"), str(tmp_path)]) == 1
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    write_performance(Performance.from_notes([0], [1], [60], [80]), tmp_path / "one" / "a.mid")
    assert main(["eval", str(tmp_path / "one"), str(tmp_path / "one")]) == 1
    assert "at least 2" in capsys.readouterr().err


def tiny_dsmr():
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    return DSMR(DSMRConfig(d_model=32, n_layers=2, n_heads=4, segment_len=8, max_horizon=32, n_long=1)).eval()


def test_dsmr_reads_chunks_with_the_same_perplexity_as_stepping(scale, chord, monkeypatch):
    model = tiny_dsmr()
    monkeypatch.setattr(metrics, "SCORE_CHUNK", 5)  # chunks that straddle DSMR's 8-token segments
    fast = metrics.perplexity_report(model, [scale, chord], budget=64 * 1024)
    slow = metrics.perplexity_report(model, [scale, chord], budget=64 * 1024, stepwise=True)
    assert fast.perplexity == pytest.approx(slow.perplexity, rel=1e-4)
    np.testing.assert_allclose(fast.bucket_perplexity, slow.bucket_perplexity, rtol=1e-4)
    assert 0.7 * VOCAB_SIZE < fast.perplexity < 1.3 * VOCAB_SIZE  # an untrained model is close to uniform


def test_perceivers_reads_chunks_with_the_same_perplexity_as_its_cached_steps(scale, chord, monkeypatch):
    from core.models.perceivers import PerceiverS, PerceiverSConfig

    torch.manual_seed(0)
    model = PerceiverS(PerceiverSConfig(context=32, latents=8, scale=16, d_model=32, n_heads=2, n_layers=2)).eval()
    monkeypatch.setattr(metrics, "SCORE_CHUNK", 5)  # chunks that straddle the 8-latent windows
    fast = metrics.perplexity_report(model, [scale, chord], budget=1 << 20)
    slow = metrics.perplexity_report(model, [scale, chord], budget=1 << 20, stepwise=True)
    assert fast.tokens == slow.tokens == len(encode(scale)) + len(encode(chord)) - 2
    assert fast.perplexity == pytest.approx(slow.perplexity, rel=1e-4)
    np.testing.assert_allclose(fast.bucket_perplexity, slow.bucket_perplexity, rtol=1e-4)
    assert 0.7 * VOCAB_SIZE < fast.perplexity < 1.3 * VOCAB_SIZE


def test_eval_model_prints_perplexity_and_writes_json(tmp_path, capsys, scale, chord):
    from core.modeldir import save_model

    model_dir = save_model(tiny_dsmr(), tmp_path / "tiny", "A tiny untrained DSMR for tests.")
    write_set(tmp_path / "pieces", [scale, chord])
    code = main(["eval", "--model", str(model_dir), str(tmp_path / "pieces"), "--budget", "64KB",
                 "--json", str(tmp_path / "ppl.json"), "--report", str(tmp_path / "ppl.html")])
    assert code == 0
    out = capsys.readouterr().out
    assert "perplexity:" in out and "0-255" in out
    result = json.loads((tmp_path / "ppl.json").read_text())
    expected = metrics.perplexity_report(tiny_dsmr(), [read_performance(p) for p in
                                                       sorted((tmp_path / "pieces").glob("*.mid"))], 64 * 1024)
    assert result["perplexity"] == pytest.approx(expected.perplexity, rel=1e-5)
    assert result["budget_bytes"] == 64 * 1024 and result["pieces"] == 2
    assert sum(b["tokens"] for b in result["by_position"]) == result["tokens"]
    page = (tmp_path / "ppl.html").read_text()
    ET.fromstring(re.search(r"<svg.*?</svg>", page, flags=re.DOTALL).group(0))
    assert result["codec"] == "performance" and result["bits_per_second"] == pytest.approx(
        expected.bits_per_second, rel=1e-5)
    assert "bits per second of music" in out
    assert main(["eval", "--model", str(model_dir), str(tmp_path / "pieces"), "--budget", "lots"]) == 1
    assert "16MB" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "no_model"), str(tmp_path / "pieces")]) == 1
    assert "no_model" in capsys.readouterr().err


def test_eval_scores_a_notes_model_with_its_own_codec(tmp_path, capsys, scale, chord):
    from core.modeldir import save_model

    model_dir = save_model(tiny_dsmr_of("notes"), tmp_path / "notes", "A tiny untrained notes DSMR for tests.")
    write_set(tmp_path / "pieces", [scale, chord])
    assert main(["eval", "--model", str(model_dir), str(tmp_path / "pieces"), "--budget", "64KB",
                 "--json", str(tmp_path / "notes.json"), "--report", str(tmp_path / "notes.html")]) == 0
    out = capsys.readouterr().out
    assert "codec 'notes'" in out and "bits per second of music" in out
    result = json.loads((tmp_path / "notes.json").read_text())
    expected = metrics.perplexity_report(tiny_dsmr_of("notes"), [read_performance(p) for p in
                                                                 sorted((tmp_path / "pieces").glob("*.mid"))],
                                         64 * 1024)
    assert result["codec"] == "notes" and result["tokens"] == expected.tokens
    assert result["bits_per_second"] == pytest.approx(expected.bits_per_second, rel=1e-5)
    assert "bits per second" in (tmp_path / "notes.html").read_text()


# --- the diffusion ELBO, through the registry -------------------------------------------------------------------


def tiny_smdim(codec: str = "performance"):
    from core.models.smdim import SMDIM, SMDIMConfig

    torch.manual_seed(0)
    return SMDIM(SMDIMConfig(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=8,
                             codec=codec)).eval()


@pytest.mark.parametrize("codec", ["performance", "notes"])
def test_the_elbo_report_is_smdims_piece_elbo_reached_by_its_arch(scale, chord, codec):
    """The held-out bound comes from the architecture's training adapter (Training.elbo): for SMDIM the very
    numbers of piece_elbo on each piece, in the windows the budget buys, and the trainer's own with its draws."""
    from core.codecs import codec_named
    from core.models.smdim.training import HELD_OUT_RATES, SMDIMTraining, piece_elbo

    model = tiny_smdim(codec)
    window = model.plan(None, batch=1).window
    ids = [codec_named(codec).encode(piece).astype(np.int64) for piece in (scale, chord)]
    report = metrics.elbo_report(model, [scale, chord], draws=3, seed=5)
    with torch.inference_mode():
        expected = sum(piece_elbo(model, piece, window, 3, 5, "cpu") for piece in ids)
    assert report.nats == pytest.approx(expected, rel=1e-6) and report.nats > 0
    assert (report.tokens, report.window, report.draws) == (sum(len(piece) for piece in ids), window, 3)
    assert window == model.config.window  # the default budget reads the window the trainer scores
    held = metrics.elbo_report(model, ids, draws=HELD_OUT_RATES)
    trainer = SMDIMTraining(model)
    bounds = [trainer.piece_bound(piece, torch.device("cpu")) for piece in ids]
    assert held.nats == pytest.approx(sum(nats for nats, _ in bounds), rel=1e-6)
    assert held.tokens == sum(count for _, count in bounds)


def test_a_second_denoiser_is_scored_by_its_own_training_adapter(scale):
    """elbo_report names no architecture: a denoiser registered at run time is scored by its adapter's `elbo`,
    called with each piece's ids and the window, draws, seed and device asked; one whose adapter has none is
    refused in one line."""
    from core.models import registry
    from core.models.smdim import SMDIM, SMDIMConfig
    from core.models.smdim.training import SMDIMTraining

    calls = []

    class Twin(SMDIM):
        arch = "twin"

    class TwinTraining(SMDIMTraining):
        def elbo(self, piece, window, draws, seed, device) -> float:
            calls.append((len(piece), window, draws, seed, str(device)))
            return 2.0 * len(piece)

    class Bare:  # a training adapter without the bound
        def __init__(self, model):
            self.model = model

    torch.manual_seed(0)
    model = Twin(SMDIMConfig(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=8))
    ids = encode(scale).astype(np.int64)
    try:
        registry.register("twin", Twin, SMDIMConfig, TwinTraining)
        report = metrics.elbo_report(model.eval(), [ids, ids[:10]], draws=4, seed=9)
        assert calls == [(len(ids), 64, 4, 9, "cpu"), (10, 64, 4, 9, "cpu")]
        assert report.nats == 2.0 * (len(ids) + 10) and report.tokens == len(ids) + 10
        registry.register("twin", Twin, SMDIMConfig, Bare)
        with pytest.raises(RecitalError, match=r"^the twin architecture gives no diffusion ELBO"):
            metrics.elbo_report(model, [ids])
        registry.register("twin", Twin, SMDIMConfig, None)
        with pytest.raises(RecitalError, match="cannot be trained in this build"):
            metrics.elbo_report(model, [ids])
    finally:
        registry.unregister("twin")
