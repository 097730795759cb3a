"""The report's sweep table and figure, test-set sizes, display names, throughput memory and the
ratio ticks of the claims figure, on the synthetic run of ``tests.fixtures_results``.

Oracles: the fixture's literal constants (cropped fractions, set sizes, peak memory) and scipy's
Student-t interval of the per-seed values, computed here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.report import figures
from bench.report.build import build_report
from tests.fixtures_results import (
    AFFNIST_K,
    CROPPED,
    N_TEST,
    NOT_CONVERGED,
    SIZES,
    SWEEP_N,
    SWEEPS,
    write_run,
)
from tests.report.test_build import _col, _fmt, _row, _section, _t, _tables

N_MAX = max(SIZES)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = write_run(tmp_path_factory.mktemp("sweeps"))
    build_report(run, with_figures=False)
    return run


def _sweep_values(df: pd.DataFrame, model: str, factor: str, value: float,
                  metric: str = "accuracy_fits") -> pd.Series:
    sel = df[(df.setup == "affnist") & (df.model == model) & (df.test_set == f"sweep-{factor}")
             & (df.metric == metric) & (df.n == N_MAX) & (df.factor_value == value)]
    return sel.set_index("seed")["value"].sort_index()


def test_sweep_table_gives_cropped_percentage_and_accuracy_on_fitting_digits(run):
    md = (run / "report.md").read_text()
    df = pd.read_csv(run / "metrics.csv")
    for factor, (grid, _, _) in SWEEPS.items():
        for v in grid:
            row = _row(md, "Per-factor sweeps", factor, f"{v:g}")
            assert row[2] == f"{100 * CROPPED.get((factor, v), 0.0):.1f}", (factor, v)
            for model in ("capsnet", "convnet-maxpool"):
                cell = _col(md, "Per-factor sweeps", row, f"{model} acc. (%)")
                want = _t(_sweep_values(df, model, factor, v))
                assert cell == _fmt(want) + ("†" if want[3] else ""), (factor, v, model)
    assert _row(md, "Per-factor sweeps", "translate", "12")[2] == "45.0"


def test_test_set_sizes_are_stated(run):
    body = _section(md := (run / "report.md").read_text(), "Test sets")
    assert f"- clean: {N_TEST:,} images" in body
    assert (f"- affNIST-style (`affnist`): {N_TEST * AFFNIST_K:,} images "
            f"({N_TEST:,} digits × {AFFNIST_K} transforms)") in body
    assert "- sweep-translate: 200 images (50 digits × 4 points)" in body  # 50 x (0, 4, 8, 12)
    assert SWEEP_N == 50 and len(SWEEPS["translate"][0]) == 4
    assert md.index("## Test sets") < md.index("## How to read this report")


def test_affnist_is_shown_as_affnist_style(run):
    md = (run / "report.md").read_text()
    for header, _ in _tables(md):
        assert not any(h.startswith("affnist ") for h in header), header
    head = _tables(_section(md, "Accuracy and calibration"))[0][0]
    assert "affNIST-style acc. (%)" in head and "affNIST-style ECE (%)" in head
    assert _row(md, "Test-set generation", "affNIST-style")
    assert "C1 viewpoint | affNIST-style accuracy at matched clean accuracy" in md


def test_throughput_table_has_peak_inference_memory(run):
    md = (run / "report.md").read_text()
    # the fixture's peak_infer_mem_mb: 400 - 5 i for the i-th model (capsnet first)
    assert _col(md, "Throughput", _row(md, "Throughput", "capsnet"), "Peak infer. mem (MB)") == "400"
    assert _col(md, "Throughput", _row(md, "Throughput", "convnet-maxpool"),
                "Peak infer. mem (MB)") == "390"


def test_throughput_table_has_params_without_decoder(run):
    md = (run / "report.md").read_text()
    # The CapsNet's decoder at a 40x40 input (the fixture's throughput rows): 160 -> 512 -> 1024
    # -> 1600, weights and biases: 160*512+512 + 512*1024+1024 + 1024*1600+1600 = 2,247,744.
    decoder = 160 * 512 + 512 + 512 * 1024 + 1024 + 1024 * 1600 + 1600
    assert decoder == 2_247_744
    caps = _row(md, "Throughput", "capsnet")
    assert _col(md, "Throughput", caps, "Params") == "8,215,570"  # the fixture's count
    assert _col(md, "Throughput", caps, "Params w/o decoder") == f"{8_215_570 - decoder:,}"
    for model in ("baseline-cnn", "convnet-maxpool", "convnet-k9"):  # no decoder: equal
        row = _row(md, "Throughput", model)
        assert (_col(md, "Throughput", row, "Params w/o decoder")
                == _col(md, "Throughput", row, "Params"))


def test_sweep_figure_draws_fitting_accuracy_and_hollow_non_converged(run, tmp_path):
    df = pd.read_csv(run / "metrics.csv")
    main = df[df.setup == "affnist"]
    bands = figures.sweeps(main, tmp_path / "sw", not_converged=set(NOT_CONVERGED))
    assert (tmp_path / "sw.png").is_file() and (tmp_path / "sw.pdf").is_file()
    assert bands.attrs["metric"] == "accuracy_fits"
    for r in bands.itertuples():
        factor = r.test_set.removeprefix("sweep-")
        want = _t(_sweep_values(df, r.model, factor, r.factor_value))
        assert np.allclose([r.estimate, r.low, r.high], want[:3])
    # the one non-converged cell is at the largest n: every sweep point of it is hollow
    (model, n, seed), = NOT_CONVERGED
    assert n == N_MAX
    points = sum(len(grid) for grid, _, _ in SWEEPS.values())
    hollow = bands.attrs["hollow"]
    assert len(hollow) == points and {(m, s) for m, _, _, s in hollow} == {(model, seed)}


def test_sweep_figure_falls_back_to_accuracy_without_fits_rows(run, tmp_path):
    df = pd.read_csv(run / "metrics.csv")
    main = df[(df.setup == "affnist") & (df.metric != "accuracy_fits")]
    bands = figures.sweeps(main, tmp_path / "sw")
    assert bands.attrs["metric"] == "accuracy" and bands.attrs["hollow"] == []


@pytest.mark.parametrize(("lo", "hi", "want"), [
    (0.95, 2.05, [1.0, 1.2, 1.4, 1.6, 1.8, 2.0]),
    (0.5, 20.0, [0.5, 1.0, 2.0, 5.0, 10.0, 20.0]),
    (0.97, 1.04, [0.98, 1.0, 1.02, 1.04]),
])
def test_ratio_ticks_are_round_and_enough(lo, hi, want):
    assert figures._ratio_ticks(lo, hi) == want
