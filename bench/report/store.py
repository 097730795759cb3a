"""The per-image prediction store (``predictions.parquet``) as the report reads it.

One row per image of every test set of every cell (:func:`bench.cell.evaluate.prediction_frame`
writes it; the runner concatenates the cells'). From it the report recomputes

- every accuracy of ``metrics.csv`` (:func:`accuracy_rows`: per cell and set, and per sweep
  point), so the tables rest on the committed images' answers;
- the confidence figure's frame (:func:`confidence_frame`: scrambled images and their intact
  twins, paired through ``source``);
- the test-digit resamples behind the seeds-and-digits intervals (:class:`DigitTable`): one
  digit carries all its images (its affNIST-style transforms, its scrambled and displaced
  versions), and one resample is shared by every seed and model, because every cell is scored
  on the same digits.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bench.data.testsets import CLEAN, find_set_kind

STORE = "predictions.parquet"
CELL_KEY = ("setup", "model", "n", "seed")
# What the report reads of the store (the affine parameters and layout stay in the file for
# readers who want them).
READ_COLUMNS = ("setup", "model", "n", "seed", "test_set", "index", "source", "transform",
                "value", "label", "label2", "pred", "second", "correct", "confidence")
# Columns a store may lack (written before them, or by hand), and what they then mean: no
# second digit; the runner-up unknown (the prediction); rows numbered in file order per set.
_OPTIONAL_COLUMNS = ("label2", "second", "index")


def read_store(path: Path) -> pd.DataFrame:
    """The store's columns the report uses, ``test_set`` etc. as plain strings."""
    have = set(pq.read_schema(path).names)
    d = pd.read_parquet(path, columns=[c for c in READ_COLUMNS if c in have or
                                       c not in _OPTIONAL_COLUMNS])
    if "label2" not in d:
        d["label2"] = -1
    if "second" not in d:
        d["second"] = d["pred"]
    if "index" not in d:
        d["index"] = d.groupby([*CELL_KEY, "test_set"], observed=True, sort=False).cumcount()
    for col in ("setup", "model", "test_set"):
        d[col] = d[col].astype(str)
    d["n"] = d["n"].astype(np.int64)
    d["seed"] = d["seed"].astype(np.int64)
    return d


def accuracy_rows(store: pd.DataFrame) -> pd.DataFrame:
    """``metrics.csv`` rows of metric ``accuracy`` recomputed from the store: one per cell and
    set (``factor_value`` NaN) and, for sweeps, one per grid point (``factor_value`` = the
    point's value). Same columns as ``metrics.csv``."""
    keys = [*CELL_KEY, "test_set"]
    whole = store.groupby(keys, observed=True, sort=True)["correct"].mean().reset_index()
    whole["factor_value"] = np.nan
    sweeps = store[store["test_set"].str.startswith("sweep-")]
    points = (sweeps.groupby([*keys, "value"], observed=True, sort=True)["correct"].mean()
              .reset_index().rename(columns={"value": "factor_value"}))
    points["factor_value"] = points["factor_value"].astype(np.float64)
    out = pd.concat([whole, points], ignore_index=True)
    out["metric"] = "accuracy"
    return out.rename(columns={"correct": "value"})[
        ["setup", "model", "n", "seed", "test_set", "factor_value", "metric", "value"]]


def with_store_accuracy(metrics: pd.DataFrame, store: pd.DataFrame | None) -> pd.DataFrame:
    """``metrics`` with its accuracy rows replaced by :func:`accuracy_rows` of the store for the
    cells and sets the store holds (the rest kept as read)."""
    if store is None or store.empty:
        return metrics
    acc = accuracy_rows(store)
    have = acc[[*CELL_KEY, "test_set"]].drop_duplicates()
    m = metrics.merge(have.assign(_in_store=True), on=[*CELL_KEY, "test_set"], how="left")
    drop = (m["metric"] == "accuracy") & m["_in_store"].fillna(False).astype(bool)
    kept = metrics[~drop.to_numpy()]
    return pd.concat([kept, acc], ignore_index=True)


def confidence_frame(store: pd.DataFrame) -> pd.DataFrame:
    """What the confidence figure draws: every scrambled or displaced image (``intact`` False)
    and the same digit's clean image (``intact`` True), with the model's confidence."""
    scrambled = [t for t in store["test_set"].unique()
                 if (k := find_set_kind(t)) is not None and k.scrambled]
    parts = store[store["test_set"].isin(scrambled)]
    clean = store[store["test_set"] == CLEAN.name][[*CELL_KEY, "source", "confidence"]]
    twins = parts[[*CELL_KEY, "test_set", "source"]].merge(clean, on=[*CELL_KEY, "source"])
    cols = [*CELL_KEY, "test_set", "confidence"]
    return pd.concat([parts[cols].assign(intact=False), twins[cols].assign(intact=True)],
                     ignore_index=True)


# --------------------------------------------------------------------------------------------
# Test-digit resamples


@dataclass
class DigitTable:
    """A per-cell ratio ``sum_i num[c, i] / sum_i den[c, i]`` over test digits i, and its value
    under digit weights (a resample counts digit i ``w[i]`` times).

    ``keys``: the cells (model, n, seed) in row order; ``digits``: the source digits in column
    order (shared by every table built by :func:`digit_tables` from one store).
    """

    keys: list[tuple[str, int, int]]
    num: np.ndarray  # (cells, digits)
    den: np.ndarray  # (cells, digits)

    def values(self, weights: np.ndarray | None = None) -> np.ndarray:
        """``(cells,)`` without weights, ``(replicates, cells)`` with ``weights (B, digits)``."""
        if weights is None:
            with np.errstate(invalid="ignore", divide="ignore"):
                return self.num.sum(1) / self.den.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ self.num.T) / (weights @ self.den.T)

    def row(self, key: tuple[str, int, int]) -> int:
        return self.keys.index(key)


def digit_tables(store: pd.DataFrame, setup: str,
                 parts: dict[str, Callable[[pd.DataFrame], tuple[pd.Series, pd.Series]]]
                 ) -> tuple[np.ndarray, dict[str, DigitTable]]:
    """The source digits of ``setup``'s clean set and one :class:`DigitTable` per entry of
    ``parts``: name -> a function of the setup's store rows giving per-row (num, den) Series; the
    rows are summed per cell and digit. A cell or digit without rows has 0 / 0 (NaN)."""
    d = store[store["setup"] == setup]
    digits = np.sort(d.loc[d["test_set"] == CLEAN.name, "source"].unique())
    col = {int(s): i for i, s in enumerate(digits)}
    keys = sorted({(str(m), int(n), int(s)) for m, n, s in
                   d[["model", "n", "seed"]].drop_duplicates().itertuples(index=False)})
    row = {k: i for i, k in enumerate(keys)}
    out = {}
    for name, f in parts.items():
        num_s, den_s = f(d)
        sel = den_s.index
        sub = d.loc[sel, ["model", "n", "seed", "source"]]
        inside = sub["source"].map(col)
        ok = inside.notna().to_numpy()
        r = np.array([row[(str(m), int(n), int(s))] for m, n, s in
                      sub[["model", "n", "seed"]].itertuples(index=False)], dtype=np.int64)
        num = np.zeros((len(keys), len(digits)))
        den = np.zeros((len(keys), len(digits)))
        c = inside.fillna(0).to_numpy(dtype=np.int64)
        np.add.at(num, (r[ok], c[ok]), num_s.to_numpy(dtype=float)[ok])
        np.add.at(den, (r[ok], c[ok]), den_s.to_numpy(dtype=float)[ok])
        out[name] = DigitTable(keys, num, den)
    return digits, out


def accuracy_part(test_set: str) -> Callable[[pd.DataFrame], tuple[pd.Series, pd.Series]]:
    """(correct, 1) per image of ``test_set``: the accuracy as a :class:`DigitTable`."""
    def f(d: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        rows = d[d["test_set"] == test_set]
        return rows["correct"].astype(float), pd.Series(1.0, index=rows.index)
    return f


def kept_part(test_set: str) -> Callable[[pd.DataFrame], tuple[pd.Series, pd.Series]]:
    """(kept and intact correct, intact correct) per image of a scrambled ``test_set``: the
    fraction of digits classified correctly intact that keep their class in ``test_set``
    (``kept_given_intact_correct`` of ``metrics.csv``) as a :class:`DigitTable`."""
    def f(d: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        rows = d[d["test_set"] == test_set]
        clean = d.loc[d["test_set"] == CLEAN.name, [*CELL_KEY, "source", "correct"]]
        ok = rows[[*CELL_KEY, "source"]].reset_index().merge(
            clean.rename(columns={"correct": "ok"}), on=[*CELL_KEY, "source"], how="left"
        ).set_index("index")["ok"].reindex(rows.index).fillna(False).astype(float)
        return ok * rows["correct"].astype(float), ok
    return f


def seed_means(table_values: np.ndarray, table: DigitTable, a: str, b: str, n: int,
               seeds: Sequence[int]) -> np.ndarray:
    """``(replicates,)`` mean over ``seeds`` of ``a`` minus ``b`` at size ``n`` from
    ``table.values(weights)``."""
    ia = [table.row((a, n, s)) for s in seeds]
    ib = [table.row((b, n, s)) for s in seeds]
    return (table_values[:, ia] - table_values[:, ib]).mean(1)
