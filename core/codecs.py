"""The music codecs a model reads and writes, by the name its model directory records (config.json "tokenizer").

A codec turns notes into token ids and back. Two exist: "performance", the event codec every model was trained on
until issue #17 (core/tokenizer.py: NoteOn ... NoteOff), and "notes", where a note carries its duration at its
onset (core/notecodec.py), which is what the shipped models move to. Each model's config names its codec (an old
config without the field reads as "performance"), and everything that reads or writes a model's ids asks
`codec_of(model)` instead of importing one codec: generation, constraints, infilling, metrics, the trainer.

Both codecs share the special ids (PAD 0, BOS 1, EOS 2), the 10 ms grid, the velocity bins, the onset ids of
pitches (3 + pitch: NoteOn in one, Pitch in the other) and the NoteEvent of their incremental decoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

import numpy as np

from core import notecodec, tokenizer
from core.errors import ModelError
from core.midi import Performance

DEFAULT = tokenizer.NAME  # what a model config without a "codec" field was trained on
CODECS: dict[str, ModuleType] = {tokenizer.NAME: tokenizer, notecodec.NAME: notecodec}
ONSET = tokenizer.NOTE_ON  # == notecodec.PITCH: ONSET + p starts a note of pitch p in both codecs
assert ONSET == notecodec.PITCH


class Codec(Protocol):
    """What both codec modules provide (a module satisfies it)."""

    NAME: str
    VOCAB_SIZE: int
    TIME_SHIFT: int  # the first TimeShift id (10 ms); MAX_SHIFT_TICKS of them
    VELOCITY: int  # the first Velocity id (bin 0); VELOCITY_BINS of them
    MAX_SHIFT_TICKS: int

    def encode(self, perf: Performance, bos: bool = True, eos: bool = True) -> np.ndarray: ...
    def decode(self, ids) -> Performance: ...
    def decode_continuations(self, primer, continuations: Sequence, with_primer: bool = True
                             ) -> list[Performance]: ...
    def shift_ticks(self, ids) -> np.ndarray: ...
    def ids_seconds(self, ids) -> float: ...
    def silence_ids(self, seconds: float) -> np.ndarray: ...
    def last_velocity(self, ids) -> int | None: ...
    def token_name(self, token: int) -> str: ...


def codec_named(name: str) -> Codec:
    """The codec of that name; ModelError listing the known ones."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        known = ", ".join(repr(n) for n in CODECS)
        raise ModelError(f"unknown codec {name!r}: this build reads {known}") from None


def codec_of(model) -> Codec:
    """The codec a model (or its config) was trained on: its config's `codec`, "performance" where it has none."""
    config = getattr(model, "config", model)
    return codec_named(getattr(config, "codec", DEFAULT))
