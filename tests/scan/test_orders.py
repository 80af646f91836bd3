"""Tests for scan_orders, inverse_orders and the continuity helpers (all kinds but Hilbert).

References are independent of the implementation: the official 4x4 table, a cell-by-cell
walker re-deriving the zigzag from its verbal description, and mirror/transpose relations.
"""

import time

import pytest
import torch

from zigma.scan import SCAN_KINDS, inverse_orders, is_continuous, scan_orders, step_lengths
from zigma.scan.orders import _cached_orders

SIZES = [
    (1, 1), (1, 6), (6, 1), (2, 2), (2, 3), (3, 3), (4, 4), (5, 5), (4, 7), (7, 4), (6, 9),
    (8, 8), (9, 9), (10, 3), (13, 16), (16, 16), (17, 5),
]  # fmt: skip

# Verbatim from the official code's output for N=4 (notes §3, confirmed in issue #24).
OFFICIAL_4X4 = [
    [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11, 15, 14, 13, 12],
    [0, 4, 8, 12, 13, 9, 5, 1, 2, 6, 10, 14, 15, 11, 7, 3],
    [3, 2, 1, 0, 4, 5, 6, 7, 11, 10, 9, 8, 12, 13, 14, 15],
    [3, 7, 11, 15, 14, 10, 6, 2, 1, 5, 9, 13, 12, 8, 4, 0],
    [12, 13, 14, 15, 11, 10, 9, 8, 4, 5, 6, 7, 3, 2, 1, 0],
    [12, 8, 4, 0, 1, 5, 9, 13, 14, 10, 6, 2, 3, 7, 11, 15],
    [15, 14, 13, 12, 8, 9, 10, 11, 7, 6, 5, 4, 0, 1, 2, 3],
    [15, 11, 7, 3, 2, 6, 10, 14, 13, 9, 5, 1, 0, 4, 8, 12],
]


def neighbour_steps_ok(order: list[int], height: int, width: int, frames: int = 1) -> bool:
    """Brute force: each consecutive pair differs by exactly 1 in exactly one of (t, r, c)."""

    def coords(token: int) -> tuple[int, int, int]:
        t, rest = divmod(token, height * width)
        return (t, *divmod(rest, width))

    for a, b in zip(order, order[1:], strict=False):
        diffs = [abs(x - y) for x, y in zip(coords(a), coords(b), strict=True)]
        if sorted(diffs) != [0, 0, 1]:
            return False
    return True


def walk_snake(height: int, width: int, corner: tuple[int, int], by_rows: bool) -> list[int]:
    """Re-derive a zigzag by walking: sweep a line from the corner, step inwards, turn back."""
    row, col = (0 if corner[0] == 0 else height - 1), (0 if corner[1] == 0 else width - 1)
    d_row, d_col = (1 if row == 0 else -1), (1 if col == 0 else -1)
    path = [(row, col)]
    while len(path) < height * width:
        if by_rows:
            if 0 <= col + d_col < width:
                col += d_col
            else:
                row, d_col = row + d_row, -d_col
        elif 0 <= row + d_row < height:
            row += d_row
        else:
            col, d_row = col + d_col, -d_row
        path.append((row, col))
    return [r * width + c for r, c in path]


def test_scan_kinds_constant():
    assert SCAN_KINDS == ("sweep", "zigzag", "hilbert", "random", "sweep3d", "zigzag3d")


@pytest.mark.parametrize("kind", SCAN_KINDS)
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_rows_are_permutations(kind, height, width):
    frames = 3 if kind.endswith("3d") else 1
    orders = scan_orders(kind, height, width, frames)
    length = frames * height * width
    assert orders.dtype == torch.int64 and orders.device.type == "cpu"
    assert orders.dim() == 2 and orders.shape[1] == length
    for row in orders.tolist():
        assert sorted(row) == list(range(length))


@pytest.mark.parametrize(
    ("kind", "expected_k"),
    [("sweep", 1), ("zigzag", 8), ("hilbert", 8), ("random", 8), ("sweep3d", 1), ("zigzag3d", 8)],
)
def test_default_number_of_orders(kind, expected_k):
    assert scan_orders(kind, 5, 6).shape == (expected_k, 30)


def test_zigzag_official_4x4_table():
    assert scan_orders("zigzag", 4, 4).tolist() == OFFICIAL_4X4


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_zigzag_matches_walked_derivation(height, width):
    corners = [(0, 0), (0, 1), (1, 0), (1, 1)]  # TL, TR, BL, BR; lr then tb for each
    expected = [walk_snake(height, width, c, by_rows) for c in corners for by_rows in (1, 0)]
    assert scan_orders("zigzag", height, width).tolist() == expected


@pytest.mark.parametrize(("height", "width"), [(3, 5), (4, 7), (6, 6), (7, 7), (2, 9)])
def test_zigzag_mirror_and_transpose_relations(height, width):
    def cells(order, w):
        return [divmod(t, w) for t in order]

    s = scan_orders("zigzag", height, width).tolist()
    s0 = cells(s[0], width)
    assert cells(s[2], width) == [(r, width - 1 - c) for r, c in s0]
    assert cells(s[4], width) == [(height - 1 - r, c) for r, c in s0]
    assert cells(s[6], width) == [(height - 1 - r, width - 1 - c) for r, c in s0]
    # The column snake on H x W is the row snake of the transposed W x H grid.
    transposed = scan_orders("zigzag", width, height).tolist()
    for k in (0, 2, 4, 6):
        swapped = [(c, r) for r, c in cells(transposed[k], height)]
        # Transposing swaps the top-right and bottom-left corners.
        k_tb = {0: 1, 2: 5, 4: 3, 6: 7}[k]
        assert cells(s[k_tb], width) == swapped


@pytest.mark.parametrize("n", [2, 4, 6, 8])
def test_zigzag_even_grids_pair_into_reverses(n):
    s = scan_orders("zigzag", n, n).tolist()
    for a, b in [(0, 4), (1, 3), (2, 6), (5, 7)]:
        assert s[a] == s[b][::-1]


@pytest.mark.parametrize("n", [3, 5, 7])
def test_zigzag_odd_grids_pair_into_reverses(n):
    s = scan_orders("zigzag", n, n).tolist()
    for a, b in [(0, 6), (1, 7), (2, 4), (3, 5)]:
        assert s[a] == s[b][::-1]


@pytest.mark.parametrize("num", [1, 2, 5, 8])
def test_zigzag_num_takes_the_first_orders(num):
    first = scan_orders("zigzag", 5, 7, num=num)
    assert first.tolist() == scan_orders("zigzag", 5, 7)[:num].tolist()


@pytest.mark.parametrize(("height", "width"), SIZES)
def test_zigzag_is_4_neighbour_continuous(height, width):
    for row in scan_orders("zigzag", height, width).tolist():
        assert neighbour_steps_ok(row, height, width)


@pytest.mark.parametrize("frames", [1, 2, 3, 4])
@pytest.mark.parametrize(("height", "width"), SIZES)
def test_zigzag3d_is_6_neighbour_continuous(frames, height, width):
    orders = scan_orders("zigzag3d", height, width, frames).tolist()
    for row in orders:
        assert neighbour_steps_ok(row, height, width, frames)
    if min(height, width) >= 2:  # a single line only has 2 snakes
        assert len({tuple(r) for r in orders}) == 8


def test_zigzag3d_walks_frames_back_and_forth():
    h, w, frames = 3, 5, 4
    spatial = scan_orders("zigzag", h, w).tolist()
    video = scan_orders("zigzag3d", h, w, frames).tolist()
    for k in range(8):
        for t in range(frames):
            frame = [tok - t * h * w for tok in video[k][t * h * w : (t + 1) * h * w]]
            assert frame == (spatial[k] if t % 2 == 0 else spatial[k][::-1])


def test_sweep_kinds_are_identity():
    assert scan_orders("sweep", 3, 4).tolist() == [list(range(12))]
    assert scan_orders("sweep3d", 3, 4, 2).tolist() == [list(range(24))]


def test_sweep_is_not_continuous_but_zigzag_is():
    assert not is_continuous(scan_orders("sweep", 3, 4), 3, 4)
    assert is_continuous(scan_orders("zigzag", 3, 4), 3, 4)
    assert is_continuous(scan_orders("zigzag3d", 3, 4, 3), 3, 4, 3)
    steps = step_lengths(scan_orders("sweep", 3, 4)[0], 3, 4)
    assert steps.tolist() == [1, 1, 1, 4, 1, 1, 1, 4, 1, 1, 1]
    with pytest.raises(ValueError, match="tokens must lie in"):
        step_lengths(scan_orders("sweep3d", 3, 4, 2)[0], 3, 4)  # frames=2 data, frames=1 grid


def test_random_is_reproducible_and_seed_dependent():
    a = scan_orders("random", 6, 7, seed=3)
    _cached_orders.cache_clear()  # really recompute, not just hit the cache
    assert torch.equal(a, scan_orders("random", 6, 7, seed=3))
    assert not torch.equal(a, scan_orders("random", 6, 7, seed=4))
    assert len({tuple(r) for r in a.tolist()}) == 8
    # The stream is torch.randperm on a generator seeded with `seed`, one row after another.
    g = torch.Generator().manual_seed(3)
    assert torch.equal(a[0], torch.randperm(42, generator=g))
    assert torch.equal(a[1], torch.randperm(42, generator=g))


def test_random_orders_are_drawn_on_the_cpu_under_a_meta_device_context():
    # Models are built on the meta device to learn their shapes (zigma.models.io loads every
    # checkpoint so); a fresh process has no cached orders, so the permutations are drawn
    # there, and must still be the CPU generator's.
    _cached_orders.cache_clear()
    with torch.device("meta"):
        got = scan_orders("random", 5, 7, num=3, seed=12)
    g = torch.Generator().manual_seed(12)
    want = torch.stack([torch.randperm(35, generator=g) for _ in range(3)])
    assert got.device.type == "cpu" and torch.equal(got, want)


def test_random_allows_many_orders():
    orders = scan_orders("random", 4, 4, num=20)
    assert orders.shape == (20, 16)
    assert torch.equal(orders[:8], scan_orders("random", 4, 4, num=8))


def test_result_is_a_private_copy():
    first = scan_orders("zigzag", 4, 4)
    first.zero_()
    assert scan_orders("zigzag", 4, 4).tolist() == OFFICIAL_4X4


@pytest.mark.parametrize("kind", SCAN_KINDS)
def test_inverse_round_trips(kind):
    frames = 2 if kind.endswith("3d") else 1
    orders = scan_orders(kind, 5, 6, frames)
    inverse = inverse_orders(orders)
    x = torch.randn(3, frames * 30)
    for k in range(orders.shape[0]):
        assert torch.equal(x[..., orders[k]][..., inverse[k]], x)
        assert torch.equal(x[..., inverse[k]][..., orders[k]], x)
        assert torch.equal(inverse_orders(orders[k]), inverse[k])  # 1-D input too


def test_inverse_of_known_permutation():
    assert inverse_orders(torch.tensor([2, 0, 3, 1])).tolist() == [1, 3, 0, 2]


@pytest.mark.parametrize(
    "bad",
    [torch.tensor([0, 1, 1]), torch.tensor([0, 1, 3]), torch.tensor([-1, 0, 1]),
     torch.tensor([[0, 1, 2], [2, 2, 0]]), torch.tensor([0.0, 1.0]), torch.zeros(2, 2, 2).long()],
)  # fmt: skip
def test_inverse_rejects_non_permutations(bad):
    with pytest.raises(ValueError):
        inverse_orders(bad)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("spiral", 4, 4), {}, "valid choices: sweep, zigzag, hilbert, random, sweep3d"),
        (("zigzag", 0, 4), {}, "height must be a positive int"),
        (("zigzag", 4, 2.0), {}, "width must be a positive int"),
        (("zigzag", True, 4), {}, "height must be a positive int"),
        (("zigzag3d", 4, 4, 0), {}, "frames must be a positive int"),
        (("zigzag", 4, 4, 2), {}, "use one of sweep3d, zigzag3d"),
        (("hilbert", 4, 4, 3), {}, "needs frames == 1"),
        (("random", 4, 4, 2), {}, "needs frames == 1"),
        (("zigzag", 4, 4), {"num": 9}, r"1\.\.8"),
        (("hilbert", 4, 4), {"num": 0}, r"1\.\.8"),
        (("zigzag3d", 4, 4, 2), {"num": 9}, r"1\.\.8"),
        (("zigzag", 4, 4), {"num": 2.0}, r"1\.\.8"),
        (("random", 4, 4), {"num": 0}, ">= 1"),
        (("sweep", 4, 4), {"num": 2}, "num must be None or 1"),
        (("sweep3d", 4, 4, 2), {"num": 8}, "num must be None or 1"),
        (("random", 4, 4), {"seed": 1.5}, "seed must be an int"),
    ],
)
def test_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scan_orders(*args, **kwargs)


def test_validation_happens_before_compute():
    # A huge grid with a bad num must fail at once instead of building 10^10 tokens first.
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"1\.\.8"):
        scan_orders("zigzag", 100_000, 100_000, num=9)
    assert time.perf_counter() - start < 0.1


@pytest.mark.parametrize("kind", SCAN_KINDS)
def test_196x196_is_fast(kind):
    _cached_orders.cache_clear()
    start = time.perf_counter()
    orders = scan_orders(kind, 196, 196, 1)
    elapsed = time.perf_counter() - start
    assert orders.shape[1] == 196 * 196
    assert elapsed < 1.0, f"{kind} took {elapsed:.2f}s"
