"""Wall time of running a whole profile on one device, from measured rates.

Pure: no timing and no torch here. The inputs are a :class:`~bench.config.Profile` and rates
measured elsewhere (``gpu-check`` measures them with :func:`bench.throughput.measure` and the
trainer); the output is seconds per part and in total. :data:`ESTIMATE_METHOD` states the formula,
:func:`estimate_profile` computes it, and :func:`estimate_from_measurements` first picks, from
measured rows, the rate of each (setup, model).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.cells import cells, data_config, setups, spec_for
from bench.config import Profile
from bench.data.testsets import default_set_names, set_size
from bench.errors import BenchError
from bench.train import step_budget

__all__ = ["ESTIMATE_METHOD", "Rates", "estimate_from_measurements", "estimate_profile",
           "pick_rates", "test_images"]

ESTIMATE_METHOD = (
    "per cell (setup, model, n, seed) of the profile: train = steps_for(n) x batch / train rate; "
    "validation = ceil(steps / eval_every) x val_size / inference rate; evaluation = images of "
    "the setup's test sets / inference rate; plus a fixed per-cell overhead (model build, data "
    "loading, checkpoints). Data = every test-set image / generation rate. Extra = the throughput "
    "stage. Cells run one after another on one GPU; the report stage is not counted."
)

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
) -> dict[str, Any]:
    """Wall time of running every cell of ``profile`` on one device from measured rates.

    ``train_rate`` and ``infer_rate`` map ``(setup, model)`` to images/s (a training step's rate
    at the profile's batch, and inference at the evaluation batch); ``gen_rate`` is test-set
    generation images/s. See :data:`ESTIMATE_METHOD` for the formula. Returns seconds per part
    and per (setup, model), and the total.
    """
    images = test_images(profile)
    groups: dict[Key, dict[str, Any]] = {}
    for cell in cells(profile):
        key = (cell.setup, cell.model)
        if key not in train_rate or key not in infer_rate:
            raise BenchError(f"estimate: no measured rate for {cell.setup}/{cell.model}")
        t = spec_for(profile, cell).train
        steps = step_budget(t, cell.n)
        n_val = math.ceil(steps / t.eval_every) if t.val_size > 0 else 0
        g = groups.setdefault(key, {"setup": cell.setup, "model": cell.model, "cells": 0,
                                    "steps": 0, "train_s": 0.0, "val_s": 0.0, "eval_s": 0.0})
        g["cells"] += 1
        g["steps"] += steps
        g["train_s"] += steps * t.batch_size / train_rate[key]
        g["val_s"] += n_val * t.val_size / infer_rate[key]
        g["eval_s"] += images[cell.setup] / infer_rate[key]
    rows = list(groups.values())
    n_cells = sum(g["cells"] for g in rows)
    parts = {
        "data_s": sum(images.values()) / gen_rate,
        "train_s": sum(g["train_s"] for g in rows),
        "val_s": sum(g["val_s"] for g in rows),
        "eval_s": sum(g["eval_s"] for g in rows),
        "overhead_s": n_cells * cell_overhead_s,
        "extra_s": extra_s,
    }
    total = sum(parts.values())
    return {"profile": profile.name, "cells": n_cells, **parts, "total_s": total,
            "total_h": total / 3600, "test_images": images, "by_model": rows,
            "method": ESTIMATE_METHOD}


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

    ``rows`` are :func:`bench.throughput.measure` results with ``precision`` ("bf16"/"fp32")
    added; ``trainer`` maps a model to the trainer's own images/s on the first setup (the
    profile's settings, data placement included). Training, first setup: the trainer's rate,
    else the row at ``train_batch`` in ``precision``. Training, other setups: the row at that
    setup's canvas times the median trainer / row ratio of the first setup; without one, the
    first setup's rate of the model (of ``capsnet`` for a model only the other setup has):
    fewer pixels and no more work, so an upper bound on the time. Inference: the fp32 row at
    ``eval_batch`` (``bench.evaluate`` runs fp32), with the same fallback.
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
