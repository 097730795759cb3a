"""Training and inference speed of one model: images/s, latency, memory and achieved TFLOP/s.

Timing follows the usual recipe (nanoGPT's ``bench``): ``warmup`` untimed iterations, then
``repeats`` timed ones, each bracketed by ``torch.cuda.synchronize()`` on CUDA, reporting the
median. Inputs are random images of the model's size; a training iteration is the full step the
trainer runs (forward, the model's loss, backward, Adam). FLOPs come from :mod:`bench.flops`.
Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU (Linux) it is the rise of
the process's peak resident set size during the training measurement (the peak is reset first
through ``/proc/self/clear_refs``), elsewhere the process's lifetime peak (an upper bound).
``bf16`` autocasts on any device (on the CPU it
shows what bfloat16 kernels would give; the trainer autocasts on CUDA only).
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch

from bench.flops import flops_per_image
from bench.models.registry import count_parameters, create_model
from bench.runtime import device_name
from bench.train import autocast, optimizer_step

__all__ = ["measure"]


def _timed(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def _reset_cpu_peak() -> float | None:
    """Linux: reset the process's peak RSS (``clear_refs`` 5) and return the current RSS in MB,
    so that the peak read after a measurement is that measurement's own, not the process's
    lifetime peak (which an earlier, larger model would set for every later one)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    return _proc_status_mb("VmRSS")


def _cpu_peak_mb(rss_before: float | None) -> tuple[float, str]:
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
) -> dict:
    """Speed of one model; keys match the ``kind == "model"`` rows of ``throughput.csv``."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(0)
    model = create_model(model_name, input_size=input_size, width=width).to(device)
    params = count_parameters(model)
    step_model = torch.compile(model) if compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, input_size, input_size, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    x1 = x[:1].clone()

    def train_step() -> None:
        optimizer_step(model, step_model, optimizer, x, y, bf16)

    @torch.no_grad()
    def infer(inp: torch.Tensor) -> None:
        with autocast(device, bf16):
            step_model(inp)

    rss_before = None
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    else:
        rss_before = _reset_cpu_peak()
    model.train()
    t_train = _timed(train_step, device, warmup, repeats)
    if cuda:
        peak, peak_kind = torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    else:
        peak, peak_kind = _cpu_peak_mb(rss_before)
    model.eval()
    t_infer = _timed(lambda: infer(x), device, warmup, repeats)
    t_b1 = _timed(lambda: infer(x1), device, warmup, repeats)
    flops = flops_per_image(model_name, input_size, width)
    flops_train = flops_per_image(model_name, input_size, width, train=True)
    train_ips = batch / t_train
    return {
        "kind": "model",
        "model": model_name,
        "input_size": input_size,
        "batch": batch,
        "width": width,
        "device": str(device),
        "device_name": device_name(device),
        "params": params,
        "flops_per_image": flops,
        "flops_train_per_image": flops_train,
        "train_images_per_s": train_ips,
        "infer_images_per_s": batch / t_infer,
        "latency_b1_ms": t_b1 * 1e3,
        "peak_mem_mb": peak,
        "peak_mem_kind": peak_kind,
        "tflops_train": flops_train * train_ips / 1e12,
        "bf16": bf16,
        "compile": compile,
    }
