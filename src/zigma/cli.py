"""The ``zigma`` command line: the only reader of argv; no maths lives here.

Subcommands: ``models`` (preset table), ``info`` (build a model, print its summary, run one
forward pass), ``scans`` (print and draw scan orders), ``bench`` (speed, memory, FLOPs),
``train-vae`` (our small autoencoder for latent diffusion), ``prepare`` (latent shards), and
the training and sampling ones.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
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


class _Parser(argparse.ArgumentParser):
    """argparse with its errors as one line (``zigma CMD: error: ...``), no usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


def _int_arg(low: int, high: int = 2**63 - 1):
    """An argparse type: an integer in low..high (the message says which range)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text[:40]!r}") from None
        if not low <= value <= high:
            limit = f"in {low}..{high}" if high < 2**63 - 1 else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {limit}, got {value}")
        return value

    return parse


def _finite_float(low: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text[:40]!r}") from None
        if not math.isfinite(value) or value < low:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {low}, got {text}")
        return value

    return parse


_SEED = _int_arg(0, 2**63 - 2)  # torch generators take 64 bits; sampling also uses seed + 1


def _device(text: str | None) -> str:
    """The --device to use, checked: cpu, or a CUDA device this machine has."""
    import torch

    if text is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(
            f"--device {text[:40]!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if dev.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {text}: zigma runs on cpu or cuda, not {dev.type}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(
                f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return text


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on this system: no check
        return None


def _check_memory(nbytes: int, what: str) -> None:
    """Refuse work that needs more memory than the machine has, before starting it."""
    total = _memory_bytes()
    if total is not None and nbytes > total:
        raise UsageError(
            f"{what} need {nbytes / 2**30:.1f} GiB, more than this machine's "
            f"{total / 2**30:.1f} GiB of memory"
        )


def _check_out_png(path: str | None, flag: str) -> None:
    from zigma.artifacts import check_output_file

    if path is not None:
        check_output_file(path, flag)
        if Path(path).suffix.lower() != ".png":
            raise UsageError(f"{flag} must be a .png file, got {path}")


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from zigma.models import count_flops, count_parameters, create_model, list_models

    if args.size % 4:
        raise UsageError(f"--size must be a multiple of 4 (the largest patch), got {args.size}")
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


def _info_config(name: str, items: list[str]):
    """The preset's config with ``key=value`` overrides, type-checked like a config file."""
    from zigma.config import ConfigError, from_dict, parse_value, to_dict
    from zigma.models import preset_config

    base = preset_config(name)
    data = to_dict(base)
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UsageError(f"override {item[:60]!r} is not of the form key=value")
        value = parse_value(raw)
        if key == "input_size" and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]  # a square input, as the presets take it
        data[key] = value
    try:
        return from_dict(type(base), data)
    except ConfigError as e:
        raise UsageError(str(e)) from None


def cmd_info(args: argparse.Namespace) -> int:
    import torch

    from zigma.models import count_parameters, summarize
    from zigma.models.registry import preset_family

    cfg = _info_config(args.model, args.overrides)
    cls = preset_family(args.model).model_class
    h, w = cfg.grid_size
    orders = 0 if getattr(cfg, "scan", "sweep") in ("sweep", "bidirectional") else cfg.num_orders
    _check_memory(16 * orders * h * w, f"the scan orders of a {h}x{w} token grid")
    try:
        with torch.device("meta"):  # sizes first: nothing allocated yet
            params = count_parameters(cls(cfg))
    except (RuntimeError, MemoryError) as e:
        raise UsageError(f"{args.model} with these overrides cannot be built: {e}") from None
    inputs = 4 * args.batch * (cfg.in_channels + cfg.out_channels) * h * w * cfg.patch_size**2
    _check_memory(4 * params + inputs, f"{params} parameters and the input batch")
    torch.manual_seed(args.seed)
    model = cls(cfg).eval()
    print(summarize(model, name=args.model, flops=not args.no_flops))
    x = torch.randn(args.batch, cfg.in_channels, *cfg.input_size)
    t = torch.rand(args.batch)
    cond = model.conditioner.example(args.batch, torch.device("cpu"))
    start = time.perf_counter()
    with torch.no_grad():
        out = model(x, t, **cond)
    took = time.perf_counter() - start
    print(
        f"  forward pass     x {tuple(x.shape)} -> {tuple(out.shape)} in {took:.2f} s on CPU "
        f"(untrained: output max |v| = {out.abs().max().item():.1e})"
    )
    return 0


_MAX_SCAN_ENTRIES = 1 << 20  # a million printed indices or drawn cells is already unreadable


def cmd_scans(args: argparse.Namespace) -> int:
    from zigma.scan import SCAN_KINDS, save_scan_plot, scan_orders

    height, width = args.size, args.width or args.size
    if args.kind not in SCAN_KINDS:
        raise UsageError(
            f"unknown scan kind {args.kind[:40]!r}; choose from {', '.join(SCAN_KINDS)}"
        )
    count = 1 if args.kind.startswith("sweep") else (args.num or 8)
    entries = count * args.frames * height * width
    if entries > _MAX_SCAN_ENTRIES:
        raise UsageError(
            f"{count} order(s) of {args.frames}x{height}x{width} tokens are {entries} indices, "
            f"more than the {_MAX_SCAN_ENTRIES} zigma scans shows; use a smaller grid or --num"
        )
    _check_out_png(args.plot, "--plot")
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


def _prompts(args: argparse.Namespace) -> list[str]:
    """``--prompt`` (repeatable) then the lines of ``--prompts-file``; empty ones refused."""
    prompts = list(args.prompt or [])
    for p in prompts:
        if not p.strip():
            raise UsageError("--prompt: an empty prompt; write the text to draw")
    if args.prompts_file is not None:
        from zigma.evaluate.prompts import read_prompts_file

        try:
            prompts += read_prompts_file(args.prompts_file)
        except (OSError, ValueError) as e:
            raise UsageError(f"--prompts-file: {e}") from None
    return [p.strip() for p in prompts]


def _check_attn_dir(args: argparse.Namespace) -> None:
    from zigma.artifacts import check_output_dir

    folder = check_output_dir(args.attn_maps, "--attn-maps")
    if folder.is_dir() and any(folder.iterdir()) and not args.overwrite:
        raise UsageError(
            f"--attn-maps {folder} is not empty; choose an empty or new folder, or pass --overwrite"
        )


def _check_sample_outputs(args: argparse.Namespace) -> None:
    from zigma.artifacts import check_output_dir

    if args.out is None and args.out_dir is None:
        raise UsageError(
            "give --out FILE.png (a grid) and/or --out-dir DIR (one PNG or GIF per sample)"
        )
    _check_out_png(args.out, "--out")
    if args.out_dir is not None:
        folder = check_output_dir(args.out_dir, "--out-dir")
        if folder.is_dir() and any(folder.iterdir()) and not args.overwrite:
            raise UsageError(
                f"--out-dir {folder} is not empty; choose an empty or new folder, or pass "
                "--overwrite to replace the files of the same numbers"
            )
    if args.fps is not None and not 0 < args.fps <= 100:
        # GIF stores delays in hundredths of a second: 100 frames a second is the fastest
        raise UsageError(f"--fps must be in (0, 100], got {args.fps:g}")
    if args.mp4 and args.out_dir is None:
        raise UsageError("--mp4 writes one MP4 per sample into --out-dir: give --out-dir DIR")


def _check_video_sample_args(args: argparse.Namespace, source: Path) -> None:
    """A video model's flags, before any compute: its grid has one row per sample (so --nrow
    is refused rather than silently ignored), MP4 needs PyAV, attention maps are image-only."""
    if args.nrow is not None:
        raise UsageError(
            "--nrow: a video grid has one row per sample and one column per frame; leave it out"
        )
    if args.attn_maps is not None:
        raise UsageError(f"--attn-maps: {source} is a video model; maps are for image models")
    if args.mp4:
        from zigma.data import check_mp4_writer

        try:
            check_mp4_writer()
        except ImportError as e:
            raise UsageError(f"--mp4: {e}") from None


def _sample_bytes(num: int, shape: tuple[int, ...], nrow: int | None, scale: int) -> int:
    """Memory the samples and their grid take: noise and results in fp32 (about three copies)
    and the grid as bytes, a few copies while it is enlarged and encoded. ``shape`` is
    (C, H, W) or, for a video, (C, T, H, W): its grid has one row per sample, one column per
    frame."""
    c, *frames, h, w = shape
    t = frames[0] if frames else 1
    cols = t if frames else nrow or math.ceil(math.sqrt(num))
    rows = num if frames else math.ceil(num / cols)
    grid = (rows * (h + 2) + 2) * (cols * (w + 2) + 2) * 3 * scale**2
    return 3 * 4 * num * c * t * h * w + 3 * grid


def _sample_decoder(args: argparse.Namespace, loaded, device: str):
    """The autoencoder a latent model's samples are decoded with (None for a pixel model):
    the recorded one, or the same weights (hash checked) in ``--vae DIR``."""
    spec = loaded.autoencoder
    if spec is None:
        if args.vae is not None:
            raise UsageError(f"--vae: {loaded.source} is not a latent model (it draws pixels)")
        return None
    from zigma.autoencoder import load_autoencoder

    try:
        decoder = load_autoencoder(spec, device=device, folder=args.vae)
    except FileNotFoundError as e:
        raise UsageError(f"{e}; pass --vae DIR where those weights are") from None
    if decoder.latent_channels != loaded.model.config.in_channels:
        raise UsageError(
            f"the autoencoder at {decoder.path} has {decoder.latent_channels} latent channels, "
            f"the model {loaded.model.config.in_channels}"
        )
    return decoder


def cmd_sample(args: argparse.Namespace) -> int:
    from zigma.evaluate import load_for_sampling, write_samples
    from zigma.generate import as_sampled, generate, grid_conditions, to_images
    from zigma.transport import SAMPLERS

    _check_sample_outputs(args)
    prompts = _prompts(args)
    if args.attn_maps is not None:
        _check_attn_dir(args)
    if args.sampler not in SAMPLERS:
        raise UsageError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {args.sampler!r}")
    device = _device(args.device)
    if args.cuda_graphs and not device.startswith("cuda"):
        raise UsageError("--cuda-graphs needs a CUDA device")
    loaded = load_for_sampling(args.ckpt, map_location=device)
    cfg = loaded.model.config
    decoder = _sample_decoder(args, loaded, device)
    if decoder is None and cfg.in_channels not in (1, 3):
        raise UsageError(
            f"{loaded.source} makes {cfg.in_channels}-channel samples; PNGs need 1 or 3 "
            "(a latent model needs its decoder first)"
        )
    video = len(cfg.input_size) == 3
    if video:
        _check_video_sample_args(args, loaded.source)
    elif args.mp4 or args.fps is not None:
        flag = "--mp4" if args.mp4 else "--fps"
        raise UsageError(f"{flag}: {loaded.source} is an image model (it writes PNGs)")
    names = loaded.model.condition_names
    if args.cfg != 1.0 and not names:
        raise UsageError(f"--cfg {args.cfg}: guidance needs a conditional model")
    if args.class_label is not None and "y" not in names:
        raise UsageError("--class: this model is not class-conditional")
    if (prompts or args.text_encoder or args.attn_maps) and "text" not in names:
        flag = "--prompt" if prompts else "--text-encoder" if args.text_encoder else "--attn-maps"
        raise UsageError(
            f"{flag}: {loaded.source} is not a text model (its conditions: "
            f"{loaded.model.conditioner.describe()})"
        )
    if args.attn_maps is not None:
        if decoder is not None:
            raise UsageError("--attn-maps: maps are drawn on pixel models, not latent ones")
        if not prompts:
            raise UsageError("--attn-maps needs --prompt or --prompts-file (the words to map)")
        if args.cuda_graphs:
            raise UsageError("--attn-maps records attention eagerly: leave out --cuda-graphs")
    if args.num is None:
        args.num = 8 if prompts else 64
    if args.nrow is not None and args.nrow > args.num and not prompts:
        raise UsageError(f"--nrow must be in 1..--num ({args.num}), got {args.nrow}")
    conditional = cfg.num_classes > 0 and args.class_label is None
    nrow = args.nrow or (cfg.num_classes if conditional and cfg.num_classes <= 16 else None)
    given: dict = {} if args.class_label is None else {"y": args.class_label}
    encoder, rows = None, []
    if "text" in names:
        if prompts:
            from zigma.evaluate.prompts import encode_prompts, load_prompt_encoder, prompt_rows

            try:
                encoder = load_prompt_encoder(cfg, args.text_encoder)
            except ImportError as e:
                raise UsageError(str(e)) from None
            except (OSError, ValueError) as e:
                raise UsageError(f"--text-encoder: {e}") from None
            rows = prompt_rows(prompts, args.num)
            args.num = len(rows)
            nrow = args.nrow or len(rows) // len(prompts)
        else:
            print(
                "note: no --prompt given: sampling the null text (what the model draws unprompted)",
                file=sys.stderr,
            )
    shape = (cfg.in_channels, *cfg.input_size)
    if decoder is not None:  # PNGs at the decoded size
        f = decoder.downsample
        shape = (decoder.image_channels, *(side * f for side in cfg.input_size))
    scale = args.scale if args.scale is not None else max(1, 64 // max(shape[-2:]))
    _check_memory(
        _sample_bytes(args.num, shape, nrow if args.out else None, scale if args.out else 0),
        f"{args.num} samples of {'x'.join(map(str, shape))}",
    )
    cond = grid_conditions(loaded.model, args.num, **given)  # classes in turn unless --class
    if rows:
        cond["text"] = encode_prompts(encoder, rows)
    maps = None
    if args.attn_maps is not None:
        from zigma.generate import AttentionMaps

        maps = AttentionMaps()
    start = time.perf_counter()
    images = generate(
        loaded.model, loaded.transport, args.num, cond=cond, seed=args.seed,
        sampler=args.sampler, steps=args.steps, guidance_scale=args.cfg,
        batch_size=args.batch_size, device=device, progress=sys.stderr.isatty(),
        cuda_graphs=args.cuda_graphs, attention=maps,
        output=to_images if decoder is None else as_sampled,
    )  # fmt: skip
    if decoder is not None:
        images = decoder.decode_in_batches(images, min(args.batch_size, 16))
    took = time.perf_counter() - start
    fps = args.fps if args.fps is not None else 8.0
    write_samples(images, args.out, args.out_dir, nrow=nrow, scale=scale, fps=fps, mp4=args.mp4)
    if maps is not None:
        from zigma.evaluate.attention import save_attention_maps

        save_attention_maps(args.attn_maps, images, maps.maps, maps.grid, rows, encoder)
        print(f"wrote {len(rows)} attention maps to {args.attn_maps}")
    if args.out:
        print(f"wrote {args.out}")
    if args.out_dir:
        kinds = ("GIFs and MP4s" if args.mp4 else "GIFs") if video else "PNGs"
        print(f"wrote {args.num} {kinds} to {args.out_dir}")
    print(
        f"{args.num} samples from {loaded.source} with {args.sampler} ({args.steps} steps"
        + (f", cfg {args.cfg}" if args.cfg != 1.0 else "")
        + f") in {took:.1f} s on {device}"
    )
    return 0


def cmd_text_cache(args: argparse.Namespace) -> int:
    from zigma.data import build_dataset
    from zigma.text import TextFeatureCache, load_text_encoder
    from zigma.train import build_config

    if not (args.preset or args.config):
        raise UsageError("give --preset NAME or --config FILE: the run whose captions to cache")
    cfg = build_config(args.preset, args.config, args.overrides)
    spec = args.encoder or cfg.text.encoder
    if not spec:
        raise UsageError("no text encoder: the config has no text.encoder; pass --encoder")
    try:
        encoder = load_text_encoder(spec)
    except ImportError as e:
        raise UsageError(str(e)) from None
    cache = TextFeatureCache(args.out, encoder.identity())  # refuses another encoder's folder
    dataset = build_dataset(cfg.data, "train")
    every = getattr(dataset, "all_captions", None)  # every caption an item may draw
    captions: dict[str, None] = {}
    for i in range(len(dataset)):
        for c in every(i) if every else [dataset[i]["caption"]]:
            if c.strip():
                captions[c] = None
    captions.update(dict.fromkeys(p for p in cfg.text.prompts))
    new = cache.add(list(captions), encoder, batch_size=args.batch_size)
    print(
        f"{len(captions)} distinct captions of {cfg.data.name} ({len(dataset)} items): {new} "
        f"encoded, {len(captions) - new} already cached; {len(cache)} in {args.out} "
        f"({encoder.name}, {encoder.dim}-d)"
    )
    print(f"train from it with: text.encoder={spec} text.cache={args.out}")
    return 0


def cmd_attributes(args: argparse.Namespace) -> int:
    import json

    from zigma.evaluate import load_for_sampling
    from zigma.evaluate.attributes import (
        AttributeClassifier,
        prompt_following,
        train_attribute_classifier,
    )
    from zigma.evaluate.prompts import load_prompt_encoder

    try:
        scales = tuple(float(v) for v in args.cfg.split(",") if v.strip())
    except ValueError:
        scales = ()
    if not scales or any(not math.isfinite(v) or v < 0 for v in scales):
        raise UsageError(f"--cfg takes guidance scales >= 0 like 1,3,6, got {args.cfg!r}")
    if args.out is not None:
        from zigma.artifacts import check_output_file

        check_output_file(args.out, "--out")
    device = _device(args.device)
    loaded = load_for_sampling(args.ckpt, map_location=device)
    cfg = loaded.model.config
    if "text" not in loaded.model.condition_names or cfg.in_channels != 3:
        raise UsageError(f"{loaded.source} is not an RGB text model: nothing to score")
    try:
        encoder = load_prompt_encoder(cfg, args.text_encoder)
    except ImportError as e:
        raise UsageError(str(e)) from None
    if args.classifier:
        classifier = AttributeClassifier.load(args.classifier)
    else:
        classifier = train_attribute_classifier(cfg.input_size[-1], steps=300, seed=0)
    held = classifier.config.heldout_accuracy
    print(
        f"attribute classifier {classifier.resolution} px, weights sha256 "
        f"{classifier.weights_hash[:16]}, held-out accuracy {held}"
    )
    rows = prompt_following(
        loaded.model, loaded.transport, encoder, classifier, num=args.num, scales=scales,
        steps=args.steps, seed=args.seed, batch_size=args.batch_size, device=device,
    )  # fmt: skip
    print(f"{args.num} prompts, {args.steps} heun steps, seed {args.seed}, {loaded.source}")
    print("| samples | colour | kind | cell | size | all three |")
    print("|---|---|---|---|---|---|")
    chance = rows[0]["chance"]
    for r in rows + [{"samples": "chance", **chance}]:
        cells = " | ".join(f"{r[k]:.3f}" for k in ("color", "kind", "cell", "size", "all"))
        print(f"| {r['samples']} | {cells} |")
    if args.out is not None:
        from zigma.artifacts import write_text_atomic

        record = {
            "source": str(loaded.source),
            "classifier_sha256": classifier.weights_hash,
            "classifier_heldout": held,
            "num": args.num,
            "steps": args.steps,
            "seed": args.seed,
            "rows": rows,
        }
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_eval_classifier(args: argparse.Namespace) -> int:
    import torch

    from zigma.artifacts import check_output_file
    from zigma.evaluate.classifier import dataset_spec, train_classifier

    spec = dataset_spec(args.data)
    if not args.out.endswith(".safetensors"):
        raise UsageError(f"--out must name a .safetensors file, got {args.out!r}")
    check_output_file(args.out, "--out")
    check_output_file(str(Path(args.out).with_suffix(".json")), "--out's config")
    if args.frames is not None and spec.modality != "video":
        raise UsageError(f"--frames applies only to the video datasets, not {args.data!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = train_classifier(
        args.data, steps=args.steps, seed=args.seed, batch_size=args.batch_size,
        data_dir=args.data_dir, frames=args.frames,
    )  # fmt: skip
    path = model.save(args.out)
    print(
        f"{model.name}: held-out accuracy {model.config.heldout_accuracy} "
        f"({time.perf_counter() - start:.0f} s, {torch.get_num_threads()} threads)"
    )
    print(f"wrote {path} and {path.with_suffix('.json')} (sha256 {model.config.sha256})")
    return 0


def _run_data_config(path: Path) -> dict | None:
    """The data section of the run that ``path`` (a run folder, one of its checkpoints or its
    exported model) belongs to, or None when no run config is found."""
    from zigma.artifacts import CONFIG_NAME, read_json_object

    for folder in (path, path.parent, path.parent.parent):
        found = folder / CONFIG_NAME
        if found.is_file():
            data = read_json_object(found, "config")
            if isinstance(data.get("data"), dict):
                return data["data"]
    return None


def cmd_motion(args: argparse.Namespace) -> int:
    import json

    import torch

    from zigma.config import ConfigError, apply_overrides, from_dict
    from zigma.data import DataConfig, build_dataset
    from zigma.evaluate import load_for_sampling
    from zigma.evaluate.motion import format_report, motion_report
    from zigma.generate import generate, grid_conditions

    if not (math.isfinite(args.cfg) and args.cfg >= 0):
        raise UsageError(f"--cfg must be a guidance scale >= 0, got {args.cfg}")
    if args.out is not None:
        from zigma.artifacts import check_output_file

        check_output_file(args.out, "--out")
    device = _device(args.device)
    loaded = load_for_sampling(args.ckpt, map_location=device)
    cfg = loaded.model.config
    if not cfg.is_video:
        raise UsageError(f"{loaded.source} is an image model: motion needs a video model")
    frames, height, width = cfg.input_size
    found = _run_data_config(Path(args.ckpt))
    if found is None and not any(o.startswith("data.name=") for o in args.overrides):
        raise UsageError(
            f"no run config beside {args.ckpt}: name the reference data, e.g. "
            "data.name=moving-mnist data.digits_from=fashion-mnist"
        )
    strange = [o for o in args.overrides if not o.startswith("data.")]
    if strange:
        raise UsageError(f"{strange[0]!r}: overrides name reference data fields, data.key=value")
    try:
        data = from_dict(DataConfig, found or {"name": "moving-shapes"}, where="data")
        data = apply_overrides(data, [o.removeprefix("data.") for o in args.overrides])
    except ConfigError as e:
        raise UsageError(str(e)) from None
    if not data.is_video or (data.frames, data.resolution) != (frames, height) or height != width:
        raise UsageError(
            f"the reference data ({data.name}, {data.frames} frames of {data.resolution} px) is "
            f"not the model's clips ({frames} frames of {height}x{width})"
        )
    dataset = build_dataset(data, "test")
    if len(dataset) < args.num:
        raise UsageError(f"the reference data holds {len(dataset)} clips, fewer than --num")
    reference = torch.stack([dataset[i]["image"] for i in range(args.num)])
    cond = grid_conditions(loaded.model, args.num)
    samples = generate(
        loaded.model, loaded.transport, args.num, cond=cond, seed=args.seed, steps=args.steps,
        guidance_scale=args.cfg, batch_size=args.batch_size, device=device, progress=True,
    )  # fmt: skip
    report = motion_report(samples, reference, seed=args.seed)
    print(
        f"{args.num} samples ({args.steps} heun steps, cfg {args.cfg:g}, seed {args.seed}) of "
        f"{loaded.source} against {args.num} test clips of {data.name}"
    )
    print(format_report(report))
    if args.out is not None:
        from zigma.artifacts import write_text_atomic

        record = {
            "source": str(loaded.source),
            "data": data.name,
            "num": args.num,
            "steps": args.steps,
            "cfg": args.cfg,
            "seed": args.seed,
            "rows": {k: v.as_dict() for k, v in report.items()},
        }
        write_text_atomic(args.out, json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


def _eval_metrics(text: str) -> list[str]:
    from zigma.evaluate.run import METRICS

    names = list(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    bad = [m for m in names if m not in METRICS]
    if not names or bad:
        raise UsageError(
            f"--metrics takes a comma-separated list of {', '.join(METRICS)}; got {text!r}"
        )
    return names


def _recorded_reference(folder: Path) -> dict | None:
    """The dataset reference (``{"data": ..., "split": ...}``) that earlier metrics of the
    samples in ``folder`` were computed against, from its ``results.json``; None without one."""
    from zigma.artifacts import read_json_object
    from zigma.evaluate.run import RESULTS_NAME

    path = folder / RESULTS_NAME
    if not path.is_file():
        return None
    ref = read_json_object(path, "eval results").get("reference")
    return ref if isinstance(ref, dict) and isinstance(ref.get("data"), dict) else None


def _eval_reference(args: argparse.Namespace, source: Path | None, recorded: dict | None = None):
    """The real side: ``--ref FILE.npz`` (statistics), or a dataset: ``--ref NAME`` (the run's
    own data config when it has that name), or with no --ref the run's data; then the
    ``data.key=value`` overrides. Without the run's config (samples scored on another
    machine), the data and split of ``recorded``, the reference the samples' earlier metrics
    used, take its place."""
    from zigma.config import ConfigError, from_dict
    from zigma.data import DataConfig
    from zigma.evaluate.run import Reference

    strange = [o for o in args.overrides if not o.startswith("data.")]
    if strange:
        raise UsageError(f"{strange[0]!r}: overrides name reference data fields, data.key=value")
    cache = Path(args.cache) if args.cache else None
    if args.ref is not None and args.ref.endswith(".npz"):
        if args.overrides:
            raise UsageError("data.key=value describes a dataset; --ref FILE.npz holds features")
        if not Path(args.ref).is_file():
            raise UsageError(f"--ref {args.ref}: no such statistics file")
        return Reference(stats=Path(args.ref), num=args.num_real)
    found = _run_data_config(source) if source is not None else None
    split = args.ref_split
    if found is None and recorded is not None:
        found = recorded["data"]
        split = split or recorded.get("split")
    if args.ref is None and found is None:
        raise UsageError(
            "no run config beside the model: name the real data with --ref NAME (e.g. --ref "
            "shapes data.style=centered data.resolution=16) or --ref STATS.npz"
        )
    base = found if found and args.ref in (None, found.get("name")) else {"name": args.ref}
    try:
        # the overrides go in before the config is checked: a video name needs its frames
        # (--ref moving-shapes data.frames=8), which a plain {"name": ...} lacks
        data = from_dict(DataConfig, {**base, **_data_overrides(args.overrides)}, where="data")
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return Reference(data=data, split=split or "train", num=args.num_real, cache=cache)


def _data_overrides(overrides: list[str]) -> dict:
    """``data.key=value`` items as {key: parsed value} (DataConfig has no nested fields)."""
    from zigma.config import ConfigError, parse_value

    out = {}
    for item in overrides:
        key, sep, raw = item.removeprefix("data.").partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form data.key=value")
        out[key.strip()] = parse_value(raw)
    return out


def _eval_plan(args: argparse.Namespace, metrics: list[str], reference, device: str, shape):
    """(metric, extractor) pairs for compute_metrics, each extractor loaded once and tried on
    one blank sample of ``shape`` (C, [T,] H, W), so one that cannot read the samples (images
    vs clips, another clip length) is refused before any sampling."""
    import torch

    from zigma.evaluate.features import load_extractor
    from zigma.evaluate.run import VIDEO_METRICS, check_modality, classifier_spec, extract

    video = len(shape) == 4
    specs = list(dict.fromkeys(e.strip() for e in args.extractors.split(",") if e.strip()))
    if not specs:
        raise UsageError("--extractors names at least one extractor, e.g. inception")
    plan: list[tuple[str, str]] = []
    for m in metrics:
        if m in VIDEO_METRICS and not video:
            raise UsageError(f"--metrics {m} scores video clips; these samples are images "
                             "(fd-classifier is their domain FD)")  # fmt: skip
        if m in ("fid", "kid", "prdc"):
            plan += [({"fid": "fd", "kid": "kd"}.get(m, m), spec) for spec in specs]
        elif m in ("fd-classifier", "fvd-proxy", "frame-fd"):  # fd-classifier of clips: FVD-proxy
            data = reference.data_record()
            plan.append(("fd", classifier_spec(data, video, frames=m == "frame-fd")))
    plan = list(dict.fromkeys(plan))  # fd-classifier and fvd-proxy of clips are one value
    loaded: dict = {}
    blank = torch.zeros((1, *shape), dtype=torch.uint8)
    for _, spec in plan:
        if spec not in loaded:
            try:
                loaded[spec] = load_extractor(spec, device)
                check_modality(loaded[spec], video)
                extract(loaded[spec], blank)
            except ImportError as e:
                raise UsageError(str(e)) from None
            except (OSError, ValueError, RuntimeError) as e:
                raise UsageError(f"extractor {spec}: {e}") from None
    return [(m, loaded[spec]) for m, spec in plan]


def _eval_classifier(reference, device: str, conditions: list[str], shape, classes):
    """The domain classifier of the reference data, for --metrics cond-acc, tried on one
    blank sample of ``shape``; ``classes``: the model's class count, when known."""
    import torch

    from zigma.evaluate.classifier import load_classifier
    from zigma.evaluate.run import classifier_dataset

    if "y" not in conditions:
        raise UsageError("--metrics cond-acc: the model is not class-conditional")
    try:
        classifier = load_classifier(classifier_dataset(reference.data_record()), device)
        classifier.predict(torch.zeros((1, *shape), dtype=torch.uint8))
    except (OSError, ValueError) as e:
        raise UsageError(f"cond-acc: {e}") from None
    known = len(classifier.config.classes)
    if classes is not None and classes != known:
        raise UsageError(f"cond-acc: the model has {classes} classes, the "
                         f"{classifier.config.dataset} classifier {known}")  # fmt: skip
    return classifier


def _eval_baseline(args: argparse.Namespace) -> None:
    """--baseline real|noise: write the stand-in's shards into --out, then let the rest of
    cmd_eval score them as --samples --out."""
    from zigma.evaluate.run import write_baseline_shards

    given = [f for f, v in (("--ckpt", args.ckpt), ("--samples", args.samples)) if v]
    if given:
        raise UsageError(f"--baseline scores a stand-in, not a model: leave out {given[0]}")
    if args.num is None or args.out is None:
        raise UsageError("--baseline needs --num and --out")
    if args.ref is None or args.ref.endswith(".npz"):
        raise UsageError("--baseline needs --ref NAME (the dataset its images come from)")
    if args.sample_only or args.max_shards is not None:
        raise UsageError("--baseline writes all its shards at once: leave out --sample-only "
                         "and --max-shards")  # fmt: skip
    reference = _eval_reference(args, None)
    try:
        done = write_baseline_shards(
            args.out, args.baseline, reference.data, args.num, split=args.baseline_split,
            seed=args.seed, shard_size=args.shard_size,
        )  # fmt: skip
    except (ValueError, NotADirectoryError) as e:
        raise UsageError(str(e)) from None
    items = "clips" if reference.data.is_video else "images"
    what = f"real {args.baseline_split} {items}" if args.baseline == "real" else f"noise {items}"
    print(f"zigma eval: baseline of {args.num} {what} in {done.out} ({done.written} shard(s) "
          f"written now, {done.kept} kept)")  # fmt: skip
    args.samples, args.out, args.num = args.out, None, None


def cmd_eval(args: argparse.Namespace) -> int:
    from zigma.artifacts import check_output_dir, check_output_file
    from zigma.config import to_dict
    from zigma.evaluate.run import (
        SampleSettings,
        compute_metrics,
        conditioning_accuracy_of,
        export_adm_npz,
        format_table,
        generate_shards,
        read_manifest,
        sample_shape,
        write_results,
        write_shard_features,
    )
    from zigma.train import distributed

    metrics = _eval_metrics(args.metrics)
    for flag, value in (("--export-npz", args.export_npz), ("--json", args.json)):
        if value is not None:
            check_output_file(value, flag)
    if args.baseline is not None:
        _eval_baseline(args)  # writes the stand-in's shards; then scored as --samples
    drawing = args.samples is None
    if drawing:
        missing = [
            f
            for f, v in (("--ckpt", args.ckpt), ("--num", args.num), ("--out", args.out))
            if v is None
        ]
        if missing:
            raise UsageError(f"give {', '.join(missing)} (or --samples DIR: score drawn shards)")
        check_output_dir(args.out, "--out")
    else:
        given = [
            f
            for f, v in (
                ("--ckpt", args.ckpt),
                ("--num", args.num),
                ("--out", args.out),
                ("--max-shards", args.max_shards),
            )
            if v is not None
        ]
        if given:
            raise UsageError(f"--samples scores shards already drawn: leave out {given[0]}")
        manifest = read_manifest(args.samples)
    if args.sample_only and (args.samples is not None):
        raise UsageError("--sample-only draws samples: it does not go with --samples")
    _, _, world = distributed.launcher_env()
    device = _device(args.device)
    if world > 1 and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # one GPU per rank
    folder = Path(args.out if drawing else args.samples)
    if drawing:
        from zigma.evaluate import load_for_sampling

        settings = SampleSettings(
            args.num, args.seed, args.sampler, args.steps, args.cfg, args.shard_size
        )
        loaded = load_for_sampling(args.ckpt, map_location=device)
        decoder = _sample_decoder(args, loaded, device)
        if args.cfg != 1.0 and not loaded.model.condition_names:
            raise UsageError(f"--cfg {args.cfg}: guidance needs a conditional model")
        shape = sample_shape(
            {"model": {"config": to_dict(loaded.model.config)}, "decoder": loaded.autoencoder}
        )
        source = Path(args.ckpt)
    else:
        settings = SampleSettings(**manifest["settings"])
        shape = sample_shape(manifest)
        source = Path(manifest["source"]) if manifest.get("source") else None
    reference = plan = classifier = None
    if not args.sample_only:
        recorded = None if drawing else _recorded_reference(folder)
        reference = _eval_reference(args, source, recorded)
        reference.check(shape, settings.num)
        plan = _eval_plan(args, metrics, reference, device, shape)
        if "cond-acc" in metrics:
            model = to_dict(loaded.model.config) if drawing else manifest["model"]["config"]
            conditions = (
                loaded.model.condition_names if drawing else manifest["model"]["conditions"]
            )
            classes = model.get("num_classes")  # a baseline's shards: the data's own labels
            classifier = _eval_classifier(reference, device, list(conditions), shape, classes)
    env = distributed.setup("cuda" if device.startswith("cuda") else "cpu") if drawing else None
    try:
        if drawing:
            decode = None
            if decoder is not None:
                decode = lambda z: decoder.decode_in_batches(z, min(args.batch_size, 16))  # noqa: E731
            extractors = {id(e): e for _, e in plan or []}.values()

            def features(k, samples):
                for e in extractors:
                    write_shard_features(folder, k, samples, e, args.batch_size)

            done = generate_shards(
                loaded, folder, settings.num, seed=settings.seed, sampler=settings.sampler,
                steps=settings.steps, cfg=settings.cfg, shard_size=settings.shard_size,
                batch_size=args.batch_size, device=env.device, decode=decode,
                max_shards=args.max_shards, on_shard=features, progress=sys.stderr.isatty(),
            )  # fmt: skip
            if not env.is_main:
                return 0
            if not done.finished:
                print(
                    f"zigma eval: {done.written} shard(s) drawn into {folder}, not finished: "
                    "run the same command again to continue"
                )
                return 0
            print(
                f"zigma eval: {settings.num} samples in {folder} ({done.written} shard(s) "
                f"drawn now, {done.kept} kept) in {done.seconds:.1f} s"
            )
        if args.export_npz is not None:
            export_adm_npz(folder, args.export_npz)
            print(f"wrote {args.export_npz} (ADM format: arr_0 uint8 [N, H, W, 3])")
        if args.sample_only:
            return 0
        records = compute_metrics(
            folder, plan, reference, batch_size=args.batch_size, progress=sys.stderr.isatty()
        )
        extra = {}
        if classifier is not None:
            extra["conditioning"] = conditioning_accuracy_of(folder, classifier)
        path = write_results(folder, records, reference, args.json, extra)
        print(format_table(records))
        if classifier is not None:
            c = extra["conditioning"]
            print(f"- {c['metric']} {c['value']:.4f} (chance {c['chance']:.3f}) over "
                  f"{c['num_fake']} samples")  # fmt: skip
        if read_manifest(folder).get("decoder"):
            print("note: a latent model: its decoded samples are compared with real images")
        print(f"wrote {path}")
        return 0
    finally:
        if env is not None:
            distributed.cleanup(env)


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
        width = max(len(n) for n in TRAIN_PRESETS) + 1
        print(f"{'preset':<{width}} description")
        for name, preset in TRAIN_PRESETS.items():
            print(f"{name:<{width}} {preset.description}")
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

    from zigma.artifacts import check_output_dir
    from zigma.evaluate import load_for_sampling, write_samples
    from zigma.generate import generate, grid_conditions
    from zigma.train import TrainingDiverged, build_config, train

    out = Path(args.out or time.strftime("runs/demo-%Y%m%d-%H%M%S"))
    check_output_dir(out, "--out")
    if out.is_dir() and any(out.iterdir()):  # the demo always starts a new run
        raise UsageError(f"run folder {out} is not empty; choose another --out or delete {out}")
    try:
        cfg = build_config("demo", overrides=args.overrides, steps=args.steps)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(" ".join(str(e).split())) from e
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    print(f"zigma demo: training a small ZigMa on the embedded shapes data into {out}")
    start = time.perf_counter()
    try:
        summary = train(cfg, out)
    except TrainingDiverged as e:
        raise UsageError(str(e)) from None
    loaded = load_for_sampling(out)
    num_classes = loaded.model.config.num_classes
    num = 8 * num_classes
    images = generate(
        loaded.model, loaded.transport, num, cond=grid_conditions(loaded.model, num),
        seed=0, sampler="heun", steps=20, guidance_scale=3.0,
    )  # fmt: skip
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


def cmd_train_vae(args: argparse.Namespace) -> int:
    from zigma.autoencoder import VAETrainConfig, check_output_folder, kl_preset, train_vae
    from zigma.config import apply_overrides
    from zigma.data import DataConfig

    check_output_folder(args.out)
    device = _device(args.device)
    data = DataConfig(name=args.data, resolution=args.resolution, num_samples=args.num_samples)
    cfg = VAETrainConfig(
        data=data,
        model=kl_preset(args.downsample, image_channels=data.resolved_channels),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_weight=args.kl_weight,
        seed=args.seed,
        device=device,
    )
    cfg = apply_overrides(cfg, args.overrides)
    summary = train_vae(cfg, Path(args.out))
    print(
        f"zigma train-vae: {summary.steps} steps in {summary.seconds / 60:.1f} min; held-out "
        f"PSNR {summary.psnr:.2f} dB; autoencoder (ours, not the SD VAE) in {summary.path}"
    )
    return 0


def _data_config(name: str, size: int | None, overrides: list[str]):
    """A DataConfig from ``--data NAME``, ``--size`` and ``data.key=value`` overrides, built in
    one step (a folder's data_dir arrives as an override)."""
    from zigma.config import from_dict, parse_value
    from zigma.data import DataConfig

    fields: dict = {"name": name}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip().removeprefix("data.")
        if not sep or not key or "." in key:
            raise UsageError(f"expected data.key=value, got {item[:60]!r}")
        fields[key] = parse_value(raw)
    if size is not None:
        if fields.get("resolution", size) != size:
            raise UsageError(f"--size {size} and data.resolution={fields['resolution']} disagree")
        fields["resolution"] = size
    return from_dict(DataConfig, fields, where="data")


def cmd_prepare(args: argparse.Namespace) -> int:
    from zigma.autoencoder import load_autoencoder
    from zigma.autoencoder.prepare import PrepareConfig, prepare_latents

    data = _data_config(args.data, args.size, args.overrides)
    cfg = PrepareConfig(
        data=data, flip=args.flip, shard_size=args.shard_size, batch_size=args.batch_size,
        dtype=args.dtype,
    )  # fmt: skip
    import torch

    from zigma.train import distributed

    rank, local, world = distributed.launcher_env()
    device = _device(args.device)
    if world > 1 and device == "cuda":  # one GPU per rank; an explicit cuda:N is kept
        if local >= torch.cuda.device_count():
            raise UsageError(
                f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA "
                "device(s); start at most that many processes per machine (--nproc_per_node)"
            )
        device = f"cuda:{local}"
        torch.cuda.set_device(local)  # anything a VAE allocates without a device goes there too
    ae = load_autoencoder(args.vae, device=device)
    s = prepare_latents(ae, cfg, args.out, max_shards=args.max_shards, progress=sys.stderr.isatty())
    if rank != 0:  # one summary; its counts are already those of all ranks
        return 0
    shape = "x".join(map(str, s.latent_shape))
    state = f"index {s.out / 'index.json'}" if s.finished else "not finished: run it again"
    skipped = f"; skipped: {s.skipped}" if s.skipped else ""
    print(
        f"zigma prepare: {s.num_items} latents of {shape} in {s.num_shards} shards ({s.written} "
        f"written, {s.kept} already there) in {s.seconds:.1f} s ({s.images_per_second:.3g} "
        f"images/s); {state}{skipped}"
    )
    return 0


_MAX_BENCH_SIDE = 1024  # a 1024x1024 token grid: a million tokens, beyond any H200 run
_MAX_BENCH_FRAMES = 1024


def _int_list(raw: str, what: str, high: int) -> list[int]:
    try:
        values = [int(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {raw[:40]!r}") from None
    if not values or any(not 1 <= v <= high for v in values):
        raise UsageError(f"{what} must be positive integers up to {high}, got {raw[:40]!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from zigma.artifacts import check_output_dir, check_output_file
    from zigma.bench import (
        BenchSettings,
        drop_full_attention,
        format_table,
        order_study,
        run_suite,
        tiny_overrides,
        token_sweep,
        video_study,
        write_csv,
        write_json,
        write_plots,
    )
    from zigma.bench.suites import (
        FULL_ATTENTION_MAX_TOKENS,
        PAPER_SIDES,
        TINY_DEPTH,
        TINY_SIDES,
        TINY_VIDEO_FRAMES,
        TINY_VIDEO_SIDES,
        TINY_WIDTH,
        VIDEO_FRAMES,
        VIDEO_MODELS,
        VIDEO_SIDES,
        parse_video_model,
    )
    from zigma.models import preset_config
    from zigma.ssm import resolve_backend

    device = _device(args.device)
    check_output_dir(args.out, "--out")
    for name in ("bench.csv", "bench.json"):
        check_output_file(Path(args.out) / name, "--out")
    if args.backend is not None:
        try:
            resolve_backend(args.backend, device)
        except (ValueError, RuntimeError) as e:
            raise UsageError(f"--backend: {e}") from None
    tiny = args.tiny if args.tiny is not None else not device.startswith("cuda")
    if args.cuda_graphs and not device.startswith("cuda"):
        raise UsageError("--cuda-graphs needs a CUDA device")
    if args.frames is not None and args.study != "video":
        raise UsageError(f"--frames applies to --study video, not --study {args.study}")
    width = args.width if args.width is not None else (TINY_WIDTH if tiny else None)
    depth = args.depth if args.depth is not None else (TINY_DEPTH if tiny else None)
    if args.study == "orders":
        default_models, default_sides = "ZigMa-B/1", [TINY_SIDES[0] if tiny else 64]
    elif args.study == "video":
        default_models = ",".join(VIDEO_MODELS)
        default_sides = list(TINY_VIDEO_SIDES if tiny else VIDEO_SIDES)
    else:
        default_models = "ZigMa-B/1,DiT-B/1,U-ViT-B/1,Vim-B/1,Sweep-B/1"
        default_sides = list(TINY_SIDES if tiny else PAPER_SIDES)
    models = [m.strip() for m in (args.models or default_models).split(",") if m.strip()]
    if not models:
        raise UsageError("--models must name at least one preset (see `zigma models`)")
    sides = _int_list(args.tokens, "--tokens", _MAX_BENCH_SIDE) if args.tokens else default_sides
    if args.study == "video":  # "preset:pattern" specs; the overrides are the preset's
        extra = {}
        for spec in models:
            preset = parse_video_model(spec)[0]
            extra[preset] = tiny_overrides(preset, width, depth)
    else:
        extra = {m: tiny_overrides(m, width, depth) for m in models}
    skipped = []
    if args.study == "orders":
        orders = _int_list(args.orders, "--orders", 8)
        cases = [c for m in models for c in order_study(m, sides, orders, overrides=extra[m])]
    elif args.study == "video":
        default_frames = [TINY_VIDEO_FRAMES if tiny else VIDEO_FRAMES]
        frames = _int_list(args.frames, "--frames", _MAX_BENCH_FRAMES) if args.frames else None
        cases = video_study(models, frames or default_frames, sides, extra)
        if not args.models:  # the default study's full-attention line stops where it crawls
            cases, skipped = drop_full_attention(cases, FULL_ATTENTION_MAX_TOKENS)
    else:
        cases = token_sweep(models, sides, extra)
    for case in cases:  # every model must build before the first one is timed
        preset_config(case.preset, **case.overrides)
    cuda = device.startswith("cuda")
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
    if args.study == "video":
        print("  input = frames x H x W (pixels or latents); tokens per clip; fps = clips/s")
    for case in skipped:
        print(
            f"  skipped {case.label} at {'x'.join(map(str, case.input_shape))}: full attention "
            f"over {case.tokens} tokens (> {FULL_ATTENTION_MAX_TOKENS}; name it in --models "
            "to run it)"
        )
    rows = run_suite(
        cases,
        settings,
        on_row=lambda r: print(
            f"  {r.label} "
            + (f"K={r.scan_paths}" if r.scan_paths else f"{r.input} ({r.tokens} tokens)")
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

    parser = _Parser(prog="zigma", description="Zigzag-Mamba diffusion models.")
    parser.add_argument("--version", action="version", version=f"zigma {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list the model presets with sizes and parameter counts")
    p.add_argument(
        "--size",
        type=_int_arg(4, 1024),
        default=32,
        help="input height = width, a multiple of 4 up to 1024 (default 32)",
    )
    p.add_argument(
        "--channels", type=_int_arg(1, 4096), default=4, help="input channels (default 4)"
    )
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
    p.add_argument("--batch", type=_int_arg(1, 4096), default=2, help="batch of the forward pass")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("scans", help="print or draw scan orders")
    p.add_argument(
        "--kind",
        default="zigzag",
        help="sweep, zigzag, hilbert, random, sweep3d or zigzag3d (default zigzag)",
    )
    p.add_argument("--size", type=_int_arg(1), default=8, help="grid height in tokens (default 8)")
    p.add_argument("--width", type=_int_arg(1), default=None, help="grid width (default: = --size)")
    p.add_argument("--frames", type=_int_arg(1), default=1, help="frames, for the 3d kinds")
    p.add_argument(
        "--num", type=_int_arg(1), default=None, help="number of orders (default per kind)"
    )
    p.add_argument("--seed", type=_SEED, default=0, help="seed of the random kind")
    p.add_argument(
        "--plot", metavar="FILE.png", help="draw the orders to a PNG (replaces an existing file)"
    )
    p.add_argument("--print", action="store_true", help="print each order as token indices")
    p.set_defaults(func=cmd_scans)
    p = sub.add_parser(
        "sample", help="draw samples from a trained model to PNG (video models: GIF, MP4)"
    )
    p.add_argument(
        "--ckpt",
        required=True,
        help="a run folder, a checkpoint folder or an exported model folder",
    )
    p.add_argument(
        "--out",
        metavar="FILE.png",
        help="write a grid of all samples (replaces an existing file); for a video model one "
        "row per sample, one column per frame",
    )
    p.add_argument(
        "--vae",
        metavar="DIR",
        help="a latent model: where its autoencoder is now, if moved (the weights hash the run "
        "recorded is checked)",
    )
    p.add_argument(
        "--out-dir",
        metavar="DIR",
        help="also write one PNG per sample, 000000.png ... (a video model: one looping GIF, "
        "000000.gif ...); the folder must be empty or new",
    )
    p.add_argument(
        "--mp4",
        action="store_true",
        help="a video model: also write 000000.mp4 ... into --out-dir (needs pip install "
        "'zigma[video]')",
    )
    p.add_argument(
        "--fps",
        type=_finite_float(0.0),
        default=None,
        help="a video model: frames a second of the GIFs and MP4s (default 8)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="let --out-dir be a folder that is not empty (same-numbered files are replaced)",
    )
    p.add_argument(
        "--scale",
        type=_int_arg(1, 16),
        default=None,
        help="enlarge the grid's images (and a video model's GIFs and MP4s) N times (nearest); "
        "default: to at least 64 px",
    )
    p.add_argument(
        "--num",
        type=_int_arg(1),
        default=None,
        help="number of samples (default 64); with prompts, samples per prompt (default 8)",
    )
    p.add_argument("--seed", type=_SEED, default=0, help="seed; same seed, same images")
    p.add_argument(
        "--sampler",
        default="heun",
        help="euler, heun, dopri5, sde-euler or sde-heun (default heun)",
    )
    p.add_argument("--steps", type=_int_arg(1), default=50, help="sampling steps (default 50)")
    p.add_argument(
        "--cfg", type=_finite_float(0.0), default=1.0, help="classifier-free guidance scale"
    )
    p.add_argument(
        "--class",
        dest="class_label",
        type=_int_arg(0),
        default=None,
        help="sample this class only (default: classes in turn)",
    )
    p.add_argument(
        "--nrow",
        type=_int_arg(1),
        default=None,
        help="images per grid row (not for video models: one row per sample)",
    )
    p.add_argument(
        "--prompt",
        action="append",
        metavar="TEXT",
        help="a text model's prompt (repeatable): one grid row per prompt",
    )
    p.add_argument(
        "--prompts-file", metavar="FILE", help="prompts, one per line (# comments skipped)"
    )
    p.add_argument(
        "--text-encoder",
        metavar="DIR",
        help="where the model's text encoder is now (default: the one recorded at training)",
    )
    p.add_argument(
        "--attn-maps",
        metavar="DIR",
        help="also write per-word cross-attention heat maps over each sample to DIR",
    )
    p.add_argument("--batch-size", type=_int_arg(1), default=64, help="samples per model call")
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
    p = sub.add_parser(
        "attributes",
        help="score a scenes text model: do samples show the colour, kind and cell prompted?",
        description="Draws --num single-object prompts, samples them at each --cfg scale and "
        "with the null text (an unconditional baseline), and scores the samples with a "
        "classifier trained on the scene generator's own renders.",
    )
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint or exported model")
    p.add_argument("--num", type=_int_arg(1), default=200, help="prompts (default 200)")
    p.add_argument("--cfg", default="1,3", help="guidance scales, comma-separated (default 1,3)")
    p.add_argument("--steps", type=_int_arg(1), default=25, help="sampling steps (default 25)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--batch-size", type=_int_arg(1), default=64)
    p.add_argument("--classifier", metavar="DIR", help="a saved classifier (default: train one)")
    p.add_argument("--text-encoder", metavar="DIR", help="where the model's encoder is now")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", metavar="FILE.json", help="also write the table as JSON")
    p.set_defaults(func=cmd_attributes)
    p = sub.add_parser(
        "eval-classifier",
        help="train a domain classifier (FD-<data>-classifier, FVD-proxy-<data> features)",
        description="Trains the small domain classifier of a dataset on its train split with a "
        "fixed seed (CPU, minutes; the same seed and thread count give the same weights), "
        "scores it on the test split and writes FILE.safetensors plus FILE.json (held-out "
        "accuracy, recipe, sha256). The shipped weights in zigma/evaluate/weights/ were made "
        "this way; mnist and moving-mnist need the MNIST files (--data-dir).",
    )
    p.add_argument(
        "--data",
        required=True,
        choices=(
            "shapes",
            "fashion-mnist",
            "mnist",
            "moving-shapes",
            "moving-fashion-mnist",
            "moving-mnist",
        ),
        help="the dataset",
    )
    p.add_argument("--out", required=True, metavar="FILE.safetensors", help="the weights file")
    p.add_argument("--steps", type=_int_arg(1), default=None, help="steps (default per dataset)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--batch-size", type=_int_arg(1), default=None, help="(64 images, 32 clips)")
    p.add_argument("--frames", type=_int_arg(2, 256), default=None, help="video clip length")
    p.add_argument("--data-dir", metavar="DIR", help="where the (Fashion-)MNIST IDX files are")
    p.add_argument("--threads", type=_int_arg(1, 1024), default=None, help="torch CPU threads")
    p.set_defaults(func=cmd_eval_classifier)
    p = sub.add_parser(
        "motion",
        help="score a video model: do sampled objects keep their identity and move smoothly?",
        description="Samples --num clips and compares their objects' frame-to-frame motion "
        "with the test clips of the run's data (or the data named by data.key=value): centre "
        "displacement (W1 to the data's), aligned identity, mass change, with two controls "
        "(the samples' frames shuffled in time, and mixed across clips).",
    )
    p.add_argument("--ckpt", required=True, help="run folder, checkpoint or exported model")
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="reference data fields")
    p.add_argument("--num", type=_int_arg(2), default=64, help="clips (default 64)")
    p.add_argument("--cfg", type=float, default=1.0, help="guidance scale (default 1)")
    p.add_argument("--steps", type=_int_arg(1), default=25, help="heun steps (default 25)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--batch-size", type=_int_arg(1), default=32)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", metavar="FILE.json", help="also write the table as JSON")
    p.set_defaults(func=cmd_motion)
    p = sub.add_parser(
        "eval",
        help="sample a model into resumable shards and score them: FID, KID, PRDC, domain FD "
        "(video: FVD-proxy, frame-FD), conditioning accuracy",
        description="Draws --num samples into resumable shards in --out (a killed eval "
        "continues; under torchrun each rank draws its shards, the same set for any world "
        "size), computes each --extractors' features per shard, and compares them with the "
        "real data (--ref NAME [data.key=value ...], features cached per data, split, "
        "extractor and N) or a statistics file (--ref FILE.npz). Every value is written to "
        "results.json with its protocol record. --samples DIR scores shards drawn elsewhere "
        "(the GPU draws, the CPU extracts).",
    )
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="reference data fields")
    p.add_argument("--ckpt", help="run folder, checkpoint or exported model")
    p.add_argument("--num", type=_int_arg(2), default=None, help="samples to draw")
    p.add_argument("--out", metavar="DIR", help="the samples folder (new, or the same eval's)")
    p.add_argument("--samples", metavar="DIR", help="score the shards of an earlier --out")
    p.add_argument(
        "--ref",
        metavar="DATA|FILE.npz",
        help="real data name or statistics file (default: the run's own data)",
    )
    p.add_argument(
        "--ref-split",
        choices=("train", "test"),
        default=None,
        help="the real split (default train, or the one the samples were scored against)",
    )
    p.add_argument("--num-real", type=_int_arg(2), default=None, help="real samples (= --num)")
    p.add_argument(
        "--cache",
        metavar="DIR",
        help="reference feature cache (default $ZIGMA_CACHE/eval or ~/.cache/zigma/eval)",
    )
    p.add_argument(
        "--metrics",
        default="fid,kid",
        help="comma-separated: fid, kid, prdc (on --extractors), fd-classifier (the domain "
        "classifier's FD-<data>-classifier), fvd-proxy and frame-fd (video: FD on the video "
        "classifier's clip features, FVD-proxy-<data>, and on its per-frame features, "
        "frame-FD-<data>), cond-acc (the classifier reads back the conditioning class) "
        "(default fid,kid)",
    )
    p.add_argument(
        "--extractors",
        default="inception",
        help="feature extractors of fid/kid/prdc (default inception), e.g. "
        "inception-fp16:FILE, dinov2:DIR",
    )
    p.add_argument("--sampler", default="heun", help="euler, heun, dopri5, sde-euler, sde-heun")
    p.add_argument("--steps", type=_int_arg(1), default=50, help="sampling steps (default 50)")
    p.add_argument("--cfg", type=_finite_float(0.0), default=1.0, help="guidance scale")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--batch-size", type=_int_arg(1), default=64)
    p.add_argument("--shard-size", type=_int_arg(1), default=1000, help="samples per shard")
    p.add_argument(
        "--max-shards",
        type=_int_arg(0),
        default=None,
        help="stop after drawing this many new shards (continue later)",
    )
    p.add_argument("--sample-only", action="store_true", help="draw the shards, score nothing")
    p.add_argument(
        "--baseline",
        choices=["real", "noise"],
        help="score a stand-in instead of a model (with --ref NAME, --num, --out): real images "
        "(video data: clips) of --baseline-split (the floor) or uniform noise (the ceiling)",
    )
    p.add_argument(
        "--baseline-split",
        choices=["train", "test"],
        default="test",
        help="the split --baseline real takes its images from (default test; --ref-split is "
        "the reference's, default train)",
    )
    p.add_argument("--export-npz", metavar="FILE", help="also write the ADM-format .npz")
    p.add_argument("--json", metavar="FILE", help="results JSON (default DIR/results.json)")
    p.add_argument("--vae", metavar="DIR", help="a latent model's autoencoder, if moved")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "text-cache",
        help="encode a run's captions once into a text-feature folder (text.cache=DIR)",
        description="Encodes every caption the run's dataset can draw (all paraphrases of "
        "every item) and its preview prompts with the text encoder, into safetensors shards "
        "keyed by caption. A run with text.cache=DIR reads them instead of encoding, so it "
        "can train where the encoder is not installed.",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train config overrides")
    p.add_argument("--preset", help="training preset whose data to read")
    p.add_argument("--config", metavar="FILE", help="a train config (.yaml or .json)")
    p.add_argument(
        "--out", required=True, metavar="DIR", help="the cache folder (new or same encoder)"
    )
    p.add_argument(
        "--encoder", help="minilm or a local folder (default: the config's text.encoder)"
    )
    p.add_argument("--batch-size", type=_int_arg(1), default=256, help="captions per encoder call")
    p.set_defaults(func=cmd_text_cache)
    p = sub.add_parser(
        "train-vae",
        help="train zigma's own small KL autoencoder (ours, not the SD VAE) for latent diffusion",
        description="Trains a small KL autoencoder (f4 or f8, 4 latent channels) on a zigma "
        "dataset, fits its latent scale (1/std) and shift (mean) on training images, reports "
        "PSNR on held-out images and writes config.json + model.safetensors to --out.",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. model.channels=[32,64,64] data.data_dir=DIR",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new or empty)")
    p.add_argument("--data", default="shapes", help="dataset name (default shapes)")
    p.add_argument("--resolution", type=_int_arg(8, 4096), default=32, help="image side (32)")
    p.add_argument(
        "--num-samples", type=_int_arg(1), default=20_000, help="shapes / scenes items (20000)"
    )
    p.add_argument("--downsample", type=int, choices=(4, 8), default=4, help="f4 or f8 (4)")
    p.add_argument("--steps", type=_int_arg(1), default=1000, help="optimizer steps (1000)")
    p.add_argument("--batch-size", type=_int_arg(1), default=32, help="images per step (32)")
    p.add_argument("--lr", type=_finite_float(1e-12), default=2e-3, help="peak lr (2e-3)")
    p.add_argument("--kl-weight", type=_finite_float(0.0), default=1e-4, help="KL weight (1e-4)")
    p.add_argument("--seed", type=_SEED, default=0)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=cmd_train_vae)
    p = sub.add_parser(
        "prepare",
        help="encode a dataset into latent shards for latent diffusion (data.name=latents)",
        description="Encodes every image of a dataset with an autoencoder (--vae: ours from "
        "train-vae, or a local diffusers VAE) into safetensors shards plus index.json. "
        "Resumable: run the same command again after an interruption and finished shards are "
        "kept. Under torchrun (torchrun --nproc_per_node N -m zigma prepare ...) the ranks "
        "share the missing shards and rank 0 writes the index. Train on the folder with "
        "data.name=latents data.data_dir=DIR.",
    )
    p.add_argument("overrides", nargs="*", metavar="data.key=value", help="data config overrides")
    p.add_argument("--data", required=True, help="dataset name (shapes, scenes, folder, ...)")
    p.add_argument("--vae", required=True, metavar="DIR", help="the autoencoder folder")
    p.add_argument("--out", required=True, metavar="DIR", help="the latent folder")
    p.add_argument("--size", type=_int_arg(1, 4096), default=None, help="image side in pixels")
    p.add_argument("--flip", action="store_true", help="also store mirrored copies")
    p.add_argument("--shard-size", type=_int_arg(1), default=1024, help="items per shard (1024)")
    p.add_argument("--batch-size", type=_int_arg(1), default=32, help="images per encode (32)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    p.add_argument(
        "--max-shards",
        type=_int_arg(1),
        default=None,
        help="stop after this many new shards, per rank under torchrun (finish later by "
        "running the command again)",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.set_defaults(func=cmd_prepare)
    p = sub.add_parser("demo", help="train a small model on the embedded shapes, sample a grid")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train config overrides")
    p.add_argument(
        "--out", metavar="DIR", help="run folder, new or empty (default runs/demo-<time>)"
    )
    p.add_argument(
        "--steps", type=_int_arg(1), default=None, help="training steps (default: preset)"
    )
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser(
        "bench",
        help="time forward (and training) steps, peak memory and FLOPs vs token count",
        description="The token sweep (default) times every --models preset at every --tokens "
        "side (tokens = side^2 at patch 1); --study orders compares zigzag-K with K-direction "
        "parallel Mamba; --study video times video models on --frames x side x side clips "
        "(default: factorised ZigMa sst, 3-D zigzag, bidirectional Vim, factorised and full "
        "attention DiT, B/2, 16 frames of 32^2 and 64^2 latents). On CPU the models are shrunk "
        "(--tiny) and the sides are small.",
    )
    p.add_argument(
        "--models",
        help="comma-separated presets (default: the B/1 models); --study video takes "
        "preset:pattern, e.g. ZigMa-B/2:sst,Vim-B/2:v,DiT-B/2:st",
    )
    p.add_argument(
        "--tokens",
        help="comma-separated input sides (default 32,64,96,128,196; video 32,64; CPU: 8,16)",
    )
    p.add_argument("--batch", type=_int_arg(1), default=1)
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.add_argument("--train", action="store_true", help="also time forward+backward+AdamW")
    p.add_argument("--study", choices=("tokens", "orders", "video"), default="tokens")
    p.add_argument(
        "--frames", help="--study video: comma-separated frame counts (default 16; CPU: 4)"
    )
    p.add_argument("--orders", default="1,2,4,8", help="K values of the order study")
    p.add_argument(
        "--repeats", type=_int_arg(1), default=None, help="timed runs (default 20; CPU 3)"
    )
    p.add_argument(
        "--warmup", type=_int_arg(0), default=None, help="untimed runs (default 5; CPU 1)"
    )
    p.add_argument(
        "--out",
        default="bench",
        metavar="DIR",
        help="output folder (default bench); its bench.csv, bench.json and plots are replaced",
    )
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
    p.add_argument("--width", type=_int_arg(1, 65536), default=None, help="override hidden_size")
    p.add_argument("--depth", type=_int_arg(1, 4096), default=None, help="override depth")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    import errno

    from zigma.artifacts import describe_os_error

    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
    except SystemExit as e:  # --help, --version, or an argument error already printed
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    if unknown:  # named after the command, like every other error of its arguments
        print(
            f"zigma {args.command}: error: unrecognized arguments: {one_line(' '.join(unknown))}",
            file=sys.stderr,
        )
        return EXIT_USAGE

    def fail(message: object, code: int) -> int:
        print(f"zigma {args.command}: error: {one_line(message)}", file=sys.stderr)
        return code

    def warn(message, category, filename, lineno, file=None, line=None) -> None:
        # a warning is one line, like an error (not Python's file:line + source line)
        print(f"zigma {args.command}: warning: {one_line(message)}", file=sys.stderr)

    shown = warnings.showwarning
    warnings.showwarning = warn
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
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":
    raise SystemExit(main())
