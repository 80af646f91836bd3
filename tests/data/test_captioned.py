"""Readers of captioned image sets (COCO, MM-CelebA-HQ, folder sidecars), on tiny fixtures."""

import json

import numpy as np
import pytest
from PIL import Image

from zigma.config import ConfigError
from zigma.data import (
    CocoCaptions,
    DataConfig,
    ImageFolderDataset,
    MMCelebAHQ,
    SeededItems,
    build_dataset,
    iterate_batches,
)


def _png(path, seed=0, size=20, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)


def _epochs(ds, index, n=10):
    return [SeededItems(ds, 5, epoch)[index]["caption"] for epoch in range(n)]


def _check_per_epoch(ds):
    """One caption per (seed, epoch, index): fixed, one of the item's, varying over epochs."""
    for i in range(len(ds)):
        caps = _epochs(ds, i)
        assert caps == _epochs(ds, i)
        assert set(caps) <= set(ds.caption_choices[i])
        assert ds[i]["caption"] == ds.caption_choices[i][0]
        if len(ds.caption_choices[i]) > 1:
            assert len(set(caps)) > 1


COCO = {
    "images": [
        {"id": 9, "file_name": "COCO_9.png"},
        {"id": 3, "file_name": "COCO_3.png"},
        {"id": 4, "file_name": "COCO_4.png"},  # no caption: skipped
        {"id": 5, "file_name": "COCO_5.png"},  # only a blank caption: skipped
    ],
    "annotations": [
        {"image_id": 9, "id": 1, "caption": " A dog on a couch. "},
        {"image_id": 3, "id": 2, "caption": "Two cats."},
        {"image_id": 9, "id": 3, "caption": "A brown dog lying down."},
        {"image_id": 9, "id": 4, "caption": "A pet resting indoors."},
        {"image_id": 5, "id": 5, "caption": "   "},
        {"image_id": 3, "id": 6, "caption": "Cats sleeping in the sun."},
    ],
}


@pytest.fixture
def coco(tmp_path):
    images = tmp_path / "train2014"
    for k in (9, 3, 4, 5):
        _png(images / f"COCO_{k}.png", seed=k)
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_train2014.json").write_text(json.dumps(COCO))
    return images


def test_coco_captions(coco):
    ds = CocoCaptions(coco, resolution=16)  # finds ../annotations/captions_train2014.json
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["COCO_3.png", "COCO_9.png"]
    assert ds.caption_choices == [
        ("Two cats.", "Cats sleeping in the sun."),
        ("A dog on a couch.", "A brown dog lying down.", "A pet resting indoors."),
    ]
    item = ds[1]
    assert item["image"].shape == (3, 16, 16) and int(item["label"]) == -1
    assert item["caption"] == "A dog on a couch."
    _check_per_epoch(ds)
    cfg = DataConfig(name="coco", data_dir=str(coco), resolution=16, crop="random")
    batch = next(iterate_batches(cfg, 2, seed=0))
    assert len(batch["caption"]) == 2 and batch["image"].shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="only a train split"):
        build_dataset(cfg, "test")


def _one_line_error(exc_info, *needles):
    text = str(exc_info.value)
    assert "\n" not in text
    for n in needles:
        assert str(n) in text, text


@pytest.mark.parametrize(
    "content, match",
    [
        (b"not json {", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[1, 2]", "a JSON list"),
        (b'{"images": []}', "'images' and 'annotations' lists"),
        (b'{"images": [{"id": "x"}], "annotations": []}', "integer 'id'"),
        (b'{"images": [{"id": 1}], "annotations": []}', "'file_name'"),
        (
            b'{"images": [{"id": 1, "file_name": "../../etc/x.png"}], "annotations": []}',
            "leaves the image folder",
        ),
        (
            b'{"images": [{"id": 1, "file_name": "a.png"}], "annotations": [{"image_id": 1}]}',
            "'caption' string",
        ),
        (
            b'{"images": [{"id": 1, "file_name": "a.png"}], '
            b'"annotations": [{"image_id": 2, "caption": "x"}]}',
            "not an image id",
        ),
        (b"[" * 100_000, "nested too deeply"),
        (b'{"images": [], "annotations": []}', "no image has a caption"),
    ],
)
def test_coco_refuses_hostile_caption_files(tmp_path, content, match):
    _png(tmp_path / "a.png")
    path = tmp_path / "captions_x.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match) as e:
        CocoCaptions(tmp_path, path, resolution=16)
    _one_line_error(e, path)


def test_coco_refuses_huge_file_and_missing_images(tmp_path, coco):
    huge = tmp_path / "captions_huge.json"
    with open(huge, "wb") as f:
        f.truncate((1 << 30) + 1)  # sparse: no disk used, refused before reading
    with pytest.raises(ValueError, match="more than") as e:
        CocoCaptions(coco, huge)
    _one_line_error(e, huge)
    (coco / "COCO_9.png").unlink()
    with pytest.raises(ValueError, match="missing") as e:
        CocoCaptions(coco)
    _one_line_error(e, "COCO_9.png", coco)
    (tmp_path / "elsewhere" / "images").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="captions_file"):
        CocoCaptions(tmp_path / "elsewhere" / "images")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoCaptions(coco, tmp_path / "nope.json")


def test_coco_skips_corrupt_images_like_a_folder(coco):
    (coco / "COCO_3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = CocoCaptions(coco, resolution=16)
    assert len(ds) == 1 and ds.caption_choices[0][0] == "A dog on a couch."
    assert "1 unreadable" in ds.skip_summary


@pytest.mark.parametrize("image_dir", ["images", "CelebA-HQ-img"])
def test_mm_celeba_hq(tmp_path, image_dir):
    for k in range(4):
        _png(tmp_path / image_dir / f"{k}.jpg", seed=k, size=24, fmt="JPEG")
    text = tmp_path / "text"
    text.mkdir()
    (text / "0.txt").write_text("\n".join(f"caption {j} of face zero." for j in range(10)) + "\n")
    (text / "1.txt").write_text("The woman has blond hair.\n\n  She is smiling.  \n")
    (text / "3.txt").write_text("One caption only.")
    ds = MMCelebAHQ(tmp_path, resolution=16)  # 2.jpg has no caption file: skipped
    assert [p.rsplit("/", 1)[1] for p in ds.paths] == ["0.jpg", "1.jpg", "3.jpg"]
    assert len(ds.caption_choices[0]) == 10
    assert ds.caption_choices[1] == ("The woman has blond hair.", "She is smiling.")
    assert ds.caption_choices[2] == ("One caption only.",)
    assert "1 no caption file" in ds.skip_summary
    _check_per_epoch(ds)
    cfg = DataConfig(name="mm-celeba-hq", data_dir=str(tmp_path), resolution=16)
    assert isinstance(build_dataset(cfg), MMCelebAHQ)


def test_mm_celeba_hq_hostile(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an MM-CelebA-HQ folder"):
        MMCelebAHQ(tmp_path)
    _png(tmp_path / "images" / "0.png")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "0.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(ValueError, match="0.txt is not UTF-8"):
        MMCelebAHQ(tmp_path)
    (tmp_path / "text" / "0.txt").unlink()
    with pytest.raises(ValueError, match="no usable images"):
        MMCelebAHQ(tmp_path)


def test_folder_sidecar_lines_are_several_captions(tmp_path):
    _png(tmp_path / "a.png", 1)
    _png(tmp_path / "b.png", 2)
    (tmp_path / "a.txt").write_text("first caption\n\n  second caption \nthird caption\n")
    (tmp_path / "b.txt").write_text("only one")
    ds = ImageFolderDataset(tmp_path, 16)
    assert ds.caption_choices == [
        ("first caption", "second caption", "third caption"),
        ("only one",),
    ]
    assert ds.captions == ["first caption", "only one"]
    _check_per_epoch(ds)


def test_data_config_for_captioned_sets():
    with pytest.raises(ConfigError, match="data_dir is required"):
        DataConfig(name="coco")
    with pytest.raises(ConfigError, match="data_dir is required"):
        DataConfig(name="mm-celeba-hq")
    with pytest.raises(ConfigError, match="captions_file applies only"):
        DataConfig(name="folder", data_dir="x", captions_file="c.json")
    assert DataConfig(name="coco", data_dir="x", captions_file="c.json", flip=True).flip
