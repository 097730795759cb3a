"""affNIST-style affine transforms: sample parameters on the CPU, build matrices, warp on the device.

The only module that calls Kornia's geometry (one convention for the whole project). Sampling
and applying are separate pure functions, kornia-style: :func:`sample_affine_params` draws from a
dedicated CPU :class:`torch.Generator` (so the parameters do not depend on the device),
:func:`affine_matrices` turns parameters into ``(N, 2, 3)`` pixel matrices, and :func:`warp`
applies them to uint8 canvases on whatever device they live on.

Ranges: affNIST (Tieleman 2013, https://www.cs.toronto.edu/~tijmen/affNIST/) applies "various
reasonable affine transformations" to MNIST digits, "with significant translations involved",
on a 40x40 canvas (the untransformed version centres each 28x28 digit with an edge of 6
background pixels), 32 transformed versions per digit. The ranges of our defaults
(:class:`bench.config.AffineConfig`) are our choice, not numbers quoted from that page: rotation
uniform in +-20 degrees, shear factor uniform in +-0.2 along x (``shear_axis = "x"``), scale_x
and scale_y independently uniform in [0.8, 1.2] (``scale_distribution = "uniform"``; with
``"log-uniform"``, log(scale) is uniform in [log 0.8, log 1.2]), then a translation uniform over
the positions that keep the transformed digit's bounding box (and all its ink) on the canvas.

Convention (every function here):
    - pixel coordinates ``(x, y)``: x to the right, y down, origin at the centre of the top-left
      pixel; with ``align_corners=True`` pixel centres are the integers ``0 .. C-1``.
    - ``angle_deg``: degrees, positive turns the digit CLOCKWISE as displayed (Kornia's
      ``get_affine_matrix2d`` convention).
    - ``shear``: a shear *factor* s (affNIST's "0.2") about the digit's centre, along
      ``shear_axis`` (an argument of :func:`affine_matrices`, ``AffineConfig.shear_axis`` for the
      affNIST-style set; the sweeps always use "x"). "x" (the default): horizontal,
      ``x' = x - s * (y - cy)``, so a positive s leans the digit to the right like italics.
      "y": vertical, ``y' = y - s * (x - cx)``, so a positive s raises the digit's right side.
      Kornia takes the shear as angles in radians with ``x' = x - tan(sx) (y - cy)`` and
      ``y' = y - tan(sy) (x - cx)`` (only one of them non-zero here), so we pass
      ``sx = atan(s), sy = 0`` for "x" and ``sx = 0, sy = atan(s)`` for "y".
    - ``scale_x``, ``scale_y``: factors along the image axes, applied after the shear and before
      the rotation, about the digit's centre. Drawn independently per axis, uniform in
      ``[scale_min, scale_max]`` or, with ``scale_distribution = "log-uniform"``, as
      ``exp(uniform(log scale_min, log scale_max))``.
    - ``tx``, ``ty``: pixels, applied last; positive tx moves the digit right, positive ty down.
    - ``center``: the centre of the digit's ink bounding box (not of the canvas), so that
      rotation, shear and scale leave the digit where it was and the translation alone moves it.
    - matrices map source pixels to destination pixels (forward), as ``warp_affine`` expects.
"""

from __future__ import annotations

import math

import torch
from kornia.geometry.transform import get_affine_matrix2d, warp_affine

from bench.config import AffineConfig

__all__ = [
    "PARAM_KEYS",
    "affine_matrices",
    "describe_affnist",
    "digit_bboxes",
    "fit_translation_bounds",
    "sample_affine_params",
    "sweep_params",
    "transformed_corners",
    "warp",
    "warp_float",
]

PARAM_KEYS = ("angle_deg", "shear", "scale_x", "scale_y", "tx", "ty", "center_x", "center_y")

# Images per warp call: small chunks keep the sampling grid in cache (measured on 2 CPU cores:
# 512 -> ~65k images/s, 8,000 -> ~20k images/s for 40x40), and bound memory on the GPU.
CPU_CHUNK = 512
CUDA_CHUNK = 65_536

# A transformed bounding box must lie this far inside the limits, so that float rounding in the
# warp cannot put a sliver of ink on the pixel just outside the canvas.
_FIT_EPS = 1e-3

# The values of AffineConfig.shear_axis (what each maps) and AffineConfig.scale_distribution.
_SHEAR_AXES = {
    "x": "horizontal, x' = x - s * (y - cy), a positive s leans the digit right",
    "y": "vertical, y' = y - s * (x - cx), a positive s raises the digit's right side",
}
_SCALE_DISTRIBUTIONS = ("uniform", "log-uniform")


def _check_cfg(cfg: AffineConfig) -> None:
    """The string fields of ``cfg`` (profiles are checked on loading; this catches direct use)."""
    if cfg.shear_axis not in _SHEAR_AXES:
        raise ValueError(f"shear_axis must be x or y, got {cfg.shear_axis!r}")
    if cfg.scale_distribution not in _SCALE_DISTRIBUTIONS:
        raise ValueError(
            f"scale_distribution must be uniform or log-uniform, got {cfg.scale_distribution!r}"
        )


# The affNIST page (Tieleman 2013) and two secondary sources of its ranges; the page's own list of
# ranges was not readable in the copy available to us.
AFFNIST_PAGE = "affNIST page (Tieleman 2013, https://www.cs.toronto.edu/~tijmen/affNIST/)"
TFF_EMNIST = ("TensorFlow Federated, tff.simulation.datasets.emnist.get_infinite docs "
              "(\"approximately equivalent\" to affNIST)")
TURKES = "renata-turkes/turkevs2022on (GitHub; \"as in affNIST\")"


def describe_affnist(cfg: AffineConfig, canvas: int = 40) -> list[str]:
    """The affNIST-style ranges of ``cfg``, what the two secondary sources say, and the
    choices that are ours: one line per item, for ``bench data --describe-affnist``."""
    _check_cfg(cfg)
    return [
        f"sources: {AFFNIST_PAGE}, its list of ranges not read here; secondary: "
        f"[TFF] {TFF_EMNIST}; [turkevs] {TURKES}",
        f"rotation: ours uniform in +-{cfg.rotation_deg:g} degrees | TFF: -20..20 degrees | "
        "turkevs: +-20 degrees",
        f"shear: ours a factor uniform in +-{cfg.shear:g} | TFF: -0.2..0.2 | turkevs: +-0.2",
        f"scale: ours {cfg.scale_distribution} in [{cfg.scale_min:g}, {cfg.scale_max:g}], x and "
        "y independent (data.affine.scale_distribution) | TFF: 0.8..1.25 log-uniform per axis "
        "| turkevs: stretch 0.8..1.2",
        f"translation (our choice): uniform over the positions that keep the transformed "
        f"digit's ink bounding box on the {canvas}x{canvas} canvas",
        f"shear axis (our choice): {cfg.shear_axis}, {_SHEAR_AXES[cfg.shear_axis]} "
        "(data.affine.shear_axis) | TFF: shear of x to y",
        "composition order (our choice): shear, then scale, then rotation (about the digit's "
        "centre), then translation | TFF: rotation, shear, scale, translation",
    ]


def digit_bboxes(images: torch.Tensor) -> torch.Tensor:
    """Inclusive ink bounding boxes ``(N, 4)`` as ``(x0, y0, x1, y1)`` int64, batched.

    ``images`` is uint8 ``(N, H, W)`` on any device. An all-zero image gets the zero-size box at
    the canvas centre (MNIST has none, but a box must exist for every image).
    """
    if images.dim() != 3:
        raise ValueError(f"expected images (N, H, W), got {tuple(images.shape)}")
    n, h, w = images.shape
    cols = images.ne(0).any(dim=1)  # (N, W)
    rows = images.ne(0).any(dim=2)  # (N, H)
    xs = torch.arange(w, device=images.device)
    ys = torch.arange(h, device=images.device)
    big = max(h, w)
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -1).amax(dim=1)
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -1).amax(dim=1)
    empty = ~cols.any(dim=1)
    x0 = torch.where(empty, w // 2, x0)
    x1 = torch.where(empty, w // 2, x1)
    y0 = torch.where(empty, h // 2, y0)
    y1 = torch.where(empty, h // 2, y1)
    return torch.stack([x0, y0, x1, y1], dim=1).long()


def _centers(bboxes: torch.Tensor) -> torch.Tensor:
    b = bboxes.to(torch.float64)
    return torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], dim=1)


def affine_matrices(
    params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32, shear_axis: str = "x"
) -> torch.Tensor:
    """Forward pixel matrices ``(N, 2, 3)`` from parameters (see the module's Convention).

    ``params`` holds 1-D tensors ``angle_deg, shear, scale_x, scale_y, tx, ty, center_x,
    center_y`` of equal length N; ``shear`` acts along ``shear_axis`` ("x" or "y"). Computed in
    float64 on the parameters' device, then cast.
    """
    if shear_axis not in _SHEAR_AXES:
        raise ValueError(f"shear_axis must be x or y, got {shear_axis!r}")
    missing = [k for k in PARAM_KEYS if k not in params]
    if missing:
        raise ValueError(f"affine_matrices: missing parameters {missing}")
    p = {k: params[k].to(torch.float64).reshape(-1) for k in PARAM_KEYS}
    n = p["angle_deg"].numel()
    if any(v.numel() != n for v in p.values()):
        raise ValueError(f"affine_matrices: parameters of unequal length (expected {n})")
    shear = torch.atan(p["shear"])  # a shear factor s is the angle atan(s) (Convention)
    zero = torch.zeros_like(p["shear"])
    sx, sy = (shear, zero) if shear_axis == "x" else (zero, shear)
    m = get_affine_matrix2d(
        translations=torch.stack([p["tx"], p["ty"]], dim=1),
        center=torch.stack([p["center_x"], p["center_y"]], dim=1),
        scale=torch.stack([p["scale_x"], p["scale_y"]], dim=1),
        angle=p["angle_deg"],
        sx=sx,
        sy=sy,
    )
    return m[:, :2, :].to(dtype)


def transformed_corners(bboxes: torch.Tensor, matrices: torch.Tensor, pad: float = 0.0) -> torch.Tensor:
    """The four corners of each box grown by ``pad`` px, mapped by ``matrices``: ``(N, 4, 2)``."""
    b = bboxes.to(torch.float64)
    x0, y0, x1, y1 = b[:, 0] - pad, b[:, 1] - pad, b[:, 2] + pad, b[:, 3] + pad
    corners = torch.stack(
        [torch.stack([x0, y0], 1), torch.stack([x1, y0], 1),
         torch.stack([x0, y1], 1), torch.stack([x1, y1], 1)], dim=1
    )  # (N, 4, 2)
    m = matrices.to(torch.float64)
    return corners @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def fit_translation_bounds(
    bboxes: torch.Tensor, matrices: torch.Tensor, canvas: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the interval ``[lo, hi]`` ``(N, 2)`` of extra translations keeping the digit on the canvas.

    Two conditions, both required: (1) affNIST's rule, the corners of the transformed ink
    bounding box (pixel centres) lie in ``[0, canvas - 1]``; (2) no ink is cropped by the
    bilinear warp: a source ink pixel colours destination pixels within one source pixel of its
    image, so the ink box grown by 1 px must map into ``[-1, canvas]`` (a destination pixel at -1
    or ``canvas`` would receive weight 0). (1) binds when shrinking, (2) when enlarging.
    ``lo > hi`` on an axis means the transformed digit is larger than the canvas.
    """
    tight = transformed_corners(bboxes, matrices)
    grown = transformed_corners(bboxes, matrices, pad=1.0)
    lo = torch.maximum(-tight.amin(dim=1), -1.0 - grown.amin(dim=1)) + _FIT_EPS
    hi = torch.minimum(canvas - 1.0 - tight.amax(dim=1), float(canvas) - grown.amax(dim=1)) - _FIT_EPS
    return lo, hi


def _scales(u: torch.Tensor, cfg: AffineConfig) -> torch.Tensor:
    """Uniforms ``u`` in [0, 1) mapped to scale factors per ``cfg.scale_distribution``."""
    if cfg.scale_distribution == "uniform":
        return cfg.scale_min + u * (cfg.scale_max - cfg.scale_min)
    log_lo, log_hi = math.log(cfg.scale_min), math.log(cfg.scale_max)
    return torch.exp(log_lo + u * (log_hi - log_lo))


def sample_affine_params(
    n: int,
    cfg: AffineConfig,
    generator: torch.Generator,
    digit_bboxes: torch.Tensor,
    canvas: int,
) -> dict[str, torch.Tensor]:
    """Draw ``n`` affNIST-style transforms on the CPU; the translation keeps each digit on the canvas.

    Per image, from ``generator`` in this fixed order (one ``(n, 6)`` uniform draw, so the
    values never depend on the device): rotation in ``+-cfg.rotation_deg`` degrees, shear
    factor in ``+-cfg.shear`` (along ``cfg.shear_axis``), scale_x and scale_y in
    ``[cfg.scale_min, cfg.scale_max]`` (uniform, or per ``cfg.scale_distribution = "log-uniform"``
    the same uniforms u mapped to ``exp(log lo + u (log hi - log lo))``), then two uniforms
    placing the translation inside the interval that keeps the transformed digit's ink on the
    canvas (:func:`fit_translation_bounds`), as affNIST keeps the digit's bounding box inside
    40x40. Where the transformed digit is larger than the canvas on an axis (never with the
    affNIST ranges on 40x40), the translation centres it on that axis (the middle of the empty
    interval), some ink is cropped, and ``fits`` is False. The parameters do not record
    ``cfg.shear_axis``: build their matrices with ``affine_matrices(p, shear_axis=cfg.shear_axis)``.

    Args:
        n: number of transforms; ``digit_bboxes`` must have ``n`` rows.
        cfg: the ranges.
        generator: a CPU generator (a CUDA one is refused: the draw must not depend on it).
        digit_bboxes: ``(n, 4)`` ink boxes ``(x0, y0, x1, y1)`` of the images to be warped.
        canvas: the side of the square canvas.

    Returns:
        float32 CPU tensors ``(n,)``: ``angle_deg, shear, scale_x, scale_y, tx, ty, center_x,
        center_y``, plus ``fits`` (bool).
    """
    if generator.device.type != "cpu":
        raise ValueError(f"sample_affine_params needs a CPU generator, got {generator.device}")
    if digit_bboxes.shape != (n, 4):
        raise ValueError(f"expected digit_bboxes ({n}, 4), got {tuple(digit_bboxes.shape)}")
    _check_cfg(cfg)
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    bboxes = digit_bboxes.cpu()
    center = _centers(bboxes)
    params = {
        "angle_deg": (2 * u[:, 0] - 1) * cfg.rotation_deg,
        "shear": (2 * u[:, 1] - 1) * cfg.shear,
        "scale_x": _scales(u[:, 2], cfg),
        "scale_y": _scales(u[:, 3], cfg),
        "tx": torch.zeros(n, dtype=torch.float64),
        "ty": torch.zeros(n, dtype=torch.float64),
        "center_x": center[:, 0],
        "center_y": center[:, 1],
    }
    m = affine_matrices(params, torch.float64, shear_axis=cfg.shear_axis)
    lo, hi = fit_translation_bounds(bboxes, m, canvas)
    fits = (lo <= hi).all(dim=1)
    t = torch.where(lo <= hi, lo + u[:, 4:6] * (hi - lo), (lo + hi) / 2)
    params["tx"], params["ty"] = t[:, 0], t[:, 1]
    out = {k: v.to(torch.float32) for k, v in params.items()}
    out["fits"] = fits
    return out


def sweep_params(
    factor: str,
    values: torch.Tensor,
    digit_bboxes: torch.Tensor,
    canvas: int,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """One factor at a time: every image gets ``values[i]`` of ``factor``, the rest identity.

    ``factor`` is ``rotation`` (degrees), ``scale`` (isotropic), ``shear`` (factor) or
    ``translate`` (pixels along a direction drawn uniformly on the circle per image from the CPU
    ``generator``). Returns the same keys as :func:`sample_affine_params` plus ``value`` (the
    magnitude) and ``fits`` (False where some ink leaves the canvas, e.g. scale 1.5).
    """
    n = values.numel()
    values = values.cpu().to(torch.float64).reshape(-1)
    bboxes = digit_bboxes.cpu()
    center = _centers(bboxes)
    zeros, ones = torch.zeros(n, dtype=torch.float64), torch.ones(n, dtype=torch.float64)
    params = {
        "angle_deg": zeros.clone(), "shear": zeros.clone(), "scale_x": ones.clone(),
        "scale_y": ones.clone(), "tx": zeros.clone(), "ty": zeros.clone(),
        "center_x": center[:, 0], "center_y": center[:, 1],
    }
    if factor == "rotation":
        params["angle_deg"] = values
    elif factor == "scale":
        params["scale_x"], params["scale_y"] = values, values.clone()
    elif factor == "shear":
        params["shear"] = values
    elif factor == "translate":
        if generator is None or generator.device.type != "cpu":
            raise ValueError("sweep_params('translate') needs a CPU generator for the directions")
        theta = torch.rand(n, generator=generator, dtype=torch.float64) * (2 * math.pi)
        params["tx"], params["ty"] = values * torch.cos(theta), values * torch.sin(theta)
    else:
        raise ValueError(f"unknown sweep factor {factor!r} (rotation, scale, shear, translate)")
    lo, hi = fit_translation_bounds(bboxes, affine_matrices(params, torch.float64), canvas)
    out = {k: v.to(torch.float32) for k, v in params.items()}
    out["value"] = values.to(torch.float32)
    out["fits"] = ((lo <= 0) & (hi >= 0)).all(dim=1)
    return out


def _check_warp_args(images: torch.Tensor, matrices: torch.Tensor) -> None:
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images (N, H, W), got {images.dtype} {tuple(images.shape)}")
    if matrices.dim() != 3 or matrices.shape[1:] != (2, 3) or matrices.shape[0] != images.shape[0]:
        raise ValueError(
            f"expected matrices ({images.shape[0]}, 2, 3), got {tuple(matrices.shape)}"
        )


def _warp_chunk(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` -> float ``(B, H, W)`` in pixel units [0, 255] (bilinear, zero padding).

    Warping raw 0..255 values instead of [0, 1] saves a division: the bilinear warp is linear,
    and integers up to 255 are exact in float32.
    """
    h, w = images.shape[1:]
    src = images.unsqueeze(1).to(torch.float32)
    m = matrices.to(device=images.device, dtype=torch.float32)
    out = warp_affine(src, m, dsize=(h, w), mode="bilinear", padding_mode="zeros", align_corners=True)
    return out.squeeze(1)


def _chunk(device: torch.device, chunk: int | None) -> int:
    return chunk or (CUDA_CHUNK if device.type == "cuda" else CPU_CHUNK)


def warp_float(
    images: torch.Tensor, matrices: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """The bilinear warp before rounding: float32 ``(N, H, W)`` in [0, 1], on the images' device.

    For agreement checks (CPU versus CUDA); the test sets use :func:`warp`.
    """
    _check_warp_args(images, matrices)
    step = _chunk(images.device, chunk)
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    for i in range(0, images.shape[0], step):
        out[i : i + step] = _warp_chunk(images[i : i + step], matrices[i : i + step])
    return out.div_(255.0)


def warp(images: torch.Tensor, matrices: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Warp uint8 canvases ``(N, H, W)`` by forward matrices ``(N, 2, 3)``; uint8 out, same device.

    Bilinear, zeros outside the source, ``align_corners=True`` (pixel centres on integers),
    then rounded to the nearest integer (ties to even) and clamped to [0, 255]. Processed in
    chunks of ``chunk`` images (default 512 on the CPU, 65,536 on CUDA) to bound memory.
    """
    _check_warp_args(images, matrices)
    step = _chunk(images.device, chunk)
    out = torch.empty(images.shape, dtype=torch.uint8, device=images.device)
    for i in range(0, images.shape[0], step):
        f = _warp_chunk(images[i : i + step], matrices[i : i + step])
        out[i : i + step] = f.round_().clamp_(0, 255).to(torch.uint8)
    return out
