"""Shared fixtures: the MIDI files of tests/data (in the clone, nothing beside it) and small synthetic pieces."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.midi import Performance

# Tiny models on one thread everywhere, training included (core/threads.py gives training every core), and in
# the commands tests run as subprocesses: on a shared CPU a second thread only adds waiting.
os.environ.setdefault("RECITAL_THREADS", "1")

# Made by tests/data/make_fixtures.py and committed: piano/ (solo performances with pedal), pop/ (one-track
# arrangements), multitrack/ (bands with drums, tempo maps, meter changes), broken/ (controller value 168, no notes).
DATA = Path(__file__).resolve().parent / "data"
PIANO_PIECE = DATA / "piano" / "01-prelude.mid"  # the one real-looking piano performance a test opens


def midi_files(*folders: str) -> list[Path]:
    """The MIDI files of tests/data/<folder>..., sorted; none found is an error, never a skip."""
    files = sorted(p for folder in folders for p in (DATA / folder).glob("*.mid"))
    if not files:
        raise FileNotFoundError(f"no MIDI files in {', '.join(str(DATA / f) for f in folders)}: "
                                "run tests/data/make_fixtures.py")
    return files


@pytest.fixture
def scale() -> Performance:
    """C major scale, one note every 0.25 s, each 0.2 s long, rising velocity."""
    pitches = np.array([60, 62, 64, 65, 67, 69, 71, 72])
    onset = np.arange(8) * 0.25
    return Performance.from_notes(onset, onset + 0.2, pitches, np.linspace(30, 110, 8).astype(int))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny DSMR model directory (d_model 32, 2 layers, segments of 16), made once."""
    import torch

    from core.modeldir import save_model
    from core.models.dsmr import DSMR, DSMRConfig

    torch.manual_seed(0)
    config = DSMRConfig(d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=256, n_long=1,
                        default_budget="256KB")
    path = tmp_path_factory.mktemp("models") / "tiny"
    return save_model(DSMR(config), path, "# Tiny test model\n\nRandom weights, for tests only.\n")


@pytest.fixture
def isolated_dirs(tmp_path, monkeypatch):
    """This test's own corpus cache and user-data folders (models, runs), never the user's."""
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RECITAL_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def corpus_of(tmp_path, isolated_dirs):
    """corpus_of(piece): a corpus of that one Performance, written as a MIDI file and scanned (this test's cache)."""
    from core.midi import write_performance
    from trainer.corpus import Corpus

    def build(piece: Performance):
        folder = tmp_path / "midi"
        folder.mkdir()
        write_performance(piece, folder / "piece.mid")
        return Corpus.build(folder, workers=1)

    return build


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on one thread: on a shared CPU a second thread only adds waiting (each op up to ~100x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
