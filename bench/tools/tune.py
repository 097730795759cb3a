"""``python -m bench tune``: each model's learning rate chosen from the same few on validation images.

The search (``[tune]``, :class:`~bench.config.TuneConfig`): every model of ``tune.models`` is
trained once per rate of ``tune.lrs`` and seed of ``tune.seeds``, at ``tune.n`` training images
for ``tune.steps`` steps, with the profile's other training settings; each cell is scored by its
accuracy on its own validation images at the end of the budget (held out of the training pool:
the test sets are never read). A model's rate is the one with the highest mean score over the
seeds; a tie goes to the smaller rate (our choice: the more conservative step).

Pure parts first (:func:`tuning_profile`, :func:`choose`, :func:`lr_table`), then the one that
trains (:func:`run_tune`). What it writes, in ``OUT``: ``lr<rate>/cells/`` (one folder per
trained cell, resumable as a run's), ``tuning.csv`` (one row per cell) and ``tuning.toml`` (the
chosen rates as a ``[train.lr_by_model]`` table to paste into the profile before its run).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from bench.cell.plan import AFFNIST_SETUP, Cell, cell_dir
from bench.cell.train import step_budget
from bench.config import Profile, TuneConfig
from bench.errors import BenchError
from bench.runner.cell import CellTask, DataSource, run_cell

__all__ = ["TUNING_COLUMNS", "choose", "lr_table", "run_tune", "tuning_profile", "tuning_settings"]

TUNING_COLUMNS = ("model", "lr", "seed", "n", "steps", "final_val_accuracy", "train_seconds")


def tuning_settings(profile: Profile) -> TuneConfig:
    """The profile's ``[tune]`` with its zeros and empties resolved (steps, n, models)."""
    t = profile.tune or TuneConfig()
    n = t.n or max(profile.sizes)
    if profile.train.val_size < 1:
        raise BenchError(f"profile {profile.name}: tune scores validation images: "
                         "train.val_size must be > 0")
    return dataclasses.replace(t, steps=t.steps or step_budget(profile.train, n), n=n,
                               models=t.models or profile.models)


def tuning_profile(profile: Profile, lr: float) -> Profile:
    """The profile whose cells are the search's at rate ``lr``: one size, the search's seeds, the
    search's budget, the last weights kept, no per-model rates and no budget check."""
    t = tuning_settings(profile)
    train = dataclasses.replace(profile.train, lr=lr, lr_by_model={}, steps=t.steps, select="last",
                                eval_every=max(1, t.steps // 4))
    return dataclasses.replace(profile, name=f"{profile.name}-tune", models=t.models, sizes=(t.n,),
                               seeds=t.seeds, train=train, budget_check=None)


def choose(rows: pd.DataFrame) -> dict[str, float]:
    """Each model's rate: the highest mean ``final_val_accuracy`` over seeds; ties -> smaller rate."""
    if rows.empty:
        raise BenchError("tune: no finished cells to choose from")
    mean = rows.groupby(["model", "lr"], sort=True)["final_val_accuracy"].mean().reset_index()
    out: dict[str, float] = {}
    for model, g in mean.groupby("model", sort=False):
        best = g["final_val_accuracy"].max()
        out[str(model)] = float(g.loc[g["final_val_accuracy"] == best, "lr"].min())
    return out


def lr_table(chosen: dict[str, float], models: tuple[str, ...]) -> str:
    """The ``[train.lr_by_model]`` TOML table of ``chosen``, in the profile's model order."""
    lines = ["[train.lr_by_model]"]
    lines += [f'"{m}" = {chosen[m]!r}' for m in models if m in chosen]
    return "\n".join(lines) + "\n"


def run_tune(profile: Profile, out: Path, device: str, source: DataSource | None = None,
             progress: bool = True) -> tuple[pd.DataFrame, dict[str, float]]:
    """Train the search's cells into ``out/cells`` (finished ones are reused), write
    ``tuning.csv`` and ``tuning.toml``, and return the rows and the chosen rates."""
    t = tuning_settings(profile)
    rows = []
    for lr in t.lrs:
        variant = tuning_profile(profile, lr)
        for model in t.models:
            for seed in t.seeds:
                cell = Cell(AFFNIST_SETUP, model, t.n, seed)
                folder = cell_dir(out / f"lr{lr:g}", variant, cell, device.split(":")[0])
                task = CellTask(variant, cell, str(folder), device, ("train",),
                                source or DataSource(), progress)
                summary = run_cell(task)["train"]
                rows.append({"model": model, "lr": lr, "seed": seed, "n": t.n, "steps": t.steps,
                             "final_val_accuracy": summary["final_val_accuracy"],
                             "train_seconds": summary["train_seconds"]})
    table = pd.DataFrame(rows, columns=list(TUNING_COLUMNS))
    chosen = choose(table)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "tuning.csv", index=False)
    (out / "tuning.toml").write_text(lr_table(chosen, t.models))
    return table, chosen
