import numpy as np
import pytest
import torch
from PIL import Image

from zigma.data import (
    ImageTransform,
    center_crop,
    hflip,
    random_crop,
    resize_shorter,
    to_channels,
    to_tensor,
    uint8_to_tensor,
)


def numbered(w, h):
    """Pixel value = x + w*y (mod 256), so crops and flips can be checked exactly."""
    return Image.fromarray((np.arange(w * h).reshape(h, w) % 256).astype(np.uint8), "L")


def test_to_tensor_maps_0_255_to_minus1_1():
    arr = np.array([[0, 255], [51, 204]], np.uint8)
    t = to_tensor(Image.fromarray(arr, "L"))
    assert t.shape == (1, 2, 2) and t.dtype == torch.float32
    assert torch.allclose(t[0], torch.tensor([[-1.0, 1.0], [-0.6, 0.6]]))
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[..., 1] = 255
    t = to_tensor(Image.fromarray(rgb, "RGB"))
    assert t.shape == (3, 2, 3) and (t[1] == 1).all() and (t[0] == -1).all()
    with pytest.raises(ValueError, match="mode"):
        to_tensor(Image.new("RGBA", (2, 2)))
    with pytest.raises(ValueError):
        uint8_to_tensor(np.zeros((2, 2), np.float32))


def test_resize_shorter_keeps_aspect():
    assert resize_shorter(Image.new("RGB", (200, 100)), 32).size == (64, 32)
    assert resize_shorter(Image.new("RGB", (30, 90)), 10).size == (10, 30)
    assert resize_shorter(Image.new("RGB", (8, 12)), 16).size == (16, 24)  # upscales too


def test_center_crop_exact():
    img = numbered(10, 6)
    out = np.asarray(center_crop(img, 4))
    assert np.array_equal(out, np.asarray(img)[1:5, 3:7])
    with pytest.raises(ValueError, match="cannot crop"):
        center_crop(img, 7)


def test_random_crop_is_a_window_and_seeded():
    img = numbered(12, 12)
    full = np.asarray(img)
    windows = set()
    for s in range(10):
        a = np.asarray(random_crop(img, 5, torch.Generator().manual_seed(s)))
        b = np.asarray(random_crop(img, 5, torch.Generator().manual_seed(s)))
        assert np.array_equal(a, b)
        top, left = divmod(int(a[0, 0]), 12)
        assert np.array_equal(a, full[top : top + 5, left : left + 5])
        windows.add((top, left))
    assert len(windows) > 3


def test_hflip():
    img = numbered(5, 3)
    assert np.array_equal(np.asarray(hflip(img)), np.asarray(img)[:, ::-1])


def test_to_channels():
    assert to_channels(Image.new("RGB", (2, 2), (255, 0, 0)), 1).mode == "L"
    assert to_channels(Image.new("L", (2, 2)), 3).mode == "RGB"
    p = Image.new("P", (2, 2))
    assert to_channels(p, 3).mode == "RGB"
    clear = to_channels(Image.new("RGBA", (2, 2), (0, 0, 0, 0)), 3)
    assert np.asarray(clear).min() == 255  # transparent -> white
    with pytest.raises(ValueError, match="channels"):
        to_channels(p, 2)


def test_image_transform():
    t = ImageTransform(8, channels=1, crop="center")
    out = t(Image.new("RGB", (40, 20), (255, 255, 255)))
    assert out.shape == (1, 8, 8) and torch.allclose(out, torch.ones_like(out))
    for kwargs, field in (
        ({"resolution": 0}, "resolution"),
        ({"channels": 4}, "channels"),
        ({"crop": "edge"}, "crop"),
    ):
        with pytest.raises(ValueError, match=field):
            ImageTransform(**{"resolution": 8, **kwargs})
