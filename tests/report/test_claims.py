"""The claims scoreboard on a run constructed by hand, where every number is known in advance.

Three models, two training-set sizes, five seeds; per-seed offsets ``DELTA`` (sum 0, sum of
squares 0.001) and ``EPS`` make the paired differences exact:

- clean accuracy: capsnet 0.80 -> ``C_S[s]`` (0.905 ... 0.925), convnet-maxpool 0.70 -> 0.96,
  convnet-k9 0.75 -> 0.95. So the highest clean accuracy that every model (and every pair with
  the CapsNet) reaches on every seed is c* = 0.905 (the CapsNet's seed 0);
- affNIST-style accuracy is linear in clean accuracy along each curve: capsnet clean - 0.10 +
  DELTA[s], convnet-maxpool clean - 0.20, convnet-k9 clean - 0.10 + EPS[s]. Read at c*: 0.805 +
  DELTA[s], 0.705 and 0.805 + EPS[s];
- C1 = capsnet - maxpool = 0.10 + DELTA[s]: mean 0.10, sd sqrt(0.001 / 4), 95% half-width
  t(0.975, 4) * sd / sqrt(5) = 2.7764 * 0.0070711 = 0.019632: [8.04, 11.96] pp, supported;
- C4 = capsnet - k9 = DELTA[s] - EPS[s] = (-0.03, 0, -0.01, 0.02, 0.02): mean 0, inconclusive;
- C2 at 90% (the CapsNet never reaches 95%): log10 n = 2 + (0.9 - a0) / (a1 - a0), so the
  ratio maxpool / capsnet is 10 ** (0.2 / 0.26 - 0.1 / (C_S[s] - 0.8)), below 1 on every seed:
  the ConvNet needs fewer images, contradicted;
- C3, arrangement specificity at n = 1000 (kept if intact correct, displaced minus scramble-g2):
  capsnet (0.60 + DELTA[s]) - 0.30, maxpool 0.80 - 0.35: -0.15 + DELTA[s], so
  -15.00 [-15 - 100 HALF, -15 + 100 HALF] pp, contradicted (n = 100 holds values that would say
  otherwise);
- S1 on scramble-g2 at n = 1000: capsnet 0.70 + DELTA[s], maxpool 0.80: -0.100 [-0.120, -0.080],
  contradicted (scramble-g3 and n = 100 hold values that would say otherwise);
- its control on the displaced set at n = 1000: capsnet 0.90 + DELTA[s], maxpool 0.85: +0.050
  [0.05 - 0.019632, 0.05 + 0.019632] = [0.030, 0.070] (n = 100 holds 0.50, which would say
  otherwise).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import figures
from bench.report.build import build_report
from bench.report.claims import displaced_control
from bench.report.read import read_cells, read_metrics
from bench.report.scoreboard import claims, claims_frame

SIZES = (100, 1000)
SEEDS = (0, 1, 2, 3, 4)
DELTA = (-0.02, -0.01, 0.0, 0.01, 0.02)
EPS = (0.01, -0.01, 0.01, -0.01, 0.0)
C_S = (0.905, 0.91, 0.915, 0.92, 0.925)
TARGETS = (0.8, 0.9, 0.95)
T_975_4 = 2.7764451051977987  # Student t, 97.5% quantile, 4 degrees of freedom (tables)
HALF = T_975_4 * math.sqrt(0.001 / 4) / math.sqrt(5)  # of a mean difference with offsets DELTA
CLEAN = {  # model -> seed -> (clean at 100, clean at 1000)
    "capsnet": {s: (0.80, C_S[s]) for s in SEEDS},
    "convnet-maxpool": {s: (0.70, 0.96) for s in SEEDS},
    "convnet-k9": {s: (0.75, 0.95) for s in SEEDS},
}
OFFSET = {"capsnet": lambda s: -0.10 + DELTA[s], "convnet-maxpool": lambda s: -0.20,
          "convnet-k9": lambda s: -0.10 + EPS[s]}


def constructed_run(root: Path, models=tuple(CLEAN), profile_models=None) -> Path:
    run = Path(root) / "run"
    run.mkdir(parents=True)
    rows, cells = [], []

    def add(model, n, seed, test_set, metric, value):
        rows.append(dict(setup="affnist", model=model, n=n, seed=seed, test_set=test_set,
                         factor_value=math.nan, metric=metric, value=value))

    for model in models:
        for seed in SEEDS:
            for n, clean in zip(SIZES, CLEAN[model][seed], strict=True):
                add(model, n, seed, "clean", "accuracy", clean)
                add(model, n, seed, "affnist", "accuracy", clean + OFFSET[model](seed))
                large = n == SIZES[-1]
                g2 = {"capsnet": 0.70 + DELTA[seed] if large else 0.99,
                      "convnet-maxpool": 0.80}.get(model, 0.75)
                add(model, n, seed, "scramble-g2", "auroc_mahalanobis", g2)
                add(model, n, seed, "scramble-g3", "auroc_mahalanobis",
                    0.95 if model == "capsnet" else 0.60)
                displaced = {"capsnet": 0.90 + DELTA[seed],
                             "convnet-maxpool": 0.85}.get(model, 0.80)
                add(model, n, seed, "displaced", "auroc_mahalanobis", displaced if large else 0.50)
                kept_d = {"capsnet": 0.60 + DELTA[seed], "convnet-maxpool": 0.80}.get(model, 0.75)
                kept_s = {"capsnet": 0.30, "convnet-maxpool": 0.35}.get(model, 0.30)
                add(model, n, seed, "displaced", "kept_given_intact_correct",
                    kept_d if large else 0.90)
                add(model, n, seed, "scramble-g2", "kept_given_intact_correct",
                    kept_s if large else 0.10)
                cells.append(dict(setup="affnist", model=model, n=n, seed=seed, steps=500,
                                  converged=True, val_improvement=0.001,
                                  labelled_images=n + 500, train_seconds=1.0, eval_seconds=1.0))
    pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
    pd.DataFrame(cells).to_csv(run / "cells.csv", index=False)
    config = {"models": list(profile_models or models), "sizes": list(SIZES),
              "seeds": list(SEEDS), "targets": list(TARGETS), "model": {"width": 0.125},
              "train": {"steps": 500, "batch_size": 32}}
    (run / "manifest.json").write_text(json.dumps(
        {"profile": {"name": "hand", "targets": list(TARGETS), "config": config}}))
    return run


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> Path:
    run = constructed_run(tmp_path_factory.mktemp("hand"))
    build_report(run)
    return run


def _board(run: Path) -> dict:
    main = read_metrics(run)
    manifest = json.loads((run / "manifest.json").read_text())
    return {c.key: c for c in claims(main, TARGETS, manifest=manifest,
                                     cells=read_cells(run / "cells.csv"))}


def _scoreboard_rows(run: Path) -> dict[str, list[str]]:
    md = (run / "report.md").read_text()
    body = md.split("## Claims scoreboard\n", 1)[1].split("\n## ", 1)[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.startswith(("| C", "| S"))]
    return {r[0].split()[0]: r for r in rows}


def test_c1_matched_difference_by_hand(hand):
    c1 = _board(hand)["C1"]
    iv = c1.interval
    assert iv.n == len(SEEDS)
    assert iv.estimate == pytest.approx(0.10, abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx((0.10 - HALF, 0.10 + HALF), abs=1e-12)
    assert c1.verdict == "supported"
    row = _scoreboard_rows(hand)["C1"]
    assert "c* = 90.50%" in row[1] and "capsnet − convnet-maxpool" in row[1]
    assert row[2] == "+10.00 [8.04, 11.96] pp" and row[3] == "0 pp" and row[5] == "supported"
    assert row[4] == "along the n-curve; n = 100–1,000; width 1/8; 500 steps; 5 paired seeds"


def test_c2_ratio_by_hand(hand):
    c2 = _board(hand)["C2"]
    log_r = np.array([0.2 / 0.26 - 0.1 / (c - 0.8) for c in C_S]) * math.log(10)
    assert (log_r < 0).all()  # the ConvNet needs fewer images on every seed
    half = T_975_4 * log_r.std(ddof=1) / math.sqrt(len(SEEDS))
    iv = c2.interval
    assert iv.estimate == pytest.approx(math.exp(log_r.mean()), rel=1e-9)
    assert (iv.low, iv.high) == pytest.approx(
        (math.exp(log_r.mean() - half), math.exp(log_r.mean() + half)), rel=1e-9)
    assert c2.verdict == "contradicted"
    row = _scoreboard_rows(hand)["C2"]
    assert "reach 90% clean accuracy" in row[1] and "convnet-maxpool ÷ capsnet" in row[1]
    want = (f"{math.exp(log_r.mean()):.2f} [{math.exp(log_r.mean() - half):.2f}, "
            f"{math.exp(log_r.mean() + half):.2f}]×")
    assert row[2] == want and row[3] == "1×" and row[5] == "contradicted"


def test_c3_arrangement_specificity_by_hand(hand):
    c3 = _board(hand)["C3"]
    assert c3.effect.startswith("arrangement specificity, kept if intact correct on displaced")
    assert "minus on scramble-g2, capsnet − convnet-maxpool" in c3.effect
    assert c3.interval.estimate == pytest.approx(-0.15, abs=1e-12)
    assert (c3.interval.low, c3.interval.high) == pytest.approx((-0.15 - HALF, -0.15 + HALF))
    row = _scoreboard_rows(hand)["C3"]
    want = f"-15.00 [{-15 - 100 * HALF:.2f}, {-15 + 100 * HALF:.2f}] pp"
    assert row[2] == want and row[5] == "contradicted" and row[7] == want  # no store: same
    assert row[4].startswith("at the largest n; n = 1,000;")


def test_s1_smallest_grid_at_the_largest_n(hand):
    c3 = _board(hand)["S1"]
    assert c3.secondary and c3.holm_verdict == "— (secondary)"
    assert "scramble-g2" in c3.effect
    assert c3.effect.startswith("AUROC intact vs scramble-g2 by feature density "
                                "(class-conditional Mahalanobis; flags any distortion")
    assert c3.interval.estimate == pytest.approx(-0.10, abs=1e-12)
    assert (c3.interval.low, c3.interval.high) == pytest.approx((-0.10 - HALF, -0.10 + HALF))
    row = _scoreboard_rows(hand)["S1"]
    assert row[2] == "-0.100 [-0.120, -0.080]" and row[5] == "contradicted"
    assert row[4] == ("at the largest n; n = 1,000; width 1/8; 500 steps; 1,500 labelled "
                      "images; 5 paired seeds")


def test_displaced_control_by_hand(hand):
    md = (hand / "report.md").read_text()
    body = md.split("## Claims scoreboard\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("Control for S1")]
    assert len(lines) == 1
    line = lines[0]
    assert "capsnet − convnet-maxpool, on the displaced set" in line
    assert "(n = 1,000; 5 paired seeds): +0.050 [0.030, 0.070]" in line
    assert "mean AUROC capsnet 0.900, convnet-maxpool 0.850" in line
    assert "on scramble-g2: 0.700 and 0.800 at n = 1,000" in line
    assert "not specifically part arrangement" in line and "flip rate" in line
    # right under the scoreboard's rows: what the run cannot show, then the notes, this first
    after_rows = body.split("\n| S1 ", 1)[1].split("\n", 1)[1].lstrip("\n")
    assert after_rows.startswith("### What this run cannot show\n")
    block = after_rows.split("\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert 1 <= len(block) <= 6 and all(line.startswith("- ") for line in block)
    notes = after_rows.split("### Notes to the scoreboard\n", 1)[1].lstrip("\n")
    assert notes.startswith("Control for S1")
    assert "Signs: each effect is signed so that a positive value" in body
    # the same code path as C3: the paired t interval on the per-seed differences
    main = read_metrics(hand)
    assert displaced_control(main) == line
    assert displaced_control(main[main["test_set"] != "displaced"]) is None  # no set, no line


def test_c4_interval_containing_zero_is_inconclusive(hand):
    c4 = _board(hand)["C4"]
    d = np.array(DELTA) - np.array(EPS)
    half = T_975_4 * d.std(ddof=1) / math.sqrt(len(SEEDS))
    assert c4.interval.estimate == pytest.approx(0.0, abs=1e-12)
    assert (c4.interval.low, c4.interval.high) == pytest.approx((-half, half), abs=1e-12)
    assert c4.interval.contains(0.0) and c4.verdict == "inconclusive"
    row = _scoreboard_rows(hand)["C4"]
    assert row[2] == f"0.00 [{-100 * half:.2f}, {100 * half:.2f}] pp"
    assert "capsnet − convnet-k9 (an ablation" in row[1] and row[5] == "inconclusive"
    assert row[0] == "C4 capsule head vs fully connected head on the same 9x9 trunk"


def test_matched_table_by_hand(hand):
    md = (hand / "report.md").read_text()
    body = md.split("## Accuracy at matched clean accuracy\n", 1)[1].split("\n## ", 1)[0]
    rows = {r[0]: r for r in ([c.strip() for c in line.strip().strip("|").split("|")]
                              for line in body.splitlines() if line.startswith("| ")) }
    assert [rows[m][2] for m in CLEAN] == ["90.50"] * 3  # c*
    assert rows["capsnet"][4] == f"80.50 [{80.5 - 100 * HALF:.2f}, {80.5 + 100 * HALF:.2f}]"
    assert rows["convnet-maxpool"][4] == "70.50 (all seeds equal)"  # no spread: zero width
    assert rows["convnet-maxpool"][5] == f"-10.00 [{-10 - 100 * HALF:.2f}, {-10 + 100 * HALF:.2f}]"
    assert rows["capsnet"][5] == "—"


def test_data_efficiency_upper_bound_at_the_smallest_n(hand):
    md = (hand / "report.md").read_text()
    body = md.split("## Data efficiency\n", 1)[1].split("\n## ", 1)[0]
    caps = next(line for line in body.splitlines() if line.startswith("| capsnet |"))
    cells = [c.strip() for c in caps.strip().strip("|").split("|")]
    assert cells[1] == "≤ 100"  # 80% reached at n = 100 on every seed: an upper bound
    assert cells[3] == f"not reached ({len(SEEDS)} of {len(SEEDS)} seeds)"  # 95%


def test_forest_plot_draws_the_scoreboard(hand, tmp_path):
    board = list(_board(hand).values())
    drawn = figures.claims(claims_frame(board), tmp_path / "claims")
    assert (tmp_path / "claims.png").is_file() and (tmp_path / "claims.pdf").is_file()
    for c, row in zip(board, drawn.itertuples(), strict=True):
        scale = 100 if c.unit == "pp" else 1
        if c.interval is None:  # C6: no convnet-gu in this run
            assert math.isnan(row.estimate) and row.verdict == "not measured"
            continue
        assert (row.estimate, row.low, row.high) == pytest.approx(
            (scale * c.interval.estimate, scale * c.interval.low, scale * c.interval.high))
        assert row.xmin < min(row.low, row.null) and row.xmax > max(row.high, row.null)
        assert row.verdict == c.verdict
    sides = {r.claim.split()[0]: (r.below, r.above) for r in drawn.itertuples()}
    assert sides == {"C1": ("convnet-maxpool better", "capsnet better"),
                     "C2": ("convnet-maxpool needs fewer", "capsnet needs fewer"),
                     "C3": ("convnet-maxpool more arrangement-specific",
                            "capsnet more arrangement-specific"),
                     "C4": ("fully connected head better", "capsule head better"),
                     "C6": ("capsnet better", "convnet-gu better"),
                     "C7": ("convnet-maxpool more robust", "capsnet more robust"),
                     "C8": ("convnet-maxpool names both more", "capsnet names both more"),
                     "S1": ("convnet-maxpool separates better", "capsnet separates better")}
    assert (hand / "figures" / "claims.png").is_file()
    tex = (hand / "tables" / "claims.tex").read_text()
    assert all(ord(ch) < 128 for ch in tex)
    caption = tex.split("\\caption{", 1)[1].split("}\n\\label", 1)[0]
    assert len(caption) <= 600 and "What this run cannot show" in caption
    assert "Verdicts: A claim is supported" not in tex  # the notes stay in report.md


def test_absent_models_are_not_measured(tmp_path):
    run = constructed_run(tmp_path / "a", models=("capsnet", "convnet-maxpool"))
    build_report(run)
    rows = _scoreboard_rows(run)
    assert rows["C4"][2] == "not measured (model convnet-k9 not in this profile)"
    assert rows["C4"][5] == "not measured"
    assert rows["C1"][5] == "supported"  # the rest is still measured
    run = constructed_run(tmp_path / "b", models=("capsnet", "convnet-maxpool"),
                          profile_models=tuple(CLEAN))
    build_report(run, with_figures=False)
    assert _scoreboard_rows(run)["C4"][2] == ("not measured (model convnet-k9 has no results "
                                              "in this run)")


def test_clean_ranges_that_do_not_overlap_are_not_matched(tmp_path):
    saved = dict(CLEAN["convnet-maxpool"])
    CLEAN["convnet-maxpool"].update({s: (0.95, 0.99) for s in SEEDS})  # above the CapsNet's
    try:
        run = constructed_run(tmp_path)
    finally:
        CLEAN["convnet-maxpool"].update(saved)
    build_report(run, with_figures=False)
    row = _scoreboard_rows(run)["C1"]
    assert row[2] == ("not measured (the clean accuracies of capsnet and convnet-maxpool do "
                      "not overlap on every seed)")
    assert row[5] == "not measured"


def test_holm_column_by_hand(hand):
    """Holm over the measured claims C1-C4 (C6 is not measured, S1 is secondary): C4's p-value
    is 1 (estimate 0), so it stays inconclusive; C1's t = 0.10 / (sd / sqrt 5) is far past the
    threshold whatever its rank, so it stays supported."""
    rows = _scoreboard_rows(hand)
    board = _board(hand)
    assert rows["C1"][6] == "supported" and rows["C4"][6] == "inconclusive"
    assert rows["C6"][6] == "not measured" and rows["S1"][6] == "— (secondary)"
    assert board["C4"].p_adjusted == pytest.approx(1.0)
    t1 = 0.10 / (math.sqrt(0.001 / 4) / math.sqrt(5))
    from scipy import stats as st
    p1 = 2 * st.t.sf(t1, 4)
    assert board["C1"].p_adjusted <= 4 * p1 + 1e-15 and board["C1"].p_adjusted >= p1


def test_counter_claim_reads_gu_et_al_convnet(tmp_path, monkeypatch):
    """With convnet-gu cells (clean 0.72 -> 0.955, affNIST-style = clean - 0.05 + EPS[s]), C6 is
    convnet-gu - capsnet at c* = 0.905: (0.855 + EPS[s]) - (0.805 + DELTA[s]) = 0.05 + EPS[s] -
    DELTA[s], mean 0.05, sd of (0.03, 0, 0.01, -0.02, -0.02)."""
    monkeypatch.setitem(CLEAN, "convnet-gu", {s: (0.72, 0.955) for s in SEEDS})
    monkeypatch.setitem(OFFSET, "convnet-gu", lambda s: -0.05 + EPS[s])
    run = constructed_run(tmp_path, models=tuple(CLEAN))
    build_report(run, with_figures=False)
    c6 = _board(run)["C6"]
    d = 0.05 + np.array(EPS) - np.array(DELTA)
    half = T_975_4 * d.std(ddof=1) / math.sqrt(len(SEEDS))
    assert c6.interval.estimate == pytest.approx(0.05, abs=1e-12)
    assert (c6.interval.low, c6.interval.high) == pytest.approx((0.05 - half, 0.05 + half))
    row = _scoreboard_rows(run)["C6"]
    assert "convnet-gu − capsnet" in row[1] and row[5] == "supported"
    no_gu = tmp_path / "without"
    monkeypatch.delitem(CLEAN, "convnet-gu")
    build_report(constructed_run(no_gu), with_figures=False)
    assert _scoreboard_rows(no_gu / "run")["C6"][2].startswith(
        "not measured (Gu, Tresp & Hu's ConvNet, convnet-gu, has no cells")


def test_c7_and_c8_read_their_sets_at_matched_clean_accuracy(tmp_path):
    """C7 reads pgd-<stated budget> and C8 the overlapping-digit set as C1 reads affnist: along
    the same clean curves, values constructed so that at c* = 0.905 the paired differences are
    0.05 + DELTA[s] (C7) and -0.04 (C8): C7 +5.00 [5 - 100 HALF, 5 + 100 HALF] pp, supported;
    C8 exactly -4.00 pp on every seed, contradicted. A pgd set at another budget holds values
    that would say otherwise; without data.attack.n the row is not measured."""
    run = constructed_run(tmp_path)
    metrics = pd.read_csv(run / "metrics.csv")
    extra = []
    for _, r in metrics[(metrics["test_set"] == "clean")].iterrows():
        m, s, clean = r["model"], int(r["seed"]), r["value"]
        pgd = {"capsnet": clean - 0.50 + DELTA[s], "convnet-maxpool": clean - 0.55}.get(m)
        top2 = {"capsnet": clean - 0.60, "convnet-maxpool": clean - 0.56}.get(m)
        if pgd is None:
            continue
        for test_set, value in (("pgd-0.05", pgd), ("pgd-0.3", 1.0 - pgd), ("overlap", top2)):
            extra.append({**r.to_dict(), "test_set": test_set, "value": value})
    pd.concat([metrics, pd.DataFrame(extra)]).to_csv(run / "metrics.csv", index=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["profile"]["config"]["data"] = {"attack": {"n": 100, "stated_budget": 0.05}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    board = _board(run)
    c7, c8 = board["C7"], board["C8"]
    assert c7.interval.estimate == pytest.approx(0.05, abs=1e-12)
    assert (c7.interval.low, c7.interval.high) == pytest.approx((0.05 - HALF, 0.05 + HALF),
                                                                abs=1e-12)
    assert c7.verdict == "supported" and "ε = 0.05" in c7.effect and "c* = 90.50%" in c7.effect
    assert c8.interval.estimate == pytest.approx(-0.04, abs=1e-12)
    assert c8.verdict == "contradicted"
    # the budget check repeats C8 on overlapping digits and not C7's attacked accuracy
    assert (c8.pair, c8.pair_set) == (("capsnet", "convnet-maxpool"), "overlap")
    assert c7.pair is None and board["C1"].pair_set == "affnist"
    manifest["profile"]["config"]["data"] = {"attack": {"n": 0, "stated_budget": 0.05}}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert _board(run)["C7"].reason.startswith("not measured (the profile attacks no cell")


def test_sign_note_names_only_the_measured_claims():
    from bench.report.scoreboard import sign_note

    assert sign_note({"C4"}) == (
        "Signs: each effect is signed so that a positive value is the claim's direction: C4 is "
        "capsnet − the other model. The tables below write model − capsnet, so C4 appears in the "
        "matched-accuracy table with the opposite sign.")
    text = sign_note({"C2", "C6"})
    assert "(above 1 for the ratio C2)" in text and "C2 is convnet-maxpool ÷ capsnet" in text
    assert "C6 is convnet-gu − capsnet" in text
    for absent in ("C1", "C3", "C4", "C5", "C7", "C8", "S1"):
        assert absent not in text


def test_how_to_read_names_the_counter_claims_models_only_where_the_run_has_them():
    from bench.report.text import how_to_read

    without = how_to_read({"capsnet", "convnet-maxpool"})
    assert "does not train their ConvNet (`convnet-gu`)" in without
    assert "(C6)" not in without and "(C4)" not in without and "{counter}" not in without
    full = how_to_read({"capsnet", "convnet-gu", "convnet-k9"})
    assert "The scoreboard reads it (C6) on their ConvNet, `convnet-gu`." in full
    assert "`convnet-k9` (C4) is the CapsNet's own 9x9 trunk" in full
