"""``python -m bench run STAGE``: data -> train -> eval -> throughput -> report, resumable.

Only this module (with the CLI, io and the executor) touches the run folder, devices and
processes. Every stage is idempotent: cells and test sets already finished are skipped, so
rerunning the same command after an interruption finishes the rest.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.config import Profile, load_profile, profile_path, read_profile_toml
from bench.data.mnist import REPO_ROOT
from bench.errors import BenchError
from bench.io import atomic_path, load_torch, read_json, save_torch, write_json
from bench.runtime import environment, resolve_device, set_deterministic
from bench.sweep import CellTask, cell_dir, cells, data_config, run_cell, setups

STAGE_ORDER = ("data", "train", "eval", "throughput", "report")
RESULTS_DIR = REPO_ROOT / "results"


def default_run_dir(profile: Profile, device: torch.device) -> Path:
    return RESULTS_DIR / f"{profile.name}-{device.type}"


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
        if setup.name == "affnist":
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
    tasks = [CellTask(profile, c, str(run_dir), str(device), stages, data_dir, download, progress,
                      folder=str(cell_dir(run_dir, profile, c, device.type)))
             for c in todo]
    outcomes = run_cells(run_cell, tasks, [c.label for c in todo], executor_config,
                         run_dir / "logs", progress=progress)
    return {
        o.key: {"ok": o.ok, "error": o.error, "log": o.log_path, "job_id": o.job_id,
                "node": o.node, "attempts": o.attempts}
        for o in outcomes
    }


def collect(profile: Profile, run_dir: Path, device_type: str) -> int:
    """Concatenate the evaluated cells of this profile into run-level tidy files."""
    frames, confs = [], []
    best_capsnet: tuple[int, int, Path] | None = None
    for c in cells(profile):
        folder = cell_dir(run_dir, profile, c, device_type)
        if not (folder / "eval.json").is_file():
            continue
        frames.append(pd.read_csv(folder / "metrics.csv"))
        if (folder / "confidences.parquet").is_file():
            confs.append(pd.read_parquet(folder / "confidences.parquet"))
        if (c.setup == "affnist" and c.model == "capsnet" and (folder / "examples.pt").is_file()
                and (best_capsnet is None or (c.n, -c.seed) > best_capsnet[:2])):
            best_capsnet = (c.n, -c.seed, folder)
    if not frames:
        return 0
    with atomic_path(run_dir / "metrics.csv") as tmp:
        pd.concat(frames, ignore_index=True).to_csv(tmp, index=False)
    if confs:
        with atomic_path(run_dir / "confidences.parquet") as tmp:
            pd.concat(confs, ignore_index=True).to_parquet(tmp, index=False)
    if best_capsnet is not None and (run_dir / "examples.pt").is_file():
        examples = load_torch(run_dir / "examples.pt")
        examples.update(load_torch(best_capsnet[2] / "examples.pt"))
        save_torch(run_dir / "examples.pt", examples)
    return len(frames)


def stage_throughput(profile: Profile, run_dir: Path, device: torch.device,
                     progress: bool = True) -> pd.DataFrame:
    """Speed of every model (as ``bench throughput``) and of affNIST-style generation."""
    from bench.data.testsets import generate
    from bench.throughput import measure

    rows = []
    for model in profile.models:
        for batch in profile.throughput.batch_sizes:
            r = measure(model, profile.data.canvas, batch, profile.model.width, device,
                        warmup=profile.throughput.warmup, repeats=profile.throughput.repeats,
                        bf16=profile.train.bf16 and device.type == "cuda")
            rows.append({"kind": "model", "model": model, "input_size": profile.data.canvas,
                         "batch": batch, "width": profile.model.width, "device": device.type,
                         **r})
            if progress:
                print(f"  throughput {model} b{batch}: train {r['train_images_per_s']:.0f} img/s, "
                      f"inference {r['infer_images_per_s']:.0f} img/s")
    # Generation rate: the affNIST-style set generated from scratch (no cache).
    cfg = dataclasses.replace(profile.data, n_test=min(profile.data.n_test, 2000), affnist_k=4)
    t0 = time.perf_counter()
    generated = generate("affnist", cfg, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    count = int(generated.images.shape[0])
    rows.append({"kind": "generation", "model": "affnist", "input_size": profile.data.canvas,
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


def cli_run(args) -> int:
    from bench.executor import load_executor_config

    profile = load_profile(args.profile, args.overrides)
    device = resolve_device(args.device)
    run_dir = Path(args.out) if args.out else default_run_dir(profile, device)
    settings = args.executor_config
    if settings is None and "executor" in read_profile_toml(profile_path(args.profile)):
        settings = profile_path(args.profile)  # an [executor] table in the profile itself
    executor_config = load_executor_config(
        settings, kind=args.executor, max_parallel=args.max_parallel,
        partition=args.partition, gpus_per_job=args.gpus_per_job,
        time_limit_min=args.time_limit, retries=args.retries,
    )
    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    if args.stage == "eval" and not any(Path(run_dir, "cells").glob("*/*/*/train.json")):
        raise BenchError(f"no trained cells under {run_dir}: run the train stage first")
    t0 = time.perf_counter()
    print(f"run {profile.name} on {device} -> {run_dir}")
    outcomes = run(profile, stages, run_dir, device, executor_config, args.data_dir,
                   args.download, force_throughput=args.stage == "throughput")
    failed = [k for k, o in outcomes.items() if not o["ok"]]
    print(f"done in {time.perf_counter() - t0:.0f} s: {run_dir}")
    if (run_dir / "report.md").is_file() and "report" in stages:
        print(f"report: {run_dir / 'report.md'}")
    if failed:
        for k in failed:
            print(f"  failed: {k}: {outcomes[k]['error']} (log: {outcomes[k]['log']})")
        raise BenchError(f"{len(failed)} of {len(outcomes)} cells failed; rerun to retry them")
    return 0

