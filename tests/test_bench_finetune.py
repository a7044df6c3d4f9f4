"""bench/finetune.py's scoring: the per-kind breakdown of a held-out loss, and the bf16 check."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.finetune import by_kind, native_bf16, perplexity
from core.tokenizer import EOS, NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY


def test_by_kind_splits_the_loss_by_what_was_predicted():
    targets = np.array([NOTE_ON + 60, NOTE_OFF + 60, TIME_SHIFT + 9, VELOCITY + 20, NOTE_ON + 62, EOS])
    nll = np.array([3.0, 1.0, 2.0, 4.0, 1.0, 6.0])
    kinds = by_kind(targets, nll)
    assert list(kinds) == ["NoteOn", "NoteOff", "TimeShift", "Velocity", "BOS/EOS"]
    assert kinds["NoteOn"] == pytest.approx((2 / 6, 2.0))
    assert kinds["Velocity"] == pytest.approx((1 / 6, 4.0))
    assert sum(share for share, _ in kinds.values()) == pytest.approx(1.0)
    assert "Velocity" not in by_kind(targets[:3], nll[:3])  # kinds that do not occur are left out


def test_by_kind_reads_a_notes_models_ids_by_its_codec():
    from core import notecodec

    targets = np.array([notecodec.VELOCITY + 20, notecodec.PITCH + 60, notecodec.DURATION + 30,
                        notecodec.TIME_SHIFT + 9, notecodec.PITCH + 62, notecodec.DURATION + 63, EOS])
    nll = np.array([4.0, 3.0, 1.0, 2.0, 1.0, 5.0, 6.0])
    kinds = by_kind(targets, nll, "notes")
    assert list(kinds) == ["Pitch", "Duration", "TimeShift", "Velocity", "BOS/EOS"]
    assert kinds["Pitch"] == pytest.approx((2 / 7, 2.0))
    assert kinds["Duration"] == pytest.approx((2 / 7, 3.0))
    assert kinds["Velocity"] == pytest.approx((1 / 7, 4.0))
    assert sum(share for share, _ in kinds.values()) == pytest.approx(1.0)
    assert by_kind(targets, nll)["NoteOff"][0] == pytest.approx(3 / 7)  # read as event ids: Durations, TimeShift


def test_perplexity_and_the_bf16_probe(tmp_path):
    assert perplexity(np.array([math.log(4.0)] * 3)) == pytest.approx(4.0)
    assert math.isnan(perplexity(np.array([])))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bf16(cpuinfo)
    cpuinfo.write_text("flags\t\t: fpu avx2 avx512f\n")
    assert not native_bf16(cpuinfo)
    assert not native_bf16(tmp_path / "missing")  # no /proc (macOS, Windows): fp32
