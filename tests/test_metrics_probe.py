"""Linear decodability of the transform: synthetic codes with known answers, and sklearn as the
oracle of the group-wise cross-validated ridge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.metrics import RIDGE_ALPHAS, _group_folds, decodability_r2

DIGITS, GRID = 60, (-60.0, -30.0, 0.0, 30.0, 60.0)


def _sweep(d: int, seed: int = 0):
    """A sweep's layout: the same DIGITS digits at every grid value (point-major)."""
    rng = np.random.default_rng(seed)
    groups = np.tile(np.arange(DIGITS), len(GRID))
    values = np.repeat(GRID, DIGITS)
    return rng, groups, values


@pytest.mark.parametrize("d", [16, 500])
def test_exactly_linear_code_is_decoded_whatever_the_dimension(d):
    rng, groups, values = _sweep(d)
    # the transform along one random direction plus a per-digit offset (identity of the digit)
    digit = rng.normal(size=(DIGITS, d))[groups]
    x = np.outer(values, rng.normal(size=d)) + digit
    assert decodability_r2(x, values, groups) > 0.99


@pytest.mark.parametrize("d", [16, 500])
def test_noise_gives_r2_near_zero_whatever_the_dimension(d):
    rng, groups, values = _sweep(d, seed=1)
    x = rng.normal(size=(values.size, d))
    r2 = decodability_r2(x, values, groups)
    assert -0.05 < r2 < 0.05


def test_split_is_by_digit():
    # Features that identify the digit only, not the transform: a row split could memorise
    # nothing useful either, but a digit that lands on both sides must never happen.
    groups = np.tile(np.arange(DIGITS), len(GRID))
    for fold in _group_folds(groups, 5):
        rest = np.setdiff1d(np.arange(groups.size), fold)
        assert not set(groups[fold]) & set(groups[rest])


def test_matches_sklearn_nested_group_cv():
    pytest.importorskip("sklearn")
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    rng, groups, values = _sweep(40, seed=2)
    x = np.outer(values, rng.normal(size=40)) * 0.02 + rng.normal(size=(values.size, 40))
    pred = np.empty_like(values)
    outer = _group_folds(groups, 5)  # the folds themselves are checked in test_split_is_by_digit

    def fit_predict(xtr, ytr, xte, alpha):
        scaler = StandardScaler().fit(xtr)
        return Ridge(alpha=alpha).fit(scaler.transform(xtr), ytr).predict(scaler.transform(xte))

    for te in outer:
        tr = np.setdiff1d(np.arange(values.size), te)
        sse = []
        for alpha in RIDGE_ALPHAS:
            err = 0.0
            for ite in _group_folds(groups[tr], 4):
                itr = np.setdiff1d(np.arange(tr.size), ite)
                p = fit_predict(x[tr][itr], values[tr][itr], x[tr][ite], alpha)
                err += ((p - values[tr][ite]) ** 2).sum()
            sse.append(err)
        best = RIDGE_ALPHAS[int(np.argmin(sse))]
        pred[te] = fit_predict(x[tr], values[tr], x[te], best)
    ref = 1 - ((values - pred) ** 2).sum() / ((values - values.mean()) ** 2).sum()
    assert decodability_r2(x, values, groups) == pytest.approx(ref, abs=1e-6)


def test_degenerate_inputs_give_nan():
    assert math.isnan(decodability_r2(np.zeros((4, 2)), [1, 2, 3, 4], [0, 0, 1, 1]))  # 2 groups
    assert math.isnan(decodability_r2(np.zeros((6, 2)), [1.0] * 6, [0, 1, 2, 0, 1, 2]))


@pytest.mark.parametrize("rep", range(10))
def test_sparse_relu_units_do_not_wreck_the_fit(rep):
    """200 rows (50 digits x 4 points), D = 256: one informative ReLU unit and 255 units that
    fire on about 0.6 % of the rows (a normal draw above 2.5). Standardising a unit that fired
    on one or two training rows by its own SD once gave R^2 down to -95 on these seeds. The
    sparse units carry nothing, so the fit must come close to that of the informative unit alone
    (0.51-0.61 on these seeds), never far below it."""
    rng = np.random.default_rng(rep)
    digits = np.repeat(np.arange(50), 4)
    y = np.tile(np.array([-1.0, -0.5, 0.5, 1.0]), 50)
    x = np.maximum(rng.normal(size=(200, 256)) - 2.5, 0.0)
    x[:, 0] = np.maximum(y + rng.normal(scale=0.7, size=200) + 1.0, 0.0)
    alone = decodability_r2(x[:, :1], y, digits)
    assert alone > 0.45
    assert decodability_r2(x, y, digits) == pytest.approx(alone, abs=0.05)
