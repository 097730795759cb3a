"""The generated test sets: contents, parameters, determinism, the verified cache, the CLI."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from bench.config import DataConfig
from bench.data import affine, testsets
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.data.testsets import TestSet, build_test_sets, test_set_manifest
from bench.errors import BenchError
from bench.io import sha256_tensor, stable_hash

CFG = DataConfig(
    n_test=64, affnist_k=3, sweep_n=16,
    rotation_grid=(-45.0, 0.0, 30.0), scale_grid=(0.75, 1.0, 1.25), shear_grid=(-0.3, 0.0, 0.3),
    translate_grid=(0.0, 6.0),
)
ALL = ("clean", "affnist", "sweep-rotation", "sweep-scale", "sweep-shear", "sweep-translate",
       "scramble-g2", "scramble-g3", "displaced", "overlap")


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("test")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def sets(cache):
    return build_test_sets(CFG, "cpu", progress=False, cache_dir=cache)


def test_every_set_is_built_with_sources_and_labels(sets, mnist_test):
    digits, labels = mnist_test
    assert tuple(sets) == ALL
    for name, ts in sets.items():
        assert isinstance(ts, TestSet) and ts.name == name
        assert ts.images.dtype == torch.uint8 and ts.images.shape[1:] == (40, 40)
        assert ts.labels.dtype == torch.int64 and len(ts.labels) == len(ts)
        src = ts.params["source"]
        assert src.shape == (len(ts),) and src.min() >= 0 and src.max() < CFG.n_test
        assert torch.equal(ts.labels, labels[src])
        assert all(v.shape[0] == len(ts) for v in ts.params.values())
        assert ts.sha256 == sha256_tensor(ts.images) and not ts.cached
    assert len(sets["affnist"]) == CFG.n_test * CFG.affnist_k
    assert len(sets["sweep-translate"]) == CFG.sweep_n * len(CFG.translate_grid)


def test_clean_is_the_centred_test_digits(sets, mnist_test):
    digits, _ = mnist_test
    assert torch.equal(sets["clean"].images, place(digits[: CFG.n_test], 40))
    assert torch.equal(sets["clean"].params["source"], torch.arange(CFG.n_test))


def test_affnist_parameters_and_images(sets):
    ts, clean = sets["affnist"], sets["clean"].images
    p = ts.params
    assert p["matrix"].shape == (len(ts), 2, 3)
    for key in ("angle_deg", "shear", "scale_x", "scale_y", "tx", "ty"):
        assert p[key].shape == (len(ts),) and p[key].dtype == torch.float32
    assert torch.equal(p["matrix"], affine.affine_matrices(p))  # the matrix is the parameters'
    assert torch.equal(p["source"], torch.arange(CFG.n_test).repeat_interleave(CFG.affnist_k))
    cfg = CFG.affine
    assert p["angle_deg"].abs().max() <= cfg.rotation_deg and p["shear"].abs().max() <= cfg.shear
    assert cfg.scale_min <= p["scale_x"].min() and p["scale_y"].max() <= cfg.scale_max
    # The images are the stored matrices applied to the clean digits ...
    assert torch.equal(ts.images, affine.warp(clean[p["source"]], p["matrix"]))
    # ... and no ink leaves the canvas: on a canvas padded by 16 px nothing lands outside.
    pad = 16
    shift = torch.tensor([pad, pad], dtype=torch.float32)
    m = p["matrix"].clone()
    m[:, :, 2] += shift - p["matrix"][:, :, :2] @ shift
    big = affine.warp(torch.nn.functional.pad(clean[p["source"]], (pad,) * 4), m)
    assert big.sum(dtype=torch.int64) == big[:, pad:-pad, pad:-pad].sum(dtype=torch.int64)
    corners = affine.transformed_corners(affine.digit_bboxes(clean)[p["source"]], p["matrix"])
    assert corners.min() >= 0 and corners.max() <= 39
    # The K transforms of one digit differ.
    assert p["angle_deg"][0] != p["angle_deg"][1]


@pytest.mark.parametrize("name,key,grid", [
    ("sweep-rotation", "angle_deg", CFG.rotation_grid),
    ("sweep-scale", "scale_x", CFG.scale_grid),
    ("sweep-shear", "shear", CFG.shear_grid),
])
def test_sweep_values(sets, name, key, grid):
    ts = sets[name]
    expected = torch.tensor(grid, dtype=torch.float32).repeat_interleave(CFG.sweep_n)
    assert torch.equal(ts.params["value"], expected)
    assert torch.equal(ts.params[key], expected)
    assert torch.equal(ts.params["source"], torch.arange(CFG.sweep_n).repeat(len(grid)))
    # The identity point reproduces the clean digits exactly.
    at_identity = ts.images[ts.params["value"] == (1.0 if key == "scale_x" else 0.0)]
    assert torch.equal(at_identity, sets["clean"].images[: CFG.sweep_n])


def test_sweep_translate(sets):
    ts = sets["sweep-translate"]
    p = ts.params
    assert torch.allclose(torch.hypot(p["tx"], p["ty"]), p["value"], atol=1e-5)
    moved = ts.images[p["value"] == 6.0]
    assert not moved.eq(sets["clean"].images[: CFG.sweep_n]).flatten(1).all(1).any()


def test_scrambled_sets_pair_with_clean(sets):
    clean = sets["clean"].images
    for name, g in (("scramble-g2", 2), ("scramble-g3", 3)):
        ts = sets[name]
        assert torch.equal(ts.params["source"], torch.arange(CFG.n_test))
        assert ts.params["perm"].shape == (CFG.n_test, g * g)
        assert torch.equal(ts.images.flatten(1).sort(1).values, clean.flatten(1).sort(1).values)
        assert not ts.images.eq(clean).flatten(1).all(1).any()
    assert (sets["displaced"].params["clipped"] == 0).all()


def test_cache_hit_returns_identical_bytes(sets, cache):
    again = build_test_sets(CFG, "cpu", progress=False, cache_dir=cache)
    for name, ts in again.items():
        assert ts.cached, name
        assert torch.equal(ts.images, sets[name].images) and ts.sha256 == sets[name].sha256
        assert all(torch.equal(v, sets[name].params[k]) for k, v in ts.params.items())
    manifests = sorted(cache.glob("affnist-*.json"))
    assert len(manifests) == 1
    m = json.loads(manifests[0].read_text())
    assert m["count"] == len(sets["affnist"]) and m["seed"] == CFG.seed
    assert m["sha256"] == sets["affnist"].sha256 and m["spec"] == sets["affnist"].spec
    assert "rounded" in m["note"] and m["versions"]["kornia"] and m["device"] == "cpu"
    assert m["spec"]["device_type"] == "cpu" and m["spec"]["affine"]["rotation_deg"] == 20.0


def test_same_spec_is_bitwise_identical_without_cache(sets, tmp_path):
    fresh = build_test_sets(CFG, "cpu", names=("affnist", "scramble-g3", "sweep-translate"),
                            progress=False, cache_dir=tmp_path)
    for name, ts in fresh.items():
        assert not ts.cached and torch.equal(ts.images, sets[name].images), name


def test_corrupt_cache_is_rebuilt_never_used(sets, tmp_path):
    build_test_sets(CFG, names=("scramble-g2", "affnist"), progress=False, cache_dir=tmp_path)
    # 1. tensor file replaced by a valid file with different pixels
    pt = next(tmp_path.glob("scramble-g2-*.pt"))
    blob = torch.load(pt, weights_only=True)
    blob["images"][0, 20, 20] ^= 1
    torch.save(blob, pt)
    # 2. tensor file truncated
    pt2 = next(tmp_path.glob("affnist-*.pt"))
    pt2.write_bytes(pt2.read_bytes()[:1000])
    with pytest.warns(UserWarning, match="rebuilding"):
        rebuilt = build_test_sets(CFG, names=("scramble-g2", "affnist"), progress=False,
                                  cache_dir=tmp_path)
    for name in ("scramble-g2", "affnist"):
        assert not rebuilt[name].cached
        assert torch.equal(rebuilt[name].images, sets[name].images)
    # The rebuilt files are good again: the next call hits the cache without a warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = build_test_sets(CFG, names=("scramble-g2", "affnist"), progress=False,
                                cache_dir=tmp_path)
    assert all(ts.cached for ts in again.values())
    # 3. a manifest whose checksum was edited
    js = next(tmp_path.glob("scramble-g2-*.json"))
    m = json.loads(js.read_text())
    m["sha256"] = "0" * 64
    js.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="does not match"):
        assert not build_test_sets(CFG, names=("scramble-g2",), progress=False,
                                   cache_dir=tmp_path)["scramble-g2"].cached


def test_sub_seeds_are_independent(sets, tmp_path):
    # Another sweep grid changes that sweep only; another seed changes every random set.
    other = dataclasses.replace(CFG, rotation_grid=(-90.0, 90.0))
    b = build_test_sets(other, names=("affnist", "scramble-g2"), progress=False, cache_dir=tmp_path)
    assert torch.equal(b["affnist"].images, sets["affnist"].images)
    assert b["affnist"].spec == sets["affnist"].spec
    reseeded = dataclasses.replace(CFG, seed=1)
    c = build_test_sets(reseeded, names=("clean", "affnist", "scramble-g2"), progress=False,
                        cache_dir=tmp_path)
    assert torch.equal(c["clean"].images, sets["clean"].images)
    assert c["clean"].spec == sets["clean"].spec  # clean has no randomness: seed not in its spec
    assert not torch.equal(c["affnist"].images, sets["affnist"].images)
    assert not torch.equal(c["scramble-g2"].params["perm"], sets["scramble-g2"].params["perm"])


def test_default_set_names(tmp_path):
    assert testsets.default_set_names(CFG) == ALL  # the order sets are built and written in
    real = dataclasses.replace(CFG, real_affnist=str(tmp_path), scramble_grids=(3,))
    assert testsets.default_set_names(real) == (
        "clean", "affnist", "sweep-rotation", "sweep-scale", "sweep-shear", "sweep-translate",
        "scramble-g3", "displaced", "overlap", "affnist-real")
    no_sweeps = dataclasses.replace(CFG, rotation_grid=(), scale_grid=(), shear_grid=(),
                                    translate_grid=(0.0, 4.0))
    assert testsets.default_set_names(no_sweeps) == (
        "clean", "affnist", "sweep-translate", "scramble-g2", "scramble-g3", "displaced",
        "overlap")


def test_canvas_28_clean(tmp_path, mnist_test):
    cfg28 = dataclasses.replace(CFG, canvas=28, train_shift=2)
    assert testsets.default_set_names(cfg28) == ("clean",)
    ts = build_test_sets(cfg28, names=("clean",), progress=False, cache_dir=tmp_path)["clean"]
    assert torch.equal(ts.images, mnist_test[0][: CFG.n_test])  # the MNIST test digits as is


def test_names_are_checked(tmp_path):
    with pytest.raises(BenchError, match="unknown test set 'scramble-g4'"):
        build_test_sets(CFG, names=("scramble-g4",), cache_dir=tmp_path)
    with pytest.raises(BenchError, match="real_affnist"):
        build_test_sets(CFG, names=("affnist-real",), cache_dir=tmp_path)


def test_manifest(sets):
    m = test_set_manifest(sets)
    assert set(m) == set(ALL)
    assert m["affnist"] == {"sha256": sets["affnist"].sha256, "count": len(sets["affnist"]),
                            "spec": sets["affnist"].spec}


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_generation_close_to_cpu(sets, tmp_path):
    gpu = build_test_sets(CFG, "cuda", names=("affnist", "scramble-g3"), progress=False,
                          cache_dir=tmp_path)
    assert gpu["affnist"].spec["device_type"] == "cuda"
    assert (gpu["affnist"].images.int() - sets["affnist"].images.int()).abs().max() <= 1
    assert torch.equal(gpu["scramble-g3"].images, sets["scramble-g3"].images)  # exact moves
    for k in ("angle_deg", "tx", "matrix"):  # parameters are drawn on the CPU
        assert torch.equal(gpu["affnist"].params[k], sets["affnist"].params[k])


def test_cli_data(tmp_path, monkeypatch, capsys):
    import bench.cell.plan as cells
    from bench.cli import main

    monkeypatch.setattr(testsets, "DATASETS_DIR", tmp_path / "datasets")
    monkeypatch.setattr(cells, "RESULTS_DIR", tmp_path / "results")
    profile = tmp_path / "tiny.toml"
    profile.write_text('models = ["capsnet"]\nsizes = [100]\n[train]\nval_size = 100\n'
                       '[data]\nn_test = 12\naffnist_k = 2\nsweep_n = 4\n'
                       'rotation_grid = [0, 45]\nscale_grid = [1.0]\nshear_grid = [0.0]\n'
                       'translate_grid = [0, 4]\nscramble_grids = [2]\n')
    args = ["data", "--profile", str(profile), "--set", "data.seed=3", "--device", "cpu"]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("clean", "affnist", "sweep-rotation", "scramble-g2", "displaced", "overlap"):
        assert name in out
        assert (tmp_path / "results" / "data" / f"{name}.png").stat().st_size > 1000
    assert "images/s" in out and "cached" in out
    assert len(list((tmp_path / "datasets" / "cache").glob("*.json"))) == 9
    assert main([*args, "--no-sheets"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.split()[:1] == ["affnist"]]
    assert rows and rows[0][-1] == "yes"  # second run: from the cache


def test_affine_spec_names_the_scale_distribution_and_shear_axis_only_when_not_default(sets, tmp_path):
    # Defaults: the spec (so the cache key and manifest) is the one from before these fields.
    assert sets["affnist"].spec["affine"] == {"rotation_deg": 20.0, "shear": 0.2, "scale_min": 0.8,
                                              "scale_max": 1.2}
    other = dataclasses.replace(CFG, affine=dataclasses.replace(
        CFG.affine, scale_distribution="log-uniform", shear_axis="y"))
    ts = build_test_sets(other, names=("affnist",), progress=False, cache_dir=tmp_path)["affnist"]
    assert ts.spec["affine"]["scale_distribution"] == "log-uniform"
    assert ts.spec["affine"]["shear_axis"] == "y"
    assert not torch.equal(ts.images, sets["affnist"].images)
    p = ts.params
    assert torch.equal(p["matrix"], affine.affine_matrices(p, shear_axis="y"))
    assert not torch.equal(p["matrix"], affine.affine_matrices(p))
    assert torch.equal(p["angle_deg"], sets["affnist"].params["angle_deg"])  # the same draws
    clean = sets["clean"].images
    corners = affine.transformed_corners(affine.digit_bboxes(clean)[p["source"]], p["matrix"])
    assert corners.min() >= 0 and corners.max() <= 39
    assert stable_hash(ts.spec) != stable_hash(sets["affnist"].spec)  # another cache key
