"""The plan: which cells a profile has, what each one trains, and where its results live.

Pure: nothing here trains, evaluates or writes a file. The runner (:mod:`bench.runner`) walks the
plan; the stages (:mod:`bench.cell.train`, :mod:`bench.cell.evaluate`) each do one cell.

A *setup* is a training and evaluation configuration: ``affnist`` (the paper's affNIST
experiment, Sabour et al. 2017 Section 5.2: train on MNIST placed at random shifts on a 40x40
canvas, test on affine-transformed digits) and, when the profile has a ``[mnist_table]``,
``mnist28`` (the paper's Table 1: 28x28, shifts up to 2 px, clean MNIST test set), and, when
the profile has a ``[budget_check]``, ``affnist-budget`` (the budget-stability check: some
``affnist`` cells trained ``factor`` x the steps). The setup name is part of every seed
(:func:`bench.io.derive_seed`), so it is kept as it is.

A *cell* is (setup, model, n, seed). Its folder name carries a hash of everything that decides
its weights (the :class:`TrainSpec`, the source of the code that trains it, the device type), so
a changed profile or a changed model never reuses a stale result, and a finished cell is skipped
on rerun (benchopt's cache design).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import DataConfig, Profile, TrainConfig
from bench.data.testsets import AFFNIST_STYLE, CLEAN, OVERLAP
from bench.errors import BenchError
from bench.io import stable_hash
from bench.models.registry import model_info
from bench.runtime import REPO_ROOT

__all__ = [
    "AFFNIST_SETUP",
    "BUDGET_SETUP",
    "BUDGET_TEST_SETS",
    "MNIST28_SETUP",
    "RESULTS_DIR",
    "TRAIN_CODE",
    "Cell",
    "PlannedCell",
    "Setup",
    "TrainSpec",
    "budget_steps",
    "cell_dir",
    "cells",
    "code_hash",
    "model_code_hash",
    "data_config",
    "default_run_dir",
    "planned_cells",
    "setup_by_name",
    "setups",
    "spec_for",
]

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # bench/
# The setups' names. AFFNIST_SETUP is the 40x40 affNIST experiment (distinct from the test set
# "affnist", the affNIST-style set of bench.data.testsets); the names enter every seed.
AFFNIST_SETUP = "affnist"
MNIST28_SETUP = "mnist28"
# The budget-stability check's setup ([budget_check]): the same (model, n, seed) as AFFNIST_SETUP
# cells, trained budget_factor x the steps. Our choice of representation: a setup of its own
# whose cells' TrainSpec carries AFFNIST_SETUP's name (Setup.seed_setup), so that
#  - the training subset (seeded by the seed alone, bench.cell.train.training_subset), the
#    initialisation and the batch order (seeded by model, n, seed and TrainSpec.setup,
#    bench.cell.train._seed) are those of the main cell: the two budgets are paired;
#  - TrainSpec gets no new field and train.py no change, so the main cells' keys stay the same;
#  - the check cell's spec differs from the main cell's only in train.steps, which is in the
#    cache key, and its folder lies under cells/affnist-budget/, so the two never share a folder;
#  - its rows in metrics.csv and cells.csv carry the setup name "affnist-budget", which every
#    table of the main setup already leaves out.
BUDGET_SETUP = "affnist-budget"
# The test sets the check's cells are scored on: the read-outs of the claims it repeats (C1, C4,
# C6 on the affNIST-style set, C8 on overlapping digits) and the clean set that matching needs.
# Our choice: no adversarial, sweep or part sets (C3 and C7 are not repeated).
BUDGET_TEST_SETS = (CLEAN.name, AFFNIST_STYLE.name, OVERLAP.name)
RESULTS_DIR = REPO_ROOT / "results"
# The source that decides a trained model's weights, and nothing that only prints or orchestrates:
# the trainer, the models, digit placement and MNIST reading, and the two functions of io.py that
# make every seed (of the subset, the initialisation, the batches). "file.py:name" is one
# top-level function of a file. Comments, docstrings and error messages are not hashed
# (source_hash), and the convergence rules live outside (bench/cell/convergence.py): editing
# them retrains nothing.
TRAIN_CODE = ("cell/train.py", "models", "data/canvas.py", "data/mnist.py", "io.py:derive_seed",
              "io.py:stable_hash")


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
    # The setup name the cells' TrainSpec carries, and so their seeds ("": this setup's name).
    seed_setup: str = ""
    # The cells train budget_factor x train.steps (1.0: the profile's budget).
    budget_factor: float = 1.0


@dataclass(frozen=True, order=True)
class Cell:
    setup: str
    model: str
    n: int
    seed: int

    @property
    def label(self) -> str:
        return f"{self.setup}/{self.model}/n{self.n}-s{self.seed}"


@dataclass(frozen=True)
class TrainSpec:
    """Everything that determines a trained cell; two equal specs give the same weights."""

    model: str
    n: int
    seed: int
    setup: str = AFFNIST_SETUP
    canvas: int = 40
    train_shift: int = 6
    width: float = 1.0
    dataset: str = "mnist"
    train: TrainConfig = field(default_factory=TrainConfig)
    recon_weight: float | None = None  # ModelConfig.recon_weight; None: the model's own

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the cache key's input; ``train.lr_by_model`` is resolved into
        ``train.lr`` by :func:`spec_for` and left out, so the keys of profiles without it stay."""
        out = dataclasses.asdict(self)
        if not out["train"].get("lr_by_model"):
            out["train"].pop("lr_by_model", None)
        return out

    @property
    def cell_name(self) -> str:
        return f"n{self.n}-s{self.seed}"


def setups(profile: Profile) -> list[Setup]:
    """The profile's setups: ``affnist`` always, ``mnist28`` when it has a ``[mnist_table]``,
    ``affnist-budget`` (:data:`BUDGET_SETUP`) last when it has a ``[budget_check]``."""
    d = profile.data
    main = Setup(AFFNIST_SETUP, d.canvas, d.train_shift, profile.train.val_size, profile.models,
                 profile.sizes, profile.seeds, None)
    out = [main]
    mt = profile.mnist_table
    if mt is not None:
        out.append(Setup(MNIST28_SETUP, mt.canvas, mt.train_shift, mt.val_size, mt.models, mt.sizes,
                         mt.seeds, ("clean",)))
    bc = profile.budget_check
    if bc is not None:
        # Scored on BUDGET_TEST_SETS only; no adversarial sets (data_config).
        out.append(dataclasses.replace(
            main, name=BUDGET_SETUP, models=bc.models or profile.models,
            sizes=bc.sizes or (max(profile.sizes),), seeds=bc.seeds,
            test_sets=BUDGET_TEST_SETS, seed_setup=AFFNIST_SETUP,
            budget_factor=bc.factor))
    return out


def budget_steps(steps: int, factor: float) -> int:
    """The longer budget of the check: ``steps`` x ``factor``, rounded to the nearest step."""
    return int(round(steps * factor))


def setup_by_name(profile: Profile, name: str) -> Setup:
    by_name = {s.name: s for s in setups(profile)}
    if name not in by_name:
        raise BenchError(f"profile '{profile.name}' has no setup '{name}' "
                         f"(it has: {', '.join(by_name)})")
    return by_name[name]


def cells(profile: Profile) -> list[Cell]:
    return [
        Cell(s.name, m, n, seed)
        for s in setups(profile)
        for m in s.models
        for n in s.sizes
        for seed in s.seeds
    ]


def data_config(profile: Profile, setup: Setup) -> DataConfig:
    """The test-set configuration of a setup (the profile's, at the setup's canvas); the
    budget-stability check's setup attacks no cell (``attack.n = 0``)."""
    cfg = dataclasses.replace(profile.data, canvas=setup.canvas)
    if setup.budget_factor != 1.0:
        cfg = dataclasses.replace(cfg, attack=dataclasses.replace(cfg.attack, n=0))
    return cfg


def spec_for(profile: Profile, cell: Cell) -> TrainSpec:
    """The trainer's full specification of ``cell``: its setup's canvas, shift and validation
    size, its budget (:func:`budget_steps` for the check's setup) and the setup name its seeds
    derive from (:attr:`Setup.seed_setup`)."""
    setup = setup_by_name(profile, cell.setup)
    train = profile.train
    if train.lr_by_model:  # the spec carries its model's rate only (TrainSpec.to_dict)
        train = dataclasses.replace(train, lr=train.lr_for(cell.model), lr_by_model={})
    if setup.budget_factor != 1.0:
        train = dataclasses.replace(train, steps=budget_steps(train.steps, setup.budget_factor))
    if train.val_size != setup.val_size:
        train = dataclasses.replace(train, val_size=setup.val_size)
    if train.val_size == 0 and train.select != "last":  # nothing to select with: keep the last
        train = dataclasses.replace(train, select="last")
    return TrainSpec(cell.model, cell.n, cell.seed, setup.seed_setup or setup.name, setup.canvas,
                     setup.train_shift, profile.model.width, profile.data.dataset, train,
                     profile.model.recon_weight)


class _WeightCode(ast.NodeTransformer):
    """Drops from a module's syntax tree what cannot change a trained weight: docstrings (comments
    are already gone from the tree) and the messages of ``raise`` statements and of
    ``warnings.warn`` calls, which are replaced by an empty string."""

    def _drop_docstring(self, node):
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return self.generic_visit(node)

    visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _drop_docstring

    def visit_Raise(self, node: ast.Raise) -> ast.Raise:
        if isinstance(node.exc, ast.Call):
            node.exc.args = [ast.Constant("") for _ in node.exc.args]
        return node

    def visit_Call(self, node: ast.Call) -> ast.Call:
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "warn" and getattr(f.value, "id", "") == "warnings":
            node.args = [ast.Constant("")] + node.args[1:]
        return self.generic_visit(node)


def _weight_source(text: str, name: str = "") -> str:
    """The source that decides weights, normalised by :class:`_WeightCode`: the whole module, or
    the one top-level function or class ``name`` of it."""
    tree = _WeightCode().visit(ast.parse(text))
    if name:
        nodes = [n for n in tree.body if getattr(n, "name", None) == name]
        if not nodes:
            return ""
        return ast.unparse(nodes[0])
    return ast.unparse(tree)


def source_hash(root: Path, parts: tuple[str, ...]) -> str:
    """Hash of the source named by ``parts`` under ``root``: a file, a folder (its ``*.py``), or
    ``file.py:name``, one top-level function or class of that file. Each is read as Python's
    syntax tree without comments, docstrings and error or warning messages
    (:func:`_weight_source`), so editing those retrains no cached cell."""
    texts: list[tuple[str, str]] = []
    for part in parts:
        rel, _, name = part.partition(":")
        p = root / rel
        if name:
            source = _weight_source(p.read_text(), name)
            if not source:
                raise BenchError(f"{p}: no top-level '{name}' to hash")
            texts.append((part, source))
        else:
            if not p.exists():
                raise BenchError(f"{p}: no such file or folder to hash (TRAIN_CODE)")
            files = sorted(p.rglob("*.py")) if p.is_dir() else [p]
            texts += [(str(f.relative_to(root)), _weight_source(f.read_text())) for f in files]
    return stable_hash(texts)


@functools.lru_cache(maxsize=4)
def code_hash(parts: tuple[str, ...] = TRAIN_CODE) -> str:
    """Hash of the source that decides training results (part of every cell's key)."""
    return source_hash(PACKAGE_DIR, parts)


def model_code_hash(name: str) -> str | None:
    """The source of an external model (:attr:`bench.models.registry.ModelInfo.external`): its
    package's name and version and its package's Python files as syntax trees
    (:func:`_weight_source`). None for the suite's own models, whose source is in
    :data:`TRAIN_CODE` already, so that their keys do not depend on what else is installed."""
    info = model_info(name)
    if not info.external:
        return None
    files = info.source_files()
    if not files:
        raise BenchError(f"model '{name}': no Python source found for module {info.module} "
                         "to put into its cells' cache key")
    root = files[0].parent if len(files) == 1 else Path(*_common_parts(files))
    return stable_hash(info.package, info.version,
                       [(str(f.relative_to(root)), _weight_source(f.read_text())) for f in files])


def _common_parts(files: list[Path]) -> tuple[str, ...]:
    parts = files[0].parent.parts
    for f in files[1:]:
        n = 0
        while n < min(len(parts), len(f.parent.parts)) and parts[n] == f.parent.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def _folder(run_dir: Path, cell: Cell, spec: TrainSpec, device_type: str) -> Path:
    external = model_code_hash(cell.model)
    key = stable_hash(spec.to_dict(), code_hash(), device_type,
                      *([external] if external is not None else []))[:10]
    return Path(run_dir) / "cells" / cell.setup / cell.model / f"n{cell.n}-s{cell.seed}-{key}"


def cell_dir(run_dir: Path, profile: Profile, cell: Cell, device_type: str) -> Path:
    """``<run>/cells/<setup>/<model>/n<n>-s<seed>-<hash>``: the hash covers spec, code and device,
    and for an external model its own source (:func:`model_code_hash`)."""
    return _folder(run_dir, cell, spec_for(profile, cell), device_type)


@dataclass(frozen=True)
class PlannedCell:
    """A cell of a run with its training spec and its folder (:func:`cell_dir`'s rule)."""

    cell: Cell
    spec: TrainSpec
    folder: Path


def planned_cells(profile: Profile, run_dir: Path, device_type: str) -> list[PlannedCell]:
    """Every cell of the profile (in :func:`cells`' order) with its spec and folder: what a run
    computes once and hands to every stage that walks its cells."""
    out = []
    for c in cells(profile):
        spec = spec_for(profile, c)
        out.append(PlannedCell(c, spec, _folder(run_dir, c, spec, device_type)))
    return out


def default_run_dir(profile: Profile, device_type: str) -> Path:
    """``results/<profile>-<device type>``: where a run goes without ``--out``."""
    return RESULTS_DIR / f"{profile.name}-{device_type}"
