import pickle

import numpy as np
import pytest
import torch

from zigma.data import ShapesDataset
from zigma.data.shapes import GRAY_COLORS, RGB_COLORS


def test_same_seed_and_index_give_identical_items():
    a, b = ShapesDataset(100, 32, seed=3), ShapesDataset(100, 32, seed=3)
    for i in (0, 7, 99):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"])
        assert int(x["label"]) == int(y["label"]) and x["caption"] == y["caption"]


def test_items_depend_only_on_index_not_access_order():
    ds = ShapesDataset(50, 32, seed=1)
    first = ds[17]["image"]
    for i in range(10):
        ds[i]
    assert torch.equal(ds[17]["image"], first)


def test_different_index_seed_or_split_gives_different_images():
    ds = ShapesDataset(100, 32, seed=0)
    imgs = [ds[i]["image"] for i in range(20)]
    for i in range(19):
        assert not torch.equal(imgs[i], imgs[i + 1])
    assert not torch.equal(ShapesDataset(100, 32, seed=1)[0]["image"], imgs[0])
    assert not torch.equal(ShapesDataset(100, 32, seed=0, split="test")[0]["image"], imgs[0])


@pytest.mark.parametrize("resolution,channels", [(8, 3), (16, 1), (32, 3), (48, 1), (128, 3)])
def test_shapes_dtypes_and_value_range(resolution, channels):
    ds = ShapesDataset(10, resolution, channels, seed=0)
    for i in range(3):
        item = ds[i]
        img = item["image"]
        assert img.shape == (channels, resolution, resolution) and img.dtype == torch.float32
        assert img.min() >= -1 and img.max() <= 1
        assert item["label"].dtype == torch.int64 and item["label"].ndim == 0
        assert isinstance(item["caption"], str)


def test_large_resolution():
    img = ShapesDataset(2, 512, 3)[1]["image"]
    assert img.shape == (3, 512, 512) and img.std() > 0.05


def test_labels_and_captions():
    ds = ShapesDataset(300, 32, seed=0)
    assert ds.num_classes == len(ds.class_names) and 6 <= ds.num_classes <= 8
    for i in range(300):
        item = ds[i]
        label = int(item["label"])
        assert 0 <= label < ds.num_classes
        assert ds.class_names[label] in item["caption"]
        assert item["caption"].startswith(("a ", "an ")) and "background" in item["caption"]
        assert any(c in item["caption"] for c in RGB_COLORS)


def test_gray_captions_use_gray_names():
    ds = ShapesDataset(50, 32, channels=1)
    names = set(GRAY_COLORS)
    for i in range(50):
        scene = ds.scene(i)
        assert all(o.color in names for o in scene.objects)
        assert all(c in names for c in scene.colors)


def test_scene_does_not_depend_on_resolution():
    small, big = ShapesDataset(40, 32, seed=5), ShapesDataset(40, 128, seed=5)
    for i in range(40):
        assert small.scene(i) == big.scene(i)
    for i in range(4):
        a, b = small[i], big[i]
        assert a["caption"] == b["caption"] and int(a["label"]) == int(b["label"])
        # the 32-px picture is (close to) the 128-px one averaged over 4x4 blocks
        pooled = torch.nn.functional.avg_pool2d(b["image"][None], 4)[0]
        assert (a["image"] - pooled).abs().mean() < 0.05


def test_class_balance_roughly_uniform():
    ds = ShapesDataset(2000, 16, seed=0)
    counts = np.bincount([int(ds[i]["label"]) for i in range(2000)], minlength=ds.num_classes)
    expected = 2000 / ds.num_classes
    # binomial std is ~15 per class: 5 sigma bounds cannot fail by chance
    assert np.all(np.abs(counts - expected) < 75), counts


def test_real_spatial_structure():
    ds = ShapesDataset(64, 32, seed=0)
    x = torch.stack([ds[i]["image"] for i in range(64)])  # B C H W
    assert (x.flatten(1).std(1) > 0.05).all()  # no flat images
    neighbour = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(32 * 32, generator=g)
    flat = x.flatten(2)
    random_pairs = (flat - flat[..., perm]).abs().mean()
    assert neighbour < 0.35 * random_pairs, (neighbour, random_pairs)


def test_edges_are_anti_aliased():
    ds = ShapesDataset(20, 32, channels=1, seed=0)
    levels = set()
    for i in range(20):
        levels |= set(((ds[i]["image"] + 1) * 127.5).round().int().unique().tolist())
    assert len(levels - set(GRAY_COLORS.values())) > 20  # blended edge pixels exist


def test_pickle_round_trip():
    ds = ShapesDataset(10, 32, seed=2)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[4]["image"], ds[4]["image"])


@pytest.mark.parametrize(
    "kwargs,field",
    [
        ({"resolution": 4}, "resolution"),
        ({"channels": 2}, "channels"),
        ({"num_samples": 0}, "num_samples"),
        ({"seed": -1}, "seed"),
        ({"split": "val"}, "split"),
    ],
)
def test_invalid_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError):
        ShapesDataset(5)[5]


@pytest.mark.parametrize("channels", [1, 3])
def test_objects_contrast_with_their_background(channels):
    palette = RGB_COLORS if channels == 3 else GRAY_COLORS
    ds = ShapesDataset(300, 32, channels)

    def dist(a, b):
        return float(np.linalg.norm(np.subtract(palette[a], palette[b], dtype=float)))

    minimum = 150 if channels == 3 else 100
    for i in range(300):
        scene = ds.scene(i)
        for obj in scene.objects:
            assert all(dist(obj.color, c) >= minimum for c in scene.colors), (i, scene)


def test_simple_style_is_one_shape_on_a_plain_background():
    full = ShapesDataset(num_samples=300, resolution=16, style="full")
    simple = ShapesDataset(num_samples=300, resolution=16, style="simple")
    scenes = [simple.scene(i) for i in range(300)]
    assert all(s.background == "solid" and len(s.objects) == 1 for s in scenes)
    assert any(len(full.scene(i).objects) > 1 for i in range(300))
    assert any(full.scene(i).background != "solid" for i in range(300))
    with pytest.raises(ValueError, match="style must be"):
        ShapesDataset(style="fancy")


def test_centered_style_is_one_large_near_central_shape_with_little_rotation():
    from zigma.data.shapes import (
        CENTERED_JITTER,
        CENTERED_MAX_ROTATION,
        CENTERED_SIZE,
    )

    ds = ShapesDataset(num_samples=400, resolution=16, style="centered")
    scenes = [ds.scene(i) for i in range(400)]
    assert all(s.background == "solid" and len(s.objects) == 1 for s in scenes)
    objs = [s.objects[0] for s in scenes]
    assert all(
        abs(o.cx - 0.5) <= CENTERED_JITTER and abs(o.cy - 0.5) <= CENTERED_JITTER for o in objs
    )
    assert all(CENTERED_SIZE[0] <= o.size <= CENTERED_SIZE[1] for o in objs)
    assert all(abs(o.angle) <= CENTERED_MAX_ROTATION for o in objs)
    assert {o.kind for o in objs} == set(ds.class_names)
    # the object is drawn where the scene says: it covers the centre (but a ring's hole)
    for scene in scenes[:40]:
        img = ds.render(scene)
        assert (img.getpixel((8, 8)) != img.getpixel((0, 0))) == (scene.objects[0].kind != "ring")
