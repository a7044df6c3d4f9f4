"""The trainer on the note codec (issue #17): a notes model trains on notes ids, a performance model as before, and
a model of one codec warm-starts a model of the other by meaning."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import notecodec, tokenizer
from core.codecs import codec_of
from core.modeldir import load_model, save_model
from core.models.dsmr import DSMR, DSMRConfig
from tests.test_train_data import write_folder
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.loop import fine_tune
from trainer.transfer import row_sources, transferred

pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")

TINY = {"d_model": 16, "n_layers": 2, "n_heads": 2, "segment_len": 32, "max_horizon": 64, "n_long": 1,
        "default_budget": "64KB"}


def run(folder, out, **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out=str(out), base=None, arch="dsmr", model={**TINY, "codec": "notes"},
                    steps=4, batch=2, val_every=2, checkpoint_every=2, log_every=1, workers=1, val_fraction=0.2)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "midi", 6, notes=30)


def test_a_notes_model_trains_on_notes_ids_and_resumes(folder, tmp_path):
    result = fine_tune(run(folder, tmp_path / "out", expressive=True))
    assert result.steps == 4 and result.best_perplexity is not None
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["tokenizer"] == {"name": "notes", "vocab_size": notecodec.VOCAB_SIZE}
    assert "'notes' codec" in (tmp_path / "out" / "card.md").read_text()
    corpus = Corpus.open(folder, "notes")  # the run scanned the folder with the model's codec
    assert corpus.piece(0)[-2] >= notecodec.DURATION and corpus.piece(0)[-2] < notecodec.TIME_SHIFT
    resumed = fine_tune(run(folder, tmp_path / "out", steps=6, resume=True))
    assert resumed.steps == 6 and codec_of(load_model(tmp_path / "out")).NAME == "notes"


def test_fine_tuning_a_notes_model_reads_notes_and_a_performance_model_the_events(folder, tmp_path):
    torch.manual_seed(0)
    for codec in ("notes", "performance"):
        base = save_model(DSMR(DSMRConfig(**TINY, codec=codec)), tmp_path / f"base-{codec}", "# base\n")
        fine_tune(run(folder, tmp_path / f"tuned-{codec}", base=str(base), model={}, steps=2))
        assert codec_of(load_model(tmp_path / f"tuned-{codec}")).NAME == codec
        assert Corpus.open(folder, codec).codec == codec


def assert_rows_by_meaning(source, model) -> None:
    """`model` (notes) is `source` (performance) transferred by meaning: each id's embedding and output rows from
    the source's id of the same meaning (PAD/BOS/EOS, Pitch <- NoteOn, TimeShift, Velocity; Duration the mean of
    the NoteOff rows), every other weight the source's own."""
    assert model.config.codec == "notes" and model.config.vocab_size == notecodec.VOCAB_SIZE
    old, new = source.state_dict(), model.state_dict()
    for name in ("embed.weight", "head.weight"):
        assert new[name].shape[0] == notecodec.VOCAB_SIZE
        pitch = slice(notecodec.PITCH, notecodec.PITCH + 128)
        assert torch.equal(new[name][pitch], old[name][tokenizer.NOTE_ON:tokenizer.NOTE_ON + 128])
        assert torch.equal(new[name][:3], old[name][:3])  # PAD, BOS, EOS
        shifts = slice(notecodec.TIME_SHIFT, notecodec.TIME_SHIFT + 100)
        assert torch.equal(new[name][shifts], old[name][tokenizer.TIME_SHIFT:tokenizer.TIME_SHIFT + 100])
        assert torch.equal(new[name][notecodec.VELOCITY:], old[name][tokenizer.VELOCITY:])
        mean_off = old[name][tokenizer.NOTE_OFF:tokenizer.TIME_SHIFT].mean(dim=0)
        assert torch.allclose(new[name][notecodec.DURATION:notecodec.TIME_SHIFT],
                              mean_off.expand(notecodec.DURATION_BINS, -1))
    rest = [name for name in new if name not in ("embed.weight", "head.weight")]
    assert rest and all(torch.equal(new[name], old[name]) for name in rest)


def test_a_transferred_model_starts_from_the_rows_of_the_same_meaning():
    torch.manual_seed(1)
    source = DSMR(DSMRConfig(**TINY, sounding_input=True))
    model, how = transferred(source, "notes", {"sounding_input": False})
    assert_rows_by_meaning(source, model)
    new = model.state_dict()
    assert "embed.weight" in how.by_meaning and how.dropped and "Pitch_p <- NoteOn_p" in how.describe()
    back, _ = transferred(model, "performance")  # and back: NoteOff rows from the mean of the Duration rows
    assert torch.equal(back.state_dict()["embed.weight"][3:131], new["embed.weight"][3:131])
    assert [len(ids) for ids in row_sources("notes", "performance")][131:259] == [64] * 128
    assert np.all([ids == [i] for i, ids in enumerate(row_sources("notes", "notes"))])


def test_recital_train_on_a_notes_model_end_to_end(folder, tmp_path, capsys):
    from core.cli import main as recital

    torch.manual_seed(0)
    base = save_model(DSMR(DSMRConfig(**TINY, codec="notes")), tmp_path / "tiny-notes", "# tiny notes model\n")
    common = ["--workers", "1", "--steps", "2", "--batch", "2", "--val-every", "1"]
    assert recital(["train", str(folder), "--base", str(base), "--out", str(tmp_path / "tuned"), *common]) == 0
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["tokenizer"]["name"] == "notes"
    assert "held-out perplexity" in capsys.readouterr().out
    assert recital(["train", str(folder), "--base", str(base), "--out", str(tmp_path / "again"), "--resume",
                    "--codec", "notes", *common]) == 0  # naming the base's own codec is allowed
    assert recital(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--codec", "notes",
                    "--out", str(tmp_path / "scratch"), *common]) == 0
    assert load_model(tmp_path / "scratch").config.codec == "notes"
    assert recital(["train", str(folder), "--base", str(base), "--codec", "performance", "--out",
                    str(tmp_path / "other"), *common]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "reads the 'notes' codec, not 'performance'" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()
    assert recital(["corpus", str(folder), "--codec", "notes", "--workers", "1"]) == 0
    assert "('notes' codec)" in capsys.readouterr().out
