"""The ``zigma`` command line: the only reader of argv; no maths lives here.

Subcommands: ``models`` (preset table), ``info`` (build a model, print its summary, run one
forward pass), ``scans`` (print and draw scan orders), ``bench`` (speed, memory, FLOPs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# Exit codes (README, "Exit codes"): scripts and job schedulers branch on these.
EXIT_FAILED = 1  # not the user's input: disk full, I/O error (and a bug's traceback)
EXIT_USAGE = 2  # bad input: arguments, config, files; also a diverged training run
EXIT_PREEMPTED = 75  # SIGTERM / SIGUSR1: checkpoint written; relaunch the same command
EXIT_INTERRUPTED = 130  # Ctrl-C
# OSErrors that come from the paths the user gave, not from the machine
_USER_ERRNOS = {"EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR", "EEXIST", "EROFS", "ENAMETOOLONG"}
_USER_OSERRORS = (
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)
_MAX_MESSAGE = 600


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit code 2."""


def one_line(message: object) -> str:
    """A message as one bounded line, whatever text (or repr of user data) it holds."""
    text = " ".join(str(message).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def _parse_overrides(items: list[str]) -> dict:
    from zigma.config import parse_value

    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item!r} is not of the form key=value")
        out[key] = parse_value(raw)
    return out


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from zigma.models import count_flops, count_parameters, create_model, list_models

    names = list_models()
    wide = max(12, *map(len, names))
    header = (
        f"{'preset':<{wide}} {'width':>5} {'depth':>5} {'patch':>5} {'tokens':>6} {'params':>9}"
    )
    if args.flops:
        header += f" {'GFLOPs':>8}"
    note = "; GFLOPs = 2 x multiply-adds, forward, batch 1" if args.flops else ""
    print(
        f"Model presets at {args.channels}x{args.size}x{args.size} input "
        f"(tokens = (size/patch)^2{note})"
    )
    print(header)
    for name in names:
        # Counting needs shapes only: build on the meta device (no memory, no init arithmetic).
        with torch.device("meta"):
            model = create_model(name, input_size=args.size, in_channels=args.channels)
        cfg = model.config
        h, w = cfg.grid_size
        line = (
            f"{name:<{wide}} {cfg.hidden_size:>5} {cfg.depth:>5} {cfg.patch_size:>5} {h * w:>6} "
            f"{count_parameters(model) / 1e6:>8.1f}M"
        )
        if args.flops:
            line += f" {count_flops(model).total / 1e9:>8.2f}"
        print(line, flush=True)
        del model
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from zigma.models import create_model, summarize

    overrides = _parse_overrides(args.overrides)
    torch.manual_seed(args.seed)
    model = create_model(args.model, **overrides).eval()
    print(summarize(model, name=args.model, flops=not args.no_flops))
    cfg = model.config
    x = torch.randn(args.batch, cfg.in_channels, *cfg.input_size)
    t = torch.rand(args.batch)
    y = torch.randint(0, cfg.num_classes, (args.batch,)) if cfg.num_classes else None
    start = time.perf_counter()
    with torch.no_grad():
        out = model(x, t, y)
    took = time.perf_counter() - start
    print(
        f"  forward pass     x {tuple(x.shape)} -> {tuple(out.shape)} in {took:.2f} s on CPU "
        f"(untrained: output max |v| = {out.abs().max().item():.1e})"
    )
    return 0


def cmd_scans(args: argparse.Namespace) -> int:
    from zigma.scan import save_scan_plot, scan_orders

    height, width = args.size, args.width or args.size
    orders = scan_orders(args.kind, height, width, args.frames, num=args.num, seed=args.seed)
    if args.print:
        for k, row in enumerate(orders.tolist()):
            print(f"{args.kind} order {k}: " + " ".join(map(str, row)))
    if args.plot:
        save_scan_plot(
            args.plot, args.kind, height, width, frames=args.frames, num=args.num, seed=args.seed
        )
        grid = f"{args.frames}x{height}x{width}" if args.frames > 1 else f"{height}x{width}"
        print(f"wrote {args.plot} ({orders.shape[0]} orders of {args.kind} on {grid} tokens)")
    if not (args.print or args.plot):
        print(
            f"{orders.shape[0]} {args.kind} order(s) over {orders.shape[1]} tokens; "
            "add --print to list them or --plot FILE.png to draw them"
        )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from zigma.evaluate import default_labels, generate, load_for_sampling, write_samples

    if args.out is None and args.out_dir is None:
        raise UsageError("give --out FILE.png (a grid) and/or --out-dir DIR (one PNG per sample)")
    if args.out is not None and Path(args.out).suffix.lower() != ".png":
        raise UsageError(f"--out must be a .png file, got {args.out}")
    if args.num < 1:
        raise UsageError(f"--num must be >= 1, got {args.num}")
    if args.scale is not None and not 1 <= args.scale <= 16:
        raise UsageError(f"--scale must be in 1..16, got {args.scale}")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.cuda_graphs and torch.device(device).type != "cuda":
        raise UsageError("--cuda-graphs needs a CUDA device")
    loaded = load_for_sampling(args.ckpt, map_location=device)
    cfg = loaded.model.config
    labels = default_labels(args.num, cfg.num_classes, args.class_label)
    start = time.perf_counter()
    images = generate(
        loaded, args.num, seed=args.seed, sampler=args.sampler, steps=args.steps,
        cfg_scale=args.cfg, labels=labels, batch_size=args.batch_size, device=device,
        progress=sys.stderr.isatty(), cuda_graphs=args.cuda_graphs,
    )  # fmt: skip
    took = time.perf_counter() - start
    nrow = args.nrow or (
        cfg.num_classes
        if labels is not None and args.class_label is None and cfg.num_classes <= 16
        else None
    )
    scale = args.scale if args.scale is not None else max(1, 64 // max(images.shape[-2:]))
    write_samples(images, args.out, args.out_dir, nrow=nrow, scale=scale)
    if args.out:
        print(f"wrote {args.out}")
    if args.out_dir:
        print(f"wrote {args.num} PNGs to {args.out_dir}")
    print(
        f"{args.num} samples from {loaded.source} with {args.sampler} ({args.steps} steps"
        + (f", cfg {args.cfg}" if args.cfg != 1.0 else "")
        + f") in {took:.1f} s on {device}"
    )
    return 0


def _train_base_config(out: str) -> dict:
    """``--resume`` without --preset/--config: the run's own config, from its newest
    checkpoint, else the config.json an earlier attempt wrote before its first checkpoint."""
    from zigma.artifacts import CONFIG_NAME, latest_checkpoint, read_json_object

    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        return read_json_object(ckpt / "config.json", "checkpoint config")
    if (Path(out) / CONFIG_NAME).is_file():
        return read_json_object(Path(out) / CONFIG_NAME, "run config")
    raise UsageError(
        f"no checkpoint or config.json in {out} to resume; give --preset NAME or --config FILE "
        "to start the run"
    )


def cmd_train(args: argparse.Namespace) -> int:
    import logging
    import os

    from zigma.train import (
        TRAIN_PRESETS,
        PeerRefused,
        TrainingDiverged,
        TrainingInterrupted,
        TrainingPreempted,
        build_config,
        train,
    )

    if args.list_presets:
        print(f"{'preset':<14} description")
        for name, preset in TRAIN_PRESETS.items():
            print(f"{name:<14} {preset.description}")
        print(
            "Any model preset (`zigma models`, e.g. ZigMa-S/2) also works: it trains that "
            "model on the embedded shapes data at its default input size."
        )
        return 0
    if not args.out:
        raise UsageError("--out DIR is required (the run folder)")
    base = None
    if args.resume and not (args.preset or args.config):
        base = _train_base_config(args.out)
    elif not (args.preset or args.config):
        raise UsageError("give --preset NAME (see --list-presets) or --config FILE")
    cfg = build_config(
        args.preset,
        args.config,
        args.overrides,
        base=base,
        steps=args.steps,
        ckpt_every=args.ckpt_every,
    )
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format="%(message)s",
        stream=sys.stdout,
    )
    hint = "pass --resume to continue it, or choose a new --out"
    try:
        summary = train(cfg, Path(args.out), resume=args.resume, resume_hint=hint)
    except TrainingPreempted as e:
        if rank == 0:
            print(f"zigma train: preempted: {one_line(e)}", file=sys.stderr)
        return EXIT_PREEMPTED
    except TrainingInterrupted:
        if rank == 0:
            raise  # main prints the one line
        return EXIT_INTERRUPTED
    except PeerRefused:
        return EXIT_USAGE  # rank 0 prints why
    except TrainingDiverged as e:
        if rank == 0:
            print(f"zigma train: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    if rank == 0:
        print(
            f"trained {summary.steps} steps in {summary.seconds / 60:.1f} min "
            f"(last loss {summary.final_loss:.4f}, {summary.nonfinite_total} skipped steps); "
            f"EMA model in {summary.export_dir}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from zigma.evaluate import default_labels, generate, load_for_sampling, write_samples
    from zigma.train import build_config, train

    out = Path(args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    try:
        cfg = build_config("demo", overrides=args.overrides, steps=args.steps)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(" ".join(str(e).split())) from e
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    print(f"zigma demo: training a small ZigMa on the embedded shapes data into {out}")
    start = time.perf_counter()
    summary = train(cfg, out)
    loaded = load_for_sampling(out)
    num_classes = loaded.model.config.num_classes
    labels = default_labels(8 * num_classes, num_classes, None)
    images = generate(
        loaded, len(labels), seed=0, sampler="heun", steps=20, cfg_scale=3.0, labels=labels
    )
    grid = out / "samples.png"
    write_samples(images, grid, nrow=num_classes, scale=max(1, 64 // images.shape[-1]))
    print(
        f"zigma demo: {summary.steps} steps, final loss {summary.final_loss:.3f}, "
        f"{(time.perf_counter() - start) / 60:.1f} min in all"
    )
    print(
        f"zigma demo: samples (one column per class) in {grid}; the run folder {out} has "
        f"the loss curve, logs, checkpoints and the exported model for `zigma sample`"
    )
    return 0


def _int_list(raw: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {raw!r}") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{what} must be positive integers, got {raw!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from zigma.bench import (
        BenchSettings,
        format_table,
        order_study,
        run_suite,
        tiny_overrides,
        token_sweep,
        write_csv,
        write_json,
        write_plots,
    )
    from zigma.bench.suites import PAPER_SIDES, TINY_DEPTH, TINY_SIDES, TINY_WIDTH

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available")
    tiny = args.tiny if args.tiny is not None else torch.device(device).type == "cpu"
    if args.cuda_graphs and torch.device(device).type != "cuda":
        raise UsageError("--cuda-graphs needs a CUDA device")
    width = args.width if args.width is not None else (TINY_WIDTH if tiny else None)
    depth = args.depth if args.depth is not None else (TINY_DEPTH if tiny else None)
    if args.study == "orders":
        default_models, default_sides = "ZigMa-B/1", (TINY_SIDES[:1] if tiny else (64,))
    else:
        default_models = "ZigMa-B/1,DiT-B/1,U-ViT-B/1,Vim-B/1,Sweep-B/1"
        default_sides = TINY_SIDES if tiny else PAPER_SIDES
    models = [m.strip() for m in (args.models or default_models).split(",") if m.strip()]
    if not models:
        raise UsageError("--models must name at least one preset (see `zigma models`)")
    sides = _int_list(args.tokens, "--tokens") if args.tokens else list(default_sides)
    if (args.repeats is not None and args.repeats < 1) or args.batch < 1:
        raise UsageError("--repeats and --batch must be >= 1")
    if args.warmup is not None and args.warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {args.warmup}")
    extra = {m: tiny_overrides(m, width, depth) for m in models}
    if args.study == "orders":
        orders = _int_list(args.orders, "--orders")
        cases = [c for m in models for c in order_study(m, sides, orders, overrides=extra[m])]
    else:
        cases = token_sweep(models, sides, extra)
    cuda = torch.device(device).type == "cuda"
    settings = BenchSettings(
        device=device,
        dtype=args.dtype,
        batch=args.batch,
        warmup=args.warmup if args.warmup is not None else (5 if cuda else 1),
        repeats=args.repeats if args.repeats is not None else (20 if cuda else 3),
        train=args.train,
        backend=args.backend,
        cuda_graph=args.cuda_graphs,
        recompute_scans=args.recompute_scans,
    )
    size = "tiny " if tiny else ""
    print(
        f"zigma bench: {len(cases)} {size}case(s) ({args.study} study) on {device}, "
        f"{args.dtype}, batch {args.batch}, median of {settings.repeats} after "
        f"{settings.warmup} warm-up",
        flush=True,
    )
    rows = run_suite(
        cases,
        settings,
        on_row=lambda r: print(
            f"  {r.label} "
            + (f"K={r.scan_paths}" if r.scan_paths else f"{r.side}x{r.side}")
            + f": {r.status}",
            flush=True,
        ),
    )
    print(format_table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "bench.csv")
    write_json(rows, settings, out / "bench.json")
    plots = write_plots(rows, out)
    names = ", ".join(p.name for p in plots)
    note = "" if cuda else " (peak memory is measured on CUDA only)"
    print(f"wrote {out / 'bench.csv'}, bench.json and {len(plots)} plot(s): {names}{note}")
    return 0


class _TrainHelp(argparse.Action):
    """``zigma train --help``: the description names the resume-mutable fields, read from
    ``RESUME_MUTABLE`` only when help is asked for (importing the trainer takes seconds)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from zigma.train.config import RESUME_MUTABLE

        parser.description = (
            "Config precedence: preset < --config file < key=value overrides < "
            "--steps/--ckpt-every. With --resume the checkpoint's config wins, except "
            + ", ".join(RESUME_MUTABLE)
            + ", which take the command line's values (each change is logged)."
        )
        parser.print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from zigma import __version__

    parser = argparse.ArgumentParser(prog="zigma", description="Zigzag-Mamba diffusion models.")
    parser.add_argument("--version", action="version", version=f"zigma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model presets with sizes and parameter counts")
    p.add_argument("--size", type=int, default=32, help="input height = width (default 32)")
    p.add_argument("--channels", type=int, default=4, help="input channels (default 4)")
    p.add_argument("--flops", action="store_true", help="also count forward GFLOPs (slower)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="build a model, print its summary and run one forward pass")
    p.add_argument("model", help="preset name, e.g. ZigMa-S/2 (see `zigma models`)")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides, e.g. input_size=64 num_classes=10 scan=hilbert",
    )
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("scans", help="print or draw scan orders")
    p.add_argument(
        "--kind",
        default="zigzag",
        help="sweep, zigzag, hilbert, random, sweep3d or zigzag3d (default zigzag)",
    )
    p.add_argument("--size", type=int, default=8, help="grid height in tokens (default 8)")
    p.add_argument("--width", type=int, default=None, help="grid width (default: = --size)")
    p.add_argument("--frames", type=int, default=1, help="frames, for the 3d kinds")
    p.add_argument("--num", type=int, default=None, help="number of orders (default per kind)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random kind")
    p.add_argument("--plot", metavar="FILE.png", help="draw the orders to a PNG")
    p.add_argument("--print", action="store_true", help="print each order as token indices")
    p.set_defaults(func=cmd_scans)
    p = sub.add_parser("sample", help="draw samples from a trained model to PNG")
    p.add_argument(
        "--ckpt",
        required=True,
        help="a run folder, a checkpoint folder or an exported model folder",
    )
    p.add_argument("--out", metavar="FILE.png", help="write a grid of all samples")
    p.add_argument("--out-dir", metavar="DIR", help="also write one PNG per sample")
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="enlarge the grid's images N times (nearest); default: to at least 64 px",
    )
    p.add_argument("--num", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed; same seed, same images")
    p.add_argument(
        "--sampler",
        default="heun",
        help="euler, heun, dopri5, sde-euler or sde-heun (default heun)",
    )
    p.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    p.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="sample this class only (default: classes in turn)",
    )
    p.add_argument("--nrow", type=int, default=None, help="images per grid row")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="replay each model call as a CUDA graph (faster for small models and batches)",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(
        "train",
        help="train a model into a run folder (resumable; DDP under torchrun)",
        add_help=False,
        epilog="Exit codes: 0 done, 1 machine failure (disk full, I/O), 2 bad input or a "
        "diverged run, 75 preempted by SIGTERM/SIGUSR1 after writing a checkpoint (relaunch "
        "the same command with --resume), 130 Ctrl-C.",
    )
    p.add_argument("-h", "--help", action=_TrainHelp, help="show this help message and exit")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted config overrides, e.g. model.hidden_size=256 optim.lr=3e-4",
    )
    p.add_argument("--preset", help="training preset (--list-presets) or a model preset name")
    p.add_argument("--out", metavar="DIR", help="run folder (new, empty, or an earlier attempt's)")
    p.add_argument("--config", metavar="FILE", help="a full or partial config (.yaml or .json)")
    p.add_argument("--steps", type=int, default=None, help="total optimizer steps")
    p.add_argument("--ckpt-every", type=int, default=None, help="checkpoint interval (steps)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint, or start it if it has "
        "none yet (relaunch-safe: the same command works after any stop)",
    )
    p.add_argument("--list-presets", action="store_true", help="print the training presets")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("demo", help="train a small model on the embedded shapes, sample a grid")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train config overrides")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/demo-<time>)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: preset)")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "bench",
        help="time forward (and training) steps, peak memory and FLOPs vs token count",
        description="The token sweep (default) times every --models preset at every --tokens "
        "side (tokens = side^2 at patch 1); --study orders compares zigzag-K with K-direction "
        "parallel Mamba. On CPU the models are shrunk (--tiny) and the sides are small.",
    )
    p.add_argument("--models", help="comma-separated presets (default: the B/1 models)")
    p.add_argument(
        "--tokens", help="comma-separated input sides (default 32,64,96,128,196; CPU: 8,16)"
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--train", action="store_true", help="also time forward+backward+AdamW")
    p.add_argument("--study", choices=("tokens", "orders"), default="tokens")
    p.add_argument("--orders", default="1,2,4,8", help="K values of the order study")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 20; CPU 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs (default 5; CPU 1)")
    p.add_argument("--out", default="bench", metavar="DIR", help="output folder (default bench)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--backend", default=None, help="scan backend, e.g. chunked or triton")
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="time the forward replayed as one CUDA graph (no launch overhead)",
    )
    p.add_argument(
        "--recompute-scans",
        action="store_true",
        help="Mamba models keep less for the backward and rerun their scans (with --train)",
    )
    p.add_argument(
        "--tiny",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="width 64, depth 3 (default: on for CPU, off for CUDA)",
    )
    p.add_argument("--width", type=int, default=None, help="override hidden_size")
    p.add_argument("--depth", type=int, default=None, help="override depth")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    import errno

    from zigma.artifacts import describe_os_error

    parser = build_parser()
    args = parser.parse_args(argv)

    def fail(message: object, code: int) -> int:
        print(f"zigma {args.command}: error: {one_line(message)}", file=sys.stderr)
        return code

    try:
        return args.func(args)
    except KeyboardInterrupt as e:
        # a KeyboardInterrupt subclass raised by the trainer says where the run stopped
        detail = f": {one_line(e)}" if str(e) else ""
        print(f"zigma {args.command}: interrupted{detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UsageError, ValueError) as e:
        return fail(e, EXIT_USAGE)
    except OSError as e:
        user = isinstance(e, _USER_OSERRORS) or errno.errorcode.get(e.errno or 0) in _USER_ERRNOS
        return fail(describe_os_error(e), EXIT_USAGE if user else EXIT_FAILED)
    except RecursionError:
        return fail("the input is nested too deeply", EXIT_USAGE)
    except MemoryError:
        return fail("out of memory; try a smaller --batch-size or model", EXIT_FAILED)


if __name__ == "__main__":
    raise SystemExit(main())
