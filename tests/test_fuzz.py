"""Mutated real MIDI bytes: read_performance returns a valid Performance or raises MidiError, nothing else.

Each case runs in a separate, long-lived worker process with a time bound, so a hang or a crash of the native
parser (a segfault would kill the worker, not the test run) is caught and reported with the bytes that caused
it. The worker, its check of what a read gave (`bench.fuzz.problems`) and the mutations are bench/fuzz.py's,
the long campaign's; this is its fast sample. Mutations are written to a temporary folder; the real files are
only read. Set RECITAL_FUZZ_EXAMPLES for a longer campaign.
"""

from __future__ import annotations

import hashlib
import os
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bench import fuzz
from bench.fuzz import Worker, mutate
from core.errors import MidiError, ModelError
from core.midi import MERGE_SECONDS, Performance, canonical, read_performance
from core.tokenizer import VOCAB_SIZE
from tests.conftest import midi_files

CASE_SECONDS = 5.0
EXAMPLES = int(os.environ.get("RECITAL_FUZZ_EXAMPLES", "500"))
SOURCES = midi_files("piano", "pop", "multitrack", "broken")


@pytest.fixture(scope="module")
def worker():
    worker = Worker()
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def sources_unchanged():
    """The real files are read, never written: their bytes are the same after the fuzzing as before."""
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in SOURCES}
    yield
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in SOURCES} == before


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def test_worker_reports_crashes_and_hangs(tmp_path):
    """The harness itself: a reader that segfaults or stalls is reported, and the next case gets a new one."""
    script = ("import os, signal, sys, time\nprint('ready', flush=True)\nfor line in sys.stdin:\n"
              "    if line.endswith('crash.mid\\n'): os.kill(os.getpid(), signal.SIGSEGV)\n"
              "    if line.endswith('hang.mid\\n'): time.sleep(60)\n"
              "    print('{\"outcome\": \"ok\"}', flush=True)\n")
    worker = Worker(script)
    try:
        assert worker.read(tmp_path / "crash.mid", CASE_SECONDS)["outcome"] == "crash"
        assert worker.read(tmp_path / "hang.mid", timeout=0.5)["outcome"] == "hang"
        assert worker.read(tmp_path / "fine.mid", CASE_SECONDS)["outcome"] == "ok"
    finally:
        worker.stop()


def assert_clean(result: dict, path: Path) -> str:
    """A read is clean when it gave a valid Performance (`bench.fuzz.problems`) or a MidiError naming the
    file."""
    assert result["outcome"] in ("ok", "typed"), result
    if result["outcome"] == "typed":
        assert result["error"] == "MidiError" and result["path"] == str(path) and result["reason"], result
    return result["outcome"]


def assert_read_is_clean(worker: Worker, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    result = worker.read(path, CASE_SECONDS)
    if result["outcome"] not in ("ok", "typed"):
        kept = path.with_name(f"{result['outcome']}-{hashlib.sha256(data).hexdigest()[:12]}.mid")
        kept.write_bytes(data)
        pytest.fail(f"read_performance: {result['outcome']} ({result}); input kept at {kept}")
    assert path.read_bytes() == data  # reading never writes
    return assert_clean(result, path)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), other=st.sampled_from(SOURCES), seed=st.integers(0, 2**64 - 1))
def test_mutated_real_midi(worker, scratch, sources_unchanged, source, other, seed):
    """bench/fuzz.py's mutations (1-4 of them, drawn from `seed`), `other` the file spans are spliced from."""
    data, _ops = mutate(source.read_bytes(), other.read_bytes(), random.Random(seed))
    event(assert_read_is_clean(worker, scratch / "case.mid", data))


# ---- the check itself: an invalid read fails it --------------------------------------------------------

def notes(**changed) -> Performance:
    """Two valid notes (0-0.5 s C4, 1-1.5 s D4), with the arrays named in `changed` replaced."""
    arrays = {"onset": [0.0, 1.0], "offset": [0.5, 1.5], "pitch": [60, 62], "velocity": [64, 80], **changed}
    times = [np.asarray(arrays[name], dtype=np.float64) for name in ("onset", "offset")]
    return Performance(*times, *(np.asarray(arrays[name], dtype=np.int16) for name in ("pitch", "velocity")))


INVALID = {
    "no notes": notes(onset=[], offset=[], pitch=[], velocity=[]),
    "not finite": notes(offset=[0.5, np.inf]),
    "not sorted": notes(onset=[1.0, 0.0], offset=[1.5, 0.5]),
    "negative onset": notes(onset=[-0.5, 1.0]),
    "offset before onset": notes(offset=[0.5, 0.9]),
    "pitch out of range": notes(pitch=[60, 128]),
    "velocity out of range": notes(velocity=[0, 80]),
}


@pytest.mark.parametrize("problem", sorted(INVALID))
def test_a_reader_returning_an_invalid_performance_fails_the_fuzz_check(problem, monkeypatch, tmp_path):
    path = tmp_path / "case.mid"
    monkeypatch.setattr(fuzz, "read_performance", lambda _path: notes())
    assert fuzz.check(path) == {"outcome": "ok", "detail": "", "notes": 2}  # the valid notes pass
    monkeypatch.setattr(fuzz, "read_performance", lambda _path: INVALID[problem])
    result = fuzz.check(path)
    assert result["outcome"] == "invalid" and problem in result["detail"].split(", ")
    with pytest.raises(AssertionError):
        assert_clean(result, path)


@pytest.mark.parametrize("codec", ["performance", "notes"])
@pytest.mark.parametrize("encoded, problem", [(lambda perf: np.array([3, VOCAB_SIZE]), "token out of range"),
                                               (lambda perf: 1 / 0, "encode raised ZeroDivisionError")])
def test_a_read_that_does_not_encode_fails_the_fuzz_check(codec, encoded, problem, monkeypatch, tmp_path):
    from core.codecs import codec_named

    monkeypatch.setattr(fuzz, "read_performance", lambda _path: notes())
    assert set(fuzz.ENCODERS) == {"performance", "notes"}  # a read must encode in every codec
    monkeypatch.setitem(fuzz.ENCODERS, codec, (encoded, codec_named(codec).VOCAB_SIZE))
    result = fuzz.check(tmp_path / "case.mid")
    assert result["outcome"] == "invalid" and result["detail"].startswith(f"{codec}: {problem}")


def test_only_a_midi_error_naming_the_file_is_a_clean_refusal(monkeypatch, tmp_path):
    path = tmp_path / "case.mid"
    for error, clean in ((MidiError(path, "no notes"), True), (MidiError(tmp_path / "b.mid", "bad"), False),
                         (ModelError("not a reader's error"), False), (KeyError("x"), False)):
        def read(_path, _error=error):
            raise _error

        monkeypatch.setattr(fuzz, "read_performance", read)
        result = fuzz.check(path)
        if clean:
            assert assert_clean(result, path) == "typed"
        else:
            with pytest.raises(AssertionError):
                assert_clean(result, path)


# ---- hand-made cases found while fuzzing, and the ones a parser is most likely to get wrong ----------------

def smf(tracks: list[bytes], division: int = 480, fmt: int = 1, count: int | None = None) -> bytes:
    header = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks) if count is None else count, division)
    return header + b"".join(b"MTrk" + struct.pack(">I", len(t)) + t for t in tracks)


def varlen(n: int) -> bytes:
    out = [n & 0x7F]
    while n := n >> 7:
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


NOTE = b"\x00\x90\x3c\x40\x83\x60\x80\x3c\x00\x00\xff\x2f\x00"

EDGE_CASES = {
    "ticks per quarter 0": smf([NOTE], division=0),
    "SMPTE division": smf([NOTE], division=0xE728),
    "header claims 65535 tracks": smf([NOTE], count=65535),
    "no tracks": smf([], count=0),
    "format 2": smf([NOTE, NOTE], fmt=2),
    "tick count past 2^31": smf([b"\x00\x90\x3c\x40" + (varlen(0x0FFFFFFF) + b"\xff\x01\x00") * 9
                                 + b"\x00\x90\x3e\x40\x10\x80\x3c\x00\x00\x80\x3e\x00\x00\xff\x2f\x00"]),
    "sysex longer than the file": smf([b"\x00\xf0" + varlen(0x0FFFFFFF) + b"\x00" + NOTE]),
    "meta longer than the file": smf([b"\x00\xff\x01" + varlen(0x0FFFFFFF) + b"abc"]),
    "five-byte delta time": smf([b"\xff\xff\xff\xff\xff\x90\x3c\x40" + NOTE]),
    "tempo of one byte": smf([b"\x00\xff\x51\x01\x07" + NOTE]),
    "tempo of 1 microsecond": smf([b"\x00\xff\x51\x03\x00\x00\x01" + NOTE]),
    "running status with no status": smf([b"\x00\x3c\x40" + NOTE]),
    "time signature 4/2^255": smf([b"\x00\xff\x58\x04\x04\xff\x18\x08" + NOTE]),
    "note off with no note on": smf([b"\x00\x80\x3c\x40" + NOTE]),
    "track length 0xFFFFFFFF": smf([NOTE])[:18] + b"\xff\xff\xff\xff" + NOTE,
    "header only": smf([])[:14],
}


@pytest.mark.parametrize("name", sorted(EDGE_CASES))
def test_edge_cases(worker, scratch, name):
    assert_read_is_clean(worker, scratch / "edge.mid", EDGE_CASES[name])


def test_tick_overflow_is_an_error(tmp_path):
    """symusic sums delta times in 32 bits; past 2^31 ticks notes would land at negative times (then 0 s)."""
    path = tmp_path / "overflow.mid"
    path.write_bytes(EDGE_CASES["tick count past 2^31"])
    with pytest.raises(MidiError, match="event times overflow"):
        read_performance(path)


# ---- canonical's fast path against its one-note-at-a-time definition ----------------------------------

def canonical_by_definition(onset, offset, pitch, velocity):
    """Walk every note in (pitch, onset) order; a strike within 10 ms of the last kept one of its pitch merges."""
    notes = sorted(zip(pitch, onset, offset, velocity, strict=True))
    kept: list[list] = []
    for p, on, off, vel in notes:
        if kept and kept[-1][0] == p and on - kept[-1][1] < MERGE_SECONDS:
            kept[-1][2], kept[-1][3] = max(kept[-1][2], off), max(kept[-1][3], vel)
        else:
            kept.append([p, on, max(off, on), vel])
    for before, after in zip(kept, kept[1:], strict=False):
        if before[0] == after[0]:
            before[2] = min(before[2], after[1])
    return sorted((on, p, off, vel) for p, on, off, vel in kept)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(60, 62), st.integers(0, 60), st.integers(0, 30), st.integers(1, 127)),
                min_size=1, max_size=40))
def test_canonical_merges_chains_of_restrikes(notes):
    pitch = [p for p, _, _, _ in notes]
    onset = [t * 0.003 for _, t, _, _ in notes]  # a 3 ms grid: many strikes closer than 10 ms
    offset = [t * 0.003 + d * 0.004 for _, t, d, _ in notes]
    velocity = [v for _, _, _, v in notes]
    perf = canonical(onset, offset, pitch, velocity)
    got = sorted(zip(perf.onset.tolist(), perf.pitch.tolist(), perf.offset.tolist(), perf.velocity.tolist(),
                     strict=True))
    assert got == canonical_by_definition(onset, offset, pitch, velocity)
