"""Training: ``TrainConfig`` and presets, the loop ``train(cfg, out_dir, resume)``, EMA,
atomic safetensors/JSON checkpoints with exact resume, and torchrun DDP.

The run folder layout and the checkpoint format are described in ``loop.py`` and
``checkpoint.py``; ``zigma train`` is the command-line front end.
"""

from zigma.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from zigma.train.config import (
    RESUME_MUTABLE,
    EMAConfig,
    EvalConfig,
    ExportConfig,
    LoggingConfig,
    ModelSpec,
    OptimConfig,
    PreviewConfig,
    TextConfig,
    TrainConfig,
    build_config,
    preset_dict,
    read_config_file,
)
from zigma.train.control import TrainingInterrupted, TrainingPreempted
from zigma.train.ema import EMA, ema_decay
from zigma.train.loop import TrainSummary, train
from zigma.train.optim import StepGuard, TrainingDiverged, get_lr, param_groups
from zigma.train.presets import TRAIN_PRESETS, Preset
from zigma.train.resume import PeerRefused, RunDirError

__all__ = [
    "EMA",
    "RESUME_MUTABLE",
    "TRAIN_PRESETS",
    "CheckpointError",
    "EMAConfig",
    "EvalConfig",
    "ExportConfig",
    "LoggingConfig",
    "ModelSpec",
    "OptimConfig",
    "PeerRefused",
    "Preset",
    "TextConfig",
    "PreviewConfig",
    "RunDirError",
    "StepGuard",
    "TrainConfig",
    "TrainSummary",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingPreempted",
    "build_config",
    "ema_decay",
    "get_lr",
    "latest_checkpoint",
    "load_checkpoint",
    "param_groups",
    "preset_dict",
    "read_config_file",
    "train",
]
