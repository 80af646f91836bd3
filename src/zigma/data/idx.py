"""MNIST and Fashion-MNIST from their IDX files (LeCun's format), gzipped or raw, via numpy.

Fashion-MNIST is found where the Debian package ``dataset-fashion-mnist`` installs it; MNIST is
looked up in a folder the user names. 28-px digits are padded to 29-32 px (strokes stay pixel-
exact, the usual 32-px convention) and resized with Lanczos to any other resolution.
"""

from __future__ import annotations

import gzip
import logging
import os
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

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
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)

Split = Literal["train", "test"]
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


class IdxFormatError(ValueError):
    """An IDX file is corrupt, truncated or not an IDX file; the message names the file."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of one (uncompressed) IDX file into an array of its declared shape.

    Raises:
        IdxFormatError: bad magic number, unknown type code, or a size that disagrees with
            the header.
    """
    if len(data) < 4:
        raise IdxFormatError(f"{name}: {len(data)} bytes is too short for an IDX header")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise IdxFormatError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000TTNN with type TT "
            f"in {[hex(t) for t in _IDX_DTYPES]} and NN >= 1 dimensions); not an IDX file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header ({len(data)} < {header} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{name}: file {kind}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes) but the file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file; gzip is detected from the content, not the name."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise IdxFormatError(f"{path}: corrupt or truncated gzip data ({e})") from e
    return parse_idx(raw, str(path))


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
        caption_template: ``str.format`` pattern with ``{name}`` and optionally ``{article}``
            ("a" or "an" to go before the name).
        resolution: output side; see the module docstring for pad vs resize.
        channels: 1, or 3 (the gray value repeated).
        flip: mirror left-right with probability 1/2 (clothes yes, digits no).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
        caption_template: str,
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
        self.captions = tuple(
            caption_template.format(name=n, article="an" if n[0] in "aeiou" else "a")
            for n in class_names
        )
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
        """Item ``index``; random flips draw from ``generator`` (None: torch's global RNG)."""
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
            "caption": self.captions[label],
        }


def load_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an images/labels pair."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IdxFormatError(
            f"{images_path}: expected uint8 [N, H, W], got {images.dtype} {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise IdxFormatError(
            f"{labels_path}: {labels.shape} labels for {images.shape[0]} images in {images_path}"
        )
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
    images, labels = load_idx_pair(images_path, labels_path)
    logger.info("Fashion-MNIST %s: %d images from %s", split, len(images), images_path.parent)
    return IdxDataset(
        images,
        labels,
        FASHION_MNIST_CLASSES,
        "a photo of {article} {name}",
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
    images, labels = load_idx_pair(images_path, labels_path)
    logger.info("MNIST %s: %d images from %s", split, len(images), images_path.parent)
    return IdxDataset(
        images, labels, MNIST_CLASSES, "a handwritten digit {name}", resolution, channels, flip
    )
