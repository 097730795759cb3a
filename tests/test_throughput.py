"""``measure`` and ``python -m bench throughput``: every field present and consistent."""

from __future__ import annotations

import json
import math

import pytest

from bench.cli import main
from bench.flops import flops_per_image
from bench.models.registry import count_parameters, create_model
from bench.throughput import measure

KEYS = ("params", "flops_per_image", "flops_train_per_image", "train_images_per_s",
        "infer_images_per_s", "latency_b1_ms", "peak_mem_mb", "tflops_train", "device_name")


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
    assert row["peak_mem_mb"] >= 0 and not math.isnan(row["peak_mem_mb"])
    assert row["peak_mem_kind"] in (("cuda_max_allocated",) if device.type == "cuda"
                                    else ("peak_rss_increase", "process_peak_rss"))


def test_cli_json_and_table(capsys):
    args = ["throughput", "--model", "capsnet", "--input-size", "28", "--width", "0.0625",
            "--batch", "2", "--device", "cpu", "--warmup", "0", "--repeats", "1"]
    assert main(args + ["--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["model"] == "capsnet" and row["batch"] == 2 and row["input_size"] == 28
    assert main(args) == 0
    assert "train images/s" in capsys.readouterr().out
    assert main(["throughput", "--model", "nope", "--device", "cpu"]) == 2
