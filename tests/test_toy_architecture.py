"""A third architecture registered from the test folder (tests/toy_model.py) runs everywhere the shipped ones do:
model directories, `recital generate`, the generation session, metrics, model cards and one training step, with
no edit outside its own file."""

from __future__ import annotations

import pytest
import torch

from core.cli import main
from core.modelcard import summarize
from core.modeldir import load_model, save_model
from core.models import registry
from core.session import GenerationSession
from tests.test_train_data import write_folder
from tests.toy_model import ARCH, Toy, ToyConfig, register_toy
from trainer.config import TrainConfig
from trainer.loop import fine_tune

pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")


@pytest.fixture
def toy_dir(tmp_path):
    register_toy()
    torch.manual_seed(0)
    yield save_model(Toy(ToyConfig()), tmp_path / "toy", "# Toy\n\nRandom weights, for tests only.\n")
    registry.unregister(ARCH)


def test_the_registry_lists_it_after_the_shipped_ones(toy_dir):
    assert registry.architectures()[-1] == ARCH and registry.architectures()[:2] == ["dsmr", "perceivers"]
    model = load_model(toy_dir)
    assert isinstance(model, Toy) and summarize(toy_dir).architecture.startswith("How it works: a toy")


def test_recital_generate_writes_a_piece(toy_dir, tmp_path):
    out = tmp_path / "toy.mid"
    assert main(["generate", "--model", str(toy_dir), "--seconds", "1", "--out", str(out), "--seed", "3"]) == 0
    assert out.stat().st_size > 0


def test_a_generation_session_runs_every_lane(toy_dir):
    session = GenerationSession(load_model(toy_dir), None, seconds=1.0, variations=2, seed=0)
    finished = session.run()
    assert finished is not None and session.steps > 0 and len(session.pieces()) == 2


def test_one_training_step_from_scratch(toy_dir, tmp_path):
    folder = write_folder(tmp_path / "midi", 6, notes=30)
    result = fine_tune(TrainConfig(folder=str(folder), out=str(tmp_path / "trained"), base=None, arch=ARCH,
                                   size="tiny", steps=1, batch=2, workers=1, val_fraction=0.2))
    assert result.steps == 1 and result.best_perplexity is not None
    trained = load_model(tmp_path / "trained")
    assert isinstance(trained, Toy) and trained.config.d_model == 8  # the toy's own "tiny" preset


def test_an_unknown_architecture_is_a_model_error_naming_the_known_ones():
    with pytest.raises(Exception, match="known are dsmr, perceivers") as error:
        registry.get("nope")
    assert type(error.value).__name__ == "ModelError"
