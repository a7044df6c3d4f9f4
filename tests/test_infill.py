"""Infilling (core/infill.py, `recital infill`): nothing outside the region changes, new notes start inside it,
crossing notes stay, a kept voice stays and the new notes keep out of its range, density bounds the count, a long
region is filled window by window, `context` bounds what the model reads each side, bad regions are one line,
`recital infill` runs the fast int8 passes unless --exact; on a tiny random SMDIM of each codec ("performance" and
"notes": the same rules hold for both)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core import notecodec
from core.cli import main
from core.codecs import CODECS, codec_of
from core.constraints import Constraints
from core.generate import SamplingConfig
from core.infill import (
    CONTEXT_SECONDS,
    ORDER,
    InfillError,
    _select,
    clip_new,
    infill,
    lay_out,
    reach,
    restrike_guard,
    windows,
)
from core.midi import Performance, read_performance, write_performance
from core.modeldir import save_model
from core.models.smdim import SMDIM, SMDIMConfig
from core.tokenizer import TICK_SECONDS
from tests.conftest import PIANO_PIECE, tiny_model_dir  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=4, stride=2,
            mlp_ratio=2, steps=4, default_budget="2MB")


def tiny(**fields) -> SMDIM:
    torch.manual_seed(0)
    return SMDIM(SMDIMConfig(**{**TINY, **fields})).eval()


@pytest.fixture(scope="module", params=list(CODECS))
def codec(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def model(codec) -> SMDIM:
    return tiny(codec=codec)


@pytest.fixture(scope="module")
def piece() -> Performance:
    return read_performance(PIANO_PIECE).slice_time(0.0, 12.0)


def notes(perf: Performance, which: np.ndarray | None = None) -> set[tuple]:
    """The notes as exact tuples (float64 times compared bit for bit)."""
    which = np.ones(len(perf), dtype=bool) if which is None else which
    return set(zip(perf.onset[which].tolist(), perf.offset[which].tolist(), perf.pitch[which].tolist(),
                   perf.velocity[which].tolist(), strict=True))


def region(perf: Performance, start: float, end: float) -> np.ndarray:
    return (perf.onset >= start) & (perf.onset < end)


@pytest.mark.parametrize("start,end", [(3.0, 6.0), (0.0, 2.5), (9.5, 12.0), (4.37, 4.91)])
def test_nothing_outside_the_region_changes_and_every_new_note_starts_inside(model, piece, start, end):
    results = infill(model, piece, start, end, variations=3, seed=7)
    assert len(results) == 3
    outside = notes(piece, ~region(piece, start, end))
    crossing = (piece.onset < start) & (piece.offset > start)
    assert crossing.any() or start == 0.0  # the piece holds notes across the edges the test checks
    for result in results:
        assert notes(result, ~region(result, start, end)) == outside  # bit for bit, crossing notes included
        new = region(result, start, end)
        assert np.all(result.offset[new] <= end) and np.all(result.offset[new] > result.onset[new])
        assert result.grid == piece.grid
    assert len({tuple(r.pitch[region(r, start, end)].tolist()) for r in results}) > 1  # the lanes differ


def test_new_notes_never_strike_a_key_a_kept_note_holds(model, piece):
    start, end = 3.0, 6.0
    for result in infill(model, piece, start, end, variations=4, seed=3):
        kept = ~region(result, start, end)
        for index in np.flatnonzero(~kept):
            same = kept & (result.pitch == result.pitch[index])
            overlaps = (result.onset[same] < result.offset[index]) & (result.offset[same] > result.onset[index])
            assert not overlaps.any()


def test_keep_above_keeps_the_melody_and_writes_only_below_it(model, piece):
    start, end, split = 2.0, 8.0, 67
    melody = region(piece, start, end) & (piece.pitch >= split)
    assert melody.any() and (region(piece, start, end) & (piece.pitch < split)).any()
    for result in infill(model, piece, start, end, keep_above=split, variations=2, seed=1):
        kept = notes(piece, ~region(piece, start, end) | melody)
        assert kept <= notes(result)
        new = notes(result) - kept
        assert new and all(pitch < split for _, _, pitch, _ in new)


def test_keep_below_and_constraints_limit_the_new_pitches(model, piece):
    allowed = Constraints.parse(key="C major")
    for result in infill(model, piece, 2.0, 8.0, keep_below=55, constraints=allowed, variations=2, seed=2):
        new = notes(result) - notes(piece)
        assert new and all(pitch > 55 and pitch % 12 in (0, 2, 4, 5, 7, 9, 11) for _, _, pitch, _ in new)


def test_density_bounds_the_number_of_new_notes(model, piece):
    start, end = 2.0, 8.0
    sparse = infill(model, piece, start, end, density=1.0, variations=3, seed=4)
    dense = infill(model, piece, start, end, density=20.0, variations=3, seed=4)
    for result in sparse:
        assert region(result, start, end).sum() <= 6  # 1 note/s over 6 s
    assert max(region(r, start, end).sum() for r in dense) > 6


def test_a_region_longer_than_the_window_is_filled_window_by_window_with_overlap(model, piece):
    start, end = 1.0, 11.0
    layout = lay_out(piece.slice_time(0, 0), start, end, 200, model.mask_id, codec_of(model))  # (the layout alone)
    passes = windows(layout, 64)
    assert len(passes) > 3
    for (lo, hi, begin, stop), (next_lo, _, next_begin, _) in zip(passes, passes[1:], strict=False):
        assert hi - lo <= 64 and lo <= begin < stop <= hi
        assert next_lo < hi and next_begin == stop or layout.masked[stop:next_begin].sum() == 0  # overlapping
    assert passes[-1][3] == int(np.flatnonzero(layout.masked)[-1]) + 1  # every mask committed
    result = infill(model, piece, start, end, seed=5)[0]
    assert notes(result, ~region(result, start, end)) == notes(piece, ~region(piece, start, end))
    assert region(result, start, end).sum() > 0


def test_the_same_seed_writes_the_same_notes(model, piece):
    first = infill(model, piece, 3.0, 6.0, seed=11)[0]
    again = infill(model, piece, 3.0, 6.0, seed=11)[0]
    assert notes(first) == notes(again)


def test_the_stepwise_scan_writes_the_notes_the_old_loop_wrote_and_reduced_weights_still_keep_the_rules(piece,
                                                                                                         codec):
    model = tiny(codec=codec)  # its own: the scan and weights are switched here
    start, end = 3.0, 6.0
    now = infill(model, piece, start, end, variations=2, seed=11)
    model.use_scan("loop")  # the CPU's scan before the stepwise form: same numbers to rounding, same draws
    before = infill(model, piece, start, end, variations=2, seed=11)
    assert [notes(r) for r in now] == [notes(r) for r in before]
    model.use_scan("auto")
    model.use_step_weights("int8")
    for result in infill(model, piece, start, end, variations=2, seed=11):
        assert notes(result, ~region(result, start, end)) == notes(piece, ~region(piece, start, end))
        assert region(result, start, end).any()


def test_context_bounds_the_music_the_model_reads_each_side(piece, codec, monkeypatch):
    model = tiny(window=256, codec=codec)  # the whole 12 s layout fits one window: without context it reads all
    start, end = 5.0, 7.0
    seen: list[torch.Tensor] = []
    denoise = model.denoise

    def spy(ids, keep, *args, **kwargs):
        seen.append(ids[0].clone())
        return denoise(ids, keep, *args, **kwargs)

    monkeypatch.setattr(model, "denoise", spy)
    spans = {}
    for context in (None, 2.0, 0.5, 0.0):
        seen.clear()
        result = infill(model, piece, start, end, context=context, seed=3)[0]
        assert notes(result, ~region(result, start, end)) == notes(piece, ~region(piece, start, end))
        assert len(seen) == 1
        view = seen[0].numpy()
        assert int((view == model.mask_id).sum()) > 0  # the region's masks are all in the window
        written = float(codec_of(model).shift_ticks(view).sum()) * TICK_SECONDS
        spans[context] = (len(view), written + (end - start if codec == "notes" else 0.0))  # (notes: masks' time)
    assert spans[None][1] >= piece.duration - 1.0  # None: as much as the window holds
    for context in (2.0, 0.5, 0.0):
        length, seconds = spans[context]
        assert seconds <= end - start + 2 * context + 1.0  # (a last TimeShift may reach on, at most a second)
    assert spans[None][0] > spans[2.0][0] > spans[0.5][0] >= spans[0.0][0]


def test_a_context_past_the_piece_writes_what_the_whole_window_writes(model, piece):
    window = infill(model, piece, 3.0, 6.0, variations=2, seed=9, context=None)
    whole = infill(model, piece, 3.0, 6.0, variations=2, seed=9, context=1e300)
    assert [notes(r) for r in window] == [notes(r) for r in whole]


def test_the_default_context_is_context_seconds_each_side(piece, monkeypatch):
    model = tiny(window=2048)  # room for the whole 25 s piece
    seen: list[int] = []
    denoise = model.denoise
    monkeypatch.setattr(model, "denoise", lambda ids, *a, **k: seen.append(ids.shape[1]) or denoise(ids, *a, **k))
    longer = Performance.concat(piece, piece.shifted(piece.duration + 1.0))  # more than CONTEXT_SECONDS each side
    start = piece.duration - 1.0
    default = infill(model, longer, start, start + 2.0, seed=5, budget="64MB")  # a budget that buys 2048 ids
    chosen = infill(model, longer, start, start + 2.0, seed=5, budget="64MB", context=CONTEXT_SECONDS)
    infill(model, longer, start, start + 2.0, seed=5, budget="64MB", context=None)
    assert notes(default[0]) == notes(chosen[0])
    assert seen[0] == seen[1] < seen[2]  # the window reads more than the default's seconds each side


def test_a_long_region_with_context_is_filled_window_by_window_inside_the_bounds(piece, codec):
    start, end = 3.0, 9.0
    replaced = region(piece, start, end)
    layout = lay_out(_select(piece, ~replaced), start, end, 120, 999, CODECS[codec])
    bounds = reach(layout, 1.0)
    assert 0 < bounds[0] <= layout.first and layout.after <= bounds[1] < len(layout.ids)
    passes = windows(layout, 64, bounds)
    assert len(passes) > 1
    assert all(bounds[0] <= lo < hi <= bounds[1] and hi - lo <= 64 for lo, hi, _, _ in passes)
    assert passes[0][2] == layout.first and passes[-1][3] == int(np.flatnonzero(layout.masked)[-1]) + 1
    assert windows(layout, 64, reach(layout, None)) == windows(layout, 64)
    result = infill(tiny(codec=codec), piece, start, end, context=1.0, seed=2)[0]
    assert notes(result, ~region(result, start, end)) == notes(piece, ~replaced)


@pytest.mark.parametrize("context", [-1.0, float("nan"), float("inf")])
def test_a_bad_context_is_one_line(model, piece, context):
    with pytest.raises(InfillError, match="context must be a number of seconds >= 0") as error:
        infill(model, piece, 3.0, 6.0, context=context)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("start,end,words", [
    (6.0, 6.0, "must come after its start"),
    (6.0, 3.0, "must come after its start"),
    (30.0, 40.0, "outside the piece"),
    (-1.0, 2.0, "outside the piece"),
    (5.0, 90.0, "outside the piece"),
    (5.0, 5.001, "shorter than"),
    (float("nan"), 2.0, "numbers of seconds"),
])
def test_a_bad_region_is_one_line(model, piece, start, end, words):
    with pytest.raises(InfillError, match=words) as error:
        infill(model, piece, start, end)
    assert "\n" not in str(error.value)


def test_an_empty_piece_and_impossible_settings_are_one_line(model, piece):
    with pytest.raises(InfillError, match="no notes"):
        infill(model, Performance.empty(), 0.0, 1.0)
    with pytest.raises(InfillError, match="leaves no pitch"):
        infill(model, piece, 2.0, 4.0, keep_above=60, keep_below=59)
    with pytest.raises(InfillError, match="variations"):
        infill(model, piece, 2.0, 4.0, variations=0)
    with pytest.raises(InfillError, match="density"):
        infill(model, piece, 2.0, 4.0, density=500.0)


def test_a_left_to_right_model_is_refused_naming_smdim(piece, tiny_model_dir):  # noqa: F811
    from core.modeldir import load_model

    with pytest.raises(InfillError, match="SMDIM"):
        infill(load_model(tiny_model_dir), piece, 2.0, 4.0)


# ---- the command -------------------------------------------------------------------------------------------------

@pytest.fixture
def smdim_dir(tmp_path, codec):
    return save_model(tiny(codec=codec), tmp_path / "smdim", "# Tiny SMDIM\n\nRandom weights, for tests only.\n")


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_writes_the_piece_with_the_region_rewritten(smdim_dir, tmp_path, capsys):
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    before = source.read_bytes()
    out = tmp_path / "out" / "new.mid"
    code = main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(smdim_dir), "--out", str(out),
                 "--variations", "2", "--seed", "1", "--keep-above", "G4", "--steps", "2"])
    assert code == 0, capsys.readouterr().err
    assert "the region holds" in capsys.readouterr().out
    original = read_performance(source)
    for path in (tmp_path / "out" / "new-1.mid", tmp_path / "out" / "new-2.mid"):
        written = read_performance(path)
        outside = ~region(original, 3.0, 6.0) | (original.pitch >= 67)
        assert np.allclose(sorted(notes(original, outside)), sorted(notes(written, ~region(written, 3.0, 6.0)
                                                                          | (written.pitch >= 67))), atol=2e-3)
    assert source.read_bytes() == before  # the input is never written


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_by_bars(smdim_dir, tmp_path, capsys):
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    out = tmp_path / "bars.mid"
    assert main(["infill", str(source), "--bars", "2-3", "--model", str(smdim_dir), "--out", str(out)]) == 0
    assert "region 2.00-6.00 s" in capsys.readouterr().out  # 120 BPM 4/4: bar 2 starts at 2 s, bar 4 at 6 s


@pytest.mark.usefixtures("isolated_dirs")
@pytest.mark.parametrize("extra,words", [
    (["--start", "5", "--end", "2"], "must come after its start"),
    (["--start", "50", "--end", "60"], "outside the piece"),
    (["--start", "2"], "give the region"),
    (["--bars", "2-3", "--start", "1"], "not both"),
    (["--bars", "2-300"], "the piece has 6 bars"),
    (["--start", "1", "--end", "2", "--out-is-input"], "is the input"),
])
def test_recital_infill_errors_are_one_line(smdim_dir, tmp_path, capsys, extra, words):
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    out = str(source) if "--out-is-input" in extra else str(tmp_path / "x.mid")
    extra = [arg for arg in extra if arg != "--out-is-input"]
    model = [] if "--model" in extra else ["--model", str(smdim_dir)]
    assert main(["infill", str(source), *model, *extra, "--out", out, "--force"]) == 1
    err = capsys.readouterr().err
    assert words in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.mid").exists()


@pytest.mark.usefixtures("isolated_dirs")
def test_without_its_default_model_infill_says_what_to_pass(tmp_path, capsys, monkeypatch):
    import core.cli.infill as infill_cli

    missing = "default-smdim-not-installed"  # the shipped default-smdim stands in for a clone without it
    monkeypatch.setattr(infill_cli, "DEFAULT_MODEL", missing)
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    argv = ["infill", str(source), "--start", "1", "--end", "2", "--model", missing, "--out", str(tmp_path / "x.mid")]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"no {missing} model is installed" in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "x.mid").exists()


@pytest.mark.usefixtures("isolated_dirs")
def test_the_shipped_smdim_fills_a_region_by_default(tmp_path, capsys):
    source = tmp_path / "piece.mid"
    piece = read_performance(PIANO_PIECE).slice_time(0.0, 12.0)
    write_performance(piece, source)
    out = tmp_path / "filled.mid"
    assert main(["infill", str(source), "--start", "4", "--end", "6", "--steps", "4", "--seed", "0",
                 "--out", str(out)]) == 0
    filled = read_performance(out)
    outside = (filled.onset < 4.0 - 1e-6) | (filled.onset >= 6.0 + 1e-6)
    kept = (piece.onset < 4.0 - 1e-6) | (piece.onset >= 6.0 + 1e-6)
    assert np.array_equal(np.sort(filled.pitch[outside]), np.sort(piece.pitch[kept]))



@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_exact_writes_what_the_fp32_path_writes(smdim_dir, tmp_path, capsys, monkeypatch):
    import core.cli.infill as command
    from core.modeldir import load_model

    used = []
    load = command.load_denoiser
    monkeypatch.setattr(command, "load_denoiser", lambda name: used.append(load(name)) or used[-1])
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    out = tmp_path / "exact.mid"
    assert main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(smdim_dir), "--out", str(out),
                 "--seed", "4", "--steps", "2", "--context", "2", "--exact"]) == 0, capsys.readouterr().err
    fp32 = infill(load_model(smdim_dir), read_performance(source), 3.0, 6.0, steps=2, seed=4,
                  sampling=SamplingConfig(1.0, 0, 0.95), context=2.0)[0]
    write_performance(fp32, tmp_path / "fp32.mid")
    assert out.read_bytes() == (tmp_path / "fp32.mid").read_bytes()
    ids = torch.tensor([[1, 60, 300, 190, 62, used[0].mask_id, 320]])
    with torch.no_grad():  # the passes' weights were fp32 bit for bit (int8 draws often agree on a tiny model)
        assert torch.equal(used[0].score(ids), load_model(smdim_dir).score(ids))


@pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="this torch has no int8 pass weights")
@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_runs_the_int8_passes_by_default_and_keeps_the_rules(smdim_dir, tmp_path, capsys,
                                                                            monkeypatch):
    import core.cli.infill as command
    from core.modeldir import load_model

    used = []
    load = command.load_denoiser
    monkeypatch.setattr(command, "load_denoiser", lambda name: used.append(load(name)) or used[-1])
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    out = tmp_path / "fast.mid"
    assert main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(smdim_dir), "--out", str(out),
                 "--seed", "4", "--steps", "2"]) == 0, capsys.readouterr().err
    original, written = read_performance(source), read_performance(out)
    assert np.allclose(sorted(notes(original, ~region(original, 3.0, 6.0))),
                       sorted(notes(written, ~region(written, 3.0, 6.0))), atol=2e-3)
    assert region(written, 3.0, 6.0).any()
    ids = torch.tensor([[1, 60, 300, 190, 62, used[0].mask_id, 320]])
    with torch.no_grad():
        fast, exact = used[0].score(ids), load_model(smdim_dir).score(ids)
    assert not torch.equal(fast, exact)  # the int8 pass weights really are in use
    torch.testing.assert_close(fast.softmax(-1), exact.softmax(-1), atol=5e-3, rtol=0)


@pytest.mark.usefixtures("isolated_dirs")
def test_recital_infill_refuses_a_negative_context(smdim_dir, tmp_path, capsys):
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    with pytest.raises(SystemExit) as stop:
        main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(smdim_dir), "--context", "-1",
              "--out", str(tmp_path / "x.mid")])
    assert stop.value.code != 0
    err = capsys.readouterr().err
    assert "--context: must be >= 0 seconds, got -1 (or 'window')" in err and not (tmp_path / "x.mid").exists()


@pytest.mark.usefixtures("isolated_dirs")
@pytest.mark.parametrize(("given", "read"), [([], "the core's default"), (["--context", "window"], None),
                                             (["--context", "Window"], None), (["--context", "3"], 3.0)])
def test_recital_infill_reads_the_default_context_or_the_whole_window(smdim_dir, tmp_path, capsys, monkeypatch,
                                                                       given, read):
    calls = []
    monkeypatch.setattr("core.infill.infill", lambda *a, **k: calls.append(k) or infill(*a, **k))
    source = tmp_path / "piece.mid"
    write_performance(read_performance(PIANO_PIECE).slice_time(0.0, 12.0), source)
    assert main(["infill", str(source), "--start", "3", "--end", "6", "--model", str(smdim_dir), "--steps", "1",
                 "--out", str(tmp_path / "x.mid"), *given]) == 0, capsys.readouterr().err
    assert calls[0].get("context", "the core's default") == read  # not given: infill's CONTEXT_SECONDS


def test_recital_infill_help_says_the_cores_default_context(capsys):
    with pytest.raises(SystemExit):
        main(["infill", "--help"])
    assert re.search(rf"--context SECONDS\s.*?\(default:\s+{CONTEXT_SECONDS:g};", capsys.readouterr().out, re.S)


def test_a_new_note_never_strikes_a_key_again_faster_than_the_guard():
    kept = Performance.from_notes(np.array([1.0, 3.0]), np.array([1.01, 3.5]), np.array([60, 64]),
                                  np.array([80, 80]))
    onset = np.array([1.25, 1.02, 1.2, 1.4, 1.3, 3.2])
    pitch = np.array([62, 60, 62, 62, 60, 64])
    everything = np.ones(128, dtype=bool)

    def written(min_repeat: float) -> list[tuple[float, int]]:
        new = clip_new(onset, onset + 0.01, pitch, np.full(6, 70), kept, 1.0, 4.0, everything, None, min_repeat)
        return sorted(zip(np.round(new.onset, 3).tolist(), new.pitch.tolist(), strict=True))

    # 64 at 3.2 lies on the kept 64 that sounds until 3.5: never, guard or not
    assert written(0.0) == [(1.02, 60), (1.2, 62), (1.25, 62), (1.3, 60), (1.4, 62)]
    # within 0.1 s of the kept 60 at 1.0, and of the earlier new 62 at 1.2: gone; the rest stays
    assert written(0.1) == [(1.2, 62), (1.3, 60), (1.4, 62)]


def test_the_guard_is_the_repeat_speed_of_the_music_around_the_region():
    onset = np.arange(40) * 0.1  # one key every 100 ms for 4 s, then silence up to the region
    trill = Performance.from_notes(onset, onset + 0.05, np.full(40, 72), np.full(40, 80))
    assert restrike_guard(trill, 10.0, 12.0) == pytest.approx(0.1 * notecodec.REPEAT_SHARE, abs=0.011)
    # further than GUARD_CONTEXT (60 s) before the region: the default guard
    assert restrike_guard(trill, 70.0, 72.0) == notecodec.MIN_REPEAT_SECONDS


def test_a_region_is_unmasked_surest_first_whatever_the_models_default(piece, monkeypatch):
    from tests.test_smdim import unmask_orders

    orders = unmask_orders(monkeypatch)
    model = tiny(codec="notes", order="random")  # its default for open-ended writing
    infill(model, piece, 3.0, 5.0, seed=1)
    assert orders and set(orders) == {ORDER} == {"confidence"}
