"""The primer's pulse, as a soft pull on when a continuation's notes start.

A left-to-right model continuing a pianist loses the beat: bench/continuation.py measured the onset regularity of
the DSMR default's continuations (autocorrelation of the onset train at the primer's beat period) at 0.10 where the
pianists' own next 30 s have 0.235, and issue #17 asks for 0.15 at least. The model keeps the primer's texture and
key; its time steps drift off the grid a bar or two after the cut. So the primer's pulse becomes a prior on the
TimeShift ids, as the harmony pull (core/harmony.py) is on the keys: the beat period of the primer's last
PULSE_SECONDS (`musicstats.beat_period`, the benchmark's own definition), and where in that beat the primer's onsets
fall (a histogram of onset phases, recent beats weighing more, each onset a bump of PHASE_SPREAD seconds). Each
TimeShift id's logit gets `weight` x log(share of the phase it lands on / largest share), renormalised so the shifts
together stay as likely as the model made them: the pull chooses when the next note comes, never whether time moves
on (a chord's notes at one instant are untouched). Smoothed, so an off-beat landing stays possible, only less
likely: a rubato, a syncopation, a grace note are still there to draw.
"""

from __future__ import annotations

import numpy as np
import torch

from core import musicstats
from core.codecs import Codec
from core.errors import RecitalError
from core.harmony import check_pull_weight, pulled
from core.models.interface import DENOISE
from core.tokenizer import TICK_SECONDS

PULSE_SECONDS = 20.0  # the primer's last this long sets the beat and its phases
HALF_LIFE = 5.0  # seconds: an onset this much older than the primer's end counts half (the latest beats set the phase)
PHASE_SPREAD = 0.02  # seconds: each onset a Gaussian bump this wide on the beat's circle (a pianist's timing spread)
SMOOTHING = 0.05  # this share of the weight spread over every phase: none is ever ruled out
LEFT_TO_RIGHT_WEIGHT = 2.0  # the pull a left-to-right continuation gets unless told otherwise (see `default_weight`)


class PulseError(RecitalError):
    """A pulse weight that is not a number >= 0."""


def check_weight(weight: float) -> None:
    check_pull_weight(weight, "pulse", PulseError)


def phase_shares(onset_ticks: np.ndarray, weights: np.ndarray, period_ticks: int) -> np.ndarray | None:
    """(period_ticks,) the share of the onsets' weight at each phase of the beat (tick mod period), each onset a
    circular Gaussian of PHASE_SPREAD, smoothed by SMOOTHING; None without onsets."""
    if not len(onset_ticks) or float(np.sum(weights)) <= 0:
        return None
    counts = np.bincount(np.asarray(onset_ticks, dtype=np.int64) % period_ticks, weights=weights,
                         minlength=period_ticks)
    spread = PHASE_SPREAD / TICK_SECONDS
    offsets = np.arange(period_ticks)
    distance = np.minimum(offsets, period_ticks - offsets)  # circular, in ticks
    bump = np.exp(-0.5 * (distance / spread) ** 2)
    # circular convolution of the counts with the bump, by the FFT (period_ticks <= 150)
    density = np.real(np.fft.ifft(np.fft.fft(counts) * np.fft.fft(bump)))
    density = np.maximum(density, 0.0)
    shares = density / density.sum()
    return (1 - SMOOTHING) * shares + SMOOTHING / period_ticks


class PrimerPulse:
    """The primer's beat and where its onsets fall in it, as one pull on every lane's TimeShift ids (module
    docstring), each lane's clock followed id by id. No primer, none sounding in its last PULSE_SECONDS, or no beat
    to tell there: no pull (a new piece has no pulse to keep)."""

    def __init__(self, codec: Codec, primer_ids: np.ndarray, batch: int, weight: float = LEFT_TO_RIGHT_WEIGHT):
        check_weight(weight)
        self.codec = codec
        self.shifts = slice(codec.TIME_SHIFT, codec.TIME_SHIFT + codec.MAX_SHIFT_TICKS)
        # (period, shifts): the pull on each TimeShift from each phase a lane may stand on; None: no pull
        self.from_phase: torch.Tensor | None = None
        end = codec.ids_seconds(primer_ids)
        self.tick = np.full(batch, int(round(end / TICK_SECONDS)), dtype=np.int64)  # (B,) each lane's clock
        if weight == 0 or end <= 0:
            return
        primer = codec.decode(primer_ids)
        start = max(0.0, end - PULSE_SECONDS)
        period = musicstats.beat_period(primer, start, end)
        if period is None:
            return
        self.period = int(round(period / TICK_SECONDS))
        recent = primer.onset >= start
        ticks = np.unique(np.round(primer.onset[recent] / TICK_SECONDS).astype(np.int64))  # a chord is one onset
        ages = (self.tick[0] - ticks) * TICK_SECONDS
        shares = phase_shares(ticks, 0.5 ** (ages / HALF_LIFE), self.period)
        if shares is not None:
            by_phase = weight * np.log(shares / shares.max())  # (period,)
            landing = (np.arange(self.period)[:, None] + np.arange(1, codec.MAX_SHIFT_TICKS + 1)) % self.period
            self.from_phase = torch.from_numpy(by_phase[landing]).float()  # made once, indexed at every step

    @property
    def active(self) -> bool:
        return self.from_phase is not None

    def pull(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) of the lanes' next ids, their TimeShifts pulled towards the primer's phases (`pulled`:
        when the next note comes, never whether time moves on)."""
        if self.from_phase is None:
            return logits
        return pulled(logits, self.from_phase[torch.from_numpy(self.tick % self.period)], self.shifts)

    def read(self, tokens: np.ndarray) -> None:
        """Follow one id per lane (B,)."""
        self.tick += self.codec.shift_ticks(np.asarray(tokens, dtype=np.int64)).astype(np.int64)


def default_weight(model) -> float:
    """The pull a generation gets unless told otherwise: LEFT_TO_RIGHT_WEIGHT for a left-to-right model continuing
    a primer; none for a denoiser (its TimeShifts are unmasked in any order, so where one lands is not known when
    it is drawn).

    bench/continuation.py, the notes DSMR default (the weights shipped before 2026-12-03's evening) adapting to the
    ten MAESTRO primers (3 seeds, with the key pull and the density ceiling at 3x), weight 0 / 1 / 2 / 3: onset
    regularity 0.102 / 0.129 / 0.252 / 0.264 (the pianists 0.235, the aim 0.15), notes/s 10.59 / 10.80 / 10.49 /
    12.01 (9.46; 3 leaves the 25% band), polyphony 3.77 / 3.64 / 3.85 / 4.17 (3.76), pitch range 51.5 / 49.4 / 52.9
    / 53.6 (54.2), key 29 / 29 / 29 / 30 of 30, re-strikes 0.17 / 0.23 / 0.23 / 0.07 per 30 s, held > 4 s 0.30 /
    0.13 / 0.50 / 0.63. Without adapting, 0 -> 2: regularity 0.067 -> 0.160, notes/s 9.50 -> 10.44, polyphony 3.78
    -> 4.20, range 44.2 -> 47.6, key 27 -> 28. The PerceiverS default adapting, 0 -> 2: regularity 0.139 -> 0.283,
    re-strikes 5.27 -> 0.33 (all of them in one primer's lanes, whose repeated notes it kept re-striking), polyphony
    3.00 -> 3.65, notes/s 10.67 -> 11.22, range 53.1 -> 54.3, key 26 -> 29 of 30."""
    return 0.0 if getattr(model, "family", None) == DENOISE else LEFT_TO_RIGHT_WEIGHT
