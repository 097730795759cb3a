"""`bench check`: a moved metric or a changed pixel fails with a table naming it."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from bench.cli import _check as cli_check
from bench.errors import BenchError
from bench.io import read_json, sha256_tensor, write_json
from bench.tools.check import compare, metric_key, snapshot

ENV = {"device": "cpu", "version_torch": "2.14.1", "version_kornia": "0.9.0"}


def make_run(folder, images: torch.Tensor, acc: float = 0.8):
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "manifest.json", {
        "profile": {"name": "smoke"},
        "environment": ENV,
        "torch_threads": 2,
        "data_checksums": {"affnist": {"affnist": {"sha256": sha256_tensor(images), "count": 4}}},
    })
    rows = [
        {"setup": "affnist", "model": "capsnet", "n": 100, "seed": 0, "test_set": "affnist",
         "factor_value": math.nan, "metric": "accuracy", "value": acc},
        {"setup": "affnist", "model": "capsnet", "n": 100, "seed": 0, "test_set": "sweep-rotation",
         "factor_value": 30.0, "metric": "accuracy", "value": 0.5},
    ]
    pd.DataFrame(rows).to_csv(folder / "metrics.csv", index=False)
    return folder


def args(run_dir, baseline, update=False):
    return SimpleNamespace(run_dir=str(run_dir), baseline=str(baseline), update_baseline=update,
                           rerun_cell=False)


@pytest.fixture
def images():
    return torch.randint(0, 256, (4, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_identical_run_passes(tmp_path, images, capsys):
    run = make_run(tmp_path / "run", images)
    base = tmp_path / "base.json"
    assert cli_check(args(run, base, update=True)) == 0
    assert read_json(base)["tolerances"]["same_environment"] == 0.0
    assert cli_check(args(run, base)) == 0
    assert "0 not" in capsys.readouterr().out


def test_one_pixel_changed_fails_naming_the_set(tmp_path, images, capsys):
    base = tmp_path / "base.json"
    cli_check(args(make_run(tmp_path / "a", images), base, update=True))
    changed = images.clone()
    changed[1, 20, 20] ^= 1
    with pytest.raises(BenchError, match="regression check failed"):
        cli_check(args(make_run(tmp_path / "b", changed), base))
    out = capsys.readouterr().out
    assert "data affnist/affnist sha256" in out and "REGRESSION" in out


def test_moved_metric_fails_with_table(tmp_path, images, capsys):
    base = tmp_path / "base.json"
    cli_check(args(make_run(tmp_path / "a", images, acc=0.8), base, update=True))
    with pytest.raises(BenchError):
        cli_check(args(make_run(tmp_path / "b", images, acc=0.79), base))
    out = capsys.readouterr().out
    assert "affnist|capsnet|n100|s0|affnist||accuracy" in out
    assert "0.8" in out and "0.79" in out and "exact" in out


def test_other_environment_uses_bound_and_says_so(tmp_path, images):
    base_snap = snapshot(make_run(tmp_path / "a", images, acc=0.8))
    now = snapshot(make_run(tmp_path / "b", images, acc=0.79))
    now["environment"]["version_torch"] = "2.99"
    rows, notes = compare(base_snap, now)
    assert any("version_torch: 2.14.1 -> 2.99" in n for n in notes)
    assert all(r.verdict == "ok" for r in rows)
    now["metrics"][next(iter(now["metrics"]))] = 0.5  # far outside the bound
    rows, _ = compare(base_snap, now)
    assert any(r.verdict == "REGRESSION" for r in rows)


def test_missing_metric_is_reported(tmp_path, images):
    base_snap = snapshot(make_run(tmp_path / "a", images))
    now = snapshot(make_run(tmp_path / "b", images))
    now["metrics"].pop(next(iter(now["metrics"])))
    rows, _ = compare(base_snap, now)
    assert [r.verdict for r in rows if r.verdict != "ok"] == ["missing"]


def test_missing_baseline_and_run_are_one_line_errors(tmp_path, images):
    run = make_run(tmp_path / "run", images)
    with pytest.raises(BenchError, match="baseline not found"):
        cli_check(args(run, tmp_path / "none.json"))
    with pytest.raises(BenchError, match="not a finished run folder"):
        cli_check(args(tmp_path / "empty", tmp_path / "b.json"))


def test_metric_key_formats_factor_values():
    r = {"setup": "s", "model": "m", "n": 10, "seed": 1, "test_set": "t", "metric": "a"}
    assert metric_key({**r, "factor_value": math.nan}) == "s|m|n10|s1|t||a"
    assert metric_key({**r, "factor_value": 0.5}) == "s|m|n10|s1|t|0.5|a"


def test_a_baseline_folder_picks_the_run_s_processor(tmp_path, images, capsys):
    """Two processors, two baselines: each run is checked against its own, exactly."""
    folder = tmp_path / "baselines"
    folder.mkdir()
    run_a = make_run(tmp_path / "a", images, acc=0.8)
    assert cli_check(args(run_a, folder, update=True)) == 0  # environment without a cpu key
    first = sorted(folder.glob("*.json"))
    assert [p.name for p in first] == ["smoke-cpu-unknown.json"]

    run_b = make_run(tmp_path / "b", images, acc=0.7)
    manifest = read_json(run_b / "manifest.json")
    manifest["environment"] = {**ENV, "cpu": "Some CPU 9000, AVX2"}
    write_json(run_b / "manifest.json", manifest)
    assert cli_check(args(run_b, folder, update=True)) == 0  # adds a file, keeps the first
    assert sorted(p.name for p in folder.glob("*.json")) == [
        "smoke-cpu-some-cpu-9000-avx2.json", "smoke-cpu-unknown.json"]
    assert read_json(folder / "smoke-cpu-unknown.json")["metrics"] == read_json(first[0])["metrics"]

    # Each run passes exactly against its own processor's baseline, not the other's values.
    assert cli_check(args(run_a, folder)) == 0
    assert cli_check(args(run_b, folder)) == 0
    assert "0 not" in capsys.readouterr().out


def test_an_unrecorded_processor_checks_the_data_only(tmp_path, images, capsys):
    """Generated data do not depend on the processor: compared exactly; metrics are not."""
    folder = tmp_path / "baselines"
    folder.mkdir()
    assert cli_check(args(make_run(tmp_path / "a", images, acc=0.8), folder, update=True)) == 0
    run = make_run(tmp_path / "b", images, acc=0.3)  # other weights on another processor
    manifest = read_json(run / "manifest.json")
    manifest["environment"] = {**ENV, "cpu": "Other CPU, AVX2"}
    write_json(run / "manifest.json", manifest)
    assert cli_check(args(run, folder)) == 0
    out = capsys.readouterr().out
    assert "no baseline of this processor (Other CPU, AVX2)" in out and "metrics not compared" in out
    changed = images.clone()
    changed[0, 0, 0] ^= 1
    run = make_run(tmp_path / "c", changed, acc=0.3)
    manifest = read_json(run / "manifest.json")
    manifest["environment"] = {**ENV, "cpu": "Other CPU, AVX2"}
    write_json(run / "manifest.json", manifest)
    with pytest.raises(BenchError, match="regression check failed"):
        cli_check(args(run, folder))
