"""Reading a folder of latent shards written by ``zigma prepare`` (``data.name="latents"``).

A prepared folder holds ``index.json`` (written last, so its presence means the folder is
complete) and ``shard_XXXXXX.safetensors`` files: ``latents`` [n, C, h, w] (float16 or
float32, already scaled by the autoencoder), ``labels`` int64 [n], and the captions as a JSON
list in the file's metadata. The index names the autoencoder that made the latents (its
``spec()``), the data config, and each shard's item count and sha256.

Items are ``{"image": float32 [C, h, w] latents, "label", "caption"}``: the key stays "image" so
the loaders and the trainer treat latents like pixels. A shard's sha256 is checked the first
time a process opens it; after that its rows are read through a memory map, so shuffling
across the whole folder costs no more than reading the rows.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from zigma.artifacts import ArtifactError, read_json_object

INDEX_NAME = "index.json"
FORMAT = "zigma-latents"
VERSION = 1
CAPTIONS_KEY = "captions"  # safetensors metadata key of a shard's captions (a JSON list)


class LatentShardError(ValueError):
    """A prepared latent folder or one of its shards is missing, corrupt or inconsistent."""


def shard_name(shard_id: int) -> str:
    return f"shard_{shard_id:06d}.safetensors"


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_latent_index(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked ``index.json`` of a prepared folder.

    Raises:
        LatentShardError: no index (not prepared, or ``zigma prepare`` has not finished), not
            our format, or fields that do not add up.
    """
    folder = Path(folder)
    path = folder / INDEX_NAME
    if not folder.is_dir():
        raise LatentShardError(f"latent folder {folder} not found (write it with zigma prepare)")
    if not path.is_file():
        raise LatentShardError(
            f"no {INDEX_NAME} in {folder}: not a prepared latent folder, or zigma prepare has "
            "not finished there (run it again: finished shards are kept)"
        )
    try:
        index = read_json_object(path, "latent index")
    except ArtifactError as e:
        raise LatentShardError(str(e)) from None
    if index.get("format") != FORMAT:
        raise LatentShardError(f"{path} is not a zigma latent index (format {FORMAT!r})")
    try:
        shape = [int(v) for v in index["latent_shape"]]
        shards = index["shards"]
        counts = [int(s["count"]) for s in shards]
        names = [str(s["name"]) for s in shards]
        hashes = [s["sha256"] for s in shards]
        spec = index["autoencoder"]
    except (KeyError, TypeError, ValueError) as e:
        raise LatentShardError(f"{path} lacks or garbles a field: {e}") from None
    if not all(isinstance(h, str) and len(h) == 64 for h in hashes):
        raise LatentShardError(f"{path}: every shard needs its sha256 (64 hex digits)")
    if len(shape) != 3 or min(shape) < 1 or not isinstance(spec, dict):
        raise LatentShardError(f"{path}: latent_shape must be [C, h, w], got {shape}")
    if not counts or min(counts) < 1 or sum(counts) != index.get("num_items"):
        raise LatentShardError(f"{path}: shard counts do not add up to num_items")
    for name in names:  # a name may not lead out of the folder
        if Path(name).name != name or not name.endswith(".safetensors"):
            raise LatentShardError(f"{path}: bad shard name {name!r}")
    return index


class LatentShards(Dataset):
    """The items of a prepared latent folder, in shard order.

    Attributes:
        latent_shape: (C, h, w) of every item.
        autoencoder: the ``spec()`` of the autoencoder that made the latents.
        num_classes: the source dataset's (0: unlabelled).

    Raises:
        LatentShardError: see ``read_latent_index``; when an item is read, a missing shard or
            one whose sha256 differs from the index (named in the message).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.index = read_latent_index(self.folder)
        self.latent_shape = tuple(int(v) for v in self.index["latent_shape"])
        self.autoencoder: dict[str, Any] = self.index["autoencoder"]
        self.num_classes = int(self.index.get("num_classes", 0))
        self._shards = self.index["shards"]
        self._starts = [0]
        for s in self._shards:
            self._starts.append(self._starts[-1] + int(s["count"]))
        self._open: dict[int, tuple[Any, torch.Tensor, list[str]]] = {}

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_open"] = {}  # memory maps stay in their process; a worker opens (and checks) anew
        return state

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"item {index} out of range for {len(self)} latents")
        lo, hi = 0, len(self._shards)
        while hi - lo > 1:  # the last shard start <= index
            mid = (lo + hi) // 2
            if self._starts[mid] <= index:
                lo = mid
            else:
                hi = mid
        return lo, index - self._starts[lo]

    def shard(self, shard_id: int) -> tuple[Any, torch.Tensor, list[str]]:
        """(memory-mapped file, labels, captions) of one shard, checked on first use."""
        if shard_id in self._open:
            return self._open[shard_id]
        entry = self._shards[shard_id]
        path = self.folder / entry["name"]
        if not path.is_file():
            raise LatentShardError(f"latent shard {path} is missing (listed in {INDEX_NAME})")
        if file_sha256(path) != entry["sha256"]:
            raise LatentShardError(
                f"latent shard {path} is corrupt (its sha256 differs from {INDEX_NAME}); "
                "delete it and run zigma prepare again to rewrite it"
            )
        try:
            f = safe_open(str(path), framework="pt")
            meta = f.metadata() or {}
            labels = f.get_tensor("labels").long()
            captions = json.loads(meta.get(CAPTIONS_KEY, "null")) or [""] * entry["count"]
            rows = f.get_slice("latents").get_shape()
        except Exception as e:  # safetensors raises its own types for a malformed file
            raise LatentShardError(f"latent shard {path} cannot be read: {e}") from None
        if rows[0] != entry["count"] or len(labels) != rows[0] or len(captions) != rows[0]:
            raise LatentShardError(f"latent shard {path} does not hold {entry['count']} items")
        if tuple(rows[1:]) != self.latent_shape:
            raise LatentShardError(
                f"latent shard {path} holds {tuple(rows[1:])} latents, the index says "
                f"{self.latent_shape}"
            )
        self._open[shard_id] = (f, labels, captions)
        return self._open[shard_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        shard_id, row = self._locate(int(index))
        f, labels, captions = self.shard(shard_id)
        latents = f.get_slice("latents")[row : row + 1][0].float()
        return {"image": latents, "label": labels[row], "caption": captions[row]}


_SHAPES: dict[tuple[str, int, int], tuple[int, ...]] = {}


def latent_shape(folder: str | os.PathLike) -> tuple[int, ...]:
    """(C, h, w) of a prepared folder's latents, from its index (cached per index file
    version: configs ask for it often)."""
    path = Path(folder) / INDEX_NAME
    try:
        st = path.stat()
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    except OSError:
        key = None
    if key is None or key not in _SHAPES:
        shape = tuple(int(v) for v in read_latent_index(folder)["latent_shape"])
        if key is None:
            return shape
        _SHAPES[key] = shape
    return _SHAPES[key]
