"""Training and inference speed of one model: images/s, latency, memory and achieved TFLOP/s.

:func:`measure` is the project's one measurement of a model's speed: ``bench throughput``, the
runner's throughput stage and ``gpu-check`` all call it. :func:`timed` is the one timer, also of
:func:`matmul_rate`, the device's practical peak that achieved TFLOP/s are compared with.

Timing: ``warmup`` untimed calls, then ``repeats`` timed calls, each bracketed by
``torch.cuda.synchronize()`` on CUDA; a call's time is the **median** of the timed calls, and
images/s is always ``batch / median``. Our choice: the median, which one slow call (a garbage
collection, a clock change) does not move. Inputs are random images of the model's size; a
training iteration is the full step the trainer runs (:func:`bench.cell.train.optimizer_step`:
forward, the model's loss, backward, Adam). FLOPs come from :mod:`bench.flops`.

Peak memory (MB = 2**20 bytes) is the most tensor memory held at once, in one training step
(``peak_mem_mb``) and in one inference batch (``peak_infer_mem_mb``): what the model, its inputs
and, in training, its gradients and Adam state hold, plus the activations and temporaries of the
step at its worst moment. On CUDA it is ``torch.cuda.max_memory_allocated`` over the timed calls
(reset before them; gradients and Adam state are freed before inference). On the CPU it is counted
at torch's CPU allocator (:func:`allocator_peak_mb`: ``torch.autograd.profiler`` with
``profile_memory=True`` records every allocation and free): the storages held before the step
(parameters, buffers, inputs, Adam state) plus the highest rise of the allocated bytes over two
steps that start without gradients (the second holds the first's gradients, as every step of a
run does). Not included, on either device: memory that libraries allocate on their own (oneDNN
scratchpads, BLAS buffers, CUDA workspaces), the allocator's caching or fragmentation, Python.
It is not the process's resident set: a peak-RSS rise reads 0 whenever the allocator reuses memory
the process already took, so it says nothing about the model. Without Kineto (no memory events)
the CPU falls back to the process's lifetime peak RSS (``process_peak_rss``, an upper bound).
``peak_mem_mb`` is the training peak, or the inference peak when training is not measured.
``bf16`` autocasts on any device (on the CPU it shows what bfloat16 kernels would give; the
trainer autocasts on CUDA only).
"""

from __future__ import annotations

import gc
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.autograd.profiler_util import MEMORY_EVENT_NAME

from bench.cell.plan import TrainSpec
from bench.cell.train import autocast, build_model, optimizer_step
from bench.flops import flops_per_image
from bench.models.registry import count_parameters
from bench.runtime import device_name

__all__ = ["allocator_peak_mb", "matmul_rate", "measure", "timed"]


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


_CPU_MEMORY = (DeviceType.CPU, DeviceType.MKLDNN, DeviceType.IDEEP)  # as torch's own profiler sums


def allocator_peak_mb(fn: Callable[[], Any], calls: int = 1) -> float | None:
    """Highest rise, in MB, of the bytes allocated through torch's CPU allocator (oneDNN's
    tensors included) above what it held when ``calls`` calls of ``fn`` began; None without
    Kineto. Allocations and frees come from ``torch.autograd.profiler`` with
    ``profile_memory=True``, summed in time order. A free of a block allocated before the window
    is not reported, so ``fn`` must not free what existed before (set gradients to None first).
    None too when another profiler is running (only one can)."""
    if not torch.autograd.kineto_available() or torch.autograd._profiler_enabled():
        return None
    gc.collect()  # garbage freed inside the window would be such an unreported free
    # Kineto reads its log level once, when a process first profiles; unless the user chose one,
    # silence its start/stop lines (and, on a CUDA build without a GPU, a device-count error) for
    # good in this process, without leaving the setting to child processes.
    quiet = "KINETO_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["KINETO_LOG_LEVEL"] = "6"
    try:
        with torch.autograd.profiler.profile(profile_memory=True) as prof:
            for _ in range(calls):
                fn()
    finally:
        if quiet:
            del os.environ["KINETO_LOG_LEVEL"]
    events = sorted(((e.start_ns(), e.nbytes()) for e in prof.kineto_results.events()
                     if e.name() == MEMORY_EVENT_NAME and e.device_type() in _CPU_MEMORY),
                    key=lambda event: event[0])  # stable: same-time events keep their order
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def _held_mb(tensors: Iterable[Any]) -> float:
    """MB of the distinct CPU storages of ``tensors`` (non-tensors are skipped)."""
    storages = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values()) / 2**20


def _cpu_peak_mb(fn: Callable[[], Any], held: Iterable[Any], calls: int) -> tuple[float, str]:
    rise = allocator_peak_mb(fn, calls)
    if rise is None:
        return _peak_rss_mb(), "process_peak_rss"
    return _held_mb(held) + rise, "cpu_max_allocated"


def _cuda_peak_mb(device: torch.device) -> tuple[float, str]:
    return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"


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
    memory: bool = True,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Speed of one model; keys match the ``kind == "model"`` rows of ``throughput.csv``.

    ``train``, ``infer`` and ``latency`` (batch 1 inference) select what is timed; a rate not
    timed is None. ``memory`` measures the peaks (extra profiled calls on the CPU); without it
    they are None. ``compile`` runs the model through ``torch.compile(backend=backend,
    dynamic=False)`` after ``torch.compiler.reset()`` and adds ``graph_breaks``.
    ``channels_last`` puts the model and the inputs in that memory format and ``fused`` uses
    torch's fused Adam, as the trainer does when its config asks (``TrainConfig``).
    ``model``: the module to time (moved to ``device``); None builds ``model_name``
    with a fixed seeded initialisation (:func:`bench.cell.train.build_model`).
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

    cuda = device.type == "cuda"
    t_train = t_infer = t_b1 = peak = peak_infer = None
    peak_kind = None
    if train:
        model.train()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t_train = timed(train_step, device, warmup, repeats)
        if memory and cuda:
            peak, peak_kind = _cuda_peak_mb(device)
        elif memory:
            model.zero_grad(set_to_none=True)  # the window below then sees every free it makes
            state = [v for st in optimizer.state.values() for v in st.values()]
            peak, peak_kind = _cpu_peak_mb(
                train_step, [*model.parameters(), *model.buffers(), *state, x, y], calls=2)
        model.zero_grad(set_to_none=True)  # inference holds neither gradients nor Adam state
        optimizer.state.clear()
    model.eval()
    if infer:
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        t_infer = timed(lambda: forward(x), device, warmup, repeats)
        infer_kind = None
        if memory and cuda:
            peak_infer, infer_kind = _cuda_peak_mb(device)
        elif memory:
            peak_infer, infer_kind = _cpu_peak_mb(
                lambda: forward(x), [*model.parameters(), *model.buffers(), x], calls=1)
        if not train:
            peak, peak_kind = peak_infer, infer_kind
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
        "peak_infer_mem_mb": peak_infer,
        "tflops_train": None if train_ips is None else flops_train * train_ips / 1e12,
        "bf16": bf16,
        "compile": compile,
    }
    if compile:
        row["graph_breaks"] = int(sum(counters["graph_break"].values()))
    return row
