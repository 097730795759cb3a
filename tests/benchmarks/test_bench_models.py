"""Training-step speed of every main model (pytest-benchmark; run with ``-m bench --benchmark-enable``).

A step is the trainer's own (:func:`bench.cell.train.optimizer_step`: forward, the model's loss,
backward, Adam) with the trainer's defaults (``TrainConfig``: fused Adam, channels-last model and
inputs, fp32 on the CPU; glibc malloc keeping freed memory, :func:`bench.runtime.keep_freed_memory`),
on random inputs, for every model of the default profile at two sizes: width 1/8 on the 40x40
canvas (the smoke and quick profiles) and width 1 on 28x28 (the paper's MNIST size), batch 32.
Images/s (batch over the median round) go to ``extra_info``.

Nothing here asserts a time: timings belong to benchmarks. Recorded beside them, our targets for
the full-size CapsNet at 28x28, batch 32 on the 2-core CI machine: >= 15 images/s
(``floor_images_per_s``), and DigitCaps (u_hat = W_ij u_i) with routing < 10% of the step
(``routing_share`` against ``routing_share_max``).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.cell.plan import TrainSpec
from bench.cell.train import build_model, optimizer_step
from bench.config import Profile, TrainConfig
from bench.runtime import keep_freed_memory

MODELS = Profile().models  # capsnet, baseline-cnn, convnet-maxpool, convnet-k9
SIZES = [(0.125, 40), (1.0, 28)]  # (width, input size)
BATCH = 32
FLOOR_IMAGES_PER_S = 15.0  # full-size CapsNet, 28x28, batch 32
ROUTING_SHARE_MAX = 0.10
TRAIN = TrainConfig()  # the trainer's defaults


def _train_step(name: str, input_size: int, width: float, batch: int):
    """The model (seeded as the trainer builds it), one training step as the trainer runs it, and
    the step's inputs."""
    keep_freed_memory()  # as the trainer does
    model = build_model(TrainSpec(name, n=0, seed=0, canvas=input_size, width=width))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, input_size, input_size, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    if TRAIN.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=TRAIN.lr,
                                 fused=TRAIN.fused_optimizer or None)
    model.train()

    def step() -> None:
        optimizer_step(model, model, optimizer, x, y)

    return model, step, x


@pytest.mark.parametrize("width, input_size", SIZES, ids=[f"w{w:g}-{s}x{s}" for w, s in SIZES])
@pytest.mark.parametrize("name", MODELS)
def test_train_step(benchmark, name, width, input_size):
    _, step, _ = _train_step(name, input_size, width, BATCH)
    benchmark.pedantic(step, rounds=5, warmup_rounds=2, iterations=1)
    images_per_s = BATCH / benchmark.stats.stats.median
    benchmark.extra_info.update(model=name, width=width, input_size=input_size, batch=BATCH,
                                images_per_s=round(images_per_s, 1),
                                threads=torch.get_num_threads())
    if name == "capsnet" and width == 1.0 and input_size == 28:
        benchmark.extra_info.update(floor_images_per_s=FLOOR_IMAGES_PER_S,
                                    meets_floor=images_per_s >= FLOOR_IMAGES_PER_S)


def test_full_capsnet_routing(benchmark):
    """DigitCaps + routing (forward and backward, with the gradient for the primary capsules, as
    in training) at width 1, 28x28, batch 32; its share of the whole step, on the same inputs."""
    model, step, x = _train_step("capsnet", 28, 1.0, BATCH)
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

    benchmark.pedantic(digit, rounds=7, warmup_rounds=1, iterations=1)
    share = benchmark.stats.stats.median / median(step)
    benchmark.extra_info.update(routing_share=round(share, 4), routing_share_max=ROUTING_SHARE_MAX)
