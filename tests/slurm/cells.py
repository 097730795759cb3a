"""Toy cell functions for the executor tests: module-level, so worker processes and Slurm jobs can
import them by name. Each behaves like the runner's cell: idempotent, results written atomically,
a dict returned. ``task["op"]`` picks the behaviour, so one sweep can mix them."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

from bench.io import derive_seed, read_json, sha256_tensor, write_json


def compute(task: dict[str, Any]) -> dict[str, Any]:
    """A seeded torch computation with a reduction, so a thread-count or device difference
    between executors would show up in the bits."""
    import torch

    g = torch.Generator().manual_seed(derive_seed("toy", task["x"]))
    a = torch.randn(48, 48, generator=g)
    b = (a @ a.T).tanh().sum(dim=0)
    return {"x": task["x"], "square": task["x"] ** 2, "sum": float(b.sum()),
            "sha256": sha256_tensor(b)}


def run_cell(task: dict[str, Any]) -> dict[str, Any]:
    op = task.get("op", "compute")
    out = Path(task["out_dir"]) / f"{task['name']}.json"
    if op == "compute":
        if out.exists():  # idempotent: a finished cell is not recomputed
            return read_json(out)
        result = compute(task)
        write_json(out, result)
        return result
    if op == "raise":
        raise ValueError(f"bad value {task['x']} in cell {task['name']}")
    if op == "killed_once":
        return killed_once(task, out)
    if op == "kill_self":
        os.kill(os.getpid(), signal.SIGKILL)
    if op == "interrupt":
        raise KeyboardInterrupt
    if op == "env":
        import torch

        return {"pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "threads": torch.get_num_threads(), "host": socket.gethostname()}
    if op == "sleep":  # says its pid, then outlives any test that does not kill it
        write_json(out.with_suffix(".pid.json"), {"pid": os.getpid()})
        time.sleep(120)
        return {"pid": os.getpid()}
    if op == "not_a_dict":
        return [task["x"]]  # type: ignore[return-value]
    raise ValueError(f"unknown op {op!r}")


def killed_once(task: dict[str, Any], out: Path) -> dict[str, Any]:
    """Attempt 1 announces itself (with its Slurm job id), leaves a partial output and sleeps
    until the test kills the job; attempt 2 finishes. The partial file must not count."""
    marks = Path(task["out_dir"]) / "marks"
    marks.mkdir(parents=True, exist_ok=True)
    attempt = len(list(marks.glob(f"{task['name']}.started.*"))) + 1
    job = os.environ.get("SLURM_ARRAY_JOB_ID", "") + "_" + os.environ.get("SLURM_ARRAY_TASK_ID", "")
    if job == "_":
        job = os.environ.get("SLURM_JOB_ID", "local")
    (marks / f"{task['name']}.started.{attempt}").write_text(job)
    if attempt == 1:
        write_json(out.with_suffix(".partial.json"), {"partial": True})
        time.sleep(task.get("sleep_s", 120))
    result = {**compute(task), "attempt": attempt}
    write_json(out, result)
    return result
