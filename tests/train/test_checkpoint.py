"""Checkpoint folders: optimizer flattening, RNG capture, atomic LATEST, pruning, bad input."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from zigma.models import create_model
from zigma.models.io import read_config
from zigma.train.checkpoint import (
    CheckpointError,
    capture_rng,
    flatten_optimizer,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    optimizer_param_names,
    pretty_json,
    restore_rng,
    save_checkpoint,
    unflatten_optimizer,
)

CPU = torch.device("cpu")


def _trained():
    torch.manual_seed(0)
    model = create_model("ZigMa-S/2", hidden_size=16, depth=1, input_size=8, in_channels=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        x = torch.randn(2, 1, 8, 8)
        model.final_layer.linear.bias.data.fill_(0.1)
        (model(x, torch.rand(2)) - x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _save(root, step, model, opt, keep=3):
    tensors, states = capture_rng(CPU)
    return save_checkpoint(
        root,
        step,
        config={"steps": 10},
        model=model,
        ema_model=model,
        optimizer=opt,
        state={"counters": {}},
        rng_tensors=[tensors],
        rng_states=[states],
        shared_rng={"noise_generator": torch.Generator().get_state()},
        history={"loss": [1.0] * step, "grad_norm": [0.5] * step},
        keep_last=keep,
    )


def test_optimizer_state_round_trips_exactly():
    model, opt = _trained()
    tensors, meta = flatten_optimizer(opt, optimizer_param_names(opt, model))
    meta = json.loads(json.dumps(meta))  # what state.json holds
    assert meta["param_names"] == [n for n, _ in model.named_parameters()]
    back = unflatten_optimizer(tensors, meta)
    sd = opt.state_dict()
    assert back["param_groups"] == sd["param_groups"]
    for idx, st in sd["state"].items():
        for key, value in st.items():
            assert torch.equal(back["state"][idx][key], value)


def test_rng_capture_and_restore():
    tensors, states = capture_rng(CPU)
    json.dumps(states)
    a = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(tensors, json.loads(json.dumps(states)), CPU)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_folder_layout_and_model_json(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, 3, model, opt)
    assert path.name == "step_0000003"
    assert (tmp_path / "LATEST").read_text().strip() == "step_0000003"
    names = {p.name for p in path.iterdir()}
    assert names == {
        "config.json",
        "model.json",
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "state.json",
        "rng.safetensors",
        "history.safetensors",
    }
    assert not any(p.name.startswith(".tmp") for p in tmp_path.iterdir())
    # model.json is exactly what save_pretrained writes as config.json
    (tmp_path / "as_model").mkdir()
    (tmp_path / "as_model" / "config.json").write_text((path / "model.json").read_text())
    cls, cfg = read_config(tmp_path / "as_model")
    assert cfg == model.config
    ckpt = load_checkpoint(path)
    assert ckpt.step == 3 and ckpt.config == {"steps": 10}
    assert all(torch.equal(ckpt.model[k], v) for k, v in model.state_dict().items())


def test_keeps_the_newest_and_latest_points_at_it(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3, 4, 5):
        _save(tmp_path, step, model, opt, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000004", "step_0000005"]
    assert (tmp_path / "LATEST").read_text().strip() == "step_0000005"
    # re-saving an existing step (a crash between rename and LATEST) replaces it cleanly
    _save(tmp_path, 5, model, opt, keep=2)
    assert load_checkpoint(tmp_path / "step_0000005").step == 5


def test_latest_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume"):
        latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "LATEST").write_text("step_0000009\n")
    with pytest.raises(CheckpointError, match="not a checkpoint folder"):
        latest_checkpoint(tmp_path)


def test_corrupt_and_foreign_checkpoints(tmp_path):
    model, opt = _trained()
    path = _save(tmp_path, 2, model, opt)
    (path / "ema.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="ema.safetensors is not a readable"):
        load_checkpoint(path)
    path = _save(tmp_path, 3, model, opt)
    (path / "optimizer.safetensors").unlink()
    with pytest.raises(CheckpointError, match="optimizer.safetensors is missing"):
        load_checkpoint(path)
    path = _save(tmp_path, 4, model, opt)
    (path / "state.json").write_text(json.dumps({"model": {}, "ema": {}}))
    with pytest.raises(CheckpointError, match="not a zigma training checkpoint"):
        load_checkpoint(path)
    (path / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(path)


def test_pretty_json_is_json():
    obj = {"a": [1, 2, 3], "b": {"c": [[1, 2], {"d": None}]}, "e": "x", "f": {}}
    text = pretty_json(obj)
    assert json.loads(text) == obj and '"a": [1, 2, 3]' in text


def test_optimizer_states_follow_their_parameters_by_name():
    """A state dict whose indices list the parameters in another order (as a later layout or
    version 1 would) is re-indexed by name: every moment lands on its own parameter."""
    from zigma.models import create_model
    from zigma.train.checkpoint import optimizer_param_names, remap_optimizer_state
    from zigma.train.optim import param_groups

    torch.manual_seed(0)
    model = create_model("ZigMa-S/2", hidden_size=16, depth=2, input_size=8, num_classes=3)
    opt = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-3)
    model(torch.randn(2, 4, 8, 8), torch.rand(2), y=torch.tensor([0, 1])).square().mean().backward()
    opt.step()
    sd, names = opt.state_dict(), optimizer_param_names(opt, model)
    # the same state listed in reverse order within each group
    perm = {}
    for g in sd["param_groups"]:
        perm.update(dict(zip(g["params"], reversed(g["params"]), strict=True)))
    shuffled_names = [names[perm[i]] for i in range(len(names))]
    shuffled = {
        "state": {perm[i]: st for i, st in sd["state"].items()},
        "param_groups": sd["param_groups"],
    }
    fixed = remap_optimizer_state(shuffled, shuffled_names, opt, model)
    for i, st in sd["state"].items():
        assert torch.equal(fixed["state"][i]["exp_avg"], st["exp_avg"])
    with pytest.raises(ValueError, match="names other parameters"):
        remap_optimizer_state(sd, names[:-1] + ["nope"], opt, model)
