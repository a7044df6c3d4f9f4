"""The default models' listening check: cropping, silences, the card section, and a whole report on a tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import RecitalError
from core.midi import Performance, read_performance
from core.modeldir import load_model
from core.tokenizer import encode
from tests.conftest import midi_files
from trainer.recipes.samples import (
    SECTION,
    crop,
    longest_silence,
    replace_section,
    sample_report,
    section_text,
)


def perf(notes: list[tuple[float, float, int]]) -> Performance:
    onset, offset, pitch = (np.array(column) for column in zip(*notes, strict=True))
    return Performance(onset.astype(float), offset.astype(float), pitch.astype(np.int16),
                       np.full(len(notes), 64, dtype=np.int16))


def test_crop_keeps_notes_that_start_in_time_and_cuts_them_there():
    piece = crop(perf([(0.0, 1.0, 60), (1.5, 4.0, 62), (3.0, 3.5, 64)]), 2.0)
    assert piece.pitch.tolist() == [60, 62] and piece.offset.tolist() == [1.0, 2.0]


def test_longest_silence_is_measured_between_sounding_notes():
    # 0-3 s sounds (the long note covers the second one), silence until 5 s, then 1.5 s after 5.5
    piece = perf([(0.0, 3.0, 60), (1.0, 1.5, 62), (5.0, 5.5, 64), (7.0, 8.0, 65)])
    assert longest_silence(piece) == pytest.approx(2.0)
    assert longest_silence(perf([(0.0, 1.0, 60)])) == 0.0


CARD = "# model\n\n## Held-out perplexity\n\ntable\n\n## Model config\n\n```json\n{}\n```\n"


def test_the_section_goes_before_the_config_and_is_replaced_later():
    first = replace_section(CARD, f"{SECTION}\n\nfirst\n")
    assert first.index(SECTION) < first.index("## Model config") and "first" in first
    second = replace_section(first, f"{SECTION}\n\nsecond\n")
    assert "first" not in second and second.count(SECTION) == 1
    assert second.endswith("## Model config\n\n```json\n{}\n```\n") and "## Held-out perplexity" in second


class FolderCorpus:
    """A corpus of real MIDI files read whole: piece(i) -> ids, as trainer.corpus.Corpus gives them."""

    codec = "performance"

    def __init__(self, files):
        self.ids = [encode(read_performance(path)) for path in files]

    def piece(self, i: int) -> np.ndarray:
        return self.ids[i]


def test_a_report_on_a_tiny_model(tiny_model_dir, tmp_path):
    files = midi_files("pop")[:4]
    model = load_model(tiny_model_dir)
    report = sample_report(model, FolderCorpus(files), [0, 1, 2, 3], tmp_path, count=2, seconds=3.0, seed=1,
                           log=lambda text: None)
    written = sorted(p.name for p in (tmp_path / "generated").glob("*.mid"))
    assert written == ["sample-00.mid", "sample-01.mid"] and len(list((tmp_path / "reference").glob("*.mid"))) == 2
    for row in report["pieces"]:  # the model may not end a piece early: each plays (nearly) its 3 s
        assert 2.0 <= row["seconds"] <= 3.5
    assert 0.0 <= report["generated"]["mean_oa"] <= 1.0 and 0.0 <= report["held_out"]["mean_oa"] <= 1.0
    text = section_text(report, "python -m trainer.recipes.samples --arch dsmr")
    assert text.startswith(SECTION) and "| PCH |" in text and "| **mean** |" in text
    with pytest.raises(RecitalError, match="held-out pieces"):
        sample_report(model, FolderCorpus(files[:2]), [0, 1], tmp_path, count=2, seconds=3.0)
