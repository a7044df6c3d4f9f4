"""MIDI files in and out: every Standard MIDI File becomes one pedal-folded piano stream in seconds.

`read_performance` merges all non-drum tracks, honours the tempo map, folds the sustain pedal into note
durations and resolves same-pitch overlaps, so that what the codec sees is one canonical note list.
Anything unreadable raises `MidiError` (path + one-line reason), never another exception type.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import symusic

from core.errors import MidiError, OutputError
from core.outputs import kind_of

MIDI_SUFFIXES = (".mid", ".midi", ".kar")
MAX_FILE_BYTES = 64 * 1024 * 1024  # the largest real MIDI files are a few MB; past this is not music
MAX_PIECE_SECONDS = 24 * 3600.0  # a tempo map that stretches a file past a day is corrupt
SUSTAIN_CC = 64
# Two strikes of one key closer than this are one note: the codec's 10 ms grid cannot tell them apart.
MIN_RESTRIKE_SECONDS = 0.01


@dataclass(frozen=True)
class Performance:
    """Notes of one piano stream, sorted by onset (then pitch); times in seconds, pedal already folded."""

    onset: np.ndarray  # float64 (n,)
    offset: np.ndarray  # float64 (n,)
    pitch: np.ndarray  # int16 (n,) 0..127
    velocity: np.ndarray  # int16 (n,) 1..127

    def __len__(self) -> int:
        return int(self.onset.shape[0])

    @property
    def duration(self) -> float:
        """Seconds from time 0 to the last note's end."""
        return float(self.offset.max()) if len(self) else 0.0

    @staticmethod
    def from_notes(onset, offset, pitch, velocity) -> Performance:
        """Build a sorted Performance from any note arrays (no overlap resolution: see `canonical`)."""
        onset = np.asarray(onset, dtype=np.float64)
        offset = np.maximum(np.asarray(offset, dtype=np.float64), onset)
        pitch = np.asarray(pitch, dtype=np.int16)
        velocity = np.asarray(velocity, dtype=np.int16)
        order = np.lexsort((pitch, onset))
        return Performance(onset[order], offset[order], pitch[order], velocity[order])

    @staticmethod
    def empty() -> Performance:
        return Performance.from_notes([], [], [], [])

    def slice_time(self, start: float, end: float) -> Performance:
        """Notes with onset in [start, end), offsets clipped to `end`; times kept absolute."""
        keep = (self.onset >= start) & (self.onset < end)
        return Performance(self.onset[keep], np.minimum(self.offset[keep], end),
                           self.pitch[keep], self.velocity[keep])

    def shifted(self, seconds: float) -> Performance:
        return Performance(self.onset + seconds, self.offset + seconds, self.pitch, self.velocity)

    @staticmethod
    def concat(first: Performance, second: Performance) -> Performance:
        return Performance.from_notes(np.concatenate([first.onset, second.onset]),
                                      np.concatenate([first.offset, second.offset]),
                                      np.concatenate([first.pitch, second.pitch]),
                                      np.concatenate([first.velocity, second.velocity]))


def canonical(onset, offset, pitch, velocity) -> Performance:
    """Resolve same-pitch collisions the way a piano does.

    A key struck again ends its sounding note (so a note's offset is at most the next onset of its pitch), and
    two strikes of one pitch closer than 10 ms are one note (the longer, louder of them).
    """
    onset = np.asarray(onset, dtype=np.float64)
    offset = np.maximum(np.asarray(offset, dtype=np.float64), onset)
    pitch = np.asarray(pitch, dtype=np.int16)
    velocity = np.asarray(velocity, dtype=np.int16)
    order = np.lexsort((onset, pitch))
    onset, offset, pitch, velocity = onset[order], offset[order], pitch[order], velocity[order]
    same_pitch = pitch[1:] == pitch[:-1]
    too_close = same_pitch & (onset[1:] - onset[:-1] < MIN_RESTRIKE_SECONDS)
    if too_close.any():
        # Only a note within 10 ms of its same-pitch predecessor can merge, so visit just those: the note it
        # merges into is that predecessor, or (when the predecessor merged too) the predecessor's target.
        keep = np.ones(len(onset), dtype=bool)
        last_kept = 0
        for i in (np.flatnonzero(too_close) + 1).tolist():
            if keep[i - 1]:
                last_kept = i - 1
            if pitch[i] == pitch[last_kept] and onset[i] - onset[last_kept] < MIN_RESTRIKE_SECONDS:
                keep[i] = False
                offset[last_kept] = max(offset[last_kept], offset[i])
                velocity[last_kept] = max(velocity[last_kept], velocity[i])
        onset, offset, pitch, velocity = onset[keep], offset[keep], pitch[keep], velocity[keep]
        same_pitch = pitch[1:] == pitch[:-1]
    offset[:-1] = np.where(same_pitch, np.minimum(offset[:-1], onset[1:]), offset[:-1])
    return Performance.from_notes(onset, offset, pitch, velocity)


def fold_sustain(onset: np.ndarray, offset: np.ndarray, pedal_time: np.ndarray, pedal_value: np.ndarray,
                 end_time: float) -> np.ndarray:
    """Offsets after the sustain pedal: a note released while the pedal is down sounds until it lifts.

    `pedal_time`/`pedal_value` are one channel's CC64 messages in time order (value >= 64 is down).
    Re-striking a sustained pitch is handled afterwards by `canonical`.
    """
    if len(pedal_time) == 0:
        return offset
    down = pedal_value >= 64
    changes = np.flatnonzero(np.diff(np.concatenate([[False], down]).astype(np.int8)))
    if len(changes) == 0:
        return offset
    edges = pedal_time[changes]  # press, lift, press, lift, ...
    if len(edges) % 2 == 1:  # still held when the file ends
        edges = np.concatenate([edges, [max(end_time, float(edges[-1]))]])
    press, lift = edges[0::2], edges[1::2]
    idx = np.searchsorted(press, offset, side="left") - 1  # last press strictly before the release
    held = idx >= 0
    held[held] = offset[held] < lift[idx[held]]
    folded = offset.copy()
    folded[held] = lift[idx[held]]
    return folded


def read_performance(path: str | Path, strict: bool = False) -> Performance:
    """Read any Standard MIDI File (format 0/1) as one pedal-folded piano stream in absolute seconds.

    `strict=False` (the default) reads files with out-of-range data bytes (e.g. a controller value of 168)
    the way a DAW does, by clamping them; `strict=True` rejects them.
    """
    path = Path(path)
    score = _load_score(path, strict)
    _check_tempos(path, score)
    score = score.to("second")
    onsets, offsets, pitches, velocities = [], [], [], []
    for track in score.tracks:
        if track.is_drum or track.note_num() == 0:
            continue
        notes = track.notes.numpy()
        onset = notes["time"].astype(np.float64)
        offset = onset + np.maximum(notes["duration"].astype(np.float64), 0.0)
        controls = track.controls.numpy()
        sustain = controls["number"] == SUSTAIN_CC
        if sustain.any():
            pedal_time = controls["time"][sustain].astype(np.float64)
            order = np.argsort(pedal_time, kind="stable")
            offset = fold_sustain(onset, offset, pedal_time[order], controls["value"][sustain][order],
                                  end_time=float(max(offset.max(), pedal_time.max())))
        onsets.append(onset)
        offsets.append(offset)
        pitches.append(notes["pitch"].astype(np.int16))
        velocities.append(notes["velocity"].astype(np.int16))
    if not onsets:
        raise MidiError(path, "the file has no notes (drum-only or empty)")
    pitch = np.concatenate(pitches)
    velocity = np.concatenate(velocities)
    keep = (velocity > 0) & (pitch >= 0) & (pitch <= 127)
    if not keep.any():
        raise MidiError(path, "the file has no playable notes")
    onset = np.concatenate(onsets)[keep]
    offset = np.concatenate(offsets)[keep]
    if not (np.isfinite(onset).all() and np.isfinite(offset).all()):
        raise MidiError(path, "note times are not finite (corrupt tempo map)")
    if offset.max() > MAX_PIECE_SECONDS:
        raise MidiError(path, f"the tempo map stretches the piece to {offset.max() / 3600:.0f} hours")
    return canonical(onset, offset, pitch[keep], np.minimum(velocity[keep], 127))


def _load_score(path: Path, strict: bool) -> symusic.Score:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise MidiError(path, "no such file") from None
    except OSError as error:
        raise MidiError(path, f"cannot access the file ({error.strerror})") from None
    if path.is_dir():
        raise MidiError(path, "is a folder, not a MIDI file")
    if size == 0:
        raise MidiError(path, "the file is empty (0 bytes)")
    if size > MAX_FILE_BYTES:
        raise MidiError(path, f"the file is {size / 2**20:.0f} MB, over the {MAX_FILE_BYTES // 2**20} MB "
                              "limit for a MIDI file")
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise MidiError(path, f"cannot read the file ({error.strerror})") from None
    if not data.startswith(b"MThd"):
        raise MidiError(path, "not a Standard MIDI File (no MThd header)")
    try:
        score = symusic.Score.from_midi(data, sanitize_data=not strict)
    except Exception as error:  # symusic raises RuntimeError/ValueError with a parser message
        reason = str(error).replace("MiniMidi: ", "").replace(": iostream error", "").strip()
        raise MidiError(path, f"corrupt MIDI data: {reason.splitlines()[0] if reason else type(error).__name__}") \
            from None
    if score.start() < 0:  # ticks are summed in 32 bits: huge delta times wrap around to negative times
        raise MidiError(path, "corrupt MIDI data: event times overflow (delta times too large)")
    return score


def _check_tempos(path: Path, score: symusic.Score) -> None:
    tempos = score.tempos.numpy()["mspq"]
    bad = (tempos <= 0) | (tempos > 0xFFFFFF)
    if bad.any():
        raise MidiError(path, f"invalid tempo of {int(tempos[bad][0])} µs per quarter note")


def write_performance(perf: Performance, path: str | Path, ticks_per_quarter: int = 480,
                      program: int = 0) -> None:
    """Write one piano track at 120 BPM (so a tick is a fixed slice of a second), atomically.

    The file appears complete or not at all: it is written beside the target and renamed over it.
    """
    path = Path(path)
    ticks_per_second = ticks_per_quarter * 2  # 120 BPM
    score = symusic.Score(ticks_per_quarter)
    score.tempos.append(symusic.Tempo(0, 120.0))
    track = symusic.Track("Piano", program, False)
    start = np.round(perf.onset * ticks_per_second).astype(np.int32)
    end = np.maximum(np.round(perf.offset * ticks_per_second).astype(np.int32), start + 1)
    track.notes = symusic.Note.from_numpy(time=start, duration=(end - start).astype(np.int32),
                                          pitch=perf.pitch.astype(np.int8),
                                          velocity=np.clip(perf.velocity, 1, 127).astype(np.int8))
    score.tracks.append(track)
    try:
        data = score.dumps_midi()
    except Exception as error:
        raise MidiError(path, f"cannot encode the notes as MIDI ({error})") from None
    atomic_write_bytes(path, data, what="MIDI file")


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: Path, data: bytes, what: str = "file") -> None:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place.

    Only regular files are written (a device, FIFO or folder is refused: renaming over `/dev/null` would replace
    it), and a symlink is followed: its target is replaced and the link stays (see core/outputs.py).
    """
    path = Path(path)
    target = Path(os.path.realpath(path))
    try:
        existing = kind_of(os.stat(target).st_mode)
    except OSError:
        existing = None
    if existing is not None:
        raise OutputError(path, f"is {existing}; Recital writes only regular files")
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; the user's file gets normal permissions
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise MidiError(path, f"cannot write the {what} ({error.strerror or error})") from None


def find_midi_files(folder: str | Path) -> list[Path]:
    """Every .mid/.midi/.kar file under `folder` (any case), sorted, for corpus scans."""
    folder = Path(folder)
    if not folder.exists():
        raise MidiError(folder, "no such folder")
    if not folder.is_dir():
        raise MidiError(folder, "is not a folder")
    try:
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    except OSError as error:
        raise MidiError(folder, f"cannot list the folder ({error.strerror})") from None
    return files
