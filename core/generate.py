"""Sampling and the token stream under every generation session (core/session.py), which every consumer uses.

`generate` is a Python generator: it yields ids as they are sampled, so a caller can play, draw or stop between
any two tokens. It uses only the common model interface (core/models/interface.py):

    model.plan(budget_bytes, batch) -> plan (.nbytes, .describe())
    model.new_state(plan, batch)    -> state (.nbytes, .reset(lane))
    model.prefill(ids (B, T), state) -> logits (B, V) after the last id
    model.step(ids (B,), state)      -> logits (B, V) after that id
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core import notecodec, tokenizer
from core.codecs import Codec, codec_of
from core.constraints import Constraints
from core.contextcache import CAPACITY, ContextCache
from core.errors import ModelError
from core.harmony import PrimerHarmony
from core.motif import MotifMemory
from core.pulse import PrimerPulse
from core.tokenizer import BOS, EOS, NOTE_OFF, NOTE_ON, PAD, TICK_SECONDS, TIME_SHIFT, shift_ticks

# -- sampling filters: logits (B, V) in, logits out; filtered-out entries become -inf -------------------------

def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen (< 1) or flatten (> 1) the distribution; temperature 0 is handled by `sample` (greedy)."""
    return logits / temperature


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k most likely ids of each row."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus: keep the most likely ids whose probabilities sum to p (always at least the best one)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # mass strictly above each id
    drop_sorted = before >= p
    drop_sorted[..., 0] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def min_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep ids at least p times as likely as the most likely one."""
    if p <= 0.0:
        return logits
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.max(-1, keepdim=True).values, float("-inf"))


@dataclass(frozen=True)
class SamplingConfig:
    """How the next id is drawn. Defaults: plain sampling at temperature 1 (0: always the most likely id)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    min_p: float = 0.0  # 0: off

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ModelError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ModelError(f"top-k must be >= 0, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ModelError(f"top-p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p < 1.0:
            raise ModelError(f"min-p must be in [0, 1), got {self.min_p}")


def sample(logits: torch.Tensor, sampling: SamplingConfig, generator: torch.Generator | None = None
           ) -> torch.Tensor:
    """One id per row (B,) from logits (B, V)."""
    logits = logits.float()
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = apply_temperature(logits, sampling.temperature)
    logits = top_k_filter(logits, sampling.top_k)
    logits = top_p_filter(logits, sampling.top_p)
    logits = min_p_filter(logits, sampling.min_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


# -- the stream -----------------------------------------------------------------------------------------------

def prepare_primer(primer_ids: Sequence[int] | np.ndarray | torch.Tensor | None, vocab_size: int) -> torch.Tensor:
    """Primer as a 1-D LongTensor that starts with BOS and does not end with EOS (we continue it)."""
    ids = torch.as_tensor(np.asarray([] if primer_ids is None else primer_ids, dtype=np.int64)).flatten()
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ModelError(f"primer ids must lie in [0, {vocab_size})")
    if ids.numel() and int(ids[-1]) == EOS:
        ids = ids[:-1]
    if (ids == EOS).any() or (ids[1:] == BOS).any():
        raise ModelError("the primer must be one piece: no EOS or BOS inside it")
    if not ids.numel() or int(ids[0]) != BOS:
        ids = torch.cat([torch.tensor([BOS]), ids])
    return ids


def use_fast_step(model, exact: bool = False) -> None:
    """Let a model generate with its fast reduced-precision step weights where it has them (both models on a
    CPU: int8, 1.2-1.5x the tokens/s, probabilities within ~1e-3 of fp32); `exact` keeps the fp32 step, which
    reproduces training bit for bit. Training and `forward` are never affected."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    if on_cpu and hasattr(torch, "_weight_int8pack_mm"):  # every model has use_step_weights (the interface)
        model.use_step_weights("fp32" if exact else "int8")


MAX_NOTE_SECONDS = 8.0  # longer-held notes are released, or no longer chosen (see `generate`)


PRIMER_CHUNK = 1 << 16  # ids HeldNotes reads at once: its temporaries stay small however long the primer


class HeldNotes:
    """The event codec's note rule: when each lane's sounding pitches started, to release those held too long
    (per lane, in seconds). It never masks a draw; it replaces one (`follow`)."""

    def __init__(self, batch: int, limit: float | None, primer: Sequence[int] | np.ndarray):
        self.limit = limit
        self.clock = np.zeros(batch)  # seconds since the primer's start
        self.started = np.full((batch, 128), np.nan)  # (B, pitch): onset of the sounding note, NaN if silent
        clock, started = 0.0, np.full(128, np.nan)  # the primer, the same in every lane: read once, in chunks
        primer = np.asarray(primer)
        for begin in range(0, len(primer), PRIMER_CHUNK):
            clock = _follow(primer[begin:begin + PRIMER_CHUNK].astype(np.int64), clock, started)
        self.clock[:] = clock
        self.started[:] = started

    def mask(self, device: torch.device, dtype: torch.dtype) -> None:
        """No mask: the event codec's notes are ended after the fact, by `follow`."""
        return None

    def read(self, tokens: np.ndarray) -> None:
        """Follow one id per lane (B,)."""
        lanes = np.arange(len(tokens))
        on = (tokens >= NOTE_ON) & (tokens < NOTE_OFF)
        self.started[lanes[on], tokens[on] - NOTE_ON] = self.clock[on]
        off = (tokens >= NOTE_OFF) & (tokens < TIME_SHIFT)
        self.started[lanes[off], tokens[off] - NOTE_OFF] = np.nan
        self.clock += shift_ticks(tokens) * TICK_SECONDS  # + 0.0 where no time passes: the same bits

    def release(self, tokens: np.ndarray) -> bool:
        """Replace, in place, a lane's drawn id by the NoteOff of its longest-held note when that note is over
        the limit; then follow the ids. True if any id was replaced."""
        replaced = False
        if self.limit is not None:
            with np.errstate(invalid="ignore"):
                age = self.clock[:, None] - self.started  # (B, 128), NaN where silent
            over = np.nan_to_num(age, nan=-1.0)
            lanes = np.nonzero(over.max(axis=1) > self.limit)[0]
            if len(lanes):
                tokens[lanes] = NOTE_OFF + over[lanes].argmax(axis=1)
                replaced = True
        self.read(tokens)
        return replaced

    follow = release  # the note rule's name for it (`note_rule`)


class ChosenDurations:
    """The notes codec's note rule: each lane's next id must follow its last one (`notecodec.Grammar`): a Duration
    after every Pitch and only there, none longer than `limit` seconds (the length of a note is chosen where it
    starts, so nothing is released later), EOS only where `eos` and never after a Pitch, and no pitch struck again
    sooner than `min_repeat` seconds after its last strike, the primer's included (None or 0: any time; see
    `notecodec.MIN_REPEAT_SECONDS`)."""

    def __init__(self, batch: int, limit: float | None, primer: Sequence[int] | np.ndarray, eos: bool,
                 min_repeat: float | None = notecodec.MIN_REPEAT_SECONDS):
        if min_repeat is not None and not min_repeat >= 0:
            raise ModelError(f"the shortest re-strike of a pitch must be >= 0 seconds (0: any), got {min_repeat}")
        last = int(primer[-1]) if len(primer) else BOS  # a primer ending with a Pitch gets its Duration first
        self.grammar = notecodec.Grammar(batch, last, limit, eos=eos, min_repeat_seconds=min_repeat or 0.0,
                                         primer=primer)

    def mask(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(B, V) additive: 0 where the lane's next id may be, -inf elsewhere."""
        return self.grammar.mask(device, dtype)

    def follow(self, tokens: np.ndarray) -> bool:
        """Follow one id per lane (B,); nothing is ever replaced (False)."""
        self.grammar.read(tokens)
        return False


def note_rule(codec: Codec, batch: int, limit: float | None, primer: Sequence[int] | np.ndarray,
              stop_at_eos: bool, min_repeat: float | None = notecodec.MIN_REPEAT_SECONDS
              ) -> HeldNotes | ChosenDurations:
    """How `codec` keeps notes from hanging past `limit` seconds: the event codec releases them (`HeldNotes`), the
    notes codec never chooses a longer duration (`ChosenDurations`), nor a re-strike of a pitch within
    `min_repeat` seconds (the event codec's rule has no such guard: `min_repeat` is the notes codec's alone)."""
    if codec.NAME == notecodec.NAME:
        return ChosenDurations(batch, limit, primer, stop_at_eos, min_repeat)
    return HeldNotes(batch, limit, primer)


def _follow(tokens: np.ndarray, clock: float, started: np.ndarray) -> float:
    """Follow ids (T,) from `clock`: update `started` (128,) in place as reading them one by one would, and
    return the clock after them (summed in the same order, so to the same bits)."""
    shift = shift_ticks(tokens) * TICK_SECONDS
    clocks = np.cumsum(np.concatenate([[clock], shift]))  # clocks[t]: the clock when id t is read
    on = (tokens >= NOTE_ON) & (tokens < NOTE_OFF)
    off = (tokens >= NOTE_OFF) & (tokens < TIME_SHIFT)
    pitch = np.where(on, tokens - NOTE_ON, tokens - NOTE_OFF)
    last_on, last_off = np.full(128, -1), np.full(128, -1)
    np.maximum.at(last_on, pitch[on], np.nonzero(on)[0])  # the last NoteOn / NoteOff of each pitch
    np.maximum.at(last_off, pitch[off], np.nonzero(off)[0])
    sounding = last_on > last_off  # a pitch's last event decides: started then, or silent
    started[sounding] = clocks[last_on[sounding]]
    started[last_off > last_on] = np.nan
    return float(clocks[-1])


def seeded_generator(device: torch.device, seed: int | None) -> torch.Generator:
    """The random stream of one generation: `seed` makes it reproducible, None draws a fresh one."""
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    return generator


class LaneLimits:
    """Which lanes have finished and whether the stream is over, shared by every engine (this one, core/denoising.py):
    a lane ends at its EOS (when `stop_at_eos`) or its `max_seconds` of music (counted in `codec`'s TimeShifts, the
    id that reaches it is its last); the stream ends when every lane has, or after `max_tokens` ids (0: none)."""

    def __init__(self, batch: int, max_tokens: int | None, max_seconds: float | None, stop_at_eos: bool,
                 codec: Codec = tokenizer):
        if max_tokens is not None and max_tokens < 0:
            raise ModelError(f"max_tokens must be >= 0, got {max_tokens}")
        self.max_tokens, self.max_seconds, self.stop_at_eos = max_tokens, max_seconds, stop_at_eos
        self.shift_ticks = codec.shift_ticks
        self.done = np.zeros(batch, dtype=bool)  # (B,)
        self.seconds = np.zeros(batch)  # (B,) music written
        self.produced = 0

    def more(self) -> bool:
        """Whether another id may be written."""
        return self.max_tokens is None or self.produced < self.max_tokens

    def close(self, tokens: np.ndarray) -> np.ndarray:
        """Count one written id per lane (B,): in place, PAD where the lane had already finished; returns them."""
        tokens[self.done] = PAD
        if self.stop_at_eos:
            self.done |= tokens == EOS
        if self.max_seconds is not None:
            self.seconds += self.shift_ticks(tokens) * TICK_SECONDS
            self.done |= self.seconds >= self.max_seconds - 1e-9
        self.produced += 1
        return tokens

    def over(self) -> bool:
        return bool(self.done.all()) or self.produced == self.max_tokens


READ_CHUNK = 512  # primer ids read at once when the context cache keeps each one's logits


def read_primer(model, primer: torch.Tensor, state, batch: int, cache: ContextCache | None) -> torch.Tensor:
    """Read `primer` (T,) into every lane of `state` -> the logits (B, V) after its last id. With a cache, the
    ids it remembers (the last CAPACITY + 1) are `read` a chunk at a time, their logits (every lane's are the
    same) remembered with the ids that followed them; the rest is `prefill`ed as without one."""
    lanes = primer[None].expand(batch, -1)  # every lane, not copied
    if cache is None:
        return model.prefill(lanes, state)
    start = max(len(primer) - CAPACITY - 1, 0)
    if start:
        model.prefill(lanes[:, :start], state)
    logits = None
    for at in range(start, len(primer), READ_CHUNK):
        chunk = model.read(lanes[:, at:at + READ_CHUNK], state)  # (B, n, V)
        after = primer[at + 1:at + 1 + chunk.shape[1]].cpu().numpy()  # the ids that followed, none after the last
        cache.remember(chunk[0, :len(after)].float().cpu().numpy(), after)
        logits = chunk[:, -1]
    return logits


def generate(model, primer: torch.Tensor, state, sampling: SamplingConfig | None = None, *,
             max_tokens: int | None = None, max_seconds: float | None = None, stop_at_eos: bool = True,
             seed: int | None = None, max_note_seconds: float | None = MAX_NOTE_SECONDS,
             min_repeat_seconds: float | None = notecodec.MIN_REPEAT_SECONDS,
             constraints: Constraints | None = None, harmony: float = 0.0, pulse: float = 0.0,
             motifs: float = 0.0) -> Iterator[np.ndarray]:
    """The engine of a generation session (core/session.py): yield the ids that continue `primer`, one array (B,)
    of int64 per step, one id per lane of `state`, until a limit is reached.

    `primer` is prepared once by the caller (`prepare_primer`: BOS first, no EOS) and streamed through the state,
    however long, in memory that does not grow with it beyond its ids (held once for all lanes). A lane that has
    finished (its EOS or its max_seconds) yields PAD while the others go on. Limits, all optional (without any it
    runs until the caller stops iterating): max_tokens new ids per lane, max_seconds of music per lane (counted in
    TimeShift ids by the codec; the id that reaches it is the lane's last), and EOS when stop_at_eos. Without
    stop_at_eos the model may not end the piece: EOS is never drawn, so the piece runs to the other limits (what a
    composer asking for 30 s expects). PAD and BOS are never drawn.

    Notes never hang longer than `max_note_seconds` (None: no limit), by the model's codec (`note_rule`). The
    event codec's: a note held that long is released, its NoteOff is the lane's next id instead of a drawn one (and
    the model reads it); a model with bounded memory forgets notes it started beyond its horizon and would never
    end them. The notes codec's: its grammar is added to the logits, so every Pitch gets a Duration, none longer
    than the limit, and EOS never follows a Pitch; nor does a lane strike a pitch again sooner than
    `min_repeat_seconds` after its last strike (the primer's count; None or 0: any time), the stutter a notes model
    falls into (`notecodec.MIN_REPEAT_SECONDS`). `seed` makes the stream reproducible. The model is put in eval
    mode.

    `constraints` (core/constraints.py, resolved against the primer) add their mask to the logits before
    temperature and the filters, per lane; they read the primer but never change it. `harmony` > 0 pulls every
    lane's keys towards the pitch classes of the primer's last KEY_SECONDS, that weight hard (core/harmony.py
    `PrimerHarmony`: which key, never whether a note comes; 0, or no primer: not at all). `pulse` > 0 pulls every
    lane's TimeShifts towards the beat of the primer's last PULSE_SECONDS and where its onsets fall in it
    (core/pulse.py `PrimerPulse`: when the next note comes, never whether time moves on; 0, or no beat: not at all).
    `motifs` > 0 mixes each lane's memory of the piece, primer and all, into what the model predicts, that share of
    the fitted mixtures (0: none), before every mask and pull: the ids that followed the moments the model saw most
    alike (core/contextcache.py `ContextCache`, keyed by the model's own logits), then the next pitch and time step
    after the same run of intervals before and the length of a note that ends with one sounding (core/motif.py
    `MotifMemory`).
    """
    codec = codec_of(model)
    limits = LaneLimits(state.batch, max_tokens, max_seconds, stop_at_eos, codec)
    sampling = sampling or SamplingConfig()
    batch = state.batch
    model.eval()
    device = next(model.parameters()).device
    generator = seeded_generator(device, seed)

    cache = ContextCache(model, codec, batch, motifs)  # it checks the weight; inactive at 0
    # Grad mode is thread-local: set it around each call, never across a yield.
    with torch.no_grad():
        logits = read_primer(model, primer.to(device), state, batch, cache if cache.active else None)
    notes = note_rule(codec, batch, max_note_seconds, primer.numpy(), stop_at_eos, min_repeat_seconds)
    never = [PAD, BOS] + ([] if stop_at_eos else [EOS])
    forbidden = torch.zeros(logits.shape[-1], dtype=logits.dtype, device=device)
    forbidden[never] = float("-inf")  # (V,)
    tracker = (constraints.tracker(batch, primer.numpy(), logits.shape[-1], codec=codec)
               if constraints is not None else None)
    keys = PrimerHarmony(codec, primer.numpy(), harmony) if harmony else None  # it checks the weight
    beat = PrimerPulse(codec, primer.numpy(), batch, pulse)  # it checks the weight; inactive at 0 or without a beat
    beat = beat if beat.active else None
    memory = MotifMemory(codec, primer.numpy(), batch, motifs)  # it checks the weight; inactive at 0
    memory = memory if memory.active else None
    del primer  # read: the steps never look back at it, and a long primer's ids are freed before they run
    while limits.more():
        if cache.active:
            logits = cache.mix(logits)  # from the model's own logits: they are its keys
        if memory is not None:
            logits = memory.mix(logits)
        allowed = logits + forbidden
        rule = notes.mask(device, allowed.dtype)
        if rule is not None:
            allowed = allowed + rule
        if tracker is not None:
            constrained = allowed + tracker.mask(device, allowed.dtype)
            if rule is not None:  # the grammar first: a lane the constraints would leave no id keeps its rule's
                constrained = torch.where(torch.isinf(constrained).all(-1, keepdim=True), allowed, constrained)
            allowed = constrained
        if keys is not None:
            allowed = keys.pull(allowed)
        if beat is not None:
            allowed = beat.pull(allowed)
        ids = sample(allowed, sampling, generator)  # (B,)
        tokens = ids.cpu().numpy()
        if notes.follow(tokens):  # some lanes end a note instead
            ids = torch.from_numpy(tokens).to(ids.device)
        if beat is not None:
            beat.read(tokens)
        if memory is not None:
            memory.read(tokens)
        cache.read(tokens)
        if tracker is not None:
            tracker.read(tokens)
        yield limits.close(tokens)  # PAD where a lane has finished
        if limits.over():
            return
        with torch.no_grad():
            logits = model.step(ids, state)
