"""Video runs end to end on the offline moving shapes: the model's input follows the data's
frames, a run trains, resumes exactly and exports, ``zigma sample`` writes a frame grid and a
GIF per sample, and a mismatched model size is one line."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tests.train.conftest import tiny

from zigma.cli import main
from zigma.config import ConfigError
from zigma.models import from_pretrained
from zigma.train import train

VIDEO = ["data.name=moving-shapes", "data.frames=4", "model.scan_pattern=st"]


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("video") / "run"
    train(tiny(*VIDEO, steps=4, ckpt_every=2), out)
    return out


def test_a_video_run_trains_resumes_exactly_and_exports(tmp_path, video_run):
    model = from_pretrained(video_run / "model")
    assert model.config.input_size == (4, 16, 16) and model.config.is_video
    part = tmp_path / "part"
    train(tiny(*VIDEO, steps=2, ckpt_every=2), part)
    train(tiny(*VIDEO, steps=4, ckpt_every=2), part, resume=True)
    a = load_file(video_run / "checkpoints" / "step_0000004" / "model.safetensors")
    b = load_file(part / "checkpoints" / "step_0000004" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sample_writes_a_frame_grid_and_gifs(tmp_path, video_run):
    grid, gifs = tmp_path / "grid.png", tmp_path / "gifs"
    args = ["sample", "--ckpt", str(video_run), "--num", "3", "--steps", "2", "--scale", "1"]
    assert main([*args, "--out", str(grid), "--out-dir", str(gifs)]) == 0
    assert Image.open(grid).size == (4 * 18 + 2, 3 * 18 + 2)  # a row per sample, a column a frame
    files = sorted(gifs.iterdir())
    assert [f.suffix for f in files] == [".gif"] * 3
    assert Image.open(files[0]).size == (16, 16)


def test_a_model_size_that_is_not_the_clips_is_one_line():
    with pytest.raises(ConfigError, match=r"does not match data.frames 4 x data.resolution 16"):
        tiny(*VIDEO, "model.input_size=[16, 16]")
