"""Every file the data layer reads, broken every way we know, through ``zigma train``.

An image that cannot be used is skipped and counted (the run goes on, and the log line says how
many files were skipped and why); a file that cannot be skipped (a caption index, an IDX file)
or a folder left with too few images stops the run with one line, exit 2, nothing in --out.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from .conftest import assert_one_line_error

TINY = [
    "model.hidden_size=32",
    "model.depth=2",
    "data.resolution=16",
    "batch_size=2",
    "preview.every=0",
    "ema.decay=0.9",
]
GOOD = 4  # good images in every folder


def table(rows):
    """parametrize arguments from rows of (id, *values)."""
    return {"argvalues": [row[1:] for row in rows], "ids": [row[0] for row in rows]}


def noise(w=16, h=16, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def encoded(fmt, img=None, **kw):
    buf = io.BytesIO()
    (img or noise(32, 32, 9)).save(buf, fmt, **kw)
    return buf.getvalue()


def cut(data, keep=0.6):
    return data[: int(len(data) * keep)]


def png_header_bomb(w, h):
    """A 100-byte PNG whose header declares ``w`` x ``h`` pixels."""

    def chunk(kind, body):
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write(name, data):
    return lambda d: (d / name).write_bytes(data)


def as_root():
    return hasattr(os, "geteuid") and os.geteuid() == 0


def unreadable(d):
    (d / "x.png").write_bytes(encoded("PNG"))
    (d / "x.png").chmod(0)


def unreadable_folder(d):
    (d / "sub").mkdir()
    (d / "sub" / "x.png").write_bytes(encoded("PNG"))
    (d / "sub").chmod(0)


def sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)  # 100 MB of zeros without a newline, instantly


# (id, make the entry in folder d, images used, why it was skipped (None: it is used))
SKIPPED = [
    ("empty", write("x.png", b""), 4, "empty file"),
    ("truncated-jpeg", write("x.jpg", cut(encoded("JPEG"))), 4, "truncated or corrupt"),
    ("truncated-png", write("x.png", cut(encoded("PNG"))), 4, "truncated or corrupt"),
    ("truncated-gif", write("x.gif", cut(encoded("GIF"))), 4, "truncated or corrupt"),
    ("truncated-bmp", write("x.bmp", cut(encoded("BMP"))), 4, "truncated or corrupt"),
    ("truncated-webp", write("x.webp", cut(encoded("WEBP"))), 4, "unreadable"),
    ("text-named-png", write("x.png", b"not an image at all"), 4, "unreadable"),
    ("tiff-named-png", write("x.png", encoded("TIFF")), 4, "unreadable"),
    ("eps-named-png", write("x.png", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n"), 4,
     "unreadable"),  # never handed to Ghostscript
    ("symlink-loop", lambda d: os.symlink("x.png", d / "x.png"), 4, "unreadable"),
    ("dangling-symlink", lambda d: os.symlink("gone.png", d / "x.png"), 4, "unreadable"),
    ("fifo", lambda d: os.mkfifo(d / "x.png"), 4, "not a regular file"),  # would block
    ("chmod-000", unreadable, 4, "unreadable"),
    ("chmod-000-folder", unreadable_folder, 4, "unreadable folder"),
    ("1x1", write("x.png", encoded("PNG", noise(1, 1))), 4, "too small"),
    ("png-header-bomb-20000", write("x.png", png_header_bomb(20000, 20000)), 4, "too large"),
    ("png-header-bomb-10000", write("x.png", png_header_bomb(10000, 10000)), 4, "too large"),
    ("png-named-jpg", write("x.jpg", encoded("PNG")), 5, None),
    ("folder-named-png", lambda d: (d / "x.png").mkdir(), 4, None),
    ("16-bit-png", write("x.png", encoded("PNG", Image.new("I;16", (16, 16), 4000))), 5, None),
    ("cmyk-jpeg", write("x.jpg", encoded("JPEG", noise(mode="CMYK"))), 5, None),
    ("1-bit-png", write("x.png", encoded("PNG", noise(mode="1"))), 5, None),
    ("transparent-gif", write("x.gif", encoded("GIF", noise(mode="P"), transparency=0)), 5, None),
]  # fmt: skip


def folder_with(tmp_path, make):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(GOOD):
        noise(seed=i).save(d / f"{i}.png")
    make(d)
    return d


def train_on(cli, d, out, *extra, steps=0):
    return cli(
        "train", "--preset", "demo", *TINY, "data.name=folder", f"data.data_dir={d}", *extra,
        "--steps", str(steps), "--out", out,
    )  # fmt: skip


@pytest.mark.parametrize("make, used, reason", **table(SKIPPED))
def test_unusable_images_are_skipped_and_counted(cli, tmp_path, caplog, make, used, reason):
    if make in (unreadable, unreadable_folder) and as_root():
        pytest.skip("root reads a chmod 000 file anyway")
    d = folder_with(tmp_path, make)
    with caplog.at_level(logging.INFO, logger="zigma.data.folder"):
        res = train_on(cli, d, tmp_path / "run")
    assert res.code == 0, res.err
    summary = f"skipped 1 files (1 {reason})" if reason else "skipped 0 files"
    assert f"image folder {d}: {used} images, unlabelled; {summary}" in caplog.text
    assert "Traceback" not in res.err and "DecompressionBomb" not in res.err


def test_forty_truncated_jpegs_in_a_row_are_skipped_and_training_runs(cli, tmp_path, caplog):
    # an interrupted copy; the old loader gave up after 32 bad files in a row (exit 1)
    def make(d):
        for i in range(40):
            (d / f"a{i:02d}.jpg").write_bytes(cut(encoded("JPEG", noise(64, 64, i)), 0.8))

    d = folder_with(tmp_path, make)
    with caplog.at_level(logging.INFO, logger="zigma.data.folder"):
        res = train_on(cli, d, tmp_path / "run", steps=2)
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert "4 images, unlabelled; skipped 40 files (40 truncated or corrupt)" in caplog.text
    assert (tmp_path / "run" / "model").is_dir()


def torn_jsonl(d):
    (d / "captions.jsonl").write_text('{"file": "0.png", "caption": "a"}\n{"file": "1.pn')


# (id, make the problem in folder d (which holds 4 good images), the one-line error)
STOPPED = [
    ("no-usable-image", lambda d: [p.write_bytes(cut(p.read_bytes())) for p in d.glob("*.png")],
     "no usable images in"),
    ("too-few-left", lambda d: [(d / f"{i}.png").write_bytes(b"") for i in range(3)],
     "the dataset has 1 images, fewer than one batch of 2 (skipped 3 files (3 empty file))"),
    ("torn-captions-jsonl", torn_jsonl, "captions.jsonl:2: expected a JSON object"),
    ("non-utf8-captions-csv", write("captions.csv", b"file,caption\n0.png,caf\xe9\n"),
     "captions.csv:2: not UTF-8"),
    ("captions-csv-without-columns", write("captions.csv", b"path,text\n0.png,a\n"),
     "captions.csv: the header must name the columns 'file' and 'caption'"),
    ("captions-csv-short-row", write("captions.csv", b"file,caption\n0.png\n"),
     "captions.csv:2: a row without 'file' or 'caption'"),
    ("100MB-captions-jsonl", lambda d: sparse(d / "captions.jsonl", 100 << 20),
     "captions.jsonl:1: line longer than 65536 bytes"),
    ("deeply-nested-jsonl", write("captions.jsonl", b"[" * 50_000), "too deeply nested"),
    ("non-utf8-sidecar", write("0.txt", b"\xff\xfe caption"), "0.txt is not UTF-8 text"),
    ("100MB-sidecar", lambda d: sparse(d / "0.txt", 100 << 20), "larger than 65536 bytes"),
]  # fmt: skip


@pytest.mark.parametrize("make, match", **table(STOPPED))
def test_unskippable_problems_stop_with_one_line(cli, tmp_path, make, match):
    d = folder_with(tmp_path, make)
    out = tmp_path / "run"
    t = time.perf_counter()
    res = train_on(cli, d, out)
    assert_one_line_error(res, "train", match)
    assert not out.exists()
    assert time.perf_counter() - t < 5


# ---- IDX files (MNIST / Fashion-MNIST)


def idx_bytes(array, type_code=0x08):
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def gzip_bomb(prefix, zeros_mib):
    """A valid gzip file of ``prefix`` then ``zeros_mib`` MiB of zeros (see tests/data)."""
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


IMAGES = idx_bytes(np.zeros((4, 28, 28), np.uint8))
LABELS = idx_bytes(np.arange(4, dtype=np.uint8))
HUGE_HEADER = struct.pack(">BBBBIII", 0, 0, 0x08, 3, 4, 60000, 60000)

# (id, images file bytes, labels file bytes, the one-line error)
IDX = [
    ("bad-magic", b"\x89PNG" + IMAGES[4:], LABELS, "bad IDX magic number 0x89504e47"),
    ("unknown-type", b"\x00\x00\x07\x03" + IMAGES[4:], LABELS, "bad IDX magic number"),
    ("truncated-header", IMAGES[:9], LABELS, "truncated header"),
    ("truncated-data", IMAGES[:-5], LABELS, "file truncated"),
    ("trailing-bytes", IMAGES + b"xx", LABELS, "has trailing bytes"),
    ("corrupt-gzip", cut(gzip.compress(IMAGES)), LABELS, "corrupt or truncated gzip data"),
    ("gzip-bomb", gzip_bomb(IMAGES, 256), LABELS, "has trailing bytes"),
    ("absurd-dims", HUGE_HEADER, LABELS, "more than the 1073741824 bytes"),
    ("absurd-dims-gzip", gzip_bomb(HUGE_HEADER, 64), LABELS, "more than the 1073741824 bytes"),
    ("wide-images", idx_bytes(np.zeros((4, 200, 200), np.uint8)), LABELS, "1 to 128 pixels"),
    ("count-mismatch", IMAGES, idx_bytes(np.zeros(3, np.uint8)), "4 images, but"),
    ("label-out-of-range", IMAGES, idx_bytes(np.full(4, 10, np.uint8)), r"lie in [0, 9]"),
    ("float-labels", IMAGES, idx_bytes(np.zeros(4, np.float32), 0x0D), "integer labels"),
    ("empty-labels-file", IMAGES, b"", "0 bytes is too short for an IDX header"),
]  # fmt: skip


@pytest.mark.parametrize("images, labels, match", **table(IDX))
def test_bad_idx_files_stop_with_one_line(cli, tmp_path, images, labels, match):
    d = tmp_path / "mnist"
    d.mkdir()
    gz = images[:2] == b"\x1f\x8b"
    (d / f"train-images-idx3-ubyte{'.gz' if gz else ''}").write_bytes(images)
    (d / "train-labels-idx1-ubyte").write_bytes(labels)
    out = tmp_path / "run"
    t = time.perf_counter()
    res = cli(
        "train", "--preset", "demo", *TINY, "data.name=mnist", f"data.data_dir={d}",
        "--steps", "1", "--out", out,
    )  # fmt: skip
    line = assert_one_line_error(res, "train", match)
    assert str(d) in line and not out.exists()
    assert time.perf_counter() - t < 5
