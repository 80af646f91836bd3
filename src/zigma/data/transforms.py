"""Image transforms for the datasets, without torchvision: PIL -> tensor in [-1, 1], channel
conversion, resize of the shorter side, centre/random crop and horizontal flip.

Random choices take an explicit ``torch.Generator`` (None = torch's global RNG), so a caller can
make them a function of (seed, epoch, index) and stay exact across workers and resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image

CropMode = Literal["center", "random"]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A Pillow image in mode L or RGB as a float32 tensor [C, H, W] in [-1, 1]."""
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"to_tensor expects mode 'L' or 'RGB', got {img.mode!r}")
    return uint8_to_tensor(np.asarray(img))


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """A uint8 array [H, W] or [H, W, C] as a float32 tensor [C, H, W] in [-1, 1]."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(
            f"expected a uint8 [H, W] or [H, W, C] array, got {array.dtype} {array.shape}"
        )
    if not array.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only memory
        array = array.copy()
    t = torch.from_numpy(np.ascontiguousarray(array))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.float().div_(127.5).sub_(1.0)


# Modes whose pixels are wider than 8 bits: Pillow's convert clips them to 0..255 (a 16-bit
# PNG turns white), so they are scaled here instead.
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa")
# Every mode to_channels converts; anything else (e.g. "La") is refused before decoding.
SUPPORTED_MODES = (
    *WIDE_MODES, *_ALPHA_MODES, "1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
)  # fmt: skip


def to_channels(img: Image.Image, channels: int) -> Image.Image:
    """Convert any supported mode to L (1 channel) or RGB (3), scaling rather than clipping.

    - 16-bit ("I;16*") and 32-bit integer ("I") pixels are read as 0..65535 (PNG's 16-bit
      range; "I" values outside it are clipped) and scaled by 255/65535; float ("F") pixels
      are read as 0..1 (NaN as 0) and scaled by 255.
    - Transparent pixels (RGBA, LA, palette with transparency) are composited over white,
      because dropping alpha exposes whatever colour the encoder left under it (often black).
    - CMYK becomes RGB = (255 - C)(255 - K) / 255 per channel (no colour profile).
    - Gray from colour is Pillow's ITU-R 601-2 luma.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if img.mode not in SUPPORTED_MODES:
        raise ValueError(f"unsupported pixel mode {img.mode!r}")
    if img.mode in WIDE_MODES:
        img = _wide_to_l(img)
    elif img.mode == "CMYK":
        img = _cmyk_to_rgb(img)
    elif img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        img = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img.alpha_composite(rgba)
    if img.mode not in ("1", "L", "RGB"):  # RGBA after compositing, YCbCr, LAB, HSV, RGBX
        img = img.convert("RGB")
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def _wide_to_l(img: Image.Image) -> Image.Image:
    pixels = np.asarray(img)
    if img.mode == "F":
        scaled = np.rint(np.nan_to_num(pixels, nan=0.0).clip(0.0, 1.0) * 255.0)
    else:  # round(v / 257) in integers: 65535 / 255 = 257 exactly, and no value is a tie
        scaled = (pixels.clip(0, 65535).astype(np.uint32) + 128) // 257
    return Image.fromarray(scaled.astype(np.uint8))


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    cmyk = np.asarray(img).astype(np.uint32)
    rgb = ((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) + 127) // 255  # rounded, no ties
    return Image.fromarray(rgb.astype(np.uint8))


def resize_shorter(
    img: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Scale so the shorter side is ``size`` pixels, keeping the aspect ratio."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    w, h = img.size
    if min(w, h) == size:
        return img
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    # reducing_gap lets Pillow shrink big photos by integer steps first: much faster, same look
    return img.resize(new, resample, reducing_gap=3.0)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` square (the image must be at least that big)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(
    img: Image.Image, size: int, generator: torch.Generator | None = None
) -> Image.Image:
    """A uniformly placed ``size`` x ``size`` square."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image")
    left = int(torch.randint(0, w - size + 1, (), generator=generator))
    top = int(torch.randint(0, h - size + 1, (), generator=generator))
    return img.crop((left, top, left + size, top + size))


def hflip(img: Image.Image) -> Image.Image:
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)


def random_hflip(
    img: Image.Image, p: float = 0.5, generator: torch.Generator | None = None
) -> Image.Image:
    """Mirror left-right with probability ``p``; always draws one number, so the stream of a
    shared generator does not depend on the outcome."""
    flip = float(torch.rand((), generator=generator)) < p
    return hflip(img) if flip else img


@dataclass
class ImageTransform:
    """Channels -> resize shorter side -> square crop -> optional flip -> tensor [-1, 1].

    Args:
        resolution: output side in pixels.
        channels: 1 (L) or 3 (RGB).
        crop: "center" for evaluation-style crops, "random" for augmentation.
        flip: mirror left-right with probability 1/2.
    """

    resolution: int
    channels: int = 3
    crop: CropMode = "center"
    flip: bool = False

    def __post_init__(self) -> None:
        if self.resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {self.resolution}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if self.crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {self.crop!r}")

    def __call__(self, img: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        img = resize_shorter(to_channels(img, self.channels), self.resolution)
        if self.crop == "random":
            img = random_crop(img, self.resolution, generator)
        else:
            img = center_crop(img, self.resolution)
        if self.flip:
            img = random_hflip(img, 0.5, generator)
        return to_tensor(img)
