"""Procedural "shapes" dataset: coloured shapes on plain, split or striped backgrounds.

Needs no download, works at any resolution from 8 px up, and item i is a pure function of
(seed, split, i), so every worker and rank draws the same picture for the same index. The label
is the kind of the large main object; the caption describes every object and the background.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zigma.data.transforms import uint8_to_tensor

T = TypeVar("T")

CLASS_NAMES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "plus",
    "ring",
    "star",
    "heart",
)

# Saturated colours far apart in hue and lightness, so each is still obvious at 32 px.
RGB_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (247, 137, 20),
    "yellow": (250, 214, 40),
    "green": (40, 165, 65),
    "cyan": (60, 200, 225),
    "blue": (35, 75, 215),
    "purple": (135, 55, 195),
    "pink": (245, 125, 190),
    "white": (246, 246, 240),
    "black": (22, 22, 28),
    "gray": (128, 128, 134),
    "brown": (130, 80, 40),
}
GRAY_COLORS: dict[str, int] = {
    "black": 20,
    "dark gray": 78,
    "gray": 135,
    "light gray": 192,
    "white": 245,
}

# Rotation range in degrees: shapes whose look a rotation would blur into another class
# (a square at 45 degrees is a diamond, a tilted plus an "x") only wobble.
_MAX_ROTATION = {
    "circle": 0.0,
    "square": 18.0,
    "triangle": 180.0,
    "diamond": 15.0,
    "plus": 18.0,
    "ring": 0.0,
    "star": 180.0,
    "heart": 15.0,
}

MAIN_SIZE = (0.45, 0.72)  # diameter of the main object, as a fraction of the image side
CENTERED_SIZE = (0.6, 0.8)  # "centered" style: one large object near the middle
CENTERED_JITTER = 0.06  # largest offset of its centre from the image centre
CENTERED_MAX_ROTATION = 15.0
SMALL_SIZE = (0.20, 0.30)
STYLES = ("full", "simple", "centered")
_EXTRA_OBJECTS_CDF = (0.5, 0.85)  # P(0 small objects) = 0.5, P(1) = 0.35, P(2) = 0.15
_BACKGROUNDS: tuple[Literal["solid", "split", "stripes"], ...] = ("solid", "split", "stripes")
_BACKGROUND_CDF = (0.6, 0.85)  # solid 60 %, split 25 %, striped 15 %
_MIN_CONTRAST_RGB = 150.0  # Euclidean RGB distance between an object and its background
_MIN_CONTRAST_GRAY = 100.0
_STRIPE_CONTRAST = 0.7  # object-vs-stripe difference, relative to stripe-vs-stripe
_LARGE_WORD_FROM = 0.62  # main objects at least this big are called "large"


def _regular_star(points: int, inner: float) -> np.ndarray:
    angles = np.arange(2 * points) * math.pi / points - math.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y - (y.max() + y.min()) / 2], axis=1)
    return pts / np.abs(pts).max() * 0.98


def _plus(half_width: float = 0.32, arm: float = 0.95) -> np.ndarray:
    a, b = half_width, arm
    return np.array(
        [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
         (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    )  # fmt: skip


# Outlines in a unit frame (object radius 1, y down); circle and ring are drawn as ellipses.
_POLYGONS: dict[str, np.ndarray] = {
    "square": np.array([(-0.74, -0.74), (0.74, -0.74), (0.74, 0.74), (-0.74, 0.74)]),
    "triangle": _regular_star(3, 0.5)[::2] * 1.05,  # thin corners: a bit larger to match
    "diamond": np.array([(0.0, -1.0), (0.66, 0.0), (0.0, 1.0), (-0.66, 0.0)]),
    "plus": _plus(),
    "star": _regular_star(5, 0.46),
    "heart": _heart(),
}
_CIRCLE_RADIUS = 0.88
_RING_WIDTH = 0.36  # ring thickness as a fraction of its outer radius


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object, in unit image coordinates (0..1, y down)."""

    kind: str
    color: str
    cx: float
    cy: float
    size: float  # diameter as a fraction of the image side
    angle: float  # degrees


@dataclass(frozen=True)
class ShapeScene:
    """Everything needed to draw (and describe) one item, independent of resolution."""

    background: Literal["solid", "split", "stripes"]
    colors: tuple[str, ...]  # one background colour, or two for split/stripes
    bg_angle: float  # split/stripe direction, degrees
    bg_offset: float  # split position, or stripe phase, in image sides
    stripe_period: float
    objects: tuple[ShapeObject, ...]  # main object last, so it is drawn on top

    @property
    def label(self) -> int:
        return CLASS_NAMES.index(self.objects[-1].kind)


def _pick(seq: Sequence[T], draw: Callable[[], float]) -> T:
    return seq[int(draw() * len(seq))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


class ShapesDataset(Dataset):
    """Coloured shapes, generated on the fly (see module docstring).

    Args:
        num_samples: dataset length.
        resolution: image side in pixels (8 to 1024).
        channels: 3 (RGB palette) or 1 (a palette of gray levels, named as such in captions).
        seed: dataset seed.
        split: "train" or "test"; the test split draws from a different stream of the same seed.
        style: "full" (plain, split or striped backgrounds, up to two extra small objects) or
            "simple" (one shape anywhere on a plain background) or "centered" (one large shape
            near the middle, little rotation, plain background: learnable in CPU minutes).

    Each item is ``{"image": float32 [C, H, W] in [-1, 1], "label": int64 scalar,
    "caption": str}``; ``scene(i)`` gives the underlying description.
    """

    class_names: tuple[str, ...] = CLASS_NAMES
    num_classes: int = len(CLASS_NAMES)

    def __init__(
        self,
        num_samples: int = 50_000,
        resolution: int = 32,
        channels: int = 3,
        seed: int = 0,
        split: Literal["train", "test"] = "train",
        style: Literal["full", "simple", "centered"] = "full",
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 8 <= resolution <= 1024:
            raise ValueError(f"resolution must be in [8, 1024], got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {list(STYLES)}, got {style!r}")
        self.style = style
        self.num_samples = num_samples
        self.resolution = resolution
        self.channels = channels
        self.seed = seed
        self.split = split
        # Drawing at 4x and box-filtering down is what anti-aliases the edges; past 256 px a
        # 2x canvas is already smooth and 4x would cost 4x the time.
        self.supersample = 4 if resolution <= 256 else 2
        palette: dict[str, Any] = RGB_COLORS if channels == 3 else GRAY_COLORS
        self._names = list(palette)
        self._values = list(palette.values())
        self._mode = "RGB" if channels == 3 else "L"
        vals = np.array(self._values, np.float64).reshape(len(self._names), -1)
        dist = np.sqrt(((vals[:, None, :] - vals[None, :, :]) ** 2).sum(-1))
        clear = dist >= (_MIN_CONTRAST_RGB if channels == 3 else _MIN_CONTRAST_GRAY)
        n = len(self._names)
        # colour index -> colours that contrast with it (-1: any colour, for the first pick)
        self._partners = {i: tuple(np.flatnonzero(clear[i]).tolist()) for i in range(n)}
        self._partners[-1] = tuple(range(n))
        # background colour(s) -> object colours that contrast with all of them; on stripes
        # an object must also differ more than the stripes do, or the stripes swallow it
        self._allowed: dict[tuple[int, ...], tuple[int, ...]] = {}
        for i in range(n):
            self._allowed[(i,)] = tuple(np.flatnonzero(clear[i]).tolist())
            for j in range(n):
                both = clear[i] & clear[j]
                stand_out = np.minimum(dist[i], dist[j]) >= _STRIPE_CONTRAST * dist[i, j]
                self._allowed[(i, j)] = tuple(np.flatnonzero(both).tolist())
                self._allowed[(i, j, 1)] = tuple(np.flatnonzero(both & stand_out).tolist())

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        entropy = [self.seed, index] if self.split == "train" else [self.seed, index, 1]
        return np.random.default_rng(entropy)

    def scene(self, index: int) -> ShapeScene:
        """Draw the random description of item ``index`` (no pixels)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        rng = self._rng(index)
        # One block of uniforms, consumed in order: numpy's per-call overhead (rng.choice is
        # ~20 us) would otherwise dominate; the rare long rejection loop falls back to rng.random.
        draw = itertools.chain(rng.random(160).tolist(), iter(rng.random, None)).__next__
        background = _BACKGROUNDS[bisect.bisect(_BACKGROUND_CDF, draw())]
        if self.style != "full":
            background = "solid"
        while True:
            bg = (_pick(self._partners[-1], draw),)
            if background != "solid":
                bg += (_pick(self._partners[bg[0]], draw),)
            # objects must stand out against every background colour they may overlap
            allowed = self._allowed[bg + (1,) if background == "stripes" else bg]
            if allowed:
                break
        bg_angle = 45.0 * int(draw() * 4)
        bg_offset = -0.15 + 0.3 * draw()
        stripe_period = 0.22 + 0.12 * draw()

        if self.style == "centered":
            main = self._center(draw, _pick(CLASS_NAMES, draw), allowed)
        else:
            main = self._place(draw, _pick(CLASS_NAMES, draw), allowed, MAIN_SIZE, [])
        assert main is not None  # the first object always fits
        placed = [main]
        extras = bisect.bisect(_EXTRA_OBJECTS_CDF, draw()) if self.style == "full" else 0
        for _ in range(extras):
            obj = self._place(draw, _pick(CLASS_NAMES, draw), allowed, SMALL_SIZE, placed)
            if obj is not None:
                placed.append(obj)
        return ShapeScene(
            background=background,
            colors=tuple(self._names[i] for i in bg),
            bg_angle=bg_angle,
            bg_offset=bg_offset,
            stripe_period=stripe_period,
            objects=tuple(placed[1:]) + (main,),
        )

    def _place(
        self,
        draw: Callable[[], float],
        kind: str,
        allowed: tuple[int, ...],
        size_range: tuple[float, float],
        others: list[ShapeObject],
    ) -> ShapeObject | None:
        """Sample an object that lies inside the image and does not touch ``others``."""
        color = self._names[_pick(allowed, draw)]
        size = size_range[0] + (size_range[1] - size_range[0]) * draw()
        angle = (2 * draw() - 1) * _MAX_ROTATION[kind]
        r = size / 2
        lo, span = r + 0.02, 1 - 2 * (r + 0.02)
        for _ in range(12):
            cx, cy = lo + span * draw(), lo + span * draw()
            if all(math.hypot(cx - o.cx, cy - o.cy) > r + o.size / 2 + 0.03 for o in others):
                return ShapeObject(kind, color, cx, cy, size, angle)
        return None  # crowded: leave it out (and out of the caption)

    def _center(
        self, draw: Callable[[], float], kind: str, allowed: tuple[int, ...]
    ) -> ShapeObject:
        """A large object near the centre, rotated by at most ``CENTERED_MAX_ROTATION``."""
        color = self._names[_pick(allowed, draw)]
        size = CENTERED_SIZE[0] + (CENTERED_SIZE[1] - CENTERED_SIZE[0]) * draw()
        max_rotation = min(_MAX_ROTATION[kind], CENTERED_MAX_ROTATION)
        angle = (2 * draw() - 1) * max_rotation
        cx, cy = (0.5 + CENTERED_JITTER * (2 * draw() - 1) for _ in range(2))
        return ShapeObject(kind, color, cx, cy, size, angle)

    def render(self, scene: ShapeScene) -> Image.Image:
        """Draw ``scene`` at this dataset's resolution, anti-aliased by supersampling."""
        side = self.resolution * self.supersample
        colors = [self._values[self._names.index(c)] for c in scene.colors]
        img = Image.new(self._mode, (side, side), colors[0])
        draw = ImageDraw.Draw(img)
        if scene.background != "solid":
            self._draw_background(draw, scene, colors[1], side, self.resolution)
        for obj in scene.objects:
            self._draw_object(draw, obj, side)
        return img.reduce(self.supersample)

    @staticmethod
    def _draw_background(
        draw: ImageDraw.ImageDraw,
        scene: ShapeScene,
        color: int | tuple[int, ...],
        side: int,
        resolution: int,
    ) -> None:
        theta = math.radians(scene.bg_angle)
        normal = np.array([math.cos(theta), math.sin(theta)])
        along = np.array([-normal[1], normal[0]])
        centre = np.array([side / 2, side / 2])
        far = 2.0 * side

        def band(lo: float, hi: float) -> None:
            corners = [
                centre + lo * normal - far * along,
                centre + lo * normal + far * along,
                centre + hi * normal + far * along,
                centre + hi * normal - far * along,
            ]
            draw.polygon([(float(x), float(y)) for x, y in corners], fill=color)

        if scene.background == "split":
            band(scene.bg_offset * side, far)
            return
        # below ~4 output pixels per period stripes alias into moire (8-16 px images)
        period = max(scene.stripe_period, 4.0 / resolution) * side
        start = scene.bg_offset * side - period * math.ceil(0.75 * side / period)
        u = start
        while u < 0.75 * side:  # the half-diagonal is < 0.71 sides
            band(u, u + period / 2)
            u += period

    def _draw_object(self, draw: ImageDraw.ImageDraw, obj: ShapeObject, side: int) -> None:
        color = self._values[self._names.index(obj.color)]
        cx, cy, r = obj.cx * side, obj.cy * side, obj.size / 2 * side
        if obj.kind in ("circle", "ring"):
            rr = r * (_CIRCLE_RADIUS if obj.kind == "circle" else 0.95)
            box = (cx - rr, cy - rr, cx + rr, cy + rr)
            if obj.kind == "circle":
                draw.ellipse(box, fill=color)
            else:
                draw.ellipse(box, outline=color, width=max(1, round(rr * _RING_WIDTH)))
            return
        theta = math.radians(obj.angle)
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        pts = _POLYGONS[obj.kind] @ rot.T * r + np.array([cx, cy])
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=color)

    def caption(self, scene: ShapeScene) -> str:
        """E.g. "a large red circle and a small blue star on a yellow background"."""
        main, extras = scene.objects[-1], scene.objects[:-1]
        big = "large " if main.size >= _LARGE_WORD_FROM else ""
        parts = [_with_article(f"{big}{main.color} {main.kind}")]
        parts += [f"a small {o.color} {o.kind}" for o in extras]
        things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        if scene.background == "solid":
            bg = _with_article(f"{scene.colors[0]} background")
        elif scene.background == "split":
            bg = f"a half {scene.colors[0]}, half {scene.colors[1]} background"
        else:
            bg = _with_article(f"{scene.colors[0]} and {scene.colors[1]} striped background")
        return f"{things} on {bg}"

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        scene = self.scene(int(index))
        return {
            "image": uint8_to_tensor(np.asarray(self.render(scene))),
            "label": torch.tensor(scene.label, dtype=torch.long),
            "caption": self.caption(scene),
        }
