"""SMDIM's MFA stack against an all-attention stack of the same width and depth: one denoising pass per length.

    python -m bench.smdim                       # default-size SMDIM, 1k, 4k and 16k tokens, one thread
    python -m bench.smdim --lengths 1024 4096 --threads 2 --repeats 3
    python -m bench.smdim --speed               # issue #18: infill seconds and training tokens/s, before/after
    python -m bench.smdim --context             # issue #18: infill seconds by the music read each side
    python -m bench.smdim --codec notes         # any of the above with models of the note-level codec

Both models share everything but the blocks: the embedding, the strided convolution that shortens the sequence,
its transpose and the head. SMDIM's blocks are bidirectional Mamba + feed-forward + windowed attention; the
reference's are Transformer blocks (full bidirectional attention + feed-forward, PyTorch's fused attention) on
the same shortened sequence, the "Transformer diffusion model" the paper compares against. One pass is what each
unmasking step costs. Each (model, length) runs in a fresh process: its peak resident memory during the pass,
above what it held before it (model, ids, a warm-up at 256 tokens), is its own. No asserts: CPU numbers are
noisy when other jobs share the machine; the claim is about growth (near-linear against quadratic).

--speed (issue #18) measures, in one process with the forms taking turns so they share the machine's load (printed
by `uptime`): the seconds to infill an 8 s region (20-28 s of the first MAESTRO piece, 32 unmasking steps, one
variation) with an untrained default-size SMDIM, at --speed-threads threads (2: the issue's laptop), by the scan
before this change ("loop": the chunked scan stepped under autograd) and now (stepwise), each with fp32 weights,
and now with the reduced "int8" pass weights; and training tokens/s (masked-window loss, backward, AdamW step,
batch --train-batch of full windows) of the default and "small" presets, loop against stepwise. Weights do not
change speed, so untrained models stand in for trained ones.

--context measures the same infill (8 s region, 32 steps, 2 threads by --speed-threads' first, default size) by how
much music the model reads each side of the region (core.infill's `context`: the full window, 8 s, 6 s (the
default), 4 s), with the int8 and the fp32 pass weights taking turns, and the ids each pass reads: a pass costs
about its length.

--codec names the codec of every model built (core/codecs.py; default "performance", what the timings in the README
were taken with): its vocabulary sizes the embedding and the head, random ids are drawn from its ids, and the
infills lay the region out in it (core.infill reads the model's codec).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import subprocess
import time

import torch
from torch import nn

from core.codecs import CODECS, DEFAULT, codec_of
from core.infill import CONTEXT_SECONDS
from core.models.layers import Block, rotary
from core.models.smdim import SMDIM, SMDIMConfig


class AttentionStack(nn.Module):
    """Full bidirectional Transformer blocks in place of the MFA blocks, everything else SMDIM's."""

    def __init__(self, smdim: SMDIM):
        super().__init__()
        c = smdim.config
        self.smdim = smdim
        self.blocks = nn.ModuleList(Block(c.d_model, c.n_heads, c.mlp_ratio) for _ in range(c.n_blocks))
        smdim.blocks = nn.ModuleList()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        m, c = self.smdim, self.smdim.config
        e = m.embed(ids)
        h = m.down(e.transpose(1, 2)).transpose(1, 2)
        cos, sin = rotary(torch.arange(h.shape[1]), c.d_model // c.n_heads, c.rope_base)
        for block in self.blocks:
            q, k, v = block.project(h, cos, sin)
            h = block.finish(h, q, k, v, None)
        h = m.up(m.norm(h).transpose(1, 2)).transpose(1, 2)
        return m.head(m.out_norm(e + h))


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _measure(kind: str, length: int, args: argparse.Namespace, queue) -> None:
    """In a fresh process: seconds of each pass and the peak memory one pass added."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = SMDIMConfig(window=max(length, 1024), d_model=args.d_model, d_embed=args.d_model // 2,
                         n_blocks=args.blocks, stride=args.stride, codec=args.codec)
    model = SMDIM(config) if kind == "mfa" else AttentionStack(SMDIM(config))
    model.eval()
    ids = random_ids(config, length)
    with torch.no_grad():
        model(random_ids(config, 256))
        before = _rss()
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - began)
    queue.put((statistics.median(times), _rss() - before))


def random_ids(model_or_config, length: int, batch: int = 1) -> torch.Tensor:
    """(batch, length) random music ids of the model's codec (no PAD, BOS or EOS)."""
    return torch.randint(3, codec_of(model_or_config).VOCAB_SIZE, (batch, length))


def run(kind: str, length: int, args: argparse.Namespace) -> tuple[float, int]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(kind, length, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def infill_seconds(model: SMDIM, piece, kernel: str, weights: str,
                   context: float | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one `infill` of 20-28 s (32 steps, one variation) with this scan and these pass
    weights, reading `context` seconds each side (None: the window). CPU seconds are what a machine to itself
    would take at one thread; with more, they include the threads' waits for each other."""
    from core.infill import infill

    model.use_scan(kernel)
    model.use_step_weights(weights)
    began, cpu = time.perf_counter(), time.process_time()
    infill(model, piece, 20.0, 28.0, steps=32, seed=0, context=context)
    return time.perf_counter() - began, time.process_time() - cpu


def train_rate(model: SMDIM, kernel: str, batch: int, optimizer) -> float:
    """Tokens/s of one training step (loss, backward, optimizer step) on `batch` random full windows."""
    from core.models.smdim.training import elbo_sum

    model.use_scan(kernel)
    ids = random_ids(model, model.config.window, batch)
    began = time.perf_counter()
    loss = elbo_sum(model, ids, model.mask_id)[0] / ids.numel()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return ids.numel() / (time.perf_counter() - began)


def first_piece():
    """The first MAESTRO performance longer than 30 s: the region 20-28 s has music on both sides."""
    from bench.data import SHARED_MIDI, require_midi
    from core.midi import read_performance

    return next(p for p in (read_performance(path) for path in sorted(require_midi(SHARED_MIDI / "maestro")
                                                                      .glob("*.mid"))) if p.duration > 30)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def context_speed(args: argparse.Namespace) -> None:
    """The --context table: rounds in which every (context, weights) runs once, medians over the rounds."""
    print("load before:", uptime())
    piece = first_piece()
    torch.manual_seed(0)
    model = SMDIM(SMDIMConfig(codec=args.codec)).eval()
    threads = args.speed_threads[0]
    torch.set_num_threads(threads)
    contexts = {"full window": None, "8 s": 8.0, f"{CONTEXT_SECONDS:g} s (default)": CONTEXT_SECONDS, "4 s": 4.0}
    lengths: dict[str, set[int]] = {name: set() for name in contexts}
    denoise = model.denoise
    reading = [""]

    def counted(ids, keep, *rest, **named):
        lengths[reading[0]].add(ids.shape[1])
        return denoise(ids, keep, *rest, **named)

    model.denoise = counted  # an instance attribute: the class's method stays as it is
    seconds: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(args.rounds):
        for name, context in contexts.items():
            reading[0] = name
            for weights in ("int8", "fp32"):
                found = infill_seconds(model, piece, "auto", weights, context)
                seconds.setdefault((name, weights), []).append(found)
    print(f"\ninfill an 8 s region, 32 steps, 1 variation, default size ({model.config.window}-token window, "
          f"codec {args.codec}), {threads} threads, by the music read each side; wall (CPU) seconds, median of "
          f"{args.rounds}")
    print("| context each side | ids a pass reads | int8 pass weights | fp32 |\n|---|---|---|---|")
    for name in contexts:
        cells = [f"{statistics.median(w for w, _ in found):.2f} ({statistics.median(c for _, c in found):.2f})"
                 for found in (seconds[name, "int8"], seconds[name, "fp32"])]
        read = "/".join(str(n) for n in sorted(lengths[name]))
        print(f"| {name} | {read} | " + " | ".join(cells) + " |", flush=True)
    print("load after:", uptime())


def speed(args: argparse.Namespace) -> None:
    """The --speed tables: rounds in which every form runs once, medians over the rounds."""
    from core.models.smdim.training import SMDIMTraining

    print("load before:", uptime())
    piece = first_piece()
    torch.manual_seed(0)
    model = SMDIM(SMDIMConfig(codec=args.codec)).eval()
    forms = {"before: loop scan, fp32": ("loop", "fp32"), "now: stepwise scan, fp32": ("auto", "fp32"),
             "now: stepwise scan, int8 pass weights": ("auto", "int8")}
    print(f"\ninfill an 8 s region, 32 steps, 1 variation, default size ({model.config.window}-token window, "
          f"codec {args.codec}); "
          f"wall (CPU) seconds, median of {args.rounds}; aim < 3 s wall at 2 threads")
    print("| form | " + " | ".join(f"{n} thread(s)" for n in args.speed_threads) + " |\n|---|"
          + "---|" * len(args.speed_threads))
    seconds: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for threads in args.speed_threads:
        torch.set_num_threads(threads)
        for _ in range(args.rounds):
            for name, (kernel, weights) in forms.items():
                seconds.setdefault((name, threads), []).append(infill_seconds(model, piece, kernel, weights))
    for name in forms:
        cells = []
        for threads in args.speed_threads:
            found = seconds[name, threads]
            cells.append(f"{statistics.median(w for w, _ in found):.2f} ({statistics.median(c for _, c in found):.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)

    torch.set_num_threads(args.train_threads)
    print(f"\ntraining tokens/s, batch {args.train_batch} full windows, {args.train_threads} threads, median of "
          f"{args.rounds} steps (max)")
    print(f"| {'preset':<8} | {'window':>6} | {'before: loop':>18} | {'now: stepwise':>18} | {'x':>5} |\n"
          "|---|---|---|---|---|")
    for preset in ("default", "small"):
        torch.manual_seed(0)
        model = SMDIM(SMDIMConfig(**SMDIMTraining.presets[preset], codec=args.codec)).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        rates: dict[str, list[float]] = {"loop": [], "auto": []}
        for _ in range(args.rounds):
            for kernel, found in rates.items():
                found.append(train_rate(model, kernel, args.train_batch, optimizer))
        old, new = statistics.median(rates["loop"]), statistics.median(rates["auto"])
        print(f"| {preset:<8} | {model.config.window:>6} | {old:>8.0f} ({max(rates['loop']):>7.0f}) | "
              f"{new:>8.0f} ({max(rates['auto']):>7.0f}) | {new / old:>5.2f} |", flush=True)
    print("load after:", uptime())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--d-model", type=int, default=SMDIMConfig.d_model)
    parser.add_argument("--blocks", type=int, default=SMDIMConfig.n_blocks)
    parser.add_argument("--stride", type=int, default=SMDIMConfig.stride)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--speed", action="store_true", help="infill seconds and training tokens/s, before/after")
    parser.add_argument("--context", action="store_true",
                        help="infill seconds by the music read each side (full window, 8 s, 4 s), int8 and fp32")
    parser.add_argument("--speed-threads", type=int, nargs="+", default=[2, 1],
                        help="threads for the infill (--context: the first)")
    parser.add_argument("--train-threads", type=int, default=2, help="threads for the training timing")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--codec", choices=sorted(CODECS), default=DEFAULT,
                        help=f"the codec of the models built (default: {DEFAULT})")
    args = parser.parse_args()
    if args.speed:
        speed(args)
        return
    if args.context:
        context_speed(args)
        return
    print(f"one denoising pass, batch 1, d_model {args.d_model}, {args.blocks} blocks, stride {args.stride}, "
          f"codec {args.codec}, {args.threads} thread(s), median of {args.repeats}")
    print(f"{'tokens':>7} | {'MFA s':>8} | {'attn s':>8} | {'attn/MFA':>8} | {'MFA MB':>8} | {'attn MB':>8} | "
          f"{'attn/MFA':>8}")
    previous = None
    for length in args.lengths:
        mfa_s, mfa_b = run("mfa", length, args)
        att_s, att_b = run("attention", length, args)
        print(f"{length:>7} | {mfa_s:>8.2f} | {att_s:>8.2f} | {att_s / mfa_s:>8.2f} | {mfa_b / 2**20:>8.1f} | "
              f"{att_b / 2**20:>8.1f} | {att_b / max(mfa_b, 1):>8.2f}", flush=True)
        if previous is not None:
            grow = length / previous[0]
            print(f"{'':>7}   x{grow:g} tokens: MFA time x{mfa_s / previous[1]:.1f}, attention time "
                  f"x{att_s / previous[2]:.1f}")
        previous = (length, mfa_s, att_s)


if __name__ == "__main__":
    main()
