"""Generalized Hilbert scan orders that stay 4-neighbour continuous on any H x W grid.

Owns a recursive, gilbert-style construction for arbitrary rectangles (our own derivation,
with the split sizes chosen by a parity invariant) and the eight symmetric variants of it.

Continuity rule: every step of every order is a 4-neighbour step, on every grid size; no
shape needs a diagonal step. The classic generalized construction needs one diagonal exactly
when it walks an odd side while the other side is even (e.g. 5 x 4 walked along the 5). A
checkerboard argument shows why: a path between the two ends of a side of length w on a
w x h grid alternates colours, and such a path cannot exist when w is odd and h is even (the
two end corners share a colour, yet an even cell count needs ends of opposite colour). We
therefore always walk a side that is even, or any side when both parities agree, and choose
every split so that each sub-rectangle satisfies the same invariant.
"""

import numpy as np

from zigma.scan._grid import corner_variants


def is_walkable(along: int, across: int) -> bool:
    """Whether an `along` x `across` rectangle has a corner-to-corner path along `along`.

    The path starts at (0, 0) and ends at (along - 1, 0), covering every cell once with
    4-neighbour steps. It exists unless `along` is odd and `across` even (colour parity) or
    `along` is 1 and `across` > 1 (the two ends would be the same cell).
    """
    if across == 1:
        return True
    return along >= 2 and not (along % 2 == 1 and across % 2 == 0)


def hilbert_path(along: int, across: int) -> np.ndarray:
    """Generalized Hilbert path on a walkable rectangle, as [L, 2] (u, v) coordinates.

    u runs along the walked side (0..along-1), v across it; the path starts at (0, 0) and
    ends at (along - 1, 0). On 2^n x 2^n it is the classic Hilbert curve.
    """
    if not is_walkable(along, across):
        raise ValueError(f"no corner-to-corner path along {along} on {along} x {across}")
    return _path(along, across, {})


def _path(w: int, h: int, memo: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    # Sub-rectangles repeat a lot (a handful of shapes per level), so build each shape once
    # in its own frame and place copies by affine maps. Depth is about 2 * log2(max side).
    if (w, h) not in memo:
        if h == 1:
            path = np.stack([np.arange(w), np.zeros(w, dtype=np.int64)], axis=1)
        elif 2 * w > 3 * h:
            path = _split_long(w, h, memo)
        else:
            path = _split_u(w, h, memo)
        memo[(w, h)] = path
    return memo[(w, h)]


def _split_long(w: int, h: int, memo: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Too elongated for a U: walk two halves side by side in the same orientation."""
    w2 = w // 2
    if h % 2 == 0 and w2 % 2 == 1:
        # With an even height both halves must have even length (w itself is then even).
        w2 += 1
    first = _path(w2, h, memo)
    second = _path(w - w2, h, memo) + np.array([w2, 0])
    return np.concatenate([first, second])


def _split_u(w: int, h: int, memo: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Hilbert's U: up the left block, along the top strip, down the right block."""
    h2 = h // 2
    if h2 % 2 == 1 and h > 2:
        # An even block height keeps all three pieces walkable whatever the parities of w.
        h2 += 1
    # The one odd h2 left is h == 2, which only reaches here as 2 x 2 (w is even and
    # 2w <= 3h), where w2 == 1 makes the side blocks single cells.
    w2 = w // 2
    left = _path(h2, w2, memo)[:, ::-1]  # walked upwards, i.e. transposed
    top = _path(w, h - h2, memo) + np.array([0, h2])
    right = _path(h2, w - w2, memo)
    right = np.stack([w - 1 - right[:, 1], h2 - 1 - right[:, 0]], axis=1)  # walked downwards
    return np.concatenate([left, top, right])


def _diagonal_path(along: int, across: int) -> np.ndarray:
    """Path from (0, 0) to (along - 1, across - 1) for an odd `along` and even `across`.

    Used as the second base curve where walking `along` is impossible: a Hilbert path on the
    first along - 1 lines (an even x even rectangle), then one straight final line.
    """
    head = hilbert_path(along - 1, across) if along > 1 else np.zeros((0, 2), dtype=np.int64)
    tail = np.stack([np.full(across, along - 1), np.arange(across)], axis=1)
    return np.concatenate([head, tail])


def _base_path(along: int, across: int) -> np.ndarray:
    if is_walkable(along, across):
        return hilbert_path(along, across)
    return _diagonal_path(along, across)


def hilbert_orders(height: int, width: int, num: int = 8) -> np.ndarray:
    """The first `num` of 8 Hilbert variants as gather indices, shape [num, H * W].

    Variant 2c walks along the rows direction (first reaching the top-right corner) and
    variant 2c + 1 along the columns direction, both reflected into corner c (top-left,
    top-right, bottom-left, bottom-right), mirroring the zigzag S0..S7 layout. On a square
    grid these are the 8 symmetries of one curve. Where a direction cannot be walked corner
    to corner (an odd side against an even one), that variant ends in the opposite corner
    instead: a Hilbert path over all but the last line, then that line straight.
    """
    # (u, v) -> (row, col): walking the width means u is the column.
    along_width = _base_path(width, height)[:, ::-1]
    along_height = _base_path(height, width)
    return corner_variants(along_width, along_height, height, width, num)
