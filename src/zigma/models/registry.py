"""Model presets by name (``ZigMa-B/2`` ...), as DiT names its models.

Widths match DiT's S/B/L/XL and depths are twice DiT's: a ZigMa block (Mamba mixer + adaLN,
about 9·D² parameters) is half a DiT block (attention + MLP + adaLN, about 18·D²), so each
preset has about the parameter count of the DiT preset of the same name.
"""

from __future__ import annotations

import dataclasses
import difflib

import torch

from zigma.config import ConfigError
from zigma.models.zigma import ZigMa, ZigMaConfig

_SIZES = {"S": (384, 24), "B": (768, 24), "L": (1024, 48), "XL": (1152, 56)}

# name -> (model class, config fields); one explicit table, nothing generated at call time.
PRESETS: dict[str, tuple[type[torch.nn.Module], dict]] = {
    f"ZigMa-{size}/{patch}": (ZigMa, {"hidden_size": width, "depth": depth, "patch_size": patch})
    for size, (width, depth) in _SIZES.items()
    for patch in (1, 2, 4)
}


def list_models() -> list[str]:
    """Names of every preset, in table order."""
    return list(PRESETS)


def preset_config(name: str, **overrides) -> ZigMaConfig:
    """The config of preset ``name`` with ``overrides`` (any config field) applied."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, PRESETS, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; choose from: {', '.join(PRESETS)}")
    cls, fields = PRESETS[name]
    cfg_cls = ZigMaConfig
    valid = {f.name for f in dataclasses.fields(cfg_cls)}
    for key in overrides:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"unknown {cfg_cls.__name__} field {key!r}{hint}")
    return cfg_cls(**{**fields, **overrides})


def create_model(name: str, **overrides) -> torch.nn.Module:
    """Build preset ``name``; e.g. ``create_model("ZigMa-B/2", num_classes=10, scan="sweep")``."""
    cls, _ = PRESETS.get(name, (None, None))
    config = preset_config(name, **overrides)
    return cls(config)
