import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zigma.data import DataLoadError, ImageFolderDataset, check_image


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
        "dogs/truncated.png": "truncated or corrupt",
        "dogs/empty.png": "empty file",
        "dogs/text.png": "unreadable",
        "cats/tiny.png": "too small",
    }
    return root, good, bad


def rel(root, paths):
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


def jpeg_bytes(seed, size=64):
    buf = io.BytesIO()
    noise_image(size, size, seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpegs_are_skipped_at_indexing_however_many_in_a_row(tmp_path):
    # an interrupted copy: the old loader gave up after 32 undecodable files in a row
    for i in range(40):
        data = jpeg_bytes(i)
        (tmp_path / f"a{i:02d}.jpg").write_bytes(data[: len(data) * (i + 10) // 60])
    for i in range(3):
        noise_image(32, 32, 100 + i).save(tmp_path / f"b{i}.png")
    (tmp_path / "c_trailer.jpg").write_bytes(jpeg_bytes(7) + b"camera trailer")  # still whole
    ds = ImageFolderDataset(tmp_path, 8)
    assert rel(tmp_path, ds.paths) == ["b0.png", "b1.png", "b2.png", "c_trailer.jpg"]
    assert len(ds.skipped) == 40 and ds.skip_summary == "skipped 40 files (40 truncated or corrupt)"
    assert all(r.startswith("truncated or corrupt: ") for _, r in ds.skipped)
    for i in range(len(ds)):
        assert ds[i]["image"].shape == (3, 8, 8)


def test_files_failing_at_load_time_get_a_deterministic_stand_in(tmp_path):
    for i in range(6):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(i, 32))
    ds, again = ImageFolderDataset(tmp_path, 8), ImageFolderDataset(tmp_path, 8)
    before = [ds[i]["image"] for i in range(6)]
    for i in (1, 2, 3):  # changed after indexing: e.g. still being copied
        data = jpeg_bytes(i, 32)
        (tmp_path / f"{i}.jpg").write_bytes(data[: len(data) // 2])
    g = [torch.Generator().manual_seed(5) for _ in range(2)]
    items = [ds.get_item(i, g[0])["image"] for i in range(6)]
    for i, img in enumerate(items):
        if i not in (1, 2, 3):
            assert torch.equal(img, before[i])
        else:  # some good image, the same one in another process and in any order of calls
            assert any(torch.equal(img, before[j]) for j in (0, 4, 5))
            assert torch.equal(img, again.get_item(i, g[1])["image"])
    assert [ds.get_item(i)["caption"] for i in (3, 2, 1)] == [""] * 3
    assert sorted(Path(p).name for p, _ in ds.skipped) == ["1.jpg", "2.jpg", "3.jpg"]
    assert all(r.startswith("failed to load: ") for _, r in ds.skipped)
    assert ds.skip_summary == "skipped 3 files (3 failed to load)"


def test_random_transforms_of_a_stand_in_use_the_callers_generator_state(tmp_path):
    for i in range(4):
        gradient_image(64, 32).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 16, crop="random", flip=True)
    expected = ds.get_item(0, torch.Generator().manual_seed(3))["image"]
    (tmp_path / "2.png").write_bytes(b"gone")
    got = ds.get_item(2, torch.Generator().manual_seed(3))["image"]
    assert torch.equal(got, expected)  # all four look alike: same crop window and flip


def test_no_loadable_image_left_is_one_clear_error(tmp_path):
    for i in range(3):
        noise_image(16, 16, i).save(tmp_path / f"{i}.png")
    ds = ImageFolderDataset(tmp_path, 8)
    for p in ds.paths:
        Path(p).unlink()
    with pytest.raises(DataLoadError, match=f"none of the 3 images in {tmp_path} loads"):
        ds[0]
    assert len(ds.skipped) == 3


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


def test_16_bit_png_is_scaled_not_turned_white(tmp_path):
    v = (np.arange(16 * 16).reshape(16, 16) * 257 % 65536).astype(np.uint16)
    Image.frombytes("I;16", (16, 16), v.astype("<u2").tobytes()).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")  # really stored as 16 bits
    expected = torch.from_numpy(np.rint(v / 257) / 127.5 - 1).float()
    for channels in (1, 3):
        img = ImageFolderDataset(tmp_path, 16, channels=channels)[0]["image"]
        assert img.shape == (channels, 16, 16)
        assert torch.allclose(img, expected.expand(channels, -1, -1), atol=1e-6)
