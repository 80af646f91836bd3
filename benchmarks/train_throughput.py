"""Training and sampling throughput of ZigMa against facebookresearch/DiT (issue 17, "train
faster than DiT"), at DiT's ImageNet settings, on one device in one run.

    PYTHONPATH=src python benchmarks/train_throughput.py --dit .peers/DiT --out OUT
    PYTHONPATH=src python benchmarks/train_throughput.py --dit .peers/DiT --rows B-4096 --out OUT
    PYTHONPATH=src python benchmarks/train_throughput.py --device cpu --tiny --out /tmp/t  # smoke

Settings (``--rows`` picks some by name): XL-256 (256 tokens = 32 x 32 x 4 latents, patch 2,
batch 32), B-256 (256 tokens, batch 64), B-4096 (4096 tokens = 128 x 128 latents, batch 4),
XL-4096 (4096 tokens, batch 4). In each: the official DiT of that size (its ``models.py`` from
``--dit``, which imports timm; skipped with a note if not given or not importable), our DiT
preset of that size (DiT-B/2 or DiT-XL/2, to see ours against the official) and ZigMa-B/2 or
ZigMa-XL/2. All are class-conditional on 1000 classes with random labels, as the official
ImageNet models are. Training: the trainer's step (``_train_step.train_step``: transport loss
under bf16 autocast over fp32 weights, fused AdamW, EMA; random latents already on the device),
median of ``--repeats`` steps after ``--warmup``, peak allocated CUDA memory from the model's
move to the device through the steps. Sampling: one forward of the eval model under
``torch.no_grad`` and bf16 autocast at batch 64 (256 tokens) or 8 (4096 tokens), without
guidance (a guided step is one forward at twice the batch). Our rows carry their ratio to the
official DiT of the same size and setting: train images/s, peak memory, sampling images/s.
``--tiny`` shrinks widths and depths (``zigma.bench.suites``), latents to 8 x 8 and 16 x 16
and batches to 2, for a CPU smoke run.

OUT/train_throughput.json holds every row and the machine (card, torch, triton, commit),
OUT/train_throughput.md the table; each row is written as soon as it is measured. A case that
runs out of memory is recorded as OOM. Exit status 1 if a case raised something else.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from _harness import attempt, error_text, git_commit, md_table, ratio
from _train_step import official_dit, our_model, peak_memory, train_config, train_step
from zigma.bench.runner import time_ms
from zigma.models import count_parameters

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 1000
TRAIN_PRESET = "faceshq-1024"  # its optimizer and EMA are DiT's: AdamW lr 1e-4, EMA 0.9999
# name: (size, latent side, train batch, sampling batch); tokens = (side / 2)^2
SETTINGS = {
    "XL-256": ("XL", 32, 32, 64),
    "B-256": ("B", 32, 64, 64),
    "B-4096": ("B", 128, 4, 8),
    "XL-4096": ("XL", 128, 4, 8),
}
TINY_SIDES = {32: 8, 128: 16}
TINY_BATCH = 2


def cases(args: argparse.Namespace) -> list[dict]:
    """Per setting: the official DiT first, so that our rows can carry the ratio to it."""
    out = []
    for name in args.rows:
        size, side, batch, sample_batch = SETTINGS[name]
        if args.tiny:
            side, batch, sample_batch = TINY_SIDES[side], TINY_BATCH, TINY_BATCH
        setting = dict(setting=name, tokens=(side // 2) ** 2, side=side, batch=batch,
                       sample_batch=sample_batch)  # fmt: skip
        for model in (f"DiT-{size}/2 (official)", f"DiT-{size}/2", f"ZigMa-{size}/2"):
            out.append(dict(model=model, official=model.endswith("(official)"), **setting))
    return out


def build(case: dict, args: argparse.Namespace):
    """(model, train config) of a case; the official DiT takes our preset's train config."""
    preset = case["model"].removesuffix(" (official)")
    cfg = train_config(preset, TRAIN_PRESET, case["side"], case["batch"], args.tiny,
                       num_classes=NUM_CLASSES)  # fmt: skip
    if case["official"]:
        return official_dit(args.dit, preset, case["side"], NUM_CLASSES, args.tiny), cfg
    return our_model(cfg), cfg


def sample_img_s(net: torch.nn.Module, case: dict, device: torch.device, args) -> float:
    """Images/s of one eval forward at the sampling batch (a sampler's step without guidance)."""
    n, side = case["sample_batch"], case["side"]
    x = torch.randn(n, 4, side, side, device=device)
    t = torch.rand(n, device=device)
    y = torch.randint(0, NUM_CLASSES, (n,), device=device)
    cuda = device.type == "cuda"

    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=cuda):
            return net(x, t, y=y)

    net.eval()
    return n * 1e3 / time_ms(forward, str(device), args.warmup, args.repeats)


def measure(case: dict, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    row = dict(case)

    def run() -> None:
        torch.manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        net, cfg = build(case, args)
        net = net.to(device)
        row["params_m"] = count_parameters(net, trainable_only=True) / 1e6
        x = torch.randn(case["batch"], 4, case["side"], case["side"], device=device)
        y = torch.randint(0, NUM_CLASSES, (case["batch"],), device=device)
        row.update(train_step(net, cfg, x, {"y": y}, args.warmup, args.repeats))
        row.update(peak_memory(device))  # before sampling: the training step's peak
        row["sample_img_s"] = sample_img_s(net, case, device, args)

    return attempt(row, run)


def skipped(case: dict, note: str) -> dict:
    return dict(case, status="skipped", note=note)


def add_ratios(row: dict, official: dict | None) -> None:
    """Ours / the official DiT of the same size and setting, where both were measured."""
    if official is None or official["status"] != "ok" or row["status"] != "ok":
        return
    row["vs_dit_train"] = ratio(row["img_s"], official["img_s"])
    row["vs_dit_mem"] = ratio(row.get("peak_alloc_gib"), official.get("peak_alloc_gib"))
    row["vs_dit_sample"] = ratio(row["sample_img_s"], official["sample_img_s"])


def official_note(args: argparse.Namespace) -> str | None:
    """Why the official DiT rows are skipped (no --dit, or its models.py does not import)."""
    if args.dit is None:
        return "official DiT skipped: no --dit"
    try:
        official_dit(args.dit, "DiT-B/2", 8, NUM_CLASSES, tiny=True)
    except Exception as exc:  # e.g. timm missing: our rows still run
        return f"official DiT skipped: {error_text(exc)}"
    return None


COLUMNS = [
    ("model", "model", ""),
    ("tokens", "tokens", "d"),
    ("batch", "batch", "d"),
    ("params_m", "params (M)", ".1f"),
    ("ms", "train step ms", ".1f"),
    ("img_s", "train images/s", ".1f"),
    ("peak_alloc_gib", "train peak allocated GiB", ".2f"),
    ("sample_img_s", "sampling images/s", ".1f"),
    ("vs_dit_train", "train images/s / DiT", ".2f"),
    ("vs_dit_mem", "peak memory / DiT", ".2f"),
    ("vs_dit_sample", "sampling images/s / DiT", ".2f"),
    ("status", "status", ""),
]


def write(report: dict, out: Path) -> None:
    (out / "train_throughput.json").write_text(json.dumps(report, indent=1) + "\n")
    env = report["env"]
    head = [f"# benchmarks/train_throughput.py{' (--tiny)' if env['tiny'] else ''}", ""]
    head += [f"- {k}: {v}" for k, v in env.items() if k not in ("notes", "tiny")]
    head += [f"- note: {note}" for note in env["notes"]]
    table = md_table(report["rows"], COLUMNS)
    (out / "train_throughput.md").write_text("\n".join(head) + "\n\n" + table + "\n")


def triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the .json and .md")
    p.add_argument("--dit", type=Path, help="folder holding facebookresearch/DiT's models.py")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="tiny models and latents (CPU smoke run)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--rows", default=",".join(SETTINGS), help=f"settings: {', '.join(SETTINGS)}")
    args = p.parse_args(argv)
    args.rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in args.rows if r not in SETTINGS]
    if unknown:
        p.error(f"unknown --rows {unknown}; choose from {', '.join(SETTINGS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: pass --device cpu (with --tiny)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = args.device == "cuda"
    cpu = platform.processor() or platform.machine()
    env = {
        "card": torch.cuda.get_device_name() if cuda else cpu,
        "torch": torch.__version__,
        "triton": triton_version(),
        "commit": git_commit(REPO),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "dtype": "bf16 autocast, fp32 weights" if cuda else "fp32",
        "warmup": args.warmup,
        "repeats": args.repeats,
        "command": " ".join(["train_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
        "tiny": args.tiny,
        "notes": [],
    }
    note = official_note(args)
    env["notes"] += [note] if note else []
    args.out.mkdir(parents=True, exist_ok=True)
    report, official = {"env": env, "rows": []}, None
    for case in cases(args):
        if case["official"]:
            row = official = skipped(case, note) if note else measure(case, args)
        else:
            row = measure(case, args)
            add_ratios(row, official)
        report["rows"].append(row)
        print(json.dumps(row), flush=True)
        write(report, args.out)
    print((args.out / "train_throughput.md").read_text(), flush=True)
    return int(any(r["status"] == "error" for r in report["rows"]))


if __name__ == "__main__":
    sys.exit(main())
