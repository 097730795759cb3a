"""Reconstruction error against the class-mean image: hand-worked numbers and a loop oracle."""

import math

import torch

from bench.cell.evaluate import Predictions, class_mean_images, reconstruction_rows


def test_reconstruction_rows_by_hand():
    # Two 2x2 images; the model predicts class 1 for both; the class-1 mean image is all 0.5.
    images = torch.tensor([[[0, 255], [255, 0]], [[255, 255], [255, 255]]], dtype=torch.uint8)
    means = torch.zeros(10, 2, 2)
    means[1] = 0.5
    scores = torch.zeros(2, 10)
    scores[:, 1] = 1.0
    # summed squared reconstruction errors per image: 0.4 and 0.8 over 4 pixels
    preds = Predictions(scores, torch.zeros(2, 1), torch.tensor([0.4, 0.8]), None)
    rows = {r["metric"]: r["value"] for r in reconstruction_rows(preds, images, means)}
    assert math.isclose(rows["recon_mse"], (0.4 + 0.8) / 2 / 4, rel_tol=1e-6)  # 0.15 per pixel
    # every pixel is 0.5 away from the class mean: squared error 0.25 per pixel
    assert math.isclose(rows["recon_mse_class_mean"], 0.25)
    no_decoder = Predictions(scores, torch.zeros(2, 1), None, None)
    assert reconstruction_rows(no_decoder, images, means) == []


def test_class_means_equal_a_per_class_loop():
    from bench.data.canvas import place
    from bench.data.mnist import load_split

    means = class_mean_images("mnist", 28)
    images, labels = load_split("train")
    for c in (0, 7):
        x = place(images[labels == c], 28).double() / 255
        assert torch.allclose(means[c].double(), x.mean(0), atol=1e-5)
