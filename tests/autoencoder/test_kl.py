"""Our KL autoencoder ("zigma-kl"): shapes, the posterior and loss against closed forms, save /
load round trips, the recorded-hash check, and one-line errors before any compute."""

import hashlib
import json
import math

import pytest
import torch

from zigma.autoencoder import (
    KLAutoencoder,
    KLConfig,
    fit_latent_scale,
    kl_preset,
    load_autoencoder,
    psnr,
    save_autoencoder,
)
from zigma.config import ConfigError


def _model(seed=0, **kw) -> KLAutoencoder:
    """A small model with random (not init) weights, so a round trip has something to keep."""
    torch.manual_seed(seed)
    model = KLAutoencoder(KLConfig(channels=(8, 16, 16), **kw))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _images(n=3, c=3, side=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, side, side, generator=g) * 2 - 1


@pytest.mark.parametrize(("f", "side"), [(4, 32), (8, 32), (4, 20)])
def test_presets_shapes(f, side):
    model = KLAutoencoder(kl_preset(f))
    assert (model.downsample, model.latent_channels, model.kind) == (f, 4, "zigma-kl")
    x = _images(2, side=side)
    z = model.encode(x)
    assert z.shape == (2, 4, side // f, side // f)
    assert model.decode(z).shape == x.shape


def test_grayscale_and_other_latent_widths():
    model = KLAutoencoder(KLConfig(image_channels=1, latent_channels=8, channels=(8, 16)))
    z = model.encode(_images(2, c=1, side=8))
    assert z.shape == (2, 8, 4, 4) and model.decode(z).shape == (2, 1, 8, 8)


def test_config_errors():
    with pytest.raises(ConfigError, match="multiple of groups"):
        KLConfig(channels=(12, 16))
    with pytest.raises(ConfigError, match="2 to 5 levels"):
        KLConfig(channels=(16,))
    with pytest.raises(ConfigError, match="downsample must be 4 or 8"):
        kl_preset(2)


def test_scale_shift_and_sampling_follow_the_moments():
    model = _model()
    model.scaling_factor, model.shift_factor = 0.5, 0.25
    x = _images()
    mean, logvar = model.moments(x)
    mean, std = mean.detach(), torch.exp(0.5 * logvar.detach())
    torch.testing.assert_close(model.encode(x), (mean - 0.25) * 0.5)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    got = model.encode(x, sample=torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, (mean + std * noise - 0.25) * 0.5)
    # decode undoes the scale and shift before the decoder network
    z = torch.randn(3, 4, 4, 4)
    torch.testing.assert_close(model.decode(z), model.decoder(z / 0.5 + 0.25).clamp(-1, 1))


def test_loss_kl_term_is_the_gaussian_kl():
    model = _model()
    x = _images()
    g = torch.Generator().manual_seed(0)
    loss0, parts0 = model.loss(x, kl_weight=0.0, generator=g)
    g = torch.Generator().manual_seed(0)
    loss1, parts1 = model.loss(x, kl_weight=2.0, generator=g)
    with torch.no_grad():
        mean, logvar = model.moments(x)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    want = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).mean()
    assert parts1["kl"] == pytest.approx(float(want), rel=1e-5)
    assert float((loss1 - loss0).detach()) == pytest.approx(2.0 * float(want), rel=1e-4)
    assert float(loss0.detach()) == pytest.approx(parts0["mse"], rel=1e-6)


def test_psnr_closed_form():
    x = _images()
    assert torch.allclose(psnr(x + 0.1, x), torch.full((3,), 10 * math.log10(4 / 0.01)))


def test_fit_latent_scale_normalises_the_latents():
    model = _model()
    x = _images(16)
    fit_latent_scale(model, x, batch_size=5)
    z = model.encode(x).double()
    assert abs(float(z.mean())) < 1e-5 and float(z.std()) == pytest.approx(1.0, abs=1e-5)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    model = _model()
    model.scaling_factor, model.shift_factor = 0.731, -0.12
    path = save_autoencoder(model, tmp_path / "ae", training={"psnr_db": 1.0})
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", "model.safetensors"]
    sha = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert model.weights_hash == sha[:16] and model.path == str(path)
    meta = json.loads((path / "config.json").read_text())
    assert meta["kind"] == "zigma-kl" and "not the Stable Diffusion VAE" in meta["note"]
    loaded = load_autoencoder(path)
    assert loaded.spec() == model.spec()
    want, got = model.state_dict(), loaded.state_dict()
    assert list(want) == list(got) and all(torch.equal(want[k], got[k]) for k in want)
    x = _images()
    assert torch.equal(loaded.encode(x), model.encode(x))
    z = model.encode(x)
    assert torch.equal(loaded.decode(z), model.decode(z))
    assert load_autoencoder(model.spec()).weights_hash == model.weights_hash
    assert not list(tmp_path.glob(".*"))  # no temp folder left behind


def test_save_never_replaces_a_folder(tmp_path):
    out = tmp_path / "ae"
    save_autoencoder(_model(0), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="not empty"):
        save_autoencoder(_model(1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / "empty").mkdir()  # an empty folder is fine
    save_autoencoder(_model(1), tmp_path / "empty")


def test_recorded_hash_mismatch_and_missing_folder(tmp_path):
    a, b = _model(0), _model(1)
    save_autoencoder(a, tmp_path / "a")
    save_autoencoder(b, tmp_path / "b")
    spec = a.spec()
    (tmp_path / "a" / "model.safetensors").write_bytes(
        (tmp_path / "b" / "model.safetensors").read_bytes()
    )  # someone retrained into the same folder
    with pytest.raises(ValueError) as e:
        load_autoencoder(spec)
    msg = str(e.value)
    assert str(tmp_path / "a") in msg and spec["hash"] in msg and b.weights_hash in msg
    assert "\n" not in msg
    with pytest.raises(FileNotFoundError) as e:
        load_autoencoder({**spec, "path": str(tmp_path / "gone")})
    assert str(tmp_path / "gone") in str(e.value) and spec["hash"] in str(e.value)
    # same weights, but the recorded latent width differs from the folder's
    with pytest.raises(ValueError, match="latent_channels 4 .recorded 8."):
        load_autoencoder({**b.spec(), "latent_channels": 8})


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        load_autoencoder(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file"):
        load_autoencoder(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_autoencoder(tmp_path / "empty")
    denoiser = tmp_path / "zigma-model"  # a zigma denoiser folder, not an autoencoder
    denoiser.mkdir()
    (denoiser / "config.json").write_text('{"class": "ZigMa", "config": {}}')
    with pytest.raises(ValueError, match="not an autoencoder folder"):
        load_autoencoder(denoiser)
    save_autoencoder(_model(), tmp_path / "ae")
    (tmp_path / "ae" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_autoencoder(tmp_path / "ae")


class _Calls:
    def __init__(self, module):
        self.n = 0
        module.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.n += 1


@pytest.mark.parametrize(
    ("images", "match"),
    [
        (torch.zeros(2, 3, 18, 16), "18x16 .* divisible by the downsample factor 4"),
        (torch.zeros(2, 1, 16, 16), "1 channels, this autoencoder takes 3"),
        (torch.zeros(3, 16, 16), r"\[B, C, H, W\]"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "floating point"),
        (torch.full((2, 3, 16, 16), 255.0), r"in \[-1, 1\]"),
        (torch.full((2, 3, 16, 16), float("nan")), r"in \[-1, 1\]"),
        (torch.zeros(0, 3, 16, 16), "non-empty"),
    ],
)
def test_bad_images_fail_before_compute(images, match):
    model = _model()
    calls = _Calls(model.encoder)
    with pytest.raises(ValueError, match=match) as e:
        model.encode(images)
    assert calls.n == 0 and "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("latents", "match"),
    [
        (torch.zeros(2, 3, 4, 4), "3 channels, this autoencoder's have 4"),
        (torch.zeros(4, 4, 4), r"\[B, C, h, w\]"),
        (torch.full((1, 4, 4, 4), float("inf")), "NaN or infinite"),
    ],
)
def test_bad_latents_fail_before_compute(latents, match):
    model = _model()
    calls = _Calls(model.decoder)
    with pytest.raises(ValueError, match=match):
        model.decode(latents)
    assert calls.n == 0
