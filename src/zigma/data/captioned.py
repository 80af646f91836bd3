"""Captioned image sets read from their own annotation layouts: COCO captions and MM-CelebA-HQ.

Both give several captions per image (COCO ~5, MM-CelebA-HQ 10); a loader draws one per item
per epoch. Images are checked, loaded and transformed by ``ImageFilesDataset`` exactly as an
image folder's are. Annotation files are hostile input: bounded in size, checked in structure,
and every problem is a one-line ``ValueError`` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path, PurePosixPath

from zigma.artifacts import read_text
from zigma.data.captions import MAX_CAPTION_BYTES, read_sidecar, split_captions
from zigma.data.folder import ImageFilesDataset, _image_files, existing_folder
from zigma.data.transforms import CropMode

logger = logging.getLogger(__name__)

# captions_train2014.json is ~70 MB; a file past this is not a caption file
COCO_MAX_BYTES = 1 << 30
MM_CELEBA_IMAGE_DIRS = ("images", "CelebA-HQ-img")  # ours, and the release's name
MM_CELEBA_TEXT_DIR = "text"


def _bad(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: not a COCO captions file ({what})")


def read_coco_captions(path: str | os.PathLike) -> dict[str, tuple[str, ...]]:
    """Image file name -> its captions (stripped, non-empty, in file order), from a COCO
    ``captions_*.json``: ``{"images": [{"id", "file_name"}...], "annotations": [{"image_id",
    "caption"}...]}``. Images without a caption are left out.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not JSON, larger than COCO_MAX_BYTES, another structure, a caption over
            MAX_CAPTION_BYTES, or a file name that leaves the image folder; naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO captions file {path} does not exist")
    text = read_text(path, "COCO captions file", COCO_MAX_BYTES)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise _bad(path, "nested too deeply") from None
    if not isinstance(data, dict):
        raise _bad(path, f"a JSON {type(data).__name__}, not an object")
    images, annotations = data.get("images"), data.get("annotations")
    if not isinstance(images, list) or not isinstance(annotations, list):
        raise _bad(path, "it needs 'images' and 'annotations' lists")
    names: dict[int, str] = {}
    for k, im in enumerate(images):
        if not (isinstance(im, dict) and isinstance(im.get("id"), int)):
            raise _bad(path, f"images[{k}] has no integer 'id'")
        name = im.get("file_name")
        if not isinstance(name, str) or not name:
            raise _bad(path, f"images[{k}] has no 'file_name' string")
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or "\\" in name:
            raise _bad(path, f"images[{k}].file_name {name[:80]!r} leaves the image folder")
        names[im["id"]] = rel.as_posix()
    captions: dict[str, list[str]] = {}
    for k, ann in enumerate(annotations):
        if not isinstance(ann, dict) or not isinstance(ann.get("caption"), str):
            raise _bad(path, f"annotations[{k}] has no 'caption' string")
        image_id = ann.get("image_id")
        if image_id not in names:
            raise _bad(path, f"annotations[{k}].image_id {str(image_id)[:40]} is not an image id")
        caption = ann["caption"].strip()
        if len(caption.encode("utf-8", "replace")) > MAX_CAPTION_BYTES:
            raise _bad(path, f"annotations[{k}].caption is longer than {MAX_CAPTION_BYTES} bytes")
        if caption:
            captions.setdefault(names[image_id], []).append(caption)
    return {name: tuple(caps) for name, caps in captions.items()}


class CocoCaptions(ImageFilesDataset):
    """COCO images with their captions (about five each; one drawn per item per epoch).

    Args:
        data_dir: the image folder (e.g. ``train2014/``).
        captions_file: a COCO ``captions_*.json``; None looks for ``captions_train2014.json``
            in ``data_dir``, its ``annotations/`` and its parent's ``annotations/``.
        resolution, channels, crop, flip, min_size, verify: as in ``ImageFolderDataset``.

    Images the file lists without a caption are skipped. A listed image missing from
    ``data_dir`` is an error, not a skip: it almost always means a wrong folder.

    Raises:
        FileNotFoundError: the folder or the captions file is missing.
        ValueError: a bad captions file (see ``read_coco_captions``), missing images, or no
            usable image.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        captions_file: str | os.PathLike | None = None,
        resolution: int = 32,
        channels: int = 3,
        *,
        crop: CropMode = "center",
        flip: bool = False,
        min_size: int = 8,
        verify: bool = True,
    ) -> None:
        root = existing_folder(data_dir, "COCO image folder")
        path = Path(captions_file) if captions_file is not None else _find_coco_captions(root)
        by_name = read_coco_captions(path)
        if not by_name:
            raise ValueError(f"{path}: no image has a caption")
        logger.info("%s: %d images with captions", path, len(by_name))
        names = sorted(by_name)
        missing = [n for n in names if not (root / n).is_file()]
        if missing:
            raise ValueError(
                f"{len(missing)} of the {len(names)} images {path} lists are missing from "
                f"{root}, e.g. {missing[0]} (is data_dir the image folder of that file?)"
            )
        files = [root / n for n in names]
        super().__init__(
            root,
            files,
            resolution,
            channels,
            captions=lambda usable: [by_name[f.relative_to(root).as_posix()] for f in usable],
            crop=crop,
            flip=flip,
            min_size=min_size,
            verify=verify,
            kind="COCO images",
        )
        self.captions_file = path


def _find_coco_captions(root: Path) -> Path:
    name = "captions_train2014.json"
    candidates = [root / name, root / "annotations" / name, root.parent / "annotations" / name]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"no {name} in {', '.join(str(c.parent) for c in candidates)}; set captions_file"
    )


class MMCelebAHQ(ImageFilesDataset):
    """MM-CelebA-HQ: ``data_dir/images/N.jpg`` (or the release's ``CelebA-HQ-img/``) with
    ``data_dir/text/N.txt`` holding one caption per line (10 per image; one drawn per item per
    epoch). Images without a caption file are skipped and counted.

    Args:
        data_dir: the dataset folder.
        resolution, channels, crop, flip, min_size, verify: as in ``ImageFolderDataset``.

    Raises:
        FileNotFoundError: no image folder or no ``text/`` folder.
        ValueError: a caption file over MAX_CAPTION_BYTES or not UTF-8 (naming it), or no
            usable image.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        resolution: int = 32,
        channels: int = 3,
        *,
        crop: CropMode = "center",
        flip: bool = False,
        min_size: int = 8,
        verify: bool = True,
    ) -> None:
        root = existing_folder(data_dir, "MM-CelebA-HQ folder")
        image_dir = next((root / d for d in MM_CELEBA_IMAGE_DIRS if (root / d).is_dir()), None)
        text_dir = root / MM_CELEBA_TEXT_DIR
        if image_dir is None or not text_dir.is_dir():
            dirs = " or ".join(f"{d}/" for d in MM_CELEBA_IMAGE_DIRS)
            raise FileNotFoundError(
                f"{root} is not an MM-CelebA-HQ folder: it needs {dirs} with the images and "
                f"{MM_CELEBA_TEXT_DIR}/ with N.txt captions"
            )
        skipped: list[tuple[str, str]] = []
        files = []
        for f in _image_files(image_dir, skipped):
            if (text_dir / f.relative_to(image_dir)).with_suffix(".txt").is_file():
                files.append(f)
            else:
                skipped.append((str(f), "no caption file"))

        def captions(usable: list[Path]) -> list[tuple[str, ...]]:
            out = []
            for f in usable:
                text = read_sidecar((text_dir / f.relative_to(image_dir)).with_suffix(".txt"))
                out.append(split_captions(text or ""))
            return out

        super().__init__(
            image_dir,
            files,
            resolution,
            channels,
            captions=captions,
            crop=crop,
            flip=flip,
            min_size=min_size,
            verify=verify,
            skipped=skipped,
            kind="MM-CelebA-HQ",
        )
