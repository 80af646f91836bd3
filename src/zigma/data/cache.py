"""Keep a whole dataset in memory, read once.

A procedural item (a shape, a scene) is a pure function of its index, but rendering it costs
far more than a small model's training step on a GPU: pretrained/shapes-gpu needed 12 loader
workers to feed batches of 512. Rendering the 20k items once (seconds) and slicing tensors
afterwards feeds any batch size from the main process.

Only datasets whose items do not change from epoch to epoch can be cached: those with random
transforms or caption draws (a ``get_item(index, generator)`` method) would be frozen.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from zigma.config import ConfigError

logger = logging.getLogger(__name__)


class CachedItems(Dataset):
    """Every item of ``dataset``, rendered once (``num_workers`` processes) and held as
    stacked tensors; items and batches read back equal to the dataset's own.

    Attributes other than items (``num_classes``, ``classes``...) are forwarded to the
    wrapped dataset, so code that asks the dataset what it is sees no difference.

    Raises:
        ConfigError: the dataset draws random transforms or captions per epoch.
    """

    def __init__(self, dataset: Dataset, num_workers: int = 0, batch_size: int = 256) -> None:
        if hasattr(dataset, "get_item"):
            raise ConfigError(
                f"data.cache: {type(dataset).__name__} draws random transforms or captions "
                "for every epoch, which a cache would freeze; use data.cache=false"
            )
        # imported here: loader.py imports this module
        from zigma.data.loader import collate_batch

        self.dataset = dataset
        images, labels, self.captions = [], [], []
        loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_batch
        )
        for batch in loader:
            images.append(batch["image"])
            labels.append(batch["label"])
            self.captions.extend(batch["caption"])
        self.images = torch.cat(images)
        self.labels = torch.cat(labels)
        megabytes = self.images.numel() * self.images.element_size() / 2**20
        logger.info("data.cache: %d items in memory (%.0f MB)", len(self.labels), megabytes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "image": self.images[index],
            "label": self.labels[index],
            "caption": self.captions[index],
        }

    def __getitems__(self, indices: list[int]) -> dict[str, Any]:
        """A whole batch, stacked (what ``collate_batch`` would make of the items)."""
        return {
            "image": self.images[indices],
            "label": self.labels[indices],
            "caption": [self.captions[i] for i in indices],
        }

    def __getattr__(self, name: str) -> Any:
        # only reached for names this object lacks; "dataset" itself must not recurse
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)
