"""The official affNIST test set (Tieleman 2013) from its MATLAB files: images, labels, params, spec.

affNIST (https://www.cs.toronto.edu/~tijmen/affNIST/) ships MATLAB ``.mat`` files holding one
struct ``affNISTdata`` whose fields are read here by name: ``image`` (1600 x N uint8, one 40x40
image per column), ``label_int`` (N labels 0-9) and, when present, ``affine_transform`` and
``human_readable_transform`` (one column per image; kept raw in ``params`` because their exact
conventions are not something we rely on). The transformed test set comes as a folder of batch
files ``1.mat .. 32.mat``, or as a single ``test.mat``.

Orientation: each column is 1600 pixel values of a 40x40 image in some linear order. Read as
row-major (``column.reshape(40, 40)``, what most public loaders do) or as MATLAB column-major (the
transpose). Rather than trust either, ``orientation="auto"`` picks the reading in which the
digits are taller than wide on average: MNIST digits are size-normalised into a 20x20 box
preserving their aspect ratio, so most fill its height while many (1, 7, 9, ...) are narrower;
affNIST's +-20 degree rotations and 0.8-1.2 scales keep that statistic. The choice is recorded
in ``spec["orientation"]``; pass ``"row-major"`` or ``"column-major"`` to force it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.io
import torch

from bench.data.affine import digit_bboxes
from bench.errors import BenchError
from bench.io import sha256_file

__all__ = ["find_mat_files", "load_affnist_mat", "read_mat_file", "transform_ranges"]

SIDE = 40
ORIENTATIONS = ("auto", "row-major", "column-major")


def find_mat_files(path: str | os.PathLike) -> list[Path]:
    """The ``.mat`` files of ``path``: the file itself, or a folder's ``1.mat .. K.mat`` (numeric
    order) or its ``test.mat``."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        numbered = sorted(
            (f for f in p.glob("*.mat") if re.fullmatch(r"\d+\.mat", f.name)),
            key=lambda f: int(f.stem),
        )
        if numbered:
            return numbered
        if (p / "test.mat").is_file():
            return [p / "test.mat"]
        raise BenchError(f"{p}: no affNIST files (expected 1.mat .. 32.mat or test.mat)")
    raise BenchError(
        f"{p}: affNIST file or folder not found (expected test.mat or a folder of 1.mat .. 32.mat)"
    )


def _field(struct: np.ndarray, name: str) -> np.ndarray | None:
    return np.asarray(struct[name][0, 0]) if name in (struct.dtype.names or ()) else None


def read_mat_file(path: Path) -> dict[str, np.ndarray]:
    """The fields of one affNIST ``.mat`` file as arrays, images ``(N, 1600)`` in file order."""

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=False, struct_as_record=True)
    except FileNotFoundError:
        raise BenchError(f"{path}: affNIST file not found") from None
    except Exception as e:  # scipy raises ValueError, MatReadError, TypeError, OSError ... on bad bytes
        raise BenchError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e})") from None
    if "affNISTdata" not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise BenchError(f"{path}: no 'affNISTdata' struct (found variables {found})")
    struct = mat["affNISTdata"]
    if struct.dtype.names is None or struct.size != 1:
        raise BenchError(f"{path}: 'affNISTdata' is not a 1x1 struct")
    image, label = _field(struct, "image"), _field(struct, "label_int")
    if image is None or label is None:
        raise BenchError(
            f"{path}: 'affNISTdata' lacks 'image' or 'label_int' (fields {list(struct.dtype.names)})"
        )
    if image.ndim != 2 or image.shape[0] != SIDE * SIDE:
        raise BenchError(f"{path}: 'image' must be 1600 x N, got {image.shape}")
    n = image.shape[1]
    label = label.reshape(-1)
    if label.shape[0] != n:
        raise BenchError(f"{path}: 'label_int' has {label.shape[0]} entries for {n} images")
    if image.dtype != np.uint8:
        if image.size and (image.min() < 0 or image.max() > 255 or not np.all(image == np.round(image))):
            raise BenchError(f"{path}: 'image' must hold integers 0..255, got dtype {image.dtype}")
        image = image.astype(np.uint8)
    out = {"image": np.ascontiguousarray(image.T), "label": label.astype(np.int64)}
    for name in ("affine_transform", "human_readable_transform"):
        value = _field(struct, name)
        if value is not None and value.ndim == 2 and value.shape[1] == n:
            out[name] = np.ascontiguousarray(value.T.astype(np.float32))
    return out


def _taller_than_wide(images: torch.Tensor) -> bool:
    b = digit_bboxes(images[:4096]).float()
    return bool(((b[:, 3] - b[:, 1]).mean() >= (b[:, 2] - b[:, 0]).mean()).item())


class AffnistMat(NamedTuple):
    images: torch.Tensor  # (N, 40, 40) uint8, upright
    labels: torch.Tensor  # (N,) int64
    params: dict[str, torch.Tensor]
    spec: dict[str, Any]  # files, their sha256, orientation


def load_affnist_mat(path: str | os.PathLike, orientation: str = "auto") -> AffnistMat:
    """Load the official affNIST test set, on the CPU; :mod:`bench.data.testsets` makes it the
    test set ``affnist-real``.

    ``params`` holds ``source`` (-1: affNIST does not say which MNIST test digit an image came
    from in a form we rely on), and ``affine_transform`` / ``human_readable_transform`` raw
    ``(N, k)`` when the files have them. Missing or unreadable files are a :class:`BenchError`
    naming the file.
    """
    if orientation not in ORIENTATIONS:
        raise BenchError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    files = find_mat_files(path)
    parts = [read_mat_file(f) for f in files]
    flat = torch.from_numpy(np.concatenate([p["image"] for p in parts]))
    rows = flat.reshape(-1, SIDE, SIDE)  # each column read row-major
    if orientation == "auto":
        orientation = "row-major" if _taller_than_wide(rows) else "column-major"
    images = rows if orientation == "row-major" else rows.transpose(1, 2)
    labels = torch.from_numpy(np.concatenate([p["label"] for p in parts]))
    params: dict[str, torch.Tensor] = {"source": torch.full((labels.numel(),), -1, dtype=torch.int64)}
    for name in ("affine_transform", "human_readable_transform"):
        if all(name in p for p in parts):
            params[name] = torch.from_numpy(np.concatenate([p[name] for p in parts]))
    spec = {
        "set": "affnist-real",
        "files": [f.name for f in files],
        "file_sha256": {f.name: sha256_file(f) for f in files},
        "orientation": orientation,
    }
    return AffnistMat(images.contiguous(), labels, params, spec)


def transform_ranges(path: str | os.PathLike) -> list[str]:
    """Per-column min and max of the files' ``human_readable_transform``, one line per column
    (the columns' meaning is not assumed), or one line saying the files lack it."""
    params = load_affnist_mat(path).params
    table = params.get("human_readable_transform")
    if table is None:
        return [f"{path}: no human_readable_transform in the files"]
    lo, hi = table.min(dim=0).values, table.max(dim=0).values
    return [f"human_readable_transform column {i}: min {float(a):.4g}, max {float(b):.4g}"
            for i, (a, b) in enumerate(zip(lo, hi, strict=True))]
