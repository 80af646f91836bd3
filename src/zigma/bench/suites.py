"""What to measure, as data: the token-count sweep, the order-receptive-field study and the
video study.

A ``BenchCase`` names a preset, the config overrides that turn it into the measured model, and
the input side (at patch 1 the token grid is side x side); a video case adds its frames. No
torch work happens here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from zigma.models import PRESETS, preset_config
from zigma.models.registry import preset_family

PAPER_SIDES = (32, 64, 96, 128, 196)  # token grid sides at patch 1 (the paper's sweep)
TINY_SIDES = (8, 16)
STUDY_ORDERS = (1, 2, 4, 8)
TINY_WIDTH, TINY_DEPTH = 64, 3  # U-ViT needs an odd depth

# The video study (issue 13): input sides in latent pixels at patch 2, so 16 frames of 32^2 are
# 16 x 16^2 = 4096 tokens (the paper's UCF101 latent) and 16 frames of 64^2 are 16384 tokens.
VIDEO_FRAMES, VIDEO_SIDES = 16, (32, 64)
TINY_VIDEO_FRAMES, TINY_VIDEO_SIDES = 4, (8, 16)
# preset:pattern (scan_pattern of a Mamba model, attn_pattern of a DiT): factorised ZigMa, one
# 3-D zigzag over the clip, bidirectional Vision-Mamba over the flattened clip, factorised
# attention (Latte / STDiT), full attention.
VIDEO_MODELS = ("ZigMa-B/2:sst", "ZigMa-B/2:v", "Vim-B/2:v", "DiT-B/2:st", "DiT-B/2:v")
# Full attention's cost grows with the square of the clip's tokens: the default study stops it
# at the 16 x 32^2 grid (see drop_full_attention).
FULL_ATTENTION_MAX_TOKENS = 16384


@dataclass(frozen=True)
class BenchCase:
    suite: str  # "tokens" or "orders"
    label: str  # the line it belongs to in the plots, e.g. "DiT-B/1" or "parallel"
    preset: str
    side: int  # input height = width
    overrides: dict = field(default_factory=dict, hash=False)
    scan_paths: int | None = None  # the order study's x axis
    frames: int | None = None  # a video case's frames (input_size is (frames, side, side))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input's (H, W), or (T, H, W) for a video case."""
        side = (self.side, self.side)
        return side if self.frames is None else (self.frames, *side)

    @property
    def tokens(self) -> int:
        return preset_config(self.preset, **self.overrides).grid_shape.length


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


def parse_video_model(spec: str) -> tuple[str, dict]:
    """``"preset"`` or ``"preset:pattern"`` -> (preset, overrides): the pattern goes to the
    preset's ``scan_pattern`` (Mamba models) or ``attn_pattern`` (DiT).

    Raises:
        ValueError: an unknown preset, or a pattern for a model that has no pattern field.
    """
    preset, _, pattern = spec.partition(":")
    family = preset_family(preset)  # unknown names fail here, with suggestions
    if not pattern:
        return preset, {}
    names = {f.name for f in dataclasses.fields(family.config_class)}
    key = next((k for k in ("scan_pattern", "attn_pattern") if k in names), None)
    if key is None:
        raise ValueError(f"{preset} has no layer pattern; give it without ':{pattern}'")
    return preset, {key: pattern}


def is_full_attention(case: BenchCase) -> bool:
    """Whether some layer of the case's model attends over the whole clip."""
    cfg = preset_config(case.preset, **case.overrides)
    return not cfg.uses_scan and "v" in (getattr(cfg, "attn_pattern", None) or "v")


def drop_full_attention(
    cases: list[BenchCase], max_tokens: int = FULL_ATTENTION_MAX_TOKENS
) -> tuple[list[BenchCase], list[BenchCase]]:
    """(kept, dropped): full-attention cases over ``max_tokens`` tokens are dropped."""
    kept, dropped = [], []
    for case in cases:
        slow = case.tokens > max_tokens and is_full_attention(case)
        (dropped if slow else kept).append(case)
    return kept, dropped


def video_study(
    models=VIDEO_MODELS,
    frames=(VIDEO_FRAMES,),
    sides=VIDEO_SIDES,
    overrides: dict | None = None,
) -> list[BenchCase]:
    """Every ``preset:pattern`` of ``models`` at every frames x side x side input.

    ``overrides[preset]`` are extra config fields of that preset (e.g. ``tiny_overrides``).
    A zigzag ZigMa's "v" layers scan the clip with the zigzag3d orders (``zigma.models.plans``).

    Raises:
        ValueError: a bad spec, frame count or side, or a preset that cannot be a video model
            (e.g. the parallel-scan baselines), before anything is timed.
    """
    extra = overrides or {}
    frames = tuple(frames)
    if not frames or any(f < 1 for f in frames):
        raise ValueError(f"frames must be positive integers, got {list(frames)}")
    sides = _check_sides(sides)
    cases = []
    for spec in models:
        preset, fields = parse_video_model(spec)
        for t in frames:
            for side in sides:
                fields_at = {"input_size": (t, side, side), **fields, **extra.get(preset, {})}
                try:  # unknown names/fields, image-only presets, bad sizes: before timing
                    preset_config(preset, **fields_at)
                except ValueError as e:
                    raise ValueError(f"{spec} as a {t}x{side}x{side} video model: {e}") from None
                cases.append(BenchCase("video", spec, preset, side, fields_at, frames=t))
    return cases
