"""The report's tables, one function per table, each from the run's frames to a :class:`Table`.

Every interval comes from :mod:`bench.stats` and every per-seed read-out from
:mod:`bench.report.readout`; a function returns ``None`` when its input is absent.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.config import PAPER_MNIST_ERRORS, TrainConfig
from bench.data.testsets import (
    AFFNIST_REAL,
    AFFNIST_STYLE,
    CLEAN,
    display_name,
    find_set_kind,
    order_set_names,
    sets_where,
)
from bench.errors import BenchError
from bench.flops import param_counts
from bench.report import adversarial as adversarial_report
from bench.report import figures, readout
from bench.report.read import MAIN_SETUP, MNIST_SETUP, REFERENCE, _flag
from bench.report.readout import BOUNDED, CLIPPED, MINUS, PART_SCORE, Needed
from bench.report.table import Table, _budget, _num, _width
from bench.report.text import NOTE_DIFF, NOTE_MEAN
from bench.runtime import code_commit
from bench.stats import Interval

# --------------------------------------------------------------------------------------------
# Tables


def _factor(test_set: str) -> str:
    """A sweep's factor ("rotation", ...), or the name itself for a set of no known factor."""
    kind = find_set_kind(test_set)
    return kind.factor if kind is not None and kind.factor else test_set


def _largest_n_label(d: pd.DataFrame) -> str:
    """"n = 3,000", or each model's largest n when they differ."""
    top = d.groupby("model")["n"].max()
    if top.nunique() <= 1:
        return f"n = {int(top.max()):,}" if len(top) else "n = —"
    return "n = " + ", ".join(f"{int(n):,} ({m})" for m, n in
                              ((m, top[m]) for m in figures.model_order(top.index)))


def _headline_tables(main: pd.DataFrame, models: list[str]) -> tuple[Table | None, Table | None, str]:
    """Accuracy and ECE at each model's largest n, and the paired difference to the reference."""
    d = figures.largest_n(main[main["factor_value"].isna()])
    sets = sets_where(d["test_set"].unique(), lambda k: k.calibrated)
    label = _largest_n_label(d)
    if not sets:
        return None, None, label
    header = ["Model", "n", "Seeds"] + [f"{display_name(t)} acc. (%)" for t in sets]
    header += [f"{display_name(t)} ECE (%)" for t in sets]
    # ECE after temperature scaling where the run has it: raw capsule lengths and softmax
    # maxima are not comparable confidences (the calibration table has both).
    ece_metric = "ece_calibrated" if (d["metric"] == "ece_calibrated").any() else "ece"
    ece_what = ("after temperature scaling" if ece_metric == "ece_calibrated"
                else "of the raw max score")
    rows = []
    for m in models:
        sub = d[d["model"] == m]
        if sub.empty:
            continue
        n = int(sub["n"].max())
        row = [m, readout.integer(n), str(sub["seed"].nunique())]
        for metric in ("accuracy", ece_metric):
            for t in sets:
                row.append(readout.iv(stats.mean_interval(
                    readout.by_seed(readout.rows(sub, m, t, metric))), 100))
        rows.append(row)
    head = Table("headline", f"Accuracy and calibration (ECE, 15 bins, {ece_what}) at the largest "
                 f"n ({label}), mean over seeds with its 95% interval.", header, rows,
                 "lrr" + "r" * 2 * len(sets), [NOTE_MEAN])
    diff = None
    if REFERENCE in models:
        rows = []
        for m in models:
            if m == REFERENCE:
                continue
            shared = set(readout.rows(main, m, metric="accuracy")["n"]) & set(
                readout.rows(main, REFERENCE, metric="accuracy")["n"])
            if not shared:
                continue
            n = max(shared)
            ivs = [stats.paired_difference(
                       readout.by_seed(readout.rows(main, m, t, "accuracy", n)),
                       readout.by_seed(readout.rows(main, REFERENCE, t, "accuracy", n)))
                   for t in sets]
            rows.append([m, readout.integer(n), str(max(iv.n for iv in ivs))]
                        + [readout.iv(iv, 100, signed=True) for iv in ivs])
        if rows:
            diff = Table("headline_diff", f"Accuracy difference to {REFERENCE} at the largest n "
                         f"({label}), paired by seed, in percentage points.",
                         ["Model", "n", "Seed pairs"]
                         + [f"{display_name(t)} acc. {MINUS} {REFERENCE} (pp)" for t in sets],
                         rows, "lrr" + "r" * len(sets), [NOTE_DIFF])
    return head, diff, label


def _matched_table(main: pd.DataFrame, models: list[str]) -> Table | None:
    """Each model's affNIST-style accuracy at a clean accuracy c* every model reaches."""
    rows = []
    for other in (AFFNIST_STYLE.name, AFFNIST_REAL.name):
        curves = {m: readout.curves(main, m, other) for m in models}
        curves = {m: c for m, c in curves.items() if c}
        c = readout.c_star(curves.values())
        if c is None:
            continue
        matched = {m: readout.matched(cv, c) for m, cv in curves.items()}
        for m in curves:
            iv = stats.mean_interval(matched[m])
            diff = "—"
            if m != REFERENCE and REFERENCE in matched:
                diff = readout.iv(stats.paired_difference(matched[m], matched[REFERENCE]), 100,
                                  signed=True)
            rows.append([m, display_name(other), readout.fixed(100 * c, 2), str(iv.n),
                         readout.iv(iv, 100), diff])
    if not rows:
        return None
    return Table("matched", "Accuracy under affine transforms at matched clean accuracy "
                 "(Sabour et al. 2017, Sec. 5.2, compare 99.23% vs 99.22% clean): c* is the "
                 "highest clean accuracy that every model reaches on every seed; each seed's "
                 "accuracy is read at c* along its curve of increasing n (linear interpolation "
                 "between sizes).",
                 ["Model", "Test set", "c* (clean, %)", "Seeds", "Acc. at c* (%)",
                  f"{MINUS} {REFERENCE} (pp)"], rows, "llrrrr", [NOTE_MEAN, NOTE_DIFF])


PART_COLUMNS = (  # (metric, header, scale, digits) of the part-arrangement table
    ("intact_correct", "Intact correct (%)", 100, 2),
    ("kept_given_intact_correct", "Kept if intact correct (%)", 100, 2),
    ("flip_rate", "Flip rate (%)", 100, 2),
    (PART_SCORE, "AUROC density", 1, 3),
    ("auroc_confidence", "AUROC own score", 1, 3),
    ("auroc_max_logit", "AUROC max logit", 1, 3),
    ("auroc_energy", "AUROC energy", 1, 3),
    ("auroc_recon", "AUROC recon.", 1, 3),
)


def _scrambled_table(main: pd.DataFrame, models: list[str]) -> Table | None:
    sets = sets_where(main["test_set"].unique(), lambda k: k.scrambled)
    if not sets:
        return None
    d = figures.largest_n(main[main["test_set"].isin(sets)])
    cols = [c for c in PART_COLUMNS if (d["metric"] == c[0]).any()]
    header = ["Model", "Test set"] + [c[1] for c in cols]
    rows = []
    for m in models:
        for t in sets:
            vals = [readout.by_seed(readout.rows(d, m, t, c[0])) for c in cols]
            if not any(vals):
                continue
            rows.append([m, t] + [readout.iv(stats.mean_interval(v), scale, digits) if v else "—"
                                  for v, (_, _, scale, digits) in zip(vals, cols, strict=True)])
    return Table("scrambled", f"Scrambled and displaced parts at the largest n "
                 f"({_largest_n_label(d)}). Intact correct: the intact digits classified "
                 "correctly; kept if intact correct: of those, the share still given their class "
                 "when scrambled or displaced; flip rate: digits whose predicted class changes. "
                 "AUROC of telling intact (positive) from perturbed digits: density = minus the "
                 "class-conditional Mahalanobis distance of the model's representation (every "
                 "model; the C3 score); own score = the max score (capsule length, softmax "
                 "maximum or a head's class activation, a ranking within a model only); max "
                 "logit and energy (logsumexp) for softmax models; recon. = minus the "
                 "reconstruction error (CapsNets). Raw confidences are not compared across "
                 "families. The displaced set (parts moved apart, arrangement kept) is the "
                 "control: an AUROC as high there as on a scrambled set means the score "
                 "detects distortion, not specifically part arrangement; kept if intact correct "
                 "and flip rate are the behavioural read-outs.", header, rows,
                 "ll" + "r" * len(cols), [NOTE_MEAN])


def _calibration_table(main: pd.DataFrame, models: list[str]) -> Table | None:
    """Temperature and ECE before and after temperature scaling, at the largest n."""
    d = main[main["metric"].isin(["ece", "ece_calibrated", "temperature"])
             & main["factor_value"].isna()]
    if not (d["metric"] == "ece_calibrated").any():
        return None
    d = figures.largest_n(d)
    sets = sets_where(d["test_set"].unique(), lambda k: k.calibrated)
    rows = []
    for m in models:
        if m not in set(d["model"]):
            continue
        t = stats.mean_interval(readout.by_seed(readout.rows(d, m, CLEAN.name, "temperature")),
                                bounds=(0.0, math.inf))
        row = [m, readout.iv(t, digits=3)]
        for ts in sets:
            row += [readout.iv(stats.mean_interval(readout.by_seed(readout.rows(d, m, ts, k))), 100)
                    for k in ("ece", "ece_calibrated")]
        rows.append(row)
    header = ["Model", "Temperature T"]
    for ts in sets:
        header += [f"{display_name(ts)} ECE raw (%)", f"{display_name(ts)} ECE after T (%)"]
    return Table("calibration", "Calibration at the largest n "
                 f"({_largest_n_label(d)}): ECE (15 bins) of the raw max score (capsule length "
                 "for the CapsNet, softmax maximum for the ConvNets) and after temperature "
                 "scaling (max of softmax(logits / T); the CapsNet's 10 lengths go through the "
                 "softmax as logits), with T fitted by minimising the NLL on the cell's held-out "
                 "validation images (never the test set). Capsule lengths are not "
                 "probabilities: compare families after T only. T is fitted on clean "
                 "validation images and does not carry over to the shifted "
                 f"({AFFNIST_STYLE.display}) set, where it can raise the ECE.", header, rows,
                 "lr" + "r" * 2 * len(sets), [NOTE_MEAN])


def _sweep_images(manifest: dict | None, sets: Sequence[str]) -> str:
    """The images of each sweep set from the manifest's ``data_checksums``: "each sweep's 250
    images (50 digits × 5 points)", or per factor when the sets differ; "" when not recorded."""
    recorded = (manifest or {}).get("data_checksums", {}).get(MAIN_SETUP) or {}
    sizes: dict[str, tuple[int, int]] = {}  # set -> (images, grid points)
    for t in sets:
        entry = recorded.get(t) or {}
        count, spec = int(entry.get("count", 0)), entry.get("spec") or {}
        if not count:
            return ""
        sizes[t] = (count, len(spec.get("grid") or []))

    def split(count: int, points: int) -> str:
        return f" ({count // points:,} digits × {points} points)" if points else ""

    if len(set(sizes.values())) == 1:
        count, points = next(iter(sizes.values()))
        return f"each sweep's {count:,} images{split(count, points)}"
    return "each sweep's images: " + ", ".join(f"{_factor(t)} {c:,}{split(c, p)}"
                                               for t, (c, p) in sizes.items())


def _probe_cell(r2: dict[int, float]) -> str:
    """The mean R² with its interval, the median over seeds, and the seeds whose held-out R² is
    below 0."""
    text = readout.iv(stats.mean_interval(r2, bounds=(-math.inf, 1.0)), digits=3)
    if r2:
        text += f"; median {readout.fixed(float(np.median(list(r2.values()))), 3)}"
    failed = sum(v < 0 for v in r2.values())
    return text + (f" (failed fits: {failed} of {len(r2)})" if failed else "")


def _probe_table(main: pd.DataFrame, models: list[str], manifest: dict | None = None) -> Table | None:
    d = main[main["metric"] == "probe_r2"]
    if d.empty:
        return None
    d = figures.largest_n(d)
    sets = order_set_names(d["test_set"])
    header = ["Model"] + [f"{_factor(t)} R²" for t in sets]
    rows = [[m] + [_probe_cell(readout.by_seed(d[(d["model"] == m) & (d["test_set"] == t)]))
                   for t in sets]
            for m in models if m in set(d["model"])]
    images = _sweep_images(manifest, sets)
    return Table("probe", "Linear decodability of the transform: R² of a ridge read-out of "
                 "each transformation's magnitude from the model's representation (CapsNet: the "
                 "whole 10 x 16 DigitCaps output; ConvNets: penultimate features; backbone heads: "
                 "pooled or flattened features, or a routing head's winning pose), predicted "
                 "for digits held out of the fit (5 folds by source digit) with the ridge "
                 "penalty chosen by an inner cross-validation over digits, so that features "
                 "without information score about 0 whatever their dimension; at the largest n "
                 f"({_largest_n_label(d)})" + (f", on {images}" if images else "") + ". A "
                 "held-out R² below 0 predicts worse than the mean magnitude; far below 0 it is "
                 "a failed fit, and a few such seeds pull a mean far down.",
                 header, rows, "l" + "r" * len(sets),
                 [NOTE_MEAN.replace("([0, 100]% for accuracies)", "(R² ≤ 1)"),
                  "Failed fits: k of S: k of the cell's S seeds have a held-out R² below 0 "
                  "(no mark: none). The median over seeds is printed beside the mean: a few "
                  "failed fits pull a mean, not a median.",
                  "Standardisation (our choice): features non-zero on fewer than 5 training "
                  "rows are left out and every feature's SD is floored at 0.1 times the median "
                  "SD, so rarely active ReLU units cannot blow up on held-out digits."])


def _sweep_point_text(acc: dict[int, float], digits: int | None) -> str:
    """A sweep point's mean accuracy over seeds with the seeds' t-interval, widened where
    Wilson's score interval for the same mean on the point's ``digits`` is wider (our choice:
    the seeds share the point's few digits, so an interval over seeds alone can have zero width
    from 50 digits)."""
    iv = stats.mean_interval(acc)
    if digits:
        w = stats.wilson_interval(iv.estimate * digits, digits)
        lo = w.low if not np.isfinite(iv.low) else min(iv.low, w.low)
        hi = w.high if not np.isfinite(iv.high) else max(iv.high, w.high)
        iv = dataclasses.replace(iv, low=lo, high=hi, clipped=iv.clipped and (
            lo == iv.low or hi == iv.high))
    return readout.iv(iv, 100)


def _sweeps_table(main: pd.DataFrame, models: list[str],
                  manifest: dict | None = None) -> Table | None:
    """Per sweep point: the percentage of digits cropped and each model's accuracy on the
    digits that fit, at its largest n."""
    sets = sets_where(main["test_set"].unique(), lambda k: k.family == "sweep")
    d = main[main["test_set"].isin(sets) & main["factor_value"].notna()]
    if d.empty or not (d["metric"] == "accuracy_fits").any():
        return None
    d = figures.largest_n(d)
    models = [m for m in models if (d["model"] == m).any()]
    data = ((((manifest or {}).get("profile") or {}).get("config") or {}).get("data") or {})
    sweep_n = int(data["sweep_n"]) if data.get("sweep_n") else None
    rows = []
    for t in sets:
        sub = d[d["test_set"] == t]
        for v in sorted(set(sub["factor_value"])):
            at = sub[sub["factor_value"] == v]
            crop = at.loc[at["metric"] == "cropped_fraction", "value"]
            row = [_factor(t), f"{v:g}", _num(100 * crop.mean()) if len(crop) else "—"]
            digits = (round((1.0 - float(crop.mean())) * sweep_n)
                      if sweep_n and len(crop) else None)
            for m in models:
                acc = readout.by_seed(at[(at["model"] == m) & (at["metric"] == "accuracy_fits")]
                                      .dropna(subset=["value"]))
                row.append(_sweep_point_text(acc, digits) if acc else "—")
            rows.append(row)
    return Table("sweeps", "Per-factor sweeps at the largest n: the percentage of digits whose "
                 "ink leaves the 40x40 canvas (cropped; the same digits for every model), and "
                 "each model's accuracy on the digits that fit (cropped digits excluded).",
                 ["Factor", "Value", "Cropped (%)"] + [f"{m} acc. (%)" for m in models], rows,
                 "lrr" + "r" * len(models),
                 [NOTE_MEAN, "Sweep points: the interval over seeds is widened to Wilson's score "
                  "interval (Wilson 1927) for the seeds' mean accuracy on the point's digits "
                  "that fit, where that is wider: every seed sees the same few digits, so the "
                  "seeds alone can give a zero-width interval (where the run's manifest does "
                  "not give the digits per point, the seeds' interval alone).",
                  "—: every digit at that point is cropped, or no rows."])


def _ratio_text(nd: Needed, ref: Needed) -> str:
    common = sorted(set(nd.values) & set(ref.values))
    if not common:
        return "—"
    num = {s: nd.values[s] for s in common}
    den = {s: ref.values[s] for s in common}
    dropped = sum(num[s] is None or den[s] is None for s in common)
    iv = stats.ratio_interval(num, den)
    if iv.n == 0:
        return f"not reached ({dropped} of {len(common)} seeds)"
    if iv.n == 1:  # our choice: no ratio printed from a single seed
        return (f"no ratio (one seed: {dropped} of {len(common)} dropped, not reached)"
                if dropped else "no ratio (one seed)")
    used = [s for s in common if num[s] is not None and den[s] is not None]
    if all(s in nd.at_first and s in ref.at_first for s in used):
        return "no ratio (both reached it at the smallest n)"
    bounded = any(s in nd.at_first or s in ref.at_first for s in used)
    text = readout.iv(iv, 1, 2, unit="×") + (BOUNDED if bounded else "")
    if dropped:
        text += f" ({dropped} of {len(common)} seeds dropped: not reached)"
    return text


def budget_grows_with_n(cells: pd.DataFrame | None) -> bool:
    """Whether the run's cells (``cells.csv``) of different training-set sizes trained for
    different numbers of steps (a budget by the epochs rule that min/max steps did not clamp)."""
    if cells is None or cells.empty or not {"n", "steps"} <= set(cells.columns):
        return False
    return cells.groupby("n")["steps"].max().nunique() > 1


def _data_efficiency_table(main: pd.DataFrame, models: list[str],
                           targets: Sequence[float], budget_grows: bool = False) -> Table | None:
    """Training images needed per clean-accuracy target; ``budget_grows``: the run's cells of a
    larger n trained for more steps (:func:`budget_grows_with_n`), which a note then says."""
    d = readout.rows(main, test_set=CLEAN.name, metric="accuracy")
    if d.empty or not targets:  # no target: no table (the profile names none)
        return None
    need = {m: [readout.needed(main, m, t) for t in targets] for m in models}
    ref = REFERENCE if REFERENCE in need else None
    header = ["Model"] + [f"n for {100 * t:g}%" for t in targets]
    if ref:
        header += [f"ratio to {ref} ({100 * t:g}%)" for t in targets]
    rows = []
    for m in models:
        row = [m] + [readout.needed_text(b) for b in need[m]]
        if ref:
            row += (["reference"] * len(targets) if m == ref else
                    [_ratio_text(b, r) for b, r in zip(need[m], need[ref], strict=True)])
        rows.append(row)
    notes = ["Training images needed to reach each clean accuracy: per seed, the first size "
             "whose accuracy reaches the target, interpolated linearly in log n from the size "
             "before; geometric mean over seeds [95% Student-t interval on log n, "
             f"exponentiated]; not reached (k of S seeds): k seeds never reached it by the "
             f"largest n; {BOUNDED} or ≤: reached at the smallest n, where the size is only an "
             f"upper bound; {CLIPPED}: the interval clipped to the sizes trained (no size "
             "outside them was measured). The intervals cover seed-to-seed variation only: the "
             "error of interpolating between the sizes trained is not in them."]
    if {"capsnet", "convnet-maxpool"} <= set(models):  # the two models of claim C2
        notes.append("Claim C2 uses the highest of the profile's targets that both models reach "
                     "on every seed: a fixed rule, so the target it reports depends on this run's "
                     "results.")
    if budget_grows:
        notes.append("In this run a larger n also trained for more steps (cells.csv): these "
                     "sizes mix training-set size with training length.")
    if ref:
        notes.append(f"Ratios: model ÷ {ref}, per seed on the seeds both share, geometric mean "
                     "[95% paired Student-t interval on the log ratios, exponentiated]; above 1: "
                     f"the model needs more images than {ref}.")
    return Table("data_efficiency", "Data efficiency on clean test digits.", header, rows,
                 "l" + "r" * (len(header) - 1), notes)


def _reading(diff: Interval) -> str:
    """Where the decoder's error lies against the class-mean baseline, as its interval says."""
    if not (np.isfinite(diff.low) and np.isfinite(diff.high)):
        return "no interval (one seed): no reading"
    if diff.high < 0:
        return ("better than (lower error than) the class-mean image: the reconstructions "
                "carry more than the class")
    if diff.low > 0:
        return ("worse than (higher error than) the class-mean image: no evidence that the "
                "reconstructions carry pose")
    return ("not distinguishable from the class-mean image (the interval contains 0): no "
            "evidence that the reconstructions carry pose")


def _recon_table(main: pd.DataFrame, models: list[str]) -> tuple[Table | None, str]:
    d = main[(main["test_set"] == CLEAN.name)
             & main["metric"].isin(["recon_mse", "recon_mse_class_mean"])]
    if d.empty:
        return None, ""
    d = figures.largest_n(d)
    rows, sentence = [], ""
    for m in models:
        own = readout.by_seed(readout.rows(d, m, metric="recon_mse"))
        base = readout.by_seed(readout.rows(d, m, metric="recon_mse_class_mean"))
        if not own:
            continue
        a, b = stats.mean_interval(own), stats.mean_interval(base)
        diff = stats.paired_difference(own, base)
        n = int(d[d["model"] == m]["n"].max())
        rows.append([m, readout.integer(n), str(a.n), readout.iv(a, digits=4),
                     readout.iv(b, digits=4), readout.iv(diff, digits=4, signed=True),
                     _reading(diff)])
        if m == REFERENCE:
            sentence = (f"{m} reconstructs clean test digits (n = {n:,}) with a mean squared "
                        f"error per pixel of {readout.iv(a, digits=4)}, against "
                        f"{readout.iv(b, digits=4)} for "
                        f"the class-mean training image of the predicted class: "
                        f"{_reading(diff)}.")
    if not rows:
        return None, ""
    return Table("recon", "Reconstructions: the decoder's mean squared error per pixel on clean "
                 "test digits at the largest n, beside that of the class-mean training image "
                 "(what a decoder that learned nothing but the class would reach).",
                 ["Model", "n", "Seeds", "Recon. MSE", "Class-mean MSE",
                  f"Difference (recon. {MINUS} class mean)", "Reading"], rows, "lrrrrrl",
                 [NOTE_MEAN.replace("([0, 100]% for accuracies)", "([0, 1])"),
                  "Difference: per seed, paired Student t; the reading follows its interval."]
                 ), sentence


def _mnist_table(df: pd.DataFrame) -> Table | None:
    d = df[(df["setup"] == MNIST_SETUP) & (df["test_set"] == CLEAN.name) & (df["metric"] == "error")]
    if d.empty:
        return None
    d = figures.largest_n(d)
    header = ["Model", "n", "Seeds", "Our error (%)", "Paper error (%)", "Difference (pp)"]
    rows = []
    for m in figures.model_order(d["model"]):
        sub = d[d["model"] == m]
        iv = stats.mean_interval(readout.by_seed(sub))
        paper = PAPER_MNIST_ERRORS.get(m, math.nan)
        rows.append([m, readout.integer(sub["n"].max()), str(iv.n), readout.iv(iv, 100),
                     _num(paper, 2), _num(100 * iv.estimate - paper, 2)])
    return Table("mnist", "The paper's MNIST table (Sabour et al. 2017, Table 1): test error "
                 "on 28x28 MNIST beside the published numbers (Efficient-CapsNet: Mazzia et al. "
                 "2021, mean single-model accuracy 99.74 %); difference: our mean minus the "
                 "published one.", header, rows, "lrrrrr", [NOTE_MEAN])


def _convergence(cells: pd.DataFrame | None, train_cfg: Mapping[str, Any] | None = None,
                 ) -> tuple[list[str], Table | None, set[tuple[str, str, int, int]]]:
    """The Run section's convergence line, the table of cells that did not converge, and their
    keys (setup, model, n, seed). ``train_cfg``: the run's ``[train]`` values (its convergence
    thresholds; TrainConfig's defaults when absent)."""
    defaults = TrainConfig()
    train_cfg = train_cfg or {}
    gain = 100 * float(train_cfg.get("converged_gain", defaults.converged_gain))
    alpha = 100 * float(train_cfg.get("converged_alpha", defaults.converged_alpha))
    if cells is None:
        return ["- convergence not recorded (no `cells.csv`)"], None, set()
    flags = [_flag(f) for f in cells["converged"]]
    known = [f for f in flags if f is not None]
    if not known:
        return ["- convergence not recorded (`cells.csv` has no `converged` values)"], None, set()
    familywise = "val_improvement_p" in cells and cells["val_improvement_p"].notna().any()
    if familywise:
        alone = [_flag(f) for f in cells["converged_cell"]]
        line = (f"- convergence (no detectable improvement, which is not proof of a plateau): "
                f"{sum(a is True for a in alone)} of {len(alone)} cells by the per-cell test "
                f"(`converged_cell`: validation gain over the last quarter of the budget below "
                f"{gain:g} points or below two paired standard errors); {sum(known)} of "
                f"{len(flags)} across the run (`converged`: each cell's one-sided exact sign test "
                f"on its validation images, Holm's correction over the run's cells at family-wise "
                f"error {alpha:g} %, still improving when rejected and the gain is at least "
                f"{gain:g} points; this guards against flagging converged cells by chance, not "
                "against missing small improvements)")
        line += _pooled_gain(cells)
    else:
        line = (f"- convergence: {sum(known)} of {len(flags)} cells converged (`cells.csv`: "
                f"validation accuracy gained over the last quarter of the budget below {gain:g} "
                "points or below two paired standard errors: no evidence of further improvement)")
    if len(known) < len(flags):
        line += f"; {len(flags) - len(known)} not recorded"
    bad = cells[[f is False for f in flags]].sort_values(["setup", "model", "n", "seed"])
    keys = {(str(r.setup), str(r.model), int(r.n), int(r.seed)) for r in bad.itertuples()}
    if bad.empty:
        return [line], None, keys
    order = {m: i for i, m in enumerate(figures.model_order(bad["model"]))}
    bad = bad.assign(_o=bad["model"].map(order)).sort_values(["setup", "_o", "n", "seed"])
    rows = [[str(r.setup), str(r.model), readout.integer(r.n), str(int(r.seed)),
             readout.integer(r.steps), _num(100 * r.val_improvement, 2)] for r in bad.itertuples()]
    header = ["Setup", "Model", "n", "Seed", "Steps", "Validation gain, last quarter (pp)"]
    if familywise:
        caption = (f"Cells that did not converge: their validation accuracy gained at least "
                   f"{gain:g} points over the last quarter of the budget and Holm's procedure over "
                   f"the run's cells rejects 'no improvement' (family-wise error {alpha:g} %; hollow "
                   "markers in the data-efficiency figures). p: the cell's one-sided exact sign test.")
        header.append("p (sign test)")
        for row, r in zip(rows, bad.itertuples(), strict=True):
            row.append(f"{r.val_improvement_p:.2g}")
    else:
        caption = (f"Cells that did not converge: their validation accuracy gained at least "
                   f"{gain:g} points and more than two paired standard errors over the last quarter of the "
                   "budget (hollow markers in the data-efficiency figures).")
    table = Table("convergence", caption, header, rows, "llrrrr" + ("r" if familywise else ""))
    return [line], table, keys


def _pooled_gain(cells: pd.DataFrame) -> str:
    """The whole run's last-quarter validation evidence: discordant images summed over the cells
    and the mean gain per cell with its t-interval over cells (a run that is still improving as a
    whole shows it here even when no single cell is significant)."""
    counted = cells.dropna(subset=["val_turned_right", "val_turned_wrong", "val_improvement"])
    if len(counted) < 2:
        return ""
    right, wrong = int(counted["val_turned_right"].sum()), int(counted["val_turned_wrong"].sum())
    iv = stats.mean_interval(100 * counted["val_improvement"].to_numpy(float), bounds=None)
    return (f". Pooled over the {len(counted)} cells: {right:,} validation images turned right "
            f"and {wrong:,} wrong over the last quarter (sign test p = "
            f"{stats.sign_test_p(right, wrong):.2g}); mean gain per cell "
            f"{iv.estimate:+.2f} [{iv.low:.2f}, {iv.high:.2f}] points (95 % t-interval over cells)")


def _decoder_params(model: str, input_size: Any, width: Any) -> int | None:
    """The parameters of ``model``'s reconstruction decoder (0 without one), counted on the
    ``meta`` device (:func:`bench.flops.param_counts`); None for an unknown model or size."""
    try:
        size, w = int(input_size), float(width)
        if not math.isfinite(w):
            return None
        params, without = param_counts(str(model), size, w)
    except (BenchError, TypeError, ValueError):
        return None
    return params - without


def _throughput_tables(tp: pd.DataFrame) -> list[Table]:
    out = []
    m = tp[tp["kind"] == "model"]
    if not m.empty:
        header = ["Model", "Device", "Input", "Batch", "Params", "Params w/o decoder",
                  "MFLOPs/img", "Train img/s", "Infer img/s", "Latency b=1 (ms)",
                  "Peak mem (MB)"]
        infer_mem = "peak_infer_mem_mb" in m.columns
        if infer_mem:
            header.append("Peak infer. mem (MB)")
        rows, whole = [], readout.integer
        for _, r in m.sort_values(["device_name", "input_size", "batch"], kind="stable").iterrows():
            decoder = _decoder_params(r["model"], r["input_size"], r.get("width"))
            rows.append([str(r["model"]), str(r["device_name"]), whole(r["input_size"]),
                         whole(r["batch"]), whole(r["params"]),
                         whole(r["params"] - decoder) if decoder is not None else "—",
                         _num(r["flops_per_image"] / 1e6),
                         whole(r["train_images_per_s"]), whole(r["infer_images_per_s"]),
                         _num(r["latency_b1_ms"], 2), whole(r["peak_mem_mb"])]
                        + ([whole(r["peak_infer_mem_mb"])] if infer_mem else []))
        order = {name: i for i, name in enumerate(figures.model_order(m["model"]))}
        rows.sort(key=lambda row: (row[1], order[row[0]]))
        out.append(Table("throughput", "Throughput: images per second for a training step "
                         "(forward, backward, optimiser) and for inference; peak memory of a "
                         "training step (of inference when training is not measured) and of "
                         "one inference batch. Params w/o decoder: without the CapsNet's "
                         "reconstruction decoder, which only regularises training (equal to "
                         "Params for a model without one).",
                         header, rows, "ll" + "r" * (len(header) - 2)))
    g = tp[tp["kind"] == "generation"]
    if not g.empty:
        rows = [[display_name(str(r["model"])), str(r["device_name"]), readout.integer(r["images_per_s"])]
                for _, r in g.iterrows()]
        out.append(Table("generation", "Test-set generation speed (images per second).",
                         ["Test set", "Device", "Images/s"], rows, "llr"))
    return out


def _run_section(manifest: dict | None, df: pd.DataFrame, convergence: list[str]) -> list[str]:
    lines = ["## Run", ""]
    if manifest is not None:
        prof = manifest.get("profile") or {}
        for label, value in (
            ("profile", prof.get("name")),
            ("git commit", manifest.get("git_commit")),  # written by bench.runner.stages
            # The code that wrote this report, which may be newer than the run's (a rebuilt
            # report): the last commit that changed it (bench.runtime.code_commit).
            ("report code", code_commit()),
            ("device", manifest.get("device")),
        ):
            if value not in (None, "", {}):
                text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
                lines.append(f"- {label}: `{text}`")
        config = prof.get("config") or {}
        train = config.get("train") or {}
        scale = []
        if "width" in (config.get("model") or {}):
            scale.append(f"width {_width(config['model']['width'])}")
        if budget := _budget(config):
            scale.append(budget + (" per cell" if train.get("steps") else ""))
        if train.get("batch_size"):
            scale.append(f"batch {int(train['batch_size'])}")
        if scale:
            lines.append(f"- scale: {', '.join(scale)}")
    for setup in sorted(set(df["setup"])):
        d = df[df["setup"] == setup]
        lines.append(
            f"- setup `{setup}`: models {', '.join(figures.model_order(d['model']))}; "
            f"n = {', '.join(f'{n:,}' for n in sorted(set(d['n'])))}; "
            f"seeds = {', '.join(str(s) for s in sorted(set(d['seed'])))}"
        )
    lines += external_model_lines(manifest)
    return lines + convergence + [""]


DEVIATIONS_FILE = "deviations.md"  # beside a run's results: what departed from its plan, by hand


def plan_section(manifest: dict | None, deviations: str | None) -> list[str]:
    """"## Pre-registration": the analysis plan the run recorded (:func:`bench.runtime.plan_record`)
    and the deviations from it (the run folder's :data:`DEVIATIONS_FILE`, written by hand after the
    run); nothing when the run named no plan."""
    plan = (manifest or {}).get("plan")
    if not isinstance(plan, dict):
        return []
    run_commit = str((manifest or {}).get("git_commit") or "unknown")

    def changed(key: str) -> str:
        value = plan.get(key)
        return "not known" if value is None else ("yes" if value else "no")

    lines = ["## Pre-registration", "",
             f"- analysis plan: `{plan.get('path')}`, last changed in commit "
             f"`{plan.get('commit', 'unknown')}` ({plan.get('date', 'date unknown')}); "
             f"SHA-256 `{str(plan.get('sha256', ''))[:16]}…`",
             f"- the run's code: commit `{run_commit}`",
             f"- when the run started, changed since the plan's commit: the plan "
             f"{changed('plan_changed_since')}, the profile {changed('profile_changed_since')}",
             "", "Deviations from the plan:", ""]
    text = (deviations or "").strip()
    lines += [text] if text else [f"None recorded (a `{DEVIATIONS_FILE}` beside the results "
                                  "lists them)."]
    return lines + [""]


def external_model_lines(manifest: dict | None) -> list[str]:
    """One line per model from outside the suite, as ``manifest.json``'s ``models`` recorded it
    when the run trained (the report imports none of them)."""
    lines = []
    for name, rec in sorted(((manifest or {}).get("models") or {}).items()):
        if not isinstance(rec, dict) or not rec.get("external"):
            continue
        package = rec.get("package") or "no installed package"
        version = f" {rec['version']}" if rec.get("version") else ""
        via = (f"entry point `{rec['entry_point']}`" if rec.get("entry_point")
               else f"`{name}`")
        source = f", source hash `{rec['source_hash']}`" if rec.get("source_hash") else ""
        lines.append(f"- external model `{name}` ({rec.get('family', 'family not recorded')}): "
                     f"package {package}{version}, module `{rec.get('module')}` via {via}{source}")
    return lines


def _test_set_sizes(manifest: dict | None, main: pd.DataFrame) -> list[str]:
    """One line per test set of the main setup: its images (the manifest's ``data_checksums``
    counts), and for the sweeps the digits per point."""
    sets = (manifest or {}).get("data_checksums", {}).get(MAIN_SETUP) or {}
    names = order_set_names(t for t in sets if t in set(main["test_set"]) or main.empty)
    if not names:
        return []
    lines = ["## Test sets", "", "Images per test set (each image scored once per cell):", ""]
    for t in names:
        count, spec = int(sets[t].get("count", 0)), sets[t].get("spec") or {}
        kind = find_set_kind(t)
        detail = ""
        if kind is not None and kind.family == "affine" and spec.get("affnist_k"):
            k = int(spec["affnist_k"])
            detail = f" ({count // k:,} digits × {k} transforms)"
        elif kind is not None and kind.family == "sweep" and spec.get("grid"):
            points = len(spec["grid"])
            detail = f" ({count // points:,} digits × {points} points)"
        name = display_name(t)
        shown = name if name == t else f"{name} (`{t}`)"
        lines.append(f"- {shown}: {count:,} images{detail}")
    attack = adversarial_report.attack_settings(manifest)
    if attack.get("n"):
        sizes = attack.get("sizes") or []
        where = ("every n" if not sizes else "n = " + ", ".join(f"{int(n):,}" for n in sizes))
        budgets = ", ".join(f"{float(e):g}" for e in attack.get("budgets", []))
        lines.append(
            f"- adversarial sets, made per cell against its own model ({where}): FGSM and PGD "
            f"({attack.get('pgd_steps')} steps) at ε = {budgets} on the first "
            f"{int(attack['n']):,} clean digits; at ε = {float(attack['stated_budget']):g} the "
            f"vote attack (routing models), Square ({int(attack.get('square_n', 0)):,} digits, "
            f"{int(attack.get('square_queries', 0)):,} queries) and the transfer attack")
    return lines + [""]
