"""``python -m bench report RUN_DIR``: tables and figures of a run folder, no training.

Reads the tidy results of a run (``metrics.csv``, required; ``cells.csv``,
``predictions.parquet`` (the per-image store, :mod:`bench.report.store`; older runs:
``confidences.parquet``), ``throughput.csv``, ``examples.pt`` and ``manifest.json``, each
optional) and writes

- ``report.md``: first the claims scoreboard (each claim made for capsules, its effect with a
  95% interval paired over seeds, the scale it was measured at and the verdict of
  :func:`bench.stats.verdict`; under it the same C3 difference on the displaced set as a control,
  :func:`displaced_control`), then the tables, with a note for every part skipped because its
  input file is absent;
- ``tables/*.tex``: the same tables for a paper (booktabs rules, written here, no jinja2);
- ``figures/*.pdf|png``: the figures of :mod:`bench.report.figures`, among them the scoreboard as a
  forest plot (``claims``).

Every interval comes from :mod:`bench.stats`: a mean gets the Student-t interval over seeds
clipped to the metric's range (``†`` marks a clipped one), a comparison between two models is
paired by seed (the per-seed differences or log ratios), and a training-set size gets a
geometric interval. The figures' bands are the same intervals. No sentence of the report calls a
difference real unless its interval excludes no effect. The per-seed read-outs (c*, the n to
reach a target, ...) and the number formats are :mod:`bench.report.readout`'s, shared with the section
"Routing vs pooling, same backbone" (:mod:`bench.report.routing`, written when the run has
``head-*`` models).

Everything is a function of the input files and the report's code (no dates, no absolute
paths; the Run section names the last commit that changed the code), so rebuilding a report
with the same code gives byte-identical files, and the CI can compare them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.config import Profile
from bench.data.testsets import (
    AFFNIST_STYLE,
    CLEAN,
    sets_where,
)
from bench.io import load_torch, write_text
from bench.report import ablation as ablation_report
from bench.report import adversarial as adversarial_report
from bench.report import budget as budget_report
from bench.report import figures, figures_ablation, readout, robustness
from bench.report import routing as routing_report
from bench.report import store as store_mod
from bench.report.claims import displaced_control
from bench.report.read import (
    MAIN_SETUP,
    REFERENCE,
    _read_confidences,
    _read_optional,
    read_cells,
    read_metrics,
)
from bench.report.scoreboard import (
    CANNOT_SHOW_TITLE,
    _claims_table,
    cannot_show,
    claims,
    claims_frame,
)
from bench.report.sections import (
    DEVIATIONS_FILE,
    _calibration_table,
    _convergence,
    _data_efficiency_table,
    _headline_tables,
    _matched_table,
    _mnist_table,
    _probe_table,
    _recon_table,
    _run_section,
    _scrambled_table,
    _sweeps_table,
    _test_set_sizes,
    _throughput_tables,
    budget_grows_with_n,
    plan_section,
)
from bench.report.table import Table
from bench.report.text import FIGURE_CAPTIONS, NOTE_MEAN, TABLE_NAMES, how_to_read

__all__ = ["build_report"]


def _targets(manifest: dict | None, notes: list[str]) -> list[float]:
    prof = (manifest or {}).get("profile") or {}
    targets = prof.get("targets")
    if targets is None:
        targets = (prof.get("config") or {}).get("targets")
    if isinstance(targets, list):  # an empty list: the profile names no target (no C2)
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
    store, conf = None, None
    if (run_dir / store_mod.STORE).is_file():
        store = _read_optional(run_dir / store_mod.STORE, store_mod.read_store, notes)
    elif (run_dir / "confidences.parquet").is_file():  # runs made before the store
        conf = _read_optional(run_dir / "confidences.parquet", _read_confidences, notes)
    else:
        notes.append(f"`{store_mod.STORE}` absent: the intervals are over seeds only (no "
                     "test-digit resamples) and the confidence figure is skipped.")
    if store is not None:  # every accuracy from the per-image store
        df = store_mod.with_store_accuracy(df, store)
        conf = store_mod.confidence_frame(store)
    tp = _read_optional(run_dir / "throughput.csv", pd.read_csv, notes)
    examples = _read_optional(run_dir / "examples.pt", load_torch, notes)
    transfer = adv_examples = None
    if (run_dir / adversarial_report.TRANSFER_FILE).is_file():
        transfer = _read_optional(run_dir / adversarial_report.TRANSFER_FILE, pd.read_csv, notes)
    if (run_dir / adversarial_report.EXAMPLES_FILE).is_file():
        adv_examples = _read_optional(run_dir / adversarial_report.EXAMPLES_FILE, load_torch,
                                      notes)
    stated = adversarial_report.stated_budget(manifest)

    main = df[df["setup"] == MAIN_SETUP]
    models = figures.model_order(main["model"])
    targets = _targets(manifest, notes)
    board = claims(main, targets, manifest=manifest, cells=cells,
                   store=None if store is None else store[store["setup"] == MAIN_SETUP])
    checks = budget_report.check_claims(df, board)
    budget = budget_report.has_check(df)
    train_cfg = (((manifest or {}).get("profile") or {}).get("config") or {}).get("train") or {}
    convergence, convergence_table, not_converged = _convergence(cells, train_cfg)

    sections: list[tuple[str, Table | None, str]] = []
    if budget:
        sections.append((budget_report.TITLE, budget_report.budget_table(checks, manifest), ""))
    if convergence_table is not None:
        sections.append(("Cells that did not converge", convergence_table, ""))
    if main.empty:
        notes.append(f"No rows of setup `{MAIN_SETUP}` in `metrics.csv`: its tables and "
                     "figures are skipped.")
    else:
        er = robustness.effective_robustness(main)
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
            ("Per-factor sweeps", _sweeps_table(main, models, manifest), ""),
            ("Data efficiency", _data_efficiency_table(main, models, targets, budget_grows_with_n(
                None if cells is None else cells[cells["setup"] == MAIN_SETUP])), ""),
            ("Reconstructions", recon, recon_sentence),
        ]
        if er is not None:  # runs with ConvNet cells only
            sections.append(("Effective robustness (secondary)", robustness.table(er), ""))
        rt = routing_report.routing_table(main, targets)
        if rt is not None:
            sections.append((routing_report.TITLE,
                             dataclasses.replace(rt.table, notes=[NOTE_MEAN, *rt.table.notes]), ""))
            a, b = routing_report.chosen_pair(main, cells)
            pt = routing_report.pairs_table(main, (a, b) if a and b else None)
            if pt is not None:
                sections.append(("Routing vs pooling: every pair", Table(
                    "routing_pairs", "Routing vs pooling, every pair of heads (the C5 reading "
                    "for each).", pt[0], pt[1], "lrrllr", pt[2]), ""))
        # -- the adversarial and overlapping-digit sets (bench.report.adversarial) --
        main_store = None if store is None else store[store["setup"] == MAIN_SETUP]
        adv = adversarial_report.accuracy_table(main, models, stated, main_store, transfer)
        if adv is not None:
            sections.append((adversarial_report.TITLE, adv, ""))
            masking = adversarial_report.checks_table(main, models, stated, main_store,
                                                      transfer)
            if masking is not None:
                sections.append((adversarial_report.CHECKS_TITLE, masking, ""))
        # -- the component ladder (bench.report.ablation), when the run trains its steps --
        ladder = ablation_report.ablation_table(main)
        if ladder is not None:
            sections.append((ablation_report.TITLE, ladder.table, ""))
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
    if with_figures and not main.empty:
        main_store = None if store is None else store[store["setup"] == MAIN_SETUP]
        if adversarial_report.budget_figure(main, models, stated, run_dir / "figures" /
                                            adversarial_report.FIGURE_STEM):
            written_figures.append(adversarial_report.FIGURE_STEM)
        if adversarial_report.examples_figure(examples, adv_examples, main_store, models,
                                              run_dir / "figures" /
                                              adversarial_report.EXAMPLES_STEM):
            written_figures.append(adversarial_report.EXAMPLES_STEM)

    tables_dir = run_dir / "tables"
    scoreboard = _claims_table(board, displaced_control(main), budget=budget)
    written_tables = {scoreboard.name} | {t.name for _, t, _ in sections if t is not None}
    _remove_stale(tables_dir, [f"{n}.tex" for n in TABLE_NAMES if n not in written_tables])
    if with_figures:
        _remove_stale(run_dir / "figures", [f"{s}.{ext}" for s in FIGURE_CAPTIONS
                                            if s not in written_figures for ext in ("pdf", "png")])
    write_text(tables_dir / f"{scoreboard.name}.tex", scoreboard.latex())
    rows_end = scoreboard.markdown().split("\n\n", 1)
    deviations = run_dir / DEVIATIONS_FILE
    md = ["# capsbench report", "",
          *plan_section(manifest, deviations.read_text() if deviations.is_file() else None),
          "## Claims scoreboard", "", scoreboard.title, "",
          rows_end[0], "", f"### {CANNOT_SHOW_TITLE}", "", *cannot_show(manifest, board), "",
          "### Notes to the scoreboard", "", rows_end[1] if len(rows_end) > 1 else "", ""]
    if "claims" in written_figures:
        md += ["![claims](figures/claims.png)", "", f"*claims*: {FIGURE_CAPTIONS['claims']} "
               "(`figures/claims.pdf`)", ""]
    md += ["LaTeX: `tables/claims.tex`", ""]
    md += _run_section(manifest, df, convergence)
    md += _test_set_sizes(manifest, main)
    md += [how_to_read(set(df['model']))]
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
    er = robustness.effective_robustness(main) if not main.empty else None
    if er is not None:
        robustness.figure(er, out / robustness.FIGURE_STEM)
        done.append(robustness.FIGURE_STEM)
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
    # -- the component ladder's figure (bench.report.figures_ablation) --
    ladder = ablation_report.ablation_table(main) if not main.empty else None
    if ladder is not None:
        # the matched read-out when most comparisons have a c*, else the same-n one
        finite = {q: int(np.isfinite(ladder.values.loc[ladder.values["quantity"] == q,
                                                       "estimate"].to_numpy(float)).sum())
                  for q in ("affnist_matched", "affnist_same_n")}
        total = int((ladder.values["quantity"] == "affnist_matched").sum())
        quantity = ("affnist_matched" if finite["affnist_matched"] * 2 >= total
                    else "affnist_same_n")
        if finite[quantity]:
            figures_ablation.ladder(ladder.values, out / ablation_report.FIGURE_STEM, quantity)
            done.append(ablation_report.FIGURE_STEM)
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
