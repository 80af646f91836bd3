"""Backbones: ZigMa (and, later, the baselines in the same code), presets and save/load."""

from zigma.models.io import from_pretrained, read_config, save_pretrained
from zigma.models.registry import PRESETS, create_model, list_models, preset_config
from zigma.models.summary import FlopCount, count_flops, count_parameters, summarize
from zigma.models.zigma import SCAN_SCHEDULES, ZigMa, ZigMaBlock, ZigMaConfig

__all__ = [
    "PRESETS",
    "SCAN_SCHEDULES",
    "FlopCount",
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
