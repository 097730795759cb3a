"""The ladder figure of the report section "Component ladder" (:mod:`bench.report.ablation`).

Same conventions as :mod:`bench.report.figures` (its style, colours and byte-stable ``save``).
"""

from __future__ import annotations

import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench.report import figures

__all__ = ["ladder"]


def ladder(values: pd.DataFrame, stem: str | os.PathLike,
           quantity: str = "affnist_matched") -> pd.DataFrame:
    """Two panels, one row per ladder step (top to bottom in ladder order, labelled with the
    component it changes): affNIST-style
    accuracy at matched clean accuracy, step minus its neighbour (left) and step minus capsnet
    (right), mean with its 95% paired interval, in pp. ``values`` is
    :func:`bench.report.ablation.ladder_values`'s frame; ``quantity`` "affnist_same_n" draws the
    differences at each model's largest n instead (not matched). Writes ``<stem>.pdf`` and
    ``<stem>.png``.

    Returns:
        the points drawn: panel, model, label (its row's), estimate, low, high (pp), y (row, top = 0).
    """
    v = values[values["quantity"] == quantity]
    where = "" if quantity == "affnist_matched" else ", largest n, not matched"
    order = list(dict.fromkeys(values["model"]))
    component = dict(zip(values["model"], values["component"], strict=True))
    failed = (set(values.loc[values["model_failed"].astype(bool), "model"])
              if "model_failed" in values else set())
    neighbour = dict(zip(values["model"], values["neighbour"], strict=True))
    labels = []
    for i, m in enumerate(order):
        what = [component[m]] if component[m] else []
        if neighbour[m] and (i == 0 or order[i - 1] != neighbour[m]):
            what.append(f"vs {neighbour[m]}")  # a fork: the row above is not its neighbour
        labels.append(m + (f" ({', '.join(what)})" if what else "")
                      + (" [failed to train]" if m in failed else ""))
    panels = (("neighbour", f"step − neighbour (pp{where})"),
              ("capsnet", f"step − capsnet (pp{where})"))
    drawn = []
    with figures._style():
        fig = plt.figure(figsize=(figures.PAGE_IN, 0.7 + 0.26 * max(len(order), 1)),
                         layout="constrained")
        axes = fig.subplots(1, 2, sharey=True)
        for ax, (kind, label) in zip(axes, panels, strict=True):
            for y, m in enumerate(order):
                r = v[v["model"] == m]
                r = r[r["versus"] == (r["neighbour"] if kind == "neighbour" else "capsnet")]
                if r.empty or not np.isfinite(r["estimate"].iloc[0]):
                    continue
                est, low, high = (100 * float(r[c].iloc[0]) for c in ("estimate", "low", "high"))
                failed_pair = bool(r["failed"].iloc[0]) if "failed" in r else False
                color = "0.65" if failed_pair else figures.model_color(m)
                if np.isfinite(low) and np.isfinite(high):
                    ax.errorbar([est], [y], xerr=[[est - low], [high - est]], fmt="o",
                                color=color, ecolor=color, elinewidth=1.2, capsize=2.5,
                                markersize=3.5)
                else:
                    ax.plot([est], [y], "o", color=color, markersize=3.5)
                drawn.append({"panel": kind, "model": m, "label": labels[y], "estimate": est,
                              "low": low, "high": high, "y": float(y)})
            ax.axvline(0, ls="--", lw=0.7, color="0.4")
            ax.set_xlabel(label)
            ax.set_yticks(range(len(order)), labels)
            ax.set_ylim(len(order) - 0.5, -0.5)
            ax.grid(axis="x", lw=0.3, alpha=0.5)
        axes[0].set_title("step − neighbour" + ("" if not where else " (not matched)")
                          + "; grey: a failed step in the pair", loc="left", fontsize=7)
        axes[1].set_title("paired with the CapsNet", loc="left", fontsize=7)
        figures.save(fig, stem)
    return pd.DataFrame(drawn, columns=["panel", "model", "label", "estimate", "low", "high", "y"])
