"""The budget-stability check's rule, on a metrics frame written by hand and intervals worked by
hand (t quantiles: t_{0.975, 1} = 12.706205, t_{0.975, 2} = 4.302653)."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.report.budget import (
    BUDGET_DEPENDENT,
    BUDGET_STABLE,
    NOT_CHECKED,
    budget_table,
    budget_verdict,
    check_claims,
)
from bench.report.claims import Claim
from bench.report.scoreboard import _claims_table
from bench.stats import Interval

T1, T2 = 12.706205, 4.302653

# affNIST-style accuracy per seed. Main budget (setup affnist), seeds 0-2:
MAIN = {"capsnet": (0.70, 0.72, 0.68), "convnet-maxpool": (0.60, 0.60, 0.60),
        "convnet-k9": (0.60, 0.60, 0.60), "convnet-gu": (0.80, 0.84, 0.76)}
# Longer budget (setup affnist-budget), seeds 0 and 1:
LONGER = {"capsnet": (0.60, 0.56), "convnet-maxpool": (0.46, 0.46),
          "convnet-k9": (0.62, 0.60), "convnet-gu": (0.90, 0.87)}


def _frame() -> pd.DataFrame:
    rows = []
    for setup, table in (("affnist", MAIN), ("affnist-budget", LONGER)):
        for model, values in table.items():
            for seed, v in enumerate(values):
                for test_set, value in (("affnist", v), ("clean", 0.99)):
                    rows.append({"setup": setup, "model": model, "n": 1000, "seed": seed,
                                 "test_set": test_set, "factor_value": math.nan,
                                 "metric": "accuracy", "value": value})
    # another n of the main setup only: not an n of the check
    rows.append({"setup": "affnist", "model": "capsnet", "n": 100, "seed": 0,
                 "test_set": "affnist", "factor_value": math.nan, "metric": "accuracy",
                 "value": 0.1})
    return pd.DataFrame(rows)


def _claim(key: str, pair) -> Claim:
    c = Claim(key, key, "effect", "meaning", 0.0, "pp")
    c.pair = pair
    return c


def test_the_rule_on_hand_worked_numbers():
    board = [_claim("C1", ("capsnet", "convnet-maxpool")),   # stable
             _claim("C4", ("capsnet", "convnet-k9")),        # sign flip
             _claim("C6", ("convnet-gu", "capsnet")),        # intervals apart
             _claim("C9", ("capsnet", "convnet-other")),     # no check cells of the pair
             _claim("C2", None)]                             # a read-out the check cannot map
    checks = check_claims(_frame(), board)
    assert [c.budget_stable for c in board] == [BUDGET_STABLE, BUDGET_DEPENDENT,
                                                BUDGET_DEPENDENT, NOT_CHECKED, NOT_CHECKED]
    by = {c.claim: c for c in checks}
    assert set(by) == {"C1", "C4", "C6"} and all(c.n == 1000 for c in checks)
    # every claim's main all-seed difference: 0.10, 0.12, 0.08 -> mean 0.10, sd 0.02,
    # half width 4.302653 x 0.02 / sqrt(3) = 0.049683
    for c in checks:
        assert (c.main_all.estimate, c.main_all.n) == (pytest.approx(0.10), 3)
        assert c.main_all.low == pytest.approx(0.10 - 0.049683, abs=1e-6)
        assert c.main_all.high == pytest.approx(0.10 + 0.049683, abs=1e-6)
        # main budget on the check's seeds 0 and 1: 0.10, 0.12
        assert (c.main_seeds.estimate, c.main_seeds.n) == (pytest.approx(0.11), 2)
    # C1 longer: 0.14, 0.10 -> 0.12, sd 0.028284, half 12.706205 x 0.02 = 0.254124: same sign,
    # [-0.134124, 0.374124] overlaps [0.050317, 0.149683]
    assert by["C1"].longer.estimate == pytest.approx(0.12)
    assert by["C1"].longer.low == pytest.approx(0.12 - T1 * 0.02, abs=1e-6)
    # C4 longer: -0.02, -0.04 -> -0.03: the sign flips (the intervals overlap:
    # [-0.157062, 0.097062])
    assert by["C4"].longer.estimate == pytest.approx(-0.03)
    assert by["C4"].longer.high == pytest.approx(-0.03 + T1 * 0.01, abs=1e-6)
    assert by["C4"].longer.high > by["C4"].main_all.low
    # C6 longer: 0.30, 0.31 -> 0.305, half 12.706205 x 0.005 = 0.063531: same sign, but
    # [0.241469, 0.368531] starts above the main interval's 0.149683
    assert by["C6"].longer.low == pytest.approx(0.305 - T1 * 0.005, abs=1e-6)
    assert by["C6"].longer.low > by["C6"].main_all.high


def _iv(est, low, high):
    return Interval(est, low, high, 2, "hand")


def test_the_rule_at_its_edges():
    # touching intervals overlap (closed); a zero estimate has a sign of its own
    assert budget_verdict(_iv(0.1, 0.05, 0.15), _iv(0.2, 0.15, 0.25)) == BUDGET_STABLE
    assert budget_verdict(_iv(0.0, -0.1, 0.1), _iv(0.0, -0.2, 0.2)) == BUDGET_STABLE
    assert budget_verdict(_iv(0.0, -0.1, 0.1), _iv(0.01, -0.2, 0.2)) == BUDGET_DEPENDENT
    assert budget_verdict(_iv(-0.1, -0.15, -0.05), _iv(-0.3, -0.4, -0.16)) == BUDGET_DEPENDENT
    # one seed: no interval, so not checked
    assert budget_verdict(_iv(0.1, 0.05, 0.15), _iv(0.1, math.nan, math.nan)) == NOT_CHECKED


def test_the_scoreboard_has_a_budget_column_only_with_check_cells_and_the_table_its_numbers():
    board = [_claim("C1", ("capsnet", "convnet-maxpool")), _claim("C2", None)]
    plain = _claims_table(board)
    assert "Budget" not in plain.header and len(plain.header) == 9
    checks = check_claims(_frame(), board)
    with_budget = _claims_table(board, budget=True)
    assert with_budget.header[-1] == "Budget"
    assert [r[-1] for r in with_budget.rows] == [BUDGET_STABLE, NOT_CHECKED]
    assert len(with_budget.align) == len(with_budget.header)
    manifest = {"profile": {"config": {"train": {"steps": 800},
                                       "budget_check": {"factor": 2.0}}}}
    table = budget_table(checks, manifest)
    assert table is not None and table.name == "budget"
    assert "main budget, 800 steps, all seeds [95% interval]" in table.header
    assert "longer budget, 1,600 steps (2×), check seeds" in table.header
    assert table.rows[0][:3] == ["C1", "capsnet − convnet-maxpool, affNIST-style", "1,000"]
    assert table.rows[0][5].startswith("+12.00") and table.rows[0][-1] == BUDGET_STABLE
    assert budget_table([], manifest) is None


def test_an_overlap_claim_is_checked_on_overlapping_digits_not_on_affnist_style():
    # overlap accuracy (top-2) per seed, written apart from the affNIST-style numbers above:
    # main capsnet - maxpool = +0.05 on every seed; longer = -0.10 on both: a sign flip
    frame = _frame()
    rows = []
    for setup, per_model in (("affnist", {"capsnet": (0.55,) * 3, "convnet-maxpool": (0.50,) * 3}),
                             ("affnist-budget", {"capsnet": (0.40,) * 2,
                                                 "convnet-maxpool": (0.50,) * 2})):
        for model, values in per_model.items():
            for seed, v in enumerate(values):
                rows.append({"setup": setup, "model": model, "n": 1000, "seed": seed,
                             "test_set": "overlap", "factor_value": math.nan,
                             "metric": "accuracy", "value": v})
    frame = pd.concat([frame, pd.DataFrame(rows)], ignore_index=True)
    c8 = _claim("C8", ("capsnet", "convnet-maxpool"))
    c8.pair_set = "overlap"
    c1 = _claim("C1", ("capsnet", "convnet-maxpool"))  # the same pair on affNIST-style: stable
    checks = check_claims(frame, [c1, c8])
    assert [c.test_set for c in checks] == ["affnist", "overlap"]
    assert checks[1].main_all.estimate == pytest.approx(0.05)
    assert checks[1].longer.estimate == pytest.approx(-0.10)
    assert (c1.budget_stable, c8.budget_stable) == (BUDGET_STABLE, BUDGET_DEPENDENT)
    table = budget_table(checks)
    assert table is not None and table.rows[1][1] == "capsnet − convnet-maxpool, overlapping digits"
