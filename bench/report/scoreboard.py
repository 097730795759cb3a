"""The claims scoreboard: every :class:`~bench.report.claims.Claim` of a run, its rules and table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from bench.data.testsets import (
    AFFNIST_STYLE,
)
from bench.report import routing as routing_report
from bench.report.claims import Claim, _Context, _data_claim, _matched_claim, _part_claim
from bench.report.read import K9, MAXPOOL, REFERENCE
from bench.report.readout import BOUNDED, CLIPPED, MINUS
from bench.report.table import Table
from bench.stats import VERDICT_RULE


def claims(main: pd.DataFrame, targets: Sequence[float], *, manifest: dict | None = None,
           cells: pd.DataFrame | None = None) -> list[Claim]:
    """The four rows of the scoreboard, and a fifth (C5, routing vs pooling:
    :func:`bench.report.routing.routing_claim`) when ``main`` has ``head-*`` models (see
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
         if any(str(m).startswith("head-") for m in main["model"]) else []) + \
        external_claims(ctx, targets)


def external_models(manifest: dict | None, main: pd.DataFrame) -> list[tuple[str, str]]:
    """(name, family) of the run's models from other packages that have results, as
    ``manifest.json``'s ``models`` recorded them (:mod:`bench.models.registry`)."""
    records = (manifest or {}).get("models") or {}
    have = set(main["model"])
    return [(m, str(r.get("family"))) for m, r in sorted(records.items())
            if isinstance(r, dict) and r.get("external") and m in have]


def external_claims(ctx: _Context, targets: Sequence[float]) -> list[Claim]:
    """The claims read again with each external model in the place of the suite's model of its
    family: a ``capsule`` model takes the CapsNet's place in C1 to C3 (against the max-pooling
    ConvNet), a ``convnet`` model the place of convnet-k9 in C4 (against the CapsNet). Keys are
    the claim's and the model's, e.g. ``C1/my-capsnet``; a ``head`` model has no row."""
    other, shown = AFFNIST_STYLE.name, AFFNIST_STYLE.display
    rows: list[Claim] = []
    for m, family in external_models(ctx.manifest, ctx.main):
        if family == "capsule":
            rows += [
                _matched_claim(ctx, Claim(
                    f"C1/{m}", "viewpoint",
                    f"{shown} accuracy at matched clean accuracy c*, {m} {MINUS} {MAXPOOL}",
                    f"{m} keeps more {shown} accuracy than the max-pooling ConvNet at the same "
                    "clean accuracy (C1 with it in the CapsNet's place)", 0.0, "pp"),
                    m, MAXPOOL, other),
                _data_claim(ctx, Claim(
                    f"C2/{m}", "data efficiency", f"training images to reach target, {MAXPOOL} ÷ {m}",
                    f"{m} needs fewer training images than the max-pooling ConvNet", 1.0,
                    "ratio"), MAXPOOL, m, targets),
                _part_claim(ctx, Claim(
                    f"C3/{m}", "part arrangement",
                    f"AUROC intact vs scrambled by feature density, {m} {MINUS} {MAXPOOL}",
                    f"{m}'s representation separates intact from scrambled digits better than "
                    "the max-pooling ConvNet's by the same label-free density score", 0.0,
                    "AUROC"), m, MAXPOOL),
            ]
        elif family == "convnet":
            rows.append(_matched_claim(ctx, Claim(
                f"C4/{m}", "counter-claim",
                f"{shown} accuracy at matched clean accuracy c*, {m} {MINUS} {REFERENCE}",
                f"{m} keeps more {shown} accuracy than the CapsNet at the same clean accuracy "
                "(C4 with it in convnet-k9's place)", 0.0, "pp"), m, REFERENCE, other))
    return rows


def claim_sides(key: str) -> tuple[str, str]:
    """What an effect below and above no effect means for claim ``key`` (an external model's
    rows, ``C1/NAME``, read as the claim with NAME in its place)."""
    base, _, model = key.partition("/")
    if not model:
        return CLAIM_SIDES.get(key, ("", ""))
    if base not in ("C1", "C2", "C3", "C4"):
        return ("", "")
    ref = K9 if base == "C4" else REFERENCE
    below, above = CLAIM_SIDES[base]
    return below.replace(ref, model), above.replace(ref, model)


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


EXTERNAL_NOTE = (
    "Rows C1/NAME to C4/NAME read a claim again with NAME, a model from another package (named "
    "with its package and version under Run), in the place of the suite's model of its family: "
    f"a capsule model in {REFERENCE}'s place in C1 to C3, a ConvNet in {K9}'s place in C4; they "
    "are signed as the claim they repeat.")


def _claims_table(rows: list[Claim], control: str | None = None) -> Table:
    """The scoreboard; ``control`` (:func:`displaced_control`) is its first note when given."""
    header = ["Claim", "Effect", "Estimate [95% interval]", "No effect", "Measured at",
              "Verdict"]
    body = [[f"{c.key} {c.name}", c.effect, c.estimate_text(), c.null_text(),
             c.scale or "—", c.verdict] for c in rows]
    notes = ([control] if control else []) + [SIGN_NOTE]
    if any("/" in c.key for c in rows):
        notes.append(EXTERNAL_NOTE)
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
            "note": c.reason, "below": claim_sides(c.key)[0],
            "above": claim_sides(c.key)[1],
        })
    return pd.DataFrame(out)
