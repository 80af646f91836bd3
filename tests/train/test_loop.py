"""Real (tiny) training runs: the run folder, the loss going down, NaN skipping, precisions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from zigma.config import ConfigError, to_dict
from zigma.models import from_pretrained
from zigma.train import RunDirError, TrainingDiverged, load_checkpoint, train

from .conftest import tiny


def test_short_run_learns_and_writes_a_complete_run_dir(tmp_path):
    out = tmp_path / "run"
    cfg = tiny(
        "optim.lr=3e-3",
        "ckpt_every=10",
        "keep_last_checkpoints=2",
        "preview.every=20",
        "preview.num_samples=8",
        "preview.steps=3",
        steps=40,
    )
    summary = train(cfg, out)
    assert summary.steps == 40 and summary.nonfinite_total == 0 and summary.parameters > 0

    ckpt = load_checkpoint(out / "checkpoints" / "step_0000040")
    losses = ckpt.history["loss"]
    assert losses.shape == (40,) and torch.isfinite(losses).all()
    first, last = losses[:10].mean().item(), losses[-10:].mean().item()
    assert last < 0.8 * first, (first, last)

    saved = json.loads((out / "config.json").read_text())
    assert saved == ckpt.config and saved["model"]["hidden_size"] == 32
    assert saved["model"]["num_classes"] == 8 and saved["data"]["channels"] == 3
    log = (out / "log.txt").read_text()
    for text in ("torch", "world size 1", "parameters", "step 40/40", "checkpoint", "samples"):
        assert text in log
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert {"loss", "grad_norm", "lr", "steps_per_s", "samples_per_s"} <= set(metrics[0])
    assert Image.open(out / "loss.png").size == (800, 450)
    grid = Image.open(out / "samples" / "step_0000020.png")
    assert grid.size[0] > 16 * 8 and (out / "samples" / "step_0000040.png").is_file()

    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "LATEST",
        "step_0000030",
        "step_0000040",
    ]
    assert (out / "checkpoints" / "LATEST").read_text().strip() == "step_0000040"

    model = from_pretrained(out / "model")
    ema = load_file(out / "checkpoints" / "step_0000040" / "ema.safetensors")
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert json.loads((out / "model" / "transport.json").read_text()) == to_dict(cfg.transport)
    x = torch.randn(2, 3, 16, 16)
    assert model(x, torch.rand(2), y=torch.tensor([0, 1])).shape == x.shape


def test_fresh_run_refuses_a_folder_of_someone_elses_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="not a zigma run's"):
        train(tiny(steps=2), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_resume_without_a_checkpoint_starts_the_run(tmp_path):
    summary = train(tiny(steps=2), tmp_path / "run", resume=True)
    assert summary.steps == 2
    assert (tmp_path / "run" / "checkpoints" / "LATEST").read_text().strip() == "step_0000002"


class NaNInjector:
    """A forward hook on the real model: NaN outputs on chosen training calls; it also keeps
    a copy of one weight at every call, to see which steps changed the model."""

    def __init__(self, bad_calls):
        self.bad, self.calls, self.weights = set(bad_calls), 0, []

    def __call__(self, model):
        model.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        if not module.training:
            return None
        self.weights.append(module.final_layer.linear.weight.detach().clone())
        self.calls += 1
        return output * math.nan if self.calls in self.bad else None


def test_nonfinite_loss_skips_the_step(tmp_path):
    hook = NaNInjector({3})
    summary = train(tiny("optim.lr=1e-3", steps=8), tmp_path, model_hook=hook)
    assert summary.steps == 8 and summary.nonfinite_total == 1
    w = hook.weights
    assert torch.equal(w[3], w[2])  # step 3 changed nothing
    assert all(not torch.equal(w[i + 1], w[i]) for i in (0, 1, 3, 4))
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "step_0000008")
    assert math.isnan(ckpt.history["loss"][2]) and torch.isfinite(ckpt.history["loss"][3:]).all()
    assert ckpt.state["counters"] == {
        "nonfinite_total": 1,
        "nonfinite_consecutive": 0,
        "ema_updates": 7,
    }
    assert "step 3 skipped: non-finite loss" in (tmp_path / "log.txt").read_text()


def test_too_many_nonfinite_losses_stop_the_run(tmp_path):
    hook = NaNInjector(range(6, 100))
    cfg = tiny("max_nonfinite=3", "ckpt_every=4", steps=20)
    with pytest.raises(TrainingDiverged, match="3 skipped steps in a row"):
        train(cfg, tmp_path, model_hook=hook)
    assert hook.calls == 8  # steps 6, 7, 8 were bad; the third stopped the run
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step_0000004"
    assert not (tmp_path / "model").exists()
    assert "3 in a row" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(tmp_path, precision):
    summary = train(tiny(f"precision={precision}", steps=4), tmp_path)
    assert summary.steps == 4 and math.isfinite(summary.final_loss)
    weights = load_file(tmp_path / "checkpoints" / "step_0000004" / "model.safetensors")
    assert all(v.dtype in (torch.float32, torch.int64) for v in weights.values())


def test_fp16_export_keeps_ssm_parameters_fp32(tmp_path):
    train(tiny("export.dtype=fp16", steps=3), tmp_path)
    weights = load_file(tmp_path / "model" / "model.safetensors")
    assert weights["blocks.0.mixer.A_log"].dtype == torch.float32
    assert weights["blocks.0.mixer.in_proj.weight"].dtype == torch.float16
    model = from_pretrained(tmp_path / "model")
    ema = load_file(tmp_path / "checkpoints" / "step_0000003" / "ema.safetensors")
    key = "blocks.0.mixer.in_proj.weight"
    assert torch.equal(model.state_dict()[key], ema[key].half().float())


def test_unconditional_model_and_grad_checkpointing(tmp_path):
    cfg = tiny("model.num_classes=0", "grad_checkpointing=true", steps=3)
    train(cfg, tmp_path)
    assert from_pretrained(tmp_path / "model").config.num_classes == 0


def test_recompute_scans_trains_the_same_weights(tmp_path):
    seen = []
    train(tiny(steps=2), tmp_path / "a")
    train(tiny("recompute_scans=true", steps=2), tmp_path / "b",
          model_hook=lambda m: seen.append(m.recompute_scans))  # fmt: skip
    assert seen == [True]
    a = from_pretrained(tmp_path / "a" / "model").state_dict()
    b = from_pretrained(tmp_path / "b" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def test_cpu_threads_apply_during_the_run_only(tmp_path):
    seen = []
    before = torch.get_num_threads()
    train(
        tiny("cpu_threads=2", steps=1),
        tmp_path,
        model_hook=lambda m: seen.append(torch.get_num_threads()),
    )
    assert seen == [2] and torch.get_num_threads() == before


def test_time_limit_stops_at_the_next_log_step_with_a_final_checkpoint(tmp_path):
    # any elapsed time exceeds the limit: the first check (step 5 = log_every) stops the run
    summary = train(tiny("time_limit_minutes=1e-9", "ckpt_every=0", steps=100), tmp_path)
    assert summary.steps == 5
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step_0000005"
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert "time limit of 1e-09 min reached at step 5" in (tmp_path / "log.txt").read_text()


def test_time_limit_must_be_positive():
    with pytest.raises(ConfigError, match=r"time_limit_minutes must be in \(0, "):
        tiny("time_limit_minutes=0")


@pytest.mark.parametrize(
    "preset, extra",
    [("DiT-S/2", ["model.num_heads=2"]), ("U-ViT-S/2", ["model.num_heads=2", "model.depth=3"])],
)
def test_attention_baselines_train_and_sample(tmp_path, preset, extra):
    from zigma.evaluate import load_for_sampling
    from zigma.generate import generate

    cfg = tiny(
        f"model.preset={preset}", *extra, "model.scan=null", "model.num_orders=null", steps=3
    )
    summary = train(cfg, tmp_path)
    assert summary.steps == 3 and math.isfinite(summary.final_loss)
    assert (
        "classes:" in (tmp_path / "log.txt").read_text()
        and "None x" not in (tmp_path / "log.txt").read_text()
    )
    loaded = load_for_sampling(tmp_path)
    assert type(loaded.model).__name__ == ("DiT" if preset.startswith("DiT") else "UViT")
    images = generate(
        loaded.model,
        loaded.transport,
        2,
        cond={"y": torch.tensor([0, 5])},
        steps=2,
        sampler="euler",
    )
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_a_field_of_another_model_family_is_an_error():
    with pytest.raises(ConfigError, match="unknown DiTConfig field 'scan'"):
        tiny("model.preset=DiT-S/2", "model.scan=sweep").model_config(8)


def test_data_cache_trains_the_same_weights_without_workers(tmp_path):
    train(tiny(steps=4), tmp_path / "a")
    train(tiny("data.cache=true", "num_workers=2", steps=4), tmp_path / "b")
    a = from_pretrained(tmp_path / "a" / "model").state_dict()
    b = from_pretrained(tmp_path / "b" / "model").state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    log = (tmp_path / "b" / "log.txt").read_text()
    assert "256 images (held in memory: data.cache)" in log
