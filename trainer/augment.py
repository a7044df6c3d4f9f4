"""Data augmentation on token arrays: transposition and tempo stretch, in the codec the ids are in.

The event codec ("performance") is changed on the ids directly (vectorised numpy, a few ms for a 15-minute
recital):
- transposition moves every NoteOn/NoteOff by the same number of semitones; a note pushed outside 0..127 loses
  both its on and its off (its Velocity token stays: the next note may rely on the bin it set);
- a tempo stretch multiplies every event's absolute time by a factor, rounds it to the 10 ms grid, and writes
  the gaps again as TimeShift tokens (at most 1 s each), as the encoder would.

The note codec ("notes") states each note whole (Velocity, Pitch, Duration) and orders the notes of one tick by
pitch, so a change that moves notes across ticks or drops one must re-order them and re-state velocities: its
ids are read as notes (core.notecodec.read_notes, vectorised, every note as written), changed as arrays and
encoded again. Transposition moves each Pitch (a note pushed out of 0..127 loses its Pitch and its Duration);
a stretch scales each onset and each duration on the tick grid and re-bins the duration (notecodec.duration_bin,
inside encode). The result is the encoder's output for the changed notes, as if the piece had been played so.
"""

from __future__ import annotations

import numpy as np

from core import notecodec
from core.codecs import DEFAULT
from core.midi import Performance
from core.tokenizer import NOTE_OFF, NOTE_ON, TICK_SECONDS, TIME_SHIFT, VELOCITY, shift_count, write_shifts


def transpose(ids: np.ndarray, semitones: int, codec: str = DEFAULT) -> np.ndarray:
    """ids with every note moved by `semitones`; notes that leave the piano's MIDI range are dropped."""
    ids = np.asarray(ids)
    if semitones == 0:
        return ids
    if codec == notecodec.NAME:
        return _change_notes(ids, semitones, 1.0)
    out = ids.astype(np.int64)
    note = (out >= NOTE_ON) & (out < TIME_SHIFT)
    base = np.where(out < NOTE_OFF, NOTE_ON, NOTE_OFF)
    pitch = out - base + semitones
    keep = ~note | ((pitch >= 0) & (pitch < 128))
    out = np.where(note, base + pitch, out)
    return out[keep].astype(ids.dtype)


def stretch(ids: np.ndarray, factor: float, codec: str = DEFAULT) -> np.ndarray:
    """ids with time scaled by `factor` (>1 slower): every event's time is multiplied, gaps re-encoded."""
    ids = np.asarray(ids)
    if factor == 1.0:
        return ids
    if codec == notecodec.NAME:
        return _change_notes(ids, 0, factor)
    tokens = ids.astype(np.int64)
    shift = (tokens >= TIME_SHIFT) & (tokens < VELOCITY)
    ticks = np.where(shift, tokens - TIME_SHIFT + 1, 0)
    events = tokens[~shift]  # everything that is not a time shift, in order
    when = np.cumsum(ticks)[~shift]  # (E,) absolute tick of each event
    new_when = np.floor(when * factor + 0.5).astype(np.int64)
    delta = np.diff(new_when, prepend=0)  # (E,) >= 0: times stay in order
    per_event = shift_count(delta) + 1
    start = np.cumsum(per_event) - per_event
    out = np.empty(int(per_event.sum()), dtype=np.int64)
    write_shifts(out, start, delta)
    out[start + per_event - 1] = events
    return out.astype(ids.dtype)


def _change_notes(ids: np.ndarray, semitones: int, factor: float) -> np.ndarray:
    """Note-codec ids with every note transposed and its onset and length scaled (ticks rounded half up, as the
    encoder rounds seconds); BOS and EOS kept where they were."""
    (onset, end, pitch, vbin), _, ended = notecodec.read_notes(ids)
    pitch = pitch + semitones
    keep = (pitch >= 0) & (pitch < 128)
    onset, end, pitch, vbin = onset[keep], end[keep], pitch[keep], vbin[keep]
    if factor != 1.0:
        length = np.maximum(np.floor((end - onset) * factor + 0.5), 1).astype(np.int64)
        onset = np.floor(onset * factor + 0.5).astype(np.int64)
        end = onset + length
    # Whole ticks as seconds: the encoder's rounding gives the same ticks back; velocities are their bins' own.
    perf = Performance(onset * TICK_SECONDS, end * TICK_SECONDS, pitch.astype(np.int16),
                       (vbin * 4 + 2).astype(np.int16))
    bos = bool(len(ids)) and int(ids[0]) == notecodec.BOS
    return notecodec.encode(perf, bos=bos, eos=ended).astype(ids.dtype)


def augment(ids: np.ndarray, rng: np.random.Generator, max_semitones: int, max_stretch: float,
            codec: str = DEFAULT) -> np.ndarray:
    """A random transposition in [-max_semitones, max_semitones] and tempo factor in 1 +- max_stretch, on ids of
    the codec named `codec`."""
    semitones = int(rng.integers(-max_semitones, max_semitones + 1)) if max_semitones else 0
    factor = float(rng.uniform(1.0 - max_stretch, 1.0 + max_stretch)) if max_stretch else 1.0
    if codec == notecodec.NAME:  # one reading and one encoding for both changes
        return _change_notes(np.asarray(ids), semitones, factor) if semitones or factor != 1.0 else ids
    return stretch(transpose(ids, semitones), factor)
