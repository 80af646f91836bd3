"""Local diffusers autoencoders: tiny random-weight AutoencoderKL / AutoencoderTiny written with
``save_pretrained`` and loaded back offline, compared with diffusers' own calls."""

import json
import sys

import pytest
import torch

from zigma.autoencoder import load_autoencoder
from zigma.autoencoder.hf import import_diffusers

diffusers = pytest.importorskip("diffusers")

SCALE, SHIFT = 0.37, 0.15


def _tiny_kl(shift=None) -> "diffusers.AutoencoderKL":
    torch.manual_seed(0)
    return diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=SCALE,
        shift_factor=shift,
    )


@pytest.fixture(scope="module")
def kl_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "vae"
    _tiny_kl().save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def kl_shift_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd3") / "vae"
    _tiny_kl(shift=SHIFT).save_pretrained(folder, safe_serialization=True)
    return folder


def _images(n=2, side=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g) * 2 - 1


def test_kl_attributes_and_shapes(kl_dir):
    vae = load_autoencoder(kl_dir)
    assert (vae.kind, vae.downsample, vae.latent_channels, vae.image_channels) == (
        "diffusers-kl",
        2,
        4,
        3,
    )
    assert vae.scaling_factor == pytest.approx(SCALE) and vae.shift_factor == 0.0
    x = _images(side=24)  # any multiple of the downsample factor
    z = vae.encode(x)
    assert z.shape == (2, 4, 12, 12) == vae.latent_shape(x.shape) and z.dtype == torch.float32
    out = vae.decode(z)
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


@pytest.mark.parametrize("shifted", [False, True])
def test_kl_scale_and_shift_match_diffusers(kl_dir, kl_shift_dir, shifted):
    folder = kl_shift_dir if shifted else kl_dir
    shift = SHIFT if shifted else 0.0
    ours = load_autoencoder(folder)
    ref = diffusers.AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()
    x = _images()
    with torch.no_grad():
        dist = ref.encode(x).latent_dist
        want_mean = (dist.mode() - shift) * SCALE
        want_sample = (dist.sample(torch.Generator().manual_seed(7)) - shift) * SCALE
        want_images = ref.decode(want_mean / SCALE + shift).sample.clamp(-1, 1)
    torch.testing.assert_close(ours.encode(x, sample=False), want_mean)
    torch.testing.assert_close(ours.encode(x, torch.Generator().manual_seed(7)), want_sample)
    torch.testing.assert_close(ours.decode(want_mean), want_images)


def test_kl_mean_is_deterministic_and_samples_differ(kl_dir):
    vae = load_autoencoder(kl_dir)
    x = _images()
    a, b = vae.encode(x), vae.encode(x, sample=False)
    assert torch.equal(a, b)
    s1 = vae.encode(x, sample=torch.Generator().manual_seed(3))
    s2 = vae.encode(x, sample=torch.Generator().manual_seed(3))
    s3 = vae.encode(x, sample=torch.Generator().manual_seed(4))
    assert torch.equal(s1, s2) and not torch.equal(s1, s3) and not torch.equal(s1, a)


def test_spec_round_trip_and_hash_check(kl_dir, tmp_path):
    import shutil

    vae = load_autoencoder(kl_dir)
    spec = vae.spec()
    assert spec["path"] == str(kl_dir) and len(spec["hash"]) == 16
    again = load_autoencoder(json.loads(json.dumps(spec)))  # as a run config stores it
    assert again.weights_hash == spec["hash"]
    copy = tmp_path / "vae"
    shutil.copytree(kl_dir, copy)
    weights = copy / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last tensor's data
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="recorded") as e:
        load_autoencoder({**spec, "path": str(copy)})
    assert str(copy) in str(e.value) and spec["hash"] in str(e.value) and "\n" not in str(e.value)


def test_pipeline_folder_resolves_to_its_vae(kl_dir, tmp_path):
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(kl_dir, pipe / "vae")
    (pipe / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    vae = load_autoencoder(pipe)
    assert vae.path == str(pipe / "vae") and vae.kind == "diffusers-kl"


def test_tiny_autoencoder(tmp_path):
    torch.manual_seed(0)
    taesd = diffusers.AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8),
        decoder_block_out_channels=(8, 8, 8),
        num_encoder_blocks=(1, 1, 1),
        num_decoder_blocks=(1, 1, 1),
        latent_channels=4,
    )
    taesd.save_pretrained(tmp_path / "taesd", safe_serialization=True)
    vae = load_autoencoder(tmp_path / "taesd")
    assert (vae.kind, vae.downsample, vae.scaling_factor) == ("diffusers-tiny", 4, 1.0)
    x = _images()
    z = vae.encode(x, sample=True)  # deterministic: sampling does not apply
    assert z.shape == (2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(z, taesd.eval().encode(x).latents)
        torch.testing.assert_close(vae.decode(z), taesd.decode(z).sample.clamp(-1, 1))


def test_not_an_autoencoder_and_bin_weights(tmp_path):
    unet = tmp_path / "unet"
    unet.mkdir()
    (unet / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="not an autoencoder folder.*UNet2DModel"):
        load_autoencoder(unet)
    pickled = tmp_path / "bin"
    pickled.mkdir()
    (pickled / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    (pickled / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="safetensors only"):
        load_autoencoder(pickled)


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # what an absent package looks like
    with pytest.raises(ImportError, match=r"pip install 'zigma\[vae\]'"):
        import_diffusers()
