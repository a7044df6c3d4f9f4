"""PerceiverS on the note codec end to end (issue #17): a session continues a primer in whole notes under the
grammar, the trainer trains a notes PerceiverS, a performance PerceiverS transfers to notes by meaning, `recital
eval` scores a notes PerceiverS in bits per second, and adapting reads the primer in the model's codec. (Cached
generation == the training forward on the notes codec: tests/test_perceivers_cache.py's "notes" model.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core import notecodec as nc
from core.adapt import adapt
from core.cli import main as recital
from core.codecs import codec_of
from core.metrics import perplexity_report
from core.midi import read_performance, write_performance
from core.modeldir import load_model, save_model
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.session import GenerationSession
from tests.conftest import PIANO_PIECE
from tests.test_adapt import primer_nats, riff
from tests.test_notes_generation import assert_paired, is_pitch
from tests.test_train_data import write_folder
from tests.test_trainer_notes import assert_rows_by_meaning
from trainer.config import TrainConfig
from trainer.corpus import Corpus
from trainer.loop import fine_tune
from trainer.transfer import transferred

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "context": 48, "latents": 8, "scale": 16,
        "default_budget": "256KB"}


def notes_perceivers(**fields) -> PerceiverS:
    torch.manual_seed(0)
    return PerceiverS(PerceiverSConfig(**{**TINY, "codec": "notes", **fields})).eval()


def test_a_notes_session_continues_a_primer_in_whole_notes():
    """A primer far longer than the context (re-encodes, the prefill's skip), two lanes sampled: every new Pitch
    has its Duration within max_note, the notes the session showed live are its pieces', the primer is kept."""
    model = notes_perceivers()
    primer = read_performance(PIANO_PIECE)
    assert len(nc.encode(primer, eos=False)) > 4 * TINY["context"]
    session = GenerationSession(model, primer, seconds=3, variations=2, seed=1, max_note=0.4)
    live = [[], []]
    for event in session:
        for lane, events in enumerate(event.notes):
            live[lane] += [(e.onset, e.time, e.pitch) for e in events if e.kind == "off"]
    for lane, ids in enumerate(session.lanes):
        assert ids and all(0 <= i < nc.VOCAB_SIZE for i in ids)
        assert_paired(ids, longest=0.4)
        part = session.new_parts()[lane]
        assert is_pitch(ids).sum() >= len(part) > 0  # strikes at one tick may merge
        assert (part.onset >= session.start_time - 1e-9).all()
        shown = sorted((round(on, 6), round(off, 6), int(p)) for on, off, p in live[lane])  # float sums differ
        assert shown == sorted(zip(part.onset.round(6).tolist(), part.offset.round(6).tolist(), part.pitch.tolist(),
                                   strict=True))
    for piece, part in zip(session.pieces(), session.new_parts(), strict=True):
        assert len(piece) == len(primer) + len(part)


def test_generation_of_a_notes_perceivers_continues_exactly_as_its_forward_reads():
    """A real primer prefilled and greedy steps after it: the last logits are the training forward's on the crop
    the current latent window reads (exact cached generation on the note codec)."""
    model = notes_perceivers(context=24, latents=8, scale=5)
    primer = nc.encode(riff(2.0), eos=False).astype(np.int64)
    state = model.new_state(model.plan("1MB"))
    ids = torch.from_numpy(primer)[None]
    logits = model.prefill(ids, state)
    for _ in range(30):
        token = logits.argmax(-1)
        ids = torch.cat([ids, token[:, None]], dim=1)
        logits = model.step(token, state)
    start, context_start, length = int(state.start[0]), int(state.context_start[0]), ids.shape[1]
    assert int(state.length[0]) == length and start > 0
    ahead = torch.full((1, start + model.config.latents - length), nc.TIME_SHIFT)  # never read: causal
    full, _ = model(torch.cat([ids, ahead], dim=1)[:, context_start:])  # latents on positions start .. start + M
    assert torch.allclose(logits, full[:, length - 1 - start], atol=1e-5)


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "midi", 6, notes=30)


def run(folder, out, **overrides) -> TrainConfig:
    settings = dict(folder=str(folder), out=str(out), base=None, arch="perceivers",
                    model={**TINY, "codec": "notes"}, steps=4, batch=2, val_every=2, checkpoint_every=2,
                    log_every=1, workers=1, val_fraction=0.2, lr=1e-2)
    settings.update(overrides)
    return TrainConfig(**settings)


@pytest.mark.usefixtures("isolated_dirs")
def test_the_trainer_trains_a_notes_perceivers_and_fine_tunes_it_on_notes(folder, tmp_path):
    result = fine_tune(run(folder, tmp_path / "out"))
    assert result.steps == 4 and result.best_perplexity is not None
    assert result.best_perplexity <= result.initial_perplexity
    meta = json.loads((tmp_path / "out" / "config.json").read_text())
    assert meta["arch"] == "perceivers" and meta["tokenizer"] == {"name": "notes", "vocab_size": nc.VOCAB_SIZE}
    assert "'notes' codec" in (tmp_path / "out" / "card.md").read_text()
    corpus = Corpus.open(folder, "notes")  # the run read the pieces in the model's codec
    assert nc.DURATION <= corpus.piece(0)[-2] < nc.TIME_SHIFT
    tuned = fine_tune(run(folder, tmp_path / "tuned", base=str(tmp_path / "out"), model={}, steps=2))
    assert tuned.steps == 2 and codec_of(load_model(tmp_path / "tuned")).NAME == "notes"
    session = GenerationSession(load_model(tmp_path / "tuned"), seconds=2, seed=0, max_note=0.5)
    session.run()
    assert_paired(session.lanes[0], longest=0.5)


def test_a_performance_perceivers_transfers_to_notes_by_meaning():
    torch.manual_seed(1)
    source = PerceiverS(PerceiverSConfig(**TINY, sounding_input=True))
    model, how = transferred(source, "notes", {"sounding_input": False})
    assert_rows_by_meaning(source, model)
    assert how.by_meaning == ["embed.weight", "head.weight"] and how.dropped == ["sounding"] and not how.fresh
    # the transferred model generates: its packed step weights are the new rows
    session = GenerationSession(model.eval(), riff(2.0), seconds=2, seed=3, max_note=0.5)
    session.run()
    assert_paired(session.lanes[0], longest=0.5)


def test_recital_eval_scores_a_notes_perceivers_in_bits_per_second(tmp_path, capsys):
    model = notes_perceivers()
    model_dir = save_model(model, tmp_path / "notes-perceivers", "A tiny untrained notes PerceiverS for tests.")
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    for i, seconds in enumerate((3.0, 5.0)):
        write_performance(riff(seconds), pieces / f"riff_{i}.mid")
    assert recital(["eval", "--model", str(model_dir), str(pieces), "--budget", "64KB",
                    "--json", str(tmp_path / "eval.json")]) == 0
    out = capsys.readouterr().out
    assert "codec 'notes'" in out and "bits per second of music" in out
    result = json.loads((tmp_path / "eval.json").read_text())
    performances = [read_performance(p) for p in sorted(pieces.glob("*.mid"))]
    fast = perplexity_report(model, performances, 64 * 1024)
    slow = perplexity_report(model, performances, 64 * 1024, stepwise=True)  # a step per id
    assert result["codec"] == "notes" and result["tokens"] == fast.tokens == slow.tokens
    assert fast.tokens == sum(len(nc.encode(p)) - 1 for p in performances)
    assert result["bits_per_second"] == pytest.approx(fast.bits_per_second, rel=1e-5)
    assert fast.nats == pytest.approx(slow.nats, rel=1e-5)
    assert 0.7 * nc.VOCAB_SIZE < fast.perplexity < 1.3 * nc.VOCAB_SIZE  # untrained: near uniform over its ids


def test_adapting_a_notes_perceivers_reads_the_primer_in_its_codec():
    model = notes_perceivers()
    ids = nc.encode(riff(8.0), eos=False).astype(np.int64)
    adapted = adapt(model, ids, steps=5, lr=1e-2)
    assert primer_nats(adapted.model, ids) < 0.9 * primer_nats(model, ids)
