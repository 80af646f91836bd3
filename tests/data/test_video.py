"""Video datasets: Moving-MNIST, moving shapes, folders of clips; their DataConfig names."""

import re

import numpy as np
import pytest
import torch
from PIL import Image

from zigma.config import ConfigError
from zigma.data import (
    MNIST_CAPTIONS,
    MNIST_CLASSES,
    DataConfig,
    IdxDataset,
    MovingMNIST,
    MovingShapes,
    VideoFolder,
    bounce,
    build_dataset,
    collate_batch,
    iterate_batches,
    write_idx,
)
from zigma.data.scenes import BACKGROUND
from zigma.data.video import direction_word


def _reflect(p0: float, v: float, high: float, t: np.ndarray) -> np.ndarray:
    """Closed form of a point bouncing in [0, high]: the free path folded by a triangle wave."""
    u = np.mod(p0 + v * t, 2 * high)
    return np.where(u <= high, u, 2 * high - u)


def _digits(n: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n random 28-px blobs (not centred, so a centre-of-mass error would show) and labels."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, 28, 28), np.uint8)
    for k in range(n):
        h, w = rng.integers(6, 20, size=2)
        top, left = rng.integers(0, 28 - h), rng.integers(0, 28 - w)
        images[k, top : top + h, left : left + w] = rng.integers(60, 256, size=(h, w))
    return images, np.arange(n) % 10


def _source(n: int = 10) -> IdxDataset:
    images, labels = _digits(n)
    return IdxDataset(images, labels, MNIST_CLASSES, MNIST_CAPTIONS)


def _com(frame: np.ndarray) -> tuple[float, float]:
    """(x, y) centre of mass of a 2-D array of non-negative weights."""
    ys, xs = np.indices(frame.shape)
    m = frame.sum()
    return float((xs * frame).sum() / m), float((ys * frame).sum() / m)


def test_bounce_matches_the_closed_form_reflection():
    rng = np.random.default_rng(1)
    t = np.arange(50)
    for _ in range(20):
        high = rng.uniform(5, 40)
        p0, v = rng.uniform(0, high), rng.uniform(-0.3, 0.3) * high
        np.testing.assert_allclose(bounce(p0, v, high, 50), _reflect(p0, v, high, t), atol=1e-9)


def test_moving_mnist_is_a_function_of_seed_split_and_index():
    src = _source()
    a, b = MovingMNIST(src, 8, frames=6, seed=3), MovingMNIST(src, 8, frames=6, seed=3)
    assert torch.equal(a[5]["image"], b[5]["image"]) and a[5]["caption"] == b[5]["caption"]
    assert not torch.equal(a[5]["image"], a[4]["image"])
    assert not torch.equal(a[5]["image"], MovingMNIST(src, 8, frames=6, seed=4)[5]["image"])
    test = MovingMNIST(src, 8, frames=6, seed=3, split="test")
    assert not torch.equal(a[5]["image"], test[5]["image"])
    item = a[5]
    assert item["image"].shape == (1, 6, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1


def test_moving_mnist_digit_stays_in_the_box_and_moves_like_a_reflected_point():
    src = _source()
    ds = MovingMNIST(src, 30, size=64, frames=40, seed=0)
    t = np.arange(40)
    high = 64 - 28
    bounced = 0
    for i in range(len(ds)):
        (s,) = ds.sprites(i)
        clip = np.rint((ds[i]["image"][0].double().numpy() + 1) * 127.5)  # [T, H, W], 0..255
        digit = src.images[s.source_index].astype(np.float64)
        dx, dy = _com(digit)
        x0, y0 = s.x[0], s.y[0]
        # independent: the closed-form reflection, rounded to the pasted pixel
        ex = np.round(_reflect(x0, s.vx, high, t)) + dx
        ey = np.round(_reflect(y0, s.vy, high, t)) + dy
        got = np.array([_com(f) for f in clip])
        # a .5 tie can round the other way after float steps: allow a pixel, rarely
        err = np.abs(got - np.stack([ex, ey], 1))
        assert err.max() <= 1.0 + 1e-6 and (err > 1e-6).mean() < 0.05
        # nothing is clipped: every frame holds the whole digit
        np.testing.assert_allclose(clip.sum((1, 2)), digit.sum(), rtol=1e-9)
        bounced += bool(np.any(np.diff(np.sign(np.diff(s.x))) != 0))
    assert bounced > 0  # some digit did reflect off a side wall


def test_moving_mnist_label_and_caption():
    src = _source()
    ds = MovingMNIST(src, 6, frames=4)
    for i in range(6):
        (s,) = ds.sprites(i)
        item = ds[i]
        assert int(item["label"]) == int(src.labels[s.source_index])
        assert item["caption"] == f"the digit {s.label} moving {direction_word(s.vx, s.vy)}"
    two = MovingMNIST(src, 6, frames=4, digits=2, channels=3)
    item = two[2]
    s0, s1 = two.sprites(2)
    assert item["image"].shape == (3, 4, 64, 64) and int(item["label"]) == s0.label
    assert re.fullmatch(
        rf"the digit {s0.label} moving [a-z-]+ and the digit {s1.label} .+", item["caption"]
    )
    assert int(MovingMNIST(src, 6, frames=4, labelled=False)[0]["label"]) == -1


def test_direction_words():
    assert direction_word(1, 0) == "right" and direction_word(0, -1) == "up"
    assert direction_word(-1, 1) == "down-left" and direction_word(-2, -0.1) == "left"


def test_moving_mnist_from_idx_files_through_dataconfig(tmp_path):
    images, labels = _digits(12)
    for prefix in ("train", "t10k"):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    cfg = DataConfig(name="moving-mnist", data_dir=str(tmp_path), resolution=32, frames=5,
                     num_samples=7, digits=2)  # fmt: skip
    assert cfg.is_video and cfg.resolved_channels == 1
    ds = build_dataset(cfg)
    assert len(ds) == 7 and ds.digit_side == 14  # the digit scales with the box
    batch = collate_batch([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 1, 5, 32, 32) and batch["label"].dtype == torch.long


def test_moving_shapes_deterministic_and_tracks_its_trajectory():
    ds = MovingShapes(10, size=32, frames=12, seed=1)
    assert torch.equal(ds[3]["image"], MovingShapes(10, size=32, frames=12, seed=1)[3]["image"])
    bg = torch.tensor(BACKGROUND, dtype=torch.float64).view(3, 1, 1) / 127.5 - 1
    t = np.arange(12)
    for i in range(10):
        looks, (s,) = ds.specs(i)
        item = ds[i]
        assert item["image"].shape == (3, 12, 32, 32)
        assert int(item["label"]) == ["circle", "square", "triangle"].index(looks[0]["kind"])
        assert item["caption"].endswith(f"{looks[0]['kind']} moving {direction_word(s.vx, s.vy)}")
        r = looks[0]["diameter"] / 2
        np.testing.assert_allclose(s.x, r + _reflect(s.x[0] - r, s.vx, 1 - 2 * r, t), atol=1e-9)
        # a rigid translation: the drawn shape's centroid moves as its centre does
        weight = (item["image"].double() - bg[:, None]).abs().sum(0).numpy()  # [T, H, W]
        com = np.array([_com(f) for f in weight])
        moved = np.stack([s.x - s.x[0], s.y - s.y[0]], 1) * 32
        np.testing.assert_allclose(com - com[0], moved, atol=0.35)


def _png(path, size, level):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (level, level, level)).save(path)


def _level(x: torch.Tensor) -> float:
    return round((float(x.mean()) + 1) * 127.5)


def test_frame_folders_happy_path_and_skip_counting(tmp_path):
    for k in range(7):
        _png(tmp_path / "a" / "clip1" / f"{k:03d}.png", (16, 12), 20 + 10 * k)
        _png(tmp_path / "b" / "clip2" / f"f{k:02d}.png", (12, 16), 100 + 5 * k)
        _png(tmp_path / "b" / "mixed" / f"{k:03d}.png", (16, 12) if k else (20, 12), 50)
        _png(tmp_path / "a" / "corrupt" / f"{k:03d}.png", (16, 12), 50)
    for k in range(4):
        _png(tmp_path / "a" / "short" / f"{k:03d}.png", (16, 12), 50)
    (tmp_path / "a" / "corrupt" / "003.png").write_bytes(b"not a png at all")
    (tmp_path / "loose.png").write_bytes(b"x")

    ds = VideoFolder(tmp_path, resolution=8, frames=3, stride=2)
    assert ds.class_names == ("a", "b") and len(ds) == 2
    assert [c.label for c in ds.clips] == [0, 1]
    reasons = dict((p.split("/")[-1], r) for p, r in ds.skipped)
    assert set(reasons) == {"short", "mixed", "corrupt", "loose.png"}
    assert reasons["short"].startswith("too short") and reasons["mixed"].startswith("mixed frame")
    assert "1 too short" in ds.skip_summary and "1 mixed frame sizes" in ds.skip_summary
    assert ds.skip_summary.startswith("skipped 4 clips")

    item = ds[0]  # 7 frames, a window of 5: the middle one starts at frame 1
    assert item["image"].shape == (3, 3, 8, 8) and int(item["label"]) == 0
    assert [_level(item["image"][:, j]) for j in range(3)] == [30, 50, 70]
    assert ds[1]["caption"] == "b"
    starts = set()
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        clip = ds.get_item(0, g)["image"]
        levels = [_level(clip[:, j]) for j in range(3)]
        assert levels[1] - levels[0] == levels[2] - levels[1] == 20  # stride 2
        starts.add((levels[0] - 20) // 10)
    assert starts == {0, 1, 2}  # every window start that fits is drawn

    cfg = DataConfig(name="video-folder", data_dir=str(tmp_path), resolution=8, frames=3,
                     frame_stride=2, channels=1)  # fmt: skip
    same = build_dataset(cfg)
    assert len(same) == 2 and same[0]["image"].shape == (1, 3, 8, 8)
    with pytest.raises(FileNotFoundError, match="no 'test' split for the clip folder"):
        build_dataset(cfg, "test")


def test_video_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        VideoFolder(tmp_path / "nope")
    for k in range(2):
        _png(tmp_path / "a" / "c" / f"{k}.png", (16, 16), 9)
    with pytest.raises(ValueError, match=r"no usable clips .*\(1 too short\)"):
        VideoFolder(tmp_path, frames=3)


def test_video_files_with_pyav(tmp_path):
    av = pytest.importorskip("av")

    def write(path, n, size=32):
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), "w") as out:
            stream = out.add_stream("mpeg4", rate=8)
            stream.width = stream.height = size
            stream.pix_fmt = "yuv420p"
            for k in range(n):
                rgb = np.full((size, size + 0, 3), 20 + 20 * k, np.uint8)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                for packet in stream.encode(frame):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)

    write(tmp_path / "walk" / "v1.mp4", 10)
    write(tmp_path / "run" / "v2.mp4", 10)
    write(tmp_path / "run" / "short.mp4", 3)
    (tmp_path / "run" / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypjunk" * 4)
    ds = VideoFolder(tmp_path, resolution=16, frames=4, stride=2)
    assert ds.decoder == "av" and ds.class_names == ("run", "walk") and len(ds) == 2
    assert "1 too short" in ds.skip_summary and "1 undecodable" in ds.skip_summary
    item = ds[1]  # walk/v1: 10 frames, a window of 7 starting at 1 -> frames 1, 3, 5, 7
    assert item["image"].shape == (3, 4, 16, 16) and int(item["label"]) == 1
    levels = [_level(item["image"][:, j]) for j in range(4)]
    np.testing.assert_allclose(levels, [40, 80, 120, 160], atol=6)  # lossy codec


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(name="moving-mnist"), "frames must be an integer >= 2"),
        (dict(name="moving-shapes", frames=1), "frames must be an integer >= 2"),
        (dict(name="shapes", frames=8), "frames applies only to the video names"),
        (dict(name="moving-mnist", frames=4, frame_stride=2), "frame_stride applies only"),
        (dict(name="video-folder", frames=4, data_dir="x", frame_stride=0), "frame_stride must"),
        (dict(name="moving-mnist", frames=4, digits=3), "digits must be 1 or 2"),
        (dict(name="mnist", digits=2), "digits applies only"),
        (dict(name="video-folder", frames=4), "data_dir is required .* clip folder"),
        (dict(name="moving-shapes", frames=4, channels=1), "channels=1 is not supported"),
        (dict(name="moving-mnist", frames=4, resolution=8), r"resolution must be in \[16"),
        (dict(name="moving-mnist", frames=4, digits_from="emnist"), "digits_from must be"),
    ],
)
def test_bad_video_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        DataConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_image_configs_unchanged_and_collate_refuses_mixed_shapes():
    assert not DataConfig().is_video and DataConfig().frames is None
    assert DataConfig(name="moving-shapes", frames=2).resolved_channels == 3
    image = build_dataset(DataConfig(num_samples=2, resolution=16))[0]
    clip = MovingShapes(2, size=16, frames=2)[0]
    with pytest.raises(ValueError, match="different shapes"):
        collate_batch([image, clip])


def test_loader_batches_of_clips():
    cfg = DataConfig(name="moving-shapes", resolution=16, frames=3, num_samples=6, digits=2)
    batch = next(iterate_batches(cfg, 4, seed=0))
    assert batch["image"].shape == (4, 3, 3, 16, 16) and len(batch["caption"]) == 4
    assert all(" and " in c for c in batch["caption"])
