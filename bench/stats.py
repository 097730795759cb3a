"""The statistics behind the benchmark's verdicts: intervals over seeds, paired comparisons, read-outs.

Pure: numbers in, :class:`Interval` or floats out; no files, no devices, no global state.

Interval method. Every interval here is a Student-t confidence interval over *seeds*:
``mean +- t_{(1+level)/2, k-1} * s / sqrt(k)`` with ``s`` the sample standard deviation (ddof=1)
of the k per-seed values (Student 1908, "The probable error of a mean").
Seeds are the unit of replication: one seed fixes a training subset, its order and the run's other
randomness, so the k per-seed numbers are the independent observations; the test images of one run
are not (they share one trained model), so a binomial interval over test images would measure only
test-set noise and miss the seed-to-seed spread. With the usual 3-5 seeds the t quantile (4.30 for
3 seeds, 2.78 for 5) makes the intervals honestly wide.

- Comparisons between models are *paired* by seed (seed s gives every model the same training
  subset and order): :func:`paired_difference` takes the t-interval of the per-seed differences,
  and :func:`ratio_interval` that of the per-seed log ratios, so the seed-to-seed variation that
  both models share cancels.
- Positive quantities that span orders of magnitude (the training-set size needed to reach a
  target accuracy, :func:`n_to_target`) get the t-interval on the log scale, exponentiated
  (:func:`geometric_interval`): the estimate is a geometric mean, the interval is asymmetric.
- Accuracies are fractions in [0, 1]; a t-interval knows nothing of that, so its bounds are clipped
  to the allowed range, and ``Interval.clipped`` marks it (the report should show the mark: such an
  interval rests on a normal approximation that is poor there).
- Verdicts come from the interval alone (:data:`VERDICT_RULE`, :func:`verdict`): no p-values.
- Whether the cells of a run converged is a test, not an estimate: one exact sign test per cell
  on its validation images (:func:`sign_test_p`), with Holm's correction over the run's cells
  (:func:`holm`), so that "every cell converged" is not rejected by chance alone.

Figures: the bands drawn around curves must come from :func:`mean_interval` (same level, same
clipping), so that a band equals the interval printed in the table for the same cell.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _st

from bench.errors import BenchError

__all__ = [
    "Interval",
    "with_digit_variance",
    "digit_weights",
    "p_value",
    "holm_adjusted",
    "wilson_interval",
    "mean_interval",
    "paired_difference",
    "n_to_target",
    "geometric_interval",
    "ratio_interval",
    "matched_accuracy",
    "verdict",
    "VERDICT_RULE",
]

VERDICT_RULE = (
    "A claim is supported when the whole 95 % interval of its effect (paired over seeds, and over "
    "test digits where the run has its per-image store) lies on the "
    "claimed side of no effect (0 for differences, 1 for ratios), contradicted when it lies wholly on "
    "the other side, and inconclusive when it contains no effect or could not be computed."
)


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval over seeds.

    Attributes:
        estimate: the point estimate (mean, mean difference, geometric mean (ratio), ...).
        low, high: the interval at the level asked (95 % by default); both NaN when it could not
            be computed (fewer than 2 seeds).
        n: the number of seeds (or seed pairs) the interval rests on.
        method: one line saying how it was computed, e.g. "Student t over 5 seeds, clipped to
            [0, 1]".
        clipped: True when a bound was clipped to the allowed range.
    """

    estimate: float
    low: float
    high: float
    n: int
    method: str
    clipped: bool = False
    # The standard error and degrees of freedom of the t-interval (on the log scale when
    # ``log``): what :func:`p_value` and :func:`with_digit_variance` read. NaN/0 when unknown.
    se: float = math.nan
    df: int = 0
    log: bool = False

    def contains(self, x: float) -> bool:
        """``low <= x <= high`` (closed); False when the interval is NaN."""
        return bool(self.low <= x <= self.high)

    def half_width(self) -> float:
        """``(high - low) / 2``; NaN when the interval is NaN. After clipping, the interval is no
        longer symmetric about the estimate; this is still half its length."""
        return (self.high - self.low) / 2.0


# --------------------------------------------------------------------------------------------
# helpers


def _check_level(level: float, who: str) -> None:
    if not 0 < level < 1:
        raise BenchError(f"{who}: expected 0 < level < 1, got {level}")


def _floats(values: Any, who: str) -> np.ndarray:
    """A 1-D float array of ``values`` (a sequence, an array or the values of a mapping), None
    turned into NaN; infinities are an error."""
    if isinstance(values, Mapping):
        values = list(values.values())
    if hasattr(values, "detach"):  # a torch tensor, without importing torch here
        values = values.detach().to("cpu").numpy()
    if not isinstance(values, np.ndarray):
        values = [math.nan if v is None else v for v in values]
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise BenchError(f"{who}: expected numbers, got {type(values).__name__} ({e})") from None
    if np.isinf(v).any():
        raise BenchError(f"{who}: expected finite values, found an infinity")
    return v


def _pairs(a: Mapping[Any, Any], b: Mapping[Any, Any], who: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The values of ``a`` and ``b`` at the seeds both hold with a number (not None, not NaN),
    in sorted seed order, and how many common seeds were dropped for a None/NaN."""
    if not isinstance(a, Mapping) or not isinstance(b, Mapping):
        raise BenchError(
            f"{who}: expected mappings seed -> value, got {type(a).__name__} and {type(b).__name__}"
        )
    common = sorted(set(a) & set(b))
    xa = _floats([a[s] for s in common], who)
    xb = _floats([b[s] for s in common], who)
    keep = ~(np.isnan(xa) | np.isnan(xb))
    return xa[keep], xb[keep], int((~keep).sum())


def _seeds(k: int) -> str:
    return f"{k} seed" + ("" if k == 1 else "s")


def _t_interval(x: np.ndarray, level: float) -> tuple[float, float, float]:
    """(mean, low, high) of the Student-t interval of the mean of ``x`` (k >= 2 finite values)."""
    k = x.size
    mean = float(x.mean())
    t = float(_st.t.ppf((1.0 + level) / 2.0, df=k - 1))
    half = t * float(x.std(ddof=1)) / math.sqrt(k)
    return mean, mean - half, mean + half


def _level_note(level: float) -> str:
    return "" if level == 0.95 else f" at level {level:g}"


def _no_interval(estimate: float, k: int, what: str) -> Interval:
    note = "no seeds" if k == 0 else "one seed"
    return Interval(estimate, math.nan, math.nan, k, f"{note}{what}: no interval")


def _clipped_interval(
    x: np.ndarray, level: float, bounds: tuple[float, float] | None, name: str, extra: str = ""
) -> Interval:
    """The t-interval of the mean of ``x``, clipped to ``bounds``; ``x`` has no NaN."""
    k = x.size
    if k == 0:
        return _no_interval(math.nan, 0, extra)
    if k == 1:
        return _no_interval(float(x[0]), 1, extra)
    mean, low, high = _t_interval(x, level)
    return _clip(Interval(mean, low, high, k, f"{name}{_level_note(level)} over {_seeds(k)}{extra}",
                          se=float(x.std(ddof=1)) / math.sqrt(k), df=k - 1), bounds)


def _clip(iv: Interval, bounds: tuple[float, float] | None) -> Interval:
    """``iv`` with its ends clipped to ``bounds`` (``clipped=True`` and ", clipped to [a, b]" in
    ``method`` when either moved); unchanged without bounds or a finite interval."""
    if bounds is None or not (np.isfinite(iv.low) and np.isfinite(iv.high)):
        return iv
    lo_b, hi_b = bounds
    if iv.low >= lo_b and iv.high <= hi_b:
        return iv
    return dataclasses.replace(iv, low=max(iv.low, lo_b), high=min(iv.high, hi_b), clipped=True,
                               method=f"{iv.method}, clipped to [{lo_b:g}, {hi_b:g}]")


def _check_bounds(x: np.ndarray, bounds: tuple[float, float] | None, who: str) -> None:
    if bounds is None:
        return
    lo_b, hi_b = bounds
    if not lo_b < hi_b:
        raise BenchError(f"{who}: expected bounds (low, high) with low < high, got {bounds}")
    bad = x[(x < lo_b) | (x > hi_b)]
    if bad.size:
        raise BenchError(
            f"{who}: expected values in [{lo_b:g}, {hi_b:g}], found {bad[0]:g}"
            " (accuracies are fractions, not percent)"
        )


def _log_interval(r: np.ndarray, level: float, what: str, extra: str = "") -> Interval:
    """The t-interval on ``log(r)``, exponentiated; ``r`` positive, no NaN."""
    k = r.size
    if k == 0:
        return _no_interval(math.nan, 0, extra)
    if k == 1:
        return _no_interval(float(r[0]), 1, extra)
    mean, low, high = _t_interval(np.log(r), level)
    method = f"Student t{_level_note(level)} on {what} over {_seeds(k)}, exponentiated{extra}"
    return Interval(math.exp(mean), math.exp(low), math.exp(high), k, method,
                    se=float(np.log(r).std(ddof=1)) / math.sqrt(k), df=k - 1, log=True)


# --------------------------------------------------------------------------------------------
# intervals


def mean_interval(
    values: Sequence[float] | Mapping[int, float] | Any,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    level: float = 0.95,
) -> Interval:
    """Mean over seeds with its Student-t interval, clipped to ``bounds``.

    ``mean +- t_{(1+level)/2, k-1} * s / sqrt(k)``, ``s`` the sample standard deviation (ddof=1)
    of the k values; then ``low = max(low, bounds[0])``, ``high = min(high, bounds[1])``, and
    ``clipped=True`` (with ", clipped to [0, 1]" in ``method``) when either moved.

    Special cases: NaN and None values (failed cells) are dropped first, and ``n`` counts the rest;
    one value: estimate = that value, ``low = high = nan``, method "one seed: no interval"; none:
    all NaN. Values that are all equal give a zero-width interval at the mean (the data show no
    spread; our choice: no floor is invented). ``bounds=None``: no clipping (for unbounded
    quantities).

    Args:
        values: one number per seed: a sequence, an array, or a mapping seed -> value.
        bounds: the allowed range (default (0, 1): accuracies are fractions), or None.
        level: the confidence level.

    Raises:
        BenchError: a value outside ``bounds`` (our choice: 95.0 instead of 0.95 is a units bug,
            not a datum), an infinity, or a level outside (0, 1).

    >>> iv = mean_interval([0.90, 0.92, 0.94])  # mean 0.92, s 0.02, t(0.975, 2) = 4.303
    >>> round(iv.estimate, 6), round(iv.half_width(), 6)
    (0.92, 0.049683)
    """
    _check_level(level, "mean_interval")
    x = _floats(values, "mean_interval")
    x = x[~np.isnan(x)]
    _check_bounds(x, bounds, "mean_interval")
    return _clipped_interval(x, level, bounds, "Student t")


def paired_difference(
    a: Mapping[int, float],
    b: Mapping[int, float],
    level: float = 0.95,
    bounds: tuple[float, float] | None = (-1.0, 1.0),
) -> Interval:
    """Mean of the per-seed differences ``a[s] - b[s]`` with its Student-t interval (paired t).

    ``d_s = a[s] - b[s]`` over the seeds present in both mappings with a number in each (None and
    NaN drop the pair); ``mean(d) +- t_{(1+level)/2, k-1} * sd(d) / sqrt(k)``, the interval of
    the paired t-test (``scipy.stats.ttest_rel(a, b).confidence_interval()``). Because seed s gives
    both models the same training subset and order, the variation from seed to seed that both
    share cancels in ``d_s``; the unpaired interval of the two means would count it twice.

    Clipped to ``bounds`` (default (-1, 1): a difference of two accuracies), ``clipped=True`` when
    a bound moved. Fewer than 2 common seeds: estimate = the one difference (NaN for none),
    ``low = high = nan``. ``method`` names the seeds dropped for a missing value, if any.

    Raises:
        BenchError: ``a`` or ``b`` is not a mapping seed -> value, a difference lies outside
            ``bounds``, or a level outside (0, 1).
    """
    _check_level(level, "paired_difference")
    xa, xb, dropped = _pairs(a, b, "paired_difference")
    d = xa - xb
    _check_bounds(d, bounds, "paired_difference")
    extra = f" ({_seeds(dropped)} dropped: a missing value)" if dropped else ""
    return _clipped_interval(d, level, bounds, "paired Student t on a - b", extra)


def geometric_interval(values: Mapping[int, float] | Sequence[float], level: float = 0.95,
                       bounds: tuple[float, float] | None = None) -> Interval:
    """Geometric mean over seeds with the Student-t interval on the log scale, exponentiated.

    ``exp(mean(log x) +- t_{(1+level)/2, k-1} * sd(log x) / sqrt(k))``: for positive quantities
    that vary by factors rather than by amounts (e.g. :func:`n_to_target`). The estimate is the
    geometric mean ``exp(mean(log x))``; the interval is asymmetric about it and stays positive.

    Special cases: None and NaN values are dropped (a seed that never reached a target has no
    size; ``method`` does not hide it: n counts only the values used); one value: that value with a
    NaN interval. ``bounds``: the interval is clipped to it (e.g. the smallest and largest n
    trained, outside which a size was not measured) with ``clipped=True``, as in
    :func:`mean_interval`.

    Raises:
        BenchError: a value <= 0 (no logarithm) or infinite, or a level outside (0, 1).

    >>> round(geometric_interval([200, 400, 800]).estimate, 9)  # logs: mean log 400
    400.0
    """
    _check_level(level, "geometric_interval")
    x = _floats(values, "geometric_interval")
    n_none = int(np.isnan(x).sum())
    x = x[~np.isnan(x)]
    if (x <= 0).any():
        raise BenchError(f"geometric_interval: expected positive values, found {x[x <= 0][0]:g}")
    extra = f" ({_seeds(n_none)} without a value dropped)" if n_none else ""
    return _clip(_log_interval(x, level, "log values", extra), bounds)


def ratio_interval(
    num: Mapping[int, float | None],
    den: Mapping[int, float | None],
    level: float = 0.95,
) -> Interval:
    """Paired ratio ``num[s] / den[s]`` over seeds: t-interval on the log ratios, exponentiated.

    ``r_s = num[s] / den[s]`` over the seeds present in both with a number in each (None, e.g. "the
    target was never reached", and NaN drop the pair); then
    ``exp(mean(log r) +- t_{(1+level)/2, k-1} * sd(log r) / sqrt(k))``. The estimate is the
    geometric mean of the ratios; ``n`` is the number of pairs used, and ``method`` says how many
    common seeds were dropped. Fewer than 2 pairs: the one ratio (NaN for none), NaN interval.

    Dropping a seed where one model never reached the target favours that model (its failures
    vanish from the ratio); the report should show the count next to the interval.

    Raises:
        BenchError: a value <= 0 or infinite, inputs not mappings, or a level outside (0, 1).
    """
    _check_level(level, "ratio_interval")
    xn, xd, dropped = _pairs(num, den, "ratio_interval")
    if (xn <= 0).any() or (xd <= 0).any():
        raise BenchError("ratio_interval: expected positive values (a ratio is taken in logs)")
    extra = f" ({_seeds(dropped)} dropped: None)" if dropped else ""
    return _log_interval(xn / xd, level, "log ratios", extra)


# --------------------------------------------------------------------------------------------
# read-outs from one seed's curve


def _curve(x: Any, y: Any, who: str, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    xs = _floats(x, who)
    ys = _floats(y, who)
    if xs.size != ys.size:
        raise BenchError(
            f"{who}: expected {names[0]} and {names[1]} of the same length, got {xs.size} and {ys.size}"
        )
    return xs, ys


def n_to_target(sizes: Sequence[float], accuracies: Sequence[float], target: float) -> float | None:
    """One seed's training-set size at which accuracy first reaches ``target``.

    With ``i`` the first point whose accuracy is ``>= target`` (the curve need not be monotone:
    the first crossing counts, a later dip does not undo it), the size is interpolated linearly in
    ``log n`` between point ``i - 1`` (below the target) and point ``i``, because the sizes are
    spaced geometrically:
    ``n* = exp(log n0 + (target - a0) / (a1 - a0) * (log n1 - log n0))``.

    Special cases: ``sizes[0]`` when the first point already reaches the target (the true crossing
    may lie lower: an upper bound); None when no point reaches it; points whose accuracy is NaN
    are dropped first (our choice: a failed cell is no evidence either way). It reads one seed's
    curve (not the seed-averaged one), so that :func:`geometric_interval` and
    :func:`ratio_interval` can pair seeds.

    Raises:
        BenchError: sizes not positive and strictly increasing, or lengths that differ.

    >>> round(n_to_target([100, 1000], [0.5, 0.9], 0.7), 6)  # halfway in log n: 10 ** 2.5
    316.227766
    """
    n, acc = _curve(sizes, accuracies, "n_to_target", ("sizes", "accuracies"))
    if np.isnan(n).any() or (n <= 0).any() or (np.diff(n) <= 0).any():
        raise BenchError(f"n_to_target: expected positive, strictly increasing sizes, got {n.tolist()}")
    keep = ~np.isnan(acc)
    n, acc = n[keep], acc[keep]
    ok = np.flatnonzero(acc >= target)
    if ok.size == 0:
        return None
    i = int(ok[0])
    if i == 0:
        return float(n[0])
    a0, a1 = float(acc[i - 1]), float(acc[i])
    ln0, ln1 = math.log(n[i - 1]), math.log(n[i])
    return float(math.exp(ln0 + (target - a0) / (a1 - a0) * (ln1 - ln0)))


def matched_accuracy(clean: Sequence[float], other: Sequence[float], at: float) -> float | None:
    """One seed of one model: the ``other`` accuracy read where its clean accuracy equals ``at``.

    The points ``(clean_i, other_i)`` come in the order of increasing training size (or of
    checkpoints). Walking them in that order, the first of: a point with ``clean_i == at``, which
    gives exactly ``other_i``; a consecutive pair whose clean accuracies bracket ``at``
    (strictly), which gives the linear interpolation
    ``other = o0 + (at - c0) / (c1 - c0) * (o1 - o0)``. The curve need not be monotone: the
    first match in that order counts. This compares models at equal clean accuracy (e.g. affNIST
    accuracy at 99 % MNIST accuracy), so that a model is not credited for robustness that is
    only better clean accuracy.

    Special cases: None when ``at`` lies outside the range of clean accuracies seen (our choice:
    no extrapolation) or there are no points; points with a NaN in either coordinate are dropped.

    Raises:
        BenchError: ``clean`` and ``other`` of different lengths.

    >>> round(matched_accuracy([0.90, 0.95, 0.99], [0.50, 0.60, 0.80], 0.97), 6)
    0.7
    """
    c, o = _curve(clean, other, "matched_accuracy", ("clean", "other"))
    keep = ~(np.isnan(c) | np.isnan(o))
    c, o = c[keep], o[keep]
    for i in range(c.size):
        if c[i] == at:
            return float(o[i])
        if i + 1 < c.size and (c[i] - at) * (c[i + 1] - at) < 0:
            c0, c1, o0, o1 = float(c[i]), float(c[i + 1]), float(o[i]), float(o[i + 1])
            return o0 + (at - c0) / (c1 - c0) * (o1 - o0)
    return None


# --------------------------------------------------------------------------------------------
# verdicts


def verdict(interval: Interval, null: float = 0.0) -> str:
    """The verdict on a claim from its effect's interval (the rule is :data:`VERDICT_RULE`).

    "supported" when ``low > null`` (the whole interval above the no-effect value), "contradicted"
    when ``high < null``, otherwise "inconclusive": the interval contains ``null`` (an end point
    equal to it counts as containing it) or is NaN (fewer than 2 seeds). Orient the effect so that
    above ``null`` is what the claim predicts, e.g. CapsNet minus ConvNet for "capsules are more
    robust", ConvNet size / CapsNet size for "capsules need less data". Pass ``null=1.0`` for
    ratios.

    >>> verdict(Interval(0.02, 0.01, 0.03, 5, "example"))
    'supported'
    """
    low, high = interval.low, interval.high
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if low > null:
        return "supported"
    if high < null:
        return "contradicted"
    return "inconclusive"


# --------------------------------------------------------------------------------------------
# convergence across a run's cells


def sign_test_p(gained: int, lost: int) -> float:
    """One-sided exact sign test (McNemar's exact test) that a model improved on a fixed set.

    ``gained``: images that turned right between two evaluations of the same images, ``lost``:
    images that turned wrong. Under "no improvement" each of the ``gained + lost`` discordant
    images is as likely to go either way, so ``gained ~ Binomial(gained + lost, 1/2)`` and the
    p-value is P(X >= gained) (McNemar 1947, "Note on the sampling error of the difference between
    correlated proportions"; the exact form is the binomial sign test). 1.0 when no image changed.
    """
    if gained < 0 or lost < 0:
        raise BenchError(f"sign_test_p: counts must be >= 0, got gained={gained}, lost={lost}")
    if gained + lost == 0:
        return 1.0
    return float(_st.binom.sf(gained - 1, gained + lost, 0.5))


def holm(pvalues: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Holm's step-down procedure: which hypotheses to reject with family-wise error <= ``alpha``.

    Sort the m p-values ascending; reject the k-th smallest while p_(k) <= alpha / (m - k + 1)
    (k = 1..m) and stop at the first that fails (Holm 1979, "A simple sequentially rejective
    multiple test procedure", Scand. J. Statist. 6:65-70). Returns a boolean array in the input's
    order; NaN p-values are never rejected and do not count in m.
    """
    _check_level(1.0 - alpha, "holm")
    p = np.asarray(pvalues, dtype=float)
    reject = np.zeros(p.shape, dtype=bool)
    known = np.flatnonzero(~np.isnan(p))
    m = known.size
    for k, idx in enumerate(known[np.argsort(p[known], kind="stable")]):
        if p[idx] > alpha / (m - k):
            break
        reject[idx] = True
    return reject


# --------------------------------------------------------------------------------------------
# test-digit sampling, p-values and family-wise verdicts


def digit_weights(n_digits: int, replicates: int, seed: int = 0) -> np.ndarray:
    """``(replicates, n_digits)`` bootstrap weights over test digits: row b counts how often each
    digit is drawn when ``n_digits`` are drawn with replacement (Efron & Tibshirani 1993, ch. 6).

    One digit keeps all its images together (its transforms, its scrambled twin): the weight
    multiplies every image of that digit. Seeded (``seed``): a report rebuilt from the same files
    draws the same replicates, so its intervals are byte-identical.
    """
    if n_digits < 1 or replicates < 1:
        raise BenchError(f"digit_weights: expected >= 1 digits and replicates, got {n_digits}, "
                         f"{replicates}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_digits, size=(replicates, n_digits))
    out = np.zeros((replicates, n_digits))
    np.add.at(out, (np.repeat(np.arange(replicates), n_digits), draws.ravel()), 1.0)
    return out


def with_digit_variance(iv: Interval, digit_var: float, level: float = 0.95,
                        bounds: tuple[float, float] | None = None) -> Interval:
    """``iv`` (a t-interval over seeds for fixed test digits) widened by the test-digit sampling.

    Variance decomposition (seeds and digits are crossed: every seed is scored on the same
    digits): ``se^2 = s^2 / k + v_digit``, with ``s^2 / k`` the seed term of ``iv`` and
    ``v_digit`` the variance of the seed-averaged estimate over test-digit resamples, seeds held
    fixed (:func:`digit_weights`; on the log scale for a ratio). The interval is
    ``estimate +- t_{(1+level)/2, k-1} * se`` (exponentiated for a ratio). Our choice: the seed
    term already holds the seed-by-digit interaction once, so the sum slightly over-counts it
    (conservative). Without a seed interval (one seed) it stays NaN. Clipped to ``bounds``
    (``clipped=True``) like the seed interval.
    """
    if not (np.isfinite(iv.se) and iv.df >= 1) or not np.isfinite(digit_var):
        return iv
    se = math.sqrt(iv.se ** 2 + max(digit_var, 0.0))
    t = float(_st.t.ppf((1.0 + level) / 2.0, df=iv.df))
    centre = math.log(iv.estimate) if iv.log else iv.estimate
    low, high = centre - t * se, centre + t * se
    if iv.log:
        low, high = math.exp(low), math.exp(high)
    method = iv.method.split(", clipped")[0] + " and test digits (bootstrap variance added)"
    return _clip(Interval(iv.estimate, low, high, iv.n, method, se=se, df=iv.df, log=iv.log),
                 bounds)


def p_value(iv: Interval, null: float = 0.0) -> float:
    """Two-sided p-value of "no effect" (``null``; 1 for a ratio) from the interval's t statistic,
    ``(estimate - null) / se`` on ``df`` degrees of freedom (log scale for a ratio); NaN when
    the interval has no standard error. A zero standard error gives 0 (or 1 at the null)."""
    if not (np.isfinite(iv.se) and iv.df >= 1 and np.isfinite(iv.estimate)):
        return math.nan
    diff = (math.log(iv.estimate) - math.log(null)) if iv.log else iv.estimate - null
    if iv.se == 0:
        return 1.0 if diff == 0 else 0.0
    return float(2.0 * _st.t.sf(abs(diff) / iv.se, df=iv.df))


def holm_adjusted(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (Holm 1979): with the m known p-values sorted ascending,
    ``p~_(k) = max_{j <= k} min(1, (m - j + 1) p_(j))``; a hypothesis is rejected at family-wise
    level alpha when its adjusted p-value is <= alpha (the same decisions as :func:`holm`).
    NaN stays NaN and does not count in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    known = np.flatnonzero(~np.isnan(p))
    m = known.size
    running = 0.0
    for j, idx in enumerate(known[np.argsort(p[known], kind="stable")]):
        running = max(running, min(1.0, (m - j) * p[idx]))
        out[idx] = running
    return out


def adjusted_verdict(interval: Interval, p_adjusted: float, null: float = 0.0,
                     alpha: float = 0.05) -> str:
    """The family-wise verdict: "supported" or "contradicted" (by the estimate's side of
    ``null``) when the Holm-adjusted p-value is <= ``alpha``, else "inconclusive"."""
    if not np.isfinite(p_adjusted) or p_adjusted > alpha:
        return "inconclusive"
    above = (interval.estimate > null)
    return "supported" if above else "contradicted"


def wilson_interval(successes: float, total: float, level: float = 0.95) -> Interval:
    """Wilson's score interval for a binomial proportion (Wilson 1927, JASA 22:209-212):
    ``(p + z^2/2N +- z sqrt(p(1-p)/N + z^2/4N^2)) / (1 + z^2/N)``. Never of zero width for
    N >= 1 and inside [0, 1]; for one accuracy on N test images (test-image sampling only)."""
    _check_level(level, "wilson_interval")
    if total <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, "Wilson: no images")
    z = float(_st.norm.ppf((1.0 + level) / 2.0))
    p = successes / total
    denom = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), int(total),
                    f"Wilson score interval over {int(total)} images")
