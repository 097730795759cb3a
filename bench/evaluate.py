"""Evaluate one trained cell on every test set of its setup; write tidy metric rows.

The metrics themselves are pure functions in :mod:`bench.metrics`; this module runs the model
(batched, on the device, in inference mode), pairs scrambled digits with their intact originals
through ``params["source"]``, and hands the cell's results to :class:`bench.io.CellFiles`,
which writes them atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench import metrics
from bench.cells import Cell, code_hash
from bench.config import DataConfig
from bench.data.testsets import CLEAN, set_kind
from bench.errors import BenchError
from bench.io import CellFiles, load_torch, read_json, stable_hash
from bench.models.registry import create_model
from bench.train import EVAL_BATCH

N_EXAMPLES = 8


def is_scrambled(name: str) -> bool:
    """Whether set ``name`` moves parts of its digits (scored against their intact twins)."""
    return set_kind(name).scrambled


@dataclasses.dataclass
class Predictions:
    scores: torch.Tensor  # (N, 10) class scores in [0, 1]
    features: torch.Tensor  # (N, F)
    recon_error: torch.Tensor | None  # (N,) sum of squared errors of the reconstruction
    recon: torch.Tensor | None  # (k, H, W) the first reconstructions, for figures

    @property
    def confidence(self) -> torch.Tensor:
        return self.scores.max(1).values

    @property
    def pred(self) -> torch.Tensor:
        return self.scores.argmax(1)


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
            batch_size: int = EVAL_BATCH) -> Predictions:
    """Run ``model`` over uint8 images ``(N, C, C)`` in batches; results on the CPU."""
    from bench.data.canvas import to_float

    model.eval()
    images = images.to(device)  # one transfer: the set stays on the device while it is scored
    scores, feats, errs, recon = [], [], [], None
    for start in range(0, images.shape[0], batch_size):
        x = to_float(images[start : start + batch_size])
        out = model(x)
        scores.append(out.scores.float().cpu())
        feats.append(out.features.float().cpu())
        if out.reconstruction is not None:
            r = out.reconstruction.float()
            errs.append((r - x.flatten(1)).pow(2).sum(1).cpu())
            if recon is None:
                # clone: a slice would save the whole batch's storage with it
                recon = r[:N_EXAMPLES].reshape(-1, *x.shape[-2:]).cpu().clone()
    return Predictions(
        torch.cat(scores), torch.cat(feats), torch.cat(errs) if errs else None, recon
    )


@functools.lru_cache(maxsize=4)
def _test_sets(cfg: DataConfig, names: tuple[str, ...] | None, device: str,
               data_dir: str | None, download: bool):
    """Test sets, built or read from the cache once per process."""
    from bench.data.testsets import build_test_sets

    return build_test_sets(cfg, torch.device(device), names=names, data_dir=data_dir,
                           download=download, progress=False)


@functools.lru_cache(maxsize=4)
def class_mean_images(dataset: str, canvas: int, data_dir: str | None = None,
                      download: bool = False) -> torch.Tensor:
    """``(10, canvas, canvas)`` float images in [0, 1]: the mean training digit of each class,
    centred as the clean test set is. The reference a decoder that learned nothing but the class
    would reach: it outputs the class mean whatever the digit."""
    from bench.data.canvas import place
    from bench.data.mnist import load_split

    images, labels = load_split("train", dataset, data_dir, download)
    x = place(images, canvas).float().div_(255.0)
    sums = torch.zeros(10, canvas, canvas).index_add_(0, labels.long(), x)
    return sums / torch.bincount(labels.long(), minlength=10).clamp(min=1)[:, None, None].float()


def reconstruction_rows(preds: Predictions, images: torch.Tensor, means: torch.Tensor
                        ) -> list[dict[str, Any]]:
    """Mean squared error per pixel of the model's reconstructions of ``images`` (uint8
    ``(N, C, C)``), and of the class-mean image of the predicted class (the decoder is masked by
    the predicted class too), on the same digits."""
    if preds.recon_error is None:
        return []
    pixels = images.shape[-1] * images.shape[-2]
    x = images.float().div(255.0)
    baseline = (x - means[preds.pred]).pow(2).flatten(1).sum(1) / pixels
    nan = math.nan
    return [
        {"test_set": CLEAN.name, "factor_value": nan, "metric": "recon_mse",
         "value": float(preds.recon_error.double().mean() / pixels)},
        {"test_set": CLEAN.name, "factor_value": nan, "metric": "recon_mse_class_mean",
         "value": float(baseline.double().mean())},
    ]


def set_metrics(name: str, preds: Predictions, labels: torch.Tensor, params: dict,
                intact: Predictions | None) -> list[dict[str, Any]]:
    """Metric rows ``{test_set, factor_value, metric, value}`` of one test set."""
    kind = set_kind(name)
    correct = (preds.pred == labels).numpy()
    conf = preds.confidence.numpy()
    nan = math.nan
    rows = [
        {"test_set": name, "factor_value": nan, "metric": "accuracy", "value": correct.mean()},
        {"test_set": name, "factor_value": nan, "metric": "error", "value": 1 - correct.mean()},
        {"test_set": name, "factor_value": nan, "metric": "mean_confidence", "value": conf.mean()},
    ]
    if kind.calibrated:
        rows.append({"test_set": name, "factor_value": nan, "metric": "ece",
                     "value": metrics.ece(conf, correct)})
    if kind.family == "sweep":
        values = params["value"].double().numpy()
        for v in np.unique(values):
            mask = values == v
            rows.append({"test_set": name, "factor_value": float(v), "metric": "accuracy",
                         "value": correct[mask].mean()})
        rows.append({"test_set": name, "factor_value": nan, "metric": "probe_r2",
                     "value": metrics.ridge_r2(preds.features.double().numpy(), values)})
    if intact is not None:
        iconf = intact.confidence.numpy()
        rows += [
            {"test_set": name, "factor_value": nan, "metric": "mean_confidence_intact",
             "value": iconf.mean()},
            {"test_set": name, "factor_value": nan, "metric": "auroc_confidence",
             "value": metrics.auroc(iconf, conf)},
        ]
        if preds.recon_error is not None and intact.recon_error is not None:
            # A worse reconstruction says "scrambled": intact digits are the positives.
            rows.append({"test_set": name, "factor_value": nan, "metric": "auroc_recon",
                         "value": metrics.auroc(-intact.recon_error.numpy(),
                                                -preds.recon_error.numpy())})
    return rows


def _subset(preds: Predictions, idx: torch.Tensor) -> Predictions:
    return Predictions(
        preds.scores[idx], preds.features[idx],
        None if preds.recon_error is None else preds.recon_error[idx], None,
    )


def eval_key(checksums: dict[str, str]) -> str:
    return stable_hash(code_hash(), code_hash(("evaluate.py", "metrics.py")), checksums)


def load_model(cell: CellFiles | str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The selected model of a trained cell (``checkpoint.pt``), in eval mode on ``device``."""
    files = cell if isinstance(cell, CellFiles) else CellFiles(cell)
    if not files.checkpoint.exists():
        raise BenchError(f"{files.checkpoint}: missing (train the cell first: python -m bench train ...)")
    ckpt = load_torch(files.checkpoint)
    spec = ckpt["spec"]
    model = create_model(spec["model"], input_size=spec["canvas"], width=spec["width"])
    model.load_state_dict(ckpt["model"])
    if spec.get("train", {}).get("channels_last", False):  # as it trained (TrainConfig)
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval()


def evaluate_cell(folder: CellFiles | str | Path, cell: Cell, cfg: DataConfig, names: Sequence[str] | None,
                  device: torch.device, data_dir: str | None = None,
                  download: bool = False) -> dict[str, Any]:
    """Evaluate a trained cell on its test sets; skipped when ``eval.json`` has the same key."""
    from bench.data.testsets import test_set_manifest

    files = folder if isinstance(folder, CellFiles) else CellFiles(folder)
    if not files.train_summary.is_file():
        raise BenchError(f"cell {cell.label} is not trained yet ({files.folder}): run the train stage")
    t0 = time.perf_counter()
    sets = _test_sets(cfg, tuple(names) if names else None, str(device), data_dir, download)
    checksums = {k: v["sha256"] for k, v in test_set_manifest(sets).items()}
    key = eval_key(checksums)
    if files.eval_summary.is_file() and read_json(files.eval_summary).get("key") == key:
        return read_json(files.eval_summary)

    model = load_model(files, device)
    t_sets = time.perf_counter()
    preds, predict_s = {}, {}
    for name, ts in sets.items():
        t = time.perf_counter()
        preds[name] = predict(model, ts.images, device)
        predict_s[name] = time.perf_counter() - t
    t_metrics = time.perf_counter()
    clean = sets.get(CLEAN.name)
    if clean is not None:  # MNIST test index -> row of the clean set, as one lookup tensor
        sources = clean.params["source"].long()
        row_of_source = torch.full((int(sources.max()) + 1,), -1, dtype=torch.long)
        row_of_source[sources] = torch.arange(len(sources))
    rows: list[dict[str, Any]] = []
    conf_frames = []
    for name, ts in sets.items():
        intact = None
        if is_scrambled(name) and clean is not None:
            idx = row_of_source[ts.params["source"].long()]
            if bool((idx < 0).any()):
                raise BenchError(f"{name}: some digits have no intact twin in the clean set")
            intact = _subset(preds[CLEAN.name], idx)
            for flag, p, labels in ((False, preds[name], ts.labels),
                                    (True, intact, clean.labels[idx])):
                conf_frames.append(pd.DataFrame({
                    "test_set": name,
                    "confidence": p.confidence.numpy(),
                    "correct": (p.pred == labels).numpy(),
                    "recon_error": (p.recon_error.numpy() if p.recon_error is not None
                                    else np.full(len(labels), np.nan)),
                    "intact": flag,
                }))
        rows += set_metrics(name, preds[name], ts.labels, ts.params, intact)
        if name == CLEAN.name:
            means = class_mean_images(cfg.dataset, cfg.canvas, data_dir, download)
            rows += reconstruction_rows(preds[name], ts.images.cpu(), means)

    ident = {"setup": cell.setup, "model": cell.model, "n": cell.n, "seed": cell.seed}
    table = pd.DataFrame([{**ident, **r} for r in rows])
    conf = None
    if conf_frames:
        conf = pd.concat(conf_frames, ignore_index=True)
        for k, v in ident.items():
            conf.insert(0, k, v)
    recon = {f"recon/{k}": p.recon for k, p in preds.items() if p.recon is not None}
    summary = {"key": key, "cell": cell.label, "test_sets": checksums,
               **{f"accuracy/{k}": float((p.pred == sets[k].labels).float().mean())
                  for k, p in preds.items()},
               # Where the evaluation's time went (seconds): test sets and model loading, the
               # forward passes per set, and the metrics (the probe's ridge fits included).
               "timing": {"sets_s": t_sets - t0, "predict_s": sum(predict_s.values()),
                          "metrics_s": time.perf_counter() - t_metrics,
                          "predict_s_per_set": predict_s}}
    files.finish_evaluation(table, conf, recon, summary)
    return summary


def example_images(sets: dict, k: int = N_EXAMPLES) -> dict[str, torch.Tensor]:
    """The first ``k`` images and labels of every set, for the report's example grids."""
    out = {}
    for name, ts in sets.items():
        out[f"images/{name}"] = ts.images[:k].cpu()
        out[f"labels/{name}"] = ts.labels[:k].cpu()
    return out

