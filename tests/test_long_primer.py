"""Reading a long primer: prefill skips what the final state cannot depend on (bit for bit the same logits and
state as reading everything) and holds memory that does not grow with the primer's length."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from core.generate import HeldNotes, generate, prepare_primer
from core.models.dsmr import DSMR, DSMRConfig
from core.models.perceivers import PerceiverS, PerceiverSConfig
from core.tokenizer import BOS, NOTE_OFF, NOTE_ON, TIME_SHIFT, VELOCITY, VOCAB_SIZE

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENT = 8


def dsmr() -> DSMR:
    torch.manual_seed(0)
    config = DSMRConfig(d_model=32, n_layers=3, n_heads=4, segment_len=SEGMENT, max_horizon=64, n_long=1,
                        long_ratio=3.0, default_budget="64KB")
    return DSMR(config).eval()


def perceivers() -> PerceiverS:
    torch.manual_seed(0)
    return PerceiverS(PerceiverSConfig(context=24, latents=8, scale=5, d_model=16, n_heads=2, n_layers=2)).eval()


def random_ids(batch: int, length: int, seed: int = 1, bos: bool = True) -> torch.Tensor:
    ids = torch.randint(3, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed))
    if bos:
        ids[:, 0] = BOS
    return ids


def read_all(model, ids: torch.Tensor, state) -> torch.Tensor:
    """Prefill without skipping: every id read, as before the skip existed."""
    skip = model._skip
    model._skip = lambda *args: 0
    try:
        return model.prefill(ids, state)
    finally:
        model._skip = skip


def dsmr_state_tensors(state) -> list[torch.Tensor]:
    """What a DSMR state holds that later tokens can see: the valid slots' keys/values, validity, positions."""
    valid = []
    for kv, m in zip(state.kv, state.horizons, strict=True):
        columns = state.valid[:, state.max_horizon - m:state.max_horizon + state.fill]  # (B, m + fill)
        valid.append(kv[:, :, :, :m + state.fill] * columns[:, None, None, :, None])
    return [*valid, state.valid, state.positions]


def perceivers_state_tensors(state) -> list[torch.Tensor]:
    return [state.length, state.start, state.context_start]


@torch.no_grad()
@pytest.mark.parametrize("length", [3 * SEGMENT, 40 * SEGMENT, 40 * SEGMENT + 5, 41 * SEGMENT - 1])
@pytest.mark.parametrize("already", [0, 3], ids=["fresh", "mid-segment"])
def test_dsmr_prefill_skips_to_the_same_bits(length, already):
    model = dsmr()
    plan = model.plan("64KB", batch=2)
    skipped, full = model.new_state(plan), model.new_state(plan)
    if already:  # a state already partway through a segment: the primer then goes on from there
        head = random_ids(2, already, seed=7)
        model.prefill(head, skipped), model.prefill(head, full)
    ids = random_ids(2, length, bos=not already)
    reach = sum(plan.horizons) + len(plan.horizons) * SEGMENT
    assert (model._skip(ids, model.new_state(plan)) > 0) == (length >= reach + 2 * SEGMENT)
    got, expected = model.prefill(ids, skipped), read_all(model, ids, full)
    assert torch.equal(got, expected)
    assert skipped.fill == full.fill
    for a, b in zip(dsmr_state_tensors(skipped), dsmr_state_tensors(full), strict=True):
        assert torch.equal(a, b)
    after = random_ids(2, 2 * SEGMENT + 3, seed=9, bos=False)  # and what follows reads the same
    assert torch.equal(model(after, skipped), model(after, full))
    assert torch.equal(model.step(after[:, 0], skipped), model.step(after[:, 0], full))


@torch.no_grad()
def test_dsmr_prefill_with_a_bos_inside_reads_everything():
    model = dsmr()
    plan = model.plan("64KB", batch=1)
    ids = random_ids(1, 60 * SEGMENT)
    ids[0, 30 * SEGMENT + 3] = BOS
    assert model._skip(ids, model.new_state(plan)) == 0
    assert torch.equal(model.prefill(ids, model.new_state(plan)), read_all(model, ids, model.new_state(plan)))


@torch.no_grad()
@pytest.mark.parametrize("length", [5, 8, 9, 30, 200, 203, 1001])
@pytest.mark.parametrize("context", [24, 16, 8])
def test_perceivers_prefill_skips_to_the_same_bits(length, context):
    model = perceivers()
    c = model.config
    from core.models.perceivers.state import state_bytes

    plan = model.plan(state_bytes(2, context, c.latents, c.scale, c.n_layers, c.d_model, 4), batch=2)
    assert plan.context == context
    skipped, full, stepped = model.new_state(plan), model.new_state(plan), model.new_state(plan)
    ids = random_ids(2, length)
    got, expected = model.prefill(ids, skipped), read_all(model, ids, full)
    assert torch.equal(got, expected)
    for a, b in zip(perceivers_state_tensors(skipped), perceivers_state_tensors(full), strict=True):
        assert torch.equal(a, b)
    for t in range(length):  # and stepping id by id agrees, as the cache tests hold it
        by_step = model.step(ids[:, t], stepped)
    assert torch.allclose(got, by_step, atol=1e-5)
    after = random_ids(2, 20, seed=3, bos=False)
    for t in range(20):  # what follows: the lean path and re-encodes, from both states alike
        a, b = model.step(after[:, t], skipped), model.step(after[:, t], full)
        assert torch.equal(a, b), t


@torch.no_grad()
def test_perceivers_prefill_of_lanes_out_of_phase():
    model = perceivers()
    plan = model.plan(budget_bytes=10**6, batch=2)
    skipped, full = model.new_state(plan), model.new_state(plan)
    for state in (skipped, full):
        model.prefill(random_ids(2, 13, seed=4), state)
        state.reset(1)  # lane 1 starts over: the lanes now differ in phase
    ids = random_ids(2, 500, bos=False)
    assert torch.equal(model.prefill(ids, skipped), read_all(model, ids, full))
    assert torch.equal(skipped.length, full.length) and torch.equal(skipped.start, full.start)


class LargestAllocation(TorchDispatchMode):
    """The largest storage any operation allocated (bytes): activations, masks, logits, copies of the ids. Results
    that live in storage given beforehand (the ids, the state written in place) are not new allocations."""

    def __init__(self, *given: torch.Tensor):
        super().__init__()
        self.given = {t.untyped_storage().data_ptr() for t in given}
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.untyped_storage().data_ptr() not in self.given:
                self.largest = max(self.largest, tensor.untyped_storage().nbytes())
        return out


def state_tensors(state) -> list[torch.Tensor]:
    return state.tensors() if hasattr(state, "tensors") else [*state.kv, state.valid, state.positions]


def largest_allocation_of_prefill(model, length: int, skip: bool) -> int:
    ids = random_ids(1, length)
    state = model.new_state(model.plan(None, batch=1))
    with torch.no_grad(), LargestAllocation(ids, *state_tensors(state)) as mode:
        if skip:
            model.prefill(ids, state)
        else:
            read_all(model, ids, state)
    return mode.largest


@pytest.mark.parametrize("make", [dsmr, perceivers])
def test_prefill_memory_does_not_grow_with_the_primer(make):
    """No tensor made while reading a primer grows with it, skipping or reading every id."""
    model = make()
    for skip in (True, False):
        sizes = [largest_allocation_of_prefill(model, length, skip) for length in (300, 1500)]
        assert sizes[1] == sizes[0], (skip, sizes)


def test_generate_holds_the_primer_once_whatever_the_batch():
    """The largest thing generation allocates for a long primer is its ids, once (not once per lane)."""
    model = dsmr()
    length = 40_000
    primer = random_ids(1, length)[0].numpy()
    state = model.new_state(model.plan("64KB", batch=3))
    prepared = prepare_primer(primer, VOCAB_SIZE)  # once, as a GenerationSession does, before generating
    with LargestAllocation(*state_tensors(state), *model.parameters(), prepared) as mode:
        next(generate(model, prepared, state, max_tokens=1, seed=0))
    assert mode.largest <= (length + 1) * 8, mode.largest


def test_held_notes_read_a_primer_in_chunks_as_id_by_id():
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 4, 5000)
    ids = np.select([kinds == 0, kinds == 1, kinds == 2],
                    [NOTE_ON + rng.integers(50, 60, 5000), NOTE_OFF + rng.integers(50, 60, 5000),
                     TIME_SHIFT + rng.integers(0, 30, 5000)], VELOCITY + rng.integers(0, 8, 5000))
    ids[0] = BOS
    whole = HeldNotes(2, 8.0, ids)
    stepped = HeldNotes(2, 8.0, ids[:1])
    for token in ids[1:]:
        stepped.read(np.array([token, token]))
    assert np.array_equal(whole.clock, stepped.clock)
    assert np.array_equal(whole.started, stepped.started, equal_nan=True)
    assert np.isfinite(whole.started).any()  # some notes still sound: the test means something


def test_scoring_holds_one_chunk_at_a_time(monkeypatch):
    """`recital eval` scores a piece chunk by chunk; the report sums the chunks to what the whole piece gives."""
    from core import metrics

    model = dsmr()
    monkeypatch.setattr(metrics, "SCORE_CHUNK", 50)
    ids = random_ids(1, 333)[0].numpy()
    plan = model.plan("64KB", batch=1)
    with torch.no_grad():
        chunks = list(metrics.chunk_log_probs(model, ids, model.new_state(plan, 1), torch.device("cpu")))
        whole = metrics.piece_log_probs(model, ids, model.new_state(plan, 1), torch.device("cpu"))
    assert [start for start, _ in chunks] == list(range(0, 332, 50))
    assert max(len(log_probs) for _, log_probs in chunks) == 50
    assert np.array_equal(np.concatenate([log_probs for _, log_probs in chunks]), whole)
    report = metrics.perplexity_report(model, [ids], 64 * 1024, bucket_edges=(0, 100, 400))
    assert report.tokens == 332 and list(report.bucket_tokens) == [99, 233]
    assert report.perplexity == pytest.approx(float(np.exp(-whole.mean())), rel=1e-9)


# ---- `recital continue` on a long primer: the output built and written without the primer's notes twice ---------

def random_canonical(rng: np.random.Generator, count: int, span: float, pitches: int):
    """A primer as read from a file (canonical): restrikes of one key closer than 10 ms and overlaps resolved."""
    from core.midi import canonical

    onset = rng.uniform(0, span, count)
    if rng.random() < 0.5:  # on a 5 ms grid: ties and strikes exactly 10 ms apart
        onset = np.round(onset / 0.005) * 0.005
    return canonical(onset, onset + rng.uniform(0, 2, count), rng.integers(60, 60 + pitches, count),
                     rng.integers(1, 128, count))


def random_part(rng: np.random.Generator, base, count: int, pitches: int):
    """New notes from about where `base` ends (a few ms before or after it, some at one time, some overlapping)."""
    from core.midi import Performance

    start = float(base.offset.max()) - float(rng.uniform(0, 0.05)) if len(base) else 0.0
    onset = start + (np.round(rng.uniform(0, 0.1, count) / 0.005) * 0.005 if rng.random() < 0.5
                     else rng.uniform(0, 1, count))
    return Performance.from_notes(onset, onset + rng.uniform(0, 1, count), rng.integers(60, 60 + pitches, count),
                                  rng.integers(1, 128, count))


def assert_same_notes(got, expected) -> None:
    for name in ("onset", "offset", "pitch", "velocity"):
        a, b = getattr(got, name), getattr(expected, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name


def test_joining_new_notes_to_a_canonical_primer_is_canonical_of_both():
    """exact_pieces' join resolves only the primer's last notes with the new ones; it gives what resolving all the
    notes together gives, bit for bit: merges within 10 ms, a held key ended by a new strike, ties, empty sides."""
    from core.midi import Performance, canonical
    from core.session import _joined, is_canonical

    rng = np.random.default_rng(0)
    touched = 0
    for _ in range(600):
        pitches = int(rng.integers(1, 6))
        base = random_canonical(rng, int(rng.integers(0, 50)), float(rng.choice([0.05, 0.5, 3.0])), pitches)
        part = random_part(rng, base, int(rng.integers(0, 10)), pitches)
        assert is_canonical(base)
        both = Performance.concat(base, part)
        expected = canonical(both.onset, both.offset, both.pitch, both.velocity)
        assert_same_notes(_joined(base, part), expected)
        touched += len(expected) < len(both) or not np.array_equal(expected.offset[:len(base)], base.offset)
    assert touched > 50  # merges and clipped primer notes happened: the cases that matter were met


def test_is_canonical_accepts_what_canonical_returns_and_nothing_it_would_change():
    from core.midi import Performance, canonical, read_performance
    from core.session import is_canonical
    from tests.conftest import PIANO_PIECE

    assert is_canonical(read_performance(PIANO_PIECE)) and is_canonical(Performance.empty())
    notes = Performance.from_notes([0.0, 0.5], [0.5, 1.0], [60, 60], [5, 5])
    assert is_canonical(notes)
    for onset, offset, pitch in (([0.0, 0.005], [1.0, 1.0], [60, 60]),  # a restrike within 10 ms
                                 ([0.0, 0.5], [1.0, 1.0], [60, 60]),  # a note sounding past its key's next strike
                                 ([0.5, 0.0], [1.0, 1.0], [60, 61]),  # not sorted by onset
                                 ([0.0, 0.0], [1.0, 1.0], [62, 61]),  # nor by pitch at one onset
                                 ([0.0, np.nan], [1.0, 1.0], [60, 61]),  # a time that is no number
                                 ([0.0, 0.5], [1.0, 0.4], [60, 61])):  # an offset before its onset
        odd = Performance(np.array(onset), np.array(offset), np.array(pitch, np.int16), np.array([5, 5], np.int16))
        assert not is_canonical(odd), (onset, offset, pitch)
    assert not is_canonical(Performance(notes.onset, notes.offset, notes.pitch.astype(np.int64), notes.velocity))
    rng = np.random.default_rng(1)
    for _ in range(100):  # and on random notes it says exactly whether canonical changes them
        onset = np.round(rng.uniform(0, 0.3, 20) / 0.005) * 0.005
        notes = Performance.from_notes(onset, onset + rng.uniform(0, 0.2, 20), rng.integers(60, 63, 20),
                                       rng.integers(1, 128, 20))
        again = canonical(notes.onset, notes.offset, notes.pitch, notes.velocity)
        same = len(again) == len(notes) and all(np.array_equal(getattr(again, name), getattr(notes, name))
                                               for name in ("onset", "offset", "pitch", "velocity"))
        assert is_canonical(notes) == same


@pytest.fixture
def tiny_model(tiny_model_dir):
    from core.modeldir import load_model

    return load_model(tiny_model_dir)


@pytest.fixture(params=["performance", "notes"])
def any_model(request, tiny_model_dir):
    """The tiny model of each codec (the event codec's directory, a notes DSMR of the same size)."""
    if request.param == "performance":
        from core.modeldir import load_model

        return load_model(tiny_model_dir)
    torch.manual_seed(0)
    return DSMR(DSMRConfig(codec="notes", d_model=32, n_layers=2, n_heads=2, segment_len=16, max_horizon=64))


@pytest.mark.parametrize("chunk", [None, 7], ids=["whole", "chunks-of-7"])
def test_a_session_holds_the_primer_as_uint16_and_writes_what_resolving_everything_gives(any_model, chunk,
                                                                                         monkeypatch):
    """Either codec, the primer read whole or a few ids at a time (how a primer of millions of ids is read)."""
    from core import notecodec
    from core import session as sessions
    from core.codecs import codec_of
    from core.midi import Performance, canonical, read_performance
    from core.session import GenerationSession
    from tests.conftest import PIANO_PIECE

    codec = codec_of(any_model)
    primer = read_performance(PIANO_PIECE)
    whole = GenerationSession(any_model, primer, seconds=5, variations=2, seed=4)
    whole.run()
    if chunk is not None:
        monkeypatch.setattr(sessions, "CHUNK", chunk)
        monkeypatch.setattr(notecodec, "_CHUNK", chunk)
    session = GenerationSession(any_model, primer, seconds=5, variations=2, seed=4)
    assert session.primer.dtype == np.uint16 and session.primer[0] == BOS
    assert np.array_equal(session.primer[1:], codec.encode(primer, eos=False)[1:])
    assert session.start_time == codec.ids_seconds(session.primer.astype(np.int64))
    session.run()
    parts = session.new_parts()
    assert all(len(part) for part in parts)
    assert session.lanes == whole.lanes
    for got, expected in zip(session.pieces(), codec.decode_continuations(session.primer, session.lanes),
                             strict=True):
        assert_same_notes(got, expected)
    for piece, part in zip(session.exact_pieces(), parts, strict=True):
        both = Performance.concat(primer, part)
        assert_same_notes(piece, canonical(both.onset, both.offset, both.pitch, both.velocity))
        assert piece.grid == primer.grid
    session.release()
    assert session.model is None and session.state is None
    assert len(session.exact_pieces()) == 2  # what is written needs only the ids and the primer's notes


def test_a_released_session_does_not_run(tiny_model):
    from core.errors import ModelError
    from core.session import GenerationSession

    session = GenerationSession(tiny_model, seconds=1)
    session.release()
    with pytest.raises(ModelError, match="released"):
        session.run()


def test_writing_a_piece_a_chunk_at_a_time_gives_the_same_bytes(tmp_path, monkeypatch):
    from core import midi
    from core.midi import read_performance, write_performance
    from tests.conftest import PIANO_PIECE

    piece = read_performance(PIANO_PIECE)
    write_performance(piece, tmp_path / "whole.mid")
    monkeypatch.setattr(midi, "_WRITE_CHUNK", 7)
    write_performance(piece, tmp_path / "chunks.mid")
    assert len(piece) > 7 and (tmp_path / "chunks.mid").read_bytes() == (tmp_path / "whole.mid").read_bytes()
