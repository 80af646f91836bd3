"""The baseline presets as a family: the right config class per preset, parameter counts matched
to ZigMa, save/load of every model class, FLOPs with attention, summaries."""

import json

import pytest
import torch

from zigma.models import (
    FAMILIES,
    PRESETS,
    DiT,
    DiTConfig,
    UViT,
    UViTConfig,
    ZigMa,
    ZigMaConfig,
    count_flops,
    count_parameters,
    create_model,
    from_pretrained,
    list_models,
    preset_config,
    summarize,
)

SIZES = ("S", "B", "L", "XL")
PATCHES = (1, 2, 4)
BASELINES = ("Sweep", "Vim", "ZigMa-par4", "ZigMa-par8", "DiT", "U-ViT")
# DiT keeps DiT's own depths and heads; DiT-S (12 x 384) is 5.5-6.5 % smaller than ZigMa-S.
TOLERANCE = {"DiT-S": 0.07}


@pytest.fixture(scope="module")
def preset_params() -> dict[str, int]:
    """Parameter count of every preset, built on the meta device (shapes only, no init)."""
    counts = {}
    for name in list_models():
        with torch.device("meta"):
            counts[name] = count_parameters(create_model(name))
    return counts


def test_presets_build_their_own_config_class():
    expected = {"DiT": (DiT, DiTConfig), "U-ViT": (UViT, UViTConfig)}
    for name in list_models():
        family = name.rsplit("-", 1)[0]
        cls, cfg_cls = expected.get(family, (ZigMa, ZigMaConfig))
        assert type(preset_config(name)) is cfg_cls, name
        family = PRESETS[name][0]
        assert family.model_class is cls and family.config_class is cfg_cls
        assert FAMILIES[family.name] is family
    cfg = preset_config("DiT-XL/2", num_classes=1000)
    assert (cfg.hidden_size, cfg.depth, cfg.num_heads, cfg.patch_size) == (1152, 28, 16, 2)
    assert preset_config("Vim-B/2").scan == "bidirectional"
    assert preset_config("Sweep-B/2").scan == "sweep"
    par = preset_config("ZigMa-par8-L/4")
    assert (par.scan, par.scan_mode, par.num_orders) == ("zigzag", "parallel", 8)
    assert preset_config("U-ViT-S/2").depth % 2 == 1


@pytest.mark.parametrize("family", BASELINES)
def test_parameter_counts_match_zigma(family, preset_params):
    for size in SIZES:
        for patch in PATCHES:
            ours = preset_params[f"{family}-{size}/{patch}"]
            zigma = preset_params[f"ZigMa-{size}/{patch}"]
            tol = TOLERANCE.get(f"{family}-{size}", 0.05)
            assert abs(ours / zigma - 1) <= tol, (family, size, patch, ours, zigma)


def test_dit_presets_are_dits(preset_params):
    # DiT-XL/2 is 675 M with learned sigma (8 output channels) and 1000 classes
    with torch.device("meta"):
        dit = create_model("DiT-XL/2", num_classes=1000, out_channels=8)
    assert 674e6 < count_parameters(dit) < 676e6
    assert 32e6 < preset_params["DiT-S/2"] < 34e6


def test_create_model_overrides_run_every_family():
    x, t = torch.randn(2, 3, 8, 8), torch.rand(2)
    for family in ("ZigMa", *BASELINES):
        model = create_model(f"{family}-S/4", input_size=8, in_channels=3, hidden_size=48, depth=3)
        assert model(x, t).shape == x.shape, family
        assert f"{48} x 3" in summarize(model, flops=False)


def _perturbed(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


SMALL = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, num_classes=4)
MODELS = {
    "DiT": lambda: DiT(DiTConfig(**SMALL, depth=2, num_heads=4)),
    "UViT": lambda: UViT(UViTConfig(**SMALL, depth=3, num_heads=4)),
    "ZigMa-parallel": lambda: ZigMa(
        ZigMaConfig(**SMALL, depth=2, scan_mode="parallel", num_orders=4)
    ),
}


@pytest.mark.parametrize("kind", list(MODELS))
def test_round_trip_is_exact(tmp_path, kind):
    torch.manual_seed(0)
    model = _perturbed(MODELS[kind]())
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["class"] == type(model).__name__
    loaded = type(model).from_pretrained(tmp_path).eval()
    assert type(loaded.config) is type(model.config) and loaded.config == model.config
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 4])
    assert torch.equal(model(x, t, y=y), loaded(x, t, y=y))
    assert type(from_pretrained(tmp_path)) is type(model)


def test_loading_the_wrong_class_is_an_error(tmp_path):
    MODELS["UViT"]().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="holds a UViT, not a DiT"):
        DiT.from_pretrained(tmp_path)


def test_dit_flops_count_attention():
    cfg = dict(input_size=16, in_channels=3, patch_size=4, hidden_size=32, depth=2, num_heads=4)
    model = DiT(DiTConfig(**cfg))
    d, c, p, L, depth = 32, 3, 4, 16, 2
    per_token_block = 2 * (d * 3 * d + d * d + 2 * d * 4 * d)  # qkv, proj, MLP
    attention = 2 * L * L * d * 2  # QK^T and AV over all heads
    matmul = (
        2 * L * c * p * p * d  # patch embed
        + 2 * (256 * d + d * d)  # timestep MLP
        + depth * (2 * d * 6 * d + L * per_token_block + attention)
        + 2 * d * 2 * d
        + 2 * L * d * p * p * c  # final adaLN + linear
    )
    f = count_flops(model)
    assert (f.matmul, f.scan) == (matmul, 0)
    with torch.device("meta"):  # `zigma models --flops` counts on the meta device
        assert count_flops(DiT(DiTConfig(**cfg))).matmul == matmul


def test_summaries_name_the_mixer():
    dit = summarize(create_model("DiT-S/4", input_size=8, depth=1), flops=False)
    assert "6 heads" in dit
    par = summarize(create_model("ZigMa-par4-S/4", input_size=8, depth=1), flops=False)
    assert "4 orders in parallel" in par
