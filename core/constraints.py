"""Composer constraints at sampling time: a scale lock, a pitch range, a velocity range, a density and a polyphony
limit, shared by every model.

`Constraints` is what the composer asked (parsed and checked here, one-line `ConstraintError`s). It gives two
masks over the ids of the model's codec (core/codecs.py: `codec=` the module, "performance" by default), added to
the logits before temperature and top-p:

- `token_mask()` (V,): position-independent, -inf on the onset id (NoteOn / Pitch) of a pitch outside the scale or
  the range and on the Velocity bins outside the range. A denoiser applies it to every masked position it unmasks.
- `tracker(batch, primer)`: follows each lane's ids (the primer's, then the new ones) and gives the mask for the
  next id (B, V): the static mask, plus the onset ids -inf while a lane sounds `max_polyphony` notes, a Velocity
  id forced before the first note when the lane's velocity is outside the range, and a soft bias between the onset
  ids and TimeShift that steers the recent notes/s toward `density` (steered, not forced), or only ever down, under
  `max_density` (a ceiling: a lane below it is left as the model writes it).

The event codec's tracker (`ConstraintTracker`) knows the sounding notes from NoteOn and NoteOff; NoteOffs are
never masked (a held note can always end, except that a forced Velocity id comes first, and then the NoteOffs of
sounding notes stay allowed). The note codec's (`NoteTracker`) knows them from each note's Duration id: a note
sounds from its onset tick to onset + BIN_TICKS[bin]. Durations are never masked: which may follow a Pitch is the
generator's grammar (notecodec.Grammar), and a constraint never leaves a Pitch without one. The primer is only
read, never changed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

import numpy as np
import torch

from core import notecodec, tokenizer
from core.codecs import ONSET, Codec, codec_named
from core.errors import RecitalError
from core.midi import Performance
from core.tokenizer import (
    DEFAULT_VELOCITY_BIN,
    NOTE_OFF,
    NOTE_ON,
    TICK_SECONDS,
    TIME_SHIFT,
    VELOCITY,
    VELOCITY_BINS,
    VOCAB_SIZE,
    bin_velocity,
    shift_ticks,
)


class ConstraintError(RecitalError):
    """A constraint the composer gave that cannot be read or cannot be met (one line: which and why)."""


# -- names: keys, notes, ranges ---------------------------------------------------------------------------------

MODES = {  # semitones above the tonic
    "major": (0, 2, 4, 5, 7, 9, 11),
    "minor": (0, 2, 3, 5, 7, 8, 10),  # natural minor
    "ionian": (0, 2, 4, 5, 7, 9, 11),
    "dorian": (0, 2, 3, 5, 7, 9, 10),
    "phrygian": (0, 1, 3, 5, 7, 8, 10),
    "lydian": (0, 2, 4, 6, 7, 9, 11),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10),
    "aeolian": (0, 2, 3, 5, 7, 8, 10),
    "locrian": (0, 1, 3, 5, 6, 8, 10),
}
LETTERS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
PITCH_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_NAMES = tuple(f"{PITCH_NAMES[tonic]} {mode}" for mode in ("major", "minor") for tonic in range(12))
FROM_PRIMER = "primer"  # --key primer: the key estimated from the primer's notes
_NOTE = r"[A-Ga-g](?:#|b)?-?\d+|\d+"
_KEY = re.compile(r"^\s*([A-Ga-g])(#|b|♯|♭)?\s*(?:([A-Za-z]+))?\s*$")


def _tonic(letter: str, accidental: str | None) -> int:
    shift = {"#": 1, "♯": 1, "b": -1, "♭": -1}.get(accidental or "", 0)
    return (LETTERS[letter.upper()] + shift) % 12


def parse_key(text: str) -> tuple[str, frozenset[int]]:
    """'D minor', 'F# major', 'Bb dorian' -> (its name, its pitch classes); ConstraintError for anything else."""
    match = _KEY.match(text)
    mode = (match.group(3) or "").lower() if match else ""
    if not match or mode not in MODES:
        raise ConstraintError(f"key {text!r}: expected a tonic and a mode, e.g. 'D minor', 'F# major' or "
                              f"'Bb dorian' (modes: {', '.join(MODES)})")
    tonic = _tonic(match.group(1), match.group(2))
    name = f"{match.group(1).upper()}{(match.group(2) or '').replace('♯', '#').replace('♭', 'b')} {mode}"
    return name, frozenset((tonic + step) % 12 for step in MODES[mode])


def parse_pitch_classes(text: str) -> frozenset[int]:
    """'0,2,4,7,9' -> the set of pitch classes (0 = C ... 11 = B)."""
    try:
        classes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConstraintError(f"pitch classes {text!r}: expected whole numbers 0-11 separated by commas, "
                              f"e.g. 0,2,4,7,9") from None
    if not classes or any(not 0 <= pc <= 11 for pc in classes):
        raise ConstraintError(f"pitch classes {text!r}: expected whole numbers 0-11 separated by commas, "
                              f"e.g. 0,2,4,7,9")
    return frozenset(classes)


def parse_note(text: str) -> int:
    """A MIDI pitch from a note name ('C4' = 60, 'F#2', 'Bb-1') or a number 0-127."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        pitch = int(text)
    else:
        match = re.fullmatch(r"([A-Ga-g])(#|b)?(-?\d+)", text)
        if not match:
            raise ConstraintError(f"note {text!r}: expected a name like C4, F#2 or Bb5 (C4 is middle C, 60) "
                                  f"or a MIDI pitch 0-127")
        pitch = LETTERS[match.group(1).upper()] + {"#": 1, "b": -1}.get(match.group(2) or "", 0) \
            + 12 * (int(match.group(3)) + 1)
    if not 0 <= pitch <= 127:
        raise ConstraintError(f"note {text!r} is outside MIDI's pitches 0-127 (C-1 to G9)")
    return pitch


def note_name(pitch: int) -> str:
    """60 -> 'C4'."""
    return f"{PITCH_NAMES[pitch % 12]}{pitch // 12 - 1}"


def _pair(text: str, what: str, example: str, pattern: str) -> tuple[str, str]:
    match = re.fullmatch(rf"\s*({pattern})\s*-\s*({pattern})\s*", text)
    if not match:
        raise ConstraintError(f"{what} {text!r}: expected LOW-HIGH, e.g. {example}")
    return match.group(1), match.group(2)


def parse_range(text: str) -> tuple[int, int]:
    """'C2-C7' (or '36-96') -> the lowest and highest pitch allowed."""
    low, high = (parse_note(part) for part in _pair(text, "range", "C2-C7 or 36-96", _NOTE))
    if low > high:
        raise ConstraintError(f"range {text!r}: the low note is above the high one")
    return low, high


def parse_velocity(text: str) -> tuple[int, int]:
    """'40-90' -> the lowest and highest MIDI velocity allowed (1-127)."""
    low, high = (int(part) for part in _pair(text, "velocity", "40-90", r"\d+"))
    return low, high


def key_of(perf: Performance) -> tuple[str, frozenset[int]] | None:
    """The key of a piece (Krumhansl-Schmuckler on duration-weighted pitch classes, core/musicstats.py) as a
    name and its scale; None when it has no notes or no key to tell."""
    from core.musicstats import estimate_key

    key = estimate_key(perf)
    if key is None:
        return None
    return parse_key(f"{PITCH_NAMES[key.tonic]} {'minor' if key.minor else 'major'}")


# -- what the composer asked ------------------------------------------------------------------------------------

DENSITY_RANGE = (0.25, 40.0)  # notes per second a density may ask


@dataclass(frozen=True)
class Constraints:
    """Limits on what a model writes. Every field optional (None / the full range: no limit)."""

    pitch_classes: frozenset[int] | None = None  # the scale lock: no other pitch class is written
    key: str | None = None  # the name the pitch classes came from ('D minor'), for display
    from_primer: bool = False  # the key is the primer's (see `resolve`); pitch_classes stays None until then
    low: int = 0  # lowest pitch written
    high: int = 127  # highest pitch written
    velocity_low: int = 1
    velocity_high: int = 127
    density: float | None = None  # notes per second steered toward
    max_density: float | None = None  # notes per second a lane is steered back under, never up (without density)
    max_polyphony: int | None = None  # notes sounding at once at most

    def __post_init__(self):
        if self.pitch_classes is not None:
            object.__setattr__(self, "pitch_classes", frozenset(int(pc) for pc in self.pitch_classes))
            if not self.pitch_classes or any(not 0 <= pc <= 11 for pc in self.pitch_classes):
                raise ConstraintError(f"pitch classes must be 1 to 12 of 0-11, got {sorted(self.pitch_classes)}")
        if self.from_primer and self.pitch_classes is not None:
            raise ConstraintError("give a key or 'from the primer', not both")
        if not 0 <= self.low <= self.high <= 127:
            raise ConstraintError(f"range must be two MIDI pitches 0-127, low first, got {self.low}-{self.high}")
        if not 1 <= self.velocity_low <= self.velocity_high <= 127:
            raise ConstraintError(f"velocity must be two MIDI velocities 1-127, low first, got "
                                  f"{self.velocity_low}-{self.velocity_high}")
        if not self.velocity_bins().any():
            written = ", ".join(str(bin_velocity(b)) for b in range(4)) + f", ... {bin_velocity(VELOCITY_BINS - 1)}"
            raise ConstraintError(f"velocity {self.velocity_low}-{self.velocity_high} holds none of the velocities "
                                  f"a model writes ({written}): widen it to at least 4")
        for name, value in (("density", self.density), ("max density", self.max_density)):
            if value is not None and not DENSITY_RANGE[0] <= value <= DENSITY_RANGE[1]:
                raise ConstraintError(f"{name} must be {DENSITY_RANGE[0]:g} to {DENSITY_RANGE[1]:g} notes per "
                                      f"second, got {value:g}")
        if self.max_polyphony is not None and self.max_polyphony < 1:
            raise ConstraintError(f"max polyphony must be at least 1, got {self.max_polyphony}")
        if not self.from_primer and not self.pitches().any():
            raise ConstraintError(f"no pitch of {self._scale_name()} lies in the range "
                                  f"{note_name(self.low)}-{note_name(self.high)}")

    @classmethod
    def parse(cls, key: str | None = None, pitch_classes: str | None = None, range_: str | None = None,
              velocity: str | None = None, density: float | None = None,
              max_polyphony: int | None = None) -> Constraints:
        """From the composer's words (the CLI's flags): key 'D minor' or 'primer', pitch classes '0,2,4,7,9',
        range 'C2-C7', velocity '40-90'."""
        if key is not None and pitch_classes is not None:
            raise ConstraintError("give a key or pitch classes, not both")
        fields: dict = {"density": density, "max_polyphony": max_polyphony}
        if key is not None and key.strip().lower() == FROM_PRIMER:
            fields["from_primer"] = True
        elif key is not None:
            fields["key"], fields["pitch_classes"] = parse_key(key)
        elif pitch_classes is not None:
            fields["pitch_classes"] = parse_pitch_classes(pitch_classes)
        if range_ is not None:
            fields["low"], fields["high"] = parse_range(range_)
        if velocity is not None:
            fields["velocity_low"], fields["velocity_high"] = parse_velocity(velocity)
        return cls(**fields)

    @property
    def active(self) -> bool:
        """Whether anything is constrained at all."""
        return self != Constraints()

    def _scale_name(self) -> str:
        if self.key:
            return self.key
        return "pitch classes " + ",".join(str(pc) for pc in sorted(self.pitch_classes or range(12)))

    def describe(self) -> str:
        """One line for the composer: every limit in effect ('none' when there is none)."""
        parts = []
        if self.from_primer:
            parts.append("key from the primer")
        elif self.pitch_classes is not None:
            tonic = _tonic(self.key[0], self.key[1:2] if self.key[1:2] in ("#", "b") else None) if self.key else 0
            names = " ".join(PITCH_NAMES[pc] for pc in sorted(self.pitch_classes, key=lambda pc: (pc - tonic) % 12))
            parts.append(f"key {self.key} ({names})" if self.key else f"pitch classes {names}")
        if (self.low, self.high) != (0, 127):
            parts.append(f"range {note_name(self.low)}-{note_name(self.high)}")
        if (self.velocity_low, self.velocity_high) != (1, 127):
            parts.append(f"velocity {self.velocity_low}-{self.velocity_high}")
        if self.density is not None:
            parts.append(f"density {self.density:g} notes/s (steered)")
        elif self.max_density is not None:
            parts.append(f"at most {self.max_density:.3g} notes/s (steered down)")
        if self.max_polyphony is not None:
            parts.append(f"at most {self.max_polyphony} notes at once")
        return ", ".join(parts) or "none"

    def resolve(self, primer: Performance) -> Constraints:
        """The constraints with 'from the primer' replaced by the primer's key (unchanged without it)."""
        if not self.from_primer:
            return self
        key = key_of(primer)
        if key is None:
            raise ConstraintError("the key 'from the primer' needs a primer with notes in some key; pick a key")
        return replace(self, from_primer=False, key=f"{key[0]} (from the primer)", pitch_classes=key[1])

    def pitches(self) -> np.ndarray:
        """(128,) bool: the pitches a NoteOn may start."""
        allowed = np.zeros(128, dtype=bool)
        allowed[self.low:self.high + 1] = True
        if self.pitch_classes is not None:
            allowed &= np.isin(np.arange(128) % 12, sorted(self.pitch_classes))
        return allowed

    def velocity_bins(self) -> np.ndarray:
        """(32,) bool: the codec's velocity bins whose velocity (the bin's centre, as decoded) is in the range."""
        velocity = np.array([bin_velocity(b) for b in range(VELOCITY_BINS)])
        return (velocity >= self.velocity_low) & (velocity <= self.velocity_high)

    def token_mask(self, vocab_size: int | None = None, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None, codec: Codec | str = tokenizer) -> torch.Tensor:
        """(V,) additive mask, the same at every position: -inf on the onset ids (NoteOn / Pitch) of forbidden
        pitches and the codec's Velocity ids outside the range, 0 elsewhere. What a denoiser adds to the logits of
        every position it unmasks. vocab_size: the model's (the codec's by default)."""
        if self.from_primer:
            raise ConstraintError("the key 'from the primer' must be resolved against the primer first")
        codec = _codec(codec)
        vocab_size = codec.VOCAB_SIZE if vocab_size is None else vocab_size
        mask = torch.zeros(vocab_size, dtype=dtype, device=device)
        forbidden = np.concatenate([ONSET + np.nonzero(~self.pitches())[0],
                                    codec.VELOCITY + np.nonzero(~self.velocity_bins())[0]])
        mask[torch.from_numpy(forbidden[forbidden < vocab_size]).to(mask.device)] = float("-inf")
        return mask

    def tracker(self, batch: int, primer: np.ndarray, vocab_size: int | None = None,
                codec: Codec | str = tokenizer) -> ConstraintTracker | NoteTracker:
        """A per-lane tracker of the codec's ids that has read `primer` (the same ids in every lane)."""
        codec = _codec(codec)
        if codec.NAME == notecodec.NAME:
            return NoteTracker(self, batch, primer, vocab_size)
        return ConstraintTracker(self, batch, primer, VOCAB_SIZE if vocab_size is None else vocab_size)


def _codec(codec: Codec | str) -> Codec:
    """A codec module from itself or its name (ModelError for an unknown name)."""
    return codec_named(codec) if isinstance(codec, str) else codec


# -- following the lanes ----------------------------------------------------------------------------------------

DENSITY_WINDOW = 2.0  # seconds of music the recent notes/s is measured over (an exponential window)
DENSITY_FLOOR = 0.5  # notes/s added to both sides of the ratio: a silent start is not an infinite error
DENSITY_GAIN = 2.0  # logit bias per unit of log(asked / recent)
DENSITY_INTEGRAL = 3.0  # bias gathered per second of music per unit of log error (removes the steady offset)
DENSITY_MAX_BIAS = 8.0  # the bias never exceeds this (steered, not forced)
PRIMER_CHUNK = 1 << 16  # primer ids read at once


class _Steering:
    """The density controller both trackers share: each lane's recent notes/s (an exponential window over the
    music's seconds) and the integral term, turned into a logit bias between notes and time. Toward `density`
    both ways; under `max_density` only down: the bias and the integral never go above 0, so a lane below the
    ceiling gets no bias at all (its draws are the model's own) and one that ran above it is steered back."""

    constraints: Constraints
    recent: np.ndarray  # (B,) notes, each decayed by exp(-age / window)
    integral: np.ndarray  # (B,) the controller's integral term

    def rate(self) -> np.ndarray:
        """(B,) recent notes per second."""
        return self.recent / DENSITY_WINDOW

    def steers(self) -> bool:
        """Whether there is a density or a ceiling to steer by."""
        return steered_rate(self.constraints) is not None

    def _ceiling(self) -> float:
        """The highest bias (and integral): 0 under a ceiling, else DENSITY_MAX_BIAS."""
        return DENSITY_MAX_BIAS if self.constraints.density is not None else 0.0

    def _error(self) -> np.ndarray:
        return np.log((steered_rate(self.constraints) + DENSITY_FLOOR) / (self.rate() + DENSITY_FLOOR))

    def density_bias(self) -> np.ndarray:
        """(B,) logit bias toward a note (> 0) or TimeShift (< 0); zeros without a density or a ceiling."""
        if not self.steers():
            return np.zeros(len(self.recent))
        return np.clip(DENSITY_GAIN * self._error() + self.integral, -DENSITY_MAX_BIAS, self._ceiling())

    def _advance(self, seconds: np.ndarray) -> None:
        """The clock of each lane moved by `seconds` (B,): gather the integral, decay the recent notes."""
        if self.steers():
            self.integral = np.clip(self.integral + DENSITY_INTEGRAL * self._error() * seconds,
                                    -DENSITY_MAX_BIAS, self._ceiling())
        self.recent *= np.exp(-seconds / DENSITY_WINDOW)


def steered_rate(constraints: Constraints) -> float | None:
    """The notes/s a tracker steers by: the density asked, else the ceiling, else None."""
    return constraints.density if constraints.density is not None else constraints.max_density


def _velocity_first(mask: torch.Tensor, unvoiced: np.ndarray, static: torch.Tensor, velocities: slice
                    ) -> torch.Tensor:
    """In place: the rows of the `unvoiced` lanes (whose next note would get a velocity outside the range) allow
    only the codec's `velocities` the static mask allows, and PAD, BOS, EOS (left to the engine's own rules).
    Returns those lanes, for the caller to open what its codec also allows there."""
    lanes = torch.from_numpy(np.nonzero(unvoiced)[0])
    forced = torch.full((len(lanes), mask.shape[1]), float("-inf"), dtype=mask.dtype)
    forced[:, velocities] = static[velocities]
    forced[:, :ONSET] = 0.0
    mask[lanes] = forced
    return lanes


def _neutral_start(constraints: Constraints, recent: float, seconds: float) -> float:
    """The recent notes after a primer of `seconds`, as if the music before it had been at the asked rate."""
    target = steered_rate(constraints) or 0.0
    return recent + target * DENSITY_WINDOW * math.exp(-seconds / DENSITY_WINDOW)


class ConstraintTracker(_Steering):
    """The event codec's tracker: each lane's sounding notes, velocity and recent notes/s; `mask()` for the next
    id, `read(ids)` after it.

    Vectorised over lanes (numpy for the bookkeeping, one (B, V) tensor per step)."""

    def __init__(self, constraints: Constraints, batch: int, primer: np.ndarray, vocab_size: int = VOCAB_SIZE):
        self.constraints = constraints
        self.static = constraints.token_mask(vocab_size)  # (V,)
        self.vocab_size = vocab_size
        self.velocity_ok = constraints.velocity_bins()  # (32,)
        sounding = np.zeros(128, dtype=bool)
        velocity, clock, recent = DEFAULT_VELOCITY_BIN, 0.0, 0.0
        primer = np.asarray(primer, dtype=np.int64).ravel()
        for begin in range(0, len(primer), PRIMER_CHUNK):
            velocity, clock, recent = _follow(primer[begin:begin + PRIMER_CHUNK], sounding, velocity, clock,
                                              recent)
        recent = _neutral_start(constraints, recent, clock)
        self.sounding = np.repeat(sounding[None], batch, axis=0)  # (B, 128)
        # A note begun at this tick and ended (or struck again) before the clock moves lasts one tick in the file
        # (the codec's shortest note): it still sounds beside the notes struck at this tick.
        self.struck_now = np.zeros((batch, 128), dtype=bool)  # (B, 128) pitches begun at the current tick
        self.lingering = np.zeros(batch, dtype=np.int64)  # (B,) such one-tick notes at the current tick
        self.velocity = np.full(batch, velocity)  # (B,) the bin the next NoteOn would get
        self.recent = np.full(batch, recent)  # (B,) NoteOns, each decayed by exp(-age / window)
        self.integral = np.zeros(batch)  # (B,) the density controller's integral term

    def mask(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, V) additive mask for the next id of each lane."""
        batch = len(self.velocity)
        mask = self.static.expand(batch, -1).clone()
        if self.steers():
            bias = torch.from_numpy(self.density_bias()).to(mask.dtype)[:, None] / 2
            mask[:, NOTE_ON:NOTE_OFF] += bias
            mask[:, TIME_SHIFT:VELOCITY] -= bias
        if self.constraints.max_polyphony is not None:
            full = self.sounding.sum(axis=1) + self.lingering >= self.constraints.max_polyphony
            mask[torch.from_numpy(full), NOTE_ON:NOTE_OFF] = float("-inf")
        unvoiced = ~self.velocity_ok[self.velocity]  # the next NoteOn would get a velocity outside the range
        if unvoiced.any():  # a Velocity id in the range first (or a NoteOff of a sounding note)
            lanes = _velocity_first(mask, unvoiced, self.static, slice(VELOCITY, VELOCITY + VELOCITY_BINS))
            mask[lanes, NOTE_OFF:TIME_SHIFT] = torch.where(torch.from_numpy(self.sounding[unvoiced]), 0.0,
                                                           float("-inf")).to(mask.dtype)
        return mask.to(device=device, dtype=dtype)

    def read(self, ids: np.ndarray) -> None:
        """Follow one id per lane (B,), the id that was written (after any release of a held note)."""
        ids = np.asarray(ids, dtype=np.int64)
        lanes = np.arange(len(ids))
        on = (ids >= NOTE_ON) & (ids < NOTE_OFF)
        off = (ids >= NOTE_OFF) & (ids < TIME_SHIFT)
        pitch = np.where(on, ids - NOTE_ON, np.where(off, ids - NOTE_OFF, 0))
        ends_a_new_note = (on | off) & self.sounding[lanes, pitch] & self.struck_now[lanes, pitch]
        self.lingering += ends_a_new_note
        self.sounding[lanes[on], pitch[on]] = True
        self.struck_now[lanes[on], pitch[on]] = True
        self.sounding[lanes[off], pitch[off]] = False
        velocity = (ids >= VELOCITY) & (ids < VELOCITY + VELOCITY_BINS)
        self.velocity[velocity] = ids[velocity] - VELOCITY
        self.recent += on
        seconds = shift_ticks(ids) * TICK_SECONDS
        moved = seconds > 0  # the clock moved on: this tick's one-tick notes have ended
        self.struck_now[moved] = False
        self.lingering[moved] = 0
        self._advance(seconds)


def _follow(ids: np.ndarray, sounding: np.ndarray, velocity: int, clock: float, recent: float
            ) -> tuple[int, float, float]:
    """Read primer ids (T,): update `sounding` (128,) in place; return the velocity bin, the clock and the decayed
    NoteOn count after them."""
    shift = shift_ticks(ids) * TICK_SECONDS
    clocks = clock + np.cumsum(shift) - shift  # the clock when each id is read
    end = clock + float(shift.sum())
    on = (ids >= NOTE_ON) & (ids < NOTE_OFF)
    off = (ids >= NOTE_OFF) & (ids < TIME_SHIFT)
    pitch = np.where(on, ids - NOTE_ON, ids - NOTE_OFF)
    last_on, last_off = np.full(128, -1), np.full(128, -1)
    np.maximum.at(last_on, pitch[on], np.nonzero(on)[0])
    np.maximum.at(last_off, pitch[off], np.nonzero(off)[0])
    sounding[last_on > last_off] = True
    sounding[last_off > last_on] = False
    velocities = ids[(ids >= VELOCITY) & (ids < VELOCITY + VELOCITY_BINS)]
    if len(velocities):
        velocity = int(velocities[-1]) - VELOCITY
    recent = recent * math.exp(-(end - clock) / DENSITY_WINDOW) + float(
        np.exp(-(end - clocks[on]) / DENSITY_WINDOW).sum())
    return velocity, end, recent


# The note codec's id ranges the tracker touches (a Duration is never one of them).
_PITCHES = slice(ONSET, notecodec.DURATION)
_TIME_SHIFTS = slice(notecodec.TIME_SHIFT, notecodec.VELOCITY)
_VELOCITIES = slice(notecodec.VELOCITY, notecodec.VELOCITY + VELOCITY_BINS)


class NoteTracker(_Steering):
    """The note codec's tracker: a note's length is told at its onset (its Duration id), so each lane's sounding
    notes are the pitches whose last note ends past the lane's clock, the notes struck at this tick among them.
    `mask()` for the next id, `read(ids)` after it, as `ConstraintTracker`."""

    def __init__(self, constraints: Constraints, batch: int, primer: np.ndarray, vocab_size: int | None = None):
        self.constraints = constraints
        self.vocab_size = notecodec.VOCAB_SIZE if vocab_size is None else vocab_size
        self.static = constraints.token_mask(self.vocab_size, codec=notecodec)  # (V,)
        self.velocity_ok = constraints.velocity_bins()  # (32,)
        last_onset, last_end = np.full(128, -1, dtype=np.int64), np.zeros(128, dtype=np.int64)
        at, recent = notecodec.Reading(), 0.0
        primer = np.asarray(primer, dtype=np.int64).ravel()
        for begin in range(0, len(primer), PRIMER_CHUNK):
            (onset, end, pitch, _), after, ended = notecodec.read_notes(primer[begin:begin + PRIMER_CHUNK], at)
            recent = recent * math.exp(-(after.tick - at.tick) * TICK_SECONDS / DENSITY_WINDOW) + float(
                np.exp(-(after.tick - onset) * TICK_SECONDS / DENSITY_WINDOW).sum())
            _last_notes(onset, end, pitch, last_onset, last_end)
            at = after
            if ended:
                break
        recent = _neutral_start(constraints, recent, at.tick * TICK_SECONDS)
        self.tick = np.full(batch, at.tick, dtype=np.int64)  # (B,) each lane's clock in ticks
        self.ends = np.repeat(last_end[None], batch, axis=0)  # (B, 128) end tick of each pitch's last note
        self.struck_now = np.repeat((last_onset == at.tick)[None], batch, axis=0)  # (B, 128) struck at this tick
        self.pending = np.full(batch, at.pending, dtype=np.int64)  # (B,) a Pitch waiting for its Duration, or -1
        self.velocity = np.full(batch, at.velocity_bin)  # (B,) the bin the next note would get
        self.recent = np.full(batch, recent)  # (B,) notes, each decayed by exp(-age / window)
        self.integral = np.zeros(batch)  # (B,) the density controller's integral term

    def polyphony(self) -> np.ndarray:
        """(B,) notes sounding at each lane's clock (those struck at it included)."""
        return (self.ends > self.tick[:, None]).sum(axis=1)

    def mask(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, V) additive mask for the next id of each lane; never -inf on a Duration."""
        pitch, time, velocity = _PITCHES, _TIME_SHIFTS, _VELOCITIES
        batch = len(self.velocity)
        mask = self.static.expand(batch, -1).clone()
        if self.steers():
            bias = torch.from_numpy(self.density_bias()).to(mask.dtype)[:, None] / 2
            mask[:, pitch] += bias
            mask[:, time] -= bias
        if self.constraints.max_polyphony is not None:
            full = self.polyphony() >= self.constraints.max_polyphony
            mask[torch.from_numpy(full), pitch] = float("-inf")
        unvoiced = ~self.velocity_ok[self.velocity]  # the next note would get a velocity outside the range
        if unvoiced.any():  # a Velocity id in the range first (a Pitch already written still gets its Duration)
            lanes = _velocity_first(mask, unvoiced, self.static, velocity)
            mask[lanes, notecodec.DURATION:notecodec.TIME_SHIFT] = 0.0
        return mask.to(device=device, dtype=dtype)

    def read(self, ids: np.ndarray) -> None:
        """Follow one id per lane (B,), the id that was written."""
        ids = np.asarray(ids, dtype=np.int64)
        lanes = np.arange(len(ids))
        completes = (ids >= notecodec.DURATION) & (ids < notecodec.TIME_SHIFT) & (self.pending >= 0)
        lane, pitch = lanes[completes], self.pending[completes]
        end = self.tick[completes] + notecodec.BIN_TICKS[ids[completes] - notecodec.DURATION]
        # A pitch struck twice at one tick is one note, the longer; struck again later, the new note replaces it.
        self.ends[lane, pitch] = np.where(self.struck_now[lane, pitch], np.maximum(self.ends[lane, pitch], end), end)
        self.struck_now[lane, pitch] = True
        self.recent += completes
        self.pending = np.where((ids >= ONSET) & (ids < notecodec.DURATION), ids - ONSET, -1)
        velocity = (ids >= notecodec.VELOCITY) & (ids < notecodec.VELOCITY + VELOCITY_BINS)
        self.velocity[velocity] = ids[velocity] - notecodec.VELOCITY
        ticks = notecodec.shift_ticks(ids)
        self.tick += ticks
        self.struck_now[ticks > 0] = False
        self._advance(ticks * TICK_SECONDS)


def _last_notes(onset: np.ndarray, end: np.ndarray, pitch: np.ndarray, last_onset: np.ndarray,
                last_end: np.ndarray) -> None:
    """Fold notes read in order (onset ticks never decrease) into each pitch's last onset and end (128,), in
    place: a later strike replaces a pitch's note, a strike at the same tick merges into it (the longer)."""
    if not len(onset):
        return
    order = np.lexsort((end, onset, pitch))  # by pitch, then onset, then end: each pitch's last is its latest
    pitch, onset, end = pitch[order], onset[order], end[order]
    last = np.append(pitch[1:] != pitch[:-1], True)
    pitch, onset, end = pitch[last], onset[last], end[last]
    same_tick = onset == last_onset[pitch]
    last_end[pitch] = np.where(same_tick, np.maximum(end, last_end[pitch]), end)
    last_onset[pitch] = onset
