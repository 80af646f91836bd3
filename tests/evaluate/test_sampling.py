"""Using a saved model: loading it for sampling, PNG output, the sample command's errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from tests.tiny_models import wake_output_layers

from zigma.cli import main
from zigma.evaluate import load_for_sampling, write_samples
from zigma.models import ZigMa, ZigMaConfig


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_classes=3
        )
    )
    wake_output_layers(model)  # samples depend on the weights
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_transport_json_is_used(model_dir):
    loaded = load_for_sampling(model_dir)
    assert loaded.transport.path == "linear" and loaded.transport.prediction == "velocity"
    (model_dir / "transport.json").write_text(json.dumps({"path": "gvp"}))
    assert load_for_sampling(model_dir).transport.path == "gvp"
    (model_dir / "transport.json").write_text(json.dumps({"pth": "gvp"}))
    with pytest.raises(ValueError, match="unknown TransportConfig key 'pth'"):
        load_for_sampling(model_dir)


def test_write_samples(tmp_path):
    images = torch.rand(5, 3, 8, 8) * 2 - 1
    paths = write_samples(images, tmp_path / "grid.png", tmp_path / "each")
    assert len(paths) == 6
    with Image.open(tmp_path / "each" / "000004.png") as im:
        assert im.size == (8, 8)
    back = torch.tensor(np.array(Image.open(tmp_path / "each" / "000000.png")))
    expected = ((images[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert (back.int() - expected.int()).abs().max() <= 1


def test_cli_sample(model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = [
        "sample",
        "--ckpt",
        str(model_dir),
        "--out",
        str(out),
        "--num",
        "6",
        "--steps",
        "3",
        "--seed",
        "7",
        "--cfg",
        "2",
    ]
    assert main(argv) == 0
    first = out.read_bytes()
    assert main(argv) == 0
    assert out.read_bytes() == first  # bit-identical for the same seed
    with Image.open(out) as im:
        assert im.format == "PNG"
        grid = np.array(im)
    assert main([*argv, "--scale", "1"]) == 0
    with Image.open(out) as im:
        small = np.array(im)
    # 6 images of 8 px, 3 per row (one column per class) with 2 px gaps and border...
    assert small.shape == (2 * 8 + 3 * 2, 3 * 8 + 4 * 2, 3)
    # ...and by default the whole grid enlarged 8x (nearest), so tiles are 64 px
    assert np.array_equal(grid, small.repeat(8, 0).repeat(8, 1))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.jpg"], "must be a .png"),
        ([], "give --out"),
        (["--out", "x.png", "--class", "9"], "class must be in 0..2"),
        (["--out", "x.png", "--sampler", "eulr"], "sampler must be one of"),
        (["--out", "x.png", "--scale", "0"], "argument --scale: must be in 1..16"),
        (["--out", "x.png", "--device", "cpu", "--cuda-graphs"], "--cuda-graphs needs a CUDA"),
    ],
)
def test_cli_sample_errors(model_dir, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "--ckpt", str(model_dir), "--steps", "2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "x.png").exists()


def test_cli_sample_rejects_foreign_folders(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"junk")
    assert main(["sample", "--ckpt", str(tmp_path), "--out", str(tmp_path / "o.png")]) == 2
    assert "not a zigma model config" in capsys.readouterr().err
    assert main(["sample", "--ckpt", str(tmp_path / "none"), "--out", "o.png"]) == 2


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(model_dir, bad):
    from safetensors.torch import load_file, save_file

    weights = model_dir / "model.safetensors"
    state = load_file(weights)
    state["blocks.0.mixer.D"][0] = bad
    state["final_layer.linear.weight"][1, 2] = bad
    save_file(state, weights)
    with pytest.raises(ValueError, match=r"m: 2 of \d+ weight tensors hold NaN or Inf"):
        load_for_sampling(model_dir)
