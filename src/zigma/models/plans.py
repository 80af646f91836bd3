"""Scan plans: how each Mamba layer orders the tokens it scans (paper §3.1-3.2, Fig. 5).

A layer's plan is (fold, order). ``fold`` says which axes go into the batch before scanning:
"none" scans all tokens as one sequence (an image, or a whole clip with a 3-D order),
"frames" scans each frame on its own (a spatial layer), "locations" scans each spatial
location through time (a temporal layer). ``order`` is a gather index over what remains
(None: the natural order). A single permutation of T·H·W tokens cannot keep a scan inside one
frame, which is why the fold is part of the plan. The mixer sees only [B', L', D] and an order.

A schedule is a pattern of letters, repeated over the depth: ``s`` (spatial: fold frames, the
next of the K 2-D orders, cycling by occurrence), ``t`` (temporal: fold locations, forwards
and backwards in time by turns) and ``v`` (volume: fold none, the next of the K 3-D orders).
Images have one frame: every layer scans the whole grid and layer i takes order i mod K.
The DiT baseline folds its attention the same way (``DiTConfig.attn_pattern``), orders aside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange

from zigma.models.grid import GridShape
from zigma.scan import inverse_orders, scan_orders

Fold = Literal["none", "frames", "locations"]
FOLDS: tuple[str, ...] = ("none", "frames", "locations")
PATTERN_LETTERS = {"s": "frames", "t": "locations", "v": "none"}
# the 3-D order kind of a 2-D one, for volume layers (None: raster over T·H·W)
_VOLUME_KINDS = {"zigzag": "zigzag3d", "sweep": None, "random": "random", "bidirectional": None}


@dataclass(frozen=True)
class LayerPlan:
    """One layer's scan: fold ``fold``, then gather ``order`` ([L'], or [K, L'] for a layer
    that scans K orders at once); ``inverse`` undoes the gather. None: natural order."""

    fold: Fold
    order: torch.Tensor | None = None
    inverse: torch.Tensor | None = None


def fold_tokens(x: torch.Tensor, fold: str, shape: GridShape) -> torch.Tensor:
    """[B, L, D] (frame-major) -> the sequences a layer scans: [B, L, D] for "none",
    [B*T, h*w, D] for "frames", [B*h*w, T, D] for "locations"."""
    if fold == "none":
        return x
    if fold == "frames":
        return rearrange(x, "b (t s) d -> (b t) s d", t=shape.frames)
    return rearrange(x, "b (t s) d -> (b s) t d", t=shape.frames)


def unfold_tokens(x: torch.Tensor, fold: str, shape: GridShape) -> torch.Tensor:
    """Inverse of ``fold_tokens``: back to [B, L, D] in frame-major order."""
    if fold == "none":
        return x
    if fold == "frames":
        return rearrange(x, "(b t) s d -> b (t s) d", t=shape.frames)
    return rearrange(x, "(b s) t d -> b (t s) d", s=shape.spatial)


def check_pattern(pattern: str | None, video: bool, name: str = "scan_pattern") -> None:
    """Raise ValueError unless ``pattern`` is a valid schedule for an image / video model.

    ``name`` is the config field the error names (``attn_pattern`` for a DiT).
    """
    if pattern is None:
        return
    if not video:
        raise ValueError(
            f"{name} applies to video models (input_size (T, H, W)); an image model "
            f"mixes its whole grid in every layer"
        )
    if not pattern or set(pattern) - set(PATTERN_LETTERS):
        raise ValueError(
            f"{name} must be letters s (spatial), t (temporal) and v (volume), got {pattern!r}"
        )


def layer_folds(pattern: str | None, depth: int, video: bool) -> list[tuple[str, int]]:
    """(fold, occurrence) per layer: occurrence counts earlier layers of the same letter."""
    if not video:
        return [("none", i) for i in range(depth)]
    letters = pattern or "sst"
    seen: dict[str, int] = {}
    out = []
    for i in range(depth):
        letter = letters[i % len(letters)]
        out.append((PATTERN_LETTERS[letter], seen.get(letter, 0)))
        seen[letter] = seen.get(letter, 0) + 1
    return out


def spatial_orders(kind: str, num: int, seed: int, shape: GridShape) -> torch.Tensor | None:
    """The K 2-D orders [K, h*w] of a schedule (None for raster-only schedules)."""
    if kind in ("sweep", "bidirectional"):
        return None
    return scan_orders(kind, shape.height, shape.width, num=num, seed=seed)


def volume_orders(kind: str, num: int, seed: int, shape: GridShape) -> torch.Tensor | None:
    """The K 3-D orders [K, T*h*w] over a whole clip (None: frame-major raster)."""
    if kind not in _VOLUME_KINDS:
        raise ValueError(f"scan={kind!r} has no 3-D orders for volume (v) layers")
    kind3d = _VOLUME_KINDS[kind]
    if kind3d is None:
        return None
    if kind3d == "random":  # any permutation of the clip's tokens
        return scan_orders("random", shape.frames * shape.height, shape.width, num=num, seed=seed)
    return scan_orders(kind3d, shape.height, shape.width, shape.frames, num=num)


def build_plans(
    folds: list[tuple[str, int]],
    tables: dict[str, torch.Tensor | None],
    shape: GridShape,
    parallel: bool,
    device: torch.device,
) -> list[LayerPlan]:
    """Every layer's plan on ``device``: ``tables`` holds the K orders of "frames"/"none"
    layers ([K, L'] or None); temporal layers alternate forwards / backwards."""
    moved: dict[str, tuple[torch.Tensor, torch.Tensor] | None] = {}
    for key, table in tables.items():
        # inverses computed (and validated) once on the CPU, then moved
        moved[key] = None if table is None else (table.to(device), inverse_orders(table).to(device))
    backwards = torch.arange(shape.frames - 1, -1, -1)
    reverse = (backwards.to(device), backwards.to(device))  # a reversal is its own inverse
    plans = []
    for fold, k in folds:
        if fold == "locations":
            order = reverse if k % 2 else None
            plans.append(LayerPlan(fold, *(order or (None, None))))
            continue
        found = moved[fold]
        if found is None:
            plans.append(LayerPlan(fold))
        elif parallel:  # every layer scans all K orders
            plans.append(LayerPlan(fold, *found))
        else:
            plans.append(LayerPlan(fold, found[0][k % len(found[0])], found[1][k % len(found[1])]))
    return plans
