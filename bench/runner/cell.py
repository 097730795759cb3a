"""One cell's life: claim its lock, rebuild damaged files, train, then evaluate.

:func:`run_cell` runs where the executor puts it (this process, a worker process or a Slurm job).
It claims the cell with a lock file (:class:`bench.locks.FileLock`, ``<cell>/lock.json``); a cell
held by a live holder is skipped and reported as :data:`RUNNING_ELSEWHERE`. A finished stage
whose files do not match the checksums recorded when they were written
(:meth:`bench.cell.files.CellFiles.damaged`) is rebuilt with a warning naming the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch

from bench.cell import evaluate
from bench.cell.files import CellFiles
from bench.cell.plan import Cell, data_config, setup_by_name, spec_for
from bench.cell.train import train_cell
from bench.config import Profile
from bench.errors import BenchError
from bench.io import (
    DiskFullError,
    load_torch,
)
from bench.locks import FileLock, describe_holder
from bench.runtime import say, set_deterministic


@dataclass(frozen=True)
class DataSource:
    """Where MNIST-family data comes from: a torchvision-style root (None: the committed MNIST or
    ``$BENCH_DATA_DIR``), and whether torchvision may download a missing dataset."""

    data_dir: str | None = None
    download: bool = False


@dataclass(frozen=True)
class CellTask:
    """Everything a worker (a process, a Slurm job) needs to run one cell; picklable.

    ``on_locked``: what :func:`run_cell` does when another live process holds the cell's lock:
    ``"wait"`` for it (then find the cell finished), or ``"skip"`` it (the runner's sweep, which
    comes back to it after its own cells).
    """

    profile: Profile
    cell: Cell
    folder: str  # the cell folder, fixed by the submitting runner (see run_cell)
    device: str
    stages: tuple[str, ...] = ("train", "eval")
    source: DataSource = DataSource()
    progress: bool = True
    on_locked: str = "wait"


# The key of run_cell's result for a cell skipped because another process holds it.
RUNNING_ELSEWHERE = "running_elsewhere"
CELL_WAIT_POLL_S = 2.0  # our choice: how often a run looks at cells running elsewhere


class DiskFullStop(BaseException):
    """A cell's write failed for lack of space: ends the whole sweep, as Ctrl-C does.

    Deliberately not an ``Exception``: the executor records an ``Exception`` as one cell's
    failure and goes on with the next cell, which on a full disk would fail as well after
    training up to its first save. :func:`run` turns it into a one-line :class:`BenchError`.
    """



def _rebuild_if_damaged(files: CellFiles, stage: str, label: str) -> None:
    """Discard a finished ``stage`` of the cell whose files fail their checksums, with a warning
    naming the file (the stage then runs again)."""
    problem = files.damaged(stage)
    if problem is not None:
        what = "training (and evaluation)" if stage == "train" else "evaluation"
        warnings.warn(f"cell {label}: {problem}; rebuilding its {what}", stacklevel=3)
        files.discard(stage)


def _drop_unreadable_state(files: CellFiles, label: str) -> None:
    """A resume state that cannot be read is removed with a warning: training starts over."""
    if files.state.is_file() and not files.train_summary.is_file():
        try:
            load_torch(files.state)
        except Exception as e:  # truncated or garbled: torch raises several types
            warnings.warn(f"cell {label}: {files.state} is unreadable ({type(e).__name__}); "
                          "training the cell from the start", stacklevel=3)
            files.state.unlink(missing_ok=True)


def run_cell(task: CellTask) -> dict[str, Any]:
    """Train and/or evaluate one cell; each step is skipped when its result already exists.

    The runner fixes the folder: a job must not recompute the code hash, which would move the
    cell elsewhere if the source changed while the sweep was queued. Module-level, so worker
    processes and submitit can pickle it.

    The cell's lock (``lock.json``) is held while it runs, here where it actually runs. A
    finished stage whose files are damaged is rebuilt with a warning. A cell held by another
    live process is waited for, or skipped with ``{RUNNING_ELSEWHERE: holder}`` in the result
    (``task.on_locked``). A full disk raises :class:`DiskFullStop`.
    """

    profile, cell, src = task.profile, task.cell, task.source
    files = CellFiles(task.folder)
    out: dict[str, Any] = {"cell": cell.label, "dir": task.folder}
    lock = FileLock(files.lock, label=cell.label)
    try:
        if task.on_locked == "skip":
            holder = lock.try_acquire()
            if holder is not None:
                return {**out, RUNNING_ELSEWHERE: describe_holder(holder)}
        else:
            lock.acquire(poll_s=CELL_WAIT_POLL_S, on_wait=lambda h: say(
                f"{cell.label}: held by {describe_holder(h)}; waiting for it"))
        device = torch.device(task.device)
        set_deterministic(profile.train.deterministic)
        if "train" in task.stages:
            _rebuild_if_damaged(files, "train", cell.label)
            _drop_unreadable_state(files, cell.label)
            out["train"] = train_cell(spec_for(profile, cell), files, device,
                                      data_dir=src.data_dir, download=src.download,
                                      progress=task.progress)
        if "eval" in task.stages:
            if "train" not in task.stages and (problem := files.damaged("train")) is not None:
                raise BenchError(f"cell {cell.label}: {problem}; run the train stage to rebuild it")
            _rebuild_if_damaged(files, "eval", cell.label)
            setup = setup_by_name(profile, cell.setup)
            out["eval"] = evaluate.evaluate_cell(
                files, cell, data_config(profile, setup), setup.test_sets, device,
                data_dir=src.data_dir, download=src.download,
            )
        return out
    except DiskFullError as e:
        raise DiskFullStop(str(e)) from None
    finally:
        lock.release()
