"""Temperature scaling and reliability bins: a brute-force grid of the NLL, scipy's log-softmax
and a literal per-bin loop as oracles."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import log_softmax

from bench.metrics import ece, fit_temperature, reliability, softmax_confidence


def _overconfident(n: int = 4000, seed: int = 0):
    """Logits whose softmax is over-confident: the labels follow softmax(z / 3)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 10)) * 4.0
    p = np.exp(log_softmax(z / 3.0, axis=1))
    y = np.array([rng.choice(10, p=row) for row in p])
    return z, y


def test_temperature_matches_a_brute_force_grid():
    z, y = _overconfident()
    grid = np.exp(np.linspace(np.log(0.1), np.log(30), 4001))
    nll = [-log_softmax(z / t, axis=1)[np.arange(y.size), y].mean() for t in grid]
    t_grid = grid[int(np.argmin(nll))]
    t = fit_temperature(z, y)
    assert t == pytest.approx(t_grid, rel=2e-3)
    assert t == pytest.approx(3.0, rel=0.1)  # the temperature the labels were drawn with


def test_ece_drops_after_scaling_an_overconfident_model():
    z, y = _overconfident(seed=1)
    correct = z.argmax(1) == y
    t = fit_temperature(z[:2000], y[:2000])  # fitted on one half, scored on the other
    before = ece(softmax_confidence(z[2000:]), correct[2000:])
    after = ece(softmax_confidence(z[2000:], t), correct[2000:])
    assert before > 0.1 and after < 0.04


def test_lengths_in_unit_interval_get_a_small_temperature():
    # capsule-length-like scores: the predicted class at 0.9, the others at 0.1, exactly 90% right
    y = np.arange(3000) % 10
    pred = np.where(np.arange(3000) < 2700, y, (y + 1) % 10)
    lengths = np.full((3000, 10), 0.1)
    lengths[np.arange(3000), pred] = 0.9
    t = fit_temperature(lengths, y)
    # by hand: softmax max = 1 / (1 + 9 exp(-0.8 / T)) = 0.9 at T = 0.8 / ln 81
    assert t == pytest.approx(0.8 / np.log(81), rel=1e-3)
    assert softmax_confidence(lengths, t)[0] == pytest.approx(0.9, rel=1e-4)


def test_reliability_bins_match_a_loop_and_ece():
    rng = np.random.default_rng(3)
    conf = rng.random(500)
    hit = rng.random(500) < conf
    count, acc, mean_conf = reliability(conf, hit, 15)
    for m in range(15):
        sel = (conf > m / 15) & (conf <= (m + 1) / 15)
        assert count[m] == sel.sum()
        assert acc[m] == pytest.approx(hit[sel].mean())
        assert mean_conf[m] == pytest.approx(conf[sel].mean())
    ok = count > 0
    assert ece(conf, hit) == pytest.approx(
        (count[ok] * np.abs(acc[ok] - mean_conf[ok])).sum() / conf.size)
