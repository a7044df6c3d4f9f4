"""The corpus cache: memory-mapped pieces, re-scans that read only what changed, duplicates, skips, the CLI."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import numpy as np
import pytest

import trainer.corpus as corpus_module
from core.cli import main
from core.errors import MidiError
from core.midi import Performance, read_performance, write_performance
from core.tokenizer import encode
from trainer.cli import ProgressBar
from trainer.corpus import Corpus


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RECITAL_CACHE_DIR", str(cache))
    return cache


def melody(seed: int, notes: int = 12) -> Performance:
    rng = np.random.default_rng(seed)
    onset = np.cumsum(rng.uniform(0.05, 0.4, notes))
    return Performance.from_notes(onset, onset + rng.uniform(0.05, 0.5, notes), rng.integers(40, 90, notes),
                                  rng.integers(20, 120, notes))


def make_folder(root, count: int = 3):
    """`count` distinct little pieces, in sub-folders and with mixed-case suffixes."""
    names = ["a.mid", "sub/b.MID", "sub/deeper/c.midi", "d.kar"] + [f"more/p{i:02d}.mid" for i in range(count)]
    paths = []
    for i, name in enumerate(names[:count]):
        write_performance(melody(i), root / name)
        paths.append(root / name)
    return paths


@pytest.fixture
def counting(monkeypatch):
    """Counts files read and encoded (workers=1 runs in this process)."""
    calls = []
    real = corpus_module.read_performance

    def read(path, *args, **kwargs):
        calls.append(str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(corpus_module, "read_performance", read)
    return calls


def test_pieces_are_views_into_a_memory_map(tmp_path):
    paths = make_folder(tmp_path / "music", 4)
    corpus = Corpus.build(tmp_path / "music", workers=1)
    assert len(corpus) == 4
    assert isinstance(corpus.tokens, np.memmap) and corpus.tokens.dtype == np.uint16
    by_path = {piece.path: i for i, piece in enumerate(corpus.index)}
    for path in paths:
        i = by_path[str(path.resolve())]
        expected = encode(read_performance(path))
        np.testing.assert_array_equal(corpus.piece(i), expected)
        assert np.shares_memory(corpus.piece(i), corpus.tokens)
        entry = corpus.index[i]
        assert entry.tokens == len(expected)
        assert entry.hash == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry.seconds == pytest.approx(read_performance(path).duration)
    assert corpus.total_tokens == sum(p.tokens for p in corpus.index)
    assert corpus.total_seconds == pytest.approx(corpus.summary.seconds)
    assert corpus.totals()["pieces"] == 4
    reopened = Corpus.open(tmp_path / "music")
    np.testing.assert_array_equal(reopened.tokens, corpus.tokens)
    assert reopened.index == corpus.index
    assert reopened.summary == corpus.summary


def test_rescan_reads_only_new_and_changed_files(tmp_path, counting):
    folder = tmp_path / "music"
    paths = make_folder(folder, 4)
    first = Corpus.build(folder, workers=1)
    assert len(counting) == 4 and first.summary.encoded == 4 and first.summary.hashed == 4

    counting.clear()
    again = Corpus.build(folder, workers=1)
    assert counting == [] and again.summary.encoded == 0 and again.summary.hashed == 0
    np.testing.assert_array_equal(again.tokens, first.tokens)

    write_performance(melody(99, notes=30), paths[1])  # changed
    write_performance(melody(100), folder / "new.mid")  # new
    counting.clear()
    third = Corpus.build(folder, workers=1)
    assert sorted(counting) == sorted([str(paths[1]), str(folder / "new.mid")])
    assert third.summary.encoded == 2 and third.summary.hashed == 2
    assert len(third) == 5
    changed = next(i for i, p in enumerate(third.index) if p.path == str(paths[1]))
    np.testing.assert_array_equal(third.piece(changed), encode(read_performance(paths[1])))

    counting.clear()
    Corpus.build(folder, workers=1, use_cache=False)
    assert len(counting) == 5


def test_cache_is_shared_between_folders_by_content(tmp_path, counting):
    make_folder(tmp_path / "one", 3)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    Corpus.build(tmp_path / "one", workers=1)
    counting.clear()
    two = Corpus.build(tmp_path / "two", workers=1)
    assert counting == [] and two.summary.hashed == 3 and len(two) == 3


def test_duplicates_are_kept_once(tmp_path, counting):
    folder = tmp_path / "music"
    paths = make_folder(folder, 2)
    shutil.copy(paths[0], folder / "z_same_bytes.mid")
    write_performance(melody(1), folder / "z_same_notes.mid", ticks_per_quarter=960)  # other bytes, same tokens
    assert (folder / "z_same_notes.mid").read_bytes() != paths[1].read_bytes()
    corpus = Corpus.build(folder, workers=1)
    assert len(counting) == 3  # identical bytes are read once
    assert len(corpus) == 2 and corpus.summary.files_ok == 4
    assert {(d.path, d.same_as) for d in corpus.summary.duplicates} == {
        (str((folder / "z_same_bytes.mid").resolve()), str(paths[0].resolve())),
        (str((folder / "z_same_notes.mid").resolve()), str(paths[1].resolve())),
    }


def test_unreadable_files_are_skipped_with_their_reason(tmp_path):
    folder = tmp_path / "music"
    make_folder(folder, 2)
    (folder / "empty.mid").write_bytes(b"")
    (folder / "noise.mid").write_bytes(np.random.default_rng(0).bytes(300))
    good = (folder / "a.mid").read_bytes()
    (folder / "truncated.mid").write_bytes(good[: len(good) // 2])
    corpus = Corpus.build(folder, workers=1)
    reasons = {s.path.rsplit("/", 1)[-1]: s.reason for s in corpus.summary.skipped}
    assert set(reasons) == {"empty.mid", "noise.mid", "truncated.mid"}
    assert "empty" in reasons["empty.mid"]
    assert "not a Standard MIDI File" in reasons["noise.mid"]
    assert "corrupt" in reasons["truncated.mid"]
    assert len(corpus) == 2 and corpus.summary.files == 5 and corpus.summary.files_ok == 2
    assert Corpus.build(folder, workers=1).summary.skipped == corpus.summary.skipped  # from the cache too


def test_parallel_scan_matches_serial(tmp_path):
    make_folder(tmp_path / "music", 6)
    serial = Corpus.build(tmp_path / "music", workers=1)
    serial_tokens = np.array(serial.tokens)
    parallel = Corpus.build(tmp_path / "music", workers=2, use_cache=False)
    assert parallel.summary.encoded == 6
    np.testing.assert_array_equal(parallel.tokens, serial_tokens)
    assert parallel.index == serial.index


def test_folder_without_midi(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no music here")
    with pytest.raises(MidiError, match="no MIDI files") as error:
        Corpus.build(tmp_path / "docs")
    assert error.value.path == str((tmp_path / "docs").resolve())
    with pytest.raises(MidiError, match="not been scanned"):
        Corpus.open(tmp_path / "docs")


def test_split_is_deterministic_and_independent_of_names(tmp_path):
    make_folder(tmp_path / "one", 20)
    one = Corpus.build(tmp_path / "one", workers=1)
    train, val = one.split(0.2, seed=7)
    assert len(val) == 4 and sorted(train + val) == list(range(20))
    assert one.split(0.2, seed=7) == (train, val)
    assert one.split(0.2, seed=8) != (train, val)
    # The same pieces under other names, in another order: the same pieces are held out.
    (tmp_path / "two").mkdir()
    for i, piece in enumerate(reversed(one.index)):
        shutil.copy(piece.path, tmp_path / "two" / f"renamed_{i:02d}.mid")
    two = Corpus.build(tmp_path / "two", workers=1)
    held_out = {one.index[i].hash for i in val}
    assert {two.index[i].hash for i in two.split(0.2, seed=7)[1]} == held_out
    assert one.split(0.0) == (list(range(20)), [])
    with pytest.raises(ValueError, match="val_fraction"):
        one.split(1.0)


def test_small_corpus_still_holds_one_piece_out(tmp_path):
    make_folder(tmp_path / "music", 3)
    train, val = Corpus.build(tmp_path / "music", workers=1).split(0.05, seed=0)
    assert len(val) == 1 and len(train) == 2


def test_progress_reports_and_can_cancel(tmp_path):
    make_folder(tmp_path / "music", 4)
    seen = []
    Corpus.build(tmp_path / "music", workers=1, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)

    class Cancelled(Exception):
        pass

    def cancel(done, total):
        if done:
            raise Cancelled

    with pytest.raises(Cancelled):
        Corpus.build(tmp_path / "music", workers=1, use_cache=False, progress=cancel)


def test_progress_bar_draws_and_erases():
    stream = io.StringIO()
    bar = ProgressBar(stream, "reading", width=10)
    bar.update(5, 10)
    bar.update(10, 10)
    bar.close()
    text = stream.getvalue()
    assert "[#####.....] 5/10 files" in text and "[##########] 10/10 files" in text
    assert text.endswith("\r\033[K")


def test_cli_prints_the_table(tmp_path, capsys):
    folder = tmp_path / "music"
    make_folder(folder, 3)
    (folder / "broken.mid").write_bytes(b"MThd")
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.match(r"^\s+(.+?)\s{2,}(.+)$", line).groups() for line in out.splitlines()[1:8])
    assert rows["files ok"] == "3" and rows["skipped"] == "1" and rows["pieces"] == "3"
    tokens = sum(len(encode(read_performance(p))) for p in folder.rglob("*") if p.name != "broken.mid"
                 and p.is_file())
    assert rows["tokens"] == f"{tokens:,}"
    assert "\n  broken.mid: corrupt MIDI data" in out
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    assert "read this scan  0 of 4 files" in capsys.readouterr().out
    assert main(["corpus", str(folder), "--workers", "1", "--no-cache"]) == 0
    assert "read this scan  4 of 4 files" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["corpus", str(tmp_path / "empty")]) == 1
    assert "error: " in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mid").write_bytes(b"nonsense")
    assert main(["corpus", str(tmp_path / "bad"), "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert "x.mid: not a Standard MIDI File" in captured.out
    assert "error: " in captured.err and "none of the 1 MIDI files could be read" in captured.err
    assert main(["corpus", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["corpus", str(tmp_path), "--workers", "0"])
    assert exit_.value.code == 2


# ---- a damaged cache repairs itself -------------------------------------------------------------------------

def _damage(path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[:len(data) - 7])
    elif kind == "empty":
        path.write_bytes(b"")
    else:  # garbage
        path.write_bytes(b"\x93NUMPY" + bytes(range(200)))


def _entry(digest: str):
    """The per-hash cache files of one content hash, without their suffix."""
    return corpus_module.cache_root() / "pieces" / corpus_module.codec_version() / digest[:2] / digest


def _true_to_the_files(corpus: Corpus, pieces: int) -> None:
    assert len(corpus) == pieces
    for i, piece in enumerate(corpus.index):
        np.testing.assert_array_equal(corpus.piece(i), encode(read_performance(piece.path)))


DAMAGE = [("array", "truncated"), ("array", "empty"), ("array", "garbage"),
          ("entry", "truncated"), ("entry", "empty"), ("entry", "garbage"),
          ("record", "garbage"), ("record", "mismatch"), ("index", "garbage"), ("index", "mismatch")]


@pytest.mark.parametrize("where, kind", DAMAGE)
def test_a_damaged_cache_is_dropped_and_rebuilt(tmp_path, where, kind):
    folder = tmp_path / "music"
    make_folder(folder, 4)
    first = Corpus.build(folder, workers=1)
    digest, pieces = first.index[1].hash, 4
    del first  # its memory map: the damage below must not be read through it
    home = corpus_module._folder_home(folder.resolve())
    if where == "array":  # the folder's flat token array
        _damage(next(home.glob("tokens-*.npy")), kind)
    elif where == "entry":  # one file's cached tokens; a new file makes the scan lay the array out again
        _damage(_entry(digest).with_suffix(".npy"), kind)
        write_performance(melody(99), folder / "new.mid")
        pieces = 5
    elif where == "record":
        record = _entry(digest).with_suffix(".json")
        record.write_text("{not json" if kind == "garbage" else
                          json.dumps({**json.loads(record.read_text()), "tokens": 3}))
    elif kind == "garbage":
        (home / "index.json").write_text('{"version": 1, "files": 7}')
    else:
        index = json.loads((home / "index.json").read_text())
        index["pieces"][0]["end"] += 3
        (home / "index.json").write_text(json.dumps(index))
    if where in ("array", "index"):
        with pytest.raises(MidiError, match="damaged.*run `recital corpus` on it again"):
            Corpus.open(folder)

    again = Corpus.build(folder, workers=1)
    _true_to_the_files(again, pieces)
    assert bool(again.summary.repaired) == (kind != "mismatch" or where == "record")
    assert "cache repaired" in dict(again.summary.rows()) or not again.summary.repaired
    _true_to_the_files(Corpus.open(folder), pieces)
    assert Corpus.build(folder, workers=1).summary.repaired == ()  # sound again


def test_no_cache_reads_nothing_from_a_damaged_cache(tmp_path):
    folder = tmp_path / "music"
    make_folder(folder, 3)
    first = Corpus.build(folder, workers=1)
    expected = np.array(first.tokens)
    del first
    home = corpus_module._folder_home(folder.resolve())
    _damage(next(home.glob("tokens-*.npy")), "truncated")
    for entry in (corpus_module.cache_root() / "pieces").rglob("*.*"):
        _damage(entry, "garbage")
    (home / "index.json").write_text("[]")
    fresh = Corpus.build(folder, workers=1, use_cache=False)
    np.testing.assert_array_equal(fresh.tokens, expected)
    assert fresh.summary.repaired == () and fresh.summary.encoded == 3  # nothing read, everything written anew
    assert Corpus.build(folder, workers=1).summary.encoded == 0  # and the cache works again


def test_the_cli_repairs_a_truncated_cache_and_says_so(tmp_path, capsys):
    folder = tmp_path / "music"
    make_folder(folder, 3)
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    home = corpus_module._folder_home(folder.resolve())
    _damage(next(home.glob("tokens-*.npy")), "truncated")
    capsys.readouterr()
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    assert "cache repaired  1 damaged cache files rebuilt from the MIDI files" in capsys.readouterr().out
    assert main(["corpus", str(folder), "--workers", "1"]) == 0
    assert "cache repaired" not in capsys.readouterr().out


def test_each_codec_has_its_own_cache_and_a_corpus_refuses_a_model_of_the_other(tmp_path, counting):
    from core import notecodec
    from core.errors import ModelError
    from core.models.dsmr.model import DSMRConfig

    folder = tmp_path / "music"
    paths = make_folder(folder, 3)
    events = Corpus.build(folder, workers=1)
    notes = Corpus.build(folder, workers=1, codec="notes")
    assert (events.codec, notes.codec) == ("performance", "notes")
    assert corpus_module.codec_version("notes") != corpus_module.codec_version()
    for i, path in enumerate(sorted(paths)):
        assert np.array_equal(notes.piece(i), notecodec.encode(read_performance(path)))
        assert np.array_equal(events.piece(i), encode(read_performance(path)))
    assert len(counting) == 6  # each codec read the files once
    assert Corpus.build(folder, workers=1, codec="notes").summary.encoded == 0
    assert Corpus.build(folder, workers=1).summary.encoded == 0  # the notes scan left the event cache alone
    assert Corpus.open(folder, "notes").codec == "notes" and Corpus.open(folder).codec == "performance"
    notes.check_codec(DSMRConfig(codec="notes"))
    with pytest.raises(ModelError, match="encoded with the 'notes' codec, the model reads 'performance'"):
        notes.check_codec(DSMRConfig())
    with pytest.raises(ModelError, match="unknown codec 'midi'"):
        Corpus.build(folder, workers=1, codec="midi")
    shutil.rmtree(corpus_module._folder_home(folder.resolve(), "notes"))
    with pytest.raises(MidiError, match="not been scanned yet with the 'notes' codec"):
        Corpus.open(folder, "notes")
