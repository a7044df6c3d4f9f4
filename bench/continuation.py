"""What a composer hears (issue #17): each shipped model continues real primers and writes new pieces, measured
beside the real music.

    python -m bench.continuation                      # 10 MAESTRO pieces, 3 seeds, both shipped models
    python -m bench.continuation --quick              # 2 pieces, 1 seed, short windows
    python -m bench.continuation --pieces 4 --seeds 2 --models default --json out.json --render /tmp/continuation
    python -m bench.continuation --controls --pieces 4 --seeds 2   # only the controls table (issue #19)
    python -m bench.continuation --new-only --variations 20        # only new pieces (issue #18's 20-piece MGEval)
    python -m bench.continuation --models default --adapt on --max-density primer,0   # the ceiling vs none

Continuations. Each performance of ../shared/midi/maestro (never trained on) is cut at the codec's 10 ms grid:
the primer is every note that starts before 20 s, a note still sounding at 20 s ended there (a composer's file
cut at 20 s holds ended notes, and `recital continue` reads such a file); the truth is every note that starts
in [20 s, 50 s), ended at 50 s at the latest. The model reads the primer and writes 30 s, 3 seeds as 3 lanes of one
batch, with `recital generate`'s defaults (top-p 0.95, --max-note 8 s, int8 step weights, the model's budget per
lane, the density ceiling from the primer: `--max-density primer,0` sets it beside none). Bits per second: the
model reads primer + truth in one pass and the truth's ids are scored, -sum log2 p / 30 s (the primer's ids are
context only; bits per second compare two codecs, perplexity cannot). The row under it scores the same logits
with the column's soft pulls (the key and beat pulls `recital continue` draws with): what the pulls cost or give the
pianist's notes.

Each model reads and writes its own codec (core/codecs.py): its primer and truth are encoded with it, and its
continuations decoded with it, so `--models default,PATH_TO_A_NOTES_MODEL` sets a "performance" model beside a
"notes" one in one table. A notes model chooses each note's length where it starts, so --max-note never cuts one
afterwards: its "cut" cell is "-", and the row "notes at the longest duration bin" counts its notes that took the
longest length --max-note allows (8 s) instead (shown only when a notes model is in the table).

New pieces. `recital generate --seconds 60 --variations 8`: 8 lanes from nothing, measured beside seconds 60-120
of the same MAESTRO pieces, with MGEval's mean overlap (core.metrics, as `recital eval`) against the pieces'
first 60 s (lengths matched: note counts depend on length); seconds 60-120 against the first 60 s is the ceiling.

Primer adaptation (`--adapt on`): the model adapts a copy of itself to each primer (core/adapt.py, `recital
continue`'s default settings) before continuing it and before scoring the truth; new pieces have no primer, so
an adapted configuration writes none. The table's adapt row is its mean seconds before the first note.
Controls (`--controls` for this table alone; `--quick` adds it): each model continues each primer under the
composer's limits (core/constraints.py, as `recital continue --key primer --range C3-C6 --velocity 40-90
--max-polyphony 4`; a primer with no key to tell is locked to C major), and every new note is checked against
each limit (pitch class in the scale, pitch in the range, velocity in the range, no more than 4 notes sounding at
its onset, the primer's included); then under each density alone (2, 6 and 12 notes/s), whose notes/s reached
are set beside the ones asked (aims of issue #19: 100% obeyed, notes/s within 20%).

The "aim" column prints each target of issue #17, so a run shows where it stands. No asserts: a shared machine.
Statistics: core/musicstats.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.data import SHARED_MIDI, report_errors, require_midi
from core import musicstats as ms
from core.errors import RecitalError
from core.harmony import HARMONY_WEIGHT, LEFT_TO_RIGHT_WEIGHT
from core.midi import Performance
from core.notecodec import FROM_PRIMER
from core.pulse import LEFT_TO_RIGHT_WEIGHT as PULSE_WEIGHT

MAESTRO = SHARED_MIDI / "maestro"
SHIPPED = ("default", "default-perceivers")
SOUNDFONT = Path("/usr/share/sounds/sf2/TimGM6mb.sf2")
TOP_P = 0.95  # `recital generate`'s default sampling: temperature 1, nucleus 0.95
TOKENS_PER_SECOND_LIMIT = 150  # `recital generate`'s token cap per second of music asked
MAX_NOTE = 8.0  # `recital generate --max-note`'s default (core.generate.MAX_NOTE_SECONDS)
# The shipped default's bits per second of the truth given the primer, measured by this file on the 10 MAESTRO
# pieces when it was written (PerceiverS: 182.9): the aim is 30% below it, fixed so later runs show progress.
BASELINE_DEFAULT_BITS = 183.0


@dataclass(frozen=True)
class Windows:
    """Seconds of each excerpt: primer [0, primer), truth [primer, primer + truth); new pieces of `new` s."""

    primer: float = 20.0
    truth: float = 30.0
    new: float = 60.0
    variations: int = 8


QUICK = Windows(primer=10.0, truth=10.0, new=20.0, variations=2)


@dataclass(frozen=True)
class Configuration:
    """One column: a model, whether it adapts to the primer first, how hard its keys are pulled towards the
    harmony (core/harmony.py: the primer's, or a denoiser's music behind each window; 0: not at all; None: the
    model's default, as `recital continue` has it), the density ceiling a lane that runs away is steered
    under (core/session.py `density_ceiling`; FROM_PRIMER, the default: `runaway_ceiling` of the primer's
    notes/s; 0: none), how hard its time steps are pulled towards the primer's beat (core/pulse.py; None: the
    model's default), and the share of the piece's memory in its predictions (core/contextcache.py, core/motif.py;
    None: the model's default)."""

    model: str
    adapt: bool = False
    harmony: float | None = None
    max_density: float | str = FROM_PRIMER
    pulse: float | None = None
    motifs: float | None = None

    @property
    def label(self) -> str:
        return (Path(self.model).name + (" +adapt" if self.adapt else "")
                + (f" +harmony {self.harmony:g}" if self.harmony is not None else "")
                + (f" max-density {self.max_density:g}" if self.max_density != FROM_PRIMER else "")
                + (f" +pulse {self.pulse:g}" if self.pulse is not None else "")
                + (f" +motifs {self.motifs:g}" if self.motifs is not None else ""))


@dataclass
class Excerpt:
    """A primer and what the pianist played next, as notes and as one codec's ids."""

    name: str
    primer: Performance
    truth: Performance
    primer_ids: np.ndarray  # BOS first, no EOS
    truth_ids: np.ndarray  # the ids after the primer's in the encoding of primer + truth
    start: float  # seconds where the primer's ids end (the truth window starts at windows.primer)
    codec: str = "performance"  # whose ids these are (core.codecs)

    def coded(self, codec) -> Excerpt:
        """The same excerpt in `codec`'s ids (itself when they are already), as a model of that codec reads it."""
        if codec.NAME == self.codec:
            return self
        return encoded(self.name, self.primer, self.truth, codec)


@dataclass
class Column:
    """What one configuration (or the truth) measured: one dict of statistics per continuation or piece."""

    label: str
    codec: str | None = None  # the model's codec (None: the truth or the ceiling)
    continuations: list[dict] = field(default_factory=list)
    bits_per_second: list[float] = field(default_factory=list)
    remembered_bits_per_second: list[float] = field(default_factory=list)  # with the memory of the piece mixed in
    pulled_bits_per_second: list[float] = field(default_factory=list)  # and under the continuation's soft pulls
    kind_bits: list[dict[str, float]] = field(default_factory=list)  # bits_per_second by the kind of id predicted
    pieces: list[dict] = field(default_factory=list)
    mgeval: float | None = None
    seconds: float = 0.0  # wall time spent
    adapt_seconds: list[float] = field(default_factory=list)  # adapting to each primer, when adapted


# --- excerpts -------------------------------------------------------------------------------------------------

def cut(name: str, perf: Performance, windows: Windows, codec=None) -> Excerpt:
    """Primer = notes starting before `windows.primer` on the 10 ms grid, ended there at the latest; truth =
    notes starting from there to the window's end, ended at its end. Cutting on the grid keeps the primer's ids
    a prefix of the ids of primer + truth (in either codec), so the truth is scored exactly as the model would
    continue it. The ids are `codec`'s (None: the event codec's)."""
    from core.tokenizer import TICK_SECONDS

    boundary, end = windows.primer, windows.primer + windows.truth
    early = perf.onset < boundary - TICK_SECONDS / 2  # rounds to a tick before the boundary's
    late = ~early & (perf.onset < end - TICK_SECONDS / 2)
    primer = Performance.from_notes(perf.onset[early], np.minimum(perf.offset[early], boundary),
                                    perf.pitch[early], perf.velocity[early])
    truth = Performance.from_notes(perf.onset[late], np.minimum(perf.offset[late], end),
                                   perf.pitch[late], perf.velocity[late])
    return encoded(name, primer, truth, codec)


def encoded(name: str, primer: Performance, truth: Performance, codec=None) -> Excerpt:
    """The excerpt of `primer` then `truth` in `codec`'s ids (None: the event codec's). Its start is where the
    primer's clock ends: the last release for the event codec, the last onset for the notes codec (a note's
    length is stated at its onset), which is where a model of that codec continues from."""
    from core import tokenizer

    codec = codec or tokenizer
    primer_ids = codec.encode(primer, eos=False).astype(np.int64)
    both = codec.encode(Performance.concat(primer, truth), eos=False).astype(np.int64)
    if not np.array_equal(both[:len(primer_ids)], primer_ids):
        raise RecitalError(f"{name}: the primer's {codec.NAME} ids are not a prefix of primer + truth's")
    return Excerpt(name, primer, truth, primer_ids, both[len(primer_ids):], codec.ids_seconds(primer_ids),
                   codec.NAME)


def read_excerpts(folder: Path, count: int, windows: Windows) -> tuple[list[Excerpt], list[Performance]]:
    """The first `count` pieces of `folder` (sorted) cut into excerpts, and the pieces themselves."""
    from core.midi import read_performance

    excerpts, pieces = [], []
    for path in sorted(folder.glob("*.mid"))[:count]:
        perf = read_performance(path)
        excerpt = cut(path.stem, perf, windows)
        if not len(excerpt.primer) or not len(excerpt.truth):
            print(f"note: {path.name} skipped: no notes in its primer or its truth window", file=sys.stderr)
            continue
        excerpts.append(excerpt)
        pieces.append(perf)
    if len(excerpts) < 2:
        raise RecitalError(f"{folder}: {len(excerpts)} usable pieces; the benchmark needs at least 2")
    return excerpts, pieces


# --- the model side -------------------------------------------------------------------------------------------

def write_lanes(model, primer_ids: np.ndarray | None, seconds: float, lanes: int, seed: int,
                harmony: float | None = None, max_density: float | str | None = FROM_PRIMER,
                pulse: float | None = None, motifs: float | None = None) -> list[np.ndarray]:
    """`lanes` variations of `seconds` after the primer (None: from nothing), one batch, as `recital continue` and
    `recital generate` write them (core/session.py): their sampling, token cap, --max-note, --min-repeat,
    --harmony, --max-density, --pulse, --motifs and the model's own budget for each lane; a denoiser fills windows
    after the primer (core/denoising.py)."""
    from core.generate import SamplingConfig
    from core.session import GenerationSession

    session = GenerationSession(model, primer_ids, sampling=SamplingConfig(top_p=TOP_P), seconds=seconds,
                                variations=lanes, seed=seed, max_note=MAX_NOTE, harmony=harmony,
                                max_density=max_density, pulse=pulse, motifs=motifs)
    session.run()
    return [np.asarray(ids, dtype=np.int64) for ids in session.lanes]


def denoises(model) -> bool:
    """A denoiser (SMDIM) writes by unmasking windows: it has no left-to-right probability of the truth."""
    from core.models.interface import DENOISE

    return getattr(model, "family", None) == DENOISE


def new_notes(primer_ids: np.ndarray, lanes: list[np.ndarray], start: float, codec=None) -> list[Performance]:
    """Each lane's notes after the primer, times kept absolute, decoded by `codec` (None: the event codec):
    the event codec's with an onset at `start` or later; the notes codec's those its ids start after the primer
    (a new note may start at the primer's last onset, `start`, beside the primer's own notes there)."""
    from core import notecodec, tokenizer

    codec = codec or tokenizer
    if codec.NAME == notecodec.NAME:
        return codec.decode_continuations(primer_ids, lanes, with_primer=False)
    pieces = codec.decode_continuations(primer_ids, lanes)
    return [piece.slice_time(start, np.inf) for piece in pieces]


@dataclass(frozen=True)
class TruthBits:
    """Bits per second of the truth given the primer: as the model predicts it, split by the kind of id predicted
    (bench.finetune's KINDS of its codec; the kinds sum to `model`), with the piece's memory mixed in, and under the
    continuation's soft pulls as well."""

    model: float
    remembered: float
    pulled: float
    by_kind: dict[str, float]


def truth_bits_per_second(model, excerpt: Excerpt, seconds: float) -> float:
    """Bits per second of the truth given the primer as the model predicts it (`truth_bits`, no pulls)."""
    return truth_bits(model, excerpt, seconds).model


def truth_bits(model, excerpt: Excerpt, seconds: float, harmony: float = 0.0, pulse: float = 0.0,
               motifs: float = 0.0) -> TruthBits:
    """-sum log2 p(truth id | primer and the truth before it) / seconds, as the model predicts, with its memory of
    the piece (`motifs`: core/contextcache.py `ContextCache`, then core/motif.py `MotifMemory`, each holding primer
    and truth so far; 0: none), and as
    `recital continue` draws from it: those logits with the soft pulls of a continuation, its keys towards the
    primer's pitch classes (`harmony`, core/harmony.py `PrimerHarmony`) and its time steps towards the primer's beat
    (`pulse`, core/pulse.py `PrimerPulse`, the clock followed through the truth's ids); 0: no pull, the two equal.
    The generator's hard rules (grammar, --max-note, the density ceiling) are left out: they may rule out what the
    pianist played. The model reads primer + truth in chunks (core.metrics' SCORE_CHUNK, under the model's own
    budget), in its own codec's ids; the primer's ids are context only."""
    import torch

    from bench.finetune import by_kind
    from core.budget import default_budget
    from core.codecs import codec_of
    from core.contextcache import ContextCache
    from core.harmony import PrimerHarmony, pulled
    from core.metrics import chunk_logits
    from core.motif import MotifMemory
    from core.pulse import PrimerPulse

    codec = codec_of(model)
    excerpt = excerpt.coded(codec)
    ids = np.concatenate([excerpt.primer_ids, excerpt.truth_ids])
    first = len(excerpt.primer_ids) - 1  # position t predicts id t + 1: the truth's first id at t = first
    tokens = torch.as_tensor(ids)
    state = model.new_state(model.plan(default_budget(model, 1), 1), 1)
    keys = PrimerHarmony(codec, excerpt.primer_ids, harmony) if harmony else None
    beat = PrimerPulse(codec, excerpt.primer_ids, 1, pulse)
    clock = np.cumsum(codec.shift_ticks(ids))  # ticks after each id: the beat's clock where it predicts the next
    memory = MotifMemory(codec, ids[:first + 1], 1, motifs)
    cache = ContextCache(model, codec, 1, motifs)
    nats: list[np.ndarray] = []  # (truth ids,) each id's nats, as the model predicts it
    remembered_nats = pulled_nats = 0.0
    with torch.inference_mode():
        for start, logits in chunk_logits(model, ids, state, torch.device("cpu")):
            end = start + len(logits)
            primer_rows = logits[:max(first - start, 0)]  # the primer's, remembered as `recital continue` does
            cache.remember(primer_rows.numpy(), ids[start + 1:start + 1 + len(primer_rows)])
            logits = logits[max(first - start, 0):]
            if not len(logits):
                continue
            targets = tokens[max(first, start) + 1:end + 1, None]
            nats.append(-torch.log_softmax(logits, -1).gather(1, targets)[:, 0].double().numpy())
            if memory.active or cache.active:  # each position mixed with what the memories hold there, then
                rows = []                        # the id read into them
                for row, target in zip(logits, targets[:, 0].numpy(), strict=True):
                    rows.append(memory.mix(cache.mix(row[None]))[0])
                    memory.read(np.array([target]))
                    cache.read(np.array([target]))
                logits = torch.stack(rows)
            remembered_nats -= float(torch.log_softmax(logits, -1).gather(1, targets).sum())
            if keys is not None:
                logits = keys.pull(logits)
            if beat.active:
                phases = torch.from_numpy(clock[max(first, start):end] % beat.period)
                logits = pulled(logits, beat.from_phase[phases], beat.shifts)
            pulled_nats -= float(torch.log_softmax(logits, -1).gather(1, targets).sum())
    truth = ids[first + 1:]
    each = np.concatenate(nats) if nats else np.zeros(0)
    per_second = 1 / np.log(2) / seconds
    kinds = {kind: float(share * mean * len(truth) * per_second)
             for kind, (share, mean) in by_kind(truth, each, codec.NAME).items()}
    return TruthBits(float(each.sum() * per_second), float(remembered_nats * per_second),
                     float(pulled_nats * per_second), kinds)


# --- statistics -----------------------------------------------------------------------------------------------

def longest_bin_seconds(limit: float = MAX_NOTE) -> float:
    """The longest note length the notes codec can choose under `--max-note limit` (its last bin within it)."""
    from core import notecodec

    lengths = notecodec.BIN_TICKS * notecodec.TICK_SECONDS
    return float(lengths[lengths <= limit + 1e-9].max(initial=lengths[0]))


def continuation_stats(notes: Performance, start: float, seconds: float, period: float | None,
                       key: ms.Key | None) -> dict:
    """The continuation table's statistics of one stretch [start, start + seconds)."""
    from core.metrics import repeated_ngrams_per_minute

    found = ms.estimate_key(notes)
    return {"held_long": ms.held_long(notes), "cut_at_limit": ms.cut_at_limit(notes, MAX_NOTE),
            "at_longest_bin": ms.lasting_at_least(notes, longest_bin_seconds()),
            "restrikes": ms.restrikes(notes), "polyphony": ms.polyphony(notes, start, start + seconds),
            "notes_per_second": ms.notes_per_second(notes, seconds), "pitch_range": ms.pitch_range(notes),
            "regularity": ms.onset_regularity(notes, period, start, start + seconds),
            "key": None if found is None else str(found), "key_related": ms.closely_related(key, found),
            "ngrams_per_minute": repeated_ngrams_per_minute(notes)}


def piece_stats(notes: Performance, seconds: float) -> dict:
    """The new-pieces table's statistics of one piece of `seconds` from its time 0."""
    from core.metrics import repeated_ngrams_per_minute

    mean, std = ms.velocity_stats(notes)
    return {"pitch_range": ms.pitch_range(notes), "below_c4": ms.share_below(notes),
            "polyphony": ms.polyphony(notes, 0.0, seconds), "notes_per_second": ms.notes_per_second(notes, seconds),
            "velocity_mean": mean, "velocity_std": std, "ngrams_per_minute": repeated_ngrams_per_minute(notes)}


def primer_context(excerpt: Excerpt, windows: Windows) -> tuple[float | None, ms.Key | None]:
    """The primer's beat period and key, which the truth and every continuation are measured against."""
    return ms.beat_period(excerpt.primer, 0.0, windows.primer), ms.estimate_key(excerpt.primer)


def measure_truth(excerpts: list[Excerpt], windows: Windows) -> Column:
    column = Column("truth")
    for excerpt in excerpts:
        period, key = primer_context(excerpt, windows)
        column.continuations.append(continuation_stats(excerpt.truth, windows.primer, windows.truth, period, key))
    return column


def pull_weights(model, config: Configuration, primer_ids: np.ndarray) -> tuple[float, float, float]:
    """The key and beat pulls and the motif memory's share a configuration continues `primer_ids` with (None: the
    model's own, as `recital continue`)."""
    from core.harmony import default_weight as key_weight
    from core.motif import default_weight as motif_weight
    from core.pulse import default_weight as beat_weight

    return (key_weight(model) if config.harmony is None else config.harmony,
            beat_weight(model) if config.pulse is None else config.pulse,
            motif_weight(model, primer_ids) if config.motifs is None else config.motifs)


def measure_continuations(model, config: Configuration, excerpts: list[Excerpt], windows: Windows,
                          seeds: int) -> Column:
    """Each primer continued `seeds` times and the truth scored, in the model's own codec."""
    from core.codecs import codec_of

    codec = codec_of(model)
    column = Column(config.label, codec.NAME)
    started = time.perf_counter()
    for index, excerpt in enumerate(excerpts):
        period, key = primer_context(excerpt, windows)
        excerpt = excerpt.coded(codec)
        used = adapted(model, config, excerpt, column)
        lanes = write_lanes(used, excerpt.primer_ids, windows.truth, seeds, seed=index, harmony=config.harmony,
                            max_density=config.max_density, pulse=config.pulse, motifs=config.motifs)
        for notes in new_notes(excerpt.primer_ids, lanes, excerpt.start, codec):
            column.continuations.append(continuation_stats(notes, excerpt.start, windows.truth, period, key))
        if not denoises(used):  # a denoiser's bound (its ELBO) is in its card, not comparable id by id
            bits = truth_bits(used, excerpt, windows.truth, *pull_weights(used, config, excerpt.primer_ids))
            column.bits_per_second.append(bits.model)
            column.remembered_bits_per_second.append(bits.remembered)
            column.pulled_bits_per_second.append(bits.pulled)
            column.kind_bits.append(bits.by_kind)
        print(f"  {config.label}: {excerpt.name} continued ({seeds} lanes) and scored, "
              f"{time.perf_counter() - started:.0f} s so far", file=sys.stderr, flush=True)
    column.seconds = time.perf_counter() - started
    return column


def adapted(model, config: Configuration, excerpt: Excerpt, column: Column | None = None):
    """The model a configuration continues `excerpt` with: adapted to its primer (its seconds kept in
    `column.adapt_seconds`) or as it is."""
    if not config.adapt:
        return model
    from core.adapt import AdaptSettings, adapt
    from core.codecs import codec_of

    settings = AdaptSettings()
    done = adapt(model, excerpt.coded(codec_of(model)).primer_ids, steps=settings.steps, lr=settings.lr, parameters=settings.parameters,
                 held_out=settings.held_out)
    if column is not None:
        column.adapt_seconds.append(done.seconds)
    return done.model


def measure_new_pieces(model, label: str, reference: list[Performance], windows: Windows,
                       harmony: float | None = None, motifs: float | None = None) -> Column:
    from core.codecs import codec_of
    from core.metrics import compare_sets
    from core.tokenizer import BOS

    codec = codec_of(model)
    column = Column(label, codec.NAME)
    started = time.perf_counter()
    lanes = write_lanes(model, None, windows.new, windows.variations, seed=0, harmony=harmony, motifs=motifs)
    pieces = new_notes(np.array([BOS]), lanes, 0.0, codec)
    column.pieces = [piece_stats(piece, windows.new) for piece in pieces]
    column.mgeval = compare_sets(pieces, reference).mean_oa
    column.seconds = time.perf_counter() - started
    print(f"  {label}: {windows.variations} new pieces written, {column.seconds:.0f} s", file=sys.stderr, flush=True)
    return column


def measure_ceiling(pieces: list[Performance], reference: list[Performance], windows: Windows) -> Column:
    """The same performances' next stretch (seconds new..2 new, moved to 0) against their opening."""
    from core.metrics import compare_sets

    column = Column(f"MAESTRO {windows.new:g}-{2 * windows.new:g} s")
    later = [perf.slice_time(windows.new, 2 * windows.new).shifted(-windows.new) for perf in pieces]
    column.pieces = [piece_stats(piece, windows.new) for piece in later]
    column.mgeval = compare_sets(later, reference).mean_oa
    return column


# --- controls (issue #19) -------------------------------------------------------------------------------------

CONTROL_RANGE = "C3-C6"
CONTROL_VELOCITY = "40-90"
CONTROL_POLYPHONY = 4
CONTROL_DENSITIES = (2.0, 6.0, 12.0)
DENSITY_AIM = 0.20  # notes/s reached within 20% of the density asked
FALLBACK_KEY = "C major"  # a primer with no key to tell is locked to this one


@dataclass
class Controls:
    """What one model wrote under the composer's limits: per limit, notes obeying it and notes written; per
    density asked, the notes/s each lane reached."""

    label: str
    obeyed: dict[str, list[int]] = field(default_factory=dict)  # limit -> [obeying, written]
    reached: dict[float, list[float]] = field(default_factory=dict)  # density asked -> notes/s per lane
    keys: list[str] = field(default_factory=list)  # the key each primer was locked to
    seconds: float = 0.0


def constrained_parts(model, excerpt: Excerpt, constraints, seconds: float, lanes: int, seed: int):
    """`lanes` continuations of the excerpt's primer under `constraints`, as `recital continue` writes them (its
    sampling, --max-note, the model's budget) -> (the session, each lane's new notes)."""
    from core.codecs import codec_of
    from core.generate import SamplingConfig
    from core.session import GenerationSession

    session = GenerationSession(model, excerpt.coded(codec_of(model)).primer_ids, sampling=SamplingConfig(top_p=TOP_P), seconds=seconds,
                                variations=lanes, seed=seed, max_note=MAX_NOTE, constraints=constraints)
    session.run()
    return session, session.new_parts()


def polyphony_at_onsets(before: Performance, new: Performance) -> np.ndarray:
    """Notes sounding at each new note's onset, itself and the primer's notes still sounding included. The notes
    are as decoded, as a composer gets them: a note started and ended on one tick (or struck twice on one tick)
    lasts that tick, the codec's shortest, and counts."""
    onset = np.concatenate([before.onset, new.onset])
    offset = np.concatenate([before.offset, new.offset])
    at = new.onset[:, None] + 1e-9  # a note ending on the tick another starts is not sounding with it
    return ((onset[None, :] <= at) & (offset[None, :] > at)).sum(axis=1)


def _count(controls: Controls, limit: str, obeys: np.ndarray) -> None:
    tally = controls.obeyed.setdefault(limit, [0, 0])
    tally[0] += int(obeys.sum())
    tally[1] += len(obeys)


def measure_controls(model, label: str, excerpts: list[Excerpt], windows: Windows, seeds: int) -> Controls:
    """Each primer continued under the four limits together (the primer's key, range, velocity, polyphony;
    every new note checked against each), then under each density alone (notes/s reached per lane)."""
    from core.constraints import ConstraintError, Constraints
    from core.models.interface import DENOISE

    denoises = getattr(model, "family", None) == DENOISE  # a denoiser takes neither density nor polyphony
    controls = Controls(label)
    started = time.perf_counter()
    for index, excerpt in enumerate(excerpts):
        limits = dict(range_=CONTROL_RANGE, velocity=CONTROL_VELOCITY,
                      max_polyphony=None if denoises else CONTROL_POLYPHONY)
        try:
            session, parts = constrained_parts(model, excerpt, Constraints.parse(key="primer", **limits),
                                               windows.truth, seeds, seed=index)
        except ConstraintError:  # no key to tell in this primer
            session, parts = constrained_parts(model, excerpt, Constraints.parse(key=FALLBACK_KEY, **limits),
                                               windows.truth, seeds, seed=index)
        asked = session.constraints
        controls.keys.append(asked.key)
        scale = sorted(asked.pitch_classes)
        before = session.primer_piece()
        for notes in parts:
            _count(controls, "key", np.isin(notes.pitch % 12, scale))
            _count(controls, "range", (notes.pitch >= asked.low) & (notes.pitch <= asked.high))
            _count(controls, "velocity", (notes.velocity >= asked.velocity_low)
                   & (notes.velocity <= asked.velocity_high))
            if not denoises:
                _count(controls, "polyphony", polyphony_at_onsets(before, notes) <= CONTROL_POLYPHONY)
        for density in () if denoises else CONTROL_DENSITIES:
            _, parts = constrained_parts(model, excerpt, Constraints(density=density), windows.truth, seeds,
                                         seed=index)
            controls.reached.setdefault(density, []).extend(len(notes) / windows.truth for notes in parts)
        print(f"  {label}: {excerpt.name} continued under the controls ({seeds} lanes), "
              f"{time.perf_counter() - started:.0f} s so far", file=sys.stderr, flush=True)
    controls.seconds = time.perf_counter() - started
    return controls


def controls_table(columns: list[Controls]) -> str:
    """Rows: each limit's share of the new notes obeying it, then notes/s reached at each density asked (with
    its relative error); columns: each model, the aim."""
    def share(column: Controls, limit: str) -> str:
        obeying, written = column.obeyed.get(limit, (0, 0))
        return f"{100.0 * obeying / written:.1f}% of {written}" if written else "-"

    rows: list[tuple[str, list[str], str]] = [
        ("pitch class in the primer's key (%)", [share(c, "key") for c in columns], "100%"),
        (f"pitch in {CONTROL_RANGE} (%)", [share(c, "range") for c in columns], "100%"),
        (f"velocity in {CONTROL_VELOCITY} (%)", [share(c, "velocity") for c in columns], "100%"),
        (f"at most {CONTROL_POLYPHONY} sounding at each onset (%)", [share(c, "polyphony") for c in columns],
         "100%")]
    for density in CONTROL_DENSITIES:
        cells = []
        for column in columns:
            lanes = column.reached.get(density)
            if not lanes:
                cells.append("-")
                continue
            reached = float(np.mean(lanes))
            cells.append(f"{reached:.2f} ({100.0 * (reached / density - 1):+.0f}%)")
        rows.append((f"notes/s at density {density:g} (error)", cells,
                     f"{density * (1 - DENSITY_AIM):.1f}-{density * (1 + DENSITY_AIM):.1f}"))
    return _table(["", *(c.label for c in columns), "aim"], rows)


# --- tables ---------------------------------------------------------------------------------------------------

def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([row[key] for row in rows])) if rows else float("nan")


def _aim_within(truth: float, share: float) -> str:
    return f"{truth * (1 - share):.2f}-{truth * (1 + share):.2f}"


def continuation_table(truth: Column, columns: list[Column], windows: Windows) -> str:
    """Rows: the statistics (means per continuation, per piece for the truth); columns: truth, each
    configuration, the aim."""
    per = f"per {windows.truth:g} s"
    restrike_aim = f"< {windows.truth / 30:.2g}"  # issue #17: fewer than 1 per 30 s

    from core import notecodec, tokenizer

    def fmt(value: float, digits: int = 2) -> str:
        return f"{value:.{digits}f}"

    def cells(key: str, digits: int, codec: str | None = None) -> list[str]:
        """The truth's and each column's mean; '-' for a model column of another codec than `codec`."""
        return [fmt(_mean(c.continuations, key), digits) if codec is None or c.codec in (None, codec) else "-"
                for c in [truth, *columns]]

    notes_models = any(c.codec == notecodec.NAME for c in columns)
    rows: list[tuple[str, list[str], str]] = [
        (f"notes held > 4 s ({per})", cells("held_long", 2), f"<= {2 * _mean(truth.continuations, 'held_long'):.2f}"),
        (f"notes cut at the {MAX_NOTE:g} s --max-note ({per})",
         cells("cut_at_limit", 2, tokenizer.NAME if notes_models else None), "0")]
    if notes_models:  # a notes model's length is chosen at the onset: never cut, but it may choose the longest
        rows.append((f"notes at the longest duration bin, {longest_bin_seconds():g} s ({per})",
                     cells("at_longest_bin", 2, notecodec.NAME), "-"))
    for label, key, digits, aim in (
            (f"re-strikes within 120 ms ({per})", "restrikes", 2, restrike_aim),
            ("mean polyphony (notes sounding)", "polyphony", 2,
             _aim_within(_mean(truth.continuations, "polyphony"), 0.25)),
            ("notes/s", "notes_per_second", 2, _aim_within(_mean(truth.continuations, "notes_per_second"), 0.25)),
            ("pitch range (semitones)", "pitch_range", 1, f">= {0.8 * _mean(truth.continuations, 'pitch_range'):.1f}"),
            ("onset regularity at the primer's beat", "regularity", 3, ">= 0.15")):
        rows.append((label, cells(key, digits), aim))
    rows.append(("key = primer's or closely related",
                 [f"{sum(r['key_related'] for r in c.continuations)}/{len(c.continuations)}"
                  for c in [truth, *columns]], ">= 90%"))
    rows.append(("repeated pitch 8-grams per minute (loops)", cells("ngrams_per_minute", 1), "-"))
    default = next((c for c in columns if c.label == "default"), None)
    baseline = BASELINE_DEFAULT_BITS if BASELINE_DEFAULT_BITS is not None else (
        float(np.mean(default.bits_per_second)) if default is not None else None)
    rows.append(("seconds adapting before the first note",
                 ["-"] + [fmt(float(np.mean(c.adapt_seconds))) if c.adapt_seconds else "-" for c in columns], "-"))
    rows.append(("bits/s of the truth given the primer",
                 ["-"] + [fmt(float(np.mean(c.bits_per_second))) if c.bits_per_second else "-" for c in columns],
                 "-" if baseline is None else f"<= {0.7 * baseline:.2f}"))
    kinds = list(dict.fromkeys(kind for c in columns for piece in c.kind_bits for kind in piece))
    for kind in kinds:  # a piece whose truth has no id of a kind spent no bits on it
        rows.append((f"  of which {kind} ids",
                     ["-"] + [fmt(float(np.mean([piece.get(kind, 0.0) for piece in c.kind_bits])))
                              if any(kind in piece for piece in c.kind_bits) else "-" for c in columns], "-"))
    rows.append(("the same with the column's memory of the piece",
                 ["-"] + [fmt(float(np.mean(c.remembered_bits_per_second))) if c.remembered_bits_per_second else "-"
                          for c in columns], "-" if baseline is None else f"<= {0.7 * baseline:.2f}"))
    rows.append(("and under the column's key and beat pulls",
                 ["-"] + [fmt(float(np.mean(c.pulled_bits_per_second))) if c.pulled_bits_per_second else "-"
                          for c in columns], "-"))
    return _table(["", "truth", *(c.label for c in columns), "aim"], rows)


def new_pieces_table(ceiling: Column, columns: list[Column], windows: Windows) -> str:
    def mean(column: Column, key: str, digits: int = 2, scale: float = 1.0) -> str:
        return f"{scale * _mean(column.pieces, key):.{digits}f}"

    everyone = [ceiling, *columns]
    rows = [
        ("median pitch range (semitones)",
         [f"{statistics.median(p['pitch_range'] for p in c.pieces):.1f}" for c in everyone], ">= 36"),
        ("notes below C4 (%)", [mean(c, "below_c4", 1, 100.0) for c in everyone], ">= 20"),
        ("mean polyphony (notes sounding)", [mean(c, "polyphony") for c in everyone], ""),
        ("notes/s", [mean(c, "notes_per_second") for c in everyone], ""),
        ("velocity mean", [mean(c, "velocity_mean", 1) for c in everyone], ""),
        ("velocity std", [mean(c, "velocity_std", 1) for c in everyone], ">= 12"),
        ("repeated pitch 8-grams per minute", [mean(c, "ngrams_per_minute", 1) for c in everyone], ""),
        (f"MGEval mean overlap vs first {windows.new:g} s", [f"{c.mgeval:.3f}" for c in everyone], ">= 0.75"),
    ]
    return _table(["", *(c.label for c in everyone), "aim"], rows)


def _table(header: list[str], rows: list[tuple[str, list[str], str]]) -> str:
    lines = [[header[0], *header[1:]]] + [[label, *values, aim] for label, values, aim in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(line[0].ljust(widths[0]) + "".join(cell.rjust(w + 3) for cell, w in
                                                        zip(line[1:], widths[1:], strict=True))
                     for line in lines)


# --- listening and looking ------------------------------------------------------------------------------------

def piano_roll_png(rolls: list[tuple[Performance, Performance, str]], boundary: float, seconds: float,
                   path: Path) -> None:
    """One panel per (before, after, title): before's notes grey, after's coloured, a red line at `boundary`.
    4 px per pitch from the lowest to the highest note, 20 px per second; written as an RGB PNG (zlib)."""
    from core.midi import atomic_write_bytes

    everything = np.concatenate([np.concatenate([a.pitch, b.pitch]) for a, b, _ in rolls]).astype(int)
    low, high = int(everything.min()) - 2, int(everything.max()) + 2
    px_pitch, px_second, gap = 4, 20, 12
    width, panel = int(seconds * px_second) + 1, (high - low + 1) * px_pitch
    image = np.full((len(rolls) * (panel + gap), width, 3), 255, dtype=np.uint8)
    for index, (before, after, _title) in enumerate(rolls):
        top = index * (panel + gap)
        image[top:top + panel, :, :] = 250
        for octave in range(0, 128, 12):  # a faint line at every C
            if low <= octave <= high:
                y = top + (high - octave) * px_pitch + px_pitch - 1
                image[y, :, :] = 215
        for perf, colour in ((before, (120, 120, 120)), (after, (214, 90, 30) if index else (40, 90, 200))):
            for onset, offset, pitch in zip(perf.onset, perf.offset, perf.pitch.astype(int), strict=True):
                x0, x1 = int(onset * px_second), max(int(offset * px_second), int(onset * px_second) + 1)
                y = top + (high - pitch) * px_pitch
                image[y:y + px_pitch - 1, x0:min(x1, width), :] = colour
        x = int(boundary * px_second)
        image[top:top + panel, x:x + 1, :] = (220, 0, 0)
    raw = b"".join(b"\x00" + row.tobytes() for row in image)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, len(image), 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
    atomic_write_bytes(path, png, what="PNG file")


def render(model, config: Configuration, excerpt: Excerpt, windows: Windows, out: Path) -> list[Path]:
    """The first excerpt continued once more (seed 0, lane 1 of `recital generate`): a WAV of primer +
    continuation and a PNG of primer + truth above primer + continuation."""
    from core.codecs import codec_of
    from core.synth import render_wav

    codec = codec_of(model)
    excerpt = excerpt.coded(codec)
    lanes = write_lanes(adapted(model, config, excerpt), excerpt.primer_ids, windows.truth, 1, seed=0,
                        harmony=config.harmony, max_density=config.max_density, pulse=config.pulse,
                        motifs=config.motifs)
    continuation = new_notes(excerpt.primer_ids, lanes, excerpt.start, codec)[0]
    stem = f"{excerpt.name}-{config.label}"
    wav = render_wav(Performance.concat(excerpt.primer, continuation), out / f"{stem}.wav",
                     soundfont=SOUNDFONT if SOUNDFONT.exists() else None)
    png = out / f"{stem}.png"
    piano_roll_png([(excerpt.primer, excerpt.truth, "truth"), (excerpt.primer, continuation, config.label)],
                   excerpt.start, windows.primer + windows.truth, png)
    return [wav, png]


# --- main -----------------------------------------------------------------------------------------------------

def configurations(models: list[str], adapt: list[bool], harmony: list[float | None],
                   ceilings: list[float | str] = (FROM_PRIMER,), pulses: list[float | None] = (None,),
                   motifs: list[float | None] = (None,)) -> list[Configuration]:
    return [Configuration(model, flag, weight, ceiling, pulse, share) for model in models for flag in adapt
            for weight in harmony for ceiling in ceilings for pulse in pulses for share in motifs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from core.cli.generate import max_density
    from core.constraints import DENSITY_RANGE
    from core.session import RUNAWAY_FACTOR, RUNAWAY_HEADROOM

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--midi", type=Path, default=MAESTRO, help="folder of performances (default: MAESTRO's)")
    parser.add_argument("--pieces", type=int, default=10, metavar="N", help="first N pieces (default 10)")
    parser.add_argument("--seeds", type=int, default=3, metavar="K", help="continuations per primer (default 3)")
    parser.add_argument("--models", default=",".join(SHIPPED), help="model names or folders, comma-separated")
    parser.add_argument("--adapt", default="off,on", help="off, on or off,on: with and without primer adaptation")
    parser.add_argument("--harmony", default="default", metavar="W[,W...]",
                        help="weights of the harmony pull on the keys (core/harmony.py), comma-separated, 'default' "
                             f"for the model's own ({HARMONY_WEIGHT:g} for a denoiser, {LEFT_TO_RIGHT_WEIGHT:g} "
                             "towards the primer's key for the others): a column each (default: default)")
    parser.add_argument("--pulse", default="default", metavar="W[,W...]",
                        help="weights of the pull of the time steps towards the primer's beat (core/pulse.py), "
                             f"comma-separated, 'default' for the model's own ({PULSE_WEIGHT:g} for a left-to-right "
                             "model, none for a denoiser): a column each (default: default)")
    parser.add_argument("--motifs", default="default", metavar="W[,W...]",
                        help="shares of the piece's memory in the model's predictions (core/contextcache.py, "
                             "core/motif.py), 0 to 1, "
                             "comma-separated, 'default' for the model's own: a column each (default: default)")
    parser.add_argument("--max-density", default=FROM_PRIMER, metavar="N[,N...]",
                        help="density ceilings a runaway lane is steered under (core/session.py), comma-separated: "
                             f"'{FROM_PRIMER}' ({RUNAWAY_FACTOR:g}x the primer's notes/s, at most "
                             f"{RUNAWAY_HEADROOM:g} above them, `recital continue`'s default), 0 (none) or notes/s: "
                             "a column each (default: primer)")
    parser.add_argument("--quick", action="store_true", help="2 pieces, 1 seed, 10 s windows, 2 new pieces of 20 s, "
                                                                 "and the controls table")
    parser.add_argument("--controls", action="store_true", help="only the controls table: continuations under a "
                                                                 "key, range, velocity, polyphony and density")
    parser.add_argument("--new-only", action="store_true", help="only the new pieces' table: no continuations")
    parser.add_argument("--windows", type=float, nargs=3, metavar=("PRIMER", "TRUTH", "NEW"),
                        help="seconds of primer, truth and new pieces (default 20 30 60)")
    parser.add_argument("--variations", type=int, metavar="K", help="new pieces per model (default 8)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads (default: core.threads' "
                                                                  "choice for generation, 1)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write every measurement as JSON")
    parser.add_argument("--render", type=Path, metavar="DIR", help="also write a WAV and a piano-roll PNG of "
                                                                   "the first primer's continuation per model")
    args = parser.parse_args(argv)
    if args.quick:
        args.pieces, args.seeds = min(args.pieces, 2), 1
    if args.new_only and args.controls:
        parser.error("--new-only and --controls each ask for one table alone: give one")
    for name in ("pieces", "seeds", "threads", "variations"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1, got {value}")
    flags = {"off": False, "on": True}
    adapt = [part.strip() for part in args.adapt.split(",") if part.strip()]
    if not adapt or any(part not in flags for part in adapt):
        parser.error(f"--adapt takes off, on or off,on; got {args.adapt!r}")
    args.adapt = [flags[part] for part in adapt]
    for name in ("harmony", "pulse", "motifs"):
        text = getattr(args, name)
        try:
            weights = [None if part.strip() == "default" else float(part) for part in text.split(",")
                       if part.strip()]
        except ValueError:
            weights = []
        if not weights or any(not (weight is None or weight >= 0 and math.isfinite(weight)) for weight in weights):
            parser.error(f"--{name} takes weights >= 0 or 'default', comma-separated; got {text!r}")
        if name == "motifs" and any(weight is not None and weight > 1 for weight in weights):
            parser.error(f"--motifs takes shares from 0 to 1 or 'default', comma-separated; got {text!r}")
        setattr(args, name, weights)
    try:  # each as `recital continue --max-density` reads it
        ceilings = [max_density(part) for part in args.max_density.split(",") if part.strip()]
    except argparse.ArgumentTypeError:
        ceilings = []
    if not ceilings:
        parser.error(f"--max-density takes '{FROM_PRIMER}', 0 or notes/s from {DENSITY_RANGE[0]:g} to "
                     f"{DENSITY_RANGE[1]:g}, comma-separated; got {args.max_density!r}")
    args.max_density = ceilings
    args.models = [part.strip() for part in args.models.split(",") if part.strip()]
    if not args.models:
        parser.error("--models names no model")
    windows = QUICK if args.quick else Windows()
    if args.windows is not None:
        if min(args.windows) <= 0:
            parser.error(f"--windows takes three positive numbers of seconds, got {args.windows}")
        windows = Windows(*args.windows, variations=windows.variations)
    if args.variations is not None:
        windows = Windows(windows.primer, windows.truth, windows.new, args.variations)
    args.windows = windows
    return args


def main(argv: list[str] | None = None) -> int:
    return report_errors(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    import torch

    from core.generate import use_fast_step
    from core.modeldir import load_model
    from core.threads import threads_for

    windows: Windows = args.windows
    folder = require_midi(args.midi)
    threads = args.threads or threads_for("generate")
    torch.set_num_threads(threads)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"load average {' '.join(f'{x:.2f}' for x in load) if load else 'unknown'}; {threads} torch "
          f"thread(s); {os.cpu_count()} cores")
    excerpts, performances = read_excerpts(folder, args.pieces, windows)
    reference = [perf.slice_time(0.0, windows.new) for perf in performances]
    print(f"{len(excerpts)} pieces of {folder}: primer 0-{windows.primer:g} s, truth "
          f"{windows.primer:g}-{windows.primer + windows.truth:g} s, {args.seeds} seed(s); new pieces "
          f"{windows.variations} x {windows.new:g} s")

    result: dict = {"windows": vars(windows), "pieces": [e.name for e in excerpts], "seeds": args.seeds}
    if not args.controls:
        result |= measure_all(args, excerpts, performances, reference)
    if args.controls or args.quick:
        controls = []
        for name in args.models:
            model = load_model(name)
            use_fast_step(model)
            controls.append(measure_controls(model, Path(name).name, excerpts, windows, args.seeds))
        print()
        print(f"controls: {windows.truth:g} s after each {windows.primer:g} s primer, {len(excerpts)} pieces x "
              f"{args.seeds} seed(s); the key, range, velocity and polyphony limits together, each density alone")
        print(controls_table(controls))
        print("keys locked: " + ", ".join(controls[0].keys) + "; wall time: "
              + ", ".join(f"{c.label} {c.seconds:.0f} s" for c in controls))
        result["controls"] = {c.label: {"obeyed": c.obeyed, "notes_per_second": {f"{d:g}": r for d, r in
                                                                              c.reached.items()},
                                        "keys": c.keys} for c in controls}
    if args.json is not None:
        from core.midi import atomic_write_bytes

        atomic_write_bytes(args.json, (json.dumps(result, indent=1) + "\n").encode(), what="JSON file")
        print(f"wrote {args.json}")
    return 0


def measure_all(args: argparse.Namespace, excerpts: list[Excerpt], performances: list[Performance],
                reference: list[Performance]) -> dict:
    """The continuation and new-pieces tables, printed -> their measurements for the JSON."""
    from core.generate import use_fast_step
    from core.modeldir import load_model

    windows: Windows = args.windows
    truth = measure_truth(excerpts, windows)
    continued, written = [], []
    rendered: list[Path] = []
    # new pieces have no primer to adapt to: --new-only writes each model's once
    for config in configurations(args.models, [False] if args.new_only else args.adapt, args.harmony,
                                 args.max_density[:1] if args.new_only else args.max_density,
                                 args.pulse[:1] if args.new_only else args.pulse, args.motifs):
        model = load_model(config.model)
        if config.adapt and denoises(model):  # `recital continue --adapt` refuses a denoiser: nothing to measure
            print(f"  {config.label}: a denoiser is never adapted to a primer; skipped", file=sys.stderr)
            continue
        use_fast_step(model)
        if not args.new_only:
            continued.append(measure_continuations(model, config, excerpts, windows, args.seeds))
        if not config.adapt and config.max_density == args.max_density[0] and config.pulse == args.pulse[0]:  # no primer: nothing to adapt to,
            # no ceiling from it
            written.append(measure_new_pieces(model, config.label, reference, windows, config.harmony,
                                              config.motifs))
        if args.render is not None and not args.new_only:
            rendered += render(model, config, excerpts[0], windows, args.render)
    ceiling = measure_ceiling(performances, reference, windows)

    print()
    if not args.new_only:
        print(f"continuations: {windows.truth:g} s after each {windows.primer:g} s primer, {len(excerpts)} pieces "
              f"x {args.seeds} seed(s); truth: what the pianist played")
        print(continuation_table(truth, continued, windows))
        print()
    print(f"new pieces: recital generate --seconds {windows.new:g} --variations {windows.variations}, against "
          f"the first {windows.new:g} s of the {len(excerpts)} pieces (the ceiling: their next {windows.new:g} s)")
    print(new_pieces_table(ceiling, written, windows))
    print()
    print("wall time: " + ", ".join(f"{c.label} continuations {c.seconds:.0f} s" for c in continued) + "; "
          + ", ".join(f"{c.label} new pieces {c.seconds:.0f} s" for c in written))
    for path in rendered:
        print(f"wrote {path}")
    return {"truth": truth.continuations,
            "continuations": {c.label: {"codec": c.codec, "stats": c.continuations,
                                        "bits_per_second": c.bits_per_second,
                                        "remembered_bits_per_second": c.remembered_bits_per_second,
                                        "pulled_bits_per_second": c.pulled_bits_per_second,
                                        "bits_per_second_by_kind": c.kind_bits,
                                        "adapt_seconds": c.adapt_seconds}
                              for c in continued},
            "new_pieces": {c.label: {"stats": c.pieces, "mgeval_mean_oa": c.mgeval} for c in [ceiling, *written]}}


if __name__ == "__main__":
    sys.exit(main())
