"""The budget-stability check (``[budget_check]``): does each scoreboard difference survive a
longer training budget?

The run trains some of its main (``affnist``) cells again for ``factor`` x the steps, in the
setup :data:`bench.cell.plan.BUDGET_SETUP`, paired with the main cells (same training subset,
initialisation and batch order). For every claim that is a difference of accuracy between two
models on the affNIST-style set or on overlapping digits (:attr:`bench.report.claims.Claim.pair`
and ``pair_set``: C1, C4, C6, C8 and their external repeats) this module reads that difference
again at each n of the check, paired over seeds
(:func:`bench.stats.paired_difference`):

- main budget, every seed of the run at that n (``main_all``);
- main budget, the check's seeds (``main_seeds``; shown, not read by the rule);
- longer budget, the check's seeds (``longer``).

The rule (:func:`budget_verdict`) is stated in :data:`BUDGET_RULE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.cell.plan import BUDGET_SETUP, budget_steps
from bench.data.testsets import AFFNIST_STYLE, display_name
from bench.report import readout
from bench.report.read import MAIN_SETUP
from bench.report.readout import MINUS
from bench.report.table import Table
from bench.stats import Interval

__all__ = [
    "BUDGET_DEPENDENT",
    "BUDGET_RULE",
    "BUDGET_STABLE",
    "NOT_CHECKED",
    "TITLE",
    "BudgetCheck",
    "budget_checks",
    "budget_table",
    "budget_verdict",
    "check_claims",
    "claim_verdict",
    "has_check",
]

TITLE = "Budget-stability check"
BUDGET_STABLE = "budget-stable"
BUDGET_DEPENDENT = "budget-dependent"
NOT_CHECKED = "not checked"

BUDGET_RULE = (
    f"{BUDGET_STABLE}: at every n of the check, the longer budget's mean paired difference has "
    "the same sign as the main budget's mean over all the run's seeds at that n, and the longer "
    "budget's 95 % interval (Student t over the check's seeds) overlaps the main budget's "
    f"all-seed interval at that n; {BUDGET_DEPENDENT} otherwise; {NOT_CHECKED} when the run has "
    "no check cells of both models (or too few seeds for an interval) and for a read-out the "
    "check does not repeat.")


@dataclass(frozen=True)
class BudgetCheck:
    """One claim's difference ``a`` minus ``b`` of accuracy on ``test_set`` at one n, at both
    budgets."""

    claim: str  # the claim's key, "C1"
    a: str
    b: str
    n: int
    main_all: Interval  # main budget, every seed of the run with both models at n
    main_seeds: Interval  # main budget, the check's seeds
    longer: Interval  # longer budget, the check's seeds
    test_set: str = AFFNIST_STYLE.name

    @property
    def verdict(self) -> str:
        return budget_verdict(self.main_all, self.longer)


def budget_verdict(main_all: Interval, longer: Interval) -> str:
    """:data:`BUDGET_RULE` at one n: ``longer``'s estimate has the sign of ``main_all``'s (zero
    counts as a sign of its own) and the two closed intervals overlap. Our choice: when either
    interval is undefined (fewer than 2 seeds), :data:`NOT_CHECKED`."""
    values = (main_all.estimate, main_all.low, main_all.high, longer.estimate, longer.low,
              longer.high)
    if not all(math.isfinite(v) for v in values):
        return NOT_CHECKED
    same_sign = np.sign(longer.estimate) == np.sign(main_all.estimate)
    overlap = longer.low <= main_all.high and main_all.low <= longer.high
    return BUDGET_STABLE if same_sign and overlap else BUDGET_DEPENDENT


def has_check(metrics: pd.DataFrame) -> bool:
    """Whether ``metrics`` (every setup's rows) has rows of the check's setup."""
    return bool((metrics["setup"] == BUDGET_SETUP).any())


def _accuracy(d: pd.DataFrame, model: str, n: int, test_set: str) -> dict[int, float]:
    return readout.by_seed(readout.rows(d, model, test_set, "accuracy", n=n))


def budget_checks(metrics: pd.DataFrame, key: str, a: str, b: str,
                  test_set: str = AFFNIST_STYLE.name) -> list[BudgetCheck]:
    """``a`` minus ``b`` of accuracy on ``test_set`` (affNIST-style by default) at each n where
    the check has both models, at both budgets (:class:`BudgetCheck`); empty without check rows
    of both. ``metrics``: the rows of ``metrics.csv`` of every setup."""
    main = metrics[metrics["setup"] == MAIN_SETUP]
    check = metrics[metrics["setup"] == BUDGET_SETUP]
    out = []
    for n in sorted(set(readout.rows(check, a, test_set, "accuracy")["n"])
                    & set(readout.rows(check, b, test_set, "accuracy")["n"])):
        n = int(n)
        la, lb = _accuracy(check, a, n, test_set), _accuracy(check, b, n, test_set)
        seeds = sorted(set(la) & set(lb))
        ma, mb = _accuracy(main, a, n, test_set), _accuracy(main, b, n, test_set)
        out.append(BudgetCheck(
            key, a, b, n,
            main_all=stats.paired_difference(ma, mb),
            main_seeds=stats.paired_difference({s: ma[s] for s in seeds if s in ma},
                                               {s: mb[s] for s in seeds if s in mb}),
            longer=stats.paired_difference(la, lb), test_set=test_set))
    return out


def claim_verdict(checks: Sequence[BudgetCheck]) -> str:
    """One claim's verdict over the check's sizes: :data:`BUDGET_DEPENDENT` when any n is,
    :data:`BUDGET_STABLE` when every n is (our choice), else :data:`NOT_CHECKED`."""
    verdicts = [c.verdict for c in checks]
    if BUDGET_DEPENDENT in verdicts:
        return BUDGET_DEPENDENT
    if verdicts and all(v == BUDGET_STABLE for v in verdicts):
        return BUDGET_STABLE
    return NOT_CHECKED


def check_claims(metrics: pd.DataFrame, rows: Sequence[Any]) -> list[BudgetCheck]:
    """Sets ``budget_stable`` of every claim (:class:`bench.report.claims.Claim`) of ``rows``
    (:func:`claim_verdict`; a claim without a :attr:`~bench.report.claims.Claim.pair` stays
    :data:`NOT_CHECKED`) and returns every :class:`BudgetCheck` read, in the order of ``rows``."""
    out: list[BudgetCheck] = []
    for claim in rows:
        if claim.pair is None:
            claim.budget_stable = NOT_CHECKED
            continue
        checks = budget_checks(metrics, claim.key, *claim.pair, claim.pair_set)
        claim.budget_stable = claim_verdict(checks)
        out += checks
    return out


def _budgets(manifest: dict | None) -> tuple[str, str]:
    """The two budgets' headers, with their steps when the manifest records them."""
    config = ((manifest or {}).get("profile") or {}).get("config") or {}
    steps = (config.get("train") or {}).get("steps")
    factor = (config.get("budget_check") or {}).get("factor")
    if isinstance(steps, int) and steps > 0 and isinstance(factor, (int, float)):
        return (f"main budget, {steps:,} steps",
                f"longer budget, {budget_steps(steps, factor):,} steps ({factor:g}×)")
    return "main budget", "longer budget"


def budget_table(checks: Sequence[BudgetCheck], manifest: dict | None = None) -> Table | None:
    """The table "Budget-stability check": one row per claim and n; None without checks."""
    if not checks:
        return None
    main, longer = _budgets(manifest)

    def pp(iv: Interval) -> str:
        return readout.iv(iv, 100, 2, signed=True, unit=" pp")

    header = ["Claim", "Difference", "n", f"{main}, all seeds [95% interval]",
              f"{main}, check seeds", f"{longer}, check seeds", "Budget"]
    body = [[c.claim, f"{c.a} {MINUS} {c.b}, {display_name(c.test_set)}", readout.integer(c.n),
             f"{pp(c.main_all)} ({c.main_all.n})", f"{pp(c.main_seeds)} ({c.main_seeds.n})",
             f"{pp(c.longer)} ({c.longer.n})", c.verdict] for c in checks]
    notes = [
        "Each cell: the mean paired difference of accuracy on the named test set (overlapping "
        "digits: both digits among the top two) between the two models at the same n (not at "
        "matched clean accuracy), its 95 % interval over seeds "
        "(Student t on the per-seed differences) and the number of paired seeds in brackets. "
        "The longer budget's cells repeat the main cells of their seeds (same training subset, "
        "initialisation and batch order) with the steps multiplied; the learning-rate schedule "
        "runs over the longer budget.",
        f"Rule: {BUDGET_RULE}",
        "What it cannot show: whether a still longer budget moves the difference again; the "
        "claims' read-out at matched clean accuracy (the check reads the same n); test-digit "
        "sampling (the intervals are over seeds only); with few seeds the longer budget's "
        "interval is wide, and a wide interval overlaps easily.",
    ]
    return Table("budget", "The scoreboard's differences of accuracy at the same n at the "
                 "main budget and at the longer budget of the budget-stability check.",
                 header, body, "llrrrrl", notes)
