"""The claims scoreboard: every :class:`~bench.report.claims.Claim` of a run, its rules and table."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from bench import stats
from bench.data.testsets import (
    AFFNIST_STYLE,
    OVERLAP,
    adversarial_name,
)
from bench.report import adversarial as adversarial_report
from bench.report import routing as routing_report
from bench.report.budget import BUDGET_RULE
from bench.report.budget import TITLE as BUDGET_TITLE
from bench.report.claims import (
    Claim,
    _arrangement_claim,
    _Context,
    _data_claim,
    _matched_claim,
    _part_claim,
)
from bench.report.published import published_text
from bench.report.read import GU, K9, MAXPOOL, REFERENCE
from bench.report.readout import BOUNDED, CLIPPED, MINUS, NOT_MEASURED
from bench.report.table import Table, _budget, _width
from bench.stats import VERDICT_RULE


def claims(main: pd.DataFrame, targets: Sequence[float], *, manifest: dict | None = None,
           cells: pd.DataFrame | None = None, store: pd.DataFrame | None = None) -> list[Claim]:
    """The rows of the scoreboard (see :data:`SCOREBOARD_RULES`): C1-C4, the counter-claim C6,
    C5 (routing vs pooling: :func:`bench.report.routing.routing_claim`) when ``main`` has
    ``head-*`` models, and the secondary read-out S1 (distortion detection), with Holm-adjusted
    p-values over the claims that are not secondary.

    Args:
        main: the rows of ``metrics.csv`` of the affNIST setup.
        targets: the profile's clean-accuracy targets (C2 uses the highest one both models reach
            on every seed).
        manifest: ``manifest.json`` (the width and step budget of the "Measured at" column, and
            the profile's models), if any.
        cells: :func:`read_cells` of ``cells.csv`` (steps, labelled images, convergence), if any.
        store: the per-image store (:func:`bench.report.store.read_store`), if any: the
            intervals then include test-digit sampling.
    """
    ctx = _Context(main, manifest, cells, store)
    other, shown = AFFNIST_STYLE.name, AFFNIST_STYLE.display
    rows = [
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
        _arrangement_claim(ctx, Claim(
            "C3", "arrangement specificity",
            "arrangement specificity, kept if intact correct on displaced (parts moved apart, "
            f"arrangement kept) minus on scrambled, {REFERENCE} {MINUS} {MAXPOOL}",
            "the CapsNet's answer depends more on the arrangement of parts than the max-pooling "
            "ConvNet's: it keeps its answer more when parts are only moved apart, relative to "
            "when they are scrambled", 0.0, "pp"), REFERENCE, MAXPOOL),
        _matched_claim(ctx, Claim(
            "C4", "capsule head vs fully connected head on the same 9x9 trunk",
            f"{shown} accuracy at matched clean accuracy c*, {REFERENCE} {MINUS} {K9} (an "
            "ablation: the CapsNet with its capsule layer replaced by a fully connected head, "
            "cross-entropy, no squash, no reconstruction)",
            f"the capsule head (capsule layer, routing, squash, margin loss, reconstruction) "
            f"keeps more {shown} accuracy than a fully connected head with cross-entropy on the "
            "same 9x9 trunk at the same clean accuracy. Not Gu, Tresp & Hu's test: their "
            "account also predicts this direction", 0.0, "pp"),
            REFERENCE, K9, other),
        _counter_claim(ctx, other, shown),
        _adversarial_claim(ctx),
        _overlap_claim(ctx),
    ]
    if any(str(m).startswith("head-") for m in main["model"]):
        rows.append(routing_report.routing_claim(main, key="C5", scale=ctx.scale, cells=cells))
    rows.append(_part_claim(ctx, Claim(
        "S1", "distortion detection (secondary)",
        "AUROC intact vs scrambled by feature density (class-conditional Mahalanobis; flags "
        f"any distortion, displaced digits too), {REFERENCE} {MINUS} {MAXPOOL}",
        "the CapsNet's representation flags scrambled digits as unusual more reliably than "
        "the max-pooling ConvNet's, by the same label-free density score; a read-out of "
        "distortion detection, not of part arrangement", 0.0, "AUROC", secondary=True),
        REFERENCE, MAXPOOL))
    config = ((manifest or {}).get("profile") or {}).get("config") or {}
    analysis = config.get("analysis") if isinstance(config.get("analysis"), dict) else None
    _holm(rows, analysis)
    external = external_claims(ctx, targets)
    _holm(external)
    if analysis:  # the plan names the suite's rows only: every external row is exploratory
        for c in external:
            c.role = "exploratory"  # a family of its own: the suite's verdicts do not depend on what is added
    return rows + external


def _counter_claim(ctx: _Context, other: str, shown: str) -> Claim:
    """C6: Gu, Tresp & Hu's ConvNet minus the CapsNet at matched clean accuracy, when the run
    has :data:`GU` cells; "not measured" otherwise."""
    claim = Claim(
        "C6", "counter-claim",
        f"{shown} accuracy at matched clean accuracy c*, {GU} {MINUS} {REFERENCE}",
        f"Gu, Tresp & Hu's ConvNet (9x9 kernels, average pooling) keeps more {shown} "
        "accuracy than the CapsNet at the same clean accuracy (their counter-claim, CVPR "
        "2021)", 0.0, "pp")
    if GU not in set(ctx.main["model"]):
        claim.reason = (f"{NOT_MEASURED} (Gu, Tresp & Hu's ConvNet, {GU}, has no cells in this "
                        "run)")
        return claim
    return _matched_claim(ctx, claim, GU, REFERENCE, other)


def _adversarial_claim(ctx: _Context) -> Claim:
    """C7: accuracy under PGD at the stated budget, at matched clean accuracy, CapsNet minus the
    max-pooling ConvNet (:mod:`bench.cell.adversarial`)."""
    eps = adversarial_report.stated_budget(ctx.manifest)
    claim = Claim(
        "C7", "adversarial robustness",
        "accuracy under white-box PGD (L∞, "
        + (f"ε = {eps:g}" if eps is not None else "the profile's stated budget")
        + f") at matched clean accuracy c*, {REFERENCE} {MINUS} {MAXPOOL}",
        "the CapsNet keeps more accuracy under a white-box L∞ attack than the max-pooling "
        "ConvNet at the same clean accuracy (claimed for EM-routing capsules on smallNORB by "
        "Hinton, Sabour & Frosst 2018, not for this dynamic-routing CapsNet; disputed by "
        "Michels et al. 2019 and Gu, Wu & Tresp 2021); an attack's accuracy is an upper bound "
        "on robust accuracy; read with the gradient-masking checks",
        0.0, "pp")
    if eps is None:
        claim.reason = f"{NOT_MEASURED} (the profile attacks no cell: data.attack.n = 0)"
        return claim
    return _matched_claim(ctx, claim, REFERENCE, MAXPOOL, adversarial_name("pgd", eps))


def _overlap_claim(ctx: _Context) -> Claim:
    """C8: top-2 accuracy on overlapping digits at matched clean accuracy, CapsNet minus the
    max-pooling ConvNet; models trained on single digits."""
    claim = Claim(
        "C8", "overlapping digits",
        f"top-2 accuracy on overlapping digits (both among the two highest scores) at matched "
        f"clean accuracy c*, {REFERENCE} {MINUS} {MAXPOOL}; trained on single digits",
        "the CapsNet names both of two overlapping digits more often than the max-pooling "
        "ConvNet at the same clean accuracy; models trained on single digits, so not the "
        "experiment of Sabour et al. 2017, Sec. 6 (trained on MultiMNIST) and not comparable "
        "with its numbers; chance for top-2 is 1 in 45", 0.0, "pp")
    if OVERLAP.name not in set(ctx.main["test_set"]):
        claim.reason = f"{NOT_MEASURED} (no {OVERLAP.display} set in this run)"
        return claim
    return _matched_claim(ctx, claim, REFERENCE, MAXPOOL, OVERLAP.name)


def _holm(rows: list[Claim], analysis: dict | None = None) -> None:
    """Holm-adjusted p-values over the rows that are claims (not secondary, measured), from
    each interval's t statistic (:func:`bench.stats.p_value`).

    With a pre-registered ``analysis`` (the profile's ``[analysis]``, :class:`AnalysisConfig`
    as the manifest recorded it): the primary claim alone at 5 % (its p-value unadjusted); the
    secondary claims Holm-adjusted among themselves, a claim not measured (or whose digit
    resampling is undefined) counted with p = 1 so that the family is the plan's and not the
    data's; the secondary claims are tested only when the primary rejects no effect (a
    gatekeeping order: the family-wise error over both stays at 5 %); every other row of the
    suite's scoreboard is exploratory."""
    if not analysis:
        family = [c for c in rows if not c.secondary and c.interval is not None]
        adjusted = stats.holm_adjusted([stats.p_value(c.interval, c.null) for c in family])
        for c, p in zip(family, adjusted, strict=True):
            c.p_adjusted = float(p)
        return
    by_key = {c.key: c for c in rows}
    primary_key, secondary_keys = str(analysis.get("primary", "")), list(analysis.get("secondary", []))

    def p_of(c: Claim | None) -> float:
        if c is None or c.interval is None or c.digits_undefined:
            return 1.0
        return float(stats.p_value(c.interval, c.null))

    for c in rows:
        if c.key != primary_key and c.key not in secondary_keys and not c.secondary:
            c.role = "exploratory"
    primary = by_key.get(primary_key)
    p_primary = p_of(primary)
    if primary is not None:
        primary.role, primary.p_adjusted = "primary", p_primary
    gate_open = p_primary <= 0.05
    adjusted = stats.holm_adjusted([p_of(by_key.get(k)) for k in secondary_keys])
    for k, p in zip(secondary_keys, adjusted, strict=True):
        if (c := by_key.get(k)) is not None:
            c.role, c.p_adjusted, c.gate_closed = "secondary", float(p), not gate_open


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
    ConvNet), a ``convnet`` model the place of Gu et al.'s ConvNet in the counter-claim C6
    (against the CapsNet). Keys are the claim's and the model's, e.g. ``C1/my-capsnet``; a
    ``head`` model has no row. Holm's adjustment runs over these rows as a family of their own."""
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
                _arrangement_claim(ctx, Claim(
                    f"C3/{m}", "arrangement specificity",
                    "arrangement specificity, kept if intact correct on displaced minus on "
                    f"scrambled, {m} {MINUS} {MAXPOOL}",
                    f"{m}'s answer depends more on the arrangement of parts than the max-pooling "
                    "ConvNet's (C3 with it in the CapsNet's place)", 0.0, "pp"), m, MAXPOOL),
            ]
        elif family == "convnet":
            rows.append(_matched_claim(ctx, Claim(
                f"C6/{m}", "counter-claim",
                f"{shown} accuracy at matched clean accuracy c*, {m} {MINUS} {REFERENCE}",
                f"{m} keeps more {shown} accuracy than the CapsNet at the same clean accuracy "
                f"(C6 with it in {GU}'s place)", 0.0, "pp"), m, REFERENCE, other))
    return rows


def claim_sides(key: str) -> tuple[str, str]:
    """What an effect below and above no effect means for claim ``key`` (an external model's
    rows, ``C1/NAME``, read as the claim with NAME in its place)."""
    base, _, model = key.partition("/")
    if not model:
        return CLAIM_SIDES.get(key, ("", ""))
    if base not in ("C1", "C2", "C3", "C6"):
        return ("", "")
    ref = GU if base == "C6" else REFERENCE
    below, above = CLAIM_SIDES[base]
    return below.replace(ref, model), above.replace(ref, model)


SCOREBOARD_RULES = [
    f"C1, C4 and C6 compare the {AFFNIST_STYLE.display} accuracy of two models (C7 their accuracy "
    "under PGD, C8 their top-2 accuracy on overlapping digits) at the same clean accuracy c*, "
    "the highest clean accuracy both reach on every seed: each seed's accuracy is "
    "read at c* along its curve of increasing n by linear interpolation between sizes (the "
    "interpolation's error is not in the interval).",
    "C2 takes the training-set size at which each seed's clean accuracy first reaches the "
    "highest of the profile's targets that both models reach on every seed (linear in log n "
    "between sizes), and the geometric mean of the per-seed ratios. The target is chosen by "
    "this fixed rule from the run's results.",
    "C3 is behavioural: of the digits a model classifies correctly intact, the fraction that "
    "keeps its class when the digit's parts are moved apart with their arrangement kept "
    "(displaced) minus the fraction that keeps it when the parts are scrambled, at the largest "
    "n; a model that reads the arrangement of parts keeps the first and loses the second. "
    "S1 (secondary, outside the family of claims) is the AUROC of telling intact from "
    "scrambled digits by a label-free feature-density score (minus the smallest "
    "class-conditional Mahalanobis distance of the model's representation, class means and one "
    "shared Ledoit-Wolf covariance fitted on the cell's held-out validation images); it flags "
    "any distortion, displaced digits as much as scrambled ones, so it reads distortion "
    "detection, not part arrangement.",
    "C4 is an ablation of the capsule layer: convnet-k9 is the CapsNet's own 9x9 trunk with a "
    "fully connected head, cross-entropy, no squash and no reconstruction. Gu, Tresp & Hu "
    "(2021) find those components helpful, so their account predicts C4's positive side too; "
    f"their counter-claim is C6, read on their ConvNet ({GU}) when the run has it.",
    routing_report.SCOREBOARD_RULE,
    "Intervals: 95 %, paired over seeds (Student t on the per-seed differences; for C2 on the "
    "log ratios, exponentiated). The estimate column adds test-digit sampling where the run has "
    "the per-image store (predictions.parquet): the seed variance plus the variance of the "
    "seed-averaged effect over 1,000 resamples of the test digits (a digit keeps all its "
    "transforms and its scrambled twins; every accuracy, c* and read-out recomputed per "
    "resample), with the seeds' t quantile; the verdict reads it. The seeds-only column holds "
    "the test digits fixed. C2, S1 and C5 have no digit resample: both columns agree. "
    f"{CLIPPED}: clipped to the possible range; {BOUNDED}: some seed reached the target at the "
    "smallest n, where the size is only an upper bound.",
    "Holm verdict: Holm's step-down adjustment (Holm 1979) of the two-sided p-values of the "
    "claims' t statistics (the same standard errors as the intervals) over the claims measured "
    "in this run, at family-wise 5 %; S1 is outside the family. With 3 to 5 seeds the seed "
    "spread is itself estimated from a handful of values: a narrow interval can be luck.",
]
# The claims each rule of SCOREBOARD_RULES explains: a note is printed when one of them is
# measured in the run (an empty tuple: always).
RULE_KEYS: list[tuple[str, ...]] = [("C1", "C4", "C6", "C7", "C8"), ("C2",), ("C3", "S1"),
                                    ("C4",), ("C5",), (), ()]


# What an effect below and above no effect means, per claim key (the forest plot writes them in
# each panel's lower corners): each claim has its own sign convention.
CLAIM_SIDES = {
    "C1": (f"{MAXPOOL} better", f"{REFERENCE} better"),
    "C2": (f"{MAXPOOL} needs fewer", f"{REFERENCE} needs fewer"),
    "C3": (f"{MAXPOOL} more arrangement-specific", f"{REFERENCE} more arrangement-specific"),
    "C4": ("fully connected head better", "capsule head better"),
    "C5": ("pooling better", "routing better"),  # best routing head - best pooling head
    "C6": (f"{REFERENCE} better", f"{GU} better"),
    "C7": (f"{MAXPOOL} more robust", f"{REFERENCE} more robust"),
    "C8": (f"{MAXPOOL} names both more", f"{REFERENCE} names both more"),
    "S1": (f"{MAXPOOL} separates better", f"{REFERENCE} separates better"),
}

def sign_note(keys: set[str]) -> str:
    """How each of the measured claims ``keys`` is signed (only those: a note on a claim the run
    did not measure misleads more than it helps)."""
    diffs = [k for k in ("C1", "C3", "C4", "C7", "C8", "S1") if k in keys]
    parts = []
    if diffs:
        parts.append(f"{_join(diffs)} {'is' if len(diffs) == 1 else 'are'} {REFERENCE} {MINUS} "
                     "the other model")
    if "C2" in keys:
        parts.append(f"C2 is {MAXPOOL} ÷ {REFERENCE}")
    if "C6" in keys:
        parts.append(f"C6 is {GU} {MINUS} {REFERENCE}")
    ratio = " (above 1 for the ratio C2)" if "C2" in keys else ""
    text = (f"Signs: each effect is signed so that a positive value{ratio} is the claim's "
            "direction" + (": " + ", ".join(parts) if parts else "") + ".")
    flipped = [k for k in ("C1", "C4") if k in keys]
    if flipped:
        text += (f" The tables below write model {MINUS} {REFERENCE}"
                 + (f" (model ÷ {REFERENCE} for ratios)" if "C2" in keys else "")
                 + f", so {_join(flipped)} appear{'s' if len(flipped) == 1 else ''} in the "
                 "matched-accuracy table with the opposite sign.")
    if "C5" in keys:
        text += (f" C5 (runs with routing heads) is routing head {MINUS} pooling head: positive "
                 "means the routing head keeps more.")
    return text


def _join(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


# What this run's design cannot show; printed under the scoreboard (report.md) and pointed to by
# the LaTeX caption.
CANNOT_SHOW_TITLE = "What this run cannot show"

CLAIMS_CAPTION = (
    "Claims made for capsules: paired effect, 95 % interval (over seeds and test digits where "
    "the run has the per-image store; C2, S1 and C5 over seeds only), raw and Holm-adjusted "
    "verdicts. Exploratory unless its plan was committed before it. Small models, short "
    "budget, matched far below the paper's 99.2 % clean, in-house affNIST-style set; "
    "interpolation error not in the intervals. convnet-maxpool is a parameter-matched "
    "stand-in for Sabour et al.'s baseline; convnet-k9 is an ablation, not Gu et al.'s "
    "ConvNet. See report.md, \"What this run cannot show\".")


def cannot_show(manifest: dict | None, rows: list[Claim]) -> list[str]:
    """At most six lines on what the run's design cannot show: scale, budget sensitivity,
    pre-registration, test-set provenance, the controls' identities."""
    config = (((manifest or {}).get("profile") or {}).get("config") or {})
    width = (config.get("model") or {}).get("width")
    c_star = next((c.effect.split("c* = ")[1].split("%")[0] for c in rows
                   if c.key == "C1" and "c* = " in c.effect), None)
    scale = "Scale: " + ", ".join(x for x in (
        f"width {_width(width)}" if isinstance(width, (int, float)) else "",
        _budget(config),
        f"matched at c* = {c_star} % clean" if c_star else "") if x)
    return [
        f"- {scale}; Sabour et al. matched at 99.23 / 99.22 %, with full-size models.",
        budget_line(config),
        design_line(manifest),
        "- Test set: affNIST-style, generated in-house after affNIST's recipe, not the official "
        "affNIST test set.",
        controls_line(config.get("models")),
    ]


CONTROLS = {
    MAXPOOL: f"{MAXPOOL} is matched to the CapsNet's classifier parameters with a smaller trunk",
    K9: f"{K9} is the CapsNet's trunk with a fully connected head (an ablation)",
    GU: f"{GU} is our reading of Gu et al.'s ConvNet (bench/models/convnet_gu.py)",
}


def controls_line(models: object) -> str:
    """The "Controls" line of :func:`cannot_show`: what each ConvNet of the run stands for (every
    one when the manifest does not list the models)."""
    named = [m for m in CONTROLS if not isinstance(models, list) or m in models]
    if not named:
        return "- Controls: no ConvNet of the scoreboard's claims is in this run."
    return "- Controls: " + "; ".join(CONTROLS[m] for m in named) + "."


def budget_line(config: dict) -> str:
    """The "Budget" line of :func:`cannot_show`: what the run's budget-stability check (if any)
    does and does not settle."""
    check = config.get("budget_check")
    if isinstance(check, dict) and isinstance(check.get("factor"), (int, float)):
        return (f"- Budget: the Budget column says whether each difference it repeats kept its "
                f"sign and an overlapping interval at {check['factor']:g}× the steps on the "
                "check's seeds (same n, not matched); a still longer budget may move it again, "
                "and rows without a check (not checked) say nothing about the budget.")
    return ("- Budget: the verdicts are pre-asymptotic; in a separate 3-seed run (the committed "
            "decoder example: n = 3,000, another test-digit draw) the CapsNet at 2,400 steps "
            "scored about 10 points more affNIST-style (3 more clean) than quick's CapsNet at "
            "800; not a like-for-like budget effect, and no run has measured the ConvNets' "
            "response.")


def design_line(manifest: dict | None) -> str:
    """The "Design" line of :func:`cannot_show`: pre-registered (the manifest's ``plan``) or not,
    and qualified when the run departed from the plan's commit (the plan or the profile changed
    after it, uncommitted changes, ``--set`` values)."""
    plan = (manifest or {}).get("plan")
    if not (isinstance(plan, dict) and plan.get("commit") not in (None, "unknown")):
        return ("- Design: the profile, sizes and targets were chosen after earlier runs of this "
                "suite, not fixed before this one; no verdict here is confirmatory.")
    departures = [what for what, flag in (
        ("the plan changed after its commit", plan.get("plan_changed_since")),
        ("the profile changed after the plan's commit", plan.get("profile_changed_since")),
        ("the run's code had uncommitted changes",
         str((manifest or {}).get("git_commit", "")).endswith("+dirty")),
        (f"values were overridden with --set ({', '.join(plan.get('overrides') or [])})",
         bool(plan.get("overrides")))) if flag]
    line = (f"- Design: the profile and its analysis plan (`{plan.get('path')}`, commit "
            f"`{str(plan['commit'])[:12]}`) were committed before this run; the "
            "Pre-registration section lists the deviations. Rows the plan does not name are "
            "exploratory.")
    if departures:
        line += (" But " + "; ".join(departures) + ": the run is not the pre-registered one "
                 "unless the deviations say why that cannot change a verdict.")
    return line


EXTERNAL_NOTE = (
    "Rows C1/NAME to C4/NAME read a claim again with NAME, a model from another package (named "
    "with its package and version under Run), in the place of the suite's model of its family: "
    f"a capsule model in {REFERENCE}'s place in C1 to C3, a ConvNet in {K9}'s place in C4; they "
    "are signed as the claim they repeat.")


def _claims_table(rows: list[Claim], control: str | None = None, budget: bool = False) -> Table:
    """The scoreboard; ``control`` (:func:`displaced_control`) is its first note when given;
    ``budget``: the run has budget-stability check cells, and the table a "Budget" column
    (:attr:`Claim.budget_stable`, :mod:`bench.report.budget`)."""
    header = ["Claim", "Effect", "Estimate [95% interval, seeds and digits]", "No effect",
              "Measured at", "Verdict", "Holm verdict", "Seeds only [95% interval]",
              "Published (source; conditions)"] + (["Budget"] if budget else [])
    body = [[f"{c.key} {c.name}", c.effect, c.estimate_text(), c.null_text(),
             c.scale or "—", c.verdict, c.holm_verdict, c.seed_text(),
             published_text(c.key)] + ([c.budget_stable] if budget else []) for c in rows]
    # Only the measured rows' signs, meanings and the rules that explain them (our choice: a note
    # on a model or table the run lacks misleads more than it helps).
    measured = [c for c in rows if c.interval is not None]
    keys = {c.key.split("/")[0] for c in measured}
    notes = ([control] if control else []) + ([sign_note(keys)] if keys else [])
    if any("/" in c.key for c in rows):
        notes.append(EXTERNAL_NOTE)
    notes += [f"{c.key} supported means: {c.meaning}." for c in measured]
    notes += [rule for rule, rule_keys in zip(SCOREBOARD_RULES, RULE_KEYS, strict=True)
              if not rule_keys or keys & set(rule_keys)]
    notes += [f"Verdicts: {VERDICT_RULE}"]
    roles = {c.role: [d.key for d in rows if d.role == c.role] for c in rows if c.role}
    if roles:
        notes.append(
            "Pre-registered analysis (the run's plan, its [analysis] table): the primary claim "
            f"({', '.join(roles.get('primary', [])) or 'none'}) is tested alone at 5 % (its "
            "Holm verdict is its own); the secondary claims "
            f"({', '.join(roles.get('secondary', [])) or 'none'}) are Holm-adjusted among "
            "themselves, a claim not measured counted with p = 1, and tested only when the "
            "primary rejects no effect (a gatekeeping order: the family-wise error over both is "
            "at most 5 %); the other rows are exploratory. This replaces the Holm family above.")
    if any(c.digits_undefined for c in rows):
        notes.append("Seeds only: where the per-image store's digit resampling left a read-out "
                     "undefined in more than 10 % of the resamples (c* or a size missing), the "
                     "interval shown is the seeds-only one and the verdict is inconclusive.")
    if budget:
        notes.append(f"Budget: {BUDGET_RULE} The numbers are in the table \"{BUDGET_TITLE}\".")
    return Table("claims", "The claims made for capsules, each measured as one effect with its "
                 "95% interval over seeds and test digits, the verdict its interval gives, and "
                 "the Holm-adjusted verdict.",
                 header, body, "llrllllrl" + ("l" if budget else ""), notes,
                 tex_columns=(r"p{0.08\linewidth}p{0.17\linewidth}rlp{0.15\linewidth}ll"
                              r"rp{0.15\linewidth}" + ("l" if budget else "")),
                 wide=True, caption=CLAIMS_CAPTION)


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
            "holm_verdict": c.holm_verdict,
            "note": c.reason, "below": claim_sides(c.key)[0],
            "above": claim_sides(c.key)[1],
        })
    return pd.DataFrame(out)
