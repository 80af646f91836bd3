"""Side-by-side video quality at small scale: the same training run for several video models,
then each one's motion statistics (``zigma motion``) and samples, in one call.

    PYTHONPATH=src python benchmarks/video_quality.py --set quality --out $OUT
    PYTHONPATH=src python benchmarks/video_quality.py --set demo --out $OUT
    PYTHONPATH=src python benchmarks/video_quality.py --set smoke --device cpu --out /tmp/vq

Every variant is a ``zigma train`` run (its own process; on one GPU they share it), started
together. A run still going at ``--deadline-s`` gets SIGTERM, writes a checkpoint and is
scored at the step it reached (the table says which step). Then, per run: ``zigma motion``
against the data's test clips (64 clips, heun 25 steps, cfg 1) and ``zigma sample`` (a frame
grid and GIFs). OUT/video_quality.md holds the table, OUT/video_quality.json the rows,
OUT/runs.tgz the logs, configs, motion files and samples, OUT/models.tgz the exported models of
the runs named by ``--keep``.

The quality set is Moving-MNIST made from Fashion-MNIST (the IDX files in $ZIGMA_DATA_DIR or
where Debian installs them), 16 frames of 32 px at patch 4 (1024 tokens), about 3.1M
parameters for every model (the bidirectional and attention models' widths are chosen to
match), the same steps, batch and seed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_QUALITY = [
    "model.patch_size=4",
    "data.digits_from=fashion-mnist",
    "data.num_samples=60000",
    "batch_size=32",
    "preview.every=0",
    "logging.every=100",
    "optim.lr=5e-4",
    "steps=2500",
]
# name -> (training preset, overrides); widths matched to ~3.1M parameters
SETS: dict[str, dict[str, tuple[str, list[str]]]] = {
    "quality": {
        "zigma-sst": ("video-mnist", [*_QUALITY, "model.hidden_size=192", "model.depth=8"]),
        "zigma-3d": (
            "video-mnist",
            [*_QUALITY, "model.hidden_size=192", "model.depth=8", "model.scan_pattern=v"],
        ),
        "vim-bidir": (
            "video-mnist",
            [
                *_QUALITY,
                "model.preset=Vim-S/2",
                "model.hidden_size=184",
                "model.depth=8",
                "model.scan_pattern=v",
            ],
        ),  # fmt: skip
        "dit-st": (
            "video-mnist",
            [
                *_QUALITY,
                "model.preset=DiT-S/2",
                "model.hidden_size=144",
                "model.depth=8",
                "model.num_heads=4",
                "model.attn_pattern=st",
            ],
        ),  # fmt: skip
    },
    # the CPU demo's recipe and candidate changes to it
    "demo": {
        "demo": ("video-demo", []),
        "demo-5k": ("video-demo", ["steps=5000"]),
        "demo-sst6": ("video-demo", ["model.scan_pattern=sst", "model.depth=6"]),
        "demo-3d": ("video-demo", ["model.scan_pattern=v"]),
        "demo-vim": ("video-demo", ["model.preset=Vim-S/2", "model.scan_pattern=v"]),
        "demo-h128": ("video-demo", ["model.hidden_size=128", "model.depth=6"]),
    },
    # second round: what makes the CPU demo's objects persist, at a similar CPU cost
    "demo2": {
        "demo-ema995": ("video-demo", ["ema.decay=0.995"]),
        "demo-stt6": ("video-demo", ["model.scan_pattern=stt", "model.depth=6"]),
        "demo-ts": ("video-demo", ["model.scan_pattern=ts"]),
        "demo-p2": ("video-demo", ["model.patch_size=2"]),
        "demo-lr2e3": ("video-demo", ["optim.lr=2e-3"]),
        "demo-const": ("video-demo", ["optim.decay=constant", "ema.decay=0.995"]),
        "demo-st6-ema": ("video-demo", ["model.depth=6", "ema.decay=0.995"]),
        "demo-4k-ema": ("video-demo", ["steps=4000", "ema.decay=0.995"]),
    },
    # the model shipped in pretrained/ for the CPU motion test: 8 frames, 512 tokens
    "ship": {
        "fashion-sst8": (
            "video-mnist",
            [
                *_QUALITY[:-1],
                "steps=2000",
                "data.frames=8",
                "model.hidden_size=192",
                "model.depth=8",
            ],
        ),  # fmt: skip
    },
    "smoke": {
        "smoke-sst": ("video-demo", ["steps=20", "preview.every=0"]),
        "smoke-3d": ("video-demo", ["steps=20", "preview.every=0", "model.scan_pattern=v"]),
    },
}


def zigma(*args: str) -> list[str]:
    return [sys.executable, "-m", "zigma", *args]


def train_all(runs: dict[str, tuple[str, list[str]]], out: Path, steps: int | None,
              deadline: float, env: dict) -> dict[str, int]:  # fmt: skip
    """Start every run, wait, SIGTERM those past the deadline; exit codes by name."""
    procs = {}
    for name, (preset, overrides) in runs.items():
        cmd = zigma("train", "--preset", preset, "--out", str(out / name), *overrides)
        if steps is not None and not any(o.startswith("steps=") for o in overrides):
            cmd += ["--steps", str(steps), "--ckpt-every", str(steps)]
        log = open(out / f"{name}.train.log", "w")  # noqa: SIM115 (outlives the loop)
        print(" ".join(cmd[1:]), flush=True)
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    stopped = set()
    while any(p.poll() is None for p, _ in procs.values()):
        if time.monotonic() > deadline:
            for name, (p, _) in procs.items():
                if p.poll() is None and name not in stopped:
                    print(f"{name}: deadline, SIGTERM", flush=True)
                    p.send_signal(signal.SIGTERM)
                    stopped.add(name)
            deadline = float("inf")
        time.sleep(2)
    for _, log in procs.values():
        log.close()
    return {name: p.returncode for name, (p, _) in procs.items()}


def last_step(run: Path) -> tuple[int | None, float | None]:
    """(step, loss) of the run's last logged metrics line."""
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    rows = [r for r in map(json.loads, filter(str.strip, lines)) if "loss" in r]
    return (rows[-1]["step"], rows[-1]["loss"]) if rows else (None, None)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--set", default="quality", help=f"one or more of {sorted(SETS)}, comma-separated"
    )
    ap.add_argument("--only", default=None, help="comma-separated run names of the set")
    ap.add_argument(
        "--steps", type=int, default=None, help="steps of every run (default: preset's)"
    )
    ap.add_argument("--deadline-s", type=float, default=420.0, help="training wall-clock limit")
    ap.add_argument("--num", type=int, default=64, help="clips sampled per run for motion")
    ap.add_argument("--cfg", type=float, default=1.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--keep", default="", help="runs whose exported model goes in models.tgz")
    ap.add_argument("--out", required=True, help="where the tables and archives go")
    ap.add_argument("--work", default=None, help="where the runs go (default: --out)")
    args = ap.parse_args()
    final = Path(args.out)
    final.mkdir(parents=True, exist_ok=True)
    out = Path(args.work) if args.work else final
    out.mkdir(parents=True, exist_ok=True)
    runs = {k: v for name in args.set.split(",") for k, v in SETS[name].items()}
    if args.only:
        runs = {k: v for k, v in runs.items() if k in args.only.split(",")}
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "src")}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.monotonic()
    codes = train_all(runs, out, args.steps, t0 + args.deadline_s, env)
    print(f"training done in {time.monotonic() - t0:.0f} s: {codes}", flush=True)

    device = ["--device", args.device] if args.device else []
    evals = {}
    for name in runs:  # every run's motion and samples at once (they share the GPU)
        if codes[name] not in (0, 75):
            continue
        run = out / name
        motion = zigma(
            "motion",
            "--ckpt",
            str(run),
            "--num",
            str(args.num),
            "--cfg",
            str(args.cfg),
            "--out",
            str(out / f"{name}.motion.json"),
            *device,
        )
        sample = zigma("sample", "--ckpt", str(run), "--num", "8", "--steps", "25", "--cfg",
                       str(args.cfg), "--out", str(out / f"{name}.frames.png"), "--out-dir",
                       str(out / f"{name}.gifs"), "--overwrite", *device)  # fmt: skip
        log = open(out / f"{name}.eval.log", "w")  # noqa: SIM115
        evals[name] = [subprocess.Popen(c, env=env, stdout=log, stderr=subprocess.STDOUT)
                       for c in (motion, sample)]  # fmt: skip
    for procs in evals.values():
        for p in procs:
            p.wait()
    print(f"evaluation done at {time.monotonic() - t0:.0f} s", flush=True)
    rows = []
    for name in runs:
        step, loss = last_step(out / name)
        row = {"run": name, "exit": codes[name], "step": step, "loss": loss}
        motion = out / f"{name}.motion.json"
        if motion.is_file():
            row["motion"] = json.loads(motion.read_text())["rows"]
        rows.append(row)

    lines = [
        "| run | step | loss | displacement | W1 to data | W1 frames shuffled | identity | "
        "mass change | empty |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.get("motion")
        if not m:
            lines.append(f"| {row['run']} | {row['step']} | {row['loss']} | failed (exit "
                         f"{row['exit']}) | | | | | |")  # fmt: skip
            continue
        s, sh = m["samples"], m["frames shuffled"]
        lines.append(
            f"| {row['run']} | {row['step']} | {_num(row['loss'])} | {s['displacement']:.4f} | "
            f"{s['w1']:.4f} | {sh['w1']:.4f} | {s['identity']:.3f} | {s['mass_change']:.3f} | "
            f"{s['empty']:.3f} |"
        )
    ref = next((r["motion"]["reference"] for r in rows if r.get("motion")), None)
    if ref:
        lines.append(
            f"| data (test clips) | | | {ref['displacement']:.4f} | 0 | | {ref['identity']:.3f} "
            f"| {ref['mass_change']:.3f} | {ref['empty']:.3f} |"
        )
    table = "\n".join(lines)
    print(table)
    (final / "video_quality.md").write_text(table + "\n")
    (final / "video_quality.json").write_text(json.dumps(rows, indent=2) + "\n")

    with tarfile.open(final / "runs.tgz", "w:gz") as tar:
        for name in runs:
            for path in [out / f"{name}.train.log", out / f"{name}.eval.log",
                         out / f"{name}.motion.json",
                         out / f"{name}.frames.png", out / f"{name}.gifs"]:  # fmt: skip
                if path.exists():
                    tar.add(path, arcname=path.name)
            for f in ("config.json", "log.txt", "metrics.jsonl", "loss.png"):
                if (out / name / f).exists():
                    tar.add(out / name / f, arcname=f"{name}/{f}")
    keep = [k for k in args.keep.split(",") if k]
    if keep:  # weights as float16 copies (half the bytes; they load into float32 models)
        from safetensors.torch import load_file, save_file

        with tarfile.open(final / "models.tgz", "w:gz") as tar:
            for name in keep:
                model, weights_name = out / name / "model", "model.safetensors"
                if not model.is_dir():  # stopped at the deadline: its newest checkpoint's EMA
                    latest = out / name / "checkpoints" / "LATEST"
                    if not latest.is_file():
                        continue
                    model = out / name / "checkpoints" / latest.read_text().strip()
                    weights_name = "ema.safetensors"
                    run_cfg = json.loads((out / name / "config.json").read_text())
                    (model / "config.json").write_text((model / "model.json").read_text())
                    (model / "transport.json").write_text(json.dumps(run_cfg["transport"]))
                weights = load_file(model / weights_name)
                half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
                save_file(half, out / f"{name}.fp16.safetensors")
                tar.add(out / f"{name}.fp16.safetensors", arcname=f"{name}/model.safetensors")
                for f in ("config.json", "transport.json"):
                    tar.add(model / f, arcname=f"{name}/{f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
