"""Training one cell (model, training-set size n, seed): fast, deterministic and resumable.

Optimisation follows the CapsNet authors' released code (tensorflow/models ``research/capsules``):
Adam, learning rate 1e-3 decayed by 0.96 every 2,000 steps, batch 128, all from
:class:`~bench.config.TrainConfig`. The released code calls ``tf.train.exponential_decay``
without ``staircase``, so the decay is SMOOTH, lr = 1e-3 * 0.96 ** (step / 2000), floored at
1e-6 as there; :func:`learning_rate` is that function of the step alone, so resuming needs no
scheduler state.

Data (Section 5 of Sabour et al. 2017 trains on MNIST digits placed with random shifts on a
padded canvas; the affNIST experiment on a 40x40 canvas): the class-balanced subset of ``n``
training digits lives on the device as uint8; every batch is drawn uniformly with replacement by
a device-side generator, and each digit gets a random integer offset in
[-train_shift, train_shift] per axis (:func:`bench.data.canvas.place`). No per-sample Python and
no host synchronisation per step: the loss is accumulated on the device and read every
``_DISPLAY_EVERY`` steps for the progress bar.

Files in the cell folder, all written atomically (:mod:`bench.io`) and read with
``weights_only=True``:

- ``state.pt``: everything needed to resume (model, optimizer, RNG states as tensors, step, best
  so far), saved after each validation, i.e. every ``eval_every`` steps;
- ``checkpoint.pt``: the weights with the best validation accuracy (the last weights when
  ``val_size`` is 0), with the spec;
- ``train.json``: the summary; its existence marks the cell finished, and a rerun returns it.
  ``state.pt`` is deleted then (it is only needed to resume).

A run killed mid-cell leaves no ``train.json``; rerunning resumes from ``state.pt`` and, with
deterministic kernels, ends with bitwise the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from bench.cell.convergence import CONVERGENCE_RULE, convergence, discordant
from bench.cell.files import CellFiles
from bench.cell.plan import TrainSpec
from bench.config import TrainConfig
from bench.data.canvas import place, random_offsets, to_float
from bench.data.mnist import MNIST_COUNTS, load_split
from bench.errors import BenchError
from bench.io import derive_seed, load_torch, read_json, sha256_tensor, stable_hash
from bench.models.registry import count_parameters, create_model
from bench.runtime import device_name, keep_freed_memory, set_deterministic
from bench.stats import sign_test_p

__all__ = [
    "autocast",
    "build_model",
    "learning_rate",
    "optimizer_step",
    "step_budget",
    "train_cell",
    "training_subset",
    "uses_bf16",
    "weights_hash",
]

MIN_LR = 1e-6  # the released code's floor, tf.maximum(learning_rate, 1e-6)
# Inference batch of validation and evaluation. Our choice, measured on the 2-core CPU: width-1/8
# models at 40x40 scored 1.5-2.2x more images/s at 128 (channels last) than at 500.
EVAL_BATCH = 128
_DISPLAY_EVERY = 50  # steps between progress-bar loss readings (one host sync each)


def step_budget(cfg: TrainConfig, n: int) -> int:
    """Optimisation steps for a training set of ``n`` images: ``cfg.steps`` whatever ``n`` when
    it is set (so training length is not confounded with training-set size), else ``epochs``
    passes over the set, at least ``min_steps`` and at most ``max_steps``."""
    if cfg.steps > 0:
        return cfg.steps
    steps = max(cfg.min_steps, -(-int(cfg.epochs * n) // cfg.batch_size))
    return min(steps, cfg.max_steps)


def learning_rate(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """The learning rate at ``step`` of a budget of ``total`` steps, floored at ``MIN_LR``.

    ``exponential``: the released code's smooth decay, lr * decay ** (step / decay_steps).
    ``cosine``: lr * (1 + cos(pi * step / total)) / 2 (Loshchilov & Hutter, ICLR 2017, without
    restarts), which needs ``total``.
    """
    if cfg.lr_schedule == "cosine":
        if total is None:
            raise BenchError("the cosine learning-rate schedule needs the step budget")
        return max(cfg.lr * (1 + math.cos(math.pi * min(step, total) / total)) / 2, MIN_LR)
    return max(cfg.lr * cfg.lr_decay ** (step / cfg.decay_steps), MIN_LR)


def training_subset(
    labels: torch.Tensor, n: int, seed: int, val_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced training indices, nested across ``n``, and validation indices.

    A permutation of the training split seeded by ``("subset", seed)``: its first ``val_size``
    images are the validation set (the same for every ``n`` of a seed, never the test set); the
    rest is the pool. Pool images are ranked within their class in permutation order and taken
    round-robin over classes (rank 0 of classes 0..9, then rank 1, ...), so the first ``n`` are as
    class-balanced as the pool allows and the subset for n is a prefix of the subset for any
    larger n.

    Returns ``(train_idx (n,), val_idx (val_size,))`` int64 indices into ``labels``.
    """
    total = labels.shape[0]
    if n < 1 or val_size < 0 or n + val_size > total:
        raise BenchError(
            f"training subset: need 1 <= n and n + val_size <= {total}, got n={n}, "
            f"val_size={val_size}"
        )
    g = torch.Generator().manual_seed(derive_seed("subset", seed))
    perm = torch.randperm(total, generator=g)
    val_idx, pool = perm[:val_size], perm[val_size:]
    pool_labels = labels[pool].long()
    # rank of each pool image within its class, in permutation order
    order = torch.argsort(pool_labels, stable=True)
    sorted_labels = pool_labels[order]
    counts = torch.bincount(sorted_labels, minlength=int(labels.max()) + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel()) - starts[sorted_labels]
    key = rank * counts.numel() + pool_labels
    chosen = torch.argsort(key, stable=True)[:n]
    return pool[chosen], val_idx


def weights_hash(model_or_state: nn.Module | dict[str, torch.Tensor]) -> str:
    """A short hash of all weights (bitwise): equal hashes mean identical models."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return stable_hash(*[(k, sha256_tensor(v)) for k, v in sorted(state.items())])


def _seed(kind: str, spec: TrainSpec) -> int:
    return derive_seed(kind, spec.model, spec.n, spec.seed, spec.setup)


def build_model(spec: TrainSpec) -> nn.Module:
    """The model with its seeded initialisation, built on the CPU (same weights on any device)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed("init", spec))
        model = create_model(spec.model, input_size=spec.canvas, width=spec.width)
    if spec.recon_weight is not None and getattr(model, "decoder", None) is not None:
        model.recon_weight = spec.recon_weight
    return model


def uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether training autocasts to bf16: when asked, and on CUDA only (our choice: CPU bf16
    autocast measured slower than fp32 on the development CPU)."""
    return cfg.bf16 and torch.device(device).type == "cuda"


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on ``device`` when asked, else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def optimizer_step(model: nn.Module, forward: Callable, optimizer: torch.optim.Optimizer,
                   x: torch.Tensor, y: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """One training step: forward and the model's own loss (under bf16 autocast if asked),
    backward, optimizer step. The trainer, ``bench throughput`` and ``gpu-check`` all call this,
    so what is timed is exactly what trains. ``forward`` is ``model`` or its compiled form."""
    with autocast(x.device, bf16):
        out = forward(x, y)
        loss = model.loss(out, x, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def _correct(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, amp) -> torch.Tensor:
    """Per-image correctness ``(N,)`` bool on the CPU for uint8 canvases ``(N, C, C)``; one host
    transfer at the end."""
    was_training = model.training
    model.eval()
    parts = []
    for i in range(0, labels.shape[0], EVAL_BATCH):
        with amp():
            out = model(to_float(images[i : i + EVAL_BATCH]))
        parts.append(out.logits.argmax(dim=1) == labels[i : i + EVAL_BATCH])
    model.train(was_training)
    return torch.cat(parts).cpu()


def _rng_state(gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"batches": gen.get_state(), "cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], gen: torch.Generator, device) -> None:
    gen.set_state(state["batches"])
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def train_cell(
    spec: TrainSpec,
    cell: CellFiles | str | Path,
    device: torch.device | str,
    data_dir: str | Path | None = None,
    progress: bool = True,
    download: bool = False,
    on_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one cell into its folder and return its summary (also its ``train.json``).

    A finished cell (``train.json`` present) is returned without training; an interrupted one
    resumes from ``state.pt``. ``on_step(step)`` is called after every optimisation step (tests use
    it to interrupt a run).
    """
    files = cell if isinstance(cell, CellFiles) else CellFiles(cell)
    if files.train_summary.exists():
        return read_json(files.train_summary)
    device = torch.device(device)
    set_deterministic(spec.train.deterministic)
    keep_freed_memory()
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        summary = _train(spec, files, device, data_dir, progress, download, on_step)
    files.finish_training(summary)
    return summary


@dataclass
class _Progress:
    """Where training stands; saved in ``state.pt`` after every validation."""

    step: int = 0
    best_acc: float = -1.0
    best_step: int = 0
    seconds: float = 0.0
    history: list[list[float]] = field(default_factory=list)
    # validation correctness at the last validation at or before 3/4 of the budget (convergence)
    reference: torch.Tensor | None = None


def _resume(files: CellFiles, spec: TrainSpec, model: nn.Module, optimizer, gen, device
            ) -> _Progress | None:
    """Restore model, optimizer and RNG states from ``state.pt``; None when there is none."""
    if not files.state.exists():
        return None
    state = load_torch(files.state)
    if state["spec"] != spec.to_dict():
        raise BenchError(f"{files.state}: saved for a different spec; delete {files.folder} "
                         "to retrain this cell")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"], gen, device)
    return _Progress(state["step"], state["best_val_accuracy"], state["best_step"],
                     state["train_seconds"], [list(h) for h in state["history"]],
                     state.get("reference_correct"))


def _save_state(files: CellFiles, spec: TrainSpec, model: nn.Module, optimizer, gen, device,
                p: _Progress) -> None:
    files.save_state({
        "model": _cpu_state(model), "optimizer": optimizer.state_dict(), "step": p.step,
        "rng": _rng_state(gen, device), "best_val_accuracy": p.best_acc,
        "best_step": p.best_step, "train_seconds": p.seconds, "history": p.history,
        "reference_correct": p.reference, "spec": spec.to_dict(),
    })


def _train(spec: TrainSpec, files: CellFiles, device: torch.device, data_dir, progress: bool,
           download: bool, on_step) -> dict[str, Any]:
    cfg = spec.train
    t_setup = time.perf_counter()
    images, labels = load_split("train", spec.dataset, data_dir, download)
    if images.shape[0] != MNIST_COUNTS["train"]:
        raise BenchError(f"{spec.dataset}: expected {MNIST_COUNTS['train']} training images, "
                         f"found {images.shape[0]}")
    train_idx, val_idx = training_subset(labels, spec.n, spec.seed, cfg.val_size)
    x_train = images[train_idx].to(device)  # uint8 (n, 28, 28), resident
    y_train = labels[train_idx].to(device)
    x_val = place(images[val_idx].to(device), spec.canvas)  # centred, like the clean test set
    y_val = labels[val_idx].to(device)

    model = build_model(spec).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=cfg.fused_optimizer or None)
    gen = torch.Generator(device=device).manual_seed(_seed("batches", spec))
    torch.manual_seed(_seed("dropout", spec))

    bf16 = uses_bf16(cfg, device)

    def amp():
        return autocast(device, bf16)

    forward = torch.compile(model) if cfg.compile else model
    total = step_budget(cfg, spec.n)
    p = _resume(files, spec, model, optimizer, gen, device)
    resumed_from = None if p is None else p.step
    p = p or _Progress()

    def save_checkpoint(acc: float | None) -> None:
        files.save_checkpoint({"model": _cpu_state(model), "spec": spec.to_dict(),
                               "step": p.step, "val_accuracy": acc})

    batch, shift = cfg.batch_size, spec.train_shift
    loss_sum = torch.zeros((), device=device)
    window, last_loss, start_step = 0, float("nan"), p.step
    bar = _progress_bar(spec, total, p.step, progress)
    run_seconds, tick = 0.0, time.perf_counter()
    last_correct: torch.Tensor | None = None
    # Where this session's time went (seconds); a resumed cell counts only the resumed part.
    timing = {"setup_s": tick - t_setup, "steps_s": 0.0, "validation_s": 0.0, "checkpoint_s": 0.0}
    postfix: dict[str, str] = {}
    model.train()
    try:
        while p.step < total:
            idx = torch.randint(0, x_train.shape[0], (batch,), generator=gen, device=device)
            offsets = random_offsets(batch, shift, gen, device)
            xb = to_float(place(x_train[idx], spec.canvas, offsets, max_shift=shift))
            yb = y_train[idx]
            if cfg.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(p.step, cfg, total)
            loss = optimizer_step(model, forward, optimizer, xb, yb, bf16)
            loss_sum += loss.detach()
            window += 1
            p.step += 1
            bar.update(1)
            if on_step is not None:
                on_step(p.step)
            boundary = p.step % cfg.eval_every == 0 or p.step == total
            if p.step % _DISPLAY_EVERY == 0 or boundary:
                last_loss = (loss_sum / window).item()
                postfix["loss"] = f"{last_loss:.4f}"
                bar.set_postfix(postfix, refresh=False)
            if not boundary:
                continue
            now = time.perf_counter()
            run_seconds += now - tick
            p.seconds += now - tick
            acc, timing_val = None, 0.0
            if cfg.val_size > 0:
                correct = _correct(model, x_val, y_val, amp)
                acc = correct.sum().item() / max(1, correct.numel())
                if p.step <= 0.75 * total:
                    p.reference = correct
                last_correct = correct
                timing_val = time.perf_counter() - now
                timing["validation_s"] += timing_val
                if acc > p.best_acc:
                    p.best_acc, p.best_step = acc, p.step
                    if cfg.select == "best_val":
                        save_checkpoint(acc)
                postfix.update(val=f"{acc:.4f}", best=f"{p.best_acc:.4f}")
                bar.set_postfix(postfix)
            p.history.append([p.step, last_loss, acc if acc is not None else float("nan")])
            loss_sum, window = torch.zeros((), device=device), 0
            _save_state(files, spec, model, optimizer, gen, device, p)
            tick = time.perf_counter()
            timing["checkpoint_s"] += tick - now - timing_val
    finally:
        bar.close()
    if cfg.val_size == 0:
        p.best_step = p.step
    if cfg.select == "last" or not files.checkpoint.exists():
        final = p.history[-1][2] if p.history and not math.isnan(p.history[-1][2]) else None
        save_checkpoint(final)
    ckpt = load_torch(files.checkpoint)
    done_steps = p.step - start_step
    converged, improvement, noise = convergence(p.history, total, cfg.converged_gain,
                                                p.reference, last_correct)
    turned = (discordant(p.reference, last_correct)
              if p.reference is not None and last_correct is not None else (None, None))
    return {
        "spec": spec.to_dict(),
        "steps": p.step,
        "selection": cfg.select,
        "checkpoint_step": ckpt["step"],
        "best_step": p.best_step,
        "best_val_accuracy": p.best_acc if cfg.val_size > 0 else None,
        "final_val_accuracy": p.history[-1][2] if p.history and cfg.val_size > 0 else None,
        "converged": converged,
        "val_improvement": improvement,
        "val_improvement_se": noise,
        "val_turned_right": turned[0],
        "val_turned_wrong": turned[1],
        "val_improvement_p": None if turned[0] is None else sign_test_p(*turned),
        "converged_rule": CONVERGENCE_RULE.format(gain=cfg.converged_gain),
        # Images whose labels decided the kept weights: the training set, plus the validation
        # set when it selected the checkpoint.
        "labelled_images": int(train_idx.numel()) + (int(val_idx.numel())
                                                      if cfg.select == "best_val" else 0),
        "train_seconds": p.seconds,
        "images_per_s": done_steps * batch / run_seconds if run_seconds > 0 else None,
        "final_loss": p.history[-1][1] if p.history else last_loss,
        "history": [{"step": s, "loss": lo, "val_accuracy": None if math.isnan(a) else a}
                    for s, lo, a in p.history],
        "learning_rate_schedule": ("cosine over the budget" if cfg.lr_schedule == "cosine" else
                                   "smooth exponential (released code, no staircase)"),
        "device": str(device),
        "device_name": device_name(device),
        "params": count_parameters(model),
        "train_size": int(train_idx.numel()),
        "val_size": int(val_idx.numel()),
        "subset_sha256": sha256_tensor(train_idx),
        "weights_hash": weights_hash(ckpt["model"]),
        "resumed_from": resumed_from,
        "timing": {**timing, "steps_s": run_seconds},
    }


def _progress_bar(spec: TrainSpec, total: int, initial: int, enabled: bool):
    """tqdm counts steps and shows images and images/s itself (``unit_scale`` = batch size)."""

    return tqdm(total=total, initial=initial, disable=not enabled, leave=False, unit="img",
                unit_scale=spec.train.batch_size, dynamic_ncols=True,
                desc=f"{spec.setup}/{spec.model}/{spec.cell_name}")
