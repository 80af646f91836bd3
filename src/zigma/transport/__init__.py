"""Stochastic-interpolant transport (paper §3.3): paths, training losses, samplers, guidance.

Time runs from t = 0 (data) to t = 1 (noise), the paper's convention; see ``paths.py`` for it
and for the conversion from SiT's (and the official code's) opposite direction.
"""

from .guidance import cat_rows, cfg_velocity, guided, is_batched, num_rows, take_rows
from .losses import TransportConfig, sample_time, training_loss
from .paths import PATHS, get_path
from .samplers import SAMPLERS, as_velocity, likelihood, sample

__all__ = [
    "PATHS",
    "SAMPLERS",
    "TransportConfig",
    "as_velocity",
    "cfg_velocity",
    "get_path",
    "guided",
    "is_batched",
    "num_rows",
    "take_rows",
    "cat_rows",
    "likelihood",
    "sample",
    "sample_time",
    "training_loss",
]
