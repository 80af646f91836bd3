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


# ---- every pixel mode against an independent numpy computation of the expected pixels

H, W = 6, 7


def over_white(color, alpha):
    """Straight alpha compositing over white, in floats."""
    a = alpha[..., None].astype(float) / 255
    return color.astype(float) * a + 255 * (1 - a)


def gray3(g):
    return np.repeat(np.asarray(g, float)[..., None], 3, -1)


def mode_case(mode):
    """(image, exact RGB it must become as floats, tolerance in levels)."""
    rng = np.random.default_rng(sum(mode.encode()))
    if mode in ("I;16", "I;16B"):
        v = rng.integers(0, 65536, (H, W))
        v[0, :4] = [0, 65535, 128, 129]  # 128/257 rounds down, 129/257 up
        dtype = "<u2" if mode == "I;16" else ">u2"
        return Image.frombytes(mode, (W, H), v.astype(dtype).tobytes()), gray3(v / 257), 0
    if mode == "I":
        v = rng.integers(-1000, 70000, (H, W)).astype(np.int32)
        return Image.fromarray(v), gray3(v.clip(0, 65535) / 257), 0
    if mode == "F":
        v = rng.uniform(-0.2, 1.2, (H, W)).astype(np.float32)
        v[0, :3] = [np.nan, np.inf, 0.5]
        expected = np.nan_to_num(v.astype(float), nan=0.0, posinf=1.0).clip(0, 1) * 255
        return Image.fromarray(v), gray3(expected), 0
    if mode == "CMYK":
        c = rng.integers(0, 256, (H, W, 4))
        expected = (255 - c[..., :3]) * (255 - c[..., 3:]) / 255
        return Image.fromarray(c.astype(np.uint8), "CMYK"), expected, 0
    if mode == "1":
        bits = rng.integers(0, 2, (H, W)).astype(bool)
        return Image.fromarray(bits), gray3(bits * 255), 0
    if mode == "LA":
        la = rng.integers(0, 256, (H, W, 2)).astype(np.uint8)
        la[0, 0, 1], la[0, 1, 1] = 0, 255
        return Image.fromarray(la, "LA"), over_white(la[..., [0, 0, 0]], la[..., 1]), 1
    if mode == "RGBA":
        rgba = rng.integers(0, 256, (H, W, 4)).astype(np.uint8)
        return Image.fromarray(rgba, "RGBA"), over_white(rgba[..., :3], rgba[..., 3]), 1
    if mode in ("P+alpha", "P+index", "P"):
        palette = rng.integers(0, 256, (256, 3)).astype(np.uint8)
        index = rng.integers(0, 8, (H, W)).astype(np.uint8)
        img = Image.fromarray(index, "P")
        img.putpalette(palette.tobytes())
        alpha = np.full(256, 255)
        if mode == "P+alpha":  # one alpha per palette entry (PNG tRNS)
            alpha[:8] = rng.integers(0, 256, 8)
            img.info["transparency"] = bytes(alpha[:8].astype(np.uint8).tolist())
        elif mode == "P+index":  # one fully transparent entry (GIF)
            alpha[3] = 0
            img.info["transparency"] = 3
        return img, over_white(palette[index], alpha[index]), 1
    raise AssertionError(mode)


MODES = ["I;16", "I;16B", "I", "F", "CMYK", "1", "LA", "RGBA", "P", "P+alpha", "P+index"]


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_to_rgb_by_scaling_not_clipping(mode):
    img, expected, tol = mode_case(mode)
    out = to_channels(img, 3)
    assert out.mode == "RGB" and out.size == (W, H)
    diff = np.abs(np.asarray(out).astype(float) - np.rint(expected))
    assert diff.max() <= tol, (mode, diff.max())


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_converts_to_gray_as_the_luma_of_its_rgb(mode):
    img, expected, tol = mode_case(mode)
    out = to_channels(img, 1)
    luma = expected @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    assert out.mode == "L" and out.size == (W, H)
    diff = np.abs(np.asarray(out).astype(float) - np.rint(luma))
    assert diff.max() <= tol + 1, (mode, diff.max())  # + 1: Pillow's fixed-point luma


def test_unsupported_mode_is_refused():
    with pytest.raises(ValueError, match="unsupported pixel mode 'La'"):
        to_channels(Image.new("La", (2, 2)), 3)
