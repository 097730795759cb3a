"""The local executors (in-process and worker processes) and the executor settings; no Slurm here
(the real-cluster tests are tests/runner/test_executor_slurm.py, marker ``slurm``)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

from bench.errors import BenchError
from bench.runner.executor import (
    ExecutorConfig,
    cell_threads,
    load_executor_config,
    run_cells,
    worker_threads,
)
from tests.slurm.cells import run_cell


def _tasks(out_dir, specs):
    """specs: (name, op, x) -> tasks and keys for run_cell."""
    tasks = [{"name": n, "op": op, "x": x, "out_dir": str(out_dir)} for n, op, x in specs]
    return tasks, [f"toy/{n}" for n, _, _ in specs]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def test_serial_runs_in_order_and_reports_failures(tmp_path):
    tasks, keys = _tasks(tmp_path / "out", [("a", "compute", 3), ("b", "raise", 7),
                                            ("c", "not_a_dict", 1), ("d", "compute", 4)])
    outs = run_cells(run_cell, tasks, keys, ExecutorConfig(), tmp_path / "logs", progress=False)
    assert [o.key for o in outs] == keys
    assert [o.ok for o in outs] == [True, False, False, True]
    assert outs[0].result["square"] == 9 and outs[3].result["square"] == 16
    assert (tmp_path / "out" / "a.json").exists()
    assert outs[1].error == "ValueError: bad value 7 in cell b"
    assert "expected a dict" in outs[2].error
    for o in outs[1:3]:
        assert "\n" not in o.error and o.attempts == 1 and o.result is None
        assert "Traceback" in Path(o.log_path).read_text()
    # idempotent cells: a second sweep reads the finished results back, identical
    again = run_cells(run_cell, tasks[:1], keys[:1], ExecutorConfig(), tmp_path / "logs",
                      progress=False)
    assert again[0].result == outs[0].result


def test_keyboard_interrupt_propagates_in_process(tmp_path):
    tasks, keys = _tasks(tmp_path, [("a", "compute", 1), ("b", "interrupt", 0),
                                    ("c", "compute", 2)])
    with pytest.raises(KeyboardInterrupt):
        run_cells(run_cell, tasks, keys, ExecutorConfig(), tmp_path / "logs", progress=False)
    assert not (tmp_path / "c.json").exists()  # nothing ran after the interrupt


def test_worker_processes_match_in_process_bit_for_bit(tmp_path, monkeypatch):
    # Two visible GPUs (by id; no GPU is used by these cells): one per worker.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    specs = [("a", "compute", 1), ("b", "compute", 2), ("c", "raise", 5), ("d", "compute", 3),
             ("e", "env", 0), ("f", "env", 1), ("g", "env", 2)]
    tasks, keys = _tasks(tmp_path / "pool", specs)
    outs = run_cells(run_cell, tasks, keys, ExecutorConfig(max_parallel=2), tmp_path / "logs",
                     progress=False)
    assert [o.key for o in outs] == keys
    assert [o.ok for o in outs] == [True, True, False, True, True, True, True]
    assert outs[2].error == "ValueError: bad value 5 in cell c"
    assert "Traceback" in Path(outs[2].log_path).read_text()

    serial_tasks, _ = _tasks(tmp_path / "serial", specs[:2] + specs[3:4])
    serial = run_cells(run_cell, serial_tasks, ["a", "b", "d"], ExecutorConfig(),
                       tmp_path / "logs", progress=False)
    assert [o.result for o in serial] == [outs[0].result, outs[1].result, outs[3].result]
    for name in "abd":
        assert ((tmp_path / "pool" / f"{name}.json").read_bytes()
                == (tmp_path / "serial" / f"{name}.json").read_bytes())

    env = [o.result for o in outs[4:]]
    assert all(e["pid"] != os.getpid() for e in env)
    assert {e["threads"] for e in env} == {max(1, _cpus() // 2)}
    gpu_of_pid = {}
    for e in env:
        assert e["cuda"] in ("3", "5")
        assert gpu_of_pid.setdefault(e["pid"], e["cuda"]) == e["cuda"]
    assert len(set(gpu_of_pid.values())) == len(gpu_of_pid)  # two workers never share a GPU


def test_dead_worker_is_retried_then_reported(tmp_path):
    tasks, keys = _tasks(tmp_path, [("ok", "compute", 1), ("dies", "kill_self", 0)])
    outs = run_cells(run_cell, tasks, keys, ExecutorConfig(max_parallel=2, retries=1),
                     tmp_path / "logs", progress=False)
    assert outs[1].ok is False and outs[1].attempts == 2
    assert "worker process died" in outs[1].error and os.path.exists(outs[1].log_path)
    assert outs[0].ok and outs[0].result["square"] == 1


def test_keyboard_interrupt_propagates_from_a_worker(tmp_path):
    tasks, keys = _tasks(tmp_path, [("a", "interrupt", 0), ("b", "compute", 1)])
    with pytest.raises(KeyboardInterrupt):
        run_cells(run_cell, tasks, keys, ExecutorConfig(max_parallel=2), tmp_path / "logs",
                  progress=False)


def test_bad_task_lists(tmp_path):
    with pytest.raises(BenchError, match="one key per task"):
        run_cells(run_cell, [{}], [], ExecutorConfig(), tmp_path)
    with pytest.raises(BenchError, match="unique cell keys.*k"):
        run_cells(run_cell, [{}, {}], ["k", "k"], ExecutorConfig(), tmp_path)
    assert run_cells(run_cell, [], [], ExecutorConfig(), tmp_path) == []


def test_slurm_without_submitit_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    tasks, keys = _tasks(tmp_path, [("a", "compute", 1)])
    with pytest.raises(BenchError, match="pip install submitit"):
        run_cells(run_cell, tasks, keys, ExecutorConfig(kind="slurm"), tmp_path)


def test_load_executor_config(tmp_path):
    assert load_executor_config(None) == ExecutorConfig()
    path = tmp_path / "cluster.toml"
    path.write_text('kind = "slurm"\npartition = "gpu"\ngpus_per_job = 1\nmax_parallel = 8\n'
                    "poll_s = 5\n")
    cfg = load_executor_config(path, max_parallel=None, time_limit_min=120)
    assert (cfg.kind, cfg.partition, cfg.gpus_per_job, cfg.max_parallel) == ("slurm", "gpu", 1, 8)
    assert cfg.time_limit_min == 120 and cfg.poll_s == 5.0
    profile = tmp_path / "profile.toml"
    profile.write_text('models = ["capsnet"]\n[executor]\nkind = "slurm"\nretries = 0\n')
    assert load_executor_config(profile).retries == 0


@pytest.mark.parametrize(("text", "overrides", "match"), [
    ("gpus = 1\n", {}, "bad.toml: unknown key 'gpus'.*gpus_per_job"),
    ('max_parallel = "4"\n', {}, "'max_parallel' must be an integer"),
    ("retries = true\n", {}, "'retries' must be an integer"),
    ('kind = "pbs"\n', {}, "kind must be one of local, slurm, got 'pbs'"),
    ("max_parallel = 0\n", {}, "max_parallel must be >= 1"),
    ("", {"partitoin": "x"}, "unknown key 'partitoin'"),
    ("kind = [\n", {}, "not valid TOML"),
])
def test_load_executor_config_errors(tmp_path, text, overrides, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(BenchError, match=match):
        load_executor_config(path, **overrides)


def test_missing_settings_file(tmp_path):
    with pytest.raises(BenchError, match="not found.*nope.toml"):
        load_executor_config(tmp_path / "nope.toml")


@pytest.mark.parametrize(("cpus", "workers", "threads"), [(4, 1, 4), (4, 2, 2), (4, 3, 1), (2, 8, 1)])
def test_worker_threads_split_the_cpus(monkeypatch, cpus, workers, threads):
    """Hand-worked: whole cores per worker, at least one thread."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    assert worker_threads(workers) == threads


def test_cell_threads(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert cell_threads(ExecutorConfig()) is None  # cells run in this process
    assert cell_threads(ExecutorConfig(max_parallel=2)) == 2
    assert cell_threads(ExecutorConfig(kind="slurm", max_parallel=8, cpus_per_job=3)) == 3


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_when_the_run_is_killed(tmp_path):
    """A run killed by SIGKILL (no chance to clean up) must not leave its worker processes
    training: the kernel signals them when their parent dies. Oracle: the workers' own pids."""
    import signal
    import subprocess
    import time

    script = (
        "from pathlib import Path\n"
        "from bench.runner.executor import ExecutorConfig, run_cells\n"
        "from tests.slurm.cells import run_cell\n"
        f"out = Path({str(tmp_path)!r})\n"
        "tasks = [{'op': 'sleep', 'name': f'c{i}', 'out_dir': str(out), 'x': i} for i in range(2)]\n"
        "run_cells(run_cell, tasks, ['a', 'b'], ExecutorConfig(max_parallel=2), out / 'logs')\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).parents[2])
    pids: list[int] = []
    try:
        for _ in range(600):  # the workers start (torch import) and say their pids
            files = list(tmp_path.glob("c*.pid.json"))
            if len(files) == 2:
                pids = [int(f.read_text().split(":")[1].strip(" }\n")) for f in files]
                break
            time.sleep(0.1)
        assert len(pids) == 2, "the workers did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        alive = pids
        for _ in range(100):
            alive = [p for p in pids if _alive(p)]
            if not alive:
                break
            time.sleep(0.1)
        assert not alive, f"workers {alive} outlived the killed run"
    finally:
        parent.kill()
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"
