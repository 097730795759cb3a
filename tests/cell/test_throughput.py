"""``measure``, ``timed`` and ``python -m bench throughput``: every field present and consistent."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from bench.cell import throughput
from bench.cell.throughput import allocator_peak_mb, matmul_rate, measure, timed
from bench.cli import main
from bench.flops import flops_per_image
from bench.models.registry import Output, count_parameters, create_model

KEYS = ("params", "flops_per_image", "flops_train_per_image", "train_images_per_s",
        "infer_images_per_s", "latency_b1_ms", "peak_mem_mb", "peak_mem_kind", "tflops_train",
        "model", "input_size", "width", "batch", "device_name", "peak_infer_mem_mb")
MB100 = 100 * 2**20
# Tolerance of the memory checks below: the stub's own parameter, inputs, gradients and Adam
# state, and the few scalars its step allocates, come to a few kB; 1 MB is far above that and
# far below a missed or double-counted 100 MB tensor.
TOL_MB = 1.0


def test_measure_reports_consistent_numbers(device):
    row = measure("convnet-k9", input_size=28, batch=4, width=0.0625, device=device,
                  warmup=1, repeats=2)
    for key in KEYS:
        assert key in row
    assert row["params"] == count_parameters(create_model("convnet-k9", 28, 0.0625))
    assert row["flops_per_image"] == flops_per_image("convnet-k9", 28, 0.0625)
    assert row["flops_train_per_image"] > 2 * row["flops_per_image"]
    assert row["train_images_per_s"] > 0 and row["infer_images_per_s"] > 0
    assert row["latency_b1_ms"] > 0
    assert row["tflops_train"] == pytest.approx(
        row["flops_train_per_image"] * row["train_images_per_s"] / 1e12)
    assert row["peak_mem_kind"] == ("cuda_max_allocated" if device.type == "cuda"
                                    else "cpu_max_allocated")
    # Training holds the parameters, their gradients and Adam's two moments (4 x fp32 each);
    # inference only the parameters, and less than training at its peak.
    params_mb = 4 * row["params"] / 2**20
    assert row["peak_mem_mb"] > 4 * params_mb and not math.isnan(row["peak_mem_mb"])
    assert params_mb < row["peak_infer_mem_mb"] < row["peak_mem_mb"]


def test_timed_is_the_median_of_the_timed_calls(monkeypatch):
    clock = iter([0.0, 3.0, 10.0, 11.0, 20.0, 22.0])  # calls of 3, 1 and 2 seconds
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    calls = []
    assert timed(lambda: calls.append(1), "cpu", warmup=2, repeats=3) == 2.0
    assert len(calls) == 2 + 3


def test_images_per_s_is_batch_over_the_timed_seconds(monkeypatch):
    seconds = iter([0.5, 0.25, 0.01])  # train, inference at batch 8, inference at batch 1
    monkeypatch.setattr(throughput, "timed", lambda fn, device, warmup, repeats: next(seconds))
    row = measure("capsnet", 28, 8, 0.0625, "cpu")
    assert row["train_images_per_s"] == 16.0 and row["infer_images_per_s"] == 32.0
    assert row["latency_b1_ms"] == pytest.approx(10.0)
    assert row["tflops_train"] == pytest.approx(row["flops_train_per_image"] * 16.0 / 1e12)


def test_switches_select_what_is_timed(monkeypatch):
    timed_calls = []

    def fake_timed(fn, device, warmup, repeats):
        fn()  # the step really runs once: channels_last and a given model must work
        timed_calls.append(fn)
        return 1.0

    monkeypatch.setattr(throughput, "timed", fake_timed)
    model = create_model("convnet-k9", 28, 0.125)
    row = measure("convnet-k9", 28, 2, 0.125, "cpu", train=False, latency=False,
                  channels_last=True, model=model)
    assert len(timed_calls) == 1  # inference only
    assert row["train_images_per_s"] is None and row["tflops_train"] is None
    assert row["latency_b1_ms"] is None and row["infer_images_per_s"] == 2.0
    assert row["params"] == count_parameters(model)


def test_matmul_rate_is_two_n_cubed_over_the_timed_seconds(monkeypatch):
    rate = matmul_rate("cpu", torch.float32, n=64, warmup=1, repeats=2)
    assert 0 < rate < float("inf")
    monkeypatch.setattr(throughput, "timed", lambda fn, device, warmup, repeats: 0.5)
    assert matmul_rate("cpu", torch.float32, n=64) == 2 * 64**3 / 0.5


def test_cli_json_and_table(capsys):
    args = ["throughput", "--model", "capsnet", "--input-size", "28", "--width", "0.0625",
            "--batch", "2", "--device", "cpu", "--warmup", "0", "--repeats", "1"]
    assert main(args + ["--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "capsnet" and row["batch"] == 2 and row["input_size"] == 28
    assert main(args) == 0
    assert "train images/s" in capsys.readouterr().out
    assert main(["throughput", "--model", "nope", "--device", "cpu"]) == 2


def test_allocator_peak_is_the_highest_rise_not_the_sum():
    def step():
        a = torch.ones(MB100, dtype=torch.uint8)  # 100 MB, written, then dropped
        del a
        b = torch.ones(MB100 // 2, dtype=torch.uint8)  # 50 MB
        c = torch.ones(MB100 // 4, dtype=torch.uint8)  # 25 MB: 75 MB held together
        return b, c

    assert allocator_peak_mb(step) == pytest.approx(100, abs=TOL_MB)
    kept = []
    assert allocator_peak_mb(lambda: kept.append(step()), calls=2) == pytest.approx(
        100 + 75, abs=TOL_MB)  # the first call's 75 MB are still held by the second's peak


class _Allocates100MB(nn.Module):
    """A stub model whose forward (training or not) allocates, fills and drops a 100 MB tensor;
    everything else it holds or allocates is a few kB."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(10))

    def forward(self, x, y=None):
        big = torch.ones(MB100 // 4, device=x.device)  # fp32
        total = big.sum()
        del big
        logits = x.flatten(1)[:, :10] * self.w + 0 * total
        return Output(logits=logits, scores=logits, features=logits, reconstruction=None)

    def loss(self, out, x, y):
        return out.logits.square().mean()


@pytest.mark.parametrize("fused, channels_last", [(False, False), (True, True)])
def test_peak_memory_of_a_known_allocation(device, fused, channels_last):
    held_by_others = torch.cuda.memory_allocated(device) / 2**20 if device.type == "cuda" else 0
    row = measure("convnet-k9", 28, 4, 0.125, device, warmup=1, repeats=1, latency=False,
                  fused=fused, channels_last=channels_last, model=_Allocates100MB())
    assert row["peak_mem_mb"] - held_by_others == pytest.approx(100, abs=TOL_MB)
    assert row["peak_infer_mem_mb"] - held_by_others == pytest.approx(100, abs=TOL_MB)


def test_a_wider_model_needs_more_memory(device):
    small, big = (measure("capsnet", 28, 2, width, device, warmup=0, repeats=1, latency=False)
                  for width in (0.125, 1.0))
    assert big["peak_mem_mb"] > small["peak_mem_mb"]
    assert big["peak_infer_mem_mb"] > small["peak_infer_mem_mb"]
    assert big["peak_mem_mb"] > big["peak_infer_mem_mb"]
