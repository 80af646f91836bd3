import re

import numpy as np
import pytest
import torch

from zigma.config import ConfigError
from zigma.data import DataConfig, SeededItems, build_dataset, iterate_batches
from zigma.data.scenes import (
    BACKGROUND,
    CELLS,
    COLORS,
    KINDS,
    SIZES,
    ScenesDataset,
    make_object,
    make_scene,
    scene_captions,
)

RELATIONS = ("to the left of", "to the right of", "above", "below")


def test_same_seed_split_index_give_identical_items_and_others_differ():
    a, b = ScenesDataset(100, 32, seed=3), ScenesDataset(100, 32, seed=3)
    for i in (0, 5, 99):
        assert a.scene_spec(i) == b.scene_spec(i)
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["caption"] == y["caption"]
    ds = ScenesDataset(100, 32, seed=0)
    specs = [ds.scene_spec(i) for i in range(20)]
    assert len(set(specs)) == 20
    assert ScenesDataset(100, 32, seed=1).scene_spec(0) != specs[0]
    assert ScenesDataset(100, 32, seed=0, split="test").scene_spec(0) != specs[0]
    # access order does not matter
    first = ds[7]["image"]
    for i in range(5):
        ds[i]
    assert torch.equal(ds[7]["image"], first)


def test_spec_is_independent_of_resolution():
    small, big = ScenesDataset(30, 16, seed=2), ScenesDataset(30, 96, seed=2)
    assert all(small.scene_spec(i) == big.scene_spec(i) for i in range(30))


@pytest.mark.parametrize("resolution", [16, 32, 48])
def test_items_shape_dtype_range_and_label(resolution):
    ds = ScenesDataset(20, resolution, seed=0)
    assert ds.num_classes == len(ds.class_names) == len(KINDS)
    for i in range(5):
        item = ds[i]
        img = item["image"]
        assert img.shape == (3, resolution, resolution) and img.dtype == torch.float32
        assert img.min() >= -1 and img.max() <= 1
        assert item["label"].dtype == torch.int64
        assert ds.class_names[int(item["label"])] == ds.scene_spec(i).objects[0].kind


def test_objects_lie_in_distinct_cells_inside_them():
    for max_objects in (1, 2, 3):
        ds = ScenesDataset(300, 32, seed=0, max_objects=max_objects)
        counts = set()
        for i in range(300):
            objs = ds.scene_spec(i).objects
            counts.add(len(objs))
            assert len({o.cell for o in objs}) == len(objs)
            assert len({(o.color, o.kind) for o in objs}) == len(objs)
            for o in objs:
                row, col = divmod(o.cell, 3)
                r = o.diameter / 2
                assert col / 3 < o.cx - r and o.cx + r < (col + 1) / 3
                assert row / 3 < o.cy - r and o.cy + r < (row + 1) / 3
                assert o.size in SIZES and o.kind in KINDS and o.color in COLORS
        assert counts == set(range(1, max_objects + 1))


def test_render_shows_each_object_in_its_colour_at_its_centre():
    ds = ScenesDataset(100, 64, seed=4)
    for i in range(40):
        spec = ds.scene_spec(i)
        img = ds.render(spec).astype(int)
        assert img.shape == (64, 64, 3) and ds.render(spec).dtype == np.uint8
        mask = np.zeros((64, 64), bool)
        for o in spec.objects:
            x, y = int(o.cx * 64), int(o.cy * 64)
            assert np.abs(img[y, x] - COLORS[o.color]).max() <= 2
            lo_x, hi_x = (o.cx - o.diameter / 2) * 64, (o.cx + o.diameter / 2) * 64
            lo_y, hi_y = (o.cy - o.diameter / 2) * 64, (o.cy + o.diameter / 2) * 64
            mask[max(0, int(lo_y) - 1) : int(hi_y) + 2, max(0, int(lo_x) - 1) : int(hi_x) + 2] = (
                True
            )
        # everything away from the objects is background
        assert (np.abs(img[~mask] - BACKGROUND).max(axis=-1) == 0).all()


def _mentions(caption: str) -> dict[str, list[str]]:
    """Colour, kind, size and cell words in ``caption``, found by brute force; cell names are
    matched longest first after relation phrases (which also say "left") are removed."""
    words = re.findall(r"[a-z]+", caption)
    text = " " + " ".join(words) + " "
    for rel in RELATIONS:
        text = text.replace(f" {rel} ", " | ")
    cells = []
    for name in sorted(CELLS, key=len, reverse=True):
        while f" {name} " in text:
            cells.append(name)
            text = text.replace(f" {name} ", " | ", 1)
    return {
        "color": [w for w in words if w in COLORS],
        "kind": [w for w in words if w in KINDS],
        "size": [w for w in words if w in SIZES],
        "cell": cells,
    }


def test_captions_name_the_true_attributes():
    ds = ScenesDataset(400, 32, seed=1)
    for i in range(400):
        spec = ds.scene_spec(i)
        caps = ds.captions(spec)
        assert len(caps) >= 3 and len(set(caps)) == len(caps)
        truth = {
            "color": sorted(o.color for o in spec.objects),
            "kind": sorted(o.kind for o in spec.objects),
            "size": sorted(o.size for o in spec.objects),
            "cell": sorted(CELLS[o.cell] for o in spec.objects),
        }
        for k, cap in enumerate(caps):
            got = {key: sorted(v) for key, v in _mentions(cap).items()}
            assert got["color"] == truth["color"], cap
            assert got["kind"] == truth["kind"], cap
            assert set(got["size"]) <= set(truth["size"]) and set(got["cell"]) <= set(
                truth["cell"]
            ), cap
            if k == 0 or len(spec.objects) == 1:  # the first, and every single-object caption
                assert got["cell"] == truth["cell"], cap
            if k == 0:
                assert got["size"] == truth["size"], cap
        # the first caption binds each object's words together, in order
        first = caps[0]
        for o in spec.objects:
            assert f"{o.size} {o.color} {o.kind} {o.location}" in first


def test_relations_match_geometry():
    ds = ScenesDataset(400, 32, seed=2)
    pattern = re.compile(
        rf"an? ({'|'.join(COLORS)}) ({'|'.join(KINDS)}),?(?: which is)? "
        rf"({'|'.join(RELATIONS)}) an? ({'|'.join(COLORS)}) ({'|'.join(KINDS)})"
    )
    checked = 0
    for i in range(400):
        spec = ds.scene_spec(i)
        by_name = {(o.color, o.kind): o for o in spec.objects}
        claimed = set()
        for cap in ds.captions(spec):
            # overlapping matches: "A left of B, which is above C" holds two relations
            for m in re.finditer(rf"(?=({pattern.pattern}))", cap):
                c1, k1, rel, c2, k2 = pattern.match(m.group(1)).groups()  # type: ignore[union-attr]
                a, b = by_name[(c1, k1)], by_name[(c2, k2)]
                ra, rb = a.diameter / 2, b.diameter / 2
                holds = {
                    "to the left of": a.cx + ra < b.cx - rb,
                    "to the right of": a.cx - ra > b.cx + rb,
                    "above": a.cy + ra < b.cy - rb,
                    "below": a.cy - ra > b.cy + rb,
                }
                assert holds[rel], (cap, a, b)
                claimed.add((a, rel, b))
                checked += 1
        # with two objects, every relation that holds (in a row or column apart) is said
        if len(spec.objects) == 2:
            a, b = spec.objects
            true = (
                {("to the left of" if a.cx < b.cx else "to the right of")}
                if a.column != b.column
                else set()
            )
            if a.row != b.row:
                true.add("above" if a.cy < b.cy else "below")
            assert {rel for _, rel, _ in claimed} == true
    assert checked > 200


def test_one_caption_per_epoch_fixed_by_seed_epoch_index():
    ds = ScenesDataset(50, 16, seed=0)
    varied = 0
    for i in range(20):
        caps = ds.captions(ds.scene_spec(i))
        assert ds[i]["caption"] == caps[0]  # no generator: the first
        per_epoch = [SeededItems(ds, 7, epoch)[i] for epoch in range(8)]
        again = [SeededItems(ds, 7, epoch)[i] for epoch in range(8)]
        assert [x["caption"] for x in per_epoch] == [x["caption"] for x in again]
        assert all(x["caption"] in caps for x in per_epoch)
        assert all(torch.equal(x["image"], per_epoch[0]["image"]) for x in per_epoch)
        varied += len({x["caption"] for x in per_epoch}) > 1
    assert varied >= 18


def test_make_object_and_make_scene():
    o = make_object("triangle", "blue", "top right", "small")
    assert (o.cell, o.position, o.location) == (2, "top right", "in the top right")
    assert o.cx == pytest.approx(2.5 / 3) and o.cy == pytest.approx(0.5 / 3)
    corner = make_object("circle", "red", 4, "large", offset=(1.0, -1.0))
    assert corner.cx - corner.diameter / 2 > 1 / 3 and corner.cx + corner.diameter / 2 < 2 / 3
    spec = make_scene([o])
    assert scene_captions(spec)[0] == "a small blue triangle in the top right"
    assert make_scene([make_object("square", "white", "left")]).objects[0].location == (
        "on the left"
    )
    with pytest.raises(ValueError, match="kind"):
        make_object("hexagon", "red", 0)
    with pytest.raises(ValueError, match="color"):
        make_object("circle", "teal", 0)
    with pytest.raises(ValueError, match="cell"):
        make_object("circle", "red", "middle")
    with pytest.raises(ValueError, match="cell"):
        make_object("circle", "red", 9)
    with pytest.raises(ValueError, match="offset"):
        make_object("circle", "red", 0, offset=(1.5, 0))
    with pytest.raises(ValueError, match="distinct cells"):
        make_scene([o, make_object("circle", "red", 2)])
    with pytest.raises(ValueError, match="1 to 3"):
        make_scene([])


def test_data_config_and_build_dataset():
    cfg = DataConfig(name="scenes", resolution=16, num_samples=64, max_objects=2)
    ds = build_dataset(cfg)
    assert isinstance(ds, ScenesDataset) and ds.max_objects == 2 and cfg.resolved_channels == 3
    assert build_dataset(cfg, "test").split == "test"
    batch = next(iterate_batches(cfg, 8, seed=0))
    assert batch["image"].shape == (8, 3, 16, 16) and len(batch["caption"]) == 8
    for bad, match in [
        (dict(resolution=8), "resolution"),
        (dict(max_objects=4), "max_objects"),
        (dict(max_objects=0), "max_objects"),
        (dict(channels=1), "channels"),
    ]:
        with pytest.raises(ConfigError, match=match):
            DataConfig(name="scenes", **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_objects"):
        ScenesDataset(10, 32, max_objects=5)
