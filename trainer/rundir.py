"""A run's output directory: who may write into it, and what a start finds there.

One process trains a directory at a time: it holds `RunLock` (an OS lock on `<out>/.run.lock`, released by the
kernel when the process ends, so a killed run never leaves a stale lock) for the run's whole life. Under torchrun
only rank 0 takes it; the other ranks read the directory (a resumed checkpoint) and never write.

What a start finds in `<out>` (`state`):

    absent / empty   nothing there: a fresh start
    resumable        a complete checkpoint: `--resume` continues it; a fresh start would overwrite it
    unfinished       only a run's own files, no checkpoint and no finished run: a run killed or failed before
                     its first checkpoint. Nothing there is worth keeping (at most the base's weights, saved at
                     step 0), so it is cleared and started again, with or without --resume
    occupied         anything else (a model directory, the user's files): never touched
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from pathlib import Path

from core.errors import ModelError
from core.modeldir import CARD, CONFIG, WEIGHTS
from trainer.checkpoint import CHECKPOINTS, EVENTS, latest_checkpoint

LOCK = ".run.lock"
RUN_FILES = (EVENTS, CONFIG, WEIGHTS, CARD, CHECKPOINTS)  # what a run writes, besides its lock and leftovers
LEFTOVERS = (".staging-", ".probe-")  # prefixes of what interrupted writes leave (see trainer.checkpoint)
WINDOWS_LOCK_OFFSET = 4096  # Windows locks a byte range; past the pid, so the pid stays readable


def state(out: Path) -> str:
    """absent | empty | resumable | unfinished | occupied (see the module docstring)."""
    if not out.exists():
        return "absent"
    if not out.is_dir():
        return "occupied"
    entries = [p.name for p in out.iterdir() if p.name != LOCK]
    if not entries:
        return "empty"
    if latest_checkpoint(out) is not None:
        return "resumable"
    ours = all(name in RUN_FILES or name.startswith(LEFTOVERS) for name in entries)
    if ours and EVENTS in entries and not _finished(out / EVENTS):
        return "unfinished"
    return "occupied"


def _finished(events: Path) -> bool:
    """Whether a run's event log records its end (a finished model whose checkpoints were deleted since)."""
    try:
        lines = events.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return True  # unreadable: treat as something to keep
    for line in lines:
        try:
            if json.loads(line).get("kind") == "done":
                return True
        except (ValueError, AttributeError):
            continue
    return False


def clear(out: Path) -> None:
    """Remove a run's own files from `out` (its lock aside); anything else stays."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    for path in out.iterdir():
        if path.name.startswith(LEFTOVERS):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


class RunLock:
    """The one process allowed to write a run directory; `release()` (or the process ending) frees it."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.fd: int | None = None
        self.unguarded: str | None = None  # why the filesystem could not lock (the run goes on, told so)
        while True:  # retry when the file was removed by a releasing holder between our open and our lock
            fd = _open(self.path)
            try:
                locked = _try_lock(fd)
            except OSError as error:  # a filesystem without locks (some network mounts): go on, and say so
                self.unguarded = error.strerror or str(error)
                break
            if not locked:
                holder = _read_pid(fd)
                os.close(fd)
                who = f"pid {holder}" if holder else "pid unknown"
                raise ModelError(f"another training is using {out} ({who}): wait for it to end, or stop it")
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except OSError:
                same = False
            if same:
                break
            os.close(fd)
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is only for the message a second process shows

    def release(self, remove: bool = True) -> None:
        """Unlock; remove the lock file first (safe: a waiting opener re-checks which file it locked)."""
        if self.fd is None:
            return
        if remove and sys.platform != "win32":
            with contextlib.suppress(OSError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(self.fd)  # closing releases the lock
        self.fd = None
        if remove and sys.platform == "win32":
            with contextlib.suppress(OSError):
                self.path.unlink()


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ModelError(f"{path.parent}: the output directory is not writable ({error.strerror or error})") from None


def _try_lock(fd: int) -> bool:
    """True: locked; False: another process holds it; OSError: this filesystem cannot lock."""
    try:
        import fcntl
    except ImportError:
        return _try_lock_windows(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _try_lock_windows(fd: int) -> bool:
    import msvcrt

    os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except PermissionError:  # EACCES: locked by another process
        return False
    finally:
        os.lseek(fd, 0, os.SEEK_SET)
    return True


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 32).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
