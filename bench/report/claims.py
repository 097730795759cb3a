"""The claims made for capsules, each read from a run's metrics as a paired effect with a verdict.

A :class:`Claim` is one row of the scoreboard (:mod:`bench.report.scoreboard`): what is claimed,
the effect (a paired difference or ratio over seeds, :mod:`bench.stats`), the scale it was
measured at, and the verdict of :func:`bench.stats.verdict`.

Two intervals per effect: over seeds for the run's fixed test digits (``seed_interval``), and
over seeds and test digits (``interval``, what the verdict reads) when the run has the per-image
store (:mod:`bench.report.store`): the seed term of the t-interval plus the variance of the
seed-averaged effect over :data:`REPLICATES` resamples of the test digits
(:func:`bench.stats.with_digit_variance`), each replicate recomputing every accuracy, c* and the
matched read-out from the resampled digits.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import stats
from bench.cell.plan import BUDGET_TEST_SETS
from bench.data.testsets import (
    AFFNIST_STYLE,
    CLEAN,
    DISPLACED,
    OVERLAP,
    display_name,
    find_set_kind,
)
from bench.report import figures, readout
from bench.report import store as store_mod
from bench.report.budget import NOT_CHECKED
from bench.report.read import MAIN_SETUP, MAXPOOL, REFERENCE, _flag
from bench.report.readout import BOUNDED, MINUS, NOT_MEASURED, PART_SCORE
from bench.report.table import _budget, _width
from bench.stats import Interval

# --------------------------------------------------------------------------------------------
# The context every table and claim reads

# The read-outs the budget-stability check repeats: every set of its cells but the clean one.
BUDGET_CHECKED_SETS = tuple(t for t in BUDGET_TEST_SETS if t != CLEAN.name)


REPLICATES = 1000  # test-digit resamples (our choice: a bootstrap SE to about 2 %)
DIGIT_SEED = 0  # the resamples' seed: a rebuilt report draws the same ones


@dataclass
class _Context:
    main: pd.DataFrame
    manifest: dict | None
    cells: pd.DataFrame | None
    store: pd.DataFrame | None = None
    _digits: tuple | None = None

    def digit_tables(self) -> tuple[np.ndarray, dict[str, store_mod.DigitTable]] | None:
        """Digit weights ``(REPLICATES, digits)`` and the tables the claims resample: accuracy
        on clean, the affNIST-style, overlapping-digit (top-2) and adversarial sets,
        kept-if-intact-correct on every scrambled set; None without a store."""
        if self.store is None or self.store.empty:
            return None
        if self._digits is None:
            sets = set(self.store["test_set"].unique())
            parts = {t: store_mod.accuracy_part(t) for t in sets
                     if t in (CLEAN.name, AFFNIST_STYLE.name, OVERLAP.name)
                     or t.startswith("sweep-") or t.startswith("affnist")
                     or getattr(find_set_kind(t), "family", None) == "adversarial"}
            parts.update({f"kept/{t}": store_mod.kept_part(t) for t in sets
                          if t == DISPLACED.name or t.startswith("scramble-")})
            digits, tables = store_mod.digit_tables(self.store, MAIN_SETUP, parts)
            if digits.size == 0:
                return None
            weights = stats.digit_weights(digits.size, REPLICATES, DIGIT_SEED)
            self._digits = (weights, tables)
        return self._digits

    @property
    def config(self) -> dict:
        prof = (self.manifest or {}).get("profile") or {}
        return prof.get("config") or {}

    @property
    def profile_models(self) -> list[str] | None:
        models = self.config.get("models") or ((self.manifest or {}).get("profile") or {}).get(
            "models")
        return list(models) if models else None

    def absent(self, *models: str) -> str | None:
        """Why a comparison of ``models`` cannot be measured (a model without results), or None."""
        have, listed = set(self.main["model"]), self.profile_models
        missing = [m for m in figures.model_order(models) if m not in have]
        if not missing:
            return None
        no_results = [m for m in missing if listed is not None and m in listed]
        not_listed = [m for m in missing if m not in no_results]
        why = []
        for names, what in ((not_listed, "not in this profile"),
                            (no_results, "no results in this run")):
            if names:
                label = "model" if len(names) == 1 else "models"
                verb = "" if what.startswith("not") else ("has " if len(names) == 1 else "have ")
                why.append(f"{label} {' and '.join(names)} {verb}{what}")
        return f"{NOT_MEASURED} ({'; '.join(why)})"

    def cell_rows(self, models: Iterable[str], sizes: Iterable[int] | None,
                  seeds: Iterable[int] | None) -> pd.DataFrame | None:
        if self.cells is None:
            return None
        c = self.cells[(self.cells["setup"] == MAIN_SETUP) & self.cells["model"].isin(list(models))]
        if sizes is not None:
            c = c[c["n"].isin(list(sizes))]
        if seeds is not None:
            c = c[c["seed"].isin(list(seeds))]
        return c

    def scale(self, models: Sequence[str], sizes: Iterable[int], seeds: Iterable[int],
              k: int, lead: str = "") -> str:
        """Where a comparison was measured: n, width, steps, labelled images, seeds, convergence."""
        sizes, seeds = sorted(set(sizes)), sorted(set(seeds))
        parts = [lead] if lead else []
        parts.append(readout.n_range(sizes))
        if "model" in self.config and "width" in (self.config["model"] or {}):
            parts.append(f"width {_width(self.config['model']['width'])}")
        cells = self.cell_rows(models, sizes, seeds)
        steps = (cells["steps"].dropna() if cells is not None else pd.Series(dtype=float))
        if not steps.empty:
            lo, hi = steps.min(), steps.max()
            parts.append(f"{lo:,.0f} steps" if lo == hi else f"{lo:,.0f}–{hi:,.0f} steps")
        elif budget := _budget(self.config):
            parts.append(budget)
        if cells is not None and len(sizes) == 1:
            labelled = cells["labelled_images"].dropna()
            if not labelled.empty and (labelled != sizes[0]).any():
                lo, hi = labelled.min(), labelled.max()
                parts.append(f"{lo:,.0f} labelled images" if lo == hi
                             else f"{lo:,.0f}–{hi:,.0f} labelled images")
        parts.append(f"{k} paired seed" + ("" if k == 1 else "s"))
        if cells is None or cells.empty:
            parts.append("convergence not recorded")
        else:
            flags = [_flag(f) for f in cells["converged"]]
            bad = sum(f is False for f in flags)
            unknown = sum(f is None for f in flags)
            alone = (sum(_flag(f) is False for f in cells["converged_cell"])
                     if "converged_cell" in cells else bad)
            if alone != bad:
                parts.append(f"{alone} of {len(flags)} cells still improving by the per-cell "
                             f"test, {bad} across the run")
            elif bad:
                parts.append(f"{bad} of {len(flags)} cells not converged")
            if unknown:
                parts.append(f"convergence of {unknown} of {len(flags)} cells not recorded")
        return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# The claims scoreboard


@dataclass
class Claim:
    """One row of the scoreboard: an effect, oriented so that above ``null`` is what is claimed."""

    key: str  # "C1"
    name: str  # "viewpoint"
    effect: str  # what is compared, in words
    meaning: str  # what "supported" means
    null: float  # no effect: 0 for differences, 1 for ratios
    unit: str  # "pp" (a difference of accuracies), "AUROC" (a difference of AUROCs), "ratio"
    interval: Interval | None = None  # what the verdict reads: seeds and digits when known
    scale: str = ""
    reason: str = ""  # why it was not measured
    seed_interval: Interval | None = None  # over seeds for the fixed test digits
    secondary: bool = False  # a read-out beside the claims: outside the Holm family
    p_adjusted: float = float("nan")  # Holm over the scoreboard's claims (set by its builder)
    # The models (a, b) of a difference a - b of accuracy on the test set ``pair_set``
    # (affNIST-style or overlapping digits), the read-out the budget-stability check repeats
    # (bench.report.budget); None: a read-out it does not repeat.
    pair: tuple[str, str] | None = None
    pair_set: str = AFFNIST_STYLE.name
    # bench.report.budget.claim_verdict: "budget-stable", "budget-dependent" or NOT_CHECKED
    budget_stable: str = NOT_CHECKED
    # The run has the per-image store but the digit resampling left the read-out undefined too
    # often (_digit_var): the interval is the seeds-only one, and the verdict inconclusive.
    digits_undefined: bool = False
    # A pre-registered analysis ([analysis], bench.report.scoreboard._holm): "primary",
    # "secondary", "exploratory", or "" without one; gate_closed: a secondary claim not tested
    # because the primary did not reject no effect.
    role: str = ""
    gate_closed: bool = False

    @property
    def verdict(self) -> str:
        if self.interval is None:
            return NOT_MEASURED
        if self.digits_undefined:
            return "inconclusive"
        return stats.verdict(self.interval, self.null)

    @property
    def holm_verdict(self) -> str:
        if self.interval is None:
            return NOT_MEASURED
        if self.secondary:
            return "— (secondary)"
        if self.role == "exploratory":
            return "— (exploratory)"
        if self.gate_closed:
            return "not tested (the primary claim did not reject no effect)"
        if self.digits_undefined:
            return "inconclusive"
        return stats.adjusted_verdict(self.interval, self.p_adjusted, self.null)

    @property
    def with_digits(self) -> bool:
        """Whether ``interval`` includes test-digit sampling (the run has the store)."""
        return self.seed_interval is not None and self.seed_interval is not self.interval

    def _text(self, interval: Interval | None) -> str:
        if interval is None:
            return self.reason
        if self.unit == "pp":
            return readout.iv(interval, 100, 2, signed=True, unit=" pp")
        if self.unit == "ratio":
            return readout.iv(interval, 1, 2, unit="×")
        return readout.iv(interval, 1, 3, signed=True)

    def estimate_text(self) -> str:
        text = self._text(self.interval)
        if self.interval is not None and self.digits_undefined:
            text += " (seeds only: the digit resampling left the read-out undefined)"
        return text

    def seed_text(self) -> str:
        """The seed-only interval, or an em dash when it is the one shown already."""
        if self.interval is None:
            return "—"
        return self._text(self.seed_interval or self.interval)

    def null_text(self) -> str:
        return {"pp": "0 pp", "ratio": "1×"}.get(self.unit, "0")


def _matched_claim(ctx: _Context, claim: Claim, a: str, b: str, other: str) -> Claim:
    """``a`` minus ``b`` on ``other`` at the highest clean accuracy both reach on every seed."""
    if (why := ctx.absent(a, b)) is not None:
        claim.reason = why
        return claim
    ca, cb = readout.curves(ctx.main, a, other), readout.curves(ctx.main, b, other)
    common = sorted(set(ca) & set(cb))
    if not common:
        claim.reason = (f"{NOT_MEASURED} (no clean and {display_name(other)} accuracies of "
                        "both models)")
        return claim
    ca, cb = {s: ca[s] for s in common}, {s: cb[s] for s in common}
    c = readout.c_star([ca, cb])
    if c is None:
        claim.reason = (f"{NOT_MEASURED} (the clean accuracies of {a} and {b} do not overlap on "
                        "every seed)")
        return claim
    if other in BUDGET_CHECKED_SETS:  # measured: the budget check repeats it
        claim.pair, claim.pair_set = (a, b), other
    claim.seed_interval = stats.paired_difference(readout.matched(ca, c), readout.matched(cb, c))
    digit_var = _matched_digit_var(ctx, a, b, other, common)
    claim.interval = _widened(claim.seed_interval, digit_var)
    claim.digits_undefined = digit_var is not None and math.isnan(digit_var)
    claim.effect = claim.effect.replace("c*", f"c* = {100 * c:.2f}%")
    sizes = set(readout.curve_sizes(ctx.main, a, other)) | set(readout.curve_sizes(ctx.main, b, other))
    claim.scale = ctx.scale([a, b], sizes, common, claim.interval.n, lead="along the n-curve")
    return claim


def _data_claim(ctx: _Context, claim: Claim, num: str, den: str,
                targets: Sequence[float]) -> Claim:
    """``num`` / ``den`` of the n to reach the highest target both reach on every seed."""
    if (why := ctx.absent(num, den)) is not None:
        claim.reason = why
        return claim
    for t in sorted(targets, reverse=True):
        a, b = readout.needed(ctx.main, num, t), readout.needed(ctx.main, den, t)
        common = sorted(set(a.values) & set(b.values))
        a, b = a.subset(common), b.subset(common)
        if not common or a.missing or b.missing:
            continue
        if all(s in a.at_first and s in b.at_first for s in common):
            claim.reason = (f"{NOT_MEASURED} (both models reach {100 * t:g}% clean accuracy at "
                            "the smallest n on every seed: no ratio)")
            return claim
        claim.interval = claim.seed_interval = stats.ratio_interval(a.values, b.values)
        claim.effect = claim.effect.replace("target", f"{100 * t:g}% clean accuracy")
        sizes = set(readout.wide(ctx.main, num, CLEAN.name).columns) | set(
            readout.wide(ctx.main, den, CLEAN.name).columns)
        if a.at_first or b.at_first:
            claim.effect += f" {BOUNDED}"
        claim.scale = ctx.scale([num, den], sizes, common, claim.interval.n,
                                lead="along the n-curve")
        return claim
    if not targets:
        claim.reason = f"{NOT_MEASURED} (the profile names no clean-accuracy target)"
        return claim
    listed = ", ".join(f"{100 * t:g}%" for t in targets)
    claim.reason = (f"{NOT_MEASURED} (no target of {listed} reached by both models on every "
                    "seed)")
    return claim


def _widened(seed_iv: Interval, digit_var: float | None,
             bounds: tuple[float, float] = (-1.0, 1.0)) -> Interval:
    """The seeds-and-digits interval (clipped to ``bounds``: a difference of two fractions),
    or ``seed_iv`` itself without a digit variance."""
    if digit_var is None or math.isnan(digit_var):
        return seed_iv
    return stats.with_digit_variance(seed_iv, digit_var, bounds=bounds)


def _digit_var(replicates: list[float], total: int) -> float | None:
    """The variance of the replicates; NaN when fewer than 90 % of them could be read (our
    choice: then the resampled read-out is too often undefined to trust its spread; the claim
    says so, :attr:`Claim.digits_undefined`); None without resamples."""
    if total < 2:
        return None
    if len(replicates) < 0.9 * total:
        return math.nan
    return float(np.var(replicates, ddof=1))


def _matched_digit_var(ctx: _Context, a: str, b: str, other: str,
                       seeds: Sequence[int]) -> float | None:
    """The variance over test-digit resamples of the seed-averaged matched difference ``a`` -
    ``b``: each replicate recomputes every accuracy of both models, c* and the read-outs."""
    got = ctx.digit_tables()
    if got is None:
        return None
    w, t = got
    if CLEAN.name not in t or other not in t:
        return None
    table = t[CLEAN.name]
    clean, oth = table.values(w), t[other].values(w)
    present = set(table.keys)

    def index(model: str) -> dict[int, list[int]] | None:
        sizes = sorted({n for m, n, _ in table.keys if m == model})
        if any((model, n, s) not in present for s in seeds for n in sizes):
            return None
        return {s: [table.row((model, n, s)) for n in sizes] for s in seeds}

    ia, ib = index(a), index(b)
    if ia is None or ib is None:
        return None
    reps: list[float] = []
    for r in range(w.shape[0]):
        per = []
        for idx in (ia, ib):
            cur = {}
            for s, rows_ in idx.items():
                cv, ov = clean[r, rows_], oth[r, rows_]
                keep = np.isfinite(cv) & np.isfinite(ov)
                cur[s] = (cv[keep], ov[keep])
            per.append(cur)
        c = readout.c_star(per)
        if c is None:
            continue
        ma, mb = readout.matched(per[0], c), readout.matched(per[1], c)
        d = [ma[s] - mb[s] for s in seeds if ma[s] is not None and mb[s] is not None]
        if len(d) == len(seeds):
            reps.append(float(np.mean(d)))
    return _digit_var(reps, w.shape[0])


KEPT = "kept_given_intact_correct"


def _specificity(main: pd.DataFrame, model: str, ts: str, n: int) -> dict[int, float]:
    """Per seed, arrangement specificity: kept-if-intact-correct on the displaced set minus on
    scrambled set ``ts``, at size ``n``."""
    kept = main[main["metric"] == KEPT]
    disp = readout.by_seed(readout.rows(kept, model, DISPLACED.name, n=n))
    scr = readout.by_seed(readout.rows(kept, model, ts, n=n))
    return {s: disp[s] - scr[s] for s in sorted(set(disp) & set(scr))}


def arrangement_contrast(main: pd.DataFrame, a: str, b: str
                         ) -> tuple[Interval, str, int, list[int]] | None:
    """Paired ``a`` minus ``b`` of arrangement specificity (:func:`_specificity`) on the scrambled
    set with the smallest grid at the largest n both have: (interval over seeds, the set, n,
    the seeds); None without the rows."""
    kept = main[main["metric"] == KEPT]
    ts = readout.smallest_scramble(kept["test_set"])
    if ts is None:
        return None
    sizes = None
    for m in (a, b):
        for t in (ts, DISPLACED.name):
            have = set(readout.rows(kept, m, t)["n"])
            sizes = have if sizes is None else sizes & have
    if not sizes:
        return None
    n = int(max(sizes))
    sa, sb = _specificity(main, a, ts, n), _specificity(main, b, ts, n)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        return None
    return stats.paired_difference(sa, sb, bounds=(-2.0, 2.0)), ts, n, seeds


def _arrangement_digit_var(ctx: _Context, a: str, b: str, ts: str, n: int,
                           seeds: Sequence[int]) -> float | None:
    got = ctx.digit_tables()
    if got is None:
        return None
    w, t = got
    disp, scr = t.get(f"kept/{DISPLACED.name}"), t.get(f"kept/{ts}")
    if disp is None or scr is None:
        return None
    keys = set(disp.keys)
    if any((m, n, s) not in keys for m in (a, b) for s in seeds):
        return None
    dv, sv = disp.values(w), scr.values(w)
    spec = dv - sv
    reps = store_mod.seed_means(spec, disp, a, b, n, seeds)
    reps = reps[np.isfinite(reps)]
    return _digit_var(list(reps), w.shape[0])


def _arrangement_claim(ctx: _Context, claim: Claim, a: str, b: str) -> Claim:
    """``a`` minus ``b`` of arrangement specificity: (kept on displaced) − (kept on scrambled),
    each the fraction of digits classified correctly intact that keep their class."""
    if (why := ctx.absent(a, b)) is not None:
        claim.reason = why
        return claim
    got = arrangement_contrast(ctx.main, a, b)
    if got is None:
        claim.reason = (f"{NOT_MEASURED} (no {KEPT} of both models on the displaced and a "
                        "scrambled set)")
        return claim
    seed_iv, ts, n, seeds = got
    claim.seed_interval = seed_iv
    digit_var = _arrangement_digit_var(ctx, a, b, ts, n, seeds)
    claim.interval = _widened(seed_iv, digit_var, bounds=(-2.0, 2.0))
    claim.digits_undefined = digit_var is not None and math.isnan(digit_var)
    claim.effect = claim.effect.replace("scrambled", ts)
    claim.scale = ctx.scale([a, b], [n], seeds, seed_iv.n, lead="at the largest n")
    return claim


@dataclass
class _PartDifference:
    """``a`` minus ``b`` of the :data:`PART_SCORE` AUROC on one set, at their largest common n."""

    interval: Interval
    n: int
    seeds: list[int]  # the seeds both models have
    means: tuple[float, float]  # each model's mean AUROC over those seeds


def _part_difference(main: pd.DataFrame, a: str, b: str,
                     test_set: str | None) -> _PartDifference | None:
    """The paired difference of C3 on ``test_set``; None without rows of both models."""
    auroc = main[main["metric"] == PART_SCORE]
    sizes = (set(readout.rows(auroc, a, test_set)["n"])
             & set(readout.rows(auroc, b, test_set)["n"])) if test_set else set()
    if not sizes:
        return None
    n = max(sizes)
    va = readout.by_seed(readout.rows(auroc, a, test_set, n=n))
    vb = readout.by_seed(readout.rows(auroc, b, test_set, n=n))
    seeds = sorted(set(va) & set(vb))
    if not seeds:
        return None
    means = (float(np.mean([va[s] for s in seeds])), float(np.mean([vb[s] for s in seeds])))
    return _PartDifference(stats.paired_difference(va, vb), n, seeds, means)


def _part_claim(ctx: _Context, claim: Claim, a: str, b: str) -> Claim:
    """``a`` minus ``b`` of the intact-vs-scrambled AUROC of :data:`PART_SCORE`, smallest grid,
    largest common n."""
    if (why := ctx.absent(a, b)) is not None:
        claim.reason = why
        return claim
    ts = readout.smallest_scramble(ctx.main.loc[ctx.main["metric"] == PART_SCORE, "test_set"])
    part = _part_difference(ctx.main, a, b, ts)
    if part is None:
        claim.reason = f"{NOT_MEASURED} (no {PART_SCORE} on a scrambled set for both models)"
        return claim
    claim.interval = claim.seed_interval = part.interval
    claim.effect = claim.effect.replace("scrambled", ts)
    claim.scale = ctx.scale([a, b], [part.n], part.seeds, claim.interval.n,
                            lead="at the largest n")
    return claim


def displaced_control(main: pd.DataFrame) -> str | None:
    """The control line of S1: the same difference (capsnet minus convnet-maxpool, by the same
    code path) on the ``displaced`` set, whose parts are moved apart but keep their arrangement;
    None when the run has no :data:`PART_SCORE` of both models on it."""
    part = _part_difference(main, REFERENCE, MAXPOOL, DISPLACED.name)
    if part is None:
        return None
    ts = readout.smallest_scramble(main.loc[main["metric"] == PART_SCORE, "test_set"])
    scrambled = _part_difference(main, REFERENCE, MAXPOOL, ts)
    seeds = f"{part.interval.n} paired seed" + ("" if part.interval.n == 1 else "s")
    means = f"mean AUROC {REFERENCE} {part.means[0]:.3f}, {MAXPOOL} {part.means[1]:.3f}"
    if scrambled is not None:
        means += (f"; on {ts}: {scrambled.means[0]:.3f} and {scrambled.means[1]:.3f} at "
                  f"{readout.n_range([scrambled.n])}")
    return (f"Control for S1: the same AUROC difference by feature density, {REFERENCE} "
            f"{MINUS} {MAXPOOL}, on the {DISPLACED.name} set (parts moved apart, arrangement "
            f"kept) at the largest n ({readout.n_range([part.n])}; {seeds}): "
            f"{readout.iv(part.interval, 1, 3, signed=True)} ({means}). A score that flags "
            "displaced digits as strongly as scrambled ones detects distortion, not "
            "specifically part arrangement; the behavioural read-outs (kept if intact correct, "
            "flip rate) are in the table \"Scrambled and displaced parts\".")
