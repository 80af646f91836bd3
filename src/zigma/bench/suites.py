"""What to measure, as data: the token-count sweep and the order-receptive-field study.

A ``BenchCase`` names a preset, the config overrides that turn it into the measured model, and
the input side (at patch 1 the token grid is side x side). No torch work happens here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from zigma.models import PRESETS, preset_config

PAPER_SIDES = (32, 64, 96, 128, 196)  # token grid sides at patch 1 (the paper's sweep)
TINY_SIDES = (8, 16)
STUDY_ORDERS = (1, 2, 4, 8)
TINY_WIDTH, TINY_DEPTH = 64, 3  # U-ViT needs an odd depth


@dataclass(frozen=True)
class BenchCase:
    suite: str  # "tokens" or "orders"
    label: str  # the line it belongs to in the plots, e.g. "DiT-B/1" or "parallel"
    preset: str
    side: int  # input height = width
    overrides: dict = field(default_factory=dict, hash=False)
    scan_paths: int | None = None  # the order study's x axis

    @property
    def tokens(self) -> int:
        p = preset_config(self.preset, **self.overrides).patch_size
        return (self.side // p) ** 2


def tiny_overrides(preset: str, width: int | None, depth: int | None) -> dict:
    """Overrides that shrink ``preset`` to ``width``/``depth`` (None: keep the preset's), with
    the attention heads reduced to a divisor of the width where the model has heads."""
    _, fields = PRESETS.get(preset, (None, {}))
    out = {}
    if width is not None:
        out["hidden_size"] = width
        heads = fields.get("num_heads")
        if heads is not None and width % heads:
            out["num_heads"] = max(h for h in range(1, heads + 1) if width % h == 0)
    if depth is not None:
        out["depth"] = depth
    return out


def _check_sides(sides) -> tuple[int, ...]:
    sides = tuple(sides)
    if not sides or any(s < 1 for s in sides):
        raise ValueError(f"token sides must be positive integers, got {list(sides)}")
    return sides


def token_sweep(models, sides=PAPER_SIDES, overrides: dict | None = None) -> list[BenchCase]:
    """Every model at every side; ``overrides[name]`` are extra config fields of model ``name``."""
    overrides = overrides or {}
    cases = [
        BenchCase("tokens", name, name, side, {"input_size": side, **overrides.get(name, {})})
        for name in models
        for side in _check_sides(sides)
    ]
    for case in cases:
        preset_config(case.preset, **case.overrides)  # unknown names/fields fail before timing
    return cases


def order_study(
    base: str = "ZigMa-B/1",
    sides=(64,),
    orders=STUDY_ORDERS,
    overrides: dict | None = None,
) -> list[BenchCase]:
    """Zigzag-K (layer i scans order i % K: same cost per layer for every K) against K-direction
    parallel Mamba (every layer scans all K orders) at the same width and depth, so only the
    number of scan paths varies."""
    extra = overrides or {}
    try:
        preset_config(base, num_orders=1, scan="zigzag")
    except ValueError as e:
        raise ValueError(f"the order study needs a ZigMa preset, got {base!r}") from e
    cases = []
    for side in _check_sides(sides):
        for mode in ("layerwise", "parallel"):
            for k in orders:
                fields = {"input_size": side, "scan": "zigzag", "scan_mode": mode, "num_orders": k}
                kind = "zigzag-K" if mode == "layerwise" else "parallel-K"
                label = f"{base} {kind} @{side}x{side}"
                cases.append(BenchCase("orders", label, base, side, {**fields, **extra}, k))
    for case in cases:
        preset_config(case.preset, **case.overrides)
    return cases
