"""``zigma prepare``: encode a dataset once into latent shards that training reads instead of
pixels (``data.name="latents"``; the reader and the format are in ``zigma.data.latents``).

Item j of the folder is source image ``j // copies``, mirrored when ``j % copies == 1``
(``copies`` is 2 with ``flip``); shard k holds items ``[k * shard_size, (k + 1) * shard_size)``.
Latents are the posterior mean, so a shard's bytes are a function of the data, the autoencoder
and these settings alone: a run that is stopped and started again writes exactly the shards
an uninterrupted one would.

Resuming rests on three files: ``prepare.json`` (the plan: autoencoder spec, data config,
settings), written first, refuses a rerun with another autoencoder or data; each shard is
written under a temp name and renamed, so a shard under its own name is complete and is kept;
``index.json`` is written last, when every shard is there, and is what training reads.

Under torchrun every rank runs ``prepare_latents`` on the same ``out`` (a folder all ranks
see): the shards still missing are dealt out in turn (rank r encodes missing shards r,
r + world, ...), so the ranks share a resumed run evenly whatever world size began it; rank 0
alone writes ``prepare.json`` and ``index.json``, cleans up temp files and holds the folder's
lock (another ``zigma prepare`` into the same folder at once is refused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from tqdm.auto import tqdm

import zigma
from zigma.artifacts import (
    LOCK_NAME,
    RunLock,
    atomic_write,
    read_json_object,
    remove_temp_files,
    write_text_atomic,
)
from zigma.autoencoder.base import Autoencoder
from zigma.config import ConfigError, to_dict
from zigma.data import FLIPPABLE, DataConfig, SeededItems, build_dataset
from zigma.data.latents import (
    CAPTIONS_KEY,
    FORMAT,
    INDEX_NAME,
    VERSION,
    file_sha256,
    shard_name,
)

PLAN_NAME = "prepare.json"
# Ranks wait for each other at barriers: the slowest rank's shards (a shared GPU, a slow disk)
# or rank 0 hashing every shard for the index may keep the others waiting far beyond gloo's
# default 30 minutes. A rank that dies does not leave the others waiting: torchrun ends them.
_BARRIER_TIMEOUT = timedelta(hours=24)
_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class PrepareConfig:
    """What ``prepare_latents`` encodes and how it cuts it into shards.

    Args:
        data: the images (any image dataset of zigma.data at ``data.resolution``).
        flip: also store a mirrored copy of every image (only for mirror-safe data: see
            ``zigma.data.FLIPPABLE``; generated captions say "on the left").
        shard_size: items per shard file.
        batch_size: images per autoencoder call (does not change the shards' bytes on CPU).
        dtype: how latents are stored ("float16" halves the disk; they are read as float32).
    """

    data: DataConfig = field(default_factory=DataConfig)
    flip: bool = False
    shard_size: int = 1024
    batch_size: int = 32
    dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        if self.data.is_video or self.data.name == "latents":
            raise ConfigError(f"prepare takes an image dataset, not {self.data.name!r}")
        if self.flip and self.data.name not in FLIPPABLE:
            raise ConfigError(
                f"--flip: {self.data.name!r} is not mirror-safe (digits, generated captions); "
                f"flip copies are for {list(FLIPPABLE)}"
            )
        if self.data.flip:
            raise ConfigError("data.flip (random flips) would freeze one draw: use --flip copies")
        if self.shard_size < 1 or self.batch_size < 1:
            raise ConfigError("shard_size and batch_size must be >= 1")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"dtype must be float16 or float32, got {self.dtype!r}")


@dataclass
class PrepareSummary:
    out: Path
    num_items: int
    latent_shape: tuple[int, ...]
    num_shards: int
    written: int  # shards this call encoded (all ranks together)
    kept: int  # shards an earlier call had finished
    finished: bool  # every shard is there and index.json is written
    seconds: float
    images_per_second: float  # all ranks together
    skipped: str = ""  # the source dataset's note on images it left out (image folders)


def _comparable(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if k != "path"}  # a moved copy is the same VAE


def _plan(ae: Autoencoder, cfg: PrepareConfig, num_items: int, shape: tuple[int, ...]) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "autoencoder": ae.spec(),
        "data": to_dict(cfg.data),
        "flip": cfg.flip,
        "shard_size": cfg.shard_size,
        "dtype": cfg.dtype,
        "num_items": num_items,
        "latent_shape": list(shape),
    }


def check_out_folder(out: Path, plan: dict[str, Any]) -> bool:
    """Whether ``out`` may receive ``plan``'s shards; True when it already holds part of them.

    Raises:
        ValueError: ``out`` holds latents of another autoencoder, data or settings, or files
            that are not zigma prepare's (nothing is touched).
        NotADirectoryError: ``out`` is a file.
    """
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    # the lock file alone: a run killed between taking the lock and writing its plan
    if not out.is_dir() or not any(p.name != LOCK_NAME for p in out.iterdir()):
        return False
    if not (out / PLAN_NAME).is_file():
        raise ValueError(
            f"--out {out} holds files that are not zigma prepare's; choose a new --out"
        )
    old = read_json_object(out / PLAN_NAME, "prepare plan")
    old_ae, new_ae = old.get("autoencoder") or {}, plan["autoencoder"]
    if old_ae.get("hash") != new_ae["hash"]:
        raise ValueError(
            f"--out {out} holds latents of another autoencoder ({old_ae.get('kind')} hash "
            f"{old_ae.get('hash')}, this one has {new_ae['hash']}); choose another --out"
        )
    diff = [k for k in plan if k != "autoencoder" and old.get(k) != plan[k]]
    diff += [f"autoencoder.{k}" for k, v in _comparable(new_ae).items() if old_ae.get(k) != v]
    if diff:
        raise ValueError(
            f"--out {out} holds latents of another data config or settings (they differ in "
            f"{', '.join(diff)}); choose another --out"
        )
    return True


@dataclass
class _Ranks:
    """This process's place among the ranks that share ``out`` (rank 0 of 1 alone)."""

    rank: int = 0
    world: int = 1
    group: Any = None  # a gloo group: counts are summed over CPU tensors, whatever the device
    owned: bool = False  # we initialised the default group, so we destroy it

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.group)

    def sum(self, *counts: int) -> list[int]:
        """``counts`` summed over the ranks; also a barrier (every rank must contribute)."""
        t = torch.tensor(counts, dtype=torch.int64)
        if self.world > 1:
            dist.all_reduce(t, group=self.group)
        return t.tolist()

    def close(self) -> None:
        if self.group is not None:
            dist.destroy_process_group(self.group)
        elif self.owned and dist.is_initialized():
            dist.destroy_process_group()


def _join_ranks() -> _Ranks:
    """The caller's process group, else torchrun's (joined here), else one process."""
    if dist.is_available() and dist.is_initialized():
        # a group set up without torchrun's variables (mp.spawn) still shares the folder
        if dist.get_world_size() == 1:
            return _Ranks()
        # a caller's group (NCCL, say) cannot sum CPU tensors: a gloo group beside it can
        group = dist.new_group(backend="gloo", timeout=_BARRIER_TIMEOUT)
        return _Ranks(dist.get_rank(), dist.get_world_size(), group, False)
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Ranks()
    # only counts and barriers travel: gloo serves any device
    dist.init_process_group("gloo", timeout=_BARRIER_TIMEOUT)
    return _Ranks(dist.get_rank(), dist.get_world_size(), None, True)


def prepare_latents(
    ae: Autoencoder,
    cfg: PrepareConfig,
    out: str | os.PathLike,
    *,
    max_shards: int | None = None,
    progress: bool = False,
) -> PrepareSummary:
    """Encode ``cfg.data`` with ``ae`` into latent shards in ``out`` (see the module notes).

    Under torchrun (``WORLD_SIZE`` > 1) every rank calls this with the same arguments: rank r
    encodes the missing shards r, r + world_size, ... of the list of missing shards, and rank
    0 writes the index once every shard is there. The summary's counts are of all ranks.

    Args:
        ae: an autoencoder loaded from disk (its spec must carry a path and weights hash: a
            run trained on these latents decodes with it).
        max_shards: stop after encoding this many new shards (per rank; the index is not
            written): to split the work over several sessions, or to test resuming.
        progress: show a tqdm bar (images/s; rank 0's share under torchrun).

    Raises:
        ValueError / ConfigError: an autoencoder without a saved hash, images whose channels
            or size do not fit it, an ``out`` of another autoencoder or data (before any
            compute; nothing is overwritten).
        RunLockedError: another ``prepare_latents`` is writing to ``out``.
    """
    start = time.perf_counter()
    out = Path(out)
    if not ae.weights_hash or not ae.path:
        raise ValueError("the autoencoder has no weights hash: save it and load it from its folder")
    data = cfg.data
    if data.channels is None:  # the autoencoder decides, e.g. MNIST as RGB for the SD VAE
        data = dataclasses.replace(data, channels=ae.image_channels)
        cfg = dataclasses.replace(cfg, data=data)
    if data.resolved_channels != ae.image_channels:
        raise ValueError(
            f"the data has {data.resolved_channels} channels, the autoencoder takes "
            f"{ae.image_channels} (set data.channels)"
        )
    if data.resolution % ae.downsample:
        raise ValueError(
            f"--size {data.resolution} is not divisible by the autoencoder's downsample "
            f"factor {ae.downsample}"
        )
    dataset = build_dataset(data, "train")
    copies = 2 if cfg.flip else 1
    num_items = len(dataset) * copies  # type: ignore[arg-type]
    side = data.resolution // ae.downsample
    shape = (ae.latent_channels, side, side)
    plan = _plan(ae, cfg, num_items, shape)
    # every rank checks (read-only) before any rank writes: a bad --out fails alike on all
    # ranks instead of leaving the others waiting at a barrier
    check_out_folder(out, plan)
    ranks = _join_ranks()
    lock, refused = None, None
    try:
        # the barrier keeps rank 0 from writing prepare.json while another rank is still
        # checking the folder (it would see the half-written plan's temp file as foreign)
        ranks.barrier()
        if ranks.rank == 0:
            try:
                out.mkdir(parents=True, exist_ok=True)
                # another zigma prepare into this folder at once would have its temp files
                # removed under it below: refuse it (only rank 0 locks; the other ranks wait)
                lock = RunLock(out).acquire()
                resuming = check_out_folder(out, plan)  # again: the folder may have changed
                remove_temp_files(out)  # what a killed run left half-written; no rank writes
                if not resuming:
                    text = json.dumps(plan, indent=2, sort_keys=True) + "\n"
                    write_text_atomic(out / PLAN_NAME, text)
            except (ValueError, OSError) as e:
                refused = e
        # rank 0's refusal stops every rank with a message, not with a broken barrier
        if ranks.sum(refused is not None)[0]:
            raise refused or ValueError(f"--out {out}: refused by rank 0 (see its message)")
        summary = _encode_shards(ae, cfg, out, plan, dataset, ranks, max_shards, progress)
    finally:
        if lock is not None:
            lock.release()
        ranks.close()
    seconds = time.perf_counter() - start
    num_shards, written, kept, encoded, complete = summary
    return PrepareSummary(
        out=out, num_items=num_items, latent_shape=shape, num_shards=num_shards,
        written=written, kept=kept, finished=complete,
        seconds=seconds, images_per_second=encoded / max(seconds, 1e-9),
        skipped=getattr(dataset, "skip_summary", "") or "",
    )  # fmt: skip


def _encode_shards(
    ae: Autoencoder,
    cfg: PrepareConfig,
    out: Path,
    plan: dict[str, Any],
    dataset: Any,
    ranks: _Ranks,
    max_shards: int | None,
    progress: bool,
) -> tuple[int, int, int, int, bool]:
    """This rank's share of the missing shards, then rank 0's index once all are there.

    Returns (shards in all, shards written by all ranks, shards kept, images encoded by all
    ranks, whether the folder is finished).
    """
    num_items = plan["num_items"]
    copies = 2 if cfg.flip else 1
    num_shards = math.ceil(num_items / cfg.shard_size)
    # the same list on every rank: between the barriers around this listing no rank writes.
    # Dealing out the missing shards (not all shards) splits a resumed run evenly.
    missing = [k for k in range(num_shards) if not (out / shard_name(k)).is_file()]
    mine = missing[ranks.rank :: ranks.world]
    todo = mine if max_shards is None else mine[:max_shards]
    items = SeededItems(dataset, cfg.data.seed, 0)  # random crops: seeded per image, as in training
    total = sum(min(cfg.shard_size, num_items - k * cfg.shard_size) for k in todo)
    ae.eval()
    encoded = 0
    # one bar: the ranks' bars would overwrite each other on a shared terminal
    show = progress and ranks.rank == 0
    desc = f"rank 0 of {ranks.world}" if ranks.world > 1 else None
    with tqdm(total=total, unit="img", disable=not show, desc=desc, dynamic_ncols=True) as bar:
        for k in todo:
            lo, hi = k * cfg.shard_size, min((k + 1) * cfg.shard_size, num_items)
            _write_shard(ae, items, out / shard_name(k), range(lo, hi), copies, cfg)
            bar.update(hi - lo)
            encoded += hi - lo
    # summed over the ranks, which also waits until every rank has renamed its last shard
    written, encoded = ranks.sum(len(todo), encoded)
    complete = all((out / shard_name(k)).is_file() for k in range(num_shards))
    # rewritten whenever any rank wrote a shard (a replaced shard has a new sha256), not only
    # when rank 0 did
    if ranks.rank == 0 and complete and (written or not (out / INDEX_NAME).is_file()):
        classes = getattr(dataset, "num_classes", 0)
        _write_index(out, plan, num_shards, cfg, num_items, classes)
    ranks.barrier()  # no rank returns before the index is there
    return num_shards, written, num_shards - len(missing), encoded, complete


def _write_shard(
    ae: Autoencoder, items: SeededItems, path: Path, span: range, copies: int, cfg: PrepareConfig
) -> None:
    latents, labels, captions = [], [], []
    for b in range(span.start, span.stop, cfg.batch_size):
        batch = range(b, min(b + cfg.batch_size, span.stop))
        images = []
        for j in batch:
            item = items[j // copies]
            image = item["image"]
            images.append(image.flip(-1) if j % copies else image)
            labels.append(int(item["label"]))
            captions.append(item["caption"])
        latents.append(ae.encode(torch.stack(images)).cpu().to(_DTYPES[cfg.dtype]))
    tensors = {
        "latents": torch.cat(latents).contiguous(),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    # one metadata key: safetensors writes several in a random order, and a shard's bytes
    # must not depend on the run that wrote it
    meta = {CAPTIONS_KEY: json.dumps(captions)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _write_index(
    out: Path, plan: dict[str, Any], num_shards: int, cfg: PrepareConfig, n: int, classes: int
) -> None:
    shards = []
    for k in range(num_shards):
        name = shard_name(k)
        count = min(cfg.shard_size, n - k * cfg.shard_size)
        shards.append({"name": name, "count": count, "sha256": file_sha256(out / name)})
    index = {
        **plan,
        "num_classes": int(classes),
        "shards": shards,
        "zigma_version": zigma.__version__,
    }
    write_text_atomic(out / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
