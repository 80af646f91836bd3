"""Procedural captioned scenes: one to three coloured shapes on a 3x3 grid of cells.

The text-to-image counterpart of ``shapes``: every item comes with a ground-truth ``SceneSpec``
(kind, colour, size, cell and centre of each object) and several compositional captions built
from it ("a small red circle in the top left", "a red circle to the left of a blue square"),
so whether a model follows a prompt can be measured (``zigma.evaluate.attributes``).

Item i is a pure function of (seed, split, i), at any resolution from 16 px. A training loader
draws one caption per item per epoch through ``get_item(index, generator)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from zigma.data.transforms import uint8_to_tensor

KINDS: tuple[str, ...] = ("circle", "square", "triangle")
# Six colours far apart in RGB (the closest pair, blue and purple, differ by ~150), all bright
# against the dark background, so each is obvious at 32 px.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 90, 240),
    "yellow": (245, 220, 40),
    "purple": (170, 50, 210),
    "white": (245, 245, 245),
}
SIZES: tuple[str, ...] = ("small", "large")
# The 3x3 grid, row-major from the top left: cell c is at row c // 3, column c % 3.
CELLS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
# How a caption says "in that cell": "at the top", "on the left", "in the top left".
LOCATIONS: tuple[str, ...] = tuple(
    f"{'at' if c in ('top', 'bottom') else 'on' if c in ('left', 'right') else 'in'} the {c}"
    for c in CELLS
)
BACKGROUND = (28, 28, 34)
MIN_RESOLUTION = 16
MAX_OBJECTS = 3

# Object diameters as fractions of the image side; a cell is 1/3 of it. Small objects are still
# ~6 px across at 32 px; large ones nearly fill their cell.
_DIAMETER = {"small": (0.18, 0.21), "large": (0.27, 0.30)}
_CELL_MARGIN = 0.01  # gap between an object and its cell's edge, so neighbours never touch
# Outlines in a unit frame (radius 1, y down), scaled so the three kinds look equally big.
_SQUARE = np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)])
_TRIANGLE = np.array([(0.0, -1.0), (0.95, 0.72), (-0.95, 0.72)])
_CIRCLE_RADIUS = 0.9


@dataclass(frozen=True)
class SceneObject:
    """One object: its attributes and where it is drawn (unit image coordinates, y down)."""

    kind: str
    color: str
    size: str  # "small" or "large"
    cell: int  # index into CELLS
    cx: float
    cy: float
    diameter: float  # fraction of the image side

    @property
    def position(self) -> str:
        return CELLS[self.cell]

    @property
    def location(self) -> str:
        """The position as a caption says it: "in the top left", "on the right"."""
        return LOCATIONS[self.cell]

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def column(self) -> int:
        return self.cell % 3


@dataclass(frozen=True)
class SceneSpec:
    """The ground truth of one image: its objects, in caption order, in distinct cells."""

    objects: tuple[SceneObject, ...]

    @property
    def label(self) -> int:
        """Class label: the kind of the first object."""
        return KINDS.index(self.objects[0].kind)


def make_object(
    kind: str,
    color: str,
    cell: int | str,
    size: str = "large",
    *,
    offset: tuple[float, float] = (0.0, 0.0),
    diameter: float | None = None,
) -> SceneObject:
    """An object with the given attributes; ``offset`` in [-1, 1]^2 moves it inside its cell
    (0: the cell's centre, +-1: as far as it fits), ``diameter`` defaults to the middle of the
    size's range.

    Raises:
        ValueError: an unknown kind, colour, size or cell, or an offset or diameter outside
            the size's range.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    if color not in COLORS:
        raise ValueError(f"color must be one of {list(COLORS)}, got {color!r}")
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    if isinstance(cell, str):
        if cell not in CELLS:
            raise ValueError(f"cell must be one of {list(CELLS)}, got {cell!r}")
        cell = CELLS.index(cell)
    if not 0 <= cell < len(CELLS):
        raise ValueError(f"cell must be in [0, {len(CELLS) - 1}], got {cell}")
    low, high = _DIAMETER[size]
    diameter = (low + high) / 2 if diameter is None else diameter
    if not low <= diameter <= high:
        raise ValueError(f"a {size} object's diameter must be in [{low}, {high}], got {diameter}")
    if not all(-1.0 <= o <= 1.0 for o in offset):
        raise ValueError(f"offset must lie in [-1, 1]^2, got {offset}")
    slack = (1 / 3 - diameter) / 2 - _CELL_MARGIN  # how far the centre may move from the middle
    cx = (cell % 3 + 0.5) / 3 + offset[0] * slack
    cy = (cell // 3 + 0.5) / 3 + offset[1] * slack
    return SceneObject(kind, color, size, cell, cx, cy, diameter)


def make_scene(objects: Sequence[SceneObject]) -> SceneSpec:
    """A spec of 1..MAX_OBJECTS objects in distinct cells (see ``make_object``).

    Raises:
        ValueError: no objects, too many, or two in one cell.
    """
    objects = tuple(objects)
    if not 1 <= len(objects) <= MAX_OBJECTS:
        raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(objects)}")
    if len({o.cell for o in objects}) != len(objects):
        raise ValueError("objects of a scene must lie in distinct cells")
    return SceneSpec(objects)


def render_scene(spec: SceneSpec, resolution: int) -> np.ndarray:
    """Draw ``spec`` as a uint8 [H, W, 3] array, anti-aliased by drawing at 4x and reducing."""
    if resolution < MIN_RESOLUTION:
        raise ValueError(f"resolution must be >= {MIN_RESOLUTION}, got {resolution}")
    factor = 4 if resolution <= 256 else 2  # past 256 px a 2x canvas is already smooth
    side = resolution * factor
    img = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for obj in spec.objects:
        color = COLORS[obj.color]
        cx, cy, r = obj.cx * side, obj.cy * side, obj.diameter / 2 * side
        if obj.kind == "circle":
            rr = r * _CIRCLE_RADIUS
            draw.ellipse((cx - rr, cy - rr, cx + rr, cy + rr), fill=color)
        else:
            outline = _SQUARE if obj.kind == "square" else _TRIANGLE
            draw.polygon([(cx + r * x, cy + r * y) for x, y in outline], fill=color)
    return np.asarray(img.reduce(factor)).copy()


# ---------------------------------------------------------------- captions


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _relation(a: SceneObject, b: SceneObject) -> list[str]:
    """Every true relation "a <relation> b" of two objects, from their cells (columns first).

    Objects sit inside their cells, so a smaller column or row is also a smaller centre x or y.
    """
    out = []
    if a.column != b.column:
        out.append("to the left of" if a.column < b.column else "to the right of")
    if a.row != b.row:
        out.append("above" if a.row < b.row else "below")
    return out


def scene_captions(spec: SceneSpec) -> list[str]:
    """Paraphrases of ``spec``, the most complete first; all are true of the image.

    Every caption names each object's colour and kind; the first names sizes and positions too.
    """
    objs = spec.objects
    full = [f"{o.size} {o.color} {o.kind}" for o in objs]
    plain = [f"{o.color} {o.kind}" for o in objs]
    if len(objs) == 1:
        o = objs[0]
        return [
            f"{_article(full[0])} {o.location}",
            f"{_article(plain[0])}, {o.size}, {o.location}",
            f"{o.position}: {_article(full[0])}",
            f"{_article(plain[0])} {o.location}",
            f"{o.location}, {_article(full[0])}",
        ]
    caps = [
        _and_list([f"{_article(d)} {o.location}" for d, o in zip(full, objs, strict=True)]),
        "; ".join(f"{o.position}: {_article(d)}" for d, o in zip(full, objs, strict=True)),
        _and_list([_article(d) for d in plain]),
    ]
    # relations between consecutive objects: "a red circle to the left of a blue square"
    for words in itertools.product(*(_relation(a, b) for a, b in itertools.pairwise(objs))):
        text = _article(plain[0])
        for k, word in enumerate(words):
            text += f"{', which is' if k else ''} {word} {_article(plain[k + 1])}"
        caps.append(text)
    return caps


def _and_list(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------- dataset


class ScenesDataset(Dataset):
    """Captioned scenes, generated on the fly (see module docstring).

    Args:
        num_samples: dataset length.
        resolution: image side in pixels (16 to 1024).
        seed: dataset seed.
        split: "train" or "test" (a different stream of the same seed).
        max_objects: each scene holds 1 to this many objects (1..3), uniformly.

    Each item is ``{"image": float32 [3, H, W] in [-1, 1], "label": int64 (kind of the first
    object), "caption": str}``; ``scene_spec(i)`` gives its ground truth.
    """

    class_names: tuple[str, ...] = KINDS
    num_classes: int = len(KINDS)

    def __init__(
        self,
        num_samples: int = 50_000,
        resolution: int = 32,
        seed: int = 0,
        split: Literal["train", "test"] = "train",
        max_objects: int = MAX_OBJECTS,
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not MIN_RESOLUTION <= resolution <= 1024:
            raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, 1024], got {resolution}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= max_objects <= MAX_OBJECTS:
            raise ValueError(f"max_objects must be in [1, {MAX_OBJECTS}], got {max_objects}")
        self.num_samples, self.resolution, self.seed = num_samples, resolution, seed
        self.split, self.max_objects = split, max_objects

    def __len__(self) -> int:
        return self.num_samples

    def scene_spec(self, index: int) -> SceneSpec:
        """The ground truth of item ``index`` (no pixels)."""
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        entropy = [self.seed, index] if self.split == "train" else [self.seed, index, 1]
        return random_scene(np.random.default_rng(entropy), self.max_objects)

    def render(self, spec: SceneSpec) -> np.ndarray:
        """``spec`` drawn at this dataset's resolution: uint8 [H, W, 3]."""
        return render_scene(spec, self.resolution)

    @staticmethod
    def captions(spec: SceneSpec) -> list[str]:
        return scene_captions(spec)

    def all_captions(self, index: int) -> list[str]:
        """Every caption item ``index`` may draw (what ``zigma text-cache`` encodes)."""
        return scene_captions(self.scene_spec(int(index)))

    def get_item(
        self, index: int, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor | str]:
        """Item ``index`` with one of its captions drawn from ``generator`` (None: the first)."""
        spec = self.scene_spec(int(index))
        caps = scene_captions(spec)
        pick = 0 if generator is None else int(torch.randint(len(caps), (), generator=generator))
        return {
            "image": uint8_to_tensor(self.render(spec)),
            "label": torch.tensor(spec.label, dtype=torch.long),
            "caption": caps[pick],
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        return self.get_item(index)


def random_scene(rng: np.random.Generator, max_objects: int = MAX_OBJECTS) -> SceneSpec:
    """A scene of 1..``max_objects`` objects (uniform), each of uniform kind, colour, size and
    cell (distinct cells, distinct colour-kind pairs so captions never repeat an object)."""
    n = int(rng.integers(1, max_objects + 1))
    cells = rng.permutation(len(CELLS))[:n]
    objects: list[SceneObject] = []
    seen: set[tuple[str, str]] = set()
    for cell in cells:
        while True:
            kind = KINDS[int(rng.integers(len(KINDS)))]
            color = list(COLORS)[int(rng.integers(len(COLORS)))]
            if (kind, color) not in seen:
                break
        seen.add((kind, color))
        size = SIZES[int(rng.integers(len(SIZES)))]
        low, high = _DIAMETER[size]
        diameter = float(rng.uniform(low, high))
        offset = (float(rng.uniform(-1, 1)), float(rng.uniform(-1, 1)))
        objects.append(make_object(kind, color, int(cell), size, offset=offset, diameter=diameter))
    return SceneSpec(tuple(objects))
