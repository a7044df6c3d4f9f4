"""Mutated real MIDI bytes: read_performance returns a valid Performance or raises MidiError, nothing else.

Each case runs in a separate, long-lived worker process with a time bound, so a hang or a crash of the native
parser (a segfault would kill the worker, not the test run) is caught and reported with the bytes that caused
it. Mutations are written to a temporary folder; the real files are only read. Set RECITAL_FUZZ_EXAMPLES for a
longer campaign.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.errors import MidiError
from core.midi import MIN_RESTRIKE_SECONDS, canonical, read_performance
from tests.conftest import midi_files

CASE_SECONDS = 5.0
EXAMPLES = int(os.environ.get("RECITAL_FUZZ_EXAMPLES", "500"))
ROOT = Path(__file__).resolve().parents[1]
SOURCES = midi_files("piano", "pop", "multitrack", "broken")

# Reads one path per line, answers one JSON line: how read_performance (and encode) handled the file.
WORKER = r"""
import json, sys
import numpy as np
from core.errors import MidiError
from core.midi import read_performance
from core.tokenizer import VOCAB_SIZE, encode

def check(path):
    try:
        perf = read_performance(path)
    except MidiError as error:
        return {"kind": "midi_error", "path": error.path, "reason": error.reason}
    except BaseException as error:
        return {"kind": "other", "error": f"{type(error).__name__}: {error}"}
    problems = []
    if len(perf) == 0: problems.append("no notes")
    if not (np.isfinite(perf.onset).all() and np.isfinite(perf.offset).all()): problems.append("not finite")
    if (np.diff(perf.onset) < 0).any(): problems.append("not sorted")
    if (perf.onset < 0).any(): problems.append("negative onset")
    if (perf.offset < perf.onset).any(): problems.append("offset before onset")
    if perf.pitch.min() < 0 or perf.pitch.max() > 127: problems.append("pitch out of range")
    if perf.velocity.min() < 1 or perf.velocity.max() > 127: problems.append("velocity out of range")
    try:
        ids = encode(perf)
        if ids.max() >= VOCAB_SIZE: problems.append("token out of range")
    except BaseException as error:
        problems.append(f"encode raised {type(error).__name__}: {error}")
    return {"kind": "ok" if not problems else "invalid", "problems": problems, "notes": len(perf)}

print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(check(line.rstrip("\n"))), flush=True)
"""


class Worker:
    """A Python process that reads files on request; restarted after a crash or a hang."""

    def __init__(self, script: str = WORKER) -> None:
        self.script = script
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.process = subprocess.Popen([sys.executable, "-c", self.script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        ready, _, _ = select.select([self.process.stdout], [], [], 60.0)  # imports take a moment
        if not ready or self.process.stdout.readline() != "ready\n":
            self.stop()
            raise RuntimeError("the fuzz worker did not start")

    def read(self, path: Path, timeout: float = CASE_SECONDS) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        process = self.process
        process.stdin.write(f"{path}\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"kind": "hang"}
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            self.process = None
            return {"kind": "crash", "returncode": code}
        return json.loads(line)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


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
              "    print('{\"kind\": \"ok\"}', flush=True)\n")
    worker = Worker(script)
    try:
        assert worker.read(tmp_path / "crash.mid")["kind"] == "crash"
        assert worker.read(tmp_path / "hang.mid", timeout=0.5)["kind"] == "hang"
        assert worker.read(tmp_path / "fine.mid")["kind"] == "ok"
    finally:
        worker.stop()


# ---- mutations ---------------------------------------------------------------------------------------

CHUNK = re.compile(rb"MThd|MTrk")
TEMPO = re.compile(rb"\xff\x51\x03")
CONTROLLER = re.compile(rb"[\xb0-\xbf]")
STATUS = re.compile(rb"[\x80-\xff]")
STATUS_BYTES = [0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0, 0xF7, 0xFF, 0xF1, 0xF8, 0xFE]


def _next(pattern: re.Pattern, data: bytearray, position: int) -> re.Match | None:
    """The first match at or after `position`, wrapping around to the start."""
    return pattern.search(data, position % max(len(data), 1)) or pattern.search(data)


def mutate(data: bytes, ops: list[tuple]) -> bytes:
    data = bytearray(data)
    for op, position, value in ops:
        at = position % max(len(data), 1)
        if op == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif op == "set" and data:
            data[at] = value % 256
        elif op == "insert":
            data[at:at] = bytes([value % 256]) * (1 + value // 256 % 4)
        elif op == "delete":
            del data[at:at + 1 + value % 16]
        elif op == "truncate":
            del data[at:]
        elif op == "length" and (match := _next(CHUNK, data, position)) and match.end() + 4 <= len(data):
            special = [0, 1, 6, 0x7FFFFFFF, 0xFFFFFFFF, value]
            struct.pack_into(">I", data, match.end(), special[value % 6])
        elif op == "tempo" and (match := _next(TEMPO, data, position)):
            special = [b"\0\0\0", b"\0\0\1", b"\xff\xff\xff", (value % 2**24).to_bytes(3, "big")]
            data[match.end():match.end() + 3] = special[value % 4]
        elif op == "controller" and (match := _next(CONTROLLER, data, position)):
            data[match.end():match.end() + 2] = bytes([value % 256, value // 256 % 256])
        elif op == "status" and (match := _next(STATUS, data, position)):
            data[match.start()] = STATUS_BYTES[value % len(STATUS_BYTES)]
        elif op == "header" and len(data) >= 14:  # format, track count, division
            struct.pack_into(">H", data, 8 + 2 * (position % 3), value % 2**16)
    return bytes(data)


OPS = st.lists(st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate", "length", "tempo", "controller", "status",
                     "header"]),
    st.integers(0, 2**20), st.integers(0, 2**32 - 1)), min_size=1, max_size=6)


def assert_read_is_clean(worker: Worker, path: Path, data: bytes) -> str:
    path.write_bytes(data)
    result = worker.read(path)
    if result["kind"] in ("crash", "hang"):
        kept = path.with_name(f"{result['kind']}-{hashlib.sha256(data).hexdigest()[:12]}.mid")
        kept.write_bytes(data)
        pytest.fail(f"read_performance {result['kind']}ed ({result}); input kept at {kept}")
    assert result["kind"] in ("ok", "midi_error"), result
    if result["kind"] == "midi_error":
        assert result["path"] == str(path) and result["reason"]
    assert path.read_bytes() == data  # reading never writes
    return result["kind"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(source=st.sampled_from(SOURCES), ops=OPS)
def test_mutated_real_midi(worker, scratch, sources_unchanged, source, ops):
    event(assert_read_is_clean(worker, scratch / "case.mid", mutate(source.read_bytes(), ops)))


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
        if kept and kept[-1][0] == p and on - kept[-1][1] < MIN_RESTRIKE_SECONDS:
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
