"""Sweep points report the digits that leave the canvas, and accuracy on the digits that fit.

Oracles: hand-built digits whose fate is known by construction (a 2x2 dot at the centre cannot
leave a 40x40 canvas under a 12 px translation; a box spanning columns and rows 1..38 must), and
the ink mass of the warped image (a translation keeps every pixel's mass unless some leaves the
canvas).
"""

from __future__ import annotations

import math

import torch

from bench.cell.evaluate import Predictions, set_metrics
from bench.data import affine

CANVAS = 40
N_DOTS, N_WIDE = 5, 3
VALUES = (0.0, 12.0)


def _digits() -> torch.Tensor:
    images = torch.zeros(N_DOTS + N_WIDE, CANVAS, CANVAS, dtype=torch.uint8)
    images[:N_DOTS, 19:21, 19:21] = 200  # 2x2 dot at the centre
    images[N_DOTS:, 1:39, 1:39] = 200  # a box 1 px from every edge
    return images


def _sweep():
    """The translate sweep over the hand-built digits, point-major as the generator builds it."""
    digits = _digits()
    n = digits.shape[0]
    sources = torch.arange(n).repeat(len(VALUES))
    values = torch.tensor(VALUES, dtype=torch.float64).repeat_interleave(n)
    gen = torch.Generator().manual_seed(7)
    params = affine.sweep_params("translate", values, affine.digit_bboxes(digits)[sources],
                                 CANVAS, gen)
    params["source"] = sources
    return digits[sources], params


def test_fits_matches_the_construction_and_the_ink_mass():
    images, params = _sweep()
    n = N_DOTS + N_WIDE
    wide = (torch.arange(len(images)) % n) >= N_DOTS
    at_12 = params["value"] == 12.0
    assert torch.equal(~params["fits"], wide & at_12)
    warped = affine.warp_float(images, affine.affine_matrices(params))
    mass_kept = warped.sum(dim=(1, 2)) / (images.float() / 255).sum(dim=(1, 2))
    assert torch.equal(mass_kept < 0.999, ~params["fits"])  # ink lost iff not fitting


def test_set_metrics_reports_cropped_fraction_and_accuracy_on_fitting_digits():
    images, params = _sweep()
    n = N_DOTS + N_WIDE
    labels = torch.zeros(len(images), dtype=torch.long)
    pred = torch.zeros(len(images), dtype=torch.long)
    at_12 = torch.nonzero(params["value"] == 12.0).squeeze(1)
    pred[at_12[N_DOTS:]] = 1  # every cropped box wrong
    pred[at_12[0]] = 1  # and one dot that fits
    scores = torch.nn.functional.one_hot(pred, 10).float()
    feats = torch.randn(len(images), 4, generator=torch.Generator().manual_seed(0))
    rows = set_metrics("sweep-translate", Predictions(scores, feats, None, None), labels,
                       params, None)
    got = {(r["metric"], r["factor_value"]): float(r["value"]) for r in rows
           if not math.isnan(r["factor_value"])}
    assert got[("cropped_fraction", 0.0)] == 0.0
    assert got[("cropped_fraction", 12.0)] == N_WIDE / n  # 3 of 8
    assert got[("accuracy", 0.0)] == 1.0
    assert got[("accuracy_fits", 0.0)] == 1.0
    assert got[("accuracy", 12.0)] == (N_DOTS - 1) / n  # 4 of 8, cropped digits counted
    assert got[("accuracy_fits", 12.0)] == (N_DOTS - 1) / N_DOTS  # 4 of the 5 that fit


def test_accuracy_fits_is_nan_when_every_digit_is_cropped():
    images, params = _sweep()
    params["fits"] = torch.zeros_like(params["fits"])
    scores = torch.nn.functional.one_hot(torch.zeros(len(images), dtype=torch.long), 10).float()
    rows = set_metrics("sweep-translate", Predictions(scores, torch.zeros(len(images), 4), None,
                                                      None),
                       torch.zeros(len(images), dtype=torch.long), params, None)
    fits = [r for r in rows if r["metric"] == "accuracy_fits"]
    assert len(fits) == len(VALUES) and all(math.isnan(r["value"]) for r in fits)
    assert all(r["value"] == 1.0 for r in rows if r["metric"] == "cropped_fraction")
