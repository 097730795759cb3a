"""Effective robustness (Taori et al. 2020, "Measuring robustness to natural distribution shifts
in image classification", Sec. 3): a secondary read-out beside the scoreboard.

Across every cell of a run, the affNIST-style accuracy is fitted against the clean accuracy on
the logit scale, by least squares on the ConvNets' cells only (the baseline every model is read
against), leaving out the models that failed to train (:func:`bench.report.ablation.failed_steps`:
their cells measure a failed optimisation, not a ConvNet's trade-off); a model's effective
robustness is its cells' mean residual from that line, averaged per seed over the sizes, with a
Student-t interval over seeds. Above 0: more affNIST-style accuracy than a ConvNet of the same
clean accuracy would have. No verdict: the line is fitted on the run's own cells, and its error
is not in the interval.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from bench import stats
from bench.data.testsets import AFFNIST_STYLE, CLEAN
from bench.report import figures, readout
from bench.report.ablation import failed_steps
from bench.report.table import Table

FIGURE_STEM = "effective_robustness"
EPS = 1e-4  # our choice: accuracies clipped to [EPS, 1 - EPS] before the logit


def is_convnet(model: str) -> bool:
    """The suite's ConvNets: the models the baseline line is fitted on, unless they failed to train."""
    return model.startswith("convnet-") or model == "baseline-cnn"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPS, 1.0 - EPS)
    return np.log(p / (1.0 - p))


@dataclass
class EffectiveRobustness:
    slope: float
    intercept: float
    cells: pd.DataFrame  # model, n, seed, clean, other, residual (logit units)
    per_model: dict[str, stats.Interval]
    fitted: tuple[str, ...] = ()  # the models whose cells the line is fitted on


def effective_robustness(main: pd.DataFrame) -> EffectiveRobustness | None:
    """The fit and each model's mean residual; None without ConvNet cells of 3 or more distinct
    clean accuracies."""
    acc = readout.rows(main, metric="accuracy")
    wide = acc[acc["test_set"].isin([CLEAN.name, AFFNIST_STYLE.name])].pivot_table(
        index=["model", "n", "seed"], columns="test_set", values="value").dropna()
    if wide.empty or not {CLEAN.name, AFFNIST_STYLE.name} <= set(wide.columns):
        return None
    cells = wide.reset_index().rename(columns={CLEAN.name: "clean",
                                               AFFNIST_STYLE.name: "other"})
    failed = failed_steps(main)
    base = cells[cells["model"].map(is_convnet) & ~cells["model"].isin(failed)]
    if base["clean"].nunique() < 3:
        return None
    slope, intercept = np.polyfit(logit(base["clean"]), logit(base["other"]), 1)
    cells["residual"] = logit(cells["other"]) - (intercept + slope * logit(cells["clean"]))
    per_model = {}
    for m in figures.model_order(cells["model"]):
        per_seed = cells[cells["model"] == m].groupby("seed")["residual"].mean()
        per_model[m] = stats.mean_interval(per_seed.to_dict(), bounds=None)
    return EffectiveRobustness(float(slope), float(intercept), cells, per_model,
                               tuple(sorted(set(base["model"]))))


def table(er: EffectiveRobustness) -> Table:
    rows = [[m, readout.iv(iv, 1, 3, signed=True), str(iv.n),
             "yes" if m in er.fitted else "no"] for m, iv in er.per_model.items()]
    return Table(
        "effective_robustness",
        f"Effective robustness (Taori et al. 2020): each model's mean residual, in logits, from "
        f"the line logit({AFFNIST_STYLE.display}) = {er.intercept:.3f} + {er.slope:.3f} "
        "logit(clean) fitted on the cells of this run's ConvNets that trained (every n and "
        "seed; 'In the fit'); mean over "
        "each seed's sizes, Student-t interval over seeds. A secondary read-out, no verdict.",
        ["Model", "Mean residual (logit) [95% interval]", "Seeds", "In the fit"], rows, "lrrl",
        ["The line's own error is not in the intervals; the residuals of the models in the fit "
         "average to 0 together by construction, not each.", *_off_line_note(er)])


def _off_line_note(er: EffectiveRobustness) -> list[str]:
    """A note naming the models of the fit whose own interval excludes 0: the line then averages
    ConvNets with different trade-offs and is the trade-off of none of them."""
    def excludes_0(iv: stats.Interval) -> bool:  # at the table's 3 decimals
        return round(iv.low, 3) > 0 or round(iv.high, 3) < 0

    off = [m for m in er.fitted if m in er.per_model and excludes_0(er.per_model[m])]
    if not off:
        return []
    return [f"{len(off)} of the {len(er.fitted)} models in the fit lie off the line themselves "
            f"(interval excluding 0: {', '.join(off)}): the line averages different ConvNet "
            "trade-offs, so a residual measures the distance from that average, not from any one "
            "ConvNet."]


def figure(er: EffectiveRobustness, stem: str | os.PathLike) -> list[Path]:
    """Every cell on logit axes, coloured by model, and the line fitted on the ConvNets that trained."""
    c = er.cells
    with figures._style():
        fig = plt.figure(figsize=(figures.COLUMN_IN, figures.COLUMN_IN * 0.9),
                         layout="constrained")
        ax = fig.subplots()
        for m in er.per_model:
            sel = c["model"] == m
            ax.scatter(logit(c.loc[sel, "clean"]), logit(c.loc[sel, "other"]), s=10,
                       color=figures.model_color(m), alpha=0.8, linewidths=0, label=m)
        x = np.linspace(logit(c["clean"]).min(), logit(c["clean"]).max(), 50)
        ax.plot(x, er.intercept + er.slope * x, ls="--", lw=0.8, color="0.3",
                label="fit: ConvNets that trained")
        ax.set_xlabel("clean accuracy (logit)")
        ax.set_ylabel(f"{AFFNIST_STYLE.display} accuracy (logit)")
        ax.legend(fontsize=5.5, frameon=False)
        return figures.save(fig, stem)
