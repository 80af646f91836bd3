"""The one table of model families: each family is a model class, its config class and its
presets by name (``ZigMa-B/2``, ``DiT-B/2`` ...), as DiT names its models.

A model module registers its family with one ``register_family`` call at its end; save/load,
``create_model``, the training config's model section and ``zigma models`` read this table.

ZigMa widths match DiT's S/B/L/XL and depths are twice DiT's: a ZigMa block (Mamba mixer +
adaLN, about 9·D² parameters) is half a DiT block (attention + MLP + adaLN, about 18·D²), so each
preset has about the parameter count of the DiT preset of the same name. Baselines keep ZigMa's
width per size and take the depth that brings them closest to the ZigMa preset of the same size
(within 5%, tests/models/test_baselines.py), except DiT, which keeps its published depths and
heads (DiT-S is 5.5-6.5% smaller than ZigMa-S).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zigma.config import ConfigError, suggest

if TYPE_CHECKING:
    from torch import nn

    from zigma.models.backbone import BackboneConfig

PATCH_SIZES = (1, 2, 4)
WIDTHS = {"S": 384, "B": 768, "L": 1024, "XL": 1152}
HEADS = {"S": 6, "B": 12, "L": 16, "XL": 16}  # DiT's (head width 64, 64, 64, 72)


@dataclass(frozen=True)
class Family:
    """A model class, its config dataclass and its presets (name -> config fields).

    ``name`` is what ``config.json`` stores as the model's class, so it never changes once
    models of the family have been saved.
    """

    name: str
    model_class: type[nn.Module]
    config_class: type[BackboneConfig]
    presets: dict[str, dict[str, Any]]


FAMILIES: dict[str, Family] = {}
PRESETS: dict[str, tuple[Family, dict[str, Any]]] = {}


def register_family(
    name: str,
    model_class: type[nn.Module],
    config_class: type[BackboneConfig],
    presets: dict[str, dict[str, Any]],
) -> Family:
    """Add a family; its presets become buildable by name and its models saveable.

    Raises:
        ValueError: the family name, its model class or one of its preset names is taken.
    """
    if name in FAMILIES or any(f.model_class is model_class for f in FAMILIES.values()):
        raise ValueError(f"model family {name!r} ({model_class.__name__}) is already registered")
    taken = sorted(set(presets) & set(PRESETS))
    if taken:
        raise ValueError(f"preset names already registered: {', '.join(taken)}")
    family = Family(name, model_class, config_class, dict(presets))
    FAMILIES[name] = family
    PRESETS.update({p: (family, fields) for p, fields in presets.items()})
    return family


def sized_presets(
    prefix: str, depths: dict[str, int], fields: dict[str, Any] | None = None, heads: bool = False
) -> dict[str, dict[str, Any]]:
    """``{prefix}-{S,B,L,XL}/{1,2,4}`` presets: DiT's widths, ``depths`` per size, ``fields``
    on top (and DiT's head counts when ``heads``)."""
    return {
        f"{prefix}-{size}/{patch}": {
            "hidden_size": width,
            "depth": depths[size],
            "patch_size": patch,
            **({"num_heads": HEADS[size]} if heads else {}),
            **(fields or {}),
        }
        for size, width in WIDTHS.items()
        for patch in PATCH_SIZES
    }


def family_of(model_or_class: nn.Module | type) -> Family:
    """The family a model (or model class) belongs to.

    Raises:
        TypeError: the class was never registered.
    """
    cls = model_or_class if isinstance(model_or_class, type) else type(model_or_class)
    for family in FAMILIES.values():
        if family.model_class is cls:
            return family
    raise TypeError(f"{cls.__name__} is not a registered zigma model class (register_family)")


def config_classes() -> list[type[BackboneConfig]]:
    """Every family's config class, in registration order (the train config's model section
    is the union of their fields)."""
    return [f.config_class for f in FAMILIES.values()]


def list_models() -> list[str]:
    """Names of every preset, in registration order."""
    return list(PRESETS)


def preset_family(name: str) -> Family:
    if name not in PRESETS:
        raise ValueError(
            f"unknown model {name!r}{suggest(name, PRESETS)}; choose from: {', '.join(PRESETS)}"
        )
    return PRESETS[name][0]


def preset_config(name: str, **overrides) -> BackboneConfig:
    """The config of preset ``name`` with ``overrides`` (any field of its config) applied."""
    family = preset_family(name)
    valid = {f.name for f in dataclasses.fields(family.config_class)}
    for key in overrides:
        if key not in valid:
            raise ConfigError(
                f"unknown {family.config_class.__name__} field {key!r}{suggest(key, valid)}"
            )
    return family.config_class(**{**PRESETS[name][1], **overrides})


def create_model(name: str, **overrides) -> nn.Module:
    """Build preset ``name``; e.g. ``create_model("ZigMa-B/2", num_classes=10, scan="sweep")``
    or ``create_model("DiT-S/2", input_size=64)``."""
    config = preset_config(name, **overrides)
    return preset_family(name).model_class(config)
