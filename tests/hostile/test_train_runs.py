"""Hostile input to ``zigma train``: out-of-range hyperparameters, run folders left by killed
or concurrent runs, damaged checkpoints and logs, full disks and signals.

Each table row is one bad input with the one-line error (or exit code) a user must get; rows
that leave files check that nothing already written changed.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest

from zigma.train import EMAConfig, OptimConfig, TrainConfig
from zigma.transport import TransportConfig

from .conftest import assert_one_line_error

# Every numeric field of the run configs: values just outside its range, and the ends of the
# range that must be accepted. A field missing here fails test_the_table_covers_every_field.
RANGES = {
    "steps": (["-1", "10000000001"], ["0", "10000000000"]),
    "batch_size": (["0", "1000001"], ["1"]),
    "seed": (["-1", str(2**63), "12345678901234567890123"], ["0", str(2**63 - 1)]),
    "num_workers": (["-1", "1025"], ["0"]),
    "cpu_threads": (["0", "4097"], ["1", "null"]),
    "log_every": (["0", "10000000001"], ["1"]),
    "ckpt_every": (["-1", "10000000001"], ["0"]),
    "sample_every": (["-1", "10000000001"], ["0"]),
    "num_samples": (["0", "4097"], ["1", "4096"]),
    "sample_steps": (["0", "10001"], ["1", "10000"]),
    "cfg_scale": (["-0.5", "100.5", "NaN", "Infinity", "1e308"], ["0", "100"]),
    "keep_last_checkpoints": (["0", "1000001"], ["1"]),
    "time_limit_minutes": (["0", "-1", "1e8", "Infinity"], ["1e-9", "null"]),
    "max_nonfinite": (["0", "10000000001"], ["1"]),
    "optim.lr": (["0", "-1e-3", "1.5", "1e38", "Infinity", "NaN"], ["1e-12", "1"]),
    "optim.weight_decay": (["-0.1", "1.5", "1e38", "Infinity"], ["0", "1"]),
    "optim.betas": (["[0.9, 1.0]", "[-0.1, 0.9]", "[NaN, 0.9]"], ["[0, 0.999999]"]),
    "optim.eps": (["0", "1e-31", "2", "NaN"], ["1e-30", "1"]),
    "optim.warmup_steps": (["-1", "10000000001"], ["0"]),
    "optim.grad_clip": (["-1", "1e13", "NaN"], ["0", "null", "1e12"]),
    "optim.min_lr_ratio": (["-0.1", "1.1"], ["0", "1"]),
    "ema.decay": (["-0.1", "1.0", "NaN"], ["0", "0.999999"]),
    "ema.update_every": (["0", "1000001"], ["1"]),
    "transport.train_eps": (["-0.1", "0.5", "NaN"], ["0", "0.49"]),
    "transport.sample_eps": (["-0.1", "0.5", "Infinity"], ["0", "0.49"]),
    "transport.time_mean": (["-10.5", "10.5", "NaN", "Infinity", "1e300"], ["-10", "10"]),
    "transport.time_std": (["0", "-1", "10.5", "NaN", "1e300"], ["1e-6", "10"]),
}


def _numeric_fields(cls, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        args = set(typing.get_args(hints[f.name])) | {hints[f.name]}
        if args & {int, float, tuple[float, float]} and hints[f.name] is not bool:
            yield prefix + f.name


def test_the_table_covers_every_field():
    fields = {
        *_numeric_fields(TrainConfig),
        *_numeric_fields(OptimConfig, "optim."),
        *_numeric_fields(EMAConfig, "ema."),
        *_numeric_fields(TransportConfig, "transport."),
    }
    assert fields == set(RANGES)


BAD = [(k, v) for k, (bad, _) in RANGES.items() for v in bad]
GOOD = [(k, v) for k, (_, good) in RANGES.items() for v in good]


@pytest.mark.parametrize("key, value", BAD, ids=[f"{k}={v}" for k, v in BAD])
def test_out_of_range_values_are_refused_before_anything_is_written(cli, tmp_path, key, value):
    out = tmp_path / "run"
    res = cli("train", "--preset", "demo", "--out", out, f"{key}={value}")
    line = assert_one_line_error(res, "train", key.split(".")[-1])
    assert len(line) < 300
    assert not out.exists()


@pytest.mark.parametrize("key, value", GOOD, ids=[f"{k}={v}" for k, v in GOOD])
def test_the_ends_of_each_range_are_accepted(key, value):
    from zigma.train import build_config

    cfg = build_config("demo", overrides=[f"{key}={value}"])
    assert cfg is not None
