"""Video samples on disk: a frame grid (one row per sample, one column per frame), animated GIFs
(Pillow, always available) and MP4 (PyAV, the optional ``zigma[video]`` extra).

Videos are float tensors [C, T, H, W] (a batch: [N, C, T, H, W]) in [-1, 1] with C = 1 or 3,
the layout the video models return. Every file is written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from zigma.artifacts import atomic_write
from zigma.data.grid import image_format, make_image_grid

MP4_INSTALL = "pip install 'zigma[video]'"


def _check_video(video: torch.Tensor, ndim: int, what: str) -> None:
    layout = "[N, C, T, H, W]" if ndim == 5 else "[C, T, H, W]"
    if not isinstance(video, torch.Tensor) or video.ndim != ndim:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"{what} must be a video tensor {layout}, got {shape}")
    c = video.shape[-4]
    if c not in (1, 3):
        raise ValueError(f"{what} must have 1 or 3 channels, got {c} ({tuple(video.shape)})")
    if video.numel() == 0:
        raise ValueError(f"{what} is empty: {tuple(video.shape)}")


def _check_fps_scale(fps: float, scale: int) -> None:
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")


def _check_suffix(path: Path, suffix: str) -> None:
    if path.suffix.lower() != suffix:
        raise ValueError(f"{path}: expected a {suffix} file name")


def video_frames(video: torch.Tensor, scale: int = 1) -> np.ndarray:
    """[C, T, H, W] in [-1, 1] -> uint8 frames [T, H * scale, W * scale, C] (nearest-neighbour
    enlargement), with the same rounding as the image grids."""
    x = video.detach().to("cpu", torch.float32).clamp(-1, 1)
    x = ((x + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).numpy()  # T H W C
    if scale > 1:
        x = x.repeat(scale, axis=1).repeat(scale, axis=2)
    return x


def make_frame_grid(
    videos: torch.Tensor, *, padding: int = 2, pad_value: float = 1.0, scale: int = 1
) -> Image.Image:
    """Tile a batch of videos into one picture: row ``i`` is sample ``i``, column ``t`` its frame
    ``t`` (the padding and colours of ``make_image_grid``).

    Args:
        videos: float tensor [N, C, T, H, W] (C = 1 or 3) in [-1, 1]; outside values are clipped.
        padding, pad_value, scale: as in ``make_image_grid``.

    Returns:
        An RGB (C = 3) or L (C = 1) Pillow image.

    Raises:
        ValueError: not a 5-D tensor with 1 or 3 channels, or empty.
    """
    _check_video(videos, 5, "videos")
    n, c, t, h, w = videos.shape
    frames = videos.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)  # sample-major: rows = samples
    return make_image_grid(frames, nrow=t, padding=padding, pad_value=pad_value, scale=scale)


def save_frame_grid(videos: torch.Tensor, path: str | os.PathLike, *, scale: int = 1) -> Path:
    """Write ``make_frame_grid(videos, scale=scale)`` to ``path`` (format from the suffix)."""
    path = Path(path)
    fmt = image_format(path)
    image = make_frame_grid(videos, scale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: image.save(tmp, format=fmt))
    return path


def save_gif(video: torch.Tensor, path: str | os.PathLike, fps: float = 8, scale: int = 1) -> Path:
    """Write ``video`` [C, T, H, W] in [-1, 1] as a looping animated GIF.

    Grey videos are stored exactly; colour frames each get their own 256-colour palette
    (Pillow's quantiser), so a frame with more colours than that is approximated. GIF delays
    are whole hundredths of a second, so ``fps`` is rounded to the nearest such delay, and
    Pillow merges identical consecutive frames into one longer frame (the timing is kept).

    Raises:
        ValueError: not [C, T, H, W] with C in (1, 3), a bad ``fps`` / ``scale``, or a path that
            does not end in ``.gif``.
    """
    path = Path(path)
    _check_video(video, 4, "video")
    _check_fps_scale(fps, scale)
    _check_suffix(path, ".gif")
    frames = video_frames(video, scale)
    mode = "L" if frames.shape[-1] == 1 else "RGB"
    images = [Image.fromarray(f[..., 0] if mode == "L" else f, mode) for f in frames]
    delay = max(10, round(100 / fps) * 10)  # ms, in the 10 ms steps GIF stores
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0
        )

    atomic_write(path, write)
    return path


def check_mp4_writer() -> None:
    """Raise ImportError (one line naming the pip command) unless PyAV can write MP4s."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise ImportError(f"writing MP4 needs PyAV: {MP4_INSTALL}") from None


def save_mp4(video: torch.Tensor, path: str | os.PathLike, fps: float = 8, scale: int = 1) -> Path:
    """Write ``video`` [C, T, H, W] in [-1, 1] as an H.264 MP4 (yuv420p, so players everywhere
    open it) through PyAV, imported here: install it with ``pip install 'zigma[video]'``.

    yuv420p needs even sizes: an odd height or width is padded by one repeated edge pixel.
    The encoding is lossy (colour is stored at half resolution).

    Raises:
        ImportError: PyAV is not installed (the message names the pip command).
        ValueError: bad video, ``fps`` or ``scale``, or a path that does not end in ``.mp4``.
    """
    path = Path(path)
    _check_video(video, 4, "video")
    _check_fps_scale(fps, scale)
    _check_suffix(path, ".mp4")
    check_mp4_writer()
    from fractions import Fraction

    import av

    frames = video_frames(video, scale)
    if frames.shape[-1] == 1:
        frames = frames.repeat(3, axis=-1)
    h, w = frames.shape[1:3]
    frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp: str) -> None:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)

    atomic_write(path, write)
    return path
