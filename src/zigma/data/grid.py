"""Image grids (Pillow only): a batch [N, C, H, W] in [-1, 1] tiled into one picture.

Used to look at datasets and at model samples; small images can be enlarged with nearest-
neighbour scaling so 32-px samples stay readable without smoothing away their pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zigma.artifacts import atomic_write


def make_image_grid(
    images: torch.Tensor,
    nrow: int | None = None,
    *,
    padding: int = 2,
    pad_value: float = 1.0,
    scale: int = 1,
) -> Image.Image:
    """Tile ``images`` into one Pillow image.

    Args:
        images: float tensor [N, C, H, W] (C = 1 or 3) with values in [-1, 1]; outside values
            are clipped.
        nrow: images per row; default ``ceil(sqrt(N))``.
        padding: pixels between tiles and around the border (before ``scale``).
        pad_value: padding colour in [-1, 1] (1 = white).
        scale: integer nearest-neighbour enlargement of the whole grid.

    Returns:
        An RGB (C = 3) or L (C = 1) image.
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, C, H, W] with C in (1, 3), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("images is empty")
    if scale < 1 or padding < 0:
        raise ValueError(f"scale must be >= 1 and padding >= 0, got {scale}, {padding}")
    nrow = nrow or math.ceil(math.sqrt(n))
    ncol_rows = math.ceil(n / nrow)
    x = images.detach().to("cpu", torch.float32).clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # N H W C
    fill = round((min(max(pad_value, -1.0), 1.0) + 1) * 127.5)
    canvas = np.full(
        (ncol_rows * (h + padding) + padding, nrow * (w + padding) + padding, c), fill, np.uint8
    )
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        canvas[top : top + h, left : left + w] = x[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, "L" if c == 1 else "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    return img


def save_image_grid(
    images: torch.Tensor,
    path: str | os.PathLike,
    nrow: int | None = None,
    *,
    padding: int = 2,
    scale: int = 1,
) -> Path:
    """Write ``make_image_grid(images, nrow, ...)`` to ``path`` (format from the suffix).

    The file is replaced atomically: a crash leaves the old picture or the new one, never half.
    """
    path = Path(path)
    fmt = image_format(path)
    image = make_image_grid(images, nrow, padding=padding, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
    return path


def image_format(path: str | os.PathLike) -> str:
    """Pillow's format name for ``path``'s suffix; ValueError for a suffix Pillow cannot write."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot write images as {suffix or 'files without a suffix'}: {path}")
    return fmt
