"""The verified MNIST reader: checksums, IDX format, gzip, torchvision roots, offline downloads."""

from __future__ import annotations

import gzip
import shutil
import socket
import urllib.error

import pytest
import torch

from bench.data import mnist
from bench.errors import BenchError

TEST_STEMS = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
# Class counts of the MNIST test and training splits (as published with the dataset).
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@pytest.fixture
def test_copy(tmp_path):
    """A folder holding a copy of the committed test split (gzip)."""
    for stem in TEST_STEMS:
        shutil.copy(mnist.COMMITTED_MNIST / f"{stem}.gz", tmp_path / f"{stem}.gz")
    return tmp_path


def _raw(stem: str) -> bytes:
    return gzip.decompress((mnist.COMMITTED_MNIST / f"{stem}.gz").read_bytes())


def _assert_names(err: pytest.ExceptionInfo, path, stem: str) -> None:
    msg = str(err.value)
    assert str(path) in msg
    assert mnist.MNIST_MD5[stem] in msg
    assert "\n" not in msg


def test_committed_copy_loads_with_published_class_counts():
    images, labels = mnist.load_split("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.uint8
    assert labels.dtype == torch.int64
    assert torch.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    _, train_labels = mnist.load_split("train")
    assert torch.bincount(train_labels, minlength=10).tolist() == TRAIN_COUNTS


def test_folder_copy_matches_committed(test_copy):
    images, labels = mnist.read_mnist_folder(test_copy, "test")
    ref_images, ref_labels = mnist.load_split("test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)


def test_checksum_mismatch_names_file_and_expected_md5(test_copy):
    stem = "t10k-labels-idx1-ubyte"
    raw = bytearray(_raw(stem))
    raw[-1] = (raw[-1] + 1) % 10  # one label changed: still a valid IDX file
    (test_copy / f"{stem}.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(BenchError, match="checksum mismatch") as err:
        mnist.read_mnist_folder(test_copy, "test")
    _assert_names(err, test_copy / f"{stem}.gz", stem)


def test_truncated_idx_is_refused(test_copy):
    stem = "t10k-images-idx3-ubyte"
    raw = _raw(stem)
    (test_copy / f"{stem}.gz").unlink()
    (test_copy / stem).write_bytes(raw[: len(raw) // 2])  # plain IDX, cut in half
    with pytest.raises(BenchError) as err:
        mnist.read_mnist_folder(test_copy, "test")
    _assert_names(err, test_copy / stem, stem)
    # The format reader on its own says what is wrong with the bytes.
    with pytest.raises(BenchError, match="truncated"):
        mnist.parse_idx(raw[: len(raw) // 2], "x", 3)
    with pytest.raises(BenchError, match="bad IDX header"):
        mnist.parse_idx(raw, "x", 1)


@pytest.mark.parametrize("damage", ["not-gzip", "deflate", "cut"])
def test_corrupt_gzip_names_file_and_expected_md5(test_copy, damage):
    stem = "t10k-images-idx3-ubyte"
    path = test_copy / f"{stem}.gz"
    blob = path.read_bytes()
    if damage == "not-gzip":
        blob = b"this is not gzip"
    elif damage == "deflate":  # valid header, garbled compressed stream (zlib.error)
        blob = blob[:20] + bytes(b ^ 0xFF for b in blob[20:400]) + blob[400:]
    else:
        blob = blob[: len(blob) // 2]
    path.write_bytes(blob)
    with pytest.raises(BenchError, match="corrupt gzip") as err:
        mnist.read_mnist_folder(test_copy, "test")
    _assert_names(err, path, stem)


def test_missing_file_names_file_and_expected_md5(test_copy):
    stem = "t10k-labels-idx1-ubyte"
    (test_copy / f"{stem}.gz").unlink()
    with pytest.raises(BenchError, match="missing") as err:
        mnist.read_mnist_folder(test_copy, "test")
    _assert_names(err, test_copy / f"{stem}.gz", stem)


def test_torchvision_style_data_dir(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    raw_dir.mkdir(parents=True)
    for stem in TEST_STEMS:  # torchvision keeps the uncompressed files
        (raw_dir / stem).write_bytes(_raw(stem))
    images, labels = mnist.load_split("test", data_dir=tmp_path)
    ref_images, ref_labels = mnist.load_split("test")
    assert torch.equal(images, ref_images) and torch.equal(labels, ref_labels)
    other = tmp_path / "other"  # a second root (decoded splits are cached per root)
    shutil.copytree(tmp_path / "MNIST", other / "MNIST")
    (other / "MNIST" / "raw" / "t10k-images-idx3-ubyte").write_bytes(b"\0" * 100)
    with pytest.raises(BenchError, match="checksum mismatch"):
        mnist.load_split("test", data_dir=other)


@pytest.fixture
def offline(monkeypatch):
    """No network: torchvision's downloader and any socket connection fail like a dead link."""
    import torchvision.datasets.mnist as tv_mnist

    calls = []

    def fail(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    def no_connect(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", fail)
    monkeypatch.setattr(socket.socket, "connect", no_connect)
    return calls


def test_offline_download_is_one_line_error(tmp_path, offline):
    with pytest.raises(BenchError) as err:
        mnist.load_split("test", dataset="fashion-mnist", data_dir=tmp_path, download=True)
    msg = str(err.value)
    assert offline, "the download was attempted"
    assert "\n" not in msg
    assert "download failed" in msg and "fashion-mnist" in msg
    assert str(tmp_path / "FashionMNIST" / "raw") in msg


def test_missing_dataset_without_download_says_how(tmp_path, offline):
    with pytest.raises(BenchError, match="--download") as err:
        mnist.load_split("test", dataset="kmnist", data_dir=tmp_path, download=False)
    assert "\n" not in str(err.value)
    assert not offline  # nothing was fetched


def test_unknown_split_and_dataset():
    with pytest.raises(BenchError, match="unknown split"):
        mnist.load_split("valid")
    with pytest.raises(BenchError, match="unknown dataset"):
        mnist.load_split("test", dataset="cifar")
