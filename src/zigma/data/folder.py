"""Images from a folder: class subfolders (sorted names -> labels) or a flat, unlabelled tree.

Bad files are skipped and listed in ``skipped``, never fatal: headers are checked at indexing,
and a file that still fails to decode is replaced by the next index. Captions come from
``NAME.txt`` sidecars or a root ``captions.jsonl`` / ``captions.csv``.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from zigma.data.transforms import CropMode, ImageTransform

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
CAPTION_FILES = ("captions.jsonl", "captions.csv")
_MAX_FALLBACKS = 32  # consecutive undecodable files tolerated before giving up


def _image_files(folder: Path) -> list[Path]:
    """Image-extension files under ``folder``, recursively, sorted; hidden entries ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def check_image(path: Path, *, min_size: int = 8, verify: bool = True) -> str | None:
    """Why ``path`` is unusable ("empty file", "unreadable: ...", "too small: ..."), or None.

    Reads the header (and with ``verify`` Pillow's integrity check: full CRC walk for PNG,
    cheap for JPEG, whose truncation only shows when decoding).
    """
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            w, h = img.size
            if verify:
                img.verify()
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, struct.error...)
        return f"unreadable: {type(e).__name__}: {e}"
    if min(w, h) < min_size:
        return f"too small: {w}x{h} < {min_size} px"
    return None


def read_caption_index(root: Path) -> dict[str, str]:
    """Captions keyed by path relative to ``root`` (POSIX slashes) from the root's index file.

    ``captions.jsonl``: one ``{"file": "cats/01.png", "caption": "a cat"}`` object per line.
    ``captions.csv``: a header row with ``file`` and ``caption`` columns, then one row per image.

    Raises:
        ValueError: on a malformed line or missing column, naming the file and line.
    """
    out: dict[str, str] = {}
    jsonl, csv_path = root / CAPTION_FILES[0], root / CAPTION_FILES[1]
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                out[Path(rec["file"]).as_posix()] = str(rec["caption"]).strip()
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(
                    f"{jsonl}:{n}: expected a JSON object with 'file' and 'caption', got "
                    f"{line[:80]!r} ({e})"
                ) from e
    if csv_path.is_file():
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"file", "caption"} <= set(reader.fieldnames):
                raise ValueError(
                    f"{csv_path}: the header must name the columns 'file' and 'caption', got "
                    f"{reader.fieldnames}"
                )
            for row in reader:
                out[Path(row["file"]).as_posix()] = (row["caption"] or "").strip()
    return out


class ImageFolderDataset(Dataset):
    """Every readable image under ``root``, resized and cropped to a square.

    Args:
        root: the folder.
        resolution: output side in pixels.
        channels: 3 (RGB) or 1 (L).
        label_mode: "folders": each immediate subfolder is a class (sorted names are labels 0..K-1;
            images are found recursively inside; loose images in ``root`` are skipped).
            "none": every image, label -1. "auto": "folders" if some subfolder holds images.
        crop: "center" or "random" square crop after resizing the shorter side.
        flip: random left-right mirror.
        min_size: images with a side shorter than this are skipped.
        verify: run Pillow's integrity check on every file while indexing (slower, catches
            corrupt PNGs early); without it only headers are read.

    Captions: a sidecar ``NAME.txt`` next to ``NAME.png`` wins over an entry in the root's
    ``captions.jsonl`` / ``captions.csv`` (see ``read_caption_index``); otherwise "".

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        ValueError: no usable image was found (the message lists why files were skipped).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 32,
        channels: int = 3,
        *,
        label_mode: Literal["auto", "folders", "none"] = "auto",
        crop: CropMode = "center",
        flip: bool = False,
        min_size: int = 8,
        verify: bool = True,
    ) -> None:
        if label_mode not in ("auto", "folders", "none"):
            raise ValueError(f"label_mode must be 'auto', 'folders' or 'none', got {label_mode!r}")
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        self.root = Path(root)
        if not self.root.exists():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root} is not a folder")
        self.transform = ImageTransform(resolution, channels, crop, flip)
        self.resolution, self.channels = resolution, channels
        self.skipped: list[tuple[str, str]] = []
        self._undecodable: set[int] = set()  # indices that failed at load time, in this process

        files = _image_files(self.root)
        subdirs = sorted(
            {f.relative_to(self.root).parts[0] for f in files if f.parent != self.root}
        )
        labelled = label_mode == "folders" or (label_mode == "auto" and bool(subdirs))
        self.class_names: tuple[str, ...] = tuple(subdirs) if labelled else ()
        self.num_classes = len(self.class_names)
        if labelled:
            for f in files:
                if f.parent == self.root:
                    self.skipped.append((str(f), "outside any class folder"))
            files = [f for f in files if f.parent != self.root]

        # I/O-bound header reads; threads keep the order (map) and keep indexing of big trees fast
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            problems = list(
                pool.map(lambda f: check_image(f, min_size=min_size, verify=verify), files)
            )
        captions = read_caption_index(self.root)
        self.paths: list[str] = []
        self.labels: list[int] = []
        self.captions: list[str] = []
        for f, problem in zip(files, problems, strict=True):
            if problem is not None:
                self.skipped.append((str(f), problem))
                continue
            rel = f.relative_to(self.root)
            self.paths.append(str(f))
            self.labels.append(self.class_names.index(rel.parts[0]) if labelled else -1)
            sidecar = f.with_suffix(".txt")
            if sidecar.is_file():
                self.captions.append(sidecar.read_text(encoding="utf-8", errors="replace").strip())
            else:
                self.captions.append(captions.get(rel.as_posix(), ""))

        summary = self._skip_summary()
        if not self.paths:
            raise ValueError(
                f"no usable images in {self.root} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"{summary}"
            )
        # a warning when files were dropped: a silently shrunken dataset is easy to miss
        logger.log(
            logging.WARNING if self.skipped else logging.INFO,
            "image folder %s: %d images, %s; %s",
            self.root,
            len(self.paths),
            f"{self.num_classes} classes" if labelled else "unlabelled",
            summary,
        )

    def _skip_summary(self) -> str:
        if not self.skipped:
            return "skipped 0 files"
        kinds = collections.Counter(reason.split(":")[0] for _, reason in self.skipped)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return f"skipped {len(self.skipped)} files ({detail})"

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int, generator: torch.Generator | None) -> torch.Tensor:
        with Image.open(self.paths[index]) as img:
            if img.format == "JPEG":
                # decode at 1/2, 1/4 or 1/8 scale when that still covers the output: much faster
                img.draft("L" if self.channels == 1 else "RGB", (self.resolution,) * 2)
            img.load()
            return self.transform(img, generator)

    def get_item(
        self, index: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | str]:
        """Item ``index``; random crop/flip draw from ``generator`` (None: torch's global RNG).

        A file that fails to decode is recorded in ``skipped`` (of this process: DataLoader
        workers keep their own copy) and the next index is returned instead.
        """
        index = int(index)
        for attempt in range(min(_MAX_FALLBACKS, len(self.paths))):
            i = (index + attempt) % len(self.paths)
            if i in self._undecodable:
                continue
            try:
                image = self._load(i, generator)
            except Exception as e:  # a truncated JPEG passes the header check, fails here
                reason = f"unreadable: {type(e).__name__}: {e}"
                self._undecodable.add(i)
                self.skipped.append((self.paths[i], reason))
                logger.warning("skipping %s (%s)", self.paths[i], reason)
                continue
            return {
                "image": image,
                "label": torch.tensor(self.labels[i], dtype=torch.long),
                "caption": self.captions[i],
            }
        raise RuntimeError(
            f"{_MAX_FALLBACKS} consecutive images from index {index} in {self.root} failed to "
            f"decode; see .skipped"
        )

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        return self.get_item(index)
