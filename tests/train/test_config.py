"""TrainConfig: presets, files, overrides and their precedence, and errors with suggestions."""

from __future__ import annotations

import dataclasses
import json

import pytest

from zigma.config import ConfigError, from_dict, to_dict
from zigma.models import ZigMaConfig, list_models
from zigma.train import (
    TRAIN_PRESETS,
    ModelSpec,
    TrainConfig,
    build_config,
    preset_dict,
    read_config_file,
)
from zigma.train.config import migrate


def test_defaults_match_the_official_optimizer():
    cfg = TrainConfig()
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip) == (1e-4, 0.0, 2.0)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.ema.decay == 0.9999


def test_model_spec_mirrors_every_field_of_every_model_config():
    from zigma.models import DiTConfig, UViTConfig

    spec = {f.name for f in dataclasses.fields(ModelSpec)}
    families = (ZigMaConfig, DiTConfig, UViTConfig)
    assert spec == {"preset"}.union(*({f.name for f in dataclasses.fields(c)} for c in families))


@pytest.mark.parametrize("name", list(TRAIN_PRESETS))
def test_every_preset_builds_and_resolves(name):
    cfg = build_config(name)
    model = cfg.model_config(num_classes=10)
    frames = (cfg.data.frames,) if cfg.data.frames else ()  # a video preset: (T, H, W)
    assert model.input_size == (*frames, cfg.data.resolution, cfg.data.resolution)
    assert model.in_channels == cfg.data.resolved_channels
    assert json.loads(json.dumps(to_dict(cfg))) == to_dict(cfg)  # JSON-ready


def test_presets_the_issue_asks_for():
    demo = build_config("demo")
    assert demo.data.name == "shapes" and demo.data.resolution == 16
    assert demo.data.style == "centered" and demo.steps == 5000
    assert demo.precision == "fp32" and demo.model.num_orders == 8
    fm = build_config("fashion-mnist").model_config(num_classes=10)
    assert fm.in_channels == 1 and fm.num_classes == 10 and fm.input_size == (32, 32)


def test_shapes_s_export_fits_20_mb():
    from zigma.models import count_parameters, create_model

    cfg = build_config("shapes-s")
    mcfg = cfg.model_config(num_classes=8)
    n = count_parameters(create_model(cfg.model.preset, **dataclasses.asdict(mcfg)))
    assert 5e6 <= n <= 15e6
    bytes_per_param = 2 if cfg.export.dtype == "fp16" else 4
    assert n * bytes_per_param < 20e6


def test_model_preset_name_trains_on_shapes():
    assert "ZigMa-S/2" in list_models()
    cfg = build_config("ZigMa-S/2")
    assert cfg.data.name == "shapes" and cfg.model.preset == "ZigMa-S/2"
    m = cfg.resolved(num_classes=8).model
    assert (m.hidden_size, m.depth, m.in_channels, m.num_classes) == (384, 24, 3, 8)


def test_recompute_scans_needs_a_mamba_model():
    assert build_config("demo", overrides=["recompute_scans=true"]).recompute_scans
    with pytest.raises(ConfigError, match="recompute_scans applies to Mamba models"):
        build_config("DiT-S/2", overrides=["recompute_scans=true"])


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError, match="did you mean 'demo'"):
        preset_dict("dmeo")
    with pytest.raises(ConfigError, match="ZigMa-S/2"):
        build_config("ZigMa-S2")


def test_dotted_overrides_are_type_checked():
    cfg = build_config("demo", overrides=["model.hidden_size=256", "optim.lr=3e-4"])
    assert cfg.model.hidden_size == 256 and cfg.optim.lr == 3e-4
    with pytest.raises(ConfigError, match="did you mean 'hidden_size'"):
        build_config("demo", overrides=["model.hiden_size=256"])
    with pytest.raises(ConfigError, match="model.depth.*int"):
        build_config("demo", overrides=["model.depth=deep"])
    with pytest.raises(ConfigError, match="one of"):
        build_config("demo", overrides=["precision=fp8"])


def test_model_preset_override_rederives_the_rest():
    cfg = build_config("ZigMa-S/2", overrides=["model.preset=ZigMa-B/4"])
    assert cfg.model_config().hidden_size == 768 and cfg.model_config().patch_size == 4
    with pytest.raises(ConfigError, match="ZigMa-B/2"):
        build_config("demo", overrides=["model.preset=ZigMa-B2"])


def test_precedence_preset_file_overrides_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"steps": 7, "optim": {"lr": 0.01}, "logging": {"every": 3}}))
    cfg = build_config("demo", path, ["optim.lr=0.02", "logging.every=4"], steps=9)
    assert cfg.steps == 9  # flag beats the file
    assert cfg.optim.lr == 0.02 and cfg.logging.every == 4  # override beats the file
    assert cfg.model.hidden_size == TRAIN_PRESETS["demo"].config["model"]["hidden_size"]
    assert cfg.optim.warmup_steps == TRAIN_PRESETS["demo"].config["optim"]["warmup_steps"]


def test_yaml_file(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  depth: 3\ndata:\n  resolution: 16\nbatch_size: 4\n")
    cfg = build_config("demo", path)
    assert (cfg.model.depth, cfg.data.resolution, cfg.batch_size) == (3, 16, 4)
    path.write_text("model:\n  dept: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'depth'"):
        build_config("demo", path)


def test_full_config_round_trips_through_a_file(tmp_path):
    cfg = build_config("demo", overrides=["seed=5"]).resolved(num_classes=8)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(to_dict(cfg)))
    again = build_config(config_file=path)
    assert again == cfg and from_dict(TrainConfig, to_dict(cfg)) == cfg


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_config_file(tmp_path / "missing.json")
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_config_file(bad)
    toml = tmp_path / "c.toml"
    toml.write_text("")
    with pytest.raises(ConfigError, match=".json, .yaml"):
        read_config_file(toml)


def test_resolution_must_divide_by_patch():
    with pytest.raises(ConfigError, match="not divisible by the model's patch size 4"):
        build_config("demo", overrides=["data.resolution=30", "model.patch_size=4"])


def test_model_must_match_the_data():
    with pytest.raises(ConfigError, match="data.resolution"):
        build_config("demo", overrides=["model.input_size=[64, 64]"])
    with pytest.raises(ConfigError, match="channels"):
        build_config("demo", overrides=["model.in_channels=4"])
    cfg = build_config("demo", overrides=["model.num_classes=3"])
    with pytest.raises(ConfigError, match="8 classes"):
        cfg.resolved(num_classes=8)
    with pytest.raises(ConfigError, match="unlabelled"):
        cfg.resolved(num_classes=0)


@pytest.mark.parametrize(
    "override, match",
    [
        ("batch_size=0", "batch_size"),
        ("optim.lr=0", "optim.lr"),
        ("ema.decay=1.0", "ema.decay"),
        ("optim.grad_clip=-1", "grad_clip"),
        ("max_nonfinite=0", "max_nonfinite"),
        ("optim.betas=[0.9]", "2 items"),
    ],
)
def test_invalid_values(override, match):
    with pytest.raises(ConfigError, match=match):
        build_config("demo", overrides=[override])


def test_resolved_fills_every_model_field():
    cfg = build_config("demo").resolved(num_classes=8)
    zigma_fields = {"preset"} | {f.name for f in dataclasses.fields(ZigMaConfig)}
    spec = to_dict(cfg.model)
    optional = {"scan_pattern"}  # None is its value for image models
    assert all(spec[k] is not None for k in zigma_fields - optional)
    assert all(v is None for k, v in spec.items() if k not in zigma_fields)  # DiT-only fields
    assert cfg.data.channels == 3 and cfg.model.num_classes == 8
    assert cfg.model_config() == build_config("demo").model_config(num_classes=8)


def test_flat_names_of_earlier_versions_are_read(tmp_path):
    """Configs and overrides written before the sections existed keep working."""
    path = tmp_path / "old.json"
    old = {"log_every": 3, "sample_every": 0, "cfg_scale": 2.5, "export_dtype": "fp16"}
    path.write_text(json.dumps(old))
    cfg = build_config("demo", path, ["num_samples=4", "sample_steps=7", "wandb_project=x"])
    assert (cfg.logging.every, cfg.preview.every, cfg.preview.guidance_scale) == (3, 0, 2.5)
    assert (cfg.export.dtype, cfg.preview.num_samples, cfg.preview.steps) == ("fp16", 4, 7)
    assert cfg.logging.wandb_project == "x"
    assert migrate({"cfg_scale": 2.0, "preview": {"guidance_scale": 3.0}}) == {
        "preview": {"guidance_scale": 3.0}
    }  # a sectioned value wins over its flat name
