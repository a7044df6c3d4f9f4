"""`recital generate`, `recital continue` and `recital models` with a tiny random model directory."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import core.modeldir as modeldir
from core.cli import main
from core.midi import read_performance, write_performance
from tests.conftest import PIANO_PIECE, midi_files

pytest_plugins = ("tests.jack",)  # the JACK server fixtures: jack, no_jack, jack_server
ROOT = Path(__file__).resolve().parents[1]


def rejected(args: list[str], capsys) -> str:
    """The one line argparse prints when it refuses `args` (exit 2, no usage block)."""
    with pytest.raises(SystemExit) as exit_:
        main(args)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"recital {args[0]}: error: ") and err.endswith(f"(see recital {args[0]} --help)\n")
    return err


def test_generate_writes_a_piece_and_says_what_it_did(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "piece.mid"
    args = ["generate", "--model", str(tiny_model_dir), "--seconds", "4", "--out", str(out), "--seed", "3",
            "--budget", "128KB", "--temperature", "1.2", "--top-p", "0.9"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert f"wrote {out}: " in text and len(read_performance(out)) > 0
    assert "tokens/s" in text and "of 128.0 KB budget" in text and "two_scale" in text
    assert re.search(r"^read the primer \(1 tokens\) in [\d.]+ s; generated \d+ tokens in [\d.]+ s \(\d+ tokens/s "
                     r"at batch 1\); state memory [\d.]+ KB of 128.0 KB budget$", text, re.M), text
    first = out.read_bytes()
    assert main([*args, "--force"]) == 0 and out.read_bytes() == first  # the seed makes it reproducible


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
                     "--budget", budget, "--max-tokens", "20", "--force"]) == 0
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
    assert "after the primer's 2.0 s" in capsys.readouterr().out  # its 1.95 s as read (float32 seconds)


@pytest.mark.parametrize("path", midi_files("piano")[:1], ids=lambda p: getattr(p, "name", "none"))
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
    assert "cannot read memory budget" in rejected(["generate", "--model", str(tiny_model_dir), "--out",
                                                    str(tmp_path / "x.mid"), "--budget", "lots"], capsys)
    assert "--top-p" in rejected(["generate", "--model", str(tiny_model_dir), "--out", str(tmp_path / "x.mid"),
                                  "--top-p", "2"], capsys)
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


# --- outputs never destroy what the user made --------------------------------------------------------------

def failed(args: list[str], capsys) -> str:
    """The one `error: ...` line of a command that exits 1."""
    assert main(args) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    return captured.err


def test_continue_refuses_to_write_over_its_primer_even_through_links(tiny_model_dir, tmp_path, scale, capsys):
    primer = tmp_path / "primer.mid"
    write_performance(scale, primer)
    original = primer.read_bytes()
    os.link(primer, tmp_path / "hard.mid")
    (tmp_path / "soft.mid").symlink_to(primer)
    for out in ("primer.mid", "hard.mid", "soft.mid"):
        err = failed(["continue", str(primer), "--model", str(tiny_model_dir), "--seconds", "1", "--force",
                      "--out", str(tmp_path / out)], capsys)
        assert f"is the input {primer}" in err
    assert primer.read_bytes() == original and (tmp_path / "soft.mid").is_symlink()


def test_an_existing_out_needs_force(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "mine.mid"
    out.write_bytes(b"the composer's own file")
    args = ["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(out), "--max-tokens", "30",
            "--seed", "0"]  # seeded: an unseeded tiny model sometimes wrote no note in 30 ids (a file with no notes)
    assert "already exists; pass --force to replace it" in failed(args, capsys)
    assert out.read_bytes() == b"the composer's own file"
    assert main([*args, "--force"]) == 0 and len(read_performance(out)) >= 1
    assert out.read_bytes().startswith(b"MThd")


def test_every_variation_and_wav_is_checked_before_generating(tiny_model_dir, tmp_path, capsys):
    (tmp_path / "v-2.mid").write_bytes(b"kept")
    args = ["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(tmp_path / "v.mid"),
            "--variations", "3"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "v-2.mid: already exists" in captured.err and "model" not in captured.out  # nothing generated
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v-2.mid"]
    (tmp_path / "v-2.mid").unlink()
    (tmp_path / "w-3.wav").write_bytes(b"kept")
    assert "w-3.wav: already exists" in failed([*args, "--wav", str(tmp_path / "w.wav")], capsys)
    assert "written twice" in failed([*args[:6], str(tmp_path / "x.wav"), "--wav", str(tmp_path / "x.wav")],
                                     capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w-3.wav"]


def test_devices_and_fifos_are_never_written(tiny_model_dir, tmp_path, capsys):
    fifo = tmp_path / "pipe.mid"
    os.mkfifo(fifo)
    for out in (str(fifo), os.devnull):
        err = failed(["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", out, "--force"],
                     capsys)
        assert "Recital writes only regular files" in err
    assert not fifo.is_file() and not Path(os.devnull).is_file()


def test_a_symlinked_out_writes_its_target_and_stays_a_link(tiny_model_dir, tmp_path, capsys):
    target = tmp_path / "takes" / "take.mid"
    link = tmp_path / "latest.mid"
    link.symlink_to(target)  # dangling: the target and its folder do not exist yet
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(link),
                 "--max-tokens", "30", "--seed", "1"]) == 0
    assert f"note: created folder {target.parent}" in capsys.readouterr().out
    assert link.is_symlink() and target.read_bytes().startswith(b"MThd")


def test_a_missing_folder_is_created_and_said(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "new" / "pieces" / "p.mid"
    assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(out),
                 "--max-tokens", "30"]) == 0
    text = capsys.readouterr().out
    assert f"note: created folder {out.parent}" in text and f"wrote {out}" in text


@pytest.mark.parametrize("flag, value, says", [
    ("--seconds", "inf", "finite"), ("--seconds", "nan", "finite"), ("--seconds", "0", "> 0"),
    ("--seconds", "-3", "> 0"), ("--seconds", "1e9", "one day"), ("--seconds", "x", "not a number"),
    ("--temperature", "inf", "finite"), ("--temperature", "-1", "0 (greedy)"),
    ("--temperature", "1e-300", "0 (greedy)"), ("--seed", str(2**70), "2^63-1"), ("--seed", "-1", "2^63-1"),
    ("--seed", "1.5", "whole number"), ("--max-note", "-1", ">= 0"), ("--max-note", "inf", "finite"),
    ("--top-p", "0", "more than 0"), ("--top-p", "1.5", "at most 1"), ("--min-p", "1", "below 1"),
    ("--min-p", "-0.1", "at least 0"), ("--top-k", "-1", ">= 0"), ("--variations", "0", ">= 1"),
    ("--max-tokens", "0", ">= 1"), ("--budget", "1PB", "cannot read memory budget"),
    ("--budget", "0MB", "positive"), ("--budget", "9" * 30 + "TB", "far too large"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, flag, value, says):
    err = rejected(["generate", "--out", str(tmp_path / "x.mid"), f"{flag}={value}"], capsys)
    assert f"argument {flag}: " in err and says in err
    assert not (tmp_path / "x.mid").exists()


def test_a_missing_argument_and_an_unknown_command_are_one_line(capsys):
    assert "required: --out" in rejected(["generate"], capsys)
    with pytest.raises(SystemExit) as exit_:
        main(["compose"])
    assert exit_.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_variations_beyond_the_memory_of_the_machine_are_refused(tiny_model_dir, tmp_path, capsys,
                                                                    monkeypatch):
    import core.budget as budgets

    monkeypatch.setattr(budgets, "available_memory", lambda: 2**20)
    err = failed(["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(tmp_path / "v.mid"),
                  "--variations", "1000"], capsys)
    assert "this budget for 1000 variations needs 118.7 MB of state memory; this machine has 1.0 MB available" in err
    assert list(tmp_path.iterdir()) == []


def test_a_budget_in_terabytes_reads_like_the_same_in_gigabytes(tiny_model_dir, tmp_path, capsys):
    for budget, out in (("1TB", "t.mid"), ("1024GB", "g.mid")):
        assert main(["generate", "--model", str(tiny_model_dir), "--seconds", "1", "--out", str(tmp_path / out),
                     "--budget", budget, "--max-tokens", "20", "--seed", "4"]) == 0
        assert "of 1024.0 GB budget" in capsys.readouterr().out
    assert (tmp_path / "t.mid").read_bytes() == (tmp_path / "g.mid").read_bytes()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stopped_generation_keeps_what_it_wrote(tiny_model_dir, tmp_path, sig, code):
    """SIGTERM (a service manager, `kill`) stops like Ctrl-C: the file is written, then exit 143 (Ctrl-C: 130)."""
    out = tmp_path / "long.mid"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A background shell starts us with SIGINT ignored, which a child inherits; a handler is reset to the default
    # at exec, so the child gets Python's Ctrl-C handler (no preexec_fn: it is unsafe with threads in the parent).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    errors = tmp_path / "stderr.txt"  # a file, not a pipe nobody reads while we wait on stdout
    try:
        with errors.open("w") as err_file:
            child = subprocess.Popen(
                [sys.executable, "-m", "core", "generate", "--model", str(tiny_model_dir), "--seconds", "3600",
                 "--out", str(out), "--seed", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err_file,
                text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        for line in child.stdout:  # ends at EOF if the child dies before it starts generating
            if line.startswith("generating"):
                break
        time.sleep(1.0)  # let it write some notes (the test holds with none too)
        child.send_signal(sig)
        rest, _ = child.communicate(timeout=120)
    finally:
        child.kill()
    err = errors.read_text()
    assert child.returncode == code, err
    name = "SIGTERM" if sig == signal.SIGTERM else "Ctrl-C"
    assert f"wrote {out}" in rest and f"stopped by {name}: the files hold what was written" in rest
    assert out.read_bytes().startswith(b"MThd")


@pytest.fixture
def smdim_dir(tmp_path, one_thread):
    from tests.test_smdim import tiny

    return modeldir.save_model(tiny(), tmp_path / "smdim", "# Tiny SMDIM\n\nRandom weights, for tests only.\n")


def test_continue_with_a_denoiser_refuses_to_adapt_in_one_line(smdim_dir, tmp_path, capsys):
    out = tmp_path / "x.mid"
    for flags in (["--adapt"], ["--adapt-steps", "3"]):
        assert main(["continue", str(PIANO_PIECE), "--model", str(smdim_dir), *flags, "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert err == ("error: adapting to the primer is for left-to-right models; a smdim model fills whole "
                       "windows by unmasking and is never adapted: continue without it\n"), err
    assert not out.exists()


LINE = (r"^filled (\d+) windows? of up to 64 tokens (from nothing|after the primer's \d+ tokens) in (\d+) unmasking "
        r"passes: (\d+) tokens, ([\d.]+) s of music in [\d.]+ s \([\d.]+ s of music per second, batch (\d)\); "
        r"working memory [\d.]+ [KM]B per pass of [\d.]+ MB budget$")


def test_a_denoiser_says_what_it_did_windows_unmasking_passes_and_seconds_of_music(smdim_dir, tmp_path, capsys):
    """A denoiser fills windows by unmasking, not a token a step: no tokens/s at batch, no state memory."""
    out = tmp_path / "new.mid"
    assert main(["generate", "--model", str(smdim_dir), "--seconds", "4", "--variations", "2", "--seed", "1",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    windows, primer, passes, tokens, music, batch = re.search(LINE, text, re.M).groups()
    assert "tokens/s" not in text and "state memory" not in text
    assert primer == "from nothing" and batch == "2" and int(windows) <= int(passes) <= 4 * int(windows)
    assert int(tokens) > 0 and float(music) >= 2 * 4.0 - 0.05  # both lanes' seconds, reached
    assert main(["continue", str(PIANO_PIECE), "--model", str(smdim_dir), "--seconds", "2", "--seed", "1",
                 "--out", str(tmp_path / "more.mid")]) == 0
    assert re.search(LINE, capsys.readouterr().out, re.M).group(2).startswith("after the primer's ")
