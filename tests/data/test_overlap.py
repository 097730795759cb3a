"""The overlapping-digits set (Sabour et al. 2017, Sec. 6): shifts, superposition, partners, the set.

Oracles: literal canvases worked by hand, Python loops over pixels (never the tensor code under
test), the MNIST labels, and a second generation of the same set.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.config import DataConfig, load_profile
from bench.data import overlap
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.data.testsets import build_test_sets, default_set_names, generate, set_kind, set_size
from bench.errors import BenchError

CFG = DataConfig(n_test=12, affnist_k=1, sweep_n=4)


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("test")


@pytest.fixture(scope="module")
def ts():
    return generate("overlap", CFG)


def _loop_shift(img: list[list[int]], dx: int, dy: int) -> list[list[int]]:
    """out[y][x] = img[y - dy][x - dx] where that is on the canvas, else 0 (Python loops)."""
    h, w = len(img), len(img[0])
    out = [[0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            sy, sx = y - dy, x - dx
            if 0 <= sy < h and 0 <= sx < w:
                out[y][x] = img[sy][sx]
    return out


def _loop_max(a: list[list[int]], b: list[list[int]]) -> list[list[int]]:
    return [[max(p, q) for p, q in zip(ra, rb, strict=True)] for ra, rb in zip(a, b, strict=True)]


# --------------------------------------------------------------------------------------------
# The pure functions


def test_shift_by_hand():
    img = torch.tensor([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=torch.uint8)
    right_down = overlap.shift_canvas(img, torch.tensor([[1, 1]]))
    assert right_down.tolist() == [[[0, 0, 0], [0, 1, 2], [0, 4, 5]]]  # zero fill, no wrap
    left_up = overlap.shift_canvas(img, torch.tensor([[-2, -1]]))
    assert left_up.tolist() == [[[6, 0, 0], [9, 0, 0], [0, 0, 0]]]
    assert overlap.shift_canvas(img, torch.tensor([[0, 0]])).tolist() == img.tolist()
    assert overlap.shift_canvas(img, torch.tensor([[3, 0]])).sum() == 0  # off the canvas
    assert right_down.dtype == torch.uint8


def test_shift_then_max_equals_python_loops():
    gen = torch.Generator().manual_seed(5)
    a = torch.randint(0, 256, (6, 5, 7), generator=gen, dtype=torch.uint8)
    b = torch.randint(0, 256, (6, 5, 7), generator=gen, dtype=torch.uint8)
    shifts = torch.tensor([[[0, 0], [1, -1]], [[-3, 2], [4, 4]], [[6, 0], [-7, -5]],
                           [[2, 1], [-1, -2]], [[-4, -4], [0, 3]], [[1, 0], [0, 1]]])
    got = overlap.superimpose(overlap.shift_canvas(a, shifts[:, 0]),
                              overlap.shift_canvas(b, shifts[:, 1]))
    for i in range(6):
        (dxa, dya), (dxb, dyb) = shifts[i].tolist()
        want = _loop_max(_loop_shift(a[i].tolist(), dxa, dya), _loop_shift(b[i].tolist(), dxb, dyb))
        assert got[i].tolist() == want, i
    # overlap() is the same composition on indices into one batch of canvases
    canvases = torch.cat([a, b])
    both = overlap.overlap(canvases, torch.arange(6), torch.arange(6, 12), shifts)
    assert torch.equal(both, got)


def test_superimpose_is_the_pixelwise_max_by_hand():
    a = torch.tensor([[[0, 200], [10, 0]]], dtype=torch.uint8)
    b = torch.tensor([[[50, 100], [0, 255]]], dtype=torch.uint8)
    assert overlap.superimpose(a, b).tolist() == [[[50, 200], [10, 255]]]
    with pytest.raises(ValueError):
        overlap.superimpose(a, b[:, :1])


def test_draw_partners_of_another_class_and_shifts_in_range():
    labels = torch.tensor([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 7])
    p = overlap.draw_overlap_params(labels, 4, torch.Generator().manual_seed(0))
    assert p["partner"].shape == (11,) and p["shift"].shape == (11, 2, 2)
    assert p["partner"].dtype == torch.int64 and p["shift"].dtype == torch.int64
    for i, j in enumerate(p["partner"].tolist()):
        assert 0 <= j < 11 and labels[j] != labels[i]
    assert p["shift"].min() >= -4 and p["shift"].max() <= 4
    again = overlap.draw_overlap_params(labels, 4, torch.Generator().manual_seed(0))
    assert all(torch.equal(p[k], again[k]) for k in p)


def test_draw_reaches_every_other_class_digit_and_every_shift():
    # 3 digits of class 0 and 2 of class 1: digit 0's partners are 3 or 4, digit 3's 0, 1 or 2.
    labels = torch.tensor([0, 0, 0, 1, 1])
    seen: dict[int, set[int]] = {i: set() for i in range(5)}
    shifts: set[int] = set()
    gen = torch.Generator().manual_seed(1)
    for _ in range(200):
        p = overlap.draw_overlap_params(labels, 2, gen)
        for i, j in enumerate(p["partner"].tolist()):
            seen[i].add(j)
        shifts |= set(p["shift"].flatten().tolist())
    assert seen == {0: {3, 4}, 1: {3, 4}, 2: {3, 4}, 3: {0, 1, 2}, 4: {0, 1, 2}}
    assert shifts == {-2, -1, 0, 1, 2}


def test_draw_refuses_a_single_class_and_a_negative_shift():
    with pytest.raises(ValueError, match="same class"):
        overlap.draw_overlap_params(torch.tensor([4, 4, 4]), 4, torch.Generator())
    with pytest.raises(ValueError, match="max_shift"):
        overlap.draw_overlap_params(torch.tensor([1, 2]), -1, torch.Generator())


# --------------------------------------------------------------------------------------------
# The set


def test_the_kind_and_its_place_among_the_sets():
    k = set_kind("overlap")
    assert (k.family, k.display, k.calibrated, k.scrambled, k.warped) == (
        "overlap", "overlapping digits", False, False, False)
    assert default_set_names(CFG)[-1] == "overlap"  # at 40x40, after displaced
    assert "overlap" not in default_set_names(dataclasses.replace(CFG, canvas=28, train_shift=2))
    assert set_size(CFG, "overlap") == 12


def test_params_labels_and_ranges(ts, mnist_test):
    _, labels = mnist_test
    p = ts.params
    assert set(p) == {"source", "source2", "label2", "shift"}
    assert ts.images.shape == (12, 40, 40) and ts.images.dtype == torch.uint8
    assert p["shift"].shape == (12, 2, 2) and p["shift"].dtype == torch.int64
    assert p["shift"].min() >= -4 and p["shift"].max() <= 4
    assert p["source"].tolist() == list(range(12))
    assert ts.labels.tolist() == labels[:12].tolist()  # the set's labels: digit A's classes
    for i in range(12):
        j = int(p["source2"][i])
        assert 0 <= j < CFG.n_test and j != i
        assert int(p["label2"][i]) == int(labels[j]) != int(labels[i])


def test_images_rebuilt_from_the_stored_params_with_loops(ts, mnist_test):
    digits, _ = mnist_test
    clean = place(digits[: CFG.n_test], CFG.canvas)
    p = ts.params
    for i in range(len(ts)):
        a = clean[int(p["source"][i])].tolist()
        b = clean[int(p["source2"][i])].tolist()
        (dxa, dya), (dxb, dyb) = p["shift"][i].tolist()
        want = _loop_max(_loop_shift(a, dxa, dya), _loop_shift(b, dxb, dyb))
        assert ts.images[i].tolist() == want, i


def test_same_seed_same_set_other_seed_other_set(ts):
    again = generate("overlap", CFG)
    assert torch.equal(again.images, ts.images) and torch.equal(again.labels, ts.labels)
    assert set(again.params) == set(ts.params)
    assert all(torch.equal(again.params[k], ts.params[k]) for k in ts.params)
    other = generate("overlap", dataclasses.replace(CFG, seed=1))
    assert not torch.equal(other.params["shift"], ts.params["shift"])
    # max_shift 0: the digits stay where the clean set has them
    still = generate("overlap", dataclasses.replace(CFG, overlap_shift=0))
    assert (still.params["shift"] == 0).all()


def test_cache_and_spec(ts, tmp_path):
    first = build_test_sets(CFG, names=("overlap",), progress=False, cache_dir=tmp_path)["overlap"]
    assert torch.equal(first.images, ts.images) and not first.cached
    assert {k: first.spec[k] for k in ("n_test", "seed", "overlap_shift")} == {
        "n_test": 12, "seed": 0, "overlap_shift": 4}
    hit = build_test_sets(CFG, names=("overlap",), progress=False, cache_dir=tmp_path)["overlap"]
    assert hit.cached and torch.equal(hit.images, ts.images)
    assert all(torch.equal(hit.params[k], ts.params[k]) for k in ts.params)
    wider = dataclasses.replace(CFG, overlap_shift=2)
    other = build_test_sets(wider, names=("overlap",), progress=False, cache_dir=tmp_path)["overlap"]
    assert not other.cached and other.spec["overlap_shift"] == 2


def test_one_digit_has_no_partner():
    with pytest.raises(BenchError, match="overlap"):
        generate("overlap", dataclasses.replace(CFG, n_test=1))


def test_profile_key(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('name = "p"\nsizes = [100]\n[data]\noverlap_shift = 3\n')
    assert load_profile(str(f)).data.overlap_shift == 3
    assert DataConfig().overlap_shift == 4  # Sabour et al. 2017, Sec. 6
    for bad, why in (("-1", "must be in"), ("40", "must be in"), ('"4"', "must be an integer")):
        f.write_text(f'name = "p"\nsizes = [100]\n[data]\noverlap_shift = {bad}\n')
        with pytest.raises(BenchError, match=f"data.overlap_shift' {why}"):
            load_profile(str(f))
