"""The training loop end to end with tiny models: model directories, events, validation, resume, bad input."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli import main as cli
from core.errors import MidiError, ModelError
from core.midi import Performance, write_performance
from core.modeldir import list_models, load_model, save_model
from tests.conftest import DATA
from tests.test_train_data import write_folder
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.loop import fine_tune, lr_at

TINY_DSMR = {"d_model": 16, "n_layers": 2, "n_heads": 2, "segment_len": 32, "max_horizon": 64, "n_long": 1,
             "default_budget": "64KB"}
TINY_PERCEIVERS = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 64, "latents": 16, "scale": 32,
                   "default_budget": "256KB"}


pytestmark = pytest.mark.usefixtures("isolated_dirs")


@pytest.fixture
def folder(tmp_path) -> Path:
    return write_folder(tmp_path / "midi", 6, notes=30)


def tiny(folder, out, arch="dsmr", **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out=str(out), base=None, arch=arch,
                    model=TINY_DSMR if arch == "dsmr" else TINY_PERCEIVERS, steps=6, batch=2, val_every=3,
                    checkpoint_every=3, log_every=1, workers=1, val_fraction=0.2)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.parametrize("arch", ["dsmr", "perceivers"])
def test_a_run_writes_a_loadable_model_directory_and_its_events(folder, tmp_path, arch):
    events = []
    result = fine_tune(tiny(folder, tmp_path / "out", arch, accum=2, lr=2e-2), on_progress=events.append)
    assert result.stopped == "finished" and result.steps == 6
    assert result.initial_perplexity is not None and result.best_perplexity <= result.initial_perplexity
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(e.loss) and e.tokens_per_s > 0 and e.eta_s is not None for e in steps)
    assert [e.step for e in events if e.kind == "eval"] == [0, 3, 6]
    model = load_model(tmp_path / "out")
    assert model.arch == arch
    card = (tmp_path / "out" / "card.md").read_text()
    assert "6 pieces" in card and f"held-out perplexity: {result.best_perplexity:.3f}" in card
    logged = [json.loads(line) for line in (tmp_path / "out" / ckpt.EVENTS).read_text().splitlines()]
    assert [e["step"] for e in logged if e["kind"] == "eval"] == [0, 3, 6]
    assert ckpt.latest_checkpoint(tmp_path / "out").name == "step-00000006"


def test_a_named_run_lands_in_the_user_models_dir_and_is_listed(folder, capsys):
    code = cli(["train", str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--steps", "2",
                "--batch", "2", "--out", "mine", "--workers", "1", "--val-every", "2"])
    assert code == 0
    assert "finished: 2 steps" in capsys.readouterr().out
    assert [(m.name, m.arch) for m in list_models() if m.source == "user"] == [("mine", "dsmr")]
    assert "- recipe: `" in (list_models()[0].path / "card.md").read_text()


def test_a_folder_too_small_to_split_reports_training_loss_only(tmp_path):
    few = write_folder(tmp_path / "few", 2, notes=40)
    events = []
    result = fine_tune(tiny(few, tmp_path / "out"), on_progress=events.append)
    assert result.best_perplexity is None and result.final_loss is not None
    assert any("too few to hold any out" in e.message for e in events)
    assert not [e for e in events if e.kind == "eval"]
    load_model(tmp_path / "out")  # the latest weights are the model


def test_early_stopping_after_patience(folder, tmp_path):
    result = fine_tune(tiny(folder, tmp_path / "out", steps=50, val_every=1, patience=1, lr=0.5, warmup=0))
    assert result.stopped == "early_stop" and result.steps < 50


def test_stop_request_saves_and_resume_continues(folder, tmp_path):
    calls = []

    def stop_at_4() -> bool:
        calls.append(1)
        return len(calls) > 4

    first = fine_tune(tiny(folder, tmp_path / "out", steps=10, checkpoint_every=100), should_stop=stop_at_4)
    assert first.stopped == "stopped" and first.steps == 4
    assert ckpt.latest_checkpoint(tmp_path / "out").name == "step-00000004"
    events = []
    second = fine_tune(tiny(folder, tmp_path / "out", steps=10, resume=True), on_progress=events.append)
    assert second.steps == 10 and second.stopped == "finished"
    assert [e.step for e in events if e.kind == "step"][0] == 5
    assert second.tokens > first.tokens


def test_fine_tuning_a_base_model(folder, tmp_path):
    torch.manual_seed(0)
    from core.models.dsmr import DSMR, DSMRConfig

    base = save_model(DSMR(DSMRConfig(**TINY_DSMR)), tmp_path / "base", "# base\n")
    result = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "tuned"), base=str(base), steps=4,
                                   batch=2, lr=2e-2, val_every=4, workers=1, val_fraction=0.2))
    assert result.best_perplexity < result.initial_perplexity
    card = (tmp_path / "tuned" / "card.md").read_text()
    assert "fine-tuned from base" in card and "transposition and tempo stretch" in card
    assert str(tmp_path) not in card  # folders and models by name: no machine path in a card
    tuned, original = load_model(tmp_path / "tuned"), load_model(base)
    assert not torch.equal(tuned.embed.weight, original.embed.weight)


def test_the_trained_model_records_the_horizons_it_was_trained_with(folder, tmp_path):
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    base = save_model(DSMR(DSMRConfig(**TINY_DSMR, trained_horizons=[8, 2])), tmp_path / "base", "# base\n")
    result = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "longer"), base=str(base), steps=4,
                                   batch=2, lr=2e-2, budget="48KB", val_every=4, workers=1, val_fraction=0.2))
    assert result.best_perplexity < result.initial_perplexity  # the model saved is the trained one
    tuned = load_model(tmp_path / "longer")
    run = tuned.plan(2 * 48 * 1024, batch=2, beyond_training=True).horizons  # what the run trained at
    assert run[0] > 8 and tuned.config.trained_horizons == [max(8, run[0]), max(2, run[1])]
    assert tuned.plan("1MB").horizons == tuple(tuned.config.trained_horizons)


def test_bf16_on_the_cpu_when_asked(folder, tmp_path, monkeypatch):
    assert not TrainConfig(folder=".", steps=1).autocasts("cpu") and TrainConfig(folder=".", steps=1).autocasts("cuda")
    assert not TrainConfig(folder=".", steps=1, precision="fp32").autocasts("cuda")
    with pytest.raises(ModelError, match="precision"):
        TrainConfig(folder=".", steps=1, precision="fp16")
    under_autocast = []
    original = torch.nn.functional.cross_entropy

    def spy(*args, **kwargs):  # the training loss: is it computed under bf16 autocast?
        under_autocast.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    result = fine_tune(tiny(folder, tmp_path / "bf16", steps=3, precision="bf16"))
    assert under_autocast and all(under_autocast) and math.isfinite(result.final_loss)
    assert load_model(tmp_path / "bf16").embed.weight.dtype == torch.float32  # weights stay fp32
    under_autocast.clear()
    fine_tune(tiny(folder, tmp_path / "fp32", steps=1))
    assert under_autocast and not any(under_autocast)


def test_lr_warms_up_then_decays_to_the_floor():
    config = TrainConfig(folder=".", base=None, arch="dsmr", steps=100, lr=1e-3, warmup=10, min_lr_ratio=0.1)
    rates = [lr_at(config, s, s / 100) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[-1] == pytest.approx(1e-4, rel=0.01)


# ---- bad input: a clear error, a non-zero exit, nothing overwritten -----------------------------------------

def _train(*args: str) -> int:
    return cli(["train", *args, "--workers", "1", "--steps", "2", "--batch", "2"])


def test_empty_folder_and_unreadable_files(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert _train(str(tmp_path / "empty"), "--base", "none", "--arch", "dsmr", "--size", "tiny") == 1
    assert "no MIDI files" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.mid").write_bytes(b"not midi at all")
    shutil.copy(DATA / "broken" / "empty.mid", broken / "b.mid")
    assert _train(str(broken), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--out",
                  str(tmp_path / "x")) == 1
    assert "could be read" in capsys.readouterr().err


def test_every_piece_shorter_than_a_segment(tmp_path):
    short = tmp_path / "short"
    short.mkdir()
    for i in range(3):
        write_performance(Performance.from_notes(np.array([0.0]), np.array([0.5]), np.array([60 + i]),
                                                 np.array([64])), short / f"{i}.mid")
    with pytest.raises(MidiError, match="shorter than one segment"):
        fine_tune(tiny(short, tmp_path / "out"))


def test_unwritable_output_directory(folder, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions do not apply")
        assert _train(str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--out",
                      str(locked / "model")) == 1
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


def test_unwritable_output_directory_as_a_file(folder, tmp_path, capsys):
    (tmp_path / "file").write_text("a file, not a folder")
    assert _train(str(folder), "--base", "none", "--arch", "dsmr", "--size", "tiny", "--out",
                  str(tmp_path / "file" / "model")) == 1
    assert "not writable" in capsys.readouterr().err


def test_base_models_that_do_not_fit(folder, tmp_path, capsys, monkeypatch):
    assert _train(str(folder)) == 1  # the shipped default reads segments of 512: these pieces are shorter
    assert "every training piece is shorter than one segment (512 tokens" in capsys.readouterr().err
    with monkeypatch.context() as patch:  # a build without the default model
        patch.setattr("core.modeldir.SHIPPED_DIR", tmp_path / "no-shipped-models")
        assert _train(str(folder)) == 1
        assert "no default model is shipped" in capsys.readouterr().err
    from core.models.perceivers import PerceiverS, PerceiverSConfig

    other = save_model(PerceiverS(PerceiverSConfig(**TINY_PERCEIVERS)), tmp_path / "p", "# p\n")
    assert _train(str(folder), "--base", str(other), "--arch", "dsmr") == 1
    assert "is a perceivers model, not dsmr" in capsys.readouterr().err
    meta = json.loads((other / "config.json").read_text())
    meta["tokenizer"]["vocab_size"] = 500
    (other / "config.json").write_text(json.dumps(meta))
    assert _train(str(folder), "--base", str(other)) == 1
    assert "tokenizer" in capsys.readouterr().err


def test_an_existing_model_is_not_overwritten(folder, tmp_path, capsys):
    out = tmp_path / "out"
    fine_tune(tiny(folder, out, steps=2))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert _train(str(folder), "--base", "none", "--arch", "dsmr", "--out", str(out)) == 1
    assert "already exists" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(folder, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save = torch.save
    writes = []

    def full_disk(obj, path, *args, **kwargs):
        writes.append(path)
        if len(writes) >= 2:  # the second checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(ModelError, match="the disk is full"):
        fine_tune(tiny(folder, out, steps=6, val_every=100))
    assert ckpt.latest_checkpoint(out).name == "step-00000003"
    assert not list((out / ckpt.CHECKPOINTS).glob(".*"))  # no half-written leftovers
    load_model(out)
    monkeypatch.setattr(torch, "save", real_save)
    result = fine_tune(tiny(folder, out, steps=6, val_every=100, resume=True))
    assert result.steps == 6


def test_a_full_disk_while_saving_the_model(folder, tmp_path, monkeypatch):
    import core.modeldir

    out = tmp_path / "out"
    fine_tune(tiny(folder, out, steps=3))
    weights = (out / "model.safetensors").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(core.modeldir.Path, "write_text", full_disk)
    with pytest.raises(ModelError, match="disk is full|cannot write"):
        fine_tune(tiny(folder, out, steps=6, resume=True))
    assert (out / "model.safetensors").read_bytes() == weights
    assert not [p for p in out.iterdir() if p.name.startswith(".staging")]


def test_a_run_that_runs_out_of_time_is_validated_at_its_last_step(folder, tmp_path):
    """The steps after the last scheduled validation count: the model kept may be the one at the end."""
    events = []
    result = fine_tune(tiny(folder, tmp_path / "out", steps=None, minutes=0.15, val_every=10_000, lr=2e-2,
                            checkpoint_every=1),
                       on_progress=events.append)
    assert result.stopped == "time" and result.steps > 0
    assert [e.step for e in events if e.kind == "eval"] == [0, result.steps]
    # resumed when its time is up already: nothing to train, and it was validated where it stopped
    again = []
    fine_tune(tiny(folder, tmp_path / "out", steps=None, minutes=0.15, val_every=10_000, resume=True),
              on_progress=again.append)
    assert [e.step for e in again if e.kind == "eval"] == []
