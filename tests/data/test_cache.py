"""data.cache: a dataset held in memory gives the batches the dataset itself gives."""

from __future__ import annotations

import pytest
import torch

from zigma.config import ConfigError
from zigma.data import CachedItems, DataConfig, ScenesDataset, build_dataset, iterate_batches


def _shapes(**kw) -> DataConfig:
    return DataConfig(name="shapes", resolution=16, num_samples=100, style="centered", **kw)


@pytest.mark.parametrize("start_step", [0, 3, 7])  # 7: the second epoch of 32-item batches
@pytest.mark.parametrize("shard", [(1, 0), (2, 1)])
def test_cached_batches_equal_the_rendered_ones(start_step, shard):
    dataset = build_dataset(_shapes())
    cached = CachedItems(dataset)
    opts = dict(seed=5, start_step=start_step, num_replicas=shard[0], rank=shard[1])
    for a, b in zip(
        _take(iterate_batches(dataset, 32, **opts), 3),
        _take(iterate_batches(cached, 32, **opts), 3),
        strict=True,
    ):
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["label"], b["label"])
        assert a["caption"] == b["caption"]


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_cache_reads_with_workers_and_forwards_what_the_dataset_is():
    dataset = build_dataset(_shapes())
    cached = CachedItems(dataset, num_workers=2, batch_size=7)  # a ragged last read
    assert len(cached) == len(dataset) == 100
    assert cached.num_classes == dataset.num_classes
    for i in (0, 41, 99):
        assert torch.equal(cached[i]["image"], dataset[i]["image"])
        assert int(cached[i]["label"]) == int(dataset[i]["label"])


def test_datasets_that_draw_per_epoch_cannot_be_cached():
    with pytest.raises(ConfigError, match="cache=True is supported for name in"):
        DataConfig(name="fashion-mnist", cache=True)
    with pytest.raises(ConfigError, match="cache=True"):
        DataConfig(name="scenes", resolution=32, cache=True)
    scenes = ScenesDataset(8, 32)  # its captions are drawn per epoch
    with pytest.raises(ConfigError, match="draws random transforms or captions"):
        CachedItems(scenes)
