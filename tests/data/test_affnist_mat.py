"""The official affNIST .mat loader, on small files written in the same layout with scipy."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.io
import torch

from bench.config import DataConfig
from bench.data.affnist_mat import find_mat_files, load_affnist_mat
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.data.testsets import build_test_sets
from bench.errors import BenchError

N = 48


@pytest.fixture(scope="module")
def digits():
    images, labels = load_split("test")
    # Transposed-free, upright digits on 40x40, shifted a little so rows and columns differ.
    canvases = place(images[:N], 40, torch.randint(-4, 5, (N, 2), generator=torch.Generator().manual_seed(0)))
    return canvases, labels[:N]


def write_affnist(path, images: torch.Tensor, labels: torch.Tensor, layout: str = "matlab") -> None:
    """Write ``affNISTdata`` as affNIST does: ``image`` 1600 x N, one image per column.

    ``matlab``: each column is MATLAB's ``img(:)`` (column-major, i.e. the transpose when read
    row by row); ``rows``: each column is the image read row by row.
    """
    arr = images.numpy()
    if layout == "matlab":
        cols = arr.transpose(0, 2, 1).reshape(len(arr), -1).T
    else:
        cols = arr.reshape(len(arr), -1).T
    n = len(arr)
    struct = {
        "image": np.ascontiguousarray(cols, dtype=np.uint8),
        "label_int": labels.numpy().astype(np.uint8).reshape(1, n),
        "label_one_of_n": np.eye(10, dtype=np.uint8)[labels.numpy()].T,
        "affine_transform": np.tile(np.array([[1.0], [0], [0], [0], [1], [0]]), (1, n)),
        "human_readable_transform": np.arange(7 * n, dtype=np.float64).reshape(7, n),
    }
    scipy.io.savemat(str(path), {"affNISTdata": struct})


@pytest.mark.parametrize("layout", ["matlab", "rows"])
def test_round_trip_upright(tmp_path, digits, layout):
    images, labels = digits
    write_affnist(tmp_path / "test.mat", images, labels, layout)
    ts = load_affnist_mat(tmp_path / "test.mat")
    assert ts.images.dtype == torch.uint8 and ts.images.shape == (N, 40, 40)
    assert torch.equal(ts.images, images)  # upright, whichever way the columns were written
    assert torch.equal(ts.labels, labels) and ts.labels.dtype == torch.int64
    assert ts.spec["orientation"] == ("column-major" if layout == "matlab" else "row-major")
    assert (ts.params["source"] == -1).all()
    assert ts.params["human_readable_transform"].shape == (N, 7)
    assert ts.params["human_readable_transform"][0, 1] == N  # column n of the file -> row n
    assert ts.params["affine_transform"].shape == (N, 6)


def test_forced_orientation(tmp_path, digits):
    images, labels = digits
    write_affnist(tmp_path / "test.mat", images, labels, "matlab")
    ts = load_affnist_mat(tmp_path / "test.mat", orientation="row-major")
    assert torch.equal(ts.images, images.transpose(1, 2))
    with pytest.raises(BenchError, match="orientation"):
        load_affnist_mat(tmp_path / "test.mat", orientation="sideways")


def test_batch_folder_in_numeric_order(tmp_path, digits):
    images, labels = digits
    parts = [(1, slice(0, 16)), (2, slice(16, 32)), (10, slice(32, 48))]
    for k, sl in parts:
        write_affnist(tmp_path / f"{k}.mat", images[sl], labels[sl])
    (tmp_path / "notes.mat").write_bytes(b"ignored: not a batch name")
    assert [f.name for f in find_mat_files(tmp_path)] == ["1.mat", "2.mat", "10.mat"]
    ts = load_affnist_mat(tmp_path)
    assert torch.equal(ts.images, images) and torch.equal(ts.labels, labels)


def test_missing_and_corrupt_files_name_the_file(tmp_path, digits):
    missing = tmp_path / "nope" / "test.mat"
    with pytest.raises(BenchError, match="not found") as err:
        load_affnist_mat(missing)
    assert str(missing) in str(err.value)
    bad = tmp_path / "test.mat"
    bad.write_bytes(b"MATLAB 5.0 MAT-file, but then garbage" + bytes(200))
    with pytest.raises(BenchError) as err:
        load_affnist_mat(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    other = tmp_path / "other.mat"
    scipy.io.savemat(str(other), {"something": np.zeros(3)})
    with pytest.raises(BenchError, match="affNISTdata") as err:
        load_affnist_mat(other)
    assert str(other) in str(err.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BenchError, match="1.mat"):
        load_affnist_mat(empty)


def test_wrong_image_shape(tmp_path):
    scipy.io.savemat(str(tmp_path / "t.mat"), {"affNISTdata": {
        "image": np.zeros((784, 3), np.uint8), "label_int": np.zeros((1, 3), np.uint8)}})
    with pytest.raises(BenchError, match="1600 x N"):
        load_affnist_mat(tmp_path / "t.mat")


def test_build_test_sets_includes_affnist_real(tmp_path, digits):
    images, labels = digits
    write_affnist(tmp_path / "test.mat", images, labels)
    cfg = dataclasses.replace(DataConfig(n_test=8), real_affnist=str(tmp_path / "test.mat"))
    sets = build_test_sets(cfg, names=("affnist-real",), progress=False, cache_dir=tmp_path / "c")
    assert torch.equal(sets["affnist-real"].images, images)
    assert sets["affnist-real"].sha256


def test_describe_affnist_prints_the_files_transform_ranges(tmp_path, digits, capsys):
    from bench.cli import main

    write_affnist(tmp_path / "test.mat", *digits)
    assert main(["data", "--profile", "smoke", "--describe-affnist",
                 "--set", f"data.real_affnist={tmp_path / 'test.mat'}"]) == 0
    out = capsys.readouterr().out
    # The file's human_readable_transform row r holds r*N .. r*N + N - 1 (np.arange above).
    for r in range(7):
        assert (f"- human_readable_transform column {r}: min {r * N}, max {r * N + N - 1}"
                in out), r
