"""Report section "Adversarial robustness and overlapping digits": the sets behind C7 and C8.

Written when a run has adversarial sets (:mod:`bench.cell.adversarial`) or the
overlapping-digits set. Numbers are read at each model's largest attacked n, as means over seeds:

- the accuracy table: clean, FGSM and PGD at every budget, the vote attack, the Square attack and
  the transfer attack at the stated budget, and the overlapping-digits read-outs (top-2 accuracy,
  digit recall);
- the gradient-masking checks of :func:`bench.metrics.masking_checks` per model, pooled over its
  attacked cells (images of all seeds together); a model failing any check is flagged: its
  white-box numbers are then a bound the attack did not reach, not robustness;
- the figure of accuracy against the budget (PGD solid, FGSM dashed), and the figure of example
  attacked and overlapping images with each model's answers.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import pyplot as plt

from bench import metrics
from bench.cell import adversarial
from bench.data.testsets import CLEAN, OVERLAP, adversarial_name, find_set_kind
from bench.report import figures
from bench.report.table import Table

TITLE = "Adversarial robustness and overlapping digits"
CHECKS_TITLE = "Gradient-masking checks"
FIGURE_STEM = "adversarial"
EXAMPLES_STEM = "adversarial_examples"
FIGURE_CAPTION = ("Accuracy under white-box L∞ attacks against the budget ε (fraction of the "
                  "pixel range), at each model's largest attacked n, mean over seeds: PGD solid, "
                  "FGSM dashed; the stated budget of C7 marked.")
EXAMPLES_CAPTION = ("Top: overlapping digits (the two digits' classes in the corner) and each "
                    "model's two highest classes at its largest n, first seed. Below: PGD images "
                    "at the stated budget made against each model, with its answer (true → "
                    "predicted).")
TRANSFER_FILE, EXAMPLES_FILE = adversarial.TRANSFER_FILE, adversarial.EXAMPLES_FILE


def attack_settings(manifest: dict | None) -> dict:
    """The run's ``data.attack`` settings as ``manifest.json`` recorded them ({} for a run made
    before the adversarial sets)."""
    config = ((manifest or {}).get("profile") or {}).get("config") or {}
    return (config.get("data") or {}).get("attack") or {}


def stated_budget(manifest: dict | None) -> float | None:
    """The budget C7 reads (the profile's ``data.attack.stated_budget``), or None when the run
    attacked no cell (``data.attack.n = 0``, or a run made before the adversarial sets)."""
    attack = attack_settings(manifest)
    if not attack.get("n"):
        return None
    return float(attack["stated_budget"])


def attack_sets(main: pd.DataFrame) -> dict[str, dict[float, str]]:
    """attack -> {budget: set name} of the adversarial sets ``main`` has."""
    out: dict[str, dict[float, str]] = {}
    for t in main["test_set"].unique():
        k = find_set_kind(str(t))
        if k is not None and k.family == "adversarial":
            out.setdefault(str(k.factor), {})[float(k.budget)] = str(t)
    return out


def _at_largest(main: pd.DataFrame, model: str, test_set: str,
                metric: str = "accuracy") -> tuple[int | None, dict[int, float]]:
    rows = main[(main["model"] == model) & (main["test_set"] == test_set)
                & (main["metric"] == metric) & main["factor_value"].isna()]
    if rows.empty:
        return None, {}
    n = int(rows["n"].max())
    rows = rows[rows["n"] == n]
    return n, {int(s): float(v) for s, v in zip(rows["seed"], rows["value"], strict=True)}


def _mean(d: dict[int, float]) -> float:
    return float(np.mean(list(d.values()))) if d else math.nan


def _pct(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{100 * x:.1f}"


def model_accuracies(main: pd.DataFrame, model: str) -> tuple[int | None, dict[str, float]]:
    """(the model's largest attacked n, set name -> mean accuracy over seeds at that n) for its
    adversarial sets and clean, read at the largest n that has a PGD set."""
    sets = attack_sets(main)
    pgd = sets.get("pgd", {})
    n = None
    for t in pgd.values():
        m, _ = _at_largest(main, model, t)
        n = m if n is None or (m is not None and m > n) else n
    if n is None:
        return None, {}
    sub = main[main["n"] == n]
    out = {CLEAN.name: _mean(_at_largest(sub, model, CLEAN.name)[1])}
    for by_eps in sets.values():
        for t in by_eps.values():
            out[t] = _mean(_at_largest(sub, model, t)[1])
    return n, out


def transfer_accuracy(transfer: pd.DataFrame | None, model: str, n: int | None) -> float | None:
    """The transfer attack's accuracy on ``model`` at ``n`` (all seeds' images), or None."""
    if transfer is None or n is None:
        return None
    rows = transfer[(transfer["model"] == model) & (transfer["n"] == n)]
    return float(rows["correct"].mean()) if not rows.empty else None


def _pgd_on_square_digits(store: pd.DataFrame | None, model: str, n: int, stated: float
                          ) -> float | None:
    """PGD's accuracy on the digits the Square attack had (the first ``square_n``), from the
    store, so that the two are compared on the same images."""
    if store is None:
        return None
    sq, pgd = adversarial_name("square", stated), adversarial_name("pgd", stated)
    s = store[(store["model"] == model) & (store["n"] == n)]
    sq_rows = s[s["test_set"] == sq]
    if sq_rows.empty:
        return None
    keys = sq_rows[["seed", "source"]].drop_duplicates()
    p = s[s["test_set"] == pgd].merge(keys, on=["seed", "source"])
    return float(p["correct"].mean()) if not p.empty else None


def checks(main: pd.DataFrame, models: Sequence[str], stated: float,
           store: pd.DataFrame | None, transfer: pd.DataFrame | None
           ) -> dict[str, list[tuple[str, bool | None, str]]]:
    """model -> :func:`bench.metrics.masking_checks` at its largest attacked n."""
    sets = attack_sets(main)
    out = {}
    for m in models:
        n, acc = model_accuracies(main, m)
        if n is None:
            continue

        def by_eps(attack: str, acc=acc) -> dict[float, float]:
            return {e: acc[t] for e, t in sets.get(attack, {}).items()
                    if math.isfinite(acc.get(t, math.nan))}

        square = acc.get(adversarial_name("square", stated))
        votes = acc.get(adversarial_name("pgd-votes", stated))
        out[m] = metrics.masking_checks(
            by_eps("pgd"), by_eps("fgsm"), stated,
            transfer=transfer_accuracy(transfer, m, n),
            square=square if square is not None and math.isfinite(square) else None,
            pgd_on_square_digits=_pgd_on_square_digits(store, m, n, stated),
            votes=votes if votes is not None and math.isfinite(votes) else None)
    return out


def flagged(results: list[tuple[str, bool | None, str]]) -> bool:
    """Whether any check failed (a check without data does not flag)."""
    return any(passed is False for _, passed, _ in results)


def accuracy_table(main: pd.DataFrame, models: Sequence[str], stated: float | None,
                   store: pd.DataFrame | None, transfer: pd.DataFrame | None) -> Table | None:
    """One row per model: clean, every attack and budget, overlap read-outs, masking flag."""
    sets = attack_sets(main)
    has_overlap = OVERLAP.name in set(main["test_set"])
    if not sets and not has_overlap:
        return None
    budgets = sorted({e for by in sets.values() for e in by})
    cols: list[tuple[str, str]] = []  # (header, set name)
    for attack in ("fgsm", "pgd"):
        cols += [(f"{attack.upper()} ε={e:g}", sets[attack][e]) for e in budgets
                 if e in sets.get(attack, {})]
    for attack, label in (("pgd-votes", "votes"), ("square", "Square")):
        cols += [(f"{label} ε={e:g}", t) for e, t in sorted(sets.get(attack, {}).items())]
    flags = checks(main, models, stated, store, transfer) if stated is not None else {}
    header = ["model", "n", "clean", *[h for h, _ in cols]]
    if transfer is not None and stated is not None:
        header.append(f"transfer ε={stated:g}")
    if has_overlap:
        header += ["overlap top-2", "digit recall"]
    header.append("masking")
    rows = []
    for m in models:
        n, acc = model_accuracies(main, m)
        row = [m]
        if n is None:  # overlap only
            on, top2 = _at_largest(main, m, OVERLAP.name, "top2_accuracy")
            if on is None:
                continue
            n, acc = on, {CLEAN.name: _mean(_at_largest(main[main["n"] == on], m,
                                                        CLEAN.name)[1])}
        row += [f"{n:,}", _pct(acc.get(CLEAN.name, math.nan))]
        row += [_pct(acc.get(t, math.nan)) for _, t in cols]
        if transfer is not None and stated is not None:
            tr = transfer_accuracy(transfer, m, n)
            row.append(_pct(tr if tr is not None else math.nan))
        if has_overlap:
            sub = main[main["n"] == n]
            row += [_pct(_mean(_at_largest(sub, m, OVERLAP.name, "top2_accuracy")[1])),
                    _pct(_mean(_at_largest(sub, m, OVERLAP.name, "digit_recall")[1]))]
        row.append("flagged" if m in flags and flagged(flags[m])
                   else ("passed" if m in flags else "—"))
        rows.append(row)
    if not rows:
        return None
    notes = [
        "Accuracy (%) at each model's largest attacked n, mean over seeds; clean: on the whole "
        "clean set (the attacked digits are its first ones). Attacks (Adversarial Robustness "
        "Toolbox): white-box L∞ on the first clean test digits, softmax cross-entropy on the "
        "model's logits (for capsule models the capsule lengths used as logits, a weaker "
        "objective than a margin on real logits); votes: PGD on the same weights with one "
        "routing iteration (uniform coupling), scored on the model as trained; Square: "
        "gradient-free, on fewer digits (the profile's square_n); transfer: PGD images made on "
        "the next model of the profile's list. Every attack's accuracy is an upper bound on "
        "robust accuracy.",
        "Overlap: two test digits of different classes, each shifted up to 4 px, pixel-wise "
        "max; top-2: both digits are the two highest class scores; digit recall: the share of "
        "digits among their image's top two. The models were trained on single digits "
        "(Sabour et al. 2017 trained on MultiMNIST).",
        "masking: 'flagged' when a gradient-masking check failed (next table): the attack "
        "then failed for a reason other than robustness; 'passed': these checks found none.",
    ]
    return Table("adversarial", "Adversarial and overlapping-digit accuracy (%).", header, rows,
                 "lr" + "r" * (len(header) - 2), notes)


def checks_table(main: pd.DataFrame, models: Sequence[str], stated: float | None,
                 store: pd.DataFrame | None, transfer: pd.DataFrame | None) -> Table | None:
    """One row per model and check: passed / FAILED / not measured, with its numbers."""
    if stated is None or not attack_sets(main):
        return None
    rows = []
    for m, results in checks(main, models, stated, store, transfer).items():
        for name, passed, numbers in results:
            rows.append([m, name, {True: "passed", False: "FAILED", None: "—"}[passed], numbers])
    if not rows:
        return None
    notes = [f"Each model's attacked cells at its largest attacked n only (not the sizes the "
             f"scoreboard interpolates between), all seeds pooled, compared as aggregates; "
             f"tolerance {100 * metrics.MASKING_TOLERANCE:g} points (our choice). Weak checks at "
             "small scale: passing means only that these checks found no masking (a few "
             "thousand Square queries, several PGD restarts and a same-architecture transfer "
             "source would be stronger; the profile's settings are in its report header). "
             "After Carlini et al. 2019 (On Evaluating "
             "Adversarial Robustness, Sec. 5) and Athalye, Carlini & Wagner 2018: an iterative "
             "attack weaker than one step, accuracy that does not fall to near 0 as the budget "
             "grows, or a black-box or gradient-free attack stronger than the white-box one "
             "says the gradient misled the attack."]
    return Table("masking_checks", "Gradient-masking checks of the white-box attacks.",
                 ["model", "check", "result", "numbers"], rows, "llll", notes)


def budget_figure(main: pd.DataFrame, models: Sequence[str], stated: float | None,
                  stem: str | os.PathLike) -> list[Path] | None:
    """Accuracy against the budget per model (PGD solid, FGSM dashed), the clean accuracy at 0."""
    sets = attack_sets(main)
    if "pgd" not in sets:
        return None
    with figures._style():
        fig, ax = plt.subplots(figsize=(figures.PAGE_IN / 2, 2.4), layout="constrained")
        drawn = []
        for m in models:
            n, acc = model_accuracies(main, m)
            if n is None:
                continue
            drawn.append(m)
            for attack, style in (("pgd", "-"), ("fgsm", "--")):
                by = sets.get(attack, {})
                xs = [0.0, *sorted(by)]
                ys = [acc.get(CLEAN.name, math.nan), *(acc.get(by[e], math.nan) for e in sorted(by))]
                ax.plot(xs, [100 * y for y in ys], style, marker="o", markersize=3,
                        color=figures.model_color(m), label=f"{m} {attack.upper()}")
        if stated is not None:
            ax.axvline(stated, color="#999999", linestyle=":", linewidth=0.8)
        ax.set_xlabel("budget ε (L∞, fraction of the pixel range)")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.legend(fontsize=5, frameon=False, ncol=2)
        return figures.save(fig, stem) if drawn else None


def examples_figure(run_examples: dict | None, adv_examples: dict | None,
                    store: pd.DataFrame | None, models: Sequence[str],
                    stem: str | os.PathLike, k: int = 8) -> list[Path] | None:
    """Overlapping digits with each model's top two, and PGD images with each model's answer."""
    rows: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    key = f"images/{OVERLAP.name}"
    if run_examples is not None and key in run_examples and store is not None:
        o = store[(store["test_set"] == OVERLAP.name) & (store["index"] < k)]
        first = None
        for m in models:
            sub = o[o["model"] == m]
            if sub.empty:
                continue
            sub = sub[(sub["n"] == sub["n"].max())]
            sub = sub[sub["seed"] == sub["seed"].min()].sort_values("index")
            if first is None:
                first = sub
                truth = np.array([f"{a}+{b}" for a, b in zip(sub["label"], sub["label2"],
                                                             strict=True)], dtype=object)
                rows.append((f"{OVERLAP.display}\n(true)", figures._as_images(
                    run_examples[key], k, 255.0), truth))
            answers = np.array([f"{p},{s}" for p, s in zip(sub["pred"], sub["second"],
                                                            strict=True)], dtype=object)
            rows.append((f"{m}\ntop two", figures._as_images(run_examples[key], k, 255.0),
                         answers))
    if adv_examples:
        for m in models:
            images = adv_examples.get(f"images/{m}")
            if images is None:
                continue
            labels = adv_examples[f"labels/{m}"]
            preds = adv_examples[f"preds/{m}"]
            text = np.array([f"{int(a)}→{int(p)}" for a, p in zip(labels[:k], preds[:k],
                                                                   strict=True)], dtype=object)
            rows.append((f"{m}\nPGD", figures._as_images(images, k, 1.0), text))
    if not rows:
        return None
    with figures._style():
        return figures.save(figures._grid_figure(rows, k), stem)
