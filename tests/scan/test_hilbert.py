"""Tests for the generalized Hilbert orders: continuity on every size, symmetry structure,
and agreement with an independently written classic Hilbert curve on 2^n x 2^n grids.

The walkability rule in the module docstring is checked against exhaustive path search.
"""

import time

import numpy as np
import pytest
import torch

from zigma.scan import scan_orders
from zigma.scan.hilbert import hilbert_orders, hilbert_path, is_walkable


def classic_hilbert(n: int) -> list[tuple[int, int]]:
    """Textbook d -> (x, y) Hilbert map on an n x n grid, n a power of two, as (row, col)."""
    cells = []
    for d in range(n * n):
        x = y = 0
        t = d
        s = 1
        while s < n:
            rx = 1 & (t // 2)
            ry = 1 & (t ^ rx)
            if ry == 0:  # rotate the sub-square so that the pieces join up
                if rx == 1:
                    x, y = s - 1 - x, s - 1 - y
                x, y = y, x
            x += s * rx
            y += s * ry
            t //= 4
            s *= 2
        cells.append((x, y))
    return cells


def square_symmetries(cells: list[tuple[int, int]], n: int) -> set[tuple[tuple[int, int], ...]]:
    """All 8 images of a path under the symmetries of the n x n square."""
    images = set()
    for transpose in (False, True):
        for flip_r in (False, True):
            for flip_c in (False, True):
                out = []
                for r, c in cells:
                    if transpose:
                        r, c = c, r
                    out.append((n - 1 - r if flip_r else r, n - 1 - c if flip_c else c))
                images.add(tuple(out))
    return images


def as_cells(order: list[int], width: int) -> list[tuple[int, int]]:
    return [divmod(t, width) for t in order]


def all_steps_are_4_neighbours(order: list[int], width: int) -> bool:
    cells = as_cells(order, width)
    return all(
        abs(r0 - r1) + abs(c0 - c1) == 1
        for (r0, c0), (r1, c1) in zip(cells, cells[1:], strict=False)
    )


def path_exists(along: int, across: int) -> bool:
    """Exhaustive search for a Hamiltonian path from (0, 0) to (along - 1, 0)."""
    total, goal = along * across, (along - 1, 0)
    seen = {(0, 0)}

    def extend(cell: tuple[int, int]) -> bool:
        if len(seen) == total:
            return cell == goal
        if cell == goal:
            return False
        u, v = cell
        for nxt in ((u + 1, v), (u - 1, v), (u, v + 1), (u, v - 1)):
            if 0 <= nxt[0] < along and 0 <= nxt[1] < across and nxt not in seen:
                seen.add(nxt)
                if extend(nxt):
                    return True
                seen.remove(nxt)
        return False

    return extend((0, 0))


SMALL_SHAPES = [(w, h) for w in range(1, 17) for h in range(1, 17) if w * h <= 16]


@pytest.mark.parametrize(("along", "across"), SMALL_SHAPES)
def test_walkability_rule_matches_exhaustive_search(along, across):
    assert is_walkable(along, across) == path_exists(along, across)


def test_every_size_up_to_24_is_4_neighbour_continuous_and_distinct():
    for height in range(1, 25):
        for width in range(1, 25):
            orders = hilbert_orders(height, width).tolist()
            for row in orders:
                assert sorted(row) == list(range(height * width)), (height, width)
                assert all_steps_are_4_neighbours(row, width), (height, width)
            if min(height, width) >= 2:
                assert len({tuple(r) for r in orders}) == 8, (height, width)


@pytest.mark.parametrize(
    ("height", "width"), [(31, 64), (64, 31), (100, 3), (3, 100), (195, 196), (196, 196), (2, 99)]
)
def test_larger_sizes_are_continuous(height, width):
    orders = scan_orders("hilbert", height, width)
    rows, cols = orders // width, orders % width
    steps = (rows.diff(dim=1).abs() + cols.diff(dim=1).abs()).unique().tolist()
    assert steps == [1]
    assert torch.equal(orders.sort(dim=1).values, torch.arange(height * width).expand_as(orders))


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_power_of_two_squares_are_the_classic_curve(n):
    classic = square_symmetries(classic_hilbert(n), n)
    variants = {tuple(as_cells(row, n)) for row in scan_orders("hilbert", n, n).tolist()}
    assert variants == classic


def test_classic_reference_is_itself_a_hilbert_curve():
    # Guard the reference: continuous, and the known 4x4 shape (notes §3, the true curve).
    cells = classic_hilbert(4)
    assert [r * 4 + c for r, c in cells] == [0, 4, 5, 1, 2, 3, 7, 6, 10, 11, 15, 14, 13, 9, 8, 12]
    assert all_steps_are_4_neighbours([r * 8 + c for r, c in classic_hilbert(8)], 8)


@pytest.mark.parametrize("n", [3, 5, 6, 7, 12])
def test_square_variants_are_the_8_symmetries(n):
    orders = scan_orders("hilbert", n, n).tolist()
    assert {tuple(as_cells(r, n)) for r in orders} == square_symmetries(as_cells(orders[0], n), n)


@pytest.mark.parametrize(("height", "width"), [(3, 5), (7, 10), (10, 7), (6, 9), (4, 8), (5, 9)])
def test_non_square_variants_are_reflections_of_two_bases(height, width):
    orders = [as_cells(r, width) for r in scan_orders("hilbert", height, width).tolist()]
    for base in (0, 1):
        cells = orders[base]
        assert orders[base + 2] == [(r, width - 1 - c) for r, c in cells]
        assert orders[base + 4] == [(height - 1 - r, c) for r, c in cells]
        assert orders[base + 6] == [(height - 1 - r, width - 1 - c) for r, c in cells]


@pytest.mark.parametrize(("height", "width"), [(h, w) for h in range(1, 12) for w in range(1, 12)])
def test_endpoints_follow_the_documented_rule(height, width):
    h0, h1 = (as_cells(r, width) for r in scan_orders("hilbert", height, width, num=2).tolist())
    assert h0[0] == h1[0] == (0, 0)
    # H0 walks the width: it ends top-right unless that is impossible, then bottom-right.
    assert h0[-1] == ((0, width - 1) if is_walkable(width, height) else (height - 1, width - 1))
    assert h1[-1] == ((height - 1, 0) if is_walkable(height, width) else (height - 1, width - 1))


@pytest.mark.parametrize(("along", "across"), [(w, h) for w in range(1, 20) for h in range(1, 20)])
def test_path_goes_corner_to_corner_along_the_walked_side(along, across):
    if not is_walkable(along, across):
        with pytest.raises(ValueError, match="no corner-to-corner path"):
            hilbert_path(along, across)
        return
    path = hilbert_path(along, across)
    assert path.shape == (along * across, 2)
    assert tuple(path[0]) == (0, 0) and tuple(path[-1]) == (along - 1, 0)
    assert (np.abs(np.diff(path, axis=0)).sum(axis=1) == 1).all()


def test_variant_numbering_starts_at_each_corner():
    h, w = 6, 9
    starts = [divmod(r[0], w) for r in scan_orders("hilbert", h, w).tolist()]
    corners = [(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)]
    assert starts == [c for c in corners for _ in range(2)]


def test_large_grids_are_fast_and_recursion_safe():
    start = time.perf_counter()
    orders = hilbert_orders(512, 512)
    assert time.perf_counter() - start < 2.0
    rows, cols = np.divmod(orders[0], 512)
    assert (np.abs(np.diff(rows)) + np.abs(np.diff(cols)) == 1).all()
    big = hilbert_orders(1024, 1023, num=1)  # would overflow a naive deep recursion
    rows, cols = np.divmod(big[0], 1023)
    assert (np.abs(np.diff(rows)) + np.abs(np.diff(cols)) == 1).all()
