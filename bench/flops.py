"""FLOPs per image, counted by torch's own ``FlopCounterMode``, and the ``models`` table.

Counting runs on the ``meta`` device: shapes only, no memory and no arithmetic, so the full-size
models cost nothing to count. ``FlopCounterMode`` counts matrix products and convolutions (2 FLOPs
per multiply-add); element-wise work (ReLU, squash, softmax, Adam) is not counted, which is the
usual convention and under-counts the routing slightly. A training step is forward + backward of
the model's own loss (no gradient for the input image).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.models.registry import count_parameters, create_model, model_info, model_names

__all__ = ["PAPER_PARAMS", "flops_per_image", "format_si", "model_table", "param_counts"]

_COUNT_BATCH = 2  # a batch > 1 so that no layer special-cases a single image

# Parameter counts the CapsNet paper states (Sabour et al. 2017, Section 5), at 28x28 and width 1.
PAPER_PARAMS: dict[str, str] = {
    "capsnet": "8.2M",
    "capsnet-r1": "8.2M",
    "capsnet-r1-norecon": "6.8M",
    "capsnet-r3-norecon": "6.8M",
    "baseline-cnn": "35.4M",
    # Gu, Tresp & Hu 2021 (their final ConvNet, as a review of the paper reports it; see
    # bench/models/convnet_gu.py): compare with "without decoder".
    "convnet-gu": "5.3M (Gu et al.)",
}


def flops_per_image(
    name: str, input_size: int, width: float, train: bool = False
) -> float:
    """FLOPs of one image through model ``name``: forward, or forward + backward if ``train``."""
    with torch.device("meta"):
        model = create_model(name, input_size=input_size, width=width)
        x = torch.rand(_COUNT_BATCH, 1, input_size, input_size)
        y = torch.randint(0, 10, (_COUNT_BATCH,))
    model.train(train)
    counter = FlopCounterMode(display=False)
    with counter:
        if train:
            out = model(x, y)
            model.loss(out, x, y).backward()
        else:
            with torch.no_grad():
                model(x)
    return counter.get_total_flops() / _COUNT_BATCH


def param_counts(name: str, input_size: int, width: float) -> tuple[int, int]:
    """(parameters, parameters without the reconstruction decoder) of model ``name``, built on
    the ``meta`` device; the two are equal for a model without a decoder."""
    with torch.device("meta"):
        model = create_model(name, input_size=input_size, width=width)
    params = count_parameters(model)
    decoder = getattr(model, "decoder", None)
    return params, params - (count_parameters(decoder) if decoder is not None else 0)


def model_table(input_size: int, width: float) -> list[dict]:
    """One row per registered model: parameters, those without a reconstruction decoder (what
    classifies), FLOPs/image (forward) and the paper's count."""
    rows = []
    for name in model_names():
        params, classifier = param_counts(name, input_size, width)
        paper = PAPER_PARAMS.get(name, "") if (input_size, width) == (28, 1.0) else ""
        info = model_info(name)
        rows.append(
            {
                "model": name,
                "family": info.family,
                "package": (f"{info.package or '-'} {info.version or ''}".rstrip()
                            if info.external else ""),
                "params": params,
                "classifier_params": classifier,
                "flops_per_image": flops_per_image(name, input_size, width),
                "paper_params": paper,
            }
        )
    return rows


def format_si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"
