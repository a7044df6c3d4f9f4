"""Primer adaptation (core/adapt.py): a copy adapts, the loaded model and its files never change, the primer's own
loss falls, the step's packed weights follow, and sessions, the CLI and every architecture go through it."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the studio's panel, without a screen

import numpy as np
import pytest
import torch

from core.adapt import AdaptSettings, adapt, adapts_by_default
from core.errors import ModelError
from core.generate import SamplingConfig, generate, prepare_primer
from core.harmony import default_weight
from core.midi import Performance, read_performance, write_performance
from core.modeldir import load_model
from core.models import registry
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.pulse import default_weight as pulse_weight
from core.session import GenerationSession
from core.tokenizer import encode
from tests.conftest import PIANO_PIECE
from tests.toy_model import ARCH, Toy, ToyConfig, register_toy


def riff(seconds: float) -> Performance:
    """A repeated four-note figure, one note every 0.2 s: easy to learn from its own first bars."""
    count = int(seconds / 0.2)
    onset = np.arange(count) * 0.2
    pitch = np.array([60, 64, 67, 72])[np.arange(count) % 4]
    return Performance.from_notes(onset, onset + 0.15, pitch, np.full(count, 80))


def primer_ids(seconds: float = 8.0) -> np.ndarray:
    return encode(riff(seconds), eos=False).astype(np.int64)


def primer_nats(model, ids: np.ndarray) -> float:
    """The summed next-token loss of the primer, read as adaptation reads it."""
    training = registry.get(model.arch).training(model)
    with torch.no_grad():
        return sum(float(nats.sum()) for nats, _ in training.piece_losses(torch.as_tensor(ids), None))


def tiny_perceivers() -> PerceiverS:
    torch.manual_seed(0)
    return PerceiverS(PerceiverSConfig(context=64, latents=16, scale=32, d_model=32, n_heads=2, n_layers=1,
                                       default_budget="1MB")).eval()


@pytest.fixture
def toy():
    register_toy()
    torch.manual_seed(0)
    yield Toy(ToyConfig())
    registry.unregister(ARCH)


def test_the_loaded_model_and_its_files_never_change(tiny_model_dir, one_thread):
    files = {path.name: path.read_bytes() for path in tiny_model_dir.iterdir()}
    model = load_model(tiny_model_dir)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    adapted = adapt(model, primer_ids(), steps=3, lr=1e-2)
    assert adapted.model is not model and adapted.steps == 3
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert any(not torch.equal(value, before[name]) for name, value in adapted.model.state_dict().items())
    assert {path.name: path.read_bytes() for path in tiny_model_dir.iterdir()} == files


@pytest.mark.parametrize("kind", ["dsmr", "perceivers", "toy"])
def test_adapting_lowers_the_primers_own_loss(kind, tiny_model_dir, toy, one_thread):
    model = {"dsmr": lambda: load_model(tiny_model_dir), "perceivers": tiny_perceivers, "toy": lambda: toy}[kind]()
    ids = primer_ids()
    adapted = adapt(model, ids, steps=5, lr=1e-2)
    assert primer_nats(adapted.model, ids) < 0.9 * primer_nats(model, ids)
    assert all(not p.requires_grad or p.grad is None for p in adapted.model.parameters())


def test_the_step_repacks_the_adapted_weights(tiny_model_dir, one_thread):
    """A model that packed its step weights before being copied steps with the adapted ones afterwards."""
    model = load_model(tiny_model_dir)
    model.use_step_weights("fp32")
    ids = torch.as_tensor(primer_ids(2.0))
    model.step(ids[:1], model.new_state(model.plan(None, 1), 1))  # packs the original's weights
    adapted = adapt(model, primer_ids(), steps=2, lr=1e-2).model
    state = adapted.new_state(adapted.plan(None, 1), 1)
    stepped = torch.stack([adapted.step(ids[t:t + 1], state)[0] for t in range(len(ids))])
    with torch.no_grad():
        read = adapted.read(ids[None], adapted.new_state(adapted.plan(None, 1), 1))[0]
    torch.testing.assert_close(stepped, read, atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        original = model.read(ids[None], model.new_state(model.plan(None, 1), 1))[0]
    assert not torch.allclose(stepped, original, atol=1e-3)


def test_early_stop_keeps_the_best_step_on_the_held_out_tail(tiny_model_dir, one_thread):
    model = load_model(tiny_model_dir)
    adapted = adapt(model, primer_ids(), steps=30, lr=0.1, held_out=0.3)  # a rate that over-shoots soon
    assert 0 <= adapted.steps < 30
    held = adapted.held_out_bits
    assert len(held) == adapted.steps + 2 and held[-1] >= min(held[:-1])  # stopped at the first rise
    assert held[adapted.steps] == min(held)


def test_bad_settings_and_models_are_refused(toy, one_thread):
    for settings in ({"steps": 0}, {"lr": 0.0}, {"parameters": "some"}, {"held_out": 0.95}):
        with pytest.raises(ModelError):
            AdaptSettings(**settings)
    with pytest.raises(ModelError, match="too short"):
        adapt(toy, [1, 2], steps=1, lr=1e-3)

    class Denoiser(Toy):
        family = "denoise"

    with pytest.raises(ModelError, match="cannot adapt"):
        adapt(Denoiser(ToyConfig()), primer_ids(), steps=1, lr=1e-3)

    class Unreadable:  # a training adapter that does not read a piece's losses
        def __init__(self, model):
            self.model = model

    registry.register(ARCH, Toy, ToyConfig, Unreadable)
    with pytest.raises(ModelError, match="cannot adapt to a primer"):
        adapt(toy, primer_ids(), steps=1, lr=1e-3)


def sampled(model, primer: np.ndarray, seed: int) -> list[int]:
    state = model.new_state(model.plan(None, 2), 2)
    ids = [step.tolist() for step in generate(model, prepare_primer(primer, model.config.vocab_size), state,
                                              SamplingConfig(top_p=0.95), max_tokens=40, seed=seed,
                                              stop_at_eos=False, max_note_seconds=None,
                                              harmony=default_weight(model), pulse=pulse_weight(model))]
    return [token for step in ids for token in step]


def test_a_session_without_adaptation_writes_what_it_wrote_before(tiny_model_dir, one_thread):
    model = load_model(tiny_model_dir)
    ids = primer_ids()
    session = GenerationSession(model, ids, variations=2, seed=5, max_tokens=40,
                                sampling=SamplingConfig(top_p=0.95), max_note=None)
    session.run()
    assert session.adapt_seconds is None
    assert [t for step in zip(*session.lanes, strict=True) for t in step] == sampled(model, ids, 5)


def test_a_session_adapts_reports_its_seconds_and_leaves_the_model(tiny_model_dir, one_thread):
    model = load_model(tiny_model_dir)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    session = GenerationSession(model, primer_ids(), seed=5, max_tokens=20, adapt=AdaptSettings(steps=2, lr=1e-2))
    assert session.adapt_to_primer() is not None and session.adapt_seconds > 0
    session.run()
    assert session.steps == 20
    plain = GenerationSession(model, primer_ids(), seed=5, max_tokens=20)
    plain.run()
    assert session.lanes != plain.lanes  # the adapted copy wrote
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())

    short = GenerationSession(model, primer_ids(2.0), seed=5, max_tokens=5, adapt=AdaptSettings())
    assert short.adapt_to_primer() is None  # under min_seconds: nothing to learn from
    new = GenerationSession(model, None, seed=5, max_tokens=5, adapt=AdaptSettings())
    assert new.adapt_to_primer() is None


def test_continue_adapts_an_event_codec_model_only_when_asked_and_otherwise_writes_as_before(tiny_model_dir, tmp_path, capsys, one_thread):
    from core.cli import main

    primer = tmp_path / "riff.mid"
    write_performance(riff(8.0), primer)
    common = ["--model", str(tiny_model_dir), "--seconds", "2", "--seed", "3", "--exact"]
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "plain.mid")]) == 0
    printed = capsys.readouterr().out
    assert "adapted to the primer" not in printed and "adapting a copy" not in printed
    session = GenerationSession(load_model(tiny_model_dir), read_performance(primer), seconds=2, seed=3,
                                sampling=SamplingConfig(top_p=0.95))
    session.run()
    write_performance(session.pieces()[0], tmp_path / "session.mid")  # as a file holds it (a re-strike merged)
    expected = read_performance(tmp_path / "session.mid").slice_time(session.start_time - 1e-6, np.inf)
    written = read_performance(tmp_path / "plain.mid")
    new = written.onset >= session.start_time - 1e-6
    assert len(expected) > 0 and written.pitch[new].tolist() == expected.pitch.tolist()
    np.testing.assert_allclose(written.onset[new], expected.onset, atol=0.011)  # the file's ticks

    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "adapted.mid"),
                 "--adapt-steps", "2"]) == 0
    assert "adapted to the primer in " in capsys.readouterr().out
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "adapted-3.mid"), "--adapt"]) == 0
    assert "adapted to the primer in " in capsys.readouterr().out
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "plain-2.mid"), "--no-adapt"]) == 0
    assert "adapting a copy" not in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["continue", str(PIANO_PIECE), *common, "--out", str(tmp_path / "x.mid"), "--adapt-steps", "0"])
    assert "--adapt-steps: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a new piece has no primer to adapt to
        main(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "new.mid"), "--no-adapt"])
    assert "unrecognized arguments: --no-adapt" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists() and not (tmp_path / "new.mid").exists()


def test_a_notes_codec_model_adapts_by_default_and_no_adapt_turns_it_off(tmp_path, capsys, one_thread):
    from core.cli import main
    from core.models.smdim import SMDIM, SMDIMConfig
    from tests.test_bench_continuation import tiny_notes_model_dir

    folder = tiny_notes_model_dir(tmp_path)
    assert adapts_by_default(load_model(folder))
    assert not adapts_by_default(registry.build("dsmr", {"d_model": 32, "n_layers": 2, "n_heads": 2}))  # events
    assert not adapts_by_default(SMDIM(SMDIMConfig(codec="notes", d_model=32, n_heads=2, d_embed=16)))  # a denoiser
    primer = tmp_path / "riff.mid"
    write_performance(riff(8.0), primer)
    common = ["--model", str(folder), "--seconds", "1", "--seed", "3"]
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "default.mid")]) == 0
    printed = capsys.readouterr().out
    assert "adapting a copy of the model to the primer (--no-adapt skips it)" in printed
    assert "adapted to the primer in " in printed
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "plain.mid"), "--no-adapt"]) == 0
    assert "adapting a copy" not in capsys.readouterr().out
    assert main(["continue", str(primer), *common, "--out", str(tmp_path / "x.mid"), "--no-adapt",
                 "--adapt-steps", "2"]) == 1
    assert capsys.readouterr().err == "error: --no-adapt and --adapt-steps 2 contradict each other: give one\n"
    assert not (tmp_path / "x.mid").exists()


def test_the_write_panels_checkbox_reaches_the_session_and_is_remembered(qtbot, tiny_model_dir, tmp_path):
    from studio.document import Piece
    from studio.generatepanel import GeneratePanel
    from studio.generation import session_for
    from studio.settings import Settings
    from tests.test_bench_continuation import tiny_notes_model_dir

    panel = GeneratePanel()
    qtbot.addWidget(panel)
    model = load_model(tiny_model_dir)
    notes_model = load_model(tiny_notes_model_dir(tmp_path))
    piece = Piece(riff(8.0), Performance.empty())
    panel.set_model(model)
    assert not panel.adapt.isChecked()  # an event-codec model's default: off (measured: longer-held notes)
    assert not panel.request(piece, 0.0).adapt
    panel.set_model(notes_model)
    assert panel.adapt.isChecked() and panel.request(piece, 0.0).adapt  # a notes model's default: on
    panel.adapt.click()  # the composer's choice outlasts a model change
    panel.set_model(notes_model)
    assert panel.adapt_chosen and not panel.adapt.isChecked()
    panel.set_model(model)
    panel.adapt.setChecked(True)
    request = panel.request(piece, 0.0)
    assert request.adapt and session_for(request, model).adapt == AdaptSettings()
    panel.mode_new.setChecked(True)
    assert session_for(panel.request(piece, 0.0), model).adapt is None  # a new piece has no primer
    panel.mode_end.setChecked(True)
    panel.adapt.setChecked(False)
    assert session_for(panel.request(piece, 0.0), model).adapt is None

    Settings(adapt=False, adapt_chosen=True).save(tmp_path / "studio.json")
    loaded = Settings.load(tmp_path / "studio.json")
    assert loaded.adapt is False and loaded.adapt_chosen is True
    assert Settings().adapt_chosen is False  # never chosen: each model's default
