"""MNIST and Fashion-MNIST from their IDX files (LeCun's format), gzipped or raw, via numpy.

Fashion-MNIST is found where the Debian package ``dataset-fashion-mnist`` installs it; MNIST is
looked up in a folder the user names. 28-px digits are padded to 29-32 px (strokes stay pixel-
exact, the usual 32-px convention) and resized with Lanczos to any other resolution.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zigma.data.captions import pick_caption
from zigma.data.transforms import uint8_to_tensor

logger = logging.getLogger(__name__)

FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "ZIGMA_DATA_DIR"

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MNIST_CLASSES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
    "ankle boot",
)  # fmt: skip
# Paraphrases per class (``IdxDataset``); the first is the single caption of earlier versions.
MNIST_CAPTIONS = (
    "a handwritten digit {name}",
    "a handwritten digit {index}",
    "the number {name}",
    "the digit {index}, handwritten",
    "a handwritten {index}",
    "a handwritten {name} in white on black",
)
FASHION_MNIST_CAPTIONS = (
    "a photo of {article} {name}",
    "{article} {name}",
    "a picture of {article} {name}",
    "{article} {name} on black",
    "a grayscale photo of {article} {name}",
    "a small picture of {article} {name} on a black background",
)

Split = Literal["train", "test"]
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not an IDX file; the message names the file."""


IDX_MAX_BYTES = 1 << 30  # the data of one IDX file; MNIST's images are 47 MB
# MNIST-style files (mnist(), fashion_mnist()): MNIST has 70k digits of 28 px, EMNIST 0.8M
MAX_IDX_IMAGES = 1_000_000
MAX_IDX_SIDE = 128
_CHUNK = 1 << 22
HeaderCheck = Callable[[np.dtype, tuple[int, ...]], None]


def _read_header(stream: BinaryIO, name: str) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, header length) from the start of an IDX stream."""
    magic = stream.read(4)
    if len(magic) < 4:
        raise IdxFormatError(f"{name}: {len(magic)} bytes is too short for an IDX header")
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{name}: bad IDX magic number 0x{magic.hex()} (expected 0x0000TTNN with type TT "
            f"in {[hex(t) for t in _IDX_DTYPES]} and NN >= 1 dimensions); not an IDX file?"
        )
    dims = stream.read(4 * ndim)
    header = 4 + 4 * ndim
    if len(dims) < 4 * ndim:
        raise IdxFormatError(f"{name}: truncated header ({4 + len(dims)} < {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(dims, ">u4"))
    return _IDX_DTYPES[type_code], shape, header


def _read_body(stream: BinaryIO, nbytes: int) -> bytearray:
    """Up to ``nbytes`` bytes, in chunks: memory follows the data really there, not what a
    header claims (a small .gz can claim a gigabyte and hold nothing)."""
    buf = bytearray()
    while len(buf) < nbytes:
        chunk = stream.read(min(_CHUNK, nbytes - len(buf)))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_stream(
    stream: BinaryIO, name: str, max_bytes: int, check: HeaderCheck | None
) -> np.ndarray:
    dtype, shape, header = _read_header(stream, name)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > max_bytes:
        raise IdxFormatError(
            f"{name}: the header declares shape {shape} of {dtype.name} ({nbytes} bytes), more "
            f"than the {max_bytes} bytes an IDX file may hold here"
        )
    if check is not None:
        check(dtype, shape)
    body = _read_body(stream, nbytes)
    extra = stream.read(1)  # one byte past the end is enough to know: nothing more is inflated
    if len(body) != nbytes or extra:
        kind = "truncated" if len(body) < nbytes else "has trailing bytes"
        got = f"{header + len(body)} bytes" if not extra else f"more than {header + nbytes} bytes"
        raise IdxFormatError(
            f"{name}: file {kind}: header says shape {shape} of {dtype.name} "
            f"({header + nbytes} bytes) but the data holds {got}"
        )
    array = np.frombuffer(body, dtype).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def parse_idx(data: bytes, name: str = "<bytes>", max_bytes: int = IDX_MAX_BYTES) -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array of its declared shape.

    Raises:
        IdxFormatError: bad magic number, unknown type code, a declared size over
            ``max_bytes``, or a size that disagrees with the header.
    """
    return _read_stream(io.BytesIO(data), name, max_bytes, None)


def read_idx(
    path: str | os.PathLike, *, max_bytes: int = IDX_MAX_BYTES, check: HeaderCheck | None = None
) -> np.ndarray:
    """Read an IDX file; gzip is detected from the content, not the name.

    Reads (and inflates) only the header, the data it declares and one byte more, so a
    decompression bomb costs at most ``max_bytes``. ``check(dtype, shape)`` runs after the
    header, before the data is read, to refuse shapes the caller cannot use.

    Raises:
        IdxFormatError: see ``parse_idx``; also corrupt or truncated gzip data.
    """
    path = Path(path)
    name = str(path)
    with path.open("rb") as f:
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            return _read_stream(f, name, max_bytes, check)
        f.seek(0)
        try:
            with gzip.GzipFile(fileobj=f) as gz:
                return _read_stream(gz, name, max_bytes, check)  # type: ignore[arg-type]
        except (gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise IdxFormatError(f"{path}: corrupt or truncated gzip data ({e})") from e


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False) -> Path:
    """Write ``array`` as an IDX file (gzipped when ``compress``); the inverse of read_idx."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot store {array.dtype} arrays of ndim {array.ndim} in IDX")
    header = bytes([0, 0, codes[native], array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    body = header + array.astype(_IDX_DTYPES[codes[native]]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(body) if compress else body)
    return path


def _find(folder: Path, stem: str) -> Path | None:
    # the classic names, plus the "-idx3-ubyte" -> ".idx3-ubyte" spelling of some mirrors
    for base in (stem, stem.replace("-idx", ".idx")):
        for suffix in (".gz", ""):
            p = folder / f"{base}{suffix}"
            if p.is_file():
                return p
    return None


def find_idx_files(
    candidates: list[Path], split: Split, dataset_name: str, install_hint: str
) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` in the first candidate folder holding both.

    Raises:
        FileNotFoundError: naming the folders searched, the files wanted and how to get them.
    """
    prefix = _SPLIT_PREFIX[split]
    img_stem, lbl_stem = f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    for folder in candidates:
        images, labels = _find(folder, img_stem), _find(folder, lbl_stem)
        if images and labels:
            return images, labels
    searched = ", ".join(str(c) for c in candidates) or "(no folder)"
    raise FileNotFoundError(
        f"{dataset_name} {split} files not found: need {img_stem}[.gz] and {lbl_stem}[.gz] "
        f"in one of: {searched}. {install_hint}"
    )


def _candidates(
    data_dir: str | os.PathLike | None, subdir: str, default: Path | None
) -> list[Path]:
    """data_dir (itself or its ``subdir``) if given; else $ZIGMA_DATA_DIR likewise, then the
    system default."""
    if data_dir is not None:
        return [Path(data_dir), Path(data_dir) / subdir]
    out = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        out += [Path(env) / subdir, Path(env)]
    if default is not None:
        out.append(default)
    return out


class IdxDataset(Dataset):
    """Labelled 28x28 gray images held in memory as uint8.

    Args:
        images: uint8 [N, H, W].
        labels: integer [N], values in ``range(len(class_names))``.
        class_names: one name per label.
        caption_template: ``str.format`` pattern, or several (paraphrases), with ``{name}`` and
            optionally ``{article}`` ("a" or "an" to go before the name) and ``{index}`` (the
            label as a number). ``get_item`` with a generator draws one per item and epoch;
            ``dataset[i]`` uses the first.
        resolution: output side; see the module docstring for pad vs resize.
        channels: 1, or 3 (the gray value repeated).
        flip: mirror left-right with probability 1/2 (clothes yes, digits no).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
        caption_template: str | Sequence[str],
        resolution: int = 28,
        channels: int = 1,
        flip: bool = False,
    ) -> None:
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W], got {images.dtype} {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
        if labels.size and not 0 <= int(labels.min()) <= int(labels.max()) < len(class_names):
            raise ValueError(
                f"labels must lie in [0, {len(class_names) - 1}], "
                f"got [{labels.min()}, {labels.max()}]"
            )
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.images = images
        self.labels = labels.astype(np.int64)
        self.class_names = tuple(class_names)
        self.num_classes = len(class_names)
        self.flip = flip
        templates = (caption_template,) if isinstance(caption_template, str) else caption_template
        if not templates:
            raise ValueError("give at least one caption template")
        # class -> its captions, the first template's first
        self.caption_choices = tuple(
            tuple(
                t.format(name=n, article="an" if n[0] in "aeiou" else "a", index=k)
                for t in templates
            )
            for k, n in enumerate(class_names)
        )
        self.captions = tuple(c[0] for c in self.caption_choices)
        self.resolution = resolution
        self.channels = channels
        side = images.shape[1]
        self.pad = (resolution - side) // 2 if side < resolution <= side + 4 else None

    def __len__(self) -> int:
        return len(self.images)

    def _pixels(self, index: int) -> np.ndarray:
        img = self.images[index]
        h, w = img.shape
        if self.pad is not None:
            # background is 0 in (Fashion-)MNIST; extra pixel of an odd total goes bottom/right
            extra = self.resolution - h - 2 * self.pad
            return np.pad(img, ((self.pad, self.pad + extra), (self.pad, self.pad + extra)))
        if (h, w) == (self.resolution, self.resolution):
            return img
        res = (self.resolution, self.resolution)
        return np.asarray(Image.fromarray(img, "L").resize(res, Image.Resampling.LANCZOS))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        return self.get_item(index)

    def get_item(
        self, index: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | str]:
        """Item ``index``; a random flip, then the caption, draw from ``generator`` (None: torch's
        global RNG for the flip, the first caption)."""
        index = int(index)
        image = uint8_to_tensor(self._pixels(index))
        if self.flip and float(torch.rand((), generator=generator)) < 0.5:
            image = image.flip(-1)
        if self.channels == 3:
            image = image.expand(3, -1, -1).contiguous()
        label = int(self.labels[index])
        return {
            "image": image,
            "label": torch.tensor(label, dtype=torch.long),
            "caption": pick_caption(self.caption_choices[label], generator),
        }


def _labels_check(path: Path) -> HeaderCheck:
    def check(dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(shape) != 1 or dtype.kind not in "iu":
            raise IdxFormatError(f"{path}: expected integer labels [N], got {dtype.name} {shape}")
        if shape[0] > MAX_IDX_IMAGES:
            raise IdxFormatError(
                f"{path}: {shape[0]} labels; an MNIST-style file holds at most {MAX_IDX_IMAGES}"
            )

    return check


def _images_check(path: Path, labels_path: Path, count: int) -> HeaderCheck:
    def check(dtype: np.dtype, shape: tuple[int, ...]) -> None:
        if len(shape) != 3 or dtype != np.uint8:
            raise IdxFormatError(f"{path}: expected uint8 [N, H, W], got {dtype.name} {shape}")
        n, h, w = shape
        if not 1 <= h == w <= MAX_IDX_SIDE:
            raise IdxFormatError(
                f"{path}: images of {h}x{w} pixels; MNIST-style images are square, 1 to "
                f"{MAX_IDX_SIDE} pixels a side"
            )
        if n != count:
            raise IdxFormatError(f"{path}: {n} images, but {labels_path} holds {count} labels")

    return check


def load_idx_pair(
    images_path: Path, labels_path: Path, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an images/labels pair: the (small) labels first, then the images,
    whose header is checked against them before any pixel is read. Labels must lie in
    ``range(num_classes)`` when given."""
    labels = read_idx(labels_path, check=_labels_check(labels_path))
    if num_classes is not None and labels.size:
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise IdxFormatError(
                f"{labels_path}: labels must lie in [0, {num_classes - 1}], got [{low}, {high}]"
            )
    images = read_idx(images_path, check=_images_check(images_path, labels_path, len(labels)))
    return images, labels


def fashion_mnist(
    split: Split = "train",
    *,
    resolution: int = 28,
    channels: int = 1,
    flip: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> IdxDataset:
    """Fashion-MNIST (60k train / 10k test, 10 clothing classes).

    Searched in ``data_dir`` (or its ``fashion-mnist/``), else ``$ZIGMA_DATA_DIR/fashion-mnist``
    and ``$ZIGMA_DATA_DIR``, else ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``).
    """
    hint = (
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files go to "
        f"{FASHION_MNIST_DEBIAN_DIR}), or put the four IDX files in a folder and pass "
        f"data_dir=<folder> or set {DATA_DIR_ENV}=<dir> with the files in <dir>/fashion-mnist/."
    )
    cands = _candidates(data_dir, "fashion-mnist", FASHION_MNIST_DEBIAN_DIR)
    images_path, labels_path = find_idx_files(cands, split, "Fashion-MNIST", hint)
    images, labels = load_idx_pair(images_path, labels_path, len(FASHION_MNIST_CLASSES))
    logger.info("Fashion-MNIST %s: %d images from %s", split, len(images), images_path.parent)
    return IdxDataset(
        images,
        labels,
        FASHION_MNIST_CLASSES,
        FASHION_MNIST_CAPTIONS,
        resolution,
        channels,
        flip,
    )


def mnist(
    split: Split = "train",
    *,
    resolution: int = 28,
    channels: int = 1,
    flip: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> IdxDataset:
    """MNIST digits (60k train / 10k test) from ``data_dir`` (or its ``mnist/``), else
    ``$ZIGMA_DATA_DIR/mnist`` or ``$ZIGMA_DATA_DIR``."""
    hint = (
        "MNIST is not bundled: put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz (the standard MNIST files, "
        f"gzipped or not) in a folder and pass data_dir=<folder>, or set {DATA_DIR_ENV}=<dir> "
        "with the files in <dir>/mnist/."
    )
    cands = _candidates(data_dir, "mnist", None)
    images_path, labels_path = find_idx_files(cands, split, "MNIST", hint)
    images, labels = load_idx_pair(images_path, labels_path, len(MNIST_CLASSES))
    logger.info("MNIST %s: %d images from %s", split, len(images), images_path.parent)
    return IdxDataset(images, labels, MNIST_CLASSES, MNIST_CAPTIONS, resolution, channels, flip)
