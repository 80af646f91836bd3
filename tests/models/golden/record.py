"""Record golden outputs of every model family: weights, inputs and outputs in one file.

    PYTHONPATH=src python tests/models/golden/record.py

writes ``tests/models/golden/outputs.safetensors``; tests/models/test_golden.py checks that the
current code reproduces them. Re-record only when a change is meant to move a model's numbers.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2] / "src"))

from zigma.bench import device_name  # noqa: E402
from zigma.evaluate import load_for_sampling  # noqa: E402
from zigma.generate import generate  # noqa: E402
from zigma.models import create_model  # noqa: E402

SMALL = {"hidden_size": 16, "depth": 2, "input_size": 8, "in_channels": 3}
# name -> (preset, overrides); every family, conditional and not, every positional embedding
CASES = {
    "zigma": ("ZigMa-S/2", {"num_classes": 3}),
    "zigma-uncond-sincos": ("ZigMa-S/2", {"pos_embed": "sincos"}),
    "zigma-hilbert-4": ("ZigMa-S/2", {"scan": "hilbert", "num_orders": 4, "num_classes": 3}),
    "zigma-random-rms": ("ZigMa-S/1", {"scan": "random", "norm": "rmsnorm", "pos_embed": "none"}),
    "sweep": ("Sweep-S/2", {"num_classes": 3}),
    "vim": ("Vim-S/2", {"num_classes": 3}),
    "par4": ("ZigMa-par4-S/2", {"num_classes": 3}),
    "par8": ("ZigMa-par8-S/2", {}),
    "dit": ("DiT-S/2", {"num_classes": 3, "num_heads": 4}),
    "dit-learnable": ("DiT-S/2", {"pos_embed": "learnable", "num_heads": 4}),
    "uvit": ("U-ViT-S/2", {"num_classes": 3, "num_heads": 4}),
    "uvit-uncond": ("U-ViT-S/2", {"num_heads": 4, "final_conv": False}),
}
BATCH = 3


def forward(model, x, t, y):
    """The model call of the API at recording time (x, t, y positional)."""
    return model(x, t, y) if y is not None else model(x, t)


def main() -> None:
    torch.set_num_threads(1)
    tensors, meta = {}, {}
    for seed, (name, (preset, extra)) in enumerate(CASES.items()):
        torch.manual_seed(seed)
        overrides = {**SMALL, **extra}
        if preset.startswith("U-ViT"):
            overrides["depth"] = 3
        model = create_model(preset, **overrides)
        # randomise every parameter: the zero-initialised outputs would hide any change
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        cfg = model.config
        x = torch.randn(BATCH, cfg.in_channels, *cfg.input_size)
        t = torch.rand(BATCH)
        y = torch.tensor([0, 2, 3]) if cfg.num_classes else None  # 3 = the null class
        model.eval()
        with torch.no_grad():
            out_eval = forward(model, x, t, y)
        model.train()
        torch.manual_seed(7)  # label dropout draws from the global RNG in training mode
        with torch.no_grad():
            out_train = forward(model, x, t, y)
        for key, value in model.state_dict().items():
            tensors[f"{name}/weights/{key}"] = value.contiguous()
        tensors[f"{name}/x"], tensors[f"{name}/t"] = x, t
        if y is not None:
            tensors[f"{name}/y"] = y
        tensors[f"{name}/out_eval"] = out_eval.contiguous()
        tensors[f"{name}/out_train"] = out_train.contiguous()
        # the optimizer's parameter order (checkpoints store optimizer state by position)
        order = [n for n, _ in model.named_parameters()]
        meta[name] = {"preset": preset, "overrides": overrides, "parameter_order": order}
    # the shipped model, sampled as `zigma sample --ckpt pretrained/shapes-cpu --cfg 3` does
    loaded = load_for_sampling(HERE.parents[2] / "pretrained" / "shapes-cpu")
    labels = torch.arange(8)
    tensors["pretrained/samples"] = generate(
        loaded.model,
        loaded.transport,
        8,
        cond={"y": labels},
        seed=0,
        sampler="heun",
        steps=6,
        guidance_scale=3.0,
    ).contiguous()
    info = {
        "cases": json.dumps(meta, sort_keys=True),
        "torch": torch.__version__,
        "cpu": device_name("cpu"),
        "machine": platform.machine(),
    }
    save_file(tensors, HERE / "outputs.safetensors", metadata=info)
    print(f"wrote {len(CASES)} cases, {len(tensors)} tensors on {info['cpu']} ({info['torch']})")


if __name__ == "__main__":
    main()
