"""Video samples on disk: frame grids, GIFs read back with Pillow, MP4s read back with PyAV."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from zigma.data import make_frame_grid, save_frame_grid, save_gif, save_mp4
from zigma.data.video_io import MP4_INSTALL, check_mp4_writer


def _uint8(video: torch.Tensor) -> np.ndarray:
    """The reference conversion written out by hand: [C, T, H, W] in [-1, 1] -> [T, H, W, C]."""
    x = np.clip(video.numpy().astype(np.float64), -1, 1)
    return np.round((x + 1) * 127.5).astype(np.int64).transpose(1, 2, 3, 0)


def _gif_frames(path, channels: int = 3) -> tuple[Image.Image, list[np.ndarray]]:
    """Every frame of a GIF as [H, W, C] integers (C = ``channels``)."""
    im = Image.open(path)
    mode = "L" if channels == 1 else "RGB"
    frames = [np.asarray(f.convert(mode), np.int64) for f in ImageSequence.Iterator(im)]
    return im, [f[..., None] if channels == 1 else f for f in frames]


def _moving_square(c: int, t: int, h: int, w: int) -> torch.Tensor:
    """A bright square moving one pixel a frame on a dark ground: every frame differs."""
    v = -torch.ones(c, t, h, w)
    for i in range(t):
        v[:, i, 1:4, i : i + 3] = torch.linspace(0.2, 1.0, c)[:, None, None]
    return v


def test_frame_grid_rows_are_samples_columns_are_frames():
    g = torch.Generator().manual_seed(0)
    videos = torch.rand(3, 3, 4, 5, 6, generator=g) * 2 - 1
    pad = 2
    grid = np.asarray(make_frame_grid(videos, padding=pad), np.int64)
    n, _, t, h, w = videos.shape
    assert grid.shape == (n * (h + pad) + pad, t * (w + pad) + pad, 3)
    for i in range(n):
        ref = _uint8(videos[i])
        for f in range(t):
            top, left = pad + i * (h + pad), pad + f * (w + pad)
            np.testing.assert_array_equal(grid[top : top + h, left : left + w], ref[f])
    assert (grid[:pad] == 255).all() and (grid[:, :pad] == 255).all()  # white padding


def test_frame_grid_grey_and_scale(tmp_path):
    videos = _moving_square(1, 5, 6, 8)[None].repeat(2, 1, 1, 1, 1)
    path = save_frame_grid(videos, tmp_path / "g.png", scale=3)
    im = Image.open(path)
    assert im.mode == "L"
    assert im.size == ((5 * 10 + 2) * 3, (2 * 8 + 2) * 3)
    small = np.asarray(make_frame_grid(videos), np.int64)
    np.testing.assert_array_equal(np.asarray(im, np.int64)[::3, ::3], small)


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_round_trip_exact_with_few_colours(tmp_path, channels):
    video = _moving_square(channels, 6, 7, 10)
    path = save_gif(video, tmp_path / "v.gif", fps=10, scale=2)
    im, frames = _gif_frames(path, channels)
    assert im.n_frames == 6 and im.size == (20, 14)
    assert im.info["loop"] == 0 and im.info["duration"] == 100
    ref = _uint8(video).repeat(2, axis=1).repeat(2, axis=2)
    for got, r in zip(frames, ref, strict=True):
        np.testing.assert_array_equal(got, r)  # a handful of colours: no quantisation loss


def test_gif_many_colours_within_quantisation_error(tmp_path):
    g = torch.Generator().manual_seed(1)
    video = torch.rand(3, 4, 16, 20, generator=g) * 2 - 1  # 320 colours a frame, GIF keeps 256
    _, frames = _gif_frames(save_gif(video, tmp_path / "v.gif"))
    assert len(frames) == 4
    err = np.abs(np.stack(frames) - _uint8(video))
    assert err.mean() < 8 and err.max() < 96  # measured: mean ~3.6, max ~50


def test_gif_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "v.gif"
    save_gif(_moving_square(3, 3, 6, 6), path)
    save_gif(_moving_square(1, 4, 6, 6), path)
    assert Image.open(path).n_frames == 4
    assert [p.name for p in tmp_path.iterdir()] == ["v.gif"]  # no temp file left


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda p: save_gif(torch.zeros(3, 6, 6), p / "a.gif"), "video tensor"),
        (lambda p: save_gif(torch.zeros(2, 3, 6, 6), p / "a.gif"), "1 or 3 channels"),
        (lambda p: save_gif(torch.zeros(3, 0, 6, 6), p / "a.gif"), "empty"),
        (lambda p: save_gif(torch.zeros(3, 2, 6, 6), p / "a.png"), "expected a .gif"),
        (lambda p: save_gif(torch.zeros(3, 2, 6, 6), p / "a.gif", fps=0), "fps"),
        (lambda p: save_gif(torch.zeros(3, 2, 6, 6), p / "a.gif", scale=0), "scale"),
        (lambda p: make_frame_grid(torch.zeros(2, 3, 6, 6)), "[N, C, T, H, W]"),
        (lambda p: save_mp4(torch.zeros(3, 2, 6, 6), p / "a.gif"), "expected a .mp4"),
    ],
)
def test_bad_input_is_one_line_value_error(tmp_path, call, message):
    with pytest.raises(ValueError) as e:
        call(tmp_path)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_mp4_without_pyav_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` sees when it is absent
    for call in (
        check_mp4_writer,
        lambda: save_mp4(_moving_square(3, 2, 6, 6), tmp_path / "a.mp4"),
    ):
        with pytest.raises(ImportError) as e:
            call()
        assert str(e.value) == f"writing MP4 needs PyAV: {MP4_INSTALL}"
    assert MP4_INSTALL == "pip install 'zigma[video]'"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("channels, h, w, scale", [(3, 8, 12, 4), (1, 7, 9, 1)])
def test_mp4_round_trip(tmp_path, channels, h, w, scale):
    av = pytest.importorskip("av")
    video = _moving_square(channels, 5, h, w)
    path = save_mp4(video, tmp_path / "v.mp4", fps=5, scale=scale)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert float(stream.average_rate) == 5
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # odd sizes are padded to even by one repeated edge pixel (yuv420p)
    sh, sw = scale * h, scale * w
    assert len(frames) == 5 and frames[0].shape == (sh + sh % 2, sw + sw % 2, 3)
    ref = _uint8(video).repeat(scale, axis=1).repeat(scale, axis=2)
    got = np.stack(frames).astype(np.int64)[:, :sh, :sw]
    if channels == 1:
        got = got.mean(-1, keepdims=True)
    err = np.abs(got - ref)
    assert err.mean() < 12  # lossy H.264: close, not equal
