"""Expressive augmentation: make score-derived pieces sound played, so expressive primers are not foreign.

Score data (music21's corpus) has quantised timing, a handful of velocities and no pedal; a composer's primer
played on a keyboard has all three. Each training draw of a score piece can be "performed" at random:

- tempo: the whole piece played faster than written, by a factor drawn per piece (when asked);
- rubato: a smooth random time warp (log-tempo control points every few seconds, cosine-interpolated), which
  is monotonic by construction (its rate is an exponential) and keeps the piece's length on average;
- onset jitter: a few milliseconds per note (a note never moves closer than one 10 ms tick to the previous
  strike of its own key, so the codec keeps every note);
- touch, legato and pedal: each key held for a share of its written length, offsets pulled toward the next
  onset, and on some pieces sustain spans that change at onsets every second or two, folded into durations as
  `core.midi.fold_sustain` does for real MIDI;
- dynamics: a phrase-level curve (control points every few seconds, smooth crescendi and diminuendi between
  them) around a random piece level, plus a part of the score's own accents, a louder top voice and per-note
  spread, so the velocities cover the whole range over many draws.

It works on token ids in and out (`express_ids`): a vectorised decode (`notes_from_ids`, equal to
`core.tokenizer.decode`), the note-level changes on numpy arrays, and `core.tokenizer.encode`; ids of the note
codec are read with `core.notecodec.decode` (vectorised too) and written with its `encode`. Every random number
comes from the generator passed in, so a draw is reproducible from its seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from core import notecodec
from core.codecs import DEFAULT
from core.midi import Performance, canonical, fold_sustain
from core.tokenizer import (
    DEFAULT_VELOCITY_BIN,
    EOS,
    NOTE_OFF,
    NOTE_ON,
    TICK_SECONDS,
    TIME_SHIFT,
    VELOCITY,
    VOCAB_SIZE,
    encode,
)

MIN_GAP = TICK_SECONDS * 1.01  # two strikes of one key stay at least a tick apart, so encode keeps both
GRID = 0.02  # seconds between samples of the time warp


@dataclass(frozen=True)
class Expression:
    """How a piece is performed; (low, high) pairs are drawn uniformly per piece (the tempo log-uniformly)."""

    probability: float = 0.8  # of draws that are performed (the rest stay as scored)
    # tempo: 1 keeps the written tempo (a composer's own pieces); the default models' recipe plays the corpus's
    # scores faster, as pianists play (trainer/recipes/default_models.toml, `expressive_tempo`)
    tempo: tuple[float, float] = (1.0, 1.0)  # share of its written length a piece takes (log-uniform per piece)
    # rubato
    rubato: tuple[float, float] = (0.03, 0.15)  # sd of the log-tempo control points
    rubato_seconds: tuple[float, float] = (1.5, 6.0)  # spacing of those control points
    # timing of single notes
    # A pianist's chord is spread over a few ticks: MAESTRO's onsets are 17-19% at one tick with the one before
    # and 28% 1-3 ticks after it; with 2-8 ms of jitter the performed draws' were 33% and 21%, and MAESTRO's onset
    # gaps cost 4.92 bits under their frequencies (4.43 under its own); at 5-15 ms, 22% and 32%, 4.64 bits.
    jitter: tuple[float, float] = (0.005, 0.015)  # sd of onset jitter, seconds (clipped at 2.5 sd)
    # articulation
    # Pianists hold keys for less than a score's written length (a quarter of MAESTRO's notes last under 0.1 s, half
    # under 0.25 s); with every key held its full length, then legato and pedal on top, the performed draws' notes
    # were twice as long (median 0.44 s) and the durations of MAESTRO's pianists cost 7.1 bits a note under their
    # distribution instead of 5.5 under their own (bin frequencies fitted on five of its files, measured on the
    # other five). With the share held drawn per piece and spread per note, and gentler legato: 5.8 (issue #17).
    touch: tuple[float, float] = (0.2, 0.8)  # share of the scored length a key is held (per piece), before legato
    touch_spread: tuple[float, float] = (0.2, 0.6)  # sd of each note's log length about that share
    legato: tuple[float, float] = (0.0, 0.5)  # share of the gap to the next onset an offset is extended by
    max_extension: float = 1.5  # seconds an offset can be moved by legato
    pedal: float = 0.5  # probability a piece is pedalled
    pedal_seconds: tuple[float, float] = (0.7, 3.0)  # time between pedal changes
    # dynamics
    # The piece's level, about its mean velocity: the accents and the louder top voice add ~9. At (35, 100) a
    # performed draw averaged 76.9 (the scores 89) and the models' new pieces came out loud (72-82); piano
    # performances average 55-70 (MAESTRO's pieces): at (30, 85) performed draws average 66.9.
    # At (30, 85) with swings of 8-40 a performed draw's velocities spread over every bin (a tenth at 100 and over),
    # MAESTRO's over a narrower band (none over 111): its velocity ids cost 4.46 bits under the draws' frequencies
    # against 4.29-4.38 under its own; at (40, 80) with swings of 5-25, 4.38, but a piece's velocities then spread
    # less than a pianist's (sd 10.4 within a draw's first 60 s, MAESTRO's 15.1) and the model's new pieces came out
    # flat (sd 10.9). Drawing a piece's level from a narrower band and moving more within it matches both: at
    # (40, 70), swings of 15-35 and per-note spread 6-14, sd 15.1, mean 62.6 (MAESTRO 62.3), 4.37 bits.
    level: tuple[float, float] = (40.0, 70.0)
    swing: tuple[float, float] = (15.0, 35.0)  # how far the phrase curve moves from that level
    phrase_seconds: tuple[float, float] = (2.0, 8.0)  # spacing of the dynamic curve's control points
    accents: tuple[float, float] = (0.0, 1.0)  # share of the score's own velocity deviations kept
    melody: tuple[float, float] = (0.0, 12.0)  # extra velocity of the top note of each chord
    spread: tuple[float, float] = (6.0, 14.0)  # sd of per-note velocity noise

    def __post_init__(self) -> None:
        from core.errors import ModelError

        if not 0.0 <= self.probability <= 1.0:
            raise ModelError(f"expression probability must be in [0, 1], got {self.probability}")
        for name, value in asdict(self).items():
            if isinstance(value, tuple) and not (len(value) == 2 and 0 <= value[0] <= value[1]):
                raise ModelError(f"expression {name} must be a (low, high) pair with 0 <= low <= high, got {value}")
        if self.tempo[0] <= 0:
            raise ModelError(f"expression tempo must be a positive share of the written length, got {self.tempo}")
        if self.rubato_seconds[0] <= 0 or self.phrase_seconds[0] <= 0 or self.pedal_seconds[0] <= 0:
            raise ModelError("expression spacings (rubato, phrase, pedal seconds) must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


# ---- ids <-> notes -------------------------------------------------------------------------------------------

def notes_from_ids(ids: np.ndarray) -> Performance:
    """The notes of an id sequence, vectorised; equal to `core.tokenizer.decode(ids)` for any ids.

    As the decoder does: time advances on TimeShift, a Velocity token sets the velocity of later note-ons, a
    note ends at the next NoteOn or NoteOff of its pitch (or at the end), lasting at least one tick, and
    reading stops at the first EOS.
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    ends = np.flatnonzero(ids == EOS)
    if len(ends):
        ids = ids[:ends[0]]
    shift = (ids >= TIME_SHIFT) & (ids < VELOCITY)
    tick = np.cumsum(np.where(shift, ids - TIME_SHIFT + 1, 0))  # (T,) tick of each token
    end_tick = int(tick[-1]) if len(ids) else 0
    is_velocity = (ids >= VELOCITY) & (ids < VOCAB_SIZE)
    last_velocity = np.maximum.accumulate(np.where(is_velocity, np.arange(len(ids)), -1))  # (T,)
    vbin = np.where(last_velocity >= 0, ids[np.maximum(last_velocity, 0)] - VELOCITY, DEFAULT_VELOCITY_BIN)
    is_on = (ids >= NOTE_ON) & (ids < NOTE_OFF)
    events = np.flatnonzero(is_on | ((ids >= NOTE_OFF) & (ids < TIME_SHIFT)))  # (E,) positions
    pitch = np.where(is_on[events], ids[events] - NOTE_ON, ids[events] - NOTE_OFF)
    order = np.lexsort((events, pitch))  # by pitch, then in reading order
    events, pitch = events[order], pitch[order]
    same_next = np.zeros(len(events), dtype=bool)
    same_next[:-1] = pitch[1:] == pitch[:-1]
    next_tick = np.full(len(events), end_tick, dtype=np.int64)
    next_tick[same_next] = tick[events[1:]][same_next[:-1]]
    on = is_on[events]
    on_tick = tick[events[on]]
    off_tick = np.maximum(next_tick[on], on_tick + 1)
    return Performance.from_notes(0.0 + on_tick * TICK_SECONDS, 0.0 + off_tick * TICK_SECONDS, pitch[on],
                                  vbin[events[on]] * 4 + 2)


def change_notes(ids: np.ndarray, codec: str, change: Callable[[Performance], Performance]) -> np.ndarray:
    """`ids` (BOS ... EOS, either codec, named by `codec`) read as notes, changed by `change`, and encoded again in
    the same codec and dtype; the ids as they are when `change` returns the very notes it was given. The one way
    the note-level augmentations (performance, keyboard figuration, register) touch a piece."""
    notes = codec == notecodec.NAME
    perf = notecodec.decode(ids) if notes else notes_from_ids(ids)
    changed = change(perf)
    if changed is perf:
        return ids
    return (notecodec.encode if notes else encode)(changed).astype(ids.dtype)


# ---- smooth random curves ------------------------------------------------------------------------------------

def smooth_curve(rng: np.random.Generator, spacing: tuple[float, float], values: np.ndarray,
                 times: np.ndarray) -> np.ndarray:
    """A curve through control points `values` (drawn by the caller) placed `spacing` seconds apart, at `times`.

    Cosine interpolation between the points: each stretch is a smooth crescendo, ritardando, ...; the curve is
    flat beyond the last point. To span times up to d, `values` needs `knot_count(d, spacing[0])` points.
    """
    gaps = rng.uniform(spacing[0], spacing[1], len(values) - 1)
    knots = np.concatenate([[0.0], np.cumsum(gaps)])  # (K,)
    k = np.clip(np.searchsorted(knots, times, side="right") - 1, 0, len(knots) - 2)
    within = np.clip((times - knots[k]) / gaps[k], 0.0, 1.0)
    blend = 0.5 - 0.5 * np.cos(np.pi * within)
    return values[k] * (1.0 - blend) + values[k + 1] * blend


def knot_count(duration: float, shortest: float) -> int:
    """Control points enough to span `duration` when they are at least `shortest` apart."""
    return int(np.ceil(duration / shortest)) + 2


def time_warp(rng: np.random.Generator, duration: float, expression: Expression) -> tuple[np.ndarray, np.ndarray]:
    """(score times, performed times) on a grid over [0, duration]: a smooth, strictly increasing warp.

    Its local rate is exp(a smooth random log-tempo curve), normalised so that the piece keeps its length.
    """
    times = np.arange(0.0, duration + 2 * GRID, GRID)  # (G,)
    sd = rng.uniform(*expression.rubato)
    values = rng.normal(0.0, sd, knot_count(duration, expression.rubato_seconds[0]))
    rate = np.exp(smooth_curve(rng, expression.rubato_seconds, values, times))  # (G,) > 0
    warped = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * GRID)])  # (G,) trapezoid integral
    return times, warped * (times[-1] / warped[-1])


def warp(times: np.ndarray, curve: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Times mapped through a `time_warp` curve (linear between its samples)."""
    return np.interp(times, curve[0], curve[1])


# ---- the performance ------------------------------------------------------------------------------------------

def keep_strikes_apart(onset: np.ndarray, pitch: np.ndarray) -> np.ndarray:
    """Onsets moved later where needed so that two strikes of one key are at least MIN_GAP apart."""
    order = np.lexsort((onset, pitch))
    x, p = onset[order], pitch[order]
    bounds = np.flatnonzero(np.r_[True, p[1:] != p[:-1], True])  # one run per pitch (at most 128)
    y = np.empty_like(x)
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        # y_i = max(x_i, y_(i-1) + gap) = i * gap + running max of (x_k - k * gap)
        steps = np.arange(end - start) * MIN_GAP
        y[start:end] = np.maximum(np.maximum.accumulate(x[start:end] - steps) + steps, x[start:end])
    out = np.empty_like(onset)
    out[order] = y
    return out


def next_onset_after(times: np.ndarray, onsets: np.ndarray, end: float) -> np.ndarray:
    """For each time, the first onset at or after it (`end` when there is none). `onsets` sorted."""
    i = np.searchsorted(onsets, times - 1e-9, side="left")
    return np.where(i < len(onsets), onsets[np.minimum(i, len(onsets) - 1)], end)


def pedal_spans(rng: np.random.Generator, onsets: np.ndarray, expression: Expression) -> np.ndarray:
    """Times of pedal down / up, alternating: changes at onsets every `pedal_seconds`, pressed just after."""
    end = float(onsets[-1])
    count = knot_count(end, expression.pedal_seconds[0])
    marks = np.cumsum(rng.uniform(*expression.pedal_seconds, count))
    changes = np.unique(next_onset_after(marks[marks < end], onsets, end))  # pedal changes land on onsets
    changes = np.concatenate([[float(onsets[0])], changes])
    delay = rng.uniform(0.03, 0.12)  # syncopated pedalling: up at the new onset, down again a moment later
    down = changes + delay
    up = np.concatenate([changes[1:], [np.inf]])
    keep = down < up
    return np.stack([down[keep], up[keep]], axis=1).ravel()


def perform(perf: Performance, rng: np.random.Generator, expression: Expression = Expression()) -> Performance:
    """One random performance of a (score-like) piece: same notes, new timing, durations and velocities."""
    n = len(perf)
    if n == 0:
        return perf
    onset, offset = perf.onset.astype(np.float64), perf.offset.astype(np.float64)
    pitch = perf.pitch.astype(np.int64)
    chord = np.unique(onset, return_inverse=True)[1]  # (n,) the scored onset group (chord) of each note

    # The piece's tempo, then rubato, then a few milliseconds of jitter per onset (durations kept).
    pace = float(np.exp(rng.uniform(*np.log(expression.tempo))))
    onset, offset = onset * pace, offset * pace
    curve = time_warp(rng, float(offset.max()), expression)
    onset, offset = warp(onset, curve), warp(offset, curve)
    sd = rng.uniform(*expression.jitter)
    jitter = np.clip(rng.normal(0.0, sd, n), -2.5 * sd, 2.5 * sd)
    moved = keep_strikes_apart(np.maximum(onset + jitter, 0.0), pitch)
    offset = np.maximum(offset + (moved - onset), moved + TICK_SECONDS)
    onset = moved

    # Touch: each key held for a share of its scored length (detached to full), then legato pulls offsets toward
    # the next onset and the pedal holds them until its next change.
    held = rng.uniform(*expression.touch) * np.exp(rng.normal(0.0, rng.uniform(*expression.touch_spread), n))
    offset = np.maximum(onset + held * (offset - onset), onset + TICK_SECONDS)
    starts = np.unique(onset)
    end = float(offset.max())
    target = next_onset_after(offset, starts, end)
    pull = rng.uniform(*expression.legato) * (target - offset)
    offset = offset + np.where(target - offset <= expression.max_extension, pull, 0.0)
    if rng.random() < expression.pedal and len(starts) > 1:
        edges = pedal_spans(rng, starts, expression)
        values = np.tile([127, 0], len(edges) // 2)
        finite = np.isfinite(edges)
        offset = fold_sustain(onset, offset, edges[finite], values[finite], end)

    # Dynamics: phrase curve around the piece level, the score's accents, a louder top voice, spread.
    level, swing = rng.uniform(*expression.level), rng.uniform(*expression.swing)
    values = level + swing * rng.uniform(-1.0, 1.0, knot_count(end, expression.phrase_seconds[0]))
    velocity = smooth_curve(rng, expression.phrase_seconds, values, onset)
    score_velocity = perf.velocity.astype(np.float64)
    velocity += rng.uniform(*expression.accents) * (score_velocity - np.median(score_velocity))
    top = np.zeros(int(chord.max()) + 1, dtype=np.int64)
    np.maximum.at(top, chord, pitch)
    velocity += rng.uniform(*expression.melody) * (pitch == top[chord])
    velocity += rng.normal(0.0, rng.uniform(*expression.spread), n)
    velocity = np.clip(np.rint(velocity), 1, 127)
    return canonical(onset, offset, pitch, velocity)


def express_ids(ids: np.ndarray, rng: np.random.Generator, expression: Expression = Expression(),
                codec: str = DEFAULT) -> np.ndarray:
    """A random performance of a tokenised piece (BOS ... EOS in, BOS ... EOS out, same dtype) in the codec named
    `codec`; with probability 1 - `expression.probability` the piece is returned as it is."""
    ids = np.asarray(ids)
    if rng.random() >= expression.probability:
        return ids
    return change_notes(ids, codec, lambda perf: perform(perf, rng, expression) if len(perf) else perf)
