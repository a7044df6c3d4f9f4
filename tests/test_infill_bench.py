"""bench/infill.py on a denoiser of the note-level codec: its infill column lays the region out in the model's
codec and keeps the piece outside it, the measurement of a written region is finite, and the speed probe runs; on a
tiny random notes SMDIM and the test fixtures' piano piece (the benchmark's MAESTRO is not needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import infill as bench
from core.midi import read_performance
from core.models.smdim import SMDIM, SMDIMConfig
from tests.conftest import PIANO_PIECE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> SMDIM:
    torch.manual_seed(0)
    return SMDIM(SMDIMConfig(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=4,
                             mlp_ratio=2, steps=4, default_budget="2MB", codec="notes")).eval()


def test_the_infill_column_on_a_notes_smdim_keeps_the_piece_outside_and_measures_finite(model):
    piece = read_performance(PIANO_PIECE)
    region = bench.Region("prelude", piece, 4.0, 8.0)
    written = bench.by_infill(model, region, seeds=2)
    assert len(written) == 2
    outside = ~((piece.onset >= 4.0) & (piece.onset < 8.0))
    for result in written:
        kept = ~((result.onset >= 4.0) & (result.onset < 8.0))
        assert np.array_equal(np.sort(result.onset[kept]), np.sort(piece.onset[outside]))
        row = bench.measure(region, result)
        assert set(row) == {"truth", "left", "right", "written", "real"}
        assert row["truth"]["notes_per_second"] == pytest.approx(
            abs(row["written"]["notes_per_second"] - row["real"]["notes_per_second"]))
        assert all(np.isfinite(value) for part in row.values() for value in part.values())
    assert sum(len(bench.inside(r, 4.0, 8.0)) for r in written) > 0  # a random notes model still writes notes


def test_the_speed_probe_infills_eight_seconds_of_a_notes_piece(model):
    piece = read_performance(PIANO_PIECE)
    assert piece.duration > 28.0
    assert bench.speed(model, piece, repeats=1, context=2.0) > 0


def test_the_table_says_which_way_each_column_misses():
    def row(written_rate: float) -> dict:
        real = dict.fromkeys(bench.STATS, 1.0) | {"notes_per_second": 3.0}
        written = dict(real) | {"notes_per_second": written_rate}
        zero = dict.fromkeys(bench.STATS, 0.0)
        return {"truth": bench.distance(written, real), "left": zero, "right": zero, "written": written,
                "real": real}

    text = bench.table({"infill": [row(5.0)], "continue": [row(1.0)], "random": [row(3.0)]}, list(bench.COLUMNS))
    assert "| notes/s | 2.000 | 2.000 | 0.000 | infill closest: no |" in text  # the same distance either way
    assert "| notes/s | +2.000 | -2.000 | +0.000 |" in text  # too dense, too sparse
    assert "pitch-class overlap (1 - x) | +" not in text  # an overlap has no direction


def test_several_denoisers_each_get_a_column_and_their_own_verdict():
    def row(rate: float, right_gap: float) -> dict:
        real = dict.fromkeys(bench.STATS, 1.0) | {"notes_per_second": 3.0}
        written = dict(real) | {"notes_per_second": rate}
        left = dict.fromkeys(bench.STATS, 0.5)
        return {"truth": bench.distance(written, real), "left": left,
                "right": left | {"notes_per_second": right_gap}, "written": written, "real": real}

    results = {"old": [row(6.0, 0.2)], "new": [row(3.5, 0.9)], "continue": [row(1.0, 0.0)],
               "random": [row(4.0, 0.0)]}
    text = bench.table(results, ["old", "new", *bench.BASELINES])
    assert "| notes/s | 3.000 | 0.500 | 2.000 | 1.000 | infill closest: old no, new yes |" in text
    assert "| notes/s | 0.500 | 0.200 | 0.500 | 0.900 | 0.500 | 0.000 | 0.500 | 0.000 | old yes, new no |" in text
    assert "| notes/s | +3.000 | +0.500 | -2.000 | +1.000 |" in text


def test_the_cli_refuses_a_model_list_that_names_nothing(capsys):
    assert bench.main(["--model", " , "]) == 2
    assert "names no model" in capsys.readouterr().err
