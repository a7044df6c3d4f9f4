"""Fuzzing the MIDI reader: mutated real files through read_performance and encode, every outcome counted.

    python bench/fuzz.py [--cases 10000] [--workers 2] [--seed 0] [--timeout 10] [--keep DIR]

Sources are the real MIDI files of ../shared/midi (RECITAL_SHARED_MIDI) and the fixtures of tests/data; with
neither, it says so and exits 2. Case i is reproducible from (--seed, i): a source file and 1-4 mutations (bit
flips, byte sets, insertions, deletions, truncation, chunk-length and header corruption, tempo, status,
meta-length and controller bytes, long delta times, spans spliced in from another file or duplicated). Each
mutated file is read by `read_performance` then encoded by every codec (core/codecs.py) in a worker process: a signal (a native crash) or a
case that runs past --timeout kills only that worker, which is counted and replaced.

Outcomes: ok (a valid Performance and tokens in range of each codec), typed (a MidiError or other RecitalError from the
reader: the one-line message a user sees), untyped (any other exception: a bug), invalid (returned, but breaks
an invariant of `problems`, or encode failed on it: a bug), hang, crash. The table gives them per source
folder; the first tracebacks of each distinct untyped error and the inputs of every bug (under --keep) follow.
Exit status 1 when any bug was found.

The test suite keeps a fast sample of the same idea (tests/test_fuzz.py: the same worker, checks and
mutations); this is the long campaign.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path, where bench/tokenize.py would hide the standard
# library's `tokenize` module from everything imported after it: put the project root there instead
# (imported as bench.fuzz, by the workers and the tests, the path is left as it is).
if __name__ == "__main__":
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import select  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from bench.data import SHARED_MIDI  # noqa: E402
from core.codecs import CODECS  # noqa: E402
from core.errors import RecitalError  # noqa: E402
from core.midi import Performance, read_performance  # noqa: E402

# Each codec a model may read: its encoder and its vocabulary (a read must encode in all of them).
ENCODERS = {name: (codec.encode, codec.VOCAB_SIZE) for name, codec in CODECS.items()}
ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = ROOT / "tests" / "data"
OUTCOMES = ("ok", "typed", "untyped", "invalid", "hang", "crash")
BUGS = ("untyped", "invalid", "hang", "crash")


# -- what a read must give --------------------------------------------------------------------------------

def problems(perf: Performance) -> list[str]:
    """What is wrong with a Performance `read_performance` returned (empty: nothing): it must hold notes (a
    file without any is a MidiError), finite, sorted, non-negative times, no offset before its onset, pitches
    0-127, velocities 1-127, and (these holding) encode to ids of every codec (`ENCODERS`), each problem then
    named by its codec. tests/test_fuzz.py uses it."""
    found = []
    if len(perf) == 0:
        return ["no notes"]
    if not (np.isfinite(perf.onset).all() and np.isfinite(perf.offset).all()):
        found.append("not finite")
    if (np.diff(perf.onset) < 0).any():
        found.append("not sorted")
    if (perf.onset < 0).any():
        found.append("negative onset")
    if (perf.offset < perf.onset).any():
        found.append("offset before onset")
    if perf.pitch.min() < 0 or perf.pitch.max() > 127:
        found.append("pitch out of range")
    if perf.velocity.min() < 1 or perf.velocity.max() > 127:
        found.append("velocity out of range")
    if found:  # encoding notes that break these means nothing
        return found
    for name, (encode, vocab_size) in ENCODERS.items():
        try:
            ids = encode(perf)
        except BaseException as error:  # noqa: BLE001 - a valid read that cannot be encoded is what is reported
            found.append(f"{name}: encode raised {type(error).__name__}: {error}"[:200])
        else:
            if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
                found.append(f"{name}: token out of range")
    return found


def check(path: str | Path) -> dict:
    """How `read_performance` handled one file, as the JSON a worker answers: outcome ok, invalid (detail: the
    problems), typed (error: the class, path and reason of a RecitalError) or untyped (with its traceback)."""
    try:
        perf = read_performance(path)
    except RecitalError as error:
        return {"outcome": "typed", "error": type(error).__name__, "path": getattr(error, "path", None),
                "reason": getattr(error, "reason", str(error)),
                "detail": f"{type(error).__name__}: {getattr(error, 'reason', error)}"[:300]}
    except BaseException as error:  # noqa: BLE001 - an untyped error is a finding, with its traceback
        return {"outcome": "untyped", "detail": f"{type(error).__name__}: {error}"[:300],
                "traceback": traceback.format_exc()[-3000:]}
    found = problems(perf)
    return {"outcome": "invalid" if found else "ok", "detail": ", ".join(found), "notes": len(perf)}


# Reads one path per line, answers one JSON line: `check` of the file.
WORKER = r"""
import json, sys
from bench.fuzz import check

print("ready", flush=True)
for line in sys.stdin:
    print(json.dumps(check(line.rstrip("\n"))), flush=True)
"""


# -- the worker processes ---------------------------------------------------------------------------------------

class Worker:
    """A Python process that reads files on request (`script`: the one it runs, WORKER unless a test gives
    another); replaced after a crash or a hang."""

    def __init__(self, script: str = WORKER) -> None:
        self.script = script
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, "-c", self.script], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        ready, _, _ = select.select([self.process.stdout], [], [], 120.0)
        if not ready or self.process.stdout.readline() != "ready\n":
            self.stop()
            raise RuntimeError("a fuzz worker did not start")

    def read(self, path: Path, timeout: float) -> dict:
        if self.process is None or self.process.poll() is not None:
            self.start()
        process = self.process
        process.stdin.write(f"{path}\n")
        process.stdin.flush()
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        if not ready:
            self.stop()
            return {"outcome": "hang", "detail": f"no answer in {timeout:g} s"}
        line = process.stdout.readline()
        if not line:
            code = process.wait()
            self.process = None
            return {"outcome": "crash", "detail": f"worker exit status {code}" + (
                f" (signal {-code})" if code < 0 else "")}
        return json.loads(line)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


# -- mutations --------------------------------------------------------------------------------------------------

CHUNK = re.compile(rb"MThd|MTrk")
TEMPO = re.compile(rb"\xff\x51\x03")
META = re.compile(rb"\xff[\x00-\x7f]")
CONTROLLER = re.compile(rb"[\xb0-\xbf]")
STATUS = re.compile(rb"[\x80-\xff]")
STATUS_BYTES = [0x80, 0x90, 0xA0, 0xB0, 0xC0, 0xD0, 0xE0, 0xF0, 0xF7, 0xFF, 0xF1, 0xF8, 0xFE]
LENGTHS = [0, 1, 6, 0x7F, 0x80, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
OPS = ("flip", "set", "insert", "delete", "truncate", "chunk_length", "header", "tempo", "status", "meta_length",
       "long_delta", "splice", "duplicate", "controller")


def _find(pattern: re.Pattern, data: bytearray, rng: random.Random) -> re.Match | None:
    """A match at or after a random position (wrapping around), or None."""
    start = rng.randrange(max(len(data), 1))
    return pattern.search(data, start) or pattern.search(data)


def mutate(data: bytes, other: bytes, rng: random.Random) -> tuple[bytes, list[str]]:
    """`data` changed by 1-4 random mutations (`other` is a second source for splices); their names."""
    data = bytearray(data)
    ops = rng.choices(OPS, k=rng.choice([1, 1, 1, 2, 2, 3, 4]))
    for op in ops:
        at = rng.randrange(max(len(data), 1))
        if op == "flip" and data:
            data[at] ^= 1 << rng.randrange(8)
        elif op == "set" and data:
            data[at] = rng.choice([0x00, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == "insert":
            data[at:at] = (bytes([rng.randrange(256)]) * rng.randint(1, 16) if rng.random() < 0.5
                           else rng.randbytes(rng.randint(1, 16)))
        elif op == "delete":
            del data[at:at + rng.randint(1, 64)]
        elif op == "truncate":
            del data[at:]
        elif op == "chunk_length" and (match := _find(CHUNK, data, rng)) and match.end() + 4 <= len(data):
            old = struct.unpack_from(">I", data, match.end())[0]
            new = rng.choice([*LENGTHS, max(0, old + rng.randint(-8, 8)), rng.randrange(2**32)])
            struct.pack_into(">I", data, match.end(), new % 2**32)
        elif op == "header" and len(data) >= 14:  # format, track count, division
            value = rng.choice([0, 1, 2, 3, 0x7FFF, 0x8000, 0xE728, 0xFFFF, rng.randrange(2**16)])
            struct.pack_into(">H", data, 8 + 2 * rng.randrange(3), value)
        elif op == "tempo" and (match := _find(TEMPO, data, rng)):
            data[match.end():match.end() + 3] = rng.choice([b"\0\0\0", b"\0\0\1", b"\xff\xff\xff",
                                                            rng.randbytes(3)])
        elif op == "status" and (match := _find(STATUS, data, rng)):
            data[match.start()] = rng.choice(STATUS_BYTES) | rng.randrange(16) * (rng.random() < 0.3)
        elif op == "meta_length" and (match := _find(META, data, rng)) and match.end() < len(data):
            data[match.end():match.end() + 1] = rng.choice([b"\x00", b"\x7f", b"\xff\xff\xff\x7f", b"\x81\x00"])
        elif op == "long_delta":
            data[at:at] = rng.choice([b"\xff\xff\xff\x7f", b"\x8f\xff\xff\xff\x7f", b"\x80" * 8 + b"\x00"])
        elif op == "splice" and other:
            begin = rng.randrange(len(other))
            data[at:at] = other[begin:begin + rng.randint(1, 512)]
        elif op == "duplicate" and data:
            begin = rng.randrange(len(data))
            data[at:at] = data[begin:begin + rng.randint(1, 256)]
        elif op == "controller" and (match := _find(CONTROLLER, data, rng)):  # number and value (pedals too)
            data[match.end():match.end() + 2] = bytes([rng.choice([64, 66, 67, 121, rng.randrange(256)]),
                                                       rng.choice([0, 63, 64, 127, rng.randrange(256)])])
    return bytes(data), ops


# -- the campaign -----------------------------------------------------------------------------------------------

@dataclass
class Result:
    case: int
    group: str
    source: Path
    ops: list[str]
    outcome: str
    detail: str = ""
    traceback: str = ""
    data: bytes | None = None  # kept for bugs only


def sources() -> list[tuple[str, Path]]:
    """(group, file) of every MIDI file the campaign mutates: ../shared/midi's folders, then tests/data's."""
    found = []
    for base, label in ((SHARED_MIDI, ""), (TEST_DATA, "tests/data/")):
        if base.is_dir():
            found += [(label + p.parent.name, p) for p in sorted(base.rglob("*.mid")) if p.is_file()]
    return found


def run_campaign(files: list[tuple[str, Path]], cases: int, workers: int, seed: int, timeout: float,
                 scratch: Path) -> list[Result]:
    blobs = [path.read_bytes() for _, path in files]
    results: list[Result] = []
    lock = threading.Lock()
    counter = iter(range(cases))
    started = time.monotonic()

    def drive(slot: int) -> None:
        worker, path = Worker(), scratch / f"case-{slot}.mid"
        try:
            while True:
                with lock:
                    case = next(counter, None)
                if case is None:
                    return
                rng = random.Random(f"{seed}:{case}")
                pick, other = rng.randrange(len(files)), rng.randrange(len(files))
                data, ops = mutate(blobs[pick], blobs[other], rng)
                path.write_bytes(data)
                answer = worker.read(path, timeout)
                result = Result(case, files[pick][0], files[pick][1], ops, answer["outcome"],
                                answer.get("detail", ""), answer.get("traceback", ""),
                                data if answer["outcome"] in BUGS else None)
                with lock:
                    results.append(result)
                    if len(results) % 1000 == 0:
                        print(f"  {len(results):,} / {cases:,} cases, {time.monotonic() - started:.0f} s",
                              file=sys.stderr, flush=True)
        finally:
            worker.stop()

    threads = [threading.Thread(target=drive, args=(slot,)) for slot in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(results, key=lambda r: r.case)


def report(results: list[Result], seconds: float, keep: Path) -> int:
    groups = sorted({r.group for r in results})
    counts = {g: Counter(r.outcome for r in results if r.group == g) for g in groups}
    width = max(len(g) for g in [*groups, "total"])
    print(f"\n{'source':<{width}}  {'cases':>6}  " + "  ".join(f"{o:>7}" for o in OUTCOMES))
    for name, count in [*counts.items(), ("total", Counter(r.outcome for r in results))]:
        print(f"{name:<{width}}  {sum(count.values()):>6}  " + "  ".join(f"{count[o]:>7}" for o in OUTCOMES))
    ops = Counter(op for r in results for op in set(r.ops))
    typed = Counter(op for r in results if r.outcome == "typed" for op in set(r.ops))
    print("\ncases per mutation (with it among the case's mutations): " + ", ".join(
        f"{op} {ops[op]:,} ({typed[op] / ops[op]:.0%} typed)" for op in OPS if ops[op]))
    print(f"{len(results):,} cases in {seconds:.0f} s ({len(results) / seconds:.0f} cases/s)")

    reasons = Counter(re.sub(r"[0-9]+", "N", r.detail)[:70] for r in results if r.outcome == "typed")
    print("\nmost common typed errors: " + "; ".join(f"{n:,}x {why}" for why, n in reasons.most_common(6)))

    bugs = [r for r in results if r.outcome in BUGS]
    if not bugs:
        print("\nno untyped errors, invalid results, hangs or crashes")
        return 0
    keep.mkdir(parents=True, exist_ok=True)
    for r in bugs:
        (keep / f"case-{r.case}-{r.outcome}.mid").write_bytes(r.data or b"")
    distinct: dict[str, Result] = {}
    for r in bugs:
        distinct.setdefault(f"{r.outcome}: {r.detail[:80]}", r)
    print(f"\n{len(bugs):,} bugs, {len(distinct)} distinct; inputs kept in {keep}")
    for signature, r in list(distinct.items())[:8]:
        print(f"\n--- {signature} (case {r.case}, {r.source.name}, {'+'.join(r.ops)})")
        if r.traceback:
            print(r.traceback.rstrip())
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2, help="reader processes run side by side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds one case may take")
    parser.add_argument("--keep", type=Path, default=None, help="where inputs of bugs are written "
                        "(default: a new folder under the system's temporary folder)")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.workers < 1 or args.timeout <= 0:
        parser.error("--cases and --workers must be at least 1, --timeout positive")
    files = sources()
    if not files:
        print(f"error: no MIDI files to mutate: neither {SHARED_MIDI} nor {TEST_DATA} holds any", file=sys.stderr)
        return 2
    print(f"{args.cases:,} mutated cases of {len(files)} files, seed {args.seed}, {args.workers} workers, "
          f"{args.timeout:g} s per case")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="recital-fuzz-") as scratch:
        results = run_campaign(files, args.cases, args.workers, args.seed, args.timeout, Path(scratch))
    keep = args.keep or Path(tempfile.gettempdir()) / f"recital-fuzz-bugs-{args.seed}"
    return report(results, time.monotonic() - started, keep)


if __name__ == "__main__":
    sys.exit(main())
