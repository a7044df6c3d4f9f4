"""A warm start across codecs ("transfer by meaning"): a model of one codec becomes the start of a model of another.

A model trained on the event codec ("performance") already knows pitches, the clock and dynamics; a model of the
note codec ("notes") reads the same things under other ids. So every weight of the same name and shape is copied,
and the weights indexed by ids (the embedding's rows, the output head's rows) are copied row by row from the id of
the same meaning: PAD, BOS, EOS the same ids; a note's onset (NoteOn_p -> Pitch_p); TimeShift_k; Velocity_b. An
id whose meaning the old codec lacks (a note's Duration, which the event codec says with a NoteOff; a NoteOff,
going the other way) starts from the mean of the old codec's rows of that kind: nothing random. A denoiser's extra
MASK row (the row after the codec's ids) is copied as it is. Weights the new model does not have (an input that
only the old codec can feed, e.g. the sounding notes) are left behind, and said so.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core import tokenizer
from core.codecs import codec_named, codec_of
from core.errors import ModelError


def meanings(codec: str) -> list[tuple]:
    """What each id of the codec says, as a key two codecs share where they say the same thing: ("special", id),
    ("onset", pitch), ("shift", ticks), ("velocity", bin); the ids of a note's end (NoteOff, Duration) are
    ("end", codec, id) — an id of that kind in one codec has no counterpart in the other."""
    module = codec_named(codec)
    keys: list[tuple] = []
    for token in range(module.VOCAB_SIZE):
        if token in (tokenizer.PAD, tokenizer.BOS, tokenizer.EOS):
            keys.append(("special", token))
        elif module.TIME_SHIFT <= token < module.TIME_SHIFT + module.MAX_SHIFT_TICKS:
            keys.append(("shift", token - module.TIME_SHIFT + 1))
        elif module.VELOCITY <= token < module.VELOCITY + tokenizer.VELOCITY_BINS:
            keys.append(("velocity", token - module.VELOCITY))
        elif tokenizer.NOTE_ON <= token < tokenizer.NOTE_ON + 128:  # NoteOn_p == Pitch_p (core.codecs.ONSET)
            keys.append(("onset", token - tokenizer.NOTE_ON))
        else:
            keys.append(("end", codec, token))
    return keys


def row_sources(old: str, new: str) -> list[list[int]]:
    """For each id of codec `new`, the ids of codec `old` its rows start from (one id: a copy; several: their
    mean): the id of the same meaning, else every old id of the same kind (a note's end)."""
    old_keys = meanings(old)
    same = {key: token for token, key in enumerate(old_keys)}
    ends = [token for token, key in enumerate(old_keys) if key[0] == "end"]
    return [[same[key]] if key in same else ends for key in meanings(new)]


@dataclass(frozen=True)
class Transfer:
    """What a transfer did, for the model card."""

    source_codec: str
    codec: str
    copied: list[str]  # weights copied whole
    by_meaning: list[str]  # weights whose id rows were copied by meaning
    dropped: list[str]  # the source's weights the new model has no place for
    fresh: list[str]  # the new model's weights with no source (as the model initialises them)

    def describe(self) -> str:
        """One paragraph for the card."""
        special = {"performance": "NoteOn_p", "notes": "Pitch_p"}
        text = (f"transferred by meaning from the {self.source_codec!r} codec to {self.codec!r}: "
                f"{len(self.copied)} weights of the same name and shape copied; the id rows of "
                f"{', '.join(self.by_meaning) or 'no weight'} copied from the id of the same meaning (PAD, BOS, EOS; "
                f"{special.get(self.codec, 'onset')} <- {special.get(self.source_codec, 'onset')}; TimeShift; "
                "Velocity), a note's end (Duration / NoteOff, which the other codec lacks) from the mean of the "
                "other codec's rows of that kind")
        if self.dropped:
            text += f"; left behind: {', '.join(self.dropped)}"
        if self.fresh:
            text += f"; new, as initialised: {', '.join(self.fresh)}"
        return text


def _rows(old: torch.Tensor, sources: list[list[int]], dim: int, extra: int) -> torch.Tensor:
    """`old` indexed by ids along `dim`, re-indexed to the new codec's ids (+ `extra` rows after them, copied)."""
    moved = old.movedim(dim, 0)
    rows = [moved[ids].mean(dim=0) if len(ids) > 1 else moved[ids[0]] for ids in sources]
    base = moved.shape[0] - extra
    rows += [moved[base + k] for k in range(extra)]
    return torch.stack(rows).movedim(0, dim)


def transfer(source: torch.nn.Module, target: torch.nn.Module) -> Transfer:
    """Fill `target` (a model of another codec, otherwise the same architecture) from `source`, by meaning.

    ModelError when a weight of the same name fits neither whole nor by id rows (another size of model)."""
    old_codec, new_codec = codec_of(source).NAME, codec_of(target).NAME
    if source.arch != target.arch:
        raise ModelError(f"cannot transfer a {source.arch} model's weights into a {target.arch} model")
    old_vocab, new_vocab = codec_named(old_codec).VOCAB_SIZE, codec_named(new_codec).VOCAB_SIZE
    sources = row_sources(old_codec, new_codec)
    old_state, new_state = source.state_dict(), target.state_dict()
    copied, by_meaning, misfits = [], [], []
    filled = {}
    for name, value in new_state.items():
        old = old_state.get(name)
        if old is None:
            continue
        if old.shape == value.shape:
            filled[name] = old.to(value.dtype)
            copied.append(name)
            continue
        dims = [d for d in range(old.dim()) if old.dim() == value.dim() and old.shape[d] != value.shape[d]]
        extra = old.shape[dims[0]] - old_vocab if len(dims) == 1 else -1
        if len(dims) == 1 and extra in (0, 1) and value.shape[dims[0]] == new_vocab + extra:
            filled[name] = _rows(old.float(), sources, dims[0], extra).to(value.dtype)
            by_meaning.append(name)
        else:
            misfits.append(f"{name} {tuple(old.shape)} -> {tuple(value.shape)}")
    if misfits:
        raise ModelError("the models differ in more than their codec: " + "; ".join(misfits[:3]))
    target.load_state_dict({**new_state, **filled})
    dropped = sorted({name.rsplit(".", 1)[0] for name in old_state if name not in new_state})
    fresh = sorted(name for name in new_state if name not in filled)
    return Transfer(old_codec, new_codec, copied, by_meaning, dropped, fresh)


def transferred(source: torch.nn.Module, codec: str, changes: dict | None = None) -> tuple[torch.nn.Module, Transfer]:
    """A new model of `source`'s architecture and config but for its codec (and `changes` to its config, e.g.
    an input the new codec refuses turned off), its weights transferred by meaning."""
    config = {**source.config.to_dict(), **(changes or {}), "codec": codec, "vocab_size": None}
    target = type(source)(type(source.config).from_dict(config))
    return target, transfer(source, target)

