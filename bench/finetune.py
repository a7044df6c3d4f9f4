"""Fine-tuning on a composer's own performances: the shipped DSMR default before and after 15 minutes on 8 MAESTRO
performances, scored on the 2 held out.

    python -m bench.finetune                          # 15 min, bf16 where the CPU has it, the README's settings
    python -m bench.finetune --minutes 3 --precision fp32

The run is `recital train ../shared/midi/maestro --base default --minutes 15 --val-fraction 0.2 ...` through
`trainer.fine_tune` (the same split: seed 0 holds out 2 of the 10 pieces), written to a temporary folder. It
prints the held-out perplexity at each validation (the curve against wall time, validation included), then the
base model against the fine-tuned one, per held-out piece and per kind of token of the model's codec (NoteOn,
NoteOff, TimeShift, Velocity for a "performance" model; Pitch, Duration, TimeShift, Velocity for a "notes" one):
where the perplexity falls tells what fine-tuning taught (the base learned score-like music; performances add
velocity and timing). The held-out pieces are the corpus's ids in the base model's codec, as the trainer reads them. Both models
are scored whole, streamed under their default budget, as `recital eval --model` does. No asserts: CPU timings are
noisy when the machine is shared.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.data import SHARED_MIDI, require_midi
from core import notecodec, tokenizer
from core.budget import parse_budget
from core.codecs import codec_of
from core.metrics import piece_log_probs
from core.modeldir import load_model
from core.tokenizer import BOS, EOS

MAESTRO = SHARED_MIDI / "maestro"
# Each codec's kinds of token: (name, first id, end id).
KINDS = {
    tokenizer.NAME: (("NoteOn", tokenizer.NOTE_ON, tokenizer.NOTE_OFF),
                     ("NoteOff", tokenizer.NOTE_OFF, tokenizer.TIME_SHIFT),
                     ("TimeShift", tokenizer.TIME_SHIFT, tokenizer.VELOCITY),
                     ("Velocity", tokenizer.VELOCITY, tokenizer.VOCAB_SIZE), ("BOS/EOS", BOS, EOS + 1)),
    notecodec.NAME: (("Pitch", notecodec.PITCH, notecodec.DURATION),
                     ("Duration", notecodec.DURATION, notecodec.TIME_SHIFT),
                     ("TimeShift", notecodec.TIME_SHIFT, notecodec.VELOCITY),
                     ("Velocity", notecodec.VELOCITY, notecodec.VOCAB_SIZE), ("BOS/EOS", BOS, EOS + 1)),
}


def native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), where CPU autocast pays off."""
    try:
        flags = cpuinfo.read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def score(model, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Per piece: the negative log-likelihood of each predicted token (positions 1..), under the default budget."""
    budget = parse_budget(model.config.default_budget)
    plan = model.plan(budget, batch=1)
    with torch.inference_mode():
        return [-piece_log_probs(model, ids, model.new_state(plan, 1), torch.device("cpu")) for ids in pieces]


def perplexity(nll: np.ndarray) -> float:
    return math.exp(float(nll.mean())) if len(nll) else float("nan")


def by_kind(targets: np.ndarray, nll: np.ndarray, codec: str = tokenizer.NAME) -> dict[str, tuple[float, float]]:
    """{kind: (share of the predicted tokens, mean nats)} for each kind of `codec`'s tokens that occurs among
    `targets` (ids of that codec)."""
    out = {}
    for kind, low, high in KINDS[codec]:
        pick = (targets >= low) & (targets < high)
        if pick.any():
            out[kind] = (float(pick.mean()), float(nll[pick].mean()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0, help="training wall time, validation included")
    parser.add_argument("--base", default="default", help="the model to fine-tune (default: the shipped DSMR)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the trainer's, 1e-3 fine-tuning)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--val-every", type=int, default=300)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                        help="default: bf16 where the CPU has it natively, fp32 otherwise")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    require_midi(MAESTRO)
    if args.threads:
        torch.set_num_threads(args.threads)
    precision = args.precision or ("bf16" if native_bf16() else "fp32")
    work = Path(tempfile.mkdtemp(prefix="recital-bench-finetune-"))
    os.environ.setdefault("RECITAL_CACHE_DIR", str(work / "cache"))

    from trainer.config import TrainConfig
    from trainer.corpus import Corpus
    from trainer.loop import fine_tune

    config = TrainConfig(folder=str(MAESTRO), base=args.base, out=str(work / "tuned"), minutes=args.minutes,
                         lr=args.lr, batch=args.batch, val_fraction=0.2, val_every=args.val_every,
                         checkpoint_every=10_000, patience=0, precision=precision, workers=1)
    started = time.monotonic()

    def on_progress(event) -> None:  # the held-out curve against wall time
        if event.kind == "eval" and event.val_perplexity is not None:
            minutes = (time.monotonic() - started) / 60
            print(f"  {minutes:5.1f} min  step {event.step:>5}  held-out perplexity {event.val_perplexity:.2f}",
                  flush=True)

    print(f"fine-tuning {args.base} on 8 MAESTRO performances for {args.minutes:g} min: lr {config.peak_lr:g}, batch "
          f"{args.batch}, {precision}, {torch.get_num_threads()} threads")
    result = fine_tune(config, on_progress=on_progress)
    tokens_per_s = result.tokens / max(result.wall_seconds, 1e-9)
    print(f"{result.steps} steps, {result.tokens:,} training tokens in {result.wall_seconds / 60:.1f} min "
          f"({tokens_per_s:,.0f} tokens/s with validation), stopped: {result.stopped}")

    base = load_model(args.base)
    codec = codec_of(base).NAME  # the fine-tuned model reads its base's codec; so did the trainer's corpus
    corpus = Corpus.open(MAESTRO, codec=codec)
    _, held_out = corpus.split(0.2, 0)
    pieces = [np.asarray(corpus.piece(i), dtype=np.int64) for i in held_out]
    names = [Path(corpus.index[i].path).name for i in held_out]
    before = score(base, pieces)
    after = score(load_model(result.model_dir), pieces)

    print(f"\nheld-out perplexity, {args.base} (before) vs fine-tuned (after), read whole at the default budget")
    print(f"{'':<16} {'tokens':>8} {'before':>9} {'after':>9} {'after/before':>13}")
    rows = [(name, b, a) for name, b, a in zip(names, before, after, strict=True)]
    rows.append(("all held out", np.concatenate(before), np.concatenate(after)))
    for name, b, a in rows:
        print(f"{name:<16} {len(b):>8,} {perplexity(b):>9.2f} {perplexity(a):>9.2f} "
              f"{perplexity(a) / perplexity(b):>12.0%}")

    targets = np.concatenate([ids[1:] for ids in pieces])
    b_all, a_all = np.concatenate(before), np.concatenate(after)
    print(f"\nby the kind of token predicted, {codec!r} codec (share of tokens; nats per token; perplexity within "
          "the kind)")
    print(f"{'kind':<10} {'share':>6} {'nats before':>12} {'nats after':>11} {'ppl before':>11} {'ppl after':>10}")
    after_kinds = by_kind(targets, a_all, codec)
    for kind, (share, b_nats) in by_kind(targets, b_all, codec).items():
        a_nats = after_kinds[kind][1]
        print(f"{kind:<10} {share:>6.1%} {b_nats:>12.2f} {a_nats:>11.2f} {math.exp(b_nats):>11.1f} "
              f"{math.exp(a_nats):>10.1f}")


if __name__ == "__main__":
    main()
