"""The model's own moments, remembered: what followed the moments of the piece most like this one.

A pianist comes back to what they played: a figure, a cadence, the same left hand under a new melody. The motif
memory (core/motif.py) finds such returns by the notes' intervals; this cache finds them as the model itself sees
them, by its last hidden state: the hidden state after each id of the piece so far is a key, the id that followed
it its value, and the next id is predicted, besides the model, by the ids that followed the keys most like the
present one (Grave et al., "Improving neural language models with a continuous cache", 2017; Khandelwal et al.'s
kNN-LM with the piece as its datastore). It needs nothing of the model but its logits and its output layer
(`output_weight`): that layer is linear with no bias, so the logits less their mean give back the hidden state
(least squares through the centred output layer, `Unembedding`), however the step computed them (int8 or fp32), and
a model of another architecture with the same interface gets the same cache.

Per kind of id (pitch, duration, time step, velocity), the ids that followed each earlier moment are weighted by
exp(sharpness * (cosine - best cosine)), and mixed into the model's ids of that kind at a share that grows with
the best cosine (how alike the likest moment is), keeping the kind's mass where the model put it: the cache says
which pitch, how long, when or how loud, never whether a note comes. Sharpness and shares are fitted by
bench/motif.py on windows of the MAESTRO performances outside bench/continuation.py's; on its windows the DSMR
default, adapting, predicts the truth in 134.8 -> 131.3 bits/s with the cache alone, 129.7 -> 127.6 with the motif
memory as well (core/motif.py, mixed in after it); the PerceiverS default 144.1 -> 139.5 -> 134.2. A lane
remembers the primer's last CAPACITY ids and its own last CAPACITY ids: a step costs 0.5-0.8 ms on one core (700
to 4,096 ids held; a DSMR default step at batch 1 about 3).
"""

from __future__ import annotations

import numpy as np
import torch

from core import notecodec
from core.codecs import Codec
from core.motif import check_weight, mixed

CAPACITY = 4096  # ids of the primer's tail, and of a lane's own, a lane remembers (1 KB each)
RIDGE = 1e-4  # regularises the least squares that reads the hidden state back from the logits
# The kinds of id the cache speaks for, each with the sharpness of its weights (per unit of cosine).
KINDS = (slice(notecodec.PITCH, notecodec.DURATION), slice(notecodec.DURATION, notecodec.TIME_SHIFT),
         slice(notecodec.TIME_SHIFT, notecodec.VELOCITY), slice(notecodec.VELOCITY, notecodec.VOCAB_SIZE))
SHARPNESS = np.array([30.0, 30.0, 30.0, 15.0])
# The share of the mixture by kind (rows, KINDS' order) and by the best cosine: below 0.8, 0.8-0.85, ..., 0.98 on.
# As bench/motif.py fits them (2026-12-05, the DSMR default adapting), but the durations' at half the fit: at a
# first fit, with the ends (core/motif.py END_SHARE) also at theirs, continuations' notes grew short (polyphony 2.79
# against the pianists' 3.76, the aim 2.82 at least); at half, 3.04 (3.44 over 6 seeds), for 0.2 bits/s (127.6
# against the fit's 127.4).
SIMILARITY_BUCKETS = np.array([0.80, 0.85, 0.90, 0.93, 0.96, 0.98])
SHARES = np.array([[0.05, 0.05, 0.15, 0.25, 0.40, 0.70, 0.70],
                   [0.075, 0.15, 0.15, 0.175, 0.20, 0.25, 0.35],
                   [0.15, 0.15, 0.15, 0.20, 0.20, 0.30, 0.10],
                   [0.15, 0.15, 0.15, 0.15, 0.30, 0.30, 0.50]])


def likeness_bucket(cosine: np.ndarray) -> int:
    """The column of SHARES for moments of these cosines to the present one: by the likest."""
    return int(np.searchsorted(SIMILARITY_BUCKETS, cosine.max()))


KIND_OF_ID = np.full(notecodec.VOCAB_SIZE, -1)  # each id's index in KINDS (-1: PAD, BOS, EOS)
for _kind, _ids in enumerate(KINDS):
    KIND_OF_ID[_ids] = _kind


def recalled(cosine: np.ndarray, after: np.ndarray, sharpness: np.ndarray) -> list[np.ndarray | None]:
    """For each kind of KINDS, the distribution over its ids of the ids that followed the moments, each weighted
    exp(sharpness[kind] * (its cosine - the best)); None for a kind no moment was followed by."""
    kind = KIND_OF_ID[after]
    held = kind >= 0
    weights = np.zeros(len(after))
    # float64: a weight is at least exp(-2 sharpness) (cosines differ by 2 at most), never 0 for any kind
    weights[held] = np.exp(sharpness[kind[held]] * (cosine[held].astype(np.float64) - cosine.max()))
    total = np.bincount(after, weights, minlength=notecodec.VOCAB_SIZE)
    present = np.bincount(kind[held], minlength=len(KINDS)) > 0
    return [total[ids] / total[ids].sum() if present[k] else None for k, ids in enumerate(KINDS)]


class Unembedding:
    """Logits -> the hidden state the output layer read them from, normed to unit length (the cache's keys)."""

    def __init__(self, output_weight: torch.Tensor):
        weight = output_weight.detach().double().cpu().numpy()  # (V, d)
        centred = weight - weight.mean(0, keepdims=True)  # log-softmax shifts every logit alike: read around that
        gram = centred.T @ centred + RIDGE * np.eye(weight.shape[1])
        self.matrix = np.linalg.solve(gram, centred.T).T.astype(np.float32)  # (V, d)

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        """(n, V) logits (or log-probabilities) -> (n, d) unit keys."""
        logits = np.asarray(logits, dtype=np.float32)
        keys = (logits - logits.mean(-1, keepdims=True)) @ self.matrix
        return keys / np.maximum(np.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)


class Moments:
    """Keys and the ids that followed them, at most CAPACITY (the oldest quarter forgotten at once when a quarter
    more is held); rows are appended into room that doubles, so a step costs no copy of the rest."""

    def __init__(self, width: int):
        self._keys = np.zeros((64, width), dtype=np.float32)
        self._next = np.zeros(64, dtype=np.int64)
        self.count = 0

    @property
    def keys(self) -> np.ndarray:
        return self._keys[:self.count]

    @property
    def next(self) -> np.ndarray:
        return self._next[:self.count]

    def add(self, keys: np.ndarray, next_ids: np.ndarray) -> None:
        n = len(next_ids)
        if self.count + n > CAPACITY + CAPACITY // 4:  # forget the oldest, keep the last CAPACITY - n
            keep = max(CAPACITY - n, 0)
            self._keys[:keep] = self._keys[self.count - keep:self.count].copy()
            self._next[:keep] = self._next[self.count - keep:self.count].copy()
            self.count = keep
            keys, next_ids, n = keys[-CAPACITY:], next_ids[-CAPACITY:], min(n, CAPACITY)
        if self.count + n > len(self._next):
            room = max(2 * len(self._next), self.count + n)
            self._keys = np.concatenate([self._keys[:self.count], np.zeros((room - self.count,
                                                                            self._keys.shape[1]), np.float32)])
            self._next = np.concatenate([self._next[:self.count], np.zeros(room - self.count, np.int64)])
        self._keys[self.count:self.count + n] = keys
        self._next[self.count:self.count + n] = next_ids
        self.count += n


class ContextCache:
    """Every lane's cache (module docstring): `remember` the primer's logits and the ids after them, `mix` the
    lanes' next-id logits (their keys kept for `read`), `read` the ids the lanes drew. Inactive (mix returns the
    logits as they are) at weight 0 and for a model of another codec than the notes codec."""

    def __init__(self, model, codec: Codec, batch: int, weight: float):
        check_weight(weight)
        self.weight = float(weight)
        self.active = weight > 0 and codec.NAME == notecodec.NAME
        if not self.active:
            return
        self.unembed = Unembedding(model.output_weight())
        width = self.unembed.matrix.shape[1]
        self.primer = Moments(width)  # shared by the lanes
        self.lanes = [Moments(width) for _ in range(batch)]
        self.pending: np.ndarray | None = None  # (B, d) the keys of the logits mixed last

    def remember(self, logits: np.ndarray, next_ids: np.ndarray) -> None:
        """The primer read: logits (n, V) after ids whose next ids were `next_ids` (n,) (the last CAPACITY kept)."""
        if self.active and len(next_ids):
            self.primer.add(self.unembed(logits[-CAPACITY:]), np.asarray(next_ids, dtype=np.int64)[-CAPACITY:])

    def moments(self, log_probs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The lanes' next-id log-probabilities (B, V) -> each lane's (cosine of every moment it holds to its
        present one, the id that followed each); the present moments are kept for `read`."""
        self.pending = self.unembed(log_probs)
        shared = self.primer.keys @ self.pending.T  # (P, B)
        return [(np.concatenate([shared[:, b], lane.keys @ self.pending[b]]), np.concatenate([self.primer.next,
                                                                                              lane.next]))
                for b, lane in enumerate(self.lanes)]

    def mix(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (B, V) of the lanes' next ids as the log of the mixture (the same where nothing is held)."""
        if not self.active:
            return logits
        log_probs = torch.log_softmax(logits.float(), -1).cpu().numpy()  # (B, V), a copy of its own
        for b, (cosine, after) in enumerate(self.moments(log_probs)):
            if not len(cosine):
                continue
            shares = SHARES[:, likeness_bucket(cosine)] * self.weight
            for ids, share, memory in zip(KINDS, shares, recalled(cosine, after, SHARPNESS), strict=True):
                if memory is not None and share > 0:
                    with np.errstate(divide="ignore"):
                        log_probs[b, ids] = mixed(log_probs[b, ids], np.log(memory), share)
        return torch.from_numpy(log_probs).to(logits.device, logits.dtype)

    def read(self, tokens: np.ndarray) -> None:
        """One id per lane (B,): each lane remembers its last mixed moment and the id that followed it."""
        if not self.active or self.pending is None:
            return
        for lane, key, token in zip(self.lanes, self.pending, np.asarray(tokens, dtype=np.int64).ravel(),
                                    strict=True):
            lane.add(key[None], np.array([token]))
        self.pending = None
