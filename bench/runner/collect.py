"""The cells' files gathered into the run's tables: ``metrics.csv``, ``cells.csv``,
``predictions.parquet`` (the per-image store) and timings.

``cells.csv``'s ``converged`` column is the run-level rule
(:func:`bench.cell.convergence.familywise_convergence`), applied here over every cell of the run;
``converged_cell`` is each cell's own rule as its trainer recorded it.
"""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bench.cell.convergence import familywise_convergence
from bench.cell.files import CellFiles
from bench.cell.plan import AFFNIST_SETUP, Cell, PlannedCell, planned_cells
from bench.config import Profile
from bench.io import (
    load_torch,
    read_json,
    save_torch,
    write_csv,
    write_parquet,
)


def collect(profile: Profile, run_dir: Path, device_type: str,
            planned: Sequence[PlannedCell] | None = None) -> int:
    """Concatenate the evaluated cells of this profile into run-level tidy files.

    ``planned``: the run's cells with their folders (:func:`bench.cell.plan.planned_cells`,
    computed here when not given). A cell whose files fail their checksums
    (:meth:`bench.cell.files.CellFiles.damaged`) is left out with a warning naming the file (the
    next ``run`` rebuilds it)."""
    frames, confs, cell_rows = [], [], []
    best_capsnet: tuple[int, int, Path] | None = None
    if planned is None:
        planned = planned_cells(profile, run_dir, device_type)
    for pc in planned:
        c, files = pc.cell, CellFiles(pc.folder)
        problem = files.damaged("train", outputs=False) or files.damaged("eval")
        if problem is not None:
            warnings.warn(f"cell {c.label} left out of {run_dir}'s tables: {problem}; rerun the "
                          "train and eval stages to rebuild it", stacklevel=2)
            continue
        if files.train_summary.is_file():
            cell_rows.append(_cell_row(c, files))
        if not files.eval_summary.is_file():
            continue
        frames.append(pd.read_csv(files.metrics))
        if files.predictions.is_file():
            confs.append(pd.read_parquet(files.predictions))
        # The report's reconstruction figure: the CapsNet trained on the most data (lowest seed).
        if (c.setup == AFFNIST_SETUP and c.model == "capsnet" and files.examples.is_file()
                and (best_capsnet is None or (c.n, -c.seed) > best_capsnet[:2])):
            best_capsnet = (c.n, -c.seed, files.examples)
    if cell_rows:
        table = pd.DataFrame(cell_rows)
        # "converged" across the run (Holm over its cells); "converged_cell": each cell alone.
        table["converged"] = familywise_convergence(table, profile.train.converged_gain,
                                                    profile.train.converged_alpha)
        write_csv(run_dir / "cells.csv", table)
    if not frames:
        return 0
    write_csv(run_dir / "metrics.csv", pd.concat(frames, ignore_index=True))
    if confs:  # the per-image store of every cell (bench.cell.evaluate.prediction_frame)
        store = pd.concat(confs, ignore_index=True)
        for col in ("setup", "model", "test_set", "layout"):  # categories differ per cell
            store[col] = store[col].astype(str).astype("category")
        write_parquet(run_dir / "predictions.parquet", store, compression="zstd")
        (run_dir / "confidences.parquet").unlink(missing_ok=True)  # the store's predecessor
    if best_capsnet is not None and (run_dir / "examples.pt").is_file():
        examples = load_torch(run_dir / "examples.pt")
        examples.update(load_torch(best_capsnet[2]))
        save_torch(run_dir / "examples.pt", examples)
    return len(frames)


def _cell_row(c: Cell, files: CellFiles) -> dict[str, Any]:
    """One row of ``cells.csv``: how the cell was trained, whether it converged, what it cost."""
    t = read_json(files.train_summary)
    e = read_json(files.eval_summary) if files.eval_summary.is_file() else {}
    timing = t.get("timing") or {}
    return {
        "setup": c.setup, "model": c.model, "n": c.n, "seed": c.seed,
        "steps": t.get("steps"), "selection": t.get("selection", "best_val"),
        "checkpoint_step": t.get("checkpoint_step", t.get("best_step")),
        "converged": t.get("converged"), "converged_cell": t.get("converged"),
        "val_improvement": t.get("val_improvement"),
        "val_improvement_se": t.get("val_improvement_se"),
        "val_turned_right": t.get("val_turned_right"),
        "val_turned_wrong": t.get("val_turned_wrong"),
        "val_improvement_p": t.get("val_improvement_p"),
        "final_val_accuracy": t.get("final_val_accuracy"),
        "labelled_images": t.get("labelled_images"),
        "train_seconds": sum(v for v in timing.values() if isinstance(v, (int, float))) or None,
        "eval_seconds": sum(v for k, v in (e.get("timing") or {}).items()
                            if isinstance(v, (int, float))) or None,
    }


def cell_timing(planned: Sequence[PlannedCell]) -> dict[str, Any]:
    """Where the cells' time went: seconds per part summed over the cells that record it
    (``timing`` of train.json and eval.json), and the median seconds of one cell (train + eval)."""
    totals: dict[str, float] = {}
    per_cell: list[float] = []
    for pc in planned:
        files = CellFiles(pc.folder)
        parts: dict[str, float] = {}
        for stage, path in (("train", files.train_summary), ("eval", files.eval_summary)):
            if path.is_file():
                try:
                    timing = dict(read_json(path)).get("timing") or {}
                except (ValueError, TypeError):  # damaged: rebuilt by the next run
                    continue
                parts.update({f"{stage}/{k}": v for k, v in timing.items()
                              if isinstance(v, (int, float))})
        if not parts:
            continue
        per_cell.append(sum(parts.values()))
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
    if not per_cell:
        return {}
    return {"cells": len(per_cell), "median_cell_s": round(statistics.median(per_cell), 3),
            "sum_s": {k: round(v, 3) for k, v in sorted(totals.items())}}
