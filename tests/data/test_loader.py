import itertools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from zigma.config import ConfigError, from_dict, to_dict
from zigma.data import (
    DataConfig,
    DataLoadError,
    EpochSampler,
    ShapesDataset,
    SkipSampler,
    build_dataset,
    collate_batch,
    derive_seed,
    epoch_permutation,
    iterate_batches,
    make_loader,
)


class IndexDataset(Dataset):
    """Label = index; the image holds a random draw from get_item's generator, so tests can
    see both the order and the augmentation randomness."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def get_item(self, index, generator=None):
        noise = torch.rand(1, 2, 2, generator=generator)
        return {"image": noise, "label": torch.tensor(index), "caption": f"item {index}"}

    def __getitem__(self, index):
        return self.get_item(index)


def labels(batches):
    return [b["label"].tolist() for b in batches]


def same_batches(a, b):
    return len(a) == len(b) and all(
        torch.equal(x["image"], y["image"])
        and torch.equal(x["label"], y["label"])
        and x["caption"] == y["caption"]
        for x, y in zip(a, b, strict=True)
    )


def test_derive_seed():
    assert derive_seed(1, 2) == derive_seed(1, 2)
    seeds = {derive_seed(s, e) for s in range(20) for e in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert derive_seed(1, 2) != derive_seed(2, 1) != derive_seed(1, 2, 0)
    with pytest.raises(ValueError):
        derive_seed(-1)


def test_epoch_sampler():
    s = EpochSampler(10, seed=3, epoch=1)
    order = list(s)
    assert sorted(order) == list(range(10)) and list(s) == order  # re-iterable, same order
    assert order == epoch_permutation(10, 3, 1).tolist()
    assert list(EpochSampler(10, seed=3, epoch=1, start_index=4)) == order[4:]
    assert list(EpochSampler(5, shuffle=False, start_index=2)) == [2, 3, 4]
    s = EpochSampler(10, seed=3, epoch=1, start_index=4)
    s.set_epoch(2)
    assert len(s) == 10 and list(s) == epoch_permutation(10, 3, 2).tolist()


def test_same_seed_same_order_other_epoch_or_seed_differs():
    ds = IndexDataset(40)
    a = list(make_loader(ds, 8, seed=1, epoch=0))
    b = list(make_loader(ds, 8, seed=1, epoch=0))
    assert same_batches(a, b)
    assert labels(a) != labels(list(make_loader(ds, 8, seed=1, epoch=1)))
    assert labels(a) != labels(list(make_loader(ds, 8, seed=2, epoch=0)))
    flat = sorted(itertools.chain.from_iterable(labels(a)))
    assert flat == list(range(40))  # one epoch is a permutation


def test_no_shuffle_and_drop_last():
    ds = IndexDataset(10)
    assert labels(make_loader(ds, 4, shuffle=False)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert labels(make_loader(ds, 4, shuffle=False, drop_last=False))[-1] == [8, 9]


def test_start_batch_matches_uninterrupted_epoch():
    ds = IndexDataset(50)
    full = list(make_loader(ds, 6, seed=4, epoch=3))
    for k in (0, 1, 5, len(full)):
        assert same_batches(list(make_loader(ds, 6, seed=4, epoch=3, start_batch=k)), full[k:])


def test_augmentation_depends_on_epoch_not_on_batch_position():
    ds = IndexDataset(16)
    e0 = {int(x["label"][i]): x["image"][i] for x in make_loader(ds, 4) for i in range(4)}
    e1 = {int(x["label"][i]): x["image"][i] for x in make_loader(ds, 4, epoch=1) for i in range(4)}
    assert not any(torch.equal(e0[k], e1[k]) for k in e0)


def test_iterate_batches_resume_is_exact_across_epochs():
    ds = IndexDataset(30)  # 4 batches of 7 per epoch (2 dropped)
    stream = list(itertools.islice(iterate_batches(ds, 7, seed=9), 13))
    assert labels(stream[:4]) == labels(list(make_loader(ds, 7, seed=9, epoch=0)))
    assert labels(stream[4:8]) == labels(list(make_loader(ds, 7, seed=9, epoch=1)))
    for start in (1, 4, 6, 11):
        resumed = list(
            itertools.islice(iterate_batches(ds, 7, seed=9, start_step=start), 13 - start)
        )
        assert same_batches(resumed, stream[start:])


def test_workers_do_not_change_results():
    ds = IndexDataset(24)
    serial = list(make_loader(ds, 4, seed=5, epoch=2))
    parallel = list(make_loader(ds, 4, seed=5, epoch=2, num_workers=2))
    assert same_batches(serial, parallel)


def test_folder_augmentation_resume_and_workers(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
    cfg = DataConfig(name="folder", data_dir=str(tmp_path), resolution=16, flip=True, crop="random")
    ds = build_dataset(cfg)
    stream = list(itertools.islice(iterate_batches(ds, 2, seed=1), 7))
    resumed = list(itertools.islice(iterate_batches(ds, 2, seed=1, start_step=4, num_workers=2), 3))
    assert same_batches(resumed, stream[4:])


def write_pngs(folder, n, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        pixels = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")


def test_folder_with_bad_files_resumes_exactly_with_any_worker_count(tmp_path):
    write_pngs(tmp_path, 12)
    for name in ("03.png", "04.png", "05.png"):  # cut before indexing: skipped and counted
        data = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
    cfg = DataConfig(name="folder", data_dir=str(tmp_path), resolution=16, flip=True, crop="random")
    ds = build_dataset(cfg)
    assert len(ds) == 9 and ds.skip_summary == "skipped 3 files (3 truncated or corrupt)"
    for name in ("07.png", "08.png"):  # cut after indexing: a stand-in at load time
        (tmp_path / name).write_bytes(b"\x89PNG")
    stream = list(itertools.islice(iterate_batches(ds, 2, seed=1), 9))
    for workers in (0, 2):
        for start in (0, 3, 5):
            resumed = iterate_batches(ds, 2, seed=1, start_step=start, num_workers=workers)
            assert same_batches(list(itertools.islice(resumed, 9 - start)), stream[start:])


def test_too_few_usable_images_say_what_was_skipped(tmp_path):
    write_pngs(tmp_path, 3)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes((tmp_path / "00.png").read_bytes()[:40])
    ds = build_dataset(DataConfig(name="folder", data_dir=str(tmp_path), resolution=8))
    with pytest.raises(
        ValueError,
        match=r"3 samples holds no batch of 4 with drop_last=True "
        r"\(skipped 2 files \(1 empty file, 1 unreadable\)\)",
    ):
        iterate_batches(ds, 4)


def test_no_loadable_image_in_a_worker_is_one_clean_message(tmp_path):
    write_pngs(tmp_path, 4)
    ds = build_dataset(DataConfig(name="folder", data_dir=str(tmp_path), resolution=8))
    for p in ds.paths:
        os.unlink(p)
    with pytest.raises(DataLoadError) as info:
        next(iterate_batches(ds, 2, num_workers=1))
    assert str(info.value) == (
        f"none of the 4 images in {tmp_path} loads any more (they were readable when the run "
        "started: was the folder changed or unmounted?)"
    )


def test_distributed_shards_are_disjoint_and_complete():
    ds = IndexDataset(40)
    for epoch in (0, 1):
        shards = [
            list(itertools.chain.from_iterable(
                labels(make_loader(ds, 4, seed=2, epoch=epoch, num_replicas=2, rank=r))))
            for r in range(2)
        ]  # fmt: skip
        assert len(shards[0]) == len(shards[1]) == 20
        assert not set(shards[0]) & set(shards[1])
        assert sorted(shards[0] + shards[1]) == list(range(40))
    r0 = make_loader(ds, 4, seed=2, num_replicas=2, rank=0)
    assert isinstance(r0.sampler, DistributedSampler)
    again = make_loader(ds, 4, seed=2, epoch=1, num_replicas=2, rank=0)
    assert labels(r0) != labels(again)
    full = list(make_loader(ds, 4, seed=2, epoch=1, num_replicas=2, rank=1))
    skipped = list(make_loader(ds, 4, seed=2, epoch=1, num_replicas=2, rank=1, start_batch=2))
    assert same_batches(skipped, full[2:])
    with pytest.raises(ValueError, match="rank"):
        make_loader(ds, 4, num_replicas=2, rank=2)


def test_initialised_process_group_uses_distributed_sampler(tmp_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        ds = IndexDataset(20)
        loader = make_loader(ds, 5, seed=7, epoch=3)
        assert isinstance(loader.sampler, DistributedSampler)
        ref = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=7)
        ref.set_epoch(3)
        assert list(itertools.chain.from_iterable(labels(loader))) == list(ref)
        stream = list(itertools.islice(iterate_batches(ds, 5, seed=7), 6))
        assert same_batches(
            list(itertools.islice(iterate_batches(ds, 5, seed=7, start_step=3), 3)), stream[3:]
        )
    finally:
        dist.destroy_process_group()


def test_skip_sampler():
    base = EpochSampler(10, seed=1)
    s = SkipSampler(base, 3)
    assert list(s) == list(base)[3:] and len(s) == 7
    s.set_epoch(1)
    assert list(s) == epoch_permutation(10, 1, 1).tolist()


def test_collate_with_real_items():
    items = [ShapesDataset(4, 16)[i] for i in range(4)]
    batch = collate_batch(items)
    assert batch["image"].shape == (4, 3, 16, 16) and batch["label"].dtype == torch.int64
    assert batch["label"].shape == (4,) and isinstance(batch["caption"], list)
    ref = default_collate(items)  # torch's default collate agrees
    assert torch.equal(ref["image"], batch["image"]) and ref["caption"] == batch["caption"]
    plain = next(iter(DataLoader(ShapesDataset(4, 16), batch_size=4)))
    assert torch.equal(plain["image"], batch["image"])


def test_iterate_batches_from_config_and_too_small():
    cfg = DataConfig(name="shapes", num_samples=10, resolution=8)
    batch = next(iterate_batches(cfg, 4))
    assert batch["image"].shape == (4, 3, 8, 8)
    with pytest.raises(ValueError, match="no batch"):
        iterate_batches(IndexDataset(3), 4)  # at the call: before a trainer writes anything


def test_data_config_validation_and_round_trip():
    cfg = DataConfig(name="folder", data_dir="/x", flip=True, crop="random", channels=1)
    assert from_dict(DataConfig, to_dict(cfg)) == cfg
    assert DataConfig().resolved_channels == 3
    assert DataConfig(name="fashion-mnist").resolved_channels == 1
    cases = [
        ({"name": "cifar"}, "name"),
        ({"resolution": 4}, "resolution"),
        ({"channels": 2}, "channels"),
        ({"num_samples": 0}, "num_samples"),
        ({"name": "folder"}, "data_dir"),
        ({"flip": True}, "flip"),
        ({"name": "mnist", "flip": True}, "flip"),
        ({"crop": "random"}, "crop"),
        ({"seed": -3}, "seed"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError, match=field):
            DataConfig(**kwargs)
    with pytest.raises(ConfigError, match="name"):
        from_dict(DataConfig, {"name": "imagenet"})


def test_build_dataset_variants(tmp_path):
    shapes = build_dataset(DataConfig(num_samples=5, resolution=16, channels=1))
    assert isinstance(shapes, ShapesDataset) and shapes[0]["image"].shape == (1, 16, 16)
    test = build_dataset(DataConfig(num_samples=5, resolution=16), "test")
    assert not torch.equal(
        test[0]["image"], build_dataset(DataConfig(num_samples=5, resolution=16))[0]["image"]
    )
    from PIL import Image

    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (20, 20), (255, 0, 0)).save(tmp_path / "train" / "a" / "x.png")
    folder = build_dataset(DataConfig(name="folder", data_dir=str(tmp_path), resolution=8))
    assert len(folder) == 1 and folder.class_names == ("a",)
    with pytest.raises(FileNotFoundError, match="test"):
        build_dataset(DataConfig(name="folder", data_dir=str(tmp_path)), "test")
    with pytest.raises(ValueError, match="split"):
        build_dataset(DataConfig(), "val")
