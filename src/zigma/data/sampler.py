"""Deterministic, resumable sample orders: one permutation per (seed, epoch), skippable.

A run that stops at (epoch, step) can rebuild the exact remaining order from those two numbers:
the order never depends on how many times a sampler was iterated before.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

_MASK64 = (1 << 64) - 1


def derive_seed(*parts: int) -> int:
    """Mix integers into one 63-bit seed (splitmix64 finaliser over each part).

    Used for (seed, epoch) orders and (seed, epoch, index) augmentations, so nearby inputs
    give unrelated streams; pure Python, so it costs about a microsecond per call.

    Raises:
        ValueError: if a part is negative.
    """
    h = 0x9E3779B97F4A7C15
    for p in parts:
        if p < 0:
            raise ValueError(f"seed parts must be non-negative, got {parts}")
        h = (h ^ (p & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _MASK64
        h ^= h >> 29
    return h >> 1  # torch.Generator.manual_seed and numpy both accept < 2**63 everywhere


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled order of ``range(n)`` for one epoch, a pure function of (n, seed, epoch)."""
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, epoch))
    return torch.randperm(n, generator=g)


class EpochSampler(Sampler[int]):
    """Shuffled (or sequential) indices for one epoch, starting at ``start_index``.

    Iterating twice gives the same order (the order is derived, not drawn from a stateful
    generator). ``set_epoch`` moves to another epoch and resets the start to 0, as a trainer
    does when it rolls over from a resumed epoch to the next one.

    Args:
        num_samples: size of the dataset.
        seed: shuffle seed; the order is ``epoch_permutation(num_samples, seed, epoch)``.
        epoch: epoch number.
        shuffle: False gives ``0..n-1`` in order.
        start_index: skip this many indices of the epoch's order (cheap: no item is loaded).
    """

    def __init__(
        self,
        num_samples: int,
        *,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        start_index: int = 0,
    ) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        if seed < 0 or epoch < 0:
            raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
        if start_index < 0:
            raise ValueError(f"start_index must be >= 0, got {start_index}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle
        self.start_index = start_index

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.start_index = 0

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, self.epoch)
            return iter(order[self.start_index :].tolist())
        return iter(range(self.start_index, self.num_samples))

    def __len__(self) -> int:
        return max(self.num_samples - self.start_index, 0)


class SkipSampler(Sampler[int]):
    """Any sampler with its first ``skip`` indices dropped (e.g. a DistributedSampler on resume).

    Skipping walks indices only, so resuming k batches into an epoch costs microseconds.
    """

    def __init__(self, base: Sampler[int], skip: int) -> None:
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.base = base
        self.skip = skip

    def set_epoch(self, epoch: int) -> None:
        set_epoch = getattr(self.base, "set_epoch", None)
        if set_epoch is None:
            raise TypeError(f"{type(self.base).__name__} has no set_epoch")
        set_epoch(epoch)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.base), self.skip, None)

    def __len__(self) -> int:
        return max(len(self.base) - self.skip, 0)  # type: ignore[arg-type]
