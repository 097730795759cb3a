"""MNIST-family images and labels: the committed canonical MNIST, a torchvision root, or a download.

The committed copy lives in ``datasets/mnist/`` (IDX, gzip). We read the IDX format ourselves
(magic number, dtype, dimensions checked) and verify the md5 of the *uncompressed* bytes against
the values published with MNIST on the first load in a process; decoded tensors are then cached
in memory. FashionMNIST and KMNIST come from a torchvision-style root (``--data-dir`` or
``BENCH_DATA_DIR``) or from torchvision's download when online.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import torch
import torchvision.datasets as tvd

from bench.errors import BenchError
from bench.runtime import DATASETS_DIR

COMMITTED_MNIST = DATASETS_DIR / "mnist"

# md5 of the uncompressed IDX files, as published with MNIST (see datasets/README.md).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MNIST_COUNTS = {"train": 60_000, "test": 10_000}

# torchvision class (and folder) name per dataset.
TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "kmnist": "KMNIST"}

_IDX_DTYPES = {0x08: torch.uint8}


def parse_idx(raw: bytes, name: str, ndim: int) -> torch.Tensor:
    """Decode IDX bytes (magic 0x0000 dtype ndim, big-endian sizes, then data) into a tensor."""
    if len(raw) < 4:
        raise BenchError(f"{name}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code not in _IDX_DTYPES or dims != ndim:
        raise BenchError(
            f"{name}: bad IDX header (expected magic 0x0000 0x08 {ndim:#04x}, "
            f"got {zero:#06x} {dtype_code:#04x} {dims:#04x})"
        )
    shape = struct.unpack(f">{dims}I", raw[4 : 4 + 4 * dims])
    offset = 4 + 4 * dims
    count = 1
    for s in shape:
        count *= s
    if len(raw) - offset != count:
        raise BenchError(
            f"{name}: truncated or padded IDX data (expected {count} bytes for shape {shape}, "
            f"got {len(raw) - offset})"
        )
    data = torch.frombuffer(bytearray(raw[offset:]), dtype=torch.uint8)
    return data.reshape(shape).clone()


def _read_raw(folder: Path, stem: str) -> tuple[bytes, Path]:
    """The uncompressed bytes of ``folder/stem`` or ``folder/stem.gz``."""
    plain, gz = folder / stem, folder / f"{stem}.gz"
    if plain.is_file():
        return plain.read_bytes(), plain
    if gz.is_file():
        try:
            return gzip.decompress(gz.read_bytes()), gz
        except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged deflate stream
            raise BenchError(
                f"{gz}: corrupt gzip ({e}); expected md5 of the uncompressed file "
                f"{MNIST_MD5.get(stem, '?')}"
            ) from None
    raise BenchError(
        f"{gz}: missing (expected {stem} or {stem}.gz with md5 {MNIST_MD5.get(stem, '?')} "
        "of the uncompressed file)"
    )


def read_mnist_folder(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and verify one split of canonical MNIST from a folder of IDX files (gzip or plain)."""
    prefix = "train" if split == "train" else "t10k"
    out = []
    for kind, ndim in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        stem = f"{prefix}-{kind}"
        raw, path = _read_raw(folder, stem)
        md5 = hashlib.md5(raw).hexdigest()
        if md5 != MNIST_MD5[stem]:
            raise BenchError(
                f"{path}: checksum mismatch (md5 of uncompressed bytes {md5}, expected {MNIST_MD5[stem]})"
            )
        out.append(parse_idx(raw, str(path), ndim))
    images, labels = out
    return images, labels.long()


def _data_root(data_dir: str | os.PathLike | None) -> Path | None:
    root = data_dir or os.environ.get("BENCH_DATA_DIR")
    return Path(root) if root else None


@functools.lru_cache(maxsize=8)
def _load_cached(dataset: str, split: str, root: str | None, download: bool):
    if split not in MNIST_COUNTS:
        raise BenchError(f"unknown split '{split}' (expected train or test)")
    if dataset not in TORCHVISION_NAMES:
        raise BenchError(f"unknown dataset '{dataset}' (known: {', '.join(TORCHVISION_NAMES)})")
    tv_name = TORCHVISION_NAMES[dataset]
    if dataset == "mnist":
        if root is not None and (Path(root) / tv_name / "raw").is_dir():
            return read_mnist_folder(Path(root) / tv_name / "raw", split)
        if root is None and not download:
            return read_mnist_folder(COMMITTED_MNIST, split)
    return _torchvision_load(dataset, split, Path(root) if root else DATASETS_DIR, download)


def _torchvision_load(dataset: str, split: str, root: Path, download: bool):
    """FashionMNIST / KMNIST / MNIST through torchvision (its own md5 checks on download)."""

    cls = getattr(tvd, TORCHVISION_NAMES[dataset])
    try:
        ds = cls(str(root), train=split == "train", download=download)
    except RuntimeError as e:  # "Dataset not found. You can use download=True ..."
        if download and str(e).startswith("Error downloading"):  # every mirror failed (offline)
            raise BenchError(
                f"{dataset}: download failed ({str(e).splitlines()[0].rstrip(':')}); offline, place "
                f"the IDX files under {root / cls.__name__ / 'raw'} and pass --data-dir {root}"
            ) from None
        hint = "pass --download when online" if not download else "check the files"
        raise BenchError(
            f"{dataset}: not found under {root / cls.__name__ / 'raw'} ({str(e).splitlines()[0]}); "
            f"{hint}, or put the four IDX files there (torchvision layout)"
        ) from None
    except (OSError, ValueError) as e:
        # torchvision wraps network failures in URLError/OSError after trying every mirror.
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchError(
            f"{dataset}: download failed ({msg}); offline, place the IDX files under "
            f"{root / cls.__name__ / 'raw'} and pass --data-dir {root}"
        ) from None
    return ds.data.clone(), ds.targets.long().clone()


def load_split(
    split: str,
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one split, verified and cached.

    Sources, in order: ``data_dir`` (or ``BENCH_DATA_DIR``) in torchvision's layout
    ``ROOT/MNIST/raw/``; for MNIST, the committed copy in ``datasets/mnist/``; else torchvision's
    download when ``download`` is true. Callers must not modify the returned tensors.
    """
    root = _data_root(data_dir)
    return _load_cached(dataset, split, str(root) if root else None, download)
