"""Part-scrambled ("Picasso") and displaced-parts digits: exact pixel moves, no interpolation.

The capsule argument (Sabour et al. 2017, Sec. 1; Hinton's "Picasso problem") is that a
max-pooling ConvNet still recognises a face whose parts are in the wrong places, while capsules,
which check the parts' relative poses, should not. We probe it with two edits of a centred MNIST
digit, both batched over images (a Python loop only over the g*g cells, never over images):

- *Scramble*: cut the digit's ink bounding box into a ``g x g`` grid and permute the cells.
  The box is first grown to a multiple of ``g`` on each axis (centred on the ink box, shifted
  back inside the canvas if it would cross an edge), so every cell has the same size and the
  permutation is a bijection of canvas pixels: the multiset of pixel values is preserved
  exactly. The grown margin holds background only (the ink box is tight).
- *Displace*: keep every cell in place but push it ``d`` pixels away from the box centre along
  each axis where the cell is off-centre (for g=2 the four quadrants move diagonally apart; for
  g=3 the middle cell stays, edge cells move along one axis, corner cells along both). The moved
  cells never overlap. A pixel pushed past the canvas edge is dropped (cropped, like a shift of
  the paper's MNIST setup) and counted in ``clipped``; with a 40x40 canvas and d=3 nothing is.

Convention: ``perms[i, k]`` is the source cell of destination cell ``k`` (cells numbered row by
row, ``k = row * g + col``); out cell k = in cell ``perms[i, k]``. The identity permutation
returns the input exactly.
"""

from __future__ import annotations

import torch

from bench.data.affine import digit_bboxes
from bench.errors import BenchError

__all__ = [
    "apply_cell_permutation",
    "cell_boxes",
    "displace_cells",
    "random_cell_permutations",
    "scramble",
]

# Redraws of a permutation whose result equals the original (two identical cells swapped, or
# the identity) before falling back to a cyclic shift of the cells.
_MAX_REDRAWS = 8


def cell_boxes(bboxes: torch.Tensor, g: int, canvas: int) -> torch.Tensor:
    """The grown boxes ``(N, 4)`` as ``(x_start, y_start, cell_w, cell_h)``: ``g*cell_w`` px wide.

    Each side of the ink box is rounded up to a multiple of ``g``, centred on the ink box, and
    moved back inside the canvas if it would cross an edge.
    """
    b = bboxes.long()
    w = b[:, 2] - b[:, 0] + 1
    h = b[:, 3] - b[:, 1] + 1
    cw = (w + g - 1) // g
    ch = (h + g - 1) // g
    if bool((cw * g > canvas).any() | (ch * g > canvas).any()):
        raise BenchError(
            f"scramble: a digit's box grown to a multiple of g={g} exceeds the {canvas}px canvas"
        )
    xs = (b[:, 0] - (cw * g - w) // 2).clamp(min=0)
    ys = (b[:, 1] - (ch * g - h) // 2).clamp(min=0)
    xs = torch.minimum(xs, canvas - cw * g)
    ys = torch.minimum(ys, canvas - ch * g)
    return torch.stack([xs, ys, cw, ch], dim=1)


def _cell_coords(boxes: torch.Tensor, g: int, h: int, w: int):
    """Per pixel: inside-box mask, cell row/col, offsets inside the cell; all ``(N, H, W)``."""
    device = boxes.device
    xs, ys, cw, ch = (boxes[:, i, None, None] for i in range(4))
    rr = torch.arange(h, device=device)[None, :, None]
    cc = torch.arange(w, device=device)[None, None, :]
    dx, dy = cc - xs, rr - ys
    inside = (dx >= 0) & (dx < cw * g) & (dy >= 0) & (dy < ch * g)
    col = (dx.clamp(min=0) // cw).clamp(max=g - 1)
    row = (dy.clamp(min=0) // ch).clamp(max=g - 1)
    shape = inside.shape
    return (inside, row.expand(shape), col.expand(shape),
            (dy - row * ch).expand(shape), (dx - col * cw).expand(shape))


def apply_cell_permutation(
    images: torch.Tensor, bboxes: torch.Tensor, g: int, perms: torch.Tensor
) -> torch.Tensor:
    """Permute the ``g x g`` cells of each digit's grown ink box: uint8 ``(N, C, C)`` in and out.

    ``perms`` is ``(N, g*g)`` int64, ``perms[i, k]`` the source cell of destination cell ``k``.
    A pure gather, so pixel values are moved, never changed.
    """
    n, h, w = images.shape
    if perms.shape != (n, g * g):
        raise ValueError(f"expected perms ({n}, {g * g}), got {tuple(perms.shape)}")
    boxes = cell_boxes(bboxes.to(images.device), g, min(h, w))
    inside, row, col, oy, ox = _cell_coords(boxes, g, h, w)
    xs, ys, cw, ch = (boxes[:, i, None, None] for i in range(4))
    src_cell = perms.to(images.device).gather(1, (row * g + col).reshape(n, -1)).reshape(n, h, w)
    src_r = ys + (src_cell // g) * ch + oy
    src_c = xs + (src_cell % g) * cw + ox
    rr = torch.arange(h, device=images.device)[None, :, None].expand(n, h, w)
    cc = torch.arange(w, device=images.device)[None, None, :].expand(n, h, w)
    idx = torch.where(inside, src_r * w + src_c, rr * w + cc)
    return images.reshape(n, -1).gather(1, idx.reshape(n, -1)).reshape(n, h, w)


def random_cell_permutations(n: int, g: int, generator: torch.Generator) -> torch.Tensor:
    """``(n, g*g)`` uniformly random permutations from a CPU generator (may include the identity)."""
    return torch.rand(n, g * g, generator=generator).argsort(dim=1)


def scramble(
    images: torch.Tensor,
    g: int,
    generator: torch.Generator,
    bboxes: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scramble each digit's ``g x g`` cells with a seeded permutation that changes the image.

    A drawn permutation that leaves an image unchanged (the identity, or only identical cells,
    e.g. two blank ones, swapped) is redrawn, up to 8 times, then replaced by the cyclic shift
    ``k -> k+1`` of the cells. Returns ``(scrambled uint8 (N, C, C), perms (N, g*g) int64 CPU)``.
    """
    if g < 2:
        raise ValueError(f"scramble needs g >= 2, got {g}")
    n = images.shape[0]
    if bboxes is None:
        bboxes = digit_bboxes(images)
    perms = random_cell_permutations(n, g, generator)
    out = apply_cell_permutation(images, bboxes, g, perms)
    redo = out.eq(images).flatten(1).all(dim=1).nonzero().flatten().cpu()
    for attempt in range(_MAX_REDRAWS + 1):
        if redo.numel() == 0:
            break
        if attempt < _MAX_REDRAWS:  # a fresh draw for every image keeps the stream simple
            perms[redo] = random_cell_permutations(n, g, generator)[redo]
        else:
            perms[redo] = torch.roll(torch.arange(g * g), -1)
        dev = redo.to(images.device)
        boxes = bboxes[redo.to(bboxes.device)]
        out[dev] = apply_cell_permutation(images[dev], boxes, g, perms[redo])
        same = out[dev].eq(images[dev]).flatten(1).all(dim=1).cpu()
        redo = redo[same]
    return out, perms


def displace_cells(
    images: torch.Tensor, g: int, d: int, bboxes: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Push each of the ``g x g`` cells ``d`` px away from the box centre (integer moves, no overlap).

    Returns ``(displaced uint8 (N, C, C), clipped (N,) int64)``: ``clipped`` counts the ink
    (nonzero) pixels pushed off the canvas and dropped; where it is 0 the multiset of pixel
    values is preserved exactly.
    """
    n, h, w = images.shape
    if bboxes is None:
        bboxes = digit_bboxes(images)
    boxes = cell_boxes(bboxes.to(images.device), g, min(h, w))
    inside, row, col, _, _ = _cell_coords(boxes, g, h, w)
    # Direction of each cell from the centre: -1, 0 (middle cell, odd g) or +1 per axis.
    sx = torch.sign(2 * col - (g - 1))
    sy = torch.sign(2 * row - (g - 1))
    rr = torch.arange(h, device=images.device)[None, :, None]
    cc = torch.arange(w, device=images.device)[None, None, :]
    flat = images.reshape(n, -1)
    out = torch.zeros_like(images)
    # A gather per direction (at most 9), not a scatter: deterministic on every device. Output
    # pixel q takes source q - direction * d when that source lies in a cell with that direction.
    for dy in (-1, 0, 1) if g % 2 else (-1, 1):
        for dx in (-1, 0, 1) if g % 2 else (-1, 1):
            r, c = rr - dy * d, cc - dx * d
            valid = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            idx = (r.clamp(0, h - 1) * w + c.clamp(0, w - 1)).expand(n, h, w).reshape(n, -1)
            src_inside, src_sx, src_sy, src = (
                t.reshape(n, -1).gather(1, idx).reshape(n, h, w) for t in (inside, sx, sy, flat)
            )
            take = valid & src_inside & src_sx.eq(dx) & src_sy.eq(dy)
            out = torch.where(take, src, out)
    ty, tx = rr + sy * d, cc + sx * d
    off = (ty < 0) | (ty >= h) | (tx < 0) | (tx >= w)
    clipped = (inside & off & images.ne(0)).flatten(1).sum(dim=1)
    return out, clipped.cpu()
