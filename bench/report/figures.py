"""Paper figures: one function per figure, each writing ``<stem>.pdf`` and ``<stem>.png``.

Conventions shared by every figure, so that they can go into a paper unchanged:

- one colour per model everywhere (:data:`PALETTE`, colour-blind-safe Okabe-Ito colours, with
  a deterministic fallback for names it does not know);
- sized for one paper column (:data:`COLUMN_IN` = 3.4 in) or two (:data:`PAGE_IN` = 7.0 in),
  with constrained layout and the legend inside the figure (never cut off);
- TrueType fonts embedded (``pdf.fonttype`` = 42), no creation date in the PDF and fixed PNG
  metadata, so two builds of the same results are byte-identical files;
- bands are exactly the tables' intervals: :func:`bench.stats.mean_interval` of the per-seed
  values (95% Student t, clipped to [0, 100]%), computed by :func:`interval_bands`, with every
  seed drawn as a point (hollow where its cell did not converge); the functions that draw bands
  return the frame they drew, so a test can compare it with the tables.

Inputs are the tidy frames of the results schema (``metrics.csv``, ``confidences.parquet``,
``throughput.csv``) or the dict of tensors of ``examples.pt``; nothing here reads files. What a
test set is (sweep, scrambled, ...) and the order the sets are shown in come from
:func:`bench.data.testsets.set_kind`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import (
    FixedFormatter,
    FixedLocator,
    MaxNLocator,
    NullLocator,
    StrMethodFormatter,
)
from torchvision.utils import make_grid

from bench import stats
from bench.data.testsets import (
    AFFNIST_STYLE,
    CLEAN,
    display_name,
    find_set_kind,
    order_set_names,
    set_kind,
    sets_where,
)
from bench.io import atomic_path, stable_hash

__all__ = [
    "PALETTE",
    "COLUMN_IN",
    "PAGE_IN",
    "largest_n",
    "interval_bands",
    "model_color",
    "model_order",
    "save",
    "claims",
    "data_efficiency",
    "affnist_vs_clean",
    "sweeps",
    "confidence_scrambled",
    "throughput",
    "example_grid",
    "reconstructions",
]

COLUMN_IN = 3.4  # one column of a two-column paper (inches)
PAGE_IN = 7.0  # the full text width

# Okabe & Ito (2008) colour-blind-safe colours; CapsNet variants in blues/purples, ConvNets warm.
PALETTE: dict[str, str] = {
    "capsnet": "#0072B2",
    "capsnet-r1": "#56B4E9",
    "capsnet-r3-norecon": "#CC79A7",
    "capsnet-r1-norecon": "#882255",
    "baseline-cnn": "#D55E00",
    "convnet-maxpool": "#E69F00",
    "convnet-k9": "#009E73",
    # Gu et al.'s ConvNet (shares baseline-cnn's colour: no packaged profile draws both) and the
    # component ladder (bench/models/ladder.py), distinct among the ablation profile's 12 models:
    # Okabe-Ito and Paul Tol's muted colours; CapsNet steps cool, fully connected steps green/olive.
    "convnet-gu": "#D55E00",
    "capsnet-no-routing": "#56B4E9",
    "capsnet-shared-w": "#6699CC",
    "capsnet-no-squash": "#CC79A7",
    "capsnet-ce": "#882255",
    "capsnet-ce-no-recon": "#AA4499",
    "convnet-k9-squash": "#44BB99",
    "convnet-k9-margin": "#117733",
    "convnet-k9-recon": "#999933",
    "convnet-k9-avgpool": "#DDCC77",
    # The heads of bench/models/heads.py (the routing profile), distinct among themselves:
    # Okabe-Ito (and Tol green), pooling warm, routing cool. They share colours with the models
    # above, which a packaged profile never draws in the same figure.
    "head-maxpool": "#E69F00",
    "head-avgpool": "#D55E00",
    "head-fc": "#CC79A7",
    "head-dynamic": "#0072B2",
    "head-em": "#009E73",
    "head-self": "#56B4E9",
    "head-attention": "#117733",
}
_FALLBACK = ("#000000", "#7F7F7F", "#8C564B", "#BCBD22", "#17BECF", "#332288", "#44AA99")

# x-axis label of each sweep factor: the unit of params["value"] in the test sets.
FACTOR_LABELS = {
    "rotation": "rotation (degrees)",
    "scale": "scale (factor)",
    "shear": "shear",
    "translate": "translation (px)",
}

_RC: dict[str, Any] = {
    "pdf.fonttype": 42,  # TrueType (Type 42) fonts, not Type 3: journals ask for it
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "capsbench",  # fixed ids in SVG output
    "font.family": "DejaVu Sans",  # ships with matplotlib: the same glyphs on every machine
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.title_fontsize": 6,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "savefig.dpi": 300,
    "figure.dpi": 100,
}
# No dates; a fixed producer string; same for PNG (Agg writes "Software" only).
_PDF_METADATA = {"Creator": "capsbench", "Producer": "capsbench", "CreationDate": None,
                 "ModDate": None}
_PNG_METADATA = {"Software": "capsbench"}
# Verdict colours of the forest plot (Okabe-Ito): supported, contradicted, the rest grey.
VERDICT_COLORS = {"supported": "#009E73", "contradicted": "#D55E00"}
_NEUTRAL = "0.35"


# --------------------------------------------------------------------------------------------
# Shared helpers


def model_color(name: str) -> str:
    """The model's colour: fixed for known models, chosen by a stable hash for the others."""
    if name in PALETTE:
        return PALETTE[name]
    return _FALLBACK[int(stable_hash("colour", name), 16) % len(_FALLBACK)]


def model_order(models: Iterable[str]) -> list[str]:
    """Known models in :data:`PALETTE` order, then unknown ones alphabetically."""
    present = set(models)
    known = [m for m in PALETTE if m in present]
    return known + sorted(present - set(known))


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Seaborn's white-grid style with the paper rcParams, undone on exit."""
    with sns.axes_style("whitegrid"), plt.rc_context(_RC):
        yield


@contextlib.contextmanager
def _source_date_epoch() -> Iterator[None]:
    """Pin SOURCE_DATE_EPOCH while saving (matplotlib reads it for any date it would write)."""
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SOURCE_DATE_EPOCH", None)
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old


def save(fig: Figure, stem: str | os.PathLike) -> list[Path]:
    """Write ``<stem>.pdf`` and ``<stem>.png`` atomically and close the figure."""
    stem = Path(stem)
    paths = [stem.with_suffix(".pdf"), stem.with_suffix(".png")]
    try:
        with _source_date_epoch(), plt.rc_context(_RC):
            for path, meta in zip(paths, (_PDF_METADATA, _PNG_METADATA), strict=True):
                with atomic_path(path) as tmp:
                    fig.savefig(tmp, format=path.suffix[1:], metadata=meta)
    finally:
        plt.close(fig)
    return paths


def _model_legend(fig: Figure, models: Sequence[str], line: bool = True) -> None:
    handles = [Line2D([], [], color=model_color(m), marker="o", label=m,
                      linestyle="-" if line else "none") for m in models]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(models), 4),
               frameon=False, handlelength=1.5, columnspacing=1.2)


def _grid(n_panels: int, width: float, panel_h: float, max_cols: int) -> tuple[Figure, np.ndarray]:
    ncols = min(n_panels, max_cols)
    nrows = -(-n_panels // ncols)
    fig = plt.figure(figsize=(width, panel_h * nrows + 0.45), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def largest_n(df: pd.DataFrame) -> pd.DataFrame:
    """Rows at each model's largest training-set size (the headline operating point)."""
    n_max = df.groupby("model")["n"].transform("max")
    return df[df["n"] == n_max]


def _size_label(n: float) -> str:
    """100, 300, 1k, 3k, 60k: short tick labels for training-set sizes."""
    return f"{n / 1000:g}k" if n >= 1000 else f"{n:g}"


def _log_size_axis(ax: Any, sizes: Sequence[float]) -> None:
    """Log x axis with a tick at each training-set size of the sweep (no minor ticks)."""
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(list(sizes)))
    ax.xaxis.set_major_formatter(FixedFormatter([_size_label(n) for n in sizes]))
    ax.xaxis.set_minor_locator(NullLocator())


def _panel_title(test_set: str) -> str:
    kind = find_set_kind(test_set)
    if kind is not None and kind.scrambled:
        return f"{test_set} (original class kept)"
    return display_name(test_set)


# --------------------------------------------------------------------------------------------
# Figures from metrics.csv


def interval_bands(metrics: pd.DataFrame, by: Sequence[str] = ("model", "test_set", "n"),
                   bounds: tuple[float, float] | None = (0.0, 1.0)) -> pd.DataFrame:
    """The band of each group: :func:`bench.stats.mean_interval` of its per-seed values.

    ``metrics``: tidy rows (columns ``*by``, seed, value); several rows of one seed in a group
    are averaged first. Columns: ``*by, estimate, low, high, n_seeds, clipped``, in the units of
    ``value`` (fractions for accuracies); ``low``/``high`` are NaN for one seed. The report's
    tables call the same function on the same values, so a band is the printed interval.
    """
    rows = []
    for key, g in metrics.groupby(list(by), sort=True):
        per_seed = g.groupby("seed")["value"].mean()
        iv = stats.mean_interval(per_seed.to_numpy(dtype=float), bounds=bounds)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, iv.estimate, iv.low, iv.high, iv.n, iv.clipped))
    return pd.DataFrame(rows, columns=[*by, "estimate", "low", "high", "n_seeds", "clipped"])


def _draw_bands(ax: Any, bands: pd.DataFrame, points: pd.DataFrame, x: str,
                models: Sequence[str], hollow: Collection[tuple[str, float, int]] = ()
                ) -> list[tuple[str, float, int]]:
    """Mean line, interval band and per-seed points of each model, in percent.

    ``hollow``: (model, x, seed) of the points to draw hollow (cells that did not converge).
    Returns the (model, x, seed) of the points drawn hollow.
    """
    drawn: list[tuple[str, float, int]] = []
    for m in models:
        color = model_color(m)
        b = bands[bands["model"] == m].sort_values(x)
        if not b.empty:
            xs = b[x].to_numpy(dtype=float)
            ok = np.isfinite(b["low"].to_numpy(dtype=float))
            ax.fill_between(xs, 100 * b["low"].fillna(0).to_numpy(dtype=float),
                            100 * b["high"].fillna(0).to_numpy(dtype=float), where=ok,
                            color=color, alpha=0.18, linewidth=0, zorder=1)
            ax.plot(xs, 100 * b["estimate"].to_numpy(dtype=float), color=color, zorder=3)
        p = points[points["model"] == m]
        if p.empty:
            continue
        is_hollow = np.array([(m, float(v), int(s)) in hollow
                              for v, s in zip(p[x], p["seed"], strict=True)], dtype=bool)
        drawn += [(m, float(v), int(sd)) for v, sd, h in
                  zip(p[x], p["seed"], is_hollow, strict=True) if h]
        px, py = p[x].to_numpy(dtype=float), 100 * p["value"].to_numpy(dtype=float)
        ax.scatter(px[~is_hollow], py[~is_hollow], s=5, color=color, alpha=0.6,
                   linewidths=0, zorder=4)
        ax.scatter(px[is_hollow], py[is_hollow], s=9, facecolors="none", edgecolors=color,
                   linewidths=0.7, zorder=5)
    return drawn


def _hollow_legend(fig: Figure, models: Sequence[str], hollow: bool, ncol: int = 5) -> None:
    handles = [Line2D([], [], color=model_color(m), marker="o", markersize=2.5, label=m)
               for m in models]
    if hollow:
        handles.append(Line2D([], [], color="0.3", marker="o", markerfacecolor="none",
                              linestyle="none", label="not converged"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), ncol),
               frameon=False, handlelength=1.5, columnspacing=1.2)


def data_efficiency(metrics: pd.DataFrame, stem: str | os.PathLike, *,
                    test_sets: Sequence[str] | None = None,
                    not_converged: Collection[tuple[str, int, int]] = ()) -> pd.DataFrame:
    """Accuracy against training-set size (log x), one panel per test set.

    ``metrics``: tidy rows of one setup (columns model, n, seed, test_set, factor_value, metric,
    value); the ``accuracy`` rows of the test sets other than sweeps and adversarial sets are
    drawn (those have figures of their own): the mean
    over seeds, its 95% interval as the band (:func:`interval_bands`, the tables' interval) and
    one point per seed, hollow for the cells (model, n, seed) in ``not_converged``.

    Returns:
        the bands drawn (:func:`interval_bands` by model, test_set, n; fractions), with
        ``attrs["hollow"]``: the (model, test_set, n, seed) of the points drawn hollow.
    """
    d = metrics[(metrics["metric"] == "accuracy") & metrics["factor_value"].isna()]
    if test_sets is None:
        names = d["test_set"].unique()
        # sweeps have their own figure, and so do the adversarial sets (bench.report.adversarial)
        sweep_sets = set(sets_where(names, lambda k: k.family in ("sweep", "adversarial")))
        test_sets = [t for t in order_set_names(names) if t not in sweep_sets]
    d = d[d["test_set"].isin(list(test_sets))]
    bands = interval_bands(d, ("model", "test_set", "n"))
    models = model_order(d["model"])
    sizes = sorted(set(d["n"]))
    hollow = {(m, float(n), int(s)) for m, n, s in not_converged}
    drawn: list[tuple[str, str, int, int]] = []
    with _style():
        fig, axes = _grid(len(test_sets), PAGE_IN, 1.7, 3)
        for ax, ts in zip(axes, test_sets, strict=False):
            drawn += [(m, ts, int(n), sd) for m, n, sd in _draw_bands(
                ax, bands[bands["test_set"] == ts], d[d["test_set"] == ts], "n", models, hollow)]
            _log_size_axis(ax, sizes)
            ax.set_title(_panel_title(ts))
            ax.set_xlabel("training images n")
            ax.set_ylabel("accuracy (%)")
        _hollow_legend(fig, models, bool(drawn))
        save(fig, stem)
    bands.attrs["hollow"] = sorted(drawn)
    return bands


def affnist_vs_clean(metrics: pd.DataFrame, stem: str | os.PathLike,
                     other: str = AFFNIST_STYLE.name, *,
                     not_converged: Collection[tuple[str, int, int]] = (),
                     c_star: float | None = None) -> list[Path]:
    """affNIST-style accuracy against clean accuracy: one point per cell (model, n, seed).

    The paper's claim (Sabour et al. 2017, Sec. 5.2) compares models at *equal clean accuracy*;
    this plot shows that comparison for every training size at once. Marker area grows with n;
    the dashed line is y = x, the dotted vertical line the matched clean accuracy ``c_star``
    (a fraction) when given; cells in ``not_converged`` (model, n, seed) are hollow.
    """
    clean = CLEAN.name
    d = metrics[(metrics["metric"] == "accuracy") & metrics["test_set"].isin([clean, other])
                & metrics["factor_value"].isna()]
    wide = d.pivot_table(index=["model", "n", "seed"], columns="test_set", values="value")
    wide = wide.dropna().reset_index()
    models = model_order(wide["model"])
    sizes = np.log10(wide["n"].to_numpy(dtype=float))
    lo, hi = sizes.min(), sizes.max()
    area = 6 + 24 * (sizes - lo) / (hi - lo) if hi > lo else np.full_like(sizes, 15)
    hollow_keys = {(m, int(n), int(s)) for m, n, s in not_converged}
    hollow = np.array([(m, int(n), int(s)) in hollow_keys
                       for m, n, s in zip(wide["model"], wide["n"], wide["seed"], strict=True)],
                      dtype=bool)
    with _style():
        fig = plt.figure(figsize=(COLUMN_IN, COLUMN_IN * 0.9), layout="constrained")
        ax = fig.subplots()
        for m in models:
            sel = (wide["model"] == m).to_numpy()
            for h in (False, True):
                k = sel & (hollow == h)
                if not k.any():
                    continue
                style = (dict(facecolors="none", edgecolors=model_color(m), linewidths=0.7)
                         if h else dict(color=model_color(m), alpha=0.8, linewidths=0))
                ax.scatter(100 * wide.loc[k, clean], 100 * wide.loc[k, other], s=area[k],
                           **style)
        lim = [100 * min(wide[clean].min(), wide[other].min()) - 2, 100.5]
        ax.plot(lim, lim, ls="--", lw=0.6, color="0.5")
        if c_star is not None and np.isfinite(c_star):
            ax.axvline(100 * c_star, ls=":", lw=0.8, color="0.3")
            ax.text(100 * c_star, lim[0] + 0.02 * (lim[1] - lim[0]), f" c* = {100 * c_star:.1f}%",
                    fontsize=5.5, color="0.3", ha="left", va="bottom")
        ax.set_xlim(lim)
        ax.set_ylim(lim)
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel(f"{display_name(other)} accuracy (%)")
        _hollow_legend(fig, models, bool(hollow.any()), ncol=3)
        return save(fig, stem)


def sweeps(metrics: pd.DataFrame, stem: str | os.PathLike, *,
           not_converged: Collection[tuple[str, int, int]] = ()) -> pd.DataFrame:
    """Accuracy against the magnitude of one transformation, one panel per factor.

    Rows of the sweep sets (``sweep-<factor>``), each model at its largest n: mean over seeds
    with its 95% interval (:func:`interval_bands`) and one point per seed, hollow for the cells
    (model, n, seed) in ``not_converged``. Drawn: metric ``accuracy_fits`` (only the digits
    whose ink stays on the canvas) when the rows have it, else ``accuracy`` (every digit);
    ``attrs["metric"]`` says which. Where some digits are cropped (metric
    ``cropped_fraction``), a grey dashed line on the right axis gives the percentage cropped.

    Returns:
        the bands drawn (by model, test_set, factor_value; fractions), with ``attrs["metric"]``
        and ``attrs["hollow"]``: the (model, test_set, factor_value, seed) drawn hollow.
    """
    sweep_sets = sets_where(metrics["test_set"].unique(), lambda k: k.family == "sweep")
    rows = metrics[metrics["test_set"].isin(sweep_sets) & metrics["factor_value"].notna()]
    metric = "accuracy_fits" if (rows["metric"] == "accuracy_fits").any() else "accuracy"
    d = largest_n(rows[rows["metric"] == metric].dropna(subset=["value"]))
    cropped = rows[rows["metric"] == "cropped_fraction"]
    bands = interval_bands(d, ("model", "test_set", "factor_value"))
    sets = order_set_names(d["test_set"])
    models = model_order(d["model"])
    bad = {(m, int(n), int(s)) for m, n, s in not_converged}
    hollow = {(m, float(v), int(s)) for m, n, v, s in
              zip(d["model"], d["n"], d["factor_value"], d["seed"], strict=True)
              if (m, int(n), int(s)) in bad}
    drawn: list[tuple[str, str, float, int]] = []
    with _style():
        fig, axes = _grid(len(sets), PAGE_IN, 1.8, 4)
        for ax, ts in zip(axes, sets, strict=False):
            drawn += [(m, ts, v, sd) for m, v, sd in _draw_bands(
                ax, bands[bands["test_set"] == ts], d[d["test_set"] == ts], "factor_value",
                models, hollow)]
            factor = set_kind(ts).factor
            ax.set_xlabel(FACTOR_LABELS.get(factor, factor))
            ax.set_ylabel("accuracy, digits that fit (%)" if metric == "accuracy_fits"
                          else "accuracy (%)")
            ax.set_title(display_name(ts))
            # The same digits and transforms for every cell: any cell's rows give the fraction.
            c = cropped[cropped["test_set"] == ts].groupby("factor_value")["value"].mean()
            if (c > 0).any():
                twin = ax.twinx()
                twin.plot(c.index.to_numpy(dtype=float), 100 * c.to_numpy(dtype=float),
                          ls="--", lw=0.8, color="0.45", marker="x", markersize=2.5)
                twin.set_ylim(0, 100)
                twin.set_ylabel("cropped (%)", color="0.45")
                twin.tick_params(axis="y", colors="0.45")
                twin.grid(False)
        _hollow_legend(fig, models, bool(drawn))
        save(fig, stem)
    bands.attrs["metric"] = metric
    bands.attrs["hollow"] = sorted(drawn)
    return bands


def _ratio_ticks(lo: float, hi: float) -> list[float]:
    """Round ticks inside [lo, hi] for a log ratio axis: the finest of the mantissa sets
    (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9), (1, 1.5, 2, 3, 5, 7), (1, 2, 5), (1,)
    that gives at most 8 ticks; when that gives fewer than 3, evenly spaced round ticks
    (:class:`matplotlib.ticker.MaxNLocator`), so that a narrow range still gets labels."""
    candidates = ((1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 4, 5, 6, 7, 8, 9), (1, 1.5, 2, 3, 5, 7),
                  (1, 2, 5), (1,))
    ticks: list[float] = []
    for subs in candidates:
        ticks = [float(f"{m * 10.0 ** k:.6g}") for k in range(-4, 5) for m in subs]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) <= 8:
            break
    if len(ticks) < 3 and hi > lo:
        ticks = [float(f"{t:.6g}") for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10])
                 .tick_values(lo, hi) if lo <= t <= hi]
    return ticks


def claims(board: pd.DataFrame, stem: str | os.PathLike) -> pd.DataFrame:
    """The claims scoreboard as a forest plot: one panel per claim, its effect and 95% interval.

    ``board``: one row per claim with columns claim, effect, unit (``"pp"``, ``"AUROC"`` or
    ``"ratio"``), estimate, low, high (in that unit; NaN when not measured or without an
    interval), null (no effect: 0, or 1 for a ratio, drawn dashed), verdict and note (why it was
    not measured), and optionally above and below: what an effect on that side of no effect
    means (e.g. "capsnet better"), written with an arrow in the panel's lower right and left
    corners, because each claim has its own sign convention. Each panel has its own x axis,
    because the effects have different units; a ratio is drawn on a log axis. The point and
    interval are coloured by the verdict.

    Returns:
        ``board`` with the x limits drawn (columns ``xmin``, ``xmax``).
    """
    board = board.reset_index(drop=True).copy()
    board["xmin"], board["xmax"] = math.nan, math.nan
    n = max(len(board), 1)
    with _style():
        fig = plt.figure(figsize=(PAGE_IN, 0.25 + 0.72 * n), layout="constrained")
        axes = np.atleast_1d(fig.subplots(n, 1, squeeze=False).ravel())
        for i, (ax, row) in enumerate(zip(axes, board.itertuples(), strict=False)):
            title = f"{row.claim}: {row.effect}"
            # Our choice: a title longer than 125 characters is set smaller, to fit the width.
            ax.set_title(title, loc="left", fontsize=6.5 * min(1.0, 125 / len(title)))
            est, low, high, null = row.estimate, row.low, row.high, row.null
            if not np.isfinite(est):
                ax.text(0.5, 0.5, row.note or "not measured", transform=ax.transAxes,
                        ha="center", va="center", fontsize=6, color=_NEUTRAL)
                ax.set_axis_off()
                continue
            color = VERDICT_COLORS.get(row.verdict, _NEUTRAL)
            has_iv = bool(np.isfinite(low) and np.isfinite(high))
            log = row.unit == "ratio"
            values = [v for v in (est, low, high, null) if np.isfinite(v)]
            xmin, xmax = min(values), max(values)
            if log:
                pad = (xmax / xmin) ** 0.15 if xmax > xmin else 1.5
                xmin, xmax = xmin / pad, xmax * pad
            else:
                pad = 0.15 * (xmax - xmin) if xmax > xmin else 1.0
                xmin, xmax = xmin - pad, xmax + pad
            ax.axvline(null, ls="--", lw=0.7, color="0.4", zorder=1)
            if has_iv:
                ax.errorbar([est], [0], xerr=[[est - low], [high - est]], fmt="o", color=color,
                            ecolor=color, elinewidth=1.4, capsize=3, markersize=4, zorder=3)
            else:
                ax.plot([est], [0], "o", color=color, markersize=4, zorder=3)
            text = row.verdict + ("" if has_iv else " (no interval: one seed)")
            holm = str(getattr(row, "holm_verdict", "") or "")
            if holm and holm != "nan" and holm != row.verdict and not holm.startswith("—"):
                text += f" (Holm: {holm})"
            ax.text(0.995, 0.9, text, transform=ax.transAxes, ha="right", va="top",
                    fontsize=6, color=color, fontweight="bold")
            # Which model each side of no effect favours: the sign conventions differ by claim.
            for x, ha, side in ((0.005, "left", "below"), (0.995, "right", "above")):
                label = str(getattr(row, side, "") or "")
                if label and label != "nan":
                    arrow = f"← {label}" if side == "below" else f"{label} →"
                    ax.text(x, 0.06, arrow, transform=ax.transAxes, ha=ha, va="bottom",
                            fontsize=5.5, color="0.35", zorder=4,
                            bbox=dict(facecolor="white", edgecolor="none", alpha=0.85, pad=0.6))
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(FixedLocator(_ratio_ticks(xmin, xmax)))
                ax.xaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
                ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(xmin, xmax)
            ax.set_ylim(-1, 1)
            ax.set_yticks([])
            ax.grid(axis="y", visible=False)
            ax.set_xlabel({"pp": "difference (percentage points)",
                           "AUROC": "difference of AUROC",
                           "ratio": "ratio (log scale)"}.get(row.unit, row.unit), labelpad=1)
            board.loc[i, ["xmin", "xmax"]] = [xmin, xmax]
        save(fig, stem)
    return board


# --------------------------------------------------------------------------------------------
def reliability_bins(metrics: pd.DataFrame, tag: str) -> pd.DataFrame:
    """Per (model, bin) of the clean set at each model's largest n, seeds pooled: the total
    ``count`` and the count-weighted ``accuracy`` and ``confidence`` of the
    ``reliability_{tag}_*`` rows (``tag`` "raw" or "cal"); ``factor_value`` is the bin's upper
    edge. Empty bins are dropped."""
    names = {f"reliability_{tag}_{k}": k for k in ("count", "accuracy", "confidence")}
    d = metrics[metrics["metric"].isin(list(names)) & (metrics["test_set"] == CLEAN.name)]
    d = largest_n(d)
    wide = d.pivot_table(index=["model", "seed", "factor_value"], columns="metric",
                         values="value", aggfunc="first").rename(columns=names).reset_index()
    wide = wide[wide["count"] > 0]
    wide["hits"] = wide["accuracy"] * wide["count"]
    wide["conf_sum"] = wide["confidence"] * wide["count"]
    g = wide.groupby(["model", "factor_value"], as_index=False)[["count", "hits", "conf_sum"]].sum()
    g["accuracy"] = g["hits"] / g["count"]
    g["confidence"] = g["conf_sum"] / g["count"]
    return g[["model", "factor_value", "count", "accuracy", "confidence"]]


def reliability(metrics: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Reliability diagram of the clean set: accuracy against mean confidence per bin (15
    equal-width bins), before (raw max score) and after temperature scaling, one line per model
    at its largest n, seeds pooled; marker area grows with the bin's count; dashed: y = x."""
    with _style():
        fig, axes = plt.subplots(1, 2, figsize=(PAGE_IN, 0.5 * PAGE_IN), layout="constrained",
                                 sharey=True)
        models: list[str] = []
        for ax, tag, title in zip(axes, ("raw", "cal"), ("raw max score",
                                                          "after temperature scaling"),
                                  strict=True):
            b = reliability_bins(metrics, tag)
            models = model_order(set(models) | set(b["model"]))
            ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=0.8)
            for m in model_order(b["model"]):
                r = b[b["model"] == m].sort_values("factor_value")
                ax.plot(r["confidence"], r["accuracy"], color=model_color(m), lw=1.0)
                ax.scatter(r["confidence"], r["accuracy"], color=model_color(m),
                           s=8 + 40 * r["count"] / max(float(b["count"].max()), 1.0), zorder=3)
            ax.set_xlim(0, 1.02)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel("mean confidence in bin")
            ax.set_title(title)
        axes[0].set_ylabel("accuracy in bin")
        _model_legend(fig, models)
        return save(fig, stem)


# Figures from confidences.parquet and throughput.csv


def confidence_scrambled(confidences: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Confidence on perturbed digits against the same digits intact, per model (split violins).

    ``confidences``: rows of one setup with columns model, n, seed, test_set, confidence, intact;
    for each perturbed set (``scramble-*``, ``displaced``) the rows with ``intact`` True are the
    intact counterparts. Each model at its largest n, seeds pooled; violins cut at the data range.
    The scores are raw (capsule length, softmax maximum or a head's class activation): each
    model's two halves are compared with each other only, never across families.
    """
    scrambled = sets_where(confidences["test_set"].unique(), lambda k: k.scrambled)
    d = confidences[confidences["test_set"].isin(scrambled)]
    d = largest_n(d).copy()
    d["digit"] = np.where(d["intact"].astype(bool), "intact", "perturbed")
    sets = order_set_names(d["test_set"])
    models = model_order(d["model"])
    with _style():
        fig, axes = _grid(len(sets), PAGE_IN, 1.9, 3)
        for ax, ts in zip(axes, sets, strict=False):
            sns.violinplot(data=d[d["test_set"] == ts], x="model", y="confidence", hue="digit",
                           order=models, hue_order=["intact", "perturbed"],
                           palette={"intact": "0.75", "perturbed": "#0072B2"}, split=True,
                           inner="quart", cut=0, density_norm="width", linewidth=0.5,
                           legend=False, ax=ax)
            ax.set_title(ts)
            ax.set_xlabel("")
            ax.set_ylim(0, 1.02)
            ax.tick_params(axis="x", labelrotation=30)
            for label in ax.get_xticklabels():
                label.set_horizontalalignment("right")
        handles = [plt.Rectangle((0, 0), 1, 1, color=c, label=k)
                   for k, c in (("intact digit", "0.75"), ("perturbed digit", "#0072B2"))]
        fig.legend(handles=handles, loc="outside lower center", ncol=2, frameon=False)
        return save(fig, stem)


def throughput(table: pd.DataFrame, stem: str | os.PathLike) -> list[Path]:
    """Training and inference images/s per model (horizontal bars, value printed on each).

    ``table``: the ``kind == "model"`` rows of ``throughput.csv`` for one (device, input size,
    batch) configuration; several rows per model are averaged.
    """
    d = table.melt(id_vars=["model"], value_vars=["train_images_per_s", "infer_images_per_s"],
                   var_name="phase", value_name="images/s").dropna()
    d["phase"] = d["phase"].map({"train_images_per_s": "training",
                                 "infer_images_per_s": "inference"})
    d = d.groupby(["phase", "model"], as_index=False)["images/s"].mean()
    models = model_order(d["model"])
    phases = [p for p in ("training", "inference") if p in set(d["phase"])]
    with _style():
        fig = plt.figure(figsize=(PAGE_IN, 0.35 + 0.28 * len(models)), layout="constrained")
        axes = np.atleast_1d(fig.subplots(1, len(phases), squeeze=False).ravel())
        for ax, phase in zip(axes, phases, strict=True):
            p = d[d["phase"] == phase].set_index("model").reindex(models)
            ax.barh(range(len(models)), p["images/s"], color=[model_color(m) for m in models])
            ax.set_yticks(range(len(models)), models if ax is axes[0] else [""] * len(models))
            ax.invert_yaxis()
            ax.set_title(f"{phase} (images/s)")
            top = float(np.nanmax(p["images/s"]))
            ax.set_xlim(0, top * 1.25)
            for i, v in enumerate(p["images/s"]):
                if np.isfinite(v):
                    ax.text(v + top * 0.01, i, f"{v:,.0f}", va="center", fontsize=6)
            ax.grid(axis="y", visible=False)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        config = [f"{label}: {', '.join(sorted(set(table[c].astype(str))))}"
                  for c, label in (("device_name", "device"), ("input_size", "input px"),
                                   ("batch", "batch")) if c in table.columns]
        if config:
            fig.suptitle("; ".join(config), fontsize=6, color="0.3")
        return save(fig, stem)


# --------------------------------------------------------------------------------------------
# Image grids from examples.pt


def _to_numpy(t: Any) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().to("cpu").float().numpy()
    return np.asarray(t, dtype=np.float32)


def _as_images(t: Any, k: int, scale: float) -> np.ndarray:
    """(K, H, W) floats in [0, 1] from (K, H, W) or flat (K, H*W) square images."""
    a = _to_numpy(t)[:k] / scale
    if a.ndim == 2:  # a decoder's flat output (B, H*W)
        side = int(round(math.sqrt(a.shape[1])))
        a = a.reshape(a.shape[0], side, side)
    return np.clip(a.reshape(a.shape[0], a.shape[-2], a.shape[-1]), 0.0, 1.0)


def _montage(fig: Figure, rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]],
             k: int, gap: int = 2) -> None:
    """One row of up to ``k`` greyscale tiles per entry (row label, images (K,H,W), labels:
    class numbers or short strings).

    Drawn as a single image on one axes (one embedded bitmap, fast and small): the tiles laid
    out by ``torchvision.utils.make_grid`` with white gaps (its outer border cut off), a smaller
    image centred in its tile and a short row filled with white; row labels as y tick labels,
    the class label in each tile's corner.
    """

    h = max(images.shape[1] for _, images, _ in rows)
    w = max(images.shape[2] for _, images, _ in rows)
    tiles = torch.ones((len(rows) * k, 1, h, w))
    for r, (_, images, _) in enumerate(rows):
        for c, img in enumerate(images[:k]):
            y0, x0 = (h - img.shape[0]) // 2, (w - img.shape[1]) // 2
            tiles[r * k + c, 0, y0:y0 + img.shape[0], x0:x0 + img.shape[1]] = torch.from_numpy(img)
    grid = make_grid(tiles, nrow=k, padding=gap, pad_value=1.0)[0]  # (3, H, W): one channel
    canvas = grid[gap:gap + len(rows) * (h + gap) - gap, gap:gap + k * (w + gap) - gap].numpy()
    ax = fig.subplots()
    for r, (_, images, labels) in enumerate(rows):
        if labels is not None:
            for c in range(min(k, len(images))):
                text = labels[c] if isinstance(labels[c], str) else str(int(labels[c]))
                ax.text(c * (w + gap) + 1, r * (h + gap) + 1, text,
                        color="#FFD54F", fontsize=5, ha="left", va="top")
    ax.imshow(canvas, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([r * (h + gap) + h / 2 for r in range(len(rows))], [n for n, _, _ in rows])
    ax.tick_params(axis="y", length=0, labelsize=6)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)


def _grid_figure(rows: Sequence[tuple[str, np.ndarray, np.ndarray | None]], k: int) -> Figure:
    label_in = 1.0  # room for the row labels
    tile_in = (PAGE_IN - label_in) / k
    fig = plt.figure(figsize=(PAGE_IN, tile_in * len(rows) + 0.1))
    fig.subplots_adjust(left=label_in / PAGE_IN, right=0.995, top=0.995, bottom=0.005)
    _montage(fig, rows, k)
    return fig


def example_grid(examples: Mapping[str, Any], stem: str | os.PathLike, k: int = 8) -> list[Path]:
    """The first ``k`` images of each test set (``images/<set>``), class label in the corner."""
    sets = order_set_names(key.split("/", 1)[1] for key in examples if key.startswith("images/"))
    rows = []
    for ts in sets:
        labels = examples.get(f"labels/{ts}")
        rows.append((display_name(ts), _as_images(examples[f"images/{ts}"], k, 255.0),
                     None if labels is None else _to_numpy(labels)[:k]))
    with _style():
        return save(_grid_figure(rows, k), stem)


def reconstructions(examples: Mapping[str, Any], stem: str | os.PathLike,
                    k: int = 8) -> list[Path]:
    """CapsNet reconstructions (``recon/<set>``) under each input (``images/<set>``).

    Two rows per test set: the input, then the decoder's reconstruction from the winning capsule
    (Sabour et al. 2017, Sec. 4.1). On scrambled digits a good part-whole model should
    reconstruct the *intact* digit it believes in, not the scrambled input.
    """
    sets = order_set_names(key.split("/", 1)[1] for key in examples if key.startswith("recon/"))
    rows = []
    for ts in sets:
        if f"images/{ts}" in examples:
            rows.append((f"{display_name(ts)}\ninput", _as_images(examples[f"images/{ts}"], k,
                                                                   255.0), None))
        rows.append((f"{display_name(ts)}\nreconstruction",
                     _as_images(examples[f"recon/{ts}"], k, 1.0), None))
    with _style():
        return save(_grid_figure(rows, k), stem)
