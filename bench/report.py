"""``python -m bench report RUN_DIR``: tables and figures of a run folder, no training.

Reads the tidy results of a run (``metrics.csv``, required; ``cells.csv``,
``confidences.parquet``, ``throughput.csv``, ``examples.pt`` and ``manifest.json``, each
optional) and writes

- ``report.md``: first the claims scoreboard (each claim made for capsules, its effect with a
  95% interval paired over seeds, the scale it was measured at and the verdict of
  :func:`bench.stats.verdict`; under it the same C3 difference on the displaced set as a control,
  :func:`displaced_control`), then the tables, with a note for every part skipped because its
  input file is absent;
- ``tables/*.tex``: the same tables for a paper (booktabs rules, written here, no jinja2);
- ``figures/*.pdf|png``: the figures of :mod:`bench.figures`, among them the scoreboard as a
  forest plot (``claims``).

Every interval comes from :mod:`bench.stats`: a mean gets the Student-t interval over seeds
clipped to the metric's range (``†`` marks a clipped one), a comparison between two models is
paired by seed (the per-seed differences or log ratios), and a training-set size gets a
geometric interval. The figures' bands are the same intervals. No sentence of the report calls a
difference real unless its interval excludes no effect. The per-seed read-outs (c*, the n to
reach a target, ...) and the number formats are :mod:`bench.readout`'s, shared with the section
"Routing vs pooling, same backbone" (:mod:`bench.routing_report`, written when the run has
``head-*`` models).

Everything is a function of the input files only (no dates, no absolute paths), so rebuilding
a report gives byte-identical files, and the CI can compare them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import figures, readout, routing_report, stats
from bench.cells import AFFNIST_SETUP
from bench.config import PAPER_MNIST_ERRORS, Profile, TrainConfig
from bench.data.testsets import (
    AFFNIST_REAL,
    AFFNIST_STYLE,
    CLEAN,
    DISPLACED,
    SET_KINDS,
    display_name,
    find_set_kind,
    order_set_names,
    sets_where,
)
from bench.errors import BenchError
from bench.flops import param_counts
from bench.io import load_torch, write_text
from bench.readout import ALL_EQUAL, BOUNDED, CLIPPED, MINUS, NOT_MEASURED, PART_SCORE, Needed
from bench.stats import VERDICT_RULE, Interval

__all__ = ["build_report", "read_metrics", "read_cells", "claims", "claims_frame", "Claim",
           "Table", "METRICS_COLUMNS", "REFERENCE", "SCOREBOARD_RULES", "displaced_control"]

METRICS_COLUMNS = ("setup", "model", "n", "seed", "test_set", "factor_value", "metric", "value")
CELLS_COLUMNS = ("setup", "model", "n", "seed")  # the key columns cells.csv must have
MAIN_SETUP = AFFNIST_SETUP  # the 40x40 setup, evaluated on every test set
MNIST_SETUP = "mnist28"  # the paper's MNIST table
REFERENCE = "capsnet"  # every difference and ratio is taken against it
MAXPOOL = "convnet-maxpool"  # the "traditional ConvNet" of the claims
K9 = "convnet-k9"  # Gu et al. (2021)'s control
PM = "±"

NOTE_MEAN = (f"Intervals: mean over seeds [95% Student-t interval of the mean], clipped to the "
             f"metric's range ([0, 100]% for accuracies); {CLIPPED}: clipped (the t approximation "
             "is poor near a bound); one seed: the value alone, no interval.")
NOTE_DIFF = (f"Differences: model {MINUS} {REFERENCE} per seed on the seeds both share, mean "
             "[95% paired Student-t interval]; an interval that contains 0 is no evidence of a "
             "difference.")


# --------------------------------------------------------------------------------------------
# Tables: one structure rendered to Markdown and to LaTeX


@dataclass
class Table:
    """A table of preformatted cells; ``align`` has one of l/r/c per column.

    ``tex_columns`` replaces ``align`` as the LaTeX column spec (e.g. ``p{3cm}`` for a column
    of long text), and ``wide`` sets it across both columns of a paper (``table*``).
    """

    name: str  # file stem under tables/
    title: str
    header: list[str]
    rows: list[list[str]]
    align: str
    notes: list[str] = field(default_factory=list)
    tex_columns: str | None = None
    wide: bool = False

    def markdown(self) -> str:
        marks = {"l": ":--", "r": "--:", "c": ":-:"}
        lines = [
            "| " + " | ".join(self.header) + " |",
            "| " + " | ".join(marks[a] for a in self.align) + " |",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        notes = [line for note in self.notes for line in ("", note)]  # one paragraph each
        return "\n".join(lines + notes)

    def latex(self) -> str:
        """A booktabs table (``\\toprule``/``\\midrule``/``\\bottomrule``; needs ``booktabs``)."""
        body = [" & ".join(_tex(c) for c in row) + r" \\" for row in self.rows]
        caption = _tex(self.title) + ("" if not self.notes else " " + " ".join(
            _tex(n) for n in self.notes))
        env = "table*" if self.wide else "table"
        return "\n".join([
            "% Generated by `python -m bench report`; needs \\usepackage{booktabs}.",
            rf"\begin{{{env}}}[t]",
            r"\centering",
            r"\small",
            rf"\caption{{{caption}}}",
            rf"\label{{tab:{self.name}}}",
            rf"\begin{{tabular}}{{{self.tex_columns or self.align}}}",
            r"\toprule",
            " & ".join(_tex(h) for h in self.header) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            rf"\end{{{env}}}",
            "",
        ])


_TEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"$<$", ">": r"$>$", PM: r"$\pm$", "≤": r"$\le$", "≥": r"$\ge$", "—": "--",
    "×": r"$\times$", "²": r"$^2$", CLIPPED: r"$^\dagger$", BOUNDED: r"$^\ddagger$",
    MINUS: r"$-$", "–": "--", "÷": r"$\div$", "*": r"$^*$",
}


def _tex(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)


# --------------------------------------------------------------------------------------------
# Number formatting


def _num(x: float, digits: int = 1) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    text = f"{x:,.{digits}f}"
    return text[1:] if text.startswith("-") and float(text[1:].replace(",", "")) == 0 else text


def _width(width: Any) -> str:
    """A channel multiplier as the fraction it is (0.125 -> "1/8")."""
    try:
        frac = Fraction(float(width)).limit_denominator(64)
    except (TypeError, ValueError):
        return str(width)
    return str(frac.numerator) if frac.denominator == 1 else f"{frac.numerator}/{frac.denominator}"


# --------------------------------------------------------------------------------------------
# Reading


def read_metrics(run_dir: Path) -> pd.DataFrame:
    """``metrics.csv`` with its schema checked; a missing file or column is a BenchError."""
    path = Path(run_dir) / "metrics.csv"
    if not Path(run_dir).is_dir():
        raise BenchError(f"report: expected a run folder, found nothing at {run_dir}")
    if not path.is_file():
        raise BenchError(f"report: expected {path} (run the eval stage first), not found")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise BenchError(f"report: cannot parse {path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in METRICS_COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"report: {path} lacks columns {missing} (has {list(df.columns)})")
    df["factor_value"] = pd.to_numeric(df["factor_value"], errors="coerce")
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["n"] = df["n"].astype(np.int64)
    return df


def _flag(x: Any) -> bool | None:
    """A boolean cell of a CSV (True/False/1/0, any case), None when not recorded."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    text = str(x).strip().lower()
    return {"true": True, "1": True, "1.0": True, "false": False, "0": False,
            "0.0": False}.get(text)


def read_cells(path: Path) -> pd.DataFrame:
    """``cells.csv`` (one row per cell: steps, convergence, labelled images, seconds).

    ``converged`` becomes True, False or None (not recorded); a missing key column is an error.
    """
    df = pd.read_csv(path)
    missing = [c for c in CELLS_COLUMNS if c not in df.columns]
    if missing:
        raise BenchError(f"report: {path} lacks columns {missing}")
    df["n"] = df["n"].astype(np.int64)
    df["seed"] = df["seed"].astype(np.int64)
    df["converged"] = pd.Series([_flag(x) for x in df["converged"]] if "converged" in df
                                else [None] * len(df), index=df.index, dtype=object)
    for col in ("steps", "val_improvement", "labelled_images"):
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else math.nan
    return df


def _read_confidences(path: Path) -> pd.DataFrame:
    """The rows the report draws (scrambled sets and their intact twins), only needed columns.

    A full run holds one row per test image per cell (millions): filtering while reading keeps
    the report's memory small.
    """
    return pd.read_parquet(
        path, columns=["setup", "model", "n", "seed", "test_set", "confidence", "intact"],
        filters=[("test_set", "not in", [k.name for k in SET_KINDS if not k.scrambled])],
    )


def _read_optional(path: Path, reader: Callable[[Path], Any], notes: list[str]) -> Any:
    if not path.is_file():
        notes.append(f"`{path.name}` absent: the parts that need it are skipped.")
        return None
    try:
        return reader(path)
    except Exception as e:  # a corrupt optional file must not stop the rest of the report
        notes.append(f"`{path.name}` unreadable ({type(e).__name__}: "
                     f"{str(e).splitlines()[0] if str(e) else ''}): the parts that need it "
                     "are skipped.")
        return None

# --------------------------------------------------------------------------------------------
# The context every table and claim reads


@dataclass
class _Context:
    main: pd.DataFrame
    manifest: dict | None
    cells: pd.DataFrame | None

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
        else:
            train = self.config.get("train") or {}
            if train.get("steps"):
                parts.append(f"{int(train['steps']):,} steps")
            elif train.get("max_steps"):
                parts.append(f"≤ {int(train['max_steps']):,} steps")
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
    interval: Interval | None = None
    scale: str = ""
    reason: str = ""  # why it was not measured

    @property
    def verdict(self) -> str:
        return NOT_MEASURED if self.interval is None else stats.verdict(self.interval, self.null)

    def estimate_text(self) -> str:
        if self.interval is None:
            return self.reason
        if self.unit == "pp":
            return readout.iv(self.interval, 100, 2, signed=True, unit=" pp")
        if self.unit == "ratio":
            return readout.iv(self.interval, 1, 2, unit="×")
        return readout.iv(self.interval, 1, 3, signed=True)

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
    claim.interval = stats.paired_difference(readout.matched(ca, c), readout.matched(cb, c))
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
        claim.interval = stats.ratio_interval(a.values, b.values)
        claim.effect = claim.effect.replace("target", f"{100 * t:g}% clean accuracy")
        sizes = set(readout.wide(ctx.main, num, CLEAN.name).columns) | set(
            readout.wide(ctx.main, den, CLEAN.name).columns)
        if a.at_first or b.at_first:
            claim.effect += f" {BOUNDED}"
        claim.scale = ctx.scale([num, den], sizes, common, claim.interval.n,
                                lead="along the n-curve")
        return claim
    listed = ", ".join(f"{100 * t:g}%" for t in targets)
    claim.reason = (f"{NOT_MEASURED} (no target of {listed} reached by both models on every "
                    "seed)")
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
    claim.interval = part.interval
    claim.effect = claim.effect.replace("scrambled", ts)
    claim.scale = ctx.scale([a, b], [part.n], part.seeds, claim.interval.n,
                            lead="at the largest n")
    return claim


def displaced_control(main: pd.DataFrame) -> str | None:
    """The control line of C3: the same difference (capsnet minus convnet-maxpool, by the same
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
    return (f"Control for C3: the same AUROC difference by feature density, {REFERENCE} "
            f"{MINUS} {MAXPOOL}, on the {DISPLACED.name} set (parts moved apart, arrangement "
            f"kept) at the largest n ({readout.n_range([part.n])}; {seeds}): "
            f"{readout.iv(part.interval, 1, 3, signed=True)} ({means}). A score that flags "
            "displaced digits as strongly as scrambled ones detects distortion, not "
            "specifically part arrangement; the behavioural read-outs (kept if intact correct, "
            "flip rate) are in the table \"Scrambled and displaced parts\".")


def claims(main: pd.DataFrame, targets: Sequence[float], *, manifest: dict | None = None,
           cells: pd.DataFrame | None = None) -> list[Claim]:
    """The four rows of the scoreboard, and a fifth (C5, routing vs pooling:
    :func:`bench.routing_report.routing_claim`) when ``main`` has ``head-*`` models (see
    :data:`SCOREBOARD_RULES`).

    Args:
        main: the rows of ``metrics.csv`` of the affNIST setup.
        targets: the profile's clean-accuracy targets (C2 uses the highest one both models reach
            on every seed).
        manifest: ``manifest.json`` (the width and step budget of the "Measured at" column, and
            the profile's models), if any.
        cells: :func:`read_cells` of ``cells.csv`` (steps, labelled images, convergence), if any.
    """
    ctx = _Context(main, manifest, cells)
    other, shown = AFFNIST_STYLE.name, AFFNIST_STYLE.display
    return [
        _matched_claim(ctx, Claim(
            "C1", "viewpoint",
            f"{shown} accuracy at matched clean accuracy c*, {REFERENCE} {MINUS} {MAXPOOL}",
            f"the CapsNet keeps more {shown} accuracy than the max-pooling ConvNet at the same "
            "clean accuracy (Sabour et al. 2017, Sec. 5.2)", 0.0, "pp"),
            REFERENCE, MAXPOOL, other),
        _data_claim(ctx, Claim(
            "C2", "data efficiency",
            f"training images to reach target, {MAXPOOL} ÷ {REFERENCE}",
            "the CapsNet needs fewer training images than the max-pooling ConvNet", 1.0,
            "ratio"), MAXPOOL, REFERENCE, targets),
        _part_claim(ctx, Claim(
            "C3", "part arrangement",
            "AUROC intact vs scrambled by feature density (class-conditional Mahalanobis; "
            f"flags any distortion), {REFERENCE} {MINUS} {MAXPOOL}",
            "the CapsNet's own representation separates intact from scrambled digits better "
            "by the same label-free density score", 0.0, "AUROC"), REFERENCE, MAXPOOL),
        _matched_claim(ctx, Claim(
            "C4", "counter-claim",
            f"{shown} accuracy at matched clean accuracy c*, {K9} {MINUS} {REFERENCE}",
            f"the ConvNet with the CapsNet's 9x9 kernels keeps more {shown} accuracy than the "
            "CapsNet at the same clean accuracy (the counter-claim of Gu, Tresp & Hu 2021 "
            "holds)", 0.0, "pp"),
            K9, REFERENCE, other),
    ] + ([Claim(**routing_report.routing_claim(main, key="C5", scale=ctx.scale, cells=cells))]
         if any(str(m).startswith("head-") for m in main["model"]) else [])


SCOREBOARD_RULES = [
    f"C1 and C4 compare the {AFFNIST_STYLE.display} accuracy of two models at the same clean "
    "accuracy c*, the highest clean accuracy both reach on every seed: each seed's accuracy is "
    "read at c* along its curve of increasing n by linear interpolation between sizes (the "
    "interpolation's error is not in the interval).",
    "C2 takes the training-set size at which each seed's clean accuracy first reaches the "
    "highest of the profile's targets that both models reach on every seed (linear in log n "
    "between sizes), and the geometric mean of the per-seed ratios. The target is chosen by "
    "this fixed rule from the run's results.",
    "C3 compares the AUROC of telling intact from scrambled digits (intact = positive) by a "
    "label-free feature-density score defined the same way for every family: minus the "
    "smallest class-conditional Mahalanobis distance of the model's representation (CapsNet: "
    "the 10 x 16 DigitCaps output; ConvNets: the penultimate features; backbone heads: the "
    "pooled or flattened features, or a routing head's winning 16-D pose), class means and one "
    "shared Ledoit-Wolf covariance fitted on the cell's held-out validation images, on the "
    "scrambled set with the smallest grid at the largest n. Our choice: not the confidence "
    "(a capsule length is not a probability, a softmax maximum is) nor a reconstruction "
    "error (CapsNets only); those are in the part-arrangement table. A density score flags "
    "any input unlike the training digits, so it is checked against the displaced set "
    "(parts moved apart, arrangement kept) where the run has one.",
    routing_report.SCOREBOARD_RULE,
    f"Intervals: 95%, paired over seeds (Student t on the per-seed differences; for C2 on the "
    f"log ratios, exponentiated); {CLIPPED}: clipped to the possible range; {BOUNDED}: some "
    "seed reached the target at the smallest n, where the size is only an upper bound.",
]


# What an effect below and above no effect means, per claim key (the forest plot writes them in
# each panel's lower corners): each claim has its own sign convention.
CLAIM_SIDES = {
    "C1": (f"{MAXPOOL} better", f"{REFERENCE} better"),
    "C2": (f"{MAXPOOL} needs fewer", f"{REFERENCE} needs fewer"),
    "C3": (f"{MAXPOOL} separates better", f"{REFERENCE} separates better"),
    "C4": (f"{REFERENCE} better", f"{K9} better"),
    "C5": ("pooling better", "routing better"),  # best routing head - best pooling head
}

SIGN_NOTE = (
    "Signs: each effect is signed so that a positive value (above 1 for the ratio C2) is the "
    f"claim's direction: C1 and C3 are {REFERENCE} {MINUS} {MAXPOOL}, C2 is {MAXPOOL} ÷ "
    f"{REFERENCE}, C4 is {K9} {MINUS} {REFERENCE}. The tables below write model {MINUS} "
    f"{REFERENCE} (model ÷ {REFERENCE} for ratios), so C1 appears in the matched-accuracy table "
    f"with the opposite sign. C5 (runs with routing heads) is routing head {MINUS} pooling head: "
    "positive means the routing head keeps more.")


def _claims_table(rows: list[Claim], control: str | None = None) -> Table:
    """The scoreboard; ``control`` (:func:`displaced_control`) is its first note when given."""
    header = ["Claim", "Effect", "Estimate [95% interval]", "No effect", "Measured at",
              "Verdict"]
    body = [[f"{c.key} {c.name}", c.effect, c.estimate_text(), c.null_text(),
             c.scale or "—", c.verdict] for c in rows]
    notes = ([control] if control else []) + [SIGN_NOTE]
    notes += [f"{c.key} supported means: {c.meaning}." for c in rows]
    notes += SCOREBOARD_RULES + [f"Verdicts: {VERDICT_RULE}"]
    return Table("claims", "The claims made for capsules, each measured as one effect with its "
                 "95% interval paired over seeds, and the verdict its interval gives.",
                 header, body, "llrlll", notes,
                 tex_columns=r"p{0.11\linewidth}p{0.27\linewidth}rlp{0.27\linewidth}l",
                 wide=True)


def claims_frame(rows: list[Claim]) -> pd.DataFrame:
    """What the forest plot draws: one row per claim, in the unit shown (pp, AUROC, ratio)."""
    out = []
    for c in rows:
        iv = c.interval
        scale = 100.0 if c.unit == "pp" else 1.0
        out.append({
            "claim": f"{c.key} {c.name}", "effect": c.effect, "unit": c.unit,
            "estimate": iv.estimate * scale if iv else math.nan,
            "low": iv.low * scale if iv else math.nan,
            "high": iv.high * scale if iv else math.nan,
            "null": c.null, "n": iv.n if iv else 0, "verdict": c.verdict,
            "note": c.reason, "below": CLAIM_SIDES.get(c.key, ("", ""))[0],
            "above": CLAIM_SIDES.get(c.key, ("", ""))[1],
        })
    return pd.DataFrame(out)


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
    """The mean R² with its interval, and the seeds whose held-out R² is below 0."""
    text = readout.iv(stats.mean_interval(r2, bounds=(-math.inf, 1.0)), digits=3)
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
                  "(no mark: none)."])


def _sweeps_table(main: pd.DataFrame, models: list[str]) -> Table | None:
    """Per sweep point: the percentage of digits cropped and each model's accuracy on the
    digits that fit, at its largest n."""
    sets = sets_where(main["test_set"].unique(), lambda k: k.family == "sweep")
    d = main[main["test_set"].isin(sets) & main["factor_value"].notna()]
    if d.empty or not (d["metric"] == "accuracy_fits").any():
        return None
    d = figures.largest_n(d)
    models = [m for m in models if (d["model"] == m).any()]
    rows = []
    for t in sets:
        sub = d[d["test_set"] == t]
        for v in sorted(set(sub["factor_value"])):
            at = sub[sub["factor_value"] == v]
            crop = at.loc[at["metric"] == "cropped_fraction", "value"]
            row = [_factor(t), f"{v:g}", _num(100 * crop.mean()) if len(crop) else "—"]
            for m in models:
                acc = readout.by_seed(at[(at["model"] == m) & (at["metric"] == "accuracy_fits")]
                                      .dropna(subset=["value"]))
                row.append(readout.iv(stats.mean_interval(acc), 100) if acc else "—")
            rows.append(row)
    return Table("sweeps", "Per-factor sweeps at the largest n: the percentage of digits whose "
                 "ink leaves the 40x40 canvas (cropped; the same digits for every model), and "
                 "each model's accuracy on the digits that fit (cropped digits excluded).",
                 ["Factor", "Value", "Cropped (%)"] + [f"{m} acc. (%)" for m in models], rows,
                 "lrr" + "r" * len(models),
                 [NOTE_MEAN, "—: every digit at that point is cropped, or no rows."])


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
    used = [s for s in common if num[s] is not None and den[s] is not None]
    if all(s in nd.at_first and s in ref.at_first for s in used):
        return "no ratio (both reached it at the smallest n)"
    bounded = any(s in nd.at_first or s in ref.at_first for s in used)
    text = readout.iv(iv, 1, 2, unit="×") + (BOUNDED if bounded else "")
    if dropped:
        text += f" ({dropped} of {len(common)} seeds dropped: not reached)"
    return text


def _data_efficiency_table(main: pd.DataFrame, models: list[str],
                           targets: Sequence[float]) -> Table | None:
    d = readout.rows(main, test_set=CLEAN.name, metric="accuracy")
    if d.empty:
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
             "error of interpolating between the sizes trained is not in them.",
             "Claim C2 uses the highest of the profile's targets that both models reach on every "
             "seed: a fixed rule, so the target it reports depends on this run's results."]
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


# --------------------------------------------------------------------------------------------
# The report


HOW_TO_READ = f"""\
## How to read this report

- **The claim.** Sabour, Frosst & Hinton (2017, Sec. 5.2) trained a CapsNet and a traditional
  ConvNet on MNIST digits randomly shifted on a 40x40 canvas; at the same clean accuracy
  (99.23% vs 99.22%) the CapsNet reached 79% on affNIST and the ConvNet 66%.
- **The counter-claim.** Gu, Tresp & Hu (CVPR 2021) ablated CapsNet's components and report that
  dynamic routing and the transformation process do not help robustness to affine transforms,
  and that ConvNets given CapsNet's other components can be more robust than CapsNet.
- **What is compared here.** The scoreboard and the matched-accuracy table compare models at
  the same clean accuracy, as the paper does; the headline tables compare them at the largest
  n, whatever their clean accuracy; the data-efficiency table and figures compare them across
  training-set sizes. affNIST-style (test set `affnist` in `metrics.csv`) is our set
  regenerated from MNIST test digits with affNIST-like ranges (`affnist-real` is the official
  set, when given). The sweeps vary one factor at a time; their accuracies count only the
  digits whose ink stays on the 40x40 canvas, and the sweep table gives the fraction cropped.
  On scrambled digits, "accuracy" is how often
  the scrambled digit still gets its original class, whether or not the intact digit was
  right; the part-arrangement table conditions it on the intact digit being classified
  correctly ("kept if intact correct"), so a weaker model does not look more part-aware.
- **Uncertainty.** Seeds are the unit of replication. Means carry a 95% Student-t interval over
  seeds, clipped to the metric's range ({CLIPPED} marks a clipped interval); comparisons with
  {REFERENCE} are paired by seed; training-set sizes and their ratios get intervals on the log
  scale. Figure bands are the same intervals as the tables, with each seed drawn as a point.
  With few seeds the intervals are wide: an interval that contains no effect (0, or 1 for a
  ratio) is no evidence of a difference. The intervals are over seeds for FIXED test digits:
  the sampling of the test digits is not in them. An interval of zero width means that every
  seed gave the same value; it is printed "{ALL_EQUAL}" rather than "[x, x]". The error of
  interpolating between training-set sizes (the accuracy read at c*, the n to reach a target)
  is not in the intervals either.
"""

# Every table this module can write (file stems under tables/).
TABLE_NAMES = ("claims", "convergence", "headline", "headline_diff", "matched", "scrambled",
               "calibration", "probe", "sweeps", "data_efficiency", "recon", "routing", "mnist",
               "throughput", "generation")

FIGURE_CAPTIONS = {
    "claims": "The claims scoreboard as a forest plot: each effect with its 95% interval "
              "(paired over seeds); dashed: no effect (0, or 1 for the ratio, log scale); "
              "the labelled arrows in each panel's lower corners say which model each side of no "
              "effect favours.",
    "data_efficiency": "Accuracy against training-set size n (log scale), one panel per test "
                       "set: mean over seeds with the tables' 95% interval as the band, one "
                       "point per seed; hollow points: cells that did not converge. Panels of "
                       "scrambled or displaced digits (if any) plot unconditioned accuracy (how "
                       "often the perturbed digit keeps its class), whereas the part-arrangement "
                       "table conditions it on the intact digit being classified correctly.",
    "affnist_vs_clean": "affNIST-style against clean accuracy, one point per cell (model, n, "
                        "seed); marker area grows with n; dashed: y = x; dotted: the matched "
                        "clean accuracy c*; hollow points: cells that did not converge.",
    "sweeps": "Accuracy against the magnitude of each transformation at the largest n, on the "
              "digits whose ink stays on the canvas: mean over seeds with the tables' 95% "
              "interval as the band, one point per seed; hollow points: cells that did not "
              "converge; grey dashed (right axis): the percentage of digits cropped.",
    "confidence_scrambled": "Raw max score (capsule length for the CapsNet, softmax maximum for "
                            "the ConvNets) on perturbed digits (scrambled or displaced; right "
                            "halves) against the same digits intact (left halves), largest n, "
                            "seeds pooled; lines: quartiles. Each model's intact and perturbed "
                            "halves are compared only with each other: raw scores are not "
                            "comparable across families.",
    "reliability": "Reliability diagram of the clean test set at each model's largest n, seeds "
                   "pooled: accuracy against mean confidence in 15 equal-width bins, of the raw "
                   "max score (left; capsule length, softmax maximum or a head's class activation) "
                   "and after temperature "
                   "scaling fitted on held-out validation images (right); marker area grows "
                   "with the bin's count; dashed: perfect calibration.",
    "throughput": "Training and inference throughput (images/s).",
    routing_report.FIGURE_STEM: routing_report.FIGURE_CAPTION,
    "examples": "The first images of each test set (label in the corner).",
    "reconstructions": "CapsNet reconstructions (from the winning capsule) under each input.",
}


def _run_section(manifest: dict | None, df: pd.DataFrame, convergence: list[str]) -> list[str]:
    lines = ["## Run", ""]
    if manifest is not None:
        prof = manifest.get("profile") or {}
        for label, value in (
            ("profile", prof.get("name")),
            ("git commit", manifest.get("git_commit")),  # written by bench.runner.run
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
        if train.get("steps"):
            scale.append(f"{int(train['steps']):,} steps per cell")
        elif train.get("max_steps"):
            scale.append(f"at most {int(train['max_steps']):,} steps per cell")
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
    return lines + convergence + [""]


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
    return lines + [""]


def _targets(manifest: dict | None, notes: list[str]) -> list[float]:
    prof = (manifest or {}).get("profile") or {}
    targets = prof.get("targets") or (prof.get("config") or {}).get("targets")
    if targets:
        return [float(t) for t in targets]
    targets = list(Profile().targets)
    notes.append(f"No profile targets in `manifest.json`: the data-efficiency table and claim "
                 f"C2 use the default targets {targets}.")
    return targets


def build_report(run_dir: Path, *, with_figures: bool = True) -> None:
    """Write ``report.md``, ``tables/*.tex`` and ``figures/*`` of a run folder.

    Args:
        run_dir: a run folder holding at least ``metrics.csv``.
        with_figures: False writes the tables only (fast; for tests and quick looks).

    Raises:
        BenchError: ``metrics.csv`` is absent or lacks a schema column.
    """
    run_dir = Path(run_dir)
    df = read_metrics(run_dir)
    notes: list[str] = []
    manifest = _read_optional(run_dir / "manifest.json", lambda p: json.loads(p.read_text()),
                              notes)
    cells = _read_optional(run_dir / "cells.csv", read_cells, notes)
    conf = _read_optional(run_dir / "confidences.parquet", _read_confidences, notes)
    tp = _read_optional(run_dir / "throughput.csv", pd.read_csv, notes)
    examples = _read_optional(run_dir / "examples.pt", load_torch, notes)

    main = df[df["setup"] == MAIN_SETUP]
    models = figures.model_order(main["model"])
    targets = _targets(manifest, notes)
    board = claims(main, targets, manifest=manifest, cells=cells)
    train_cfg = (((manifest or {}).get("profile") or {}).get("config") or {}).get("train") or {}
    convergence, convergence_table, not_converged = _convergence(cells, train_cfg)

    sections: list[tuple[str, Table | None, str]] = []
    if convergence_table is not None:
        sections.append(("Cells that did not converge", convergence_table, ""))
    if main.empty:
        notes.append(f"No rows of setup `{MAIN_SETUP}` in `metrics.csv`: its tables and "
                     "figures are skipped.")
    else:
        head, diff, label = _headline_tables(main, models)
        recon, recon_sentence = _recon_table(main, models)
        sections.append((f"Accuracy and calibration at the largest n ({label})", head, ""))
        if REFERENCE in models:
            sections.append((f"Difference to {REFERENCE} at the largest n ({label})", diff, ""))
        sections += [
            ("Accuracy at matched clean accuracy", _matched_table(main, models), ""),
            ("Scrambled and displaced parts", _scrambled_table(main, models), ""),
            ("Calibration", _calibration_table(main, models), ""),
            ("Linear decodability of the transform", _probe_table(main, models, manifest), ""),
            ("Per-factor sweeps", _sweeps_table(main, models), ""),
            ("Data efficiency", _data_efficiency_table(main, models, targets), ""),
            ("Reconstructions", recon, recon_sentence),
        ]
        rt = routing_report.routing_table(main, targets)
        if rt is not None:
            sections.append((routing_report.TITLE, Table("routing", rt.title, rt.header, rt.rows,
                                                         rt.align, [NOTE_MEAN, *rt.notes]), ""))
            a, b = routing_report.chosen_pair(main, cells)
            pt = routing_report.pairs_table(main, (a, b) if a and b else None)
            if pt is not None:
                sections.append(("Routing vs pooling: every pair", Table(
                    "routing_pairs", "Routing vs pooling, every pair of heads (the C5 reading "
                    "for each).", pt[0], pt[1], "lrrlr", pt[2]), ""))
    mnist = _mnist_table(df)
    if mnist is not None:
        sections.append(("The paper's MNIST table", mnist, ""))
    if tp is not None:
        for t in _throughput_tables(tp):
            sections.append(("Throughput" if t.name == "throughput" else "Test-set generation",
                             t, ""))

    written_figures = (_figures(run_dir / "figures", main, conf, tp, examples, notes,
                                not_converged, claims_frame(board), models)
                       if with_figures else [])

    tables_dir = run_dir / "tables"
    scoreboard = _claims_table(board, displaced_control(main))
    written_tables = {scoreboard.name} | {t.name for _, t, _ in sections if t is not None}
    _remove_stale(tables_dir, [f"{n}.tex" for n in TABLE_NAMES if n not in written_tables])
    if with_figures:
        _remove_stale(run_dir / "figures", [f"{s}.{ext}" for s in FIGURE_CAPTIONS
                                            if s not in written_figures for ext in ("pdf", "png")])
    write_text(tables_dir / f"{scoreboard.name}.tex", scoreboard.latex())
    md = ["# capsbench report", "", "## Claims scoreboard", "", scoreboard.title, "",
          scoreboard.markdown(), ""]
    if "claims" in written_figures:
        md += ["![claims](figures/claims.png)", "", f"*claims*: {FIGURE_CAPTIONS['claims']} "
               "(`figures/claims.pdf`)", ""]
    md += ["LaTeX: `tables/claims.tex`", ""]
    md += _run_section(manifest, df, convergence)
    md += _test_set_sizes(manifest, main)
    md += [HOW_TO_READ]
    for title, table, sentence in sections:
        if table is None:
            notes.append(f"{title}: no matching rows in `metrics.csv`, skipped.")
            continue
        write_text(tables_dir / f"{table.name}.tex", table.latex())
        md += [f"## {title}", "", table.title, ""] + ([sentence, ""] if sentence else [])
        md += [table.markdown(), "", f"LaTeX: `tables/{table.name}.tex`", ""]
    figs = [s for s in written_figures if s != "claims"]
    if figs:
        md += ["## Figures", ""]
        for stem in figs:
            md += [f"![{stem}](figures/{stem}.png)", "",
                   f"*{stem}*: {FIGURE_CAPTIONS[stem]} (`figures/{stem}.pdf`)", ""]
    if notes:
        md += ["## Skipped", ""] + [f"- {n}" for n in notes] + [""]
    write_text(run_dir / "report.md", "\n".join(md).rstrip() + "\n")


def _remove_stale(folder: Path, names: Sequence[str]) -> None:
    """Delete outputs of an earlier build that this build did not write (only our own names)."""
    for name in names:
        (folder / name).unlink(missing_ok=True)


def _matched_c_star(main: pd.DataFrame, models: Sequence[str]) -> float | None:
    curves = [c for c in (readout.curves(main, m, AFFNIST_STYLE.name) for m in models) if c]
    return readout.c_star(curves)


def _figures(out: Path, main: pd.DataFrame, conf: pd.DataFrame | None, tp: pd.DataFrame | None,
             examples: dict | None, notes: list[str],
             not_converged: set[tuple[str, str, int, int]], board: pd.DataFrame,
             models: Sequence[str]) -> list[str]:
    """Draw every figure whose input is present; return the stems written."""
    out.mkdir(parents=True, exist_ok=True)
    hollow = {(m, n, s) for setup, m, n, s in not_converged if setup == MAIN_SETUP}
    figures.claims(board, out / "claims")
    done: list[str] = ["claims"]
    acc = main[main["metric"] == "accuracy"]
    if not acc.empty and acc["factor_value"].isna().any():
        figures.data_efficiency(main, out / "data_efficiency", not_converged=hollow)
        done.append("data_efficiency")
    sets = set(acc["test_set"])
    if {CLEAN.name, AFFNIST_STYLE.name} <= sets:
        figures.affnist_vs_clean(main, out / "affnist_vs_clean", not_converged=hollow,
                                 c_star=_matched_c_star(main, models))
        done.append("affnist_vs_clean")
    if (main["metric"] == "reliability_cal_count").any():
        figures.reliability(main, out / "reliability")
        done.append("reliability")
    if sets_where(sets, lambda k: k.family == "sweep"):
        figures.sweeps(main, out / "sweeps", not_converged=hollow)
        done.append("sweeps")
    if conf is not None:
        c = conf[conf["setup"] == MAIN_SETUP]
        if c["test_set"].isin(sets_where(c["test_set"].unique(), lambda k: k.scrambled)).any():
            figures.confidence_scrambled(c, out / "confidence_scrambled")
            done.append("confidence_scrambled")
        else:
            notes.append("`confidences.parquet` has no scrambled rows: confidence figure skipped.")
    if tp is not None:
        m = tp[tp["kind"] == "model"]
        if not m.empty:
            # One configuration per figure: the first device, its largest input and batch.
            dev = sorted(m["device_name"].astype(str))[0]
            m = m[m["device_name"].astype(str) == dev]
            m = m[m["input_size"] == m["input_size"].max()]
            m = m[m["batch"] == m["batch"].max()]
            figures.throughput(m, out / "throughput")
            done.append("throughput")
    rt = routing_report.routing_table(main)
    if rt is not None and rt.c_star is not None:
        routing_report.routing_figure(rt, out / routing_report.FIGURE_STEM)
        done.append(routing_report.FIGURE_STEM)
    if examples is not None:
        if any(k.startswith("images/") for k in examples):
            figures.example_grid(examples, out / "examples")
            done.append("examples")
        if any(k.startswith("recon/") for k in examples):
            figures.reconstructions(examples, out / "reconstructions")
            done.append("reconstructions")
        else:
            notes.append("`examples.pt` has no `recon/*` (no CapsNet in the run): "
                         "reconstruction figure skipped.")
    return done
