"""The default-models recipe end to end on synthetic collections with a tiny model: train, stop, resume, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from core.cli import main as recital
from core.errors import MidiError, ModelError
from core.metrics import elbo_report
from core.midi import Performance, read_performance, write_performance
from core.modeldir import build_model, load_model, save_model
from core.tokenizer import encode
from tests.test_train_data import random_performance
from trainer.config import TrainConfig
from trainer.recipes import default_models as recipe_module
from trainer.recipes.default_models import check_data, main
from trainer.recipes.recipe import CONFIG_FILE, balance, load_recipe, parse_overrides

TINY_RECIPE = """
[data]
maestro = "{maestro}"
eval_pieces = 4
monophonic = ["tunes"]
min_polyphonic_share = 0.6

[data.weights]
"*" = 1.0
tunes = 1.0

[train]
size = "tiny"
minutes = 30.0
batch = 2
lr = 1e-2
warmup = 1
seed = 0
expressive = true
val_fraction = 0.25
val_every = 100
checkpoint_every = 100
checkpoint_minutes = 5.0
log_every = 1

[dsmr]
name = "tiny-default"
model = {{d_model = 16, n_layers = 2, n_heads = 2, segment_len = 32, max_horizon = 64, n_long = 1, default_budget = "64KB"}}

[perceivers]
name = "tiny-perceivers"
model = {{d_model = 16, n_layers = 1, n_heads = 2, context = 64, latents = 16, scale = 32, default_budget = "64KB"}}

[smdim]
name = "tiny-smdim"
model = {{d_embed = 16, d_model = 32, n_blocks = 1, n_heads = 2, d_state = 4, window = 64, attn_window = 8, steps = 2}}
"""


pytestmark = pytest.mark.usefixtures("isolated_dirs", "one_thread")


def chorale(rng: np.random.Generator, beats: int) -> Performance:
    onset = np.repeat(np.arange(beats) * 0.5, 4)
    pitch = np.tile([48, 55, 62, 69], beats) + rng.integers(0, 5, 4 * beats)
    return Performance.from_notes(onset, onset + 0.5, pitch, np.full(len(onset), 80))


@pytest.fixture
def setup(tmp_path) -> dict:
    """Collections chorales/ (polyphonic) and tunes/ (monophonic), a 'MAESTRO' folder, and a recipe file."""
    rng = np.random.default_rng(0)
    data = tmp_path / "midi"
    for i in range(4):
        write_performance(chorale(rng, 20 + 5 * i), data / "chorales" / f"c{i}.mid")
    for i in range(8):
        write_performance(random_performance(rng, 40 + 3 * i, low=60, high=80), data / "tunes" / f"t{i}.mid")
    maestro = tmp_path / "maestro"
    write_performance(random_performance(rng, 60), maestro / "m.mid")
    config = tmp_path / "recipe.toml"
    config.write_text(TINY_RECIPE.format(maestro=maestro))
    return {"data": data, "config": config, "run": tmp_path / "run", "dest": tmp_path / "models" / "tiny-default"}


def args(setup: dict, *extra: str, arch: str = "dsmr") -> list[str]:
    return ["--arch", arch, "--config", str(setup["config"]), "--data", str(setup["data"]), "--run",
            str(setup["run"]), "--dest", str(setup["dest"]), "--workers", "1", *extra]


# ---- the recipe file ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["dsmr", "perceivers", "smdim"])
def test_the_shipped_recipe_reads_and_makes_a_valid_training_config(arch):
    recipe = load_recipe(CONFIG_FILE, arch)
    assert recipe.train["expressive"] is True and recipe.train["checkpoint_minutes"] <= 5
    assert recipe.maestro.name == "maestro" and "essenFolksong" in recipe.monophonic
    config = TrainConfig(folder=".", base=None, arch=arch, weights=recipe.weights, **recipe.train)
    assert config.minutes > 0 and not config.fine_tuning


def test_the_shipped_smdim_recipe_trains_a_model_small_enough_to_ship():
    from trainer.config import scratch_config

    recipe = load_recipe(CONFIG_FILE, "smdim")
    model = build_model("smdim", scratch_config("smdim", recipe.train["size"], recipe.model))
    assert sum(p.numel() for p in model.parameters()) * 2 <= recipe_module.MAX_MODEL_BYTES  # fp16
    assert model.plan().window == model.config.window  # its default budget buys the whole trained window


def test_a_bad_recipe_or_override_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[data]\nmaestro = "x"\n[data.weights]\nbach = 1\n[dsmr]\nname = "d"\nlearning_rate = 1\n')
    with pytest.raises(ModelError, match="unknown training settings learning_rate"):
        load_recipe(bad, "dsmr")
    with pytest.raises(ModelError, match=r"no \[perceivers\] table"):
        load_recipe(bad, "perceivers")
    assert parse_overrides(["lr=1e-3", "expressive=false", 'budget="8MB"']) == {"lr": 1e-3, "expressive": False,
                                                                                 "budget": "8MB"}
    with pytest.raises(ModelError, match="not a training setting"):
        parse_overrides(["speed=3"])
    with pytest.raises(ModelError, match="not a TOML value"):
        parse_overrides(["budget=8MB"])


def test_balance_scales_the_monophonic_collections_down_to_the_asked_share():
    tokens = {"bach": 1000, "folk": 9000, "quartets": 500}
    weights = balance({"*": 1.0, "bach": 2.0}, tokens, ("folk",), 0.6)
    poly = 1000 * weights["bach"] + 500 * weights["quartets"]
    assert poly / (poly + 9000 * weights["folk"]) == pytest.approx(0.6)
    assert weights["bach"] == 2.0 and weights["quartets"] == 1.0 and weights["folk"] < 1.0
    assert balance({"*": 1.0}, {"bach": 9000, "folk": 1000}, ("folk",), 0.6) == {"bach": 1.0, "folk": 1.0}
    with pytest.raises(ModelError, match="no polyphonic"):
        balance({"*": 1.0}, {"folk": 10}, ("folk",), 0.5)


def test_missing_or_unfinished_data_says_to_convert_first(tmp_path):
    with pytest.raises(MidiError, match="music21_corpus"):
        check_data(tmp_path / "nothing", is_default=True)
    (tmp_path / "half" / "bach").mkdir(parents=True)
    write_performance(random_performance(np.random.default_rng(0), 20), tmp_path / "half" / "bach" / "a.mid")
    with pytest.raises(MidiError, match="has not finished"):
        check_data(tmp_path / "half", is_default=True)
    check_data(tmp_path / "half", is_default=False)
    assert main(["--arch", "dsmr", "--data", str(tmp_path / "nothing")]) == 1


def stop_after(checks: int):
    """A stand-in for the recipe's StopFlag.__call__ that asks to stop once it has been asked `checks` times."""
    calls = []

    def stop(self) -> bool:
        calls.append(1)
        return len(calls) > checks

    return stop


# ---- runs ----------------------------------------------------------------------------------------------------------

def test_plan_shows_the_shares_and_trains_nothing(setup, capsys):
    assert main(args(setup, "--plan")) == 0
    err = capsys.readouterr().err
    assert "polyphonic share of training tokens 60.0%" in err  # the tunes were scaled down to the asked share
    assert "chorales" in err and "tunes" in err
    assert not setup["run"].exists() and not setup["dest"].exists()


def test_a_run_stops_resumes_and_exports_a_shippable_model_with_its_card(setup, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        patch.setattr(recipe_module.StopFlag, "__call__", stop_after(2))
        assert main(args(setup, "--steps", "4", "--resume")) == 130  # nothing to resume: it starts, then stops
    assert not setup["dest"].exists()  # exported only at the end
    assert main(args(setup, "--steps", "4")) == 1  # a run is there: continuing it needs --resume
    assert main(args(setup, "--steps", "4", "--resume")) == 0
    events = [json.loads(line) for line in (setup["run"] / "train" / "events.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["kind"] == "step"]
    assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(steps)  # the second session went on from step 2

    model = load_model(setup["dest"])
    assert model.arch == "dsmr" and model.config.d_model == 16
    with safe_open(str(setup["dest"] / "model.safetensors"), "pt") as weights:
        assert all(weights.get_tensor(k).dtype.itemsize == 2 for k in weights.keys())  # fp16
    card = (setup["dest"] / "card.md").read_text()
    assert card.startswith("# tiny-default: dsmr trained from scratch")
    assert "python -m trainer.recipes.default_models --arch dsmr" in card
    for row in ("| corpus |", "| corpus, polyphonic |", "| corpus, monophonic |", "| maestro | 1 |", "| chorales |",
                "expressive performance", "4 steps", "polyphonic share of training tokens: 60.0%"):
        assert row in card, row
    assert "name = \"tiny-default\"" in card  # the recipe settings are quoted
    err = capsys.readouterr().err
    assert "held-out perplexity, maestro:" in err and "token share by collection" in err

    write_performance(random_performance(np.random.default_rng(9), 50), Path(setup["data"]) / "tunes" / "new.mid")
    assert main(args(setup, "--steps", "5", "--resume")) == 1  # another corpus than the run started on
    assert "started on other data" in capsys.readouterr().err


def test_pick_last_exports_the_last_steps_weights_and_the_card_says_so(setup, capsys):
    def same_weights(model, file) -> bool:  # a shipped model (fp16) and a run's weights file (fp32)
        state = model.state_dict()
        with safe_open(str(file), "pt") as weights:  # tied weights are stored once
            return all(torch.equal(state[k], weights.get_tensor(k).half().float()) for k in weights.keys())

    keyboard = ("--set", "figuration=0.5", "--set", "register=0.5")  # the card names the keyboard augmentations
    assert main(args(setup, "--steps", "3", "--resume", *keyboard)) == 0
    assert same_weights(load_model(setup["dest"]), setup["run"] / "train" / "model.safetensors")  # the best
    assert "best held-out model at step" in (setup["dest"] / "card.md").read_text()
    # the run has ended: resuming it only exports again, now the last checkpoint's weights
    assert main(args(setup, "--steps", "3", "--resume", "--pick", "last")) == 0
    assert "exporting the last step's model (step 3)" in capsys.readouterr().err
    checkpoint = next((setup["run"] / "train" / "checkpoints").glob("step-*"))
    assert checkpoint.name == "step-00000003"
    assert same_weights(load_model(setup["dest"]), checkpoint / "model.safetensors")
    card = (setup["dest"] / "card.md").read_text()
    assert "shipped: the last step's model (step 3; the best on the held-out pieces was at step" in card
    assert "keyboard figuration of 50% of draws" in card  # the run's own settings, kept when resumed
    assert "the bass line an octave down in 50% of draws (trainer.register)" in card


def test_init_starts_a_new_run_from_a_model_and_the_card_tells_both_trainings(setup, capsys):
    assert main(args(setup, "--steps", "2", "--resume")) == 0
    first = load_model(setup["dest"])
    second = {**setup, "run": setup["run"].parent / "run2", "dest": setup["dest"].parent / "further"}
    assert main(args(second, "--steps", "3", "--init", str(setup["dest"]))) == 0
    events = [json.loads(line) for line in (second["run"] / "train" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2, 3]  # a fresh schedule
    initial = next(e for e in events if e["kind"] == "eval")
    assert initial["step"] == 0  # the starting model is scored first: it is the best so far
    card = (second["dest"] / "card.md").read_text()
    assert card.startswith("# tiny-default: dsmr trained further on music21's corpus")
    assert f"started from the weights of `{setup['dest'].name}`" in card
    training = card.partition("## Training")[2].split("\n## ")[0]
    assert training.index("  - 2 steps (") < training.index("- then, in this run:\n  - 3 steps (")  # both runs
    assert f"--init {setup['dest'].name}" in card and str(setup["dest"].parent) not in card  # no machine path
    further = load_model(second["dest"])
    assert further.config.to_dict().keys() == first.config.to_dict().keys()
    # --init belongs to the start of a run, and to a model of the recipe's kind
    assert main(args(second, "--steps", "4", "--resume", "--init", str(setup["run"]))) == 1
    assert "--init starts a new run" in capsys.readouterr().err
    wider = setup["dest"].parent / "wider"
    save_model(build_model("dsmr", {**first.config.to_dict(), "d_model": 32}), wider, "# wider\n")
    third = {**setup, "run": setup["run"].parent / "run3", "dest": setup["dest"].parent / "third"}
    assert main(args(third, "--steps", "1", "--init", str(wider))) == 1
    assert "d_model is 32, not 16" in capsys.readouterr().err
    assert not third["dest"].exists()


def test_an_smdim_run_resumes_scores_its_elbo_and_exports_a_model_generate_and_infill_read(setup, monkeypatch,
                                                                                          capsys, tmp_path):
    import torch

    from core.models.smdim.training import HELD_OUT_RATES, SMDIMTraining

    setup = {**setup, "dest": setup["dest"].parent / "tiny-smdim"}
    with monkeypatch.context() as patch:
        patch.setattr(recipe_module.StopFlag, "__call__", stop_after(1))
        assert main(args(setup, "--steps", "2", "--resume", arch="smdim")) == 130
    assert not setup["dest"].exists()
    assert main(args(setup, "--steps", "2", "--resume", arch="smdim")) == 0, capsys.readouterr().err
    events = [json.loads(line) for line in (setup["run"] / "train" / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["kind"] == "step"] == [1, 2]  # the second session went on from step 1
    err = capsys.readouterr().err
    assert "held-out ELBO, maestro:" in err and "bits/s" in err

    model = load_model(setup["dest"])
    assert model.arch == "smdim" and model.config.d_model == 32 and model.config.window == 64
    card = (setup["dest"] / "card.md").read_text()
    assert card.startswith("# tiny-smdim: smdim trained from scratch") and "held-out ELBO" in card.splitlines()[0]
    assert "## Held-out ELBO" in card and "upper bound on the negative log-likelihood" in card
    assert "## Held-out perplexity" not in card
    for row in ("| corpus |", "| corpus, polyphonic |", "| corpus, monophonic |", "| maestro | 1 |", "2 steps"):
        assert row in card, row
    scores = json.loads((setup["run"] / "scores.json").read_text())["scores"]
    maestro = scores["maestro"]
    assert "upper bound" in maestro["meaning"] and maestro["window"] == 64 and maestro["draws"] >= 8
    assert maestro["elbo_bits_per_second"] == pytest.approx(maestro["elbo_bits_per_token"] * maestro["tokens"]
                                                            / maestro["seconds"])
    parts = [scores["corpus, polyphonic"], scores["corpus, monophonic"]]
    assert scores["corpus"]["tokens"] == sum(p["tokens"] for p in parts)  # the corpus row is its parts' pieces

    # the same number as `recital eval`, and with the trainer's rates the trainer's validation number
    performance = read_performance(next((tmp_path / "maestro").glob("*.mid")))
    report = elbo_report(model, [performance], draws=HELD_OUT_RATES)
    bound, ids = SMDIMTraining(model).piece_bound(encode(performance).astype(np.int64),
                                                    torch.device("cpu"))
    assert report.nats == pytest.approx(bound) and report.tokens == ids
    assert recital(["eval", str(tmp_path / "maestro"), "--model", str(setup["dest"]), "--json",
                    str(tmp_path / "eval.json")]) == 0
    assert "diffusion ELBO:" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval.json").read_text())["elbo_bits_per_token"] == pytest.approx(
        maestro["elbo_bits_per_token"], rel=1e-5)  # the recipe scored the fp16 weights as shipped

    # `recital generate` and `recital infill` read the exported directory
    out = tmp_path / "out"
    assert recital(["generate", "--model", str(setup["dest"]), "--seconds", "2", "--out", str(out / "g.mid"),
                    "--seed", "1"]) == 0, capsys.readouterr().err
    assert (out / "g.mid").is_file()
    assert recital(["infill", str(tmp_path / "maestro" / "m.mid"), "--start", "1", "--end", "2", "--model",
                    str(setup["dest"]), "--out", str(out / "i.mid"), "--seed", "1"]) == 0, capsys.readouterr().err
    assert len(read_performance(out / "i.mid")) > 0


def test_the_elbo_is_refused_to_a_left_to_right_model_and_needs_a_draw(tiny_model_dir):
    from core.errors import RecitalError

    model = load_model(tiny_model_dir)
    with pytest.raises(RecitalError, match="reads left to right: its held-out number is its perplexity"):
        elbo_report(model, [np.array([1, 40, 300, 2])])
    from core.models.smdim import SMDIM, SMDIMConfig

    denoiser = SMDIM(SMDIMConfig(d_embed=16, d_model=32, n_blocks=1, n_heads=2, d_state=4, window=64, attn_window=8))
    with pytest.raises(RecitalError, match="draws per window must be at least 1, got 0"):
        elbo_report(denoiser, [np.array([1, 40, 300, 2])], draws=0)
    with pytest.raises(RecitalError, match="no piece has an id to score"):
        elbo_report(denoiser, [np.zeros(0, dtype=np.int64)])


def test_a_notes_run_warm_starts_from_a_performance_model_resumes_and_exports_a_notes_model(setup, monkeypatch,
                                                                                            capsys):
    from trainer.corpus import Corpus

    assert main(args(setup, "--steps", "2", "--resume")) == 0  # a "performance" model to start from
    source = load_model(setup["dest"])
    notes = {**setup, "run": setup["run"].parent / "notes-run", "dest": setup["dest"].parent / "notes"}
    with monkeypatch.context() as patch:
        patch.setattr(recipe_module.StopFlag, "__call__", stop_after(2))
        assert main(args(notes, "--steps", "4", "--codec", "notes", "--init", str(setup["dest"]))) == 130
    assert "warm start: transferred by meaning from the 'performance' codec to 'notes'" in capsys.readouterr().err
    assert main(args(notes, "--steps", "4", "--resume", "--codec", "performance")) == 1  # the run's codec stays
    assert "cannot go on with the 'performance' codec" in capsys.readouterr().err
    assert main(args(notes, "--steps", "4", "--resume")) == 0  # the run's codec, without saying it again
    model = load_model(notes["dest"])
    meta = json.loads((notes["dest"] / "config.json").read_text())
    assert meta["tokenizer"]["name"] == "notes" and model.config.codec == "notes"
    assert model.config.d_model == source.config.d_model
    card = (notes["dest"] / "card.md").read_text()
    assert "'notes' codec" in card.splitlines()[0] and "warm-started from the weights of `tiny-default`" in card
    assert "Pitch_p <- NoteOn_p" in card and "| perplexity | bits/s |" in card
    err = capsys.readouterr().err
    assert "held-out perplexity, maestro:" in err and "bits/s" in err
    Corpus.open(setup["data"], "notes")  # the run read the corpus with the notes codec


@pytest.mark.parametrize("arch", ["dsmr", "perceivers", "smdim"])
def test_a_notes_run_from_scratch_via_set_and_the_plan(setup, capsys, arch):
    assert main(args(setup, "--plan", "--set", 'model.codec="notes"', arch=arch)) == 0
    assert "'notes' codec" in capsys.readouterr().err
    assert main(args(setup, "--steps", "2", "--set", 'model.codec="notes"', arch=arch)) == 0
    assert load_model(setup["dest"]).config.codec == "notes"
    name = {"dsmr": "tiny-default", "perceivers": "tiny-perceivers", "smdim": "tiny-smdim"}[arch]
    card = (setup["dest"] / "card.md").read_text()
    assert card.startswith(f"# {name}: {arch} trained from scratch") and "'notes' codec" in card
