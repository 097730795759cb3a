"""bench.report.routing on a constructed metrics frame whose every number is worked out by hand.

Four heads (two pooling, two routing), sizes 100 and 1,000, seeds 0-2. Clean accuracy at n = 100
is 0.80 + 0.01 s for every head; at n = 1,000 it is TOP[head] + 0.005 s (seed s). affNIST-style
accuracy at n = 100 is 0.40 everywhere; at n = 1,000 it is AFF[head][s]. With two sizes each
seed's curve is one segment, so the accuracy at clean accuracy c is
``0.40 + (c - c0) / (c1 - c0) * (a1 - 0.40)``, written out below independently of bench.stats;
intervals are recomputed from scipy.stats.t.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from bench import stats
from bench.report import readout
from bench.report import routing as rr

SIZES = (100, 1000)
SEEDS = (0, 1, 2)
TOP = {"head-maxpool": 0.96, "head-avgpool": 0.94, "head-dynamic": 0.97, "head-em": 0.90}
AFF = {  # affNIST-style accuracy at n = 1,000 per seed; head-dynamic varies by scenario
    "head-maxpool": (0.70, 0.70, 0.70),
    "head-avgpool": (0.65, 0.66, 0.67),
    "head-em": (0.89, 0.89, 0.89),  # the best affNIST-style head, but the worst clean head
}
DYNAMIC = {
    "supported": (0.74, 0.75, 0.76),
    "contradicted": (0.60, 0.61, 0.62),
    "inconclusive": (0.64, 0.78, 0.70),
}
PART = {"head-maxpool": (0.70, 0.72, 0.74), "head-avgpool": (0.60, 0.61, 0.62),
        "head-dynamic": (0.80, 0.82, 0.84), "head-em": (0.90, 0.90, 0.90)}


def _clean(head: str, n: int, s: int) -> float:
    return 0.80 + 0.01 * s if n == 100 else TOP[head] + 0.005 * s


def _aff(head: str, n: int, s: int, scenario: str) -> float:
    top = DYNAMIC[scenario] if head == "head-dynamic" else AFF[head]
    return 0.40 if n == 100 else top[s]


def frame(scenario: str = "supported", heads=tuple(TOP)) -> pd.DataFrame:
    rows = []

    def add(m, n, s, ts, metric, v, factor=math.nan):
        rows.append(dict(setup="affnist", model=m, n=n, seed=s, test_set=ts, factor_value=factor,
                         metric=metric, value=v))

    for m in heads:
        for n in SIZES:
            for s in SEEDS:
                add(m, n, s, "clean", "accuracy", _clean(m, n, s))
                add(m, n, s, "affnist", "accuracy", _aff(m, n, s, scenario))
                add(m, n, s, "clean", "error", 1 - _clean(m, n, s))
                add(m, n, s, "sweep-rotation", "accuracy", 0.1, factor=30.0)  # ignored
                # the part score: the smallest grid at n = 1,000 is the one read
                add(m, n, s, "scramble-g2", "auroc_mahalanobis",
                    PART[m][s] if n == 1000 else 0.5)
                add(m, n, s, "scramble-g3", "auroc_mahalanobis", 0.99)
    df = pd.DataFrame(rows)
    df["n"] = df["n"].astype(np.int64)
    return df


def t_interval(x) -> tuple[float, float, float]:
    x = np.asarray(x, dtype=float)
    half = st.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def at(head: str, s: int, c: float, scenario: str = "supported") -> float:
    """The hand formula: the one segment from n = 100 to n = 1,000, read at clean accuracy c."""
    c0, c1 = _clean(head, 100, s), _clean(head, 1000, s)
    a0, a1 = _aff(head, 100, s, scenario), _aff(head, 1000, s, scenario)
    assert c0 <= c <= c1
    return a0 + (c - c0) / (c1 - c0) * (a1 - a0)


def value(table: rr.RoutingTable, head: str, quantity: str) -> pd.Series:
    v = table.values
    return v[(v["head"] == head) & (v["quantity"] == quantity)].iloc[0]


# --------------------------------------------------------------------------------------------
# the table


def test_hand_worked_matched_value():
    # head-dynamic, seed 0, at the table's c* = 0.90 (head-em's top on seed 0):
    # 0.40 + (0.90 - 0.80) / (0.97 - 0.80) * (0.74 - 0.40) = 0.40 + (0.10 / 0.17) * 0.34 = 0.60
    table = rr.routing_table(frame(), targets=(0.85, 0.95))
    assert table.c_star == pytest.approx(0.90)
    assert table.per_seed["head-dynamic"][0] == pytest.approx(0.60)
    # and at the scoreboard's c* = 0.96 (head-maxpool's top on seed 0): 0.40 + 16/17 * 0.34 = 0.72
    assert at("head-dynamic", 0, 0.96) == pytest.approx(0.72)


def test_table_rows_and_columns():
    table = rr.routing_table(frame(), targets=(0.85, 0.95))
    assert [r[0] for r in table.table.rows] == ["head-maxpool", "head-avgpool", "head-dynamic", "head-em"]
    assert [r[1] for r in table.table.rows] == ["pooling", "pooling", "routing", "routing"]
    assert table.table.header == ["Head", "Kind", "Seeds", "Clean acc. (%)", "affNIST-style acc. (%)",
                            "affNIST-style acc. at c* = 90.00% (%)", "AUROC density (scramble-g2)",
                            "n for 85% clean"]
    assert len(table.table.align) == len(table.table.header)
    assert all(len(r) == len(table.table.header) for r in table.table.rows)
    assert table.part_set == "scramble-g2" and table.target == 0.85
    assert "n = 1,000" in table.table.notes[0]


@pytest.mark.parametrize("head", list(TOP))
def test_table_values_against_scipy(head):
    table = rr.routing_table(frame(), targets=(0.85, 0.95))
    checks = {
        "clean": [_clean(head, 1000, s) for s in SEEDS],
        "affnist": [_aff(head, 1000, s, "supported") for s in SEEDS],
        "matched": [at(head, s, 0.90) for s in SEEDS],
        "part": list(PART[head]),
    }
    for quantity, xs in checks.items():
        row = value(table, head, quantity)
        mean, low, high = t_interval(xs)
        if np.std(xs) == 0:
            low = high = mean  # all equal: a zero-width interval
        assert row.estimate == pytest.approx(mean, abs=1e-12), quantity
        assert row.low == pytest.approx(max(low, 0.0), abs=1e-12), quantity
        assert row.high == pytest.approx(min(high, 1.0), abs=1e-12), quantity
        assert row.n_seeds == 3
    # n to 85% clean: per seed exp(log 100 + (0.85 - c0) / (c1 - c0) * log 10), geometric mean
    # with the t interval on the logs
    logs = [math.log(100) + (0.85 - _clean(head, 100, s))
            / (_clean(head, 1000, s) - _clean(head, 100, s)) * math.log(10) for s in SEEDS]
    mean, low, high = t_interval(logs)
    row = value(table, head, "n_target")
    assert row.estimate == pytest.approx(math.exp(mean))
    assert (row.low, row.high) == pytest.approx((math.exp(low), math.exp(high)))


def test_table_text():
    table = rr.routing_table(frame(), targets=(0.85, 0.95))
    row = table.table.rows[2]  # head-dynamic
    assert row[2] == "3"
    mean, low, high = t_interval([0.97, 0.975, 0.98])
    assert row[3] == f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
    mean, low, high = t_interval([at("head-dynamic", s, 0.90) for s in SEEDS])
    assert row[5] == f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"
    mean, low, high = t_interval(PART["head-dynamic"])
    assert row[6] == f"{mean:.3f} [{low:.3f}, {high:.3f}]"
    assert table.table.rows[3][6] == "0.900 (all seeds equal)"  # head-em: no spread


def test_target_fallback_and_upper_bound():
    # 99% is never reached: the lowest target is shown with the seeds that never reached it
    table = rr.routing_table(frame(), targets=(0.99,))
    assert table.target == 0.99
    assert {r[-1] for r in table.table.rows} == {"not reached (3 of 3 seeds)"}
    # 70% is reached at the smallest n on every seed: only an upper bound
    table = rr.routing_table(frame(), targets=(0.70,))
    assert {r[-1] for r in table.table.rows} == {"≤ 100"}
    # no targets: no column
    table = rr.routing_table(frame(), targets=())
    assert table.target is None and table.table.header[-1] == "AUROC density (scramble-g2)"


def test_displaced_control_column_by_hand():
    # the displaced set's density AUROC at n = 1,000: 0.90, 0.92, 0.94 for every head
    df = frame()
    extra = [dict(setup="affnist", model=m, n=1000, seed=s, test_set="displaced",
                  factor_value=math.nan, metric="auroc_mahalanobis", value=0.90 + 0.02 * s)
             for m in TOP for s in SEEDS]
    table = rr.routing_table(pd.concat([df, pd.DataFrame(extra)], ignore_index=True))
    assert table.table.header[-1] == "AUROC density (displaced, control)"
    mean, low, high = t_interval([0.90, 0.92, 0.94])
    assert all(r[-1] == f"{mean:.3f} [{low:.3f}, {high:.3f}]" for r in table.table.rows)
    assert "Control: the same score on the displaced set" in " ".join(table.table.notes)
    # without displaced rows there is no such column
    assert "control" not in rr.routing_table(df).table.header[-1]


def test_no_heads_and_a_head_left_out_of_c_star():
    df = frame()
    assert rr.routing_table(df.assign(model="capsnet")) is None
    # head-em's clean accuracies lowered by 0.2 (0.60-0.71): below every other head's range
    low = df.copy()
    em = (low["model"] == "head-em") & (low["test_set"] == "clean")
    low.loc[em, "value"] = low.loc[em, "value"] - 0.2
    table = rr.routing_table(low, targets=(0.85,))
    # without head-em, c* is the lowest top of the others: head-avgpool, seed 0, 0.94
    assert table.c_star == pytest.approx(0.94)
    rows = {r[0]: r for r in table.table.rows}
    assert rows["head-em"][5] == "—" and rows["head-maxpool"][5] != "—"
    assert "Left out of c* (—): head-em," in table.table.notes[0]
    # head-dynamic, seed 0, at 0.94 by hand: 0.40 + (0.14 / 0.17) * 0.34 = 0.68
    assert table.per_seed["head-dynamic"][0] == pytest.approx(0.68)
    # two heads whose ranges do not overlap: no c* at all
    two = low[low["model"].isin(["head-em", "head-maxpool"])]
    t2 = rr.routing_table(two)
    assert t2.c_star is None and {r[5] for r in t2.table.rows} == {"—"}
    with pytest.raises(ValueError):
        rr.routing_figure(t2, "unused")


def _cells(val: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame([dict(setup="affnist", model=m, n=n, seed=s, final_val_accuracy=v)
                         for m, v in val.items() for n in SIZES for s in SEEDS])


def test_claim_chooses_the_heads_on_validation_accuracy():
    # validation accuracy favours head-em and head-avgpool, clean test accuracy head-dynamic and
    # head-maxpool (test_claim): with every head in cells.csv the validation images decide
    val = {"head-maxpool": 0.90, "head-avgpool": 0.95, "head-dynamic": 0.90, "head-em": 0.97}
    row = rr.routing_claim(frame(), cells=_cells(val))
    assert "(head-em)" in row.effect and "(head-avgpool)" in row.effect
    assert rr.chosen_pair(frame(), _cells(val)) == ("head-em", "head-avgpool")
    # a head without a validation accuracy: back to clean test accuracy for every head
    del val["head-maxpool"]
    assert rr.chosen_pair(frame(), _cells(val)) == ("head-dynamic", "head-maxpool")
    assert rr.chosen_pair(frame(), None) == ("head-dynamic", "head-maxpool")


def _text(mean: float, low: float, high: float) -> str:
    return f"{100 * mean:.2f} [{100 * low:.2f}, {100 * high:.2f}]"


def test_pairs_table_against_the_hand_formula():
    header, rows, notes = rr.pairs_table(frame("supported"), ("head-dynamic", "head-maxpool"))
    assert len(rows) == 2 * 2 and len(header) == 6 and notes
    assert header[4] == "Holm verdict"
    for row in rows:  # Holm never calls a pair its raw interval leaves open
        assert row[4] == "inconclusive" or row[4] == row[3]
    by = {r[0]: r for r in rows}
    r = by[f"head-dynamic {rr.MINUS} head-maxpool (C5)"]
    # c* of the pair: head-maxpool's top on seed 0, 0.96; hand-read differences, scipy t
    assert r[1] == "96.00"
    d = [at("head-dynamic", s, 0.96) - at("head-maxpool", s, 0.96) for s in SEEDS]
    assert r[2].replace(rr.MINUS, "-") == _text(*t_interval(d))
    assert r[3] == "supported"
    # at the largest n without matching: (0.74, 0.75, 0.76) - 0.70
    assert r[5].replace(rr.MINUS, "-") == _text(*t_interval([0.04, 0.05, 0.06]))
    # the pair head-em - head-avgpool: c* is the lowest top of both, head-em's on seed 0, 0.90
    r = by[f"head-em {rr.MINUS} head-avgpool"]
    assert r[1] == "90.00"
    d = [at("head-em", s, 0.90) - at("head-avgpool", s, 0.90) for s in SEEDS]
    assert r[2].replace(rr.MINUS, "-") == _text(*t_interval(d))
    assert rr.pairs_table(frame(heads=("head-dynamic", "head-em"))) is None


def test_head_names_are_the_models():
    heads = pytest.importorskip("bench.models.heads")
    assert set(rr.POOLING_HEADS) | set(rr.ROUTING_HEADS) == {f"head-{h}" for h in heads.HEADS}


# --------------------------------------------------------------------------------------------
# the scoreboard row


@pytest.mark.parametrize("scenario, want", [("supported", "supported"),
                                            ("contradicted", "contradicted"),
                                            ("inconclusive", "inconclusive")])
def test_claim(scenario, want):
    row = rr.routing_claim(frame(scenario))
    # best by clean accuracy at n = 1,000: head-dynamic (97.5%) over head-em (91%), although
    # head-em keeps the most affNIST-style accuracy; head-maxpool (96.5%) over head-avgpool
    assert "(head-dynamic)" in row.effect and "(head-maxpool)" in row.effect
    # c* of the two: head-maxpool's top on seed 0, 0.96
    assert "c* = 96.00%" in row.effect
    d = [at("head-dynamic", s, 0.96, scenario) - at("head-maxpool", s, 0.96, scenario)
         for s in SEEDS]
    mean, low, high = t_interval(d)
    iv = row.interval
    assert iv.estimate == pytest.approx(mean, abs=1e-12)
    assert (iv.low, iv.high) == pytest.approx((low, high), abs=1e-12)
    assert iv.n == 3
    assert stats.verdict(iv, row.null) == want
    assert row.reason == "" and row.unit == "pp" and row.null == 0.0
    assert row.scale == "along the n-curve; n = 100–1,000; 3 paired seeds"


def test_claim_hand_worked_supported_effect():
    # seed 0 by hand: head-dynamic 0.40 + 16/17 * 0.34 = 0.72, head-maxpool reads its own top
    # point 0.70: +2.00 pp
    row = rr.routing_claim(frame("supported"))
    dyn = readout.matched(readout.curves(frame("supported"), "head-dynamic"), 0.96)
    mp = readout.matched(readout.curves(frame("supported"), "head-maxpool"), 0.96)
    assert dyn[0] - mp[0] == pytest.approx(0.02)
    assert row.interval.low > 0


def test_claim_builds_the_report_claim():
    claims = pytest.importorskip("bench.report.claims")
    row = rr.routing_claim(frame("contradicted"))
    assert isinstance(row, claims.Claim) and row.verdict == "contradicted"
    calls = []
    rr.routing_claim(frame(), scale=lambda *a, **k: calls.append((a, k)) or "scaled")
    (models, sizes, seeds, k), kw = calls[0]
    assert models == ["head-dynamic", "head-maxpool"] and sorted(sizes) == [100, 1000]
    assert list(seeds) == [0, 1, 2] and k == 3 and kw == {"lead": "along the n-curve"}


def test_claim_not_measured():
    df = frame(heads=("head-dynamic", "head-em"))
    row = rr.routing_claim(df)
    assert row.interval is None and row.reason.startswith("not measured (no pooling head")
    assert row.verdict == "not measured"


# --------------------------------------------------------------------------------------------
# the figure


def test_figure_written(tmp_path):
    table = rr.routing_table(frame(), targets=(0.85,))
    drawn = rr.routing_figure(table, tmp_path / "routing")
    assert (tmp_path / "routing.pdf").stat().st_size > 0
    assert (tmp_path / "routing.png").stat().st_size > 0
    assert list(drawn["head"]) == ["head-maxpool", "head-avgpool", "head-dynamic", "head-em"]
    for r in drawn.itertuples():
        mean, low, high = t_interval([at(r.head, s, 0.90) for s in SEEDS])
        assert r.estimate == pytest.approx(100 * mean)
        if np.isfinite(r.low):
            assert (r.low, r.high) == pytest.approx((100 * low, 100 * high))
    pool = drawn[drawn["group"] == "pooling"]["y"]
    rout = drawn[drawn["group"] == "routing"]["y"]
    assert pool.max() < rout.min()  # pooling heads grouped above the routing heads


def test_figure_is_reproducible(tmp_path):
    table = rr.routing_table(frame(), targets=(0.85,))
    rr.routing_figure(table, tmp_path / "a")
    rr.routing_figure(table, tmp_path / "b")
    for ext in ("pdf", "png"):
        assert (tmp_path / f"a.{ext}").read_bytes() == (tmp_path / f"b.{ext}").read_bytes()


# --------------------------------------------------------------------------------------------
# in the report


def _scoreboard_lines(md: str) -> list[str]:
    body = md.split("## Claims scoreboard\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in body.splitlines() if line.startswith("| C")]


def test_report_has_the_routing_section(tmp_path):
    report = pytest.importorskip("bench.report.build")
    frame().to_csv(tmp_path / "metrics.csv", index=False)
    report.build_report(tmp_path, with_figures=True)
    md = (tmp_path / "report.md").read_text()
    assert f"## {rr.TITLE}" in md
    assert (tmp_path / "tables" / "routing.tex").is_file()
    assert (tmp_path / "figures" / f"{rr.FIGURE_STEM}.png").is_file()
    assert f"![{rr.FIGURE_STEM}](figures/{rr.FIGURE_STEM}.png)" in md
    c5 = [line for line in _scoreboard_lines(md) if line.startswith("| C5 routing")]
    assert len(c5) == 1 and "(head-dynamic)" in c5[0] and "(head-maxpool)" in c5[0]
    iv = rr.routing_claim(frame()).interval
    assert readout.iv(iv, 100, 2, signed=True, unit=" pp") in c5[0]
    assert [c.strip() for c in c5[0].strip().strip("|").split("|")][5] == "supported"


def test_report_without_heads_has_no_routing_section(tmp_path):
    report = pytest.importorskip("bench.report.build")
    df = frame()
    df.assign(model=df["model"].str.replace("head-", "net-")).to_csv(tmp_path / "metrics.csv",
                                                                     index=False)
    report.build_report(tmp_path, with_figures=False)
    md = (tmp_path / "report.md").read_text()
    assert rr.TITLE not in md and not (tmp_path / "tables" / "routing.tex").exists()
    assert not any(line.startswith("| C5") for line in _scoreboard_lines(md))
    assert "C5 (runs with routing heads only)" not in md  # a rule is listed only when measured
