"""Scan orders: the token permutations that a Zigzag-Mamba layer reads its sequence in.

Provides the order kinds (sweep, zigzag, hilbert, random, sweep3d, zigzag3d), their inverses,
continuity checks and Pillow pictures of the paths.
"""

from zigma.scan.orders import (
    SCAN_KINDS,
    inverse_orders,
    is_continuous,
    scan_orders,
    step_lengths,
)
from zigma.scan.plot import render_scan_orders, save_scan_plot

__all__ = [
    "SCAN_KINDS",
    "inverse_orders",
    "is_continuous",
    "render_scan_orders",
    "save_scan_plot",
    "scan_orders",
    "step_lengths",
]
