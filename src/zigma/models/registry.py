"""Model presets by name (``ZigMa-B/2``, ``DiT-B/2`` ...), as DiT names its models.

ZigMa widths match DiT's S/B/L/XL and depths are twice DiT's: a ZigMa block (Mamba mixer +
adaLN, about 9·D² parameters) is half a DiT block (attention + MLP + adaLN, about 18·D²), so each
preset has about the parameter count of the DiT preset of the same name.

The baselines keep ZigMa's width per size and take the depth that brings their parameter count
closest to the ZigMa preset of the same size and patch (within 5%, measured at the default 4x32x32
unconditional input; see tests/models/test_baselines.py), except DiT, which keeps DiT's own
depths and heads so that ``DiT-XL/2`` is the published model (DiT-S is 5.5-6.5% smaller than
ZigMa-S):

    family        model  config                                   S   B   L   XL   (depth)
    ZigMa-*       ZigMa  zigzag, 8 orders, one per layer          24  24  48  56
    Sweep-*       ZigMa  scan="sweep" (raster every layer)        24  24  48  56
    Vim-*         ZigMa  scan="bidirectional" (Vision Mamba v2)   23  23  46  54
    ZigMa-par4-*  ZigMa  zigzag, 4 orders in every layer          21  21  43  50
    ZigMa-par8-*  ZigMa  zigzag, 8 orders in every layer          17  19  38  44
    DiT-*         DiT    adaLN-Zero attention, heads 6/12/16/16   12  12  24  28
    U-ViT-*       UViT   tokens + long skips, heads 6/12/16/16    17  17  35  41
"""

from __future__ import annotations

import dataclasses
import difflib

import torch

from zigma.config import ConfigError
from zigma.models.backbone import BackboneConfig
from zigma.models.dit import DiT
from zigma.models.io import MODEL_CLASSES
from zigma.models.uvit import UViT
from zigma.models.zigma import ZigMa

PATCH_SIZES = (1, 2, 4)
_WIDTHS = {"S": 384, "B": 768, "L": 1024, "XL": 1152}
_HEADS = {"S": 6, "B": 12, "L": 16, "XL": 16}  # DiT's (head width 64, 64, 64, 72)

# family -> (model class, fixed config fields, depth per size); the module docstring's table.
_FAMILIES: dict[str, tuple[type[torch.nn.Module], dict, dict[str, int]]] = {
    "ZigMa": (ZigMa, {}, {"S": 24, "B": 24, "L": 48, "XL": 56}),
    "Sweep": (ZigMa, {"scan": "sweep"}, {"S": 24, "B": 24, "L": 48, "XL": 56}),
    "Vim": (ZigMa, {"scan": "bidirectional"}, {"S": 23, "B": 23, "L": 46, "XL": 54}),
    "ZigMa-par4": (
        ZigMa,
        {"scan_mode": "parallel", "num_orders": 4},
        {"S": 21, "B": 21, "L": 43, "XL": 50},
    ),
    "ZigMa-par8": (
        ZigMa,
        {"scan_mode": "parallel", "num_orders": 8},
        {"S": 17, "B": 19, "L": 38, "XL": 44},
    ),
    "DiT": (DiT, {}, {"S": 12, "B": 12, "L": 24, "XL": 28}),
    "U-ViT": (UViT, {}, {"S": 17, "B": 17, "L": 35, "XL": 41}),
}

# name -> (model class, config fields); one explicit table, nothing generated at call time.
PRESETS: dict[str, tuple[type[torch.nn.Module], dict]] = {
    f"{family}-{size}/{patch}": (
        cls,
        {
            "hidden_size": width,
            "depth": depths[size],
            "patch_size": patch,
            **({"num_heads": _HEADS[size]} if cls is not ZigMa else {}),
            **fields,
        },
    )
    for family, (cls, fields, depths) in _FAMILIES.items()
    for size, width in _WIDTHS.items()
    for patch in PATCH_SIZES
}

# model class -> its config dataclass (io's table of saveable classes)
CONFIG_CLASSES: dict[type[torch.nn.Module], type] = {
    cls: cfg_cls for cls, cfg_cls in MODEL_CLASSES.values()
}


def list_models() -> list[str]:
    """Names of every preset, in table order."""
    return list(PRESETS)


def preset_config(name: str, **overrides) -> BackboneConfig:
    """The config of preset ``name`` (a ZigMaConfig, DiTConfig or UViTConfig) with
    ``overrides`` (any field of that config) applied."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; choose from: {', '.join(PRESETS)}")
    cls, fields = PRESETS[name]
    cfg_cls = CONFIG_CLASSES[cls]
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown {cfg_cls.__name__} field {key!r}{hint}")
    return cfg_cls(**{**fields, **overrides})


def create_model(name: str, **overrides) -> torch.nn.Module:
    """Build preset ``name``; e.g. ``create_model("ZigMa-B/2", num_classes=10, scan="sweep")``
    or ``create_model("DiT-S/2", input_size=64)``."""
    cls, _ = PRESETS.get(name, (None, None))
    config = preset_config(name, **overrides)
    return cls(config)
