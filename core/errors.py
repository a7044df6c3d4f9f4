"""Typed errors that carry what was wrong and where, so the CLI and the studio can show them plainly."""

from __future__ import annotations

from pathlib import Path


class RecitalError(Exception):
    """Base of every error Recital reports to a user: the message is one line, ready to print."""


class MidiError(RecitalError):
    """A MIDI file (or folder) that cannot be read or written: path plus a one-line reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class OutputError(RecitalError):
    """A file Recital was asked to write that it must not (an input, an existing file, a device): path + reason."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelError(RecitalError):
    """A model directory that is missing, malformed, or does not fit what was asked of it."""


class BudgetError(RecitalError):
    """A memory budget that cannot hold the model's recurrent state."""


class DeviceError(RecitalError):
    """Audio or MIDI hardware/software that is missing or failed (no sound card, no JACK server, ...)."""
