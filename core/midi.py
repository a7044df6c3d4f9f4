"""MIDI files in and out: every Standard MIDI File becomes one pedal-folded piano stream in seconds.

`read_performance` merges all non-drum tracks, honours the tempo map, folds the sustain pedal into note
durations and resolves same-pitch overlaps, so that what the codec sees is one canonical note list.
Anything unreadable raises `MidiError` (path + one-line reason), never another exception type.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import symusic

from core.errors import MidiError, OutputError
from core.grid import DENOMINATORS, MAX_NUMERATOR, Grid, Meter, Tempo
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
    unended: int = field(default=0, compare=False)  # read from a file: NoteOns without a NoteOff, ended at
    # the end of their track (see `read_performance`); 0 for anything built in memory
    grid: Grid | None = field(default=None, compare=False)  # the file's tempo map and time signatures (None:
    # none known; written at 120 BPM 4/4). Slices, shifts and concatenations keep it.

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
                           self.pitch[keep], self.velocity[keep], grid=self.grid)

    def shifted(self, seconds: float) -> Performance:
        return Performance(self.onset + seconds, self.offset + seconds, self.pitch, self.velocity, grid=self.grid)

    @staticmethod
    def concat(first: Performance, second: Performance) -> Performance:
        """Both note lists in one; the grid is the first's (or the second's when the first has none)."""
        both = Performance.from_notes(np.concatenate([first.onset, second.onset]),
                                      np.concatenate([first.offset, second.offset]),
                                      np.concatenate([first.pitch, second.pitch]),
                                      np.concatenate([first.velocity, second.velocity]))
        return replace(both, grid=first.grid or second.grid)


# Two strikes of a pitch closer than this are one note: 10 ms, less a rounding margin (strikes one 10 ms tick
# apart on the grid read as 0.00999... seconds in floats: 0.29 - 0.28).
MERGE_SECONDS = MIN_RESTRIKE_SECONDS - 1e-9


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
    too_close = same_pitch & (onset[1:] - onset[:-1] < MERGE_SECONDS)
    if too_close.any():
        # Only a note within 10 ms of its same-pitch predecessor can merge, so visit just those: the note it
        # merges into is that predecessor, or (when the predecessor merged too) the predecessor's target.
        keep = np.ones(len(onset), dtype=bool)
        last_kept = 0
        for i in (np.flatnonzero(too_close) + 1).tolist():
            if keep[i - 1]:
                last_kept = i - 1
            if pitch[i] == pitch[last_kept] and onset[i] - onset[last_kept] < MERGE_SECONDS:
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

    A note that never ends (a NoteOn without its NoteOff, which the MIDI parser drops) is kept and ended where
    its track ends (its End of Track event); `Performance.unended` counts them. A NoteOff ends the oldest
    sounding note of its channel and pitch, so a key struck twice and released once leaves the second strike
    unended (and the piano rule of `canonical` then ends the first strike at the second).
    """
    path = Path(path)
    data = _read_bytes(path)
    score = _parse_score(path, data, strict)
    _check_tempos(path, score)
    score_end, grid = score.end(), read_grid(score)
    tracks = _piano_tracks(score.to("second"))
    del score  # the probe parses the file again: never both at once (a long file's peak memory)
    unended = _unended_notes(data) if _may_have_unended(data, score_end, strict) else None
    if unended is not None and len(unended):  # rare: read it again, the unended notes a track of their own
        score = _parse_score(path, data, strict)
        track = symusic.Track("unended notes", 0, False)
        track.notes = symusic.Note.from_numpy(time=unended[:, 0], duration=unended[:, 1] - unended[:, 0],
                                              pitch=unended[:, 2].astype(np.int8),
                                              velocity=unended[:, 3].astype(np.int8))
        score.tracks.append(track)
        tracks = _piano_tracks(score.to("second"))
        del score
    if not tracks:
        raise MidiError(path, "the file has no notes (drum-only or empty)")
    onsets, offsets, pitches, velocities = zip(*tracks, strict=True)
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
    perf = canonical(onset, offset, pitch[keep], np.minimum(velocity[keep], 127))
    return replace(perf, unended=0 if unended is None else len(unended), grid=grid)


def _piano_tracks(score: symusic.Score) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(onset, offset, pitch, velocity) of each pitched track of a score in seconds, the sustain pedal folded in."""
    tracks = []
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
        tracks.append((onset, offset, notes["pitch"].astype(np.int16), notes["velocity"].astype(np.int16)))
    return tracks


def _read_bytes(path: Path) -> bytes:
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
    return data


def _parse_score(path: Path, data: bytes, strict: bool) -> symusic.Score:
    try:
        score = symusic.Score.from_midi(data, sanitize_data=not strict)
    except Exception as error:  # symusic raises RuntimeError/ValueError with a parser message
        reason = str(error).replace("MiniMidi: ", "").replace(": iostream error", "").strip()
        raise MidiError(path, f"corrupt MIDI data: {reason.splitlines()[0] if reason else type(error).__name__}") \
            from None
    if score.start() < 0:  # ticks are summed in 32 bits: huge delta times wrap around to negative times
        raise MidiError(path, "corrupt MIDI data: event times overflow (delta times too large)")
    return score


# -- notes that never end -------------------------------------------------------------------------------------
# The parser drops a NoteOn that no NoteOff ends. Finding them takes a walk over every event in Python (~10x the
# parse), so a cheap probe goes first: the file is parsed again with a NoteOff for every channel and pitch placed
# _PROBE_TICKS after each track's end; a note ending that late can only be one that never ended.
_PROBE_TICKS = 1 << 27
_PROBE_OFFS = b"".join(bytes([0x80 | channel, 0, 64]) + b"".join(bytes([0, pitch, 64]) for pitch in range(1, 128))
                       + b"\x00" for channel in range(16))[:-1]


def _track_chunks(data: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of every MTrk chunk's events; None when a chunk runs past the end of the file."""
    chunks = []
    pos = 8 + int.from_bytes(data[4:8], "big")
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        if pos + 8 + length > len(data):
            return None
        if data[pos:pos + 4] == b"MTrk":
            chunks.append((pos + 8, pos + 8 + length))
        pos += 8 + length
    return chunks


def _may_have_unended(data: bytes, score_end: int, strict: bool) -> bool:
    """False when no note of the file is left unended (the probe proves it); True when it cannot tell.
    `score_end`: the last tick of the file as parsed (a file that long leaves the probe no room)."""
    chunks = _track_chunks(data)
    if chunks is None or score_end >= _PROBE_TICKS // 2:
        return True
    late = _varlen(_PROBE_TICKS)
    probe = [data[:chunks[0][0] - 8] if chunks else data]
    for start, end in chunks:
        if data[end - 3:end] != b"\xff\x2f\x00":  # no End of Track to place the NoteOffs after
            return True
        events = data[start:end - 3] + b"\xff\x7f\x00" + late + _PROBE_OFFS + b"\x00\xff\x2f\x00"
        probe.append(b"MTrk" + len(events).to_bytes(4, "big") + events)
    try:
        probed = symusic.Score.from_midi(b"".join(probe), sanitize_data=not strict)
    except Exception:
        return True
    if probed.start() < 0:  # a track's end plus the probe's ticks overflowed
        return True
    return any(len(track.notes) and int((track.notes.numpy()["time"] + track.notes.numpy()["duration"]).max())
               >= _PROBE_TICKS for track in probed.tracks if not track.is_drum)


def _varlen(value: int) -> bytes:
    """A MIDI variable-length number."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


VARLEN_BYTES = 4  # the most bytes a variable-length number has (the standard's; its largest value is 0x0FFFFFFF)


def _read_varlen(data: bytes, i: int, stop: int) -> tuple[int, int]:
    """(value, position after it) of the variable-length number at `i`: at most VARLEN_BYTES bytes are read, so a
    damaged file's run of continuation bytes is never one huge number (ticks summed from such numbers overflowed
    int64: a file the fuzzer made, read in `_unended_notes`)."""
    value = 0
    for _ in range(VARLEN_BYTES):
        if i >= stop:
            break
        byte = data[i]
        i += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            break
    return value, i


def _unended_notes(data: bytes) -> np.ndarray:
    """(onset tick, end tick, pitch, velocity) int64 rows of every non-drum NoteOn no NoteOff ends; the end is
    its track's End of Track (or last event). NoteOffs end the oldest sounding note of their channel and pitch,
    as the parser pairs them; out-of-range data bytes are clamped, as the lenient parser reads them."""
    rows: list[tuple[int, int, int, int]] = []
    for start, stop in _track_chunks(data) or []:
        sounding: dict[int, list[tuple[int, int]]] = {}  # channel * 128 + pitch -> [(tick, velocity)], oldest first
        tick, status, i = 0, 0, start
        while i < stop:
            delta, i = _read_varlen(data, i, stop)
            tick += delta
            if i >= stop:
                break
            byte = data[i]
            if byte >= 0xF0:  # meta (FF type length data) or sysex (F0/F7 length data); running status goes on
                meta = data[i + 1] if byte == 0xFF and i + 1 < stop else None
                size, i = _read_varlen(data, i + (2 if byte == 0xFF else 1), stop)
                i += size
                if meta == 0x2F:  # End of Track
                    break
                continue
            if byte >= 0x80:
                status = byte
                i += 1
            size = 1 if status & 0xE0 == 0xC0 else 2  # program change and channel pressure have one data byte
            if status == 0 or i + size > stop:
                break
            if status & 0xE0 == 0x80:  # NoteOff or NoteOn
                key = (status & 0x0F) * 128 + min(data[i], 127)
                if status & 0x10 and data[i + 1]:
                    sounding.setdefault(key, []).append((tick, min(data[i + 1], 127)))
                elif sounding.get(key):
                    sounding[key].pop(0)
            i += size
        for key, notes in sounding.items():
            if key // 128 != 9:  # channel 10 is drums, which the reader skips
                rows.extend((onset, tick, key % 128, velocity) for onset, velocity in notes)
    return np.array(sorted(rows), dtype=np.int64).reshape(-1, 4)


def _check_tempos(path: Path, score: symusic.Score) -> None:
    tempos = score.tempos.numpy()["mspq"]
    bad = (tempos <= 0) | (tempos > 0xFFFFFF)
    if bad.any():
        raise MidiError(path, f"invalid tempo of {int(tempos[bad][0])} µs per quarter note")


def read_grid(score: symusic.Score) -> Grid:
    """The tempo map and time signatures of a score in ticks, as a `Grid` at the file's resolution.

    Before a file's first tempo the MIDI default (120 BPM) holds, before its first time signature 4/4; of two
    events at one tick the later wins; a time signature no MIDI file can mean (numerator 0, a denominator that is
    no power of two up to 64) is skipped, the way out-of-range data bytes are clamped.
    """
    resolution = max(int(score.tpq), 1)
    tempos: dict[int, int] = {0: 500_000}
    for tick, mspq in zip(score.tempos.numpy()["time"].tolist(), score.tempos.numpy()["mspq"].tolist(), strict=True):
        tempos[max(int(tick), 0)] = int(mspq)
    meters: dict[int, tuple[int, int]] = {0: (4, 4)}
    signatures = score.time_signatures.numpy()
    for tick, top, bottom in zip(signatures["time"].tolist(), signatures["numerator"].tolist(),
                                 signatures["denominator"].tolist(), strict=True):
        if 1 <= top <= MAX_NUMERATOR and bottom in DENOMINATORS:
            meters[max(int(tick), 0)] = (int(top), int(bottom))
    return Grid(tuple(Tempo(tick / resolution, mspq) for tick, mspq in sorted(tempos.items())),
                tuple(Meter(tick / resolution, *meter) for tick, meter in sorted(meters.items())), resolution)


def write_performance(perf: Performance, path: str | Path, ticks_per_quarter: int | None = None,
                      program: int = 0, grid: Grid | None = None) -> None:
    """Write one piano track on a tempo map and time signatures, atomically.

    The grid is `grid`, else the performance's own (a primer's, read from its file), else 120 BPM 4/4; seconds
    become ticks through its tempo map, so a DAW shows the notes on the same beats. Ticks per quarter are the
    grid's (a file's own resolution, so notes read from it go back on the ticks they came from) unless given.
    The file appears complete or not at all: it is written beside the target and renamed over it.
    """
    path = Path(path)
    grid = grid or perf.grid or Grid.constant()
    resolution = ticks_per_quarter or grid.resolution
    score = symusic.Score(resolution)
    for tempo in grid.tempos:
        score.tempos.append(symusic.Tempo(round(tempo.quarter * resolution), mspq=tempo.mspq))
    for meter in grid.meters:
        score.time_signatures.append(symusic.TimeSignature(round(meter.quarter * resolution), meter.numerator,
                                                           meter.denominator))
    track = symusic.Track("Piano", program, False)
    start, duration = np.empty(len(perf), dtype=np.int32), np.empty(len(perf), dtype=np.int32)
    for begin in range(0, len(perf), _WRITE_CHUNK):  # ticks a chunk at a time: a long piece's temporaries stay small
        notes = slice(begin, begin + _WRITE_CHUNK)
        first = np.round(np.atleast_1d(grid.quarters(perf.onset[notes])) * resolution)
        last = np.maximum(np.round(np.atleast_1d(grid.quarters(perf.offset[notes])) * resolution), first + 1)
        if first.min() < 0 or last.max() >= 2**31:
            raise MidiError(path, "the notes lie outside what a MIDI file can time (before 0 or too late)")
        start[notes], duration[notes] = first, last.astype(np.int32) - first.astype(np.int32)
    track.notes = symusic.Note.from_numpy(time=start, duration=duration,
                                          pitch=perf.pitch.astype(np.int8),
                                          velocity=np.clip(perf.velocity, 1, 127).astype(np.int8))
    score.tracks.append(track)
    try:
        data = score.dumps_midi()
    except Exception as error:
        raise MidiError(path, f"cannot encode the notes as MIDI ({error})") from None
    atomic_write_bytes(path, data, what="MIDI file")


_WRITE_CHUNK = 1 << 16  # notes timed at once when writing


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
