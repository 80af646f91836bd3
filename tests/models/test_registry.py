"""Presets, create_model and the FLOP / parameter counters."""

import pytest
import torch

from zigma.config import ConfigError
from zigma.models import count_flops, count_parameters, create_model, list_models, preset_config


def test_every_preset_is_listed():
    names = list_models()
    families = ("ZigMa", "Sweep", "Vim", "ZigMa-par4", "ZigMa-par8", "DiT", "U-ViT")
    for family in families:
        for size in ("S", "B", "L", "XL"):
            for patch in (1, 2, 4):
                assert f"{family}-{size}/{patch}" in names
    assert len(names) == len(set(names)) == 12 * len(families)


def test_preset_fields_and_overrides():
    cfg = preset_config("ZigMa-B/2", num_classes=10, scan="hilbert", input_size=64)
    assert (cfg.hidden_size, cfg.depth, cfg.patch_size) == (768, 24, 2)
    assert cfg.num_classes == 10 and cfg.scan == "hilbert" and cfg.input_size == (64, 64)
    assert preset_config("ZigMa-XL/1").depth == 56


def test_unknown_names_and_fields():
    with pytest.raises(ValueError, match="unknown model 'ZigMa-B/3'.*did you mean"):
        create_model("ZigMa-B/3")
    with pytest.raises(ConfigError, match="unknown ZigMaConfig field 'hiden_size'.*hidden_size"):
        create_model("ZigMa-S/2", hiden_size=3)


def test_small_preset_has_dit_s_size():
    model = create_model("ZigMa-S/2")
    # DiT-S/2 has 33.0 M parameters; ZigMa-S doubles the depth of a half-size block.
    assert 30e6 < count_parameters(model) < 36e6
    out = model(torch.randn(1, 4, 32, 32), torch.rand(1))
    assert out.shape == (1, 4, 32, 32)


def test_flop_count_matches_closed_form():
    model = create_model("ZigMa-S/4", depth=2, input_size=16, in_channels=3, pos_embed="none")
    d, di, n, r, k, p, c, L, depth = 384, 768, 16, 24, 4, 4, 3, 16, 2
    per_token_block = 2 * (d * 2 * di + di * (r + 2 * n) + r * di + di * d) + 2 * di * k
    matmul = (
        2 * L * c * p * p * d  # patch embed
        + 2 * (256 * d + d * d)  # timestep MLP
        + depth * (2 * d * 3 * d + L * per_token_block)  # adaLN + mixer
        + 2 * d * 2 * d
        + 2 * L * d * p * p * c  # final adaLN + linear
    )
    scan = depth * L * di * (7 * n + 10)
    f = count_flops(model)
    assert f.scan == scan
    assert f.matmul == matmul
    f2 = count_flops(model, batch_size=2)
    assert (f2.matmul, f2.scan) == (2 * f.matmul, 2 * f.scan)
