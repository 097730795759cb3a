"""The model interface and the one registry of models (timm-style names -> factories).

The interface, documented here once (``docs/adding-a-model.md`` walks through an example):

- A *factory* is a function ``factory(*, input_size: int, width: float) -> nn.Module``, registered
  with :func:`register_model` under a name and a report *family* (:data:`FAMILIES`: ``capsule``,
  ``convnet`` or ``head``). ``input_size`` is the side of the square canvas (40 in the affNIST
  setup, 28 in the paper's MNIST table); ``width`` is the profile's ``[model] width``, a channel
  multiplier (1 = the paper's size) that every model applies with :func:`scaled`.
- The module's ``forward(x, y=None)`` takes ``x`` of shape ``(B, 1, H, W)`` with values in [0, 1]
  (and, while training, the labels ``y`` ``(B,)``) and returns an :class:`Output`: ``logits``
  (what the loss sees), ``scores`` (class scores in [0, 1]), ``features`` (the representation
  that the density score and the linear probe read; a model with a ``digit_capsules`` method has
  that method's first output read instead, the CapsNet's whole 10 x 16 DigitCaps) and an
  optional ``reconstruction`` ``(B, H*W)`` in [0, 1].
- ``loss(out, x, y)`` returns the scalar training loss of a batch. Training calls
  ``out = model(x, y); loss = model.loss(out, x, y)``; evaluation calls ``model(x)`` in eval mode.
- Seeding: the trainer builds the model inside ``torch.random.fork_rng`` after
  ``torch.manual_seed`` of a seed derived from (model, n, seed, setup), on the CPU, so a factory
  must draw its initial weights from torch's global generator only (no ``random``, no NumPy,
  no generator of its own); two builds under one seed must give bitwise-equal weights.
- A submodule named ``decoder`` is a reconstruction decoder: parameter matching and budgets
  count the model without it (the classifier).

Names come from three places: the suite's own files (:data:`_MODULES`), installed packages that
declare a ``capsbench.models`` entry point (:data:`ENTRY_POINT_GROUP`; the entry point's name is
the model's name and its value the ``module:factory`` of a registered factory), and, for a
one-off, any ``module:factory`` string used where a model name is expected.
``python -m bench models --check NAME`` is the conformance check (:mod:`bench.cell.conformance`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from bench.errors import BenchError

NUM_CLASSES = 10
FAMILIES = ("capsule", "convnet", "head")  # how the report groups models
ENTRY_POINT_GROUP = "capsbench.models"
SUITE_PACKAGE = "capsbench"  # the distribution of the suite's own models


class Output(NamedTuple):
    """What every model returns for a batch ``x`` of shape (B, 1, H, W) with values in [0, 1]."""

    logits: torch.Tensor  # (B, 10) what the loss sees: capsule lengths (CapsNet) or logits
    scores: torch.Tensor  # (B, 10) class scores in [0, 1]: capsule lengths or softmax probabilities
    features: torch.Tensor  # (B, F) winning capsule's pose (CapsNet) or penultimate activations
    reconstruction: torch.Tensor | None  # (B, H*W) in [0, 1], CapsNet with a decoder only


Factory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: the factory and what the run files record about it."""

    name: str
    factory: Factory
    family: str
    module: str  # the factory's module
    package: str | None = None  # the distribution that provides the module; None: not installed
    version: str | None = None
    entry_point: str | None = None  # "capsbench.models:NAME" when it came from an entry point

    @property
    def external(self) -> bool:
        """Not one of the suite's own models (bench/models)."""
        return not self.module.startswith("bench.")

    def source_files(self) -> list[Path]:
        """The Python files of the factory's top-level package (or its single module): what an
        external model's cache key hashes."""
        top = self.module.split(".")[0]
        mod = sys.modules.get(top) or importlib.import_module(top)
        paths = [Path(p) for p in getattr(mod, "__path__", [])]
        if paths:
            return sorted({f for p in paths for f in p.rglob("*.py")})
        return [Path(mod.__file__)] if getattr(mod, "__file__", None) else []

    def record(self) -> dict[str, str | bool | None]:
        """What ``manifest.json`` keeps of the entry (``models``), so that a report needs no import."""
        return {"family": self.family, "package": self.package, "version": self.version,
                "module": self.module, "external": self.external,
                "entry_point": self.entry_point}


_REGISTRY: dict[str, ModelInfo] = {}
_RESOLVED: dict[str, ModelInfo] = {}  # entry-point and module:factory names, once loaded
# Model files, imported on first use so that registration needs no star-imports.
_MODULES = (
    "bench.models.capsnet",
    "bench.models.baseline_cnn",
    "bench.models.convnet_maxpool",
    "bench.models.convnet_k9",
    "bench.models.convnet_gu",
    "bench.models.ladder",
    "bench.models.heads",
    "bench.models.efficient_capsnet",
)


def register_model(name: str, *, family: str) -> Callable[[Factory], Factory]:
    """Register ``factory(*, input_size, width) -> nn.Module`` under ``name`` in ``family``."""
    if family not in FAMILIES:
        raise BenchError(f"model '{name}': family must be one of {', '.join(FAMILIES)}, "
                         f"got {family!r}")

    def deco(fn: Factory) -> Factory:
        old = _REGISTRY.get(name)
        reloaded = old is not None and (old.module, old.factory.__qualname__) == (
            fn.__module__, fn.__qualname__)  # the same module imported again
        if old is not None and old.factory is not fn and not reloaded:
            raise BenchError(f"model '{name}' registered twice ({_REGISTRY[name].module} and "
                             f"{fn.__module__})")
        _REGISTRY[name] = ModelInfo(name, fn, family, fn.__module__)
        for key in [k for k, v in _RESOLVED.items() if v.factory is getattr(old, "factory", None)]:
            del _RESOLVED[key]
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """The installed ``capsbench.models`` entry points by name (read once per process)."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def refresh_entry_points() -> None:
    """Forget what was read of the installed entry points (after an install in this process)."""
    _entry_points.cache_clear()
    _RESOLVED.clear()


def model_names() -> list[str]:
    """The suite's models, the installed entry points' and any external one already loaded
    (``module:factory`` names are not listed: there is no end to them)."""
    _load_all()
    return sorted(set(_REGISTRY) | set(_entry_points()))


@functools.cache
def _suite_version() -> str | None:
    try:
        return importlib.metadata.version(SUITE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


def _distribution_of(module: str) -> tuple[str | None, str | None]:
    """(distribution name, version) of the installed package that holds ``module``."""
    top = module.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None, None


def _registered(obj: object, where: str) -> ModelInfo:
    for info in _REGISTRY.values():
        if info.factory is obj:
            return info
    raise BenchError(f"{where} is not a registered factory: decorate it with "
                     "@bench.models.register_model(NAME, family=...) (docs/adding-a-model.md)")


def _from_module_factory(name: str) -> ModelInfo:
    module, _, attr = name.partition(":")
    if not module or not attr:
        raise BenchError(f"model '{name}': expected module:factory, e.g. my_models.net:factory")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # an external module: any import error is the user's to see in one line
        raise BenchError(f"model '{name}': cannot import {module} ({type(e).__name__}: {e})") from None
    if not hasattr(mod, attr):
        raise BenchError(f"model '{name}': module {module} has no '{attr}'")
    info = _registered(getattr(mod, attr), f"model '{name}': {module}.{attr}")
    package, version = _distribution_of(info.module)
    return dataclasses.replace(info, name=name, package=package, version=version)


def _from_entry_point(ep: importlib.metadata.EntryPoint) -> ModelInfo:
    dist = ep.dist.name if ep.dist is not None else None
    where = f"entry point '{ep.name}' ({ENTRY_POINT_GROUP}) of package {dist}"
    try:
        obj = ep.load()
    except Exception as e:  # as above: a broken plug-in is one line
        raise BenchError(f"{where}: cannot load {ep.value} ({type(e).__name__}: {e})") from None
    info = _registered(obj, f"{where}: {ep.value}")
    if info.name != ep.name:
        raise BenchError(f"{where}: {ep.value} is registered as '{info.name}', not '{ep.name}'")
    return dataclasses.replace(info, package=dist,
                               version=ep.dist.version if ep.dist is not None else None,
                               entry_point=f"{ENTRY_POINT_GROUP}:{ep.name}")


def model_info(name: str) -> ModelInfo:
    """The entry of model ``name`` (a suite name, an entry point's, or ``module:factory``);
    an external one is imported here. Unknown or broken names are a one-line BenchError."""
    _load_all()
    if name in _RESOLVED:
        return _RESOLVED[name]
    eps = _entry_points()
    if name in eps:
        if name in _REGISTRY and not _REGISTRY[name].external:
            raise BenchError(f"entry point '{name}' ({ENTRY_POINT_GROUP}) of package "
                             f"{eps[name].dist.name if eps[name].dist else '?'} has the name of "
                             "one of the suite's models: rename it")
        info = _from_entry_point(eps[name])
    elif name in _REGISTRY:
        info = _REGISTRY[name]
        if info.external:
            info = dataclasses.replace(info, **dict(zip(("package", "version"),
                                                        _distribution_of(info.module),
                                                        strict=True)))
        else:
            info = dataclasses.replace(info, package=SUITE_PACKAGE, version=_suite_version())
    elif ":" in name:
        info = _from_module_factory(name)
    else:
        raise BenchError(f"unknown model '{name}' (known: {', '.join(model_names())}; a model "
                         "of another package needs that package installed, e.g. pip install -e "
                         "DIR; or name it module:factory)")
    _RESOLVED[name] = info
    return info


def create_model(name: str, input_size: int = 40, width: float = 1.0) -> nn.Module:
    """Build a registered model for square inputs of ``input_size`` pixels."""
    return model_info(name).factory(input_size=input_size, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def classifier_parameters(model: nn.Module) -> int:
    """Parameters without a reconstruction decoder (a submodule named ``decoder``)."""
    decoder = getattr(model, "decoder", None)
    return count_parameters(model) - (count_parameters(decoder) if isinstance(decoder, nn.Module)
                                      else 0)


def scaled(n: int, width: float) -> int:
    """A layer size ``n`` scaled by the width multiplier, at least 1 (shared by every model)."""
    return max(1, round(n * width))
