"""What a run has left to do, how long it will take here, and the plan it prints first.

:func:`plan_run` reads the files alone (nothing is written): cells to train, to evaluate,
finished, running elsewhere or damaged; test sets to build or load. :func:`estimate_run` times
each model's step on this device (:func:`measure_rates`) and applies the formula of
:mod:`bench.runner.estimate`; :func:`format_plan` prints both.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.cell.files import CellFiles
from bench.cell.plan import Cell, PlannedCell, cells, data_config, planned_cells, setup_by_name, setups
from bench.cell.throughput import measure
from bench.cell.train import EVAL_BATCH, uses_bf16
from bench.config import Profile
from bench.data.testsets import AFFNIST_REAL, AFFNIST_STYLE, cached_set_names, default_set_names, generate
from bench.locks import FileLock, describe_holder
from bench.runner.cell import DataSource
from bench.runner.estimate import (
    CELL_OVERHEAD_S,
    REPORT_S,
    estimate_profile,
    format_duration,
    throughput_stage_s,
)
from bench.runner.executor import ExecutorConfig, cell_threads, local_cpus
from bench.runtime import torch_threads

# The stages in the order they run, one line each (``python -m bench run --help`` prints them).
STAGE_HELP = {
    "data": "build (or verify from the cache) every test set of the profile",
    "train": "train every cell (setup, model, n, seed) not yet trained",
    "eval": "score every trained cell on its test sets",
    "throughput": "train and inference images/s of every model, and the generation rate",
    "report": "tables and figures of the run folder",
}
STAGE_ORDER = tuple(STAGE_HELP)


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
             source: DataSource | None = None, force_throughput: bool = False,
             planned: Sequence[PlannedCell] | None = None) -> Plan:
    """What :func:`run` would do, from the files alone (nothing is written).

    A cell is reused when the marker of each cell stage asked (``train.json``, ``eval.json``)
    exists and its files pass their checksums; a damaged one is to rebuild; one whose lock a
    live process holds is running elsewhere. (A cell evaluated by other evaluation code, whose
    ``eval.json`` key no longer matches, counts as reused here but is evaluated again.) Test sets
    are needed by the data stage and by the setups with cells to evaluate; each is built or
    loaded from the cache (``affnist-real`` is read from its own files: "cached").
    ``planned``: the run's cells with their folders (:func:`bench.cell.plan.planned_cells`,
    computed here when not given).
    """

    run_dir = Path(run_dir)
    source = source or DataSource()
    plan = Plan(profile.name, tuple(stages))
    if "train" in stages or "eval" in stages:
        for pc in planned if planned is not None else planned_cells(profile, run_dir, device.type):
            c, files = pc.cell, CellFiles(pc.folder)
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
                                      data_dir=source.data_dir, download=source.download)
            plan.sets_build[setup.name] = [n for n, hit in status.items()
                                           if not hit and n != AFFNIST_REAL.name
                                           and n not in plan.sets_build.get(setup.seed_setup, ())]
            plan.sets_cached[setup.name] = [n for n, hit in status.items()
                                            if hit or n == AFFNIST_REAL.name]
    plan.throughput = "throughput" in stages and (
        force_throughput or not (run_dir / "throughput.csv").is_file())
    plan.report = "report" in stages
    return plan


def fresh_plan(profile: Profile) -> Plan:
    """The plan of ``run all`` in an empty folder with an empty test-set cache: every cell to
    train and evaluate, every test set to build, throughput measured, a report written."""
    plan = Plan(profile.name, STAGE_ORDER, train=list(cells(profile)), throughput=True, report=True)
    for setup in setups(profile):
        cfg = data_config(profile, setup)
        # a setup seeded as another (the budget check) scores sets of that setup: built once
        plan.sets_build[setup.name] = [n for n in (setup.test_sets or default_set_names(cfg))
                                       if n != AFFNIST_REAL.name
                                       and n not in plan.sets_build.get(setup.seed_setup, ())]
    return plan


@dataclass
class MeasuredRates:
    """Images/s by (setup, model) timed on this device, and the test-set generation rate."""

    train: dict[tuple[str, str], float] = field(default_factory=dict)
    infer: dict[tuple[str, str], float] = field(default_factory=dict)
    generation: float = 0.0  # 0: not measured
    seconds: float = 0.0  # what the measurement itself took


def measure_rates(profile: Profile, device: torch.device, keys: Iterable[tuple[str, str]],
                  generation: bool, threads: int | None = None) -> MeasuredRates:
    """Time a few steps of each (setup, model) of ``keys`` with :func:`bench.cell.throughput.measure`:
    training at the profile's batch, width and canvas with the trainer's switches (bf16 as the
    trainer decides, ``channels_last``, ``fused_optimizer``), inference at the evaluation batch
    (fp32, as evaluation runs); and, when ``generation``, the affNIST-style generation rate
    (a second generation of ``min(n_test, 500) x 2`` images, the first one warming up).
    ``threads``: the torch threads the models are timed with (the cells' own, when they run in
    worker processes or jobs), restored afterwards; None: this process's. The generation rate is
    timed with this process's threads, where the test sets are built."""

    t0 = time.perf_counter()
    out = MeasuredRates()
    with torch_threads(threads):
        t = profile.train
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
    local workers on CUDA one per visible GPU up to ``max_parallel``; local on the CPU
    ``max_parallel`` up to the number of cores (the workers split the cores, and their rates are
    timed at a worker's thread count: :func:`estimate_run`)."""
    n = executor_config.max_parallel
    if executor_config.kind == "slurm":
        return n
    if device.type == "cuda" and n > 1:
        return max(1, min(n, torch.cuda.device_count()))
    return max(1, min(n, local_cpus())) if device.type == "cpu" else 1


def estimate_run(profile: Profile, plan: Plan, device: torch.device, executor_config=None,
                 rates: MeasuredRates | None = None) -> dict[str, Any]:
    """Seconds of the work left in ``plan`` (:func:`bench.runner.estimate.estimate_profile`), with
    rates timed here (:func:`measure_rates`) unless given. Finished cells cost 0."""

    executor_config = executor_config or ExecutorConfig()
    keys = {(c.setup, c.model) for c in plan.train + plan.evaluate}
    if plan.throughput:
        main = setups(profile)[0]
        keys |= {(main.name, m) for m in main.models}
    # On the CPU, cells in worker processes or Slurm jobs run with their own thread count, so
    # their rates are timed at it, one at a time: workers running together on one machine also
    # share its memory bandwidth, which the estimate does not see (docs/slurm.md, measured).
    threads = cell_threads(executor_config) if device.type == "cpu" else None
    if rates is None:
        rates = measure_rates(profile, device, keys,
                              generation=plan.throughput or any(plan.sets_build.values()),
                              threads=threads)
    extra = REPORT_S if plan.report else 0.0
    if plan.throughput:
        extra += throughput_stage_s(profile, rates.train, rates.infer, rates.generation)
    evaluated = plan.train + plan.evaluate if "eval" in plan.stages else []
    est = estimate_profile(profile, rates.train, rates.infer, rates.generation, CELL_OVERHEAD_S,
                           extra, train_cells=plan.train, eval_cells=evaluated,
                           build_sets=plan.sets_build,
                           parallel=min(parallel_cells(executor_config, device),
                                        max(1, len(plan.train) + len(plan.evaluate))))
    est.update(plan=plan.counts(), threads=threads or torch.get_num_threads(),
               rates_seconds=rates.seconds, generation_rate=rates.generation,
               train_rates={f"{k[0]}/{k[1]}": v for k, v in rates.train.items()},
               infer_rates={f"{k[0]}/{k[1]}": v for k, v in rates.infer.items()})
    return est


def device_words(device: torch.device, at_once: int = 1, threads: int | None = None) -> str:
    """The device as the plan's first line names it; on the CPU with the cells' threads and how
    many cells run at once."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    n = threads or torch.get_num_threads()
    each = f"{n} thread{'s' if n != 1 else ''}"
    return (f"{device.type} ({at_once} cells at once, {each} each)" if at_once > 1
            else f"{device.type} ({each})")


def format_plan(plan: Plan, est: dict[str, Any], device: torch.device) -> list[str]:
    """The lines a run prints first: the plan and its estimated wall time."""

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
    where = device_words(device, est.get("parallel", 1), est.get("threads"))
    lines = [f"{plan.profile} profile on {where}: {', '.join(what)}, "
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
             ("evaluation", est["eval_s"]), ("attacks", est.get("attack_s", 0.0)),
             ("per-cell overhead", est["overhead_s"]),
             ("test sets", est["data_s"]), ("throughput and report", est["extra_s"])]
    shown = ", ".join(f"{k} {v / 60:.1f} min" if v >= 90 else f"{k} {v:.0f} s"
                      for k, v in parts if v >= 0.5)
    if shown:
        lines.append(f"  estimate: {shown}" + (f"; {est['parallel']} cells at once"
                                               if est["parallel"] > 1 else "")
                     + f" (rates timed in {est['rates_seconds']:.0f} s)")
    return lines
