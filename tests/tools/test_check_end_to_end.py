"""A deliberate regression in a model makes `bench check` fail with a table naming it.

A tiny run becomes the baseline; the same profile is run again with the CapsNet's routing changed
from 3 iterations to 1 (as a code change would), and the check must fail on the CapsNet's
metrics while the data checksums still pass. The unchanged rerun must pass exactly.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from bench.cli import _check as cli_check
from bench.config import load_profile
from bench.errors import BenchError
from bench.models import capsnet as capsnet_module
from bench.runner import stages as runner

TINY = """
models = ["capsnet"]
sizes = [30]
seeds = [0]
targets = [0.2]
[data]
n_test = 24
affnist_k = 1
sweep_n = 8
rotation_grid = [0, 30]
scale_grid = [1.0]
shear_grid = [0.0]
translate_grid = [0]
scramble_grids = [2]
[model]
width = 0.0625
[train]
batch_size = 8
min_steps = 6
max_steps = 6
val_size = 16
eval_every = 3
"""


def _run(profile, run_dir):
    outcomes = runner.run(profile, ("data", "train", "eval"), run_dir, torch.device("cpu"),
                          progress=False)
    assert all(o["ok"] for o in outcomes.values()), outcomes


def _check(run_dir, baseline, update=False):
    return cli_check(SimpleNamespace(run_dir=str(run_dir), baseline=str(baseline),
                                     update_baseline=update, rerun_cell=False))


def test_routing_change_fails_the_check(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    profile = load_profile(str(f))
    baseline = tmp_path / "baseline.json"
    _run(profile, tmp_path / "a")
    _check(tmp_path / "a", baseline, update=True)

    _run(profile, tmp_path / "b")  # unchanged code: identical, bit for bit
    assert _check(tmp_path / "b", baseline) == 0

    real = capsnet_module.CapsNet.__init__

    def one_iteration(self, *args, **kwargs):
        kwargs["iterations"] = 1
        real(self, *args, **kwargs)

    monkeypatch.setattr(capsnet_module.CapsNet, "__init__", one_iteration)
    capsys.readouterr()
    _run(profile, tmp_path / "c")
    with pytest.raises(BenchError, match="regression check failed"):
        _check(tmp_path / "c", baseline)
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "affnist|capsnet|n30|s0|clean||" in out
    assert "sha256" not in out  # the data did not change, only the model
