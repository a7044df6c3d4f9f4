"""Files Recital writes for the user: checked before any work starts, so that nothing the user made is lost.

The rules, the same for the CLI's `--out`/`--wav` and every variation's file:
- an output that is (the same file as) one of the inputs is refused, even with --force: writing it would replace
  the primer with a re-encoding of it (hard links and symlinks to it count as the same file);
- an existing file is refused unless `force` (the CLI's `--force`);
- only regular files are written: a folder, device node, FIFO or socket is refused;
- a symlink is followed on purpose: its target is written (through a temporary file beside the target, then
  renamed over it) and the link stays a link;
- a missing folder is created, and a note says so;
- two outputs of one command that are the same file are refused.

`plan_outputs` checks everything before any work starts and creates nothing; `create_folders` makes the missing
folders when the files are written. The writer every file
goes through (`core.midi.atomic_write_bytes`) follows symlinks and refuses non-regular targets on its own, so the
studio's save and the corpus cache keep the same two rules.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.errors import OutputError


@dataclass(frozen=True)
class PlannedOutputs:
    """The checked outputs, in the order asked; `create_folders` makes the missing folders when it is time to write."""

    paths: tuple[Path, ...]

    def create_folders(self) -> list[str]:
        """Create every missing folder of the outputs; one line per folder created, for the user to read."""
        notes = []
        for path in self.paths:
            folder = Path(os.path.realpath(path)).parent
            if folder.exists():
                continue
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(folder, f"cannot create the folder ({error.strerror or error})") from None
            notes.append(f"created folder {folder if path.is_symlink() else path.parent}")
        return notes


def kind_of(mode: int) -> str | None:
    """What a non-regular file is, in words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), force: bool = False,
                 flag: str = "--force") -> Path:
    """Refuse `path` as an output (OutputError, one line) unless writing it loses nothing; returns it unchanged.

    `inputs` are the files the command reads (the primer); `flag` is the option that allows replacing a file.
    """
    text = os.fspath(path)
    path = Path(path)
    if not path.name or text.endswith(("/", os.sep)):
        raise OutputError(path, "names a folder, not a file")
    target = Path(os.path.realpath(path))  # a symlink (or a linked folder) is followed on purpose
    try:
        info = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        _check_folder(path, target.parent)
        return path
    except OSError as error:
        raise OutputError(path, f"cannot check the file ({error.strerror or error})") from None
    what = kind_of(info.st_mode)
    if what is not None:
        raise OutputError(path, f"is {what}; Recital writes only regular files")
    for source in inputs:
        try:
            same = os.path.samefile(source, target)
        except OSError:
            continue
        if same:
            raise OutputError(path, f"is the input {source}: writing it would replace what you made; "
                                    "choose another output file")
    if not force:
        raise OutputError(path, f"already exists; pass {flag} to replace it")
    if not os.access(target, os.W_OK):
        raise OutputError(path, "cannot be replaced (permission denied)")
    return path


def _check_folder(path: Path, folder: Path) -> None:
    """The folder of a new file: it exists and is writable, or can be created (an existing part is a folder)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(path, f"cannot create a folder under {existing}: it is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(path, f"cannot write in {existing} (permission denied)")


def plan_outputs(paths: Sequence[str | Path], inputs: Iterable[str | Path] = (), force: bool = False,
                 flag: str = "--force") -> PlannedOutputs:
    """Check every output of one command before any work starts; nothing is created or written here.

    Raises OutputError (one line) for the first refused path, or for two outputs that are the same file.
    """
    inputs = list(inputs)
    checked = [check_output(path, inputs, force, flag) for path in paths]
    seen: dict[str, Path] = {}
    for path in checked:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            raise OutputError(path, f"is written twice by this command (also as {seen[key]})")
        seen[key] = path
    return PlannedOutputs(tuple(checked))
