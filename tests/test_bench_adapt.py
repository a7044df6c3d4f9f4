"""bench/adapt.py on each model's codec: a notes model adapts on the primer's notes-codec ids (it was handed the
event codec's, which a notes model refuses), beside a performance model in one run (tiny models, tests/data)."""

from __future__ import annotations

import json

import numpy as np

from bench import adapt as bench_adapt
from bench.continuation import Windows, read_excerpts
from core import notecodec, tokenizer
from tests.test_bench_continuation import tiny_notes_model_dir, two_piano_pieces


def test_each_model_adapts_on_the_primer_in_its_own_codec(tiny_model_dir, tmp_path, monkeypatch, one_thread):
    import core.adapt

    notes_dir, pieces = tiny_notes_model_dir(tmp_path), two_piano_pieces(tmp_path)
    monkeypatch.setattr(bench_adapt, "MAESTRO", pieces)
    seen: list[tuple[str, np.ndarray]] = []
    real_adapt = core.adapt.adapt

    def spy(model, primer_ids, **settings):
        seen.append((model.config.codec, np.asarray(primer_ids)))
        return real_adapt(model, primer_ids, **settings)

    monkeypatch.setattr(core.adapt, "adapt", spy)
    out = tmp_path / "out.json"
    code = bench_adapt.main(["--models", f"{tiny_model_dir},{notes_dir}", "--pieces", "2",
                             "--settings", "1:1e-4:all", "--json", str(out)])
    assert code == 0
    excerpts, _ = read_excerpts(pieces, 2, Windows())
    expected = {"performance": [e.coded(tokenizer).primer_ids for e in excerpts],
                "notes": [e.coded(notecodec).primer_ids for e in excerpts]}
    assert [codec for codec, _ in seen] == ["performance", "performance", "notes", "notes"]
    for codec in ("performance", "notes"):
        got = [ids for c, ids in seen if c == codec]
        assert all(np.array_equal(a, b) for a, b in zip(got, expected[codec], strict=True)), codec
    result = json.loads(out.read_text())
    for name in (tiny_model_dir, notes_dir):
        bits = result[str(name)]["1:0.0001:all:0.0"]["bits"]
        assert len(bits) == 2 and all(np.isfinite(b) and b > 0 for b in bits)
