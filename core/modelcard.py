"""What a composer is told about a model: a few plain lines drawn from its directory, and its card fit to show.

A card.md is written for whoever trains models (recipe, data tables, config); the studio shows `summarize(dir)`
instead: what it was trained on, how much music it remembers at its default budget, its sizes, and its
architecture in words. `scrub_paths` takes machine paths (/root/..., /home/..., ~/..., C:\\...) out of any card
text shown, keeping only the folder's name: a card travels with its model, the trainer's disk does not.
No Qt here, and no weights are read: the model is built on torch's meta device only to ask its own planner.
torch is imported only by `summarize`, so card writers can scrub paths without it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from core.errors import ModelError, RecitalError

# An absolute path: POSIX with at least two parts (/root/x; "1/16" and "PC/seg" are not paths), home-relative
# (~/x), or Windows (C:\x, C:/x). It ends at a space, quote, bracket or separator of prose; a trailing '.' or ':'
# is punctuation, not part of the name.
_PART = r"[^\s`'\"()\[\]<>,;|*?/\\]+"
PATH = re.compile(rf"(?<![\w.~/\\-])(?:(?:/{_PART}){{2,}}|~(?:[/\\]{_PART})+|[A-Za-z]:(?:[/\\]{_PART})+)/?")


def scrub_paths(text: str) -> str:
    """`text` with every absolute path replaced by its last folder's (or file's) name."""

    def name(match: re.Match) -> str:
        path = match.group(0).rstrip("/\\")
        trail = ""
        while path and path[-1] in ".:":  # "… in /home/me/midi." ends the sentence, not the name
            path, trail = path[:-1], path[-1] + trail
        return re.split(r"[/\\]", path)[-1] + trail

    return PATH.sub(name, text)


def shown_name(path_or_name: str) -> str:
    """How a card writer records a folder or model: its name alone when given as a path."""
    text = str(path_or_name).rstrip("/\\")
    return re.split(r"[/\\]", text)[-1] if re.search(r"[/\\]", text) else text


@dataclass(frozen=True)
class ModelSummary:
    """The composer-facing facts about one model, each a short line."""

    trained_on: str
    remembers: str
    sizes: str
    architecture: str

    def lines(self) -> list[str]:
        return [self.trained_on, self.remembers, self.sizes, self.architecture]


def summarize(path: str | Path) -> ModelSummary:
    """The summary of the model directory at `path` (ModelError when its config cannot be read)."""
    import torch

    from core.budget import format_bytes
    from core.modeldir import WEIGHTS, build_model, read_card, read_config

    path = Path(path)
    meta = read_config(path)
    with torch.device("meta"):  # shapes only: no memory, no weights, no random init work
        try:
            model = build_model(meta["arch"], meta["config"])
        except ModelError as error:
            raise ModelError(f"{path}: {error}") from None
    try:
        card = read_card(path)
    except ModelError:
        card = ""
    weights = path / WEIGHTS
    file_size = weights.stat().st_size if weights.is_file() else 0
    parameters = sum(p.numel() for p in model.parameters())  # tied weights counted once
    sizes = f"Size: {parameters / 1e6:.2f} M parameters" + (
        f", {format_bytes(file_size)}" if file_size else " (no weights file)")
    return ModelSummary(trained_on(card), remembers(model), sizes, architecture(model))


# -- the facts --------------------------------------------------------------------------------------------------

# "- data: /x/my-midi: 40 files, 38 pieces (…), 9,000 tokens, 0.50 hours of music" (trainer.checkpoint) and
# "- music21-midi: 14,904 files, 14,730 pieces (…), 6,916,864 tokens, 187.8 hours; …" (the default recipe).
_DATA = re.compile(r"^- (?:data: )?(?P<where>.+?): [\d,]+ files, (?P<pieces>[\d,]+) pieces\b.*?"
                   r"(?P<hours>[\d.]+) hours", re.MULTILINE)
_SOURCE = re.compile(r"\bon (?P<what>[^(,\d][^(,]*?) \(")  # the title's "… on music21's corpus (14,730 pieces)"
_BASE = re.compile(r"^- base model: (?P<base>.+)$", re.MULTILINE)


def trained_on(card: str) -> str:
    """'Trained on <what>: N pieces, H hours' (and what it was fine-tuned from) as its card tells."""
    data = _DATA.search(card)
    if data is None:
        return "Trained on: not told by its card"
    title = card.strip().splitlines()[0] if card.strip() else ""
    source = _SOURCE.search(title)
    what = source.group("what") if source else shown_name(scrub_paths(data.group("where")))
    base = _BASE.search(card)
    origin = f"Fine-tuned from {shown_name(scrub_paths(base.group('base').strip()))} on" if (
        base and not base.group("base").startswith("none")) else "Trained on"
    return f"{origin} {what}: {data.group('pieces')} pieces, {data.group('hours')} hours"


def remembers(model) -> str:
    """How much music the model keeps in mind at its default budget (its own planner's answer)."""
    from core.budget import format_bytes, parse_budget
    from core.state import TOKENS_PER_SECOND

    budget = getattr(model.config, "default_budget", None)
    try:
        plan = model.plan()
    except RecitalError as error:
        return f"Remembers: nothing at its default budget ({error})"
    tokens = [memory.tokens for memory in plan.memories()]  # what each part of its state holds
    low, high = min(tokens) / TOKENS_PER_SECOND, max(tokens) / TOKENS_PER_SECOND
    span = f"~{_seconds(high)} s" if abs(high - low) < 0.05 else f"~{_seconds(low)}-{_seconds(high)} s"
    at = f" (default budget, {format_bytes(parse_budget(budget))})" if budget else ""
    from core.models.interface import DENOISE

    if getattr(model, "family", None) == DENOISE:  # a denoiser's window: what it sees on both sides at once
        return f"Remembers {span} of music at once, before and after what it writes{at}"
    return f"Remembers {span} of music{at}"


def architecture(model) -> str:
    """The architecture in a sentence a composer can follow (the model's own `describe`)."""
    return f"How it works: {model.describe()}"


def _seconds(seconds: float) -> str:
    return f"{seconds:.0f}" if seconds >= 10 else f"{seconds:.1f}"
