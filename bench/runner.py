"""Orchestration: data -> train -> eval -> throughput -> report over a profile's cells, resumable.

The runner walks the plan (:mod:`bench.cells`), hands cells to the executor and the stages, and
writes the run-level files (``manifest.json``, ``metrics.csv``, ``confidences.parquet``,
``examples.pt``, ``throughput.csv``). Which module writes which file is a table in the README.
Every stage is idempotent: cells and test sets already finished are skipped, so rerunning the
same command after an interruption finishes the rest.

Runs that can be planned and left alone:

- :func:`plan_run` says what a run has left (cells to train, to evaluate, finished, running
  elsewhere; test sets to build or load) and :func:`estimate_run` how long it will take on this
  device, from rates timed here (:func:`measure_rates`) and the formula of :mod:`bench.estimate`;
  ``run`` prints both first, stops at ``dry_run``, and refuses work beyond ``max_hours``.
- Two runs on one folder share the work: :func:`run_cell` claims its cell with a lock file
  (:class:`bench.io.FileLock`, ``<cell>/lock.json``) where the cell runs (this process, a worker
  process or a Slurm job); a cell held by a live holder is skipped, and the run waits for it
  after its own cells, then takes it over if its holder died. The run-level steps that read
  every cell and write files of the run folder (the data stage's examples, collect, throughput,
  report) run under ``<run>/report.lock``, so two runs never interleave them.
- Damaged files are never used: a finished stage whose files do not match the checksums
  recorded when they were written (:meth:`bench.io.CellFiles.damaged`) is rebuilt with a warning
  naming the file; :func:`collect` leaves such a cell out with a warning.
- A full disk ends the run with one line naming the file and the bytes it was writing
  (:class:`bench.io.DiskFullError`); finished cells stay whole and are reused by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.cells import AFFNIST_SETUP, Cell, cell_dir, cells, data_config, setup_by_name, setups, spec_for
from bench.config import Profile
from bench.errors import BenchError
from bench.io import (
    CellFiles,
    DiskFullError,
    FileLock,
    describe_holder,
    load_torch,
    make_dirs,
    read_json,
    save_torch,
    write_csv,
    write_json,
    write_parquet,
)
from bench.runtime import environment, set_deterministic
from bench.train import familywise_convergence

# The stages in the order they run, one line each (``python -m bench run --help`` prints them).
STAGE_HELP = {
    "data": "build (or verify from the cache) every test set of the profile",
    "train": "train every cell (setup, model, n, seed) not yet trained",
    "eval": "score every trained cell on its test sets",
    "throughput": "train and inference images/s of every model, and the generation rate",
    "report": "tables and figures of the run folder",
}
STAGE_ORDER = tuple(STAGE_HELP)


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


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


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
    from bench import evaluate
    from bench.train import train_cell

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
            lock.acquire(poll_s=CELL_WAIT_POLL_S, on_wait=lambda h: _say(
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


class Manifest:
    """``manifest.json`` of a run, updated (atomically) after every stage. Two runs on one
    folder each write the whole file: the last writer's is kept, never a mixture."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "manifest.json"
        self.data: dict[str, Any] = {}
        if self.path.is_file():
            try:
                self.data = dict(read_json(self.path))
            except (ValueError, TypeError) as e:
                warnings.warn(f"{self.path}: expected a JSON object, found unreadable text "
                              f"({type(e).__name__}); starting it afresh", stacklevel=2)

    def update(self, **items: Any) -> None:
        for k, v in items.items():
            if isinstance(v, dict) and isinstance(self.data.get(k), dict):
                self.data[k].update(v)
            else:
                self.data[k] = v
        write_json(self.path, self.data)


class RunLock:
    """``<run>/report.lock``: held by one run at a time around the run-level steps that read
    every cell and write files of the run folder (the data stage's examples, collect,
    throughput, report). Taken when first needed, kept until :meth:`release`."""

    def __init__(self, run_dir: Path, progress: bool):
        self.lock = FileLock(Path(run_dir) / "report.lock", label="run-level files")
        self.progress = progress

    def hold(self) -> None:
        if not self.lock.held:
            self.lock.acquire(on_wait=lambda h: self.progress and _say(
                f"  the run-level files are being written by {describe_holder(h)}; waiting"))

    def release(self) -> None:
        self.lock.release()


def stage_data(profile: Profile, run_dir: Path, device: torch.device, data_dir: str | None,
               download: bool, progress: bool = True) -> dict[str, Any]:
    """Build (or read from the cache) every test set; record checksums and example images."""
    from bench.data.testsets import build_test_sets, test_set_manifest
    from bench.evaluate import example_images

    checksums: dict[str, Any] = {}
    examples: dict[str, torch.Tensor] = {}
    for setup in setups(profile):
        sets = build_test_sets(data_config(profile, setup), device, names=setup.test_sets,
                               data_dir=data_dir, download=download, progress=progress)
        checksums[setup.name] = test_set_manifest(sets)
        if setup.name == AFFNIST_SETUP:
            examples = example_images(sets)
    if examples:
        save_torch(run_dir / "examples.pt", examples)
    return checksums


def stage_cells(profile: Profile, run_dir: Path, device: torch.device, stages: tuple[str, ...],
                executor_config, data_dir: str | None, download: bool,
                progress: bool = True) -> dict[str, Any]:
    """Train and/or evaluate every cell through the executor; returns per-cell outcomes.

    Cells another live process holds are skipped in the first pass; the run then waits until
    none of them is held any more (finished, or its holder gone: :class:`bench.io.FileLock`'s
    stale rule) and passes them to the executor again, which finds them finished (verified,
    nothing recomputed) or takes the stale lock over and runs them. Their manifest record
    names the holder they waited for (``ran_elsewhere``).
    """
    from bench.executor import run_cells

    source = DataSource(data_dir, download)
    todo = cells(profile)
    records: dict[str, Any] = {}
    waited: dict[str, str] = {}
    while todo:
        tasks = [CellTask(profile, c, str(cell_dir(run_dir, profile, c, device.type)),
                          str(device), stages, source, progress, on_locked="skip")
                 for c in todo]
        outcomes = run_cells(run_cell, tasks, [c.label for c in todo], executor_config,
                             run_dir / "logs", progress=progress)
        elsewhere = []
        for c, task, o in zip(todo, tasks, outcomes, strict=True):
            if o.ok and o.result and RUNNING_ELSEWHERE in o.result:
                elsewhere.append((c, task))
                waited[o.key] = o.result[RUNNING_ELSEWHERE]
            records[o.key] = o.record() | ({"ran_elsewhere": waited[o.key]}
                                           if o.key in waited else {})
        if elsewhere and progress:
            _say(f"  {len(elsewhere)} cells are running elsewhere; waiting for them: "
                 + "; ".join(f"{c.label} ({waited[c.label]})" for c, _ in elsewhere[:3])
                 + (" ..." if len(elsewhere) > 3 else ""))
        todo = _wait_for_cells(elsewhere)
    return records


def _wait_for_cells(elsewhere: list[tuple[Cell, CellTask]]) -> list[Cell]:
    """Wait until no live process holds any of these cells; returns them."""
    pending = list(elsewhere)
    while pending:
        pending = [(c, t) for c, t in pending
                   if FileLock(CellFiles(t.folder).lock).holder() is not None]
        if pending:
            time.sleep(CELL_WAIT_POLL_S)
    return [c for c, _ in elsewhere]


def collect(profile: Profile, run_dir: Path, device_type: str) -> int:
    """Concatenate the evaluated cells of this profile into run-level tidy files.

    A cell whose files fail their checksums (:meth:`bench.io.CellFiles.damaged`) is left out
    with a warning naming the file (the next ``run`` rebuilds it)."""
    frames, confs, cell_rows = [], [], []
    best_capsnet: tuple[int, int, Path] | None = None
    for c in cells(profile):
        files = CellFiles(cell_dir(run_dir, profile, c, device_type))
        problem = files.damaged("train", outputs=False) or files.damaged("eval")
        if problem is not None:
            warnings.warn(f"cell {c.label} left out of {run_dir}'s tables: {problem}; rerun the "
                          "train and eval stages to rebuild it", stacklevel=2)
            continue
        if files.train_summary.is_file():
            cell_rows.append(_cell_row(c, files))
        if not files.eval_summary.is_file():
            continue
        frames.append(pd.read_csv(files.metrics))
        if files.confidences.is_file():
            confs.append(pd.read_parquet(files.confidences))
        # The report's reconstruction figure: the CapsNet trained on the most data (lowest seed).
        if (c.setup == AFFNIST_SETUP and c.model == "capsnet" and files.examples.is_file()
                and (best_capsnet is None or (c.n, -c.seed) > best_capsnet[:2])):
            best_capsnet = (c.n, -c.seed, files.examples)
    if cell_rows:
        table = pd.DataFrame(cell_rows)
        # "converged" across the run (Holm over its cells); "converged_cell": each cell alone.
        table["converged"] = familywise_convergence(table, profile.train.converged_gain,
                                                    profile.train.converged_alpha)
        write_csv(run_dir / "cells.csv", table)
    if not frames:
        return 0
    write_csv(run_dir / "metrics.csv", pd.concat(frames, ignore_index=True))
    if confs:
        write_parquet(run_dir / "confidences.parquet", pd.concat(confs, ignore_index=True))
    if best_capsnet is not None and (run_dir / "examples.pt").is_file():
        examples = load_torch(run_dir / "examples.pt")
        examples.update(load_torch(best_capsnet[2]))
        save_torch(run_dir / "examples.pt", examples)
    return len(frames)


def _cell_row(c: Cell, files: CellFiles) -> dict[str, Any]:
    """One row of ``cells.csv``: how the cell was trained, whether it converged, what it cost."""
    t = read_json(files.train_summary)
    e = read_json(files.eval_summary) if files.eval_summary.is_file() else {}
    timing = t.get("timing") or {}
    return {
        "setup": c.setup, "model": c.model, "n": c.n, "seed": c.seed,
        "steps": t.get("steps"), "selection": t.get("selection", "best_val"),
        "checkpoint_step": t.get("checkpoint_step", t.get("best_step")),
        "converged": t.get("converged"), "converged_cell": t.get("converged"),
        "val_improvement": t.get("val_improvement"),
        "val_improvement_se": t.get("val_improvement_se"),
        "val_turned_right": t.get("val_turned_right"),
        "val_turned_wrong": t.get("val_turned_wrong"),
        "val_improvement_p": t.get("val_improvement_p"),
        "final_val_accuracy": t.get("final_val_accuracy"),
        "labelled_images": t.get("labelled_images"),
        "train_seconds": sum(v for v in timing.values() if isinstance(v, (int, float))) or None,
        "eval_seconds": sum(v for k, v in (e.get("timing") or {}).items()
                            if isinstance(v, (int, float))) or None,
    }


def cell_timing(profile: Profile, run_dir: Path, device_type: str) -> dict[str, Any]:
    """Where the cells' time went: seconds per part summed over the cells that record it
    (``timing`` of train.json and eval.json), and the median seconds of one cell (train + eval)."""
    totals: dict[str, float] = {}
    per_cell: list[float] = []
    for c in cells(profile):
        files = CellFiles(cell_dir(run_dir, profile, c, device_type))
        parts: dict[str, float] = {}
        for stage, path in (("train", files.train_summary), ("eval", files.eval_summary)):
            if path.is_file():
                try:
                    timing = dict(read_json(path)).get("timing") or {}
                except (ValueError, TypeError):  # damaged: rebuilt by the next run
                    continue
                parts.update({f"{stage}/{k}": v for k, v in timing.items()
                              if isinstance(v, (int, float))})
        if not parts:
            continue
        per_cell.append(sum(parts.values()))
        for k, v in parts.items():
            totals[k] = totals.get(k, 0.0) + v
    if not per_cell:
        return {}
    return {"cells": len(per_cell), "median_cell_s": round(statistics.median(per_cell), 3),
            "sum_s": {k: round(v, 3) for k, v in sorted(totals.items())}}


def stage_throughput(profile: Profile, run_dir: Path, device: torch.device,
                     progress: bool = True) -> pd.DataFrame:
    """Speed of every model (as ``bench throughput``) and of affNIST-style generation."""
    from bench.data.testsets import AFFNIST_STYLE, generate
    from bench.throughput import measure
    from bench.train import uses_bf16

    rows = []
    for model in profile.models:
        for batch in profile.throughput.batch_sizes:
            r = measure(model, profile.data.canvas, batch, profile.model.width, device,
                        warmup=profile.throughput.warmup, repeats=profile.throughput.repeats,
                        bf16=uses_bf16(profile.train, device),
                        channels_last=profile.train.channels_last,
                        fused=profile.train.fused_optimizer)
            rows.append({"kind": "model", "model": model, "input_size": profile.data.canvas,
                         "batch": batch, "width": profile.model.width, "device": device.type,
                         **r})
            if progress:
                print(f"  throughput {model} b{batch}: train {r['train_images_per_s']:.0f} img/s, "
                      f"inference {r['infer_images_per_s']:.0f} img/s")
    # Generation rate: the affNIST-style set generated from scratch (no cache).
    cfg = dataclasses.replace(profile.data, n_test=min(profile.data.n_test, 2000), affnist_k=4)
    t0 = time.perf_counter()
    generated = generate(AFFNIST_STYLE.name, cfg, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    count = int(generated.images.shape[0])
    rows.append({"kind": "generation", "model": AFFNIST_STYLE.name, "input_size": profile.data.canvas,
                 "batch": count, "device": device.type,
                 "device_name": rows[0].get("device_name") if rows else device.type,
                 "images_per_s": count / seconds})
    table = pd.DataFrame(rows)
    write_csv(run_dir / "throughput.csv", table)
    return table


# --------------------------------------------------------------------------------------------
# The plan of a run and its estimated wall time

RATE_WARMUP, RATE_REPEATS = 2, 5  # our choice: optimisation steps timed per model for the estimate


@dataclass
class Plan:
    """What a run of ``stages`` has left to do in its folder (:func:`plan_run`)."""

    profile: str
    stages: tuple[str, ...]
    train: list[Cell] = field(default_factory=list)  # to train (and evaluate, with "eval")
    evaluate: list[Cell] = field(default_factory=list)  # trained; to evaluate
    reuse: list[Cell] = field(default_factory=list)  # finished for these stages
    elsewhere: dict[str, str] = field(default_factory=dict)  # label -> holder, running now
    damaged: dict[str, str] = field(default_factory=dict)  # label -> problem (to rebuild)
    sets_build: dict[str, list[str]] = field(default_factory=dict)  # setup -> sets to generate
    sets_cached: dict[str, list[str]] = field(default_factory=dict)  # setup -> sets to load
    throughput: bool = False  # the throughput stage will measure
    report: bool = False

    def counts(self) -> dict[str, int]:
        return {"train": len(self.train), "evaluate": len(self.evaluate),
                "reuse": len(self.reuse), "elsewhere": len(self.elsewhere),
                "damaged": len(self.damaged),
                "sets_build": sum(map(len, self.sets_build.values())),
                "sets_cached": sum(map(len, self.sets_cached.values()))}


def plan_run(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
             data_dir: str | None = None, download: bool = False,
             force_throughput: bool = False) -> Plan:
    """What :func:`run` would do, from the files alone (nothing is written).

    A cell is reused when the marker of each cell stage asked (``train.json``, ``eval.json``)
    exists and its files pass their checksums; a damaged one is to rebuild; one whose lock a
    live process holds is running elsewhere. (A cell evaluated by other evaluation code, whose
    ``eval.json`` key no longer matches, counts as reused here but is evaluated again.) Test sets
    are needed by the data stage and by the setups with cells to evaluate; each is built or
    loaded from the cache (``affnist-real`` is read from its own files: "cached").
    """
    from bench.data.testsets import AFFNIST_REAL, cached_set_names

    run_dir = Path(run_dir)
    plan = Plan(profile.name, tuple(stages))
    if "train" in stages or "eval" in stages:
        for c in cells(profile):
            files = CellFiles(cell_dir(run_dir, profile, c, device.type))
            holder = FileLock(files.lock).holder() if files.lock.exists() else None
            if holder is not None:
                plan.elsewhere[c.label] = describe_holder(holder)
                continue
            bad_train = files.damaged("train")
            trained = bad_train is None and files.train_summary.is_file()
            bad_eval = files.damaged("eval") if trained and "eval" in stages else None
            evaluated = trained and bad_eval is None and files.eval_summary.is_file()
            if bad_train or bad_eval:
                plan.damaged[c.label] = bad_train or bad_eval or ""
            if not trained and "train" in stages:
                plan.train.append(c)
            elif "eval" in stages and not evaluated:
                plan.evaluate.append(c)
            else:
                plan.reuse.append(c)
    eval_setups = {c.setup for c in plan.train + plan.evaluate} if "eval" in stages else set()
    for setup in setups(profile):
        if "data" in stages or setup.name in eval_setups:
            status = cached_set_names(data_config(profile, setup), device, names=setup.test_sets,
                                      data_dir=data_dir, download=download)
            plan.sets_build[setup.name] = [n for n, hit in status.items()
                                           if not hit and n != AFFNIST_REAL.name]
            plan.sets_cached[setup.name] = [n for n, hit in status.items()
                                            if hit or n == AFFNIST_REAL.name]
    plan.throughput = "throughput" in stages and (
        force_throughput or not (run_dir / "throughput.csv").is_file())
    plan.report = "report" in stages
    return plan


@dataclass
class MeasuredRates:
    """Images/s by (setup, model) timed on this device, and the test-set generation rate."""

    train: dict[tuple[str, str], float] = field(default_factory=dict)
    infer: dict[tuple[str, str], float] = field(default_factory=dict)
    generation: float = 0.0  # 0: not measured
    seconds: float = 0.0  # what the measurement itself took


def measure_rates(profile: Profile, device: torch.device, keys: Iterable[tuple[str, str]],
                  generation: bool) -> MeasuredRates:
    """Time a few steps of each (setup, model) of ``keys`` with :func:`bench.throughput.measure`:
    training at the profile's batch, width and canvas with the trainer's switches (bf16 as the
    trainer decides, ``channels_last``, ``fused_optimizer``), inference at the evaluation batch
    (fp32, as evaluation runs); and, when ``generation``, the affNIST-style generation rate
    (a second generation of ``min(n_test, 500) x 2`` images, the first one warming up)."""
    from bench.data.testsets import AFFNIST_STYLE, generate
    from bench.throughput import measure
    from bench.train import EVAL_BATCH, uses_bf16

    t0 = time.perf_counter()
    t = profile.train
    out = MeasuredRates()
    for setup_name, model in sorted(set(keys)):
        canvas = setup_by_name(profile, setup_name).canvas
        common = {"warmup": RATE_WARMUP, "repeats": RATE_REPEATS, "latency": False,
                  "memory": False, "channels_last": t.channels_last}
        r = measure(model, canvas, t.batch_size, profile.model.width, device,
                    bf16=uses_bf16(t, device), fused=t.fused_optimizer, infer=False, **common)
        i = measure(model, canvas, EVAL_BATCH, profile.model.width, device, train=False, **common)
        out.train[(setup_name, model)] = r["train_images_per_s"]
        out.infer[(setup_name, model)] = i["infer_images_per_s"]
    if generation:
        cfg = dataclasses.replace(profile.data, n_test=min(profile.data.n_test, 500), affnist_k=2)
        generate(AFFNIST_STYLE.name, cfg, device)
        t1 = time.perf_counter()
        count = len(generate(AFFNIST_STYLE.name, cfg, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out.generation = count / (time.perf_counter() - t1)
    out.seconds = time.perf_counter() - t0
    return out


def parallel_cells(executor_config, device: torch.device) -> int:
    """Cells assumed to run at once, for the estimate (our choice): Slurm ``max_parallel``;
    local workers on CUDA one per visible GPU up to ``max_parallel``; local on the CPU 1 (the
    workers split the same cores)."""
    n = executor_config.max_parallel
    if executor_config.kind == "slurm":
        return n
    if device.type == "cuda" and n > 1:
        return max(1, min(n, torch.cuda.device_count()))
    return 1


def estimate_run(profile: Profile, plan: Plan, device: torch.device, executor_config=None,
                 rates: MeasuredRates | None = None) -> dict[str, Any]:
    """Seconds of the work left in ``plan`` (:func:`bench.estimate.estimate_profile`), with
    rates timed here (:func:`measure_rates`) unless given. Finished cells cost 0."""
    from bench.estimate import CELL_OVERHEAD_S, REPORT_S, estimate_profile, throughput_stage_s
    from bench.executor import ExecutorConfig

    executor_config = executor_config or ExecutorConfig()
    keys = {(c.setup, c.model) for c in plan.train + plan.evaluate}
    if plan.throughput:
        main = setups(profile)[0]
        keys |= {(main.name, m) for m in main.models}
    if rates is None:
        rates = measure_rates(profile, device, keys,
                              generation=plan.throughput or any(plan.sets_build.values()))
    extra = REPORT_S if plan.report else 0.0
    if plan.throughput:
        extra += throughput_stage_s(profile, rates.train, rates.infer, rates.generation)
    evaluated = plan.train + plan.evaluate if "eval" in plan.stages else []
    est = estimate_profile(profile, rates.train, rates.infer, rates.generation, CELL_OVERHEAD_S,
                           extra, train_cells=plan.train, eval_cells=evaluated,
                           build_sets=plan.sets_build,
                           parallel=parallel_cells(executor_config, device))
    est.update(plan=plan.counts(), rates_seconds=rates.seconds, generation_rate=rates.generation,
               train_rates={f"{k[0]}/{k[1]}": v for k, v in rates.train.items()},
               infer_rates={f"{k[0]}/{k[1]}": v for k, v in rates.infer.items()})
    return est


def _device_words(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"{device.type} ({n} thread{'s' if n != 1 else ''})"


def format_plan(plan: Plan, est: dict[str, Any], device: torch.device) -> list[str]:
    """The lines a run prints first: the plan and its estimated wall time."""
    from bench.estimate import format_duration

    n = plan.counts()
    what = []
    if "train" in plan.stages:
        what.append(f"{n['train']} cells to train")
    if "eval" in plan.stages and (n["evaluate"] or "train" not in plan.stages):
        what.append(f"{n['evaluate']} to evaluate")
    if "train" in plan.stages or "eval" in plan.stages:
        what[-1] += f" ({n['reuse']} reused" + (f", {n['elsewhere']} running elsewhere"
                                                if n["elsewhere"] else "") + ")"
    stages = [s for s in STAGE_ORDER if s in plan.stages and s not in ("train", "eval")]
    if not what:
        what.append("stage " + "+".join(stages))
    lines = [f"{plan.profile} profile on {_device_words(device)}: {', '.join(what)}, "
             f"{format_duration(est['total_s'])}"]
    if plan.sets_build or plan.sets_cached:
        lines.append(f"  test sets: {n['sets_build']} to build ({est['build_images']:,} images), "
                     f"{n['sets_cached']} from the cache")
    if plan.damaged:
        label, problem = next(iter(plan.damaged.items()))
        lines.append(f"  damaged, to rebuild: {n['damaged']} cells (first: {label}: {problem})")
    if plan.elsewhere:
        label, holder = next(iter(plan.elsewhere.items()))
        lines.append(f"  running elsewhere, waited for: {n['elsewhere']} cells (first: {label}, "
                     f"{holder})")
    parts = [("training", est["train_s"]), ("validation", est["val_s"]),
             ("evaluation", est["eval_s"]), ("per-cell overhead", est["overhead_s"]),
             ("test sets", est["data_s"]), ("throughput and report", est["extra_s"])]
    shown = ", ".join(f"{k} {v / 60:.1f} min" if v >= 90 else f"{k} {v:.0f} s"
                      for k, v in parts if v >= 0.5)
    if shown:
        lines.append(f"  estimate: {shown}" + (f"; {est['parallel']} cells at once"
                                               if est["parallel"] > 1 else "")
                     + f" (rates timed in {est['rates_seconds']:.0f} s)")
    return lines


def run(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
        executor_config=None, data_dir: str | None = None, download: bool = False,
        progress: bool = True, force_throughput: bool = False, dry_run: bool = False,
        max_hours: float | None = None) -> dict[str, Any]:
    """Run the given stages in order; returns the per-cell outcomes (empty if no cell stage).

    With ``progress``, ``dry_run`` or ``max_hours``, the plan and its estimate come first
    (:func:`plan_run`, :func:`estimate_run`), printed unless ``progress`` and ``dry_run`` are
    both off; ``dry_run`` stops there, writing nothing; an estimate above ``max_hours`` is a
    one-line :class:`BenchError` before anything runs. A full disk is a one-line
    :class:`BenchError` naming the file and the bytes being written.
    """
    from bench.estimate import format_duration
    from bench.executor import ExecutorConfig

    executor_config = executor_config or ExecutorConfig()
    run_dir = Path(run_dir)
    if max_hours is not None and not max_hours > 0:
        raise BenchError(f"--max-hours must be a number of hours > 0, got {max_hours:g}")
    estimate = None
    if progress or dry_run or max_hours is not None:
        plan = plan_run(profile, stages, run_dir, device, data_dir, download, force_throughput)
        estimate = estimate_run(profile, plan, device, executor_config)
        if progress or dry_run:
            print("\n".join(format_plan(plan, estimate, device)), flush=True)
        total = estimate["total_s"]
        if max_hours is not None and total > max_hours * 3600:
            raise BenchError(f"the work left in {run_dir} is estimated at {format_duration(total)} "
                             f"({total / 3600:.2f} h), more than --max-hours {max_hours:g}: "
                             f"nothing was run ({len(plan.train)} cells to train, "
                             f"{len(plan.evaluate)} to evaluate)")
        if dry_run:
            return {}
    try:
        return _run_stages(profile, stages, run_dir, device, executor_config, data_dir,
                           download, progress, force_throughput, estimate)
    except (DiskFullStop, DiskFullError) as e:
        raise BenchError(str(e)) from None


def _run_stages(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
                executor_config, data_dir: str | None, download: bool, progress: bool,
                force_throughput: bool, estimate: dict[str, Any] | None) -> dict[str, Any]:
    make_dirs(run_dir)
    set_deterministic(profile.train.deterministic)
    manifest = Manifest(run_dir)
    old = manifest.data.get("profile", {}).get("config")
    if old is not None and old != _jsonable(profile.to_dict()):
        print(f"note: {run_dir} holds a run of another configuration; cells of this one are kept "
              "apart by their hash, and tables list only this configuration's cells")
    env = environment(device)
    manifest.update(
        profile={"name": profile.name, "targets": list(profile.targets),
                 "config": _jsonable(profile.to_dict())},
        device=env["device_name"],
        git_commit=env["git_commit"],
        cells=[dataclasses.asdict(c) | {"dir": str(cell_dir(run_dir, profile, c, device.type))}
               for c in cells(profile)],
        environment=env,
        torch_threads=torch.get_num_threads(),
        executor=dataclasses.asdict(executor_config),
    )
    if estimate is not None:
        manifest.update(estimate={k: estimate[k] for k in (
            "total_s", "train_s", "val_s", "eval_s", "overhead_s", "data_s", "extra_s", "plan",
            "parallel", "train_rates", "infer_rates", "generation_rate", "method")})
    outcomes: dict[str, Any] = {}
    wall: dict[str, float] = {}
    cell_stages = tuple(s for s in ("train", "eval") if s in stages)
    run_lock = RunLock(run_dir, progress)
    try:
        for stage in STAGE_ORDER:
            if stage not in stages or (stage == "eval" and "train" in cell_stages):
                continue
            t0 = time.perf_counter()
            if progress:
                print(f"== stage {'+'.join(cell_stages) if stage in cell_stages else stage}")
            if stage == "data":
                run_lock.hold()
                manifest.update(data_checksums=stage_data(profile, run_dir, device, data_dir,
                                                          download, progress),
                                data_note="generated images are rounded to uint8 after the "
                                          "bilinear warp (as affNIST stores them)")
                run_lock.release()  # cells need no run-level lock: each has its own
            elif stage in cell_stages:
                outcomes = stage_cells(profile, run_dir, device, cell_stages, executor_config,
                                       data_dir, download, progress)
                manifest.update(outcomes=outcomes)
                if "eval" in cell_stages:
                    run_lock.hold()
                    collect(profile, run_dir, device.type)
                timing = cell_timing(profile, run_dir, device.type)
                manifest.update(cell_timing=timing)
                if progress and timing:
                    parts = ", ".join(f"{k} {v:.0f} s" for k, v in timing["sum_s"].items()
                                      if v >= 0.5)
                    print(f"  {timing['cells']} cells, median {timing['median_cell_s']:.1f} s per "
                          f"cell (train + eval); summed: {parts}")
            elif stage == "throughput":
                run_lock.hold()
                if force_throughput or not (run_dir / "throughput.csv").is_file():
                    stage_throughput(profile, run_dir, device, progress)
                elif progress:
                    print("  throughput.csv exists: kept (run the throughput stage alone to "
                          "remeasure)")
            elif stage == "report":
                from bench.report import build_report

                run_lock.hold()
                if not (run_dir / "metrics.csv").is_file():
                    collect(profile, run_dir, device.type)
                build_report(run_dir)
            wall[stage] = round(time.perf_counter() - t0, 2)
            manifest.update(wall_seconds=wall)
    finally:
        run_lock.release()
    return outcomes


def _jsonable(obj: Any) -> Any:
    """What the manifest's JSON holds (tuples become lists), so configurations compare equal."""
    return json.loads(json.dumps(obj))
