"""Latent diffusion end to end through the CLI on CPU: prepare -> train on latents -> sample
decodes to PNGs of the image size with the recorded autoencoder; and the one-line errors
(missing or different autoencoder, latents of another size, an unfinished folder)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from zigma.autoencoder import KLAutoencoder, KLConfig, save_autoencoder
from zigma.cli import main
from zigma.config import ConfigError
from zigma.train import build_config

# the latent-demo preset, shrunk to seconds
_TINY = [
    "model.hidden_size=32", "model.depth=2", "model.num_orders=2", "steps=3", "batch_size=8",
    "ckpt_every=0", "preview.every=3", "preview.num_samples=4", "preview.steps=2",
    "logging.every=1", "device=cpu",
]  # fmt: skip


def _save_vae(folder, seed=0):
    torch.manual_seed(seed)
    save_autoencoder(KLAutoencoder(KLConfig(channels=(8, 16, 16))), folder)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A VAE, a prepared folder (shapes at 16 px -> 4x4x4 latents) and a 3-step latent run."""
    root = tmp_path_factory.mktemp("latent")
    _save_vae(root / "vae")
    lat, run = root / "lat", root / "run"
    assert main(["prepare", "--data", "shapes", "--vae", str(root / "vae"), "--out", str(lat),
                 "--size", "16", "--shard-size", "16", "--device", "cpu",
                 "data.num_samples=40"]) == 0  # fmt: skip
    code = main(
        ["train", "--preset", "latent-demo", "--out", str(run), f"data.data_dir={lat}", *_TINY]
    )
    assert code == 0
    return root


def test_prepare_train_sample_decodes_to_image_size(trained, capsys):
    run = trained / "run"
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["vae"]["hash"] and cfg["data"]["channels"] == 4 and cfg["data"]["resolution"] == 4
    assert json.loads((run / "model" / "autoencoder.json").read_text()) == cfg["vae"]
    assert Image.open(run / "samples" / "step_0000003.png").size[1] >= 16  # decoded preview
    out = trained / "pngs"
    args = ["sample", "--ckpt", str(run), "--out-dir", str(out), "--num", "2", "--steps", "2"]
    assert main([*args, "--device", "cpu"]) == 0
    with Image.open(out / "000000.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"
    # a checkpoint folder (no model/) decodes with the spec in its run config
    ckpt = run / "checkpoints" / "step_0000003"
    assert main(["sample", "--ckpt", str(ckpt), "--out", str(trained / "g.png"), "--num", "2",
                 "--steps", "2", "--device", "cpu"]) == 0  # fmt: skip


def test_sample_decodes_the_latents_as_sampled(trained):
    """The PNGs are the decoder's images of the sampled latents, not of latents clamped to
    [-1, 1] (unit-variance latents spread past it, so a clamp would change the pictures)."""
    from zigma.autoencoder import load_autoencoder
    from zigma.evaluate import load_for_sampling
    from zigma.generate import generate, grid_conditions

    run, out = trained / "run", trained / "unclamped"
    assert main(["sample", "--ckpt", str(run), "--out-dir", str(out), "--num", "2", "--steps",
                 "2", "--seed", "3", "--device", "cpu"]) == 0  # fmt: skip
    loaded = load_for_sampling(run)
    cond = grid_conditions(loaded.model, 2)
    latents = generate(loaded.model, loaded.transport, 2, cond=cond, seed=3, steps=2,
                       output=lambda x: x)  # fmt: skip
    assert latents.abs().max() > 1.2  # the case a clamp would get wrong
    decoder = load_autoencoder(trained / "vae")
    want = ((decoder.decode(latents) + 1) * 127.5).round().clamp(0, 255)
    clamped = ((decoder.decode(latents.clamp(-1, 1)) + 1) * 127.5).round().clamp(0, 255)
    for i in range(2):
        png = torch.from_numpy(np.array(Image.open(out / f"{i:06d}.png"))).permute(2, 0, 1)
        assert (png.float() - want[i]).abs().max() <= 1
        assert (png.float() - clamped[i]).abs().max() > 1


def test_sample_needs_the_recorded_autoencoder(trained, capsys):
    run, vae = trained / "run", trained / "vae"
    spec = json.loads((run / "model" / "autoencoder.json").read_text())
    moved = trained / "vae-moved"
    shutil.move(vae, moved)
    try:
        base = ["sample", "--ckpt", str(run), "--out", str(trained / "x.png"), "--num", "1"]
        base += ["--steps", "1", "--device", "cpu"]
        capsys.readouterr()
        assert main(base) == 2
        err = capsys.readouterr().err
        assert str(vae) in err and spec["hash"] in err and len(err.strip().splitlines()) == 1
        assert main([*base, "--vae", str(moved)]) == 0  # relocated: same weights, hash checked
        # a new run whose previews cannot be decoded stops before writing anything
        new = trained / "run-novae"
        lat = f"data.data_dir={trained / 'lat'}"
        assert main(["train", "--preset", "latent-demo", "--out", str(new), lat, *_TINY]) == 2
        assert "preview.every=0" in capsys.readouterr().err and not new.exists()
        _save_vae(trained / "vae-other", seed=1)
        assert main([*base, "--vae", str(trained / "vae-other")]) == 2
        err = capsys.readouterr().err  # names the given folder and the recorded spec
        assert "weights hash" in err and str(trained / "vae-other") in err
        assert f"recorded zigma-kl autoencoder at {vae}" in err and spec["hash"] in err
    finally:
        shutil.move(moved, vae)


def test_a_run_keeps_to_the_autoencoder_of_its_latents(trained):
    lat = trained / "lat"
    cfg = build_config("latent-demo", overrides=[f"data.data_dir={lat}", "device=cpu"])
    index = json.loads((lat / "index.json").read_text())
    assert cfg.resolved(0).vae == index["autoencoder"]
    # a resumed run whose folder was re-prepared with other weights stops
    other = dataclasses.replace(cfg, vae={**index["autoencoder"], "hash": "0" * 16})
    with pytest.raises(ConfigError, match="were made by autoencoder"):
        other.resolved(0)
    with pytest.raises(ConfigError, match="vae is recorded for data.name='latents' only"):
        build_config("demo", base={"vae": index["autoencoder"]})


def test_latents_of_another_size_are_one_line_errors(trained, capsys):
    lat = trained / "lat"
    with pytest.raises(ConfigError, match=r"model.input_size \(8, 8\) does not match the latents"):
        build_config("latent-demo", overrides=[f"data.data_dir={lat}", "model.input_size=[8,8]"])
    with pytest.raises(ConfigError, match="model.in_channels 3 does not match the latents"):
        build_config("latent-demo", overrides=[f"data.data_dir={lat}", "model.in_channels=3"])
    # the paper preset expects 128x128 latents
    capsys.readouterr()
    out = trained / "run-faces"
    assert main(["train", "--preset", "faceshq-1024", "--out", str(out),
                 f"data.data_dir={lat}", "device=cpu"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "(128, 128) does not match the latents" in err and "4x4x4" in err
    assert not out.exists()
    # a folder prepare has not finished, or none at all
    half = trained / "half"
    assert main(["prepare", "--data", "shapes", "--vae", str(trained / "vae"), "--out", str(half),
                 "--size", "16", "--shard-size", "8", "--max-shards", "1", "--device", "cpu",
                 "data.num_samples=20"]) == 0  # fmt: skip
    assert "not finished" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="prepare has not finished"):
        build_config("latent-demo", overrides=[f"data.data_dir={half}"])
    assert main(["train", "--preset", "latent-demo", "--out", str(out), "device=cpu"]) == 2
    assert "data.data_dir is required" in capsys.readouterr().err


def test_prepare_refuses_another_autoencoder_in_one_line(trained, capsys):
    _save_vae(trained / "vae-b", seed=2)
    lat = trained / "lat"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in lat.iterdir())
    capsys.readouterr()
    assert main(["prepare", "--data", "shapes", "--vae", str(trained / "vae-b"), "--out",
                 str(lat), "--size", "16", "--shard-size", "16", "--device", "cpu",
                 "data.num_samples=40"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "another autoencoder" in err and len(err.strip().splitlines()) == 1
    assert sorted((p.name, p.stat().st_mtime_ns) for p in lat.iterdir()) == before


def test_prepare_an_image_folder_with_flip_copies(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        pixels = rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)  # not square: center crop
        Image.fromarray(pixels).save(folder / f"{i}.png")
    (folder / "broken.png").write_bytes(b"not a png")
    _save_vae(tmp_path / "vae")
    args = ["prepare", "--data", "folder", f"data.data_dir={folder}", "data.min_size=1",
            "--vae", str(tmp_path / "vae"), "--out", str(tmp_path / "lat"), "--size", "16",
            "--flip", "--device", "cpu"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "6 latents of 4x4x4 in 1 shards" in out and "skipped" in out
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    assert index["flip"] and index["data"]["data_dir"] == str(folder) and index["num_items"] == 6
    assert main([*args[:5], "data.resolution=32", *args[5:]]) == 2
    assert "--size 16 and data.resolution=32 disagree" in capsys.readouterr().err
