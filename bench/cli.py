"""``python -m bench``: subcommands, each a thin wrapper; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.errors import BenchError

STAGES = ("data", "train", "eval", "throughput", "report", "all")


def _common(p: argparse.ArgumentParser, profile_default: str | None = "quick") -> None:
    p.add_argument("--profile", default=profile_default,
                   help="profile name (smoke, quick, paper) or a path to a .toml file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one profile value, e.g. --set train.lr=0.01 (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--data-dir", default=None,
                   help="torchvision-style data root (ROOT/MNIST/raw/...); default $BENCH_DATA_DIR "
                        "or the committed datasets/mnist")
    p.add_argument("--download", action="store_true",
                   help="let torchvision download a missing dataset (needs internet)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="build and cache every test set of a profile")
    _common(p)
    p.add_argument("--no-sheets", action="store_true", help="skip the contact-sheet PNGs")
    p.set_defaults(handler="bench.data.testsets:cli_data")

    p = sub.add_parser("models", help="table of models: parameters, FLOPs, paper counts")
    p.add_argument("--input-size", type=int, default=40, choices=(28, 40))
    p.add_argument("--width", type=float, default=1.0)
    p.set_defaults(handler="bench.flops:cli_models")

    p = sub.add_parser("train", help="train one cell (model, training-set size, seed)")
    _common(p)
    p.add_argument("--model", required=True)
    p.add_argument("--n", type=int, required=True, help="training-set size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="run folder (default results/<profile>)")
    p.set_defaults(handler="bench.train:cli_train")

    p = sub.add_parser("throughput", help="train and inference images/s of one model")
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
    p.set_defaults(handler="bench.throughput:cli_throughput")

    p = sub.add_parser("run", help="run a stage, or 'all': data, train, eval, throughput, report")
    p.add_argument("stage", choices=STAGES)
    _common(p)
    p.add_argument("--out", default=None, help="run folder (default results/<profile>)")
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
    p.set_defaults(handler="bench.runner:cli_run")

    p = sub.add_parser("report", help="rebuild tables and figures of a run folder, no training")
    p.add_argument("run_dir")
    p.set_defaults(handler="bench.report:cli_report")

    p = sub.add_parser("check", help="compare a run with a committed baseline")
    p.add_argument("run_dir")
    p.add_argument("--baseline", required=True)
    p.add_argument("--update-baseline", action="store_true",
                   help="rewrite the baseline from this run (an intended change)")
    p.add_argument("--rerun-cell", action="store_true",
                   help="also retrain the run's smallest cell and require bitwise-equal weights")
    p.set_defaults(handler="bench.check:cli_check")

    p = sub.add_parser("gpu-check", help="the prepared GPU check: agreement, speed, learning")
    p.add_argument("--out", default="results/gpu-check")
    p.add_argument("--quick", action="store_true", help="a shorter check (for the CPU)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="time budget in seconds (default 420; quick 120)")
    p.add_argument("--device", default="auto")
    p.set_defaults(handler="bench.gpu_check:cli_gpu_check")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module, func = args.handler.split(":")
    try:
        handler = getattr(importlib.import_module(module), func)
        return int(handler(args) or 0)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished results are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
