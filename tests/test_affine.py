"""affNIST-style transforms: ranges, conventions (signs and units), fit inside the canvas, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from bench.config import AffineConfig
from bench.data import affine
from bench.data.canvas import place
from bench.data.mnist import load_split

N = 64
CANVAS = 40


@pytest.fixture(scope="module")
def clean():
    digits, _ = load_split("test")
    return place(digits[:N], CANVAS)


def _identity(n: int, cx: float, cy: float, **values) -> dict[str, torch.Tensor]:
    p = {k: torch.zeros(n) for k in affine.PARAM_KEYS}
    p.update(scale_x=torch.ones(n), scale_y=torch.ones(n), center_x=torch.full((n,), cx),
             center_y=torch.full((n,), cy))
    p.update({k: torch.full((n,), float(v)) for k, v in values.items()})
    return p


def _bar() -> torch.Tensor:
    """A 9x9 image: a vertical bar from the centre (4, 4) up to row 1."""
    img = torch.zeros(1, 9, 9, dtype=torch.uint8)
    img[0, 1:5, 4] = 255
    return img


def _ink(img: torch.Tensor) -> set[tuple[int, int]]:
    """Set of (x, y) of pixels above half intensity."""
    ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
    return set(zip(xs.tolist(), ys.tolist(), strict=True))


def test_digit_bboxes():
    img = torch.zeros(3, 10, 12, dtype=torch.uint8)
    img[0, 2:5, 3:9] = 7
    img[1, 9, 11] = 1
    boxes = affine.digit_bboxes(img)
    assert boxes[0].tolist() == [3, 2, 8, 4]  # x0, y0, x1, y1 inclusive
    assert boxes[1].tolist() == [11, 9, 11, 9]
    assert boxes[2].tolist() == [6, 5, 6, 5]  # empty image: the centre


def test_positive_angle_is_clockwise(device):
    m = affine.affine_matrices(_identity(1, 4, 4, angle_deg=90))
    out = affine.warp(_bar().to(device), m)
    assert _ink(out.cpu()) == {(4, 4), (5, 4), (6, 4), (7, 4)}  # "up" turned to "right"


def test_positive_shear_leans_right_and_is_a_factor():
    s = 0.5
    m = affine.affine_matrices(_identity(1, 4, 4, shear=s))
    # x' = x - s (y - cy): the factor enters the matrix as is (Kornia gets atan(s) radians).
    assert m[0, 0].tolist() == pytest.approx([1.0, -s, s * 4])
    assert m[0, 1].tolist() == pytest.approx([0.0, 1.0, 0.0])
    out = affine.warp(_bar(), affine.affine_matrices(_identity(1, 4, 4, shear=1.0)))
    assert _ink(out) == {(4, 4), (5, 3), (6, 2), (7, 1)}  # the top moved right


def test_translation_and_scale_axes():
    out = affine.warp(_bar(), affine.affine_matrices(_identity(1, 4, 4, tx=2, ty=1)))
    assert _ink(out) == {(6, 2), (6, 3), (6, 4), (6, 5)}
    img = torch.zeros(1, 9, 9, dtype=torch.uint8)
    img[0, 4, 3:6] = 255  # horizontal bar of 3 px at the centre
    out = affine.warp(img, affine.affine_matrices(_identity(1, 4, 4, scale_x=2.0)))
    xs = sorted(x for x, y in _ink(out))
    assert xs[0] < 3 and xs[-1] > 5  # widened along x ...
    assert {y for _, y in _ink(out)} == {4}  # ... not along y


def test_identity_warp_is_exact(clean, device):
    m = affine.affine_matrices(_identity(N, 19.5, 19.5))
    assert torch.equal(affine.warp(clean.to(device), m).cpu(), clean)


def test_sampled_parameters_within_ranges(clean):
    cfg = AffineConfig()
    n = 2048
    bboxes = affine.digit_bboxes(clean).repeat(n // N, 1)
    p = affine.sample_affine_params(n, cfg, torch.Generator().manual_seed(1), bboxes, CANVAS)
    assert p["angle_deg"].abs().max() <= cfg.rotation_deg
    assert p["shear"].abs().max() <= cfg.shear
    for k in ("scale_x", "scale_y"):
        assert cfg.scale_min <= p[k].min() and p[k].max() <= cfg.scale_max
    # The draws cover their ranges (not stuck at a point) and x/y scales are independent.
    assert p["angle_deg"].min() < -0.9 * cfg.rotation_deg and p["angle_deg"].max() > 0.9 * cfg.rotation_deg
    assert p["shear"].min() < -0.9 * cfg.shear and p["shear"].max() > 0.9 * cfg.shear
    assert abs(torch.corrcoef(torch.stack([p["scale_x"], p["scale_y"]]))[0, 1]) < 0.1
    assert p["fits"].all()  # the affNIST ranges always fit a 20x20 digit on 40x40
    assert p["tx"].abs().max() > 5 and p["ty"].abs().max() > 5  # real translations


def test_transformed_digit_stays_on_canvas(clean):
    n = 8 * N
    src = torch.arange(N).repeat(8)
    bboxes = affine.digit_bboxes(clean)[src]
    p = affine.sample_affine_params(n, AffineConfig(), torch.Generator().manual_seed(2), bboxes, CANVAS)
    m = affine.affine_matrices(p)
    # The transformed corners of the ink box lie inside the canvas.
    corners = affine.transformed_corners(bboxes, m)
    assert corners.min() >= 0 and corners.max() <= CANVAS - 1
    # On the images: warping onto a canvas padded by 20 px puts no ink outside the 40x40 window,
    # and the window matches the 40x40 warp (so nothing was cropped).
    pad = 20
    big = torch.nn.functional.pad(images := clean[src], (pad, pad, pad, pad))
    shift = torch.tensor([pad, pad], dtype=torch.float32)
    m_big = m.clone()
    m_big[:, :, 2] += shift - m[:, :, :2] @ shift  # T(pad) M T(-pad)
    warped_big = affine.warp(big, m_big)
    inner = warped_big[:, pad:-pad, pad:-pad]
    assert warped_big.sum(dtype=torch.int64) == inner.sum(dtype=torch.int64)
    warped = affine.warp(images, m)
    assert (inner.int() - warped.int()).abs().max() <= 1
    # Some digits come close to an edge: the translation uses the room it has.
    edge = torch.cat([warped[:, :, :2], warped[:, :, -2:]], dim=2).flatten(1).any(1)
    assert edge.any()


def test_digit_too_large_is_centred_and_flagged(clean):
    cfg = AffineConfig(rotation_deg=0.0, shear=0.0, scale_min=2.5, scale_max=2.5)
    bboxes = affine.digit_bboxes(clean[:4])
    p = affine.sample_affine_params(4, cfg, torch.Generator().manual_seed(0), bboxes, CANVAS)
    assert not p["fits"].any()
    corners = affine.transformed_corners(bboxes, affine.affine_matrices(p))
    lo, hi = corners.amin(1), corners.amax(1)
    too_big = hi - lo > CANVAS - 1
    assert too_big.any()
    centred = (lo + hi - (CANVAS - 1)).abs() < 1e-2
    assert centred[too_big].all()  # centred on every axis where it cannot fit


def test_sampling_is_deterministic_and_needs_a_cpu_generator(clean):
    bboxes = affine.digit_bboxes(clean)
    a = affine.sample_affine_params(N, AffineConfig(), torch.Generator().manual_seed(5), bboxes, CANVAS)
    b = affine.sample_affine_params(N, AffineConfig(), torch.Generator().manual_seed(5), bboxes, CANVAS)
    c = affine.sample_affine_params(N, AffineConfig(), torch.Generator().manual_seed(6), bboxes, CANVAS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["angle_deg"], c["angle_deg"])
    wa = affine.warp(clean, affine.affine_matrices(a))
    wb = affine.warp(clean, affine.affine_matrices(b), chunk=7)  # chunking changes nothing
    assert torch.equal(wa, wb)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="CPU generator"):
            affine.sample_affine_params(N, AffineConfig(), torch.Generator("cuda"), bboxes, CANVAS)


def test_sweep_parameters(clean):
    bboxes = affine.digit_bboxes(clean)
    values = torch.tensor([-45.0, 0.0, 30.0]).repeat_interleave(N)
    src = torch.arange(N).repeat(3)
    p = affine.sweep_params("rotation", values, bboxes[src], CANVAS)
    assert torch.equal(p["angle_deg"], values) and torch.equal(p["value"], values)
    assert (p["shear"] == 0).all() and (p["scale_x"] == 1).all() and (p["tx"] == 0).all()
    p = affine.sweep_params("scale", torch.full((N,), 1.5), bboxes, CANVAS)
    assert (p["scale_x"] == 1.5).all() and (p["scale_y"] == 1.5).all()
    assert p["fits"].all()  # 1.5 x 20 px fits on 40 px ...
    assert not affine.sweep_params("scale", torch.full((N,), 2.2), bboxes, CANVAS)["fits"].any()
    p = affine.sweep_params("translate", torch.full((N,), 6.0), bboxes, CANVAS,
                            torch.Generator().manual_seed(0))
    assert torch.allclose(torch.hypot(p["tx"], p["ty"]), torch.full((N,), 6.0), atol=1e-5)
    angles = torch.atan2(p["ty"], p["tx"])
    assert angles.std() > 1.0  # directions spread around the circle
    p = affine.sweep_params("shear", torch.full((N,), 0.3), bboxes, CANVAS)
    assert (p["shear"] == 0.3).all() and (p["angle_deg"] == 0).all()
    with pytest.raises(ValueError, match="unknown sweep factor"):
        affine.sweep_params("flip", values, bboxes[src], CANVAS)


def test_warp_checks_shapes(clean):
    with pytest.raises(ValueError, match=r"expected matrices \(64, 2, 3\)"):
        affine.warp(clean, torch.zeros(N, 3, 3))
    with pytest.raises(ValueError, match="uint8"):
        affine.warp(clean.float(), torch.zeros(N, 2, 3))


def test_warp_rounds_to_uint8(clean):
    p = _identity(N, 19.5, 19.5, tx=0.5, angle_deg=7)
    m = affine.affine_matrices(p)
    f = affine.warp_float(clean, m)
    u = affine.warp(clean, m)
    assert u.dtype == torch.uint8
    assert torch.equal(u, (f * 255).round().clamp(0, 255).to(torch.uint8))
    assert not math.isclose(float(f.mul(255).frac().abs().max()), 0.0)  # really interpolated


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(clean):
    n = 4 * N
    src = torch.arange(N).repeat(4)
    bboxes = affine.digit_bboxes(clean)[src]
    p = affine.sample_affine_params(n, AffineConfig(), torch.Generator().manual_seed(3), bboxes, CANVAS)
    m = affine.affine_matrices(p)
    cpu = affine.warp_float(clean[src], m)
    gpu = affine.warp_float(clean[src].cuda(), m.cuda()).cpu()
    assert (cpu - gpu).abs().max() <= 1e-5
    # uint8 results differ only where the float warp sits on a rounding boundary.
    diff = (affine.warp(clean[src], m).int() - affine.warp(clean[src].cuda(), m.cuda()).cpu().int())
    assert diff.abs().max() <= 1
