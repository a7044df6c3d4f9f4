"""What a composer hears in a stretch of piano music, as numbers: small pure functions on a `Performance`.

The continuation benchmark (bench/continuation.py, issue #17) compares a model's continuation of a primer with
what the pianist really played next; each row of its table is one function here, so a test can check it on a
hand-made performance whose answer is known.

Every function reads one stretch of music (a window of `seconds`, or the notes' own span) and never raises on an
empty one: counts are 0, means are 0 (a silent window has no polyphony, no range, no regularity).

- held long: notes sounding longer than 4 s (a model that forgets to end notes holds them).
- cut at the limit: notes whose length says `--max-note` released them (see `cut_at_limit`); a "notes" codec
  model is never cut (it chooses a length at the onset): `lasting_at_least` counts its notes at the longest.
- re-strikes: one pitch struck again within 120 ms (a stutter a pianist rarely plays).
- polyphony: notes sounding, sampled every 50 ms.
- onset regularity: autocorrelation of the onset train at a beat period (see `onset_regularity`).
- key: Krumhansl-Schmuckler on duration-weighted pitch classes; "closely related" = same tonic or key
  signatures at most one accidental apart (see `closely_related`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.midi import Performance

HELD_LONG_SECONDS = 4.0
RESTRIKE_SECONDS = 0.12
POLYPHONY_STEP = 0.05  # seconds between polyphony samples
MIDDLE_C = 60  # C4: "below C4" is a pitch under 60
TICK = 0.01  # the codec's time grid (core.tokenizer.TICK_SECONDS)
LONGEST_SHIFT = 1.0  # the longest TimeShift id, seconds (core.tokenizer.MAX_SHIFT_TICKS ticks)

# Onset trains are sampled on the codec's grid and each onset spread as a Gaussian of ONSET_SPREAD seconds, so a
# pianist's timing (tens of ms off the grid of a strict pulse) still reads as a pulse.
ONSET_SPREAD = 0.02
BEAT_RANGE = (0.25, 1.5)  # seconds: beat periods considered (240 down to 40 beats per minute)
BEAT_TOLERANCE = 0.9  # a period's multiples correlate as well as it: the shortest within 90% of the best wins


# --- counts ---------------------------------------------------------------------------------------------------

def held_long(perf: Performance, seconds: float = HELD_LONG_SECONDS) -> int:
    """Notes sounding longer than `seconds`."""
    return int(np.sum(perf.offset - perf.onset > seconds + 1e-9))


def cut_at_limit(perf: Performance, limit: float, reach: float = LONGEST_SHIFT) -> int:
    """Notes whose length lies where a `--max-note limit` release puts it: from `limit` to `limit + reach`.

    Why not "within one tick of the limit": generation releases a note at the first draw after the clock has
    passed the limit, and the clock moves in TimeShift ids of up to 1 s, so a released note lasts between the
    limit and one longest shift past it (core.generate.HeldNotes). Real music rarely holds a note exactly there.
    """
    length = perf.offset - perf.onset
    return int(np.sum((length >= limit - TICK / 2) & (length <= limit + reach + TICK / 2)))


def lasting_at_least(perf: Performance, seconds: float) -> int:
    """Notes lasting `seconds` or longer (to half a tick): with the notes codec's longest length under
    --max-note, the notes that chose it (the event codec's `cut_at_limit` has no meaning there)."""
    return int(np.sum(perf.offset - perf.onset >= seconds - TICK / 2))


def restrikes(perf: Performance, within: float = RESTRIKE_SECONDS) -> int:
    """Times one pitch is struck again less than `within` seconds after its previous onset."""
    if len(perf) < 2:
        return 0
    order = np.lexsort((perf.onset, perf.pitch))  # by pitch, then time
    pitch, onset = perf.pitch[order], perf.onset[order]
    gap = np.diff(onset)
    return int(np.sum((pitch[1:] == pitch[:-1]) & (gap < within - 1e-9)))


# --- densities ------------------------------------------------------------------------------------------------

def window_of(perf: Performance, start: float | None = None, end: float | None = None) -> tuple[float, float]:
    """The window a statistic reads: [start, end), by default the notes' own span (first onset, last offset)."""
    if start is None:
        start = float(perf.onset.min()) if len(perf) else 0.0
    if end is None:
        end = float(perf.offset.max()) if len(perf) else start
    return start, end


def polyphony(perf: Performance, start: float | None = None, end: float | None = None,
              step: float = POLYPHONY_STEP) -> float:
    """Mean number of notes sounding, sampled every `step` seconds over [start, end)."""
    start, end = window_of(perf, start, end)
    if end <= start:
        return 0.0
    times = start + np.arange(int(np.ceil((end - start) / step - 1e-9))) * step  # (S,)
    onsets, offsets = np.sort(perf.onset), np.sort(perf.offset)
    sounding = np.searchsorted(onsets, times, side="right") - np.searchsorted(offsets, times, side="right")
    return float(sounding.mean())


def notes_per_second(perf: Performance, seconds: float) -> float:
    """Onsets per second over a window of `seconds`."""
    return len(perf) / seconds if seconds > 0 else 0.0


def pitch_range(perf: Performance) -> int:
    """Highest minus lowest pitch, in semitones (0 for an empty piece)."""
    return int(perf.pitch.max()) - int(perf.pitch.min()) if len(perf) else 0


def share_below(perf: Performance, pitch: int = MIDDLE_C) -> float:
    """Fraction of the notes below `pitch` (default: below C4, the left hand's register)."""
    return float(np.mean(perf.pitch < pitch)) if len(perf) else 0.0


def velocity_stats(perf: Performance) -> tuple[float, float]:
    """Mean and standard deviation of the notes' MIDI velocities (dynamics, and how much they vary)."""
    if not len(perf):
        return 0.0, 0.0
    velocity = perf.velocity.astype(np.float64)
    return float(velocity.mean()), float(velocity.std())


# --- onset regularity -----------------------------------------------------------------------------------------

def onset_train(perf: Performance, start: float | None = None, end: float | None = None,
                spread: float = ONSET_SPREAD) -> np.ndarray:
    """Onsets of [start, end) on the codec's 10 ms grid, each a Gaussian bump of `spread` seconds."""
    start, end = window_of(perf, start, end)
    bins = max(int(round((end - start) / TICK)), 0)
    train = np.zeros(bins)
    if not bins:
        return train
    inside = (perf.onset >= start) & (perf.onset < end)
    np.add.at(train, np.minimum(((perf.onset[inside] - start) / TICK).astype(np.int64), bins - 1), 1.0)
    if spread > 0:
        half = int(np.ceil(3 * spread / TICK))
        kernel = np.exp(-0.5 * (np.arange(-half, half + 1) * TICK / spread) ** 2)
        train = np.convolve(train, kernel, mode="same")
    return train


def autocorrelation(train: np.ndarray, lag: int) -> float:
    """Pearson correlation of the train with itself `lag` samples later (0 when either part does not vary)."""
    if lag <= 0 or lag >= len(train) - 1:
        return 0.0
    a, b = train[:-lag], train[lag:]
    a, b = a - a.mean(), b - b.mean()
    scale = float(np.sqrt(np.sum(a * a) * np.sum(b * b)))
    return float(np.sum(a * b) / scale) if scale > 0 else 0.0


def beat_period(perf: Performance, start: float | None = None, end: float | None = None,
                beat_range: tuple[float, float] = BEAT_RANGE) -> float | None:
    """The period (seconds) in `beat_range` at which the onset train correlates most with itself; None if the
    stretch is too short or has no onsets to tell.

    A pulse also correlates with itself at two and three beats, about as strongly as at one (timing noise
    decides which wins), so the beat is the peak of the first hill rising within BEAT_TOLERANCE of the best."""
    train = onset_train(perf, start, end)
    lags = np.arange(int(round(beat_range[0] / TICK)), int(round(beat_range[1] / TICK)) + 1)
    scores = np.array([autocorrelation(train, int(lag)) for lag in lags])
    if not len(scores) or scores.max() <= 0.0:
        return None
    at = int(np.argmax(scores >= BEAT_TOLERANCE * scores.max()))
    while at + 1 < len(scores) and scores[at + 1] > scores[at]:  # up to that hill's top
        at += 1
    return float(lags[at] * TICK)


def onset_regularity(perf: Performance, period: float | None, start: float | None = None,
                     end: float | None = None) -> float:
    """Autocorrelation of the onset train at `period` seconds (a strict pulse of that period: near 1; onsets at
    random: near 0). Without a period (the primer had no beat), 0."""
    if period is None:
        return 0.0
    return autocorrelation(onset_train(perf, start, end), int(round(period / TICK)))


# --- key ------------------------------------------------------------------------------------------------------

# Krumhansl & Kessler's probe-tone profiles (1982), tonic first.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")


@dataclass(frozen=True)
class Key:
    """A tonic pitch class (0 = C) and a mode; `fifths` is its key signature (sharps > 0, flats < 0)."""

    tonic: int
    minor: bool

    @property
    def fifths(self) -> int:
        major_tonic = (self.tonic + 3) % 12 if self.minor else self.tonic  # a minor key shares its relative's
        sharps = (major_tonic * 7) % 12  # steps round the circle of fifths from C
        return sharps - 12 if sharps > 6 else sharps  # F# major (6) and Gb major (-6) are one signature

    def __str__(self) -> str:
        return f"{PITCH_NAMES[self.tonic]} {'minor' if self.minor else 'major'}"


def pitch_class_weights(perf: Performance) -> np.ndarray:
    """(12,) seconds each pitch class sounds."""
    return np.bincount(perf.pitch.astype(np.int64) % 12, weights=perf.offset - perf.onset, minlength=12)


def estimate_key(perf: Performance) -> Key | None:
    """Krumhansl-Schmuckler: the key whose profile correlates best with the duration-weighted pitch classes;
    None for a stretch with no notes or with all twelve pitch classes sounding equally long (no key to tell)."""
    weights = pitch_class_weights(perf)
    if weights.sum() <= 0 or np.ptp(weights) == 0:
        return None
    best, best_score = None, -np.inf
    for minor, profile in ((False, MAJOR_PROFILE), (True, MINOR_PROFILE)):
        for tonic in range(12):
            score = float(np.corrcoef(weights, np.roll(profile, tonic))[0, 1])
            if score > best_score:
                best, best_score = Key(tonic, minor), score
    return best


def closely_related(a: Key | None, b: Key | None) -> bool:
    """Same tonic (C major / C minor) or key signatures at most one accidental apart (C major, G major, F major,
    A minor, E minor, D minor are all close to C major). A missing key is related to nothing."""
    if a is None or b is None:
        return False
    if a.tonic == b.tonic:
        return True
    apart = abs(a.fifths - b.fifths) % 12
    return min(apart, 12 - apart) <= 1
