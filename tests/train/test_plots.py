"""The Pillow loss curve."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from zigma.train.plots import draw_loss_curve, nice_ticks, smooth


def test_smooth_is_bias_corrected():
    assert smooth([2.0, 2.0, 2.0]) == [2.0, 2.0, 2.0]
    s = smooth([1.0, 0.0], weight=0.5)
    assert s[0] == 1.0 and math.isclose(s[1], 1 / 3)


def test_nice_ticks():
    assert nice_ticks(0, 100, 5) == [0, 20, 40, 60, 80, 100]
    ticks = nice_ticks(0.31, 0.97)
    assert all(0.31 <= t <= 0.97 for t in ticks) and len(ticks) >= 3


def test_draws_a_png(tmp_path):
    losses = [1.5 * 0.99**i + 0.05 * math.sin(i) for i in range(300)]
    losses[10] = math.nan  # skipped steps are left out
    path = draw_loss_curve(range(1, 301), losses, tmp_path / "loss.png")
    img = Image.open(path)
    assert img.size == (800, 450) and img.mode == "RGB"
    px = np.asarray(img).astype(int)
    red = int(((px[..., 0] > 150) & (px[..., 1] < 80) & (px[..., 2] < 80)).sum())
    assert red > 200  # the smoothed line is drawn
    assert not list(tmp_path.glob(".*"))  # written atomically


def test_empty_and_wide_range(tmp_path):
    draw_loss_curve([], [], tmp_path / "a.png")
    draw_loss_curve([1, 2, 3], [100.0, 1.0, 0.01], tmp_path / "b.png")  # log scale
    assert Image.open(tmp_path / "a.png").size == Image.open(tmp_path / "b.png").size
