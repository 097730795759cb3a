"""Convergence: the per-cell rule on hand-built histories and the run-level (Holm) rule on a
constructed run, with scipy's binomtest as the oracle of the sign tests."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy import stats

from bench.cell.convergence import convergence, familywise_convergence


@pytest.mark.parametrize(("history", "expected"), [
    # val accuracy 0.90 at 6 of 8 steps (3/4 of the budget), 0.901 at the end: +0.1 point
    ([[2, 1.0, 0.80], [4, 1.0, 0.88], [6, 1.0, 0.90], [8, 1.0, 0.901]], (True, 0.001)),
    # +1 point over the last quarter: still learning
    ([[2, 1.0, 0.80], [4, 1.0, 0.88], [6, 1.0, 0.90], [8, 1.0, 0.91]], (False, 0.01)),
    # the last validation before 3/4 is at step 4 when step 6 was not validated
    ([[4, 1.0, 0.90], [8, 1.0, 0.95]], (False, 0.05)),
    ([[8, 1.0, 0.95]], (None, None)),  # nothing before the last quarter
    ([[4, 1.0, float("nan")], [8, 1.0, float("nan")]], (None, None)),  # no validation
])
def test_convergence_threshold(history, expected):
    converged, gain, se = convergence(history, total=8, gain=0.002)
    assert converged == expected[0] and se is None
    assert (gain is None) if expected[1] is None else gain == pytest.approx(expected[1])


def test_convergence_within_noise_of_the_validation_set():
    """A gain of 5 images out of 1,000 (+0.5 point): 15 turned right and 10 turned wrong, so the
    paired standard error is sqrt(25) / 1000 = 0.005 and 2 SE = 0.01 > 0.005: no evidence of
    further improvement. With 5 turned right and none wrong the SE
    is sqrt(5) / 1000 = 0.00224 and 0.005 > 2 SE: still improving."""
    history = [[6, 1.0, 0.900], [8, 1.0, 0.905]]
    before = torch.zeros(1000, dtype=torch.bool)
    before[:900] = True
    after = before.clone()
    after[900:915] = True  # 15 turned right
    after[:10] = False  # 10 turned wrong
    converged, gain, se = convergence(history, 8, 0.002, before, after)
    assert gain == pytest.approx(0.005) and se == pytest.approx(0.005) and converged
    after = before.clone()
    after[900:905] = True  # 5 turned right, none wrong
    converged, gain, se = convergence(history, 8, 0.002, before, after)
    assert se == pytest.approx(math.sqrt(5) / 1000) and not converged


def _cell(right, wrong, images=1500, own=True):
    """A cells.csv row; its p-value by scipy's exact binomial test, as the trainer records it."""
    p = stats.binomtest(right, right + wrong, 0.5, alternative="greater").pvalue
    return {"val_turned_right": right, "val_turned_wrong": wrong, "val_improvement_p": p,
            "val_improvement": (right - wrong) / images, "converged": own}


def test_familywise_convergence_on_a_constructed_run():
    """45 cells. 43 each gained 24 images and lost 10 (+0.93 point on 1,500): alone each is
    significant (P(X >= 24 | 34, 1/2) = 0.012 by scipy's binomtest, beyond two paired standard
    errors: 14 > 2 sqrt(34)), but 0.012 is far above Holm's first threshold 0.05 / 45 = 0.0011,
    so none is rejected. One cell gained 40 and lost 5 (p = 3.9e-8 < 0.0011): still improving.
    One gained 15 and lost none on 10,000 images (p = 3.1e-5 < 0.05 / 44), a gain of 0.15 point:
    below the 0.2-point threshold, converged. One older cell without counts keeps its flag."""
    p_small = stats.binomtest(24, 34, 0.5, alternative="greater").pvalue
    assert 0.0011 < p_small < 0.0228  # significant alone at 2 SE, not after Holm
    rows = [_cell(24, 10) for _ in range(42)] + [_cell(40, 5), _cell(15, 0, images=10_000)]
    rows.append({"val_turned_right": None, "val_turned_wrong": None, "val_improvement_p": None,
                 "val_improvement": 0.02, "converged": False})
    out = familywise_convergence(pd.DataFrame(rows), gain=0.002, alpha=0.05)
    assert out[:42] == [True] * 42
    assert out[42] is False and out[43] is True and out[44] is False
    alone = [convergence([[6, 1, 0.5], [8, 1, 0.5 + r["val_improvement"]]], 8, 0.002,
                         *_before_after(24, 10))[0] for r in rows[:1]]
    assert alone == [False]  # the per-cell rule alone flags the same cell


def _before_after(right, wrong, images=1500):
    before = torch.zeros(images, dtype=torch.bool)
    before[: images // 2] = True
    after = before.clone()
    after[images // 2: images // 2 + right] = True
    after[:wrong] = False
    return before, after
