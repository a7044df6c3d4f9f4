"""Model directories: atomic save, load by path or name, and a clear ModelError for everything malformed."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import core.modeldir as modeldir
from core.errors import ModelError
from core.modeldir import list_models, load_model, resolve, save_model
from core.models.dsmr import DSMR, DSMRConfig
from core.tokenizer import BOS, NOTE_ON


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty user and shipped model folders."""
    monkeypatch.setenv("RECITAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(modeldir, "SHIPPED_DIR", tmp_path / "assets" / "models")
    return tmp_path / "data" / "models", tmp_path / "assets" / "models"


def logits_of(model, ids=(BOS, NOTE_ON + 60, NOTE_ON + 64)):
    state = model.new_state(model.plan("256KB"))
    with torch.no_grad():
        return model.prefill(torch.tensor([ids]), state)


def test_round_trip_keeps_config_weights_and_card(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    assert model.arch == "dsmr" and not model.training
    again = load_model(save_model(model, tmp_path / "copy", "# Copy"))
    assert again.config == model.config
    assert torch.equal(logits_of(again), logits_of(model))
    assert (tmp_path / "copy" / "card.md").read_text() == "# Copy\n"
    meta = json.loads((tmp_path / "copy" / "config.json").read_text())
    assert meta["arch"] == "dsmr" and meta["tokenizer"]["vocab_size"] == 391
    assert meta["config"]["schedule"] == "two_scale"


def test_a_model_of_the_notes_codec_records_it_and_reads_back(tmp_path):
    """config.json names each model's codec; a directory from before the field (no "codec") reads as the event
    codec's, as the shipped models of earlier builds do."""
    from core.codecs import codec_of

    model = DSMR(DSMRConfig(codec="notes", d_model=16, n_layers=2, n_heads=2, segment_len=8, max_horizon=16))
    assert model.config.vocab_size == 327 and model.embed.weight.shape[0] == 327
    meta = json.loads((save_model(model, tmp_path / "notes", "n") / "config.json").read_text())
    assert meta["tokenizer"] == {"name": "notes", "vocab_size": 327} and meta["config"]["codec"] == "notes"
    assert codec_of(load_model(tmp_path / "notes")).NAME == "notes"
    old = save_model(DSMR(DSMRConfig(d_model=16, n_layers=2, n_heads=2, segment_len=8, max_horizon=16)),
                     tmp_path / "old", "o")
    meta = json.loads((old / "config.json").read_text())
    del meta["config"]["codec"]
    (old / "config.json").write_text(json.dumps(meta))
    assert codec_of(load_model(old)).NAME == "performance"
    with pytest.raises(ModelError, match="vocab_size 391 is not the 'notes' codec's 327"):
        DSMRConfig(codec="notes", vocab_size=391)
    with pytest.raises(ModelError, match="codec must be one of 'performance', 'notes', got 'midi'"):
        DSMRConfig(codec="midi")
    with pytest.raises(ModelError, match="sounding_input follows the 'performance' codec"):
        DSMRConfig(codec="notes", sounding_input=True)


def test_save_replaces_atomically_and_leaves_nothing_behind(tiny_model_dir, tmp_path):
    model = load_model(tiny_model_dir)
    target = tmp_path / "models" / "mine"
    save_model(model, target, "first")
    torch.manual_seed(5)
    other = DSMR(model.config)
    save_model(other, target, "second")
    assert (target / "card.md").read_text() == "second\n"
    assert torch.equal(logits_of(load_model(target)), logits_of(other))
    assert sorted(p.name for p in target.parent.iterdir()) == ["mine"]


def test_names_resolve_to_user_then_shipped_models(tiny_model_dir, places):
    user, shipped = places
    shutil.copytree(tiny_model_dir, shipped / "default")
    shutil.copytree(tiny_model_dir, user / "mine")
    assert resolve("default") == shipped / "default"
    assert resolve("mine") == user / "mine"
    assert load_model("mine").arch == "dsmr"
    shutil.copytree(tiny_model_dir, user / "default")
    assert resolve("default") == user / "default"
    infos = list_models()
    assert [(i.name, i.source, i.arch) for i in infos] == [
        ("default", "user", "dsmr"), ("mine", "user", "dsmr"), ("default", "shipped", "dsmr")]
    assert infos[0].summary == "Tiny test model" and infos[0].size_bytes > 0


def test_missing_models_name_where_they_were_looked_for(places, tmp_path):
    with pytest.raises(ModelError, match="--model PATH"):
        load_model("default")
    with pytest.raises(ModelError, match="no model named 'nope'.*recital models"):
        load_model("nope")
    with pytest.raises(ModelError, match="no such model directory"):
        load_model(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        load_model(tmp_path / "empty")


def broken_copy(tiny_model_dir, tmp_path, edit):
    path = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, path)
    meta = json.loads((path / "config.json").read_text())
    result = edit(meta, path)
    if result != "raw":
        (path / "config.json").write_text(json.dumps(meta))
    return path


def _set(keys, value):
    def edit(meta, _path):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (lambda meta, path: (path / "config.json").write_text("{not json") and "raw", "cannot read the model config"),
    (_set(["arch"], "transformer9"), "unknown model architecture 'transformer9'"),
    (_set(["tokenizer", "vocab_size"], 512), "512 ids"),
    (_set(["config", "vocab_size"], 500), "vocab_size 500"),
    (_set(["tokenizer", "name"], "remi"), "made for tokenizer 'remi'.*'notes' with 327"),
    (_set(["config", "codec"], "notes"), "config says codec 'notes' but \"tokenizer\" says 'performance'"),
    (_set(["config", "d_model"], 64), "weights do not fit"),
    (_set(["config", "wings"], 2), "unknown fields wings"),
    (_set(["config", "n_heads"], 3), "divisible"),
    (_set(["format"], 99), "newer Recital"),
    (lambda meta, path: meta.pop("config") and None, "malformed model config"),
    (lambda meta, path: (path / "model.safetensors").unlink(), "no weights"),
    (lambda meta, path: (path / "model.safetensors").write_bytes(b"garbage"), "is damaged"),
])
def test_malformed_directories_are_model_errors(tiny_model_dir, tmp_path, edit, message):
    with pytest.raises(ModelError, match=message):
        load_model(broken_copy(tiny_model_dir, tmp_path, edit))


def test_architecture_not_in_this_build(monkeypatch, tiny_model_dir, tmp_path):
    from core.models import registry

    monkeypatch.setitem(registry._SHIPPED, "dsmr", ("core.models.not_built", "X", "XConfig", "x:XTraining"))
    monkeypatch.delitem(registry._loaded, "dsmr", raising=False)
    with pytest.raises(ModelError, match="not in this build"):
        load_model(tiny_model_dir)


def test_perceivers_directories_round_trip(tmp_path):
    perceivers = pytest.importorskip("core.models.perceivers")
    config = perceivers.PerceiverSConfig(context=64, latents=16, scale=32, d_model=32, n_heads=2, n_layers=1)
    torch.manual_seed(0)
    model = perceivers.PerceiverS(config)
    again = load_model(save_model(model, tmp_path / "p", "PerceiverS test"))
    assert again.arch == "perceivers" and again.config == config
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again.state_dict()[name]), name


def test_dsmr_config_survives_json():
    config = DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=8, horizons=[3, 1], schedule="explicit")
    assert DSMRConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
