"""What a training run is: one dataclass shared by the CLI, the studio's fine-tune dialog and the recipes.

A run either fine-tunes a base model (`base` names a model directory; its architecture and config are kept) or
trains from scratch (`base=None`: `arch` and a `size` preset, adjusted by `model` overrides).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from core.errors import ModelError
from core.models import registry

SIZES = ("tiny", "small", "default")
PRECISIONS = ("auto", "fp32", "bf16")
VAL_DRAWS = ("weighted", "pieces")  # how the held-out pieces scored at each validation are chosen
CHECKPOINT_EVERY = 100  # steps between resumable checkpoints, unless a run says otherwise
# ... and minutes: the first 100 steps of a default-size model can take minutes on a CPU, and a run killed before
# its first checkpoint starts again from nothing.
CHECKPOINT_MINUTES = 5.0

# Presets for training from scratch live with each architecture's training adapter (core/models/<arch>/training.py):
# "default" is the size of the shipped models (the config classes' defaults).


@dataclass
class TrainConfig:
    """One training run. Sizes of batches are global: the same numbers give the same run on any process count."""

    folder: str  # the MIDI folder (scanned into the corpus cache)
    out: str | None = None  # model name (saved in the user models dir) or a path; None: "<folder>-<arch>"
    base: str | None = "default"  # model to fine-tune (name or path); None trains from scratch
    arch: str | None = None  # from scratch: a registered architecture; with a base, must match it if given
    size: str = "default"  # from scratch: tiny | small | default
    model: dict = field(default_factory=dict)  # from scratch: config fields over the preset

    steps: int | None = None  # optimizer steps; with `minutes`, whichever comes first
    minutes: float | None = None  # wall-clock training time (validation included)
    budget: str | None = None  # DSMR: recurrent-state bytes per lane (training and validation); default: model's
    batch: int = 8  # lanes (DSMR) or crops (PerceiverS) per micro-batch, over all processes
    accum: int = 1  # micro-batches per optimizer step
    # Peak learning rate; default 1e-3 fine-tuning, 3e-4 from scratch. Fine-tuning the first shipped default on 8
    # MAESTRO performances for 5 min (bf16, 2 cores) reached held-out perplexity 20.9 at 1e-4, 19.2 at 1e-3, 19.6
    # at 2e-3; 15 min: 17.1 at 6e-4 (764 steps, validating every 100), 16.6 at 1e-3 (849 steps, validating every
    # 300; bench/finetune.py). A high rate raises the held-out loss for the first steps; the best validated model
    # is kept (the base included).
    lr: float | None = None
    min_lr_ratio: float = 0.1  # cosine decay ends at lr * this
    warmup: int | None = None  # warm-up steps; default: 5% of `steps` (at most 200), 50 in minutes mode
    weight_decay: float = 0.1
    clip: float = 1.0  # gradient norm clip (0: none)
    # auto: bf16 autocast on CUDA, fp32 on CPU. bf16 on a CPU with native bf16 (AVX512-BF16, AMX) trains
    # ~1.5x faster here (bench/train.py); the weights and optimizer stay fp32 either way.
    precision: str = "auto"
    seed: int = 0

    augment: bool | None = None  # transposition + tempo stretch; default: on when fine-tuning
    transpose: int = 5  # semitones either way
    stretch: float = 0.05  # tempo factor in [1 - stretch, 1 + stretch]
    expressive: bool = False  # perform score-like pieces at random: rubato, jitter, legato, pedal, dynamics
    # With `expressive`: (low, high) share of its written length a performed piece takes, drawn per piece (None:
    # the written tempo, trainer.expressive's default; the default models' recipe plays scores faster).
    expressive_tempo: list[float] | tuple[float, float] | None = None
    figuration: float = 0.0  # share of draws whose held chords are played as keyboard figures (trainer/figuration.py)
    register: float = 0.0  # share of draws whose bass line moves an octave down (trainer/register.py)
    weights: dict | str | None = None  # draws per piece by collection (sub-folder), or a JSON file (trainer.weights)
    starts: dict | str | None = None  # extra draws of a piece's start (read from BOS), by collection, the same way

    val_fraction: float = 0.1  # held-out pieces
    val_max_pieces: int = 32  # cap on the held-out pieces scored at each validation
    # How those are chosen from the held-out split: "weighted" by the chance the training draws give a piece's
    # tokens (its collection's weight x its tokens; as "pieces" without weights), so the held-out number is of
    # the music the run learns; "pieces": uniformly by piece (a run saved before this setting resumes with it).
    val_draw: str = "weighted"
    val_every: int = 200  # steps between validations (and best-model saves)
    # Resumable checkpoints every this many steps, and whenever this many minutes passed since the last (None:
    # CHECKPOINT_EVERY, CHECKPOINT_MINUTES; on a resume, the run's own). Given on a resume, they apply from then on.
    checkpoint_every: int | None = None
    checkpoint_minutes: float | None = None
    patience: int = 5  # validations without improvement before stopping early (0: never)
    log_every: int = 10  # steps between progress events

    resume: bool = False  # continue the run in `out` from its last checkpoint
    device: str | None = None  # default: cuda when available, else cpu
    workers: int | None = None  # processes that scan the folder
    command: str = ""  # the command line that started the run, for the model card

    def __post_init__(self) -> None:
        problems = []
        archs = registry.architectures()
        if self.arch is not None and self.arch not in archs:
            problems.append(f"unknown architecture {self.arch!r} (use {' or '.join(archs)})")
        if self.size not in SIZES:
            problems.append(f"unknown size {self.size!r} (use {', '.join(SIZES)})")
        if self.base is None and self.arch is None:
            problems.append(f"training from scratch needs an architecture (--arch {'|'.join(archs)})")
        if self.precision not in PRECISIONS:
            problems.append(f"unknown precision {self.precision!r} (use {', '.join(PRECISIONS)})")
        if self.steps is None and self.minutes is None:
            problems.append("say how long to train: steps or minutes")
        for name in ("steps", "batch", "accum", "val_every", "checkpoint_every", "log_every", "val_max_pieces"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name} must be a positive whole number, got {value!r}")
        if self.val_draw not in VAL_DRAWS:
            problems.append(f"val_draw must be one of {', '.join(VAL_DRAWS)}, got {self.val_draw!r}")
        if self.minutes is not None and not self.minutes > 0:
            problems.append(f"minutes must be positive, got {self.minutes!r}")
        if self.checkpoint_minutes is not None and not self.checkpoint_minutes > 0:
            problems.append(f"checkpoint_minutes must be positive, got {self.checkpoint_minutes!r}")
        tempo = self.expressive_tempo
        if tempo is not None and not (isinstance(tempo, list | tuple) and len(tempo) == 2
                                      and all(isinstance(x, int | float) and not isinstance(x, bool) for x in tempo)
                                      and 0 < tempo[0] <= tempo[1]):
            problems.append(f"expressive_tempo must be a (low, high) pair of shares with 0 < low <= high, "
                            f"got {tempo!r}")
        for name in ("weights", "starts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict | str):
                problems.append(f"{name} must be a mapping of collection to number or a JSON path, got {value!r}")
        if self.lr is not None and not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        if not 0 <= self.transpose <= 24 or not 0.0 <= self.stretch < 0.5:
            problems.append("augmentation needs 0 <= transpose <= 24 and 0 <= stretch < 0.5")
        if not (isinstance(self.figuration, int | float) and 0.0 <= self.figuration <= 1.0):
            problems.append(f"figuration is a share of draws in [0, 1], got {self.figuration!r}")
        if not (isinstance(self.register, int | float) and 0.0 <= self.register <= 1.0):
            problems.append(f"register is a share of draws in [0, 1], got {self.register!r}")
        if self.patience < 0 or (self.warmup is not None and self.warmup < 0) or self.clip < 0:
            problems.append("patience, warmup and clip cannot be negative")
        if problems:
            raise ModelError("bad training settings: " + "; ".join(problems))

    @property
    def fine_tuning(self) -> bool:
        return self.base is not None

    @property
    def val_by_weights(self) -> bool:
        """Whether the held-out pieces are drawn by the training weights (`val_draw`; there are weights to draw by)."""
        return self.val_draw == "weighted" and bool(self.weights)

    @property
    def augmenting(self) -> bool:
        return self.fine_tuning if self.augment is None else self.augment

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-3 if self.fine_tuning else 3e-4

    def autocasts(self, device_type: str) -> bool:
        """Whether the forward passes run under bf16 autocast on this device."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def warmup_steps(self) -> int:
        if self.warmup is not None:
            return self.warmup
        return min(200, max(1, self.steps // 20)) if self.steps is not None else 50

    def with_checkpoint_defaults(self) -> TrainConfig:
        """This run with its checkpoint intervals filled in (what the checkpoints record)."""
        return replace(self, checkpoint_every=self.checkpoint_every or CHECKPOINT_EVERY,
                       checkpoint_minutes=self.checkpoint_minutes or CHECKPOINT_MINUTES)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def scratch_config(arch: str, size: str, overrides: dict) -> dict:
    """The model config dict of a from-scratch run: the preset, then the overrides (checked by the model)."""
    config = dict(registry.get(arch).training.presets[size])
    config.update(overrides)
    return config
