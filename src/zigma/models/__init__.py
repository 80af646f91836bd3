"""Backbones: ZigMa and the baselines (DiT, U-ViT; sweep, Vision-Mamba and K-direction parallel
Mamba as ZigMa options) on shared layers, presets and save/load."""

from zigma.models.backbone import BackboneConfig, DiffusionBackbone
from zigma.models.dit import DiT, DiTBlock, DiTConfig
from zigma.models.graphs import GraphCache, GraphedForward
from zigma.models.io import MODEL_CLASSES, from_pretrained, read_config, save_pretrained
from zigma.models.registry import PRESETS, create_model, list_models, preset_config
from zigma.models.summary import FlopCount, count_flops, count_parameters, summarize
from zigma.models.uvit import UViT, UViTBlock, UViTConfig
from zigma.models.zigma import SCAN_SCHEDULES, ZigMa, ZigMaBlock, ZigMaConfig

__all__ = [
    "MODEL_CLASSES",
    "PRESETS",
    "SCAN_SCHEDULES",
    "BackboneConfig",
    "DiT",
    "DiTBlock",
    "DiTConfig",
    "DiffusionBackbone",
    "FlopCount",
    "GraphCache",
    "GraphedForward",
    "UViT",
    "UViTBlock",
    "UViTConfig",
    "ZigMa",
    "ZigMaBlock",
    "ZigMaConfig",
    "count_flops",
    "count_parameters",
    "create_model",
    "from_pretrained",
    "list_models",
    "preset_config",
    "read_config",
    "save_pretrained",
    "summarize",
]
