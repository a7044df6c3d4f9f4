"""The model interface every architecture implements, declared once: callers rely on it instead of the arch name.

Two families share the common part (`Model`: construct from a config, plan a budget, make a state, describe
itself, say what a plan remembers and what it was trained to use):

- `LeftToRight` models read and generate one id after another: `prefill` a primer, `step` one id per lane,
  `read` a whole sequence for scoring (DSMR, PerceiverS).
- `Denoiser` models fill masked positions of a whole window at once (`denoise`): a discrete diffusion model
  such as SMDIM. Generation and scoring choose the path by `model.family`, never by probing methods.

What a run needs from a model to train it (how batches are cut, the loss, the shortest trainable piece, what the
model records about the run, a denoiser's held-out bound) is its `Training` adapter, registered with the
architecture (core/models/registry.py). The trainer, adapting (core/adapt.py) and a denoiser's ELBO
(core.metrics.elbo_report) call only that adapter; they never name an architecture.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

LEFT_TO_RIGHT = "left_to_right"
DENOISE = "denoise"
Family = Literal["left_to_right", "denoise"]


@dataclass(frozen=True)
class Memory:
    """One part of what a plan holds: `tokens` of music now, at most `limit` (what training used) were it allowed.

    DSMR: one per layer ("layer 1" ...), its horizon plus the segment being read. PerceiverS: one "context".
    """

    label: str
    tokens: int
    limit: int


@runtime_checkable
class Plan(Protocol):
    """What a byte budget bought for a batch of lanes: exact bytes, and what that remembers."""

    batch: int
    budget: int | None  # the budget the plan was made for, if any

    @property
    def nbytes(self) -> int: ...

    def describe(self) -> str:
        """One line for the CLI and the studio's slider."""
        ...

    def memories(self) -> tuple[Memory, ...]:
        """What each part of the state holds, in tokens (lowest part first)."""
        ...


@runtime_checkable
class State(Protocol):
    """Preallocated buffers made from a plan; they never grow. Lanes are independent."""

    @property
    def batch(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    def reset(self, lane: int) -> None:
        """Forget everything lane `lane` has read; the other lanes go on."""
        ...


class ModelConfig(Protocol):
    """A model's config: typed fields read from config.json (`from_dict` refuses bad ones with a ModelError)."""

    vocab_size: int
    default_budget: str  # state budget per lane when the user names none, e.g. "8MB"

    def to_dict(self) -> dict: ...

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig: ...


@runtime_checkable
class Model(Protocol):
    """What every architecture provides (an nn.Module constructed as `model_class(config)`)."""

    arch: ClassVar[str]  # the registry's name, written into config.json
    family: ClassVar[Family]  # LEFT_TO_RIGHT or DENOISE
    config: ModelConfig

    def plan(self, budget_bytes: int | str | None = None, batch: int = 1) -> Plan:
        """The plan a budget buys for `batch` lanes (None: the config's default budget for each lane);
        BudgetError when it buys nothing."""
        ...

    def memory_limit_note(self, budget_bytes: int | str | None = None, batch: int = 1) -> str:
        """What to tell the user when the budget buys more memory than the model was trained to use ('' if not)."""
        ...

    def new_state(self, plan: Plan, batch: int | None = None) -> State:
        """Buffers for the plan's lanes (`batch`, when given, must be the plan's: BudgetError otherwise)."""
        ...

    def use_step_weights(self, kind: str) -> None:
        """How generation stores its weights: "fp32" (exact) or "int8" (faster on a CPU)."""
        ...

    def describe(self) -> str:
        """The architecture in a sentence a composer can follow."""
        ...


@runtime_checkable
class LeftToRight(Model, Protocol):
    """A model that reads and generates left to right through its state."""

    def prefill(self, ids: torch.Tensor, state: State) -> torch.Tensor:
        """Read a primer (B, T), however long -> logits (B, V) after its last id."""
        ...

    def step(self, ids: torch.Tensor, state: State) -> torch.Tensor:
        """One id per lane (B,) -> logits (B, V) for the next id."""
        ...

    def read(self, ids: torch.Tensor, state: State) -> torch.Tensor:
        """Read ids (B, T) -> logits (B, T, V) after every id, each what its `step` would give (scoring)."""
        ...

    def output_weight(self) -> torch.Tensor:
        """(V, d): the output layer, logits = output_weight @ (the last hidden state, normed): linear, no bias, so
        the logits say which hidden state gave them (core/contextcache.py reads it back)."""
        ...


@runtime_checkable
class Denoiser(Model, Protocol):
    """A model that fills masked positions of a window at once (discrete diffusion: unmasking, infilling).

    Its state is its window: `plan(budget)` buys the tokens one pass reads (`state.window`), and nothing is
    carried between passes. Ids may hold `mask_id` (one past the codec's ids) where unknown.
    """

    @property
    def mask_id(self) -> int: ...

    def predict(self, ids: torch.Tensor, state: State) -> torch.Tensor:
        """One pass: ids (B, T <= window) with mask_id where unknown -> logits (B, T, V) for every position."""
        ...

    def denoise(self, ids: torch.Tensor, keep: torch.Tensor, state: State, steps: int | None = None,
                sampling=None, generator: torch.Generator | None = None, constrain=None,
                order: str | None = None, min_repeat: float = 0.0) -> torch.Tensor:
        """ids (B, T) with every position where `keep` (B, T) is False filled in `steps` unmasking passes (the
        model's default if None) -> ids (B, T) with no mask_id left and the kept ids unchanged. `sampling`: a
        core.generate.SamplingConfig; `constrain(logits (B, T, V), ids (B, T)) -> logits` runs before each draw;
        order: "confidence" (surest first), "random", or None (the model's default); min_repeat: seconds within
        which a new note does not strike a key again (a codec with note onsets; 0: only never twice at once)."""
        ...


def check_ids(ids: torch.Tensor, dims: int, batch: int, vocab_size: int, what: str) -> None:
    """ModelError, the one error of a bad call, unless `ids` has `dims` dimensions (1: one id per lane (B,); 2: a
    sequence per lane (B, T >= 1)), `batch` lanes and every id in [0, vocab_size)."""
    from core.errors import ModelError

    shape = f"({batch},)" if dims == 1 else f"({batch}, T >= 1)"
    if ids.dim() != dims or ids.shape[0] != batch or ids.numel() == 0:
        raise ModelError(f"{what} takes ids of shape {shape}, got {tuple(ids.shape)}")
    if dims == 1:  # a step's few ids: one copy to Python beats two reductions and their reads
        values = ids.tolist()
        low, high = min(values), max(values)
    else:
        low, high = (int(v) for v in ids.aminmax())
    if low < 0 or high >= vocab_size:
        raise ModelError(f"{what}: token ids must lie in [0, {vocab_size})")


# ---- training ----------------------------------------------------------------------------------------------------

class PieceData(Protocol):
    """The training pieces as the trainer serves them (trainer.data.PieceSource): a training adapter asks for the
    batches its model reads, so that the models never import the trainer."""

    def lane_stream(self, lanes: list[int], total_lanes: int, segment_len: int, position: dict | None = None):
        """Whole pieces back to back, one segment of each lane per `next_batch()` (a recurrent model)."""
        ...

    def crop_batches(self, items: list[int], context: int, latents: int, sounding: bool = False):
        """Effective-segmentation crops, `batch(step, micro)` (a model that reads a bounded context); `sounding`:
        each with the pitches sounding before it (core.models.perceivers.crops.collate)."""
        ...

    seed: int  # the run's seed: batches drawn from (seed, step, micro, item) alone need nothing saved to resume

    def __len__(self) -> int:
        """Training pieces."""
        ...

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """A training piece (int64 ids, BOS ... EOS) or a piece's start (BOS ..., no EOS), drawn from `rng` in
        proportion to the training tokens it gives and augmented (a model that cuts its own windows, like SMDIM)."""
        ...


class Training(Protocol):
    """How the trainer trains one architecture: everything in the loop that differs between models.

    The registry holds the class; the trainer makes one per run, `Training(model)`, and calls only these.
    """

    presets: ClassVar[dict[str, dict]]  # size (tiny | small | default) -> config fields over the config's defaults

    def __init__(self, model: Model) -> None: ...

    def shortest_piece(self) -> int:
        """Tokens a training piece needs to be worth training on (the error names it when none has them)."""
        ...

    def start(self, source: PieceData, lanes: list[list[int]], total_lanes: int, budget: int, saved: dict) -> None:
        """Set up the micro-batches of this process: `lanes[m]` the global lanes (items) of micro-batch m, `source`
        the training pieces (a PieceData), `budget` the state bytes per lane, `saved` the data position
        merged over every process ({} from the start)."""
        ...

    def batch(self, step: int, micro: int) -> tuple[np.ndarray, np.ndarray]:
        """inputs and targets (int64 arrays) of micro-batch `micro` of optimizer step `step`."""
        ...

    def position(self) -> dict:
        """This process's resumable data position ({} when batches depend on the step alone)."""
        ...

    def loss(self, module: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, micro: int) -> torch.Tensor:
        """Summed next-token negative log-likelihood of micro-batch `micro` (PAD targets ignored); `module` is the
        model or its distributed wrapper."""
        ...

    def held_out(self, pieces: Iterable[np.ndarray], budget: int, batch: int,
                 device: torch.device) -> tuple[float, float]:
        """(summed negative log-likelihood, predicted tokens) of whole held-out pieces."""
        ...

    def piece_losses(self, ids: torch.Tensor, budget: int | str | None
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One piece (T,) read as generation reads it under `budget` bytes for one lane (None: the model's
        default), a part at a time: (nats (n,) of each predicted id, its position in the piece (n,)) per part,
        differentiable within a part and never across parts. Adapting to a primer (core/adapt.py) trains on
        it; an architecture without it cannot adapt."""
        ...

    def record(self) -> None:
        """Write into the model's config what this run trains it to use (e.g. its memory horizons)."""
        ...

    def elbo(self, piece: np.ndarray, window: int, draws: int, seed: int, device: torch.device | str) -> float:
        """A denoiser's held-out number: the diffusion ELBO (an upper bound on the negative log-likelihood) in
        nats of one piece's ids (int64), cut into windows of `window` ids, each masked `draws` times from a
        generator seeded `seed` for the piece: the same number for the same model, piece and settings.
        core.metrics.elbo_report reaches it by the model's arch; a left-to-right model's adapter leaves it out
        (its held-out number is its log-likelihood, core.metrics.perplexity_report)."""
        ...
