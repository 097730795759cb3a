"""Runs that can be planned and left alone: the plan and its estimate, two runs on one folder,
stale locks, damaged files rebuilt, a full disk.

Oracles: plan counts and estimates worked by hand from the tiny profile below; results compared
with an undamaged, single run of the same cells (CPU training is bitwise repeatable at one
thread count); lock files judged from records written by the test itself.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import io as bio
from bench.cell import plan as the_plan
from bench.cell.files import CellFiles, file_record
from bench.cli import main
from bench.config import load_profile
from bench.errors import BenchError
from bench.locks import FileLock
from bench.runner import cell as runner_cell
from bench.runner import collect as runner_collect
from bench.runner import stages as runner
from bench.runner import todo
from bench.runner.estimate import CELL_OVERHEAD_S, REPORT_S
from tests.tiny_profile import TINY as TINY_RUN

REPO = Path(__file__).resolve().parents[1]

# 2 models x 2 sizes x 1 seed = 4 cells; 4 steps of batch 8, 2 validations of 16 images each.
# Test sets (scramble_grids [2]): clean 24, affnist 24 x 1, sweeps 8 x (3 + 2 + 2 + 2) = 72,
# scramble-g2 24, displaced 24, overlap 24: 9 sets, 192 images.
TINY = TINY_RUN.replace("translate_grid = [0, 6]\n", "translate_grid = [0, 6]\nscramble_grids = [2]\n")
SET_NAMES = ["clean", "affnist", "sweep-rotation", "sweep-scale", "sweep-shear",
             "sweep-translate", "scramble-g2", "displaced", "overlap"]
CPU = torch.device("cpu")
CELL_STAGES = ("train", "eval")


@pytest.fixture
def tiny_path(tmp_path) -> Path:
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    return f


@pytest.fixture
def tiny(tiny_path):
    return load_profile(str(tiny_path))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """A fresh test-set cache per test, and no sets remembered by an earlier test's process
    (evaluation keeps the sets it loaded: ``bench.cell.evaluate._test_sets``)."""
    from bench.cell import evaluate

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    evaluate._test_sets.cache_clear()


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread here and in the subprocesses (OMP_NUM_THREADS=1): results depend on the
    thread count, so every run compared below uses the same."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _files(profile, run_dir, cell) -> CellFiles:
    return CellFiles(the_plan.cell_dir(run_dir, profile, cell, "cpu"))


def _run_cells(profile, run_dir):
    return runner.run(profile, CELL_STAGES, run_dir, CPU, progress=False)


def _stub_rates(calls: list):
    """measure_rates returning fixed rates: train 80 images/s, inference 160, generation 1000."""

    def fake(profile, device, keys, generation, threads=None):
        keys = set(keys)
        calls.append((keys, generation))
        return todo.MeasuredRates({k: 80.0 for k in keys}, {k: 160.0 for k in keys},
                                    1000.0 if generation else 0.0, 0.0)

    return fake


def _leftovers(folder: Path) -> list[Path]:
    """Lock files and temporary files left anywhere under ``folder``."""
    return sorted(p for p in folder.rglob("*")
                  if p.name.endswith((".tmp", ".lock", ".takeover")) or p.name == "lock.json")


# --------------------------------------------------------------------------------------------
# 1. The plan and its estimate


def test_the_plan_counts_cells_to_train_evaluate_and_reuse(tiny, tmp_path):
    run_dir = tmp_path / "run"
    plan = todo.plan_run(tiny, todo.STAGE_ORDER, run_dir, CPU)
    assert (len(plan.train), len(plan.evaluate), len(plan.reuse)) == (4, 0, 0)
    assert plan.sets_build == {"affnist": SET_NAMES} and plan.sets_cached == {"affnist": []}
    assert plan.throughput and plan.report
    assert not run_dir.exists()  # planning writes nothing

    first, second, *_ = the_plan.cells(tiny)
    for cell, stages in ((first, CELL_STAGES), (second, ("train",))):
        runner_cell.run_cell(runner_cell.CellTask(tiny, cell, str(_files(tiny, run_dir, cell).folder), "cpu",
                                        stages, progress=False))
    plan = todo.plan_run(tiny, todo.STAGE_ORDER, run_dir, CPU)
    assert plan.reuse == [first] and plan.evaluate == [second]
    assert plan.train == the_plan.cells(tiny)[2:]
    assert plan.sets_build == {"affnist": []} and plan.sets_cached == {"affnist": SET_NAMES}
    # Training alone: both trained cells are finished for it.
    plan = todo.plan_run(tiny, ("train",), run_dir, CPU)
    assert (len(plan.train), len(plan.evaluate), len(plan.reuse)) == (2, 0, 2)
    assert plan.sets_build == {} and not plan.throughput


def test_the_estimate_of_the_work_left_is_worked_by_hand(tiny, tmp_path):
    plan = todo.plan_run(tiny, todo.STAGE_ORDER, tmp_path / "run", CPU)
    keys = {("affnist", "capsnet"), ("affnist", "convnet-maxpool")}
    rates = todo.MeasuredRates({k: 80.0 for k in keys}, {k: 160.0 for k in keys}, 1000.0)
    est = todo.estimate_run(tiny, plan, CPU, rates=rates)
    # Per cell: train 4 x 8 / 80 = 0.4; validation 2 x 16 / 160 = 0.2; evaluation 192 / 160.
    assert est["train_s"] == pytest.approx(4 * 0.4)
    assert est["val_s"] == pytest.approx(4 * 0.2)
    assert est["eval_s"] == pytest.approx(4 * 192 / 160)
    assert est["overhead_s"] == pytest.approx(4 * CELL_OVERHEAD_S)
    assert est["data_s"] == pytest.approx(192 / 1000)
    # Throughput: per model 2 calls x (4 / 80 + 4 / 160 + 1 / 160), then 24 x 4 images / 1000.
    throughput = 2 * 2 * (4 / 80 + 4 / 160 + 1 / 160) + 24 * 4 / 1000
    assert est["extra_s"] == pytest.approx(throughput + REPORT_S)


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_path, tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(todo, "measure_rates", _stub_rates(calls))
    out = tmp_path / "run"
    rc = main(["run", "train", "--profile", str(tiny_path), "--device", "cpu", "--out", str(out),
               "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    # 4 cells x (train 0.4 + validation 0.2 + overhead) seconds, nothing else in this stage.
    total = 4 * (0.4 + 0.2 + CELL_OVERHEAD_S)
    assert f"tiny profile on cpu (1 thread): 4 cells to train (0 reused), about {total:.0f} s" in text
    assert calls == [({("affnist", "capsnet"), ("affnist", "convnet-maxpool")}, False)]
    assert not out.exists()


@pytest.mark.parametrize(("cpus", "workers", "at_once", "threads"), [
    (4, 2, 2, 2),  # two workers of 2 threads
    (16, 8, 4, 2),  # 8 workers of 2 threads, but the plan has only 4 cells
    (2, 4, 2, 1),  # 4 one-thread workers on 2 cores: 2 at once
])
def test_dry_run_with_local_cpu_workers_times_a_workers_threads(tiny_path, tmp_path, monkeypatch,
                                                                 capsys, cpus, workers, at_once,
                                                                 threads):
    """Local workers on the CPU: the rates are timed at a worker's threads (the CPUs split
    evenly), and the per-cell sum is divided by the cells that can run at once (workers, capped
    by the cores and by the cells left); worked by hand from the stub rates."""
    seen = []

    def fake(profile, device, keys, generation, threads=None):
        seen.append(threads)
        return _stub_rates([])(profile, device, keys, generation)

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    monkeypatch.setattr(todo, "measure_rates", fake)
    out = tmp_path / "run"
    rc = main(["run", "train", "--profile", str(tiny_path), "--device", "cpu", "--out", str(out),
               "--max-parallel", str(workers), "--dry-run"])
    assert rc == 0
    text = capsys.readouterr().out
    total = 4 * (0.4 + 0.2 + CELL_OVERHEAD_S) / at_once  # as above, cells at once
    assert seen == [threads]
    each = f"{threads} thread{'s' if threads != 1 else ''} each"
    assert (f"tiny profile on cpu ({at_once} cells at once, {each}): 4 cells to train (0 reused), "
            f"about {total:.0f} s") in text


def test_max_hours_stops_before_training_with_a_one_line_error(tiny_path, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.setattr(todo, "measure_rates", _stub_rates([]))
    out = tmp_path / "run"
    total = 4 * (0.4 + 0.2 + CELL_OVERHEAD_S)  # as above
    argv = ["run", "train", "--profile", str(tiny_path), "--device", "cpu", "--out", str(out)]
    rc = main([*argv, "--max-hours", f"{0.9 * total / 3600:.6f}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert f"estimated at about {total:.0f} s" in err and "--max-hours" in err
    assert not (out / "cells").exists()
    # Above the estimate: allowed (a dry run, so that nothing trains here).
    assert main([*argv, "--max-hours", f"{1.1 * total / 3600:.6f}", "--dry-run"]) == 0


def test_finished_cells_cost_nothing_in_the_estimate(tiny, tmp_path):
    run_dir = tmp_path / "run"
    _run_cells(tiny, run_dir)
    plan = todo.plan_run(tiny, todo.STAGE_ORDER, run_dir, CPU)
    assert (len(plan.train), len(plan.evaluate), len(plan.reuse)) == (0, 0, 4)
    est = todo.estimate_run(tiny, plan, CPU, rates=todo.MeasuredRates(
        {("affnist", m): 80.0 for m in tiny.models}, {("affnist", m): 160.0 for m in tiny.models},
        1000.0))
    assert est["cells"] == 0 and est["train_s"] == est["eval_s"] == est["data_s"] == 0


# --------------------------------------------------------------------------------------------
# 2. Locks: two runs, one folder












def test_a_run_skips_a_cell_held_elsewhere_then_waits_for_it(tiny, tmp_path, monkeypatch):
    """A live holder's cell is skipped in the sweep; once released it is run by this run."""
    monkeypatch.setattr(runner, "CELL_WAIT_POLL_S", 0.1)
    monkeypatch.setattr(runner_cell, "CELL_WAIT_POLL_S", 0.1)
    run_dir = tmp_path / "run"
    held = the_plan.cells(tiny)[0]
    other = FileLock(_files(tiny, run_dir, held).lock, label="another run")
    assert other.try_acquire() is None
    seen = []
    real = runner_cell.run_cell

    def spy(task):
        result = real(task)
        seen.append((task.cell, runner_cell.RUNNING_ELSEWHERE in result))
        if len(seen) == len(the_plan.cells(tiny)):  # the sweep is through: the other run finishes
            threading.Timer(0.3, other.release).start()
        return result

    monkeypatch.setattr(runner, "run_cell", spy)
    outcomes = _run_cells(tiny, run_dir)
    assert seen[0] == (held, True) and seen[-1] == (held, False)
    assert all(o["ok"] for o in outcomes.values())
    assert "another run" in outcomes[held.label]["ran_elsewhere"]
    assert _files(tiny, run_dir, held).eval_summary.is_file()


def test_a_test_set_being_built_elsewhere_is_waited_for_not_built_twice(tmp_path, monkeypatch):
    from bench.config import DataConfig
    from bench.data import testsets
    from bench.data.mnist import load_split

    cfg = DataConfig(n_test=16, affnist_k=1, sweep_n=4)
    cache = tmp_path / "sets"
    spec = testsets._spec("clean", cfg, bio.sha256_tensor(load_split("test")[0]), CPU)
    pt, js, lock_path = testsets._cache_paths(cache, "clean", spec)
    built = testsets.generate("clean", cfg)
    built.spec = spec
    other = FileLock(lock_path)
    assert other.try_acquire() is None  # "another process" is building the set

    def no_build(*args, **kwargs):
        raise AssertionError("built a set that another process was building")

    monkeypatch.setattr(testsets, "_generate", no_build)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(testsets.build_test_sets(
        cfg, names=("clean",), progress=False, cache_dir=cache)))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and not pt.exists()  # waiting, not building
    testsets._save_cached(pt, js, built, cfg, CPU)
    other.release()
    waiter.join(30)
    assert got["clean"].cached and torch.equal(got["clean"].images, built.images)


def _bench(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_runs_at_once_on_one_folder_share_the_work_and_agree(tiny, tiny_path, tmp_path):
    """Both exit 0 (each waits for the cells the other runs); the results equal a single run's."""
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_CACHE_DIR": str(tmp_path / "cache")}
    argv = ["run", "all", "--profile", str(tiny_path), "--device", "cpu", "--out", str(shared)]
    procs = [_bench(argv, env) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert not any("taking over" in o for o in outs)  # both were alive: no lock was stale
    assert not _leftovers(shared) and not _leftovers(tmp_path / "cache")
    for cell in the_plan.cells(tiny):
        files = _files(tiny, shared, cell)
        assert files.damaged("train") is None and files.damaged("eval") is None
    # A rerun finds every cell finished; its tables equal those of one undisturbed run.
    markers = sorted(shared.glob("cells/*/*/*/train.json"))
    stamps = [m.stat().st_mtime_ns for m in markers]
    _run_cells(tiny, shared)
    assert [m.stat().st_mtime_ns for m in markers] == stamps
    _run_cells(tiny, alone)
    pd.testing.assert_frame_equal(pd.read_csv(shared / "metrics.csv"),
                                  pd.read_csv(alone / "metrics.csv"))


# --------------------------------------------------------------------------------------------
# 3. Damaged files are never used


def test_a_garbled_metrics_csv_and_a_truncated_checkpoint_are_rebuilt(tiny, tmp_path):
    run_dir = tmp_path / "run"
    _run_cells(tiny, run_dir)
    reference = pd.read_csv(run_dir / "metrics.csv")
    a, b, *_ = the_plan.cells(tiny)
    fa, fb = _files(tiny, run_dir, a), _files(tiny, run_dir, b)
    fa.metrics.write_text("setup,model,n\ncapsnet,garbled,\n")  # read_csv -> IntCastingNaNError before
    size = fb.checkpoint.stat().st_size
    with open(fb.checkpoint, "r+b") as f:
        f.truncate(size // 2)
    weights_b = json.loads(fb.train_summary.read_text())["weights_hash"]
    with pytest.warns(UserWarning) as record:
        outcomes = _run_cells(tiny, run_dir)
    messages = [str(w.message) for w in record]
    assert any(f"{fa.metrics}" in m and "rebuilding its evaluation" in m for m in messages)
    assert any(f"{fb.checkpoint}" in m and f"expected {size}" in m and "rebuilding its training" in m
               for m in messages)
    assert all(o["ok"] for o in outcomes.values())
    assert fb.checkpoint.stat().st_size == size
    assert json.loads(fb.train_summary.read_text())["weights_hash"] == weights_b
    pd.testing.assert_frame_equal(pd.read_csv(run_dir / "metrics.csv"), reference)


def test_collect_leaves_a_damaged_cell_out_with_a_warning(tiny, tmp_path):
    run_dir = tmp_path / "run"
    _run_cells(tiny, run_dir)
    cell = the_plan.cells(tiny)[0]
    files = _files(tiny, run_dir, cell)
    files.eval_summary.write_text("{not json")
    with pytest.warns(UserWarning, match=f"{cell.label} left out.*{files.eval_summary.name}"):
        runner_collect.collect(tiny, run_dir, "cpu")
    assert cell.model not in set(pd.read_csv(run_dir / "metrics.csv")
                                 .query(f"n == {cell.n}")["model"])


def test_checksums_are_recorded_for_every_file_of_a_finished_cell(tiny, tmp_path):
    run_dir = tmp_path / "run"
    _run_cells(tiny, run_dir)
    files = _files(tiny, run_dir, the_plan.cells(tiny)[0])  # the CapsNet: it has examples
    recorded = json.loads(files.checksums.read_text())["files"]
    names = {"checkpoint.pt", "train.json", "metrics.csv", "predictions.parquet", "examples.pt",
             "eval.json"}
    assert set(recorded) == names
    for name in names:
        assert recorded[name] == file_record(files.folder / name)
    assert json.loads(files.train_summary.read_text())["files"] == {
        "checkpoint.pt": recorded["checkpoint.pt"]}


# --------------------------------------------------------------------------------------------
# 4. A full disk


_REAL_WRITE = bio._write_file


def _enospc_after(monkeypatch, allowed_dirs: set[Path]):
    """Writes into cell folders other than ``allowed_dirs`` fail with ENOSPC."""

    def writer(tmp: Path, data: bytes) -> None:
        if "cells" in tmp.parts and tmp.parent not in allowed_dirs:
            raise OSError(errno.ENOSPC, "No space left on device")
        _REAL_WRITE(tmp, data)

    monkeypatch.setattr(bio, "_write_file", writer)


def test_a_full_disk_ends_the_run_in_one_line_and_finished_cells_are_reused(
        tiny_path, tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    first = _files(tiny, out, the_plan.cells(tiny)[0])
    monkeypatch.setattr(todo, "measure_rates", _stub_rates([]))
    _enospc_after(monkeypatch, {first.folder})
    argv = ["run", "train", "--profile", str(tiny_path), "--device", "cpu", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("error: no space left on the device writing " + str(out / "cells"))
    assert str(first.folder) not in errors[0]  # the first cell was allowed to finish
    assert re.search(r"\.pt \([0-9,]+ bytes\)", errors[0])  # its first file: a .pt of known size
    assert not _leftovers(out)  # no temporary file, no lock left behind
    assert first.train_summary.is_file() and first.damaged("train") is None
    stamp = first.train_summary.stat().st_mtime_ns
    monkeypatch.setattr(bio, "_write_file", _REAL_WRITE)  # space freed
    assert main(argv) == 0
    assert first.train_summary.stat().st_mtime_ns == stamp  # reused, not retrained
    assert all(_files(tiny, out, c).train_summary.is_file() for c in the_plan.cells(tiny))


def _disk_full_cell(task: str) -> dict:
    """A cell function whose write fails for lack of space (module-level: workers import it)."""
    raise runner_cell.DiskFullStop(str(bio.DiskFullError(f"/full/{task}/state.pt", 1234)))


@pytest.mark.parametrize("max_parallel", [1, 2])
def test_a_full_disk_stops_the_executor_not_just_one_cell(tmp_path, max_parallel):
    """Serial and in worker processes (``max_parallel > 1``) alike, the stop ends the sweep
    instead of being recorded as one failed cell among others."""
    import pickle

    from bench.runner.executor import ExecutorConfig, run_cells

    full = bio.DiskFullError(tmp_path / "x.pt", 1234)
    assert str(pickle.loads(pickle.dumps(full))) == str(full)  # crosses process boundaries
    with pytest.raises(runner_cell.DiskFullStop, match=r"writing /full/.*/state.pt \(1,234 bytes\)"):
        run_cells(_disk_full_cell, ["a", "b"], ["a", "b"], ExecutorConfig(max_parallel=max_parallel),
                  tmp_path / "logs", progress=False)


def _tmpfs(folder: Path, size: str):
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {r.stderr.strip()}")


def test_a_real_full_disk_on_a_small_tmpfs(tiny, tmp_path, monkeypatch):
    disk = tmp_path / "disk"
    _tmpfs(disk, "192m")
    try:
        run_dir = disk / "run"
        real = runner_cell.run_cell
        done = []

        def fill_after_first(task):
            result = real(task)
            done.append(task.cell)
            if len(done) == 1:  # the disk fills up once the first cell is finished
                with open(disk / "ballast", "wb", buffering=0) as f:
                    for chunk in (1 << 20, 4096):  # until not even one page is free
                        with contextlib.suppress(OSError):
                            while True:
                                f.write(b"\0" * chunk)
            return result

        monkeypatch.setattr(runner, "run_cell", fill_after_first)
        with pytest.raises(BenchError, match=r"^no space left on the device writing .* bytes\)"):
            _run_cells(tiny, run_dir)
        assert not _leftovers(run_dir)
        first = _files(tiny, run_dir, done[0])
        assert first.damaged("train") is None and first.damaged("eval") is None
        stamp = first.train_summary.stat().st_mtime_ns
        (disk / "ballast").unlink()
        monkeypatch.setattr(runner, "run_cell", real)
        outcomes = _run_cells(tiny, run_dir)
        assert all(o["ok"] for o in outcomes.values())
        assert first.train_summary.stat().st_mtime_ns == stamp
    finally:
        subprocess.run(["umount", str(disk)], check=False)
