"""Orchestration: data -> train -> eval -> throughput -> report over a profile's cells, resumable.

The runner walks the plan (:mod:`bench.cells`), hands cells to the executor and the stages, and
writes the run-level files (``manifest.json``, ``metrics.csv``, ``confidences.parquet``,
``examples.pt``, ``throughput.csv``). Which module writes which file is a table in the README.
Every stage is idempotent: cells and test sets already finished are skipped, so rerunning the
same command after an interruption finishes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.cells import AFFNIST_SETUP, Cell, cell_dir, cells, data_config, setup_by_name, setups, spec_for
from bench.config import Profile
from bench.io import CellFiles, atomic_path, load_torch, read_json, save_torch, write_json
from bench.runtime import environment, set_deterministic

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
    """Everything a worker (a process, a Slurm job) needs to run one cell; picklable."""

    profile: Profile
    cell: Cell
    folder: str  # the cell folder, fixed by the submitting runner (see run_cell)
    device: str
    stages: tuple[str, ...] = ("train", "eval")
    source: DataSource = DataSource()
    progress: bool = True


def run_cell(task: CellTask) -> dict[str, Any]:
    """Train and/or evaluate one cell; each step is skipped when its result already exists.

    The runner fixes the folder: a job must not recompute the code hash, which would move the
    cell elsewhere if the source changed while the sweep was queued. Module-level, so worker
    processes and submitit can pickle it.
    """
    from bench import evaluate
    from bench.train import train_cell

    profile, cell, src = task.profile, task.cell, task.source
    device = torch.device(task.device)
    set_deterministic(profile.train.deterministic)
    files = CellFiles(task.folder)
    out: dict[str, Any] = {"cell": cell.label, "dir": task.folder}
    if "train" in task.stages:
        out["train"] = train_cell(spec_for(profile, cell), files, device, data_dir=src.data_dir,
                                  download=src.download, progress=task.progress)
    if "eval" in task.stages:
        setup = setup_by_name(profile, cell.setup)
        out["eval"] = evaluate.evaluate_cell(
            files, cell, data_config(profile, setup), setup.test_sets, device,
            data_dir=src.data_dir, download=src.download,
        )
    return out


class Manifest:
    """``manifest.json`` of a run, updated (atomically) after every stage."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / "manifest.json"
        self.data: dict[str, Any] = read_json(self.path) if self.path.is_file() else {}

    def update(self, **items: Any) -> None:
        for k, v in items.items():
            if isinstance(v, dict) and isinstance(self.data.get(k), dict):
                self.data[k].update(v)
            else:
                self.data[k] = v
        write_json(self.path, self.data)


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
    """Train and/or evaluate every cell through the executor; returns per-cell outcomes."""
    from bench.executor import run_cells

    todo = cells(profile)
    source = DataSource(data_dir, download)
    tasks = [CellTask(profile, c, str(cell_dir(run_dir, profile, c, device.type)), str(device),
                      stages, source, progress)
             for c in todo]
    outcomes = run_cells(run_cell, tasks, [c.label for c in todo], executor_config,
                         run_dir / "logs", progress=progress)
    return {o.key: o.record() for o in outcomes}


def collect(profile: Profile, run_dir: Path, device_type: str) -> int:
    """Concatenate the evaluated cells of this profile into run-level tidy files."""
    frames, confs, cell_rows = [], [], []
    best_capsnet: tuple[int, int, Path] | None = None
    for c in cells(profile):
        files = CellFiles(cell_dir(run_dir, profile, c, device_type))
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
        with atomic_path(run_dir / "cells.csv") as tmp:
            pd.DataFrame(cell_rows).to_csv(tmp, index=False)
    if not frames:
        return 0
    with atomic_path(run_dir / "metrics.csv") as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    if confs:
        with atomic_path(run_dir / "confidences.parquet") as tmp:
            pd.concat(confs, ignore_index=True).to_parquet(tmp, index=False)
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
        "converged": t.get("converged"), "val_improvement": t.get("val_improvement"),
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
                timing = read_json(path).get("timing") or {}
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
    with atomic_path(run_dir / "throughput.csv") as tmp:
        table.to_csv(tmp, index=False)
    return table


def run(profile: Profile, stages: Sequence[str], run_dir: Path, device: torch.device,
        executor_config=None, data_dir: str | None = None, download: bool = False,
        progress: bool = True, force_throughput: bool = False) -> dict[str, Any]:
    """Run the given stages in order; returns the per-cell outcomes (empty if no cell stage)."""
    from bench.executor import ExecutorConfig

    executor_config = executor_config or ExecutorConfig()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
    outcomes: dict[str, Any] = {}
    wall: dict[str, float] = {}
    cell_stages = tuple(s for s in ("train", "eval") if s in stages)
    for stage in STAGE_ORDER:
        if stage not in stages or (stage == "eval" and "train" in cell_stages):
            continue
        t0 = time.perf_counter()
        if progress:
            print(f"== stage {'+'.join(cell_stages) if stage in cell_stages else stage}")
        if stage == "data":
            manifest.update(data_checksums=stage_data(profile, run_dir, device, data_dir,
                                                      download, progress),
                            data_note="generated images are rounded to uint8 after the "
                                      "bilinear warp (as affNIST stores them)")
        elif stage in cell_stages:
            outcomes = stage_cells(profile, run_dir, device, cell_stages, executor_config,
                                   data_dir, download, progress)
            manifest.update(outcomes=outcomes)
            if "eval" in cell_stages:
                collect(profile, run_dir, device.type)
            timing = cell_timing(profile, run_dir, device.type)
            manifest.update(cell_timing=timing)
            if progress and timing:
                parts = ", ".join(f"{k} {v:.0f} s" for k, v in timing["sum_s"].items() if v >= 0.5)
                print(f"  {timing['cells']} cells, median {timing['median_cell_s']:.1f} s per cell "
                      f"(train + eval); summed: {parts}")
        elif stage == "throughput":
            if force_throughput or not (run_dir / "throughput.csv").is_file():
                stage_throughput(profile, run_dir, device, progress)
            elif progress:
                print("  throughput.csv exists: kept (run the throughput stage alone to remeasure)")
        elif stage == "report":
            from bench.report import build_report

            if not (run_dir / "metrics.csv").is_file():
                collect(profile, run_dir, device.type)
            build_report(run_dir)
        wall[stage] = round(time.perf_counter() - t0, 2)
        manifest.update(wall_seconds=wall)
    return outcomes


def _jsonable(obj: Any) -> Any:
    """What the manifest's JSON holds (tuples become lists), so configurations compare equal."""
    return json.loads(json.dumps(obj))
