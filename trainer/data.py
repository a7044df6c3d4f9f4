"""Training batches from the corpus: whole-piece lane streams for DSMR, effective-segmentation crops for PerceiverS.

Everything random is drawn from generators seeded by (seed, what, index), never from a shared stream, so a batch
depends only on where the run is, not on how many processes share it or whether it was resumed:

- `PieceSource`: the training pieces in a seeded order, one epoch after another, forming one endless sequence S =
  perm_0 ++ perm_1 ++ ...; item n is augmented by its own draw (keyboard figuration, the bass an octave down and
  expressive performance first, when on, then transposition and stretch), in the corpus's codec. With per-piece
  weights (trainer.weights), epoch e holds piece j floor(w_j) times plus once more with probability frac(w_j), drawn
  from (seed, e), so its length varies. With start draws (trainer.weights.start_draws), epoch e also holds piece j's
  start s_j times (the same rounding): a passage of `start_tokens` ids read from BOS with no EOS, from a random note
  onset of the piece (notes codec: core.notecodec.restart; the event codec cannot cut a note's NoteOn from its
  NoteOff, so from the piece's own beginning), so that what a new piece begins like follows the start weights, not
  the piece counts.
- `LaneStream` (DSMR): global lane g of G reads S[g], S[g + G], S[g + 2G], ... back to back, from each piece's
  BOS to its EOS, `segment_len` tokens per batch. A piece that ends inside a segment is followed at once by the
  next one's BOS, which the model takes as a lane reset; the EOS of a piece, and a start's last id, have no target
  (PAD): the model never learns that a BOS follows them. A process holds only its own lanes; its position (item
  and offset per lane) is the resumable data position.
- `CropBatches` (PerceiverS): crop i of step s draws a piece (`PieceSource.draw`: in proportion to its length
  times its weight, or a start in proportion to its length times its start draws), augments it, and cuts an
  effective-segmentation crop, all from the generator (seed, s, i).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from core import notecodec
from core.models.perceivers.crops import collate, effective
from core.tokenizer import PAD
from trainer.augment import augment
from trainer.corpus import Corpus
from trainer.expressive import Expression, express_ids
from trainer.figuration import Figuration, figure_ids
from trainer.register import Register, lower_bass_ids

# what a generator is for (in its seed)
_ORDER, _AUGMENT, _CROP, _WEIGHT, _EXPRESS, _STARTS, _START_AT, _FIGURE, _REGISTER = range(9)
START_TOKENS = 512  # ids of a start draw after its BOS: ~10 s of piano in the notes codec


class PieceSource:
    """The training pieces as one endless, seeded, augmented sequence."""

    def __init__(self, corpus: Corpus, indices: list[int], seed: int, augmenting: bool, semitones: int = 5,
                 max_stretch: float = 0.05, expression: Expression | None = None,
                 weights: np.ndarray | None = None, starts: np.ndarray | None = None,
                 start_tokens: int = START_TOKENS, figuration: Figuration | None = None,
                 register: Register | None = None):
        if not indices:
            raise ValueError("no training pieces")
        self.corpus, self.indices, self.seed = corpus, list(indices), seed
        self.augmenting, self.semitones, self.max_stretch = augmenting, semitones, max_stretch
        self.expression = expression  # None: pieces as scored
        self.figuration = figuration  # None: chords as scored (trainer/figuration.py)
        self.register = register  # None: voices where scored (trainer/register.py)
        self.lengths = np.array([corpus.index[i].tokens for i in self.indices], dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)  # (pieces,) or None
        if self.weights is not None and (self.weights.shape != self.lengths.shape or not (self.weights > 0).any()):
            raise ValueError("weights need one non-negative number per training piece, some positive")
        self.starts = None if starts is None else np.asarray(starts, dtype=np.float64)  # (pieces,) or None
        if self.starts is not None and (self.starts.shape != self.lengths.shape or (self.starts < 0).any()):
            raise ValueError("starts need one non-negative number per training piece")
        self.start_tokens = start_tokens
        drawn = self.lengths * (1.0 if self.weights is None else self.weights)
        if self.starts is not None:
            drawn = np.concatenate([drawn, np.minimum(self.lengths, start_tokens) * self.starts])
        self._draw_p = drawn / drawn.sum()  # `draw`: pieces, then starts, by the tokens each gives
        self._order = lru_cache(maxsize=4)(self._permutation)
        self._epoch_ends: list[int] = []  # weighted: where each epoch computed so far ends in the sequence

    def __len__(self) -> int:
        return len(self.indices)

    def lane_stream(self, lanes: list[int], total_lanes: int, segment_len: int,
                    position: dict | None = None) -> LaneStream:
        """Whole pieces read back to back in segments (a left-to-right model with a recurrent state)."""
        return LaneStream(self, lanes, total_lanes, segment_len, position)

    def crop_batches(self, items: list[int], context: int, latents: int, sounding: bool = False) -> CropBatches:
        """Effective-segmentation crops (a model that reads a bounded context, like PerceiverS); `sounding`: each
        with the pitches sounding before it (crops.collate)."""
        return CropBatches(self, items, context, latents, sounding)

    def _permutation(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s draws in order: piece j as j, its start as j + pieces."""
        if self.weights is None and self.starts is None:
            return np.random.default_rng([self.seed, _ORDER, epoch]).permutation(len(self.indices))
        pieces = np.arange(len(self.indices))
        draws = pieces if self.weights is None else _repeat(pieces, self.weights, [self.seed, _WEIGHT, epoch])
        if self.starts is not None:
            draws = np.concatenate([draws, _repeat(pieces + len(pieces), self.starts, [self.seed, _STARTS, epoch])])
        return np.random.default_rng([self.seed, _ORDER, epoch]).permutation(draws)

    def _locate(self, n: int) -> tuple[int, int]:
        """(epoch, position in it) of item n of the endless sequence."""
        if self.weights is None and self.starts is None:
            return divmod(n, len(self.indices))
        while not self._epoch_ends or self._epoch_ends[-1] <= n:
            start = self._epoch_ends[-1] if self._epoch_ends else 0
            self._epoch_ends.append(start + len(self._permutation(len(self._epoch_ends))))
        epoch = int(np.searchsorted(self._epoch_ends, n, side="right"))
        return epoch, n - (self._epoch_ends[epoch - 1] if epoch else 0)

    def item(self, n: int) -> np.ndarray:
        """The n-th draw of the endless sequence, augmented (int64 ids, BOS ... EOS, or a start: BOS ...)."""
        epoch, j = self._locate(n)
        drawn = int(self._order(epoch)[j])
        return self.piece(drawn, n) if drawn < len(self.indices) else self.start(drawn - len(self.indices), n)

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A piece or a start drawn at random in proportion to the tokens it gives (length times weight, or the
        start's length times its start draws), augmented by a draw number from `rng` (a model that cuts its own
        windows or crops)."""
        drawn = int(rng.choice(len(self._draw_p), p=self._draw_p))
        draw = int(rng.integers(2**62))
        return self.piece(drawn, draw) if drawn < len(self.indices) else self.start(drawn - len(self.indices), draw)

    def start(self, j: int, draw: int) -> np.ndarray:
        """Piece j's start of draw number `draw`: BOS and its first `start_tokens` ids from a random note onset
        (notes codec) or from its beginning, performed and augmented as the piece is, no EOS."""
        ids = self.piece(j, draw)
        if self.corpus.codec != notecodec.NAME:
            return ids[:self.start_tokens + 1]
        onsets = notecodec.onset_starts(ids)
        if not len(onsets):
            return ids[:self.start_tokens + 1]
        at = int(onsets[np.random.default_rng([self.seed, _START_AT, draw]).integers(len(onsets))])
        return notecodec.restart(ids, at, self.start_tokens)

    def piece(self, j: int, draw: int) -> np.ndarray:
        """Training piece j, performed and augmented by draw number `draw` (when those are on)."""
        ids = np.asarray(self.corpus.piece(self.indices[j]), dtype=np.int64)
        if self.figuration is not None:
            ids = figure_ids(ids, np.random.default_rng([self.seed, _FIGURE, draw]), self.figuration,
                             self.corpus.codec)
        if self.register is not None:
            ids = lower_bass_ids(ids, np.random.default_rng([self.seed, _REGISTER, draw]), self.register,
                                 self.corpus.codec)
        if self.expression is not None:
            ids = express_ids(ids, np.random.default_rng([self.seed, _EXPRESS, draw]), self.expression,
                              self.corpus.codec)
        if not self.augmenting:
            return ids
        rng = np.random.default_rng([self.seed, _AUGMENT, draw])
        return augment(ids, rng, self.semitones, self.max_stretch, self.corpus.codec)


class LaneStream:
    """Some of the G global lanes, each reading its pieces whole, one segment per batch."""

    def __init__(self, source: PieceSource, lanes: list[int], total_lanes: int, segment_len: int,
                 position: dict | None = None):
        self.source, self.lanes, self.total, self.length = source, list(lanes), total_lanes, segment_len
        self.k = [0] * len(self.lanes)  # item number (of this lane's own sequence) being read
        self.offset = [0] * len(self.lanes)  # next token of that item
        if position is not None:
            self.k, self.offset = list(position["k"]), list(position["offset"])
            if list(position["lanes"]) != self.lanes:
                raise ValueError("the saved data position is for other lanes")
        self._cache: list[dict[int, np.ndarray]] = [{} for _ in self.lanes]

    def position(self) -> dict:
        return {"lanes": list(self.lanes), "k": list(self.k), "offset": list(self.offset)}

    def _item(self, j: int, k: int) -> np.ndarray:
        cache = self._cache[j]
        if k not in cache:
            for old in [key for key in cache if key < self.k[j]]:
                del cache[old]
            cache[k] = self.source.item(self.lanes[j] + k * self.total)
        return cache[k]

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """inputs (B, L) and targets (B, L) int64 of the next segment of every lane; the lanes move on by L."""
        inputs = np.empty((len(self.lanes), self.length), dtype=np.int64)
        targets = np.empty_like(inputs)
        for j in range(len(self.lanes)):
            tokens, ends = self._peek(j, self.length + 1)
            inputs[j] = tokens[:-1]
            targets[j] = np.where(ends[:-1], PAD, tokens[1:])
            self._consume(j, self.length)
        return inputs, targets

    def _peek(self, j: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `count` tokens of lane j, and whether each is the last of its piece."""
        tokens, ends = [], []
        k, offset = self.k[j], self.offset[j]
        while count > 0:
            piece = self._item(j, k)
            take = piece[offset:offset + count]
            last = np.zeros(len(take), dtype=bool)
            if offset + len(take) == len(piece):
                last[-1] = True
            tokens.append(take)
            ends.append(last)
            count -= len(take)
            k, offset = k + 1, 0
        return np.concatenate(tokens), np.concatenate(ends)

    def _consume(self, j: int, count: int) -> None:
        offset = self.offset[j] + count
        while offset >= len(self._item(j, self.k[j])):
            offset -= len(self._item(j, self.k[j]))
            self.k[j] += 1
        self.offset[j] = offset


class CropBatches:
    """PerceiverS micro-batches: crop `item` of micro-batch (step, micro) depends on those numbers only."""

    def __init__(self, source: PieceSource, items: list[int], context: int, latents: int, sounding: bool = False):
        self.source, self.items, self.context, self.latents = source, list(items), context, latents
        self.sounding = sounding  # the crops carry the pitches sounding before them (a model with that input)

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        """inputs (b, N) and targets (b, M) int64."""
        crops = []
        for item in self.items:
            rng = np.random.default_rng([self.source.seed, _CROP, step, micro, item])
            crops.append(effective(self.source.draw(rng), rng, self.context, self.latents, self.sounding))
        return collate(crops)


def _repeat(values: np.ndarray, times: np.ndarray, seed: list[int]) -> np.ndarray:
    """Each value floor(t) times and once more with probability frac(t), the chance drawn from `seed`."""
    whole = np.floor(times)
    extra = np.random.default_rng(seed).random(len(times)) < times - whole
    return np.repeat(values, (whole + extra).astype(np.int64))
