"""Run a sweep's cells locally (in-process or in worker processes) or as a Slurm job array.

One switch between running on this machine and submitting to a cluster (benchopt's design): the
runner hands :func:`run_cells` a module-level cell function, the picklable tasks and their keys,
and gets one :class:`Outcome` per cell back, in the order of the tasks, whatever executed them.

Contract with the cell function (``fn(task) -> dict``): it is idempotent (it skips a cell whose
results are already on disk) and writes its results atomically (``bench.io``), so two jobs never
clobber each other and a rerun resumes. The executor's side of the contract: a cell succeeded only
when the function *returned* a dict. A job that died (killed, timed out, node failure) never
counts as finished, whatever partial files it left; it is resubmitted up to ``retries`` times and
then reported with the path of its log.

``submitit`` is imported only for ``kind="slurm"``, so the local executors work without the
``cluster`` extra installed. Facts about a real Slurm that shaped the slurm path (accounting is
needed to see dead jobs, sacct lags, job ids restart) are in ``tests/slurm/cluster.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import dataclasses
import multiprocessing as mp
import os
import re
import shutil
import signal
import socket
import sys
import time
import tomllib
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.config import from_dict
from bench.errors import BenchError
from bench.runtime import say

__all__ = ["ExecutorConfig", "Outcome", "cell_threads", "load_executor_config", "local_cpus",
           "run_cells", "worker_threads"]

KINDS = ("local", "slurm")
# Slurm states in which a job may still produce its result (submitit's list): anything else is final.
_UNFINISHED = {"READY", "PENDING", "RUNNING", "UNKNOWN", "REQUEUED", "COMPLETING", "PREEMPTED",
               "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED"}
# States after which submitit's wrapper has already written the result pickle (success or a Python
# exception); only for those is a missing pickle worth waiting for (a slow shared file system).
_PICKLE_STATES = {"COMPLETED", "FAILED"}
_RESULT_GRACE_S = 15.0  # as submitit's own wait for a result file on a slow file system


@dataclass(frozen=True)
class ExecutorConfig:
    """Where and how the cells run. The same keys are accepted in a TOML file (see
    :func:`load_executor_config`) and, for most of them, on the command line."""

    kind: str = "local"  # "local" (default: needs no cluster package) or "slurm" (submitit)
    max_parallel: int = 1  # local: worker processes; slurm: array tasks running at once
    partition: str | None = None  # slurm partition; None: the cluster's default partition
    gpus_per_job: int = 0  # slurm GPUs per job (one cell per job)
    cpus_per_job: int = 1  # slurm CPUs per job; also the torch threads inside the job
    mem_gb: int | None = None  # slurm memory per job; None: the cluster's default
    time_limit_min: int = 60  # slurm time limit per job; >= 3 (submitit signals 90 s before it)
    retries: int = 2  # resubmissions of a failed, killed or timed-out cell before it is reported
    slurm_signal_delay_s: int | None = None  # seconds before the limit for submitit's signal
    poll_s: float = 1.0  # how often the result files are checked (sacct is asked less often)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise BenchError(f"executor kind must be one of {', '.join(KINDS)}, got '{self.kind}'")
        for name in ("max_parallel", "cpus_per_job", "time_limit_min"):
            if getattr(self, name) < 1:
                raise BenchError(f"executor {name} must be >= 1, got {getattr(self, name)}")
        for name in ("gpus_per_job", "retries"):
            if getattr(self, name) < 0:
                raise BenchError(f"executor {name} must be >= 0, got {getattr(self, name)}")
        if self.mem_gb is not None and self.mem_gb < 1:
            raise BenchError(f"executor mem_gb must be >= 1 or unset, got {self.mem_gb}")
        if self.poll_s <= 0:
            raise BenchError(f"executor poll_s must be > 0, got {self.poll_s}")


def load_executor_config(path: str | os.PathLike | None = None,
                         profile_table: dict[str, Any] | None = None,
                         **overrides: Any) -> ExecutorConfig:
    """Executor settings: a TOML file (optional) or else a profile's ``[executor]`` table, then
    the non-None ``overrides`` on top (command-line options that were given).

    The file holds the fields of :class:`ExecutorConfig` at the top level, or under an
    ``[executor]`` table (so the settings can live in a profile). An unknown key, a value of the
    wrong type or a missing file is a one-line :class:`BenchError` (through
    :func:`bench.config.from_dict`, the one loader of typed settings).
    """
    values: dict[str, Any] = dict(profile_table or {})
    where = "executor settings of the profile" if profile_table else "executor settings"
    if path is not None:
        where = f"executor settings {path}"
        try:
            doc = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise BenchError(f"executor settings file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise BenchError(f"executor settings {path} is not valid TOML: {e}") from None
        values = doc["executor"] if isinstance(doc.get("executor"), dict) else doc
    values.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(ExecutorConfig, values, where)


@dataclass
class Outcome:
    """What became of one cell. ``job_id`` and ``node`` are for the run manifest."""

    key: str
    ok: bool
    result: dict | None
    error: str | None  # one line; the full traceback is in ``log_path``
    log_path: str | None
    job_id: str | None
    node: str | None
    attempts: int

    def record(self) -> dict[str, Any]:
        """The manifest entry: everything but the result."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "result"}


def run_cells(
    fn: Callable[[Any], dict],
    tasks: Sequence[Any],
    keys: Sequence[str],
    config: ExecutorConfig,
    log_dir: Path,
    progress: bool = True,
) -> list[Outcome]:
    """Run ``fn(task)`` for every task; one :class:`Outcome` per task, in the order given.

    ``fn`` must be a module-level function and the tasks picklable (worker processes and Slurm
    jobs import ``fn`` by name). Failures never raise: they come back as ``ok=False`` with a
    one-line error and a log path (the runner decides what to do); ``KeyboardInterrupt`` does
    raise, after cancelling the Slurm jobs still queued or running.
    """
    tasks, keys = list(tasks), list(keys)
    if len(tasks) != len(keys):
        raise BenchError(f"run_cells needs one key per task, got {len(keys)} keys "
                         f"for {len(tasks)} tasks")
    if len(set(keys)) != len(keys):
        dup = sorted({k for k in keys if keys.count(k) > 1})
        raise BenchError(f"run_cells needs unique cell keys, repeated: {', '.join(dup)}")
    log_dir = Path(log_dir)
    if not tasks:
        return []
    if config.kind == "slurm":
        outcomes = _run_slurm(fn, tasks, keys, config, log_dir, progress)
    elif config.max_parallel == 1:
        outcomes = _run_serial(fn, tasks, keys, log_dir, progress)
    else:
        outcomes = _run_pool(fn, tasks, keys, config, log_dir, progress)
    if progress:
        _report_failures(outcomes)
    return outcomes


# ----------------------------------------------------------------------------------------------
# helpers shared by the executors



def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "cell"


def _write_log(log_dir: Path, key: str, attempt: int, text: str) -> str:
    """The traceback of a failed local attempt, where the user is told to look."""
    path = log_dir / "local" / f"{_safe_name(key)}.attempt{attempt}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _check_result(key: str, result: Any) -> dict:
    if not isinstance(result, dict):
        raise TypeError(f"cell {key} returned {type(result).__name__}, expected a dict")
    return result


def _set_threads(n: int) -> None:
    """Threads for BLAS/OpenMP and torch in a worker or job. Without cgroups nothing stops a
    process from using every core, so N workers each using all cores would oversubscribe."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:  # the cell's module may already have imported it
        sys.modules["torch"].set_num_threads(n)


def local_cpus() -> int:
    """The CPUs this process may run on (its affinity where the platform says, else all)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return cpus or 1


def worker_threads(n_workers: int) -> int:
    """Torch threads in each of ``n_workers`` local worker processes: this process's CPUs split
    evenly, at least 1 (our choice: whole cores per worker, none shared)."""
    return max(1, local_cpus() // n_workers)


def cell_threads(config: ExecutorConfig) -> int | None:
    """Torch threads a cell runs with under ``config``: a Slurm job's CPUs, a local worker's share
    of the cores when cells run in parallel, or None when cells run in this process (then its
    own thread count)."""
    if config.kind == "slurm":
        return config.cpus_per_job
    return worker_threads(config.max_parallel) if config.max_parallel > 1 else None


def _report_failures(outcomes: list[Outcome]) -> None:
    failed = [o for o in outcomes if not o.ok]
    if failed:
        say(f"{len(failed)} of {len(outcomes)} cells failed:")
        for o in failed:
            say(f"  {o.key} (attempts {o.attempts}): {o.error}  [log: {o.log_path}]")


# ----------------------------------------------------------------------------------------------
# local, in-process


def _run_serial(fn, tasks, keys, log_dir: Path, progress: bool) -> list[Outcome]:
    node = socket.gethostname()
    outcomes = []
    for i, (task, key) in enumerate(zip(tasks, keys, strict=True)):
        t0 = time.perf_counter()
        try:
            result = _check_result(key, fn(task))
            out = Outcome(key, True, result, None, None, None, node, 1)
        except Exception as e:  # KeyboardInterrupt is not an Exception: it propagates
            log = _write_log(log_dir, key, 1, traceback.format_exc())
            out = Outcome(key, False, None, _one_line(e), log, None, node, 1)
        outcomes.append(out)
        if progress:
            status = "done" if out.ok else "FAILED"
            say(f"[{i + 1}/{len(tasks)}] {key}: {status} ({time.perf_counter() - t0:.1f} s)")
    return outcomes


# ----------------------------------------------------------------------------------------------
# local, N worker processes


def _visible_gpus() -> list[str]:
    """GPU ids visible to this process: CUDA_VISIBLE_DEVICES when set, else torch's count."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = []
        for part in env.split(","):
            part = part.strip()
            if not part or part == "-1":  # CUDA stops at the first invalid id
                break
            ids.append(part)
        return ids
    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def _die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the process that started it exits
    (prctl PR_SET_PDEATHSIG, man 2 prctl), so a run killed by a signal leaves no worker training
    on. Elsewhere a no-op."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _init_worker(slots: Any, threads: int) -> None:
    """Pool initializer: die with the parent, take a GPU slot (set before CUDA is initialised)
    and cap the threads."""
    _die_with_parent()
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    _set_threads(threads)


def _call_in_worker(fn, task, key: str) -> tuple[bool, Any, str]:
    """(ok, result or one-line error, traceback); exceptions do not cross the process boundary
    as objects (they may not pickle)."""
    try:
        return True, (_check_result(key, fn(task)), socket.gethostname()), ""
    except Exception as e:
        return False, _one_line(e), traceback.format_exc()


def _run_pool(fn, tasks, keys, config: ExecutorConfig, log_dir: Path, progress) -> list[Outcome]:
    n_workers = min(config.max_parallel, len(tasks))
    # Threads from the configured worker count, not from the cells left, so that a resumed run's
    # last cells train at the thread count its first ones did (CPU results depend on it).
    threads = worker_threads(config.max_parallel)
    gpus = _visible_gpus()
    # One worker per GPU when several are visible (round-robin if more workers than GPUs);
    # with one or none, the workers share what the parent sees.
    slots_list = [gpus[i % len(gpus)] if len(gpus) > 1 else None for i in range(n_workers)]
    ctx = mp.get_context("spawn")  # fork after CUDA or OpenMP initialisation is unsafe
    outcomes: list[Outcome | None] = [None] * len(tasks)
    attempts = [0] * len(tasks)
    todo = list(range(len(tasks)))
    done_count = 0
    isolate = False  # after a worker died, retry each lost cell in a pool of its own
    while todo:
        broken: list[int] = []
        for batch in ([[i] for i in todo] if isolate else [todo]):
            done_count = _run_batch(fn, tasks, keys, config, log_dir, progress, ctx, batch,
                                    min(n_workers, len(batch)), slots_list, threads, attempts,
                                    outcomes, broken, done_count)
        # A pool breaks for all its unfinished cells when one worker dies, so the cell that
        # killed it is unknown: isolation makes sure a retry's failure is the cell's own.
        isolate = True
        todo = sorted(broken)
    return [o for o in outcomes if o is not None]


def _run_batch(fn, tasks, keys, config, log_dir, progress, ctx, batch, n_workers, slots_list,
               threads, attempts, outcomes, broken, done_count) -> int:
    """Run the cells ``batch`` in one fresh pool; fills ``outcomes`` and ``broken``."""
    slots = ctx.Queue()
    for s in slots_list[:n_workers]:
        slots.put(s)
    pool = cf.ProcessPoolExecutor(n_workers, mp_context=ctx, initializer=_init_worker,
                                  initargs=(slots, threads))
    try:
        futures = {}
        for i in batch:
            attempts[i] += 1
            futures[pool.submit(_call_in_worker, fn, tasks[i], keys[i])] = i
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                ok, payload, tb = fut.result()
            except cf.process.BrokenProcessPool:
                # A worker died (killed, out of memory): every unfinished cell of this pool
                # is lost; they are resubmitted to a fresh pool while retries remain.
                if attempts[i] <= config.retries:
                    broken.append(i)
                    continue
                msg = "worker process died (killed or out of memory)"
                log = _write_log(log_dir, keys[i], attempts[i], msg + "\n")
                outcomes[i] = Outcome(keys[i], False, None, msg, log, None, None, attempts[i])
            else:
                if ok:
                    result, node = payload
                    outcomes[i] = Outcome(keys[i], True, result, None, None, None, node,
                                          attempts[i])
                else:
                    log = _write_log(log_dir, keys[i], attempts[i], tb)
                    outcomes[i] = Outcome(keys[i], False, None, payload, log, None,
                                          socket.gethostname(), attempts[i])
            done_count += 1
            if progress:
                status = "done" if outcomes[i].ok else "FAILED"
                say(f"[{done_count}/{len(tasks)}] {keys[i]}: {status}")
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return done_count


# ----------------------------------------------------------------------------------------------
# Slurm through submitit


def _slurm_job_main(fn, task, key: str, threads: int) -> tuple[dict, str]:
    """What a Slurm array task runs: the cell, with the torch threads set to its CPUs."""
    _set_threads(threads)
    return _check_result(key, fn(task)), socket.gethostname()


def _trace_line(exc: BaseException) -> str:
    """One line from submitit's FailedJobError: the last line of the job's traceback
    (e.g. ``ValueError: boom``), not submitit's preamble."""
    text = str(exc)
    trace = text.split("\nYou can check full logs", 1)[0]
    lines = [ln.strip() for ln in trace.splitlines() if ln.strip() and set(ln.strip()) != {"-"}]
    return lines[-1] if lines else _one_line(exc)


@dataclass
class _Round:
    """One submission of the cells still to run: their indices and their jobs."""

    index: list[int]
    jobs: list[Any]
    started: float = field(default_factory=time.monotonic)


def _make_slurm_executor(config: ExecutorConfig, folder: Path):
    try:
        import submitit
    except ImportError:
        raise BenchError("the slurm executor needs submitit: pip install submitit "
                         "(or pip install 'capsbench[cluster]')") from None
    if shutil.which("sbatch") is None:
        raise BenchError("the slurm executor needs Slurm's sbatch on PATH, not found "
                         "(run on a cluster login node, or use --executor local)")
    ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
    params: dict[str, Any] = {
        "name": "capsbench",
        "timeout_min": config.time_limit_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": config.cpus_per_job,
        "slurm_array_parallelism": config.max_parallel,
    }
    if config.gpus_per_job:
        params["gpus_per_node"] = config.gpus_per_job
    if config.partition is not None:
        params["slurm_partition"] = config.partition
    if config.mem_gb is not None:
        params["mem_gb"] = config.mem_gb
    # submitit asks Slurm for a signal 90 s before the limit and Slurm checks about every 30 s,
    # so with a limit under 3 min the "time is nearly up" signal could come at the job's start.
    delay = config.slurm_signal_delay_s
    if delay is None and config.time_limit_min < 3:
        delay = 15
    if delay is not None:
        params["slurm_signal_delay_s"] = delay
    ex.update_parameters(**params)
    return ex


def _submit(ex, fn, tasks, keys, index: list[int], threads: int) -> _Round:
    n = len(index)
    try:
        jobs = ex.map_array(_slurm_job_main, [fn] * n, [tasks[i] for i in index],
                            [keys[i] for i in index], [threads] * n)
    except Exception as e:  # sbatch refused: bad partition, account, limits
        raise BenchError(f"Slurm refused the job array: {_one_line(e)}") from None
    return _Round(index, jobs)


def _state(job) -> str:
    """The last state sacct gave for the job (no call): first word, upper case."""
    state = job.watcher.get_state(job.job_id, mode="cache")
    return state.split()[0].upper() if state else "UNKNOWN"


def _has_result(job) -> bool:
    return job.paths.result_pickle.exists()


def _returned(job) -> bool:
    """Whether the job's result file holds a returned value (not a raised exception)."""
    try:
        job.result()
    except Exception:
        return False
    return True


def _wait(rnd: _Round, config: ExecutorConfig, progress: bool, label: str, n_total: int,
          n_done_before: int) -> None:
    """Wait until every job of the round has a result file or a final Slurm state.

    The result files are checked every ``poll_s``; sacct (one call for all jobs, through
    submitit's shared watcher) every 2 s at first, backing off to once a minute, so a long sweep
    does not hammer the controller but a dead job is still noticed within a minute.
    """
    watcher = rnd.jobs[0].watcher
    last_sacct = float("-inf")
    last_line, last_print = "", 0.0
    warned = False
    ok_of: dict[str, bool] = {}
    while True:
        now = time.monotonic()
        elapsed = now - rnd.started
        if now - last_sacct >= max(config.poll_s, min(60.0, max(2.0, elapsed / 4))):
            watcher.update()
            last_sacct = time.monotonic()
        states = [_state(j) for j in rnd.jobs]
        results = [_has_result(j) for j in rnd.jobs]
        finished = [r or s not in _UNFINISHED for s, r in zip(states, results, strict=True)]
        if progress:
            for j, r in zip(rnd.jobs, results, strict=True):
                if r and j.job_id not in ok_of:  # read each result file once: success or error
                    ok_of[j.job_id] = _returned(j)
            n_ok = sum(ok_of.get(j.job_id, False) for j in rnd.jobs)
            n_fail = sum(finished) - n_ok
            n_run = sum(s == "RUNNING" and not r for s, r in zip(states, results, strict=True))
            n_wait = len(states) - sum(finished) - n_run
            line = (f"slurm {label}: {n_wait} pending, {n_run} running, "
                    f"{n_done_before + n_ok} done, {n_fail} failed (of {n_total} cells)")
            if line != last_line or now - last_print > 300:
                say(line)
                last_line, last_print = line, now
            if not warned and elapsed > 120 and all(s == "UNKNOWN" for s in states):
                say("slurm: sacct knows none of the jobs after 2 min; is accounting (slurmdbd) "
                     "configured? Without it a dead job is never noticed.")
                warned = True
        if all(finished):
            break
        time.sleep(config.poll_s)
    # A job that ended COMPLETED or FAILED wrote its result file before exiting; on a shared
    # file system it may show up late. Dead jobs (CANCELLED, TIMEOUT, NODE_FAIL...) never write it.
    deadline = time.monotonic() + _RESULT_GRACE_S
    late = [j for j in rnd.jobs if not _has_result(j) and _state(j) in _PICKLE_STATES]
    while late and time.monotonic() < deadline:
        time.sleep(1.0)
        late = [j for j in late if not _has_result(j)]


def _collect(job, key: str, attempts: int) -> Outcome:
    """Success only when the job returned a result; anything else is a failure with its log."""
    log = str(job.paths.stderr)
    info = job.watcher.get_info(job.job_id, mode="cache")
    node = info.get("NodeList") or None
    if not _has_result(job):
        state = info.get("State") or "UNKNOWN"
        return Outcome(key, False, None, f"job {job.job_id} ended {state} without a result",
                       log, job.job_id, node, attempts)
    try:
        result, node = job.result()
    except Exception as e:  # the cell raised inside the job (FailedJobError)
        return Outcome(key, False, None, _trace_line(e), log, job.job_id, node, attempts)
    return Outcome(key, True, result, None, log, job.job_id, node, attempts)


def _run_slurm(fn, tasks, keys, config: ExecutorConfig, log_dir: Path, progress) -> list[Outcome]:
    # A fresh folder per run: Slurm job ids restart at 1 when the controller's state is wiped,
    # and a reused "%j" folder would then hand back an old job's result as this job's.
    folder = log_dir / "slurm" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    ex = _make_slurm_executor(config, folder)
    outcomes: list[Outcome | None] = [None] * len(tasks)
    attempts = [0] * len(tasks)
    todo = list(range(len(tasks)))
    n_done = 0
    for round_no in range(1, config.retries + 2):
        for i in todo:
            attempts[i] += 1
        rnd = _submit(ex, fn, tasks, keys, todo, config.cpus_per_job)
        if progress:
            first = rnd.jobs[0].job_id.split("_")[0]
            say(f"slurm: submitted {len(todo)} cells as job array {first} "
                 f"(attempt {round_no} of at most {config.retries + 1}); logs in {folder}")
        try:
            _wait(rnd, config, progress, f"attempt {round_no}", len(tasks), n_done)
        except BaseException:  # KeyboardInterrupt: do not leave the array running
            for job in rnd.jobs:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
            raise
        failed = []
        for i, job in zip(rnd.index, rnd.jobs, strict=True):
            outcomes[i] = _collect(job, keys[i], attempts[i])
            if outcomes[i].ok:
                n_done += 1
            else:
                failed.append(i)
        if failed and progress and round_no <= config.retries:
            say(f"slurm: {len(failed)} cells failed, resubmitting: "
                 + ", ".join(keys[i] for i in failed[:5]) + (" ..." if len(failed) > 5 else ""))
        todo = failed
        if not todo:
            break
    return [o for o in outcomes if o is not None]
