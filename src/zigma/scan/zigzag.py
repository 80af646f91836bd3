"""Zigzag (boustrophedon) scan orders: the official S0..S7 in 2D and their 3D extension.

A zigzag order snakes through the grid so that consecutive tokens are always 4-neighbours;
the 3D version snakes through time as well, so consecutive tokens are 6-neighbours.
"""

import numpy as np

from zigma.scan._grid import corner_variants


def row_snake(height: int, width: int) -> np.ndarray:
    """(row, col) of the row-wise boustrophedon from the top-left cell ("lr"), shape [L, 2]."""
    rows = np.repeat(np.arange(height), width)
    cols = np.tile(np.arange(width), height)
    cols = np.where(rows % 2 == 1, width - 1 - cols, cols)
    return np.stack([rows, cols], axis=1)


def col_snake(height: int, width: int) -> np.ndarray:
    """(row, col) of the column-wise boustrophedon from the top-left cell ("tb"), shape [L, 2]."""
    # A column snake on H x W is a row snake on the transposed W x H grid.
    return row_snake(width, height)[:, ::-1]


def zigzag_orders(height: int, width: int, num: int = 8) -> np.ndarray:
    """The first `num` official zigzag orders S0..S7 as gather indices, shape [num, H * W].

    S_{2c} is the row snake and S_{2c+1} the column snake from corner c, with corners in the
    order top-left, top-right, bottom-left, bottom-right.
    """
    return corner_variants(row_snake(height, width), col_snake(height, width), height, width, num)


def zigzag3d_orders(frames: int, height: int, width: int, num: int = 8) -> np.ndarray:
    """Orders over a frame-major T x H x W video, shape [num, T * H * W].

    Order k walks even frames with S_k and odd frames with S_k reversed: each frame ends on
    the cell where the next one starts, so the time step is a 6-neighbour step too.
    """
    spatial = zigzag_orders(height, width, num)
    per_frame = [spatial if t % 2 == 0 else spatial[:, ::-1] for t in range(frames)]
    offsets = np.arange(frames).repeat(height * width) * (height * width)
    return np.concatenate(per_frame, axis=1) + offsets
