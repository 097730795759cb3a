"""Evaluate one trained cell on every test set of its setup; write tidy metric rows.

The metrics themselves are pure functions in :mod:`bench.metrics`; this module runs the model
(batched, on the device, in inference mode), pairs scrambled digits with their intact originals
through ``params["source"]``, and hands the cell's results to :class:`bench.cell.files.CellFiles`,
which writes them atomically: the metric rows (``metrics.csv``) and the per-image prediction
store (``predictions.parquet``, :func:`prediction_frame`), from which every accuracy of the
report can be recomputed.
"""

from __future__ import annotations

import contextlib
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
from bench.cell import adversarial
from bench.cell.files import CellFiles
from bench.cell.plan import Cell, code_hash
from bench.cell.train import EVAL_BATCH, training_subset
from bench.config import DataConfig
from bench.data.canvas import place, to_float
from bench.data.mnist import load_split
from bench.data.testsets import CLEAN, build_test_sets, set_kind, test_set_manifest
from bench.errors import BenchError
from bench.io import load_torch, read_json, stable_hash
from bench.models.registry import create_model
from bench.runtime import keep_freed_memory

N_EXAMPLES = 8
RELIABILITY_BINS = 15  # the bins of metrics.ece
# Our choice: at most this many held-out images fit the temperature and the density score (one
# extra forward pass per cell; the smoke and quick profiles hold out 300 and 1,500).
HELDOUT_MAX = 2000


def is_scrambled(name: str) -> bool:
    """Whether set ``name`` moves parts of its digits (scored against their intact twins)."""
    return set_kind(name).scrambled


@dataclasses.dataclass
class Predictions:
    scores: torch.Tensor  # (N, 10) class scores in [0, 1]
    features: torch.Tensor  # (N, F)
    recon_error: torch.Tensor | None  # (N,) sum of squared errors of the reconstruction
    recon: torch.Tensor | None  # (k, H, W) the first reconstructions, for figures
    logits: torch.Tensor | None = None  # (N, 10) what the loss sees (CapsNet: the lengths)
    # (N, D) the representation the probe and the density score read: the CapsNet's whole
    # DigitCaps output (10 x 16 = 160-D, every class capsule's pose), the ConvNets' features
    rep: torch.Tensor | None = None
    density: torch.Tensor | None = None  # (N,) Mahalanobis distance, once fitted

    @property
    def confidence(self) -> torch.Tensor:
        return self.scores.max(1).values

    @property
    def pred(self) -> torch.Tensor:
        return self.scores.argmax(1)

    @property
    def representation(self) -> torch.Tensor:
        return self.features if self.rep is None else self.rep

    @property
    def softmax_scores(self) -> bool:
        """Whether the scores are the softmax of unnormalised logits (the ConvNets): not capsule
        lengths, and not log-probabilities (head-self's logits are log a with sum a = 1, whose
        logsumexp, the energy, is 0 for every input and whose maximum ranks as the max score)."""
        if self.logits is None:
            return False
        z = self.logits.double()
        normalised = bool(torch.allclose(torch.logsumexp(z, 1), torch.zeros(()).double(),
                                         atol=1e-6))
        return not normalised and bool(torch.allclose(
            self.scores, torch.softmax(z, 1).float(), atol=1e-4))


@torch.inference_mode()
def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
            batch_size: int = EVAL_BATCH) -> Predictions:
    """Run ``model`` over uint8 images ``(N, C, C)`` (or float ``(N, 1, C, C)`` in [0, 1]) in
    batches; results on the CPU.

    A model with a ``digit_capsules`` method (the CapsNet) has its DigitCaps output
    ``(B, 10, 16)`` (the first element when it returns a tuple) recorded while it runs, as
    ``Predictions.rep`` ``(N, 160)``: one forward pass, the model's code unchanged.
    """

    model.eval()
    images = images.to(device)  # one transfer: the set stays on the device while it is scored
    scores, logits, feats, errs, caps, recon = [], [], [], [], [], None
    inner = getattr(model, "digit_capsules", None)
    if callable(inner):
        def capture(*args, **kwargs):
            result = inner(*args, **kwargs)
            v = result[0] if isinstance(result, tuple) else result  # (B, 10, D) poses
            caps.append(v.flatten(1).float().cpu())
            return result

        model.digit_capsules = capture  # an instance attribute shadows the method
    try:
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size]
            # uint8 digits (B, C, C), or float images (B, 1, C, C) in [0, 1] (attacked sets)
            x = to_float(chunk) if chunk.dtype == torch.uint8 else chunk.float()
            out = model(x)
            scores.append(out.scores.float().cpu())
            logits.append(out.logits.float().cpu())
            feats.append(out.features.float().cpu())
            if out.reconstruction is not None:
                r = out.reconstruction.float()
                errs.append((r - x.flatten(1)).pow(2).sum(1).cpu())
                if recon is None:
                    # clone: a slice would save the whole batch's storage with it
                    recon = r[:N_EXAMPLES].reshape(-1, *x.shape[-2:]).cpu().clone()
    finally:
        if callable(inner):
            del model.digit_capsules
    return Predictions(
        torch.cat(scores), torch.cat(feats), torch.cat(errs) if errs else None, recon,
        torch.cat(logits), torch.cat(caps) if len(caps) == len(scores) and caps else None,
    )


@functools.lru_cache(maxsize=4)
def _test_sets(cfg: DataConfig, names: tuple[str, ...] | None, device: str,
               data_dir: str | None, download: bool):
    """Test sets, built or read from the cache once per process."""

    return build_test_sets(cfg, torch.device(device), names=names, data_dir=data_dir,
                           download=download, progress=False)


@functools.lru_cache(maxsize=4)
def class_mean_images(dataset: str, canvas: int, data_dir: str | None = None,
                      download: bool = False) -> torch.Tensor:
    """``(10, canvas, canvas)`` float images in [0, 1]: the mean training digit of each class,
    centred as the clean test set is. The reference a decoder that learned nothing but the class
    would reach: it outputs the class mean whatever the digit."""

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


def calibration_rows(name: str, preds: Predictions, correct: np.ndarray,
                     temperature: float | None, bins: bool) -> list[dict[str, Any]]:
    """ECE after temperature scaling (``ece_calibrated``) and, with ``bins``, the reliability
    diagram's bins before (``reliability_raw_*``) and after (``reliability_cal_*``) it:
    ``count``, ``accuracy``, ``confidence`` per bin, ``factor_value`` = the bin's upper edge.

    The raw confidence is the max score (capsule length or softmax maximum); the calibrated one
    is the max of ``softmax(logits / T)`` (CapsNet: the lengths through a softmax), with T
    fitted on held-out images of the training split (:func:`heldout_split`).
    """
    if temperature is None or preds.logits is None or not math.isfinite(temperature):
        return []
    cal = metrics.softmax_confidence(preds.logits.double().numpy(), temperature)
    rows = [{"test_set": name, "factor_value": math.nan, "metric": "ece_calibrated",
             "value": metrics.ece(cal, correct)}]
    if bins:
        for tag, conf in (("raw", preds.confidence.double().numpy()), ("cal", cal)):
            count, acc, mean_conf = metrics.reliability(conf, correct, RELIABILITY_BINS)
            for i in range(RELIABILITY_BINS):
                edge = (i + 1) / RELIABILITY_BINS
                for what, v in (("count", count[i]), ("accuracy", acc[i]),
                                ("confidence", mean_conf[i])):
                    rows.append({"test_set": name, "factor_value": edge,
                                 "metric": f"reliability_{tag}_{what}", "value": float(v)})
    return rows


def part_rows(name: str, preds: Predictions, labels: torch.Tensor, intact: Predictions,
              intact_labels: torch.Tensor) -> list[dict[str, Any]]:
    """Rows of a scrambled set against the same digits intact (row i of both is one digit).

    - ``intact_correct``: fraction of the intact digits classified correctly;
    - ``kept_given_intact_correct``: of those, the fraction still given their class scrambled;
    - ``flip_rate``: fraction of all digits whose predicted class changes when scrambled;
    - AUROCs, intact = positive, higher score = "intact": ``auroc_confidence`` (max score:
      capsule length or softmax maximum), ``auroc_mahalanobis`` (minus the Mahalanobis distance
      of the representation, :func:`bench.metrics.mahalanobis_score`, every model),
      ``auroc_max_logit`` and ``auroc_energy`` (logsumexp of the logits; models whose scores
      are a softmax of logits only), ``auroc_recon`` (minus reconstruction error; CapsNets
      with a decoder).
    """
    nan = math.nan
    ok = (intact.pred == intact_labels).numpy()
    kept = (preds.pred == labels).numpy()
    rows = [
        {"test_set": name, "factor_value": nan, "metric": "mean_confidence_intact",
         "value": float(intact.confidence.double().mean())},
        {"test_set": name, "factor_value": nan, "metric": "auroc_confidence",
         "value": metrics.auroc(intact.confidence.numpy(), preds.confidence.numpy())},
        {"test_set": name, "factor_value": nan, "metric": "intact_correct",
         "value": float(ok.mean()) if ok.size else nan},
        {"test_set": name, "factor_value": nan, "metric": "kept_given_intact_correct",
         "value": float(kept[ok].mean()) if ok.any() else nan},
        {"test_set": name, "factor_value": nan, "metric": "flip_rate",
         "value": float((preds.pred != intact.pred).double().mean()) if ok.size else nan},
    ]
    if preds.density is not None and intact.density is not None:
        rows.append({"test_set": name, "factor_value": nan, "metric": "auroc_mahalanobis",
                     "value": metrics.auroc(-intact.density.numpy(), -preds.density.numpy())})
    if preds.softmax_scores and intact.logits is not None:
        for metric, f in (("auroc_max_logit", lambda z: z.max(1).values),
                          ("auroc_energy", lambda z: torch.logsumexp(z, 1))):
            rows.append({"test_set": name, "factor_value": nan, "metric": metric,
                         "value": metrics.auroc(f(intact.logits.double()).numpy(),
                                                f(preds.logits.double()).numpy())})
    if preds.recon_error is not None and intact.recon_error is not None:
        # A worse reconstruction says "scrambled": intact digits are the positives.
        rows.append({"test_set": name, "factor_value": nan, "metric": "auroc_recon",
                     "value": metrics.auroc(-intact.recon_error.numpy(),
                                            -preds.recon_error.numpy())})
    return rows


def set_metrics(name: str, preds: Predictions, labels: torch.Tensor, params: dict,
                intact: Predictions | None, temperature: float | None = None,
                intact_labels: torch.Tensor | None = None) -> list[dict[str, Any]]:
    """Metric rows ``{test_set, factor_value, metric, value}`` of one test set.

    ``intact``: the same digits intact, row for row (scrambled sets); ``intact_labels`` their
    classes (default ``labels``: a scrambled digit keeps its intact digit's label).
    ``temperature``: fitted on held-out images, for the calibrated ECE.

    The overlapping-digits set (family ``overlap``) holds two digits per image: ``labels`` are
    the first digit's (A) classes, ``params["label2"]`` the second's (B). Its read-out is both
    digits among the class scores' top two (:func:`bench.metrics.top2_hits`; Sabour et al. 2017,
    Sec. 6): an image counts as correct when it names both, so its ``accuracy`` (and ``error``)
    rows are that top-2 accuracy, repeated as ``top2_accuracy``; ``digit_recall`` is the
    fraction of the 2N digits among their image's top two. (A and B are drawn alike: a top-1
    accuracy against A alone would be an arbitrary half of the read-out.)
    """
    kind = set_kind(name)
    correct = (preds.pred == labels).numpy()
    if kind.family == "overlap":
        both, hit_a, hit_b = metrics.top2_hits(preds.scores, labels, params["label2"])
        correct = np.asarray(both, dtype=bool)
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
        rows += calibration_rows(name, preds, correct, temperature, bins=name == CLEAN.name)
    if kind.family == "sweep":
        values = params["value"].double().numpy()
        # fits: all ink of the transformed digit on the canvas (bench.data.affine.sweep_params).
        fits = (params["fits"].numpy().astype(bool) if "fits" in params
                else np.ones(len(values), dtype=bool))
        for v in np.unique(values):
            mask = values == v
            kept = mask & fits
            rows += [
                {"test_set": name, "factor_value": float(v), "metric": "accuracy",
                 "value": correct[mask].mean()},
                {"test_set": name, "factor_value": float(v), "metric": "cropped_fraction",
                 "value": 1.0 - fits[mask].mean()},
                {"test_set": name, "factor_value": float(v), "metric": "accuracy_fits",
                 "value": correct[kept].mean() if kept.any() else nan},
            ]
        groups = params.get("source")
        groups = (np.arange(len(values)) if groups is None else groups.long().numpy())
        rows.append({"test_set": name, "factor_value": nan, "metric": "probe_r2",
                     "value": metrics.decodability_r2(preds.representation.double().numpy(),
                                                      values, groups)})
    if kind.family == "overlap":
        rows += [
            {"test_set": name, "factor_value": nan, "metric": "top2_accuracy",
             "value": float(both.mean()) if both.size else nan},
            {"test_set": name, "factor_value": nan, "metric": "digit_recall",
             "value": float((hit_a.sum() + hit_b.sum()) / (2 * both.size)) if both.size else nan},
        ]
    if intact is not None:
        rows += part_rows(name, preds, labels, intact,
                          labels if intact_labels is None else intact_labels)
    return rows


# The per-image store: one row per image of every test set. Columns and their dtypes (compact
# on purpose: the store of every cell is committed with the example runs).
STORE_PARAMS = ("angle_deg", "shear", "scale_x", "scale_y", "tx", "ty")  # affine sets, float32


def prediction_frame(name: str, preds: Predictions, labels: torch.Tensor,
                     params: dict) -> pd.DataFrame:
    """One row per image of set ``name``: what it is and what the model said about it.

    - identity: ``test_set``, ``index`` (row in the set), ``source`` (index into the MNIST test
      split; the digit), ``transform`` (the image's rank among the set's images of the same
      digit: 0..k-1 for the affNIST-style set, the grid point for a sweep, 0 elsewhere),
      ``value`` (a sweep's factor value), ``fits`` (all ink on the canvas; sweeps and affine
      sets), the affine parameters of :data:`STORE_PARAMS`, ``layout`` (a scrambled set's
      permutation of grid cells, as digits "1032"; the displaced set: "displaced"), ``clipped``
      (the displaced set: a part lost ink at the border);
    - the answer: ``label`` (on the overlapping-digits set the first digit's class), ``label2``
      (the second digit's class on the overlapping-digits set, -1 on every other set), ``pred``,
      ``second`` (the runner-up class), ``correct`` (``pred == label``; on the
      overlapping-digits set both digits among the top two, ``{pred, second} == {label,
      label2}`` where no two scores tie, as :func:`set_metrics` counts it);
    - the scores a metric reads: ``confidence`` (the max score: capsule length or softmax
      maximum), ``density`` (the Mahalanobis distance of :func:`bench.metrics.mahalanobis_score`
      on the clean and scrambled sets, NaN elsewhere), ``recon_error`` (sum of squared errors of
      the reconstruction; NaN without a decoder).
    """
    n = len(labels)
    source = params["source"].long().numpy() if "source" in params else np.arange(n)
    transform = pd.Series(source).groupby(source).cumcount().to_numpy()
    top2 = preds.scores.topk(2, dim=1).indices if preds.scores.shape[1] > 1 else None
    nan32 = np.full(n, np.nan, dtype=np.float32)

    def f32(t: torch.Tensor | None) -> np.ndarray:
        return nan32 if t is None else t.double().numpy().astype(np.float32)

    frame = {
        "test_set": name,
        "index": np.arange(n, dtype=np.int32),
        "source": source.astype(np.int32),
        "transform": transform.astype(np.int16),
        "value": (params["value"].double().numpy().astype(np.float32) if "value" in params
                  else nan32),
        "fits": pd.array(params["fits"].numpy().astype(bool) if "fits" in params
                         else [pd.NA] * n, dtype="boolean"),
    }
    for key in STORE_PARAMS:
        frame[key] = f32(params.get(key))
    if "perm" in params:
        frame["layout"] = ["".join(str(int(v)) for v in row) for row in params["perm"].tolist()]
    else:
        frame["layout"] = ["displaced" if "clipped" in params else ""] * n
    frame["clipped"] = pd.array(params["clipped"].numpy().astype(bool) if "clipped" in params
                                else [pd.NA] * n, dtype="boolean")
    pred = preds.pred.numpy()
    frame.update({
        "label": labels.numpy().astype(np.int8),
        "label2": (params["label2"].long().numpy() if "label2" in params
                   else np.full(n, -1)).astype(np.int8),
        "pred": pred.astype(np.int8),
        "second": (top2[:, 1].numpy() if top2 is not None else pred).astype(np.int8),
        "correct": (np.asarray(metrics.top2_hits(preds.scores, labels, params["label2"])[0],
                               dtype=bool) if "label2" in params else pred == labels.numpy()),
        "confidence": f32(preds.confidence),
        "density": f32(preds.density),
        "recon_error": f32(preds.recon_error),
    })
    out = pd.DataFrame(frame)
    out["test_set"] = out["test_set"].astype("category")
    out["layout"] = out["layout"].astype("category")
    return out


def store_frame(frames: Sequence[pd.DataFrame], ident: dict[str, Any]) -> pd.DataFrame | None:
    """The cell's store: the sets' :func:`prediction_frame` rows under the cell's identity
    (``setup``, ``model`` as categories, ``n`` int32, ``seed`` int16)."""
    if not frames:
        return None
    out = pd.concat(frames, ignore_index=True)
    out["test_set"] = out["test_set"].astype(str).astype("category")
    out["layout"] = out["layout"].astype(str).astype("category")
    for k, dtype in (("seed", np.int16), ("n", np.int32), ("model", "category"),
                     ("setup", "category")):
        out.insert(0, k, pd.Series([ident[k]] * len(out), dtype=dtype))
    return out


def _subset(preds: Predictions, idx: torch.Tensor) -> Predictions:
    def take(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[idx]

    return Predictions(preds.scores[idx], preds.features[idx], take(preds.recon_error), None,
                       take(preds.logits), take(preds.rep), take(preds.density))


def eval_key(checksums: dict[str, str], attack: dict[str, Any] | None = None) -> str:
    """What an evaluation depends on: the trained weights' code, the evaluation's code, the test
    sets' checksums and (when the cell is attacked) the attacks' settings."""
    parts: tuple[Any, ...] = (code_hash(), code_hash(("cell/evaluate.py", "metrics.py")), checksums)
    if attack:
        parts += (code_hash(("cell/adversarial.py",)), attack)
    return stable_hash(*parts)


def attacked(cfg: DataConfig, n: int) -> bool:
    """Whether a cell trained on ``n`` images gets the adversarial sets of ``cfg.attack``."""
    a = cfg.attack
    return a.n > 0 and cfg.canvas >= 40 and (not a.sizes or n in a.sizes)


def _load(files: CellFiles, device: torch.device | str) -> tuple[torch.nn.Module, dict]:
    if not files.checkpoint.exists():
        raise BenchError(f"{files.checkpoint}: missing (train the cell first: python -m bench train ...)")
    ckpt = load_torch(files.checkpoint)
    spec = ckpt["spec"]
    model = create_model(spec["model"], input_size=spec["canvas"], width=spec["width"])
    model.load_state_dict(ckpt["model"])
    if spec.get("train", {}).get("channels_last", False):  # as it trained (TrainConfig)
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval(), spec


def load_model(cell: CellFiles | str | Path, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The selected model of a trained cell (``checkpoint.pt``), in eval mode on ``device``."""
    return _load(cell if isinstance(cell, CellFiles) else CellFiles(cell), device)[0]


def heldout_split(spec: dict, data_dir: str | None = None, download: bool = False,
                  limit: int = HELDOUT_MAX) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled images of the MNIST training split that the cell never trained on.

    The cell's validation images (:func:`bench.cell.train.training_subset` with the cell's ``n``,
    ``seed`` and ``train.val_size``; never the test set), their first ``limit``. Without a
    validation set (``val_size = 0``): ``limit`` images drawn, seeded by the cell's seed, from
    the training split outside the cell's training subset.

    Returns:
        ``(images uint8 (M, canvas, canvas) centred like the clean test set, labels (M,))``.
    """

    images, labels = load_split("train", spec.get("dataset", "mnist"), data_dir, download)
    val_size = int(spec.get("train", {}).get("val_size", 0))
    train_idx, val_idx = training_subset(labels, int(spec["n"]), int(spec["seed"]), val_size)
    if val_idx.numel() == 0:
        unused = torch.ones(labels.numel(), dtype=torch.bool)
        unused[train_idx] = False
        pool = unused.nonzero().flatten()
        gen = torch.Generator().manual_seed(int(spec["seed"]))
        val_idx = pool[torch.randperm(pool.numel(), generator=gen)]
    idx = val_idx[:limit]
    return place(images[idx], int(spec["canvas"])), labels[idx]


@contextlib.contextmanager
def _one_thread():
    """torch on one CPU thread inside the block, restored after.

    Our choice for the metrics, whose matrices are small (at most a few thousand rows and
    ~500 columns): measured on a loaded 2-core machine, the probe of one 500 x 160 sweep took
    0.13 s on one thread and 8.6 s on two (threads waiting on each other).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate_cell(folder: CellFiles | str | Path, cell: Cell, cfg: DataConfig, names: Sequence[str] | None,
                  device: torch.device, data_dir: str | None = None,
                  download: bool = False) -> dict[str, Any]:
    """Evaluate a trained cell on its test sets; skipped when ``eval.json`` has the same key."""

    files = folder if isinstance(folder, CellFiles) else CellFiles(folder)
    if not files.train_summary.is_file():
        raise BenchError(f"cell {cell.label} is not trained yet ({files.folder}): run the train stage")
    t0 = time.perf_counter()
    sets = _test_sets(cfg, tuple(names) if names else None, str(device), data_dir, download)
    checksums = {k: v["sha256"] for k, v in test_set_manifest(sets).items()}
    attack = (dataclasses.asdict(cfg.attack) if attacked(cfg, cell.n) and CLEAN.name in sets
              else None)
    key = eval_key(checksums, attack)
    if files.eval_summary.is_file() and read_json(files.eval_summary).get("key") == key:
        return read_json(files.eval_summary)

    keep_freed_memory()
    model, spec = _load(files, device)
    t_sets = time.perf_counter()
    preds, predict_s = {}, {}
    for name, ts in sets.items():
        t = time.perf_counter()
        preds[name] = predict(model, ts.images, device)
        predict_s[name] = time.perf_counter() - t
    # The adversarial sets: made against this model, then scored like the others.
    labels = {name: ts.labels for name, ts in sets.items()}
    params = {name: ts.params for name, ts in sets.items()}
    attack_s, kept_images = 0.0, {}
    if attack is not None:
        t = time.perf_counter()
        clean_set = sets[CLEAN.name]
        made = adversarial.attack_sets(model, clean_set.images, clean_set.labels, cfg.attack,
                                       cell.label, device)
        for a in made:
            preds[a.name] = predict(model, a.images, device)
            labels[a.name] = clean_set.labels[a.rows]
            params[a.name] = {"source": clean_set.params["source"][a.rows]}
            if a.attack == "pgd" and a.eps == cfg.attack.stated_budget:
                # kept with the cell (examples.pt): the transfer attack scores other models on
                # them, and the report shows the first
                kept_images[f"adversarial/{a.name}"] = a.images.half()
                kept_images[f"adversarial-labels/{a.name}"] = labels[a.name].clone()
        attack_s = time.perf_counter() - t
    t = time.perf_counter()
    held_images, held_labels = heldout_split(spec, data_dir, download)
    # A cell trained on the whole training split (the paper's MNIST table: n = 60,000, no
    # validation) leaves no held-out image: no temperature and no density score for it.
    held = predict(model, held_images, device) if len(held_images) else None
    predict_s["heldout"] = time.perf_counter() - t
    t_metrics = time.perf_counter()
    with _one_thread():  # see _one_thread: small matrices
        temperature = None
        if held is not None:
            temperature = metrics.fit_temperature(held.logits.double().numpy(),
                                                  held_labels.numpy())
            means, precision = metrics.mahalanobis_fit(held.representation.double().numpy(),
                                                       held_labels.numpy())
            for name, p in preds.items():
                if name == CLEAN.name or is_scrambled(name):
                    p.density = torch.from_numpy(metrics.mahalanobis_score(
                        p.representation.double().numpy(), means, precision))
        clean = sets.get(CLEAN.name)
        if clean is not None:  # MNIST test index -> row of the clean set, as one lookup tensor
            sources = clean.params["source"].long()
            row_of_source = torch.full((int(sources.max()) + 1,), -1, dtype=torch.long)
            row_of_source[sources] = torch.arange(len(sources))
        rows: list[dict[str, Any]] = []
        store = []
        for name in preds:
            intact = None
            if is_scrambled(name) and clean is not None:
                idx = row_of_source[params[name]["source"].long()]
                if bool((idx < 0).any()):
                    raise BenchError(f"{name}: some digits have no intact twin in the clean set")
                intact = _subset(preds[CLEAN.name], idx)
            store.append(prediction_frame(name, preds[name], labels[name], params[name]))
            rows += set_metrics(name, preds[name], labels[name], params[name], intact,
                                temperature, None if intact is None else clean.labels[idx])
            if name == CLEAN.name:
                rows.append({"test_set": name, "factor_value": math.nan, "metric": "temperature",
                             "value": math.nan if temperature is None else temperature})
                class_means = class_mean_images(cfg.dataset, cfg.canvas, data_dir, download)
                rows += reconstruction_rows(preds[name], sets[name].images.cpu(), class_means)

    ident = {"setup": cell.setup, "model": cell.model, "n": cell.n, "seed": cell.seed}
    table = pd.DataFrame([{**ident, **r} for r in rows])
    predictions = store_frame(store, ident)
    recon = {f"recon/{k}": p.recon for k, p in preds.items() if p.recon is not None}
    recon.update(kept_images)
    # The summary's accuracy is the metrics table's (one definition: top-2 on the overlapping
    # digits, top-1 elsewhere; set_metrics).
    overall = {r["test_set"]: float(r["value"]) for r in rows
               if r["metric"] == "accuracy" and math.isnan(r["factor_value"])}
    summary = {"key": key, "cell": cell.label, "test_sets": checksums,
               **{f"accuracy/{k}": overall[k] for k in preds},
               "heldout_images": int(held_labels.numel()),
               # Where the evaluation's time went (seconds): test sets and model loading, the
               # forward passes per set (and on the held-out images), and the metrics (the
               # probe's ridge fits, the temperature and the density fit included).
               "timing": {"sets_s": t_sets - t0, "predict_s": sum(predict_s.values()),
                          "attack_s": attack_s,
                          "metrics_s": time.perf_counter() - t_metrics,
                          "predict_s_per_set": predict_s}}
    files.finish_evaluation(table, predictions, recon, summary)
    return summary


def example_images(sets: dict, k: int = N_EXAMPLES) -> dict[str, torch.Tensor]:
    """The first ``k`` images and labels of every set, for the report's example grids (cloned:
    a slice would save its whole set's storage with it, megabytes instead of kilobytes)."""
    out = {}
    for name, ts in sets.items():
        out[f"images/{name}"] = ts.images[:k].cpu().clone()
        out[f"labels/{name}"] = ts.labels[:k].cpu().clone()
    return out
