import gzip
import re
import struct
import tracemalloc
import zlib

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


def gzip_bomb(prefix: bytes, zeros_mib: int) -> bytes:
    """A valid gzip file of ``prefix`` then ``zeros_mib`` MiB of zeros, built in a fraction of a
    second: one compressed MiB of zeros repeated (each block flushed, so they are independent)."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    mib = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    end = c.flush()
    crc = zlib.crc32(prefix)
    for _ in range(zeros_mib):
        crc = zlib.crc32(zeros, crc)
    size = (len(prefix) + (zeros_mib << 20)) & 0xFFFFFFFF
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    return gzip_header + head + mib * zeros_mib + end + struct.pack("<II", crc, size)


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def test_gzip_bomb_is_refused_after_the_declared_bytes(tmp_path):
    # 10 real images, then 256 MiB of zeros: a 0.3 MB file; only 7.8 KB (+1 byte) is inflated
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_bomb(data, 256))
    assert gzip.decompress(gzip_bomb(data, 1)) == data + bytes(1 << 20)  # a real gzip file

    def read():
        with pytest.raises(IdxFormatError, match="has trailing bytes"):
            read_idx(path)

    assert peak_bytes(read) < 8 << 20


def test_absurd_declared_size_is_refused_from_the_header(tmp_path):
    huge = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 3_000_000, 28, 28)  # 2.3 GB declared
    path = tmp_path / "x.gz"
    path.write_bytes(gzip_bomb(huge, 64))

    def read():
        with pytest.raises(IdxFormatError, match=r"\(2352000000 bytes\), more than the"):
            read_idx(path)

    assert peak_bytes(read) < 8 << 20
    raw = tmp_path / "raw"
    raw.write_bytes(huge)
    with pytest.raises(IdxFormatError, match="more than the 1000 bytes"):
        read_idx(raw, max_bytes=1000)


def split_files(folder, images, labels):
    folder.mkdir(exist_ok=True)
    (folder / "train-images-idx3-ubyte").write_bytes(images)
    (folder / "train-labels-idx1-ubyte").write_bytes(labels)


def u8(*shape):
    return idx_bytes(np.zeros(shape, np.uint8))


@pytest.mark.parametrize(
    "images, labels, match",
    [
        (u8(4, 28, 28), idx_bytes(np.zeros(4, np.float32), 0x0D), "expected integer labels"),
        (u8(4, 28, 28), idx_bytes(np.full(4, 10, np.uint8)), r"labels must lie in \[0, 9\]"),
        (u8(4, 28, 28), idx_bytes(np.zeros((4, 1), np.uint8)), "expected integer labels"),
        (u8(4, 28, 20), u8(4), "images of 28x20 pixels"),
        (u8(4, 0, 0), u8(4), "images of 0x0 pixels"),
        (u8(1, 129, 129), u8(1), "1 to 128 pixels a side"),
        (u8(4, 28, 28), u8(5), "4 images, but"),
        (u8(4, 28), u8(4), r"expected uint8 \[N, H, W\]"),
        (u8(4, 28, 28), struct.pack(">BBBBI", 0, 0, 8, 1, 1_000_001), "at most 1000000"),
    ],
    ids=[
        "float-labels",
        "label-out-of-range",
        "2d-labels",
        "not-square",
        "zero-side",
        "too-wide",
        "count-mismatch",
        "2d-images",
        "too-many-labels",
    ],
)
def test_mnist_style_files_are_checked_from_their_headers(tmp_path, images, labels, match):
    split_files(tmp_path, images, labels)
    with pytest.raises(IdxFormatError, match=match) as err:
        mnist("train", data_dir=tmp_path)
    assert str(tmp_path) in str(err.value)


def test_paraphrased_captions_one_per_epoch():
    from zigma.data import MNIST_CAPTIONS, MNIST_CLASSES, IdxDataset, SeededItems

    digits = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    imgs = np.random.default_rng(0).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    ds = IdxDataset(imgs, np.arange(10), MNIST_CLASSES, MNIST_CAPTIONS, flip=True)
    assert len(set(ds.caption_choices[7])) == len(MNIST_CAPTIONS) >= 4
    for label in range(10):
        assert ds[label]["caption"] == f"a handwritten digit {digits[label]}"  # the first
        for caption in ds.caption_choices[label]:
            words = re.findall(r"\w+", caption)
            named = [w for w in words if w in digits or w.isdigit()]
            assert named in ([digits[label]], [str(label)]), caption
    varied = 0
    for i in range(10):
        per_epoch = [SeededItems(ds, 3, epoch)[i]["caption"] for epoch in range(8)]
        assert per_epoch == [SeededItems(ds, 3, epoch)[i]["caption"] for epoch in range(8)]
        assert set(per_epoch) <= set(ds.caption_choices[i])
        varied += len(set(per_epoch)) > 1
    assert varied >= 9
    # the caption is drawn after the flip: the flip is what one draw of the generator says
    for seed in range(6):
        item = ds.get_item(4, torch.Generator().manual_seed(seed))
        flipped = float(torch.rand((), generator=torch.Generator().manual_seed(seed))) < 0.5
        pixels = torch.from_numpy(imgs[4]).float() / 127.5 - 1
        assert torch.equal(item["image"][0], pixels.flip(-1) if flipped else pixels)


def test_fashion_paraphrases_name_the_class():
    from zigma.data import FASHION_MNIST_CAPTIONS, IdxDataset

    imgs, lbls = np.zeros((10, 28, 28), np.uint8), np.arange(10)
    ds = IdxDataset(imgs, lbls, FASHION_MNIST_CLASSES, FASHION_MNIST_CAPTIONS)
    for label, name in enumerate(FASHION_MNIST_CLASSES):
        assert ds[label]["caption"] == ds.caption_choices[label][0]
        assert all(name in c for c in ds.caption_choices[label])
        assert all(
            f"{'an' if name[0] in 'aeiou' else 'a'} {name}" in c for c in ds.caption_choices[label]
        )
    with pytest.raises(ValueError, match="template"):
        IdxDataset(imgs, lbls, FASHION_MNIST_CLASSES, ())
