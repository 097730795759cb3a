"""Pure metrics: arrays in, floats out; no files, no devices, no global state.

Every function accepts NumPy arrays, torch tensors (any device; they are copied to the CPU) or
Python sequences, and returns plain Python floats, so the evaluator, the report and the tests use
one definition of each number. The definitions follow the papers the benchmark tests:

- accuracy and error (Sabour et al. 2017, Table 1 reports the test *error* in %): the mean of
  ``pred == label`` and one minus it, computed where the predictions are
  (:func:`bench.cell.evaluate.set_metrics`), so they have no function here.
- top-2 read-out of two overlapping digits (Sabour et al. 2017, Sec. 6, MultiMNIST: the two
  most active digit capsules are taken as the image's two digits): :func:`top2_hits`.
- AUROC: the Mann-Whitney U statistic divided by ``n_pos * n_neg`` (Hanley & McNeil, 1982),
  ties counted half, so a detector that cannot tell the two sets apart scores exactly 0.5.
- ECE: Guo et al. (2017), "On Calibration of Modern Neural Networks", Eq. (3), with M = 15
  equal-width bins.
- a ridge read-out ("linear decodability of the transform") of the factor of variation from a
  model's features. Intervals over seeds, n to a target and paired comparisons are in
  :mod:`bench.stats`.
- temperature scaling (Guo et al. 2017, Sec. 4.2): one scalar T > 0 fitted by minimising the
  negative log-likelihood of ``softmax(logits / T)`` on held-out labelled images.
- a class-conditional Mahalanobis feature-density score (Lee et al. 2018, "A Simple Unified
  Framework for Detecting Out-of-Distribution Samples", Eq. 2: class means and one shared
  covariance; here with Ledoit-Wolf shrinkage, our choice, so that it is defined when the
  features outnumber the fitting images).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import optimize, stats

from bench.errors import BenchError

__all__ = [
    "auroc",
    "top2_hits",
    "ece",
    "decodability_r2",
    "fit_temperature",
    "softmax_confidence",
    "reliability",
    "ledoit_wolf",
    "mahalanobis_fit",
    "mahalanobis_score",
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
# Two digits in one image


def top2_hits(scores: Any, label_a: Any, label_b: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Whether the two highest class scores name the image's two digits.

    Sabour et al. 2017, Sec. 6 (MultiMNIST) read the two most active digit capsules as the
    image's two digits; an image counts as right when both are. The two highest scores are
    ``torch.topk(scores, 2)``; among tied scores, which classes make the two is torch.topk's order.

    Args:
        scores: ``(N, C)`` class scores, C >= 2 (capsule lengths or softmax scores).
        label_a: ``(N,)`` the first digit's class.
        label_b: ``(N,)`` the second digit's class.

    Returns:
        Three bool arrays ``(N,)``: ``both`` (both digits among the top two), ``hit_a`` (the
        first digit among them), ``hit_b`` (the second). ``both == hit_a & hit_b``.

    >>> both, a, b = top2_hits([[0.1, 0.9, 0.8], [0.7, 0.2, 0.6]], [1, 1], [2, 0])
    >>> both.tolist(), a.tolist(), b.tolist()
    ([True, False], [True, False], [True, True])
    """
    z = torch.from_numpy(_np(scores, "scores"))
    a = _np(label_a, "label_a", dtype=np.int64).reshape(-1)
    b = _np(label_b, "label_b", dtype=np.int64).reshape(-1)
    if z.dim() != 2 or z.shape[1] < 2:
        raise BenchError(f"top2_hits: expected scores (N, C) with C >= 2, got shape {tuple(z.shape)}")
    _same_length(z, a, "top2_hits(scores, label_a)")
    _same_length(z, b, "top2_hits(scores, label_b)")
    top = z.topk(2, dim=1).indices.numpy()  # (N, 2)
    hit_a = (top == a[:, None]).any(1)
    hit_b = (top == b[:, None]).any(1)
    return hit_a & hit_b, hit_a, hit_b


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
# Linear decodability of the transform (group-wise cross-validated ridge)

# Our choice: 17 penalties, log-spaced from 1e-3 to 1e5, applied to standardised features.
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 5, 17))


def _group_folds(groups: np.ndarray, k: int) -> list[np.ndarray]:
    """Row indices of ``k`` folds that never split a group: the sorted unique groups are dealt
    round-robin to the folds (deterministic). Fewer folds when there are fewer groups."""
    uniq = np.unique(groups)
    k = min(k, uniq.size)
    fold_of = {g: i % k for i, g in enumerate(uniq)}
    f = np.array([fold_of[g] for g in groups])
    return [np.flatnonzero(f == i) for i in range(k)]


# Our choices for the probe's standardisation (see _ridge_predict): units active on fewer training
# rows are left out, and no unit's standard deviation is taken below this fraction of the median.
MIN_ACTIVE_ROWS = 5
SD_FLOOR = 0.1


def _ridge_predict(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray,
                   alphas: Sequence[float]) -> np.ndarray:
    """Ridge predictions ``(len(alphas), n_test)`` for every penalty from one eigendecomposition.

    Features standardised with the training rows' mean and standard deviation, target centred
    with the training mean. Two guards for sparse features (ReLU units that fire on a few
    images): a unit non-zero on fewer than :data:`MIN_ACTIVE_ROWS` training rows is left out (set
    to 0; constant columns too), and every standard deviation is floored at :data:`SD_FLOOR`
    times the median of the kept units' (our choice: without them a unit that fired on one
    training image gets a tiny SD, and on a held-out digit where it fires its standardised value
    is huge, which sent R^2 to -10 and below for ReLU ConvNets). With ``A`` the standardised training rows
    and ``B`` the test rows: when D <= N, ``A^T A = V diag(l) V^T`` and
    ``y_hat = B V diag(1 / (l + a)) V^T A^T y``; otherwise (dual form) ``A A^T = U diag(l) U^T``
    and ``y_hat = B A^T U diag(1 / (l + a)) U^T y``. Both equal ``B (A^T A + a I)^{-1} A^T y``.
    The linear algebra runs in torch (float64), so that its thread count is torch's
    (:func:`bench.cell.evaluate.evaluate_cell` runs the metrics on one thread).
    """

    xtr_t, xte_t = torch.from_numpy(xtr), torch.from_numpy(xte)
    mu, sd = xtr_t.mean(0), xtr_t.std(0, unbiased=False)
    keep = ((xtr_t != 0).sum(0) >= min(MIN_ACTIVE_ROWS, xtr_t.shape[0])) & (sd > 0)
    floor = SD_FLOOR * float(sd[keep].median()) if bool(keep.any()) else 1.0
    sd = torch.where(keep, sd.clamp(min=floor), torch.ones_like(sd))
    a = torch.where(keep, (xtr_t - mu) / sd, torch.zeros_like(xtr_t))
    b = torch.where(keep, (xte_t - mu) / sd, torch.zeros_like(xte_t))
    y_mean = float(ytr.mean())
    yc = torch.from_numpy(ytr) - y_mean
    if a.shape[1] <= a.shape[0]:
        lam, vec = torch.linalg.eigh(a.T @ a)
        rhs, proj = vec.T @ (a.T @ yc), b @ vec  # (r,), (n_test, r)
    else:
        lam, vec = torch.linalg.eigh(a @ a.T)
        rhs, proj = vec.T @ yc, (b @ a.T) @ vec
    lam = lam.clamp(min=0.0)  # round-off below 0 on a rank-deficient Gram matrix
    al = torch.tensor(list(alphas), dtype=torch.float64)[:, None]
    coef = rhs[None, :] / (lam[None, :] + al)  # (A, r)
    return (coef @ proj.T + y_mean).numpy()


def decodability_r2(features: Any, target: Any, groups: Any, n_folds: int = 5,
                    alphas: Sequence[float] = RIDGE_ALPHAS) -> float:
    """Linear decodability of the transform: held-out R^2 of a ridge read-out, split by digit.

    Outer ``n_folds`` folds by ``groups`` (the source digit: the same digit never lies on both
    sides); in each outer training part the penalty is chosen from ``alphas`` by an inner
    ``n_folds - 1``-fold group-wise cross-validation (smallest pooled squared error), refitted on
    the whole outer training part and applied to the held-out fold. The out-of-fold predictions
    of all rows are pooled: ``R^2 = 1 - sum (y - y_hat)^2 / sum (y - mean(y))^2``.

    Because the penalty is chosen on held-out digits, features that carry no information give
    R^2 near 0 (a large penalty, predicting the training mean) whatever their dimension, and an
    exactly linear code gives R^2 near 1 whatever its dimension.

    Args:
        features: (N, D) representation of each image.
        target: (N,) factor value applied to each image.
        groups: (N,) source digit of each image.

    Returns:
        R^2 (at most 1; slightly negative for uninformative features); NaN with fewer than 3
        groups or a constant target.
    """
    x = _np(features, "features")
    y = _np(target, "target").reshape(-1)
    g = _np(groups, "groups", dtype=np.int64).reshape(-1)
    x = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    _same_length(x, y, "decodability_r2(features, target)")
    _same_length(x, g, "decodability_r2(features, groups)")
    if np.unique(g).size < 3 or n_folds < 3 or float(np.ptp(y)) == 0.0:
        return math.nan
    pred = np.empty_like(y)
    for te in _group_folds(g, n_folds):
        tr = np.setdiff1d(np.arange(y.size), te)
        sse = np.zeros(len(alphas))
        for ite in _group_folds(g[tr], n_folds - 1):
            itr = np.setdiff1d(np.arange(tr.size), ite)
            p = _ridge_predict(x[tr][itr], y[tr][itr], x[tr][ite], alphas)
            sse += ((p - y[tr][ite][None, :]) ** 2).sum(1)
        best = alphas[int(np.argmin(sse))]  # ties: the first, i.e. the smallest penalty
        pred[te] = _ridge_predict(x[tr], y[tr], x[te], [best])[0]
    return 1.0 - float(((y - pred) ** 2).sum()) / float(((y - y.mean()) ** 2).sum())


# --------------------------------------------------------------------------------------------
# Calibration by temperature scaling


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def fit_temperature(logits: Any, labels: Any, bounds: tuple[float, float] = (1e-3, 1e3)) -> float:
    """The temperature T minimising the mean NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    A bounded scalar search (``scipy.optimize.minimize_scalar``) over log T in
    ``[log bounds[0], log bounds[1]]``; the NLL is smooth in log T. For a CapsNet the "logits"
    are the 10 capsule lengths (in [0, 1]), so T comes out small (lengths differ by < 1).

    Args:
        logits: (N, 10) scores whose softmax is calibrated (logits, or capsule lengths).
        labels: (N,) true classes.

    Returns:
        T > 0; NaN for N = 0.
    """

    z = _np(logits, "logits")
    y = _np(labels, "labels", dtype=np.int64).reshape(-1)
    if z.ndim != 2:
        raise BenchError(f"fit_temperature: expected logits (N, C), got shape {z.shape}")
    _same_length(z, y, "fit_temperature(logits, labels)")
    if y.size == 0:
        return math.nan
    rows = np.arange(y.size)

    def nll(log_t: float) -> float:
        return float(-_log_softmax(z / math.exp(log_t))[rows, y].mean())

    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    res = optimize.minimize_scalar(nll, bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-6})
    return float(math.exp(res.x))


def softmax_confidence(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """``(N,)`` max of ``softmax(logits / temperature)``, the calibrated confidence."""
    z = _np(logits, "logits")
    if not temperature > 0:
        raise BenchError(f"softmax_confidence: expected temperature > 0, got {temperature}")
    return np.exp(_log_softmax(z / temperature).max(1))


def reliability(confidence: Any, correct: Any, n_bins: int = 15
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin ``(count, accuracy, mean confidence)``, each ``(n_bins,)``, with the bins of
    :func:`ece` (right-closed, equal width); accuracy and confidence are NaN in empty bins.
    ``ece == sum(count * |accuracy - confidence|) / N`` over the non-empty bins."""
    conf = _np(confidence, "confidence").reshape(-1)
    hit = _np(correct, "correct").reshape(-1)
    _same_length(conf, hit, "reliability(confidence, correct)")
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
    return count, acc, mean_conf


# --------------------------------------------------------------------------------------------
# Feature density: class-conditional Mahalanobis distance


def ledoit_wolf(residuals: Any) -> np.ndarray:
    """Ledoit-Wolf (2004) shrunk covariance ``(D, D)`` of already-centred rows ``(N, D)``.

    ``(1 - s) S + s mu I`` with ``S = X^T X / N``, ``mu = tr(S) / D`` and the shrinkage s of
    Ledoit & Wolf's Lemma 3.2 estimate, clipped to [0, 1] (the formula of
    ``sklearn.covariance.ledoit_wolf_shrinkage`` with ``assume_centered=True``).
    """

    x = _np(residuals, "residuals")
    n, d = x.shape
    xt = torch.from_numpy(x)
    s = (xt.T @ xt).numpy() / n
    mu = float(np.trace(s)) / d
    x2 = xt**2
    beta_ = float((x2.T @ x2).sum())
    delta_ = float((s**2).sum())
    beta = (beta_ / n - delta_) / (d * n)
    delta = (delta_ - 2 * mu * float(np.trace(s)) + d * mu**2) / d
    beta = min(beta, delta)
    shrink = 0.0 if beta == 0 else beta / delta
    return (1 - shrink) * s + shrink * mu * np.eye(d)


def mahalanobis_fit(features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(C, D)`` (the classes present, in sorted order) and the shared precision
    ``(D, D)``: the inverse of the Ledoit-Wolf covariance of the within-class residuals."""
    x = _np(features, "features")
    y = _np(labels, "labels", dtype=np.int64).reshape(-1)
    x = x.reshape(x.shape[0], -1)
    _same_length(x, y, "mahalanobis_fit(features, labels)")

    classes = np.unique(y)
    if classes.size == 0:
        raise BenchError("mahalanobis_fit: no images to fit")
    means = np.stack([x[y == c].mean(0) for c in classes])
    resid = x - means[np.searchsorted(classes, y)]
    # torch for the (D, D) algebra, as in _ridge_predict
    cov = torch.from_numpy(ledoit_wolf(resid))
    return means, torch.linalg.pinv(cov, hermitian=True).numpy()


def mahalanobis_score(features: Any, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``(N,)`` min over classes c of ``(x - mu_c)^T P (x - mu_c)``: small = typical of some
    class. Label-free: no class label of the scored image is used."""

    x = torch.from_numpy(_np(features, "features")).reshape(len(features), -1)
    p, m = torch.from_numpy(np.asarray(precision, np.float64)), torch.from_numpy(
        np.asarray(means, np.float64))
    xp = x @ p  # (N, D)
    # (x - m)^T P (x - m) = x^T P x - 2 m^T P x + m^T P m, for all classes at once
    quad = (xp * x).sum(1)[:, None] - 2 * xp @ m.T + ((m @ p) * m).sum(1)
    return quad.min(1).values.numpy()


# --------------------------------------------------------------------------------------------
# Gradient-masking checks of an adversarial evaluation (Carlini et al. 2019, "On Evaluating
# Adversarial Robustness", Sec. 5 and its checklist; Athalye, Carlini & Wagner, ICML 2018,
# Sec. 3.1): signs that a gradient attack, not the model, is what failed.

MASKING_TOLERANCE = 0.03  # our choice: 3 points (on 250 images at 50 %, one binomial SE is 3.2)
NEAR_ZERO = 0.10  # our choice: "near 0" at the largest budget


def masking_checks(pgd: dict[float, float], fgsm: dict[float, float], stated: float, *,
                   transfer: float | None = None, square: float | None = None,
                   pgd_on_square_digits: float | None = None, votes: float | None = None,
                   tol: float = MASKING_TOLERANCE, near_zero: float = NEAR_ZERO
                   ) -> list[tuple[str, bool | None, str]]:
    """The checks of one model, each ``(check, passed, numbers)``; ``passed`` None when the
    check has no data. Accuracies are fractions, keyed by budget.

    1. PGD is never weaker than FGSM (an iterative attack that does worse than its own first
       step has a gradient problem): ``pgd[e] <= fgsm[e] + tol`` at every budget both have.
    2. Accuracy falls with the budget: PGD's accuracy never rises by more than ``tol`` from one
       budget to the next larger one.
    3. Near 0 at the largest budget: ``pgd[max] <= near_zero``.
    4. A transfer (black-box) attack is not stronger than the white-box one:
       ``transfer >= pgd[stated] - tol``.
    5. A gradient-free attack (Square) is not stronger than PGD on the same digits:
       ``square >= pgd_on_square_digits - tol``.
    6. The vote attack (routing bypassed) is not stronger than PGD through the routing:
       ``votes >= pgd[stated] - tol`` (capsule models only).
    """
    out: list[tuple[str, bool | None, str]] = []
    common = sorted(set(pgd) & set(fgsm))
    if common:
        worse = [e for e in common if pgd[e] > fgsm[e] + tol]
        out.append(("PGD at least as strong as FGSM", not worse, ", ".join(
            f"ε={e:g}: {100 * pgd[e]:.1f} vs {100 * fgsm[e]:.1f} %" for e in common)))
    else:
        out.append(("PGD at least as strong as FGSM", None, "no budgets of both"))
    budgets = sorted(pgd)
    rises = [(a, b) for a, b in zip(budgets, budgets[1:], strict=False) if pgd[b] > pgd[a] + tol]
    out.append(("accuracy falls with the budget", not rises if len(budgets) > 1 else None,
                " → ".join(f"{100 * pgd[e]:.1f}" for e in budgets) + " %"))
    if budgets:
        top = budgets[-1]
        out.append((f"near 0 at the largest budget (≤ {100 * near_zero:g} %)",
                    pgd[top] <= near_zero, f"ε={top:g}: {100 * pgd[top]:.1f} %"))
    base = pgd.get(stated)
    for name, value, against in (
            ("transfer attack not stronger than white-box", transfer, base),
            ("gradient-free (Square) not stronger than PGD", square, pgd_on_square_digits),
            ("vote attack not stronger than PGD", votes, base)):
        if value is None or against is None or not (math.isfinite(value) and math.isfinite(against)):
            if name.startswith("vote") and votes is None:
                continue  # a model without routing
            out.append((name, None, "not measured"))
            continue
        what = "PGD on the same digits" if name.startswith("gradient-free") else "PGD"
        out.append((name, value >= against - tol,
                    f"{100 * value:.1f} vs {what} {100 * against:.1f} % (ε={stated:g})"))
    return out
