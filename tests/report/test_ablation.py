"""The report section "Component ladder" (bench/report/ablation.py) and its figure, on a constructed
metrics frame whose matched read-outs are worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.report.ablation import ablation_table, ladder_values, matched_difference
from bench.report.figures_ablation import ladder

SEEDS = (0, 1, 2)
# model: (clean at n = 300, 3,000; affNIST-style at n = 300, 3,000; extra affNIST per seed)
CURVES = {
    "capsnet": ((0.90, 0.96), (0.60, 0.70), 0.0),
    "capsnet-no-routing": ((0.92, 0.98), (0.64, 0.76), 0.01),
    "convnet-k9": ((0.97, 0.99), (0.50, 0.52), 0.0),  # clean range above capsnet's: no c*
}
KEPT = {"capsnet": 0.30, "capsnet-no-routing": 0.40, "convnet-k9": 0.50}  # on scramble-g2
KEPT_DISPLACED = {"capsnet": 0.50, "capsnet-no-routing": 0.70, "convnet-k9": 0.60}


def frame(curves: dict | None = None) -> pd.DataFrame:
    rows = []
    for m, (clean, aff, extra) in (curves or CURVES).items():
        for s in SEEDS:
            for n, c, a in zip((300, 3000), clean, aff, strict=True):
                base = dict(setup="affnist", model=m, n=n, seed=s, factor_value=np.nan,
                            metric="accuracy")
                rows.append({**base, "test_set": "clean", "value": c})
                rows.append({**base, "test_set": "affnist", "value": a + extra * s})
            rows.append(dict(setup="affnist", model=m, n=3000, seed=s, factor_value=np.nan,
                             test_set="scramble-g2", metric="kept_given_intact_correct",
                             value=KEPT.get(m, 0.3) + 0.01 * s * (m == "capsnet-no-routing")))
            rows.append(dict(setup="affnist", model=m, n=3000, seed=s, factor_value=np.nan,
                             test_set="displaced", metric="kept_given_intact_correct",
                             value=KEPT_DISPLACED.get(m, 0.5)))
    return pd.DataFrame(rows)


def test_matched_difference_by_hand():
    c, iv = matched_difference(frame(), "capsnet-no-routing", "capsnet")
    assert c == pytest.approx(0.96)  # the lower of the two tops, above both bottoms
    # at clean 0.96 no-routing reads 0.64 + (0.04 / 0.06) * 0.12 = 0.72 (+ 0.01 s); capsnet 0.70
    d = [0.72 + 0.01 * s - 0.70 for s in SEEDS]
    assert iv.estimate == pytest.approx(np.mean(d))
    ci = sps.ttest_rel([0.72 + 0.01 * s for s in SEEDS], [0.70] * 3).confidence_interval()
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high))


def test_no_overlap_gives_no_c_star():
    assert matched_difference(frame(), "convnet-k9", "capsnet") == (None, None)


def test_table_rows_in_ladder_order_with_neighbour_and_capsnet_columns():
    t = ablation_table(frame())
    assert [r[0] for r in t.table.rows] == ["capsnet", "capsnet-no-routing", "convnet-k9"]
    r = t.table.rows[1]
    assert r[1] == "no routing (uniform coupling) (vs capsnet)"
    assert r[2] == "uniform / per position / yes / margin / yes / —"  # the step's state
    assert r[4] == "96.00" and r[5].startswith("+3.00 [")  # mean of 2, 3, 4 pp
    assert r[7] == r[5]  # its neighbour is capsnet
    # at n = 3,000, not matched: 0.76 + 0.01 s - 0.70 -> 6, 7, 8 pp
    assert r[8].startswith("+7.00 [") and r[9] == r[8]
    # arrangement specificity (displaced - scramble-g2): (0.70 - 0.40 - 0.01 s) - (0.50 - 0.30)
    assert r[10].startswith("+9.00 [")
    assert t.table.rows[2][7] == "ranges do not overlap"
    assert t.table.rows[0][5] == "—"  # the top has no neighbour


def test_a_step_far_below_capsnet_is_marked_failed():
    d = frame()
    low = (d["model"] == "convnet-k9") & (d["test_set"] == "clean") & (d["n"] == 3000)
    d.loc[low, "value"] = 0.85  # capsnet 0.96: more than 10 points below
    t = ablation_table(d)
    assert [r[0] for r in t.table.rows][2] == "convnet-k9 (failed to train)"
    values = ladder_values(d)
    assert set(values.loc[values["model_failed"], "model"]) == {"convnet-k9"}


def test_no_section_without_a_ladder_step_beyond_the_bases():
    d = frame()
    assert ablation_table(d[d["model"] != "capsnet-no-routing"]) is None


def test_figure_draws_the_table_values(tmp_path):
    values = ladder_values(frame())
    drawn = ladder(values, tmp_path / "ablation")
    assert (tmp_path / "ablation.png").is_file() and (tmp_path / "ablation.pdf").is_file()
    row = drawn[(drawn["model"] == "capsnet-no-routing") & (drawn["panel"] == "capsnet")].iloc[0]
    assert row["estimate"] == pytest.approx(3.0)
    assert set(drawn["model"]) == {"capsnet-no-routing"}  # k9: no c*; capsnet: no pair


def test_two_steps_forking_from_one_neighbour_are_each_read_against_it(tmp_path):
    """capsnet-shared-w and capsnet-no-squash both descend from capsnet-no-routing
    (bench/models/ladder.py): each is read against it, and the second's figure row, which is not
    under its neighbour, names it."""
    curves = {**CURVES,
              "capsnet-shared-w": ((0.88, 0.95), (0.60, 0.74), 0.0),
              "capsnet-no-squash": ((0.91, 0.97), (0.62, 0.70), 0.0)}
    values = ladder_values(frame(curves))
    m = values[(values["quantity"] == "affnist_matched")
               & values["model"].isin(["capsnet-shared-w", "capsnet-no-squash"])
               & (values["versus"] == values["neighbour"])]
    assert set(m["neighbour"]) == {"capsnet-no-routing"} and len(m) == 2
    # capsnet-no-squash vs no-routing: c* = 0.97 (the lower top); no-squash reads 0.70, no-routing
    # 0.64 + (0.05 / 0.06) * 0.12 + 0.01 s = 0.74 + 0.01 s -> -4, -5, -6 pp
    r = m[m["model"] == "capsnet-no-squash"].iloc[0]
    assert r["estimate"] == pytest.approx(-0.05)
    drawn = ladder(values, tmp_path / "ladder")
    labels = dict(zip(drawn["model"], drawn["label"], strict=False))
    assert labels["capsnet-shared-w"] == "capsnet-shared-w (W)"
    assert labels["capsnet-no-squash"] == "capsnet-no-squash (squash, vs capsnet-no-routing)"
