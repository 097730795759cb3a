"""Training-step speed of two public PyTorch CapsNets at the paper's size (pytest-benchmark).

Skipped unless ``CAPSBENCH_PEER_GRAM`` and ``CAPSBENCH_PEER_GUO`` name checkouts of
gram-ai/capsule-networks and XifengGuo/CapsNet-Pytorch; the steps are those of
``peer_capsnets.py`` (28x28, batch 32, their loss, Adam). Our own full-size step is
``test_bench_models.py::test_train_step[capsnet-w1-28x28]``; the ratio of the two images/s is the
comparison ``peer_capsnets.py`` prints. Nothing here asserts a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.benchmarks.peer_capsnets import BATCH, gram_step, guo_step

PEERS = {"gram-ai": ("CAPSBENCH_PEER_GRAM", gram_step), "XifengGuo": ("CAPSBENCH_PEER_GUO", guo_step)}


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peer_train_step(benchmark, peer):
    env, make_step = PEERS[peer]
    folder = os.environ.get(env)
    if not folder:
        pytest.skip(f"set {env} to a checkout of the {peer} CapsNet")
    step = make_step(Path(folder))
    benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update(peer=peer, batch=BATCH, input_size=28,
                                images_per_s=round(BATCH / benchmark.stats.stats.median, 1))
