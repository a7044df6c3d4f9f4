"""The one list of model architectures: model directories, the trainer, the CLI, metrics and recipes read it.

An architecture is registered by name with its model class, its config class and (to be trainable) its training
adapter (core/models/interface.py). The shipped ones are registered by module path and imported only when first
asked for, so listing the names (`recital --help`, `--arch` choices) never imports torch. A new architecture is a
folder under core/models/ and one `register` call (or one line in `_SHIPPED`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from core.errors import ModelError


@dataclass(frozen=True)
class Architecture:
    """What the registry knows about one architecture."""

    arch: str
    model_class: type
    config_class: type
    training_source: type | str | None  # the Training class, "module:Class" until first used, or None

    @property
    def training(self) -> type:
        """The architecture's training adapter class (core.models.interface.Training); ModelError if it has none."""
        source = self.training_source
        if source is None:
            raise ModelError(f"the {self.arch} architecture cannot be trained in this build (it has no trainer)")
        if isinstance(source, str):
            module_name, name = source.split(":")
            return getattr(importlib.import_module(module_name), name)
        return source


# arch -> (package, model class, config class, training adapter "module:Class"), imported on first use.
_SHIPPED: dict[str, tuple[str, str, str, str]] = {
    "dsmr": ("core.models.dsmr", "DSMR", "DSMRConfig", "core.models.dsmr.training:DSMRTraining"),
    "perceivers": ("core.models.perceivers", "PerceiverS", "PerceiverSConfig",
                   "core.models.perceivers.training:PerceiverSTraining"),
    "smdim": ("core.models.smdim", "SMDIM", "SMDIMConfig", "core.models.smdim.training:SMDIMTraining"),
}
_loaded: dict[str, Architecture] = {}


def register(arch: str, model_class: type, config_class: type, training: type | None = None) -> None:
    """Make `arch` known everywhere (model directories, `recital train --arch`, metrics); replaces an earlier one.

    `model_class(config_class.from_dict(d))` builds a model (core.models.interface.Model); `training`, the class
    of its training adapter (core.models.interface.Training), makes it trainable.
    """
    if not isinstance(arch, str) or not arch.isidentifier() or arch != arch.lower():
        raise ModelError(f"an architecture name is a lower-case identifier, got {arch!r}")
    if getattr(model_class, "arch", None) != arch:
        raise ModelError(f"{model_class.__name__}.arch must be {arch!r} to register it under that name")
    _loaded[arch] = Architecture(arch, model_class, config_class, training)


def unregister(arch: str) -> None:
    """Forget an architecture registered at run time (tests); a shipped one is loaded again on the next `get`."""
    _loaded.pop(arch, None)


def architectures() -> list[str]:
    """The names of every known architecture, shipped first, without importing any model."""
    return list(dict.fromkeys([*_SHIPPED, *_loaded]))


def get(arch: str) -> Architecture:
    """The architecture of that name; ModelError when it is unknown or not in this build."""
    if isinstance(arch, str) and arch in _loaded:
        return _loaded[arch]
    if not isinstance(arch, str) or arch not in _SHIPPED:
        from core.models.config import show

        raise ModelError(f"unknown model architecture {show(arch)}: known are {', '.join(sorted(architectures()))}")
    package, model_name, config_name, training = _SHIPPED[arch]
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError as error:
        if error.name is None or not package.startswith(error.name):
            raise
        raise ModelError(f"the {arch} architecture is not in this build ({package} is missing)") from None
    _loaded[arch] = Architecture(arch, getattr(module, model_name), getattr(module, config_name), training)
    return _loaded[arch]


def build(arch: str, config: dict):
    """A freshly initialised model of `arch` from its config dict (ModelError naming what was wrong)."""
    entry = get(arch)
    return entry.model_class(entry.config_class.from_dict(config))
