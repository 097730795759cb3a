"""The runner end to end on a tiny profile: every output, resume, and an interrupted run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cell import plan as the_plan
from bench.config import load_profile
from bench.runner import cell as runner_cell
from bench.runner import stages as runner
from bench.runner import todo
from tests.tiny_profile import TINY


@pytest.fixture
def tiny(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    return load_profile(str(f))


def _run(profile, run_dir, stages=todo.STAGE_ORDER, cache=None):
    return runner.run(profile, stages, run_dir, torch.device("cpu"), progress=False)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))


def test_run_all_writes_every_output_and_resumes(tiny, tmp_path):
    run_dir = tmp_path / "run"
    outcomes = _run(tiny, run_dir)
    assert outcomes and all(o["ok"] for o in outcomes.values()), outcomes
    for name in ("metrics.csv", "throughput.csv", "manifest.json", "report.md",
                 "predictions.parquet", "examples.pt"):
        assert (run_dir / name).is_file(), name
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert set(metrics["model"]) == {"capsnet", "convnet-maxpool"}
    assert {"clean", "affnist", "scramble-g2", "sweep-rotation"} <= set(metrics["test_set"])
    assert set(metrics.columns) >= {"setup", "model", "n", "seed", "test_set", "factor_value",
                                    "metric", "value"}
    # cells.csv: the last-quarter gain (from two validation accuracies) is the net count of the
    # validation images that turned right over the same interval.
    cells = pd.read_csv(run_dir / "cells.csv")
    val = tiny.train.val_size
    counted = cells.dropna(subset=["val_turned_right", "val_turned_wrong"])
    assert len(counted) == len(cells)
    net = (counted["val_turned_right"] - counted["val_turned_wrong"]) / val
    assert np.allclose(net, counted["val_improvement"], atol=1e-9)
    assert set(cells.columns) >= {"converged", "converged_cell"}
    # Resume: nothing is retrained, results are identical.
    markers = sorted(run_dir.glob("cells/*/*/*/train.json"))
    assert len(markers) == len(the_plan.cells(tiny))
    stamps = [m.stat().st_mtime_ns for m in markers]
    _run(tiny, run_dir, stages=("train", "eval"))
    assert [m.stat().st_mtime_ns for m in markers] == stamps
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv"), metrics)


def test_interrupted_run_keeps_finished_cells_and_resumes(tiny, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    real = runner_cell.run_cell
    calls = []

    def flaky(task):
        calls.append(task.cell)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(runner, "run_cell", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(tiny, run_dir, stages=("train", "eval"))
    done = sorted(run_dir.glob("cells/*/*/*/eval.json"))
    assert len(done) == 1  # the first cell finished, the second left nothing that counts
    monkeypatch.setattr(runner, "run_cell", real)
    outcomes = _run(tiny, run_dir, stages=("train", "eval"))
    assert all(o["ok"] for o in outcomes.values())
    assert len(sorted(run_dir.glob("cells/*/*/*/eval.json"))) == len(the_plan.cells(tiny))


def test_changed_profile_does_not_reuse_cells(tiny, tmp_path):
    a = the_plan.cell_dir(tmp_path, tiny, the_plan.cells(tiny)[0], "cpu")
    other = load_profile("smoke")
    b = the_plan.cell_dir(tmp_path, other, the_plan.cells(tiny)[0], "cpu")
    assert a != b


def test_eval_stage_without_training_is_an_error(tmp_path):
    from bench.cli import main

    rc = main(["run", "eval", "--profile", "smoke", "--device", "cpu", "--out", str(tmp_path)])
    assert rc == 2



@pytest.mark.parametrize("argv", [
    ["run", "train", "--profile", "smoke"],
    ["train", "--profile", "smoke", "--model", "capsnet", "--n", "100"],
])
def test_download_flag_reaches_training(tmp_path, monkeypatch, argv):
    """`--download` is handed to the training's data loading (a fresh machine has no data)."""
    import bench.cell.train as train
    from bench.cli import main
    from bench.errors import BenchError

    seen = []

    def fake_load_split(split, dataset, data_dir=None, download=False):
        seen.append((split, dataset, data_dir, download))
        raise BenchError("stop here: the flag was seen")

    def no_timing(profile, device, keys, generation):  # the estimate printed first: not tested here
        return todo.MeasuredRates({k: 1.0 for k in keys}, {k: 1.0 for k in keys}, 1.0)

    monkeypatch.setattr(train, "load_split", fake_load_split)
    monkeypatch.setattr(todo, "measure_rates", no_timing)
    rc = main([*argv, "--device", "cpu", "--out", str(tmp_path), "--download",
               "--data-dir", str(tmp_path / "data")])
    assert rc == 2  # the stub stopped the cell
    assert seen and all(s == ("train", "mnist", str(tmp_path / "data"), True) for s in seen)


def test_the_cache_key_covers_the_weight_code_and_nothing_else(tmp_path):
    """A printed message does not move the key; a seed function or the trainer does."""
    from bench.cell.plan import TRAIN_CODE, source_hash

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text("W = 1\n")
    (tmp_path / "train.py").write_text("def step():\n    return 1\n")
    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x\n\n"
                                    "def write(p):\n    print('writing', p)\n")
    (tmp_path / "cli.py").write_text("print('hello')\n")
    parts = ("train.py", "models", "io.py:derive_seed")
    key = source_hash(tmp_path, parts)

    (tmp_path / "cli.py").write_text("print('hello, world')\n")  # only prints: same key
    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x\n\n"
                                    "def write(p):\n    print('now writing', p)\n")
    assert source_hash(tmp_path, parts) == key

    (tmp_path / "io.py").write_text("def derive_seed(x):\n    return x + 1\n\n"
                                    "def write(p):\n    print('now writing', p)\n")
    assert source_hash(tmp_path, parts) != key  # the seeds change: new key
    key = source_hash(tmp_path, parts)
    (tmp_path / "models" / "net.py").write_text("W = 2\n")
    assert source_hash(tmp_path, parts) != key
    # The real key names the trainer, the models and the seed function.
    assert {"cell/train.py", "models", "io.py:derive_seed"} <= set(TRAIN_CODE)


def _copy_weight_code(dest):
    """The package's files named by TRAIN_CODE, copied under ``dest`` (same relative paths)."""
    import shutil

    from bench.cell.plan import PACKAGE_DIR, TRAIN_CODE

    for part in TRAIN_CODE:
        rel = part.partition(":")[0]
        src = PACKAGE_DIR / rel
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest / rel, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / rel)
    return dest


def test_a_docstring_or_a_message_of_the_trainer_keeps_the_cell_key(tmp_path):
    """Only a docstring, a comment or an error message of bench/cell/train.py edited: the cache
    key (the hash every cell folder's name carries) is the one of the package as it is; a changed
    constant of the trainer changes it."""
    from bench.cell.plan import PACKAGE_DIR, TRAIN_CODE, code_hash, source_hash

    assert source_hash(PACKAGE_DIR, TRAIN_CODE) == code_hash()
    root = _copy_weight_code(tmp_path / "bench")
    trainer = root / "cell" / "train.py"
    text = trainer.read_text()
    assert source_hash(root, TRAIN_CODE) == code_hash()

    doc = '"""Optimisation steps for a training set of ``n`` images'
    assert doc in text
    edited = text.replace(doc, '"""How many optimisation steps (edited docstring) for ``n`` images', 1)
    edited = edited.replace("MIN_LR = 1e-6", "# a new comment line\nMIN_LR = 1e-6", 1)
    msg = 'raise BenchError("the cosine learning-rate schedule needs the step budget")'
    assert msg in edited
    edited = edited.replace(msg, 'raise BenchError("a cosine schedule needs a step budget")', 1)
    trainer.write_text(edited)
    assert source_hash(root, TRAIN_CODE) == code_hash()

    trainer.write_text(edited.replace("MIN_LR = 1e-6", "MIN_LR = 1e-7", 1))
    assert source_hash(root, TRAIN_CODE) != code_hash()


def test_the_convergence_rules_are_outside_the_cell_key(tmp_path):
    """The convergence rules (bench/cell/convergence.py) are not part of the key: copying the
    weight code without them hashes the same as the package."""
    from bench.cell.plan import TRAIN_CODE, code_hash, source_hash

    root = _copy_weight_code(tmp_path / "bench")
    assert not (root / "cell" / "convergence.py").exists()
    assert source_hash(root, TRAIN_CODE) == code_hash()
