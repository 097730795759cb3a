"""``python -m bench``: the command line, and the one home of every command handler.

Each handler parses nothing itself: argparse hands it the namespace, it calls the layer below
(runner, stages, report, check) and prints. Imports are local to each handler, so a command
loads only what it uses. Errors are one line (a :class:`~bench.errors.BenchError`), never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.errors import BenchError

EXAMPLE = "python -m bench run all            # the quick profile end to end (about 15 min on 2 cores)"


# --------------------------------------------------------------------------------------------
# Handlers


def _data(args: argparse.Namespace) -> int:
    import pandas as pd

    from bench.cell.plan import RESULTS_DIR
    from bench.config import load_profile
    from bench.data.sheets import contact_sheet
    from bench.data.testsets import build_test_sets
    from bench.runtime import device_name, resolve_device

    profile = load_profile(args.profile, args.overrides)
    if args.describe_affnist:
        from bench.data.affine import describe_affnist

        print(f"profile {profile.name}: affNIST-style ranges (test set 'affnist')")
        for line in describe_affnist(profile.data.affine, profile.data.canvas):
            print(f"- {line}")
        if profile.data.real_affnist:
            from bench.data.affnist_mat import transform_ranges

            print(f"official affNIST files {profile.data.real_affnist}:")
            for line in transform_ranges(profile.data.real_affnist):
                print(f"- {line}")
        return 0
    device = resolve_device(args.device)
    print(f"profile {profile.name}: building test sets on {device} ({device_name(device)})")
    sets = build_test_sets(profile.data, device, data_dir=args.data_dir, download=args.download,
                           progress=True)
    table = pd.DataFrame([
        {"set": name, "images": f"{len(ts):,}", "sha256": ts.sha256[:12],
         "seconds": f"{ts.seconds:.2f}",
         "images/s": f"{len(ts) / ts.seconds:,.0f}" if ts.seconds > 0 else "inf",
         "cached": "yes" if ts.cached else "no"}
        for name, ts in sets.items()
    ])
    print(table.to_string(index=False))
    if not args.no_sheets:
        folder = RESULTS_DIR / "data"
        for name, ts in sets.items():
            contact_sheet(ts, folder / f"{name}.png")
        print(f"contact sheets: {folder}/<set>.png")
    return 0


def _models(args: argparse.Namespace) -> int:
    import pandas as pd

    from bench.flops import format_si, model_table

    if args.check:
        return _check_model(args)
    rows = model_table(args.input_size, args.width)
    print(f"models at {args.input_size}x{args.input_size}, width {args.width:g}")
    table = pd.DataFrame([{"model": r["model"], "family": r["family"],
                           "package": r["package"], "parameters": f"{r['params']:,}",
                           "without decoder": f"{r['classifier_params']:,}",
                           "FLOPs/image": format_si(r["flops_per_image"]),
                           "paper": r["paper_params"]} for r in rows])
    if not any(r["package"] for r in rows):  # external models only: the package they come from
        table = table.drop(columns="package")
    print(table.to_string(index=False))
    if (args.input_size, args.width) == (28, 1.0):
        print("paper: Sabour et al. 2017, Section 5 (CapsNet 8.2M, 6.8M without the decoder; "
              "baseline 35.4M); Gu et al. 2021's ConvNet 5.3M, as a review of the paper reports it "
              "(compare without decoder)")
    return 0


def _check_model(args: argparse.Namespace) -> int:
    from bench.cell.conformance import check_model, failures
    from bench.config import load_profile
    from bench.models.registry import model_info

    profile = load_profile(args.profile, args.overrides)
    info = model_info(args.check)
    origin = (f"{info.package or 'no installed package'} {info.version or ''}".rstrip()
              + (f", {info.module}" if info.external else ""))
    print(f"conformance check of {args.check} ({info.family}; {origin}) with profile "
          f"{profile.name}: canvas {profile.data.canvas}, width {profile.model.width:g}")
    t0 = time.perf_counter()
    found = check_model(args.check, profile, args.data_dir)
    for f in found:
        print(f"  {f.line()}")
    bad = failures(found)
    if bad:
        raise BenchError(f"model '{args.check}' fails the conformance check: "
                         f"{', '.join(f.prop for f in bad)}")
    print(f"passed: {len(found)} properties in {time.perf_counter() - t0:.0f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    import torch

    from bench.cell.plan import AFFNIST_SETUP, Cell, cell_dir, default_run_dir, spec_for
    from bench.config import load_profile
    from bench.models.registry import create_model
    from bench.runner.cell import CellTask, DataSource, run_cell
    from bench.runtime import resolve_device

    profile = load_profile(args.profile, args.overrides)
    with torch.device("meta"):  # an unknown model name fails here, before any data is loaded
        create_model(args.model, input_size=profile.data.canvas, width=profile.model.width)
    device = resolve_device(args.device)
    run_dir = Path(args.out) if args.out else default_run_dir(profile, device.type)
    cell = Cell(AFFNIST_SETUP, args.model, args.n, args.seed)
    spec_for(profile, cell)  # checks the cell against the profile
    # The runner's own cell folder, so that a later `run all` reuses this cell.
    folder = cell_dir(run_dir, profile, cell, device.type)
    task = CellTask(profile, cell, str(folder), str(device), ("train",),
                    DataSource(args.data_dir, args.download))
    summary = run_cell(task)["train"]
    acc = summary["best_val_accuracy"]
    print(f"{folder}: {summary['steps']} steps, best step {summary['best_step']}, "
          f"val accuracy {'-' if acc is None else f'{acc:.4f}'}, "
          f"{summary['train_seconds']:.1f} s, "
          f"{summary['images_per_s'] or float('nan'):.0f} images/s, "
          f"final loss {summary['final_loss']:.4f}, {summary['params']:,} parameters")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from bench.cell.plan import RESULTS_DIR
    from bench.config import load_profile
    from bench.runner.cell import DataSource
    from bench.runtime import resolve_device
    from bench.tools.tune import lr_table, run_tune, tuning_settings

    profile = load_profile(args.profile, args.overrides)
    t = tuning_settings(profile)
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else RESULTS_DIR / f"{profile.name}-tune-{device.type}"
    print(f"tune {profile.name}: {len(t.models)} models x {len(t.lrs)} rates "
          f"({', '.join(f'{lr:g}' for lr in t.lrs)}) x {len(t.seeds)} seeds at n = {t.n}, "
          f"{t.steps} steps each, scored on validation images -> {out}")
    table, chosen = run_tune(profile, out, str(device), DataSource(args.data_dir, args.download))
    wide = table.pivot_table(index="model", columns="lr", values="final_val_accuracy",
                             aggfunc="mean", sort=False)
    print((100 * wide).round(2).to_string())
    print(f"\nchosen (written to {out / 'tuning.toml'}):\n{lr_table(chosen, t.models)}", end="")
    return 0


def _throughput(args: argparse.Namespace) -> int:
    import json
    import math

    from bench.cell.throughput import measure
    from bench.runtime import resolve_device

    device = resolve_device(args.device)
    row = measure(args.model, args.input_size, args.batch, args.width, device,
                  warmup=args.warmup, repeats=args.repeats, bf16=args.bf16, compile=args.compile)
    if args.json:
        print(json.dumps(row, indent=2))
        return 0
    mem = "n/a" if math.isnan(row["peak_mem_mb"]) else f"{row['peak_mem_mb']:.0f} MB"
    print(f"{row['model']} at {row['input_size']}x{row['input_size']}, width {row['width']:g}, "
          f"batch {row['batch']} on {row['device_name']}")
    for label, value in (
        ("parameters", f"{row['params']:,}"),
        ("FLOPs/image (fwd)", f"{row['flops_per_image'] / 1e6:.1f} M"),
        ("FLOPs/image (train)", f"{row['flops_train_per_image'] / 1e6:.1f} M"),
        ("train images/s", f"{row['train_images_per_s']:.1f}"),
        ("inference images/s", f"{row['infer_images_per_s']:.1f}"),
        ("latency, batch 1", f"{row['latency_b1_ms']:.2f} ms"),
        (f"peak memory ({row['peak_mem_kind']})", mem),
        ("achieved TFLOP/s (train)", f"{row['tflops_train']:.3f}"),
    ):
        print(f"  {label:<38} {value}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from bench.cell.plan import default_run_dir
    from bench.config import load_profile_with_executor, profile_path
    from bench.runner.cell import DataSource
    from bench.runner.executor import load_executor_config
    from bench.runner.stages import run
    from bench.runner.todo import STAGE_ORDER
    from bench.runtime import resolve_device

    profile, table = load_profile_with_executor(args.profile, args.overrides)
    device = resolve_device(args.device)
    run_dir = Path(args.out) if args.out else default_run_dir(profile, device.type)
    config = load_executor_config(
        args.executor_config, profile_table=table, kind=args.executor,
        max_parallel=args.max_parallel, partition=args.partition,
        gpus_per_job=args.gpus_per_job, time_limit_min=args.time_limit, retries=args.retries,
    )
    stages = STAGE_ORDER if args.stage == "all" else (args.stage,)
    if args.stage == "eval" and not any(Path(run_dir, "cells").glob("*/*/*/train.json")):
        raise BenchError(f"no trained cells under {run_dir}: run the train stage first")
    t0 = time.perf_counter()
    print(f"run {profile.name} on {device} -> {run_dir}" + (" (dry run)" if args.dry_run else ""))
    source = DataSource(args.data_dir, args.download)
    outcomes = run(profile, stages, run_dir, device, config, source,
                   force_throughput=args.stage == "throughput", dry_run=args.dry_run,
                   max_hours=args.max_hours, profile_file=profile_path(args.profile),
                   overrides=args.overrides)
    if args.dry_run:
        print("dry run: nothing was run or written")
        return 0
    failed = [k for k, o in outcomes.items() if not o["ok"]]
    print(f"done in {time.perf_counter() - t0:.0f} s: {run_dir}")
    if (run_dir / "report.md").is_file() and "report" in stages:
        print(f"report: {run_dir / 'report.md'}")
    if failed:
        for k in failed:
            print(f"  failed: {k}: {outcomes[k]['error']} (log: {outcomes[k]['log_path']})")
        raise BenchError(f"{len(failed)} of {len(outcomes)} cells failed; rerun to retry them")
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from bench.cell.plan import cells, data_config, setups
    from bench.config import load_profile_with_executor, profile_names
    from bench.data.testsets import default_set_names
    from bench.runner.estimate import format_duration
    from bench.runner.executor import load_executor_config
    from bench.runner.todo import device_words, estimate_run, fresh_plan
    from bench.runtime import resolve_device

    device = resolve_device(args.device)
    names = args.names or profile_names()
    if args.estimate:
        print(f"estimated wall time of `run all` from scratch on {device_words(device)}, from "
              "a few timed steps of each model here (a minute or two in all)", flush=True)
    for name in names:
        profile, table = load_profile_with_executor(name)
        line = f"{profile.name}: {len(cells(profile))} cells"
        if args.estimate:
            config = load_executor_config(profile_table=table)
            est = estimate_run(profile, fresh_plan(profile), device, config)
            line += f", {format_duration(est['total_s'])} on this device"
            if est["parallel"] > 1:
                line += f" ({est['parallel']} cells at once, as its [executor] says)"
        print(line)
        for setup in setups(profile):
            sets = setup.test_sets or default_set_names(data_config(profile, setup))
            seeds = f"{len(setup.seeds)} seed" + ("s" if len(setup.seeds) != 1 else "")
            print(f"  {setup.name} ({setup.canvas}x{setup.canvas}): models {', '.join(setup.models)}; "
                  f"n = {', '.join(f'{n:,}' for n in setup.sizes)}; {seeds}")
            print(f"    test sets: {', '.join(sets)}")
            cfg = data_config(profile, setup)
            a = cfg.attack
            if a.n and cfg.canvas >= 40:
                sizes = ", ".join(f"{n:,}" for n in a.sizes) if a.sizes else "every n"
                print(f"    adversarial (n = {sizes}): FGSM and PGD ({a.pgd_steps} steps) at "
                      f"ε = {', '.join(f'{e:g}' for e in a.budgets)} on {a.n:,} digits; vote, "
                      f"Square ({a.square_n:,} digits) and transfer attacks at ε = "
                      f"{a.stated_budget:g}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from bench.report.build import build_report

    run_dir = Path(args.run_dir)
    build_report(run_dir)
    print(f"wrote {run_dir / 'report.md'}, {run_dir / 'tables'}/, {run_dir / 'figures'}/")
    return 0


def _check(args: argparse.Namespace) -> int:
    from bench.tools import check

    run_dir, baseline = Path(args.run_dir), Path(args.baseline)
    if args.update_baseline:
        path, written = check.update_baseline(run_dir, baseline)
        print(f"baseline written: {path} ({len(written['metrics'])} metrics, "
              f"{len(written['data_checksums'])} data checksums)")
        return 0
    baseline, rows, notes = check.check(run_dir, baseline)
    bad = [r for r in rows if r.verdict != "ok"]
    for note in notes:
        print(f"note: {note}")
    print(f"compared {len(rows)} values with {baseline}: {len(rows) - len(bad)} ok, {len(bad)} not")
    if bad:
        print(check.format_table(bad))
    same = True
    if args.rerun_cell:
        same, detail = check.rerun_cell_matches(run_dir, getattr(args, "data_dir", None))
        print(f"determinism: rerun of {detail}: {'identical' if same else 'DIFFERENT'}")
    if bad or not same:
        raise BenchError(f"regression check failed: {len(bad)} values moved"
                         + ("" if same else "; a rerun cell differs"))
    return 0


def _gpu_check(args: argparse.Namespace) -> int:
    from bench.tools.gpu_check import run_gpu_check

    return run_gpu_check(Path(args.out), args.quick, args.budget_s, args.device)


# --------------------------------------------------------------------------------------------
# The parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="quick",
                   help="profile name (smoke, quick, paper) or a path to a .toml file (default quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile value, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--data-dir", default=None,
                   help="torchvision-style data root (ROOT/MNIST/raw/...); default $BENCH_DATA_DIR "
                        "or the committed datasets/mnist")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download a missing dataset (needs internet)")


def _command(sub, name: str, handler: Callable[[argparse.Namespace], int], help: str,
             **kwargs) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", **kwargs)
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="capsbench: Capsule Networks and max-pooling ConvNets on the claims made for "
                    "capsules (viewpoint, data efficiency, part arrangement).",
        epilog=f"example:\n  {EXAMPLE}\n  python -m bench run all --profile smoke --device cpu\n"
               "  python -m bench models --input-size 28",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from bench.runner.todo import STAGE_HELP, STAGE_ORDER

    stage_lines = "\n".join(f"  {k:<11} {v}" for k, v in STAGE_HELP.items())
    p = _command(sub, "run", _run,
                 "run a profile's stages, or 'all' (data, train, eval, throughput, report)",
                 epilog=f"stages:\n{stage_lines}\n  {'all':<11} every stage in that order\n\n"
                        f"example:\n  {EXAMPLE}",
                 formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("stage", choices=(*STAGE_ORDER, "all"), help="which stage (see below)")
    _common(p)
    p.add_argument("--out", default=None, help="run folder (default results/<profile>-<device>)")
    p.add_argument("--executor", default=None, choices=("local", "slurm"),
                   help="where cells run (default: local, or the --executor-config file's kind)")
    p.add_argument("--max-parallel", type=int, default=None, help="cells run at once (default 1)")
    p.add_argument("--partition", default=None, help="Slurm partition")
    p.add_argument("--gpus-per-job", type=int, default=None, help="Slurm GPUs per job (default 0)")
    p.add_argument("--time-limit", type=int, default=None,
                   help="Slurm time limit per job, minutes (default 60)")
    p.add_argument("--retries", type=int, default=None,
                   help="resubmissions of a failed job (default 2)")
    p.add_argument("--executor-config", default=None, help="TOML with executor settings")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (cells to train and reused, test sets to build or load) "
                        "and its estimated wall time on this device, then stop")
    p.add_argument("--max-hours", type=float, default=None, metavar="H",
                   help="stop before running anything when the estimated time of the work left "
                        "exceeds H hours (default: no limit)")

    p = _command(sub, "profiles", _profiles,
                 "list the packaged profiles: their cells, test sets and estimated time here")
    p.add_argument("names", nargs="*", help="profiles to list (default: every packaged one)")
    p.add_argument("--device", default="auto", help="device to estimate for (default: auto)")
    p.add_argument("--no-estimate", dest="estimate", action="store_false",
                   help="skip timing the models: list cells and test sets only")

    p = _command(sub, "data", _data, "build and cache every test set of a profile, with contact sheets")
    _common(p)
    p.add_argument("--no-sheets", action="store_true", help="skip the contact-sheet PNGs")
    p.add_argument("--describe-affnist", action="store_true",
                   help="print the affNIST-style ranges, their sources and our choices (and the "
                        "per-column ranges of data.real_affnist's files, when set), then stop")

    p = _command(sub, "train", _train, "train one cell (model, training-set size, seed) of a profile")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, required=True, help="training-set size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default results/<profile>-<device>)")

    p = _command(sub, "tune", _tune,
                 "choose each model's learning rate from the profile's [tune] rates on validation "
                 "images")
    _common(p)
    p.add_argument("--out", default=None,
                   help="folder for the search's cells and tuning.csv (default "
                        "results/<profile>-tune-<device>)")

    p = _command(sub, "models", _models,
                 "list the models (parameters, FLOPs, the paper's counts), or check one with --check")
    p.add_argument("--input-size", type=int, default=40, choices=(28, 40))
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--check", default=None, metavar="NAME",
                   help="run the conformance check of model NAME (a suite name, an installed "
                        "entry point's, or module:factory) at the --profile's canvas and width")
    p.add_argument("--profile", default="quick",
                   help="profile for --check: its canvas, width, training settings and "
                        "[model] max_params (default quick)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile value for --check (repeatable)")
    p.add_argument("--data-dir", default=None, help="data root for --check (as for run)")

    p = _command(sub, "throughput", _throughput, "measure train and inference images/s of one model")
    p.add_argument("--model", required=True)
    p.add_argument("--input-size", type=int, default=40, choices=(28, 40))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the step")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = _command(sub, "report", _report, "rebuild the tables and figures of a run folder, no training")
    p.add_argument("run_dir")

    p = _command(sub, "check", _check, "compare a run with a committed baseline (CI's regression check)")
    p.add_argument("run_dir")
    p.add_argument("--baseline", required=True,
                   help="a baseline JSON, or a folder of them (the one of this run's profile and "
                        "processor is used)")
    p.add_argument("--update-baseline", action="store_true",
                   help="rewrite the baseline from this run (an intended change)")
    p.add_argument("--rerun-cell", action="store_true",
                   help="also retrain the run's smallest cell and require bitwise-equal weights")
    p.add_argument("--data-dir", default=None, help="data root for --rerun-cell (as for run)")

    p = _command(sub, "gpu-check", _gpu_check,
                 "the prepared GPU check: agreement with the CPU, speed, learning, paper estimate")
    p.add_argument("--out", default="results/gpu-check")
    p.add_argument("--quick", action="store_true", help="a shorter check (for the CPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget in seconds (default 420; quick 120)")
    p.add_argument("--device", default="auto")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `python -m bench`: what there is, and where to start
        parser.print_help()
        return 0
    try:
        return int(args.handler(args) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
