"""affNIST-style transforms: ranges, conventions (signs and units), fit inside the canvas, determinism."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bench.config import AffineConfig, load_profile
from bench.data import affine
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.errors import BenchError

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


# --------------------------------------------------------------------------------------------
# The scale distribution and the shear axis (AffineConfig.scale_distribution, .shear_axis)


def _literal_matrix(angle_deg, shear, scale_x, scale_y, tx, ty, cx, cy, axis="x") -> np.ndarray:
    """The Convention written out: M = T(t) T(c) R(angle) S(scale) Sh T(-c), forward, 2x3."""
    a = math.radians(angle_deg)
    t_c = np.array([[1.0, 0.0, tx + cx], [0.0, 1.0, ty + cy], [0.0, 0.0, 1.0]])
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    scale = np.diag([scale_x, scale_y, 1.0])
    if axis == "x":  # x' = x - s y (about the origin; T(c), T(-c) move it to the centre)
        sh = np.array([[1.0, -shear, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    else:  # y' = y - s x
        sh = np.array([[1.0, 0.0, 0.0], [-shear, 1.0, 0.0], [0.0, 0.0, 1.0]])
    minus_c = np.array([[1.0, 0.0, -cx], [0.0, 1.0, -cy], [0.0, 0.0, 1.0]])
    return (t_c @ rot @ scale @ sh @ minus_c)[:2]


def _literal_translation(bbox, m0: np.ndarray, u: float, v: float) -> tuple[float, float]:
    """fit_translation_bounds written out for one box and a matrix without translation."""
    x0, y0, x1, y1 = (float(b) for b in bbox)

    def corners(pad):
        pts = np.array([[x0 - pad, y0 - pad], [x1 + pad, y0 - pad], [x0 - pad, y1 + pad],
                        [x1 + pad, y1 + pad]])
        return pts @ m0[:, :2].T + m0[:, 2]

    tight, grown = corners(0.0), corners(1.0)
    lo = np.maximum(-tight.min(0), -1.0 - grown.min(0)) + 1e-3
    hi = np.minimum(CANVAS - 1.0 - tight.max(0), CANVAS - grown.max(0)) - 1e-3
    t = lo + np.array([u, v]) * (hi - lo)
    return float(t[0]), float(t[1])


def test_defaults_reproduce_the_uniform_x_shear_draws_and_matrices(clean):
    cfg = AffineConfig()
    assert (cfg.scale_distribution, cfg.shear_axis) == ("uniform", "x")
    bboxes = affine.digit_bboxes(clean)
    p = affine.sample_affine_params(N, cfg, torch.Generator().manual_seed(7), bboxes, CANVAS)
    # The draw: one (N, 6) float64 uniform draw from the generator, mapped linearly.
    u = torch.rand(N, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(p["angle_deg"], ((2 * u[:, 0] - 1) * 20.0).float())
    assert torch.equal(p["shear"], ((2 * u[:, 1] - 1) * 0.2).float())
    assert torch.equal(p["scale_x"], (0.8 + u[:, 2] * (1.2 - 0.8)).float())
    assert torch.equal(p["scale_y"], (0.8 + u[:, 3] * (1.2 - 0.8)).float())
    m = affine.affine_matrices(p)
    m64 = affine.affine_matrices(p, torch.float64)
    assert torch.equal(m, affine.affine_matrices(p, shear_axis="x"))
    u = u.numpy()
    for i in range(N):
        b = bboxes[i].tolist()
        cx, cy = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        angle, shear = (2 * u[i, 0] - 1) * 20.0, (2 * u[i, 1] - 1) * 0.2
        sx, sy = 0.8 + u[i, 2] * (1.2 - 0.8), 0.8 + u[i, 3] * (1.2 - 0.8)
        m0 = _literal_matrix(angle, shear, sx, sy, 0.0, 0.0, cx, cy)
        tx, ty = _literal_translation(b, m0, u[i, 4], u[i, 5])
        assert (p["tx"][i].item(), p["ty"][i].item()) == pytest.approx((tx, ty), abs=1e-5)
        expected = _literal_matrix(*(p[k][i].item() for k in affine.PARAM_KEYS))
        np.testing.assert_allclose(m64[i].numpy(), expected, rtol=0, atol=1e-12)
        assert np.array_equal(m[i].numpy(), expected.astype(np.float32))  # the stored float32


def test_log_uniform_scale_has_uniform_log(clean):
    lo, hi, n = 0.8, 1.25, 20_000
    cfg = AffineConfig(scale_min=lo, scale_max=hi, scale_distribution="log-uniform")
    bboxes = affine.digit_bboxes(clean).repeat(n // N + 1, 1)[:n]
    p = affine.sample_affine_params(n, cfg, torch.Generator().manual_seed(11), bboxes, CANVAS)
    uniform_log = stats.uniform(loc=math.log(lo), scale=math.log(hi) - math.log(lo)).cdf
    for k in ("scale_x", "scale_y"):
        s = p[k].double().numpy()
        assert lo - 1e-6 <= s.min() and s.max() <= hi + 1e-6
        assert stats.kstest(np.log(s), uniform_log).pvalue > 0.01
    assert abs(np.corrcoef(p["scale_x"].numpy(), p["scale_y"].numpy())[0, 1]) < 0.05
    assert p["fits"].all()
    # The same generator calls in the same order: the other draws are those of the default, and
    # log(scale) is the same uniform mapped to [log lo, log hi].
    q = affine.sample_affine_params(n, dataclasses.replace(cfg, scale_distribution="uniform"),
                                    torch.Generator().manual_seed(11), bboxes, CANVAS)
    assert torch.equal(p["angle_deg"], q["angle_deg"]) and torch.equal(p["shear"], q["shear"])
    u = (q["scale_x"].double() - lo) / (hi - lo)
    expected = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    assert torch.allclose(p["scale_x"].double(), expected, rtol=1e-6, atol=0)
    # Power: the uniform draw's log is far from uniform at this n.
    assert stats.kstest(np.log(q["scale_x"].double().numpy()), uniform_log).pvalue < 1e-6


def test_shear_axis_y_is_the_vertical_shear():
    s = 0.5
    m = affine.affine_matrices(_identity(1, 4, 4, shear=s), shear_axis="y")
    # y' = y - s (x - cx): the hand-written matrix [[1, 0, 0], [-s, 1, s cx]].
    assert m[0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-7)
    assert m[0, 1].tolist() == pytest.approx([-s, 1.0, s * 4])
    img = torch.zeros(1, 9, 9, dtype=torch.uint8)
    img[0, 4, 4:8] = 255  # a horizontal bar from the centre (4, 4) to the right
    out = affine.warp(img, affine.affine_matrices(_identity(1, 4, 4, shear=1.0), shear_axis="y"))
    assert _ink(out) == {(4, 4), (5, 3), (6, 2), (7, 1)}  # the right end moved up
    # With every parameter set, the composition order of the Convention holds for "y" too.
    values = dict(angle_deg=30.0, shear=0.3, scale_x=1.1, scale_y=0.9, tx=2.0, ty=-1.0)
    p = _identity(1, 10.0, 12.0, **values)
    m = affine.affine_matrices(p, torch.float64, shear_axis="y")
    expected = _literal_matrix(*(p[k][0].item() for k in affine.PARAM_KEYS), axis="y")
    np.testing.assert_allclose(m[0].numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="shear_axis must be x or y"):
        affine.affine_matrices(p, shear_axis="z")


def test_sampling_along_y_keeps_the_draws_and_the_digit_on_the_canvas(clean):
    bboxes = affine.digit_bboxes(clean)
    x = affine.sample_affine_params(N, AffineConfig(), torch.Generator().manual_seed(4), bboxes, CANVAS)
    cfg = AffineConfig(shear_axis="y")
    y = affine.sample_affine_params(N, cfg, torch.Generator().manual_seed(4), bboxes, CANVAS)
    for k in ("angle_deg", "shear", "scale_x", "scale_y"):
        assert torch.equal(x[k], y[k])
    assert not torch.equal(x["tx"], y["tx"])  # the bounds follow the sheared box
    corners = affine.transformed_corners(bboxes, affine.affine_matrices(y, shear_axis="y"))
    assert corners.min() >= 0 and corners.max() <= CANVAS - 1


@pytest.mark.parametrize(("key", "value", "allowed"), [
    ("scale_distribution", "normal", "uniform or log-uniform"),
    ("shear_axis", "z", "x or y"),
])
def test_bad_scale_distribution_or_shear_axis_is_a_one_line_error(clean, key, value, allowed):
    with pytest.raises(BenchError, match=f"'data.affine.{key}' must be {allowed}, got '{value}'") as e:
        load_profile("smoke", [f"data.affine.{key}={value}"])
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"{key} must be {allowed}"):  # a config built directly
        affine.sample_affine_params(N, AffineConfig(**{key: value}), torch.Generator().manual_seed(0),
                                    affine.digit_bboxes(clean), CANVAS)
    good = load_profile("smoke", ["data.affine.scale_distribution=log-uniform",
                                  "data.affine.shear_axis=y"]).data.affine
    assert (good.scale_distribution, good.shear_axis) == ("log-uniform", "y")
