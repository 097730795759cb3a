"""Report section "Component ladder": what each of Gu et al.'s components does on one trunk.

Written when a run has a step of the ladder of :mod:`bench.models.ladder` besides ``capsnet`` and
``convnet-k9`` (the ``ablation`` profile). One row per step present, in ladder order:

- clean accuracy at the largest n (mean over seeds with its Student-t interval);
- affNIST-style accuracy at matched clean accuracy, step MINUS its neighbour (the named
  component's effect) and step MINUS ``capsnet``: per pair, c* is the highest clean accuracy both
  models reach on every seed (:func:`bench.report.readout.c_star`), each seed's affNIST-style
  accuracy is read at c* along its curve of increasing n (:func:`bench.report.readout.matched`),
  and the per-seed differences get the paired Student-t interval
  (:func:`bench.stats.paired_difference`);
- the scrambled read-outs that exist, at the largest n, paired with ``capsnet``: the share of
  correctly classified intact digits still given their class when scrambled, and the
  label-free part-arrangement score (:data:`bench.report.readout.PART_SCORE`).

- with the overlapping-digits set (:data:`bench.data.testsets.OVERLAP`), its top-2 accuracy at
  the largest n, paired with ``capsnet`` (Gu et al.'s second read-out); runs made before the set
  existed have no such column.
:func:`ladder_values` returns the numbers as a frame (the figure of
:func:`bench.report.figures_ablation.ladder` draws them; the tests compare the two).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench import stats
from bench.data.testsets import AFFNIST_STYLE, CLEAN, DISPLACED, OVERLAP
from bench.models.ladder import LADDER
from bench.report import readout
from bench.report.readout import MINUS, NOT_MEASURED, PART_SCORE
from bench.report.table import Table
from bench.stats import Interval

__all__ = ["FIGURE_CAPTION", "FIGURE_STEM", "REFERENCE", "TITLE", "AblationTable",
           "ablation_table", "ladder_values", "matched_difference"]

TITLE = "Component ladder: Gu et al.'s components on the CapsNet's trunk"
FIGURE_STEM = "ablation"
FIGURE_CAPTION = (f"The component ladder: affNIST-style accuracy at matched clean accuracy, each "
                  f"step {MINUS} its neighbour (left: the named component's effect) and {MINUS} "
                  f"capsnet (right), mean over seeds with the 95% paired interval; dashed: no "
                  f"effect. Each comparison has its own c* (the table's). When fewer than half "
                  f"of the comparisons have a c*, the figure draws the differences at each "
                  f"model's largest n instead (not matched; the axes say so).")
REFERENCE = "capsnet"
_BASES = {"capsnet", "convnet-k9"}  # ladder members that other profiles train too
KEPT = "kept_given_intact_correct"


def matched_difference(main: pd.DataFrame, a: str, b: str,
                       other: str = AFFNIST_STYLE.name) -> tuple[float | None, Interval | None]:
    """(c*, paired interval of a MINUS b) of ``other`` accuracy at the clean accuracy c* both
    models reach on every seed; (None, None) when the two ranges of clean accuracy do not overlap
    or a model has no curve."""
    ca, cb = readout.curves(main, a, other), readout.curves(main, b, other)
    if not ca or not cb:
        return None, None
    c = readout.c_star([ca, cb])
    if c is None:
        return None, None
    ma = {s: v for s, v in readout.matched(ca, c).items() if v is not None}
    mb = {s: v for s, v in readout.matched(cb, c).items() if v is not None}
    if not set(ma) & set(mb):
        return c, None
    return c, stats.paired_difference(ma, mb)


def _scramble_difference(main: pd.DataFrame, a: str, b: str, metric: str,
                         test_set: str | None = None) -> Interval | None:
    """``a`` MINUS ``b`` of ``metric`` at each model's largest n on ``test_set`` (default: the
    scrambled set with the smallest grid), paired by seed."""
    scr = test_set or readout.smallest_scramble(main["test_set"].unique())
    if scr is None:
        return None
    d = main[main["test_set"] == scr]
    d = d[d["n"] == d.groupby("model")["n"].transform("max")]  # each model's largest n
    va = readout.by_seed(readout.rows(d, a, scr, metric))
    vb = readout.by_seed(readout.rows(d, b, scr, metric))
    if not set(va) & set(vb):
        return None
    return stats.paired_difference(va, vb)


def _specificity_difference(main: pd.DataFrame, a: str, b: str) -> Interval | None:
    """``a`` MINUS ``b`` of arrangement specificity at each model's largest n, paired by seed:
    kept-if-intact-correct on the displaced set minus on the scrambled set with the smallest
    grid (the scoreboard's C3 measure)."""
    scr = readout.smallest_scramble(main["test_set"].unique())
    if scr is None:
        return None
    d = main[main["metric"] == KEPT]
    d = d[d["n"] == d.groupby("model")["n"].transform("max")]
    per = []
    for m in (a, b):
        disp = readout.by_seed(readout.rows(d, m, DISPLACED.name, KEPT))
        sc = readout.by_seed(readout.rows(d, m, scr, KEPT))
        per.append({s: disp[s] - sc[s] for s in set(disp) & set(sc)})
    if not set(per[0]) & set(per[1]):
        return None
    return stats.paired_difference(per[0], per[1], bounds=(-2.0, 2.0))


FAILED_GAP = 0.10  # our choice: a step this far below the CapsNet's clean accuracy did not train


def failed_steps(main: pd.DataFrame) -> dict[str, float]:
    """Steps whose mean clean accuracy at their largest n is more than :data:`FAILED_GAP` below
    the CapsNet's (model -> that accuracy): their rows measure a failed optimisation, not a
    component."""
    largest = main[main["n"] == main.groupby("model")["n"].transform("max")]
    clean = largest[(largest["test_set"] == CLEAN.name) & (largest["metric"] == "accuracy")
                    & largest["factor_value"].isna()].groupby("model")["value"].mean()
    if REFERENCE not in clean:
        return {}
    return {m: float(v) for m, v in clean.items() if v < clean[REFERENCE] - FAILED_GAP}


def ladder_values(main: pd.DataFrame) -> pd.DataFrame:
    """One row per (step present, comparison, quantity): model, neighbour, component, versus
    (the other model), quantity (``affnist_matched``, ``affnist_same_n`` (at each model's largest
    n, not matched), ``specificity``, ``part_score``,
    ``overlap_top2`` when the run has the overlapping-digits set), c_star
    (NaN when not matched), estimate, low, high (fractions; NaN when not measured), n (seeds)."""
    present = set(main["model"])
    rows = []
    for step in LADDER:
        if step.model not in present:
            continue
        versus = [v for v in (step.neighbour, REFERENCE) if v is not None and v != step.model
                  and v in present]
        for vs in dict.fromkeys(versus):
            c, iv = matched_difference(main, step.model, vs)
            rows.append(_row(step, vs, "affnist_matched", c, iv))
            rows.append(_row(step, vs, "affnist_same_n", None, _scramble_difference(
                main, step.model, vs, "accuracy", AFFNIST_STYLE.name)))
        if REFERENCE in present and step.model != REFERENCE:
            rows.append(_row(step, REFERENCE, "specificity", None,
                             _specificity_difference(main, step.model, REFERENCE)))
            rows.append(_row(step, REFERENCE, "part_score", None,
                             _scramble_difference(main, step.model, REFERENCE, PART_SCORE)))
            if OVERLAP.name in set(main["test_set"]):
                rows.append(_row(step, REFERENCE, "overlap_top2", None, _scramble_difference(
                    main, step.model, REFERENCE, "top2_accuracy", OVERLAP.name)))
    out = pd.DataFrame(rows, columns=["model", "neighbour", "component", "versus", "quantity",
                                      "c_star", "estimate", "low", "high", "n"])
    failed = failed_steps(main)
    out["model_failed"] = out["model"].isin(failed)  # the step itself did not train
    out["failed"] = out["model_failed"] | out["versus"].isin(failed)  # either model of the pair
    return out


def _row(step, versus: str, quantity: str, c: float | None, iv: Interval | None) -> dict:
    nan = float("nan")
    return {"model": step.model, "neighbour": step.neighbour or "", "component": step.component,
            "versus": versus, "quantity": quantity, "c_star": nan if c is None else c,
            "estimate": nan if iv is None else iv.estimate, "low": nan if iv is None else iv.low,
            "high": nan if iv is None else iv.high, "n": 0 if iv is None else iv.n}


@dataclass
class AblationTable:
    table: Table
    values: pd.DataFrame  # ladder_values(main)


def _cell(values: pd.DataFrame, model: str, versus: str | None, quantity: str, scale: float,
          digits: int) -> tuple[str, str]:
    """(c* text, "estimate [low, high]") of one comparison; em dashes when absent."""
    if versus is None:
        return "—", "—"
    r = values[(values["model"] == model) & (values["versus"] == versus)
               & (values["quantity"] == quantity)]
    if r.empty:
        return "—", "—"
    r = r.iloc[0]
    c = "—" if not np.isfinite(r["c_star"]) else readout.fixed(100 * r["c_star"], 2)
    if not np.isfinite(r["estimate"]):
        return c, NOT_MEASURED if quantity != "affnist_matched" else "ranges do not overlap"
    iv = Interval(r["estimate"], r["low"], r["high"], int(r["n"]), "")
    return c, readout.iv(iv, scale, digits, signed=True)


def ablation_table(main: pd.DataFrame) -> AblationTable | None:
    """The ladder table of a run's main setup, or None without a ladder step beyond the bases."""
    present = set(main["model"])
    steps = [s for s in LADDER if s.model in present]
    if not any(s.model not in _BASES for s in steps):
        return None
    values = ladder_values(main)
    failed = failed_steps(main)
    overlap = OVERLAP.name in set(main["test_set"])
    largest = main[main["n"] == main.groupby("model")["n"].transform("max")]
    rows = []
    for s in steps:
        clean = readout.by_seed(readout.rows(largest, s.model, CLEAN.name, "accuracy"))
        nb = s.neighbour if s.neighbour in present else None
        c_nb, d_nb = _cell(values, s.model, nb, "affnist_matched", 100, 2)
        ref = REFERENCE if s.model != REFERENCE else None
        c_ref, d_ref = _cell(values, s.model, ref, "affnist_matched", 100, 2)
        _, n_nb = _cell(values, s.model, nb, "affnist_same_n", 100, 2)
        _, n_ref = _cell(values, s.model, ref, "affnist_same_n", 100, 2)
        _, kept = _cell(values, s.model, ref, "specificity", 100, 2)
        _, part = _cell(values, s.model, ref, "part_score", 1, 3)
        change = "— (top of its ladder)" if s.neighbour is None else f"{s.change} (vs {s.neighbour})"
        name = s.model + (" (failed to train)" if s.model in failed else "")
        state = " / ".join(s.state)
        rows.append([name, change, state,
                     readout.iv(stats.mean_interval(clean), 100) if clean else "—",
                     c_nb, d_nb, c_ref, d_ref, n_nb, n_ref, kept, part])
        if overlap:
            rows[-1].append(_cell(values, s.model, ref, "overlap_top2", 100, 2)[1])
    scr = readout.smallest_scramble(main["test_set"].unique()) or "no scrambled set"
    notes = [
        f"Each row differs from the model named in brackets in that one component "
        f"(bench/models/ladder.py). {MINUS} neighbour: the step {MINUS} that model, i.e. the effect "
        f"of the change written; {MINUS} capsnet: the step {MINUS} the CapsNet. Differences are "
        f"paired by seed (same training subset and order), mean over seeds [95% paired Student-t "
        f"interval], in percentage points (pp).",
        "c*: for each comparison, the highest clean accuracy both models reach on every seed; "
        "each seed's affNIST-style accuracy is read at c* along its curve of increasing n "
        "(linear interpolation between sizes). 'ranges do not overlap': no such c*.",
        "At largest n: the same difference of affNIST-style accuracy at each model's largest "
        "n, not matched: it mixes the component's effect on robustness with its effect on "
        "clean accuracy (the third column), so read it beside that column.",
        f"Each step keeps the changes of the steps it descends from ('vs' names its neighbour; "
        f"the CapsNet's ladder forks after capsnet-no-routing; State: routing / W / squash / "
        f"loss / reconstruction / pooling), so '{MINUS} capsnet' compares models that differ "
        f"in every change down that branch. '(failed to train)': mean clean accuracy at the "
        f"largest n more than {100 * FAILED_GAP:g} points below capsnet's (our rule); its "
        f"differences measure a failed optimisation, not a component.",
        f"At each model's largest n: arrangement specificity = kept if intact correct on the "
        f"displaced set minus on {scr} (the scoreboard's C3 measure; positive: the answer "
        f"depends more on the parts' arrangement than on their separation); distortion AUROC "
        f"= the label-free AUROC of telling intact from {scr} digits ({PART_SCORE}), which "
        f"flags displaced digits too (a read-out of distortion, not of arrangement). "
        + (f"Overlap top-2 {MINUS} capsnet: both of two overlapping digits among the two "
           "highest class scores, at each model's largest n (models trained on single digits)."
           if overlap else f"Overlapping digits (Gu et al.'s second read-out): {NOT_MEASURED} "
           "in this run (made before the suite had the set)."),
    ]
    table = Table(
        "ablation",
        "The component ladder on the CapsNet's 9x9 trunk (Gu, Tresp & Hu 2021's five "
        "components, and global average pooling): each step's effect on affNIST-style accuracy "
        "at matched clean accuracy, and on the scrambled read-outs.",
        ["Step", "Changed (vs)", "State", "Clean at largest n (%)", "c* vs neighbour (%)",
         f"affNIST-style {MINUS} neighbour (pp)", "c* vs capsnet (%)",
         f"affNIST-style {MINUS} capsnet (pp)",
         f"At largest n: {MINUS} neighbour (pp)", f"At largest n: {MINUS} capsnet (pp)",
         f"Arrangement specificity {MINUS} capsnet (pp)", f"Distortion AUROC {MINUS} capsnet",
         *([f"Overlap top-2 {MINUS} capsnet (pp)"] if overlap else [])],
        rows, "lllrrrrrrrrr" + ("r" if overlap else ""), notes, wide=True)
    return AblationTable(table, values)
