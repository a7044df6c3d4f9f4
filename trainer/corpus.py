"""A folder of MIDI files as one memory-mapped token array, cached so a re-scan reads only what changed.

Three layers, each cheap to redo:

1. Per file, the content hash (sha256 of the bytes). A folder remembers (size, mtime) -> hash of every file it
   saw, so an unchanged file is not even read again.
2. Per content hash and codec, the token ids (`pieces/<codec>/<hh>/<hash>.npy`) and a small record (duration,
   note count, or why the file cannot be read). Shared by every folder; a codec change starts a fresh directory.
3. Per folder and codec, one flat uint16 array (`tokens-<id>.npy`, opened with `np.load(mmap_mode="r")`) and
   `index.json`: piece boundaries, source paths, durations, token counts, hashes, and the last scan's summary.

Everything lives under `platformdirs.user_cache_dir("recital")/corpus`, or `$RECITAL_CACHE_DIR/corpus`.
Files that cannot be read are skipped and reported (with `MidiError`'s reason), never fatal; exact duplicates
(same bytes, or different bytes with the same token sequence) are kept once.

The cache repairs itself: a damaged entry (a truncated, empty or garbled token array, a record or index that
does not match it) is dropped and rebuilt from the MIDI file when a scan meets it, and the scan's summary says
so (`repaired`). `use_cache=False` reads nothing from the cache; it writes every entry afresh.

A corpus is encoded with one codec (core.codecs: "performance", the default, or "notes"): the codec's name and
source enter the cache's keys, so the two codecs' ids never mix, and a corpus refuses to feed a model of another
codec (`check_codec`).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import multiprocessing
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import platformdirs

from core.codecs import DEFAULT, codec_named, codec_of
from core.errors import MidiError, ModelError
from core.midi import MAX_FILE_BYTES, atomic_write_bytes, find_midi_files, read_performance
from core.threads import data_workers

CACHE_ENV = "RECITAL_CACHE_DIR"
INDEX_VERSION = 1
HASH = re.compile(r"[0-9a-f]{64}")
TOKENS_FILE = re.compile(r"tokens-[0-9a-f]{16}\.npy")

Progress = Callable[[int, int], None]  # (files done, files in all); may raise to cancel the scan


def cache_root() -> Path:
    """Where corpus caches live: `$RECITAL_CACHE_DIR/corpus`, else the platform's user cache dir."""
    override = os.environ.get(CACHE_ENV)
    base = Path(override) if override else Path(platformdirs.user_cache_dir("recital"))
    return base / "corpus"


@lru_cache(maxsize=4)
def codec_version(codec: str = DEFAULT) -> str:
    """Fingerprint of everything that decides a file's tokens: the reader, the codec and the MIDI parser.

    Derived from the source itself, so no one has to remember to bump a number when the encoding changes. The
    codec's name and module enter it for any codec but the event codec, whose fingerprint stays what it was before
    there were two (its caches stay valid); the notes codec reads the event codec's grid, so both modules count.
    """
    import symusic

    import core.midi
    import core.tokenizer

    module = codec_named(codec)
    digest = hashlib.sha256()
    for source in dict.fromkeys((core.midi, core.tokenizer, module)):
        digest.update(Path(source.__file__).read_bytes())
    digest.update(symusic.__version__.encode())
    if codec != DEFAULT:
        digest.update(f"codec:{codec}".encode())
    return digest.hexdigest()[:16]


# ---- what a scan reports ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str  # MidiError's one-line reason


@dataclass(frozen=True)
class Duplicate:
    path: str
    same_as: str  # the kept file with the same token sequence


@dataclass(frozen=True)
class ScanSummary:
    """What one scan found: enough for the CLI's table, the fine-tune dialog and a model card."""

    folder: str
    files: int  # MIDI files found
    files_ok: int  # files that read (duplicates included)
    skipped: tuple[Skipped, ...]
    duplicates: tuple[Duplicate, ...]
    pieces: int
    tokens: int
    seconds: float  # music in the kept pieces
    encoded: int  # files read and encoded in this scan; the others came from the cache
    hashed: int  # files whose bytes were read to hash them (new or touched since the last scan)
    elapsed: float  # wall seconds of the scan
    repaired: tuple[str, ...] = ()  # damaged cache files this scan found, dropped and rebuilt
    unended: int = 0  # notes of the kept pieces that never ended in their file (ended at their track's end)

    @property
    def hours(self) -> float:
        return self.seconds / 3600.0

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) pairs for a two-column table."""
        return [
            ("files ok", f"{self.files_ok:,}"),
            ("skipped", f"{len(self.skipped):,}"),
            ("duplicates", f"{len(self.duplicates):,}"),
            ("pieces", f"{self.pieces:,}"),
            ("tokens", f"{self.tokens:,}"),
            ("hours of music", f"{self.hours:.2f}"),
            ("read this scan", f"{self.encoded:,} of {self.files:,} files ({self.elapsed:.1f} s)"),
            *([("cache repaired", f"{len(self.repaired):,} damaged cache files rebuilt from the MIDI files")]
              if self.repaired else []),
        ]

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(data: dict) -> ScanSummary:
        data = dict(data)
        data["skipped"] = tuple(Skipped(**s) for s in data["skipped"])
        data["duplicates"] = tuple(Duplicate(**d) for d in data["duplicates"])
        data["repaired"] = tuple(data.get("repaired", ()))
        return ScanSummary(**data)


@dataclass(frozen=True)
class Piece:
    """One kept file: its tokens are `Corpus.tokens[start:end]` (BOS ... EOS)."""

    start: int
    end: int
    path: str  # absolute source path at scan time
    seconds: float
    notes: int
    hash: str  # sha256 of the file's bytes

    @property
    def tokens(self) -> int:
        return self.end - self.start


# ---- the per-hash cache ----------------------------------------------------------------------------------

@dataclass
class _Store:
    """Token arrays and records keyed by content hash, for one codec version."""

    root: Path
    codec: str = DEFAULT  # the codec's name

    def _stem(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def record(self, digest: str) -> dict | None:
        """The cached record of a hash; None when it is missing or incomplete, `_Damaged` when unusable."""
        stem = self._stem(digest)
        path = stem.with_suffix(".json")
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            raise _Damaged(digest, path) from None
        if not _well_formed_record(record):
            raise _Damaged(digest, path)
        if record["ok"] and not stem.with_suffix(".npy").is_file():
            return None
        return record

    def save(self, digest: str, record: dict, ids: np.ndarray | None) -> None:
        stem = self._stem(digest)
        if ids is not None:
            buffer = io.BytesIO()
            np.save(buffer, ids, allow_pickle=False)
            atomic_write_bytes(stem.with_suffix(".npy"), buffer.getvalue(), what="corpus cache entry")
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(record).encode(), what="corpus cache entry")

    def tokens(self, digest: str, expected: int) -> np.ndarray:
        """The cached token ids of a hash; `_Damaged` when the array is unreadable or not `expected` long."""
        path = self._stem(digest).with_suffix(".npy")
        try:
            ids = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):  # missing, truncated, garbled, empty
            raise _Damaged(digest, path) from None
        if ids.dtype != np.uint16 or ids.shape != (expected,):
            raise _Damaged(digest, path)
        return ids


def _well_formed_record(record) -> bool:
    if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
        return False
    if not record["ok"]:
        return isinstance(record.get("reason"), str)
    return (isinstance(record.get("seconds"), int | float) and isinstance(record.get("notes"), int)
            and isinstance(record.get("tokens"), int) and record["tokens"] > 0
            and isinstance(record.get("token_hash"), str))


class _Damaged(Exception):
    """A per-hash cache entry that cannot be used: the scan drops it and encodes the file again."""

    def __init__(self, digest: str, path: Path):
        super().__init__(f"{path}: damaged corpus cache entry")
        self.digest, self.path = digest, path


def _encode_file(path: str, digest: str, store_root: str, codec: str = DEFAULT) -> dict:
    """Read, encode (with the codec named `codec`) and cache one file (runs in a worker process). Returns its
    record."""
    try:
        perf = read_performance(path)
    except MidiError as error:
        record = {"ok": False, "reason": error.reason}
        _Store(Path(store_root)).save(digest, record, None)
        return record
    ids = codec_named(codec).encode(perf)
    record = {"ok": True, "seconds": perf.duration, "notes": len(perf), "tokens": int(ids.shape[0]),
              "token_hash": hashlib.sha256(ids.tobytes()).hexdigest(), "unended": perf.unended}
    _Store(Path(store_root)).save(digest, record, ids)
    return record


def _hash_file(path: Path, size: int) -> str:
    if size > MAX_FILE_BYTES:
        read_performance(path)  # refuses the file by its size, before reading a byte
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        raise MidiError(path, f"cannot read the file ({error.strerror})") from None


# ---- the corpus ------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Corpus:
    """A scanned folder: one memory-mapped token array, its pieces, and the scan's summary."""

    folder: Path
    tokens: np.ndarray  # uint16 (total,), memory-mapped read-only
    index: tuple[Piece, ...]
    summary: ScanSummary
    codec: str  # the codec's name (core.codecs): "performance" or "notes"
    version: str  # codec_version(codec) when it was scanned
    starts: np.ndarray = field(init=False, repr=False)  # int64 (pieces,)
    ends: np.ndarray = field(init=False, repr=False)  # int64 (pieces,)

    def __post_init__(self) -> None:
        self.starts = np.array([p.start for p in self.index], dtype=np.int64)
        self.ends = np.array([p.end for p in self.index], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"Corpus({str(self.folder)!r}, pieces={len(self)}, tokens={self.total_tokens}, " \
               f"hours={self.hours:.2f})"

    def piece(self, i: int) -> np.ndarray:
        """Token ids of piece `i` (BOS ... EOS): a view into the memory map, no copy."""
        entry = self.index[i]
        return self.tokens[entry.start:entry.end]

    @property
    def total_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def total_seconds(self) -> float:
        return float(sum(p.seconds for p in self.index))

    @property
    def hours(self) -> float:
        return self.total_seconds / 3600.0

    def totals(self) -> dict:
        """What a model card says about its training data."""
        return {"folder": str(self.folder), "pieces": len(self), "tokens": self.total_tokens,
                "hours": round(self.hours, 3), "files_skipped": len(self.summary.skipped),
                "duplicates_dropped": len(self.summary.duplicates), "codec": self.codec}

    def check_codec(self, model) -> None:
        """ModelError unless `model` (or its config) reads this corpus's codec: ids of one codec mean other
        things in the other."""
        wanted = codec_of(model).NAME
        if wanted != self.codec:
            raise ModelError(f"{self.folder}: the corpus was encoded with the {self.codec!r} codec, the model "
                             f"reads {wanted!r}: open it with codec={wanted!r}")

    def split(self, val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
        """(train, validation) piece indices, chosen by a seeded hash of each piece's content.

        The same seed gives the same split whatever the file names or scan order, so a renamed or moved
        piece stays on its side. With two or more pieces and a positive fraction, both sets are non-empty.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(self)
        n_val = round(val_fraction * n)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        rank = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{self.index[i].hash}".encode()).digest())
        val = sorted(rank[:n_val])
        chosen = set(val)
        return [i for i in range(n) if i not in chosen], val

    # ---- opening and building --------------------------------------------------------------------------

    @classmethod
    def open(cls, folder: str | Path, codec: str = DEFAULT) -> Corpus:
        """The corpus of `folder` encoded with `codec` as its last scan left it (no re-scan)."""
        folder = Path(folder).resolve()
        codec_named(codec)
        home = _folder_home(folder, codec)
        again = "run `recital corpus` on it again (a scan rebuilds what is damaged)"
        index = _read_index(home)
        if index is None:
            if (home / "index.json").exists():
                raise MidiError(folder, f"the corpus cache index is damaged or from another version; {again}")
            raise MidiError(folder, "this folder has not been scanned yet"
                                    + ("" if codec == DEFAULT else f" with the {codec!r} codec")
                                    + "; run `recital corpus` on it first")
        try:
            pieces = tuple(Piece(**p) for p in index["pieces"])
            summary = ScanSummary.from_json(index["summary"])
            tokens = np.load(home / index["tokens_file"], mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, EOFError) as error:
            raise MidiError(folder, f"the corpus cache is damaged ({str(error)[:200]}); {again}") from None
        if not _matches(pieces, tokens):
            raise MidiError(folder, f"the corpus cache is damaged (its index does not match its token array); {again}")
        if index.get("codec_name", DEFAULT) != codec:
            raise MidiError(folder, f"the corpus cache holds the {index.get('codec_name')!r} codec's ids, not "
                                    f"{codec!r}'s; {again}")
        return cls(folder, tokens, pieces, summary, codec, index["codec"])

    @classmethod
    def build(cls, folder: str | Path, workers: int | None = None, use_cache: bool = True,
              progress: Progress | None = None, codec: str = DEFAULT) -> Corpus:
        """Scan `folder` recursively, encode what is new or changed (in `workers` processes) with `codec`, and
        assemble. Each codec has its own cache: scanning with one never touches the other's.

        `use_cache=False` reads nothing from the cache: every file is read and encoded again and its entries
        rewritten. A damaged cache entry is dropped and rebuilt (the summary's `repaired` lists them).
        `progress(done, total)` is called as files complete; an exception it raises cancels the scan. The
        returned corpus carries the scan's `summary` (files ok, skipped with reasons, duplicates, hours).
        """
        started = time.monotonic()
        folder = Path(folder).resolve()
        files = find_midi_files(folder)
        if not files:
            raise MidiError(folder, "no MIDI files (.mid, .midi, .kar) in this folder")
        version = codec_version(codec)  # ModelError for an unknown codec, before anything is written
        home = _folder_home(folder, codec)
        store = _Store(cache_root() / "pieces" / version, codec)
        previous = _read_index(home) if use_cache else None
        seen = previous.get("files", {}) if previous else {}
        repaired: list[str] = []  # damaged cache files met on the way, dropped and rebuilt
        if use_cache and previous is None and _index_damaged(home):
            repaired.append(str(home / "index.json"))

        # 1. Content hashes: from the folder's memory when size and mtime are unchanged, else from the bytes.
        digests: dict[Path, str] = {}
        reasons: dict[Path, str] = {}
        stats: dict[str, dict] = {}
        hashed = 0
        for path in files:
            try:
                stat = path.stat()
                memo = seen.get(str(path))
                if memo and memo["size"] == stat.st_size and memo["mtime_ns"] == stat.st_mtime_ns:
                    digest = memo["hash"]
                else:
                    digest = _hash_file(path, stat.st_size)
                    hashed += 1
            except MidiError as error:
                reasons[path] = error.reason
                continue
            except OSError as error:
                reasons[path] = f"cannot access the file ({error.strerror})"
                continue
            digests[path] = digest
            stats[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "hash": digest}

        # 2. Records: from the shared cache, else read and encode each new content once.
        records: dict[str, dict] = {}
        todo: dict[str, Path] = {}
        for path, digest in digests.items():
            if digest in records or digest in todo:
                continue
            try:
                record = store.record(digest) if use_cache else None
            except _Damaged as damaged:
                repaired.append(str(damaged.path))
                record = None
            if record is None:
                todo[digest] = path
            else:
                records[digest] = record
        files_per_digest: dict[str, int] = {}
        for digest in digests.values():
            files_per_digest[digest] = files_per_digest.get(digest, 0) + 1
        done = len(files) - sum(files_per_digest[d] for d in todo)
        if progress:
            progress(done, len(files))
        with closing(_encode_all(todo, store, workers)) as results:
            for digest, record in results:
                records[digest] = record
                done += files_per_digest[digest]
                if progress:
                    progress(done, len(files))

        # 3. Keep each token sequence once, in path order, in one flat array. A damaged token array met while
        # writing it is encoded again from its file, and the pieces are laid out anew.
        encoded = len(todo)
        while True:
            kept, duplicates, unreadable = _keep(digests, records)
            try:
                pieces, tokens_file, rebuilt = _assemble(home, kept, store, reuse=use_cache)
                break
            except _Damaged as damaged:
                if str(damaged.path) in repaired:
                    raise MidiError(damaged.path, "this corpus cache entry is damaged again right after it was "
                                                  "rebuilt: check the disk") from None
                repaired.append(str(damaged.path))
                path = next(p for p, d in digests.items() if d == damaged.digest)
                records[damaged.digest] = _safe_encode(path, damaged.digest, store)
                encoded += 1
        if rebuilt:
            repaired.append(str(home / tokens_file))
        reasons.update(unreadable)
        summary = ScanSummary(
            folder=str(folder), files=len(files), files_ok=len(files) - len(reasons),
            skipped=tuple(Skipped(str(p), reasons[p]) for p in files if p in reasons),
            duplicates=tuple(duplicates), pieces=len(pieces), tokens=pieces[-1].end if pieces else 0,
            seconds=float(sum(p.seconds for p in pieces)), encoded=encoded, hashed=hashed,
            elapsed=time.monotonic() - started, repaired=tuple(repaired),
            unended=sum(r["unended"] for _, _, r in kept if isinstance(r.get("unended"), int)))
        index = {"version": INDEX_VERSION, "folder": str(folder), "codec": version, "codec_name": codec,
                 "tokens_file": tokens_file,
                 "pieces": [asdict(p) for p in pieces], "files": stats, "summary": summary.to_json()}
        atomic_write_bytes(home / "index.json", json.dumps(index).encode(), what="corpus index")
        _remove_stale_arrays(home, keep=tokens_file)
        return cls.open(folder, codec)


def _encode_all(todo: dict[str, Path], store: _Store, workers: int | None):
    """Yield (hash, record) for each file in `todo`, in completion order, in a process pool when it helps."""
    workers = min(workers or data_workers(), len(todo))
    if workers <= 1:
        for digest, path in todo.items():
            yield digest, _safe_encode(path, digest, store)
        return
    methods = multiprocessing.get_all_start_methods()
    # Never plain fork: the studio calls this from a process with threads.
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending: dict[Future, str] = {
            pool.submit(_encode_file, str(path), digest, str(store.root), store.codec): digest
            for digest, path in todo.items()}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                digest = pending.pop(future)
                try:
                    record = future.result()
                except MidiError:  # the cache could not be written
                    raise
                except Exception as error:  # a bug or a crashed worker: skip the file, say why
                    record = {"ok": False, "reason": f"unexpected {type(error).__name__} while reading: {error}"}
                yield digest, record
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _safe_encode(path: Path, digest: str, store: _Store) -> dict:
    try:
        return _encode_file(str(path), digest, str(store.root), store.codec)
    except MidiError:
        raise
    except Exception as error:
        return {"ok": False, "reason": f"unexpected {type(error).__name__} while reading: {error}"}


def _keep(digests: dict[Path, str], records: dict[str, dict]
          ) -> tuple[list[tuple[Path, str, dict]], list[Duplicate], dict[Path, str]]:
    """(kept (path, hash, record) in path order, duplicates, unreadable files with their reasons)."""
    kept: list[tuple[Path, str, dict]] = []
    first_with: dict[str, Path] = {}
    duplicates: list[Duplicate] = []
    unreadable: dict[Path, str] = {}
    for path, digest in digests.items():
        record = records[digest]
        if not record["ok"]:
            unreadable[path] = record["reason"]
            continue
        original = first_with.setdefault(record["token_hash"], path)
        if original != path:
            duplicates.append(Duplicate(str(path), str(original)))
            continue
        kept.append((path, digest, record))
    return kept, duplicates, unreadable


def _assemble(home: Path, kept: list[tuple[Path, str, dict]], store: _Store,
              reuse: bool) -> tuple[list[Piece], str, bool]:
    """Write the kept pieces as one flat array; return the index, the array's name, and whether an existing
    array of that name was damaged (rewritten). With `reuse`, a sound identical array is kept as it is.

    Written with plain writes, not a memory map: a full disk is then an OSError, never a SIGBUS.
    """
    pieces: list[Piece] = []
    start = 0
    content = hashlib.sha256()
    for path, digest, record in kept:
        pieces.append(Piece(start, start + record["tokens"], str(path), record["seconds"], record["notes"],
                            digest))
        start += record["tokens"]
        content.update(record["token_hash"].encode())
    tokens_file = f"tokens-{content.hexdigest()[:16]}.npy"
    target = home / tokens_file
    damaged = False
    if reuse and target.exists():
        if _array_fits(target, start):
            return pieces, tokens_file, False
        damaged = True
    partial = home / f".{tokens_file}.{os.getpid()}.tmp"
    try:
        home.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as handle:
            np.lib.format.write_array_header_1_0(handle, {"descr": "<u2", "fortran_order": False,
                                                          "shape": (start,)})
            for piece in pieces:
                handle.write(store.tokens(piece.hash, piece.tokens).astype("<u2", copy=False).tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except OSError as error:
        partial.unlink(missing_ok=True)
        reason = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
        raise MidiError(target, f"cannot write the corpus tokens ({reason})") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return pieces, tokens_file, damaged


def _array_fits(path: Path, length: int) -> bool:
    """Whether `path` is a readable uint16 array of `length` ids (its header and size; not every value)."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    fits = array.dtype == np.uint16 and array.shape == (length,)
    del array
    return fits


def _matches(pieces: tuple[Piece, ...], tokens: np.ndarray) -> bool:
    """Whether an index's pieces tile the token array exactly, in order."""
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        return False
    end = 0
    for piece in pieces:
        if piece.start != end or piece.end <= piece.start:
            return False
        end = piece.end
    return end == tokens.shape[0]


def _folder_home(folder: Path, codec: str = DEFAULT) -> Path:
    """The cache directory of one folder and codec: readable name plus a hash of its absolute path (and the
    codec's name, but for the event codec, whose directories predate the others)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name)[:40] or "root"
    suffix = "" if codec == DEFAULT else f"-{codec}"
    return cache_root() / "folders" / f"{slug}-{hashlib.sha256(str(folder).encode()).hexdigest()[:16]}{suffix}"


def _read_index(home: Path) -> dict | None:
    """The folder's index.json, or None when it is missing, from another version, or damaged."""
    try:
        index = json.loads((home / "index.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or index.get("version") != INDEX_VERSION or not _well_formed_index(index):
        return None
    return index


def _index_damaged(home: Path) -> bool:
    """Whether the folder has an index.json of this version (or of none) that cannot be used."""
    try:
        index = json.loads((home / "index.json").read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    return not isinstance(index, dict) or (index.get("version", INDEX_VERSION) == INDEX_VERSION
                                           and not _well_formed_index(index))


def _well_formed_index(index: dict) -> bool:
    files, pieces = index.get("files"), index.get("pieces")
    return (isinstance(files, dict) and all(
                isinstance(memo, dict) and isinstance(memo.get("size"), int) and isinstance(memo.get("mtime_ns"), int)
                and isinstance(memo.get("hash"), str) and HASH.fullmatch(memo["hash"]) is not None
                for memo in files.values())
            and isinstance(pieces, list) and all(isinstance(piece, dict) for piece in pieces)
            and isinstance(index.get("tokens_file"), str) and TOKENS_FILE.fullmatch(index["tokens_file"]) is not None
            and isinstance(index.get("summary"), dict) and isinstance(index.get("codec"), str))


def _remove_stale_arrays(home: Path, keep: str) -> None:
    """Old token arrays of this folder (a reader that still maps one keeps it alive until it closes)."""
    for old in home.glob("tokens-*.npy"):
        if old.name != keep:
            try:
                old.unlink()
            except OSError:
                pass
