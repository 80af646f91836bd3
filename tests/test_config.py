"""zigma.config: strict dataclass (de)serialisation and dotted overrides."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from zigma.config import ConfigError, apply_overrides, from_dict, parse_value, to_dict


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass
class Run:
    name: str = "run"
    steps: int = 10
    precision: Literal["fp32", "bf16"] = "fp32"
    seed: int | None = None
    optim: Optim = field(default_factory=Optim)


def test_round_trip():
    run = Run(name="x", steps=3, precision="bf16", seed=4, optim=Optim(lr=0.5, betas=(0.1, 0.2)))
    d = to_dict(run)
    assert d["optim"]["betas"] == [0.1, 0.2]
    assert from_dict(Run, d) == run


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match="unknown Run key 'stpes'.*did you mean 'steps'"):
        from_dict(Run, {"stpes": 3})
    with pytest.raises(ConfigError, match="unknown Optim key 'optim.lrr'"):
        from_dict(Run, {"optim": {"lrr": 3}})


def test_type_checks():
    with pytest.raises(ConfigError, match="steps must be an integer"):
        from_dict(Run, {"steps": "ten"})
    with pytest.raises(ConfigError, match=r"precision must be one of \['fp32', 'bf16'\]"):
        from_dict(Run, {"precision": "fp8"})
    with pytest.raises(ConfigError, match="betas must have 2 items"):
        from_dict(Run, {"optim": {"betas": [1, 2, 3]}})
    assert from_dict(Run, {"steps": 4.0}).steps == 4
    assert from_dict(Run, {"optim": {"lr": 1}}).optim.lr == 1.0


def test_overrides():
    run = apply_overrides(Run(), ["steps=20", "optim.lr=3e-4", "precision=bf16", "seed=none"])
    assert (run.steps, run.optim.lr, run.precision, run.seed) == (20, 3e-4, "bf16", None)
    assert apply_overrides(Run(), ["optim.betas=[0.5, 0.6]"]).optim.betas == (0.5, 0.6)
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'.*'lr'"):
        apply_overrides(Run(), ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides(Run(), ["steps"])
    with pytest.raises(ConfigError, match="steps must be an integer"):
        apply_overrides(Run(), ["steps=abc"])


def test_parse_value():
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5
    assert parse_value("True") is True and parse_value("null") is None
    assert parse_value("[1, 2]") == [1, 2] and parse_value("hilbert") == "hilbert"


def test_none_is_a_value_where_a_literal_lists_it():
    """pos_embed=none asks for no positional embedding (a Literal value), while null keeps the
    preset's, and "none" for a field without such a value is still null."""
    from zigma.train import build_config

    assert build_config("shapes-cpu", overrides=["model.pos_embed=none"]).model.pos_embed == "none"
    assert build_config("shapes-cpu", overrides=["model.pos_embed=null"]).model.pos_embed is None
    assert build_config("shapes-cpu", overrides=["model.depth=none"]).model.depth is None
    model = build_config("shapes-cpu", overrides=["model.pos_embed=none"]).model_config()
    assert model.pos_embed == "none"
