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

import hashlib
import json
import math
import os
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
    diff = _differences(old, manifest)
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
            x = generate(
                model, loaded.transport, len(span), cond=cond, seed=shard_seed(seed, k),
                sampler=sampler, steps=steps, guidance_scale=cfg, batch_size=batch_size,
                device=device, autocast=autocast, output=decode if latent else _clamp,
            )  # fmt: skip
            tensors = {"samples": to_uint8(x).contiguous()}
            if conditional:
                tensors["labels"] = cond["y"].to(torch.int64).contiguous()
            atomic_write(out / shard_name(k), lambda tmp, t=tensors: save_file(t, tmp))
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
