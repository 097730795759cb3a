"""Overlapping digits: two test digits of different classes, each shifted, superimposed.

Sabour et al. 2017, Sec. 6 (MultiMNIST) overlays "a digit on top of another digit from the same
set (training or test) but different class"; "each digit is shifted up to 4 pixels in each
direction", on a 36x36 canvas there (our canvas: ``DataConfig.canvas``, 40x40 by default). The
paper trains and tests on such pairs; here the models are trained on single digits only and the
pairs are a test set (our choice). The pixels of
the two digits are combined by a pixel-wise maximum (our choice; the paper does not say how it
adds the two images). Three pure functions, draw -> build -> apply:
:func:`draw_overlap_params` draws the partners and shifts from a CPU generator,
:func:`shift_canvas` moves a batch of canvases by whole pixels, :func:`superimpose` combines two
batches.

Convention (every function here):
    - pixel coordinates ``(x, y)``: x to the right (columns), y down (rows), as in
      :mod:`bench.data.affine`.
    - a shift ``(dx, dy)`` is in whole pixels: positive dx moves the digit right, positive dy
      down. ``out[y, x] = in[y - dy, x - dx]`` where that lies on the canvas, else 0: ink moved
      past an edge is dropped (zero fill, no wrap-around).
    - ``shift[i]`` is ``[[dxA, dyA], [dxB, dyB]]``: digit A is digit i, digit B its partner
      ``partner[i]``; both are shifted independently, each coordinate uniform on the integers
      ``-max_shift .. max_shift`` (Sec. 6: up to 4 px in each direction).
    - ``partner[i]`` is drawn uniformly among the digits j whose class differs from digit i's
      (Sec. 6: "but different class"), so ``partner[i] != i``.
    - the image of pair i is ``max(shift(A), shift(B))`` pixel by pixel (our choice).
"""

from __future__ import annotations

import torch

__all__ = ["draw_overlap_params", "overlap", "shift_canvas", "superimpose"]


def draw_overlap_params(labels: torch.Tensor, max_shift: int,
                        generator: torch.Generator) -> dict[str, torch.Tensor]:
    """For each digit i: a partner of another class and the integer shifts of both digits.

    From ``generator`` in this fixed order, so the draw never depends on the device: one
    ``(N,)`` uniform draw choosing each partner among the digits of the other classes, then one
    ``(N, 2, 2)`` integer draw of the shifts.

    Args:
        labels: ``(N,)`` classes of the digits (any integer dtype, any device).
        max_shift: shifts are drawn on ``-max_shift .. max_shift`` (both ends included).
        generator: a CPU generator (a CUDA one is refused: the draw must not depend on it).

    Returns:
        int64 CPU tensors: ``partner`` ``(N,)`` (an index into ``labels`` with another class) and
        ``shift`` ``(N, 2, 2)`` as ``[[dxA, dyA], [dxB, dyB]]``.

    Raises:
        ValueError: a CUDA generator, a negative ``max_shift``, or a digit whose class is the
            only one present (no partner to draw).
    """
    if generator.device.type != "cpu":
        raise ValueError(f"draw_overlap_params needs a CPU generator, got {generator.device}")
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    y = labels.reshape(-1).long().cpu()
    n = y.numel()
    # The digits sorted by class: those of other classes than c are the sorted list with c's
    # block [start_c, end_c) cut out; the k-th of them is k below start_c, else k + count_c.
    order = torch.sort(y, stable=True).indices
    classes, counts = torch.unique(y, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    which = torch.searchsorted(classes, y)
    start, count = starts[which], counts[which]
    others = n - count
    if n and bool((others == 0).any()):
        raise ValueError("draw_overlap_params: every digit has the same class; no partner exists")
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    k = torch.minimum((u * others).long(), others - 1)  # uniform on 0 .. others-1
    partner = order[torch.where(k < start, k, k + count)]
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2, 2), generator=generator)
    return {"partner": partner, "shift": shift}


def shift_canvas(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Move each canvas by whole pixels ``shifts[i] = (dx, dy)``; zero fill, no wrap-around.

    ``images`` is ``(N, H, W)`` (any dtype, any device), ``shifts`` ``(N, 2)`` integers. Returns a
    new tensor like ``images``. A shift of H or W or more empties the canvas.
    """
    if images.dim() != 3:
        raise ValueError(f"expected images (N, H, W), got {tuple(images.shape)}")
    n, h, w = images.shape
    if shifts.shape != (n, 2):
        raise ValueError(f"expected shifts ({n}, 2), got {tuple(shifts.shape)}")
    s = shifts.to(device=images.device, dtype=torch.long)
    xs = torch.arange(w, device=images.device)[None, :] - s[:, 0:1]  # (N, W) source columns
    ys = torch.arange(h, device=images.device)[None, :] - s[:, 1:2]  # (N, H) source rows
    valid = (((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :])
    rows = ys.clamp(0, h - 1)[:, :, None].expand(n, h, w)
    cols = xs.clamp(0, w - 1)[:, None, :].expand(n, h, w)
    batch = torch.arange(n, device=images.device)[:, None, None].expand(n, h, w)
    out = images[batch, rows, cols]
    return torch.where(valid, out, torch.zeros((), dtype=images.dtype, device=images.device))


def superimpose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The pixel-wise maximum of two batches of canvases of the same shape (our choice of how
    two digits combine: ink never exceeds 255 and the order of the two does not matter)."""
    if a.shape != b.shape:
        raise ValueError(f"expected two batches of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    return torch.maximum(a, b)


def overlap(canvases: torch.Tensor, source: torch.Tensor, source2: torch.Tensor,
            shift: torch.Tensor) -> torch.Tensor:
    """The pairs: ``superimpose(shift_canvas(A, shift[:, 0]), shift_canvas(B, shift[:, 1]))``
    with ``A = canvases[source]`` and ``B = canvases[source2]``; on the canvases' device."""
    dev = canvases.device
    a = shift_canvas(canvases[source.to(dev)], shift[:, 0])
    b = shift_canvas(canvases[source2.to(dev)], shift[:, 1])
    return superimpose(a, b)
