"""Domain classifiers (zigma.evaluate.classifier): the shipped weights load with their hash,
read fresh test items correctly, give deterministic features whose Fréchet distance (numpy
closed form here) is small between splits and grows with damage; conditioning accuracy; the
rebuild path on a tiny synthetic IDX set; bad input."""

import hashlib
import json
import math
import shutil
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zigma.cli import main
from zigma.data.idx import FASHION_MNIST_DEBIAN_DIR, IdxDataset, fashion_mnist, write_idx
from zigma.data.shapes import ShapesDataset
from zigma.data.video import MovingMNIST, MovingShapes
from zigma.evaluate.classifier import (
    DATASETS,
    WEIGHTS_DIR,
    FrameFeatures,
    ImageClassifier,
    VideoClassifier,
    conditioning_accuracy,
    dataset_spec,
    load_classifier,
    load_frame_features,
    train_classifier,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = [d for d, s in DATASETS.items() if s.shipped]
needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST files not installed (apt-get install dataset-fashion-mnist)",
)


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Closed-form Fréchet distance of Gaussians fitted to the rows of a and b (float64):
    |mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2)."""
    a, b = a.double().numpy(), b.double().numpy()
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * cross)


def shapes_images(split, indices, style="centered", resolution=16):
    ds = ShapesDataset(max(indices) + 1, resolution, 3, 0, split, style)
    scenes = [ds.scene(i) for i in indices]
    imgs = np.stack([np.asarray(ds.render(s)) for s in scenes])
    return torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(), torch.tensor(
        [s.label for s in scenes]
    )


def moving_shapes_clips(split, indices, frames=8):
    ds = MovingShapes(max(indices) + 1, 16, frames, 1, 0, split)
    clips, labels = [], []
    for i in indices:
        looks, sprites = ds.specs(i)
        clips.append(torch.from_numpy(ds.render(looks, sprites)).permute(3, 0, 1, 2))
        labels.append(sprites[0].label)
    return torch.stack(clips), torch.tensor(labels)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1.0) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = images.float()
    c = x.shape[1]
    x = F.conv2d(
        F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c
    )
    return x.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- shipped weights


@pytest.mark.parametrize("dataset", SHIPPED)
def test_shipped_weights_load_with_their_hash(dataset):
    path = WEIGHTS_DIR / f"{dataset}.safetensors"
    assert path.stat().st_size < 1 << 20  # small enough to ship
    config = json.loads(path.with_suffix(".json").read_text())
    model = load_classifier(dataset)
    d = model.describe()
    assert d["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == config["sha256"]
    spec = dataset_spec(dataset)
    assert d["modality"] == spec.modality and d["dim"] == 128
    prefix = "FD-" if spec.modality == "image" else "FVD-proxy-"
    assert d["name"] == f"{prefix}{dataset}" + ("-classifier" if spec.modality == "image" else "")
    assert "FID" not in d["name"] and d["name"] != "FVD" and "bilinear" in d["resize"]
    assert config["recipe"]["command"].startswith(f"zigma eval-classifier --data {dataset}")
    assert config["heldout_accuracy"]["class"] > 0.7  # moving-fashion-mnist: 0.77


def test_package_data_ships_the_weights():
    """pyproject's package-data globs cover every file in weights/ (so a wheel installs them)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["zigma.evaluate"]
    files = sorted(p.name for p in WEIGHTS_DIR.iterdir())
    assert files == sorted(f"{d}.{ext}" for d in SHIPPED for ext in ("json", "safetensors"))
    for name in files:
        assert any(fnmatch(f"weights/{name}", g) for g in globs), name


def test_shapes_heldout_accuracy_on_fresh_items():
    """Test-split items past the 2000 scored when training: the centred 16 px style of the
    shipped models, and full-style 32 px images resized to 16."""
    model = load_classifier("shapes")
    images, labels = shapes_images("test", range(2000, 2400))
    assert conditioning_accuracy(model, images, labels)["accuracy"] > 0.95
    images, labels = shapes_images("test", range(2000, 2300), "full", 32)
    assert conditioning_accuracy(model, images, labels)["accuracy"] > 0.7


@needs_fashion
def test_fashion_heldout_accuracy_and_padding_undone():
    model = load_classifier("fashion-mnist")
    test = fashion_mnist("test")
    images = torch.from_numpy(test.images[-600:]).unsqueeze(1)
    labels = torch.from_numpy(test.labels[-600:])
    assert conditioning_accuracy(model, images, labels)["accuracy"] > 0.85
    # a 32 px model's images are the 28 px ones padded (IdxDataset); the crop undoes it exactly,
    # and RGB copies of gray images average back to the same gray
    padded = IdxDataset(test.images[-50:], test.labels[-50:], test.class_names, "{name}", 32, 3)
    as32 = torch.stack([padded[i]["image"] for i in range(50)])
    as32 = ((as32 + 1) * 127.5).round().to(torch.uint8)
    assert as32.shape == (50, 3, 32, 32)
    torch.testing.assert_close(model(as32), model(images[-50:]), atol=1e-5, rtol=1e-5)


def test_moving_shapes_heldout_accuracy_on_fresh_clips():
    model = load_classifier("moving-shapes")
    assert isinstance(model, VideoClassifier)
    clips, labels = moving_shapes_clips("test", range(2000, 2200))
    assert conditioning_accuracy(model, clips, labels)["accuracy"] > 0.95
    ds = MovingShapes(2200, 16, 8, 1, 0, "test")
    pred = model.predict(clips)
    speed_mid = 0.05
    truth_fast = torch.tensor(
        [
            math.hypot(ds.specs(i)[1][0].vx, ds.specs(i)[1][0].vy) >= speed_mid
            for i in range(2000, 2200)
        ]
    )
    assert float((pred["speed"].bool() == truth_fast).float().mean()) > 0.7


@needs_fashion
def test_moving_fashion_heldout_accuracy_on_fresh_clips():
    model = load_classifier("moving-fashion-mnist")
    ds = MovingMNIST(fashion_mnist("test"), 2300, 32, 16, 1, 0, "test")
    sprites = [ds.sprites(i) for i in range(2000, 2150)]
    clips = torch.stack([torch.from_numpy(ds.render(s)).unsqueeze(0) for s in sprites])
    labels = torch.tensor([s[0].label for s in sprites])
    assert conditioning_accuracy(model, clips, labels)["accuracy"] > 0.65


# ---------------------------------------------------------------- features and FD


def test_features_deterministic_and_batch_independent():
    model = load_classifier("shapes")
    images, _ = shapes_images("test", range(64))
    a, b = model(images), model(images)
    assert a.dtype == torch.float32 and a.shape == (64, 128) and a.device.type == "cpu"
    assert torch.equal(a, b)
    torch.testing.assert_close(model(images[:10], batch_size=3), a[:10], atol=1e-5, rtol=1e-5)
    # a gray (1-channel) image reads as its RGB repetition
    gray = images[:8, :1]
    torch.testing.assert_close(model(gray), model(gray.expand(-1, 3, -1, -1)))


def test_fd_small_between_splits_and_monotone_in_blur():
    model = load_classifier("shapes")
    train, _ = shapes_images("train", range(600))
    test, _ = shapes_images("test", range(600))
    f_train, f_test = model(train), model(test)
    floor = frechet(f_train, f_test)
    blurred = [frechet(f_train, model(blur(test, s))) for s in (0.5, 1.0, 2.0)]
    noise = torch.randint(0, 256, test.shape, generator=torch.Generator().manual_seed(0))
    far = frechet(f_train, model(noise.to(torch.uint8)))
    assert floor < blurred[0] < blurred[1] < blurred[2] < far
    assert blurred[1] > 3 * floor and far > 20 * floor


def test_fvd_proxy_sees_motion_and_frame_fd_does_not():
    """Shuffling the frames of each clip keeps every frame (frame-FD unchanged: the same
    multiset of rows) but breaks the motion (FVD-proxy far above the split-to-split floor)."""
    video = load_classifier("moving-shapes")
    frames = load_frame_features("moving-shapes")
    train, _ = moving_shapes_clips("train", range(300))
    test, _ = moving_shapes_clips("test", range(300))
    g = torch.Generator().manual_seed(0)
    shuffled = torch.stack([c[:, torch.randperm(8, generator=g)] for c in test])
    f_train = video(train)
    floor = frechet(f_train, video(test))
    assert frechet(f_train, video(shuffled)) > 3 * floor
    f_test, f_shuf = frames(test), frames(shuffled)
    assert f_test.shape == (300 * 8, 64) and frames.describe()["name"] == "frame-FD-moving-shapes"
    frame_floor = frechet(frames(train), f_test)
    assert abs(frechet(f_test, f_shuf)) < 1e-4 * frame_floor  # zero up to rounding
    assert frame_floor < frechet(frames(train), frames(blur_clips(test)))


def blur_clips(clips: torch.Tensor) -> torch.Tensor:
    n, c, t, h, w = clips.shape
    flat = clips.transpose(1, 2).reshape(n * t, c, h, w)
    return blur(flat, 1.0).reshape(n, t, c, h, w).transpose(1, 2)


# ---------------------------------------------------------------- conditioning accuracy


def test_conditioning_accuracy_real_high_shuffled_near_chance():
    model = load_classifier("shapes")
    images, labels = shapes_images("test", range(3000, 3800))
    real = conditioning_accuracy(model, images, labels)
    assert real["accuracy"] > 0.95 and real["num_images"] == 800 and real["chance"] == 1 / 8
    assert all(a is not None and a > 0.8 for a in real["per_class"])
    g = torch.Generator().manual_seed(1)
    shuffled = conditioning_accuracy(model, images, labels[torch.randperm(800, generator=g)])
    sd = math.sqrt(1 / 8 * 7 / 8 / 800)  # binomial spread around chance
    assert abs(shuffled["accuracy"] - 1 / 8) < 4 * sd


# ---------------------------------------------------------------- rebuild path


def synthetic_mnist(folder: Path, per_class=(12, 6)) -> Path:
    """A tiny MNIST look-alike in IDX files: class k is a patch of stripes of period 2 + k % 5,
    vertical for k < 5, horizontal otherwise, at a random place and phase, over noise."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    grid = np.arange(28)
    for prefix, n in zip(("train", "t10k"), per_class, strict=True):
        labels = np.repeat(np.arange(10), n).astype(np.uint8)
        images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, k in enumerate(labels):
            period, phase = 2 + k % 5, int(rng.integers(0, 6))
            on = (grid + phase) % period < max(1, period // 2)
            stripes = np.where(on[None, :16] if k < 5 else on[:16, None], 250, 0)
            patch = np.broadcast_to(stripes, (16, 16)).astype(np.uint8)
            y, x = rng.integers(2, 10, 2)
            np.maximum(
                images[i, y : y + 16, x : x + 16], patch, out=images[i, y : y + 16, x : x + 16]
            )
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress=True)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def test_rebuild_mnist_on_synthetic_idx_reproducible(tmp_path, capsys):
    data = synthetic_mnist(tmp_path / "data")
    out_a, out_b = tmp_path / "a" / "mnist.safetensors", tmp_path / "b" / "mnist.safetensors"
    args = ["eval-classifier", "--data", "mnist", "--data-dir", str(data), "--steps", "20"]
    assert main([*args, "--batch-size", "16", "--out", str(out_a)]) == 0
    assert main([*args, "--batch-size", "16", "--out", str(out_b)]) == 0
    assert "FD-mnist-classifier" in capsys.readouterr().out
    assert out_a.read_bytes() == out_b.read_bytes()  # same seed, same machine: same weights
    model = load_classifier(out_a)
    assert isinstance(model, ImageClassifier) and model.config.recipe["steps"] == 20
    assert model.config.heldout_accuracy["class"] >= 0.6  # 60 test items; chance is 0.1
    config = json.loads(out_a.with_suffix(".json").read_text())
    assert config["sha256"] == hashlib.sha256(out_a.read_bytes()).hexdigest()
    # not shipped: the error says how to build it
    with pytest.raises(FileNotFoundError, match="zigma eval-classifier --data mnist"):
        load_classifier("mnist")


def test_rebuild_moving_mnist_path(tmp_path):
    data = synthetic_mnist(tmp_path / "data", (3, 2))
    model = train_classifier(
        "moving-mnist", steps=3, batch_size=4, data_dir=str(data), train_items=8, test_items=4,
        frames=4,
    )  # fmt: skip
    assert isinstance(model, VideoClassifier) and model.name == "FVD-proxy-moving-mnist"
    assert set(model.config.heldout_accuracy) == {"class", "direction", "speed", "frame_class"}
    path = model.save(tmp_path / "mm.safetensors")
    again = load_classifier(path)
    clips = torch.randint(0, 256, (2, 1, 4, 32, 32), dtype=torch.uint8)
    torch.testing.assert_close(again(clips), model(clips))
    assert FrameFeatures(again)(clips).shape == (8, 64)


# ---------------------------------------------------------------- bad input


def test_bad_input():
    model = load_classifier("shapes")
    ok = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        model(torch.zeros(2, 2, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        model(ok.float())
    with pytest.raises(ValueError, match="uint8 tensor"):
        model(ok[0])
    with pytest.raises(ValueError, match="square"):
        model(torch.zeros(2, 3, 16, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="labels"):
        conditioning_accuracy(model, ok, [0, 8])
    with pytest.raises(ValueError, match="2 images but 3 labels"):
        conditioning_accuracy(model, ok, [0, 1, 2])
    video = load_classifier("moving-shapes")
    with pytest.raises(ValueError, match="reads clips of 8"):
        video(torch.zeros(2, 3, 5, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="known"):
        load_classifier("cifar10")
    with pytest.raises(ValueError, match="known"):
        train_classifier("cifar10")
    with pytest.raises(ValueError, match="video classifier"):
        load_frame_features("shapes")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_classifier("/nope.safetensors")


def test_damaged_weights_refused(tmp_path):
    src = WEIGHTS_DIR / "shapes.safetensors"
    path = tmp_path / "shapes.safetensors"
    shutil.copy(src, path)
    shutil.copy(src.with_suffix(".json"), path.with_suffix(".json"))
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_classifier(path)


def test_cli_bad_arguments(tmp_path, capsys):
    assert (
        main(["eval-classifier", "--data", "cifar10", "--out", str(tmp_path / "x.safetensors")])
        == 2
    )
    assert main(["eval-classifier", "--data", "shapes", "--out", str(tmp_path / "x.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
    assert (
        main(
            [
                "eval-classifier",
                "--data",
                "shapes",
                "--frames",
                "4",
                "--out",
                str(tmp_path / "x.safetensors"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "x.safetensors").exists()


def test_classifiers_load_as_named_feature_extractors():
    """zigma eval finds the shipped classifiers through the extractor registry, each under its
    own name and weights hash; the image and video kinds are not interchangeable."""
    from zigma.evaluate import load_extractor

    image = load_extractor("classifier:shapes")
    assert image.describe()["name"] == "FD-shapes-classifier" and len(image.sha256) == 64
    x = torch.randint(0, 256, (3, 3, 16, 16), dtype=torch.uint8)
    assert image(x).shape == (3, image.dim)
    video = load_extractor("video-classifier:moving-shapes")
    assert video.name == "FVD-proxy-moving-shapes" and video.modality == "video"
    frames = load_extractor("frame-classifier:moving-shapes")
    assert frames.name == "frame-FD-moving-shapes"
    with pytest.raises(ValueError, match="video classifier"):
        load_extractor("classifier:moving-shapes")
    with pytest.raises(ValueError, match="image classifier"):
        load_extractor("video-classifier:shapes")
