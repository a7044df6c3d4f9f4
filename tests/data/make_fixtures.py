"""Write the MIDI fixtures of tests/data: small files made here that carry the real world's quirks.

    .venv/bin/python tests/data/make_fixtures.py

The suite must pass from the clone alone, so the files it reads are made by this script (seeded: the same bytes
every run) and committed. The music is public domain, written out here: the harmony of Bach's Prelude in C major
(BWV 846), Pachelbel's ground, the circle of fifths, plain cadences, a pop four-chord loop; it is "performed"
with rubato, timing spread, phrase dynamics, melody voicing and syncopated sustain pedalling (CC64 ramps, as a
Disklavier records them). The bytes are written by hand, not through a MIDI library, so the files can have what
libraries do not write: running status (and its absence), note-offs as note-ons of velocity 0, format 0 with
interleaved channels, a controller value of 168. tests/data/README.md says what each file is.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent

# ---- Standard MIDI File bytes ----------------------------------------------------------------------------------

# At one tick, events are written in this order: metas, programs, controllers, note-offs, note-ons.
META, PROGRAM, CONTROL, OFF, ON = range(5)


def varlen(n: int) -> bytes:
    out = [n & 0x7F]
    while n := n >> 7:
        out.append(0x80 | (n & 0x7F))
    return bytes(reversed(out))


def meta(kind: int, payload: bytes) -> bytes:
    return b"\xff" + bytes([kind]) + varlen(len(payload)) + payload


def tempo_event(bpm: float) -> bytes:
    return meta(0x51, round(60_000_000 / bpm).to_bytes(3, "big"))


def time_signature(numerator: int, denominator: int) -> bytes:
    return meta(0x58, bytes([numerator, int(math.log2(denominator)), 24, 8]))


def name_event(text: str) -> bytes:
    return meta(0x03, text.encode("ascii"))


@dataclass
class Track:
    """Events as (tick, order, bytes); written sorted, with or without running status."""

    events: list[tuple[int, int, bytes]]

    def add(self, tick: int, order: int, data: bytes) -> None:
        self.events.append((int(tick), order, data))

    def note(self, channel: int, start: int, end: int, pitch: int, velocity: int, zero_velocity_off: bool) -> None:
        self.add(start, ON, bytes([0x90 | channel, pitch, velocity]))
        off = bytes([0x90 | channel, pitch, 0]) if zero_velocity_off else bytes([0x80 | channel, pitch, 64])
        self.add(max(end, start + 1), OFF, off)

    def to_bytes(self, running_status: bool) -> bytes:
        out, last, status = bytearray(), 0, None
        for tick, _, data in sorted(self.events, key=lambda event: (event[0], event[1])):
            out += varlen(tick - last)
            last = tick
            if data[0] >= 0xF0:  # meta and sysex events cancel running status
                out += data
                status = None
            elif running_status and data[0] == status:
                out += data[1:]
            else:
                out += data
                status = data[0]
        out += b"\x00\xff\x2f\x00"
        return b"MTrk" + struct.pack(">I", len(out)) + bytes(out)


def smf(tracks: list[Track], ticks_per_quarter: int, running_status: bool, fmt: int = 1) -> bytes:
    header = b"MThd" + struct.pack(">IHHH", 6, fmt, len(tracks), ticks_per_quarter)
    return header + b"".join(track.to_bytes(running_status) for track in tracks)


# ---- harmony ----------------------------------------------------------------------------------------------------

PITCH_CLASS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
QUALITY = {"": (0, 4, 7), "m": (0, 3, 7), "7": (0, 4, 7, 10), "m7": (0, 3, 7, 10), "maj7": (0, 4, 7, 11),
           "dim7": (0, 3, 6, 9), "m7b5": (0, 3, 6, 10), "7sus4": (0, 5, 7, 10), "m6": (0, 3, 7, 9)}

# Bach, Prelude in C major BWV 846: one chord a bar, bars 1-35.
PRELUDE = ("C Dm7/C G7/B C Am/C D7/C G/B Cmaj7/B Am7 D7 G C#dim7/G Dm/F Bdim7/F C/E Fmaj7/E Dm7 G7 C C7 Fmaj7 "
           "F#dim7 Bdim7/Ab G7 C/G G7sus4 G7 F#dim7/G C/G G7sus4 G7 C7 F/C G7/C C")
CANON = "D A Bm F#m G D G A"  # Pachelbel's ground
FIFTHS = "Am Dm7 G7 Cmaj7 Fmaj7 Bm7b5 E7 Am"  # the circle of fifths, as in countless baroque sequences
CADENCES = "C F G7 C Am Dm G7 C F Bdim7 C/G G7 C"
MINOR = "Cm Fm/C G7/B Cm Ab Fm6 G7 Cm Eb Ab Dm7b5 G7"
CHROMATIC = "C C#dim7 Dm7 D#dim7 C/E F F#dim7 C/G G7 C"
PROGRESSIONS = (PRELUDE, CANON, FIFTHS, CADENCES, MINOR, CHROMATIC)


def parse_pc(text: str) -> tuple[int, str]:
    pc = PITCH_CLASS[text[0]]
    rest = text[1:]
    while rest[:1] in ("#", "b") and not rest.startswith("b5"):
        pc += 1 if rest[0] == "#" else -1
        rest = rest[1:]
    return pc % 12, rest


@dataclass(frozen=True)
class Chord:
    bass: int  # pitch class of the lowest note
    tones: tuple[int, ...]  # pitch classes, root first

    def transposed(self, semitones: int) -> Chord:
        return Chord((self.bass + semitones) % 12, tuple((t + semitones) % 12 for t in self.tones))


def chord(symbol: str) -> Chord:
    name, _, bass = symbol.partition("/")
    root, quality = parse_pc(name)
    tones = tuple((root + i) % 12 for i in QUALITY[quality])
    return Chord(parse_pc(bass)[0] if bass else root, tones)


def progression(text: str) -> list[Chord]:
    return [chord(symbol) for symbol in text.split()]


def above(pc: int, low: int) -> int:
    """The lowest pitch of class `pc` at or above `low`."""
    return low + (pc - low) % 12


def voicing(tones: tuple[int, ...], low: int, count: int) -> list[int]:
    """`count` chord tones stacked upward from `low`, each the next chord tone above the last."""
    out = [min(above(t, low) for t in tones)]
    while len(out) < count:
        out.append(min(above(t, out[-1] + 1) for t in tones))
    return out


def scale_of(c: Chord) -> np.ndarray:
    """Pitch classes for a melody over chord `c`: its tones plus the major-scale steps that fit between them."""
    root = c.tones[0]
    minor = (root + 3) % 12 in c.tones
    steps = (0, 2, 3, 5, 7, 8, 11) if minor else (0, 2, 4, 5, 7, 9, 11)
    return np.array(sorted({(root + s) % 12 for s in steps} | set(c.tones)))


# ---- a score, and how it is played --------------------------------------------------------------------------

@dataclass
class Note:
    beat: float
    beats: float  # written length
    pitch: int
    role: str  # "melody", "inner" or "bass": how loud and how legato


class Melody:
    """A random walk over the scale of the current chord, leaning on chord tones on strong beats."""

    def __init__(self, rng: np.random.Generator, low: int, high: int) -> None:
        self.rng, self.low, self.high, self.pitch = rng, low, high, (low + high) // 2

    def step(self, c: Chord, strong: bool) -> int:
        pcs = np.array(c.tones) if strong else scale_of(c)
        candidates = [p for p in range(self.low, self.high + 1) if p % 12 in pcs]
        target = self.pitch + int(self.rng.choice([-4, -2, -1, 1, 2, 3, 5]))
        self.pitch = min(candidates, key=lambda p: (abs(p - target), p))
        return self.pitch


RHYTHMS = ((1, 1, 1, 1), (2, 1, 1), (1.5, 0.5, 2), (1, 0.5, 0.5, 2), (0.5, 0.5, 1, 0.5, 0.5, 1), (3, 1), (4,))


def melody_bar(melody: Melody, c: Chord, start: float, beats: int, rng: np.random.Generator) -> list[Note]:
    fitting = [r for r in RHYTHMS if sum(r) == beats] or [(1.0,) * beats]
    notes, beat = [], 0.0
    for length in fitting[int(rng.integers(len(fitting)))]:
        notes.append(Note(start + beat, length, melody.step(c, beat % 1 == 0), "melody"))
        beat += length
    return notes


def prelude_bar(c: Chord, start: float, _melody: Melody, _rng: np.random.Generator) -> list[Note]:
    """BWV 846's figure: the bass held half a bar, the second note held, three sixteenths repeated."""
    bass = above(c.bass, 48)
    upper = voicing(c.tones, bass + 3, 4)
    n = [bass, upper[0], upper[1] + 12 if upper[1] + 12 < 84 else upper[1], upper[2] + 12, upper[3] + 12]
    notes = []
    for half in range(2):
        for i, p in enumerate([n[0], n[1], n[2], n[3], n[4], n[2], n[3], n[4]]):
            length = 2.0 if i == 0 else 1.75 if i == 1 else 0.28
            notes.append(Note(start + half * 2 + i * 0.25, length, p, "bass" if i == 0 else "inner"))
    return notes


def alberti_bar(c: Chord, start: float, melody: Melody, rng: np.random.Generator) -> list[Note]:
    """A sonatina: the Alberti bass (low, high, middle, high) in eighths under a singing melody."""
    low, middle, high = voicing(c.tones[:3], above(c.bass, 48) - (12 if above(c.bass, 48) > 55 else 0), 3)
    notes = [Note(start + i * 0.5, 0.45, p, "bass" if i % 4 == 0 else "inner")
             for i, p in enumerate([low, high, middle, high] * 2)]
    return notes + melody_bar(melody, c, start, 4, rng)


def waltz_bar(c: Chord, start: float, melody: Melody, rng: np.random.Generator) -> list[Note]:
    """Oom-pah-pah: a deep bass on one, a chord on two and three, the tune above."""
    notes = [Note(start, 1.0, above(c.bass, 31), "bass")]
    for beat in (1, 2):
        notes += [Note(start + beat, 0.6, p, "inner") for p in voicing(c.tones, 53, 3)]
    return notes + melody_bar(melody, c, start, 3, rng)


def chorale_bar(c: Chord, start: float, melody: Melody, _rng: np.random.Generator) -> list[Note]:
    """Dense chords on every beat: the bass in octaves, four chord tones in the right hand."""
    notes = []
    for beat in range(4):
        bass = above(c.bass, 33)
        notes += [Note(start + beat, 1.0, bass, "bass"), Note(start + beat, 1.0, bass + 12, "bass")]
        top = melody.step(c, True)
        notes += [Note(start + beat, 1.0, p, "inner") for p in voicing(c.tones, top - 11, 4)[:-1] if p < top]
        notes.append(Note(start + beat, 1.0, top, "melody"))
    return notes


def nocturne_bar(c: Chord, start: float, melody: Melody, rng: np.random.Generator) -> list[Note]:
    """A left hand sweeping over two octaves in sextuplets, a slow melody high above, and a run now and then."""
    span = voicing(c.tones, above(c.bass, 28) + 7, 6)
    figure = [above(c.bass, 28), *span[:5], span[5], *reversed(span[1:5]), span[0]][:12]
    notes = [Note(start + i / 3, 0.3, p, "bass" if i == 0 else "inner") for i, p in enumerate(figure)]
    if rng.random() < 0.3:  # a run: two beats of the melody, then a scale of sixteenths up to the next one
        notes.append(Note(start, 2.0, melody.step(c, True), "melody"))
        pcs = scale_of(c)
        run = [p for p in range(melody.pitch + 1, melody.pitch + 16) if p % 12 in pcs][:8]
        notes += [Note(start + 2 + i * 0.25, 0.25, p, "melody") for i, p in enumerate(run)]
        melody.pitch = run[-1] if run and run[-1] <= melody.high else melody.pitch
        return notes
    return notes + melody_bar(melody, c, start, 4, rng)


def etude_bar(c: Chord, start: float, _melody: Melody, rng: np.random.Generator) -> list[Note]:
    """Scales in sixteenths over two octaves, up or down, with chords struck on one and three."""
    pcs = scale_of(c)
    low = int(rng.integers(60, 70))
    run = [p for p in range(low, low + 30) if p % 12 in pcs][:16]
    if rng.random() < 0.5:
        run.reverse()
    notes = [Note(start + i * 0.25, 0.25, p, "melody" if i % 4 == 0 else "inner") for i, p in enumerate(run)]
    for beat in (0, 2):
        notes += [Note(start + beat, 1.5, p, "bass") for p in voicing(c.tones, above(c.bass, 36), 3)]
    return notes


TEXTURES = {"prelude": (prelude_bar, 4, 76), "alberti": (alberti_bar, 4, 120), "waltz": (waltz_bar, 3, 160),
            "chorale": (chorale_bar, 4, 66), "nocturne": (nocturne_bar, 4, 60), "etude": (etude_bar, 4, 96)}


@dataclass
class Performed:
    """A performance in seconds: key presses and the sustain pedal."""

    onset: np.ndarray
    offset: np.ndarray  # when the key is released (the pedal may hold it longer)
    pitch: np.ndarray
    velocity: np.ndarray
    pedal: list[tuple[float, int]]  # (time, CC64 value)


def clock(total_beats: float, bpm: float, rng: np.random.Generator, phrase: float) -> tuple[np.ndarray, ...]:
    """Beat -> seconds with rubato: a slow swing of the tempo, a ritardando into each phrase's end."""
    beats = np.arange(math.ceil(total_beats) + 2, dtype=np.float64)
    position = (beats % phrase) / phrase
    stretch = 1 + 0.06 * np.sin(2 * math.pi * beats / (phrase * 2) + rng.uniform(0, 6)) + 0.25 * position ** 6
    seconds = np.concatenate([[0.0], np.cumsum(60 / bpm * stretch[:-1])])
    return beats, seconds


def perform(notes: list[Note], changes: list[float], bpm: float, rng: np.random.Generator, loudness: float,
            phrase: float = 16) -> Performed:
    """Play a score: rubato, a few ms of spread, phrase swells, a voiced melody, pedal changed with the harmony."""
    total = max(n.beat + n.beats for n in notes)
    beats, seconds = clock(total, bpm, rng, phrase)

    def at(beat: float | np.ndarray) -> np.ndarray:
        return np.interp(beat, beats, seconds)

    beat = np.array([n.beat for n in notes])
    length = np.array([n.beats for n in notes])
    role = np.array([n.role for n in notes])
    onset = np.maximum(at(beat) + rng.normal(0, 0.008, len(notes)) + np.where(role == "melody", -0.006, 0), 0)
    legato = np.select([role == "melody", role == "bass"], [0.95, 0.8], 0.5) * rng.uniform(0.85, 1.0, len(notes))
    offset = onset + np.maximum((at(beat + length) - at(beat)) * legato, 0.04)
    swell = loudness + 14 * np.sin(math.pi * (beat % phrase) / phrase) - 6
    accent = np.where(beat % 1 == 0, 4, 0) + np.select([role == "melody", role == "bass"], [12, 3], -8)
    velocity = np.clip(np.round(swell + accent + rng.normal(0, 5, len(notes))), 3, 120).astype(int)
    order = np.lexsort((np.array([n.pitch for n in notes]), onset))
    onset, offset, velocity = onset[order], offset[order], velocity[order]
    pitch = np.array([n.pitch for n in notes])[order]
    for p in np.unique(pitch):  # a key is released before it is struck again
        same = np.flatnonzero(pitch == p)
        offset[same[:-1]] = np.minimum(offset[same[:-1]], onset[same[1:]] - 0.004)
    pedal = []
    for here, following in zip(changes, [*changes[1:], total], strict=True):
        down, up = float(at(here)) + rng.uniform(0.05, 0.12), float(at(following)) + rng.uniform(0.0, 0.04)
        if up - down < 0.15:
            continue
        pedal += [(down + i * 0.012, v) for i, v in enumerate((18, 52, 88, 112, 127))]
        pedal += [(up + i * 0.012, v) for i, v in enumerate((101, 67, 35, 9, 0))]
    return Performed(onset, offset, pitch, velocity, pedal)


def piano_piece(seed: int, sections: list[tuple[str, str, int, int]]) -> bytes:
    """A solo-piano performance, laid out as MAESTRO's files are: 384 ticks per quarter at 120 BPM, two tracks."""
    rng = np.random.default_rng(seed)
    parts = []
    for texture, text, transpose, bars in sections:
        bar_fn, beats_per_bar, bpm = TEXTURES[texture]
        chords = [c.transposed(transpose) for c in progression(text)]
        melody = Melody(rng, 67, 91)
        notes, changes = [], []
        for bar in range(bars):
            c = chords[bar % len(chords)]
            changes.append(bar * beats_per_bar)
            notes += bar_fn(c, bar * beats_per_bar, melody, rng)
        parts.append(perform(notes, changes, bpm * rng.uniform(0.92, 1.08), rng, rng.uniform(45, 80),
                             phrase=4 * beats_per_bar))
    conductor, keys = Track([]), Track([])
    conductor.add(0, META, tempo_event(120))
    conductor.add(0, META, time_signature(4, 4))
    start = 0.3
    for part in parts:
        for on, off, p, v in zip(part.onset, part.offset, part.pitch, part.velocity, strict=True):
            keys.note(0, round((start + on) * 768), round((start + off) * 768), int(p), int(v), True)
        for t, value in part.pedal:
            keys.add(round((start + t) * 768), CONTROL, bytes([0xB0, 64, value]))
        start += max(part.offset.max(), max((t for t, _ in part.pedal), default=0.0)) + rng.uniform(0.8, 1.6)
    return smf([conductor, keys], 384, running_status=True)


# ---- pop: a one-track piano arrangement -------------------------------------------------------------------

POP_LOOPS = ("C G Am F", "Am F C G", "C Am F G", "C F Am G")


def pop_piece(seed: int) -> bytes:
    """A POP909-like arrangement: one key, a four-chord loop, verse and chorus repeated, a beat-tracked tempo."""
    rng = np.random.default_rng(seed)
    key = int(rng.integers(0, 12))
    loop = [c.transposed(key) for c in progression(POP_LOOPS[seed % len(POP_LOOPS)])]
    tonic = 60 + key if key < 6 else 48 + key
    degrees = np.array([0, 2, 4, 7, 9, 12, 14])  # the major pentatonic over an octave and a bit
    motifs = {name: [(int(rng.integers(0, 6)), r) for r in RHYTHMS[int(rng.integers(0, 5))]] for name in "vc"}
    form = "i" * 4 + "v" * 8 + "c" * 8 + "v" * 8 + "c" * 8 + "c" * 8 + "o" * 4
    bpm = rng.uniform(76, 104)
    tpq = 480
    melody_track, tempo_track = Track([]), Track([])
    tempo_track.add(0, META, name_event("Tempo"))
    tempo_track.add(0, META, time_signature(4, 4))
    tick, jitter = 0, lambda: int(rng.normal(0, 6))
    for bar, part in enumerate(form):
        if bar % 4 == 0:  # the tempo a beat tracker finds drifts a little
            tempo_track.add(tick, META, tempo_event(bpm + rng.normal(0, 1.2)))
        if bar == 19:  # a two-beat bar before the second verse, as songs have
            tempo_track.add(tick, META, time_signature(2, 4))
            tempo_track.add(tick + 2 * tpq, META, time_signature(4, 4))
        beats = 2 if bar == 19 else 4
        c = loop[bar % 4]
        root = above(c.bass, 36)
        pattern = [root, root + 7, root + 12, root + 7] * 2
        for i, p in enumerate(pattern[:beats * 2]):
            start = tick + i * tpq // 2 + abs(jitter())
            velocity = int(np.clip(62 + (6 if i % 2 == 0 else 0) + rng.normal(0, 4), 30, 100))
            melody_track.note(0, start, start + tpq // 2 - 20, p, velocity, False)
        if part in "vc" and beats == 4:
            beat = 0.0
            for degree, length in motifs[part]:
                p = tonic + int(degrees[min(degree + (bar % 2), 6)]) + (5 if part == "c" else 0)
                start = tick + int(beat * tpq) + abs(jitter())
                velocity = int(np.clip(72 + (10 if part == "c" else 0) + rng.normal(0, 5), 30, 120))
                melody_track.note(0, start, start + int(length * tpq * 0.9), p, velocity, False)
                beat += length
        if part in "io" and beats == 4:
            for beat in (0, 2):
                for p in voicing(c.tones, 60, 3):
                    start = tick + beat * tpq + abs(jitter())
                    melody_track.note(0, start, start + tpq * 2 - 30, p, int(rng.integers(50, 66)), False)
        tick += beats * tpq
    return smf([tempo_track, melody_track], tpq, running_status=False)


# ---- multi-track songs --------------------------------------------------------------------------------------

DRUM_CHANNEL = 9  # "channel 10"
KICK, SNARE, HAT, CRASH = 36, 38, 42, 49


def band_song(seed: int, tpq: int, meters: list[tuple[int, int, int]], tempi: list[tuple[int, float]],
              instruments: list[tuple[str, int, int, int | None]], zero_velocity_off: bool) -> list[Track]:
    """A song for a band: conductor track (tempo map, meters), then one track per instrument and the drums.

    `meters` are (first bar, numerator, denominator); `tempi` are (bar, BPM); `instruments` are (name, channel,
    program, second program): the second, where not None, replaces the first halfway through the song.
    """
    rng = np.random.default_rng(seed)
    loop = [c.transposed(int(rng.integers(0, 12))) for c in progression(POP_LOOPS[seed % 4] + " " + CANON)]
    bars = meters[-1][0] + 16
    conductor = Track([])
    conductor.add(0, META, name_event("Conductor"))
    bar_ticks, tick = [], 0
    meter = {first: (num, den) for first, num, den in meters}
    tempo = dict(tempi)
    num, den = 4, 4
    for bar in range(bars + 1):
        if bar in meter:
            num, den = meter[bar]
            conductor.add(tick, META, time_signature(num, den))
        if bar in tempo:
            conductor.add(tick, META, tempo_event(tempo[bar]))
        bar_ticks.append((tick, num * 4 * tpq // den))
        tick += num * 4 * tpq // den
    tracks = [conductor]
    for name, channel, program, second in instruments:
        track = Track([])
        track.add(0, META, name_event(name))
        track.add(0, PROGRAM, bytes([0xC0 | channel, program]))
        track.add(0, CONTROL, bytes([0xB0 | channel, 7, 100]))
        melody = Melody(rng, 62, 84)
        for bar, (start, length) in enumerate(bar_ticks[:-1]):
            if second is not None and bar == bars // 2:  # a second sound for the second half
                track.add(start, PROGRAM, bytes([0xC0 | channel, second]))
            c = loop[bar % len(loop)]
            step = tpq // 2 if name != "Pad" else length
            for i, on in enumerate(range(start, start + length, step)):
                if name == "Bass":
                    pitches = [above(c.bass, 28) + (7 if i % 4 == 2 else 0)]
                elif name == "Pad":
                    pitches = voicing(c.tones, 55, 4)
                elif name == "Keys":
                    pitches = voicing(c.tones, 60, 3) if i % 2 == 1 else []
                elif rng.random() < 0.7:  # the lead
                    pitches = [melody.step(c, i % 2 == 0)]
                else:
                    pitches = []
                for p in pitches:
                    velocity = int(np.clip(80 + rng.normal(0, 8), 20, 127))
                    track.note(channel, on, on + step - tpq // 16, p, velocity, zero_velocity_off)
        tracks.append(track)
    drums = Track([])
    drums.add(0, META, name_event("Drums"))
    for bar, (start, length) in enumerate(bar_ticks[:-1]):
        for i, on in enumerate(range(start, start + length, tpq // 2)):
            hits = [HAT] + ([KICK] if i % 4 == 0 else [SNARE] if i % 4 == 2 else [])
            hits += [CRASH] if bar % 8 == 0 and i == 0 else []
            for p in hits:
                drums.note(DRUM_CHANNEL, on, on + tpq // 8, p, int(rng.integers(60, 120)), zero_velocity_off)
    return tracks + [drums]


BAND = [("Bass", 1, 33, None), ("Keys", 2, 4, None), ("Pad", 3, 48, None), ("Lead", 4, 80, 65)]


def rock_song() -> bytes:
    """Format 1, 192 ticks per quarter, running status; 4/4 with a 2/4 bar and a 7/8 break, tempo pushed in the
    chorus and held back at the end; the lead changes from a saw to a saxophone halfway."""
    tracks = band_song(11, 192, [(0, 4, 4), (12, 2, 4), (13, 4, 4), (28, 7, 8), (30, 4, 4)],
                       [(0, 118), (13, 124), (28, 120), (40, 112), (44, 100)], BAND, zero_velocity_off=True)
    return smf(tracks, 192, running_status=True)


def waltz_song() -> bytes:
    """Format 1, 96 ticks per quarter, no running status (explicit note-offs); 3/4, 6/8 and 4/4, an accelerando
    written as a tempo change every bar."""
    instruments = [("Bass", 0, 42, None), ("Keys", 5, 0, None), ("Pad", 6, 49, 52), ("Lead", 7, 73, None)]
    tempi = [(bar, 84 + 2.5 * bar) for bar in range(0, 24)] + [(24, 140), (36, 90)]
    tracks = band_song(12, 96, [(0, 3, 4), (16, 6, 8), (24, 4, 4)], tempi, instruments, zero_velocity_off=False)
    return smf(tracks, 96, running_status=False)


def format0_song() -> bytes:
    """Format 0: every channel, the drums and the tempo map in one track, so running status runs across the
    interleaved channels' events only where two in a row share a status byte."""
    tracks = band_song(13, 480, [(0, 4, 4), (20, 3, 4), (22, 4, 4)],
                       [(bar, 96 + (bar % 8) * 1.5) for bar in range(0, 38)], BAND, zero_velocity_off=True)
    merged = Track([event for track in tracks for event in track.events if event[2][:2] != b"\xff\x03"])
    return smf([merged], 480, running_status=True, fmt=0)


# ---- broken input ---------------------------------------------------------------------------------------------

def control_168_song() -> bytes:
    """A band song with one bank-select message whose value byte is 168 (over 127): strict parsers reject the
    file, lenient ones (a DAW, our default reader) clamp it. Running status is off so the bad byte stands alone."""
    instruments = [("Bass", 0, 34, None), ("Keys", 1, 0, None), ("Pad", 2, 50, None), ("Lead", 3, 81, None),
                   ("Keys", 5, 6, None)]
    tracks = band_song(14, 96, [(0, 4, 4), (8, 3, 4), (9, 4, 4), (40, 6, 8), (42, 4, 4)],
                       [(0, 126), (16, 128), (32, 131), (48, 122), (56, 116)], instruments, zero_velocity_off=False)
    tracks[2].add(0, CONTROL, bytes([0xB1, 0x00, 168]))  # in the first "Keys" track (channel 2)
    return smf(tracks, 96, running_status=False)


def empty_song() -> bytes:
    """What a notation program writes for a score with no notes: metas, volume, pan, a program change."""
    track = Track([])
    for event in (meta(0x01, b"note track"), tempo_event(120), meta(0x59, b"\x00\x00"), time_signature(2, 2)):
        track.add(0, META, event)
    track.add(0, CONTROL, bytes([0xB0, 7, 96]))
    track.add(0, CONTROL, bytes([0xB0, 10, 64]))
    track.add(1, PROGRAM, bytes([0xC0, 0]))
    track.add(1, CONTROL, bytes([0xB0, 7, 96]))
    return smf([track], 480, running_status=False, fmt=0)


# ---- the files ------------------------------------------------------------------------------------------------

def sections(seed: int) -> list[tuple[str, str, int, int]]:
    """Five to seven sections: a texture, a progression, a key, a length in bars; the keys wander."""
    rng = np.random.default_rng(seed)
    key, out = int(rng.integers(-5, 6)), []
    for _ in range(int(rng.integers(5, 8))):
        texture = str(rng.choice(list(TEXTURES)))
        out.append((texture, PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))], key, int(rng.integers(6, 11))))
        key = (key + int(rng.choice([-5, -3, 2, 5, 7]))) % 12 - 5
    return out


PIANO = [("01-prelude", [("prelude", PRELUDE, 0, 35)] + [("nocturne", FIFTHS, -2, 8)])] + \
    [(f"{i + 2:02d}-{name}", sections(100 + i)) for i, name in enumerate(
        ["sonatina", "waltz", "chorale", "nocturne", "etude", "fantasia", "rhapsody"])]


def write_all() -> dict[str, bytes]:
    files = {f"piano/{name}.mid": piano_piece(1 + i, layout) for i, (name, layout) in enumerate(PIANO)}
    files.update({f"pop/song-{i + 1}.mid": pop_piece(i + 1) for i in range(4)})
    files["multitrack/rock.mid"] = rock_song()
    files["multitrack/waltz.mid"] = waltz_song()
    files["multitrack/format0.mid"] = format0_song()
    files["broken/control-168.mid"] = control_168_song()
    files["broken/empty.mid"] = empty_song()
    return files


if __name__ == "__main__":
    for relative, data in write_all().items():
        path = DATA / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"{relative}: {len(data):,} bytes")
