"""Orchestration: data -> train -> eval -> throughput -> report over a profile's cells, resumable.

The runner walks the plan (:mod:`bench.cell.plan`), hands cells to the executor and the stages, and
writes the run-level files (``manifest.json``, ``metrics.csv``, ``predictions.parquet``,
``examples.pt``, ``throughput.csv``). Which module writes which file is a table in the README.
Every stage is idempotent: cells and test sets already finished are skipped, so rerunning the
same command after an interruption finishes the rest.

Runs that can be planned and left alone:

- :func:`plan_run` says what a run has left (cells to train, to evaluate, finished, running
  elsewhere; test sets to build or load) and :func:`estimate_run` how long it will take on this
  device, from rates timed here (:func:`measure_rates`) and the formula of :mod:`bench.runner.estimate`;
  ``run`` prints both first, stops at ``dry_run``, and refuses work beyond ``max_hours``.
- Two runs on one folder share the work: :func:`run_cell` claims its cell with a lock file
  (:class:`bench.locks.FileLock`, ``<cell>/lock.json``) where the cell runs (this process, a worker
  process or a Slurm job); a cell held by a live holder is skipped, and the run waits for it
  after its own cells, then takes it over if its holder died. The run-level steps that read
  every cell and write files of the run folder (the data stage's examples, collect, throughput,
  report) run under ``<run>/report.lock``, so two runs never interleave them.
- Damaged files are never used: a finished stage whose files do not match the checksums
  recorded when they were written (:meth:`bench.cell.files.CellFiles.damaged`) is rebuilt with a warning
  naming the file; :func:`collect` leaves such a cell out with a warning.
- A full disk ends the run with one line naming the file and the bytes it was writing
  (:class:`bench.io.DiskFullError`); finished cells stay whole and are reused by the next run.
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.cell import adversarial
from bench.cell.conformance import check_model, failures
from bench.cell.evaluate import example_images, load_model
from bench.cell.files import CellFiles
from bench.cell.plan import (
    AFFNIST_SETUP,
    PlannedCell,
    code_hash,
    data_config,
    model_code_hash,
    planned_cells,
    setups,
)
from bench.cell.throughput import measure
from bench.cell.train import uses_bf16
from bench.config import Profile
from bench.data.testsets import (
    AFFNIST_STYLE,
    adversarial_name,
    build_test_sets,
    generate,
    test_set_manifest,
)
from bench.errors import BenchError
from bench.io import (
    DiskFullError,
    load_torch,
    make_dirs,
    read_json,
    save_torch,
    stable_hash,
    write_csv,
    write_json,
)
from bench.locks import FileLock, describe_holder
from bench.models.registry import model_info
from bench.runner.cell import (
    CELL_WAIT_POLL_S,
    RUNNING_ELSEWHERE,
    CellTask,
    DataSource,
    DiskFullStop,
    run_cell,
)
from bench.runner.collect import cell_timing, collect
from bench.runner.estimate import format_duration
from bench.runner.executor import ExecutorConfig, cell_threads, run_cells
from bench.runner.todo import STAGE_ORDER, estimate_run, format_plan, plan_run
from bench.runtime import environment, plan_record, say, set_deterministic


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
            self.lock.acquire(on_wait=lambda h: self.progress and say(
                f"  the run-level files are being written by {describe_holder(h)}; waiting"))

    def release(self) -> None:
        self.lock.release()


def stage_data(profile: Profile, run_dir: Path, device: torch.device, source: DataSource,
               progress: bool = True) -> dict[str, Any]:
    """Build (or read from the cache) every test set; record checksums and example images."""

    checksums: dict[str, Any] = {}
    examples: dict[str, torch.Tensor] = {}
    for setup in setups(profile):
        sets = build_test_sets(data_config(profile, setup), device, names=setup.test_sets,
                               data_dir=source.data_dir, download=source.download,
                               progress=progress)
        checksums[setup.name] = test_set_manifest(sets)
        if setup.name == AFFNIST_SETUP:
            examples = example_images(sets)
    if examples:
        save_torch(run_dir / "examples.pt", examples)
    return checksums


def stage_cells(profile: Profile, run_dir: Path, device: torch.device, stages: tuple[str, ...],
                executor_config, source: DataSource, planned: Sequence[PlannedCell],
                progress: bool = True) -> dict[str, Any]:
    """Train and/or evaluate every cell through the executor; returns per-cell outcomes.

    Cells another live process holds are skipped in the first pass; the run then waits until
    none of them is held any more (finished, or its holder gone: :class:`bench.locks.FileLock`'s
    stale rule) and passes them to the executor again, which finds them finished (verified,
    nothing recomputed) or takes the stale lock over and runs them. Their manifest record
    names the holder they waited for (``ran_elsewhere``).
    """

    todo = list(planned)
    records: dict[str, Any] = {}
    waited: dict[str, str] = {}
    while todo:
        tasks = [CellTask(profile, pc.cell, str(pc.folder), str(device), stages, source, progress,
                          on_locked="skip")
                 for pc in todo]
        outcomes = run_cells(run_cell, tasks, [pc.cell.label for pc in todo], executor_config,
                             run_dir / "logs", progress=progress)
        elsewhere = []
        for pc, task, o in zip(todo, tasks, outcomes, strict=True):
            if o.ok and o.result and RUNNING_ELSEWHERE in o.result:
                elsewhere.append((pc, task))
                waited[o.key] = o.result[RUNNING_ELSEWHERE]
            records[o.key] = o.record() | ({"ran_elsewhere": waited[o.key]}
                                           if o.key in waited else {})
        if elsewhere and progress:
            say(f"  {len(elsewhere)} cells are running elsewhere; waiting for them: "
                 + "; ".join(f"{pc.cell.label} ({waited[pc.cell.label]})" for pc, _ in elsewhere[:3])
                 + (" ..." if len(elsewhere) > 3 else ""))
        todo = _wait_for_cells(elsewhere)
    return records


def _wait_for_cells(elsewhere: list[tuple[PlannedCell, CellTask]]) -> list[PlannedCell]:
    """Wait until no live process holds any of these cells; returns them."""
    pending = list(elsewhere)
    while pending:
        pending = [(pc, t) for pc, t in pending
                   if FileLock(CellFiles(t.folder).lock).holder() is not None]
        if pending:
            time.sleep(CELL_WAIT_POLL_S)
    return [pc for pc, _ in elsewhere]


def stage_transfer(profile: Profile, run_dir: Path, device: torch.device,
                   planned: Sequence[PlannedCell]) -> int:
    """After the cells: the black-box check of the adversarial sets and the report's examples.

    ``transfer.csv``: each attacked cell's model scored on the PGD images (the stated budget)
    made against the next model of the profile's list (the last against the first) with the
    same setup, n and seed; one row per image. ``adversarial_examples.pt``: per model, the first
    PGD images of its first seed at its largest attacked n, their labels and the model's
    answers. Cells without kept PGD images (not attacked, or not evaluated) are left out.
    Returns the number of transfer rows."""
    attack = profile.data.attack
    models = list(profile.models)
    examples: dict[str, torch.Tensor] = {}
    frames = []
    kept: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def images_of(pc: PlannedCell) -> tuple[torch.Tensor, torch.Tensor] | None:
        key = (pc.cell.setup, pc.cell.model, pc.cell.n, pc.cell.seed)
        if key not in kept:
            files = CellFiles(pc.folder)
            got = (adversarial.kept_pgd(load_torch(files.examples), attack.stated_budget)
                   if files.eval_summary.is_file() and files.examples.is_file() else None)
            if got is None:
                return None
            kept[key] = got
        return kept[key]

    by_key = {(pc.cell.setup, pc.cell.model, pc.cell.n, pc.cell.seed): pc for pc in planned}
    first: dict[str, PlannedCell] = {}
    for pc in planned:
        c = pc.cell
        if images_of(pc) is None:
            continue
        best = first.get(c.model)
        if best is None or (c.n, -c.seed) > (best.cell.n, -best.cell.seed):
            first[c.model] = pc
        if not attack.transfer or len(models) < 2 or c.model not in models:
            continue
        source = models[(models.index(c.model) + 1) % len(models)]
        src = by_key.get((c.setup, source, c.n, c.seed))
        got = None if src is None else images_of(src)
        if got is None:
            continue
        images, labels = got
        correct = adversarial.transfer_correct(load_model(pc.folder, device), images, labels,
                                               device)
        frames.append(pd.DataFrame({
            "setup": c.setup, "model": c.model, "n": c.n, "seed": c.seed, "source": source,
            "test_set": adversarial_name("transfer", attack.stated_budget),
            "index": range(len(correct)), "label": labels.numpy(), "correct": correct}))
    for model, pc in first.items():
        images, labels = images_of(pc)
        k = adversarial.N_EXAMPLES
        with torch.inference_mode():
            preds = load_model(pc.folder, device)(images[:k].to(device)).scores.argmax(1).cpu()
        examples.update({f"images/{model}": images[:k].clone(),
                         f"labels/{model}": labels[:k].clone(), f"preds/{model}": preds,
                         f"cell/{model}": torch.tensor([pc.cell.n, pc.cell.seed])})
    path, ex_path = run_dir / adversarial.TRANSFER_FILE, run_dir / adversarial.EXAMPLES_FILE
    if examples:
        save_torch(ex_path, examples)
    else:
        ex_path.unlink(missing_ok=True)
    if not frames:
        path.unlink(missing_ok=True)
        return 0
    table = pd.concat(frames, ignore_index=True)
    write_csv(path, table)
    return len(table)


def stage_throughput(profile: Profile, run_dir: Path, device: torch.device,
                     progress: bool = True) -> pd.DataFrame:
    """Speed of every model (as ``bench throughput``) and of affNIST-style generation."""

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


def run(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
        executor_config=None, source: DataSource | None = None,
        progress: bool = True, force_throughput: bool = False, dry_run: bool = False,
        max_hours: float | None = None, profile_file: Path | None = None,
        overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Run the given stages in order; returns the per-cell outcomes (empty if no cell stage).

    ``profile_file`` and ``overrides``: where the profile was read from and the ``--set`` values
    applied to it, recorded with a pre-registered plan (:func:`bench.runtime.plan_record`).

    With ``progress``, ``dry_run`` or ``max_hours``, the plan and its estimate come first
    (:func:`plan_run`, :func:`estimate_run`), printed unless ``progress`` and ``dry_run`` are
    both off; ``dry_run`` stops there, writing nothing; an estimate above ``max_hours`` is a
    one-line :class:`BenchError` before anything runs. A full disk is a one-line
    :class:`BenchError` naming the file and the bytes being written. ``source`` says where
    MNIST is read from and whether it may be downloaded.

    The run's cells, their specs and folders are computed once here
    (:func:`bench.cell.plan.planned_cells`) and handed to every stage that walks them.
    """

    executor_config = executor_config or ExecutorConfig()
    run_dir = Path(run_dir)
    if max_hours is not None and not max_hours > 0:
        raise BenchError(f"--max-hours must be a number of hours > 0, got {max_hours:g}")
    source = source or DataSource()
    if profile.plan and "train" in stages and not dry_run and (missing := profile.untuned()):
        raise BenchError(f"profile {profile.name} names a plan ({profile.plan}) but no "
                         f"learning rate for {missing} in [train.lr_by_model]: run "
                         f"python -m bench tune --profile {profile.name} first")
    if "train" in stages:
        conformance(profile, run_dir, source.data_dir, progress, write=not dry_run)
    estimate = None
    planned = planned_cells(profile, run_dir, device.type)
    if progress or dry_run or max_hours is not None:
        plan = plan_run(profile, stages, run_dir, device, source, force_throughput, planned)
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
        return _run_stages(profile, stages, run_dir, device, executor_config, source, planned,
                           progress, force_throughput, estimate, profile_file, overrides)
    except (DiskFullStop, DiskFullError) as e:
        raise BenchError(str(e)) from None


def conformance(profile: Profile, run_dir: Path, data_dir: str | None, progress: bool = True,
                write: bool = True) -> None:
    """Refuse the run when an external model of the profile fails the conformance check
    (:func:`bench.cell.conformance.check_model`; the suite's own models are not checked here).
    A pass is remembered in ``<run>/conformance.json`` under a hash of the model's source, the
    suite's training code and the profile, so an unchanged model is checked once per run folder."""
    path = run_dir / "conformance.json"
    passed: dict[str, str] = {}
    if path.is_file():
        try:
            passed = dict(read_json(path))
        except (ValueError, TypeError):
            passed = {}
    names = dict.fromkeys(profile.models + (profile.mnist_table.models if profile.mnist_table
                                            else ()))
    for name in names:
        if not model_info(name).external:
            continue
        key = stable_hash(model_code_hash(name), code_hash(), _jsonable(profile.to_dict()))
        if passed.get(name) == key:
            continue
        if progress:
            say(f"conformance check of the external model {name} (python -m bench models --check)")
        bad = failures(check_model(name, profile, data_dir))
        if bad:
            raise BenchError(f"model '{name}' fails the conformance check, so the run trains "
                             f"nothing: {'; '.join(f'{f.prop}: {f.detail}' for f in bad)} (see: "
                             f"python -m bench models --check {name} --profile ...)")
        passed[name] = key
        if write:
            make_dirs(run_dir)
            write_json(path, passed)


def _run_stages(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
                executor_config, source: DataSource, planned: Sequence[PlannedCell],
                progress: bool, force_throughput: bool,
                estimate: dict[str, Any] | None, profile_file: Path | None = None,
                overrides: Sequence[str] = ()) -> dict[str, Any]:
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
        cells=[dataclasses.asdict(pc.cell) | {"dir": str(pc.folder)} for pc in planned],
        models=model_records(profile),
        environment=env,
        # the threads the cells run with: a worker's or a Slurm job's, else this process's
        torch_threads=cell_threads(executor_config) or torch.get_num_threads(),
        executor=dataclasses.asdict(executor_config),
    )
    # The plan's record is made once, when the run of this configuration starts (a resume or a
    # later stage keeps it); a profile without a plan leaves none.
    recorded = manifest.data.get("plan")
    if not profile.plan:
        if recorded is not None:
            manifest.data.pop("plan")
            manifest.update()
    elif not (isinstance(recorded, dict) and old == _jsonable(profile.to_dict())
              and recorded.get("path") == profile.plan):
        manifest.data.pop("plan", None)
        manifest.update(plan=plan_record(profile.plan, profile_file) | {
            "overrides": list(overrides)})
    if estimate is not None:
        manifest.update(estimate={k: estimate[k] for k in (
            "total_s", "train_s", "val_s", "eval_s", "attack_s", "overhead_s", "data_s", "extra_s", "plan",
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
                manifest.update(data_checksums=stage_data(profile, run_dir, device, source,
                                                          progress),
                                data_note="generated images are rounded to uint8 after the "
                                          "bilinear warp (as affNIST stores them)")
                run_lock.release()  # cells need no run-level lock: each has its own
            elif stage in cell_stages:
                outcomes = stage_cells(profile, run_dir, device, cell_stages, executor_config,
                                       source, planned, progress)
                manifest.update(outcomes=outcomes)
                if "eval" in cell_stages:
                    run_lock.hold()
                    collect(profile, run_dir, device.type, planned)
                    if profile.data.attack.n:
                        rows = stage_transfer(profile, run_dir, device, planned)
                        if progress and rows:
                            print(f"  transfer attack: {rows} images scored ({adversarial.TRANSFER_FILE})")
                timing = cell_timing(planned)
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
                from bench.report.build import build_report  # defers matplotlib: only to write a report

                run_lock.hold()
                if not (run_dir / "metrics.csv").is_file():
                    collect(profile, run_dir, device.type, planned)
                build_report(run_dir)
            wall[stage] = round(time.perf_counter() - t0, 2)
            manifest.update(wall_seconds=wall)
    finally:
        run_lock.release()
    return outcomes


def model_records(profile: Profile) -> dict[str, dict[str, Any]]:
    """``manifest.json``'s ``models``: each model's family, package and version (and an external
    one's module, entry point and source hash), so that the report needs no import of it."""
    names = dict.fromkeys(profile.models + (profile.mnist_table.models if profile.mnist_table
                                            else ()))
    out = {}
    for name in names:
        info = model_info(name)
        out[name] = info.record() | ({"source_hash": model_code_hash(name)} if info.external
                                     else {})
    return out


def _jsonable(obj: Any) -> Any:
    """What the manifest's JSON holds (tuples become lists), so configurations compare equal."""
    return json.loads(json.dumps(obj))
