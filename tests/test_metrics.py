"""Every metric on hand-made inputs with known answers, and against reference implementations."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import bench.metrics
from bench.errors import BenchError
from bench.metrics import (
    aggregate,
    auroc,
    ece,
    mean_ci,
    ridge_r2,
    seed_matrix,
    size_to_target,
)

# --------------------------------------------------------------------------------------------
# the examples in the docstrings


def test_docstring_examples_run():
    result = doctest.testmod(bench.metrics)
    assert result.failed == 0 and result.attempted >= 4


# --------------------------------------------------------------------------------------------
# AUROC


def test_auroc_known_answers():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0  # perfect separation
    assert auroc([0, 1, 2], [3, 4, 5]) == 0.0  # reversed
    assert auroc([0.5] * 4, [0.5] * 3) == 0.5  # all tied
    # pairs (pos, neg): (.9,.8) 1, (.9,.3) 1, (.8,.8) 1/2, (.8,.3) 1, (.4,.8) 0, (.4,.3) 1
    assert auroc([0.9, 0.8, 0.4], [0.8, 0.3]) == pytest.approx(4.5 / 6)


def test_auroc_matches_pairwise_and_sklearn_with_ties():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(0)
    pos = np.round(rng.normal(0.5, 1.0, 300), 1)  # rounding makes many ties
    neg = np.round(rng.normal(0.0, 1.0, 200), 1)
    pairwise = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    labels = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    ref = roc_auc_score(labels, np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(pairwise, abs=1e-12)
    assert auroc(pos, neg) == pytest.approx(ref, abs=1e-12)
    assert auroc(torch.from_numpy(pos), torch.from_numpy(neg)) == pytest.approx(ref, abs=1e-12)


def test_auroc_edge_cases():
    assert math.isnan(auroc([], [1.0]))
    with pytest.raises(BenchError, match="NaN"):
        auroc([0.1, float("nan")], [0.2])


# --------------------------------------------------------------------------------------------
# ECE


def test_ece_hand_computed():
    # bin (14/15, 1]: conf .95, acc .5 -> .45 * 2/4 ; bin (8/15, 9/15]: conf .55, acc 1 -> .45 * 2/4
    assert ece([0.95, 0.95, 0.55, 0.55], [1, 0, 1, 1]) == pytest.approx(0.45)
    # perfectly calibrated within each bin -> 0
    assert ece([0.75] * 4 + [0.25] * 4, [1, 1, 1, 0, 1, 0, 0, 0]) == pytest.approx(0.0, abs=1e-12)


def test_ece_bin_edges_are_right_closed():
    # 2 bins: (0, .5], (.5, 1]. With 0.5 in the first bin: .15 * 2/3 + .3 * 1/3 = 0.2
    # (it would be 1/3 if 0.5 fell in the second bin).
    assert ece([0.2, 0.5, 0.7], [0, 1, 1], n_bins=2) == pytest.approx(0.2)
    assert ece([0.0, 1.0], [0, 1], n_bins=15) == pytest.approx(0.0)


def test_ece_matches_loop_definition():
    rng = np.random.default_rng(1)
    conf = rng.random(1000)
    hit = rng.random(1000) < conf**2
    ref = 0.0
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            ref += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    assert ece(conf, hit) == pytest.approx(ref, abs=1e-12)


def test_ece_rejects_out_of_range():
    with pytest.raises(BenchError, match=r"\[0, 1\]"):
        ece([1.2], [1])


# --------------------------------------------------------------------------------------------
# size to target


def test_size_to_target_interpolates_in_log_n():
    assert size_to_target([100, 1000], [0.5, 0.9], 0.7) == pytest.approx(math.sqrt(1e5))
    # a quarter of the way in accuracy = a quarter of the way in log n
    assert size_to_target([100, 10_000], [0.5, 0.9], 0.6) == pytest.approx(10 ** 2.5)
    # exactly on a point
    assert size_to_target([100, 300, 1000], [0.5, 0.7, 0.9], 0.7) == pytest.approx(300)


def test_size_to_target_first_point_never_and_order():
    assert size_to_target([100, 1000], [0.95, 0.99], 0.9) == 100.0  # exact n, an upper bound
    assert math.isnan(size_to_target([100, 1000], [0.5, 0.6], 0.9))
    # unsorted sizes are sorted with their accuracies
    assert size_to_target([1000, 100], [0.9, 0.5], 0.7) == pytest.approx(math.sqrt(1e5))
    # non-monotone curve: the FIRST crossing counts
    assert size_to_target([100, 300, 1000, 3000], [0.5, 0.8, 0.6, 0.9], 0.7) == pytest.approx(
        math.exp(math.log(100) + (0.2 / 0.3) * math.log(3))
    )


def test_size_to_target_averages_seeds_and_skips_missing():
    acc = np.array([[0.4, 0.8], [0.6, 1.0]])  # mean curve 0.5, 0.9
    assert size_to_target([100, 1000], acc, 0.7) == pytest.approx(math.sqrt(1e5))
    acc_nan = np.array([[0.5, np.nan], [0.5, 0.9]])  # a missing cell is ignored
    assert size_to_target([100, 1000], acc_nan, 0.7) == pytest.approx(math.sqrt(1e5))
    with pytest.raises(BenchError, match="expected accuracies"):
        size_to_target([100, 1000], np.zeros((2, 3)), 0.5)


# --------------------------------------------------------------------------------------------
# mean and Student-t interval


def test_mean_ci_matches_scipy():
    v = np.array([0.91, 0.93, 0.92, 0.95])
    lo, hi = stats.t.interval(0.95, df=v.size - 1, loc=v.mean(), scale=stats.sem(v))
    mean, half = mean_ci(v)
    assert mean == pytest.approx(v.mean())
    assert half == pytest.approx((hi - lo) / 2)
    _, half90 = mean_ci(v, level=0.9)
    assert half90 < half


def test_mean_ci_one_value_and_nan():
    mean, half = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(half)
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([1.0, np.nan, 3.0])[0] == 2.0  # NaN (a failed cell) dropped


# --------------------------------------------------------------------------------------------
# ridge probe


def test_ridge_r2_linear_target_and_noise():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 16))
    y = x @ rng.normal(size=16) + 3.0
    assert ridge_r2(x, y) > 0.99
    noise = rng.normal(size=500)
    assert ridge_r2(x, noise) <= 0.02
    assert ridge_r2(x, y, seed=3) == ridge_r2(x, y, seed=3)  # seeded split


@pytest.mark.parametrize("d", [8, 200])  # primal (d <= n_train) and dual (d > n_train) solves
def test_ridge_r2_matches_sklearn(d):
    Ridge = pytest.importorskip("sklearn.linear_model").Ridge  # noqa: N806
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)
    y = x[:, 0] - 2 * x[:, 1] + rng.normal(0, 0.5, 100)
    perm = np.random.default_rng(5).permutation(100)
    tr, te = perm[:70], perm[70:]
    mu, sd = x[tr].mean(0), x[tr].std(0)
    model = Ridge(alpha=2.0).fit((x[tr] - mu) / sd, y[tr])
    pred = model.predict((x[te] - mu) / sd)
    ref = 1 - ((y[te] - pred) ** 2).sum() / ((y[te] - y[te].mean()) ** 2).sum()
    assert ridge_r2(x, y, alpha=2.0, seed=5) == pytest.approx(ref, abs=1e-8)


# --------------------------------------------------------------------------------------------
# tidy helpers


def test_aggregate_keeps_nan_keys_and_uses_student_t():
    df = pd.DataFrame({
        "model": ["a"] * 4 + ["b"] * 2,
        "factor_value": [np.nan, np.nan, 1.0, 1.0, np.nan, np.nan],
        "value": [0.1, 0.3, 0.5, 0.7, 0.2, np.nan],
    })
    out = aggregate(df, ["model", "factor_value"])
    assert len(out) == 3
    a_nan = out[(out["model"] == "a") & out["factor_value"].isna()].iloc[0]
    assert a_nan["mean"] == pytest.approx(0.2)
    assert a_nan["ci"] == pytest.approx(mean_ci([0.1, 0.3])[1])
    b = out[out["model"] == "b"].iloc[0]
    assert b["n_seeds"] == 1 and math.isnan(b["ci"])


def test_seed_matrix_pivots_and_marks_missing():
    df = pd.DataFrame({"n": [300, 100, 100, 300, 100], "seed": [0, 0, 1, 1, 2],
                       "value": [0.8, 0.5, 0.6, 0.9, 0.55]})
    sizes, acc = seed_matrix(df)
    assert sizes.tolist() == [100, 300]
    assert acc.shape == (3, 2)
    assert acc[0].tolist() == [0.5, 0.8] and math.isnan(acc[2, 1])
