"""bench/motif.py: the fit windows, the shares fitted, the tables and the JSON on a tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import motif as bench_motif
from bench.continuation import Windows
from core import notecodec
from core.midi import Performance, write_performance
from tests.test_bench_continuation import tiny_notes_model_dir


def figure_piece(seconds: float, shift: int = 0) -> Performance:
    """A left-hand figure over and over, every 0.2 s: what a memory of the piece predicts and a random model not."""
    figure = np.array([48, 55, 60, 64, 60, 55]) + shift
    onset = np.arange(0.0, seconds, 0.2)
    pitch = figure[np.arange(len(onset)) % len(figure)]
    return Performance.from_notes(onset, onset + 0.15, pitch, np.full(len(onset), 64))


def test_the_fit_windows_start_after_the_benchmarks_and_lie_whole_in_the_piece():
    windows = Windows(primer=4.0, truth=3.0)
    excerpts = bench_motif.windows_from(figure_piece(40.0), "figure", windows, 10, notecodec, first=10.0)
    assert [e.name for e in excerpts] == ["figure@10s"]  # 70 s, the next start, is past the piece's end
    assert excerpts[0].primer.onset.min() == pytest.approx(0.0) and excerpts[0].truth.onset.max() < 7.0
    assert bench_motif.windows_from(figure_piece(15.0), "short", windows, 10, notecodec, first=10.0) == []


def synthetic(count: int = 200) -> bench_motif.Scored:
    """Pitches the context cache predicts well in likeness bucket 1 and badly in bucket 0 (at every sharpness),
    durations the ends predict well, time steps nothing predicts."""
    kind = np.repeat([0, 0, 1, 2], count)
    likeness = np.repeat([0, 1, -1, -1], count)
    model = np.full(4 * count, np.log(0.1))
    cache = np.where(likeness == 1, np.log(0.9), np.where(likeness == 0, np.log(1e-4), np.nan))
    grid = len(bench_motif.SHARPNESS_GRID)
    ends = np.where(kind == 1, np.log(0.8), np.nan)
    return bench_motif.Scored(kind, model, np.zeros(4 * count), likeness, np.repeat(cache[:, None], grid, 1),
                              np.full(4 * count, -1), np.full(4 * count, np.nan), ends, 1.0)


def test_each_share_is_the_one_that_makes_its_ids_likeliest():
    scored = synthetic()
    fitted = bench_motif.fit(scored)
    assert fitted.cache[0, 0] == 0.0 and fitted.cache[0, 1] == bench_motif.SHARES.max()  # 0.95: the grid's top
    assert fitted.end == bench_motif.SHARES.max() and (fitted.motif == 0).all()  # no match anywhere: no share
    assert (fitted.cache[1:] == 0).all()  # nothing held for the other kinds: nothing mixed
    none = fitted.only()
    assert scored.nats(none) == pytest.approx(-scored.model)  # no share: the model's own
    assert bench_motif.bits_row(scored, fitted)[0] < bench_motif.bits_row(scored, none)[0]
    shipped = bench_motif.Memories.shipped()
    assert bench_motif.bits_row(scored, shipped)[0] < bench_motif.bits_row(scored, none)[0]
    silent = bench_motif.Scored(*(getattr(scored, name) for name in ("kind", "model", "mass", "likeness")),
                                np.full_like(scored.cache, np.nan), scored.match, scored.motif,
                                np.full_like(scored.ends, np.nan), 1.0)
    assert silent.nats(shipped) == pytest.approx(-scored.model)  # a memory holding nothing is not mixed in


def test_main_fits_on_later_windows_and_prints_both_tables(tmp_path, capsys, one_thread):
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for index in range(2):
        write_performance(figure_piece(30.0, shift=index), pieces / f"figure-{index}.mid")
    model = tiny_notes_model_dir(tmp_path)
    out = tmp_path / "motif.json"
    assert bench_motif.main(["--midi", str(pieces), "--models", str(model), "--no-adapt", "--windows", "4", "3",
                             "10", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fitted on 2 windows from 10 s on, measured on the 2 excerpts" in printed
    for row in ("pitches (fitted)", "time steps (shipped)", "the model alone", "the context cache (as shipped)",
                "the motifs and the ends (as shipped)", "all three, as shipped", "all three, as fitted here",
                "the ends of the notes sounding"):
        assert row in printed
    result = json.loads(out.read_text())[str(model)]
    alone, shipped, fitted = (result["bits_per_second"][row][0] for row in
                              ("the model alone", "all three, as shipped", "all three, as fitted here"))
    assert fitted < alone and shipped < alone  # a figure played over and over: remembered, it costs less
    assert max(max(result["fitted"]["motif_shares"][0]), max(result["fitted"]["cache_shares"][0])) > 0.5
    assert bench_motif.main(["--midi", str(pieces), "--models", str(model), "--windows", "4", "3", "40"]) == 2
    assert "nothing to fit on" in capsys.readouterr().err
