import io
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from zigma.data import ImageFolderDataset, check_image


def noise_image(w, h, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def gradient_image(w, h):
    """Left-right gradient in red, so flips and crops are visible in the pixels."""
    x = np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))
    return Image.fromarray(np.stack([x, np.full_like(x, 80), 255 - x], -1), "RGB")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "imgs"
    (root / "cats" / "inner").mkdir(parents=True)
    (root / "dogs").mkdir()
    noise_image(40, 30, 1).save(root / "cats" / "a.png")
    noise_image(50, 64, 2).save(root / "cats" / "b.JPG", quality=90)
    noise_image(36, 36, 3).save(root / "cats" / "inner" / "c.webp")
    noise_image(20, 24, 4).save(root / "dogs" / "d.bmp")
    noise_image(16, 16, 5).save(root / "dogs" / "e.gif")
    good = ["cats/a.png", "cats/b.JPG", "cats/inner/c.webp", "dogs/d.bmp", "dogs/e.gif"]
    # the bad ones
    buf = io.BytesIO()
    noise_image(64, 64, 6).save(buf, "PNG")
    png = buf.getvalue()
    corrupt = bytearray(png)
    corrupt[40:60] = bytes(20)
    (root / "dogs" / "corrupt.png").write_bytes(bytes(corrupt))
    (root / "dogs" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "dogs" / "empty.png").write_bytes(b"")
    (root / "dogs" / "text.png").write_text("not an image at all")
    noise_image(1, 1, 7).save(root / "cats" / "tiny.png")
    (root / "cats" / "notes.md").write_text("ignored: not an image extension")
    bad = {
        "dogs/corrupt.png": "unreadable",
        "dogs/truncated.png": "unreadable",
        "dogs/empty.png": "empty file",
        "dogs/text.png": "unreadable",
        "cats/tiny.png": "too small",
    }
    return root, good, bad


def rel(root, paths):
    from pathlib import Path

    return sorted(Path(p).relative_to(root).as_posix() for p in paths)


def test_class_folders_load_good_and_skip_bad(tree, caplog):
    root, good, bad = tree
    with caplog.at_level(logging.INFO, logger="zigma.data.folder"):
        ds = ImageFolderDataset(root, 16)
    assert ds.class_names == ("cats", "dogs") and ds.num_classes == 2
    assert rel(root, ds.paths) == sorted(good)
    assert rel(root, [p for p, _ in ds.skipped]) == sorted(bad)
    for path, reason in ds.skipped:
        key = rel(root, [path])[0]
        assert reason.startswith(bad[key]), (key, reason)
    assert "skipped 5 files" in caplog.text
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        assert item["image"].min() >= -1 and item["image"].max() <= 1
        expected = ds.class_names.index(rel(root, [ds.paths[i]])[0].split("/")[0])
        assert int(item["label"]) == expected and item["caption"] == ""


def test_check_image_reasons(tree):
    root, _, bad = tree
    for name, reason in bad.items():
        assert check_image(root / name).startswith(reason)
    assert check_image(root / "cats" / "a.png") is None


def test_flat_folder_is_unlabelled(tmp_path):
    (tmp_path / "sub").mkdir()
    noise_image(20, 20, 1).save(tmp_path / "x.png")
    noise_image(20, 20, 2).save(tmp_path / "sub" / "y.jpg")
    ds = ImageFolderDataset(tmp_path, 8, label_mode="none")
    assert len(ds) == 2 and ds.class_names == () and ds.num_classes == 0
    assert all(int(ds[i]["label"]) == -1 for i in range(2))
    flat = tmp_path / "flat"
    flat.mkdir()
    noise_image(20, 20, 3).save(flat / "z.png")
    assert int(ImageFolderDataset(flat, 8)[0]["label"]) == -1  # auto: no subfolders


def test_loose_images_beside_class_folders_are_skipped(tree):
    root, good, _ = tree
    noise_image(20, 20, 9).save(root / "loose.png")
    ds = ImageFolderDataset(root, 8)
    assert rel(root, ds.paths) == sorted(good)
    assert any(r == "outside any class folder" for _, r in ds.skipped)


def test_captions_sidecar_jsonl_csv(tmp_path):
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        noise_image(20, 20, i).save(tmp_path / name)
    (tmp_path / "a.txt").write_text("  sidecar caption\n")
    lines = [
        {"file": "a.png", "caption": "loses to the sidecar"},
        {"file": "b.png", "caption": "from jsonl"},
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    ds = ImageFolderDataset(tmp_path, 8)
    caps = dict(zip(rel(tmp_path, ds.paths), (ds[i]["caption"] for i in range(3)), strict=True))
    assert caps == {"a.png": "sidecar caption", "b.png": "from jsonl", "c.png": ""}
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text('file,caption\nc.png,"from csv, with a comma"\n')
    ds = ImageFolderDataset(tmp_path, 8)
    caps = dict(zip(rel(tmp_path, ds.paths), (ds[i]["caption"] for i in range(3)), strict=True))
    assert caps == {"a.png": "sidecar caption", "b.png": "", "c.png": "from csv, with a comma"}


def test_malformed_caption_index(tmp_path):
    noise_image(20, 20).save(tmp_path / "a.png")
    (tmp_path / "captions.jsonl").write_text('{"file": "a.png", "caption": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match="captions.jsonl:2"):
        ImageFolderDataset(tmp_path, 8)
    (tmp_path / "captions.jsonl").unlink()
    (tmp_path / "captions.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(ValueError, match="'file' and 'caption'"):
        ImageFolderDataset(tmp_path, 8)


def test_empty_or_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="no usable images"):
        ImageFolderDataset(tmp_path, 8)
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(ValueError, match="1 empty file"):
        ImageFolderDataset(tmp_path, 8)
    with pytest.raises(FileNotFoundError):
        ImageFolderDataset(tmp_path / "nope", 8)


def test_truncated_jpeg_falls_back_to_next_index(tmp_path):
    buf = io.BytesIO()
    noise_image(64, 64, 1).save(buf, "JPEG")
    (tmp_path / "a_bad.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    noise_image(32, 32, 2).save(tmp_path / "b_good.png")
    ds = ImageFolderDataset(tmp_path, 8)
    assert len(ds) == 2  # a truncated JPEG passes the header check
    first = ds[0]["image"]
    assert torch.equal(first, ds[1]["image"])
    assert [r.split(":")[0] for p, r in ds.skipped if p.endswith("a_bad.jpg")] == ["unreadable"]


def test_center_crop_and_resize(tmp_path):
    gradient_image(64, 32).save(tmp_path / "g.png")
    img = ImageFolderDataset(tmp_path, 16, crop="center")[0]["image"]
    red = img[0, 8]
    assert img.shape == (3, 16, 16) and (red[1:] > red[:-1]).all()
    # centre crop of a 2:1 picture keeps only the middle half of the gradient
    assert -0.7 < red[0] < -0.3 and 0.3 < red[-1] < 0.7


def test_flip_and_random_crop_are_seeded(tmp_path):
    gradient_image(64, 32).save(tmp_path / "g.png")
    ds = ImageFolderDataset(tmp_path, 16, crop="random", flip=True)
    outs = [ds.get_item(0, torch.Generator().manual_seed(s))["image"] for s in range(12)]
    again = [ds.get_item(0, torch.Generator().manual_seed(s))["image"] for s in range(12)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again, strict=True))
    increasing = [bool(o[0, 8, -1] > o[0, 8, 0]) for o in outs]
    assert any(increasing) and not all(increasing)  # both flip outcomes occur
    lefts = {
        round(float(o[0, 8].max() if inc else o[0, 8].flip(0).max()), 3)
        for o, inc in zip(outs, increasing, strict=True)
    }
    assert len(lefts) > 3  # different crop windows


def test_gray_and_transparent(tmp_path):
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    ds = ImageFolderDataset(tmp_path, 8, channels=1)
    img = ds[0]["image"]
    assert img.shape == (1, 8, 8) and torch.allclose(img, torch.ones_like(img))  # white
