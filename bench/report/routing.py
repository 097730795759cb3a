"""Routing vs pooling on one shared backbone: the report's table, scoreboard row and figure.

The heads of :mod:`bench.models.heads` (``head-*``) share one backbone, so a difference between
two heads is the head. This module reads the affNIST-setup rows of ``metrics.csv`` (columns
model, n, seed, test_set, factor_value, metric, value; :func:`bench.report.read.read_metrics`) and
gives :mod:`bench.report` three things, without importing it (the report sits above this
module):

- :func:`routing_table`: per head, clean and affNIST-style accuracy at the largest n, the
  affNIST-style accuracy at matched clean accuracy c*, the part-arrangement score and the
  training images needed to reach a target, as the report's
  :class:`~bench.report.table.Table` and as a tidy numeric frame (for tests and the figure);
- :func:`routing_claim`: the scoreboard row "best routing head minus best pooling head", a
  :class:`bench.report.claims.Claim`;
- :func:`routing_figure`: the affNIST-style accuracy at c* of every head as points with their
  95% intervals, pooling heads and routing heads in two groups.

Rules (the same as the report's; the read-outs and number formats are :mod:`bench.report.readout`,
which the report uses too):

- Every interval comes from :mod:`bench.stats` (Student t over seeds, clipped to the metric's
  range; paired over seeds for a difference; on the log scale for a training-set size).
- c*: the highest clean accuracy that every curve reaches (the lowest of the per-seed maxima),
  provided it is not below some curve's lowest point; each seed's affNIST-style accuracy is read
  at c* along its curve of increasing n by linear interpolation (:func:`bench.report.readout.c_star`,
  :func:`bench.report.readout.matched`). This is the rule of the report's matched table and of claims
  C1 and C4. In the table, "every curve" is every head's on every seed; in the scoreboard row it
  is the two heads compared, as in C1.
- Part-arrangement score: the report's C3 score, :data:`bench.report.readout.PART_SCORE` (AUROC of
  telling intact from scrambled digits by a label-free feature-density score) on the scrambled
  set with the smallest grid.
- "The largest n": the largest training-set size at which every head in the table has a clean
  accuracy (the heads share the profile's sizes); each head's own largest n when they share none.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from bench import stats
from bench.cell.plan import AFFNIST_SETUP
from bench.data.testsets import AFFNIST_STYLE, CLEAN, DISPLACED
from bench.report import figures, readout
from bench.report.claims import Claim
from bench.report.readout import BOUNDED, MINUS, NOT_MEASURED, PART_SCORE
from bench.report.table import Table
from bench.stats import Interval

__all__ = [
    "POOLING_HEADS",
    "ROUTING_HEADS",
    "TITLE",
    "FIGURE_STEM",
    "FIGURE_CAPTION",
    "SCOREBOARD_RULE",
    "RoutingTable",
    "head_groups",
    "largest_n",
    "best_head",
    "routing_table",
    "routing_claim",
    "routing_figure",
]

# The heads of bench/models/heads.py (HEADS), by group; the fc head (flatten + linear) routes
# nothing and is counted with the pooling heads (our choice, as in SR-CapsNet's comparison).
POOLING_HEADS = ("head-maxpool", "head-avgpool", "head-fc")
ROUTING_HEADS = ("head-dynamic", "head-em", "head-self", "head-attention")
TITLE = "Routing vs pooling, same backbone"
FIGURE_STEM = "routing"
FIGURE_CAPTION = (
    "Routing vs pooling, same backbone: each head's affNIST-style accuracy at the matched clean "
    "accuracy c* (the highest clean accuracy every head reaches on every seed), mean over seeds "
    "with its 95% Student-t interval, one small point per seed; pooling heads above, routing "
    "heads below; dashed: the highest pooling-head mean.")

# The rule of the scoreboard row, for bench.report.scoreboard.SCOREBOARD_RULES.
SCOREBOARD_RULE = (
    "C5 (runs with routing heads only): of the heads on one shared backbone "
    "(bench/models/heads.py), the routing head and the pooling head (max pool, average pool or "
    "flatten, then linear) with the highest mean validation accuracy at the largest n every "
    "head shares (held-out training images; chosen on clean accuracy only, never on the "
    "effect), compared on their affNIST-style accuracy at the highest clean accuracy both reach "
    "on every seed, read as in C1; the interval is that of the two heads chosen and does not "
    "allow for the choice: the routing section lists every routing-pooling pair.")


# --------------------------------------------------------------------------------------------
# The heads


def head_groups(models: Iterable[str]) -> tuple[list[str], list[str]]:
    """(pooling heads, routing heads) among ``models``, each in the order of its constant."""
    have = set(models)
    return [m for m in POOLING_HEADS if m in have], [m for m in ROUTING_HEADS if m in have]


def largest_n(main: pd.DataFrame, heads: Sequence[str]) -> dict[str, int]:
    """Per head with a clean accuracy: the largest n every such head has one at, or, when they
    share no size, the head's own largest n."""
    sizes = {m: set(readout.rows(main, m, CLEAN.name, "accuracy")["n"].astype(int)) for m in heads}
    sizes = {m: s for m, s in sizes.items() if s}
    if not sizes:
        return {}
    common = set.intersection(*sizes.values())
    return {m: (max(common) if common else max(s)) for m, s in sizes.items()}


def validation_accuracy(cells: pd.DataFrame | None, heads: Sequence[str],
                        at_n: dict[str, int]) -> dict[str, float]:
    """Per head, the mean over seeds of the final validation accuracy (``cells.csv``:
    ``final_val_accuracy``, held-out training images, never a test set) at its n in ``at_n``;
    heads without one are left out. Empty when ``cells`` is None or has no such column."""
    if cells is None or "final_val_accuracy" not in cells.columns:
        return {}
    out = {}
    for m in heads:
        if m not in at_n:
            continue
        v = cells[(cells["model"] == m) & (cells["n"].astype(int) == at_n[m])]
        if "setup" in v.columns:
            v = v[v["setup"] == AFFNIST_SETUP]
        v = pd.to_numeric(v["final_val_accuracy"], errors="coerce").dropna()
        if not v.empty:
            out[m] = float(v.mean())
    return out


def clean_accuracy(main: pd.DataFrame, heads: Sequence[str],
                   at_n: dict[str, int]) -> dict[str, float]:
    """Per head, the mean over seeds of the clean test accuracy at its n in ``at_n``; heads
    without one are left out."""
    out = {}
    for m in heads:
        if m in at_n and (v := readout.by_seed(readout.rows(main, m, CLEAN.name, "accuracy",
                                                             at_n[m]))):
            out[m] = float(np.mean(list(v.values())))
    return out


def best_head(heads: Sequence[str], accuracy: dict[str, float]) -> str | None:
    """The head of ``heads`` with the highest ``accuracy`` (:func:`validation_accuracy` or
    :func:`clean_accuracy`); ties go to the head listed first; None when no head has one.

    The criterion is never the affNIST-style accuracy that the scoreboard compares, so the
    choice does not favour either side of that comparison.
    """
    best, best_acc = None, -math.inf
    for m in heads:
        if m in accuracy and accuracy[m] > best_acc:
            best, best_acc = m, accuracy[m]
    return best


def overlapping(per_model: dict[str, readout.Curves]) -> tuple[list[str], float | None]:
    """The heads left out so that the others share a matched clean accuracy, and that c*.

    :func:`bench.report.readout.c_star` of all heads, or, when their clean-accuracy ranges do not all
    overlap, of the heads left after dropping, one at a time, the head whose best seed-wise top
    clean accuracy is lowest (a head that did not train on some seed). Returns (dropped heads,
    c* or None)."""
    kept = dict(per_model)
    dropped: list[str] = []
    while kept:
        c = readout.c_star(kept.values())
        if c is not None or len(kept) <= 2:
            return dropped, c
        worst = min(kept, key=lambda m: min(float(cl.max()) for cl, _ in kept[m].values()))
        dropped.append(worst)
        del kept[worst]
    return dropped, None


# --------------------------------------------------------------------------------------------
# The table


@dataclass
class RoutingTable:
    """The table "Routing vs pooling, same backbone" and the numbers behind it.

    Attributes:
        table: the report's :class:`~bench.report.table.Table` (name ``routing``).
        values: tidy numbers, one row per (head, quantity) with columns head, group ("pooling" or
            "routing"), quantity ("clean", "affnist", "matched", "part", "part_displaced",
            "n_target"), n (the size, NaN for quantities read along n), estimate, low, high,
            n_seeds, clipped; in fractions (accuracies, AUROC) or images (n_target); NaN where not
            computed.
        c_star: the matched clean accuracy of the "matched" column (None: not computed).
        target: the clean-accuracy target of the "n to target" column (None: no targets).
        part_set: the scrambled set of the part-arrangement column (None: no such rows).
        per_seed: {head: {seed: affNIST-style accuracy at c*}} (what the figure draws).
    """

    table: Table
    values: pd.DataFrame = field(default_factory=pd.DataFrame)
    c_star: float | None = None
    target: float | None = None
    part_set: str | None = None
    per_seed: dict[str, dict[int, float | None]] = field(default_factory=dict)


def _table_target(main: pd.DataFrame, heads: Sequence[str],
                  targets: Sequence[float]) -> tuple[float | None, dict[str, readout.Needed]]:
    """The highest target that every head reaches on every seed (the report's C2 rule, over all
    heads); when none is, the lowest target (the column then says how many seeds never reached
    it)."""
    if not targets:
        return None, {}
    for t in sorted(targets, reverse=True):
        need = {m: readout.needed(main, m, t) for m in heads}
        if all(nd.values and not nd.missing for nd in need.values()):
            return t, need
    t = min(targets)
    return t, {m: readout.needed(main, m, t) for m in heads}


def routing_table(main: pd.DataFrame, targets: Sequence[float] = ()) -> RoutingTable | None:
    """The table "Routing vs pooling, same backbone", or None when ``main`` has no ``head-*`` rows.

    Per head (pooling heads first, then routing heads): the seeds; the clean and the
    affNIST-style accuracy at the largest n (:func:`largest_n`), mean over seeds with its 95%
    interval (:func:`stats.mean_interval`, clipped to [0, 100]%); the affNIST-style accuracy at
    the matched clean accuracy c* of every head on every seed (:func:`bench.report.readout.c_star`,
    read per seed by :func:`stats.matched_accuracy`), mean with its interval; the
    part-arrangement score (:data:`bench.report.readout.PART_SCORE` on the scrambled set with the
    smallest grid at the largest n; the column is left out when no head has it); and the
    training images needed to reach the highest of ``targets`` that every head reaches on every
    seed (:func:`bench.report.readout.needed` per seed, geometric mean with its interval on log n,
    :func:`bench.report.readout.needed_text`).

    Args:
        main: the rows of ``metrics.csv`` of the affNIST setup.
        targets: the profile's clean-accuracy targets (fractions).
    """
    pooling, routing = head_groups(main["model"])
    heads = pooling + routing
    if not heads:
        return None
    group = {m: ("pooling" if m in pooling else "routing") for m in heads}
    at_n = largest_n(main, heads)
    per_model = {m: readout.curves(main, m) for m in heads}
    per_model = {m: c for m, c in per_model.items() if c}
    left_out, cs = overlapping(per_model)
    per_seed = ({m: readout.matched(c, cs) for m, c in per_model.items() if m not in left_out}
                if cs is not None else {})
    part_rows = main[main["metric"] == PART_SCORE]
    part_set = readout.smallest_scramble(part_rows["test_set"])
    control = part_set is not None and bool((part_rows["test_set"] == DISPLACED.name).any())
    target, need = _table_target(main, heads, targets)

    values: list[dict[str, Any]] = []

    def put(m: str, quantity: str, n: float, iv: Interval | None) -> Interval | None:
        values.append({"head": m, "group": group[m], "quantity": quantity, "n": n,
                       "estimate": iv.estimate if iv else math.nan,
                       "low": iv.low if iv else math.nan, "high": iv.high if iv else math.nan,
                       "n_seeds": iv.n if iv else 0, "clipped": bool(iv.clipped) if iv else False})
        return iv

    def mean_or_none(v: dict[int, Any]) -> Interval | None:
        v = {s: x for s, x in v.items() if x is not None}
        return stats.mean_interval(v) if v else None

    def at_largest(d: pd.DataFrame, m: str, test_set: str,
                   metric: str | None = None) -> Interval | None:
        n = at_n.get(m)
        return None if n is None else mean_or_none(
            readout.by_seed(readout.rows(d, m, test_set, metric, n)))

    rows = []
    for m in heads:
        nn = float(at_n[m]) if m in at_n else math.nan
        clean = put(m, "clean", nn, at_largest(main, m, CLEAN.name, "accuracy"))
        aff = put(m, "affnist", nn, at_largest(main, m, AFFNIST_STYLE.name, "accuracy"))
        mat = put(m, "matched", math.nan, mean_or_none(per_seed.get(m, {})))
        seeds = sorted(set(readout.rows(main, m, CLEAN.name, "accuracy")["seed"].astype(int)))
        row = [m, group[m], str(len(seeds)), readout.iv(clean, 100), readout.iv(aff, 100),
               readout.iv(mat, 100)]
        if part_set is not None:
            part = put(m, "part", nn, at_largest(part_rows, m, part_set))
            row.append(readout.iv(part, 1, 3))
        if control:
            row.append(readout.iv(put(m, "part_displaced", nn,
                                      at_largest(part_rows, m, DISPLACED.name)), 1, 3))
        if target is not None:
            nd = need[m]
            done = [v for v in nd.values.values() if v is not None]
            put(m, "n_target", math.nan,
                stats.geometric_interval(done) if done and not nd.missing else None)
            row.append(readout.needed_text(nd))
        rows.append(row)

    sizes = sorted(set(at_n.values()))
    n_label = (f"n = {sizes[0]:,}" if len(sizes) == 1
               else "n = " + ", ".join(f"{at_n[m]:,} ({m})" for m in heads if m in at_n))
    shown = AFFNIST_STYLE.display
    cs_text = f"{100 * cs:.2f}%" if cs is not None else "—"
    header = ["Head", "Kind", "Seeds", "Clean acc. (%)", f"{shown} acc. (%)",
              f"{shown} acc. at c* = {cs_text} (%)"]
    if part_set is not None:
        header.append(f"AUROC density ({part_set})")
    if control:
        header.append(f"AUROC density ({DISPLACED.name}, control)")
    if target is not None:
        header.append(f"n for {100 * target:g}% clean")
    notes = [
        f"Clean, {shown} and AUROC columns: at the largest n every head shares ({n_label}). "
        f"c*: the highest clean accuracy that every head reaches on every seed; each seed's "
        f"{shown} accuracy is read at c* along its curve of increasing n (linear interpolation "
        "between sizes), as for claim C1."
        + (f" Left out of c* (—): {', '.join(left_out)}, whose clean accuracy on some seed "
           "stays below every other head's range (see the convergence table)."
           if left_out and cs is not None else "")
        + ("" if cs is not None else " —: the heads' clean accuracies do not all overlap, so "
           "there is no common c*."),
    ]
    if part_set is not None:
        notes.append(f"AUROC density: telling intact (positive) from scrambled digits of "
                     f"{part_set} by minus the class-conditional Mahalanobis distance of the "
                     "head's features (the C3 score); 0.5 is chance."
                     + (f" Control: the same score on the {DISPLACED.name} set (parts moved "
                        "apart, arrangement kept); a score as high there as on the scrambled set "
                        "detects distortion, not part arrangement." if control else ""))
    if target is not None:
        notes.append(f"n for {100 * target:g}% clean: the highest profile target that every head "
                     "reaches on every seed (the lowest target when none is); per seed, the first "
                     "size that reaches it, linear in log n from the size before; geometric mean "
                     f"[95% interval on log n, exponentiated, {readout.CLIPPED} when clipped to "
                     f"the sizes trained]; {BOUNDED} or ≤: reached at the smallest n, where the "
                     "size is only an upper bound; the interpolation's error is not in the "
                     "interval.")
    notes.append("Kind: pooling heads (global max pool, global average pool, flatten; each then "
                 "a linear layer) and capsule routing heads (dynamic, EM, self-routing, "
                 "Efficient-CapsNet self-attention), all on the same backbone "
                 "(bench/models/heads.py).")
    align = "llr" + "r" * (len(header) - 3)
    return RoutingTable(
        table=Table("routing", f"{TITLE}: every head on one shared backbone and one training budget, so a "
              "difference is the head's (its routing or pooling, its parameters, which differ, "
              "see the throughput table, and its loss: margin, spread or cross-entropy). Mean "
              "over seeds [95% Student-t interval].", header, rows, align, notes),
        values=pd.DataFrame(values),
        c_star=cs, target=target, part_set=part_set, per_seed=per_seed)


# --------------------------------------------------------------------------------------------
# The scoreboard row


Scale = Callable[..., str]  # (models, sizes, seeds, k, lead=...) -> str, as bench.report's


def pair_effect(main: pd.DataFrame, a: str, b: str
                ) -> tuple[list[int], float | None, Interval | None]:
    """``a`` minus ``b`` on affNIST-style accuracy at their matched clean accuracy, paired over
    the seeds both have: (those seeds, c*, interval); c* and the interval are None when there is
    no seed or no common clean accuracy. c* is :func:`bench.report.readout.c_star` of the two heads;
    the interval is :func:`stats.paired_difference` of the per-seed readings
    (:func:`bench.report.readout.matched`)."""
    ca, cb = readout.curves(main, a), readout.curves(main, b)
    common = sorted(set(ca) & set(cb))
    ca, cb = {s: ca[s] for s in common}, {s: cb[s] for s in common}
    c = readout.c_star([ca, cb]) if common else None
    if c is None:
        return common, None, None
    return common, c, stats.paired_difference(readout.matched(ca, c), readout.matched(cb, c))


def pairs_table(main: pd.DataFrame, chosen: tuple[str, str] | None = None
                ) -> tuple[list[str], list[list[str]], list[str]] | None:
    """Every routing head against every pooling head, as the C5 row reads its chosen pair:
    (header, rows, notes), or None without both kinds. Per pair: c*, the paired difference at
    c* with its interval and verdict, and the paired difference at the largest n both have
    (no matching). Shows how much the scoreboard's row depends on which heads are "best"."""
    pooling, routing = head_groups(main["model"])
    if not pooling or not routing:
        return None
    rows, intervals = [], []
    for a in routing:
        for b in pooling:
            _, c, iv = pair_effect(main, a, b)
            intervals.append(iv)
            at_n = largest_n(main, [a, b])
            va = readout.by_seed(readout.rows(main, a, AFFNIST_STYLE.name, "accuracy", at_n.get(a)))
            vb = readout.by_seed(readout.rows(main, b, AFFNIST_STYLE.name, "accuracy", at_n.get(b)))
            both = sorted(set(va) & set(vb))
            raw = (stats.paired_difference({s: va[s] for s in both}, {s: vb[s] for s in both})
                   if len(both) >= 1 and at_n.get(a) == at_n.get(b) else None)
            mark = " (C5)" if chosen == (a, b) else ""
            rows.append([f"{a} {MINUS} {b}{mark}", f"{100 * c:.2f}" if c is not None else "—",
                         readout.iv(iv, 100) if iv is not None else "—",
                         stats.verdict(iv, 0.0) if iv is not None else "—",
                         readout.iv(raw, 100) if raw is not None else "—"])
    # Holm over this table's pairs (a family of its own, apart from the scoreboard's claims)
    adjusted = stats.holm_adjusted([stats.p_value(iv) if iv is not None else math.nan
                                    for iv in intervals])
    for row, iv, p in zip(rows, intervals, adjusted, strict=True):
        row.insert(4, stats.adjusted_verdict(iv, p) if iv is not None else "—")
    shown = AFFNIST_STYLE.display
    header = ["Routing head − pooling head", "c* (%)", f"{shown} at c* (pp)", "Verdict",
              "Holm verdict", f"{shown} at the largest n (pp)"]
    notes = [f"Every routing head against every pooling head, read as the C5 row reads its pair: "
             f"c* is the highest clean accuracy both heads reach on every seed, each seed's "
             f"{shown} accuracy is read there (linear in n between sizes), and the difference is "
             "paired over seeds (Student t, 95%; the interpolation's error is not in it). The "
             "last column compares the heads at the largest n without matching clean accuracy. "
             "The scoreboard's row is one of these pairs, chosen on validation accuracy; a "
             "verdict that changes along a row or column means the C5 verdict depends on that "
             "choice. —: no clean accuracy common to both heads on every seed.",
             "Holm verdict: Holm's step-down adjustment (Holm 1979) of the pairs' two-sided "
             "paired-t p-values over the pairs of this table, at family-wise 5 %. With 3 seeds "
             "the seed spread is estimated from 3 values: a narrow interval can be luck."]
    return header, rows, notes


def chosen_pair(main: pd.DataFrame, cells: pd.DataFrame | None = None
                ) -> tuple[str | None, str | None]:
    """(best routing head, best pooling head) by :func:`best_head` at the largest n every head
    shares, with the validation accuracies of ``cells`` when it has them all."""
    pooling, routing = head_groups(main["model"])
    at_n = largest_n(main, pooling + routing)
    acc = validation_accuracy(cells, pooling + routing, at_n)
    # one criterion for both groups: validation images (not the test digits the effect is read
    # on) when every head has them, else the clean test accuracy
    if not acc or not all(m in acc for m in at_n):
        acc = clean_accuracy(main, pooling + routing, at_n)
    return best_head(routing, acc), best_head(pooling, acc)


def routing_claim(main: pd.DataFrame, *, key: str = "C5",
                  scale: Scale | None = None, cells: pd.DataFrame | None = None
                  ) -> Claim:
    """The scoreboard row: best routing head minus best pooling head, affNIST-style accuracy at
    matched clean accuracy, paired over seeds.

    "Best" in each group (our choice): the head with the highest mean validation accuracy over
    seeds at the largest n every head shares (``cells``; without it, the highest mean clean test
    accuracy), ties to the head listed first in :data:`ROUTING_HEADS` / :data:`POOLING_HEADS`
    (:func:`best_head`). It is chosen on clean accuracy alone, not on the affNIST-style
    accuracy compared, so the choice cannot favour either side of the effect. The interval does
    not allow for the choice (it is the paired Student-t interval of the two heads chosen, over
    the seeds both have); :func:`pairs_table` shows every other pair.

    The effect is measured as claim C1: c* is the highest clean accuracy both chosen heads reach
    on every seed they share (:func:`bench.report.readout.c_star`), each seed's affNIST-style accuracy
    is read at c* (:func:`stats.matched_accuracy`), and the interval is
    :func:`stats.paired_difference` of routing minus pooling; the verdict is
    :func:`stats.verdict` of it against 0.

    Args:
        main: the rows of ``metrics.csv`` of the affNIST setup.
        key: the row's key on the scoreboard.
        scale: ``bench.report.claims._Context.scale`` (the "Measured at" text: width, steps, seeds,
            convergence); None gives "along the n-curve; n = ...; k paired seeds".
        cells: ``cells.csv`` (its ``final_val_accuracy`` chooses the heads), if any.

    Returns:
        the scoreboard's :class:`~bench.report.claims.Claim` (unit "pp", null 0): its interval is
        None and its reason says why when the run cannot measure it.
    """
    shown = AFFNIST_STYLE.display
    out = Claim(
        key, "routing",
        f"{shown} accuracy at matched clean accuracy c*, best routing head {MINUS} "
                  "best pooling head (same backbone)",
        f"the best capsule routing head keeps more {shown} accuracy than the best "
                   "pooling head on the same backbone at the same clean accuracy, i.e. the "
                   "routing itself helps (Hahn et al. 2019; against Gu, Tresp & Hu 2021); best "
                   "= highest mean validation accuracy at the largest n",
        0.0, "pp")
    pooling, routing = head_groups(main["model"])
    missing = [what for what, heads in (("routing", routing), ("pooling", pooling)) if not heads]
    if missing:
        out.reason = (f"{NOT_MEASURED} (no {' and no '.join(missing)} head with results in "
                         "this run)")
        return out
    a, b = chosen_pair(main, cells)
    if a is None or b is None:
        out.reason = f"{NOT_MEASURED} (no clean accuracy of a routing and a pooling head)"
        return out
    out.effect = out.effect.replace("best routing head", f"best routing head ({a})").replace(
        "best pooling head", f"best pooling head ({b})")
    common, c, iv = pair_effect(main, a, b)
    if not common:
        out.reason = f"{NOT_MEASURED} (no clean and {shown} accuracies of both {a} and {b})"
        return out
    if c is None or iv is None:
        out.reason = (f"{NOT_MEASURED} (the clean accuracies of {a} and {b} do not overlap on "
                         "every seed)")
        return out
    out.interval = iv
    out.effect = out.effect.replace("c*", f"c* = {100 * c:.2f}%")
    sizes = set(readout.curve_sizes(main, a)) | set(readout.curve_sizes(main, b))
    if scale is not None:
        out.scale = scale([a, b], sizes, common, iv.n, lead="along the n-curve")
    else:
        out.scale = (f"along the n-curve; {readout.n_range(sizes)}; {iv.n} paired seed"
                        + ("" if iv.n == 1 else "s"))
    return out


# --------------------------------------------------------------------------------------------
# The figure


def routing_figure(table: RoutingTable, stem: str | os.PathLike) -> pd.DataFrame:
    """affNIST-style accuracy at c* per head: mean with its 95% interval, one point per seed.

    One row per head, pooling heads on top and routing heads below, separated by a rule and
    labelled; the dashed vertical line is the highest pooling-head mean at c* (a reading aid, not
    the scoreboard's "best pooling head", which is chosen on clean accuracy).
    The intervals are those of the table's "matched" column (:func:`stats.mean_interval`).
    Writes ``<stem>.pdf`` and ``<stem>.png`` (:func:`bench.report.figures.save`).

    Returns:
        the points drawn: head, group, estimate, low, high (in %), y (the row, top = 0).

    Raises:
        ValueError: the table has no c* (nothing to draw).
    """
    if table.c_star is None:
        raise ValueError("routing_figure: the table has no matched clean accuracy c*")
    v = table.values
    v = v[(v["quantity"] == "matched") & np.isfinite(v["estimate"].to_numpy(dtype=float))]
    order = [m for m in (*POOLING_HEADS, *ROUTING_HEADS) if m in set(v["head"])]
    drawn = []
    y = 0.0
    last_group = None
    ys: dict[str, float] = {}
    for m in order:
        g = "pooling" if m in POOLING_HEADS else "routing"
        if last_group is not None and g != last_group:
            y += 0.6  # a gap between the groups
        ys[m] = y
        last_group = g
        y += 1.0
    with figures._style():
        fig = plt.figure(figsize=(figures.COLUMN_IN, 0.6 + 0.28 * max(len(order), 1)),
                         layout="constrained")
        ax = fig.subplots()
        pool_means = []
        for m in order:
            r = v[v["head"] == m].iloc[0]
            est, low, high = 100 * r["estimate"], 100 * r["low"], 100 * r["high"]
            color = figures.model_color(m)
            if np.isfinite(low) and np.isfinite(high):
                ax.errorbar([est], [ys[m]], xerr=[[est - low], [high - est]], fmt="o",
                            color=color, ecolor=color, elinewidth=1.2, capsize=2.5,
                            markersize=4, zorder=3)
            else:
                ax.plot([est], [ys[m]], "o", color=color, markersize=4, zorder=3)
            seeds = [x for x in table.per_seed.get(m, {}).values() if x is not None]
            ax.scatter(100 * np.asarray(seeds, dtype=float), np.full(len(seeds), ys[m] + 0.22),
                       s=5, color=color, alpha=0.6, linewidths=0, zorder=4)
            if m in POOLING_HEADS:
                pool_means.append(est)
            drawn.append({"head": m, "group": r["group"], "estimate": est, "low": low,
                          "high": high, "y": ys[m]})
        if pool_means:
            ax.axvline(max(pool_means), ls="--", lw=0.7, color="0.4", zorder=1)
        pool = [ys[m] for m in order if m in POOLING_HEADS]
        rout = [ys[m] for m in order if m in ROUTING_HEADS]
        if pool and rout:
            ax.axhline((max(pool) + min(rout)) / 2, lw=0.6, color="0.6")
        ax.set_yticks([ys[m] for m in order], order)
        ax.set_ylim(y - 0.4, -0.6)  # top row first
        for label, rows in (("pooling", pool), ("routing", rout)):
            if rows:
                ax.text(1.01, float(np.mean(rows)), label, transform=ax.get_yaxis_transform(),
                        rotation=270, ha="left", va="center", fontsize=6, color="0.35")
        ax.grid(axis="y", visible=False)
        ax.set_xlabel(f"{AFFNIST_STYLE.display} accuracy at c* = {100 * table.c_star:.2f}% "
                      "clean (%)")
        ax.set_title(TITLE, loc="left")
        figures.save(fig, stem)
    return pd.DataFrame(drawn, columns=["head", "group", "estimate", "low", "high", "y"])
