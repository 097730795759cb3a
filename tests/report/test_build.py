"""The report built from synthetic run folders: sections, numbers, intervals, booktabs, figures,
bytes.

Oracles are computed here from ``metrics.csv`` and ``cells.csv`` with scipy and NumPy directly
(never with :mod:`bench.stats` or :mod:`bench.metrics`). Nothing here assumes a seed count or a
profile size: the fixtures' constants are read, not repeated.
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bench.cli import main as cli_main
from bench.config import PAPER_MNIST_ERRORS
from bench.errors import BenchError
from bench.report import figures, readout
from bench.report.build import build_report
from bench.report.sections import _reading
from bench.report.table import _tex
from bench.stats import Interval
from tests.fixtures_results import (
    FAILED_FIT,
    FILES,
    NOT_CONVERGED,
    SEEDS,
    SIZES,
    SWEEP_N,
    SWEEPS,
    TARGETS,
    write_run,
)

STEMS = ("claims", "data_efficiency", "affnist_vs_clean", "reliability", "sweeps",
         "confidence_scrambled",
         "throughput", "examples", "reconstructions", "effective_robustness")
TABLES = ("claims", "convergence", "headline", "headline_diff", "matched", "scrambled",
          "calibration", "probe",
          "sweeps", "data_efficiency", "recon", "mnist", "throughput", "generation",
          "effective_robustness")
N_MAX = max(SIZES)
# The names readers see for the test sets of the headline tables.
SHOWN = {"clean": "clean", "affnist": "affNIST-style"}
# "estimate [low, high]" with an optional unit and clipping mark, as the report prints them.
IV = re.compile(r"^([+-]?[\d,]*\.?\d+) \[([-\d,.]+), ([-\d,.]+)\](?: pp|×)?(†)?")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("full"))
    build_report(run)
    return run


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("two"), seeds=SEEDS[:2])
    build_report(run, with_figures=False)
    return run


@pytest.fixture(scope="module")
def convnet_wins(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("convnet"), scenario="convnet-wins")
    build_report(run, with_figures=False)
    return run


# --------------------------------------------------------------------------------------------
# Reading the report back, and independent oracles


def _section(md: str, heading: str) -> str:
    """The body of the ``## heading...`` section (the heading may continue, e.g. "(n = ...)")."""
    parts = md.split(f"\n## {heading}", 1)
    assert len(parts) == 2, f"no section {heading!r}"
    return parts[1].split("\n", 1)[1].split("\n## ", 1)[0]


def _tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """(header, rows) of every Markdown table of ``md``."""
    out, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif block:
            out.append((block[0], block[2:]))
            block = []
    return out


def _row(md: str, heading: str, *first: str) -> list[str]:
    """Cells of the row whose leading cells are ``first`` in the section ``heading``."""
    for _, rows in _tables(_section(md, heading)):
        for cells in rows:
            if tuple(cells[:len(first)]) == first:
                return cells
    raise AssertionError(f"no row {first!r} in section {heading!r}")


def _col(md: str, heading: str, row: list[str], name: str) -> str:
    header = _tables(_section(md, heading))[0][0]
    return row[header.index(name)]


def _parse(cell: str) -> tuple[float, float, float, bool]:
    m = IV.match(cell)
    assert m, f"not an interval: {cell!r}"
    est, lo, hi = (float(g.replace(",", "")) for g in m.groups()[:3])
    return est, lo, hi, m.group(4) is not None


def _t(values, bounds=(0.0, 1.0)) -> tuple[float, float, float, bool]:
    """Mean and 95% Student-t interval from scipy, clipped to ``bounds`` by hand."""
    v = np.asarray(values, dtype=float)
    lo, hi = stats.t.interval(0.95, df=v.size - 1, loc=v.mean(), scale=stats.sem(v))
    clipped = lo < bounds[0] or hi > bounds[1]
    return v.mean(), max(lo, bounds[0]), min(hi, bounds[1]), clipped


def _fmt(est_lo_hi, scale=100.0, digits=2, sign=False) -> str:
    est, lo, hi = (scale * x for x in est_lo_hi[:3])
    head = f"{est:+.{digits}f}" if sign else f"{est:.{digits}f}"
    return f"{head} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _values(df: pd.DataFrame, model: str, test_set: str, metric: str = "accuracy",
            n: int = N_MAX, setup: str = "affnist") -> pd.Series:
    sel = df[(df.setup == setup) & (df.model == model) & (df.test_set == test_set)
             & (df.metric == metric) & (df.n == n) & df.factor_value.isna()]
    return sel.set_index("seed")["value"].sort_index()


def _n_to_reach(sizes, acc, target):
    """Hand oracle: the first size reaching ``target``, linear in log n from the size before."""
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return float(sizes[0])
            a0, n0, n1 = acc[i - 1], math.log(sizes[i - 1]), math.log(sizes[i])
            return math.exp(n0 + (target - a0) / (a - a0) * (n1 - n0))
    return None


def _needed(df: pd.DataFrame, model: str, target: float) -> dict[int, float | None]:
    d = df[(df.setup == "affnist") & (df.model == model) & (df.test_set == "clean")
           & (df.metric == "accuracy")]
    out = {}
    for seed, g in d.groupby("seed"):
        g = g.sort_values("n")
        out[int(seed)] = _n_to_reach(g["n"].to_list(), g["value"].to_list(), target)
    return out


# --------------------------------------------------------------------------------------------
# Structure


def test_scoreboard_first_then_every_section(run):
    md = (run / "report.md").read_text()
    assert md.startswith("# capsbench report\n\n## Claims scoreboard\n")
    for section in ("Run", "How to read this report", "Cells that did not converge",
                    f"Accuracy and calibration at the largest n (n = {N_MAX:,})",
                    f"Difference to capsnet at the largest n (n = {N_MAX:,})",
                    "Accuracy at matched clean accuracy", "Scrambled and displaced parts",
                    "Calibration", "Linear decodability of the transform", "Data efficiency",
                    "Reconstructions",
                    "The paper's MNIST table", "Throughput", "Test-set generation", "Figures"):
        assert f"\n## {section}\n" in md, section
    assert "## Skipped" not in md  # every input file is present
    assert f"- git commit: `{'0' * 40}`" in md  # the manifest's git_commit (bench.runner)
    assert "- report code: `" in md  # bench.runtime.code_commit (tests/test_plan_record.py)
    assert "79%" in md and "66%" in md and "Gu, Tresp & Hu" in md
    assert "bootstrap" not in md  # the bands are the tables' intervals now
    assert "Equivariance probe" not in md
    board = _section(md, "Claims scoreboard")
    assert "![claims](figures/claims.png)" in board
    assert "label-free feature-density score" in board and "What this run cannot show" in board
    assert "Mahalanobis" in board


def test_headline_intervals_are_scipy_t_clipped(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    for model in ("capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9"):
        row = _row(md, "Accuracy and calibration", model)
        assert row[1] == f"{N_MAX:,}" and row[2] == str(len(SEEDS))
        for test_set in ("clean", "affnist"):
            cell = _col(md, "Accuracy and calibration", row, f"{SHOWN[test_set]} acc. (%)")
            want = _t(_values(df, model, test_set))
            assert cell == _fmt(want) + ("†" if want[3] else ""), (model, test_set)


def test_headline_difference_is_the_paired_t_interval(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    for model in ("baseline-cnn", "convnet-maxpool", "convnet-k9"):
        row = _row(md, "Difference to capsnet", model)
        for test_set in ("clean", "affnist"):
            a, b = _values(df, model, test_set), _values(df, "capsnet", test_set)
            ci = stats.ttest_rel(a, b).confidence_interval(0.95)
            cell = _col(md, "Difference to capsnet", row,
                        f"{SHOWN[test_set]} acc. − capsnet (pp)")
            assert cell == _fmt(((a - b).mean(), ci.low, ci.high), sign=True), (model, test_set)


@pytest.mark.parametrize("name", ["run", "two_seeds", "convnet_wins"])
def test_no_printed_interval_leaves_its_range(name, request):
    """Every accuracy interval in [0, 100] %, every difference in [-100, 100] pp, low <= high."""
    md = (request.getfixturevalue(name) / "report.md").read_text()
    checked = 0
    for header, rows in _tables(md):
        for j, title in enumerate(header):
            for row in rows:
                if not IV.match(row[j]):
                    continue
                est, lo, hi, _ = _parse(row[j])
                assert lo <= est + 1e-9 and est <= hi + 1e-9, (title, row[j])
                if "(%)" in title:
                    assert 0 <= lo <= hi <= 100, (title, row[j])
                    checked += 1
                if "(pp)" in title:
                    assert -100 <= lo <= hi <= 100, (title, row[j])
    assert checked > 0


def test_two_seed_intervals_are_clipped_and_marked(two_seeds):
    md = (two_seeds / "report.md").read_text()
    df = pd.read_csv(two_seeds / "metrics.csv")
    clipped = []
    for _, rows in _tables(_section(md, "Accuracy and calibration")):
        clipped += [c for row in rows for c in row if c.endswith("†")]
    assert clipped  # with two seeds t(0.975, 1) = 12.7: some interval hits 0 or 100
    for c in clipped:
        _, lo, hi, mark = _parse(c)
        assert mark and (lo == 0 or hi == 100)
    row = _row(md, "Accuracy and calibration", "capsnet")
    assert row[2] == "2"
    ece = _values(df, "capsnet", "clean", "ece_calibrated")  # after temperature scaling
    want = _t(ece)
    assert _col(md, "Accuracy and calibration", row, "clean ECE (%)") == (
        _fmt(want) + ("†" if want[3] else ""))


def test_matched_table_states_c_star(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    clean = df[(df.setup == "affnist") & (df.test_set == "clean") & (df.metric == "accuracy")]
    c_star = clean.groupby(["model", "seed"])["value"].max().min()  # highest all reach
    for model in ("capsnet", "convnet-maxpool"):
        row = _row(md, "Accuracy at matched clean accuracy", model, "affNIST-style")
        assert row[2] == f"{100 * c_star:.2f}" and row[3] == str(len(SEEDS))
    assert "c* =" in _section(md, "Claims scoreboard")


def test_data_efficiency_is_geometric_per_seed(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    checked = 0
    for model in ("capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9"):
        row = _row(md, "Data efficiency", model)
        for j, target in enumerate(TARGETS):
            need = _needed(df, model, target)
            cell = row[1 + j]
            missing = sum(v is None for v in need.values())
            if missing:
                assert cell == f"not reached ({missing} of {len(need)} seeds)"
                continue
            logs = np.log(list(need.values()))
            lo, hi = stats.t.interval(0.95, df=logs.size - 1, loc=logs.mean(),
                                      scale=stats.sem(logs))
            if np.ptp(logs) == 0:  # every seed reached it at the smallest size
                assert cell == f"≤ {math.exp(logs[0]):,.0f}"
                continue
            want = f"{math.exp(logs.mean()):,.0f} [{math.exp(lo):,.0f}, {math.exp(hi):,.0f}]"
            assert cell.rstrip("‡") == want, (model, target)
            checked += 1
    assert checked > 0
    # the ratio to the CapsNet: paired t on the per-seed log ratios
    for model in ("baseline-cnn", "convnet-k9"):
        a, b = _needed(df, model, TARGETS[0]), _needed(df, "capsnet", TARGETS[0])
        r = np.log([a[s] / b[s] for s in sorted(a)])
        lo, hi = stats.t.interval(0.95, df=r.size - 1, loc=r.mean(), scale=stats.sem(r))
        cell = _row(md, "Data efficiency", model)[1 + len(TARGETS)]
        assert cell.rstrip("‡") == (f"{math.exp(r.mean()):.2f} [{math.exp(lo):.2f}, "
                                    f"{math.exp(hi):.2f}]×")
    assert _row(md, "Data efficiency", "capsnet")[1 + len(TARGETS)] == "reference"


def test_figure_band_equals_the_table_interval(run, tmp_path):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    main = df[df.setup == "affnist"]
    hollow = {(m, n, s) for m, n, s in NOT_CONVERGED}
    bands = figures.data_efficiency(main, tmp_path / "de", not_converged=hollow)
    assert (tmp_path / "de.png").is_file() and (tmp_path / "de.pdf").is_file()
    # the band at the largest n is the interval printed in the headline table
    for model in ("capsnet", "convnet-maxpool"):
        b = bands[(bands.model == model) & (bands.test_set == "clean") & (bands.n == N_MAX)]
        row = _row(md, "Accuracy and calibration", model)
        printed = _parse(_col(md, "Accuracy and calibration", row, "clean acc. (%)"))
        got = (100 * b["estimate"].item(), 100 * b["low"].item(), 100 * b["high"].item())
        assert [round(x, 2) for x in got] == list(printed[:3])
    # and every band is scipy's t interval of the per-seed values, clipped to [0, 1]
    for r in bands.itertuples():
        want = _t(_values(df, r.model, r.test_set, n=r.n))
        assert np.allclose([r.estimate, r.low, r.high], want[:3]) and r.clipped == want[3]
    # the non-converged cells are the points drawn hollow, on every panel
    assert {(m, n, s) for m, _, n, s in bands.attrs["hollow"]} == hollow
    assert {t for _, t, _, _ in bands.attrs["hollow"]} == set(bands["test_set"])


def test_convergence_is_counted_and_listed(run):
    md = (run / "report.md").read_text()
    cells = pd.read_csv(run / "cells.csv")
    ok = int(cells["converged"].astype(bool).sum())
    assert f"- convergence: {ok} of {len(cells)} cells converged" in _section(md, "Run")
    for model, n, seed in NOT_CONVERGED:
        row = _row(md, "Cells that did not converge", "affnist", model, f"{n:,}", str(seed))
        gain = cells[(cells.model == model) & (cells.n == n) & (cells.seed == seed)
                     & (cells.setup == "affnist")]["val_improvement"].item()
        assert row[-1] == f"{100 * gain:.2f}"
    # the claims that use that cell say so
    board = _row(md, "Claims scoreboard", "C1 viewpoint")
    assert "cells not converged" in board[4]


BETTER = "better than (lower error than) the class-mean image"
WORSE = ("worse than (higher error than) the class-mean image: no evidence that the "
         "reconstructions carry pose")


def test_recon_is_set_beside_the_class_mean(run, convnet_wins):
    for folder, reading in ((run, BETTER), (convnet_wins, None)):
        md = (folder / "report.md").read_text()
        df = pd.read_csv(folder / "metrics.csv")
        own = _values(df, "capsnet", "clean", "recon_mse")
        base = _values(df, "capsnet", "clean", "recon_mse_class_mean")
        ci = stats.ttest_rel(own, base).confidence_interval(0.95)
        row = _row(md, "Reconstructions", "capsnet")
        assert row[3] == _fmt(_t(own), scale=1, digits=4)
        assert row[5] == _fmt(((own - base).mean(), ci.low, ci.high), scale=1, digits=4,
                              sign=True)
        if ci.high < 0:
            want = BETTER
        elif ci.low > 0:
            want = WORSE
        else:
            want = "not distinguishable from the class-mean image"
        assert row[6].startswith(want) and (reading is None or want == reading)
        assert want in _section(md, "Reconstructions").split("\n|", 1)[0]  # the sentence


def _verdicts(md: str) -> dict[str, tuple[str, str]]:
    rows = _tables(_section(md, "Claims scoreboard"))[0][1]
    return {r[0].split()[0]: (r[2], r[5]) for r in rows}


@pytest.mark.parametrize("name", ["run", "two_seeds", "convnet_wins"])
def test_no_verdict_beyond_its_interval(name, request):
    """A claim is called supported or contradicted only when its interval excludes the null."""
    md = (request.getfixturevalue(name) / "report.md").read_text()
    for key, (estimate, verdict) in _verdicts(md).items():
        null = 1.0 if key == "C2" else 0.0
        if not IV.match(estimate):
            assert verdict in ("inconclusive", "not measured"), key
            continue
        _, lo, hi, _ = _parse(estimate)
        want = "supported" if lo > null else "contradicted" if hi < null else "inconclusive"
        assert verdict == want, (key, estimate, verdict)
    for word in ("significant", "outperform", "proves"):
        assert word not in md.lower()


def test_a_run_where_the_convnet_wins(convnet_wins):
    md = (convnet_wins / "report.md").read_text()
    verdicts = _verdicts(md)
    assert verdicts["C1"][1] == "contradicted"  # the max-pooling ConvNet keeps more
    assert verdicts["C2"][1] == "contradicted"  # ... and needs fewer images
    assert verdicts["C4"][1] == "contradicted"  # the fully connected head keeps more
    assert _parse(verdicts["C1"][0])[0] < 0
    row = _row(md, "Accuracy at matched clean accuracy", "convnet-maxpool", "affNIST-style")
    assert _parse(row[5])[0] > 0  # convnet-maxpool minus capsnet, at c*


def test_tex_tables_are_booktabs(run):
    for name in TABLES:
        tex = (run / "tables" / f"{name}.tex").read_text()
        assert tex.count(r"\toprule") == tex.count(r"\midrule") == tex.count(r"\bottomrule") == 1
        spec = re.findall(r"[lrc]|p\{[^}]*\}",
                          re.search(r"\\begin\{tabular\}\{(.+)\}$", tex, re.M).group(1))
        body = tex.split(r"\toprule", 1)[1].split(r"\bottomrule", 1)[0]
        rows = [r for r in body.splitlines() if r.endswith(r"\\")]
        assert len(rows) >= 2
        for r in rows:  # every row has as many cells as the column spec
            assert len(re.split(r"(?<!\\)&", r)) == len(spec), (name, r)
        assert all(ord(ch) < 128 for ch in tex), name  # ±, —, ≤, †, −, × all escaped
        text = [line for line in tex.splitlines()[1:] if not line.startswith(r"\label")]
        assert not re.search(r"(?<!\\)[_%#]", "\n".join(text))  # line 1 is a comment


def test_tex_escaping():
    assert _tex("a_b 5% & x ± y ≤ 2 > 1") == r"a\_b 5\% \& x $\pm$ y $\le$ 2 $>$ 1"
    assert _tex("1.0 [0.5, 1.0]† a − b c*") == r"1.0 [0.5, 1.0]$^\dagger$ a $-$ b c$^*$"


def test_every_figure_written_with_truetype_fonts(run):
    md = (run / "report.md").read_text()
    for stem in STEMS:
        pdf = (run / "figures" / f"{stem}.pdf").read_bytes()
        png = (run / "figures" / f"{stem}.png").read_bytes()
        assert pdf.startswith(b"%PDF") and png.startswith(b"\x89PNG")
        assert b"/Type3" not in pdf and b"/CIDFontType2" in pdf  # fonttype 42
        assert b"CreationDate" not in pdf
        assert f"figures/{stem}.png" in md


def test_rebuild_is_byte_identical(run, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in FILES:
        shutil.copy(run / name, copy / name)
    build_report(copy)
    outputs = sorted(p.relative_to(run) for p in run.rglob("*") if p.is_file()
                     and p.name not in FILES)
    assert len(outputs) == 1 + len(TABLES) + 2 * len(STEMS)
    for rel in outputs:
        assert (copy / rel).read_bytes() == (run / rel).read_bytes(), rel


def test_missing_optional_files_are_skipped_and_said(tmp_path):
    optional = [f for f in FILES if f != "metrics.csv"]
    run = write_run(tmp_path, omit=optional)
    build_report(run)
    md = (run / "report.md").read_text()
    skipped = md.split("## Skipped\n", 1)[1]
    for name in optional:  # the per-image store is named for the older confidences file
        name = "predictions.parquet" if name == "confidences.parquet" else name
        assert f"`{name}` absent" in skipped
    assert "default targets" in skipped
    assert "## Throughput" not in md and "## Cells that did not converge" not in md
    assert "- convergence not recorded (no `cells.csv`)" in md
    assert "convergence not recorded" in _row(md, "Claims scoreboard", "C1 viewpoint")[4]
    written = sorted(p.stem for p in (run / "figures").glob("*.png"))
    assert written == ["affnist_vs_clean", "claims", "data_efficiency", "effective_robustness",
                       "reliability", "sweeps"]


def test_rebuild_removes_outputs_whose_input_is_gone(run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    for name in ("throughput.csv", "examples.pt", "confidences.parquet", "cells.csv"):
        (copy / name).unlink()
    (copy / "figures" / "unrelated.png").write_bytes(b"user file")
    build_report(copy, with_figures=False)  # tables only: figures untouched
    assert not (copy / "tables" / "throughput.tex").exists()
    assert not (copy / "tables" / "convergence.tex").exists()
    assert (copy / "tables" / "headline.tex").is_file()
    assert (copy / "figures" / "throughput.png").is_file()
    build_report(copy)
    assert not (copy / "figures" / "throughput.png").exists()
    assert not (copy / "figures" / "examples.pdf").exists()
    assert (copy / "figures" / "data_efficiency.png").is_file()
    assert (copy / "figures" / "unrelated.png").is_file()  # not ours: kept


def test_run_without_capsnet_and_unknown_model(tmp_path):
    run = write_run(tmp_path, models=("baseline-cnn", "my-net"),
                    omit=["confidences.parquet", "throughput.csv"])
    build_report(run)
    md = (run / "report.md").read_text()
    assert "ratio to capsnet" not in md  # no reference model for the ratios
    assert "## Difference to capsnet" not in md
    assert "no `recon/*`" in md
    verdicts = _verdicts(md)
    for key in ("C1", "C2", "C3"):
        assert verdicts[key] == ("not measured (models capsnet and convnet-maxpool not in "
                                 "this profile)", "not measured")
    assert verdicts["C4"][0] == ("not measured (models capsnet and convnet-k9 not in this "
                                 "profile)")
    assert (run / "figures" / "data_efficiency.png").is_file()
    assert (run / "figures" / "claims.png").is_file()
    assert not (run / "figures" / "reconstructions.png").exists()
    assert _row(md, "Accuracy and calibration", "my-net")[1] == f"{N_MAX:,}"


def test_model_colours_are_fixed_with_a_stable_fallback():
    assert figures.model_color("capsnet") == figures.PALETTE["capsnet"]
    assert figures.model_color("my-net") == figures.model_color("my-net")
    assert figures.model_color("my-net") not in figures.PALETTE.values()
    assert figures.model_order(["zz", "convnet-k9", "capsnet"]) == ["capsnet", "convnet-k9", "zz"]


def test_every_packaged_profile_draws_its_models_in_distinct_colours():
    from bench.config import load_profile, profile_names

    for name in profile_names():
        models = load_profile(name).models
        colours = [figures.model_color(m) for m in models]
        assert len(set(colours)) == len(models), (name, dict(zip(models, colours, strict=True)))


def test_missing_metrics_is_a_one_line_error(tmp_path, capsys):
    run = write_run(tmp_path, omit=["metrics.csv"])
    with pytest.raises(BenchError, match="metrics.csv") as err:
        build_report(run)
    assert "\n" not in str(err.value)
    assert cli_main(["report", str(run)]) == 2
    out = capsys.readouterr().err.strip()
    assert out.startswith("error: ") and "metrics.csv" in out and "\n" not in out


def test_metrics_without_schema_columns_is_an_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"model": ["capsnet"], "value": [0.5]}).to_csv(run / "metrics.csv", index=False)
    with pytest.raises(BenchError, match="lacks columns"):
        build_report(run)


def test_mnist_table_beside_the_paper(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    row = _row(md, "The paper's MNIST table", "capsnet")
    assert row[4] == f"{PAPER_MNIST_ERRORS['capsnet']:.2f}"
    err = _values(df, "capsnet", "clean", "error", n=60_000, setup="mnist28")
    assert row[3] == _fmt(_t(err))


def test_single_seed_has_no_interval(tmp_path):
    run = write_run(tmp_path)
    df = pd.read_csv(run / "metrics.csv")
    df[df.seed == SEEDS[0]].to_csv(run / "metrics.csv", index=False)
    build_report(run, with_figures=False)
    assert not (run / "figures").exists() and (run / "tables" / "headline.tex").is_file()
    md = (run / "report.md").read_text()
    cells = _row(md, "Accuracy and calibration", "capsnet")
    assert cells[2] == "1" and "[" not in cells[3]
    value = _values(df[df.seed == SEEDS[0]], "capsnet", "clean")
    assert math.isclose(float(cells[3]), round(100 * value.item(), 2))
    assert {v for _, v in _verdicts(md).values()} <= {"inconclusive", "not measured"}


def test_convergence_partly_recorded(tmp_path):
    run = write_run(tmp_path, omit=["confidences.parquet", "throughput.csv", "examples.pt"])
    cells = pd.read_csv(run / "cells.csv")
    cells["converged"] = cells["converged"].astype(object)
    cells.loc[0, "converged"] = None  # an older cell without the record
    cells.to_csv(run / "cells.csv", index=False)
    build_report(run, with_figures=False)
    md = (run / "report.md").read_text()
    known = cells["converged"].dropna()
    assert (f"- convergence: {int(known.astype(bool).sum())} of {len(cells)} cells converged"
            in md)
    assert "; 1 not recorded" in _section(md, "Run")


def test_displaced_control_is_the_paired_t_interval(run):
    """The S1 control: capsnet - convnet-maxpool of the density AUROC on the displaced set."""
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    a = _values(df, "capsnet", "displaced", "auroc_mahalanobis")
    b = _values(df, "convnet-maxpool", "displaced", "auroc_mahalanobis")
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    board = _section(md, "Claims scoreboard")
    line = next(x for x in board.splitlines() if x.startswith("Control for S1"))
    want = _fmt(((a - b).mean(), ci.low, ci.high), scale=1, digits=3, sign=True)
    assert f"(n = {N_MAX:,}; {len(SEEDS)} paired seeds): {want} (" in line
    assert f"mean AUROC capsnet {a.mean():.3f}, convnet-maxpool {b.mean():.3f}" in line
    assert "the table \"Scrambled and displaced parts\"" in line
    assert "detects distortion, not specifically part arrangement" in _section(
        md, "Scrambled and displaced parts")


def test_probe_counts_failed_fits_and_states_the_images(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    body = _section(md, "Linear decodability of the transform")
    failed = 0
    for model in ("capsnet", "convnet-maxpool", "convnet-k9"):
        row = _row(md, "Linear decodability of the transform", model)
        for factor in SWEEPS:
            r2 = _values(df, model, f"sweep-{factor}", "probe_r2")
            est, lo, hi, clipped = _t(r2, bounds=(-math.inf, 1.0))
            k = int((r2 < 0).sum())
            want = (f"{est:.3f} [{lo:.3f}, {hi:.3f}]" + ("†" if clipped else "")
                    + f"; median {np.median(r2):.3f}"
                    + (f" (failed fits: {k} of {len(r2)})" if k else ""))
            assert _col(md, "Linear decodability of the transform", row, f"{factor} R²") == want
            failed += k
    assert failed == 1 and FAILED_FIT[0] == "convnet-k9"  # the fixture's one failed fit
    assert "far below 0 it is a failed fit" in body
    points = {f: len(grid) for f, (grid, _, _) in SWEEPS.items()}
    for factor, p in points.items():  # the translate sweep has fewer points: listed per factor
        assert f"{factor} {SWEEP_N * p:,} ({SWEEP_N} digits × {p} points)" in body


def test_interval_of_zero_width_says_all_seeds_equal():
    assert readout.iv(Interval(0.7, 0.7, 0.7, 5, "t"), 100) == "70.00 (all seeds equal)"
    assert readout.iv(Interval(0.02, 0.02, 0.02, 5, "t"), 100, signed=True,
                      unit=" pp") == "+2.00 pp (all seeds equal)"
    assert readout.iv(Interval(0.7, 0.6, 0.8, 5, "t"), 100) == "70.00 [60.00, 80.00]"
    assert readout.iv(Interval(0.7, math.nan, math.nan, 1, "t"), 100) == "70.00"
    assert readout.iv_int(Interval(300.0, 300.0, 300.0, 3, "t")) == "300 (all seeds equal)"
    # five seeds of 49/50 each: the mean differs from 0.98 in the last bit, so the t interval
    # has a width of rounding size (1e-16), not 0; it is still every seed giving one value
    x = np.full(5, 49 / 50)
    lo, hi = stats.t.interval(0.95, df=4, loc=np.mean(x), scale=max(stats.sem(x), 1e-17))
    assert readout.iv(Interval(float(np.mean(x)), lo, hi, 5, "t"), 100) == "98.00 (all seeds equal)"
    assert readout.iv(Interval(0.98, 0.9799, 0.9801, 5, "t"), 100, 4) == "98.0000 [97.9900, 98.0100]"


def test_how_to_read_states_what_the_intervals_leave_out(run):
    body = _section((run / "report.md").read_text(), "How to read this report")
    text = " ".join(body.split())
    assert "over seeds for FIXED test digits" in text
    assert 'printed "(all seeds equal)" rather than "[x, x]"' in text
    assert "the n to reach a target) is not in the intervals" in text


def test_reading_of_the_reconstruction_difference():
    assert _reading(Interval(0.005, 0.004, 0.006, 5, "t")) == WORSE
    assert _reading(Interval(-0.005, -0.006, -0.004, 5, "t")).startswith(BETTER)
    assert _reading(Interval(0.0, -0.001, 0.001, 5, "t")).startswith(
        "not distinguishable from the class-mean image")


def test_captions_of_calibration_data_efficiency_and_confidence(run):
    md = (run / "report.md").read_text()
    assert ("T is fitted on clean validation images and does not carry over to the shifted "
            "(affNIST-style) set, where it can raise the ECE") in _section(md, "Calibration")
    data = " ".join(_section(md, "Data efficiency").split())
    assert "the error of interpolating between the sizes trained is not in them" in data
    assert "a fixed rule" in data and "pre-registered" not in md
    figs = _section(md, "Figures")
    assert "plot unconditioned accuracy" in figs
    assert "compared only with each other: raw scores are not comparable across families" in figs
    assert "Signs: each effect is signed so that a positive value" in _section(
        md, "Claims scoreboard")


def test_convergence_line_and_table_under_the_familywise_rule(tmp_path):
    """With per-cell sign-test p-values in ``cells.csv`` the Run section states both counts (the
    per-cell ``converged_cell`` first, then the run-level ``converged``) and the pooled evidence:
    the summed turned-right / turned-wrong counts with their sign test (scipy's binomtest) and
    the mean gain per cell with its t-interval over cells (scipy); the table of cells that did not
    converge shows each one's p-value."""
    run = write_run(tmp_path, omit=["confidences.parquet", "throughput.csv", "examples.pt"])
    cells = pd.read_csv(run / "cells.csv")
    cells["converged_cell"] = cells["converged"]
    cells.loc[cells.index[:3], "converged_cell"] = False  # flagged alone, not across the run
    cells["val_improvement_p"] = np.where(cells["converged"], 0.01, 1e-6)
    rng = np.random.default_rng(0)
    cells["val_turned_right"] = rng.integers(0, 30, len(cells))
    cells["val_turned_wrong"] = rng.integers(0, 30, len(cells))
    cells.to_csv(run / "cells.csv", index=False)
    build_report(run, with_figures=False)
    md = (run / "report.md").read_text()
    run_section = _section(md, "Run")
    ok, alone = int(cells["converged"].sum()), int(cells["converged_cell"].sum())
    assert f"{alone} of {len(cells)} cells by the per-cell test" in run_section
    assert f"{ok} of {len(cells)} across the run" in run_section
    assert "family-wise error 5 %" in run_section
    right, wrong = int(cells["val_turned_right"].sum()), int(cells["val_turned_wrong"].sum())
    p = stats.binomtest(right, right + wrong, 0.5, alternative="greater").pvalue
    assert (f"{right:,} validation images turned right and {wrong:,} wrong over the last quarter "
            f"(sign test p = {p:.2g})") in run_section
    gains = 100 * cells["val_improvement"].to_numpy(float)
    ci = stats.t.interval(0.95, len(gains) - 1, loc=gains.mean(), scale=stats.sem(gains))
    assert f"mean gain per cell {gains.mean():+.2f} [{ci[0]:.2f}, {ci[1]:.2f}] points" in run_section
    tex = (run / "tables" / "convergence.tex").read_text()
    assert "p (sign test)" in tex and "1e-06" in tex
