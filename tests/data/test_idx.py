import gzip
import struct

import numpy as np
import pytest
import torch

from zigma.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEBIAN_DIR,
    IdxFormatError,
    fashion_mnist,
    mnist,
    read_idx,
    write_idx,
)


def idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """The IDX format written by hand (independent of zigma's writer)."""
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def make_split(folder, prefix, n, *, compress, seed=0, dot_names=False):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    sep = "." if dot_names else "-"
    for stem, arr in (
        (f"{prefix}-images{sep}idx3-ubyte", images),
        (f"{prefix}-labels{sep}idx1-ubyte", labels),
    ):
        data = idx_bytes(arr)
        if compress:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_exact(tmp_path, compress):
    images, labels = make_split(tmp_path, "train", 7, compress=compress)
    suffix = ".gz" if compress else ""
    got = read_idx(tmp_path / f"train-images-idx3-ubyte{suffix}")
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(read_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}"), labels)


@pytest.mark.parametrize(
    "dtype,code", [(np.int16, 0x0B), (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)]
)
def test_read_other_types(tmp_path, dtype, code):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    (tmp_path / "x.idx").write_bytes(idx_bytes(arr, code))
    got = read_idx(tmp_path / "x.idx")
    assert got.dtype == dtype and np.array_equal(got, arr)


@pytest.mark.parametrize("compress", [False, True])
def test_write_idx_round_trip_and_matches_format(tmp_path, compress):
    arr = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    path = write_idx(tmp_path / "a", arr, compress=compress)
    raw = path.read_bytes()
    assert (gzip.decompress(raw) if compress else raw) == idx_bytes(arr)
    assert np.array_equal(read_idx(path), arr)


def test_bad_magic(tmp_path):
    data = bytearray(idx_bytes(np.zeros((2, 28, 28), np.uint8)))
    data[0] = 0x12
    (tmp_path / "bad").write_bytes(bytes(data))
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(tmp_path / "png")


def test_unknown_type_code(tmp_path):
    (tmp_path / "t").write_bytes(idx_bytes(np.zeros((3,), np.uint8), 0x07))
    with pytest.raises(IdxFormatError, match="magic"):
        read_idx(tmp_path / "t")


def test_truncated_and_trailing(tmp_path):
    data = idx_bytes(np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(IdxFormatError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "header").write_bytes(data[:9])
    with pytest.raises(IdxFormatError, match="truncated header"):
        read_idx(tmp_path / "header")
    (tmp_path / "long").write_bytes(data + b"xx")
    with pytest.raises(IdxFormatError, match="trailing"):
        read_idx(tmp_path / "long")


def test_corrupt_gzip(tmp_path):
    gz = gzip.compress(idx_bytes(np.zeros((4, 28, 28), np.uint8)))
    (tmp_path / "x.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(IdxFormatError, match="gzip"):
        read_idx(tmp_path / "x.gz")


def test_fashion_mnist_from_data_dir_pads_to_32(tmp_path):
    images, labels = make_split(tmp_path, "train", 6, compress=True)
    ds = fashion_mnist("train", resolution=32, data_dir=tmp_path)
    assert len(ds) == 6 and ds.num_classes == 10 and ds.class_names == FASHION_MNIST_CLASSES
    for i in range(6):
        item = ds[i]
        img = item["image"]
        assert img.shape == (1, 32, 32)
        expected = torch.from_numpy(images[i]).float() / 127.5 - 1
        assert torch.equal(img[0, 2:30, 2:30], expected)
        border = torch.ones(32, 32, dtype=torch.bool)
        border[2:30, 2:30] = False
        assert (img[0][border] == -1).all()  # background padding
        assert int(item["label"]) == labels[i]
        assert FASHION_MNIST_CLASSES[labels[i]] in item["caption"]


def test_native_and_resized_resolutions(tmp_path):
    images, _ = make_split(tmp_path, "t10k", 3, compress=False, dot_names=True)
    ds28 = fashion_mnist("test", resolution=28, data_dir=tmp_path)
    assert torch.equal(ds28[1]["image"][0], torch.from_numpy(images[1]).float() / 127.5 - 1)
    ds64 = fashion_mnist("test", resolution=64, channels=3, data_dir=tmp_path)
    img = ds64[1]["image"]
    assert img.shape == (3, 64, 64) and torch.equal(img[0], img[2])
    assert img.min() >= -1 and img.max() <= 1


def test_captions():
    from zigma.data import IdxDataset

    imgs, lbls = np.zeros((10, 28, 28), np.uint8), np.arange(10)
    fashion = IdxDataset(imgs, lbls, FASHION_MNIST_CLASSES, "a photo of {article} {name}")
    assert fashion[9]["caption"] == "a photo of an ankle boot"
    assert fashion[7]["caption"] == "a photo of a sneaker"


def test_mnist_from_env_subfolder(tmp_path, monkeypatch):
    make_split(tmp_path / "mnist", "train", 4, compress=True, seed=1)
    monkeypatch.setenv("ZIGMA_DATA_DIR", str(tmp_path))
    ds = mnist("train")
    assert len(ds) == 4 and ds[0]["image"].shape == (1, 28, 28)
    assert ds[0]["caption"].startswith("a handwritten digit ")
    digit = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    assert ds[0]["caption"].endswith(digit[int(ds[0]["label"])])


def test_env_overrides_debian_default(tmp_path, monkeypatch):
    images, _ = make_split(tmp_path / "fashion-mnist", "train", 5, compress=False, seed=2)
    monkeypatch.setenv("ZIGMA_DATA_DIR", str(tmp_path))
    ds = fashion_mnist("train")
    assert len(ds) == 5 and np.array_equal(ds.images, images)


def test_missing_files_say_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("ZIGMA_DATA_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist") as err:
        fashion_mnist("train", data_dir=tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value) and str(tmp_path) in str(err.value)
    with pytest.raises(FileNotFoundError, match="ZIGMA_DATA_DIR") as err:
        mnist("test")
    assert "t10k-images-idx3-ubyte" in str(err.value)


def test_mismatched_pair(tmp_path):
    make_split(tmp_path, "train", 4, compress=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(IdxFormatError, match="labels"):
        fashion_mnist("train", data_dir=tmp_path)


def test_flip_is_seeded(tmp_path):
    make_split(tmp_path, "train", 2, compress=False)
    ds = fashion_mnist("train", data_dir=tmp_path, flip=True)
    plain = fashion_mnist("train", data_dir=tmp_path)[0]["image"]
    outs = [ds.get_item(0, torch.Generator().manual_seed(s))["image"] for s in range(16)]
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert any(torch.equal(o, plain) for o in outs) and any(not torch.equal(o, plain) for o in outs)
    again = ds.get_item(0, torch.Generator().manual_seed(3))["image"]
    assert torch.equal(again, outs[3])


DEBIAN_FILES = FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz"


@pytest.mark.skipif(
    not DEBIAN_FILES.exists(),
    reason=f"{DEBIAN_FILES} absent (apt-get install dataset-fashion-mnist)",
)
def test_debian_fashion_mnist(monkeypatch):
    monkeypatch.delenv("ZIGMA_DATA_DIR", raising=False)
    train = fashion_mnist("train", resolution=32)
    assert train.images.shape == (60000, 28, 28) and train.num_classes == 10
    assert np.array_equal(np.bincount(train.labels), np.full(10, 6000))
    item = train[0]
    assert item["image"].shape == (1, 32, 32) and item["caption"] == "a photo of an ankle boot"
    assert len(fashion_mnist("test")) == 10000
