"""The sweep: which cells a profile has, where each one lives, and how one cell is run.

A *setup* is a training and evaluation configuration: ``affnist`` (the paper's affNIST
experiment, Sabour et al. 2017 Section 5.2: train on MNIST placed at random shifts on a 40x40
canvas, test on affine-transformed digits) and, when the profile has a ``[mnist_table]``,
``mnist28`` (the paper's Table 1: 28x28, shifts up to 2 px, clean MNIST test set).

A *cell* is (setup, model, n, seed). Its folder name carries a hash of everything that decides
its training (the spec and the source of the code that trains it), so a changed profile or a
changed model never reuses a stale result; a finished cell is skipped on rerun (benchopt-style).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import DataConfig, Profile
from bench.io import stable_hash

PACKAGE_DIR = Path(__file__).resolve().parent
# Source files whose code decides a trained model's weights.
TRAIN_CODE = ("train.py", "models", "data/canvas.py", "data/mnist.py")


@dataclass(frozen=True)
class Setup:
    name: str
    canvas: int
    train_shift: int
    val_size: int
    models: tuple[str, ...]
    sizes: tuple[int, ...]
    seeds: tuple[int, ...]
    test_sets: tuple[str, ...] | None  # None: every set of the profile


@dataclass(frozen=True, order=True)
class Cell:
    setup: str
    model: str
    n: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.setup}/{self.model}/n{self.n}-s{self.seed}"


def setups(profile: Profile) -> list[Setup]:
    out = [
        Setup(
            "affnist",
            profile.data.canvas,
            profile.data.train_shift,
            profile.train.val_size,
            profile.models,
            profile.sizes,
            profile.seeds,
            None,
        )
    ]
    mt = profile.mnist_table
    if mt is not None:
        out.append(
            Setup("mnist28", mt.canvas, mt.train_shift, mt.val_size, mt.models, mt.sizes, mt.seeds,
                  ("clean",))
        )
    return out


def setup_by_name(profile: Profile, name: str) -> Setup:
    return {s.name: s for s in setups(profile)}[name]


def cells(profile: Profile) -> list[Cell]:
    return [
        Cell(s.name, m, n, seed)
        for s in setups(profile)
        for m in s.models
        for n in s.sizes
        for seed in s.seeds
    ]


def data_config(profile: Profile, setup: Setup) -> DataConfig:
    """The test-set configuration of a setup (the profile's, at the setup's canvas)."""
    return dataclasses.replace(profile.data, canvas=setup.canvas)


def train_spec(profile: Profile, cell: Cell):
    """The trainer's full specification of a cell."""
    from bench.train import spec_for

    return spec_for(profile, cell.model, cell.n, cell.seed, cell.setup)


@functools.lru_cache(maxsize=1)
def code_hash(parts: tuple[str, ...] = TRAIN_CODE) -> str:
    """Hash of the source files that decide training results (part of every cell's key)."""
    files: list[Path] = []
    for part in parts:
        p = PACKAGE_DIR / part
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return stable_hash([(str(f.relative_to(PACKAGE_DIR)), f.read_text()) for f in files])


def cell_dir(run_dir: Path, profile: Profile, cell: Cell, device_type: str) -> Path:
    """``<run>/cells/<setup>/<model>/n<n>-s<seed>-<hash>``: the hash covers spec, code and device."""
    spec = dataclasses.asdict(train_spec(profile, cell))
    key = stable_hash(spec, code_hash(), device_type)[:10]
    return Path(run_dir) / "cells" / cell.setup / cell.model / f"n{cell.n}-s{cell.seed}-{key}"


@dataclass(frozen=True)
class CellTask:
    """Everything a worker (a process, a Slurm job) needs to run one cell; picklable."""

    profile: Profile
    cell: Cell
    run_dir: str
    device: str
    stages: tuple[str, ...] = ("train", "eval")
    data_dir: str | None = None
    download: bool = False
    progress: bool = True
    folder: str | None = None  # the cell folder, fixed by the submitting runner (see run_cell)


def run_cell(task: CellTask) -> dict[str, Any]:
    """Train and/or evaluate one cell; each step is skipped when its result already exists."""
    import torch

    from bench import evaluate
    from bench.runtime import set_deterministic
    from bench.train import train_cell

    profile, cell = task.profile, task.cell
    device = torch.device(task.device)
    set_deterministic(profile.train.deterministic)
    # The runner fixes the folder: a job must not recompute the code hash, which would move the
    # cell elsewhere if the source changed while the sweep was queued.
    folder = Path(task.folder) if task.folder else cell_dir(Path(task.run_dir), profile, cell,
                                                            device.type)
    out: dict[str, Any] = {"cell": cell.label, "dir": str(folder)}
    if "train" in task.stages:
        out["train"] = train_cell(
            train_spec(profile, cell), folder, device, data_dir=task.data_dir,
            progress=task.progress,
        )
    if "eval" in task.stages:
        setup = setup_by_name(profile, cell.setup)
        out["eval"] = evaluate.evaluate_cell(
            folder, cell, data_config(profile, setup), setup.test_sets, device,
            data_dir=task.data_dir, download=task.download,
        )
    return out
