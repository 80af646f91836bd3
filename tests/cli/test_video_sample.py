"""`zigma sample` on a video model: the frame grid, one GIF per sample, MP4 when PyAV is
installed, the video flags' one-line errors; the memory estimate and the trainer's preview."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence
from tests.tiny_models import wake_output_layers

from zigma.cli import _sample_bytes, main
from zigma.data import make_frame_grid, make_image_grid
from zigma.models import ZigMa, ZigMaConfig

FRAMES, SIZE = 3, 8


def _save_model(folder, input_size, channels):
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=input_size, in_channels=channels, patch_size=2, hidden_size=32, depth=2
        )
    )
    wake_output_layers(model)  # samples depend on the weights
    model.save_pretrained(folder)
    (folder / "transport.json").write_text(json.dumps({"path": "linear"}))
    return folder


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    """A random-weight grey video ZigMa, 3 frames of 8 x 8, as save_pretrained + transport."""
    return _save_model(tmp_path_factory.mktemp("video") / "m", (FRAMES, SIZE, SIZE), 1)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp("image") / "m", (SIZE, SIZE), 3)


def _gif(path) -> list[np.ndarray]:
    return [np.asarray(f.convert("L")) for f in ImageSequence.Iterator(Image.open(path))]


def test_sample_video_writes_frame_grid_and_gifs(video_model, tmp_path, capsys):
    grid_path, out_dir = tmp_path / "grid.png", tmp_path / "gifs"
    argv = ["sample", "--ckpt", str(video_model), "--num", "3", "--steps", "2", "--seed", "1"]
    assert main([*argv, "--out", str(grid_path), "--out-dir", str(out_dir), "--fps", "5"]) == 0
    assert "wrote 3 GIFs" in capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == [f"00000{i}.gif" for i in range(3)]
    scale = 64 // SIZE  # the default: enlarged to at least 64 px
    grid = np.asarray(Image.open(grid_path))
    assert grid.shape == ((3 * (SIZE + 2) + 2) * scale, (FRAMES * (SIZE + 2) + 2) * scale)
    for i in range(3):
        im = Image.open(out_dir / f"{i:06d}.gif")
        assert im.info["loop"] == 0 and im.info["duration"] == 200
        frames = _gif(out_dir / f"{i:06d}.gif")
        assert len(frames) == FRAMES  # random samples: no two frames are equal
        for t, frame in enumerate(frames):
            # grid row i, column t is sample i's frame t; grey GIFs are exact
            top, left = (2 + i * (SIZE + 2)) * scale, (2 + t * (SIZE + 2)) * scale
            cell = grid[top : top + SIZE * scale, left : left + SIZE * scale]
            np.testing.assert_array_equal(frame, cell)
        assert not np.array_equal(frames[0], frames[1])
    # same seed, same videos: the grid is reproducible
    again = tmp_path / "again.png"
    assert main([*argv, "--out", str(again)]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(again)), grid)


def test_sample_video_mp4(video_model, tmp_path, capsys):
    av = pytest.importorskip("av")
    out_dir = tmp_path / "d"
    argv = ["sample", "--ckpt", str(video_model), "--num", "2", "--steps", "1", "--mp4"]
    assert main([*argv, "--out-dir", str(out_dir), "--scale", "2"]) == 0
    assert "wrote 2 GIFs and MP4s" in capsys.readouterr().out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["000000.gif", "000000.mp4", "000001.gif", "000001.mp4"]
    with av.open(str(out_dir / "000001.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (2 * SIZE, 2 * SIZE, 3)
    gif = np.stack(_gif(out_dir / "000001.gif")).astype(int)
    assert np.abs(np.stack(frames).astype(int).mean(-1) - gif).mean() < 16  # lossy, but close


def _fails(argv, tmp_path, capsys, message):
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("zigma sample: error: "), err
    assert message in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--nrow", "2"], "one row per sample"),
        (["--fps", "0"], "--fps must be in (0, 100]"),
        (["--fps", "200"], "--fps must be in (0, 100]"),
        (["--mp4"], "--mp4 writes one MP4 per sample into --out-dir"),
        (["--attn-maps", "maps"], "video model"),
    ],
)
def test_video_flags_bad_input(video_model, tmp_path, capsys, extra, message):
    argv = ["sample", "--ckpt", str(video_model), "--num", "2", "--steps", "1"]
    _fails([*argv, "--out", str(tmp_path / "g.png"), *extra], tmp_path, capsys, message)


def test_mp4_without_pyav_is_refused_before_sampling(video_model, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # what `import av` sees when it is absent
    argv = ["sample", "--ckpt", str(video_model), "--num", "2", "--steps", "1", "--mp4"]
    _fails(
        [*argv, "--out-dir", str(tmp_path / "d")], tmp_path, capsys, "pip install 'zigma[video]'"
    )


@pytest.mark.parametrize("extra", [["--mp4"], ["--fps", "4"]])
def test_video_flags_on_an_image_model(image_model, tmp_path, capsys, extra):
    argv = ["sample", "--ckpt", str(image_model), "--num", "2", "--steps", "1"]
    argv += ["--out-dir", str(tmp_path / "d"), *extra]
    _fails(argv, tmp_path, capsys, "is an image model")


def test_sample_bytes_counts_frames():
    """The estimate against the grids actually built: samples as fp32 three times over, the
    grid (RGB bytes, scaled) three times over."""
    for num, shape, nrow, scale in [(5, (1, 4, 8, 6), None, 2), (3, (3, 7, 9, 9), None, 1)]:
        grid = make_frame_grid(torch.zeros(num, *shape))
        expect = 3 * 4 * num * int(np.prod(shape)) + 3 * grid.width * grid.height * 3 * scale**2
        assert _sample_bytes(num, shape, nrow, scale) == expect
    for num, shape, nrow, scale in [(5, (3, 8, 6), 2, 2), (10, (1, 9, 9), None, 1)]:
        grid = make_image_grid(torch.zeros(num, *shape), nrow)
        expect = 3 * 4 * num * int(np.prod(shape)) + 3 * grid.width * grid.height * 3 * scale**2
        assert _sample_bytes(num, shape, nrow, scale) == expect


def test_trainer_preview_of_a_video_model(tmp_path):
    from zigma.train import build_config
    from zigma.train.export import preview_grid, save_preview

    cfg = build_config(
        "demo", overrides=["preview.num_samples=2", "preview.steps=1", "preview.guidance_scale=1"]
    )
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=(FRAMES, SIZE, SIZE), in_channels=3, patch_size=2, hidden_size=32, depth=2
        )
    )
    samples, nrow = preview_grid(model, cfg, torch.device("cpu"), None)
    assert samples.shape == (2, 3, FRAMES, SIZE, SIZE)
    path = save_preview(samples, tmp_path / "step.png", nrow)
    small = np.asarray(make_frame_grid(samples))
    got = np.asarray(Image.open(path))
    scale = 64 // SIZE
    assert got.shape == (small.shape[0] * scale, small.shape[1] * scale, 3)
    np.testing.assert_array_equal(got[::scale, ::scale], small)
    # images keep their rows of nrow
    images = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    img_path = save_preview(images, tmp_path / "img.png", 2)
    ref = make_image_grid(images, 2, scale=scale)
    np.testing.assert_array_equal(np.asarray(Image.open(img_path)), np.asarray(ref))
