"""zigma prepare: shards hold exactly the autoencoder's latents of the data (flip copies
included), an interrupted run finishes with the bytes of an uninterrupted one, corrupt shards
are caught by name, and another autoencoder's or data's folder is refused untouched."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from zigma.artifacts import RunLock, RunLockedError
from zigma.autoencoder import KLAutoencoder, KLConfig, load_autoencoder, save_autoencoder
from zigma.autoencoder.prepare import PrepareConfig, prepare_latents
from zigma.config import ConfigError
from zigma.data import (
    DataConfig,
    LatentShardError,
    LatentShards,
    build_dataset,
    epoch_permutation,
    iterate_batches,
)


def _vae(folder: Path, seed: int = 0):
    torch.manual_seed(seed)
    model = KLAutoencoder(KLConfig(channels=(8, 16, 16)))
    with torch.no_grad():  # random, not init, weights: latents that depend on every pixel
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.scaling_factor, model.shift_factor = 0.7, 0.1
    save_autoencoder(model, folder)
    return load_autoencoder(folder)


def _shapes(n=20, **kw) -> PrepareConfig:
    data = DataConfig(name="shapes", resolution=16, num_samples=n, style="simple")
    return PrepareConfig(data=data, shard_size=6, batch_size=4, **kw)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_shards_hold_the_encoded_data_and_labels(tmp_path):
    ae = _vae(tmp_path / "vae")
    cfg = _shapes(n=14)
    s = prepare_latents(ae, cfg, tmp_path / "lat")
    assert (s.num_items, s.num_shards, s.written, s.kept, s.finished) == (14, 3, 3, 0, True)
    ds = LatentShards(tmp_path / "lat")
    source = build_dataset(DataConfig(**{**vars(cfg.data), "channels": 3}))
    assert len(ds) == 14 and ds.latent_shape == (4, 4, 4) and ds.autoencoder["hash"]
    assert ds.num_classes == source.num_classes
    for j in (0, 5, 6, 13):  # both sides of a shard boundary
        item = ds[j]
        want = ae.encode(source[j]["image"][None])[0]  # stored as float16: its rounding
        torch.testing.assert_close(item["image"], want, rtol=2e-3, atol=1e-4)
        assert int(item["label"]) == int(source[j]["label"])
        assert item["caption"] == source[j]["caption"]
    # the index's sha256 is the file's
    index = json.loads((tmp_path / "lat" / "index.json").read_text())
    for entry in index["shards"]:
        digest = hashlib.sha256((tmp_path / "lat" / entry["name"]).read_bytes()).hexdigest()
        assert digest == entry["sha256"]


def test_flip_copies_follow_their_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    ae = _vae(tmp_path / "vae")
    data = DataConfig(name="folder", data_dir=str(folder), resolution=16, min_size=1)
    prepare_latents(ae, PrepareConfig(data=data, flip=True, dtype="float32"), tmp_path / "lat")
    ds = LatentShards(tmp_path / "lat")
    source = build_dataset(DataConfig(**{**vars(data), "channels": 3}))
    assert len(ds) == 6
    for i in range(3):
        image = source[i]["image"][None]
        mirrored = ae.encode(image.flip(-1))[0]
        torch.testing.assert_close(ds[2 * i]["image"], ae.encode(image)[0])
        torch.testing.assert_close(ds[2 * i + 1]["image"], mirrored)
        assert not torch.allclose(mirrored, ds[2 * i]["image"], atol=1e-3)


def test_interrupted_run_finishes_with_the_uninterrupted_bytes(tmp_path):
    ae = _vae(tmp_path / "vae")
    cfg = _shapes()  # 20 items: shards of 6, 6, 6, 2
    prepare_latents(ae, cfg, tmp_path / "whole")
    part = tmp_path / "part"
    s = prepare_latents(ae, cfg, part, max_shards=2)  # "killed" after two shards
    assert (s.written, s.finished) == (2, False)
    assert not (part / "index.json").exists()
    with pytest.raises(LatentShardError, match="not finished"):
        LatentShards(part)
    kept = {n: (part / n).stat().st_mtime_ns for n in ("shard_000000.safetensors",)}
    (part / ".shard_000002.safetensors.x1y2.tmp").write_bytes(b"half a shard")  # killed mid-write
    s = prepare_latents(ae, cfg, part)
    assert (s.written, s.kept, s.finished) == (2, 2, True)
    assert (part / "shard_000000.safetensors").stat().st_mtime_ns == kept[
        "shard_000000.safetensors"
    ]
    assert _snapshot(part) == _snapshot(tmp_path / "whole")  # shards, plan and index
    # a third run has nothing left to do and changes nothing
    s = prepare_latents(ae, cfg, part)
    assert (s.written, s.kept) == (0, 4) and _snapshot(part) == _snapshot(tmp_path / "whole")


def test_corrupt_or_missing_shard_is_named(tmp_path):
    ae = _vae(tmp_path / "vae")
    prepare_latents(ae, _shapes(), tmp_path / "lat")
    shard = tmp_path / "lat" / "shard_000001.safetensors"
    good = shard.read_bytes()
    data = bytearray(good)
    data[-3] ^= 0xFF  # one flipped bit in the latents' bytes
    shard.write_bytes(bytes(data))
    ds = LatentShards(tmp_path / "lat")
    assert ds[0]["image"].shape == (4, 4, 4)  # other shards still read
    with pytest.raises(LatentShardError, match="shard_000001.safetensors is corrupt"):
        ds[7]
    # the loaders surface it at the first batch that touches it: no step trains on it
    batches = iterate_batches(ds, 20, seed=0)
    with pytest.raises(LatentShardError, match="shard_000001"):
        next(batches)
    shard.unlink()
    with pytest.raises(LatentShardError, match="shard_000001.safetensors is missing"):
        LatentShards(tmp_path / "lat")[6]
    # the repair the message suggests: prepare again rewrites just that shard
    s = prepare_latents(ae, _shapes(), tmp_path / "lat")
    assert (s.written, s.kept) == (1, 3) and shard.read_bytes() == good
    assert LatentShards(tmp_path / "lat")[7]["image"].shape == (4, 4, 4)


def test_out_of_another_vae_or_data_is_refused_untouched(tmp_path):
    ae = _vae(tmp_path / "vae")
    out = tmp_path / "lat"
    prepare_latents(ae, _shapes(), out, max_shards=1)
    before = _snapshot(out)
    other = _vae(tmp_path / "vae2", seed=1)
    with pytest.raises(ValueError, match="another autoencoder"):
        prepare_latents(other, _shapes(), out)
    with pytest.raises(ValueError, match="differ in data"):
        prepare_latents(ae, _shapes(n=21), out)
    with pytest.raises(ValueError, match="differ in shard_size"):
        prepare_latents(ae, PrepareConfig(data=_shapes().data, shard_size=5), out)
    assert _snapshot(out) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not zigma prepare's"):
        prepare_latents(ae, _shapes(), foreign)


def test_a_second_prepare_into_the_same_folder_is_refused(tmp_path):
    ae = _vae(tmp_path / "vae")
    out = tmp_path / "lat"
    prepare_latents(ae, _shapes(), out, max_shards=1)
    other = out / ".shard_000001.safetensors.abc123.tmp"  # the other run's shard being written
    other.write_bytes(b"in progress")
    with RunLock(out), pytest.raises(RunLockedError, match="in use by pid"):
        prepare_latents(ae, _shapes(), out)
    assert other.read_bytes() == b"in progress"  # its temp file was not cleaned up under it
    s = prepare_latents(ae, _shapes(), out)  # once it is gone, the orphan is removed
    assert s.finished and not other.exists()
    # a run killed after taking the lock, before writing its plan, left only the lock file
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    RunLock(fresh).acquire().release()
    assert prepare_latents(ae, _shapes(), fresh, max_shards=1).written == 1


def test_bad_settings_fail_before_any_compute(tmp_path):
    ae = _vae(tmp_path / "vae")
    with pytest.raises(ValueError, match="not divisible by the autoencoder's downsample"):
        prepare_latents(ae, PrepareConfig(data=DataConfig(resolution=18)), tmp_path / "a")
    with pytest.raises(ConfigError, match="not mirror-safe"):
        _shapes(flip=True)
    with pytest.raises(ConfigError, match="image dataset"):
        PrepareConfig(data=DataConfig(name="moving-shapes", resolution=16, frames=4))
    unsaved = KLAutoencoder(KLConfig(channels=(8, 16, 16)))
    with pytest.raises(ValueError, match="no weights hash"):
        prepare_latents(unsaved, _shapes(), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_latent_batches_resume_exactly(tmp_path):
    ae = _vae(tmp_path / "vae")
    prepare_latents(ae, _shapes(n=30), tmp_path / "lat")
    ds = LatentShards(tmp_path / "lat")
    whole = iterate_batches(ds, 4, seed=3)
    first = [next(whole) for _ in range(10)]  # past one epoch (7 batches): crosses epochs
    resumed = iterate_batches(LatentShards(tmp_path / "lat"), 4, seed=3, start_step=6)
    for k in range(6, 10):
        b = next(resumed)
        torch.testing.assert_close(b["image"], first[k]["image"], rtol=0, atol=0)
        assert torch.equal(b["label"], first[k]["label"]) and b["caption"] == first[k]["caption"]
    # the order is epoch_permutation's over the whole folder: batches mix shards
    order = epoch_permutation(30, 3, 0)[:4].tolist()
    want = torch.stack([ds[i]["image"] for i in order])
    torch.testing.assert_close(first[0]["image"], want, rtol=0, atol=0)
    assert len({i // 6 for i in order}) > 1
