"""Memory and speed of a training step at the paper's FacesHQ 1024^2 setting: 128 x 128 x 4
latents, patch 2, 4096 tokens, unconditional, bf16 (the ``faceshq-1024`` preset).

    PYTHONPATH=src python benchmarks/latent_1024.py --dit .peers/DiT --out $OUT
    PYTHONPATH=src python benchmarks/latent_1024.py --device cpu --tiny --out /tmp/l  # smoke

Rows: ZigMa-B/2 (the preset's model) at batch 4 and 8, plain, with ``recompute_scans`` and
with ``grad_checkpointing``; our DiT-B/2 plain and checkpointed; the official DiT-B/2
(facebookresearch/DiT's ``models.py`` from ``--dit``, which imports timm; skipped with a note
if not given) plain, as its train.py has no checkpointing. Every model takes the trainer's own
step (``zigma.train``): the transport loss under bf16 autocast over fp32 weights, the guarded
fused-AdamW step with gradient clipping, the EMA update; the data are random latents already
on the device, so the loader is not timed. The official DiT is wrapped into the denoiser
contract (its time embedding gets t * 1000, one class, ``learn_sigma=False``), so it runs the
same step. Time: median of ``--repeats`` steps after ``--warmup``; memory: peak allocated and
peak reserved CUDA memory of the step (reserved is closer to what nvidia-smi shows, which is
what the official ZigMa README quotes: ~18 GB at batch 8, ~9 GB at batch 4).

With ``--vae DIR`` (a local diffusers AutoencoderKL folder, e.g. sd-vae-ft-mse, or one of our
autoencoders; ``--make-sd-vae DIR`` first writes one with random weights) it also runs the
user's pipeline at 1024 px on the offline stand-in data (procedural scenes): ``zigma prepare
--size 1024`` of ``--images`` images, ``zigma train --preset faceshq-1024`` for
``--train-steps`` steps and ``zigma sample`` of two decoded 1024^2 PNGs, timing each command
(OUT/pipeline.json, OUT/sample.png).

OUT/latent_1024.json holds every row, OUT/latent_1024.md the table; each row is written as
soon as it is measured. Exit status 1 if a case raised something other than out-of-memory.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from _harness import attempt, git_commit, md_table
from _train_step import official_dit, our_model, peak_memory, train_config, train_step
from zigma.models import count_parameters

PRESET = "faceshq-1024"
OFFICIAL = "DiT-B/2 (official)"
OFFICIAL_README = {4: "~9 GB", 8: "~18 GB"}  # ZigMa-B/2 FacesHQ 1024, official README


def cases(args: argparse.Namespace) -> list[dict]:
    out = []
    for batch in args.batches:
        for mode in ("plain", "recompute_scans", "grad_checkpointing"):
            out.append(dict(model="ZigMa-B/2", batch=batch, mode=mode))
        for mode in ("plain", "grad_checkpointing"):
            out.append(dict(model="DiT-B/2", batch=batch, mode=mode))
        if args.dit is not None:
            out.append(dict(model=OFFICIAL, batch=batch, mode="plain"))
    return out


def build(case: dict, args: argparse.Namespace, side: int):
    """(model, train config) of one case, built as ``zigma train --preset faceshq-1024``."""
    official = case["model"] == OFFICIAL
    ours = "DiT-B/2" if official else case["model"]
    cfg = train_config(ours, PRESET, side, case["batch"], args.tiny)
    if official:
        return official_dit(args.dit, ours, side, 1, args.tiny), cfg
    net = our_model(cfg)
    net.grad_checkpointing = case["mode"] == "grad_checkpointing"
    if case["mode"] == "recompute_scans":
        net.recompute_scans = True
    return net, cfg


def measure(case: dict, args: argparse.Namespace, side: int) -> dict:
    device = torch.device(args.device)
    row = dict(case, tokens=(side // 2) ** 2, side=side)

    def run() -> None:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        net, cfg = build(case, args, side)
        net = net.to(device)
        row["params_m"] = count_parameters(net, trainable_only=True) / 1e6
        x = torch.randn(case["batch"], 4, side, side, device=device)
        row.update(train_step(net, cfg, x, {}, args.warmup, args.repeats))
        row.update(peak_memory(device))

    return attempt(row, run)


COLUMNS = [
    ("model", "model", ""),
    ("batch", "batch", "d"),
    ("mode", "memory switch", ""),
    ("params_m", "params (M)", ".1f"),
    ("ms", "step ms", ".1f"),
    ("img_s", "images/s", ".1f"),
    ("peak_alloc_gib", "peak allocated GiB", ".2f"),
    ("peak_reserved_gib", "peak reserved GiB", ".2f"),
    ("status", "status", ""),
]


def pipeline(args: argparse.Namespace) -> dict:
    """prepare -> train -> sample at 1024 px as a user runs them; seconds per command."""
    work = args.out / "pipeline"
    latents, run = work / "latents", work / "run"
    zigma = [sys.executable, "-m", "zigma"]
    commands = {
        "prepare": [*zigma, "prepare", "--data", "scenes", "--vae", str(args.vae),
                    "--out", str(latents), "--size", "1024", "--batch-size", "4",
                    f"data.num_samples={args.images}"],
        "train": [*zigma, "train", "--preset", "faceshq-1024", "--out", str(run),
                  f"data.data_dir={latents}", f"steps={args.train_steps}",
                  f"batch_size={min(8, args.images)}", "preview.every=0", "logging.every=10"],
        "sample": [*zigma, "sample", "--ckpt", str(run), "--out", str(args.out / "sample.png"),
                   "--num", "2", "--steps", "10"],
    }  # fmt: skip
    result: dict = {"images": args.images, "train_steps": args.train_steps}
    for name, cmd in commands.items():
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds, tail = time.perf_counter() - start, (done.stdout + done.stderr)[-1500:]
        result[name] = {"command": " ".join(cmd[2:]), "seconds": seconds,
                        "rc": done.returncode, "tail": tail}  # fmt: skip
        print(f"--- {name}: rc {done.returncode}\n{result[name]['tail']}", flush=True)
        if done.returncode:
            break
    (args.out / "pipeline.json").write_text(json.dumps(result, indent=2))
    return result


def make_sd_vae(folder: Path) -> None:
    """A diffusers AutoencoderKL with sd-vae-ft-mse's architecture (f8, 4 latent channels,
    scaling 0.18215) and random weights, saved with ``save_pretrained``: the pipeline's shapes,
    memory and time at 1024 px are the real VAE's, its pictures are not."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = 4
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * blocks,
        up_block_types=["UpDecoderBlock2D"] * blocks, block_out_channels=[128, 256, 512, 512],
        layers_per_block=2, latent_channels=4, sample_size=256, scaling_factor=0.18215,
    ).save_pretrained(folder)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dit", type=Path, default=None, help="folder with the official DiT models.py")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=lambda s: [int(b) for b in s.split(",")], default=[4, 8])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tiny", action="store_true", help="tiny models on 16 x 16 latents (smoke)")
    p.add_argument("--vae", type=Path, default=None, help="also run the 1024 px pipeline with it")
    p.add_argument(
        "--make-sd-vae",
        type=Path,
        default=None,
        metavar="DIR",
        help="first write a random-weight SD-architecture VAE there (needs diffusers)",
    )
    p.add_argument("--images", type=int, default=32, help="images the pipeline prepares")
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--skip-table", action="store_true", help="only the pipeline")
    args = p.parse_args(argv)
    side = 16 if args.tiny else 128
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        "date": datetime.date.today().isoformat(),
        "commit": git_commit(Path(__file__).resolve().parents[1]),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "official_readme_zigma_b2": OFFICIAL_README,
    }
    failed = False
    if args.make_sd_vae is not None:
        make_sd_vae(args.make_sd_vae)
    if args.vae is not None:
        failed = any(v.get("rc") for v in pipeline(args).values() if isinstance(v, dict))
    rows = []
    for case in [] if args.skip_table else cases(args):
        rows.append(measure(case, args, side))
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "latent_1024.json").write_text(json.dumps({"env": env, "rows": rows}, indent=2))
        table = md_table(rows, COLUMNS)
        (args.out / "latent_1024.md").write_text(f"{json.dumps(env)}\n\n{table}\n")
    print(md_table(rows, COLUMNS))
    return 1 if failed or any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
