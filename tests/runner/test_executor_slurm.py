"""The slurm executor against a real single-node Slurm started from Debian's packages.

Marker ``slurm`` (excluded from the default run; ``.ci/run`` installs the packages with
``.ci/slurm-install.sh`` and runs ``python -m pytest tests/runner/test_executor_slurm.py -m slurm``).
The session
fixture starts munge, MariaDB, slurmdbd, slurmctld and slurmd (tests/slurm/cluster.py) and stops
them by pid file at the end. If the daemons cannot start the tests FAIL with the daemon's log;
they are skipped only when Slurm is not installed at all and ``CI`` is unset (a developer machine).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bench.errors import BenchError
from bench.runner.executor import ExecutorConfig, run_cells
from tests.slurm.cells import run_cell
from tests.slurm.cluster import ClusterError, LocalSlurm, missing_binaries

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[1]
if not os.environ.get("CI"):  # in CI a missing submitit fails the tests (BenchError) instead
    pytest.importorskip("submitit", reason="the slurm executor needs submitit (pip install submitit)")


@pytest.fixture(scope="session")
def slurm_cluster():
    missing = missing_binaries()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing): "
                    "bash .ci/slurm-install.sh")
    cluster = LocalSlurm()
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
    started = False
    try:
        try:
            cluster.start()
        except ClusterError as e:
            pytest.fail(f"the local Slurm did not start (logs kept in {cluster.root}): {e}",
                        pytrace=False)
        started = True
        # Jobs inherit the submitter's environment: the config, and the repository on the path
        # so that they import bench and tests.slurm.cells like this process does.
        os.environ.update(cluster.env())
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), saved["PYTHONPATH"]) if p)
        print(f"\nlocal Slurm up in {cluster.startup_s:.1f} s")
        yield cluster
    finally:
        t0 = time.perf_counter()
        cluster.stop()
        print(f"\nlocal Slurm stopped in {time.perf_counter() - t0:.1f} s")
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if started:
            cluster.cleanup()


def _tasks(out_dir: Path, specs):
    tasks = [{"name": n, "op": op, "x": x, "out_dir": str(out_dir), "sleep_s": 120}
             for n, op, x in specs]
    return tasks, [f"toy/{n}" for n, _, _ in specs]


def _slurm(**kw) -> ExecutorConfig:
    # time_limit_min >= 3: submitit asks for a signal 90 s before the limit, checked every ~30 s
    return ExecutorConfig(kind="slurm", time_limit_min=5, poll_s=0.5, **kw)


def test_toy_sweep_equals_local(slurm_cluster, tmp_path, capsys):
    specs = [(f"c{i}", "compute", i) for i in range(4)]
    tasks, keys = _tasks(tmp_path / "local", specs)
    t0 = time.perf_counter()
    local = run_cells(run_cell, tasks, keys, ExecutorConfig(), tmp_path / "logs-local")
    t_local = time.perf_counter() - t0

    tasks, keys = _tasks(tmp_path / "slurm", specs)
    t0 = time.perf_counter()
    slurm = run_cells(run_cell, tasks, keys, _slurm(max_parallel=2, retries=0),
                      tmp_path / "logs-slurm")
    t_slurm = time.perf_counter() - t0

    assert [o.ok for o in slurm] == [True] * 4, [o.error for o in slurm]
    assert [o.result for o in slurm] == [o.result for o in local]
    for n, _, _ in specs:
        assert ((tmp_path / "slurm" / f"{n}.json").read_bytes()
                == (tmp_path / "local" / f"{n}.json").read_bytes())
    ids = [o.job_id for o in slurm]
    assert len(set(ids)) == 4 and all("_" in i for i in ids)  # one job array, one task per cell
    assert {o.node for o in slurm} == {socket.gethostname()}  # jobs ran on this machine
    assert all(Path(o.log_path).exists() and o.attempts == 1 for o in slurm)
    with capsys.disabled():
        print(f"\ntoy sweep, 4 cells: local in-process {t_local:.1f} s, "
              f"local Slurm (2 at a time) {t_slurm:.1f} s, "
              f"bring-up {slurm_cluster.startup_s:.1f} s")


def _kill_first_attempt(marks: Path, name: str, killed: dict, stop: threading.Event) -> None:
    """scancel the job of the cell's first attempt once it runs (it announced its job id)."""
    started = marks / f"{name}.started.1"
    while not stop.is_set():
        if started.exists() and started.read_text():
            job_id = started.read_text().strip()
            time.sleep(0.5)  # mid-way: the cell has written its partial output and sleeps
            killed["job_id"] = job_id
            killed["scancel"] = subprocess.run(["scancel", job_id], capture_output=True,
                                               text=True).returncode
            return
        time.sleep(0.2)


def test_killed_job_is_retried_and_failures_reported(slurm_cluster, tmp_path, capsys):
    specs = [("victim", "killed_once", 1), ("broken", "raise", 2), ("fine", "compute", 3)]
    tasks, keys = _tasks(tmp_path / "out", specs)
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_first_attempt,
                              args=(tmp_path / "out" / "marks", "victim", killed, stop))
    killer.start()
    t0 = time.perf_counter()
    try:
        outs = run_cells(run_cell, tasks, keys, _slurm(max_parallel=2, retries=2),
                         tmp_path / "logs")
    finally:
        stop.set()
        killer.join()
    wall = time.perf_counter() - t0
    victim, broken, fine = outs

    assert killed.get("scancel") == 0, killed
    assert victim.ok and victim.attempts == 2 and victim.result["attempt"] == 2
    assert victim.job_id != killed["job_id"]  # the result came from the resubmitted job
    assert (tmp_path / "out" / "victim.partial.json").exists()  # left by the dead job, ignored
    assert not broken.ok and broken.attempts == 3  # 1 + retries
    assert broken.error == "ValueError: bad value 2 in cell broken"
    assert "Traceback" in Path(broken.log_path).read_text()
    assert fine.ok and fine.attempts == 1
    with capsys.disabled():
        print(f"\nretry test: job {killed['job_id']} scancelled mid-way, cell resubmitted as "
              f"{victim.job_id} and finished (attempts={victim.attempts}); always-failing cell "
              f"reported after {broken.attempts} attempts, log {broken.log_path}; {wall:.1f} s")


def test_exception_in_job_is_one_line_failure(slurm_cluster, tmp_path):
    tasks, keys = _tasks(tmp_path, [("bad", "raise", 9), ("not-dict", "not_a_dict", 1)])
    outs = run_cells(run_cell, tasks, keys, _slurm(retries=0, max_parallel=2), tmp_path / "logs")
    assert [o.ok for o in outs] == [False, False]
    assert outs[0].error == "ValueError: bad value 9 in cell bad"
    assert outs[1].error.startswith("TypeError: cell toy/not-dict returned list, expected a dict")
    for o in outs:
        assert "\n" not in o.error and o.attempts == 1 and o.job_id
        assert "Traceback" in Path(o.log_path).read_text()


def test_refused_submission_is_a_one_line_error(slurm_cluster, tmp_path):
    tasks, keys = _tasks(tmp_path, [("a", "compute", 1)])
    with pytest.raises(BenchError, match="Slurm refused the job array.*[Pp]artition"):
        run_cells(run_cell, tasks, keys, _slurm(partition="no-such-partition"), tmp_path / "logs")


# The smoke profile cut down to two models and one training size, so the test costs ~2 min of CPU.
SMOKE_OVERRIDES = ["models=['capsnet','convnet-maxpool']", "sizes=[100]", "train.steps=20",
                   "train.eval_every=10"]


def _drop_timing(obj: Any) -> Any:
    """A record without its wall-clock fields (``*seconds*``, ``*per_s``, the ``timing``
    breakdown of train.json and eval.json): they differ by nature."""
    if isinstance(obj, dict):
        return {k: _drop_timing(v) for k, v in obj.items()
                if not ("seconds" in str(k) or str(k).endswith("per_s") or k == "timing")}
    if isinstance(obj, list | tuple):
        return [_drop_timing(v) for v in obj]
    return obj


def _same(a: Path, b: Path) -> bool:
    """Bit-for-bit equality of two result files, wall-clock fields aside."""
    import pandas as pd
    import torch

    if a.suffix == ".json":
        return _drop_timing(json.loads(a.read_text())) == _drop_timing(json.loads(b.read_text()))
    if a.suffix == ".parquet":
        return pd.read_parquet(a).equals(pd.read_parquet(b))
    if a.suffix == ".pt" and a.read_bytes() != b.read_bytes():
        x, y = (_drop_timing(torch.load(p, weights_only=True)) for p in (a, b))
        flat_x, flat_y = _flatten(x), _flatten(y)
        return flat_x.keys() == flat_y.keys() and all(
            torch.equal(v, flat_y[k]) if torch.is_tensor(v) else v == flat_y[k]
            for k, v in flat_x.items())
    return a.read_bytes() == b.read_bytes()


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        return {k2: v2 for k, v in obj.items() for k2, v2 in _flatten(v, f"{prefix}{k}.").items()}
    return {prefix: obj}


@pytest.mark.timeout(900)
def test_smoke_sweep_equals_local_bit_for_bit(slurm_cluster, tmp_path, capsys):
    """The lead's runner (bench.runner.stages): the data, train and eval stages of a tiny smoke
    sweep through the slurm executor give bit-identical results to the local executor."""
    if os.environ.get("CI"):
        import bench.runner.stages as runner  # in CI a missing runner is a failure, not a skip
    else:
        runner = pytest.importorskip("bench.runner.stages")
    import torch

    from bench.config import load_profile
    from bench.runtime import resolve_device

    profile = load_profile("smoke", SMOKE_OVERRIDES)
    device = resolve_device("cpu")
    stages = ("data", "train", "eval")
    # On the CPU the torch thread count changes the bits of a training run (seen here: 1 and 2
    # threads give different weights), so each job gets this process's thread count.
    slurm_cfg = _slurm(max_parallel=2, retries=1, cpus_per_job=torch.get_num_threads())
    walls, outcomes = {}, {}
    for kind, cfg in (("local", ExecutorConfig()), ("slurm", slurm_cfg)):
        t0 = time.perf_counter()
        outcomes[kind] = runner.run(profile, stages, tmp_path / kind, device, cfg, progress=False)
        walls[kind] = time.perf_counter() - t0
    assert all(o["ok"] for o in outcomes["local"].values()), outcomes["local"]
    assert outcomes["slurm"].keys() == outcomes["local"].keys()
    assert all(o["ok"] and o["job_id"] for o in outcomes["slurm"].values()), outcomes["slurm"]
    # files.json holds checksums of train.json and eval.json, whose timing fields are wall-clock;
    # the files it vouches for are compared here one by one instead.
    local_files = sorted(p.relative_to(tmp_path / "local")
                         for p in (tmp_path / "local" / "cells").rglob("*")
                         if p.is_file() and p.name != "files.json")
    assert any(p.name == "metrics.csv" for p in local_files), local_files
    for rel in [Path("metrics.csv"), *local_files]:
        assert (tmp_path / "slurm" / rel).is_file(), f"{rel} missing from the slurm run"
        assert _same(tmp_path / "local" / rel, tmp_path / "slurm" / rel), f"{rel} differs"
    with capsys.disabled():
        print(f"\nsmoke sweep ({len(outcomes['local'])} cells, data+train+eval): "
              f"local {walls['local']:.1f} s, slurm {walls['slurm']:.1f} s; "
              f"{len(local_files) + 1} files equal")
