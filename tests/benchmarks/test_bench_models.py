"""Training-step speed of every model (pytest-benchmark), and a floor for the full-size CapsNet.

Run: ``python -m pytest tests/benchmarks -m bench --benchmark-enable``. The floor (our choice): the
full-size CapsNet at 28x28, batch 32, forward + backward + Adam at >= 15 images/s on the 2-core
CI machine, with DigitCaps (u_hat = W_ij u_i) and routing < 10% of the step.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.models.registry import create_model, model_names

SMALL = model_names()  # every registered model, at the quick profile's width
FLOOR_IMAGES_PER_S = 15.0
ROUTING_SHARE_MAX = 0.10


def _train_step(name: str, input_size: int, width: float, batch: int):
    torch.manual_seed(0)
    model = create_model(name, input_size=input_size, width=width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, input_size, input_size)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        out = model(x, y)
        loss = model.loss(out, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step, x


@pytest.mark.parametrize("name", SMALL)
def test_train_step_small_40x40(benchmark, name):
    """The quick profile's setting: width 0.25, 40x40 canvas, batch 64."""
    _, step, _ = _train_step(name, 40, 0.25, 64)
    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    benchmark.extra_info["images_per_s"] = 64 / benchmark.stats.stats.median


def test_full_capsnet_28x28_batch32_floor(benchmark):
    model, step, x = _train_step("capsnet", 28, 1.0, 32)
    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
    images_per_s = 32 / benchmark.stats.stats.median
    benchmark.extra_info["images_per_s"] = images_per_s
    assert images_per_s >= FLOOR_IMAGES_PER_S


def test_full_capsnet_routing_share():
    """Time DigitCaps + routing (forward and backward, with the gradient for the primary
    capsules, as in training) against the whole step, on the same inputs."""
    model, step, x = _train_step("capsnet", 28, 1.0, 32)
    with torch.no_grad():
        u0 = model.primary_capsules(x)
    u = u0.clone().requires_grad_()

    def digit() -> None:
        v, _ = model.digit_capsules(u)
        v.sum().backward()

    def median(fn, n=7) -> float:
        fn()
        times = []
        for _ in range(n):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    share = median(digit) / median(step)
    print(f"DigitCaps + routing: {100 * share:.1f}% of a training step")
    assert share < ROUTING_SHARE_MAX
