"""How good is a model? Perplexity, MGEval-style feature distributions, and repetition.

Three families of measures, all on `core.midi.Performance` or on a codec's ids (core/codecs.py):

1. Per-piece features (Yang & Lerch 2020, "mgeval", with the segment variants of PerceiverS). Performances have
   no bars, so note lengths are classed in seconds and the segment features cut each piece into 64 segments of
   equal duration (from its first onset to its last offset). "Consecutive notes" always means the notes in onset
   order (ties by pitch), chord notes included, as mgeval reads a MIDI track.

   =========  ========  =================================================================================
   name       shape     definition
   =========  ========  =================================================================================
   PC         ()        number of distinct pitch classes used
   NC         ()        number of distinct notes used (pitch with octave, i.e. distinct MIDI pitches)
   PCH        (12,)     pitch-class histogram weighted by note duration, sums to 1
   PCTM       (12, 12)  pitch-class transitions of consecutive notes, counts / (n - 1), sums to 1
   PR         ()        highest minus lowest pitch, in semitones
   PI         ()        mean absolute interval between consecutive notes, in semitones
   IOI        ()        mean inter-onset interval of consecutive notes, in seconds
   NLH        (12,)     note-length-class histogram, sums to 1
   NLTM       (12, 12)  note-length-class transitions of consecutive notes, sums to 1
   PC/seg     (64,)     PC of the notes whose onset lies in each segment
   NC/seg     (64,)     NC of the notes whose onset lies in each segment
   PCH/seg    (64, 12)  PCH of each segment, weighted by the part of each note that sounds in it (0 if silent)
   IOI/seg    (64,)     IOI of the onsets in each segment
   =========  ========  =================================================================================

   Note-length classes (`LENGTH_EDGES`): 12 classes in half-octave steps of duration, edges 2**(k/2) / 16 s for
   k = 0..10, i.e. 62.5, 88, 125, 177, 250, 354, 500, 707, 1000, 1414 and 2000 ms. Class 0 is "shorter than
   62.5 ms" (grace notes, fast runs), class 11 "2 s or longer" (held chords, pedalled bass). At 120 BPM the even
   edges are a 32nd, 16th, 8th, quarter, half and whole note.

   A span with fewer than two onsets has no inter-onset interval; its IOI is the span's own duration (silence
   reads as "sparse", not as "dense"). An empty piece has every feature 0.

2. Set comparison, as mgeval does it. For each feature, the intra-set distances of the reference set (each
   reference piece to every other: leave-one-out) and the inter-set distances (each generated piece to every
   reference piece); Euclidean distance, i.e. Frobenius for matrices. A Gaussian KDE of each (scipy, Scott's
   bandwidth), then the Overlap Area OA = integral of min(pdf_intra, pdf_inter) (1: the generated pieces sit among
   the references as the references sit among themselves; 0: they are elsewhere) and the Kullback-Leibler
   divergence KL(pdf_intra || pdf_inter) (0 is best). Two departures from the mgeval code, both to make the
   numbers mean what they say: the integral runs over the kernels' tails too (so a set compared with an
   identical distance distribution scores 1, not less), and both densities are evaluated on one shared grid
   (mgeval evaluates them on two different grids). `pdf_inter` is floored at 1e-12 of its peak, so the KLD is
   finite (at most about 28) even for disjoint sets.
   A distance sample with zero variance (e.g. every piece uses all 12 pitch classes, so every PC distance is 0)
   has no Scott bandwidth: it is flagged, and its density is a Gaussian of the other sample's kernel width
   (or, when both are constant, of 1% of their scale), so equal constants give OA 1 and distant ones OA 0.

3. Repetition, which ultra-long context tends to cause (PerceiverS): the token autocorrelation of the id
   sequence and the density of repeated note n-grams per minute (definitions at the functions).

And perplexity: `perplexity_report` runs any model with the common interface (`plan`, `new_state`, `step`) over
whole pieces, token by token, and reports the token-weighted perplexity and the perplexity by position. A piece
is encoded with the model's own codec (core.codecs.codec_of), so perplexity is per id of that codec and compares
only models of one codec; the report's bits per second of music (-sum log2 p over the piece's seconds,
`piece_seconds`: the same seconds whatever the codec) compare a "notes" model with a "performance" one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import integrate, stats
from scipy.spatial.distance import cdist

from core import tokenizer
from core.errors import RecitalError
from core.midi import Performance
from core.tokenizer import BOS, EOS, PAD, encode

SEGMENTS = 64
LENGTH_EDGES = 2.0 ** (np.arange(11) / 2) / 16  # seconds; 12 note-length classes
LENGTH_CLASSES = len(LENGTH_EDGES) + 1
FEATURES = ("PC", "NC", "PCH", "PCTM", "PR", "PI", "IOI", "NLH", "NLTM", "PC/seg", "NC/seg", "PCH/seg", "IOI/seg")


# --- per-piece features ---------------------------------------------------------------------------------------

def length_class(durations: np.ndarray) -> np.ndarray:
    """Note durations in seconds -> length class 0..11 (see `LENGTH_EDGES`)."""
    return np.searchsorted(LENGTH_EDGES, durations, side="right")


def transition_matrix(classes: np.ndarray, k: int) -> np.ndarray:
    """(k, k) frequencies of class a followed by class b in `classes`; sums to 1 (all 0 for under two items)."""
    if len(classes) < 2:
        return np.zeros((k, k))
    counts = np.bincount(classes[:-1] * k + classes[1:], minlength=k * k).reshape(k, k)
    return counts / (len(classes) - 1)


def mean_ioi(first: np.ndarray, last: np.ndarray, count: np.ndarray, span: float) -> np.ndarray:
    """Mean inter-onset interval of spans given their first/last onset and onset count (sums telescope).

    A span with fewer than two onsets gets its own duration `span`.
    """
    gaps = np.maximum(count - 1, 1)
    return np.where(count >= 2, (last - first) / gaps, span)


def piece_features(perf: Performance, segments: int = SEGMENTS) -> dict[str, np.ndarray]:
    """All features of one piece (see the module docstring), each a float64 array, keyed as in `FEATURES`."""
    n = len(perf)
    pitch = perf.pitch.astype(np.int64)
    pitch_class = pitch % 12
    duration = perf.offset - perf.onset
    if n == 0:
        return {"PC": np.zeros(()), "NC": np.zeros(()), "PCH": np.zeros(12), "PCTM": np.zeros((12, 12)),
                "PR": np.zeros(()), "PI": np.zeros(()), "IOI": np.zeros(()), "NLH": np.zeros(LENGTH_CLASSES),
                "NLTM": np.zeros((LENGTH_CLASSES, LENGTH_CLASSES)), "PC/seg": np.zeros(segments),
                "NC/seg": np.zeros(segments), "PCH/seg": np.zeros((segments, 12)), "IOI/seg": np.zeros(segments)}
    one_hot_pc = np.eye(12)[pitch_class]  # (n, 12)
    pch = one_hot_pc.T @ duration  # (12,)
    lengths = length_class(duration)
    start, end = float(perf.onset[0]), float(perf.offset.max())
    features = {
        "PC": np.float64(len(np.unique(pitch_class))),
        "NC": np.float64(len(np.unique(pitch))),
        "PCH": pch / pch.sum() if pch.sum() > 0 else pch,
        "PCTM": transition_matrix(pitch_class, 12),
        "PR": np.float64(pitch.max() - pitch.min()),
        "PI": np.float64(np.abs(np.diff(pitch)).mean()) if n >= 2 else np.float64(0.0),
        "IOI": mean_ioi(perf.onset[:1], perf.onset[-1:], np.array([n]), end - start)[0],
        "NLH": np.bincount(lengths, minlength=LENGTH_CLASSES) / n,
        "NLTM": transition_matrix(lengths, LENGTH_CLASSES),
    }
    features.update(segment_features(perf, start, end, segments, one_hot_pc))
    return {name: np.asarray(value, dtype=np.float64) for name, value in features.items()}


def segment_features(perf: Performance, start: float, end: float, segments: int,
                     one_hot_pc: np.ndarray) -> dict[str, np.ndarray]:
    """PC/seg, NC/seg, PCH/seg and IOI/seg over `segments` equal-duration segments of [start, end]."""
    width = (end - start) / segments
    if width > 0:
        seg = np.minimum(((perf.onset - start) / width).astype(np.int64), segments - 1)  # (n,) onset's segment
    else:
        seg = np.zeros(len(perf), dtype=np.int64)
    pitch = perf.pitch.astype(np.int64)

    def distinct_per_segment(values: np.ndarray, k: int) -> np.ndarray:
        keys = np.unique(seg * k + values)
        return np.bincount(keys // k, minlength=segments).astype(np.float64)

    seg_start = start + np.arange(segments) * width  # (S,)
    overlap = np.clip(np.minimum(perf.offset[:, None], seg_start + width) -  # (n, S) seconds sounding in each
                      np.maximum(perf.onset[:, None], seg_start), 0.0, None)
    pch = (one_hot_pc.T @ overlap).T  # (S, 12)
    totals = pch.sum(axis=1, keepdims=True)
    pch = np.divide(pch, totals, out=np.zeros_like(pch), where=totals > 0)

    count = np.bincount(seg, minlength=segments)
    first = np.full(segments, np.inf)
    last = np.full(segments, -np.inf)
    np.minimum.at(first, seg, perf.onset)
    np.maximum.at(last, seg, perf.onset)
    return {"PC/seg": distinct_per_segment(pitch % 12, 12),
            "NC/seg": distinct_per_segment(pitch, 128),
            "PCH/seg": pch,
            "IOI/seg": mean_ioi(first, last, count, width)}


def set_features(perfs: Iterable[Performance], segments: int = SEGMENTS) -> dict[str, np.ndarray]:
    """Features of many pieces, stacked: name -> (pieces, *feature shape)."""
    per_piece = [piece_features(perf, segments) for perf in perfs]
    if not per_piece:
        raise RecitalError("no pieces to compute features of")
    return {name: np.stack([piece[name] for piece in per_piece]) for name in FEATURES}


# --- set comparison (mgeval) ---------------------------------------------------------------------------------

GRID_POINTS = 2048
KERNEL_TAILS = 4.0  # the integration grid reaches this many kernel widths past the data
PDF_FLOOR = 1e-12  # of pdf_inter's peak, so the KLD stays finite


@dataclass
class FeatureComparison:
    """One feature's intra/inter distance distributions and their agreement."""

    name: str
    oa: float  # overlap area, 0..1, higher is better
    kld: float  # KL(pdf_intra || pdf_inter) in nats, >= 0, lower is better
    flags: tuple[str, ...]  # e.g. "constant reference distances"
    intra: np.ndarray  # (R * (R - 1),) reference-to-reference distances
    inter: np.ndarray  # (G * R,) generated-to-reference distances
    grid: np.ndarray  # (GRID_POINTS,) where the densities were evaluated
    pdf_intra: np.ndarray  # (GRID_POINTS,)
    pdf_inter: np.ndarray  # (GRID_POINTS,)


@dataclass
class SetComparison:
    features: list[FeatureComparison]
    generated: int  # number of generated pieces
    reference: int  # number of reference pieces

    @property
    def mean_oa(self) -> float:
        return float(np.mean([f.oa for f in self.features]))

    def to_json(self) -> dict:
        return {"features": {f.name: {"oa": f.oa, "kld": f.kld, "flags": list(f.flags)} for f in self.features},
                "mean_oa": self.mean_oa, "generated_pieces": self.generated, "reference_pieces": self.reference}


def intra_distances(reference: np.ndarray) -> np.ndarray:
    """Leave-one-out distances within a set: every ordered pair (i, j), i != j. reference: (R, D)."""
    distances = cdist(reference, reference)  # (R, R)
    return distances[~np.eye(len(reference), dtype=bool)]


def inter_distances(generated: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Distance of every generated piece to every reference piece. (G, D), (R, D) -> (G * R,)."""
    return cdist(generated, reference).ravel()


def _is_constant(values: np.ndarray) -> bool:
    return len(values) < 2 or np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max()))


def _kernel_width(values: np.ndarray) -> float:
    """Scott's kernel standard deviation, as scipy's gaussian_kde uses it (d = 1)."""
    return float(len(values) ** (-1 / 5) * np.std(values, ddof=1))


def _gaussian(grid: np.ndarray, centre: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((grid - centre) / width) ** 2) / (width * math.sqrt(2 * math.pi))


def compare_distributions(intra: np.ndarray, inter: np.ndarray, name: str = "") -> FeatureComparison:
    """OA and KLD of two distance samples through Gaussian KDEs (Scott), robust to constant samples."""
    intra = np.asarray(intra, dtype=np.float64)
    inter = np.asarray(inter, dtype=np.float64)
    constant = (_is_constant(intra), _is_constant(inter))
    flags = tuple(label for is_flat, label in zip(constant, ("constant reference distances",
                                                             "constant generated-to-reference distances"),
                                                  strict=True) if is_flat)
    widths = [None if flat else _kernel_width(values) for flat, values in zip(constant, (intra, inter), strict=True)]
    if all(constant):
        scale = max(abs(intra[0] - inter[0]), abs(intra[0]), abs(inter[0]))
        widths = [0.01 * scale if scale > 0 else 1.0] * 2
    else:  # a constant sample borrows the other's kernel width
        widths = [w if w is not None else next(x for x in widths if x is not None) for w in widths]
    reach = KERNEL_TAILS * max(widths)
    grid = np.linspace(min(intra.min(), inter.min()) - reach, max(intra.max(), inter.max()) + reach, GRID_POINTS)
    pdfs = [_gaussian(grid, float(values[0]), width) if flat else stats.gaussian_kde(values, "scott")(grid)
            for flat, values, width in zip(constant, (intra, inter), widths, strict=True)]
    pdf_intra, pdf_inter = pdfs
    oa = float(np.clip(integrate.trapezoid(np.minimum(pdf_intra, pdf_inter), grid), 0.0, 1.0))
    kld = float(stats.entropy(pdf_intra, np.maximum(pdf_inter, PDF_FLOOR * pdf_inter.max())))
    return FeatureComparison(name, oa, max(kld, 0.0), flags, intra, inter, grid, pdf_intra, pdf_inter)


def compare_features(generated: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> SetComparison:
    """mgeval's comparison of stacked features (`set_features`) of a generated and a reference set."""
    n_gen, n_ref = len(generated[FEATURES[0]]), len(reference[FEATURES[0]])
    if n_ref < 2:
        raise RecitalError(f"the reference set needs at least 2 pieces for intra-set distances, it has {n_ref}")
    if n_gen < 1:
        raise RecitalError("the generated set has no pieces")
    comparisons = []
    for name in FEATURES:
        gen = generated[name].reshape(n_gen, -1)  # (G, D): Euclidean on the flattened matrix is Frobenius
        ref = reference[name].reshape(n_ref, -1)  # (R, D)
        comparisons.append(compare_distributions(intra_distances(ref), inter_distances(gen, ref), name))
    return SetComparison(comparisons, n_gen, n_ref)


def compare_sets(generated: Sequence[Performance], reference: Sequence[Performance],
                 segments: int = SEGMENTS) -> SetComparison:
    """Feature distributions of generated pieces against reference pieces (see the module docstring)."""
    if len(reference) < 2:
        raise RecitalError(f"the reference set needs at least 2 pieces, it has {len(reference)}")
    if len(generated) < 1:
        raise RecitalError("the generated set has no pieces")
    return compare_features(set_features(generated, segments), set_features(reference, segments))


# --- repetition ----------------------------------------------------------------------------------------------

AUTOCORRELATION_LAGS = 256
NGRAM = 8


def token_autocorrelation(ids: np.ndarray, max_lag: int = AUTOCORRELATION_LAGS) -> np.ndarray:
    """Autocorrelation of a token sequence at lags 1..max_lag (shorter if the sequence is), PAD/BOS/EOS dropped.

    For a categorical sequence: r_k = (m_k - c) / (1 - c), where m_k is the fraction of positions t with
    id[t] == id[t + k] and c = sum_v p_v^2 is that fraction for independent draws from the sequence's own token
    frequencies. It is the Pearson autocorrelation of the one-hot sequence: 0 for no structure, 1 at the period of
    a loop. A sequence of one repeated token has r_k = 1.
    """
    ids = np.asarray(ids, dtype=np.int64).ravel()
    ids = ids[(ids != PAD) & (ids != BOS) & (ids != EOS)]
    lags = min(max_lag, len(ids) - 1)
    if lags < 1:
        return np.zeros(0)
    frequency = np.bincount(ids) / len(ids)
    chance = float(np.sum(frequency**2))
    matches = np.array([np.mean(ids[:-k] == ids[k:]) for k in range(1, lags + 1)])  # (lags,)
    if chance >= 1.0:
        return np.ones(lags)
    return (matches - chance) / (1.0 - chance)


def repeated_ngrams_per_minute(perf: Performance, n: int = NGRAM, intervals: bool = False) -> float:
    """Repeated note n-grams per minute of music.

    The notes in onset order give n-grams of `n` consecutive pitches (or, with `intervals`, of the n - 1 pitch
    intervals between `n` consecutive notes, which also finds transposed repeats). An n-gram occurrence counts
    as repeated when the same n-gram starts at an earlier note of the piece; the count is divided by the piece's
    length in minutes (first onset to last offset). A piece shorter than `n` notes scores 0.
    """
    if len(perf) < n or n < 2:
        return 0.0
    pitch = perf.pitch.astype(np.int64)
    values = np.diff(pitch) if intervals else pitch
    grams = np.lib.stride_tricks.sliding_window_view(values, n - 1 if intervals else n)  # (m, n or n - 1)
    repeats = len(grams) - len(np.unique(grams, axis=0))
    minutes = (float(perf.offset.max()) - float(perf.onset[0])) / 60.0
    return repeats / minutes if minutes > 0 else 0.0


# Label -> key of RepetitionStats.per_piece. Mean |r| measures how far a sequence is from unstructured (a loop
# scores high at every lag: +1 at its period, negative between); the peak, the strength of its strongest period.
REPETITION_MEASURES = {
    "token autocorrelation (mean |r|, lags 1-256)": "autocorrelation_mean_abs",
    "token autocorrelation (peak, lags 1-256)": "autocorrelation_peak",
    f"repeated pitch {NGRAM}-grams per minute": "pitch_ngrams_per_minute",
    f"repeated interval {NGRAM}-grams per minute": "interval_ngrams_per_minute",
}


@dataclass
class RepetitionStats:
    """Per-piece repetition measures of one set, and its mean autocorrelation curve."""

    per_piece: dict[str, np.ndarray]  # measure key (values of REPETITION_MEASURES) -> (pieces,)
    autocorrelation: np.ndarray  # (lags,) mean over pieces long enough for each lag

    def summary(self) -> dict[str, dict[str, float]]:
        return {key: {"mean": float(values.mean()), "std": float(values.std())}
                for key, values in self.per_piece.items()}


def repetition_stats(perfs: Sequence[Performance], max_lag: int = AUTOCORRELATION_LAGS,
                     n: int = NGRAM) -> RepetitionStats:
    """Repetition measures of a set of pieces (ids by `core.tokenizer.encode`)."""
    curves = [token_autocorrelation(encode(perf), max_lag) for perf in perfs]
    curve_sum, curve_count = np.zeros(max_lag), np.zeros(max_lag)
    for curve in curves:
        curve_sum[:len(curve)] += curve
        curve_count[:len(curve)] += 1
    per_piece = {
        "autocorrelation_mean_abs": np.array([np.abs(c).mean() if len(c) else 0.0 for c in curves]),
        "autocorrelation_peak": np.array([c.max() if len(c) else 0.0 for c in curves]),
        "pitch_ngrams_per_minute": np.array([repeated_ngrams_per_minute(p, n) for p in perfs]),
        "interval_ngrams_per_minute": np.array([repeated_ngrams_per_minute(p, n, intervals=True) for p in perfs]),
    }
    used = curve_count > 0
    return RepetitionStats(per_piece, curve_sum[used] / curve_count[used])


# --- perplexity ----------------------------------------------------------------------------------------------

class Bits:
    """A loss over pieces as bits per token and per second of music (the number that compares codecs), from its
    `nats`, `tokens` and `seconds`; shared by the perplexity and ELBO reports."""

    nats: float
    tokens: int
    seconds: float

    @property
    def bits_per_token(self) -> float:
        return self.nats / math.log(2) / self.tokens

    @property
    def bits_per_second(self) -> float | None:
        """-sum log2 p / seconds of music; None when the pieces span no time."""
        return self.nats / math.log(2) / self.seconds if self.seconds > 0 else None


@dataclass
class PerplexityReport(Bits):
    """Token-weighted perplexity over whole pieces, and by position (tokens of context read) in the piece; and the
    same loss per second of music, which compares models of different codecs (perplexity is per id of one)."""

    perplexity: float
    tokens: int  # predicted tokens (every id after BOS)
    pieces: int
    bucket_edges: tuple[int, ...]  # positions [edges[i], edges[i+1])
    bucket_tokens: np.ndarray = field(repr=False)  # (buckets,)
    bucket_perplexity: np.ndarray = field(repr=False)  # (buckets,) nan where a bucket has no tokens
    nats: float = 0.0  # -sum log p over the predicted tokens
    seconds: float = 0.0  # of music the pieces span (`piece_seconds`)
    codec: str = tokenizer.NAME  # the codec the pieces were encoded with (the model's)

    def buckets(self) -> list[dict]:
        return [{"start": int(self.bucket_edges[i]), "end": int(self.bucket_edges[i + 1]),
                 "tokens": int(self.bucket_tokens[i]),
                 "perplexity": None if self.bucket_tokens[i] == 0 else float(self.bucket_perplexity[i])}
                for i in range(len(self.bucket_tokens))]

    def to_json(self) -> dict:
        return {"perplexity": self.perplexity, "tokens": self.tokens, "pieces": self.pieces, "codec": self.codec,
                "bits_per_token": self.bits_per_token, "bits_per_second": self.bits_per_second,
                "seconds": self.seconds, "by_position": self.buckets()}


def piece_seconds(perf: Performance) -> float:
    """Seconds of music a piece spans: from 0 to its last release on the 10 ms grid (the event codec's clock
    after its last NoteOff, a note lasting at least one tick). A property of the notes, not of a codec: bits per
    second of two models on one piece divide by the same number, whatever codec each reads."""
    from core import tokenizer

    return tokenizer.ids_seconds(tokenizer.encode(perf, bos=False, eos=False)) if len(perf) else 0.0


def ids_music_seconds(codec, ids: np.ndarray) -> float:
    """Seconds of music a piece given as `codec`'s ids spans: its clock, or its last note's end where a note
    outlasts the clock (the "notes" codec states a note's length at its onset, so its clock stops at the last
    onset). For the event codec the clock always reaches every release: its `ids_seconds`, as before."""
    from core import notecodec

    seconds = codec.ids_seconds(ids)
    if codec.NAME == notecodec.NAME:
        decoded = notecodec.decode(ids)
        if len(decoded):
            seconds = max(seconds, float(decoded.offset.max()))
    return seconds


def encode_pieces(model, perfs_or_ids: Sequence[Performance | np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Each piece as the model's codec's ids (a Performance is encoded with it; ids are taken as that codec's)
    and the seconds of music it spans, in order."""
    from core.codecs import codec_of

    codec = codec_of(model)
    pieces, seconds = [], []
    for piece in perfs_or_ids:
        if isinstance(piece, Performance):
            pieces.append(codec.encode(piece).astype(np.int64).ravel())
            seconds.append(piece_seconds(piece))
        else:
            ids = np.asarray(piece).astype(np.int64).ravel()
            pieces.append(ids)
            seconds.append(ids_music_seconds(codec, ids))
    return pieces, seconds


def position_edges(longest: int, first: int = 256) -> tuple[int, ...]:
    """Bucket edges 0, first, 2 first, 4 first, ... until they cover positions below `longest`."""
    edges = [0, first]
    while edges[-1] < longest:
        edges.append(edges[-1] * 2)
    return tuple(edges)


# A piece is scored a chunk at a time through the model's `read` (core.models.interface.LeftToRight): the logits
# (B, T, V) of every position, equal to stepping through the same ids (the models' tests prove it).
SCORE_CHUNK = 2048  # tokens per call on that path (bounds the activations and the logits held)


def chunk_logits(model, ids: np.ndarray, state, device, stepwise: bool = False) -> Iterator[tuple[int, object]]:
    """(start, the logits (n, V) as float32 of positions t = start .. start + n - 1, each predicting ids[t + 1]), a
    chunk of at most SCORE_CHUNK ids at a time, reading through `state` (`stepwise`: one `step` an id instead of
    `read`): a piece of any length holds one chunk's logits."""
    import torch

    tokens = torch.as_tensor(ids, device=device)  # (T,)
    for start in range(0, len(ids) - 1, SCORE_CHUNK):
        end = min(start + SCORE_CHUNK, len(ids) - 1)
        if not stepwise:
            yield start, model.read(tokens[None, start:end], state)[0].float()  # (t, V)
        else:
            yield start, torch.stack([model.step(tokens[t:t + 1], state)[0].float() for t in range(start, end)])


def chunk_log_probs(model, ids: np.ndarray, state, device, stepwise: bool = False
                    ) -> Iterator[tuple[int, np.ndarray]]:
    """(start, log p(ids[t + 1] | ids[:t + 1]) for t = start .. start + n - 1 as float64 (n,)), chunk by chunk as
    `chunk_logits` reads them."""
    import torch

    tokens = torch.as_tensor(ids, device=device)  # (T,)
    for start, logits in chunk_logits(model, ids, state, device, stepwise):
        targets = tokens[start + 1:start + 1 + len(logits), None]  # (t, 1)
        log_probs = torch.log_softmax(logits, dim=-1).gather(1, targets)[:, 0]
        yield start, log_probs.cpu().double().numpy()


def piece_log_probs(model, ids: np.ndarray, state, device, stepwise: bool = False) -> np.ndarray:
    """log p(ids[t + 1] | ids[:t + 1]) for t = 0 .. T - 2, as float64 (T - 1,), reading through `state`."""
    chunks = [log_probs for _, log_probs in chunk_log_probs(model, ids, state, device, stepwise)]
    return np.concatenate(chunks) if chunks else np.zeros(0)


def perplexity_report(model, perfs_or_ids: Sequence[Performance | np.ndarray], budget: int,
                      bucket_edges: Sequence[int] | None = None,
                      progress: Callable[[int, int], None] | None = None,
                      stepwise: bool = False) -> PerplexityReport:
    """Perplexity of `model` on whole pieces read left to right under a state budget of `budget` bytes.

    Works with any left-to-right model (core.models.interface.LeftToRight): `plan(budget_bytes, batch=1)`,
    `new_state(plan, batch)`, `read(ids (B, T), state) -> logits (B, T, V)` and `step`, so DSMR runs under its budget schedule and PerceiverS with the
    context the budget allows, exactly as they generate. A Performance is encoded with the model's own codec
    (`encode_pieces`; ids are taken as that codec's). Each piece gets a fresh state; the token at position
    t (t >= 1, BOS is position 0) is predicted from the t tokens before it. `progress(done, total)` is called
    after each piece. A chunk is read per call (same numbers, much faster than stepping) unless `stepwise` asks
    for the id-by-id path.
    """
    import torch

    if getattr(model, "family", "left_to_right") != "left_to_right":  # a denoiser has no left-to-right reading
        raise RecitalError(f"a {model.arch} model is not scored left to right: its held-out number is its "
                           "diffusion ELBO (the validation perplexity `recital train` reports)")
    encoded, spans = encode_pieces(model, perfs_or_ids)
    kept = [i for i, ids in enumerate(encoded) if len(ids) >= 2]
    if not kept:
        raise RecitalError("no piece has a token to predict")
    pieces, seconds = [encoded[i] for i in kept], sum(spans[i] for i in kept)
    longest = max(len(ids) for ids in pieces)
    edges = np.asarray(bucket_edges if bucket_edges is not None else position_edges(longest), dtype=np.int64)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise RecitalError(f"position bucket edges must be increasing, got {edges.tolist()}")
    parameters = getattr(model, "parameters", None)
    first_parameter = next(iter(parameters()), None) if callable(parameters) else None
    device = first_parameter.device if first_parameter is not None else torch.device("cpu")
    plan = model.plan(budget, batch=1)

    bucket_nll = np.zeros(len(edges) - 1)
    bucket_tokens = np.zeros(len(edges) - 1, dtype=np.int64)
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for done, ids in enumerate(pieces, start=1):
            for start, log_probs in chunk_log_probs(model, ids, model.new_state(plan, 1), device, stepwise):
                nll = -log_probs  # summed per chunk: a long piece never holds a value per token
                positions = np.arange(start + 1, start + 1 + len(nll))  # the predicted tokens' positions
                bucket = np.searchsorted(edges, positions, side="right") - 1
                inside = (bucket >= 0) & (bucket < len(edges) - 1)
                np.add.at(bucket_nll, bucket[inside], nll[inside])
                np.add.at(bucket_tokens, bucket[inside], 1)
                total_nll += float(nll.sum())
                total_tokens += len(nll)
            if progress is not None:
                progress(done, len(pieces))
    with np.errstate(invalid="ignore", divide="ignore"):
        bucket_ppl = np.where(bucket_tokens > 0, np.exp(bucket_nll / np.maximum(bucket_tokens, 1)), np.nan)
    from core.codecs import codec_of

    return PerplexityReport(float(math.exp(total_nll / total_tokens)), total_tokens, len(pieces),
                            tuple(int(e) for e in edges), bucket_tokens, bucket_ppl, total_nll, seconds,
                            codec_of(model).NAME)


# --- the diffusion ELBO (denoisers) ----------------------------------------------------------------------------

ELBO_DRAWS = 8  # masked copies of each window, one at the midpoint of each of this many equal strata of the rate
ELBO_MEANING = ("diffusion ELBO: an upper bound on the negative log-likelihood (the model's true bits are at most "
                "this), each window the budget buys scored on its own, averaged over seeded masks at stratified "
                "masking rates")


@dataclass
class ElboReport(Bits):
    """A denoiser's ELBO over whole pieces, in bits per token and per second of music: an upper bound on the
    negative log-likelihood, so it sits beside (never below) what a left-to-right model's -log2 p would be."""

    nats: float  # the bound summed over every scored id
    tokens: int  # ids scored (every non-PAD id of the pieces)
    seconds: float  # of music the pieces span (`piece_seconds`, whatever the model's codec)
    pieces: int
    draws: int  # masked copies per window
    window: int  # tokens per scored window

    @property
    def perplexity(self) -> float:
        """The bound as a perplexity (e to the nats per token): the number `recital train` reports."""
        return math.exp(self.nats / self.tokens)

    @classmethod
    def total(cls, reports: Sequence[ElboReport]) -> ElboReport:
        """Several sets' reports as one (their sums): the bound of all their pieces together."""
        if not reports:
            raise RecitalError("no ELBO reports to add up")
        return cls(sum(r.nats for r in reports), sum(r.tokens for r in reports), sum(r.seconds for r in reports),
                   sum(r.pieces for r in reports), reports[0].draws, reports[0].window)

    def to_json(self) -> dict:
        return {"elbo_bits_per_token": self.bits_per_token, "elbo_bits_per_second": self.bits_per_second,
                "perplexity": self.perplexity, "tokens": self.tokens, "seconds": self.seconds,
                "pieces": self.pieces, "draws": self.draws, "window": self.window, "meaning": ELBO_MEANING}


def elbo_report(model, perfs_or_ids: Sequence[Performance | np.ndarray], budget: int | None = None,
                draws: int = ELBO_DRAWS, seed: int = 0,
                progress: Callable[[int, int], None] | None = None) -> ElboReport:
    """The diffusion ELBO of a denoiser (core.models.interface.Denoiser) on whole pieces.

    Each piece is cut into windows of the length the budget buys one lane (`plan(budget, 1)`; None: the model's
    default), as the model reads them when it generates. Each window is masked `draws` times, at the midpoints of
    `draws` equal strata of the masking rate, with masks from a generator seeded `seed` at every piece (the same
    number for the same model and pieces, whatever the order); the 1/t-weighted cross-entropy of the masked ids
    (for SMDIM core.models.smdim.training.elbo_sum, what training minimises) is averaged over the draws. With
    the trainer's draws (SMDIM: `draws=HELD_OUT_RATES`) it is the trainer's validation number. The bound of a
    piece is the architecture's own (its training adapter's `elbo`, core.models.interface.Training, found in the
    registry by the model's arch), so any denoiser is scored here. `progress(done, total)` after each piece.
    """
    import torch

    from core.models import registry
    from core.models.interface import DENOISE

    if getattr(model, "family", "left_to_right") != DENOISE:
        raise RecitalError(f"a {getattr(model, 'arch', 'left-to-right')} model reads left to right: its held-out "
                           "number is its perplexity (perplexity_report), not a diffusion ELBO")
    if draws < 1:
        raise RecitalError(f"ELBO draws per window must be at least 1, got {draws}")
    piece_elbo = getattr(registry.get(model.arch).training(model), "elbo", None)
    if not callable(piece_elbo):
        raise RecitalError(f"the {model.arch} architecture gives no diffusion ELBO: its training adapter has no "
                           "`elbo` (core.models.interface.Training)")
    encoded, spans = encode_pieces(model, perfs_or_ids)
    encoded = [ids[ids != PAD] for ids in encoded]
    kept = [i for i, ids in enumerate(encoded) if len(ids)]
    if not kept:
        raise RecitalError("no piece has an id to score")
    pieces, spans = [encoded[i] for i in kept], [spans[i] for i in kept]
    window = model.plan(budget, batch=1).window
    device = next(model.parameters()).device
    nats, tokens, seconds = 0.0, 0, 0.0
    with torch.inference_mode():
        for done, (ids, span) in enumerate(zip(pieces, spans, strict=True), start=1):
            nats += piece_elbo(ids, window, draws, seed, device)
            tokens += len(ids)
            seconds += span
            if progress is not None:
                progress(done, len(pieces))
    return ElboReport(nats, tokens, seconds, len(pieces), draws, window)
