"""Read-outs of a run's metrics, shared by the report and its routing section.

The input is the frame of ``metrics.csv`` (columns model, n, seed, test_set, factor_value,
metric, value; :func:`bench.report.read.read_metrics`), usually the rows of one setup. This module
gives the one definition of

- the per-seed read-outs: :func:`rows` (the rows of a cell that are not a sweep point),
  :func:`by_seed`, :func:`wide` (seeds x sizes), :func:`curves` and :func:`curve_sizes` (clean
  against another accuracy along increasing n), :func:`c_star` (the matched clean accuracy),
  :func:`matched` (each seed's accuracy read at it), :func:`needed` (the training-set size at
  which clean accuracy first reaches a target) and :func:`smallest_scramble`;
- the report's number formats: :func:`fixed`, :func:`iv` ("estimate [low, high]", ``†`` when
  clipped, "(all seeds equal)" for zero width), :func:`integer`, :func:`iv_int`,
  :func:`needed_text` (``‡`` or ≤ for a size that is only an upper bound) and :func:`n_range`,
  with their symbols.

:mod:`bench.report` and :mod:`bench.report.routing` both import it; it imports only
:mod:`bench.stats`, :mod:`bench.data.testsets`, numpy and pandas (the import-linter contract in
pyproject.toml keeps it below both).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import stats
from bench.data.testsets import AFFNIST_STYLE, CLEAN, find_set_kind
from bench.stats import Interval

__all__ = [
    "CLIPPED",
    "BOUNDED",
    "MINUS",
    "NOT_MEASURED",
    "ALL_EQUAL",
    "PART_SCORE",
    "Curves",
    "Needed",
    "rows",
    "by_seed",
    "wide",
    "curves",
    "curve_sizes",
    "c_star",
    "matched",
    "needed",
    "smallest_scramble",
    "fixed",
    "iv",
    "integer",
    "iv_int",
    "needed_text",
    "n_range",
]

CLIPPED = "†"  # an interval clipped to the metric's range
BOUNDED = "‡"  # a size that is only an upper bound (target reached at the smallest n)
MINUS = "−"
NOT_MEASURED = "not measured"
# An interval of zero width: every seed gave the same value (the t interval collapses to it).
ALL_EQUAL = "(all seeds equal)"

# The part-arrangement score of claim C3 and of the routing table: the AUROC of telling intact
# from scrambled digits by a label-free feature-density score, defined the same way for every
# family (see bench.report.scoreboard.SCOREBOARD_RULES).
PART_SCORE = "auroc_mahalanobis"

Curves = dict[int, tuple[np.ndarray, np.ndarray]]  # seed -> (clean, other) in increasing n


# --------------------------------------------------------------------------------------------
# Per-seed values and curves


def rows(d: pd.DataFrame, model: str | None = None, test_set: str | None = None,
         metric: str | None = None, n: int | None = None) -> pd.DataFrame:
    """The rows of ``d`` without a factor value (not a sweep point) that match every argument
    given (None: any)."""
    sel = d["factor_value"].isna()
    for col, want in (("model", model), ("test_set", test_set), ("metric", metric), ("n", n)):
        if want is not None:
            sel &= d[col] == want
    return d[sel]


def by_seed(d: pd.DataFrame) -> dict[int, float]:
    """{seed: value} of the rows of one cell per seed (several rows of a seed averaged; a missing
    value is left out)."""
    s = d.groupby("seed")["value"].mean()
    return {int(k): float(v) for k, v in s.items() if np.isfinite(v)}


def wide(main: pd.DataFrame, model: str, test_set: str, metric: str = "accuracy") -> pd.DataFrame:
    """Seeds x sizes (increasing) of one model's metric on one test set; empty when absent."""
    sel = rows(main, model, test_set, metric)
    if sel.empty:
        return pd.DataFrame()
    return sel.pivot_table(index="seed", columns="n", values="value",
                           aggfunc="mean").sort_index(axis=1)


def _clean_and_other(main: pd.DataFrame, model: str,
                     other: str) -> tuple[pd.DataFrame, pd.DataFrame, list[int]]:
    c, o = wide(main, model, CLEAN.name), wide(main, model, other)
    if c.empty or o.empty:
        return c, o, []
    return c, o, [int(n) for n in sorted(set(c.columns) & set(o.columns))]


def curves(main: pd.DataFrame, model: str, other: str = AFFNIST_STYLE.name) -> Curves:
    """Per seed, the (clean, ``other``) accuracies of ``model`` along increasing n, at the sizes
    that have both (:func:`curve_sizes`; points with a NaN dropped); seeds without a point are
    left out."""
    c, o, sizes = _clean_and_other(main, model, other)
    out: Curves = {}
    if not sizes:
        return out
    for seed in sorted(set(c.index) & set(o.index)):
        cv = c.loc[seed, sizes].to_numpy(dtype=float)
        ov = o.loc[seed, sizes].to_numpy(dtype=float)
        keep = np.isfinite(cv) & np.isfinite(ov)
        if keep.any():
            out[int(seed)] = (cv[keep], ov[keep])
    return out


def curve_sizes(main: pd.DataFrame, model: str, other: str = AFFNIST_STYLE.name) -> list[int]:
    """The sizes (increasing) at which ``model`` has both a clean and an ``other`` accuracy: the
    sizes :func:`curves` reads along."""
    return _clean_and_other(main, model, other)[2]


def c_star(per_model: Iterable[Curves]) -> float | None:
    """The highest clean accuracy that every curve reaches (the lowest of the per-seed maxima),
    or None when it lies below some curve's lowest point (the ranges do not all overlap) or there
    is no curve."""
    tops, bottoms = [], []
    for per_seed in per_model:
        for clean, _ in per_seed.values():
            tops.append(float(clean.max()))
            bottoms.append(float(clean.min()))
    if not tops:
        return None
    c = min(tops)
    return c if c >= max(bottoms) else None


def matched(per_seed: Curves, at: float) -> dict[int, float | None]:
    """Per seed, the other accuracy read at clean accuracy ``at``
    (:func:`bench.stats.matched_accuracy`: linear interpolation between sizes)."""
    return {s: stats.matched_accuracy(c, o, at) for s, (c, o) in per_seed.items()}


@dataclass
class Needed:
    """Per seed, the training-set size at which clean accuracy first reaches a target (None:
    never)."""

    values: dict[int, float | None]
    at_first: set[int]  # seeds that reached it at the smallest n (the size is an upper bound)
    sizes: tuple[float, float] | None = None  # the smallest and largest n trained

    @property
    def missing(self) -> int:
        return sum(v is None for v in self.values.values())

    def subset(self, seeds: Iterable[int]) -> Needed:
        seeds = set(seeds)
        return Needed({s: v for s, v in self.values.items() if s in seeds},
                      self.at_first & seeds, self.sizes)


def needed(main: pd.DataFrame, model: str, target: float) -> Needed:
    """Per seed of ``model``, the n at which its clean accuracy first reaches ``target``
    (:func:`bench.stats.n_to_target`: linear in log n from the size before)."""
    c = wide(main, model, CLEAN.name)
    values: dict[int, float | None] = {}
    at_first: set[int] = set()
    trained = c.columns.to_numpy(dtype=float)
    sizes = (float(trained.min()), float(trained.max())) if trained.size else None
    for seed in c.index:
        row = c.loc[seed]
        row = row[np.isfinite(row.to_numpy(dtype=float))]
        if row.empty:
            continue
        acc = row.to_numpy(dtype=float)
        values[int(seed)] = stats.n_to_target(row.index.to_numpy(dtype=float), acc, target)
        if acc[0] >= target:
            at_first.add(int(seed))
    return Needed(values, at_first, sizes)


def smallest_scramble(test_sets: Iterable[str]) -> str | None:
    """The scrambled set with the smallest grid (``scramble-g2`` before ``scramble-g3``)."""
    kinds = [k for k in (find_set_kind(t) for t in set(test_sets))
             if k is not None and k.family == "scramble" and k.grid]
    return min(kinds, key=lambda k: k.grid).name if kinds else None


# --------------------------------------------------------------------------------------------
# Number formatting


def fixed(x: float, digits: int) -> str:
    """``x`` with ``digits`` decimals, never "-0.00"."""
    text = f"{x:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _signed(x: float, digits: int) -> str:
    text = fixed(x, digits)
    return text if text.startswith("-") or float(text) == 0 else "+" + text


def _zero_width(interval: Interval) -> bool:
    """Low and high equal up to floating-point rounding: the mean of equal per-seed values can
    differ from them in the last bit, which leaves a width of about 1e-16, not exactly 0. Our
    choice: a width within 1e-9 of the bounds' size (or 1e-12) counts as zero."""
    return math.isclose(interval.low, interval.high, rel_tol=1e-9, abs_tol=1e-12)


def iv(interval: Interval | None, scale: float = 1.0, digits: int = 2, *, signed: bool = False,
       unit: str = "") -> str:
    """"estimate [low, high]" (``†`` when clipped), "estimate (all seeds equal)" for an interval
    of zero width, the estimate alone without an interval, or an em dash without an estimate;
    ``signed`` puts "+" before a positive estimate."""
    if interval is None or not np.isfinite(interval.estimate):
        return "—"
    text = (_signed if signed else fixed)(interval.estimate * scale, digits)
    if np.isfinite(interval.low) and np.isfinite(interval.high):
        if _zero_width(interval):
            return f"{text}{unit} {ALL_EQUAL}"
        text += f" [{fixed(interval.low * scale, digits)}, {fixed(interval.high * scale, digits)}]"
    return text + unit + (CLIPPED if interval.clipped else "")


def integer(x: float | None) -> str:
    """``x`` as a whole number with thousands separators; an em dash when missing."""
    return "—" if x is None or not np.isfinite(x) else f"{x:,.0f}"


def iv_int(interval: Interval) -> str:
    """A size with its interval, as whole numbers: "196 [120, 320]" ("196 (all seeds equal)"
    for an interval of zero width)."""
    if not np.isfinite(interval.estimate):
        return "—"
    text = integer(interval.estimate)
    if np.isfinite(interval.low) and np.isfinite(interval.high):
        if _zero_width(interval):
            return f"{text} {ALL_EQUAL}"
        text += f" [{integer(interval.low)}, {integer(interval.high)}]"
    return text


def needed_text(nd: Needed) -> str:
    """The training images needed over seeds: the geometric mean with its interval
    (:func:`bench.stats.geometric_interval`, clipped to the sizes trained, ``†`` when clipped),
    ``‡`` when some seed reached the target at the smallest n; "≤ n" when every seed did; "not
    reached (k of S seeds)"."""
    total = len(nd.values)
    if total == 0:
        return "—"
    if nd.missing:
        return f"not reached ({nd.missing} of {total} seeds)"
    values = [v for v in nd.values.values() if v is not None]
    if len(nd.at_first) == total:
        return f"≤ {integer(max(values))}"
    g = stats.geometric_interval(values, bounds=nd.sizes)
    return iv_int(g) + (CLIPPED if g.clipped else "") + (BOUNDED if nd.at_first else "")


def n_range(sizes: Iterable[float]) -> str:
    """"n = 100–3,000", "n = 300" for one size, "n = —" for none."""
    sizes = sorted(set(sizes))
    if not sizes:
        return "n = —"
    if len(sizes) == 1:
        return f"n = {sizes[0]:,.0f}"
    return f"n = {sizes[0]:,.0f}–{sizes[-1]:,.0f}"
