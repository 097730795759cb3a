"""Speed of test-set generation (pytest-benchmark; run with ``-m bench --benchmark-enable``).

The issue's floor: affNIST-style generation at >= 20,000 images/s on 2 CPU cores. Recorded in
``extra_info`` (images/s from the median round), not asserted: timings belong to benchmarks.
"""

from __future__ import annotations

import pytest
import torch

from bench.config import DataConfig
from bench.data import testsets
from bench.data.mnist import load_split

FLOOR_IMAGES_PER_S = 20_000


@pytest.fixture(scope="module", autouse=True)
def _mnist_loaded():
    load_split("test")  # decode and verify once, outside the timed rounds


def _run(benchmark, name: str, cfg: DataConfig, device: str = "cpu", floor: int | None = None) -> None:
    def once():
        ts = testsets.generate(name, cfg, device)
        if device == "cuda":
            torch.cuda.synchronize()
        return ts

    ts = benchmark.pedantic(once, rounds=5, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        images=len(ts),
        images_per_s=round(len(ts) / median),
        floor_images_per_s=floor,
        threads=torch.get_num_threads(),
        device=device,
    )


def test_affnist_generation_cpu(benchmark):
    """2,000 MNIST test digits x 4 transforms: sample on the CPU, build matrices, warp, round."""
    _run(benchmark, "affnist", DataConfig(n_test=2_000, affnist_k=4), floor=FLOOR_IMAGES_PER_S)


def test_scramble_generation_cpu(benchmark):
    _run(benchmark, "scramble-g3", DataConfig(n_test=2_000))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_affnist_generation_cuda(benchmark):
    _run(benchmark, "affnist", DataConfig(n_test=10_000, affnist_k=32), device="cuda")
