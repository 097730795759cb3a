"""``python -m bench.tools.benchcompare``: the pytest-benchmark suite, compared without false alarms.

Timings from separate CI jobs spread by ~26% on these machines against ~0.3% within one job
(see the README), so the meaningful comparison runs the baseline and the candidate in the same
job: ``--base REF`` checks REF out in a temporary git worktree, runs the suite there and here,
and reports candidate/baseline ratios of the medians. Without ``--base`` the run is compared
with this machine's last saved run (``.benchmarks/``) through pytest-benchmark's own
``--benchmark-compare-fail``; with no saved run it says so and saves this one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITE = ["-m", "pytest", "tests/benchmarks", "-m", "bench", "--benchmark-enable", "-q",
         "-p", "no:cacheprovider"]


def run_suite(tree: Path, json_out: Path, extra: list[str] | None = None) -> int:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, *SUITE, f"--benchmark-json={json_out}", *(extra or [])]
    return subprocess.run(cmd, cwd=tree, env=env).returncode


def medians(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {b["name"]: b["stats"]["median"] for b in data["benchmarks"]}


def ratio_table(base: dict[str, float], cand: dict[str, float], fail_ratio: float) -> tuple[str, bool]:
    lines = [f"{'benchmark':60s} {'base ms':>10s} {'now ms':>10s} {'now/base':>9s}  verdict"]
    failed = False
    for name in sorted(set(base) | set(cand)):
        if name not in base or name not in cand:
            lines.append(f"{name:60s} {'-':>10s} {'-':>10s} {'-':>9s}  "
                         f"{'new' if name in cand else 'gone'}")
            continue
        r = cand[name] / base[name]
        bad = r > fail_ratio
        failed |= bad
        lines.append(f"{name:60s} {base[name] * 1e3:10.2f} {cand[name] * 1e3:10.2f} {r:9.2f}  "
                     f"{'SLOWER' if bad else 'ok'}")
    return "\n".join(lines), failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tools.benchcompare", description=__doc__)
    p.add_argument("--base", help="git ref to measure in the same job (e.g. origin/main, HEAD~1)")
    p.add_argument("--fail-ratio", type=float, default=1.25,
                   help="fail when a median is this many times the baseline's (default 1.25)")
    p.add_argument("--out", default=str(ROOT / ".benchmarks" / "last"), help="JSON output folder")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.base:
        with tempfile.TemporaryDirectory() as tmp:
            wt = Path(tmp) / "base"
            subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.base], cwd=ROOT,
                           check=True, capture_output=True)
            try:
                if not (wt / "tests" / "benchmarks").is_dir():
                    print(f"base {args.base} has no tests/benchmarks: nothing to compare with")
                    return run_suite(ROOT, out / "candidate.json")
                rc_base = run_suite(wt, out / "base.json")
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT,
                               capture_output=True)
        rc = run_suite(ROOT, out / "candidate.json")
        if rc or rc_base:
            print(f"benchmark suite failed (base rc={rc_base}, candidate rc={rc})")
            return rc or rc_base
        table, failed = ratio_table(medians(out / "base.json"), medians(out / "candidate.json"),
                                    args.fail_ratio)
        print(f"same-job comparison with {args.base} (ratio of medians):\n{table}")
        return 1 if failed else 0

    saved = list((ROOT / ".benchmarks").glob("*-*/*.json"))
    if not saved:
        print("no saved benchmark run for this machine in .benchmarks/: this run is saved as the "
              "baseline (compare later runs, or use --base REF for a same-job comparison)")
        return run_suite(ROOT, out / "candidate.json", ["--benchmark-autosave"])
    return run_suite(ROOT, out / "candidate.json",
                     ["--benchmark-autosave", "--benchmark-compare",
                      f"--benchmark-compare-fail=median:{(args.fail_ratio - 1) * 100:.0f}%"])


if __name__ == "__main__":
    raise SystemExit(main())
