"""Every metric on hand-made inputs with known answers, and against reference implementations."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

import bench.metrics
from bench.errors import BenchError
from bench.metrics import (
    auroc,
    ece,
)

# --------------------------------------------------------------------------------------------
# the examples in the docstrings


def test_docstring_examples_run():
    result = doctest.testmod(bench.metrics)
    assert result.failed == 0 and result.attempted >= 2  # auroc and ece


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
