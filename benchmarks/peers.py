"""Forward time of the official DiT and U-ViT beside zigma's own presets: does our
DiT-B/1 run as fast as facebookresearch/DiT's, and where do U-ViT and ZigMa stand?

    PYTHONPATH=src python benchmarks/peers.py --dit .peers/DiT --uvit .peers/U-ViT --out OUT
    PYTHONPATH=src python benchmarks/peers.py --device cpu --tiny --sides 8 --out /tmp/p  # smoke

``--dit`` is a folder holding DiT's ``models.py`` (it imports timm), ``--uvit`` one holding
U-ViT's ``libs/``; neither is part of this repository, and a peer not given or not importable is
skipped with a note. Every model is timed as ``zigma bench`` times its rows: batch 1, eval mode,
fp32 weights under autocast, ``torch.no_grad``, the median of ``--repeats`` timed calls after
``--warmup`` (``zigma.bench.runner.time_ms``), peak CUDA memory from when the model was on the
device. All models are class-conditional on 1000 classes, as the official ImageNet ones are.
OUT/peers.json holds every row, OUT/peers.md the tables; one row is written as soon as it is
measured. Exit status 1 if a case raised something other than out-of-memory.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch

from _harness import attempt, error_text, git_commit, md_table, ratio, verdict
from zigma.bench.runner import DTYPES, time_ms
from zigma.bench.suites import TINY_DEPTH, TINY_WIDTH, tiny_overrides
from zigma.models import GraphedForward, count_parameters, create_model
from zigma.ssm.ops import resolve_backend

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 1000
TOLERANCE = 0.10  # target: our DiT-B/1's forward time within 10% of the official one
DIT, UVIT = "DiT-B/1 (official)", "U-ViT-M/1 (official)"
# (ours, official, what is compared): ms for same-architecture pairs, images/s across families
PAIRS = (("DiT-B/1", DIT, "ms"), ("U-ViT-B/1", UVIT, "ms"), ("ZigMa-B/1", DIT, "fps"))


@dataclass(frozen=True)
class Model:
    """One timed model: ``build(side)`` makes it on the CPU for a side x side latent; its
    forward is ``model(x, t, y)`` (officials) or ``model(x, t, y=y)`` (ours) with ``t`` drawn
    in ``[0, t_scale)``."""

    name: str
    build: Callable[[int], torch.nn.Module]
    official: bool = False
    t_scale: float = 1.0  # the officials take diffusion step indices, ours t in [0, 1]


def load(name: str, path: Path, package: bool = False) -> ModuleType:
    """Import ``path`` as module ``name``: unique names, so that DiT's ``models`` or U-ViT's
    ``libs`` cannot shadow (or be shadowed by) another module of that generic name."""
    where = [str(path.parent)] if package else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=where)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def shrunk(kwargs: dict, width: str, heads: str, depth: str, tiny_depth: int) -> dict:
    """``kwargs`` at --tiny size: TINY_WIDTH wide, heads dividing it, ``tiny_depth`` deep."""
    n = max(h for h in range(1, kwargs[heads] + 1) if TINY_WIDTH % h == 0)
    return {**kwargs, width: TINY_WIDTH, heads: n, depth: tiny_depth}


def official_dit(folder: Path, tiny: bool, env: dict) -> Model:
    dit = load("official_dit", folder / "models.py")
    import timm  # imported by DiT's models.py

    env["timm"] = timm.__version__
    # DiT's blocks use timm's Attention: SDPA where it has ``fused_attn`` set (timm >= 0.9)
    env["timm_fused_attn"] = getattr(dit.Attention(8, num_heads=1), "fused_attn", False)
    kw = dict(patch_size=1, in_channels=4, hidden_size=768, depth=12, num_heads=12,
              num_classes=NUM_CLASSES)  # fmt: skip
    kw = shrunk(kw, "hidden_size", "num_heads", "depth", TINY_DEPTH) if tiny else kw
    return Model(DIT, lambda side: dit.DiT(input_size=side, **kw), True, 1000.0)


def official_uvit(folder: Path, tiny: bool, env: dict) -> Model:
    load("official_uvit", folder / "libs" / "__init__.py", package=True)
    uvit = importlib.import_module("official_uvit.uvit")
    env["uvit_attention_mode"] = uvit.ATTENTION_MODE
    # configs/imagenet64_uvit_mid.py at patch 1 on a 4-channel latent: depth 16 makes 8
    # in-blocks, a mid block and 8 out-blocks, the 17 blocks of our U-ViT-B.
    kw = dict(patch_size=1, in_chans=4, embed_dim=768, depth=16, num_heads=12, mlp_ratio=4,
              qkv_bias=False, mlp_time_embed=False, num_classes=NUM_CLASSES)  # fmt: skip
    kw = shrunk(kw, "embed_dim", "num_heads", "depth", TINY_DEPTH - 1) if tiny else kw
    return Model(UVIT, lambda side: uvit.UViT(img_size=side, **kw), True, 1000.0)


def officials(args: argparse.Namespace, env: dict) -> list[Model]:
    """The official models whose code was given and imports; the others get a note."""
    found = []
    for name, folder, flag, make in (
        ("DiT", args.dit, "--dit", official_dit),
        ("U-ViT", args.uvit, "--uvit", official_uvit),
    ):
        if folder is None:
            env["notes"].append(f"official {name} skipped: no {flag}")
            continue
        try:
            found.append(make(folder, args.tiny, env))
        except Exception as exc:  # e.g. timm missing: the other models still run
            env["notes"].append(f"official {name} skipped: {error_text(exc)}")
    return found


def ours(args: argparse.Namespace) -> list[Model]:
    def builder(preset: str) -> Callable[[int], torch.nn.Module]:
        tiny = tiny_overrides(preset, TINY_WIDTH, TINY_DEPTH) if args.tiny else {}
        return lambda side: create_model(preset, input_size=side, num_classes=NUM_CLASSES, **tiny)

    return [Model(preset, builder(preset)) for preset in args.ours]


def time_case(model: Model, side: int, args: argparse.Namespace, row: dict) -> None:
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    net = model.build(side).to(device).eval()
    row["params"] = count_parameters(net, trainable_only=True)  # not DiT's frozen sin-cos table
    if args.backend and hasattr(net, "set_scan_backend"):
        net.set_scan_backend(args.backend)
    x = torch.randn(1, 4, side, side, device=device)
    t = torch.rand(1, device=device) * model.t_scale
    y = torch.randint(0, NUM_CLASSES, (1,), device=device)

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(x, t, y) if model.official else net(x, t, y=y)

    def forward() -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device.type, dtype, enabled=dtype != torch.float32):
            return call(x, t, y)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    row["ms"] = time_ms(forward, str(device), args.warmup, args.repeats)
    row["fps"] = 1e3 / row["ms"]
    if device.type == "cuda":
        row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    if args.cuda_graphs:  # the same forward replayed as one CUDA graph (launch cost gone)
        try:
            graphed = GraphedForward(call, x, t, {"y": y}, dtype=dtype)
        except RuntimeError as exc:  # e.g. a host-to-device copy inside the forward
            row["graph_error"] = error_text(exc)
            return
        row["graph_ms"] = time_ms(lambda: graphed(x, t, y=y), str(device), 1, args.repeats)
        row["graph_fps"] = 1e3 / row["graph_ms"]


def measure(model: Model, side: int, args: argparse.Namespace) -> dict:
    """One (model, side) row; out of memory gives status "OOM", any other error "error"."""
    row = {"model": model.name, "official": model.official, "side": side, "tokens": side**2}
    return attempt(row, lambda: time_case(model, side, args, row))


def comparisons(rows: list[dict]) -> list[dict]:
    """Ours / official per side and pair; the DiT pair carries the within-10% verdict."""
    ok = {(r["model"], r["side"]): r for r in rows if r["status"] == "ok"}
    out = []
    for side in dict.fromkeys(r["side"] for r in rows):
        for mine, theirs, key in PAIRS:
            a, b = ok.get((mine, side)), ok.get((theirs, side))
            if a is None or b is None:
                continue
            r = ratio(a[key], b[key])
            target = abs(r - 1) <= TOLERANCE if theirs == DIT and key == "ms" else None
            pair = dict(side=side, ours=mine, official=theirs, measure=key)
            out.append({**pair, "ratio": r, "within": verdict(target)})
            if "graph_ms" in a and "graph_ms" in b:
                g = "graph_" + key
                out.append({**pair, "measure": g, "ratio": ratio(a[g], b[g]), "within": ""})
    return out


ROW_COLUMNS = [
    ("model", "model", ""),
    ("side", "side", "d"),
    ("tokens", "tokens", "d"),
    ("params", "params (M)", ".2f"),
    ("ms", "forward ms", ".2f"),
    ("fps", "images/s", ".1f"),
    ("peak_mib", "peak MiB", ".0f"),
    ("graph_ms", "graphed ms", ".2f"),
    ("status", "status", ""),
]
RATIO_COLUMNS = [
    ("side", "side", "d"),
    ("ours", "ours", ""),
    ("official", "official", ""),
    ("measure", "compared", ""),
    ("ratio", "ours / official", ".3f"),
    ("within", f"within {TOLERANCE:.0%}", ""),
]


def render(report: dict) -> str:
    env = report["env"]
    head = [f"# benchmarks/peers.py{' (--tiny)' if env['tiny'] else ''}", ""]
    head += [f"- {k}: {env[k]}" for k in env if k not in ("notes", "tiny")]
    head += [f"- note: {note}" for note in env["notes"]]
    failed = {r["model"]: r["graph_error"] for r in report["rows"] if "graph_error" in r}
    head += [f"- note: {m} cannot be captured as a CUDA graph: {e}" for m, e in failed.items()]
    rows = [{**r, "params": r.get("params", 0) / 1e6 or None} for r in report["rows"]]
    tables = [md_table(rows, ROW_COLUMNS), md_table(report["ratios"], RATIO_COLUMNS)]
    return "\n".join(head) + "\n\n" + "\n\n".join(tables)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Time the official DiT and U-ViT beside ours.")
    p.add_argument("--dit", type=Path, help="folder holding facebookresearch/DiT's models.py")
    p.add_argument("--uvit", type=Path, help="folder holding baofff/U-ViT's libs/")
    p.add_argument("--ours", default="ZigMa-B/1,DiT-B/1,U-ViT-B/1", help="zigma presets")
    p.add_argument("--sides", default="32,64,128,196", help="latent sides (tokens = side^2)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="autocast dtype")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--backend", help="scan backend for ZigMa (default: its 'auto' choice)")
    p.add_argument("--tiny", action="store_true", help="shrink every model (CPU smoke run)")
    p.add_argument(
        "--cuda-graphs", action="store_true", help="also time each forward as one CUDA graph"
    )
    p.add_argument("--out", type=Path, required=True, help="folder for peers.json and peers.md")
    p.add_argument("--commit", help="commit to report where the tree has no git metadata")
    args = p.parse_args(argv)
    args.ours = [m.strip() for m in args.ours.split(",") if m.strip()]
    args.sides = [int(s) for s in args.sides.split(",") if s.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device: pass --device cpu (with --tiny)")
    if args.cuda_graphs and args.device != "cuda":
        p.error("--cuda-graphs needs --device cuda")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = {
        "card": torch.cuda.get_device_name() if args.device == "cuda" else platform.machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": args.commit or git_commit(REPO),
        "dtype": args.dtype,
        "batch": 1,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "zigma_scan_backend": resolve_backend(args.backend or "auto", args.device),
        "tiny": args.tiny,
        "notes": [],
    }
    models = officials(args, env) + ours(args)
    report = {"env": env, "rows": [], "ratios": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for side in args.sides:
        for model in models:
            row = measure(model, side, args)
            report["rows"].append(row)
            print(f"{model.name} side {side}: {row['status']} {row.get('ms', '')}", flush=True)
            report["ratios"] = comparisons(report["rows"])
            (args.out / "peers.json").write_text(json.dumps(report, indent=1) + "\n")
    text = render(report)
    (args.out / "peers.md").write_text(text + "\n")
    print(text, flush=True)
    return int(any(r["status"] == "error" for r in report["rows"]))


if __name__ == "__main__":
    sys.exit(main())
