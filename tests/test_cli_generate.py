"""`recital generate`, `recital continue` and `recital models` with a tiny random model directory."""

from __future__ import annotations

import shutil

import pytest

import core.modeldir as modeldir
from core.cli import main
from core.midi import read_performance, write_performance
from tests.conftest import real_midi_files

pytest_plugins = ("tests.jack",)  # the JACK server fixtures: jack, no_jack, jack_server


def test_generate_writes_a_piece_and_says_what_it_did(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "piece.mid"
    args = ["generate", "--model", str(tiny_model_dir), "--seconds", "4", "--out", str(out), "--seed", "3",
            "--budget", "128KB", "--temperature", "1.2", "--top-p", "0.9"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: " in text and len(read_performance(out)) > 0
    assert "tokens/s" in text and "of 128.0 KB budget" in text and "two_scale" in text
    first = out.read_bytes()
    assert main(args) == 0 and out.read_bytes() == first  # the seed makes it reproducible


def test_a_budget_beyond_the_trained_memory_is_not_used_and_the_user_is_told(tiny_model_dir, tmp_path, capsys):
    import json

    model = tmp_path / "trained"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "config.json").read_text())
    meta["config"]["trained_horizons"] = [64, 16]
    (model / "config.json").write_text(json.dumps(meta))
    out = tmp_path / "piece.mid"
    for budget in ("24KB", "1MB"):  # 24KB plans (48, 12): under the cap
        assert main(["generate", "--model", str(model), "--seconds", "1", "--out", str(out), "--seed", "3",
                     "--budget", budget, "--max-tokens", "20"]) == 0
    small, large = capsys.readouterr().out.split("wrote ")[:2]
    assert "horizons [64, 16]" in large and "trained with at most 64 tokens of memory" in large
    assert "trained with" not in small


def test_variations_write_one_file_each(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "v.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "2", "--out", str(out),
                 "--variations", "3", "--seed", "1", "--max-tokens", "200"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v-1.mid", "v-2.mid", "v-3.mid"]
    assert "at batch 3" in capsys.readouterr().out


def test_continue_keeps_the_primer(tiny_model_dir, tmp_path, scale, capsys):
    primer = tmp_path / "primer.mid"
    write_performance(scale, primer)
    out = tmp_path / "more.mid"
    assert main(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "3", "--out", str(out),
                 "--seed", "2"]) == 0
    piece = read_performance(out)
    assert len(piece) >= len(scale)
    assert piece.pitch[:8].tolist() == scale.pitch.tolist()  # the scale comes first, then what follows
    assert "after the primer's 1.9 s" in capsys.readouterr().out


@pytest.mark.parametrize("path", real_midi_files("maestro")[:1], ids=lambda p: getattr(p, "name", "none"))
def test_continue_streams_a_whole_real_piece(tiny_model_dir, tmp_path, path, capsys):
    out = tmp_path / "real.mid"
    assert main(["continue", str(path), "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(out),
                 "--budget", "64KB", "--max-tokens", "20"]) == 0
    assert read_performance(out).duration >= read_performance(path).duration - 0.05


def test_errors_are_one_line(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(modeldir, "SHIPPED_DIR", tmp_path / "none")
    monkeypatch.setenv("RECITAL_DATA_DIR", str(tmp_path / "data"))
    assert main(["generate", "--seconds", "1", "--out", str(tmp_path / "x.mid")]) == 1
    assert "--model PATH" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"),
                 "--budget", "1KB"]) == 1
    assert "at least" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"),
                 "--budget", "lots"]) == 1
    assert "cannot read memory budget" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"),
                 "--top-p", "2"]) == 1
    assert "top-p" in capsys.readouterr().err
    assert main(["continue", str(tmp_path / "absent.mid"), "--model", str(tiny_model_dir),
                 "--out", str(tmp_path / "x.mid")]) == 1
    assert "absent.mid" in capsys.readouterr().err
    assert not (tmp_path / "x.mid").exists()


def test_models_lists_user_and_shipped(tiny_model_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(modeldir, "SHIPPED_DIR", tmp_path / "assets")
    monkeypatch.setenv("RECITAL_DATA_DIR", str(tmp_path / "data"))
    assert main(["models"]) == 0
    assert "no models found" in capsys.readouterr().out
    shutil.copytree(tiny_model_dir, tmp_path / "assets" / "default")
    shutil.copytree(tiny_model_dir, tmp_path / "data" / "models" / "mine")
    assert main(["models", "--paths"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["mine", "user", "dsmr"] and "Tiny test model" in lines[0]
    assert lines[2].split()[:3] == ["default", "shipped", "dsmr"]
    assert str(tmp_path / "assets" / "default") in lines[3]


def test_generate_renders_a_wav(tiny_model_dir, tmp_path, capsys):
    import wave

    out, wav = tmp_path / "p.mid", tmp_path / "p.wav"
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "2", "--out", str(out),
                 "--wav", str(wav), "--seed", "5"]) == 0
    assert f"rendered {wav}" in capsys.readouterr().out
    with wave.open(str(wav)) as handle:
        assert (handle.getframerate(), handle.getnchannels()) == (44100, 2)
        assert handle.getnframes() / 44100 >= read_performance(out).duration


def test_generate_streams_to_the_virtual_port_while_writing(tiny_model_dir, tmp_path, jack, capsys):
    """A DAW connected to "Recital" hears exactly the notes written to the file, while they are generated."""
    from tests.jack import LateListener

    out = tmp_path / "live.mid"
    with LateListener() as listener:
        code = main(["generate", "--model", str(tiny_model_dir), "--seconds", "3", "--out", str(out),
                     "--virtual", "--seed", "11"])
    assert code == 0 and listener.connected.is_set()
    assert "playing to the end" in capsys.readouterr().out
    written = read_performance(out)
    assert len(written) > 0 and sorted(listener.note_ons()) == sorted(written.pitch.tolist())
