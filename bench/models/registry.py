"""Name -> model factory (timm-style): every model shares constructor arguments and outputs.

Each model file registers one factory per variant with :func:`register_model`; a factory takes
``(input_size, width)`` and returns an ``nn.Module`` whose ``forward(x, y=None)`` returns an
:class:`Output` and whose ``loss(out, x, y)`` returns the training loss of the paper it follows.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn

from bench.errors import BenchError

NUM_CLASSES = 10


class Output(NamedTuple):
    """What every model returns for a batch ``x`` of shape (B, 1, H, W) with values in [0, 1]."""

    logits: torch.Tensor  # (B, 10) what the loss sees: capsule lengths (CapsNet) or logits
    scores: torch.Tensor  # (B, 10) class scores in [0, 1]: capsule lengths or softmax probabilities
    features: torch.Tensor  # (B, F) winning capsule's pose (CapsNet) or penultimate activations
    reconstruction: torch.Tensor | None  # (B, H*W) in [0, 1], CapsNet with a decoder only


Factory = Callable[..., nn.Module]
_REGISTRY: dict[str, Factory] = {}
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


def register_model(name: str) -> Callable[[Factory], Factory]:
    def deco(fn: Factory) -> Factory:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"model '{name}' registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def _load_all() -> None:
    for mod in _MODULES:
        importlib.import_module(mod)


def model_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def create_model(name: str, input_size: int = 40, width: float = 1.0) -> nn.Module:
    """Build a registered model for square inputs of ``input_size`` pixels."""
    _load_all()
    if name not in _REGISTRY:
        raise BenchError(f"unknown model '{name}' (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name](input_size=input_size, width=width)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def scaled(n: int, width: float) -> int:
    """A layer size ``n`` scaled by the width multiplier, at least 1 (shared by every model)."""
    return max(1, round(n * width))
