"""Images from a folder: class subfolders (sorted names -> labels) or a flat, unlabelled tree.

Bad files are skipped and counted in ``skipped``, never fatal: headers, sizes and (cheaply)
integrity are checked at indexing, and a file that still fails to decode later is replaced by a
deterministic other index. Captions: see ``zigma.data.captions``.
"""

from __future__ import annotations

import collections
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from zigma.data.captions import pick_caption, read_caption_index, read_sidecar, split_captions
from zigma.data.sampler import derive_seed
from zigma.data.transforms import SUPPORTED_MODES, CropMode, ImageTransform

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
# The decoders Pillow may use, whatever a file's extension says: never EPS (Ghostscript), PSD...
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "GIF")  # JPEG's opener also gives "MPO"
_JPEG_END = b"\xff\xd9"  # the EOI marker: a JPEG cut short by an interrupted copy lacks it


def existing_folder(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; FileNotFoundError / NotADirectoryError naming ``what`` if it is not
    an existing folder."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"{what} {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder")
    return root


class DataLoadError(ValueError):
    """No image of a dataset could be loaded; one line naming the folder.

    A DataLoader worker's exception comes back re-raised with the worker's traceback in its
    text; the constructor keeps only the original message, so the CLI still prints one line.
    """

    def __init__(self, message: str) -> None:
        marker = f"{type(self).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


def _image_files(folder: Path, unreadable: list[tuple[str, str]]) -> list[Path]:
    """Image-extension files under ``folder``, recursively, sorted; hidden entries ignored;
    sub-folders that cannot be listed are added to ``unreadable``."""

    def on_error(e: OSError) -> None:
        unreadable.append((str(e.filename), f"unreadable folder: {e.strerror}"))

    found = []
    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def open_image(path: str | os.PathLike) -> Image.Image:
    """``Image.open`` restricted to IMAGE_FORMATS (decided by content, not by extension)."""
    return Image.open(path, formats=IMAGE_FORMATS)


def _decode_check(img: Image.Image, path: Path) -> None:
    """Raise if the pixel data is truncated or corrupt, as cheaply as the format allows.

    PNG: Pillow's verify walks every chunk's CRC without inflating. JPEG: a file ending in the
    EOI marker is taken as whole (Pillow's verify cannot see a cut JPEG, decoding can); one that
    does not is decoded at 1/8 scale. WebP: opening reads the whole file, so a cut one fails there.
    BMP and GIF: decoded (uncompressed, or usually small).
    """
    if img.format == "WEBP":
        return
    if img.format == "PNG":
        img.verify()
        return
    if img.format in ("JPEG", "MPO"):
        with open(path, "rb") as f:
            f.seek(-2, os.SEEK_END)
            if f.read(2) == _JPEG_END:
                return
        img.draft(None, (1, 1))
    img.load()


def check_image(path: Path, *, min_size: int = 8, verify: bool = True) -> str | None:
    """Why ``path`` is unusable, or None. Reasons start with "not a regular file", "empty
    file", "unreadable", "too large", "too small", "unsupported pixel mode" or "truncated or
    corrupt" (the last only with ``verify``; without it only the header is read).

    "too large" is over Pillow's ``Image.MAX_IMAGE_PIXELS`` (its decompression-bomb limit).
    """
    path = Path(path)
    try:
        st = path.stat()  # follows symlinks; a loop or a dangling link fails here
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device named x.png would block or never end
            return "not a regular file"
        if st.st_size == 0:
            return "empty file"
        with open_image(path) as img:
            w, h = img.size
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:
                return f"too large: {w}x{h} is more than {limit} pixels"
            if min(w, h) < min_size:
                return f"too small: {w}x{h} < {min_size} px"
            if img.mode not in SUPPORTED_MODES:
                return f"unsupported pixel mode: {img.mode}"
            if verify:
                try:
                    _decode_check(img, path)
                except Exception as e:
                    return f"truncated or corrupt: {type(e).__name__}: {e}"
    except Image.DecompressionBombError as e:  # over twice the limit: refused by Image.open
        return f"too large: {e}"
    except Exception as e:  # Pillow raises many types (OSError, SyntaxError, struct.error...)
        return f"unreadable: {type(e).__name__}: {e}"
    return None


class ImageFilesDataset(Dataset):
    """Given image files, each with a label and its captions: checked at indexing (bad files
    skipped and counted), then loaded, resized and cropped to a square with a stand-in for a
    file that fails later. ``ImageFolderDataset`` finds files in a folder; the COCO and
    MM-CelebA-HQ readers (``zigma.data.captioned``) list them from their annotations.

    Args:
        root: the folder the files are in (named in messages).
        files: the image files.
        labels: one per file (None: all -1, unlabelled).
        captions: called with the usable files (after the checks) and returns each one's
            captions (may be empty; None: no captions). Called once, so annotation files are
            read only for the images that will be used.
        resolution, channels, crop, flip, min_size, verify: as in ``ImageFolderDataset``.
        class_names: names of the labels.
        skipped: (path, reason) of files left out before these (e.g. outside any class).
        kind: what the files are, for messages ("image folder", "COCO images").

    Raises:
        ValueError: no usable image (the message counts the skipped files by reason).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        files: list[Path],
        resolution: int = 32,
        channels: int = 3,
        *,
        labels: list[int] | None = None,
        captions: Callable[[list[Path]], list[tuple[str, ...]]] | None = None,
        class_names: tuple[str, ...] = (),
        crop: CropMode = "center",
        flip: bool = False,
        min_size: int = 8,
        verify: bool = True,
        skipped: list[tuple[str, str]] | None = None,
        kind: str = "image folder",
    ) -> None:
        if min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size}")
        if labels is not None and len(labels) != len(files):
            raise ValueError(f"{len(labels)} labels for {len(files)} files")
        self.root = Path(root)
        self.transform = ImageTransform(resolution, channels, crop, flip)
        self.resolution, self.channels = resolution, channels
        self.class_names, self.num_classes = class_names, len(class_names)
        # (path, reason) of every file left out; files that fail at load time are added in the
        # process that loads them (each DataLoader worker has its own copy)
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        self._unloadable: set[int] = set()

        problems = self._check_all(files, min_size, verify)
        usable: list[Path] = []
        self.labels: list[int] = []
        for k, (f, problem) in enumerate(zip(files, problems, strict=True)):
            if problem is not None:
                self.skipped.append((str(f), problem))
                continue
            usable.append(f)
            self.labels.append(labels[k] if labels is not None else -1)
        self.paths: list[str] = [str(f) for f in usable]
        if not self.paths:
            raise ValueError(
                f"no usable images in {self.root} (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                f"{self.skip_summary}"
            )
        # every caption of each image; ``captions`` keeps the first (what dataset[i] returns)
        self.caption_choices: list[tuple[str, ...]] = (
            captions(usable) if captions is not None else [()] * len(usable)
        )
        self.captions: list[str] = [c[0] if c else "" for c in self.caption_choices]
        # a warning when files were dropped: a silently shrunken dataset is easy to miss
        logger.log(
            logging.WARNING if self.skipped else logging.INFO,
            "%s %s: %d images, %s; %s",
            kind,
            self.root,
            len(self.paths),
            f"{self.num_classes} classes" if class_names else "unlabelled",
            self.skip_summary,
        )

    @staticmethod
    def _check_all(files: list[Path], min_size: int, verify: bool) -> list[str | None]:
        # I/O-bound reads and GIL-free decoding: threads keep the order (map) and the speed.
        # check_image refuses images over the pixel limit itself, so Pillow's warning about
        # them is noise; the filter is set here, in this thread only, around the whole pool.
        with (
            warnings.catch_warnings(),
            ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool,
        ):
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return list(pool.map(lambda f: check_image(f, min_size=min_size, verify=verify), files))

    @property
    def skip_summary(self) -> str:
        """ "skipped N files (k reason, ...)" for the files skipped so far in this process."""
        if not self.skipped:
            return "skipped 0 files"
        kinds = collections.Counter(reason.split(":")[0] for _, reason in self.skipped)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return f"skipped {len(self.skipped)} files ({detail})"

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int, generator: torch.Generator | None) -> torch.Tensor:
        with open_image(self.paths[index]) as img:
            if img.format in ("JPEG", "MPO"):
                # decode at 1/2, 1/4 or 1/8 scale when that still covers the output: much faster
                img.draft("L" if self.channels == 1 else "RGB", (self.resolution,) * 2)
            img.load()
            return self.transform(img, generator)

    def _replacements(self, index: int) -> Iterator[int]:
        """``index``, then every other index once, in an order fixed by ``index`` alone.

        Starting the walk at a hashed position spreads the stand-ins for a run of bad files
        over the dataset, instead of repeating the file after them.
        """
        n = len(self.paths)
        yield index
        start = derive_seed(index) % n
        for k in range(n):
            j = (start + k) % n
            if j != index:
                yield j

    def get_item(
        self, index: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | str]:
        """Item ``index``; random crop/flip, then the caption, draw from ``generator`` (None:
        torch's global RNG for crop/flip, the first caption).

        A file that fails to load (changed since indexing, or damage the index check cannot
        see) is skipped and counted in ``skipped`` of this process, and a stand-in is
        returned: the first loadable index of ``_replacements(index)``, drawn with the same
        generator state, so the batch is the same in every run and every worker.

        Raises:
            DataLoadError: no image of the dataset loads any more.
        """
        index = int(index)
        state = generator.get_state() if generator is not None else None
        for i in self._replacements(index):
            if i in self._unloadable:
                continue
            if generator is not None:
                generator.set_state(state)
            try:
                image = self._load(i, generator)
            except Exception as e:  # decoder errors come in many types
                self._mark_unloadable(i, f"failed to load: {type(e).__name__}: {e}")
                continue
            return {
                "image": image,
                "label": torch.tensor(self.labels[i], dtype=torch.long),
                "caption": pick_caption(self.caption_choices[i], generator),
            }
        raise DataLoadError(
            f"none of the {len(self.paths)} images in {self.root} loads any more (they were "
            "readable when the run started: was the folder changed or unmounted?)"
        )

    def _mark_unloadable(self, i: int, reason: str) -> None:
        self._unloadable.add(i)
        self.skipped.append((self.paths[i], reason))
        logger.warning(
            "skipping %s (%s); %d of %d images failed to load in this process",
            self.paths[i], reason, len(self._unloadable), len(self.paths),
        )  # fmt: skip

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        return self.get_item(index)


class ImageFolderDataset(ImageFilesDataset):
    """Every usable image under ``root``, resized and cropped to a square.

    Args:
        root: the folder.
        resolution: output side in pixels.
        channels: 3 (RGB) or 1 (L); see ``to_channels`` for how other modes convert.
        label_mode: "folders": each immediate subfolder is a class (sorted names are labels 0..K-1;
            images are found recursively inside; loose images in ``root`` are skipped).
            "none": every image, label -1. "auto": "folders" if some subfolder holds images.
        crop: "center" or "random" square crop after resizing the shorter side.
        flip: random left-right mirror.
        min_size: images with a side shorter than this are skipped.
        verify: check every file's data while indexing (see ``check_image``: catches truncated
            and corrupt files up front); without it only headers are read, and a bad file is
            found (and replaced) only when loaded.

    Captions: a sidecar ``NAME.txt`` next to ``NAME.png`` wins over an entry in the root's
    ``captions.jsonl`` / ``captions.csv`` (see ``read_caption_index``); otherwise "". Each
    non-empty line of a sidecar is one caption: ``get_item`` with a generator draws one per
    item and epoch, ``dataset[i]`` returns the first.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        ValueError: no usable image was found (the message counts the skipped files by
            reason), or a caption file is malformed.
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
        root = existing_folder(root, "image folder")
        skipped: list[tuple[str, str]] = []
        files = _image_files(root, skipped)
        subdirs = sorted({f.relative_to(root).parts[0] for f in files if f.parent != root})
        labelled = label_mode == "folders" or (label_mode == "auto" and bool(subdirs))
        class_names: tuple[str, ...] = tuple(subdirs) if labelled else ()
        if labelled:
            skipped += [(str(f), "outside any class folder") for f in files if f.parent == root]
            files = [f for f in files if f.parent != root]

        def captions(usable: list[Path]) -> list[tuple[str, ...]]:
            rels = [f.relative_to(root).as_posix() for f in usable]
            index = read_caption_index(root, wanted=set(rels))
            out = []
            for f, rel_name in zip(usable, rels, strict=True):
                sidecar = read_sidecar(f.with_suffix(".txt"))
                text = sidecar if sidecar is not None else index.get(rel_name, "")
                out.append(split_captions(text) if sidecar is not None else (text,))
            return out

        super().__init__(
            root,
            files,
            resolution,
            channels,
            labels=[class_names.index(f.relative_to(root).parts[0]) for f in files]
            if labelled
            else None,
            captions=captions,
            class_names=class_names,
            crop=crop,
            flip=flip,
            min_size=min_size,
            verify=verify,
            skipped=skipped,
        )
