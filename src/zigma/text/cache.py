"""Text features on disk, so training never re-encodes a caption and a GPU machine needs no
text encoder: safetensors shards keyed by each caption's sha256, under one encoder identity.

A cache folder holds ``cache.json`` (the encoder's identity and the shard list) and shards
``shard-NNNNN.safetensors``; each tensor is one caption's features ``[n_tokens, dim]``, cut to
its real tokens. ``add`` writes one new shard and then the manifest, each atomically, so a crash
leaves the cache as it was (at worst an orphan shard that the next ``add`` overwrites).
One writer at a time; any number of readers.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from zigma.artifacts import ArtifactError, atomic_write, read_json_object, write_text_atomic
from zigma.config import short_repr
from zigma.text.encoders import TextEncoder, check_captions

MANIFEST_NAME = "cache.json"
CACHE_FORMAT = "zigma-text-cache"
CACHE_VERSION = 1
_SHARD_NAME = re.compile(r"^shard-\d{5,}\.safetensors$")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_IDENTITY_KEYS = ("name", "kind", "dim", "max_length", "weights_hash")


def caption_key(caption: str) -> str:
    """The key a caption's features are stored under: sha256 of its UTF-8 bytes (hex)."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def _describe(identity: dict[str, Any]) -> str:
    return f"{identity.get('name')} (hash {str(identity.get('weights_hash'))[:8]}..)"


class TextFeatureCache:
    """Token features of captions under one text encoder (see the module docstring).

    Args:
        directory: the cache folder; created with an empty manifest when new.
        identity: the encoder's ``identity()``; must match an existing manifest's.
        dtype: how new shards store features (float16 keeps the cache small).

    Raises:
        ValueError: ``directory`` holds a cache written by another encoder (nothing changes),
            or its manifest is malformed.
    """

    def __init__(
        self,
        directory: str | Path,
        identity: dict[str, Any],
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.directory = Path(directory)
        self.dtype = dtype
        self.identity = _check_identity(identity, "encoder identity")
        manifest = self.directory / MANIFEST_NAME
        if manifest.exists():
            stored, shards = _read_manifest(self.directory)
            if (stored["name"], stored["weights_hash"]) != (
                self.identity["name"],
                self.identity["weights_hash"],
            ):
                raise ValueError(
                    f"cache {self.directory} was written by encoder {_describe(stored)}, "
                    f"not {_describe(self.identity)}"
                )
            self.identity = stored
        else:
            if self.directory.exists() and not self.directory.is_dir():
                raise ValueError(f"text cache {self.directory} is a file, not a folder")
            self.directory.mkdir(parents=True, exist_ok=True)
            shards = []
            self._write_manifest(shards)
        self._shards: list[str] = []
        self._handles: list[Any] = []
        self._index: dict[str, int] = {}  # caption key -> position in self._shards
        for name in shards:
            self._open_shard(name)

    @classmethod
    def open(cls, directory: str | Path, dtype: torch.dtype = torch.float16) -> TextFeatureCache:
        """An existing cache, with the identity its manifest records.

        Raises:
            FileNotFoundError: ``directory`` has no ``cache.json``.
        """
        if not (Path(directory) / MANIFEST_NAME).is_file():
            raise FileNotFoundError(f"{directory} is not a text cache: it has no {MANIFEST_NAME}")
        identity, _ = _read_manifest(Path(directory))
        return cls(directory, identity, dtype)

    # ------------------------------------------------------------ queries

    @property
    def dim(self) -> int:
        return int(self.identity["dim"])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, caption: object) -> bool:
        return isinstance(caption, str) and caption_key(caption) in self._index

    def missing(self, captions: list[str]) -> list[str]:
        """The captions not cached yet, each once, in first-seen order."""
        captions = check_captions(captions)
        return [c for c in dict.fromkeys(captions) if caption_key(c) not in self._index]

    def lookup(
        self,
        captions: list[str],
        length: int | None = None,
        device: str | torch.device | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached features as ``encode`` returns them: float32 ``[B, L, dim]`` and the mask
        ``[B, L]`` (True = real token), padded right with zeros to the longest caption, or to
        ``length`` (longer captions then cut at ``length``).

        Raises:
            ValueError: a caption is not in the cache (its text and how to fill the cache).
        """
        captions = check_captions(captions)
        if length is not None and (not isinstance(length, int) or length < 1):
            raise ValueError(f"length must be a positive int or None, got {short_repr(length)}")
        keys = [caption_key(c) for c in captions]
        absent = [c for c, k in zip(captions, keys, strict=True) if k not in self._index]
        if absent:
            raise ValueError(
                f"{len(absent)} of {len(captions)} captions are not in text cache "
                f"{self.directory}, e.g. {short_repr(absent[0])}: fill it first with "
                f"TextFeatureCache(dir, encoder.identity()).add(captions, encoder)"
            )
        feats = [self._handles[self._index[k]].get_tensor(k) for k in keys]
        for k, f in zip(keys, feats, strict=True):
            if f.ndim != 2 or f.shape[1] != self.dim:
                raise ArtifactError(
                    f"text cache {self.directory}: entry {k[:12]}.. has shape "
                    f"{tuple(f.shape)}, expected [n, {self.dim}]"
                )
        longest = max(f.shape[0] for f in feats)
        width = longest if length is None else length
        tokens = torch.zeros(len(feats), width, self.dim, dtype=torch.float32)
        mask = torch.zeros(len(feats), width, dtype=torch.bool)
        for i, f in enumerate(feats):
            n = min(f.shape[0], width)
            tokens[i, :n] = f[:n]
            mask[i, :n] = True
        if device is not None:
            tokens, mask = tokens.to(device), mask.to(device)
        return tokens, mask

    # ------------------------------------------------------------ writing

    def add(self, captions: list[str], encoder: TextEncoder, batch_size: int = 64) -> int:
        """Encode the captions not cached yet and store them in one new shard.

        Returns:
            How many captions were new (0: nothing written).

        Raises:
            ValueError: ``encoder`` is not the one this cache belongs to; bad captions.
        """
        captions = check_captions(captions)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {short_repr(batch_size)}")
        theirs = encoder.identity()
        if (theirs["name"], theirs["weights_hash"]) != (
            self.identity["name"],
            self.identity["weights_hash"],
        ):
            raise ValueError(
                f"cache {self.directory} was written by encoder {_describe(self.identity)}, "
                f"not {_describe(theirs)}"
            )
        new = self.missing(captions)
        if not new:
            return 0
        # Similar lengths in one batch waste less compute on padding.
        new.sort(key=len)
        tensors = {}
        for start in range(0, len(new), batch_size):
            chunk = new[start : start + batch_size]
            tokens, mask = encoder.encode(chunk)
            tokens = tokens.to(device="cpu", dtype=self.dtype)
            for caption, feats, m in zip(chunk, tokens, mask.cpu(), strict=True):
                tensors[caption_key(caption)] = feats[: int(m.sum())].contiguous()
        name = f"shard-{len(self._shards):05d}.safetensors"
        atomic_write(self.directory / name, lambda p: save_file(tensors, p))
        self._write_manifest([*self._shards, name])
        self._open_shard(name)
        return len(new)

    def _write_manifest(self, shards: list[str]) -> None:
        manifest = {
            "format": CACHE_FORMAT,
            "version": CACHE_VERSION,
            "identity": self.identity,
            "shards": shards,
        }
        write_text_atomic(self.directory / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")

    def _open_shard(self, name: str) -> None:
        path = self.directory / name
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise ArtifactError(f"text cache shard {path} cannot be read: {e}") from None
        position = len(self._shards)
        self._shards.append(name)
        self._handles.append(handle)
        for key in handle.keys():  # noqa: SIM118 (safe_open is not iterable)
            if not _KEY.match(key):
                raise ArtifactError(f"text cache shard {path} has a foreign entry {key!r}")
            self._index[key] = position

    def __repr__(self) -> str:
        return (
            f"TextFeatureCache({str(self.directory)!r}, {_describe(self.identity)}, "
            f"{len(self)} captions in {len(self._shards)} shards)"
        )


def _check_identity(identity: Any, what: str) -> dict[str, Any]:
    if not isinstance(identity, dict):
        raise TypeError(f"{what} must be a dict (encoder.identity()), got {short_repr(identity)}")
    absent = [k for k in _IDENTITY_KEYS if k not in identity]
    if absent:
        raise ValueError(f"{what} lacks {', '.join(absent)}: pass encoder.identity()")
    if not isinstance(identity["dim"], int) or identity["dim"] < 1:
        raise ValueError(f"{what} has a bad dim {short_repr(identity['dim'])}")
    return {k: identity[k] for k in _IDENTITY_KEYS}


def _read_manifest(directory: Path) -> tuple[dict[str, Any], list[str]]:
    path = directory / MANIFEST_NAME
    data = read_json_object(path, "text cache manifest")
    if data.get("format") != CACHE_FORMAT or data.get("version") != CACHE_VERSION:
        raise ArtifactError(
            f"{path} is not a version-{CACHE_VERSION} zigma text cache manifest "
            f"(format {short_repr(data.get('format'))}, version {short_repr(data.get('version'))})"
        )
    if not isinstance(data.get("identity"), dict):
        raise ArtifactError(f"{path}: 'identity' must be an object (an encoder's identity)")
    identity = _check_identity(data["identity"], f"text cache manifest {path}: identity")
    shards = data.get("shards")
    if not isinstance(shards, list) or not all(
        isinstance(s, str) and _SHARD_NAME.match(s) for s in shards
    ):
        raise ArtifactError(f"{path}: 'shards' must be a list of shard-NNNNN.safetensors names")
    gone = [s for s in shards if not (directory / s).is_file()]
    if gone:
        raise ArtifactError(f"text cache {directory} lists {len(gone)} missing shards: {gone[0]}")
    return identity, shards
