"""Pure metrics: arrays in, floats out; no files, no devices, no global state.

Every function accepts NumPy arrays, torch tensors (any device; they are copied to the CPU) or
Python sequences, and returns plain Python floats, so the evaluator, the report and the tests use
one definition of each number. The definitions follow the papers the benchmark tests:

- accuracy and error (Sabour et al. 2017, Table 1 reports the test *error* in %): the mean of
  ``pred == label`` and one minus it, computed where the predictions are
  (:func:`bench.evaluate.set_metrics`), so they have no function here.
- AUROC: the Mann-Whitney U statistic divided by ``n_pos * n_neg`` (Hanley & McNeil, 1982),
  ties counted half, so a detector that cannot tell the two sets apart scores exactly 0.5.
- ECE: Guo et al. (2017), "On Calibration of Modern Neural Networks", Eq. (3), with M = 15
  equal-width bins.
- size to target: the data-efficiency read-out (how many training images a model needs to reach a
  given clean accuracy), interpolated in log(n) because the sizes are spaced geometrically.
- Student-t confidence intervals over seeds and a ridge read-out ("equivariance probe") of the
  factor of variation from a model's features.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from bench.errors import BenchError

__all__ = [
    "auroc",
    "ece",
    "size_to_target",
    "mean_ci",
    "ridge_r2",
    "aggregate",
    "seed_matrix",
]


def _np(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    """A 1-D-or-more NumPy copy of ``x`` (torch tensors detached and moved to the CPU)."""
    if hasattr(x, "detach"):  # a torch tensor, without importing torch here
        x = x.detach().to("cpu").numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise BenchError(f"{name}: expected numbers, got {type(x).__name__} ({e})") from None


def _same_length(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape[0] != b.shape[0]:
        raise BenchError(f"{what}: expected the same length, got {a.shape[0]} and {b.shape[0]}")


# --------------------------------------------------------------------------------------------
# Ranking and calibration


def auroc(pos_scores: Any, neg_scores: Any) -> float:
    """Area under the ROC curve: P(score of a positive > score of a negative), ties counted half.

    Computed exactly from the Mann-Whitney U statistic with mid-ranks
    (``scipy.stats.rankdata(method="average")``):
    ``AUROC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` where ``R_pos`` is the sum of
    the positives' ranks in the pooled sample. With mid-ranks, each tied (positive, negative) pair
    contributes exactly 1/2, as in the pairwise definition. Used for "can the model tell an intact
    digit (positive) from a scrambled one" with score = confidence, or = -reconstruction error.

    Returns:
        A float in [0, 1]: 1 = every positive above every negative, 0 = reversed, 0.5 = no
        separation (including all scores tied). NaN when either set is empty.

    Raises:
        BenchError: a score is NaN (a NaN has no rank).

    >>> auroc([0.9, 0.8], [0.1, 0.8])
    0.875
    """
    pos = _np(pos_scores, "pos_scores").reshape(-1)
    neg = _np(neg_scores, "neg_scores").reshape(-1)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise BenchError("auroc: expected finite scores, found NaN")
    ranks = stats.rankdata(np.concatenate([pos, neg]), method="average")
    n_pos, n_neg = pos.size, neg.size
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ece(confidence: Any, correct: Any, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017, Eq. 3) with ``n_bins`` equal-width bins.

    ``ECE = sum_m (|B_m| / N) |acc(B_m) - conf(B_m)|`` where bin m holds the confidences in
    ((m-1)/M, m/M] (a confidence of exactly 0 goes to the first bin); empty bins contribute 0.

    Args:
        confidence: (N,) max class score in [0, 1] (``Output.scores.max(1)``).
        correct: (N,) bool, whether the prediction was right.

    Returns:
        A float in [0, 1]; NaN for N = 0.

    >>> round(ece([0.9, 0.9, 0.9, 0.9], [1, 1, 1, 0]), 6)  # one bin: |0.75 - 0.9| = 0.15
    0.15
    """
    conf = _np(confidence, "confidence").reshape(-1)
    hit = _np(correct, "correct").reshape(-1)
    _same_length(conf, hit, "ece(confidence, correct)")
    if n_bins < 1:
        raise BenchError(f"ece: expected n_bins >= 1, got {n_bins}")
    if conf.size == 0:
        return math.nan
    if (conf < 0).any() or (conf > 1).any() or np.isnan(conf).any():
        raise BenchError("ece: expected confidences in [0, 1]")
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(idx, weights=hit, minlength=n_bins)
    # sum_m |B_m|/N * |acc_m - conf_m| = sum_m |sum_hit_m - sum_conf_m| / N
    return float(np.abs(sum_hit - sum_conf).sum() / conf.size)


# --------------------------------------------------------------------------------------------
# Curves over training-set sizes and seeds


def size_to_target(sizes: Sequence[float] | Any, accuracies: Any, target: float) -> float:
    """Training-set size at which the seed-averaged accuracy curve first reaches ``target``.

    The curve is the mean over seeds (NaN-aware: a missing cell does not count) at each size,
    sorted by size. Between the last size below the target and the first size at or above it,
    accuracy is interpolated linearly in log(n) (the sizes are geometric), so
    ``n* = exp(log n0 + (target - a0) / (a1 - a0) * (log n1 - log n0))``.

    Special cases: if the *first* (smallest) size already reaches the target, that size is
    returned exactly, although the true crossing may lie below it (an upper bound); if no size
    reaches it, NaN.

    Args:
        sizes: (S,) training-set sizes.
        accuracies: (S,) one curve, or (R, S) one row per seed.
        target: the accuracy to reach, e.g. 0.95.

    >>> size_to_target([100, 1000], [0.5, 0.9], 0.7)  # halfway in log n: sqrt(100 * 1000)
    316.22776601683796
    """
    n = _np(sizes, "sizes").reshape(-1)
    acc = _np(accuracies, "accuracies")
    if acc.ndim == 1:
        acc = acc[None, :]
    if acc.ndim != 2 or acc.shape[1] != n.size:
        raise BenchError(
            f"size_to_target: expected accuracies (S,) or (R, S) with S={n.size}, got {acc.shape}"
        )
    if (n <= 0).any():
        raise BenchError(f"size_to_target: expected positive sizes, got {n.tolist()}")
    order = np.argsort(n, kind="stable")
    n = n[order]
    with warnings.catch_warnings():  # "Mean of empty slice" where every seed is missing
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = np.nanmean(acc[:, order], axis=0)
    ok = np.flatnonzero(curve >= target)  # NaN compares False: a missing size never counts
    if ok.size == 0:
        return math.nan
    i = int(ok[0])
    if i == 0:
        return float(n[0])
    prev = i - 1
    while prev >= 0 and np.isnan(curve[prev]):
        prev -= 1
    if prev < 0:
        return float(n[i])
    a0, a1 = curve[prev], curve[i]
    ln0, ln1 = math.log(n[prev]), math.log(n[i])
    return float(math.exp(ln0 + (target - a0) / (a1 - a0) * (ln1 - ln0)))


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval of the mean over seeds.

    ``half = t_{(1+level)/2, k-1} * s / sqrt(k)`` with ``s`` the sample standard deviation
    (ddof=1) of the k finite values; NaN values (failed cells) are dropped first.

    Returns:
        ``(mean, half_width)``; the half-width is NaN for one value (no spread to estimate), and
        both are NaN for none.

    >>> mean_ci([1.0, 2.0, 3.0])[0]
    2.0
    """
    v = _np(values, "values").reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan
    mean = float(v.mean())
    if v.size == 1:
        return mean, math.nan
    if not 0 < level < 1:
        raise BenchError(f"mean_ci: expected 0 < level < 1, got {level}")
    t = float(stats.t.ppf((1 + level) / 2, df=v.size - 1))
    return mean, float(t * v.std(ddof=1) / math.sqrt(v.size))


# --------------------------------------------------------------------------------------------
# Equivariance probe


def ridge_r2(
    features: Any,
    target: Any,
    alpha: float = 1.0,
    train_frac: float = 0.7,
    seed: int = 0,
) -> float:
    """Held-out R^2 of a linear ridge read-out of ``target`` from ``features``.

    The "equivariance probe": if a model's features (CapsNet: the winning capsule's 16-D pose,
    Sabour et al. 2017, Sec. 5.1; ConvNets: penultimate activations) encode the applied
    transformation linearly, a ridge regression predicts its magnitude on held-out images.

    Procedure: a seeded random split (``train_frac`` of the rows for fitting); features
    standardised with the train split's mean and standard deviation (constant columns left at 0);
    target centred with the train mean; closed-form ridge
    ``w = (X^T X + alpha I)^{-1} X^T y`` (solved in its dual form ``X^T (X X^T + alpha I)^{-1} y``
    when there are more features than training rows); then
    ``R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean(y))^2`` on the held-out rows.

    Returns:
        R^2 (at most 1; can be negative when the read-out is worse than the held-out mean);
        NaN when the held-out target is constant or either split is empty.
    """
    x = _np(features, "features")
    y = _np(target, "target").reshape(-1)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1)
    _same_length(x, y, "ridge_r2(features, target)")
    if not 0 < train_frac < 1:
        raise BenchError(f"ridge_r2: expected 0 < train_frac < 1, got {train_frac}")
    n = y.size
    n_train = int(round(train_frac * n))
    if n_train < 1 or n_train >= n:
        return math.nan
    perm = np.random.default_rng(seed).permutation(n)
    tr, te = perm[:n_train], perm[n_train:]
    mu = x[tr].mean(axis=0)
    sd = x[tr].std(axis=0)
    sd[sd == 0] = 1.0
    xtr, xte = (x[tr] - mu) / sd, (x[te] - mu) / sd
    y_mean = y[tr].mean()
    ytr = y[tr] - y_mean
    if xtr.shape[1] <= xtr.shape[0]:
        gram = xtr.T @ xtr + alpha * np.eye(xtr.shape[1])
        w = np.linalg.solve(gram, xtr.T @ ytr)
    else:
        gram = xtr @ xtr.T + alpha * np.eye(xtr.shape[0])
        w = xtr.T @ np.linalg.solve(gram, ytr)
    pred = xte @ w + y_mean
    ss_tot = float(((y[te] - y[te].mean()) ** 2).sum())
    if ss_tot == 0:
        return math.nan
    return 1.0 - float(((y[te] - pred) ** 2).sum()) / ss_tot


# --------------------------------------------------------------------------------------------
# Tidy aggregation for the report


def aggregate(df: pd.DataFrame, by: Sequence[str], value: str = "value",
              level: float = 0.95) -> pd.DataFrame:
    """Mean, Student-t half-width and number of seeds of ``value`` for each group of ``by``.

    Groups keep NaN keys (``factor_value`` is NaN outside the sweeps), and come out sorted.
    Columns: ``*by, mean, ci, n_seeds``.
    """
    rows = []
    for key, g in df.groupby(list(by), dropna=False, sort=True):
        m, h = mean_ci(g[value].to_numpy(), level)
        key = key if isinstance(key, tuple) else (key,)
        rows.append((*key, m, h, int(g[value].notna().sum())))
    return pd.DataFrame(rows, columns=[*by, "mean", "ci", "n_seeds"])


def seed_matrix(df: pd.DataFrame, value: str = "value") -> tuple[np.ndarray, np.ndarray]:
    """(sizes (S,), values (R, S)) from the rows of one curve: columns ``n``, ``seed``, ``value``.

    Missing (seed, n) cells are NaN, which :func:`size_to_target` ignores.
    """
    table = df.pivot_table(index="seed", columns="n", values=value, aggfunc="mean", dropna=False)
    table = table.sort_index(axis=1)
    return table.columns.to_numpy(dtype=np.float64), table.to_numpy(dtype=np.float64)
