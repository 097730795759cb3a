"""Placing 28x28 digits on a larger canvas at integer offsets, batched on the device.

Convention: offsets are (dx, dy) in pixels, positive dx moves the digit right and positive dy
down; offset (0, 0) centres the digit. Pixels pushed past the canvas edge are cropped, as with
the paper's MNIST setup (28x28, shifts up to 2 px, zero padding).
"""

from __future__ import annotations

import torch


def place(
    images: torch.Tensor,
    canvas: int,
    offsets: torch.Tensor | None = None,
    max_shift: int | None = None,
) -> torch.Tensor:
    """Put uint8 digits ``(B, h, w)`` on a zero ``canvas x canvas`` at integer ``offsets (B, 2)``.

    Returns a tensor of the input's dtype, shape ``(B, canvas, canvas)``. No interpolation: every
    pixel value is copied, so the result is exact. Pass ``max_shift`` (a bound on ``|offsets|``)
    in hot loops: without it the bound is read from the tensor, a host synchronisation on CUDA.
    """
    b, h, w = images.shape
    device = images.device
    if offsets is None:
        offsets = torch.zeros(b, 2, dtype=torch.long, device=device)
    offsets = offsets.to(device=device, dtype=torch.long)
    if max_shift is None:
        max_shift = int(offsets.abs().max().item()) if b else 0
    margin = max_shift
    size = canvas + 2 * margin
    out = torch.zeros(b, size, size, dtype=images.dtype, device=device)
    top = (canvas - h) // 2 + margin
    left = (canvas - w) // 2 + margin
    rows = top + offsets[:, 1, None] + torch.arange(h, device=device)  # (B, h)
    cols = left + offsets[:, 0, None] + torch.arange(w, device=device)  # (B, w)
    bidx = torch.arange(b, device=device)[:, None, None]
    out[bidx, rows[:, :, None], cols[:, None, :]] = images
    return out[:, margin : margin + canvas, margin : margin + canvas].contiguous()


def random_offsets(
    n: int, max_shift: int, generator: torch.Generator, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Integer offsets ``(n, 2)`` uniform in ``[-max_shift, max_shift]`` per axis."""
    gen_device = generator.device
    off = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=generator, device=gen_device)
    return off.to(device)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` -> float ``(B, 1, H, W)`` in [0, 1], the models' input."""
    return images.unsqueeze(1).float().div_(255.0)
