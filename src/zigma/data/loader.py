"""Dataset config, dataset factory and deterministic DataLoaders for training.

The order of batch k of epoch e is a function of (seed, e) only, and random augmentations of a
sample are a function of (seed, e, index), so resuming at (epoch, step) or changing num_workers
reproduces exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from zigma.config import ConfigError
from zigma.data.captioned import CocoCaptions, MMCelebAHQ
from zigma.data.folder import ImageFolderDataset
from zigma.data.idx import fashion_mnist, mnist
from zigma.data.latents import LatentShards
from zigma.data.sampler import EpochSampler, SkipSampler, derive_seed
from zigma.data.scenes import MAX_OBJECTS, MIN_RESOLUTION, ScenesDataset
from zigma.data.shapes import STYLES, ShapesDataset
from zigma.data.video import MIN_VIDEO_SIDE, MovingMNIST, MovingShapes, VideoFolder

logger = logging.getLogger(__name__)

DatasetName = Literal[
    "shapes", "scenes", "mnist", "fashion-mnist", "folder", "coco", "mm-celeba-hq",
    "moving-mnist", "moving-shapes", "video-folder", "latents",
]  # fmt: skip
DATASET_NAMES: tuple[str, ...] = (
    "shapes", "scenes", "mnist", "fashion-mnist", "folder", "coco", "mm-celeba-hq",
    "moving-mnist", "moving-shapes", "video-folder", "latents",
)  # fmt: skip
VIDEO_NAMES: tuple[str, ...] = ("moving-mnist", "moving-shapes", "video-folder")
_NATURAL_CHANNELS = {
    "shapes": 3, "scenes": 3, "mnist": 1, "fashion-mnist": 1, "folder": 3, "coco": 3,
    "mm-celeba-hq": 3, "moving-mnist": 1, "moving-shapes": 3, "video-folder": 3, "latents": 4,
}  # fmt: skip
_IMAGE_FILES = ("folder", "coco", "mm-celeba-hq")  # read by ImageFilesDataset: need data_dir
_NEEDS_DATA_DIR = (*_IMAGE_FILES, "video-folder")
# digits and generated captions ("on the left") are not mirror-safe
FLIPPABLE: tuple[str, ...] = ("fashion-mnist", "folder", "coco", "mm-celeba-hq")
# items that are a pure function of their index (no per-epoch draw): data.cache may hold them
CACHEABLE: tuple[str, ...] = ("shapes", "moving-mnist", "moving-shapes", "latents")


@dataclass
class DataConfig:
    """Which dataset, at which size.

    Args:
        name: "shapes" (procedural, offline), "scenes" (procedural captioned scenes of 1-3
            objects on a 3x3 grid, offline), "mnist", "fashion-mnist", "folder", "coco" (COCO
            captions: ``captions_file`` + its image folder ``data_dir``) or "mm-celeba-hq"
            (``data_dir`` with ``images/`` and ``text/``), "latents" (``data_dir``: a folder
            written by ``zigma prepare``; its index gives the latent size and channels, which
            the trainer writes into ``resolution`` and ``channels``).
        resolution: square output side in pixels (latents: their side).
        channels: 1 or 3; None takes the dataset's own (3 for shapes/folder, 1 for the MNISTs;
            latents: any count, 4 until the index says otherwise).
        data_dir: the image folder ("folder", "coco", "mm-celeba-hq": required) or where the
            IDX files are (MNISTs).
        captions_file: "coco" only: a ``captions_*.json``; None looks for
            ``captions_train2014.json`` in ``data_dir``, its ``annotations/`` and its parent's.
        num_samples: length of the shapes / scenes dataset.
        seed: content seed of the shapes / scenes dataset (shuffling has its own seed in
            make_loader).
        style: "full", "simple" (one shape on a plain background) or "centered" (one large
            shape near the middle: the CPU demo's data); read by "shapes" only, so
            a preset that sets it can still be pointed at another dataset.
        max_objects: "scenes" only: each scene holds 1 to this many objects (1..3).
        flip: random left-right mirror ("folder" and "fashion-mnist" only).
        crop: "center" or "random" square crop ("folder", "coco", "mm-celeba-hq").
        label_mode: "auto", "folders" or "none": how a folder gets labels (ImageFolderDataset).
        min_size: folder, COCO and MM-CelebA-HQ images smaller than this (either side) are skipped.
        verify: check every folder image's data while indexing (truncated and corrupt files
            are skipped up front; see ``check_image``); false reads headers only.
        frames: clip length T of the video names ("moving-mnist", "moving-shapes",
            "video-folder": required, >= 2); None for the image names. Video items are
            [C, T, H, W].
        frame_stride: "video-folder" only: take every this-many-th frame of a clip.
        digits: 1 or 2 bouncing digits ("moving-mnist") or shapes ("moving-shapes").
        digits_from: "moving-mnist" only: "mnist" (IDX files in ``data_dir`` or
            ``ZIGMA_DATA_DIR``) or "fashion-mnist" (found by itself where Debian installs it).
        cache: training reads every item once and keeps them all in memory (``CachedItems``),
            so loader workers are not needed; for the datasets whose items never change
            between epochs (``CACHEABLE``; the others draw flips, crops or captions).
    """

    name: DatasetName = "shapes"
    resolution: int = 32
    channels: int | None = None
    data_dir: str | None = None
    captions_file: str | None = None
    num_samples: int = 50_000
    seed: int = 0
    style: Literal["full", "simple", "centered"] = "full"
    max_objects: int = MAX_OBJECTS
    flip: bool = False
    crop: Literal["center", "random"] = "center"
    label_mode: Literal["auto", "folders", "none"] = "auto"
    min_size: int = 8
    verify: bool = True
    frames: int | None = None
    frame_stride: int = 1
    digits: int = 1
    digits_from: Literal["mnist", "fashion-mnist"] = "mnist"
    cache: bool = False

    def __post_init__(self) -> None:
        if self.name not in DATASET_NAMES:
            raise ConfigError(f"name must be one of {list(DATASET_NAMES)}, got {self.name!r}")
        self._check_video()
        low = {"shapes": 8, "scenes": MIN_RESOLUTION}.get(self.name, 1)
        low = MIN_VIDEO_SIDE if self.name in ("moving-mnist", "moving-shapes") else low
        if not low <= self.resolution <= 1024:
            raise ConfigError(
                f"resolution must be in [{low}, 1024] for {self.name}, got {self.resolution}"
            )
        if self.name == "latents":
            self._check_latents()
        elif self.channels not in (None, 1, 3):
            raise ConfigError(f"channels must be 1, 3 or None, got {self.channels!r}")
        if self.num_samples < 1:
            raise ConfigError(f"num_samples must be >= 1, got {self.num_samples}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")
        if self.name in _NEEDS_DATA_DIR and not self.data_dir:
            what = "the clip folder" if self.name == "video-folder" else "the image folder"
            raise ConfigError(f"data_dir is required for name={self.name!r} ({what})")
        if self.captions_file is not None and self.name != "coco":
            raise ConfigError(f"captions_file applies only to name='coco', not {self.name!r}")
        if self.flip and self.name not in FLIPPABLE:
            raise ConfigError(
                f"flip=True is supported for name in {list(FLIPPABLE)}, not {self.name!r}"
            )
        if not 1 <= self.max_objects <= MAX_OBJECTS:
            raise ConfigError(f"max_objects must be in [1, {MAX_OBJECTS}], got {self.max_objects}")
        if self.name in ("scenes", "moving-shapes") and self.channels == 1:
            raise ConfigError(
                f"channels=1 is not supported for name={self.name!r} (colour is content)"
            )
        if self.style not in STYLES:
            raise ConfigError(f"style must be one of {list(STYLES)}, got {self.style!r}")
        if self.crop not in ("center", "random"):
            raise ConfigError(f"crop must be 'center' or 'random', got {self.crop!r}")
        if self.crop != "center" and self.name not in _IMAGE_FILES:
            raise ConfigError(f"crop={self.crop!r} applies only to name in {list(_IMAGE_FILES)}")
        if self.label_mode not in ("auto", "folders", "none"):
            raise ConfigError(
                f"label_mode must be 'auto', 'folders' or 'none', got {self.label_mode!r}"
            )
        if self.min_size < 1:
            raise ConfigError(f"min_size must be >= 1, got {self.min_size}")
        if self.cache and self.name not in CACHEABLE:
            raise ConfigError(
                f"cache=True is supported for name in {list(CACHEABLE)}, not {self.name!r} "
                "(its items draw a flip, crop or caption every epoch)"
            )

    def _check_latents(self) -> None:
        # data_dir may still be unset here (a preset names no folder): build_dataset asks for it
        if self.channels is not None and not 1 <= self.channels <= 64:
            raise ConfigError(f"channels must be in 1..64 for latents, got {self.channels!r}")
        if self.flip:
            raise ConfigError("flip: latents are flipped when prepared (zigma prepare --flip)")

    def _check_video(self) -> None:
        if self.name not in VIDEO_NAMES:
            if self.frames is not None:
                raise ConfigError(
                    f"frames applies only to the video names {list(VIDEO_NAMES)}, "
                    f"not {self.name!r} (leave it None for images)"
                )
        elif self.frames is None or isinstance(self.frames, bool) or self.frames < 2:
            raise ConfigError(
                f"frames must be an integer >= 2 for name={self.name!r}, got {self.frames!r}"
            )
        if self.frame_stride < 1:
            raise ConfigError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.frame_stride != 1 and self.name != "video-folder":
            raise ConfigError(
                f"frame_stride applies only to name='video-folder', not {self.name!r}"
            )
        if self.digits not in (1, 2):
            raise ConfigError(f"digits must be 1 or 2, got {self.digits!r}")
        if self.digits != 1 and self.name not in ("moving-mnist", "moving-shapes"):
            raise ConfigError(
                f"digits applies only to name 'moving-mnist' or 'moving-shapes', not {self.name!r}"
            )
        if self.digits_from not in ("mnist", "fashion-mnist"):
            raise ConfigError(
                f"digits_from must be 'mnist' or 'fashion-mnist', got {self.digits_from!r}"
            )

    @property
    def is_video(self) -> bool:
        """Items are clips [C, T, H, W] rather than images [C, H, W]."""
        return self.name in VIDEO_NAMES

    @property
    def resolved_channels(self) -> int:
        return self.channels if self.channels is not None else _NATURAL_CHANNELS[self.name]


def build_dataset(cfg: DataConfig, split: Literal["train", "test"] = "train") -> Dataset:
    """The dataset ``cfg`` describes; every item is ``{"image", "label", "caption"}``.

    For "folder", ``data_dir/<split>`` is used when it exists, else ``data_dir`` for "train";
    "coco" and "mm-celeba-hq" have only "train" (``data_dir`` names the images to use).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    channels = cfg.resolved_channels
    if cfg.is_video:
        return _build_video(cfg, split, channels)
    if cfg.name == "latents":
        if not cfg.data_dir:
            raise ConfigError(
                "data.data_dir is required for name='latents': a folder written by zigma prepare"
            )
        if split != "train":
            raise ValueError("name='latents' has only a train split (prepare another folder)")
        return LatentShards(cfg.data_dir)
    if cfg.name == "shapes":
        return ShapesDataset(cfg.num_samples, cfg.resolution, channels, cfg.seed, split, cfg.style)
    if cfg.name == "scenes":
        return ScenesDataset(cfg.num_samples, cfg.resolution, cfg.seed, split, cfg.max_objects)
    if cfg.name in ("mnist", "fashion-mnist"):
        make = mnist if cfg.name == "mnist" else fashion_mnist
        return make(
            split, resolution=cfg.resolution, channels=channels, flip=cfg.flip,
            data_dir=cfg.data_dir,
        )  # fmt: skip
    assert cfg.data_dir is not None  # checked in DataConfig
    files: dict[str, Any] = dict(
        crop=cfg.crop, flip=cfg.flip, min_size=cfg.min_size, verify=cfg.verify
    )
    if cfg.name in ("coco", "mm-celeba-hq"):
        if split != "train":  # their held-out images are other folders: point data_dir there
            raise ValueError(f"name={cfg.name!r} has only a train split (data_dir: the images)")
        if cfg.name == "coco":
            return CocoCaptions(cfg.data_dir, cfg.captions_file, cfg.resolution, channels, **files)
        return MMCelebAHQ(cfg.data_dir, cfg.resolution, channels, **files)
    root = _split_folder(cfg.data_dir, split)
    return ImageFolderDataset(root, cfg.resolution, channels, label_mode=cfg.label_mode, **files)


def _build_video(cfg: DataConfig, split: Literal["train", "test"], channels: int) -> Dataset:
    assert cfg.frames is not None  # checked in DataConfig
    if cfg.name == "moving-shapes":
        return MovingShapes(
            cfg.num_samples, cfg.resolution, cfg.frames, cfg.digits, cfg.seed, split
        )
    if cfg.name == "moving-mnist":
        make = mnist if cfg.digits_from == "mnist" else fashion_mnist
        source = make(split, data_dir=cfg.data_dir)  # at the files' own 28 px
        return MovingMNIST(
            source, cfg.num_samples, cfg.resolution, cfg.frames, cfg.digits, cfg.seed, split,
            channels,
        )  # fmt: skip
    assert cfg.data_dir is not None
    return VideoFolder(
        _split_folder(cfg.data_dir, split, "clip folder"), cfg.resolution, cfg.frames,
        cfg.frame_stride, channels, min_size=cfg.min_size, verify=cfg.verify,
    )  # fmt: skip


def _split_folder(data_dir: str, split: str, what: str = "image folder") -> str:
    sub = Path(data_dir) / split
    if sub.is_dir():
        return str(sub)
    if split == "train":
        return data_dir
    raise FileNotFoundError(f"no {split!r} split for the {what}: {sub} does not exist")


def collate_batch(items: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
    """Stack images [B, C, H, W] (clips: [B, C, T, H, W]) and labels [B] (int64); captions
    become a list of B strings. A batch that is already a dict passes through.

    Raises:
        ValueError: an empty batch, or items of different shapes (e.g. images and clips).
    """
    if isinstance(items, dict):  # a dataset's __getitems__ already stacked it (CachedItems)
        return items
    if not items:
        raise ValueError("cannot collate an empty batch")
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) > 1:
        raise ValueError(f"cannot collate items of different shapes: {sorted(shapes)}")
    return {
        "image": torch.stack([it["image"] for it in items]),
        "label": torch.stack([torch.as_tensor(it["label"], dtype=torch.long) for it in items]),
        "caption": [it["caption"] for it in items],
    }


class SeededItems(Dataset):
    """A view of ``dataset`` whose random transforms are seeded by (seed, epoch, index).

    Datasets with random transforms expose ``get_item(index, generator)``; others are read
    with ``dataset[index]``. Independent of worker count and of where an epoch was resumed.
    """

    def __init__(self, dataset: Dataset, seed: int, epoch: int) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        get_item = getattr(self.dataset, "get_item", None)
        if get_item is None:
            return self.dataset[index]
        g = torch.Generator()
        g.manual_seed(derive_seed(self.seed, self.epoch, int(index)))
        return get_item(index, g)

    def __getitems__(self, indices: list[int]) -> Any:
        # the DataLoader's batched read: a dataset that stacks a whole batch at once does so
        batched = getattr(self.dataset, "__getitems__", None)
        if batched is not None and not hasattr(self.dataset, "get_item"):
            return batched(indices)
        return [self[i] for i in indices]


def seed_worker(worker_id: int, base_seed: int) -> None:
    """worker_init_fn: seed torch, numpy and random of worker ``worker_id`` from ``base_seed``,
    for any randomness that does not go through ``get_item``'s generator."""
    s = derive_seed(base_seed, worker_id)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def _shard(num_replicas: int | None, rank: int | None) -> tuple[int, int] | None:
    """(num_replicas, rank) when sharding applies: explicit, or from torch.distributed."""
    if num_replicas is None and rank is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size(), dist.get_rank()
        return None
    if num_replicas is None or rank is None:
        raise ValueError("give both num_replicas and rank, or neither")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
    return num_replicas, rank


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over one epoch whose batches are a function of (seed, epoch).

    Under an initialised ``torch.distributed`` (or with explicit ``num_replicas``/``rank``) a
    ``DistributedSampler(seed=seed, shuffle=shuffle, drop_last=drop_last)`` set to ``epoch``
    gives each rank a disjoint shard; otherwise an ``EpochSampler``.

    Args:
        start_batch: skip this many batches of the epoch without loading them (exact resume).
        num_workers: worker processes; results do not depend on it.

    Raises:
        ValueError: on a non-positive batch size or negative seed/epoch/start_batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if min(seed, epoch, start_batch, num_workers) < 0:
        raise ValueError(
            f"seed, epoch, start_batch and num_workers must be >= 0, got "
            f"{seed}, {epoch}, {start_batch}, {num_workers}"
        )
    skip = start_batch * batch_size
    shard = _shard(num_replicas, rank)
    sampler: Sampler[int]
    if shard is not None:
        dsampler = DistributedSampler(
            dataset, num_replicas=shard[0], rank=shard[1], shuffle=shuffle, seed=seed,
            drop_last=drop_last,
        )  # fmt: skip
        dsampler.set_epoch(epoch)
        sampler = SkipSampler(dsampler, skip) if skip else dsampler
    else:
        n = len(dataset)  # type: ignore[arg-type]
        sampler = EpochSampler(n, seed=seed, epoch=epoch, shuffle=shuffle, start_index=skip)
    return DataLoader(
        SeededItems(dataset, seed, epoch),
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_batch,
        pin_memory=pin_memory,
        worker_init_fn=functools.partial(seed_worker, base_seed=derive_seed(seed, epoch)),
        # torch seeds each worker from this generator; fixing it fixes the workers' base seeds
        generator=torch.Generator().manual_seed(derive_seed(seed, epoch, 2**32)),
    )


def iterate_batches(
    source: DataConfig | Dataset,
    batch_size: int,
    *,
    seed: int = 0,
    start_step: int = 0,
    split: Literal["train", "test"] = "train",
    shuffle: bool = True,
    drop_last: bool = True,
    num_workers: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Batches forever, epoch after epoch; the k-th batch yielded is global step
    ``start_step + k``, and its content depends only on (seed, step) (and the shard).

    Raises:
        ValueError: at the call, not at the first batch, if one epoch holds no batch (the
            dataset is smaller than the batch size; for an image folder the message counts
            the files skipped, by reason).
    """
    dataset = build_dataset(source, split) if isinstance(source, DataConfig) else source
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    opts: dict[str, Any] = dict(
        seed=seed, shuffle=shuffle, drop_last=drop_last, num_workers=num_workers,
        num_replicas=num_replicas, rank=rank,
    )  # fmt: skip
    per_epoch = len(make_loader(dataset, batch_size, **opts))
    if per_epoch == 0:
        skipped = getattr(dataset, "skip_summary", None)
        raise ValueError(
            f"an epoch of {len(dataset)} samples holds no batch of {batch_size}"  # type: ignore[arg-type]
            f"{' with drop_last=True' if drop_last else ''}"
            f"{f' ({skipped})' if skipped else ''}"
        )
    return _batches(dataset, batch_size, per_epoch, start_step, opts)


def _batches(
    dataset: Dataset, batch_size: int, per_epoch: int, start_step: int, opts: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    epoch, offset = divmod(start_step, per_epoch)
    if start_step:
        logger.info("resuming at step %d: epoch %d, batch %d", start_step, epoch, offset)
    while True:
        yield from make_loader(dataset, batch_size, epoch=epoch, start_batch=offset, **opts)
        epoch, offset = epoch + 1, 0
