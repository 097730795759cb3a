"""Effective robustness on cells constructed on a known line (logit scale)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from bench.report.robustness import effective_robustness, table


def _logistic(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def _cells() -> list[dict]:
    """ConvNet cells exactly on logit(other) = -1 + 0.5 logit(clean); the CapsNet's 0.3 above it
    on seeds 0-2 and 0.5 above on seeds 3-4."""
    rows = []
    for model, lift in (("convnet-maxpool", [0.0] * 5), ("convnet-k9", [0.0] * 5),
                        ("capsnet", [0.3, 0.3, 0.3, 0.5, 0.5])):
        for seed in range(5):
            for n, z in ((100, 0.5 + 0.1 * seed), (1000, 1.5 + 0.2 * seed),
                         (3000, 2.5 - 0.1 * seed)):
                if model == "convnet-k9":
                    z += 0.3
                other = _logistic(-1 + 0.5 * z + lift[seed])
                for test_set, v in (("clean", _logistic(z)), ("affnist", other)):
                    rows.append(dict(setup="affnist", model=model, n=n, seed=seed,
                                     test_set=test_set, factor_value=math.nan,
                                     metric="accuracy", value=v))
    return rows


def test_a_convnet_that_failed_to_train_is_left_out_of_the_line():
    """convnet-gu at 40 % clean (far below the CapsNet's 92 %: failed) and 5 % affNIST-style, far
    off the line: the fit is the other ConvNets' line exactly, and convnet-gu is still read."""
    rows = _cells()
    for seed in range(5):
        for n in (100, 1000, 3000):
            for test_set, v in (("clean", 0.40), ("affnist", 0.05)):
                rows.append(dict(setup="affnist", model="convnet-gu", n=n, seed=seed,
                                 test_set=test_set, factor_value=math.nan, metric="accuracy",
                                 value=v))
    er = effective_robustness(pd.DataFrame(rows))
    assert (er.slope, er.intercept) == pytest.approx((0.5, -1.0))
    want = math.log(0.05 / 0.95) - (-1.0 + 0.5 * math.log(0.40 / 0.60))
    assert er.per_model["convnet-gu"].estimate == pytest.approx(want)
    assert er.fitted == ("convnet-k9", "convnet-maxpool")


def test_residuals_from_the_convnets_line_by_hand():
    """ConvNet cells lie exactly on logit(other) = -1 + 0.5 logit(clean); the CapsNet's lie
    0.3 above it on seeds 0-2 and 0.5 above on seeds 3-4 (mean 0.38, Student t over 5 seeds)."""
    rows = _cells()
    er = effective_robustness(pd.DataFrame(rows))
    assert (er.slope, er.intercept) == pytest.approx((0.5, -1.0))
    lifts = np.array([0.3, 0.3, 0.3, 0.5, 0.5])
    caps = er.per_model["capsnet"]
    half = 2.7764451051977987 * lifts.std(ddof=1) / math.sqrt(5)
    assert caps.estimate == pytest.approx(0.38)
    assert (caps.low, caps.high) == pytest.approx((0.38 - half, 0.38 + half))
    assert er.per_model["convnet-maxpool"].estimate == pytest.approx(0.0, abs=1e-9)


def test_the_table_names_fitted_convnets_that_lie_off_their_own_line():
    """Two ConvNets 0.2 above and 0.2 below one common line (seed jitter of +-0.02): the fitted
    line is the common one, both lie off it, and the table's note names both; with both on the
    line (the cells above) no such note."""
    rows = []
    for model, lift in (("convnet-maxpool", 0.2), ("convnet-k9", -0.2)):
        for seed in range(5):
            jitter = 0.02 * (-1) ** seed
            for z in (0.5 + 0.1 * seed, 1.5, 2.5 - 0.1 * seed):
                other = _logistic(-1 + 0.5 * z + lift + jitter)
                for test_set, v in (("clean", _logistic(z)), ("affnist", other)):
                    rows.append(dict(setup="affnist", model=model, n=100 + int(z * 1000),
                                     seed=seed, test_set=test_set, factor_value=math.nan,
                                     metric="accuracy", value=v))
    er = effective_robustness(pd.DataFrame(rows))
    assert er.per_model["convnet-maxpool"].low > 0 > er.per_model["convnet-k9"].high
    notes = " ".join(table(er).notes)
    assert "2 of the 2 models in the fit lie off the line" in notes
    assert "convnet-k9" in notes and "convnet-maxpool" in notes
    assert "lie off the line" not in " ".join(table(effective_robustness(pd.DataFrame(_cells()))).notes)
