"""Tests for the scan-order pictures: sizes, non-blank content, distinct kinds, PNG output."""

import numpy as np
import pytest
from PIL import Image, ImageChops

from zigma.scan import render_scan_orders, save_scan_plot


def ink_fraction(image: Image.Image) -> float:
    """Share of pixels that are not (near) white."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return float((pixels.min(axis=2) < 235).mean())


def colourful_fraction(image: Image.Image) -> float:
    """Share of strongly saturated pixels: the path, not the grey grid or black text."""
    pixels = np.asarray(image.convert("RGB")).astype(int)
    return float((pixels.max(axis=2) - pixels.min(axis=2) > 80).mean())


def test_renders_an_rgb_picture_of_plausible_size():
    cell = 20
    image = render_scan_orders("zigzag", 4, 6, cell=cell)
    assert image.mode == "RGB"
    width, height = image.size
    # 8 panels of 6x4 cells, 4 per row, plus titles and margins but not much more.
    assert 4 * 6 * cell < width < 4 * 6 * cell + 200
    assert 2 * 4 * cell < height < 2 * 4 * cell + 200


def test_size_scales_with_cell_num_and_frames():
    small = render_scan_orders("hilbert", 6, 6, cell=10).size
    large = render_scan_orders("hilbert", 6, 6, cell=30).size
    assert large[0] - small[0] == 4 * 6 * 20 and large[1] - small[1] == 2 * 6 * 20
    one = render_scan_orders("hilbert", 6, 6, num=1, cell=30).size
    assert one[0] < large[0] and one[1] < large[1]
    # 3D: frames side by side (panel of 5 * 28 px plus an 18 px gap each), one row per order.
    three = render_scan_orders("zigzag3d", 5, 5, frames=3, num=2).size
    five = render_scan_orders("zigzag3d", 5, 5, frames=5, num=2).size
    assert five[0] - three[0] == 2 * (5 * 28 + 18) and five[1] == three[1]
    assert render_scan_orders("zigzag3d", 5, 5, frames=3, num=4).size[1] > three[1]


@pytest.mark.parametrize(
    ("kind", "frames"),
    [("sweep", 1), ("zigzag", 1), ("hilbert", 1), ("random", 1), ("sweep3d", 3), ("zigzag3d", 3)],
)
def test_pictures_are_not_blank(kind, frames):
    image = render_scan_orders(kind, 5, 7, frames=frames)
    assert 0.05 < ink_fraction(image) < 0.7
    assert colourful_fraction(image) > 0.02


def test_path_colours_run_from_blue_start_to_orange_end():
    pixels = np.asarray(render_scan_orders("sweep", 4, 4, cell=40)).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((b > 150) & (r < 90)).sum() > 100  # the blue start of the gradient
    assert ((r > 200) & (g > 100) & (b < 60)).sum() > 100  # the orange end


def test_different_kinds_and_seeds_give_different_pictures():
    zigzag = render_scan_orders("zigzag", 6, 6)
    hilbert = render_scan_orders("hilbert", 6, 6)
    assert zigzag.size == hilbert.size
    assert ImageChops.difference(zigzag, hilbert).getbbox() is not None
    seed0 = render_scan_orders("random", 6, 6, seed=0)
    again = render_scan_orders("random", 6, 6, seed=0)
    assert ImageChops.difference(seed0, again).getbbox() is None
    seed1 = render_scan_orders("random", 6, 6, seed=1)
    assert ImageChops.difference(seed0, seed1).getbbox() is not None


def test_save_writes_a_png_that_pillow_reopens(tmp_path):
    path = tmp_path / "nested" / "dir" / "zigzag.png"
    written = save_scan_plot(path, "zigzag", 4, 4, num=2, cell=16)
    assert written == path and path.exists()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        expected = render_scan_orders("zigzag", 4, 4, num=2, cell=16)
        assert reopened.size == expected.size
        assert ImageChops.difference(reopened.convert("RGB"), expected).getbbox() is None


@pytest.mark.parametrize("name", ["plot.jpg", "plot", "plot.png.txt"])
def test_save_refuses_other_formats(tmp_path, name):
    with pytest.raises(ValueError, match=r"\.png"):
        save_scan_plot(tmp_path / name, "zigzag", 4, 4)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_write_nothing(tmp_path):
    with pytest.raises(ValueError, match="valid choices"):
        save_scan_plot(tmp_path / "sub" / "x.png", "spiral", 4, 4)
    with pytest.raises(ValueError, match="cell must be"):
        render_scan_orders("zigzag", 4, 4, cell=2)
    with pytest.raises(ValueError, match="smaller cell"):
        render_scan_orders("zigzag", 400, 400, cell=28)
    assert list(tmp_path.iterdir()) == []
