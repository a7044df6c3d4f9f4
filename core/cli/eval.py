"""`recital eval`: how close generated pieces are to real ones (MGEval), how repetitive, and model perplexity.

    recital eval GENERATED_DIR REFERENCE_DIR [--json OUT] [--report OUT.html]
    recital eval --model M FOLDER [--budget 64MB] [--json OUT] [--report OUT.html]

The first form prints, per feature, the overlap area (OA) and KL divergence of the generated-to-reference
distances against the reference set's own, then the mean OA and the repetition measures of both sets. The second
encodes the pieces of FOLDER with the model's own codec and prints its token-weighted perplexity per id of that
codec, its bits per second of music (-sum log2 p over the pieces' seconds: comparable between a "notes" model and
a "performance" one, which perplexity is not) and its perplexity by position in the piece; for a denoiser (SMDIM), which does not read left to right, its diffusion ELBO in bits per token and per second of
music instead (an upper bound on the negative log-likelihood, core.metrics.elbo_report).
The HTML report is one self-contained file (inline SVG, no scripts) with the same numbers drawn.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path

import numpy as np

from core.errors import MidiError, RecitalError
from core.models.interface import DENOISE

HELP = "perplexity and MGEval comparison of generated and reference pieces"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folders", nargs="+", metavar="FOLDER",
                        help="GENERATED_DIR REFERENCE_DIR, or with --model the one folder to score")
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="a model name or directory: print its perplexity on the pieces of FOLDER")
    parser.add_argument("--budget", metavar="SIZE",
                        help="memory for the model's recurrent state with --model, e.g. 64MB "
                             "(default: the model's own)")
    parser.add_argument("--segments", type=int, default=64, metavar="N",
                        help="equal-duration segments per piece for the /seg features (default 64)")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the numbers as JSON")
    parser.add_argument("--report", type=Path, metavar="OUT.html", help="also write an HTML report with plots")


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        if len(args.folders) != 1:
            raise RecitalError("eval --model takes one FOLDER of pieces to score "
                               f"(got {len(args.folders)} folders)")
        return _run_perplexity(args)
    if len(args.folders) != 2:
        raise RecitalError("eval takes GENERATED_DIR REFERENCE_DIR (or --model M FOLDER); "
                           f"got {len(args.folders)} folder(s)")
    if args.segments < 1:
        raise RecitalError(f"--segments must be at least 1, got {args.segments}")
    return _run_comparison(args)


# --- the two modes -------------------------------------------------------------------------------------------

def _run_comparison(args: argparse.Namespace) -> int:
    from core import metrics

    generated_dir, reference_dir = (Path(folder) for folder in args.folders)
    generated = _read_folder(generated_dir)
    reference = _read_folder(reference_dir)
    if len(reference) < 2:
        raise MidiError(reference_dir, f"a reference set needs at least 2 readable MIDI files, found {len(reference)}")
    comparison = metrics.compare_sets(generated, reference, args.segments)
    repetition = {"generated": metrics.repetition_stats(generated), "reference": metrics.repetition_stats(reference)}

    print(f"generated: {len(generated)} pieces in {generated_dir}")
    print(f"reference: {len(reference)} pieces in {reference_dir}")
    print()
    print(_comparison_table(comparison))
    print()
    print(_repetition_table(repetition))
    if args.json is not None:
        result = comparison.to_json()
        result["generated_dir"], result["reference_dir"] = str(generated_dir), str(reference_dir)
        result["repetition"] = {name: stats.summary() for name, stats in repetition.items()}
        _write_text(args.json, json.dumps(result, indent=2) + "\n", "JSON file")
    if args.report is not None:
        _write_text(args.report, _comparison_html(comparison, repetition, generated_dir, reference_dir),
                    "HTML report")
    return 0


def _run_perplexity(args: argparse.Namespace) -> int:
    from core import metrics
    from core.budget import parse_budget, resolve_budget
    from core.modeldir import load_model

    folder = Path(args.folders[0])
    if args.budget is not None:
        parse_budget(args.budget)  # a typo fails before the model loads
    pieces = _read_folder(folder)
    model = load_model(args.model)
    budget_text = args.budget or model.config.default_budget
    budget = resolve_budget(model, args.budget)

    def progress(done: int, total: int) -> None:
        print(f"\rscoring piece {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    if getattr(model, "family", None) == DENOISE:  # no left-to-right reading: its number is the diffusion ELBO
        return _print_elbo(metrics.elbo_report(model, pieces, budget, progress=progress), args, folder,
                           budget_text, budget)
    report = metrics.perplexity_report(model, pieces, budget, progress=progress)
    print(f"model: {args.model}, state budget {budget_text}, codec {report.codec!r}")
    print(f"perplexity: {report.perplexity:.3f} per id of its codec over {report.tokens} tokens in "
          f"{report.pieces} pieces of {folder}")
    print(f"bits per second of music: {_per_second(report.bits_per_second)} ({report.bits_per_token:.4f} "
          f"bits/token over {report.seconds:.1f} s; comparable across codecs)")
    print()
    print(_perplexity_table(report))
    if args.json is not None:
        result = report.to_json()
        result["model"], result["folder"], result["budget_bytes"] = str(args.model), str(folder), budget
        _write_text(args.json, json.dumps(result, indent=2) + "\n", "JSON file")
    if args.report is not None:
        _write_text(args.report, _perplexity_html(report, str(args.model), folder, budget_text), "HTML report")
    return 0


def _print_elbo(report, args: argparse.Namespace, folder: Path, budget_text: str, budget: int) -> int:
    """A denoiser's numbers: its ELBO in bits per token and per second of music (an upper bound on the NLL)."""
    per_second = _per_second(report.bits_per_second)
    print(f"model: {args.model}, state budget {budget_text} ({report.window}-token windows)")
    print(f"diffusion ELBO: {report.bits_per_token:.4f} bits/token, {per_second} bits/s over {report.tokens} "
          f"tokens ({report.seconds:.1f} s) in {report.pieces} pieces of {folder}")
    print(f"(an upper bound on the negative log-likelihood, {report.draws} seeded masks per window; "
          f"as a perplexity bound {report.perplexity:.3f})")
    if args.json is not None:
        result = report.to_json()
        result["model"], result["folder"], result["budget_bytes"] = str(args.model), str(folder), budget
        _write_text(args.json, json.dumps(result, indent=2) + "\n", "JSON file")
    if args.report is not None:
        body = (f"<p>Model <code>{html.escape(str(args.model))}</code>, state budget {html.escape(budget_text)} "
                f"({report.window}-token windows), {report.pieces} pieces in "
                f"<code>{html.escape(str(folder))}</code>.</p>"
                f"<p><b>Diffusion ELBO {report.bits_per_token:.4f} bits/token, {per_second} bits/s</b> over "
                f"{report.tokens} tokens ({report.seconds:.1f} s of music).</p>"
                f"<p>{html.escape(report.to_json()['meaning'])}.</p>")
        _write_text(args.report, _page("Recital ELBO", body), "HTML report")
    return 0


def _per_second(bits: float | None) -> str:
    """Bits per second as printed: '-' for pieces that span no time."""
    return "-" if bits is None else f"{bits:.2f}"


def _read_folder(folder: Path) -> list:
    """Every readable MIDI file of `folder`; unreadable ones are named on stderr and skipped."""
    from core.midi import find_midi_files, read_performance

    files = find_midi_files(folder)
    pieces = []
    for path in files:
        try:
            pieces.append(read_performance(path))
        except MidiError as error:
            print(f"warning: skipped {error}", file=sys.stderr)
    if not pieces:
        raise MidiError(folder, f"no readable MIDI files ({len(files)} found)")
    return pieces


def _write_text(path: Path, text: str, what: str) -> None:
    from core.midi import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"), what=what)


# --- text tables ---------------------------------------------------------------------------------------------

def _comparison_table(comparison) -> str:
    rows = [f"{'feature':<10}{'OA':>8}{'KLD':>9}  flags"]
    for feature in comparison.features:
        rows.append(f"{feature.name:<10}{feature.oa:>8.3f}{feature.kld:>9.3f}  {', '.join(feature.flags)}".rstrip())
    rows.append(f"{'mean OA':<10}{comparison.mean_oa:>8.3f}")
    return "\n".join(rows)


def _repetition_rows(repetition) -> list[tuple[str, str, str]]:
    from core.metrics import REPETITION_MEASURES

    summaries = {name: stats.summary() for name, stats in repetition.items()}
    return [(label, *(f"{summaries[name][key]['mean']:.3f} ± {summaries[name][key]['std']:.3f}"
                      for name in ("generated", "reference")))
            for label, key in REPETITION_MEASURES.items()]


def _repetition_table(repetition) -> str:
    rows = [f"{'repetition':<44}{'generated':>18}{'reference':>18}"]
    rows += [f"{label:<44}{gen:>18}{ref:>18}" for label, gen, ref in _repetition_rows(repetition)]
    return "\n".join(rows)


def _bucket_label(bucket: dict) -> str:
    return f"{bucket['start']}-{bucket['end'] - 1}"


def _perplexity_table(report) -> str:
    rows = [f"{'position':<16}{'tokens':>10}{'perplexity':>12}"]
    for bucket in report.buckets():
        value = "-" if bucket["perplexity"] is None else f"{bucket['perplexity']:.3f}"
        rows.append(f"{_bucket_label(bucket):<16}{bucket['tokens']:>10}{value:>12}")
    return "\n".join(rows)


# --- HTML report ---------------------------------------------------------------------------------------------

REFERENCE_COLOUR, GENERATED_COLOUR = "#1f77b4", "#ff7f0e"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { padding: 0.25em 0.8em; border-bottom: 1px solid #ddd; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
.plot { border: 1px solid #ddd; padding: 0.5em; }
.plot h3 { margin: 0 0 0.3em 0; font-size: 0.95em; }
.legend span { margin-right: 1.5em; }
.flag { color: #a33; font-size: 0.85em; }
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _svg_lines(series: list[tuple[str, np.ndarray, np.ndarray, str]], shade: np.ndarray | None = None,
               width: int = 320, height: int = 170, points: int = 256, xlabel: str = "") -> str:
    """Line plot of (label, x, y, colour) series sharing axes; `shade` (same x as the first) is filled grey."""
    margin_l, margin_r, margin_t, margin_b = 8, 8, 8, 28
    xs = np.concatenate([x for _, x, _, _ in series])
    ys = np.concatenate([y for _, _, y, _ in series])
    x0, x1 = float(xs.min()), float(xs.max())
    y0, y1 = min(0.0, float(ys.min())), float(ys.max())
    x1 = x1 if x1 > x0 else x0 + 1.0
    y1 = y1 if y1 > y0 else y0 + 1.0

    def to_px(x: np.ndarray, y: np.ndarray) -> str:
        take = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).astype(int))
        px = margin_l + (x[take] - x0) / (x1 - x0) * (width - margin_l - margin_r)
        py = height - margin_b - (y[take] - y0) / (y1 - y0) * (height - margin_t - margin_b)
        return " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(px, py, strict=True))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    base = height - margin_b
    parts.append(f'<line x1="{margin_l}" y1="{base}" x2="{width - margin_r}" y2="{base}" stroke="#888"/>')
    if shade is not None:
        x = series[0][1]
        outline = to_px(x, shade)
        parts.append(f'<polygon points="{margin_l:.1f},{base:.1f} {outline} {width - margin_r:.1f},{base:.1f}" '
                     'fill="#bbb" fill-opacity="0.6"/>')
    for label, x, y, colour in series:
        parts.append(f'<polyline points="{to_px(x, y)}" fill="none" stroke="{colour}" stroke-width="1.6">'
                     f"<title>{html.escape(label)}</title></polyline>")
    parts.append(f'<text x="{margin_l}" y="{height - 8}" font-size="11">{x0:.3g}</text>')
    parts.append(f'<text x="{width - margin_r}" y="{height - 8}" font-size="11" text-anchor="end">{x1:.3g}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 8}" font-size="11" text-anchor="middle">'
                 f"{html.escape(xlabel)}</text></svg>")
    return "".join(parts)


def _svg_bars(labels: list[str], values: list[float | None], height: int = 240) -> str:
    """Bar chart with a value above each bar; None draws no bar."""
    width = max(640, 90 * len(labels))
    margin_t, margin_b = 20, 40
    present = [v for v in values if v is not None]
    top = max(present) if present else 1.0
    slot = width / max(len(labels), 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}">']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = i * slot + slot * 0.15
        if value is not None:
            h = value / top * (height - margin_t - margin_b)
            y = height - margin_b - h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                         f'fill="{REFERENCE_COLOUR}"/>')
            parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" font-size="11" '
                         f'text-anchor="middle">{value:.2f}</text>')
        parts.append(f'<text x="{x + slot * 0.35:.1f}" y="{height - margin_b + 16}" font-size="10" '
                     f'text-anchor="middle">{html.escape(label)}</text>')
    parts.append(f'<text x="{width / 2}" y="{height - 6}" font-size="11" text-anchor="middle">'
                 "position in the piece (tokens)</text></svg>")
    return "".join(parts)


def _legend(*entries: tuple[str, str]) -> str:
    return '<p class="legend">' + "".join(
        f'<span><span style="color:{colour}">&#9644;</span> {html.escape(text)}</span>' for text, colour in entries
    ) + "</p>"


def _comparison_html(comparison, repetition, generated_dir: Path, reference_dir: Path) -> str:
    rows = "".join(f"<tr><td>{html.escape(f.name)}</td><td>{f.oa:.3f}</td><td>{f.kld:.3f}</td>"
                   f"<td class=\"flag\">{html.escape(', '.join(f.flags))}</td></tr>" for f in comparison.features)
    table = ("<table><tr><th>feature</th><th>OA</th><th>KLD</th><th>flags</th></tr>" + rows +
             f"<tr><th>mean OA</th><th>{comparison.mean_oa:.3f}</th><th></th><th></th></tr></table>")
    plots = []
    for f in comparison.features:
        svg = _svg_lines([("reference intra-set", f.grid, f.pdf_intra, REFERENCE_COLOUR),
                          ("generated to reference", f.grid, f.pdf_inter, GENERATED_COLOUR)],
                         shade=np.minimum(f.pdf_intra, f.pdf_inter), xlabel="distance")
        plots.append(f'<div class="plot"><h3>{html.escape(f.name)}: OA {f.oa:.3f}, KLD {f.kld:.3f}</h3>{svg}</div>')
    repetition_rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{gen}</td><td>{ref}</td></tr>"
                              for label, gen, ref in _repetition_rows(repetition))
    curves = []
    for name, colour in (("reference", REFERENCE_COLOUR), ("generated", GENERATED_COLOUR)):
        curve = repetition[name].autocorrelation
        if len(curve):
            curves.append((name, np.arange(1, len(curve) + 1, dtype=float), curve, colour))
    autocorrelation = _svg_lines(curves, width=640, height=220, points=512, xlabel="lag (tokens)") if curves else ""
    body = (f"<p>Generated: {comparison.generated} pieces in <code>{html.escape(str(generated_dir))}</code><br>"
            f"Reference: {comparison.reference} pieces in <code>{html.escape(str(reference_dir))}</code></p>"
            "<h2>Feature distributions</h2>"
            "<p>OA: overlap of the distance distributions (higher is closer to the reference set); KLD: KL divergence "
            "of the reference intra-set distances from the generated-to-reference distances (lower is closer).</p>"
            f"{table}"
            + _legend(("reference intra-set distances", REFERENCE_COLOUR),
                      ("generated-to-reference distances", GENERATED_COLOUR), ("overlap", "#bbb"))
            + f'<div class="plots">{"".join(plots)}</div>'
            "<h2>Repetition</h2><table><tr><th>measure (mean ± std over pieces)</th><th>generated</th>"
            f"<th>reference</th></tr>{repetition_rows}</table>"
            "<h3>Token autocorrelation by lag (mean over pieces)</h3>"
            + _legend(("reference", REFERENCE_COLOUR), ("generated", GENERATED_COLOUR)) + autocorrelation)
    return _page("Recital evaluation", body)


def _perplexity_html(report, model: str, folder: Path, budget: str) -> str:
    buckets = report.buckets()
    rows = "".join(f"<tr><td>{_bucket_label(b)}</td><td>{b['tokens']}</td>"
                   f"<td>{'-' if b['perplexity'] is None else format(b['perplexity'], '.3f')}</td></tr>"
                   for b in buckets)
    body = (f"<p>Model <code>{html.escape(model)}</code>, state budget {html.escape(budget)}, "
            f"{report.pieces} pieces in <code>{html.escape(str(folder))}</code>.</p>"
            f"<p><b>Perplexity {report.perplexity:.3f}</b> per id of the {html.escape(report.codec)} codec over "
            f"{report.tokens} tokens (token-weighted); <b>{_per_second(report.bits_per_second)} bits per second "
            f"of music</b> over {report.seconds:.1f} s (comparable across codecs).</p>"
            "<h2>Perplexity by position in the piece</h2>"
            "<p>Lower later in the piece means the model uses the long context it has read.</p>"
            + _svg_bars([_bucket_label(b) for b in buckets], [b["perplexity"] for b in buckets])
            + f"<table><tr><th>position</th><th>tokens</th><th>perplexity</th></tr>{rows}</table>")
    return _page("Recital perplexity", body)
