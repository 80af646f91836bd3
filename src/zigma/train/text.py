"""Captions -> text conditions during training: token features from a feature cache where it has
them, else from the encoder (loaded only if needed), remembered in memory for the run.

A batch's captions become ``batch["text"] = (tokens [B, L, D], mask [B, L])``, padded to the
longest caption of the batch (a text model's output does not depend on padding). Features are a
deterministic function of the caption, so resuming reproduces them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zigma.config import ConfigError

logger = logging.getLogger("zigma.train")

# In-memory features kept per run (~30 KB each): the one-object scenes and the class captions
# repeat a few thousand captions; beyond this many distinct ones all are forgotten and the next
# ones re-read or re-encoded.
MEMO_LIMIT = 20_000


class TextFeatures:
    """Token features of captions for one encoder (``spec``: "minilm" or a directory), read from
    ``cache`` (a ``zigma text-cache`` folder) where it holds them.

    ``identity`` is the encoder's (name, dim, weights hash, ...), from the cache's manifest when
    the cache holds every caption asked so far, so a machine without the encoder can train.
    An empty caption (an image without one) is the null text: no tokens, an all-False mask.
    """

    def __init__(self, spec: str, cache: str | Path | None = None, device: str = "cpu") -> None:
        from zigma.text import TextFeatureCache, spec_weights_hash

        self.spec, self.device = spec, device
        self.cache = TextFeatureCache.open(cache) if cache is not None else None
        self._encoder = None
        self._memo: dict[str, torch.Tensor] = {}
        if self.cache is not None:
            self.identity: dict[str, Any] = dict(self.cache.identity)
            want = spec_weights_hash(spec)  # None: the encoder is not on this machine
            if want is not None and want != self.identity["weights_hash"]:
                raise ConfigError(
                    f"text.cache {cache} holds features of {self.identity['name']} "
                    f"({self.identity['weights_hash'][:12]}), not of text.encoder {spec} "
                    f"({want[:12]})"
                )
        else:
            self.identity = self.encoder.identity()

    @property
    def encoder(self):
        """The text encoder, loaded on first use."""
        if self._encoder is None:
            from zigma.text import load_text_encoder

            # a cache's encoder was checked against the spec's weights in __init__
            self._encoder = load_text_encoder(self.spec, device=self.device)
        return self._encoder

    def _features(self, captions: Sequence[str]) -> None:
        """Fill the memo with the features of ``captions`` not yet in it."""
        todo = list(dict.fromkeys(c for c in captions if c not in self._memo))
        if not todo:
            return
        if len(self._memo) + len(todo) > MEMO_LIMIT:
            self._memo.clear()  # forget everything, this batch's captions included
            todo = list(dict.fromkeys(captions))
        for c in [c for c in todo if not c.strip()]:  # no caption: the null text
            self._memo[c] = torch.zeros(0, int(self.identity["dim"]))
        todo = [c for c in todo if c.strip()]
        if self.cache is not None:
            missing = set(self.cache.missing(todo))
            found = [c for c in todo if c not in missing]
            if found:
                tokens, mask = self.cache.lookup(found)
                for i, c in enumerate(found):
                    self._memo[c] = tokens[i, : int(mask[i].sum())].float()
            todo = [c for c in todo if c in missing]
        if todo:
            tokens, mask = self.encoder.encode(todo)
            for i, c in enumerate(todo):
                self._memo[c] = tokens[i, : int(mask[i].sum())].float().cpu()

    def __call__(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens float32 [B, L, D], mask bool [B, L]) of ``captions``, on the CPU."""
        self._features(captions)
        rows = [self._memo[c] for c in captions]
        length = max(1, max(len(r) for r in rows))
        tokens = torch.zeros(len(rows), length, int(self.identity["dim"]))
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            tokens[i, : len(r)] = r
            mask[i, : len(r)] = True
        return tokens, mask
