"""Video datasets: Moving-MNIST and moving shapes made on the fly, and folders of real clips.

Every item is ``{"image": float32 [C, T, H, W] in [-1, 1], "label": int64, "caption": str}``:
an image item with a time axis, so ``collate_batch`` stacks a batch to [B, C, T, H, W].

The generated datasets are offline and deterministic: item i is a pure function of
(seed, split, i). Objects start at a seeded position with a seeded velocity and bounce off the
walls of the box (a reflection: the component of the velocity across the wall changes sign).

``VideoFolder`` reads UCF101-style class folders of video files (decoded by PyAV, torchvision
or OpenCV, whichever is installed) or of frame folders; clips that cannot be used are skipped
and counted, never fatal, as in ``zigma.data.folder``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from zigma.data.folder import (
    IMAGE_EXTENSIONS,
    DataLoadError,
    check_image,
    existing_folder,
    open_image,
)
from zigma.data.idx import MNIST_CLASSES, IdxDataset
from zigma.data.sampler import derive_seed
from zigma.data.scenes import COLORS, KINDS, SceneObject, SceneSpec, render_scene
from zigma.data.transforms import ImageTransform, uint8_to_tensor

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg")
VIDEO_EXTRA_HINT = "pip install 'zigma[video]' (or: pip install av)"
MIN_VIDEO_SIDE = 16
# Speed range in box sides per frame: a 64-px box moves 2 to 4.5 px a frame, so 16 frames
# hold one or two bounces; slower than that the motion is hard to see, faster it strobes.
SPEED = (0.03, 0.07)
# The eight compass words of a caption, counter-clockwise from +x (image y points down, so
# "up" is a negative y velocity).
_DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")


def bounce(start: float, velocity: float, high: float, steps: int) -> np.ndarray:
    """Positions of a point moving at ``velocity`` per step inside [0, ``high``], reflected at
    both walls; ``steps`` values, the first ``start``.

    Stepped one frame at a time, as a physics loop does: a step that crosses a wall folds back
    by the overshoot, and the velocity changes sign.
    """
    out = np.empty(steps)
    x, v = float(start), float(velocity)
    for t in range(steps):
        out[t] = x
        x += v
        # a speed below the box side crosses at most one wall per step, but loop to be safe
        while x < 0 or x > high:
            x, v = (-x, -v) if x < 0 else (2 * high - x, -v)
    return out


def direction_word(vx: float, vy: float) -> str:
    """The compass word for a velocity (y down): "right", "up-left", ..."""
    angle = math.atan2(-vy, vx)  # counter-clockwise from +x, with y pointing up
    return _DIRECTIONS[round(angle / (math.pi / 4)) % 8]


def _item_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index] if split == "train" else [seed, index, 1])


def _velocity(rng: np.random.Generator, size: float) -> tuple[float, float]:
    speed = rng.uniform(*SPEED) * size
    angle = rng.uniform(0, 2 * math.pi)
    return speed * math.cos(angle), speed * math.sin(angle)


def _check_common(num_samples: int, size: int, frames: int, seed: int, split: str) -> None:
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if not MIN_VIDEO_SIDE <= size <= 1024:
        raise ValueError(f"size must be in [{MIN_VIDEO_SIDE}, 1024], got {size}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (a video), got {frames}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")


# ---------------------------------------------------------------- Moving-MNIST


@dataclass(frozen=True)
class Sprite:
    """One moving object of a generated clip: what it is and where it is in every frame."""

    source_index: int  # the digit's index in the source dataset (MovingMNIST)
    label: int
    x: np.ndarray  # [T] left (MovingMNIST: pixels) or centre (MovingShapes: box sides)
    y: np.ndarray  # [T]
    vx: float  # initial velocity, per frame
    vy: float


class MovingMNIST(Dataset):
    """One or two MNIST (or Fashion-MNIST) digits bouncing in a square box.

    The digit (28 px in a 64-px box, scaled with the box: ``digit_side``) starts at a seeded
    position and moves at a seeded velocity, reflected at the walls; with two digits they
    move independently and overlap by the brighter pixel (the usual Moving-MNIST rule).
    Positions are kept in floats and rounded when pasted, so the digit never leaves the box.

    Args:
        source: the digits; images are taken at their stored size (``images`` uint8 [N, h, w]).
        num_samples: dataset length.
        size: box side in pixels (>= 16).
        frames: clip length T (>= 2).
        digits: 1 or 2.
        seed: content seed; item i is a function of (seed, split, i).
        split: "train" or "test" (a different stream; pass the matching source split).
        channels: 1, or 3 (the gray value repeated).
        labelled: label = the class of the first digit; False: -1.

    Raises:
        ValueError: an argument out of range.
    """

    def __init__(
        self,
        source: IdxDataset,
        num_samples: int = 10_000,
        size: int = 64,
        frames: int = 16,
        digits: int = 1,
        seed: int = 0,
        split: Literal["train", "test"] = "train",
        channels: int = 1,
        labelled: bool = True,
    ) -> None:
        _check_common(num_samples, size, frames, seed, split)
        if digits not in (1, 2):
            raise ValueError(f"digits must be 1 or 2, got {digits}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if len(source) == 0:
            raise ValueError("the source dataset holds no digits")
        self.source, self.num_samples, self.size, self.frames = source, num_samples, size, frames
        self.digits, self.seed, self.split, self.channels = digits, seed, split, channels
        self.labelled = labelled
        self.class_names = source.class_names
        self.num_classes = len(source.class_names)
        self.digit_side = min(source.images.shape[1], size * 7 // 16)  # 28 px in 64, 14 in 32

    def __len__(self) -> int:
        return self.num_samples

    def sprites(self, index: int) -> tuple[Sprite, ...]:
        """The digits of item ``index`` and their top-left corners per frame (pixels)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = _item_rng(self.seed, self.split, index)
        high = float(self.size - self.digit_side)  # the corner's range keeps the digit inside
        out = []
        for _ in range(self.digits):
            k = int(rng.integers(len(self.source)))
            x0, y0 = rng.uniform(0, high, size=2)
            vx, vy = _velocity(rng, self.size)
            xs = bounce(x0, vx, high, self.frames)
            ys = bounce(y0, vy, high, self.frames)
            out.append(Sprite(k, int(self.source.labels[k]), xs, ys, vx, vy))
        return tuple(out)

    def digit(self, source_index: int) -> np.ndarray:
        """The digit's pixels as pasted: uint8 [digit_side, digit_side]."""
        img = self.source.images[source_index]
        if img.shape[0] == self.digit_side:
            return img
        side = (self.digit_side, self.digit_side)
        return np.asarray(Image.fromarray(img, "L").resize(side, Image.Resampling.LANCZOS))

    def render(self, sprites: tuple[Sprite, ...]) -> np.ndarray:
        """The clip as uint8 [T, size, size]."""
        clip = np.zeros((self.frames, self.size, self.size), np.uint8)
        d = self.digit_side
        for s in sprites:
            pixels = self.digit(s.source_index)
            for t in range(self.frames):
                x, y = round(s.x[t]), round(s.y[t])
                np.maximum(clip[t, y : y + d, x : x + d], pixels, out=clip[t, y : y + d, x : x + d])
        return clip

    def caption(self, sprites: tuple[Sprite, ...]) -> str:
        """E.g. "the digit 7 moving right" or "a sandal moving up and a bag moving left"."""
        digits = self.class_names == MNIST_CLASSES
        parts = []
        for s in sprites:
            name = self.class_names[s.label]
            if digits:
                what = f"the digit {s.label}"
            else:
                what = f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
            parts.append(f"{what} moving {direction_word(s.vx, s.vy)}")
        return " and ".join(parts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sprites = self.sprites(int(index))
        # [T, H, W] uint8 -> [1, T, H, W] in [-1, 1], as uint8_to_tensor maps a frame
        clip = torch.from_numpy(self.render(sprites)).float().div_(127.5).sub_(1.0).unsqueeze(0)
        if self.channels == 3:
            clip = clip.expand(3, -1, -1, -1).contiguous()
        label = sprites[0].label if self.labelled else -1
        return {
            "image": clip,
            "label": torch.tensor(label, dtype=torch.long),
            "caption": self.caption(sprites),
        }


# ---------------------------------------------------------------- moving shapes


class MovingShapes(Dataset):
    """One or two coloured shapes (the ``scenes`` circles, squares and triangles, drawn by
    ``render_scene``) moving across its plain dark background, bouncing off the walls.

    Args:
        num_samples: dataset length.
        size: frame side in pixels (>= 16).
        frames: clip length T (>= 2).
        objects: 1 or 2 shapes (distinct kind-colour pairs).
        seed, split: item i is a function of (seed, split, i).

    Items are RGB; the label is the kind of the first shape (``KINDS``).
    """

    class_names: tuple[str, ...] = KINDS
    num_classes: int = len(KINDS)
    DIAMETER = (0.25, 0.35)  # fraction of the frame side

    def __init__(
        self,
        num_samples: int = 10_000,
        size: int = 32,
        frames: int = 16,
        objects: int = 1,
        seed: int = 0,
        split: Literal["train", "test"] = "train",
    ) -> None:
        _check_common(num_samples, size, frames, seed, split)
        if objects not in (1, 2):
            raise ValueError(f"objects must be 1 or 2, got {objects}")
        self.num_samples, self.size, self.frames = num_samples, size, frames
        self.objects, self.seed, self.split = objects, seed, split

    def __len__(self) -> int:
        return self.num_samples

    def specs(self, index: int) -> tuple[list[dict[str, Any]], tuple[Sprite, ...]]:
        """(kind/colour/diameter of each shape, their centres per frame in box sides)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = _item_rng(self.seed, self.split, index)
        looks: list[dict[str, Any]] = []
        sprites = []
        while len(looks) < self.objects:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            if any(lk["kind"] == kind and lk["color"] == color for lk in looks):
                continue
            diameter = float(rng.uniform(*self.DIAMETER))
            r = diameter / 2
            x0, y0 = rng.uniform(r, 1 - r, size=2)
            vx, vy = _velocity(rng, 1.0)
            # bounce the centre in [r, 1 - r]: shifted to [0, 1 - 2r] and back
            xs = r + bounce(x0 - r, vx, 1 - 2 * r, self.frames)
            ys = r + bounce(y0 - r, vy, 1 - 2 * r, self.frames)
            looks.append({"kind": kind, "color": color, "diameter": diameter})
            sprites.append(Sprite(-1, KINDS.index(kind), xs, ys, vx, vy))
        return looks, tuple(sprites)

    def render(self, looks: list[dict[str, Any]], sprites: tuple[Sprite, ...]) -> np.ndarray:
        """The clip as uint8 [T, size, size, 3]."""
        out = []
        for t in range(self.frames):
            objs = []
            for lk, s in zip(looks, sprites, strict=True):
                cx, cy = float(s.x[t]), float(s.y[t])
                cell = min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)  # the cell it is in now
                size = "large" if lk["diameter"] >= 0.3 else "small"
                objs.append(
                    SceneObject(lk["kind"], lk["color"], size, cell, cx, cy, lk["diameter"])
                )
            out.append(render_scene(SceneSpec(tuple(objs)), self.size))
        return np.stack(out)

    def __getitem__(self, index: int) -> dict[str, Any]:
        looks, sprites = self.specs(int(index))
        clip = torch.stack([uint8_to_tensor(f) for f in self.render(looks, sprites)], dim=1)
        caption = " and ".join(
            f"{'an' if lk['color'][0] in 'aeiou' else 'a'} {lk['color']} {lk['kind']} moving "
            f"{direction_word(s.vx, s.vy)}"
            for lk, s in zip(looks, sprites, strict=True)
        )
        return {
            "image": clip,
            "label": torch.tensor(sprites[0].label, dtype=torch.long),
            "caption": caption,
        }


# ---------------------------------------------------------------- video decoders


def _decode_av(path: str) -> Iterator[np.ndarray]:
    import av  # optional extra

    with av.open(path) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def _decode_torchvision(path: str) -> Iterator[np.ndarray]:
    from torchvision.io import read_video  # optional extra

    video, _, _ = read_video(path, pts_unit="sec", output_format="THWC")
    yield from video.numpy()


def _decode_cv2(path: str) -> Iterator[np.ndarray]:
    import cv2  # optional extra

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"OpenCV cannot open {path}")
    try:
        while True:
            ok, bgr = cap.read()
            if not ok:
                return
            yield bgr[:, :, ::-1].copy()
    finally:
        cap.release()


_DECODERS: dict[str, tuple[str, Callable[[str], Iterator[np.ndarray]]]] = {
    "av": ("av", _decode_av),
    "torchvision": ("torchvision.io", _decode_torchvision),
    "cv2": ("cv2", _decode_cv2),
}


def video_decoder() -> str:
    """The best installed decoder: "av" (PyAV), else "torchvision", else "cv2" (OpenCV).

    Raises:
        ImportError: none is installed (one line, naming the pip command).
    """
    import importlib.util

    for name, (module, _) in _DECODERS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                return name
        except ModuleNotFoundError:  # "torchvision.io" when torchvision itself is missing
            continue
    raise ImportError(
        f"reading video files needs a decoder (PyAV, torchvision or OpenCV): {VIDEO_EXTRA_HINT}"
    )


def read_video_frames(path: str | os.PathLike, decoder: str | None = None) -> list[np.ndarray]:
    """Every frame of a video file as uint8 [H, W, 3] RGB arrays (the whole clip is decoded:
    UCF101-style clips are seconds long)."""
    name = decoder or video_decoder()
    if name not in _DECODERS:
        raise ValueError(f"decoder must be one of {list(_DECODERS)}, got {name!r}")
    return list(_DECODERS[name][1](str(path)))


# ---------------------------------------------------------------- folders of clips


@dataclass(frozen=True)
class Clip:
    """One usable clip: a video file, or a folder of frame images (sorted by name)."""

    path: str
    label: int
    frames: tuple[str, ...] = ()  # frame files; empty for a video file


def _frame_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_EXTENSIONS)
    )  # fmt: skip


class VideoFolder(Dataset):
    """Clips under ``root/<class>/``: video files, or folders of frame images (one per clip).

    Class names are the sorted subfolder names of ``root`` (labels 0..K-1). Each item is
    ``frames`` consecutive frames ``stride`` apart, every frame resized on its shorter side
    and centre-cropped to ``resolution``. ``get_item`` with a generator draws where the window
    starts; ``dataset[i]`` takes the middle of the clip.

    Skipped and counted in ``skipped`` (``skip_summary``), never fatal: loose files in
    ``root``; frame folders with fewer than (frames - 1) * stride + 1 frames ("too short"),
    frames of different sizes ("mixed frame sizes") or a bad frame (the reasons of
    ``check_image``); video files that do not open ("undecodable"). A video file that turns
    out too short or undecodable when loaded is counted then and replaced by another clip,
    chosen deterministically, as ``ImageFilesDataset`` does.

    Raises:
        FileNotFoundError / NotADirectoryError: ``root`` is missing or not a folder.
        ImportError: video files are present but no decoder is installed.
        ValueError: no usable clip (the message counts the skipped ones by reason).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int = 64,
        frames: int = 16,
        stride: int = 1,
        channels: int = 3,
        *,
        min_size: int = 8,
        verify: bool = True,
    ) -> None:
        if frames < 2:
            raise ValueError(f"frames must be >= 2 (a video), got {frames}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        root = existing_folder(root, "video folder")
        self.root, self.frames, self.stride = root, frames, stride
        self.span = (frames - 1) * stride + 1  # frames a window covers
        self.resolution, self.channels = resolution, channels
        self.transform = ImageTransform(resolution, channels, "center", False)
        self.skipped: list[tuple[str, str]] = []
        self._unloadable: set[int] = set()

        classes = sorted(
            p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        self.class_names: tuple[str, ...] = tuple(classes)
        self.num_classes = len(classes)
        self.skipped += [
            (str(p), "outside any class folder")
            for p in sorted(root.iterdir())
            if p.is_file() and not p.name.startswith(".")
        ]
        candidates: list[tuple[Path, int]] = []
        for label, name in enumerate(classes):
            for p in sorted((root / name).iterdir()):
                if p.name.startswith("."):
                    continue
                if p.is_dir() or p.name.lower().endswith(VIDEO_EXTENSIONS):
                    candidates.append((p, label))
        self.decoder = None
        if any(p.is_file() for p, _ in candidates):
            self.decoder = video_decoder()
        with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) * 2)) as pool:
            checked = list(pool.map(lambda c: self._check(c[0], min_size, verify), candidates))
        self.clips: list[Clip] = []
        for (p, label), (problem, files) in zip(candidates, checked, strict=True):
            if problem is not None:
                self.skipped.append((str(p), problem))
            else:
                self.clips.append(Clip(str(p), label, files))
        if not self.clips:
            raise ValueError(f"no usable clips in {root}; {self.skip_summary}")
        logger.log(
            logging.WARNING if self.skipped else logging.INFO,
            "video folder %s: %d clips, %d classes; %s",
            root, len(self.clips), self.num_classes, self.skip_summary,
        )  # fmt: skip

    def _check(self, path: Path, min_size: int, verify: bool) -> tuple[str | None, tuple[str, ...]]:
        """(why the clip is unusable or None, its frame files)."""
        if path.is_file():
            return self._check_video(path), ()
        files = _frame_files(path)
        if len(files) < self.span:
            return f"too short: {len(files)} frames < {self.span}", ()
        sizes = set()
        for f in files:
            problem = check_image(f, min_size=min_size, verify=verify)
            if problem is not None:
                return f"{problem} ({f.name})", ()
            with open_image(f) as img:
                sizes.add(img.size)
        if len(sizes) > 1:
            shown = ", ".join(f"{w}x{h}" for w, h in sorted(sizes)[:3])
            return f"mixed frame sizes: {shown}", ()
        return None, tuple(str(f) for f in files)

    def _check_video(self, path: Path) -> str | None:
        """Open the container and read its frame count where the format stores one (PyAV);
        a count of 0 means unknown, and the length is checked when the clip is loaded."""
        if path.stat().st_size == 0:
            return "empty file"
        if self.decoder != "av":
            return None  # the other decoders cannot open cheaply: checked at load time
        import av  # optional extra

        try:
            with av.open(str(path)) as container:
                if not container.streams.video:
                    return "undecodable: no video stream"
                n = container.streams.video[0].frames
        except Exception as e:  # PyAV raises its own error types per codec / container
            return f"undecodable: {type(e).__name__}: {e}"
        if 0 < n < self.span:
            return f"too short: {n} frames < {self.span}"
        return None

    @property
    def skip_summary(self) -> str:
        """ "skipped N clips (k too short, ...)" for the clips skipped so far in this process."""
        if not self.skipped:
            return "skipped 0 clips"
        kinds = collections.Counter(reason.split(":")[0] for _, reason in self.skipped)
        detail = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        return f"skipped {len(self.skipped)} clips ({detail})"

    def __len__(self) -> int:
        return len(self.clips)

    def _start(self, n: int, generator: torch.Generator | None) -> int:
        room = n - self.span
        if generator is None:
            return room // 2
        return int(torch.randint(0, room + 1, (), generator=generator))

    def _load(self, clip: Clip, generator: torch.Generator | None) -> torch.Tensor:
        if clip.frames:
            start = self._start(len(clip.frames), generator)
            images = []
            for f in clip.frames[start : start + self.span : self.stride]:
                with open_image(f) as img:
                    img.load()
                    images.append(self.transform(img))
        else:
            decoded = read_video_frames(clip.path, self.decoder)
            if len(decoded) < self.span:
                raise ValueError(f"too short: {len(decoded)} frames < {self.span}")
            start = self._start(len(decoded), generator)
            window = decoded[start : start + self.span : self.stride]
            images = [self.transform(Image.fromarray(a)) for a in window]
        return torch.stack(images, dim=1)  # [C, T, H, W]

    def get_item(self, index: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Clip ``index`` (its window start drawn from ``generator``); a clip that fails to
        load is counted in ``skipped`` and replaced by the next loadable one in a fixed order.

        Raises:
            DataLoadError: no clip of the dataset loads any more.
        """
        index = int(index)
        n = len(self.clips)
        state = generator.get_state() if generator is not None else None
        start = derive_seed(index) % n
        for i in [index] + [(start + k) % n for k in range(n) if (start + k) % n != index]:
            if i in self._unloadable:
                continue
            if generator is not None:
                generator.set_state(state)
            try:
                clip = self._load(self.clips[i], generator)
            except Exception as e:  # decoder errors come in many types
                reason = str(e) if str(e).startswith("too short") else f"undecodable: {e}"
                self._unloadable.add(i)
                self.skipped.append((self.clips[i].path, reason))
                logger.warning("skipping %s (%s)", self.clips[i].path, reason)
                continue
            return {
                "image": clip,
                "label": torch.tensor(self.clips[i].label, dtype=torch.long),
                "caption": self.class_names[self.clips[i].label],
            }
        raise DataLoadError(f"none of the {n} clips in {self.root} loads any more")

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.get_item(index)
