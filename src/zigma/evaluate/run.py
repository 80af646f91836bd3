"""The ``zigma eval`` engine: sample shards -> features -> metrics with their protocol records.

Samples. ``generate_shards`` draws ``num`` samples of a trained model into a folder of shards:
shard ``k`` holds samples ``[k * S, (k + 1) * S)`` as uint8 (the PNG conversion of
``zigma sample``: ``((x + 1) * 127.5).round().clamp(0, 255)``), images [S, C, H, W] or videos
[S, C, T, H, W], with their class labels when the model is class-conditional (labels go
round the classes by global sample index, so every class gets the same share). The noise of
shard ``k`` is a function of ``(seed, k)`` alone (``shard_seed``), so any number of ranks
produces the same set; under torchrun rank ``r`` draws the shards ``k % world == r``. A latent
model's shards hold its *decoded* samples; they are compared with real images, never with
autoencoder reconstructions.

Resuming rests on the same three rules as ``zigma prepare``: ``eval.json`` (the sampling
settings and the model's weights digest) is written first and refuses a rerun with other
settings in the same folder; each shard is written under a temp name and renamed, so a shard
under its own name is complete and is kept; nothing else is needed to continue.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from zigma.artifacts import atomic_write, read_json_object, remove_temp_files, write_text_atomic
from zigma.config import to_dict
from zigma.evaluate.sampling import LoadedModel
from zigma.generate import generate, grid_conditions
from zigma.transport import SAMPLERS, take_rows

MANIFEST_NAME = "eval.json"
FORMAT = "zigma-eval-samples"
VERSION = 1
CONVERSION = "uint8 = round((clamp(x, -1, 1) + 1) * 127.5): the PNG conversion of zigma sample"
# spawn-key prefix of the shard seeds: keeps them apart from generate's per-sample SDE streams,
# which mix (seed, index) through the same SeedSequence
_SHARD_STREAM = 0x5A16E7A1
_ROWS_KEY = "model_rows"  # a shard's metadata: rows the model was called on to draw it


def shard_name(k: int) -> str:
    return f"samples_{k:06d}.safetensors"


def shard_seed(seed: int, k: int) -> int:
    """The noise seed of shard ``k``: numpy's SeedSequence mixes (seed, k), so no two shards
    (and no shard and a plain ``zigma sample`` seed) share noise by accident."""
    ss = np.random.SeedSequence(seed % 2**64, spawn_key=(_SHARD_STREAM, k))
    return int(ss.generate_state(1, np.uint64)[0] >> np.uint64(1))  # 63 bits: torch's range


def to_uint8(samples: torch.Tensor) -> torch.Tensor:
    """Samples in [-1, 1] -> uint8, exactly as ``zigma sample`` writes its PNGs."""
    return ((samples.float().clamp(-1, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the model's state (names, dtypes, shapes, bytes): which weights drew a set."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class SampleSettings:
    """How a folder of sample shards is drawn (everything that changes its bytes, except the
    batch size and device, which change them only by rounding: see ``zigma.generate``)."""

    num: int
    seed: int = 0
    sampler: str = "heun"
    steps: int = 50
    cfg: float = 1.0
    shard_size: int = 1000

    def __post_init__(self) -> None:
        if self.num < 1 or self.shard_size < 1 or self.steps < 1:
            raise ValueError(
                f"num, shard_size and steps must be >= 1, got {self.num}, {self.shard_size}, "
                f"{self.steps}"
            )
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in 0..2**63-1, got {self.seed}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {self.sampler!r}")
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise ValueError(f"cfg (the guidance scale) must be >= 0, got {self.cfg}")

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num / self.shard_size)

    def span(self, k: int) -> range:
        """The global sample indices of shard ``k``."""
        return range(k * self.shard_size, min((k + 1) * self.shard_size, self.num))


def sample_manifest(
    loaded: LoadedModel, settings: SampleSettings, decoder: dict | None = None
) -> dict[str, Any]:
    """What ``eval.json`` records: the settings, the model (weights digest, config,
    transport), the autoencoder that decodes a latent model (its path left out: a moved
    copy is the same one) and the uint8 conversion."""
    model = loaded.model
    cfg = model.config
    video = len(cfg.input_size) == 3
    return {
        "format": FORMAT,
        "version": VERSION,
        "settings": to_dict(settings),
        "model": {
            "weights_sha256": weights_digest(model),
            "config": to_dict(cfg),
            "transport": to_dict(loaded.transport),
            "conditions": sorted(model.condition_names),
        },
        "decoder": {k: v for k, v in decoder.items() if k != "path"} if decoder else None,
        "conversion": CONVERSION,
        "source": str(loaded.source),  # informative: a moved copy is the same model
        "layout": "uint8 [N, C, T, H, W]" if video else "uint8 [N, C, H, W]",
    }


def check_samples_folder(out: Path, manifest: dict[str, Any]) -> bool:
    """Whether ``out`` may receive ``manifest``'s shards; True when it already holds some.

    Raises:
        ValueError: ``out`` holds samples of other settings or another model, or files that
            are not zigma eval's (nothing is touched).
        NotADirectoryError: ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"the samples folder {out} is a file, not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return False
    if not (out / MANIFEST_NAME).is_file():
        raise ValueError(
            f"{out} holds files that are not zigma eval's samples; choose a new or empty folder"
        )
    old = read_json_object(out / MANIFEST_NAME, "eval samples manifest")
    diff = _differences({**old, "source": None}, {**manifest, "source": None})
    if diff:
        raise ValueError(
            f"{out} holds samples drawn with other settings (they differ in "
            f"{', '.join(diff[:4])}); choose another folder, or delete {out} to draw anew"
        )
    return True


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON trees differ (with both values for scalars)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    if old == new:
        return []
    key = prefix.rstrip(".")
    if isinstance(new, (dict, list)) or isinstance(old, (dict, list)):
        return [key]
    return [f"{key} ({_short(old)} there, {_short(new)} now)"]


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 24 else text[:12] + "..."


def _world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    rank, world_size = rank or 0, world_size or 1
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    return rank, world_size


def _barrier(world: int) -> None:
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass
class ShardSummary:
    """What ``generate_shards`` did on this rank."""

    out: Path
    num: int
    num_shards: int
    written: int  # shards drawn now by this rank
    kept: int  # this rank's shards already there
    finished: bool  # every shard of the folder is there (as seen by this rank at the end)
    seconds: float


def generate_shards(
    loaded: LoadedModel,
    out_dir: str | os.PathLike,
    num: int,
    *,
    seed: int = 0,
    sampler: str = "heun",
    steps: int = 50,
    cfg: float = 1.0,
    shard_size: int = 1000,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    rank: int | None = None,
    world_size: int | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    autocast: torch.dtype | None = None,
    max_shards: int | None = None,
    on_shard: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> ShardSummary:
    """Draw ``num`` samples of ``loaded`` into the shards of ``out_dir`` (module notes).

    Args:
        loaded: the model and its transport (``load_for_sampling``).
        cfg: the classifier-free guidance scale (1: none).
        batch_size: samples per model call; shards are drawn ``batch_size`` at a time.
        rank, world_size: this process's share (shards ``k % world_size == rank``); by default
            those of the initialised process group, else (0, 1).
        decode: a latent model's decoder, latents -> images in [-1, 1] (required then; its
            spec is ``loaded.autoencoder``, recorded in the manifest).
        max_shards: stop after drawing this many new shards (run again to continue).
        on_shard: called with (k, the shard's uint8 samples) after shard k is written (e.g.
            to compute its features while it is in memory).

    Raises:
        ValueError: bad settings, a latent model without ``decode`` (or a pixel model with
            one), a folder of other settings or another model: before any sampling.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    settings = SampleSettings(num, seed, sampler, steps, float(cfg), shard_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_shards is not None and max_shards < 0:
        raise ValueError(f"max_shards must be >= 0, got {max_shards}")
    latent = loaded.autoencoder is not None
    if latent != (decode is not None):
        raise ValueError(
            f"{loaded.source} is a latent model: pass decode (its autoencoder)"
            if latent
            else f"{loaded.source} draws pixels: it takes no decoder"
        )
    model = loaded.model
    if cfg != 1.0 and not model.condition_names:
        raise ValueError(f"cfg {cfg}: guidance needs a conditional model")
    rank, world = _world(rank, world_size)
    manifest = sample_manifest(loaded, settings, loaded.autoencoder)
    resuming = check_samples_folder(out, manifest)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        if world == 1 or dist.is_initialized():  # no other rank can be writing yet
            remove_temp_files(out)
        if not resuming:
            text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
            write_text_atomic(out / MANIFEST_NAME, text)
    _barrier(world)

    mine = [k for k in range(settings.num_shards) if k % world == rank]
    missing = [k for k in mine if not (out / shard_name(k)).is_file()]
    todo = missing if max_shards is None else missing[:max_shards]
    conditional = "y" in model.condition_names
    with tqdm(
        total=sum(len(settings.span(k)) for k in todo),
        unit="sample",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for k in todo:
            span = settings.span(k)
            # conditions of the global indices: classes go round by sample index
            every = grid_conditions(model, span.stop)
            cond = {name: take_rows(v, span.start, span.stop) for name, v in every.items()}
            with _RowCounter(model) as calls:  # model rows per sample: the NFE, CFG included
                x = generate(
                    model, loaded.transport, len(span), cond=cond, seed=shard_seed(seed, k),
                    sampler=sampler, steps=steps, guidance_scale=cfg, batch_size=batch_size,
                    device=device, autocast=autocast, output=decode if latent else _clamp,
                )  # fmt: skip
            tensors = {"samples": to_uint8(x).contiguous()}
            if conditional:
                tensors["labels"] = cond["y"].to(torch.int64).contiguous()
            # one metadata key: safetensors writes several in a random order, and a shard's
            # bytes must not depend on the run that wrote it
            meta = {_ROWS_KEY: str(calls.rows)}
            atomic_write(out / shard_name(k), lambda tmp, t=tensors, m=meta: save_file(t, tmp, m))
            if on_shard is not None:
                on_shard(k, tensors["samples"])
            bar.update(len(span))
    _barrier(world)
    finished = all((out / shard_name(k)).is_file() for k in range(settings.num_shards))
    return ShardSummary(
        out=out, num=num, num_shards=settings.num_shards, written=len(todo),
        kept=len(mine) - len(missing), finished=finished, seconds=time.perf_counter() - start,
    )  # fmt: skip


def _clamp(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-1, 1)


class _RowCounter:
    """Counts the rows of every call of ``model`` (a guided call of B samples has 2B)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.rows, self._hook = model, 0, None

    def _count(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs["x"]
        self.rows += int(x.shape[0])

    def __enter__(self) -> _RowCounter:
        self._hook = self.model.register_forward_pre_hook(self._count, with_kwargs=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hook.remove()


BASELINES = ("real", "noise")


def write_baseline_shards(
    out_dir: str | os.PathLike,
    kind: str,
    data: Any,
    num: int,
    *,
    split: str = "test",
    seed: int = 0,
    shard_size: int = 1000,
) -> ShardSummary:
    """Shards of a stand-in "model" that bounds every metric, in the layout of
    ``generate_shards``, so ``compute_metrics`` scores them like samples:

    - ``"real"``: the first ``num`` real images of ``data``'s ``split`` with their labels (the
      floor: with the reference on the other split, this is the value a perfect model gets
      at this sample count);
    - ``"noise"``: uniform random uint8 images of the data's shape, seeded by ``seed`` (the
      ceiling: what an untrained model's pictures are close to).

    Resumable and checked like ``generate_shards`` (``eval.json`` first, shards renamed into
    place, another baseline or data in the folder refused).

    Raises:
        ValueError: an unknown kind, a latent folder or too few real items, a folder of other
            samples: before anything is written.
    """
    from zigma.data import SeededItems, build_dataset

    if kind not in BASELINES:
        raise ValueError(f"baseline must be one of {list(BASELINES)}, got {kind!r}")
    start = time.perf_counter()
    out = Path(out_dir)
    # the sampler fields are placeholders: no sampler runs; compute_metrics reports None
    settings = SampleSettings(num, seed, "euler", 1, 1.0, shard_size)
    if data.name == "latents":
        raise ValueError("baselines are real images: name the image dataset, not latents")
    dataset = build_dataset(data, split)
    if kind == "real" and len(dataset) < num:
        raise ValueError(
            f"the {split} split of {data_spec(data)} has {len(dataset)} items, fewer than {num}"
        )
    items = SeededItems(dataset, data.seed, 0)
    first = items[0]["image"]
    labelled = kind == "real" and int(items[0].get("label", -1)) >= 0
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "settings": to_dict(settings),
        "baseline": {
            "kind": kind,
            "data": to_dict(data),
            "split": split if kind == "real" else None,
        },
        "model": {
            "weights_sha256": None,
            "config": {"input_size": list(first.shape[1:]), "in_channels": int(first.shape[0])},
            "conditions": ["y"] if labelled else [],
        },
        "decoder": None,
        "conversion": CONVERSION,
        "source": f"baseline:{kind}",
        "layout": "uint8 [N, C, T, H, W]" if first.ndim == 4 else "uint8 [N, C, H, W]",
    }
    resuming = check_samples_folder(out, manifest)
    out.mkdir(parents=True, exist_ok=True)
    remove_temp_files(out)
    if not resuming:
        write_text_atomic(
            out / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        )
    missing = [k for k in range(settings.num_shards) if not (out / shard_name(k)).is_file()]
    for k in missing:
        span = settings.span(k)
        if kind == "real":
            rows = [items[i] for i in span]
            tensors = {"samples": to_uint8(torch.stack([r["image"] for r in rows]))}
            if labelled:
                tensors["labels"] = torch.tensor([int(r["label"]) for r in rows])
        else:
            gen = torch.Generator().manual_seed(shard_seed(seed, k))
            shape = (len(span), *first.shape)
            tensors = {"samples": torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)}
        atomic_write(out / shard_name(k), lambda tmp, t=tensors: save_file(t, tmp))
    return ShardSummary(
        out=out, num=num, num_shards=settings.num_shards, written=len(missing),
        kept=settings.num_shards - len(missing), finished=True,
        seconds=time.perf_counter() - start,
    )  # fmt: skip


def read_manifest(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``eval.json`` of a samples folder.

    Raises:
        FileNotFoundError: no samples folder or no manifest there.
        ValueError: not zigma eval's manifest.
    """
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no zigma eval samples in {folder} (no {path.name} there)")
    data = read_json_object(path, "eval samples manifest")
    if data.get("format") != FORMAT or not isinstance(data.get("settings"), dict):
        raise ValueError(f"{path} is not a zigma eval samples manifest")
    if data.get("version") != VERSION:
        raise ValueError(f"{path} is version {data.get('version')}; this zigma reads {VERSION}")
    return data


def folder_settings(folder: str | os.PathLike) -> SampleSettings:
    """The ``SampleSettings`` a samples folder was drawn with."""
    try:
        return SampleSettings(**read_manifest(folder)["settings"])
    except TypeError as e:
        raise ValueError(f"{Path(folder) / MANIFEST_NAME}: bad settings: {e}") from None


def missing_shards(folder: str | os.PathLike) -> list[int]:
    """The shards of a samples folder that are not drawn yet."""
    s = folder_settings(folder)
    return [k for k in range(s.num_shards) if not (Path(folder) / shard_name(k)).is_file()]


def read_shard(folder: str | os.PathLike, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(uint8 samples, int64 labels or None) of shard ``k``, checked against the manifest."""
    folder = Path(folder)
    s = folder_settings(folder)
    if not 0 <= k < s.num_shards:
        raise ValueError(f"{folder} has shards 0..{s.num_shards - 1}, not {k}")
    path = folder / shard_name(k)
    if not path.is_file():
        raise FileNotFoundError(f"shard {path} is missing: run the same eval again to draw it")
    try:
        with safe_open(path, "pt") as f:
            names = set(f.keys())
            samples = f.get_tensor("samples")
            labels = f.get_tensor("labels") if "labels" in names else None
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise ValueError(f"shard {path} is unreadable: {e}") from None
    n = len(s.span(k))
    if samples.dtype != torch.uint8 or samples.ndim not in (4, 5) or len(samples) != n:
        raise ValueError(f"shard {path} does not hold {n} uint8 samples")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"shard {path}: labels of shape {tuple(labels.shape)}, not ({n},)")
    return samples, labels


def iter_shards(
    folder: str | os.PathLike, shards: Sequence[int] | None = None
):  # -> Iterator[tuple[int, Tensor, Tensor | None]]
    """(k, samples, labels) of each shard in order: one shard in memory at a time."""
    ks = range(folder_settings(folder).num_shards) if shards is None else shards
    for k in ks:
        yield (k, *read_shard(folder, k))


def measured_nfe(folder: str | os.PathLike) -> float | None:
    """Model rows per sample over the shards there (the NFE, guidance's doubling included),
    or None when no shard records it."""
    rows = count = 0
    folder = Path(folder)
    s = folder_settings(folder)
    for k in range(s.num_shards):
        path = folder / shard_name(k)
        if not path.is_file():
            continue
        with safe_open(path, "pt") as f:
            value = (f.metadata() or {}).get(_ROWS_KEY)
        if value is not None:
            rows, count = rows + int(value), count + len(s.span(k))
    return rows / count if count else None


# ---------------------------------------------------------------- features


def extractor_tag(extractor: Any) -> str:
    """A file-name-safe key of an extractor: its name and a hash of its whole ``describe()``
    (weights sha256, resize, ...), so another variant never reads these features."""
    info = extractor.describe()
    digest = hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(info["name"]))[:60]
    return f"{name}-{digest}"


def features_name(k: int, extractor: Any) -> str:
    """The feature file of shard ``k``, beside it in the samples folder."""
    return f"samples_{k:06d}.{extractor_tag(extractor)}.safetensors"


def check_modality(extractor: Any, video: bool) -> None:
    """Raise ``ValueError`` unless ``extractor`` reads what the samples are (images, clips)."""
    want = "video" if video else "image"
    got = extractor.describe()["modality"]
    if got != want:
        raise ValueError(
            f"extractor {extractor.describe()['name']} reads {got}s, the samples are "
            f"{want}s; choose a{'' if want == 'video' else 'n'} {want} extractor"
        )


def rows_per_item(extractor: Any, shape: Sequence[int]) -> int:
    """Feature rows ``extractor`` gives per sample of ``shape`` ((C, H, W) or (C, T, H, W)):
    T for a per-frame extractor of clips (``rows_per_frame``: every frame is one sample of
    the statistic, e.g. frame-FD), else 1."""
    return int(shape[1]) if getattr(extractor, "rows_per_frame", False) and len(shape) == 4 else 1


def extract(extractor: Any, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """float32 [rows, dim] CPU features of uint8 images (or clips), ``batch_size`` at a time:
    one row per item, or per frame of every clip for a per-frame extractor (clip-major).

    Raises:
        ValueError: the extractor returned another shape or non-finite values.
    """
    info = extractor.describe()
    per = rows_per_item(extractor, images.shape[1:])
    parts = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = images[lo : lo + batch_size]
            f = extractor(chunk).float().cpu()
            rows = len(chunk) * per
            if f.shape != (rows, info["dim"]) or not bool(torch.isfinite(f).all()):
                raise ValueError(
                    f"extractor {info['name']} returned {tuple(f.shape)} features (finite: "
                    f"{bool(torch.isfinite(f).all())}) for {len(chunk)} inputs; expected "
                    f"({rows}, {info['dim']}), finite"
                )
            parts.append(f)
    return torch.cat(parts)


def write_shard_features(
    folder: str | os.PathLike, k: int, samples: torch.Tensor, extractor: Any, batch_size: int = 64
) -> torch.Tensor:
    """Features of shard ``k``'s ``samples``, written beside it (atomically) and returned."""
    feats = extract(extractor, samples, batch_size).contiguous()
    path = Path(folder) / features_name(k, extractor)
    meta = {"extractor": json.dumps(extractor.describe(), sort_keys=True)}
    atomic_write(path, lambda tmp: save_file({"features": feats}, tmp, meta))
    return feats


def shard_features(
    folder: str | os.PathLike,
    extractor: Any,
    *,
    shards: Sequence[int] | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> torch.Tensor:
    """float32 [N, dim] features of the samples in ``folder`` (shard order; a per-frame
    extractor of clips: [N * T, dim], clip-major), read from the files beside the shards, and
    computed and written there for shards that lack them (a resumed eval computes each
    shard's features once).

    Raises:
        FileNotFoundError: a shard is missing (the samples are not finished).
        ValueError: the extractor reads other samples (images vs clips); a corrupt file.
    """
    folder = Path(folder)
    s = folder_settings(folder)
    manifest = read_manifest(folder)
    check_modality(extractor, manifest["layout"].endswith("T, H, W]"))
    per = rows_per_item(extractor, sample_shape(manifest))
    ks = list(range(s.num_shards)) if shards is None else list(shards)
    parts = []
    for k in tqdm(ks, unit="shard", disable=not progress, dynamic_ncols=True):
        path = folder / features_name(k, extractor)
        if path.is_file():
            try:
                with safe_open(path, "pt") as f:
                    feats = f.get_tensor("features")
            except Exception as e:  # safetensors' own error types
                raise ValueError(f"feature file {path} is unreadable: {e}") from None
            if feats.shape != (len(s.span(k)) * per, extractor.describe()["dim"]):
                raise ValueError(f"feature file {path} does not fit its shard; delete it")
        else:
            samples, _ = read_shard(folder, k)
            feats = write_shard_features(folder, k, samples, extractor, batch_size)
        parts.append(feats)
    return torch.cat(parts)


# ---------------------------------------------------------------- reference statistics

REFERENCE_FORMAT = "zigma-eval-reference"


def cache_dir() -> Path:
    """Where reference features are cached: ``$ZIGMA_CACHE/eval``, else
    ``~/.cache/zigma/eval``."""
    root = os.environ.get("ZIGMA_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "zigma"
    return base / "eval"


def data_spec(data: Any) -> str:
    """A short text of a data config: its name and the fields set away from the defaults."""
    default = type(data)()
    changed = [
        f"{f.name}={getattr(data, f.name)}"
        for f in dataclasses.fields(data)
        if f.name != "name" and getattr(data, f.name) != getattr(default, f.name)
    ]
    return " ".join([data.name, *changed])


def reference_meta(data: Any, split: str, extractor: Any, num: int) -> dict[str, Any]:
    """What a reference feature file is a function of: the cache key. ``num`` counts items
    (images, clips); a per-frame extractor's file holds ``rows_per_item`` (the clips' T) rows
    per clip, so its key never meets that of the clip features of the same data."""
    fields = to_dict(data)
    # the same images, the same key: channels=None is the data's own count, and holding the
    # data in memory (cache) changes no pixel
    fields.pop("cache", None)
    if fields.get("channels") is None and hasattr(data, "resolved_channels"):
        fields["channels"] = data.resolved_channels
    meta = {
        "format": REFERENCE_FORMAT,
        "version": VERSION,
        "data": fields,
        "split": split,
        "num": num,
        "extractor": extractor.describe(),
        "conversion": CONVERSION,
    }
    if getattr(extractor, "rows_per_frame", False) and getattr(data, "is_video", False):
        meta["rows_per_item"] = int(data.frames)
    return meta


def reference_path(meta: dict[str, Any], folder: str | os.PathLike | None = None) -> Path:
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{meta['data']['name']}-{meta['split']}-n{meta['num']}-{key}.npz"
    return Path(folder if folder is not None else cache_dir()) / name


def real_images(data: Any, split: str, num: int) -> Any:
    """The first ``num`` real items of ``data``'s ``split`` as uint8 batches (an iterator of
    (lo, uint8 tensor) of at most 256 items), read with the items' seeded transforms as
    ``zigma prepare`` reads them.

    Raises:
        ValueError: a latent folder (real images are compared, never latents or autoencoder
            reconstructions) or fewer than ``num`` items.
    """
    from zigma.data import SeededItems, build_dataset

    if data.name == "latents":
        raise ValueError(
            "the reference must be real images, not latents: name the image dataset the "
            "latents were made from (e.g. --ref shapes data.resolution=...)"
        )
    dataset = build_dataset(data, split)
    if len(dataset) < num:
        raise ValueError(
            f"the {split} split of {data_spec(data)} has {len(dataset)} items, fewer than the "
            f"{num} real samples asked for"
        )
    items = SeededItems(dataset, data.seed, 0)

    def batches():
        for lo in range(0, num, 256):
            chunk = [items[i]["image"] for i in range(lo, min(lo + 256, num))]
            yield lo, to_uint8(torch.stack(chunk))

    return batches()


def reference_features(
    data: Any,
    extractor: Any,
    num: int,
    *,
    split: str = "train",
    folder: str | os.PathLike | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[torch.Tensor, Path, bool]:
    """(features [num, dim], the cache file, whether it was a cache hit) of the first ``num``
    real items of ``data``'s ``split``, converted to uint8 like the samples (a per-frame
    extractor of clips: [num * T, dim], every frame of the ``num`` clips).

    The file (in ``folder``, default ``cache_dir()``) is keyed by the data config, the split,
    ``num`` and the extractor's whole ``describe()`` (name, sha256, resize, ...): computed
    once, read back after.

    Raises:
        ValueError: see ``real_images``; a cache file that does not hold what its name says.
    """
    meta = reference_meta(data, split, extractor, num)
    path = reference_path(meta, folder)
    if path.is_file():
        return load_reference(path, extractor, num=num, expect=meta), path, True
    parts = []
    with tqdm(total=num, unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for _, images in real_images(data, split, num):
            if not parts:
                check_modality(extractor, images.ndim == 5)
            parts.append(extract(extractor, images, batch_size))
            bar.update(len(images))
    feats = torch.cat(parts)
    save_reference(path, feats, meta)
    return feats, path, False


def save_reference(path: str | os.PathLike, features: torch.Tensor, meta: dict[str, Any]) -> Path:
    """Write reference features as ``.npz``: ``features`` float32 [N, dim] and ``meta`` (the
    JSON of ``reference_meta``), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"features": features.float().numpy(), "meta": np.array(json.dumps(meta))}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez adds no ".npz" to the name
            np.savez(f, **arrays)

    return atomic_write(path, write)


def load_reference(
    path: str | os.PathLike,
    extractor: Any,
    *,
    num: int | None = None,
    expect: dict[str, Any] | None = None,
) -> torch.Tensor:
    """The features of a reference ``.npz`` (written by ``save_reference``, e.g. the cache),
    checked against ``extractor`` (name, sha256, resize...): those of its first ``num`` items
    (a per-frame extractor's: the ``num * T`` rows of its first ``num`` clips), or all.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a reference file, another extractor's, or fewer than ``num`` items.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference statistics {path} not found")
    meta = read_reference_meta(path)
    if expect is not None and _differences(meta, expect):
        raise ValueError(f"reference file {path} does not hold what its name says; delete it")
    theirs, ours = meta.get("extractor", {}), extractor.describe()
    if theirs != ours:
        diff = ", ".join(_differences(theirs, ours)[:3])
        raise ValueError(
            f"reference statistics {path} are features of {theirs.get('name')}, not of "
            f"{ours['name']} as loaded now ({diff}); compute them with this extractor"
        )
    with np.load(path, allow_pickle=False) as z:
        feats = torch.from_numpy(np.asarray(z["features"], dtype=np.float32))
    per = int(meta.get("rows_per_item", 1))
    if (
        feats.ndim != 2
        or feats.shape[1] != ours["dim"]
        or per < 1
        or len(feats) % per
        or not bool(torch.isfinite(feats).all())
    ):
        raise ValueError(f"reference statistics {path}: features {tuple(feats.shape)} are bad")
    if num is not None and len(feats) < num * per:
        raise ValueError(
            f"reference statistics {path} hold {len(feats) // per} items, fewer than {num}"
        )
    return feats if num is None else feats[: num * per]


def read_reference_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` record of a reference ``.npz``."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "features" not in z.files or "meta" not in z.files:
                raise ValueError(f"{path} is not a zigma eval reference file (no features/meta)")
            meta = json.loads(str(z["meta"]))
    except (OSError, ValueError, json.JSONDecodeError) as e:
        if isinstance(e, ValueError) and "zigma eval reference" in str(e):
            raise
        raise ValueError(f"{path} is not a readable reference .npz: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != REFERENCE_FORMAT:
        raise ValueError(f"{path} is not a zigma eval reference file")
    return meta


@dataclass
class Reference:
    """The real side of a comparison: the first ``num`` items of ``data``'s ``split`` (features
    cached in ``cache``, default ``cache_dir()``), or a reference ``.npz`` (``stats``) that
    ``save_reference`` wrote. ``num`` None takes as many real samples as there are fakes (a
    file: all its rows)."""

    data: Any = None  # a zigma.data.DataConfig
    split: str = "train"
    num: int | None = None
    stats: Path | None = None
    cache: Path | None = None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.stats is None):
            raise ValueError("a reference is either real data or a statistics file, not both")
        if self.split not in ("train", "test"):
            raise ValueError(f"the reference split must be train or test, got {self.split!r}")
        if self.num is not None and self.num < 2:
            raise ValueError(f"the reference needs at least 2 real samples, got {self.num}")

    def features(
        self, extractor: Any, num_fake: int, batch_size: int = 64, progress: bool = False
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(real features, a record of where they come from: spec, split, file, cache hit)."""
        if self.stats is not None:
            feats = load_reference(self.stats, extractor, num=self.num)
            meta = read_reference_meta(self.stats)
            data = meta.get("data") or {}
            spec = f"{self.stats.name}: {data.get('name', '?')}"
            split = str(meta.get("split", "?"))
            return feats, {"real": spec, "split": split, "file": str(self.stats), "hit": True}
        num = self.num if self.num is not None else num_fake
        feats, path, hit = reference_features(
            self.data, extractor, num, split=self.split, folder=self.cache,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        return feats, {"real": data_spec(self.data), "split": self.split, "file": str(path),
                       "hit": hit}  # fmt: skip

    def check(self, shape: Sequence[int], num_fake: int) -> None:
        """Raise ``ValueError`` (before any sampling) unless the real side can be compared
        with ``num_fake`` samples of ``shape`` (C, [T,] H, W): a readable statistics file, or
        real images (not latents) of the same channels, frames and size, with enough items."""
        if self.stats is not None:
            read_reference_meta(self.stats)
            return
        from zigma.data import build_dataset

        data = self.data
        if data.name == "latents":
            raise ValueError(
                "the reference must be real images, not latents: name the image dataset the "
                "latents were made from (e.g. --ref shapes data.resolution=...)"
            )
        frames = [data.frames] if data.is_video else []
        real = (data.resolved_channels, *frames, data.resolution, data.resolution)
        if real != tuple(shape):
            raise ValueError(
                f"the real data ({data_spec(data)}: {'x'.join(map(str, real))}) is not the "
                f"samples' shape {'x'.join(map(str, shape))}; set data.resolution, "
                "data.channels or data.frames to match"
            )
        num = self.num if self.num is not None else num_fake
        n = len(build_dataset(data, self.split))
        if n < num:
            raise ValueError(
                f"the {self.split} split of {data_spec(data)} has {n} items, fewer than the "
                f"{num} real samples asked for"
            )

    def data_record(self) -> dict[str, Any]:
        """The real data's config as a dict (a statistics file: the one it records, or {})."""
        if self.data is not None:
            return to_dict(self.data)
        return read_reference_meta(self.stats).get("data") or {}

    def describe(self) -> dict[str, Any]:
        if self.stats is not None:
            return {"stats": str(self.stats), "num": self.num}
        return {"data": to_dict(self.data), "split": self.split, "num": self.num}


# ---------------------------------------------------------------- metrics

# what `--metrics` takes: Fréchet / kernel distance and PRDC on each requested extractor, the
# Fréchet distance on the domain classifier of the data (video: fvd-proxy on its clip features,
# the same as fd-classifier there, and frame-fd on its per-frame features), and the
# conditioning accuracy
METRICS = ("fid", "kid", "prdc", "fd-classifier", "fvd-proxy", "frame-fd", "cond-acc")
VIDEO_METRICS = ("fvd-proxy", "frame-fd")
RESULTS_NAME = "results.json"


def compute_metrics(
    folder: str | os.PathLike,
    plan: Sequence[tuple[str, Any]],
    reference: Reference,
    *,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    prdc_k: int = 5,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Any]:
    """The metrics ``plan`` lists, as ``(metric, extractor)`` pairs with metric "fd", "kd" or
    "prdc", between the samples of ``folder`` and ``reference``: one ``Protocol`` record each
    (PRDC: four), value included. Each extractor's features are computed once (and cached).

    Raises:
        FileNotFoundError: the samples are not finished.
        ValueError: an unknown metric, an extractor for other samples, too few samples.
    """
    from zigma.evaluate.metrics import frechet_distance, kernel_distance, metric_label, prdc
    from zigma.evaluate.protocol import Protocol, source_commit

    folder = Path(folder)
    manifest = read_manifest(folder)
    s = folder_settings(folder)
    missing = missing_shards(folder)
    if missing:
        raise FileNotFoundError(
            f"{folder}: {len(missing)} of {s.num_shards} shards are not drawn yet (first: "
            f"{shard_name(missing[0])}); run the same eval again to finish them"
        )
    for metric, _ in plan:
        if metric not in ("fd", "kd", "prdc"):
            raise ValueError(f"unknown metric {metric!r}: expected fd, kd or prdc")
    video = manifest["layout"].endswith("T, H, W]")
    for _, extractor in plan:
        check_modality(extractor, video)
    nfe = measured_nfe(folder)
    drawn = manifest.get("baseline") is None  # a baseline's shards ran no sampler
    # video: frames per clip, the real clips' frame stride (1: consecutive frames, all the
    # procedural sets) and the number of generated clips, whatever the rows a metric reads
    frames = sample_shape(manifest)[1] if video else None
    stride = reference.data_record().get("frame_stride", 1) if video else None
    common = dict(
        seed=s.seed, sampler=s.sampler if drawn else None,
        steps=s.steps if drawn else None, guidance=s.cfg if drawn else None,
        nfe=None if nfe is None else int(round(nfe)), checkpoint=manifest.get("source"),
        frames=frames, stride=stride, clips=s.num if video else None, commit=source_commit(),
    )  # fmt: skip
    fake, real = {}, {}
    records = []
    for metric, extractor in plan:
        tag = extractor_tag(extractor)
        if tag not in fake:
            fake[tag] = shard_features(folder, extractor, batch_size=batch_size)
            real[tag] = reference.features(extractor, s.num, batch_size, progress)
        f, (r, where) = fake[tag], real[tag]
        name = extractor.describe()["name"]
        # rows of the statistic: items, or frames for a per-frame extractor (frame-FD)
        base = dict(
            common, extractor=extractor.describe(), num_fake=len(f), num_real=len(r),
            real=where["real"], real_split=where["split"],
        )  # fmt: skip
        if metric == "fd":
            value = frechet_distance(r, f)
            records.append(Protocol(metric=metric_label("fd", name), value=value, **base))
        elif metric == "kd":
            size = min(kid_subset_size, len(r), len(f))
            mean, std = kernel_distance(
                r, f, subsets=kid_subsets, subset_size=kid_subset_size, seed=s.seed
            )
            settings = {"subsets": kid_subsets, "subset_size": size}
            label = metric_label("kd", name)
            records.append(Protocol(metric=label, value=mean, std=std, settings=settings, **base))
        else:
            for key, value in prdc(r, f, k=prdc_k).items():
                label = metric_label(key, name)
                records.append(Protocol(metric=label, value=value, settings={"k": prdc_k}, **base))
    if not drawn:  # say which stand-in the "samples" were
        b = {k: v for k, v in manifest["baseline"].items() if k != "data"}
        records = [r.replace(settings={**r.settings, "baseline": b}) for r in records]
    return records


def format_table(records: Sequence[Any]) -> str:
    """The results as a Markdown table, then each value's protocol on one line."""
    lines = ["| metric | value | extractor | fake | real |", "|---|---|---|---|---|"]
    for p in records:
        value = f"{p.value:.4g}" + (f" ± {p.std:.2g}" if p.std is not None else "")
        real = f"{p.num_real} ({p.real_split})"
        lines.append(f"| {p.metric} | {value} | {p.extractor['name']} | {p.num_fake} | {real} |")
    lines.append("")
    lines += [f"- {p}" for p in records]
    return "\n".join(lines)


def write_results(
    folder: str | os.PathLike,
    records: Sequence[Any],
    reference: Reference,
    path: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``results.json`` (default: in the samples folder): the samples' manifest, the
    reference and every value with its protocol record (``Protocol`` fields)."""
    folder = Path(folder)
    record = {
        "format": "zigma-eval-results",
        "version": VERSION,
        "samples": str(folder),
        "manifest": read_manifest(folder),
        "reference": reference.describe(),
        "results": [to_dict(p) for p in records],
        **(extra or {}),
    }
    out = Path(path) if path is not None else folder / RESULTS_NAME
    return write_text_atomic(out, json.dumps(record, indent=2, sort_keys=True) + "\n")


# ---------------------------------------------------------------- ADM export


def export_adm_npz(folder: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the samples of ``folder`` as an ADM-format ``.npz`` for the standard TF evaluator
    (guided-diffusion's ``evaluator.py``): ``arr_0`` uint8 [N, H, W, 3] (a grey model's
    samples repeated to 3 channels) and, for a class-conditional model, ``arr_1`` int64 [N]
    labels. Streamed one shard at a time into the zip, so N need not fit in memory.

    Raises:
        FileNotFoundError: the samples are not finished.
        ValueError: video samples (the evaluator reads images).
    """
    import zipfile

    folder, path = Path(folder), Path(path)
    manifest = read_manifest(folder)
    s = folder_settings(folder)
    if manifest["layout"].endswith("T, H, W]"):
        raise ValueError("the ADM .npz holds images; these samples are video clips")
    missing = missing_shards(folder)
    if missing:
        raise FileNotFoundError(f"{folder}: shard {shard_name(missing[0])} is not drawn yet")
    first, labels = read_shard(folder, 0)
    _, c, h, w = first.shape
    conditional = labels is not None

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("arr_0.npy", "w", force_zip64=True) as f:
                header = {"descr": "|u1", "fortran_order": False, "shape": (s.num, h, w, 3)}
                np.lib.format.write_array_header_1_0(f, header)
                for _, x, _ in iter_shards(folder):
                    x = x.repeat(1, 3, 1, 1) if c == 1 else x
                    f.write(x.permute(0, 2, 3, 1).contiguous().numpy().tobytes())
            if conditional:
                y = torch.cat([y for _, _, y in iter_shards(folder)]).numpy().astype(np.int64)
                with zf.open("arr_1.npy", "w") as f:
                    np.lib.format.write_array(f, y, allow_pickle=False)

    return atomic_write(path, write)


# ---------------------------------------------------------------- one call: sample and score


def evaluate_model(
    loaded: LoadedModel,
    out_dir: str | os.PathLike,
    settings: SampleSettings,
    plan: Sequence[tuple[str, Any]],
    reference: Reference,
    *,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    max_shards: int | None = None,
    progress: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    **metric_kw: Any,
) -> list[Any] | None:
    """Draw ``settings.num`` samples of ``loaded`` into ``out_dir`` (``generate_shards``; each
    shard's features computed while it is in memory), then score them (``compute_metrics``)
    and write ``results.json`` there. Under a process group every rank draws its shards and
    rank 0 scores; the others return None, as does a run stopped by ``max_shards``.
    ``rank`` / ``world_size`` given (e.g. 0 and 1) keep it off an initialised process group.
    """
    extractors = {extractor_tag(e): e for _, e in plan}

    def features(k: int, samples: torch.Tensor) -> None:
        for e in extractors.values():
            write_shard_features(out_dir, k, samples, e, batch_size)

    done = generate_shards(
        loaded, out_dir, settings.num, seed=settings.seed, sampler=settings.sampler,
        steps=settings.steps, cfg=settings.cfg, shard_size=settings.shard_size,
        batch_size=batch_size, device=device, decode=decode, autocast=autocast,
        max_shards=max_shards, on_shard=features, progress=progress, rank=rank,
        world_size=world_size,
    )  # fmt: skip
    rank, _ = _world(rank, world_size)
    if rank != 0 or not done.finished:
        return None
    records = compute_metrics(out_dir, plan, reference, batch_size=batch_size, **metric_kw)
    write_results(out_dir, records, reference)
    return records


def sample_shape(manifest: dict[str, Any]) -> tuple[int, ...]:
    """(C, H, W) or (C, T, H, W) of the samples a manifest describes (a latent model's:
    decoded, at the autoencoder's image size)."""
    cfg, decoder = manifest["model"]["config"], manifest.get("decoder")
    size, channels = list(cfg["input_size"]), int(cfg["in_channels"])
    if decoder:
        f = int(decoder["downsample"])
        channels = int(decoder["image_channels"])
        size = size[:-2] + [side * f for side in size[-2:]]
    return (channels, *size)


# ---------------------------------------------------------------- domain classifiers


def classifier_dataset(data: dict[str, Any]) -> str:
    """The domain classifier (``zigma.evaluate.classifier``) of a data config (as a dict):
    its name, Moving-MNIST of Fashion-MNIST digits being "moving-fashion-mnist"."""
    name = str(data.get("name"))
    if name == "moving-mnist" and data.get("digits_from") == "fashion-mnist":
        return "moving-fashion-mnist"
    return name


def classifier_spec(data: dict[str, Any], video: bool, frames: bool = False) -> str:
    """The extractor spec of the data's domain classifier: its penultimate features (video:
    clip features, ``FVD-proxy-<data>``), or with ``frames`` the video classifier's per-frame
    features (``frame-FD-<data>``)."""
    if frames and not video:
        raise ValueError("frame features are a video classifier's; the samples are images")
    prefix = "frame-classifier" if frames else "video-classifier" if video else "classifier"
    return f"{prefix}:{classifier_dataset(data)}"


def conditioning_accuracy_of(folder: str | os.PathLike, classifier: Any) -> dict[str, Any]:
    """How often ``classifier`` reads back the class each sample of ``folder`` was drawn for
    (``zigma.evaluate.classifier.conditioning_accuracy``, one shard at a time), with what it
    was computed from: {"metric": "cond-acc", "value", "chance", "per_class", "num_fake",
    "classifier" (its describe()), "classifier_heldout", "sampler", "steps", "guidance",
    "seed"}.

    Raises:
        ValueError: the samples carry no labels (not a class-conditional model).
        FileNotFoundError: the samples are not finished.
    """
    from zigma.evaluate.classifier import conditioning_accuracy

    folder = Path(folder)
    s = folder_settings(folder)
    missing = missing_shards(folder)
    if missing:
        raise FileNotFoundError(f"{folder}: shard {shard_name(missing[0])} is not drawn yet")
    right = 0.0
    per_class: dict[int, list[float]] = {}
    result: dict[str, Any] = {}
    for _, samples, labels in iter_shards(folder):
        if labels is None:
            raise ValueError(f"{folder}: the samples have no class labels (not conditional)")
        result = conditioning_accuracy(classifier, samples, labels)
        right += result["accuracy"] * len(labels)
        for c, acc in enumerate(result["per_class"]):
            n = int((labels == c).sum())
            if acc is not None and n:
                hit, count = per_class.setdefault(c, [0.0, 0])
                per_class[c] = [hit + acc * n, count + n]
    classes = len(result["per_class"])
    info = classifier.describe()
    return {
        "metric": "cond-acc",
        "value": right / s.num,
        "chance": result["chance"],
        "per_class": [
            per_class[c][0] / per_class[c][1] if c in per_class else None for c in range(classes)
        ],
        "num_fake": s.num,
        "classifier": info,
        "classifier_heldout": result.get("classifier_heldout"),
        "sampler": s.sampler,
        "steps": s.steps,
        "guidance": s.cfg,
        "seed": s.seed,
    }
