"""A small synthetic run folder, exact to the results schema of the plan, for the report tests.

Values come from a seeded NumPy generator with plausible shapes (accuracy rising with n and
saturating, accuracy falling away from the identity transform in the sweeps), so the figures look
like real ones and the tests can recompute any number of the report from ``metrics.csv`` itself.

Two scenarios, so that the report is tested on results that do not flatter the CapsNet:
``"capsnet-wins"`` (the CapsNet loses less on the affNIST-style set and needs fewer images, its
decoder beats the class-mean image) and ``"convnet-wins"`` (the max-pooling ConvNet keeps more
affNIST-style accuracy and learns faster; the CapsNet's reconstructions are no better than the
class mean). ``cells.csv`` marks the cells of ``not_converged`` as not converged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

MODELS = ("capsnet", "baseline-cnn", "convnet-maxpool", "convnet-k9")
SIZES = (100, 300, 1000, 3000)
SEEDS = (0, 1, 2, 3, 4)
TARGETS = (0.7, 0.8, 0.9)
CANVAS = 40
SWEEPS = {
    "rotation": ((-60.0, -30.0, 0.0, 30.0, 60.0), 0.0, 50.0),  # grid, identity, width
    "scale": ((0.6, 0.8, 1.0, 1.2, 1.4), 1.0, 0.4),
    "shear": ((-0.4, -0.2, 0.0, 0.2, 0.4), 0.0, 0.45),
    "translate": ((0.0, 4.0, 8.0, 12.0), 0.0, 10.0),
}
SCRAMBLED = ("scramble-g2", "scramble-g3", "displaced")
# Fraction of the sweep digits whose ink leaves the canvas, per (factor, value); 0 elsewhere.
CROPPED = {("translate", 8.0): 0.06, ("translate", 12.0): 0.45, ("scale", 1.4): 0.2}
# Test-set sizes of the fixture run's manifest (digits, transforms per digit, digits per point).
N_TEST, AFFNIST_K, SWEEP_N = 1_000, 4, 50
FILES = ("metrics.csv", "cells.csv", "confidences.parquet", "throughput.csv", "examples.pt",
         "manifest.json")
WIDTH = 0.125
MAX_STEPS = 500
VAL_SIZE = 500
# The one (model, sweep factor, seed) whose probe fit fails (R² -2.5 at every n).
FAILED_FIT = ("convnet-k9", "translate", 0)
# The default non-converged cell (model, n, seed): one ConvNet cell at the largest n.
NOT_CONVERGED = (("convnet-maxpool", SIZES[-1], SEEDS[1]),)

# How much of its clean accuracy each model keeps on the affNIST-style set (Sabour et al.'s
# 79% vs 66% ratio, roughly), and its data-efficiency offset, per scenario.
SCENARIOS = {
    "capsnet-wins": (
        {"capsnet": 0.80, "baseline-cnn": 0.67, "convnet-maxpool": 0.70, "convnet-k9": 0.74},
        {"capsnet": 0.03, "baseline-cnn": 0.0, "convnet-maxpool": -0.02, "convnet-k9": 0.01},
    ),
    "convnet-wins": (
        {"capsnet": 0.66, "baseline-cnn": 0.64, "convnet-maxpool": 0.80, "convnet-k9": 0.78},
        {"capsnet": -0.03, "baseline-cnn": 0.0, "convnet-maxpool": 0.04, "convnet-k9": 0.02},
    ),
}


def _clean_accuracy(model: str, n: int, rng: np.random.Generator, shift: dict) -> float:
    base = 0.99 - 2.46 * n ** -0.4 + shift.get(model, 0.0)
    return float(np.clip(base + rng.normal(0, 0.006), 0.05, 0.999))


def _metric_rows(models: Iterable[str], rng: np.random.Generator, seeds: tuple[int, ...],
                 scenario: str) -> list[dict]:
    keep, shift = SCENARIOS[scenario]
    rows: list[dict] = []

    def add(setup, model, n, seed, test_set, metric, value, factor=math.nan):
        rows.append(dict(setup=setup, model=model, n=n, seed=seed, test_set=test_set,
                         factor_value=factor, metric=metric, value=float(value)))

    for model in models:
        caps = model.startswith("capsnet")
        for n in SIZES:
            for seed in seeds:
                cell = ("affnist", model, n, seed)
                clean = _clean_accuracy(model, n, rng, shift)
                aff = clean * keep.get(model, 0.7) + rng.normal(0, 0.01)
                for ts, acc, ece in (("clean", clean, 0.03), ("affnist", aff, 0.09)):
                    add(*cell, ts, "accuracy", acc)
                    add(*cell, ts, "error", 1 - acc)
                    add(*cell, ts, "mean_confidence", min(acc + rng.normal(0.02, 0.01), 1.0))
                    add(*cell, ts, "ece", abs(ece + rng.normal(0, 0.01)))
                    add(*cell, ts, "ece_calibrated", abs(ece / 3 + rng.normal(0, 0.003)))
                add(*cell, "clean", "temperature", (0.08 if caps else 1.3) * rng.uniform(0.9, 1.1))
                for tag in ("raw", "cal"):  # the reliability diagram's 15 bins on clean digits
                    for b in range(10, 15):
                        edge = (b + 1) / 15
                        add(*cell, "clean", f"reliability_{tag}_count", 20 * (b - 9), factor=edge)
                        add(*cell, "clean", f"reliability_{tag}_confidence", edge - 1 / 30,
                            factor=edge)
                        add(*cell, "clean", f"reliability_{tag}_accuracy",
                            min(edge - 1 / 30 + (0.05 if tag == "raw" else 0.0), 1.0),
                            factor=edge)
                for factor, (grid, centre, width) in SWEEPS.items():
                    ts = f"sweep-{factor}"
                    for v in grid:
                        acc = clean * math.exp(-(((v - centre) / width) ** 2)) + rng.normal(0, 0.01)
                        add(*cell, ts, "accuracy", acc, factor=v)
                        add(*cell, ts, "error", 1 - acc, factor=v)
                        add(*cell, ts, "mean_confidence", acc, factor=v)
                        crop = CROPPED.get((factor, v), 0.0)
                        add(*cell, ts, "cropped_fraction", crop, factor=v)
                        add(*cell, ts, "accuracy_fits", min(acc + 0.1 * crop, 1.0), factor=v)
                    r2 = (0.8 if caps else 0.6) + rng.normal(0, 0.03)
                    if (model, factor, seed) == FAILED_FIT:  # a held-out R² far below 0
                        r2 = -2.5
                    add(*cell, ts, "probe_r2", r2)
                for g, ts in enumerate(SCRAMBLED):
                    kept = 0.45 - 0.1 * g + rng.normal(0, 0.02)
                    add(*cell, ts, "accuracy", kept)
                    add(*cell, ts, "error", 1 - kept)
                    add(*cell, ts, "mean_confidence", 0.6 + rng.normal(0, 0.02))
                    add(*cell, ts, "mean_confidence_intact", clean + rng.normal(0, 0.01))
                    add(*cell, ts, "auroc_confidence", 0.7 + 0.05 * g + rng.normal(0, 0.02))
                    add(*cell, ts, "auroc_mahalanobis", 0.75 + 0.05 * g + rng.normal(0, 0.02))
                    add(*cell, ts, "intact_correct", clean)
                    add(*cell, ts, "kept_given_intact_correct", min(kept / clean, 1.0))
                    add(*cell, ts, "flip_rate", 1 - kept)
                    if not caps:
                        add(*cell, ts, "auroc_max_logit", 0.72 + rng.normal(0, 0.02))
                        add(*cell, ts, "auroc_energy", 0.73 + rng.normal(0, 0.02))
                    if caps:
                        add(*cell, ts, "auroc_recon", 0.85 + rng.normal(0, 0.02))
                if caps:  # the decoder's error on clean digits, and the class-mean image's
                    base = 0.060 + rng.normal(0, 0.002)
                    own = (base - 0.025 if scenario == "capsnet-wins" else base) + rng.normal(
                        0, 0.004)
                    add(*cell, "clean", "recon_mse", own)
                    add(*cell, "clean", "recon_mse_class_mean", base)
    for model in ("capsnet", "baseline-cnn"):  # the paper's MNIST table, 28x28, n = 60,000
        if model not in models:
            continue
        for seed in seeds:
            err = {"capsnet": 0.0028, "baseline-cnn": 0.0041}[model] + rng.normal(0, 0.0003)
            cell = ("mnist28", model, 60_000, seed)
            add(*cell, "clean", "accuracy", 1 - err)
            add(*cell, "clean", "error", err)
            add(*cell, "clean", "mean_confidence", 0.99)
            add(*cell, "clean", "ece", 0.004)
    return rows


def _confidence_rows(models: Iterable[str], rng: np.random.Generator, seeds: tuple[int, ...],
                     k: int = 30) -> pd.DataFrame:
    parts = []
    for model in models:
        caps = model.startswith("capsnet")
        for n in SIZES:
            for seed in seeds:
                for ts in ("clean", "affnist", *SCRAMBLED):
                    for intact in (False, True) if ts in SCRAMBLED else (False,):
                        hi = intact or ts == "clean"
                        conf = rng.beta(8, 2, k) if hi else rng.beta(3, 3, k)
                        recon = rng.gamma(2.0, 5.0 if hi else 9.0, k) if caps else np.full(k, np.nan)
                        parts.append(pd.DataFrame({
                            "setup": "affnist", "model": model, "n": n, "seed": seed,
                            "test_set": ts, "confidence": conf,
                            "correct": rng.random(k) < conf, "recon_error": recon,
                            "intact": intact,
                        }))
    return pd.concat(parts, ignore_index=True)


def _throughput_rows(models: Iterable[str]) -> pd.DataFrame:
    common = dict(input_size=CANVAS, batch=128, width=1.0, device="cuda",
                  device_name="NVIDIA H100 80GB HBM3")
    rows = []
    for i, model in enumerate(models):
        caps = model.startswith("capsnet")
        rows.append(dict(kind="model", model=model, **common,
                         params=8_215_570 if caps else 35_400_000 - i * 1_000_000,
                         flops_per_image=1.2e9 if caps else 0.3e9,
                         train_images_per_s=9_000.0 if caps else 40_000.0 + 1_000 * i,
                         infer_images_per_s=30_000.0 if caps else 150_000.0 + 5_000 * i,
                         latency_b1_ms=2.5 if caps else 0.6, peak_mem_mb=1_800.0 - 10 * i,
                         peak_infer_mem_mb=400.0 - 5 * i,
                         images_per_s=math.nan, tflops_train=32.0 if caps else 36.0))
    for ts, speed in (("affnist", 2.0e6), ("scramble-g2", 5.0e6)):
        rows.append(dict(kind="generation", model=ts, **common, params=math.nan,
                         flops_per_image=math.nan, train_images_per_s=math.nan,
                         infer_images_per_s=math.nan, latency_b1_ms=math.nan,
                         peak_mem_mb=math.nan, images_per_s=speed, tflops_train=math.nan))
    return pd.DataFrame(rows)


def _strokes(rng: np.random.Generator, k: int) -> np.ndarray:
    """(k, C, C) uint8 blobs that look vaguely like pen strokes: a thick random arc."""
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    out = np.zeros((k, CANVAS, CANVAS), np.float32)
    for i in range(k):
        cy, cx = rng.uniform(14, 26, 2)
        r = rng.uniform(5, 9)
        a0 = rng.uniform(0, 2 * np.pi)
        ang = np.arctan2(yy - cy, xx - cx)
        on_arc = ((ang - a0) % (2 * np.pi)) < rng.uniform(3, 6)
        ring = np.exp(-((np.hypot(yy - cy, xx - cx) - r) ** 2) / 3.0)
        out[i] = ring * on_arc
    return (255 * out / out.max(axis=(1, 2), keepdims=True)).astype(np.uint8)


def _examples(models: Iterable[str], rng: np.random.Generator, k: int = 8) -> dict:
    sets = ["clean", "affnist", *(f"sweep-{f}" for f in SWEEPS), *SCRAMBLED]
    ex: dict[str, torch.Tensor] = {}
    for ts in sets:
        images = _strokes(rng, k)
        ex[f"images/{ts}"] = torch.from_numpy(images)
        ex[f"labels/{ts}"] = torch.from_numpy(rng.integers(0, 10, k)).long()
        if "capsnet" in models and ts in ("clean", "affnist", *SCRAMBLED):
            blur = images.astype(np.float32) / 255.0 * 0.8 + rng.uniform(0, 0.1, images.shape)
            ex[f"recon/{ts}"] = torch.from_numpy(blur.astype(np.float32))
    return ex


def _steps(n: int) -> int:
    """The fixture profile's step budget: max(min_steps, epochs * n / batch) <= max_steps."""
    return int(min(MAX_STEPS, max(100, 15 * n / 32)))


def cells_frame(metrics: pd.DataFrame, not_converged: Iterable[tuple[str, int, int]],
                rng: np.random.Generator) -> pd.DataFrame:
    """``cells.csv``: one row per cell of ``metrics``; the affnist-setup cells of
    ``not_converged`` (model, n, seed) still gained on validation over the last quarter."""
    bad = {(m, int(n), int(s)) for m, n, s in not_converged}
    rows = []
    for (setup, model, n, seed), _ in metrics.groupby(["setup", "model", "n", "seed"], sort=True):
        converged = not (setup == "affnist" and (model, n, seed) in bad)
        rows.append({
            "setup": setup, "model": model, "n": n, "seed": seed, "steps": _steps(n),
            "converged": converged,
            "val_improvement": round(float(rng.uniform(0, 0.0015) if converged
                                           else rng.uniform(0.01, 0.03)), 5),
            "labelled_images": n + (VAL_SIZE if setup == "affnist" else 0),
            "train_seconds": round(float(0.05 * _steps(n)), 2),
            "eval_seconds": 3.0,
        })
    return pd.DataFrame(rows)


def manifest(models: Iterable[str], seeds: Iterable[int]) -> dict:
    """What ``bench.runner`` writes: the profile's name, targets and full config."""
    return {
        "profile": {
            "name": "fixture", "targets": list(TARGETS),
            "config": {"name": "fixture", "models": list(models), "sizes": list(SIZES),
                       "seeds": list(seeds), "targets": list(TARGETS),
                       "model": {"width": WIDTH},
                       "train": {"batch_size": 32, "max_steps": MAX_STEPS, "min_steps": 100,
                                 "steps": 0, "epochs": 15.0, "val_size": VAL_SIZE}},
        },
        "git_commit": "0" * 40,
        "device": "cpu",
        "data_checksums": {"affnist": {
            "clean": {"count": N_TEST, "spec": {"n_test": N_TEST}},
            "affnist": {"count": N_TEST * AFFNIST_K,
                        "spec": {"n_test": N_TEST, "affnist_k": AFFNIST_K}},
            **{f"sweep-{f}": {"count": SWEEP_N * len(grid),
                              "spec": {"sweep_n": SWEEP_N, "grid": list(grid)}}
               for f, (grid, _, _) in SWEEPS.items()},
        }},
        "versions": {"python": "3.11", "torch": torch.__version__},
    }


def write_run(root: Path, *, models: Iterable[str] = MODELS, seeds: Iterable[int] = SEEDS,
              seed: int = 0, omit: Iterable[str] = (), scenario: str = "capsnet-wins",
              not_converged: Iterable[tuple[str, int, int]] = NOT_CONVERGED) -> Path:
    """Write a synthetic run folder under ``root / "run"`` and return its path.

    ``omit`` names files of :data:`FILES` to leave out (to test the report's skips); ``scenario``
    is a key of :data:`SCENARIOS`; ``not_converged`` lists (model, n, seed) cells that
    ``cells.csv`` marks as not converged.
    """
    models = tuple(models)
    seeds = tuple(seeds)
    omit = set(omit)
    run = Path(root) / "run"
    run.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    metrics = pd.DataFrame(_metric_rows(models, rng, seeds, scenario))
    if "metrics.csv" not in omit:
        metrics.to_csv(run / "metrics.csv", index=False)
    if "cells.csv" not in omit:
        cells_frame(metrics, not_converged, rng).to_csv(run / "cells.csv", index=False)
    if "confidences.parquet" not in omit:
        _confidence_rows(models, rng, seeds).to_parquet(run / "confidences.parquet", index=False)
    if "throughput.csv" not in omit:
        _throughput_rows(models).to_csv(run / "throughput.csv", index=False)
    if "examples.pt" not in omit:
        torch.save(_examples(models, rng), run / "examples.pt")
    if "manifest.json" not in omit:
        (run / "manifest.json").write_text(json.dumps(manifest(models, seeds), indent=2))
    return run
