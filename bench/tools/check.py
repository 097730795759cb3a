"""``python -m bench check RUN_DIR --baseline FILE|FOLDER``: regression check against a baseline.

A baseline (JSON) holds a run's data checksums and every metric, the environment they came from,
and the tolerances to compare with. Checksums of generated data are always compared exactly.
Metrics are compared exactly (``same_environment`` tolerance, 0) when the run's environment
(:data:`ENV_KEYS`: device, processor and its vector ISA, torch and kornia versions, thread count)
matches the baseline's, since the CPU path is deterministic there; otherwise with the looser
``other_environment`` bound, and the check says why. CPU kernels differ across ISAs (AVX2 vs
AVX512), and a small model's training amplifies last-bit differences: on two processors the
smoke profile's accuracies differed by up to 0.15 (measured), so an exact baseline is per
processor. Given a FOLDER, the check uses the baseline of the run's profile and environment.
"""

from __future__ import annotations

import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bench.cell.plan import Cell, cell_dir, spec_for
from bench.cell.train import train_cell
from bench.config import profile_from_dict
from bench.errors import BenchError
from bench.io import load_torch, read_json, write_json

KEY_COLUMNS = ("setup", "model", "n", "seed", "test_set", "factor_value", "metric")
DEFAULT_TOLERANCES = {"same_environment": 0.0, "other_environment": 0.03}
ENV_KEYS = ("device", "cpu", "version_torch", "version_kornia", "torch_threads")


@dataclass
class Row:
    name: str
    baseline: float | str | None
    now: float | str | None
    tolerance: str
    verdict: str  # ok | REGRESSION | missing | new


def metric_key(r: dict[str, Any]) -> str:
    fv = r["factor_value"]
    fv = "" if fv is None or (isinstance(fv, float) and math.isnan(fv)) else f"{float(fv):g}"
    return "|".join([str(r["setup"]), str(r["model"]), f"n{int(r['n'])}", f"s{int(r['seed'])}",
                     str(r["test_set"]), fv, str(r["metric"])])


def snapshot(run_dir: Path) -> dict[str, Any]:
    """What a baseline records of a run: checksums, metrics, environment."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.csv").is_file() or not (run_dir / "manifest.json").is_file():
        raise BenchError(f"{run_dir}: no metrics.csv/manifest.json: not a finished run folder")
    manifest = read_json(run_dir / "manifest.json")
    table = pd.read_csv(run_dir / "metrics.csv")
    metrics = {metric_key(r): float(r["value"]) for r in table.to_dict("records")}
    checksums = {f"{setup}/{name}": entry["sha256"]
                 for setup, sets in manifest.get("data_checksums", {}).items()
                 for name, entry in sets.items()}
    env = manifest.get("environment", {})
    return {
        "profile": manifest.get("profile", {}).get("name"),
        "environment": {**{k: env.get(k) for k in ENV_KEYS if k in env},
                        "torch_threads": manifest.get("torch_threads"),
                        "device_name": env.get("device_name"),
                        "git_commit": env.get("git_commit")},
        "data_checksums": checksums,
        "metrics": metrics,
    }


def compare(baseline: dict[str, Any], now: dict[str, Any]) -> tuple[list[Row], list[str]]:
    """Rows of every difference (and every pass), and notes about the environments."""
    notes = []
    tol = {**DEFAULT_TOLERANCES, **baseline.get("tolerances", {})}
    b_env, n_env = baseline.get("environment", {}), now.get("environment", {})
    differing = [k for k in ENV_KEYS if b_env.get(k) != n_env.get(k)]
    if differing:
        bound = tol["other_environment"]
        notes.append(
            "environment differs from the baseline's ("
            + ", ".join(f"{k}: {b_env.get(k)} -> {n_env.get(k)}" for k in differing)
            + f"): metrics compared within +-{bound}, not exactly; if this is the new reference, "
            "rerun with --update-baseline"
        )
    else:
        bound = tol["same_environment"]
    if baseline.get("profile") != now.get("profile"):
        notes.append(f"profile differs: baseline {baseline.get('profile')}, run {now.get('profile')}")

    rows: list[Row] = []
    for name in sorted(set(baseline["data_checksums"]) | set(now["data_checksums"])):
        b, n = baseline["data_checksums"].get(name), now["data_checksums"].get(name)
        verdict = "ok" if b == n else ("missing" if n is None else "new" if b is None
                                       else "REGRESSION")
        rows.append(Row(f"data {name} sha256", b and b[:12], n and n[:12], "exact", verdict))
    for name in sorted(set(baseline["metrics"]) | set(now["metrics"])):
        b, n = baseline["metrics"].get(name), now["metrics"].get(name)
        if b is None or n is None:
            verdict = "missing" if n is None else "new"
        elif math.isnan(b) and math.isnan(n):
            verdict = "ok"
        else:
            verdict = "ok" if abs(n - b) <= bound else "REGRESSION"
        rows.append(Row(name, b, n, "exact" if bound == 0 else f"+-{bound:g}", verdict))
    return rows, notes


def format_table(rows: list[Row]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    head = ("what", "baseline", "now", "tolerance", "verdict")
    body = [(r.name, fmt(r.baseline), fmt(r.now), r.tolerance, r.verdict) for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    return {}


def rerun_cell_matches(run_dir: Path, data_dir: str | None = None) -> tuple[bool, str]:
    """Retrain the run's first cell in a temporary folder; weights must match bit for bit."""

    manifest = read_json(Path(run_dir) / "manifest.json")
    profile = _profile_from_manifest(manifest)
    cell = min((Cell(**{k: c[k] for k in ("setup", "model", "n", "seed")})
                for c in manifest["cells"]), key=lambda c: (c.n, c.model != "capsnet", c))
    device = torch.device(manifest["environment"]["device"])
    original = cell_dir(Path(run_dir), profile, cell, device.type) / "checkpoint.pt"
    if not original.is_file():
        raise BenchError(f"{original}: missing, cannot rerun a cell to check determinism")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "cell"
        train_cell(spec_for(profile, cell), folder, device, data_dir=data_dir, progress=False)
        a, b = _tensors(load_torch(original)), _tensors(load_torch(folder / "checkpoint.pt"))
    differ = [k for k in a if k not in b or not torch.equal(a[k], b[k])]
    return not differ, f"{cell.label}: {len(a)} tensors, {len(differ)} differ" + (
        f" (first: {differ[0]})" if differ else "")


def _profile_from_manifest(manifest: dict[str, Any]):

    return profile_from_dict(manifest["profile"]["config"], where="manifest profile")


def _own_name(now: dict[str, Any]) -> str:
    """``<profile>-<device>-<cpu>.json``, lower case, for a baseline made from ``now``."""
    env = now["environment"]
    text = f"{now['profile']}-{env.get('device')}-{env.get('cpu') or 'unknown'}"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") + ".json"


def baseline_file(path: Path, now: dict[str, Any]) -> Path:
    """``path`` itself, or, for a folder, the file for this run's profile and environment.

    In a folder, a baseline is ``<profile>-<device>-<cpu>.json``; the one whose environment
    matches the run's is taken, else (with a note from :func:`compare`) the profile's first.
    """
    path = Path(path)
    if not path.is_dir():
        return path
    env = now["environment"]
    exact = path / _own_name(now)
    if exact.is_file():
        return exact
    same_profile = sorted(p for p in path.glob("*.json")
                          if read_json(p).get("profile") == now["profile"])
    for p in same_profile:
        b_env = read_json(p).get("environment", {})
        if all(b_env.get(k) == env.get(k) for k in ENV_KEYS):
            return p
    return same_profile[0] if same_profile else exact


def update_baseline(run_dir: Path, baseline_path: Path) -> tuple[Path, dict[str, Any]]:
    """Write the baseline of this run (an intended change), keeping the old one's tolerances."""
    now = snapshot(run_dir)
    target = baseline_file(baseline_path, now)
    if Path(baseline_path).is_dir() and target.is_file():
        same = read_json(target).get("environment", {})
        if any(same.get(k) != now["environment"].get(k) for k in ENV_KEYS):
            # the folder had no baseline of this environment: add one, do not overwrite another's
            target = Path(baseline_path) / _own_name(now)
    old = read_json(target) if target.is_file() else {}
    now["tolerances"] = old.get("tolerances", DEFAULT_TOLERANCES)
    write_json(target, now)
    return target, now


def check(run_dir: Path, baseline_path: Path) -> tuple[Path, list[Row], list[str]]:
    """Every value of the baseline compared with this run: the file used, rows with verdicts,
    and notes."""
    now = snapshot(run_dir)  # first: a run folder that is not one is the first thing to say
    path = baseline_file(baseline_path, now)
    if not path.is_file():
        raise BenchError(f"baseline not found: {path} (create it with --update-baseline)")
    baseline = read_json(path)
    cpu, base_cpu = now["environment"].get("cpu"), baseline.get("environment", {}).get("cpu")
    if Path(baseline_path).is_dir() and cpu != base_cpu:
        # No baseline of this processor: the generated data do not depend on it and are compared
        # exactly; trained metrics do (CPU kernels differ across ISAs) and are not compared.
        rows, notes = compare({**baseline, "metrics": {}}, {**now, "metrics": {}})
        notes = [n for n in notes if not n.startswith("environment differs")]
        notes.append(f"no baseline of this processor ({cpu}) in {baseline_path}: data checksums "
                     f"compared exactly with {path.name}, metrics not compared (they differ across "
                     "processors); record this processor's with --update-baseline")
        return path, rows, notes
    rows, notes = compare(baseline, now)
    return path, rows, notes
