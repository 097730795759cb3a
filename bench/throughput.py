"""Training and inference speed of one model: images/s, latency, memory and achieved TFLOP/s.

:func:`measure` is the project's one measurement of a model's speed: ``bench throughput``, the
runner's throughput stage and ``gpu-check`` all call it. :func:`timed` is the one timer, also of
:func:`matmul_rate`, the device's practical peak that achieved TFLOP/s are compared with.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls, each bracketed by
``torch.cuda.synchronize()`` on CUDA; a call's time is the **median** of the timed calls, and
images/s is always ``batch / median``. Our choice: the median, which one slow call (a garbage
collection, a clock change) does not move. Inputs are random images of the model's size; a
training iteration is the full step the trainer runs (:func:`bench.train.optimizer_step`:
forward, the model's loss, backward, Adam). FLOPs come from :mod:`bench.flops`.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU (Linux) it is the rise of
the process's peak resident set size during the measurement (the peak is reset first through
``/proc/self/clear_refs``), elsewhere the process's lifetime peak (an upper bound). It is taken
over the training measurement, or over inference when training is not measured.
``bf16`` autocasts on any device (on the CPU it shows what bfloat16 kernels would give; the
trainer autocasts on CUDA only).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from bench.cells import TrainSpec
from bench.flops import flops_per_image
from bench.models.registry import count_parameters
from bench.runtime import device_name
from bench.train import autocast, build_model, optimizer_step

__all__ = ["matmul_rate", "measure", "timed"]


def timed(fn: Callable[[], Any], device: torch.device | str, warmup: int, repeats: int) -> float:
    """Median seconds of one call of ``fn``: ``warmup`` untimed calls, then ``repeats`` timed
    ones, each synchronised with the device before and after on CUDA."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(device: torch.device | str, dtype: torch.dtype = torch.bfloat16, n: int = 8192,
                warmup: int = 10, repeats: int = 30) -> float:
    """Measured FLOP/s of an ``n x n`` by ``n x n`` matrix product (2 n^3 FLOPs) in ``dtype``,
    timed by :func:`timed` (median call after ``warmup``). This is the practical
    peak the achieved model rates are compared with, not the datasheet's."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    return 2.0 * n**3 / timed(lambda: torch.mm(a, b, out=out), device, warmup, repeats)


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def _proc_status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_peak(device: torch.device) -> float | None:
    """Reset the peak-memory counter. On the CPU (Linux: ``clear_refs`` 5 resets the peak RSS)
    return the current RSS in MB, so that the peak read afterwards is the measurement's own, not
    the process's lifetime peak (which an earlier, larger model would set for every later one)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return None
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _read_peak(device: torch.device, rss_before: float | None) -> tuple[float, str]:
    """Peak memory in MB since :func:`_reset_peak`, and what kind of peak it is."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    peak = _proc_status_mb("VmHWM") if rss_before is not None else None
    if peak is None:
        return _peak_rss_mb(), "process_peak_rss"
    return peak - rss_before, "peak_rss_increase"


def measure(
    model_name: str,
    input_size: int,
    batch: int,
    width: float,
    device: torch.device | str,
    warmup: int = 3,
    repeats: int = 10,
    bf16: bool = False,
    compile: bool = False,
    *,
    backend: str = "inductor",
    channels_last: bool = False,
    fused: bool = False,
    train: bool = True,
    infer: bool = True,
    latency: bool = True,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Speed of one model; keys match the ``kind == "model"`` rows of ``throughput.csv``.

    ``train``, ``infer`` and ``latency`` (batch 1 inference) select what is timed; a rate not
    timed is None. ``compile`` runs the model through ``torch.compile(backend=backend,
    dynamic=False)`` after ``torch.compiler.reset()`` and adds ``graph_breaks``.
    ``channels_last`` puts the model and the inputs in that memory format and ``fused`` uses
    torch's fused Adam, as the trainer does when its config asks (``TrainConfig``).
    ``model``: the module to time (moved to ``device``); None builds ``model_name``
    with a fixed seeded initialisation (:func:`bench.train.build_model`).
    """
    device = torch.device(device)
    if model is None:
        model = build_model(TrainSpec(model_name, n=0, seed=0, canvas=input_size, width=width))
    model = model.to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, input_size, input_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x1 = x[:1].clone()
    if compile:
        torch.compiler.reset()  # each call compiles afresh (and stays under the recompile limit)
        # Private, but nothing public gives the number of graph breaks.
        from torch._dynamo.utils import counters

        counters.clear()
    step_model = torch.compile(model, backend=backend, dynamic=False) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=fused or None)

    def train_step() -> None:
        optimizer_step(model, step_model, optimizer, x, y, bf16)

    @torch.no_grad()
    def forward(inp: torch.Tensor) -> None:
        with autocast(device, bf16):
            step_model(inp)

    t_train = t_infer = t_b1 = None
    rss_before = _reset_peak(device)
    if train:
        model.train()
        t_train = timed(train_step, device, warmup, repeats)
        peak, peak_kind = _read_peak(device, rss_before)
    model.eval()
    if infer:
        t_infer = timed(lambda: forward(x), device, warmup, repeats)
    if not train:
        peak, peak_kind = _read_peak(device, rss_before)
    if latency:
        t_b1 = timed(lambda: forward(x1), device, warmup, repeats)
    flops = flops_per_image(model_name, input_size, width)
    flops_train = flops_per_image(model_name, input_size, width, train=True)
    train_ips = None if t_train is None else batch / t_train
    row = {
        "kind": "model",
        "model": model_name,
        "input_size": input_size,
        "batch": batch,
        "width": width,
        "device": str(device),
        "device_name": device_name(device),
        "params": count_parameters(model),
        "flops_per_image": flops,
        "flops_train_per_image": flops_train,
        "train_images_per_s": train_ips,
        "infer_images_per_s": None if t_infer is None else batch / t_infer,
        "latency_b1_ms": None if t_b1 is None else t_b1 * 1e3,
        "peak_mem_mb": peak,
        "peak_mem_kind": peak_kind,
        "tflops_train": None if train_ips is None else flops_train * train_ips / 1e12,
        "bf16": bf16,
        "compile": compile,
    }
    if compile:
        row["graph_breaks"] = int(sum(counters["graph_break"].values()))
    return row
