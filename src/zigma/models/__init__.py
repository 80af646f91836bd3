"""Backbones on one denoiser contract, ``model(x, t, **cond)``: ZigMa and the baselines (DiT,
U-ViT; sweep, Vision-Mamba and K-direction parallel Mamba as ZigMa options), their token grid,
conditions, scan plans, presets and save/load.

Importing this package registers every family (each model module ends with its
``register_family`` call).
"""

from zigma.models.backbone import BackboneConfig, DiffusionBackbone
from zigma.models.conditions import (
    ClassCondition,
    Condition,
    Conditioner,
    Conditioning,
    TextCondition,
)
from zigma.models.dit import DiT, DiTBlock, DiTConfig
from zigma.models.graphs import GraphCache, GraphedForward
from zigma.models.grid import GridShape, TokenGrid
from zigma.models.io import from_pretrained, read_config, save_pretrained
from zigma.models.plans import FOLDS, LayerPlan, fold_tokens, unfold_tokens
from zigma.models.registry import (
    FAMILIES,
    PRESETS,
    Family,
    create_model,
    family_of,
    list_models,
    preset_config,
    register_family,
    sized_presets,
)
from zigma.models.summary import FlopCount, count_flops, count_parameters, summarize
from zigma.models.uvit import UViT, UViTBlock, UViTConfig
from zigma.models.zigma import SCAN_SCHEDULES, ZigMa, ZigMaBlock, ZigMaConfig

__all__ = [
    "FAMILIES",
    "FOLDS",
    "PRESETS",
    "SCAN_SCHEDULES",
    "BackboneConfig",
    "ClassCondition",
    "Condition",
    "Conditioner",
    "Conditioning",
    "TextCondition",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "DiffusionBackbone",
    "Family",
    "FlopCount",
    "GraphCache",
    "GraphedForward",
    "GridShape",
    "LayerPlan",
    "TokenGrid",
    "UViT",
    "UViTBlock",
    "UViTConfig",
    "ZigMa",
    "ZigMaBlock",
    "ZigMaConfig",
    "count_flops",
    "count_parameters",
    "create_model",
    "family_of",
    "fold_tokens",
    "from_pretrained",
    "list_models",
    "preset_config",
    "read_config",
    "register_family",
    "save_pretrained",
    "sized_presets",
    "summarize",
    "unfold_tokens",
]
