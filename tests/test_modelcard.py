"""The composer-facing model summary and the scrubbing of machine paths: facts drawn from a model directory and
its card (as the trainer writes it), no absolute path in any card shown or shipped, clear errors."""

from __future__ import annotations

import shutil

import pytest
import torch

from core.errors import ModelError
from core.modelcard import PATH, scrub_paths, shown_name, summarize
from core.modeldir import SHIPPED_DIR, save_model
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.state import TOKENS_PER_SECOND
from trainer.checkpoint import card_text


def trainer_card(base: str | None, folder: str, command: str = "recital train /home/ana/midi --out mine") -> str:
    return card_text(name="mine", arch="dsmr", base=base, data={
        "folder": folder, "files": 40, "pieces": 38, "train_pieces": 36, "val_pieces": 2, "tokens": 90_000,
        "hours": 0.5}, steps=12, wall_seconds=60.0, tokens=9_000, best_perplexity=7.5, date="2026-12-01",
        command=command, model_config={"d_model": 32}, augmenting=True)


def test_scrub_paths_keeps_the_name_and_leaves_prose_and_relative_paths_alone():
    assert scrub_paths("- /root/.cache/recital/music21-midi: 14 files") == "- music21-midi: 14 files"
    assert scrub_paths("from ~/.cache/recital/corpus: ok") == "from corpus: ok"
    assert scrub_paths("saved in /home/ana/models/mine.") == "saved in mine."
    assert scrub_paths("`--init /tmp/x/default/`") == "`--init default`"
    assert scrub_paths(r"C:\Users\ana\midi, and D:/music/bach") == "midi, and bach"
    prose = "1/16 MB, PC/seg, tokens/s, ../shared/midi/maestro, assets/models/default, https://example.org/a/b"
    assert scrub_paths(prose) == prose
    assert shown_name("/home/ana/models/default") == "default" and shown_name("default") == "default"


def test_the_trainer_writes_cards_without_machine_paths(tmp_path):
    card = trainer_card(str(tmp_path / "models" / "base"), str(tmp_path / "my-midi"))
    assert str(tmp_path) not in card and "/home/ana" not in card and PATH.search(card) is None
    assert "fine-tuned from base on 38 pieces" in card and "- data: my-midi: 40 files" in card
    assert "- recipe: `recital train midi --out mine`" in card


def test_summary_of_a_fine_tuned_dsmr(tiny_model_dir, tmp_path):
    folder = shutil.copytree(tiny_model_dir, tmp_path / "mine")
    (folder / "card.md").write_text(trainer_card("/home/ana/.local/share/recital/models/default",
                                                 "/home/ana/My-MIDI"), encoding="utf-8")
    summary = summarize(folder)
    assert summary.trained_on == "Fine-tuned from default on My-MIDI: 38 pieces, 0.50 hours"
    from core.modeldir import load_model

    model = load_model(folder)
    plan = model.plan()
    seconds = sorted({(m + plan.segment_len) / TOKENS_PER_SECOND for m in plan.horizons})
    expected = f"~{seconds[0]:.1f}-{seconds[-1]:.1f} s" if len(seconds) > 1 else f"~{seconds[0]:.1f} s"
    assert summary.remembers == f"Remembers {expected} of music (default budget, 256.0 KB)"
    parameters = sum(p.numel() for p in model.parameters())
    size = (folder / "model.safetensors").stat().st_size
    assert summary.sizes == f"Size: {parameters / 1e6:.2f} M parameters, {size / 1024:.1f} KB"
    assert summary.architecture == "How it works: DSMR, 2 layers x 32, each layer with its own memory"
    assert all(PATH.search(line) is None for line in summary.lines())


def test_summary_of_a_perceivers_model_and_of_a_card_that_says_nothing(tmp_path):
    torch.manual_seed(0)
    config = PerceiverSConfig(context=400, latents=8, scale=3, d_model=16, n_heads=2, n_layers=2,
                              default_budget="4MB")
    folder = save_model(PerceiverS(config), tmp_path / "p", "# p: random weights\n\n- data: none (untrained)\n")
    summary = summarize(folder)
    assert summary.trained_on == "Trained on: not told by its card"
    assert summary.remembers == "Remembers ~10 s of music (default budget, 4.0 MB)"  # 400 tokens
    assert summary.architecture == ("How it works: PerceiverS, 4 attention layers x 16, reading up to 400 tokens "
                                    "back, condensed to 8")


def test_summary_of_an_unreadable_model_is_a_model_error(tmp_path):
    with pytest.raises(ModelError, match="not a model directory"):
        summarize(tmp_path)
    (tmp_path / "config.json").write_text('{"arch": "dsmr", "config": {"d_model": -1}, '
                                          '"tokenizer": {"name": "performance", "vocab_size": 391}}')
    with pytest.raises(ModelError, match="bad DSMR config") as error:
        summarize(tmp_path)
    assert str(error.value).startswith(str(tmp_path))  # where: the folder or its config.json


@pytest.mark.parametrize("name", sorted(p.name for p in SHIPPED_DIR.iterdir() if (p / "card.md").is_file()))
def test_shipped_cards_name_no_machine_path_and_summarize(name):
    card = (SHIPPED_DIR / name / "card.md").read_text(encoding="utf-8")
    assert PATH.search(card) is None, PATH.search(card)
    summary = summarize(SHIPPED_DIR / name)
    assert summary.trained_on.startswith("Trained on music21's corpus: ") and summary.trained_on.endswith(" hours")
    assert summary.remembers.startswith("Remembers ~") and "M parameters" in summary.sizes
