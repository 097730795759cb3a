"""bench.stats against oracles that are not the code under test: numbers worked by hand (written out
below), scipy's own interval and t-test routines, and plain numpy arithmetic in the test."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from scipy import stats

import bench.stats
from bench.errors import BenchError
from bench.stats import (
    VERDICT_RULE,
    Interval,
    geometric_interval,
    holm,
    matched_accuracy,
    mean_interval,
    n_to_target,
    paired_difference,
    ratio_interval,
    sign_test_p,
    verdict,
)

# Student t quantiles t_{0.975, df} from a printed table (e.g. NIST/SEMATECH e-Handbook, Table 1.3.6.7.2)
T975_DF1 = 12.706
T975_DF2 = 4.303
T975_DF4 = 2.776


def test_docstring_examples_run():
    result = doctest.testmod(bench.stats)
    assert result.failed == 0 and result.attempted >= 6


# --------------------------------------------------------------------------------------------
# Interval


def test_interval_contains_and_half_width():
    iv = Interval(0.5, 0.4, 0.7, 3, "hand")
    assert iv.half_width() == pytest.approx(0.15)
    assert iv.contains(0.4) and iv.contains(0.7) and iv.contains(0.55)  # closed
    assert not iv.contains(0.39) and not iv.contains(0.71)
    nan = Interval(0.5, math.nan, math.nan, 1, "one seed: no interval")
    assert not nan.contains(0.5)
    assert math.isnan(nan.half_width())
    with pytest.raises(AttributeError):  # frozen
        iv.low = 0.0  # type: ignore[misc]


# --------------------------------------------------------------------------------------------
# mean_interval


def test_mean_interval_hand_worked_three_seeds():
    # values 0.90, 0.92, 0.94: mean 0.92; deviations -0.02, 0, 0.02 -> s^2 = 0.0008 / 2, s = 0.02;
    # df = 2, t = 4.303; half-width = 4.303 * 0.02 / sqrt(3) = 0.086060 / 1.732051 = 0.049687
    iv = mean_interval([0.90, 0.92, 0.94])
    assert iv.estimate == pytest.approx(0.92)
    assert iv.half_width() == pytest.approx(0.049687, abs=5e-5)  # the table's t has 4 digits
    assert iv.low == pytest.approx(0.870313, abs=5e-5)
    assert iv.high == pytest.approx(0.969687, abs=5e-5)
    assert iv.n == 3 and not iv.clipped
    assert iv.method == "Student t over 3 seeds"


def test_mean_interval_hand_worked_five_seeds():
    # 0.90 .. 0.94 in steps of 0.01: mean 0.92; sum of squared deviations 0.0010, s^2 = 0.0010 / 4,
    # s = 0.0158114; df = 4, t = 2.776; half = 2.776 * 0.0158114 / sqrt(5) = 0.0438924 / 2.2360680
    # = 0.0196295
    iv = mean_interval([0.90, 0.91, 0.92, 0.93, 0.94])
    assert iv.estimate == pytest.approx(0.92)
    assert iv.half_width() == pytest.approx(0.0196295, abs=2e-5)
    assert iv.n == 5


@pytest.mark.parametrize("level", [0.90, 0.95, 0.99])
@pytest.mark.parametrize("k", [2, 3, 5, 10])
def test_mean_interval_matches_scipy_t_interval(level, k):
    rng = np.random.default_rng(k * 100 + int(level * 100))
    x = rng.uniform(0.3, 0.7, size=k)  # far enough from 0 and 1 for k >= 3; see the clipping test
    low, high = stats.t.interval(level, df=k - 1, loc=x.mean(), scale=stats.sem(x))
    iv = mean_interval(x, bounds=None, level=level)
    assert iv.estimate == pytest.approx(float(np.mean(x)))
    assert iv.low == pytest.approx(low, rel=1e-12)
    assert iv.high == pytest.approx(high, rel=1e-12)
    assert iv.n == k and not iv.clipped


def test_mean_interval_clipped_both_sides_and_flagged():
    # 0.99, 0.80: mean 0.895, s = 0.19 / sqrt(2) = 0.134350, sem = 0.095; df = 1, t = 12.706:
    # raw interval 0.895 -+ 1.207 = [-0.312, 2.102] leaves [0, 1] on both sides
    raw_low, raw_high = stats.t.interval(0.95, df=1, loc=0.895, scale=0.095)
    assert raw_low == pytest.approx(0.895 - T975_DF1 * 0.095, abs=1e-3) and raw_low < 0
    assert raw_high == pytest.approx(0.895 + T975_DF1 * 0.095, abs=1e-3) and raw_high > 1
    iv = mean_interval([0.99, 0.80])
    assert iv.estimate == pytest.approx(0.895)
    assert (iv.low, iv.high) == (0.0, 1.0)
    assert iv.clipped
    assert iv.method == "Student t over 2 seeds, clipped to [0, 1]"
    unclipped = mean_interval([0.99, 0.80], bounds=None)
    assert unclipped.low == pytest.approx(raw_low) and unclipped.high == pytest.approx(raw_high)
    assert not unclipped.clipped


def test_mean_interval_clipped_one_side_keeps_the_other():
    # 0.99, 0.98, 0.97: mean 0.98, s = 0.01; half = 4.303 * 0.01 / sqrt(3) = 0.024843;
    # raw [0.955157, 1.004843]: only the top is clipped
    iv = mean_interval([0.99, 0.98, 0.97])
    assert iv.clipped
    assert iv.high == 1.0
    assert iv.low == pytest.approx(0.98 - T975_DF2 * 0.01 / math.sqrt(3), abs=5e-5)
    assert iv.low == pytest.approx(0.955157, abs=5e-5)


def test_mean_interval_drops_nan_and_none_and_takes_a_mapping():
    ref = mean_interval([0.90, 0.92, 0.94])
    for values in ([0.90, math.nan, 0.92, None, 0.94], {0: 0.90, 3: 0.92, 7: 0.94, 8: math.nan}):
        iv = mean_interval(values)
        assert iv.n == 3
        assert (iv.estimate, iv.low, iv.high) == pytest.approx((ref.estimate, ref.low, ref.high))


def test_mean_interval_one_and_no_seed():
    one = mean_interval([0.93, math.nan])
    assert one.estimate == 0.93 and one.n == 1
    assert math.isnan(one.low) and math.isnan(one.high)
    assert one.method == "one seed: no interval"
    none = mean_interval([])
    assert math.isnan(none.estimate) and none.n == 0 and math.isnan(none.low)


def test_mean_interval_equal_values_zero_width():
    iv = mean_interval([0.9, 0.9, 0.9])
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((0.9, 0.9, 0.9))


def test_mean_interval_rejects_percent_and_bad_level():
    with pytest.raises(BenchError, match="fractions"):
        mean_interval([95.0, 96.0])
    with pytest.raises(BenchError, match="level"):
        mean_interval([0.9, 0.8], level=95)
    with pytest.raises(BenchError, match="finite"):
        mean_interval([0.9, math.inf], bounds=None)


# --------------------------------------------------------------------------------------------
# paired_difference


# Large seed-to-seed variation shared by both models (the training subset of seed s is easy or
# hard for both), and a small constant-ish advantage of model a.
BASE = np.array([0.60, 0.75, 0.90, 0.70, 0.85])
ADV = np.array([0.020, 0.025, 0.015, 0.022, 0.018])
A = BASE + ADV
B = BASE.copy()


def test_paired_difference_finds_what_the_unpaired_comparison_cannot():
    a = {s: float(v) for s, v in enumerate(A)}
    b = {s: float(v) for s, v in enumerate(B)}
    # unpaired: each model's interval overlaps the other's, and the Welch / pooled difference
    # interval contains 0
    ia, ib = mean_interval(A), mean_interval(B)
    assert ia.low < ib.high and ib.low < ia.high
    unpaired = stats.ttest_ind(A, B).confidence_interval(0.95)
    assert unpaired.low < 0 < unpaired.high
    # paired: the oracle is scipy's paired t-test and its interval
    rel = stats.ttest_rel(A, B)
    ci = rel.confidence_interval(0.95)
    assert rel.pvalue < 0.05
    iv = paired_difference(a, b)
    assert iv.estimate == pytest.approx(0.02)
    assert iv.low == pytest.approx(ci.low, rel=1e-9)
    assert iv.high == pytest.approx(ci.high, rel=1e-9)
    assert iv.n == 5 and not iv.clipped
    assert iv.low > 0
    # by hand: d = 0.020, 0.025, 0.015, 0.022, 0.018; mean 0.02; squared deviations sum to
    # 0 + 25e-6 + 25e-6 + 4e-6 + 4e-6 = 58e-6, s = sqrt(58e-6 / 4) = 0.0038079;
    # half = 2.776 * 0.0038079 / sqrt(5) = 0.0047274
    assert iv.half_width() == pytest.approx(T975_DF4 * math.sqrt(58e-6 / 4) / math.sqrt(5), rel=1e-3)
    assert verdict(iv) == "supported"
    assert verdict(Interval(0.02, unpaired.low, unpaired.high, 5, "unpaired")) == "inconclusive"


def test_paired_difference_pairs_by_seed_not_by_position():
    a = {s: float(v) for s, v in enumerate(A)}
    b_reversed = {s: float(B[s]) for s in reversed(range(5))}  # same pairs, other insertion order
    b_reversed[9] = 0.1  # a seed only b has: ignored
    a_extra = {**a, 7: 0.5}  # a seed only a has: ignored
    iv = paired_difference(a_extra, b_reversed)
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    assert iv.n == 5
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_paired_difference_drops_missing_pairs_and_says_so():
    a = {0: 0.9, 1: 0.8, 2: 0.7, 3: None}
    b = {0: 0.88, 1: 0.79, 2: 0.67, 3: 0.6}
    iv = paired_difference(a, b)
    d = np.array([0.02, 0.01, 0.03])
    low, high = stats.t.interval(0.95, df=2, loc=d.mean(), scale=stats.sem(d))
    assert iv.n == 3
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((0.02, low, high))
    assert "1 seed dropped" in iv.method


def test_paired_difference_fewer_than_two_pairs():
    one = paired_difference({0: 0.9, 1: 0.8}, {0: 0.85})
    assert one.n == 1 and one.estimate == pytest.approx(0.05)
    assert math.isnan(one.low) and math.isnan(one.high)
    assert verdict(one) == "inconclusive"
    none = paired_difference({0: 0.9}, {1: 0.85})
    assert none.n == 0 and math.isnan(none.estimate)


def test_paired_difference_clipped_to_bounds():
    # differences 0.9 and 0.1: mean 0.5, sem 0.4, t = 12.706 -> raw [-4.58, 5.58]
    iv = paired_difference({0: 0.95, 1: 0.15}, {0: 0.05, 1: 0.05})
    assert (iv.low, iv.high) == (-1.0, 1.0) and iv.clipped
    assert "clipped to [-1, 1]" in iv.method


def test_paired_difference_rejects_sequences():
    with pytest.raises(BenchError, match="mappings"):
        paired_difference([0.9, 0.8], [0.8, 0.7])  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# n_to_target


def test_n_to_target_log_interpolation_by_hand():
    # 0.7 is halfway from 0.5 to 0.9, so halfway from log 100 to log 1000: 10 ** 2.5 = 316.2278
    assert n_to_target([100, 1000], [0.5, 0.9], 0.7) == pytest.approx(10**2.5)
    assert n_to_target([100, 1000], [0.5, 0.9], 0.7) == pytest.approx(316.2278, abs=1e-4)
    # not linear in n, which would give 550
    # three points, crossing in the second interval, a quarter of the way: 10 ** 3.25
    assert n_to_target([100, 1000, 10000], [0.5, 0.6, 1.0], 0.7) == pytest.approx(10**3.25)


def test_n_to_target_first_point_exact_hit_and_never():
    assert n_to_target([100, 1000], [0.95, 0.99], 0.9) == 100.0
    assert n_to_target([100, 1000], [0.5, 0.7], 0.7) == pytest.approx(1000.0)  # reached exactly
    assert n_to_target([100, 1000, 10000], [0.5, 0.6, 0.69], 0.7) is None
    assert n_to_target([], [], 0.7) is None


def test_n_to_target_non_monotone_uses_first_crossing():
    sizes = [100, 200, 400, 800]
    # up past 0.7 at 200, dips to 0.6 at 400, back up at 800: the first crossing, 100 -> 200,
    # 0.2 / 0.25 = 0.8 of the way in log n: 100 * 2 ** 0.8 = 174.1101
    assert n_to_target(sizes, [0.5, 0.75, 0.6, 0.9], 0.7) == pytest.approx(100 * 2**0.8)
    assert n_to_target(sizes, [0.5, 0.75, 0.6, 0.9], 0.7) == pytest.approx(174.1101, abs=1e-4)
    # a dip before the first crossing: the crossing is 400 -> 800, 0.1 / 0.3 of the way:
    # 400 * 2 ** (1/3) = 503.9684
    assert n_to_target(sizes, [0.5, 0.65, 0.6, 0.9], 0.7) == pytest.approx(503.9684, abs=1e-4)


def test_n_to_target_skips_nan_points_and_checks_sizes():
    # the NaN at 1000 is dropped: interpolation between 100 (0.5) and 10000 (0.9): 10 ** 3
    assert n_to_target([100, 1000, 10000], [0.5, math.nan, 0.9], 0.7) == pytest.approx(1000.0)
    with pytest.raises(BenchError, match="increasing"):
        n_to_target([1000, 100], [0.5, 0.9], 0.7)
    with pytest.raises(BenchError, match="increasing"):
        n_to_target([0, 100], [0.5, 0.9], 0.7)
    with pytest.raises(BenchError, match="same length"):
        n_to_target([100, 1000], [0.5], 0.7)


# --------------------------------------------------------------------------------------------
# geometric_interval and ratio_interval


def test_geometric_interval_by_hand_and_against_scipy():
    # logs of 200, 400, 800 are log 400 - log 2, log 400, log 400 + log 2: mean log 400, s = log 2;
    # interval exp(log 400 -+ t log 2 / sqrt 3) = 400 * 2 ** (-+ 4.303 / 1.732) = 400 * 2 ** -+2.4843
    # = 400 / 5.5950, 400 * 5.5950 = [71.49, 2238.0]
    iv = geometric_interval([200, 400, 800])
    assert iv.estimate == pytest.approx(400.0)
    assert iv.low == pytest.approx(400 * 2 ** (-T975_DF2 / math.sqrt(3)), rel=1e-3)
    assert iv.high == pytest.approx(400 * 2 ** (T975_DF2 / math.sqrt(3)), rel=1e-3)
    assert iv.low == pytest.approx(71.49, abs=0.05) and iv.high == pytest.approx(2238.0, abs=1.0)
    logs = np.log([200.0, 400.0, 800.0])
    lo, hi = stats.t.interval(0.95, df=2, loc=logs.mean(), scale=stats.sem(logs))
    assert (iv.low, iv.high) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-12)
    assert iv.n == 3 and not iv.clipped


def test_geometric_interval_clipped_to_the_sizes_trained():
    # the hand-worked case above, [71.49, 2238.0], trained at n = 100..1,000: both ends clipped
    iv = geometric_interval([200, 400, 800], bounds=(100.0, 1000.0))
    assert iv.estimate == pytest.approx(400.0)
    assert (iv.low, iv.high) == (100.0, 1000.0) and iv.clipped and "clipped" in iv.method
    # inside the bounds: unchanged and not marked
    wide = geometric_interval([200, 400, 800], bounds=(50.0, 3000.0))
    assert not wide.clipped and wide.high == pytest.approx(2238.0, abs=1.0)
    # one value has no interval to clip
    assert not geometric_interval([300.0], bounds=(100.0, 200.0)).clipped


def test_needed_text_marks_a_clipped_interval():
    from bench.report import readout

    nd = readout.Needed({0: 200.0, 1: 400.0, 2: 800.0}, set(), (100.0, 1000.0))
    assert readout.needed_text(nd) == f"400 [100, 1,000]{readout.CLIPPED}"
    assert readout.needed_text(readout.Needed(nd.values, set(), (50.0, 3000.0))) == "400 [71, 2,238]"
    # needed() records the sizes the frame trained
    rows = [dict(model="m", n=n, seed=s, test_set="clean", factor_value=float("nan"),
                 metric="accuracy", value=a)
            for s in (0, 1) for n, a in ((100, 0.5), (1000, 0.9 + 0.01 * s))]
    import pandas as pd

    got = readout.needed(pd.DataFrame(rows), "m", 0.85)
    assert got.sizes == (100.0, 1000.0) and got.values[0] is not None


def test_geometric_interval_mapping_with_none_and_level():
    values = {0: 150.0, 1: 420.0, 2: None, 3: 900.0, 4: 310.0}
    x = np.array([150.0, 420.0, 900.0, 310.0])
    iv = geometric_interval(values, level=0.9)
    lo, hi = stats.t.interval(0.9, df=3, loc=np.log(x).mean(), scale=stats.sem(np.log(x)))
    assert iv.estimate == pytest.approx(stats.gmean(x))
    assert (iv.low, iv.high) == pytest.approx((math.exp(lo), math.exp(hi)))
    assert iv.n == 4 and "1 seed" in iv.method


def test_geometric_interval_rejects_non_positive():
    with pytest.raises(BenchError, match="positive"):
        geometric_interval([100.0, 0.0])


def test_ratio_interval_by_hand_and_against_scipy():
    num = {0: 300.0, 1: 600.0, 2: 1200.0, 3: None, 5: 80.0}
    den = {0: 100.0, 1: 200.0, 2: 300.0, 3: 70.0, 4: 50.0}
    # pairs at seeds 0, 1, 2 (3: None, 4 and 5: one side only): ratios 3, 3, 4;
    # geometric mean (3 * 3 * 4) ** (1/3) = 36 ** (1/3) = 3.3019
    iv = ratio_interval(num, den)
    assert iv.n == 3
    assert iv.estimate == pytest.approx(36 ** (1 / 3))
    assert iv.estimate == pytest.approx(3.3019, abs=1e-4)
    r = np.log(np.array([3.0, 3.0, 4.0]))
    lo, hi = stats.t.interval(0.95, df=2, loc=r.mean(), scale=stats.sem(r))
    assert (iv.low, iv.high) == pytest.approx((math.exp(lo), math.exp(hi)), rel=1e-12)
    # by hand: log ratios 1.098612, 1.098612, 1.386294; mean 1.194506, s = 0.166093,
    # half = 4.303 * 0.166093 / 1.732051 = 0.412600 -> exp(0.781906) = 2.1856, exp(1.607106) = 4.9884
    assert iv.low == pytest.approx(2.1856, abs=2e-3) and iv.high == pytest.approx(4.9884, abs=5e-3)
    assert "1 seed dropped" in iv.method
    assert verdict(iv, null=1.0) == "supported"


def test_ratio_interval_is_paired_by_seed():
    # the sizes vary tenfold over seeds, the ratio is exactly 2 on every seed: a zero-width
    # interval at 2, whereas a ratio of the two geometric means' intervals would be wide
    num = {0: 200.0, 1: 2000.0, 2: 20000.0}
    den = {2: 10000.0, 1: 1000.0, 0: 100.0}
    iv = ratio_interval(num, den)
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((2.0, 2.0, 2.0))
    assert iv.n == 3


def test_ratio_interval_fewer_than_two_pairs():
    iv = ratio_interval({0: 300.0, 1: None}, {0: 100.0, 1: 100.0})
    assert iv.n == 1 and iv.estimate == pytest.approx(3.0)
    assert math.isnan(iv.low) and verdict(iv, null=1.0) == "inconclusive"


# --------------------------------------------------------------------------------------------
# matched_accuracy


def test_matched_accuracy_interpolates_by_hand():
    clean = [0.90, 0.95, 0.99]
    other = [0.50, 0.60, 0.80]
    # 0.97 is halfway from 0.95 to 0.99: other halfway from 0.60 to 0.80 = 0.70
    assert matched_accuracy(clean, other, 0.97) == pytest.approx(0.70)
    # 0.92 is 0.4 of the way from 0.90 to 0.95: 0.50 + 0.4 * 0.10 = 0.54
    assert matched_accuracy(clean, other, 0.92) == pytest.approx(0.54)


def test_matched_accuracy_exact_hit_and_out_of_range():
    clean = [0.90, 0.95, 0.99]
    other = [0.50, 0.60, 0.80]
    assert matched_accuracy(clean, other, 0.95) == 0.60
    assert matched_accuracy(clean, other, 0.90) == 0.50
    assert matched_accuracy(clean, other, 0.99) == 0.80
    assert matched_accuracy(clean, other, 0.85) is None
    assert matched_accuracy(clean, other, 0.995) is None
    assert matched_accuracy([], [], 0.9) is None


def test_matched_accuracy_non_monotone_first_bracket():
    # clean rises to 0.96, falls to 0.94, rises to 0.98; at = 0.95 is bracketed three times;
    # the first pair (0.90, 0.96) counts: 5/6 of the way, 0.1 + 5/6 * 0.1 = 0.183333
    clean = [0.90, 0.96, 0.94, 0.98]
    other = [0.10, 0.20, 0.30, 0.40]
    assert matched_accuracy(clean, other, 0.95) == pytest.approx(0.1 + 5 / 6 * 0.1)
    # a falling pair brackets as well: (0.99, 0.95) at 0.97 -> halfway, 0.70
    assert matched_accuracy([0.99, 0.95], [0.80, 0.60], 0.97) == pytest.approx(0.70)


def test_matched_accuracy_length_mismatch():
    with pytest.raises(BenchError, match="same length"):
        matched_accuracy([0.9, 0.95], [0.5], 0.92)


# --------------------------------------------------------------------------------------------
# verdict


@pytest.mark.parametrize(
    "interval, null, expected",
    [
        (Interval(0.02, 0.01, 0.03, 5, "hand"), 0.0, "supported"),
        (Interval(-0.02, -0.03, -0.01, 5, "hand"), 0.0, "contradicted"),
        (Interval(0.01, -0.01, 0.03, 5, "hand"), 0.0, "inconclusive"),
        (Interval(0.02, 0.0, 0.04, 5, "hand"), 0.0, "inconclusive"),  # touching null: contains it
        (Interval(0.9, math.nan, math.nan, 1, "one seed: no interval"), 0.0, "inconclusive"),
        # ratios: null = 1
        (Interval(1.5, 1.2, 1.8, 5, "hand"), 1.0, "supported"),
        (Interval(0.8, 0.6, 0.95, 5, "hand"), 1.0, "contradicted"),
        (Interval(1.1, 0.9, 1.3, 5, "hand"), 1.0, "inconclusive"),
    ],
)
def test_verdict_cases(interval, null, expected):
    assert verdict(interval, null=null) == expected


def test_verdict_ratio_needs_null_one():
    # a ratio interval below 1 is a contradiction, although it lies above the default null 0
    iv = Interval(0.8, 0.6, 0.95, 5, "hand")
    assert verdict(iv) == "supported"
    assert verdict(iv, null=1.0) == "contradicted"


def test_verdict_rule_is_one_sentence():
    assert VERDICT_RULE.count(". ") == 0 and VERDICT_RULE.endswith(".")
    assert "supported" in VERDICT_RULE and "contradicted" in VERDICT_RULE
    assert "inconclusive" in VERDICT_RULE


# ---- convergence across a run's cells ------------------------------------------------------


@pytest.mark.parametrize("gained, lost", [(0, 0), (5, 0), (15, 10), (10, 15), (40, 20), (1, 1)])
def test_sign_test_p_equals_scipy_binomtest(gained, lost):
    expected = 1.0 if gained + lost == 0 else stats.binomtest(
        gained, gained + lost, 0.5, alternative="greater").pvalue
    assert sign_test_p(gained, lost) == pytest.approx(expected, rel=1e-12)


def test_sign_test_p_hand_worked():
    # 5 turned right, none wrong: P(X >= 5 | 5, 1/2) = 1/32
    assert sign_test_p(5, 0) == pytest.approx(1 / 32)
    # 2 right, 1 wrong: P(X >= 2 | 3, 1/2) = (3 + 1) / 8
    assert sign_test_p(2, 1) == pytest.approx(0.5)
    with pytest.raises(BenchError, match="counts must be >= 0"):
        sign_test_p(-1, 3)


def test_holm_hand_worked():
    """m = 4 at alpha 0.05: thresholds 0.0125, 0.0167, 0.025, 0.05 for the sorted p-values.
    0.01 <= 0.0125 and 0.015 <= 0.0167 are rejected; 0.03 > 0.025 stops the procedure, so 0.04
    is kept although it is below 0.05 (Bonferroni would reject only 0.01)."""
    reject = holm([0.04, 0.01, 0.03, 0.015], alpha=0.05)
    assert reject.tolist() == [False, True, False, True]


def _holm_literal(p, alpha):
    """Holm (1979) as adjusted p-values: p_adj(k) = max_{j<=k} min(1, (m - j + 1) p_(j))."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    m, running, adjusted = len(p), 0.0, [0.0] * len(p)
    for j, i in enumerate(order):
        running = max(running, min(1.0, (m - j) * p[i]))
        adjusted[i] = running
    return [a <= alpha for a in adjusted]


def test_holm_equals_adjusted_p_values_and_skips_nan():
    rng = np.random.default_rng(3)
    for _ in range(50):
        p = list(rng.uniform(0, 0.06, size=int(rng.integers(1, 12))) ** 2)
        assert holm(p, 0.05).tolist() == _holm_literal(p, 0.05)
    reject = holm([float("nan"), 0.02, 0.03], 0.05)  # m = 2: 0.02 <= 0.025, 0.03 <= 0.05
    assert reject.tolist() == [False, True, True]


# --------------------------------------------------------------------------------------------
# Test-digit sampling, Holm, Wilson


def test_digit_variance_matches_the_analytic_variance_of_an_additive_case():
    """delta[s, i] = a[s] + b[i] (seeds and digits crossed, no interaction). The mean over k
    seeds and N digits has variance var(a) / k + var(b) / N; the t-interval over seeds carries
    the first term, the digit resamples (seeds fixed) the second: their bootstrap variance is
    the plug-in var_pop(b) / N."""
    from bench.report.store import DigitTable
    rng = np.random.default_rng(3)
    k, n = 5, 400
    a = rng.normal(0.02, 0.004, k)
    b = rng.normal(0.0, 0.3, n)
    delta = a[:, None] + b[None, :]
    table = DigitTable([("m", 1, s) for s in range(k)], delta, np.ones((k, n)))
    w = bench.stats.digit_weights(n, 2000, seed=1)
    reps = table.values(w).mean(1)
    analytic = b.var() / n  # ddof 0: the bootstrap's plug-in variance
    assert reps.var(ddof=1) == pytest.approx(analytic, rel=0.1)
    seed_iv = bench.stats.paired_difference(dict(enumerate(delta.mean(1))), dict.fromkeys(range(k), 0.0))
    assert seed_iv.se ** 2 == pytest.approx(a.var(ddof=1) / k)
    both = bench.stats.with_digit_variance(seed_iv, reps.var(ddof=1))
    t = 2.7764451051977987  # t(0.975, 4)
    assert both.half_width() == pytest.approx(t * math.sqrt(a.var(ddof=1) / k + analytic),
                                              rel=0.06)
    # The seeds alone say "above 0"; with the digits the interval holds 0.
    assert seed_iv.low > 0 and both.low < 0 < both.high
    assert bench.stats.verdict(seed_iv) == "supported" and bench.stats.verdict(both) == "inconclusive"


def test_digit_weights_are_reproducible_counts():
    w = bench.stats.digit_weights(7, 5, seed=2)
    assert w.shape == (5, 7) and (w.sum(1) == 7).all()
    assert np.array_equal(w, bench.stats.digit_weights(7, 5, seed=2))


def test_holm_adjusted_by_hand():
    """p = (0.0117, 0.0010, 0.0013, 0.5), m = 4: sorted 0.0010 x 4 = 0.004, 0.0013 x 3 = 0.0039
    -> max 0.004, 0.0117 x 2 = 0.0234, 0.5 x 1 = 0.5."""
    p = [0.0117, 0.0010, 0.0013, 0.5]
    adj = bench.stats.holm_adjusted(p)
    assert adj == pytest.approx([0.0234, 0.004, 0.004, 0.5])
    assert list(adj <= 0.05) == list(bench.stats.holm(p))
    assert np.isnan(bench.stats.holm_adjusted([0.01, math.nan])[1])


def test_p_value_is_the_paired_t_tests():
    a, b = {0: 0.1, 1: 0.3, 2: 0.25, 3: 0.2}, {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.1}
    iv = bench.stats.paired_difference(a, b)
    assert bench.stats.p_value(iv) == pytest.approx(stats.ttest_rel(list(a.values()),
                                                           list(b.values())).pvalue)


def test_wilson_interval_by_hand():
    """50 of 50 correct: Wilson's lower bound is N / (N + z^2) = 50 / 53.8415 (z = 1.95996),
    not a zero-width interval."""
    iv = bench.stats.wilson_interval(50, 50)
    assert iv.low == pytest.approx(50 / (50 + 1.959963984540054 ** 2))
    assert iv.high == pytest.approx(1.0)
