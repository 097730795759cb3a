"""Part-scrambled and displaced-parts digits: the invariants the Picasso probe relies on."""

from __future__ import annotations

import pytest
import torch

from bench.data import scramble
from bench.data.affine import digit_bboxes
from bench.data.canvas import place
from bench.data.mnist import load_split
from bench.errors import BenchError

N = 64


@pytest.fixture(scope="module")
def clean():
    digits, _ = load_split("test")
    return place(digits[:N], 40)


def _multiset(images: torch.Tensor) -> torch.Tensor:
    return images.flatten(1).sort(dim=1).values


@pytest.mark.parametrize("g", [2, 3])
def test_scramble_invariants(clean, device, g):
    images = clean.to(device)
    out, perms = scramble.scramble(images, g, torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape and out.device == images.device
    # 1. the multiset of pixel values is preserved exactly
    assert torch.equal(_multiset(out), _multiset(images))
    # 2. every result differs from its original
    assert not out.eq(images).flatten(1).all(dim=1).any()
    # 3. the identity permutation through the same code returns the original exactly
    ident = torch.arange(g * g).expand(N, -1)
    assert torch.equal(scramble.apply_cell_permutation(images, digit_bboxes(images), g, ident), images)
    # the permutations are real permutations, never the identity, and reproduce the output
    assert torch.equal(perms.sort(dim=1).values, ident)
    assert not (perms == ident).all(dim=1).any()
    again = scramble.apply_cell_permutation(images, digit_bboxes(images), g, perms)
    assert torch.equal(again, out)


def test_scramble_is_deterministic_and_seeded(clean):
    a, pa = scramble.scramble(clean, 3, torch.Generator().manual_seed(7))
    b, pb = scramble.scramble(clean, 3, torch.Generator().manual_seed(7))
    c, _ = scramble.scramble(clean, 3, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and torch.equal(pa, pb)
    assert not torch.equal(a, c)


def test_cells_move_where_the_permutation_says():
    img = torch.zeros(1, 12, 12, dtype=torch.uint8)
    img[0, 2:6, 4:8] = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    perm = torch.tensor([[3, 2, 1, 0]])  # out cell k = in cell 3 - k: a 180-degree cell swap
    out = scramble.apply_cell_permutation(img, digit_bboxes(img), 2, perm)
    expected = torch.zeros_like(img)
    expected[0, 2:6, 4:8] = torch.tensor([[4, 4, 3, 3], [4, 4, 3, 3], [2, 2, 1, 1], [2, 2, 1, 1]])
    assert torch.equal(out, expected)


def test_box_not_divisible_by_g_is_grown_exactly():
    img = torch.zeros(2, 20, 20, dtype=torch.uint8)
    img[0, 3:10, 5:10] = torch.arange(1, 36, dtype=torch.uint8).reshape(7, 5)  # 5 wide, 7 high
    img[1, 12:20, 13:20] = torch.arange(1, 57, dtype=torch.uint8).reshape(8, 7)  # at the edge
    boxes = scramble.cell_boxes(digit_bboxes(img), 3, 20)
    xs, ys, cw, ch = boxes.T
    assert (cw * 3).tolist() == [6, 9] and (ch * 3).tolist() == [9, 9]
    assert ((xs + 3 * cw) <= 20).all() and ((ys + 3 * ch) <= 20).all()  # moved back inside
    out, _ = scramble.scramble(img, 3, torch.Generator().manual_seed(0))
    assert torch.equal(_multiset(out), _multiset(img))
    assert not out.eq(img).flatten(1).all(dim=1).any()


def test_blank_cells_swapped_are_redrawn():
    # Only one cell of a 2x2 grid holds ink: many permutations leave the image unchanged.
    img = torch.zeros(32, 10, 10, dtype=torch.uint8)
    img[:, 2:4, 2:4] = 9
    img[:, 5, 5] = 1  # a faint pixel so the ink box spans two cells per axis
    out, perms = scramble.scramble(img, 2, torch.Generator().manual_seed(0))
    assert not out.eq(img).flatten(1).all(dim=1).any()
    assert torch.equal(_multiset(out), _multiset(img))


def test_box_larger_than_canvas_is_an_error():
    img = torch.full((1, 10, 10), 5, dtype=torch.uint8)
    with pytest.raises(BenchError, match="exceeds"):
        scramble.scramble(img, 3, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("g", [2, 3])
def test_displaced_invariants(clean, device, g):
    images = clean.to(device)
    out, clipped = scramble.displace_cells(images, g, 3)
    assert (clipped == 0).all()  # 40x40 leaves room for 3 px
    assert torch.equal(_multiset(out), _multiset(images))
    assert not out.eq(images).flatten(1).all(dim=1).any()
    zero, _ = scramble.displace_cells(images, g, 0)
    assert torch.equal(zero, images)  # no push: the original exactly


def test_displaced_quadrants_move_apart():
    img = torch.zeros(1, 12, 12, dtype=torch.uint8)
    img[0, 4:8, 4:8] = torch.tensor([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    out, clipped = scramble.displace_cells(img, 2, 2)
    expected = torch.zeros_like(img)
    expected[0, 2:4, 2:4] = 1  # top-left cell: up and left
    expected[0, 2:4, 8:10] = 2
    expected[0, 8:10, 2:4] = 3
    expected[0, 8:10, 8:10] = 4
    assert torch.equal(out, expected) and clipped.tolist() == [0]
    out3, _ = scramble.displace_cells(torch.nn.functional.pad(img, (3, 3, 3, 3)), 3, 1)
    assert out3.sum() == img.sum()


def test_displaced_pixels_past_the_edge_are_dropped_and_counted():
    img = torch.zeros(1, 10, 10, dtype=torch.uint8)
    img[0, 0:4, 0:4] = 7  # in the corner: three of the four 2x2 cells are pushed off the canvas
    out, clipped = scramble.displace_cells(img, 2, 2)
    lost = int(img.ne(0).sum() - out.ne(0).sum())
    assert lost == int(clipped[0]) == 12
    assert out[0, 4:6, 4:6].eq(7).all()  # the bottom-right cell moved down-right, kept
    assert int(img.sum(dtype=torch.int64) - out.sum(dtype=torch.int64)) == 7 * lost
