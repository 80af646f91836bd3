"""Where a forward pass spends its time: one model, one size, under ``torch.profiler``.

    PYTHONPATH=src python benchmarks/profile_forward.py --model ZigMa-B/1 --side 64 --out OUT

Prints (and writes to OUT/profile_<model>_<side>.md) the eager wall time, the GPU time summed
over kernels, the number of kernel launches, and the kernels grouped by what they do (matrix
products, the scan, the conv, attention, elementwise glue, ...), plus the top kernels by
GPU time. Wall time well above the GPU sum means the launches, not the GPU, set the pace.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from _harness import md_table
from zigma.bench.runner import DTYPES, time_ms
from zigma.models import create_model

# First match wins: (group, pattern on the kernel name).
GROUPS = (
    ("scan (Triton)", r"_scan_"),
    ("conv (Triton)", r"causal_conv|_conv1d"),
    ("attention", r"flash|fmha|attention|sdpa|cudnn"),
    ("matrix products", r"gemm|sm90|cutlass|cublas|matmul|xmma|nvjet"),
    ("norms", r"layer_norm|rms_norm|LayerNorm|RMSNorm"),
    ("copies / gathers", r"copy|gather|scatter|index|cat|Memcpy|Memset|fill"),
    ("elementwise / reductions", r"elementwise|vectorized|reduce|unrolled"),
)


def group(name: str) -> str:
    for label, pattern in GROUPS:
        if re.search(pattern, name, re.IGNORECASE):
            return label
    return "other"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ZigMa-B/1")
    p.add_argument("--side", type=int, default=64, help="latent side (tokens = side^2 at /1)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    device, dtype = torch.device("cuda"), DTYPES[args.dtype]
    model = create_model(args.model, input_size=args.side, num_classes=1000).to(device).eval()
    x = torch.randn(1, model.config.in_channels, args.side, args.side, device=device)
    t, y = torch.rand(1, device=device), torch.randint(0, 1000, (1,), device=device)

    def forward():
        with torch.no_grad(), torch.autocast("cuda", dtype=dtype):
            return model(x, t, y=y)

    wall = time_ms(forward, "cuda", 3, 10)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name, by_group = defaultdict(lambda: [0.0, 0]), defaultdict(lambda: [0.0, 0])
    for e in kernels:
        us = e.device_time_total if hasattr(e, "device_time_total") else e.cuda_time_total
        for table, key in ((by_name, e.name), (by_group, group(e.name))):
            table[key][0] += us / 1e3
            table[key][1] += 1
    gpu = sum(ms for ms, _ in by_group.values())

    def table(totals: dict) -> list[dict]:
        ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])
        return [{"what": k[:90], "ms": ms, "share": ms / gpu, "launches": n}
                for k, (ms, n) in ranked]  # fmt: skip

    groups, top = table(by_group), table(by_name)[: args.top]
    cols = [("what", "kernels", ""), ("ms", "GPU ms", ".3f"), ("share", "share", ".1%"),
            ("launches", "launches", "d")]  # fmt: skip
    text = "\n\n".join([
        f"# {args.model} forward, {args.side}x{args.side} latent, batch 1, {args.dtype}, "
        f"{torch.cuda.get_device_name()}",
        f"- eager wall time {wall:.2f} ms (median of 10); GPU time summed over kernels "
        f"{gpu:.2f} ms; {len(kernels)} kernel launches",
        md_table(groups, cols),
        md_table(top, cols),
    ])  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"profile_{args.model.replace('/', '_')}_{args.side}.md"
    (args.out / name).write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
