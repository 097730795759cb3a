"""Part-arrangement scores: the Mahalanobis density against a literal numpy computation and
sklearn, and the scrambled-vs-intact rows of a stub with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.cell.evaluate import Predictions, set_metrics
from bench.metrics import auroc, ledoit_wolf, mahalanobis_fit, mahalanobis_score


def test_ledoit_wolf_matches_sklearn():
    sk_cov = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(0)
    for n, d in ((200, 5), (50, 120)):  # fewer rows than features too
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        ref, _ = sk_cov.ledoit_wolf(x, assume_centered=True)
        assert np.allclose(ledoit_wolf(x), ref, atol=1e-10)


def test_mahalanobis_matches_a_literal_loop():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 4)) + np.repeat(np.eye(4)[:3] * 5, 100, axis=0)
    y = np.repeat([0, 1, 2], 100)
    means, precision = mahalanobis_fit(x, y)
    # literal: class means, pooled within-class covariance (shrunk as the function documents)
    mu = np.stack([x[y == c].mean(0) for c in range(3)])
    resid = np.concatenate([x[y == c] - mu[c] for c in range(3)])
    cov = ledoit_wolf(resid)
    inv = np.linalg.inv(cov)
    q = rng.normal(size=(20, 4)) * 3
    ref = [min(float((v - m) @ inv @ (v - m)) for m in mu) for v in q]
    assert np.allclose(means, mu)
    assert np.allclose(mahalanobis_score(q, means, precision), ref, rtol=1e-8)
    # with no shrinkage to speak of (many rows, few features) it is close to scipy's distance
    from scipy.spatial.distance import mahalanobis

    plain = np.linalg.inv(np.cov(resid.T, bias=True))
    d0 = mahalanobis(q[0], mu[0], plain) ** 2
    assert mahalanobis_score(q[:1], mu[:1], plain)[0] == pytest.approx(d0)


def test_density_auroc_matches_sklearn_roc_auc():
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(2)
    fit_x = rng.normal(size=(500, 6))
    fit_y = rng.integers(0, 10, 500)
    means, precision = mahalanobis_fit(fit_x, fit_y)
    intact = mahalanobis_score(rng.normal(size=(200, 6)), means, precision)
    scrambled = mahalanobis_score(rng.normal(size=(200, 6)) * 1.5, means, precision)
    labels = np.r_[np.ones(200), np.zeros(200)]
    ref = roc_auc_score(labels, -np.r_[intact, scrambled])
    assert auroc(-intact, -scrambled) == pytest.approx(ref)
    assert ref > 0.7  # the wider cloud is less typical


def _stub(pred, density=None, logit_scale=None, n_classes=10):
    """Predictions of a stub model: class ``pred[i]`` with score 0.9 (or a softmax of logits
    ``logit_scale[i]`` on the predicted class when given)."""
    n = len(pred)
    if logit_scale is None:
        scores = torch.full((n, n_classes), 0.01)
        scores[torch.arange(n), torch.tensor(pred)] = 0.9
        logits = scores.clone()  # lengths: the scores are not a softmax of the logits
    else:
        logits = torch.zeros(n, n_classes)
        logits[torch.arange(n), torch.tensor(pred)] = torch.tensor(logit_scale, dtype=torch.float)
        scores = torch.softmax(logits, 1)
    return Predictions(scores, torch.zeros(n, 2), None, None, logits, None,
                       None if density is None else torch.tensor(density, dtype=torch.double))


def _rows(name, preds, labels, intact):
    rows = set_metrics(name, preds, torch.tensor(labels), {}, intact)
    return {r["metric"]: r["value"] for r in rows if math.isnan(r["factor_value"])}


def test_kept_is_conditioned_on_intact_correct_and_flip_rate():
    labels = [0, 1, 2, 3]
    intact = _stub([0, 1, 2, 9], density=[1.0, 1.0, 1.0, 1.0])  # the 4th digit is wrong intact
    scrambled = _stub([0, 5, 2, 9], density=[2.0, 2.0, 2.0, 2.0])
    rows = _rows("scramble-g2", scrambled, labels, intact)
    assert rows["accuracy"] == 0.5  # unconditioned: 2 of 4
    assert rows["intact_correct"] == 0.75
    assert rows["kept_given_intact_correct"] == pytest.approx(2 / 3)  # 2 of the 3 right intact
    assert rows["flip_rate"] == 0.25  # only digit 2 changes its prediction
    assert rows["auroc_mahalanobis"] == 1.0  # every intact digit nearer its class
    assert "auroc_max_logit" not in rows and "auroc_energy" not in rows  # lengths, not softmax


def test_weaker_model_does_not_look_more_part_aware():
    # Model A: right on every intact digit, keeps 1 of 4 scrambled. Model B: right on 1 intact
    # digit only, and keeps it. Unconditioned "kept" ranks B as high as A; conditioned, B keeps 1/1.
    labels = [0, 1, 2, 3]
    a = _rows("scramble-g2", _stub([0, 5, 5, 5]), labels, _stub([0, 1, 2, 3]))
    b = _rows("scramble-g2", _stub([0, 5, 5, 5]), labels, _stub([0, 7, 7, 7]))
    assert a["accuracy"] == b["accuracy"] == 0.25
    assert a["kept_given_intact_correct"] == 0.25 and b["kept_given_intact_correct"] == 1.0


def test_softmax_models_get_max_logit_and_energy_in_the_stated_direction():
    labels = [0, 1, 2, 3]
    intact = _stub([0, 1, 2, 3], logit_scale=[5.0, 6.0, 7.0, 8.0])
    scrambled = _stub([0, 1, 2, 3], logit_scale=[1.0, 2.0, 3.0, 4.0])
    rows = _rows("scramble-g2", scrambled, labels, intact)
    assert rows["auroc_max_logit"] == 1.0 and rows["auroc_energy"] == 1.0
    assert rows["auroc_confidence"] == 1.0
    assert "auroc_mahalanobis" not in rows  # no density fitted


def test_calibrated_ece_rows_on_the_clean_set():
    labels = [0, 1, 2, 3]
    preds = _stub([0, 1, 2, 9], logit_scale=[4.0, 4.0, 4.0, 4.0])
    rows = set_metrics("clean", preds, torch.tensor(labels), {}, None, temperature=2.0)
    flat = {r["metric"]: r["value"] for r in rows if math.isnan(r["factor_value"])}
    # by hand: softmax of (2, 0 x 9) -> max = e^2 / (e^2 + 9); 3 of 4 right, one bin
    conf = math.exp(2) / (math.exp(2) + 9)
    assert flat["ece_calibrated"] == pytest.approx(abs(0.75 - conf))
    bins = [r for r in rows if r["metric"] == "reliability_cal_count"]
    assert len(bins) == 15 and sum(r["value"] for r in bins) == 4


def test_predict_records_the_whole_digitcaps_output():
    from bench.cell.evaluate import predict
    from bench.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("capsnet", input_size=28, width=0.125).eval()
    images = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    p = predict(model, images, torch.device("cpu"), batch_size=2)
    with torch.inference_mode():
        x = images.float().div(255).unsqueeze(1)
        v, _ = model.digit_capsules(model.primary_capsules(x))
    assert p.rep.shape == (5, 160)
    assert torch.allclose(p.rep, v.flatten(1), atol=1e-5)
    assert torch.allclose(p.features, v[torch.arange(5), v.norm(dim=-1).argmax(1)], atol=1e-5)
    assert "digit_capsules" not in vars(model)  # the method is restored
    assert not p.softmax_scores  # lengths


def test_heldout_split_is_the_validation_set_and_never_training_images():
    from bench.cell.evaluate import heldout_split
    from bench.cell.train import training_subset
    from bench.data.mnist import load_split

    images, labels = load_split("train")
    spec = {"n": 100, "seed": 1, "canvas": 28, "dataset": "mnist", "train": {"val_size": 300}}
    x, y = heldout_split(spec, limit=50)
    train_idx, val_idx = training_subset(labels, 100, 1, 300)
    assert torch.equal(y, labels[val_idx[:50]]) and torch.equal(x, images[val_idx[:50]])
    x0, y0 = heldout_split({**spec, "train": {"val_size": 0}}, limit=50)
    assert len(y0) == 50
    # none of the drawn images is one of that cell's training images
    train_idx0, _ = training_subset(labels, 100, 1, 0)
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    train_set = {bytes(images[i].numpy()) for i in train_idx0.tolist()}
    assert not any(bytes(im.numpy()) in train_set for im in x0)
    # a cell trained on all 60,000 images (the paper's MNIST table) leaves none to hold out
    x_all, y_all = heldout_split({**spec, "n": 60_000, "train": {"val_size": 0}}, limit=50)
    assert len(x_all) == 0 and len(y_all) == 0


def test_predict_on_a_convnet_keeps_its_features_and_softmax():
    from bench.cell.evaluate import predict
    from bench.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("convnet-maxpool", input_size=28, width=0.125).eval()
    p = predict(model, torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8), torch.device("cpu"))
    assert p.rep is None and p.representation is p.features
    assert p.softmax_scores
    assert torch.allclose(p.scores, torch.softmax(p.logits, 1), atol=1e-6)


def test_self_routing_log_probabilities_are_not_softmax_logits():
    """head-self's logits are log a with sum a = 1: softmax(log a) = a, yet the energy
    logsumexp(log a) = 0 for every input, so no max-logit or energy score is computed for it."""
    from bench.cell.evaluate import predict
    from bench.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("head-self", input_size=28, width=0.25).eval()
    p = predict(model, torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8), torch.device("cpu"))
    assert torch.allclose(torch.logsumexp(p.logits.double(), 1), torch.zeros(4).double(),
                          atol=1e-6)
    assert not p.softmax_scores


def test_confident_on_intact_and_unsure_on_scrambled_gives_auroc_one():
    """A stub sure of every intact digit (score 0.9) and unsure of every scrambled one (0.3):
    intact is the positive class, so the AUROC of the confidence is 1, not 0."""
    labels = [0, 1, 2, 3]
    intact = _stub([0, 1, 2, 3])
    scrambled = _stub([5, 6, 7, 8])
    scrambled.scores[:] = 0.07
    scrambled.scores[torch.arange(4), torch.tensor([5, 6, 7, 8])] = 0.3
    rows = _rows("scramble-g2", scrambled, labels, intact)
    assert rows["auroc_confidence"] == 1.0
    assert rows["accuracy"] == 0.0 and rows["flip_rate"] == 1.0


def test_reconstruction_auroc_counts_a_worse_reconstruction_as_scrambled():
    """Reconstruction errors 1, 2 (intact) against 3, 0.5 (scrambled). Of the 4 (intact,
    scrambled) pairs the intact digit has the smaller error in 2 (1 < 3, 2 < 3; not against 0.5),
    so the AUROC of minus the error is 2/4 = 0.5 by hand; against 3 and 4 it is 4/4 = 1."""
    labels = [0, 1]

    def with_errors(pred, errors):
        p = _stub(pred)
        p.recon_error = torch.tensor(errors, dtype=torch.float)
        return p

    rows = _rows("scramble-g2", with_errors([0, 1], [3.0, 0.5]), labels,
                 with_errors([0, 1], [1.0, 2.0]))
    assert rows["auroc_recon"] == 0.5
    rows = _rows("scramble-g2", with_errors([0, 1], [3.0, 4.0]), labels,
                 with_errors([0, 1], [1.0, 2.0]))
    assert rows["auroc_recon"] == 1.0


def test_sweep_rows_per_grid_point_by_hand():
    """Six digits at two rotation values: right on 2 of 3 at -30 and on 1 of 3 at 30."""
    pred = [0, 1, 9, 3, 9, 9]
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    p = _stub(pred)
    p.rep = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    params = {"value": torch.tensor([-30.0, -30.0, -30.0, 30.0, 30.0, 30.0]),
              "source": torch.tensor([0, 1, 2, 0, 1, 2])}
    rows = set_metrics("sweep-rotation", p, labels, params, None)
    acc = {r["factor_value"]: r["value"] for r in rows if r["metric"] == "accuracy"
           and not math.isnan(r["factor_value"])}
    assert acc == {-30.0: pytest.approx(2 / 3), 30.0: pytest.approx(1 / 3)}
    assert [r["value"] for r in rows if r["metric"] == "cropped_fraction"] == [0.0, 0.0]
