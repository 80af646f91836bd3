"""Grid geometry shared by the 2D scan constructions.

Owns the token convention (token = row * width + col) and the four corner reflections that
turn a pair of base paths starting at the top-left corner into eight S0..S7-style variants.
"""

import numpy as np

# (flip rows, flip cols) for the corners top-left, top-right, bottom-left, bottom-right: the
# order in which the official zigzag code enumerates its start corners.
CORNERS: tuple[tuple[bool, bool], ...] = (
    (False, False),
    (False, True),
    (True, False),
    (True, True),
)


def corner_variants(
    row_major: np.ndarray, col_major: np.ndarray, height: int, width: int, num: int
) -> np.ndarray:
    """Return the first `num` of the 8 orders (corner x base path) as tokens, shape [num, L].

    Both base paths are [L, 2] arrays of (row, col) that start at the top-left cell. Order
    2 * c + b is base b (0 = row_major, 1 = col_major) reflected into corner c.
    """
    # Contiguous copies first: strided (row, col) views make the arithmetic several times slower.
    bases = [
        (np.ascontiguousarray(b[:, 0], np.int64), np.ascontiguousarray(b[:, 1], np.int64))
        for b in (row_major, col_major)
    ]
    orders = []
    for flip_rows, flip_cols in CORNERS:
        for rows, cols in bases:
            if len(orders) == num:
                break
            rows = height - 1 - rows if flip_rows else rows
            cols = width - 1 - cols if flip_cols else cols
            orders.append(rows * width + cols)
    return np.stack(orders)
