"""Wall time of running a profile, or what is left of a run, on one device, from measured rates.

Pure: no timing and no torch here. The inputs are a :class:`~bench.config.Profile` and rates
measured elsewhere (``gpu-check`` measures them with :func:`bench.cell.throughput.measure` and the
trainer; ``run --dry-run`` and the first lines of every run with :func:`bench.runner.todo.measure_rates`);
the output is seconds per part and in total. :data:`ESTIMATE_METHOD` states the formula,
:func:`estimate_profile` computes it (for every cell, or for the cells and test sets a run has
left: :func:`bench.runner.todo.plan_run`), :func:`throughput_stage_s` the throughput stage, and
:func:`estimate_from_measurements` first picks, from measured rows, the rate of each
(setup, model).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.cell.evaluate import attacked
from bench.cell.plan import Cell, cells, data_config, setup_by_name, setups, spec_for
from bench.cell.train import step_budget
from bench.config import AttackConfig, Profile
from bench.data.testsets import default_set_names, set_size
from bench.errors import BenchError
from bench.models.registry import model_info

__all__ = ["CELL_OVERHEAD_S", "ESTIMATE_METHOD", "REPORT_S", "Rates", "estimate_from_measurements",
           "estimate_profile", "format_duration", "pick_rates", "test_images", "throughput_stage_s"]

ESTIMATE_METHOD = (
    "per cell (setup, model, n, seed) to train: train = steps_for(n) x batch / train rate, "
    "validation = ceil(steps / eval_every) x val_size / inference rate; per cell to evaluate: "
    "evaluation = images of the setup's test sets / inference rate; plus a fixed overhead per "
    "cell with work (model build, data loading, checkpoints, metrics). Cells already finished "
    "cost 0. Data = images of the test sets to generate / generation rate. Extra = the throughput "
    "stage and the report. Cells run one after another, or `parallel` at once (cell time / "
    "parallel). Adversarial sets (cells the profile attacks): attack = attacked digits x "
    "(per budget 1 FGSM + pgd_steps PGD gradient passes, + pgd_steps vote-attack passes for "
    "capsule models) x ATTACK_PASS_COST / train rate, + square_n x square_queries / inference "
    "rate."
)

# Measured (2-core CPU, width-1/8 models trained by the ablation profile, 100 digits, 4 budgets,
# 20 PGD steps): one gradient pass of an attack per image cost 2.7 ms for capsnet, 1.5 ms for
# convnet-k9 and 0.8 ms for convnet-maxpool, against training steps of 1.8, 0.75 and 0.51 ms
# per image at batch 32 in the same process: 1.5, 2.0 and 1.6 times. Our choice: 1.7.
ATTACK_PASS_COST = 1.7

# Our choices for the parts no rate measures, from the quick profile run on this project's
# 2-core CPU (45 cells): the per-cell time outside the timed steps, validation and predictions
# (train.json setup_s + checkpoint_s, eval.json sets_s + metrics_s) summed to 18.3 s, 0.41 s a
# cell; the report stage took 6.5 s (7.2 s for smoke), to which starting the process adds a few.
CELL_OVERHEAD_S = 0.5
REPORT_S = 10.0

Key = tuple[str, str]  # (setup, model)


def test_images(profile: Profile) -> dict[str, int]:
    """Images in the test sets of each setup of ``profile`` (:func:`bench.data.testsets.set_size`)."""
    out = {}
    for s in setups(profile):
        cfg = data_config(profile, s)
        names = s.test_sets if s.test_sets is not None else default_set_names(cfg)
        out[s.name] = sum(set_size(cfg, name) for name in names)
    return out


test_images.__test__ = False  # not a pytest test function


def estimate_profile(
    profile: Profile,
    train_rate: Mapping[Key, float],
    infer_rate: Mapping[Key, float],
    gen_rate: float,
    cell_overhead_s: float = 0.0,
    extra_s: float = 0.0,
    *,
    train_cells: Collection[Cell] | None = None,
    eval_cells: Collection[Cell] | None = None,
    build_sets: Mapping[str, Sequence[str]] | None = None,
    parallel: int = 1,
) -> dict[str, Any]:
    """Wall time of running the cells of ``profile`` on one device from measured rates.

    ``train_rate`` and ``infer_rate`` map ``(setup, model)`` to images/s (a training step's rate
    at the profile's batch, and inference at the evaluation batch); ``gen_rate`` is test-set
    generation images/s. ``train_cells`` are the cells to train (validation included) and
    ``eval_cells`` those to evaluate, each None for every cell of the profile; a cell in neither
    costs nothing (finished before). ``build_sets`` maps a setup to the test sets to generate
    (None: every set of every setup). ``parallel`` cells run at once (the cells' time divided).
    See :data:`ESTIMATE_METHOD` for the formula. Returns seconds per part and per
    (setup, model), and the total.
    """
    if parallel < 1:
        raise BenchError(f"estimate: parallel must be >= 1, got {parallel}")
    images = test_images(profile)
    train_set = None if train_cells is None else set(train_cells)
    eval_set = None if eval_cells is None else set(eval_cells)
    groups: dict[Key, dict[str, Any]] = {}
    for cell in cells(profile):
        trains = train_set is None or cell in train_set
        evals = eval_set is None or cell in eval_set
        if not (trains or evals):
            continue
        key = (cell.setup, cell.model)
        if (trains and key not in train_rate) or key not in infer_rate:
            raise BenchError(f"estimate: no measured rate for {cell.setup}/{cell.model}")
        t = spec_for(profile, cell).train
        g = groups.setdefault(key, {"setup": cell.setup, "model": cell.model, "cells": 0,
                                    "steps": 0, "train_s": 0.0, "val_s": 0.0, "eval_s": 0.0,
                                    "attack_s": 0.0})
        g["cells"] += 1
        if trains:
            steps = step_budget(t, cell.n)
            n_val = math.ceil(steps / t.eval_every) if t.val_size > 0 else 0
            g["steps"] += steps
            g["train_s"] += steps * t.batch_size / train_rate[key]
            g["val_s"] += n_val * t.val_size / infer_rate[key]
        if evals:
            g["eval_s"] += images[cell.setup] / infer_rate[key]
            cfg = data_config(profile, setup_by_name(profile, cell.setup))
            if attacked(cfg, cell.n) and key in train_rate:
                g["attack_s"] += attack_seconds(cfg.attack, cell.model, train_rate[key],
                                                infer_rate[key])
    rows = list(groups.values())
    n_cells = sum(g["cells"] for g in rows)
    if build_sets is None:
        # a setup seeded as another (the budget check) scores a subset of that setup's sets,
        # which are built once (the same canvas and data settings: the same cache)
        build_images = sum(images[s.name] for s in setups(profile) if not s.seed_setup)
    else:
        build_images = 0
        for setup, names in build_sets.items():
            cfg = data_config(profile, setup_by_name(profile, setup))
            build_images += sum(set_size(cfg, name) for name in names)
    if build_images and not gen_rate > 0:
        raise BenchError(f"estimate: {build_images} test images to generate need a generation "
                         f"rate > 0, got {gen_rate}")
    parts = {
        "data_s": build_images / gen_rate if build_images else 0.0,
        "train_s": sum(g["train_s"] for g in rows) / parallel,
        "val_s": sum(g["val_s"] for g in rows) / parallel,
        "eval_s": sum(g["eval_s"] for g in rows) / parallel,
        "attack_s": sum(g["attack_s"] for g in rows) / parallel,
        "overhead_s": n_cells * cell_overhead_s / parallel,
        "extra_s": extra_s,
    }
    total = sum(parts.values())
    return {"profile": profile.name, "cells": n_cells, **parts, "total_s": total,
            "total_h": total / 3600, "test_images": images, "build_images": build_images,
            "parallel": parallel, "by_model": rows, "method": ESTIMATE_METHOD}


def attack_seconds(attack: AttackConfig, model: str, train_rate: float, infer_rate: float
                   ) -> float:
    """Seconds of one cell's adversarial sets (see :data:`ESTIMATE_METHOD`)."""
    passes = len(attack.budgets) * (1 + attack.pgd_steps)
    if attack.votes and model_info(model).family == "capsule":
        passes += attack.pgd_steps
    return (attack.n * passes * ATTACK_PASS_COST / train_rate
            + min(attack.square_n, attack.n) * attack.square_queries / infer_rate)


def throughput_stage_s(profile: Profile, train_rate: Mapping[Key, float],
                       infer_rate: Mapping[Key, float], gen_rate: float) -> float:
    """Seconds of the runner's throughput stage: for every model of the first setup and batch
    of ``[throughput]``, ``warmup + repeats`` training steps, inference calls and batch-1 calls
    at the measured rates (images/s taken as independent of the batch), then the generation of
    ``min(n_test, 2000) x 4`` affNIST-style images (the stage's own sizes)."""
    main = setups(profile)[0]
    calls = profile.throughput.warmup + max(1, profile.throughput.repeats)
    seconds = 0.0
    for m in main.models:
        key = (main.name, m)
        if key not in train_rate or key not in infer_rate:
            raise BenchError(f"estimate: no measured rate for {main.name}/{m}")
        for batch in profile.throughput.batch_sizes:
            seconds += calls * (batch / train_rate[key] + batch / infer_rate[key]
                                + 1 / infer_rate[key])
    return seconds + min(profile.data.n_test, 2000) * 4 / gen_rate


def format_duration(seconds: float) -> str:
    """``about 40 s``, ``about 19 min`` or ``about 3.2 h``."""
    if seconds < 90:
        return f"about {seconds:.0f} s"
    if seconds < 90 * 60:
        return f"about {seconds / 60:.0f} min"
    return f"about {seconds / 3600:.1f} h"


@dataclass
class Rates:
    """Images/s by (setup, model), where each came from, and the trainer / row ratio used."""

    train: dict[Key, float] = field(default_factory=dict)
    infer: dict[Key, float] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    ratio: float = 1.0


def _rate(rows: Sequence[Mapping[str, Any]], model: str, size: int, key: str, batch: int,
          precision: str) -> float | None:
    for r in rows:
        if (r.get("model"), r.get("input_size"), r.get("batch"), r.get("precision")) == (
                model, size, batch, precision) and r.get(key):
            return r[key]
    return None


def pick_rates(profile: Profile, rows: Sequence[Mapping[str, Any]],
               trainer: Mapping[str, float], *, train_batch: int, eval_batch: int,
               precision: str) -> Rates:
    """The rate of each (setup, model) of ``profile``, from measured rows.

    ``rows`` are :func:`bench.cell.throughput.measure` results with ``precision`` ("bf16"/"fp32")
    added; ``trainer`` maps a model to the trainer's own images/s on the first setup (the
    profile's settings, data placement included). Training, first setup: the trainer's rate,
    else the row at ``train_batch`` in ``precision``. Training, other setups: the row at that
    setup's canvas times the median trainer / row ratio of the first setup; without one, the
    first setup's rate of the model (of ``capsnet`` for a model only the other setup has):
    fewer pixels and no more work, so an upper bound on the time. Inference: the fp32 row at
    ``eval_batch`` (``bench.cell.evaluate`` runs fp32), with the same fallback.
    """
    main, *others = setups(profile)
    out = Rates()
    ratios = []
    for m in main.models:
        key = (main.name, m)
        row = _rate(rows, m, main.canvas, "train_images_per_s", train_batch, precision)
        mine = trainer.get(m)
        if mine and row:
            ratios.append(mine / row)
        if mine or row:
            out.train[key] = mine or row
            out.sources[f"{main.name}/{m}/train"] = ("learning (trainer)" if mine
                                                     else "throughput row")
        inf = _rate(rows, m, main.canvas, "infer_images_per_s", eval_batch, "fp32")
        if inf:
            out.infer[key] = inf
    out.ratio = statistics.median(ratios) if ratios else 1.0
    for s in others:
        for m in s.models:
            key = (s.name, m)
            near = (main.name, m if (main.name, m) in out.train else "capsnet")
            tr = _rate(rows, m, s.canvas, "train_images_per_s", train_batch, precision)
            if tr:
                out.train[key] = tr * out.ratio
                out.sources[f"{s.name}/{m}/train"] = f"{s.canvas}x{s.canvas} row x {out.ratio:.3f}"
            elif near in out.train:
                out.train[key] = out.train[near]
                out.sources[f"{s.name}/{m}/train"] = f"fallback: {main.name} rate of {near[1]}"
            inf = _rate(rows, m, s.canvas, "infer_images_per_s", eval_batch, "fp32")
            if inf:
                out.infer[key] = inf
            elif near in out.infer:
                out.infer[key] = out.infer[near]
                out.sources[f"{s.name}/{m}/infer"] = f"fallback: {main.name} rate of {near[1]}"
    return out


def estimate_from_measurements(
    profile: Profile,
    rows: Sequence[Mapping[str, Any]],
    learn: Sequence[Mapping[str, Any]],
    gen_rate: float,
    *,
    train_batch: int,
    eval_batch: int,
    precision: str,
) -> dict[str, Any]:
    """:func:`estimate_profile` with rates picked by :func:`pick_rates`.

    ``learn``: trainer runs of the first setup, each with ``model``, ``train_images_per_s``,
    ``wall_s``, ``train_seconds``, ``validations`` and ``val_size``. The per-cell overhead is the
    median over them of wall time minus modelled time (training + validation); the extra time
    is the sum of the ``seconds`` of the first setup's rows in ``precision`` at the batch sizes
    of the profile's throughput stage.
    """
    main = setups(profile)[0]
    trainer = {r["model"]: r["train_images_per_s"] for r in learn if r.get("train_images_per_s")}
    rates = pick_rates(profile, rows, trainer, train_batch=train_batch, eval_batch=eval_batch,
                       precision=precision)
    overheads = []
    for r in learn:
        inf = rates.infer.get((main.name, r["model"]))
        if inf and r.get("train_images_per_s") and r.get("wall_s") is not None:
            modelled = r["train_seconds"] + r["validations"] * r["val_size"] / inf
            overheads.append(max(0.0, r["wall_s"] - modelled))
    overhead = statistics.median(overheads) if overheads else 0.0
    extra = sum(r.get("seconds", 0.0) for r in rows if r.get("input_size") == main.canvas
                and r.get("precision") == precision
                and r.get("batch") in profile.throughput.batch_sizes)
    est = estimate_profile(profile, rates.train, rates.infer, gen_rate, overhead, extra)
    est.update(cell_overhead_s=overhead, trainer_over_row_ratio=rates.ratio,
               rate_sources=rates.sources,
               train_rates={f"{k[0]}/{k[1]}": v for k, v in rates.train.items()},
               infer_rates={f"{k[0]}/{k[1]}": v for k, v in rates.infer.items()})
    return est
