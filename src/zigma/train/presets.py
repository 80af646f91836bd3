"""Training presets by name: each is a partial TrainConfig (nested dict) over the defaults.

``zigma train --preset NAME`` takes one of these, or any model preset name (``ZigMa-S/2`` ...),
which trains that model on the embedded shapes data at its default input size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Preset:
    description: str
    config: dict[str, Any]


# The ~7M-parameter single-GPU recipe shared by the shapes-s and fashion-mnist presets.
_GPU_S: dict[str, Any] = {
    "model": {"preset": "ZigMa-S/2", "hidden_size": 256, "depth": 12},
    "optim": {"lr": 3e-4, "warmup_steps": 1000},
    "ema": {"decay": 0.9999},
    "steps": 50_000,
    "batch_size": 128,
    "precision": "bf16",
    "ckpt_every": 2500,
    "preview": {"every": 2500, "num_samples": 64, "steps": 50, "guidance_scale": 2.0},
    "logging": {"every": 100},
    "export": {"dtype": "fp16"},
}

# The CPU recipe shared by the demo and the shipped checkpoint. What makes shapes appear in CPU
# minutes (measured, BENCHMARKS.md): many cheap steps -- 16 px, patch 4 (16 tokens), 4 narrow
# layers, ~12 steps/s on 2 cores -- on centred shapes, logit-normal times and a cosine LR
# decay. 32 px models at patch 2-4 gave coloured blobs after the same minutes.
_CPU_SHAPES: dict[str, Any] = {
    "model": {
        "preset": "ZigMa-S/2",
        "hidden_size": 128,
        "depth": 4,
        "patch_size": 4,
        "scan": "zigzag",
        "num_orders": 8,
    },
    "data": {"name": "shapes", "resolution": 16, "num_samples": 20_000, "style": "centered"},
    "transport": {"time_dist": "logit-normal"},
    "optim": {"lr": 1e-3, "warmup_steps": 100, "decay": "cosine", "min_lr_ratio": 0.1},
    "ema": {"decay": 0.999},
    "steps": 5000,
    "batch_size": 32,
    "precision": "fp32",
    "ckpt_every": 1000,
    "preview": {
        "every": 1000,
        "num_samples": 16,
        "steps": 20,
        "sampler": "euler",
        "guidance_scale": 3.0,
    },
    "logging": {"every": 100},
}

# The shipped GPU shapes model (pretrained/shapes-gpu): the CPU demo's data (centred shapes,
# 16 px, 20k items) with a model that sees 2 x 2 patches (64 tokens), 8 layers of width 288,
# uniform training times, batch 512. Chosen on an H200 (BENCHMARKS.md, "A better shipped
# model"): against width 192 and logit-normal times at equal steps, width 288 with uniform
# times gave the lowest Inception FD. A 6.75M model at 64 tokens is launch-bound on a GPU, so
# batch 512 costs about what 128 did.
_GPU_SHAPES: dict[str, Any] = {
    **_CPU_SHAPES,
    "model": {**_CPU_SHAPES["model"], "hidden_size": 288, "depth": 8, "patch_size": 2},
    "transport": {"time_dist": "uniform"},
    "optim": {"lr": 1e-3, "warmup_steps": 500, "decay": "cosine", "min_lr_ratio": 0.1},
    "ema": {"decay": 0.9995},
    "steps": 4500,
    "batch_size": 512,
    "precision": "bf16",
    # rendering 512 shapes takes ~160 ms on one core, about three steps' time on a GPU: the
    # 20k items are rendered once (12 workers, ~2 s) and held in memory, the same batches
    "data": {**_CPU_SHAPES["data"], "cache": True},
    "num_workers": 12,
    "ckpt_every": 1500,
    "keep_last_checkpoints": 10,
    "preview": {
        **_CPU_SHAPES["preview"],
        "every": 2000,
        "num_samples": 64,
        "steps": 50,
        "sampler": "heun",
    },  # fmt: skip
    "export": {"dtype": "fp16"},
}

# Text-to-image on the procedural scenes (one object: its colour, kind, size and cell are in the
# caption). The CPU recipe keeps the demo's model and adds cross-attention; 24 px at patch 4 is a
# 6 x 6 token grid, two tokens per cell of the scenes' 3 x 3 layout.
_TEXT_PROMPTS = (
    "a large red circle in the top left",
    "a large blue square in the bottom right",
    "a large yellow triangle in the center",
    "a large green circle at the top",
)
_CPU_TEXT: dict[str, Any] = {
    **_CPU_SHAPES,
    "model": {
        **_CPU_SHAPES["model"],
        "num_classes": 0,
        "cross_attn_heads": 4,
        "cross_attn_head_dim": 32,
    },
    "data": {"name": "scenes", "resolution": 24, "num_samples": 20_000, "max_objects": 1},
    "text": {"encoder": "minilm", "prompts": list(_TEXT_PROMPTS)},
    "steps": 2000,
    "ckpt_every": 500,
    "preview": {**_CPU_SHAPES["preview"], "every": 500, "num_samples": 16, "guidance_scale": 3.0},
}

# Video: the demo's recipe on clips. Spatial and temporal layers alternate (scan_pattern "st":
# each spatial layer scans every frame with the next zigzag order, each temporal layer every
# location through time); 16 px frames at patch 4 and 8 frames are 128 tokens a clip.
_CPU_VIDEO: dict[str, Any] = {
    **_CPU_SHAPES,
    "model": {**_CPU_SHAPES["model"], "hidden_size": 96, "depth": 4, "scan_pattern": "st"},
    "data": {"name": "moving-shapes", "resolution": 16, "frames": 8, "num_samples": 20_000},
    "steps": 2500,
    "ckpt_every": 500,
    "preview": {**_CPU_SHAPES["preview"], "every": 500, "num_samples": 6},
}

# Latent diffusion on CPU: the demo's recipe on the 8 x 8 x 4 latents our f4 autoencoder
# (zigma train-vae) makes of 32 px shapes; patch 2 is a 4 x 4 token grid. data_dir: the folder
# zigma prepare wrote (README, "Latent diffusion").
_CPU_LATENTS: dict[str, Any] = {
    **_CPU_SHAPES,
    "model": {**_CPU_SHAPES["model"], "patch_size": 2},
    "data": {"name": "latents", "resolution": 8, "channels": 4},
    "steps": 3000,
    "ckpt_every": 500,
    "preview": {**_CPU_SHAPES["preview"], "every": 500},
}

# The paper's FacesHQ 1024^2 setting: ZigMa-B/2 on the SD VAE's 128 x 128 x 4 latents, 4096
# tokens, unconditional, batch 8 (the official README: ~18 GB; batch 4 ~9 GB). Memory savers,
# both off here and changeable on resume: grad_checkpointing=true (recompute each block in
# the backward) and recompute_scans=true (keep less of each Mamba scan).
_FACESHQ: dict[str, Any] = {
    "model": {
        "preset": "ZigMa-B/2",
        "input_size": [128, 128],
        "in_channels": 4,
        "num_classes": 0,
    },
    "data": {"name": "latents", "resolution": 128, "channels": 4},
    "optim": {"lr": 1e-4, "warmup_steps": 1000},
    "ema": {"decay": 0.9999},
    "steps": 400_000,
    "batch_size": 8,
    "precision": "bf16",
    "grad_checkpointing": False,
    "ckpt_every": 5000,
    "preview": {"every": 5000, "num_samples": 8, "steps": 50},
    "logging": {"every": 100},
}

TRAIN_PRESETS: dict[str, Preset] = {
    "shapes-gpu": Preset(
        "class-conditional ZigMa (6.75M parameters, patch 2, 8 layers of 288) on the demo's "
        "centred 16 px shapes, batch 512, bf16, 4500 steps; one GPU (pretrained/shapes-gpu)",
        _GPU_SHAPES,
    ),
    "demo": Preset(
        "tiny class-conditional ZigMa on the embedded shapes (centered style) at 16 px; CPU",
        _CPU_SHAPES,
    ),
    # The recipe of the checkpoint shipped in pretrained/shapes-cpu.
    "shapes-cpu": Preset(
        "the demo's model and data, 4x the steps (the shipped checkpoint; under 1 h on a CPU)",
        {
            **_CPU_SHAPES,
            "steps": 20_000,
            "ckpt_every": 2000,
            "preview": {**_CPU_SHAPES["preview"], "every": 2000},
        },
    ),
    # A small full-style model for one GPU.
    "shapes-small": Preset(
        "class-conditional ZigMa (~3.5M params) on the full shapes data at 32 px for one GPU",
        {
            "model": {"preset": "ZigMa-S/2", "hidden_size": 192, "depth": 8, "patch_size": 2},
            "data": {"name": "shapes", "resolution": 32},
            "optim": {"lr": 1e-3, "warmup_steps": 300},
            "ema": {"decay": 0.999},
            "steps": 3000,
            "batch_size": 256,
            "precision": "bf16",
            "ckpt_every": 250,
            "preview": {"every": 1000, "num_samples": 64, "steps": 30, "guidance_scale": 2.0},
            "logging": {"every": 100},
        },
    ),
    # ~7M parameters: the exported fp16 EMA weights stay under 20 MB.
    "shapes-s": Preset(
        "class-conditional ZigMa (~7M params) on shapes at 32 px for one GPU; bf16",
        {**_GPU_S, "data": {"name": "shapes", "resolution": 32}},
    ),
    "text-demo": Preset(
        "tiny text-to-image ZigMa (cross-attention, MiniLM captions) on one-object scenes at "
        "24 px; CPU, needs zigma[text]",
        _CPU_TEXT,
    ),
    "text-shapes-small": Preset(
        "text-to-image ZigMa (~11M params) on scenes of 1-3 objects at 32 px for one GPU; "
        "bf16; without the MiniLM wheel there, give text.encoder=DIR (a saved copy)",
        {
            "model": {
                "preset": "ZigMa-S/2",
                "hidden_size": 256,
                "depth": 8,
                "patch_size": 2,
                "num_classes": 0,
            },
            "data": {"name": "scenes", "resolution": 32, "num_samples": 50_000},
            "text": {"encoder": "minilm", "prompts": list(_TEXT_PROMPTS)},
            "transport": {"time_dist": "logit-normal"},
            "optim": {"lr": 5e-4, "warmup_steps": 500},
            "ema": {"decay": 0.999},
            "steps": 8000,
            "batch_size": 256,
            "precision": "bf16",
            "ckpt_every": 1000,
            "preview": {"every": 2000, "num_samples": 32, "steps": 30, "guidance_scale": 3.0},
            "logging": {"every": 100},
        },
    ),
    "video-demo": Preset(
        "tiny class-conditional video ZigMa (spatial/temporal scans) on moving shapes, 8 frames "
        "of 16 px; CPU",
        _CPU_VIDEO,
    ),
    "video-mnist": Preset(
        "class-conditional video ZigMa (sst) on Moving-MNIST, 16 frames of 32 px (4096 tokens) "
        "for one GPU; needs the MNIST IDX files (data.data_dir or ZIGMA_DATA_DIR)",
        {
            "model": {"preset": "ZigMa-S/2", "hidden_size": 256, "depth": 12, "patch_size": 2},
            "data": {"name": "moving-mnist", "resolution": 32, "frames": 16, "digits": 1},
            "transport": {"time_dist": "logit-normal"},
            "optim": {"lr": 3e-4, "warmup_steps": 500},
            "ema": {"decay": 0.999},
            "steps": 20_000,
            "batch_size": 32,
            "precision": "bf16",
            "ckpt_every": 1000,
            "preview": {"every": 2000, "num_samples": 8, "steps": 30, "guidance_scale": 2.0},
            "logging": {"every": 100},
        },
    ),
    "latent-demo": Preset(
        "tiny class-conditional ZigMa on latents of the embedded shapes (our f4 autoencoder, "
        "8x8x4); CPU; needs data.data_dir=DIR from zigma prepare",
        _CPU_LATENTS,
    ),
    "faceshq-1024": Preset(
        "the paper's FacesHQ setting: ZigMa-B/2 on 128x128x4 latents (1024 px through the SD "
        "VAE), 4096 tokens, batch 8, bf16; needs data.data_dir=DIR from zigma prepare --size "
        "1024 (grad_checkpointing=true / recompute_scans=true save memory)",
        _FACESHQ,
    ),
    "fashion-mnist": Preset(
        "class-conditional ZigMa on Fashion-MNIST (1 channel, padded to 32 px) for one GPU",
        {**_GPU_S, "data": {"name": "fashion-mnist", "resolution": 32, "channels": 1}},
    ),
}
