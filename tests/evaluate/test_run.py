"""zigma eval's engine: sample shards (resumable, the same for any world size), features cached
beside them, reference statistics cached per data and extractor, metrics with protocols."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tests.tiny_models import wake_output_layers
from torch import nn

from zigma.cli import main
from zigma.data import DataConfig, SeededItems, build_dataset
from zigma.evaluate import load_for_sampling
from zigma.evaluate.features import Extractor
from zigma.evaluate.run import (
    MANIFEST_NAME,
    Reference,
    SampleSettings,
    compute_metrics,
    conditioning_accuracy_of,
    evaluate_model,
    export_adm_npz,
    format_table,
    generate_shards,
    load_reference,
    read_shard,
    reference_features,
    shard_features,
    shard_name,
    shard_seed,
    to_uint8,
    write_results,
    write_shard_features,
)
from zigma.generate import generate
from zigma.models import ZigMa, ZigMaConfig

FAST = dict(sampler="euler", steps=2, batch_size=4)


def _save_tiny(path, num_classes=3, input_size=8, in_channels=3):
    """A tiny random-weight ZigMa in the exported on-disk format (save_pretrained)."""
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=input_size, in_channels=in_channels, patch_size=2, hidden_size=16,
            depth=2, num_classes=num_classes,
        )
    )  # fmt: skip
    wake_output_layers(model)  # samples depend on the weights
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("model") / "m")


def _bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != ".lock"}


def test_shards_hold_the_generated_samples_and_spread_labels(model_dir, tmp_path):
    loaded = load_for_sampling(model_dir)
    s = generate_shards(loaded, tmp_path / "e", 10, shard_size=4, seed=5, cfg=2.0, **FAST)
    assert (s.num_shards, s.written, s.kept, s.finished) == (3, 3, 0, True)
    samples, labels = read_shard(tmp_path / "e", 1)
    assert samples.dtype == torch.uint8 and samples.shape == (4, 3, 8, 8)
    assert labels.tolist() == [4 % 3, 5 % 3, 6 % 3, 7 % 3]  # classes in turn by global index
    last, last_labels = read_shard(tmp_path / "e", 2)
    assert len(last) == 2 and last_labels.tolist() == [8 % 3, 9 % 3]
    # shard 1 is generate() of its own seed and conditions, converted like zigma sample's PNGs
    x = generate(
        loaded.model, loaded.transport, 4, cond={"y": torch.tensor([1, 2, 0, 1])},
        seed=shard_seed(5, 1), sampler="euler", steps=2, guidance_scale=2.0, batch_size=4,
    )  # fmt: skip
    expected = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(samples, expected)
    assert torch.equal(
        to_uint8(torch.tensor([-2.0, -1.0, 0.0, 1.0])), torch.tensor([0, 0, 128, 255])
    )
    manifest = json.loads((tmp_path / "e" / MANIFEST_NAME).read_text())
    assert manifest["settings"] == {
        "num": 10, "seed": 5, "sampler": "euler", "steps": 2, "cfg": 2.0, "shard_size": 4,
    }  # fmt: skip
    assert len(manifest["model"]["weights_sha256"]) == 64 and manifest["decoder"] is None


def test_shard_seeds_are_distinct_and_stable():
    seeds = {shard_seed(s, k) for s in range(4) for k in range(50)}
    assert len(seeds) == 200 and all(0 <= v < 2**63 for v in seeds)
    assert shard_seed(0, 3) == shard_seed(0, 3)


def test_killed_and_resumed_equals_uninterrupted(model_dir, tmp_path):
    loaded = load_for_sampling(model_dir)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    generate_shards(loaded, whole, 10, shard_size=3, **FAST)
    first = generate_shards(loaded, parts, 10, shard_size=3, max_shards=2, **FAST)
    assert (first.written, first.finished) == (2, False)
    (parts / ".samples_000002.safetensors.abc_12.tmp").write_bytes(b"torn")  # a killed write
    rest = generate_shards(loaded, parts, 10, shard_size=3, **FAST)
    assert (rest.written, rest.kept, rest.finished) == (2, 2, True)
    assert _bytes(parts) == _bytes(whole)


def test_split_by_rank_gives_the_same_set(model_dir, tmp_path):
    """Ranks given explicitly (the process group's are tested with gloo below)."""
    loaded = load_for_sampling(model_dir)
    one, two = tmp_path / "one", tmp_path / "two"
    generate_shards(loaded, one, 9, shard_size=2, **FAST)
    r0 = generate_shards(loaded, two, 9, shard_size=2, rank=0, world_size=2, **FAST)
    assert (r0.written, r0.finished) == (3, False)  # shards 0, 2, 4
    r1 = generate_shards(loaded, two, 9, shard_size=2, rank=1, world_size=2, **FAST)
    assert (r1.written, r1.finished) == (2, True)
    assert _bytes(one) == _bytes(two)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(steps=3), r"steps \(2 there, 3 now\)"),
        (dict(seed=1), r"seed \(0 there, 1 now\)"),
        (dict(shard_size=4), "shard_size"),
        (dict(num=11), "num"),
    ],
)
def test_other_settings_in_the_same_folder_are_refused_untouched(
    model_dir, tmp_path, change, message
):
    loaded = load_for_sampling(model_dir)
    out = tmp_path / "e"
    generate_shards(loaded, out, 10, shard_size=5, max_shards=1, **FAST)
    before = _bytes(out)
    args = {**dict(num=10, shard_size=5), **FAST, **change}
    with pytest.raises(ValueError, match=message):
        generate_shards(loaded, out, **args)
    assert _bytes(out) == before


def test_another_model_or_foreign_folder_is_refused(model_dir, tmp_path):
    out = tmp_path / "e"
    generate_shards(load_for_sampling(model_dir), out, 4, shard_size=4, **FAST)
    other = _save_tiny(tmp_path / "other", num_classes=2)
    with pytest.raises(ValueError, match="other settings.*model"):
        generate_shards(load_for_sampling(other), out, 4, shard_size=4, **FAST)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not zigma eval's"):
        generate_shards(load_for_sampling(model_dir), foreign, 4, **FAST)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_bad_settings_fail_before_any_sampling(model_dir, tmp_path):
    loaded = load_for_sampling(model_dir)
    out = tmp_path / "e"
    for kwargs, message in [
        (dict(num=0), "num"),
        (dict(sampler="rk9"), "sampler"),
        (dict(cfg=-1.0), "cfg"),
        (dict(batch_size=0), "batch_size"),
        (dict(decode=lambda z: z), "takes no decoder"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate_shards(loaded, out, **{"num": 4, **kwargs})
    assert not out.exists()
    uncond = load_for_sampling(_save_tiny(tmp_path / "u", num_classes=0))
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        generate_shards(uncond, out, 4, cfg=3.0)
    assert not (out / shard_name(0)).exists()


class TinyExtractor(Extractor):
    """A fixed random conv net, a real ``Extractor`` small enough for tests:
    uint8 [N, C, H, W] -> float32 [N, dim]."""

    name = "tiny-test"
    resize = "none (mean over positions); 1 channel repeated to 3"

    def __init__(self, seed: int = 0, dim: int = 6, device="cpu"):
        super().__init__(device)
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, dim, 3)
        with torch.no_grad():
            for p in self.conv.parameters():
                p.copy_(torch.randn(p.shape, generator=g))
        self.dim = dim
        raw = b"".join(p.detach().numpy().tobytes() for p in self.parameters())
        self.sha256 = hashlib.sha256(raw).hexdigest()
        self.calls = 0

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(x.float() / 127.5 - 1)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().forward(images)


def test_features_are_cached_beside_their_shards(model_dir, tmp_path):
    loaded = load_for_sampling(model_dir)
    out, ex = tmp_path / "e", TinyExtractor()
    seen = {}
    generate_shards(
        loaded, out, 7, shard_size=3, on_shard=lambda k, x: seen.setdefault(k, x), **FAST
    )
    # features on the fly: shards 0 and 2 while they are in memory, shard 1 later from disk
    for k in (0, 2):
        write_shard_features(out, k, seen[k], ex)
    assert ex.calls == 2
    feats = shard_features(out, ex)
    assert ex.calls == 3 and feats.shape == (7, 6)
    every = torch.cat([read_shard(out, k)[0] for k in range(3)])
    torch.testing.assert_close(feats, ex(every), rtol=1e-5, atol=1e-6)  # independent batches
    assert torch.equal(shard_features(out, ex), feats) and ex.calls == 4  # all cached now
    other = TinyExtractor(seed=1)  # another extractor: its own files
    assert not torch.allclose(shard_features(out, other), feats)
    assert len(list(out.glob("samples_000001.*.safetensors"))) == 2


def test_reference_cache_is_keyed_by_data_split_extractor_and_num(tmp_path, monkeypatch):
    monkeypatch.setenv("ZIGMA_CACHE", str(tmp_path / "cache"))
    data = DataConfig(name="shapes", resolution=8, num_samples=40, style="centered")
    ex = TinyExtractor()
    feats, path, hit = reference_features(data, ex, 20)
    assert not hit and path.parent == tmp_path / "cache" / "eval" and ex.calls == 1
    # the first 20 real items of the train split, converted like the samples
    dataset = build_dataset(data, "train")
    real = to_uint8(torch.stack([dataset[i]["image"] for i in range(20)]))
    torch.testing.assert_close(feats, ex(real), rtol=1e-5, atol=1e-6)
    again, path2, hit = reference_features(data, ex, 20)
    assert hit and path2 == path and torch.equal(again, feats) and ex.calls == 2  # no extraction
    misses = [
        (data, ex, 20, "test"),
        (data, ex, 10, "train"),
        (dataclasses.replace(data, seed=1), ex, 20, "train"),
        (dataclasses.replace(data, style="full"), ex, 20, "train"),
        (data, TinyExtractor(seed=1), 20, "train"),
    ]
    paths = {path}
    for d, e, n, split in misses:
        _, p, hit = reference_features(d, e, n, split=split)
        assert not hit
        paths.add(p)
    assert len(paths) == 1 + len(misses)
    # the same images under another spelling hit: the data's own channel count, data.cache
    for same in (dataclasses.replace(data, channels=3), dataclasses.replace(data, cache=True)):
        _, p, hit = reference_features(same, ex, 20)
        assert hit and p == path
    # --ref FILE: read back, checked against the extractor
    assert torch.equal(load_reference(path, ex), feats)
    with pytest.raises(ValueError, match="features of tiny-test, not of tiny-test as loaded now"):
        load_reference(path, TinyExtractor(seed=2))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable reference"):
        load_reference(tmp_path / "junk.npz", ex)
    with pytest.raises(ValueError, match="fewer than the 100 real samples"):
        reference_features(data, ex, 100)
    with pytest.raises(ValueError, match="real images, not latents"):
        reference_features(DataConfig(name="latents", data_dir=str(tmp_path)), ex, 4)


def test_adm_npz_layout(model_dir, tmp_path):
    out = tmp_path / "e"
    generate_shards(load_for_sampling(model_dir), out, 7, shard_size=3, **FAST)
    export_adm_npz(out, tmp_path / "samples.npz")
    with np.load(tmp_path / "samples.npz") as z:
        assert sorted(z.files) == ["arr_0", "arr_1"]
        images, labels = z["arr_0"], z["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (7, 8, 8, 3)  # N H W C
    every = torch.cat([read_shard(out, k)[0] for k in range(3)])
    assert np.array_equal(images, every.permute(0, 2, 3, 1).numpy())
    assert labels.dtype == np.int64 and labels.tolist() == [i % 3 for i in range(7)]
    # a grey, unconditional model: 3 equal channels, no labels
    grey = _save_tiny(tmp_path / "grey", num_classes=0, in_channels=1)
    generate_shards(load_for_sampling(grey), tmp_path / "g", 2, **FAST)
    export_adm_npz(tmp_path / "g", tmp_path / "grey.npz")
    with np.load(tmp_path / "grey.npz") as z:
        assert z.files == ["arr_0"] and z["arr_0"].shape == (2, 8, 8, 3)
        assert (z["arr_0"] == z["arr_0"][..., :1]).all()
    generate_shards(load_for_sampling(model_dir), tmp_path / "half", 6, shard_size=3,
                    max_shards=1, **FAST)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="samples_000001.safetensors is not drawn"):
        export_adm_npz(tmp_path / "half", tmp_path / "half.npz")
    assert not (tmp_path / "half.npz").exists()


SHAPES8 = dict(name="shapes", resolution=8, num_samples=40, style="centered")


def test_metric_records_carry_their_protocol(model_dir, tmp_path):
    from zigma.evaluate.metrics import frechet_distance, kernel_distance, prdc
    from zigma.evaluate.protocol import Protocol

    out, ex = tmp_path / "e", TinyExtractor()
    generate_shards(load_for_sampling(model_dir), out, 12, shard_size=5, seed=3, cfg=2.0, **FAST)
    reference = Reference(data=DataConfig(**SHAPES8), num=20, cache=tmp_path / "cache")
    plan = [("fd", ex), ("kd", ex), ("prdc", ex)]
    records = compute_metrics(out, plan, reference, kid_subsets=5, kid_subset_size=8, prdc_k=2)
    names = [r.metric for r in records]
    assert names == ["FD-tiny-test", "KD-tiny-test", *(f"{m}-tiny-test" for m in
                     ("precision", "recall", "density", "coverage"))]  # fmt: skip
    # the values are the metrics of the features computed here in one go
    fake = ex(torch.cat([read_shard(out, k)[0] for k in range(3)]))
    dataset = build_dataset(DataConfig(**SHAPES8), "train")
    real = ex(to_uint8(torch.stack([dataset[i]["image"] for i in range(20)])))
    assert records[0].value == pytest.approx(frechet_distance(real, fake), rel=1e-5)
    kd = kernel_distance(real, fake, subsets=5, subset_size=8, seed=3)
    assert (records[1].value, records[1].std) == pytest.approx(kd, rel=1e-5)
    assert [r.value for r in records[2:]] == pytest.approx(list(prdc(real, fake, k=2).values()))
    p = records[1]
    assert (p.num_fake, p.num_real, p.real_split, p.seed) == (12, 20, "train", 3)
    assert p.real == "shapes resolution=8 num_samples=40 style=centered"
    assert (p.sampler, p.steps, p.guidance) == ("euler", 2, 2.0)
    assert p.nfe == 4  # 2 euler steps, each one guided call of twice the rows
    assert p.settings == {"subsets": 5, "subset_size": 8} and p.extractor == ex.describe()
    assert p.checkpoint == str(model_dir)
    path = write_results(out, records, reference)
    saved = json.loads(path.read_text())
    assert [r["metric"] for r in saved["results"]] == names
    assert saved["manifest"]["settings"]["num"] == 12 and saved["reference"]["split"] == "train"
    back = Protocol.from_json(json.dumps(saved["results"][0]))
    assert back.value == records[0].value and back.extractor == ex.describe()
    table = format_table(records)
    assert "| FD-tiny-test |" in table and "12 fake vs 20 real" in table


@pytest.fixture
def tiny_extractor_spec():
    """``tiny-test`` in H1's registry, so ``zigma eval --extractors tiny-test`` loads it."""
    from zigma.evaluate.features import register_extractor

    register_extractor("tiny-test", _tiny_factory, takes_argument=False)
    return "tiny-test"


def _tiny_factory(arg: str, device: torch.device) -> TinyExtractor:
    return TinyExtractor().to(device)


def _eval_argv(model_dir, out, *extra):
    return [
        "eval", "--ckpt", str(model_dir), "--num", "6", "--out", str(out), "--ref", "shapes",
        "data.resolution=8", "data.num_samples=40", "data.style=centered", "--sampler",
        "euler", "--steps", "2", "--shard-size", "4", "--batch-size", "4", "--device", "cpu",
        "--cache", str(out.parent / "cache"), *extra,
    ]  # fmt: skip


def test_cli_eval_draws_scores_and_rescores(model_dir, tmp_path, capsys, tiny_extractor_spec):
    out = tmp_path / "e"
    argv = _eval_argv(model_dir, out, "--extractors", "tiny-test", "--metrics", "fid,kid,prdc")
    assert main([*argv, "--max-shards", "1"]) == 0
    assert "not finished" in capsys.readouterr().out and not (out / "results.json").exists()
    assert main([*argv, "--export-npz", str(tmp_path / "s.npz")]) == 0
    text = capsys.readouterr().out
    assert "| FD-tiny-test |" in text and "6 fake vs 6 real (shapes" in text
    first = json.loads((out / "results.json").read_text())["results"]
    assert len(first) == 6 and first[1]["settings"] == {"subsets": 100, "subset_size": 6}
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (6, 8, 8, 3)
    # --samples: score the drawn shards again (features and reference read from their caches)
    again = ["eval", "--samples", str(out), "--extractors", "tiny-test", "--metrics",
             "fid,kid,prdc", "--cache", str(tmp_path / "cache"), "--ref", "shapes",
             "data.resolution=8", "data.num_samples=40", "data.style=centered",
             "--json", str(tmp_path / "again.json")]  # fmt: skip
    assert main(again) == 0
    second = json.loads((tmp_path / "again.json").read_text())["results"]
    assert [r["value"] for r in second] == [r["value"] for r in first]
    # no run config beside the model and no --ref (shards scored on another machine): the
    # reference the folder's results.json records is the one used
    bare = again[: again.index("--ref")] + ["--json", str(tmp_path / "bare.json")]
    assert main(bare) == 0
    third = json.loads((tmp_path / "bare.json").read_text())["results"]
    assert [r["value"] for r in third] == [r["value"] for r in first]
    assert {r["real"] for r in third} == {r["real"] for r in first}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--metrics", "fid,bleu"], "--metrics takes"),
        (["data.resolution=16"], "is not the samples' shape"),
        (["data.num_samples=4"], "fewer than the 6 real samples"),
        (["model.depth=2"], "overrides name reference data fields"),
        (["--samples", "X"], "leave out --ckpt"),
        (["--sampler", "rk9"], "sampler must be one of"),
        (["--extractors", "nope"], "unknown feature extractor"),
        (["--ref", "missing.npz"], "no such statistics file"),
    ],
)
def test_cli_eval_bad_input_is_one_line_before_any_compute(
    model_dir, tmp_path, capsys, extra, message, tiny_extractor_spec
):
    out = tmp_path / "e"
    argv = _eval_argv(model_dir, out, "--extractors", "tiny-test")
    i = argv.index("--ref")
    if extra[0] == "--ref":  # replace the dataset reference
        argv = argv[:i] + argv[i + 5 :] + extra
    elif "=" in extra[0]:  # overrides go with the others (argparse takes one positional run)
        argv = argv[: i + 5] + extra + argv[i + 5 :]
    else:
        argv = argv + extra
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zigma eval: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_eval_refuses_other_settings_in_the_same_folder(
    model_dir, tmp_path, capsys, tiny_extractor_spec
):
    out = tmp_path / "e"
    argv = _eval_argv(model_dir, out, "--sample-only")
    assert main(argv) == 0
    before = _bytes(out)
    assert main([*argv, "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "seed (0 there, 4 now)" in err and _bytes(out) == before


def _eval_worker(rank: int, world: int, model_dir: str, out: str, init: str) -> None:
    """One rank of a gloo process group: draw this rank's shards, rank 0 scores them."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        reference = Reference(data=DataConfig(**SHAPES8), num=10, cache=Path(out).parent / "c")
        settings = SampleSettings(num=10, sampler="euler", steps=2, cfg=2.0, shard_size=3)
        plan = [("fd", TinyExtractor()), ("prdc", TinyExtractor())]
        evaluate_model(
            load_for_sampling(model_dir), out, settings, plan, reference, batch_size=2,
            kid_subsets=3,
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch and zigma: ~30 s on 2 busy cores
def test_world_size_two_gives_the_samples_and_numbers_of_one(model_dir, tmp_path):
    import torch.multiprocessing as mp

    one, two = tmp_path / "one", tmp_path / "two"
    mp.spawn(
        _eval_worker, args=(2, str(model_dir), str(two), f"file://{tmp_path / 'pg'}"), nprocs=2
    )
    settings = SampleSettings(num=10, sampler="euler", steps=2, cfg=2.0, shard_size=3)
    reference = Reference(data=DataConfig(**SHAPES8), num=10, cache=tmp_path / "c")
    plan = [("fd", TinyExtractor()), ("prdc", TinyExtractor())]
    records = evaluate_model(
        load_for_sampling(model_dir), one, settings, plan, reference, batch_size=2
    )
    shards = [p.name for p in sorted(one.iterdir()) if p.name.startswith("samples_")]
    assert len(shards) == 8  # 4 shards and their features
    assert {n: (one / n).read_bytes() for n in shards} == {
        n: (two / n).read_bytes() for n in shards
    }
    saved = json.loads((two / "results.json").read_text())["results"]
    assert [r["metric"] for r in saved] == [r.metric for r in records]
    assert [r["value"] for r in saved] == pytest.approx([r.value for r in records], rel=1e-6)


def test_training_logs_a_periodic_eval_next_to_the_loss(tmp_path, tiny_extractor_spec):
    from zigma.config import ConfigError
    from zigma.train import build_config, train

    overrides = [
        "model.hidden_size=16", "model.depth=2", "data.resolution=16", "data.num_samples=64",
        "batch_size=8", "logging.every=5", "preview.every=0", "ema.decay=0.9", "eval.every=5",
        "eval.num=8", "eval.steps=2", "eval.sampler=euler", "eval.batch_size=8",
        'eval.metrics=["fid","kid"]', 'eval.extractors=["tiny-test"]',
    ]  # fmt: skip
    bad = build_config("demo", overrides=[*overrides, 'eval.extractors=["nope"]'], steps=10)
    with pytest.raises(ConfigError, match="eval: unknown feature extractor 'nope'"):
        train(bad, tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()  # refused before any training
    run = tmp_path / "run"
    train(build_config("demo", overrides=overrides, steps=10), run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in lines if "eval/FD-tiny-test" in r]
    assert [r["step"] for r in evals] == [5, 10] and all("eval/KD-tiny-test" in r for r in evals)
    assert evals[0]["eval/FD-tiny-test"] != evals[1]["eval/FD-tiny-test"]  # the weights moved
    assert (run / "eval.png").is_file()
    saved = json.loads((run / "eval" / "step_0000010" / "results.json").read_text())
    assert saved["results"][0]["value"] == evals[1]["eval/FD-tiny-test"]
    assert saved["results"][0]["num_fake"] == 8 and saved["results"][0]["real"].startswith("shapes")


def test_conditioning_accuracy_streams_the_shards(tmp_path):
    clf_module = pytest.importorskip("zigma.evaluate.classifier")  # H2's domain classifiers
    model = _save_tiny(tmp_path / "m", num_classes=8, input_size=16)
    out = tmp_path / "e"
    generate_shards(load_for_sampling(model), out, 11, shard_size=4, **FAST)
    classifier = clf_module.load_classifier("shapes")
    result = conditioning_accuracy_of(out, classifier)
    samples = torch.cat([read_shard(out, k)[0] for k in range(3)])
    labels = torch.arange(11) % 8
    right = classifier.predict(samples)["class"] == labels  # all at once, one loop below
    assert result["value"] == pytest.approx(right.float().mean().item())
    for c in range(8):
        assert result["per_class"][c] == pytest.approx(right[labels == c].float().mean().item())
    assert result["num_fake"] == 11 and result["chance"] == pytest.approx(1 / 8)
    assert result["classifier"] == classifier.describe()
    uncond = _save_tiny(tmp_path / "u", num_classes=0, input_size=16)
    generate_shards(load_for_sampling(uncond), tmp_path / "u_e", 2, **FAST)
    with pytest.raises(ValueError, match="no class labels"):
        conditioning_accuracy_of(tmp_path / "u_e", classifier)


def test_cli_conditioning_accuracy(tmp_path, capsys):
    pytest.importorskip("zigma.evaluate.classifier")
    model = _save_tiny(tmp_path / "m", num_classes=8, input_size=16)
    argv = _eval_argv(model, tmp_path / "e", "--metrics", "cond-acc")
    argv[argv.index("data.resolution=8")] = "data.resolution=16"
    assert main(argv) == 0
    assert "- cond-acc " in capsys.readouterr().out
    saved = json.loads((tmp_path / "e" / "results.json").read_text())
    assert saved["results"] == [] and saved["conditioning"]["num_fake"] == 6
    uncond = _save_tiny(tmp_path / "u", num_classes=0, input_size=16)
    argv[argv.index(str(model))] = str(uncond)
    argv[argv.index(str(tmp_path / "e"))] = str(tmp_path / "u_e")
    assert main(argv) == 2
    assert "not class-conditional" in capsys.readouterr().err
    assert not (tmp_path / "u_e").exists()


def test_video_and_latent_shards(tmp_path):
    from zigma.evaluate.run import read_manifest, sample_shape

    video = _save_tiny(tmp_path / "v", num_classes=0, input_size=(3, 8, 8))
    generate_shards(load_for_sampling(video), tmp_path / "ve", 3, **FAST)
    samples, labels = read_shard(tmp_path / "ve", 0)
    assert samples.shape == (3, 3, 3, 8, 8) and samples.dtype == torch.uint8 and labels is None
    assert sample_shape(read_manifest(tmp_path / "ve")) == (3, 3, 8, 8)
    with pytest.raises(ValueError, match="reads images, the samples are videos"):
        shard_features(tmp_path / "ve", TinyExtractor())
    # a latent model: the shards hold what its decoder makes of the latents (here a fixed
    # 2x upsampling to 1 channel stands in for an autoencoder)
    loaded = load_for_sampling(_save_tiny(tmp_path / "l", num_classes=0, in_channels=4))
    loaded.autoencoder = {"kind": "test", "path": "/x", "hash": "abc", "image_channels": 1,
                          "downsample": 2}  # fmt: skip

    def decode(z):
        return torch.tanh(z.mean(1, keepdim=True)).repeat_interleave(2, -1).repeat_interleave(2, -2)

    with pytest.raises(ValueError, match="is a latent model: pass decode"):
        generate_shards(loaded, tmp_path / "le", 2, **FAST)
    generate_shards(loaded, tmp_path / "le", 2, decode=decode, **FAST)
    samples, _ = read_shard(tmp_path / "le", 0)
    assert samples.shape == (2, 1, 16, 16)
    manifest = read_manifest(tmp_path / "le")
    assert manifest["decoder"]["hash"] == "abc" and "path" not in manifest["decoder"]
    assert sample_shape(manifest) == (1, 16, 16)
    latents = generate(
        loaded.model, loaded.transport, 2, seed=shard_seed(0, 0), sampler="euler", steps=2,
        output=lambda z: z,
    )  # fmt: skip
    assert torch.equal(samples, to_uint8(decode(latents)))  # decoded unclamped latents


def _baseline_argv(tmp_path, kind, out, *extra):
    return [
        "eval", "--baseline", kind, "--num", "8", "--out", str(out), "--ref", "shapes",
        "data.resolution=8", "data.num_samples=40", "data.style=centered", "--shard-size", "3",
        "--extractors", "tiny-test", "--metrics", "fid", "--cache", str(tmp_path / "cache"),
        *extra,
    ]  # fmt: skip


def test_cli_baselines_bound_the_metric(tmp_path, capsys, tiny_extractor_spec):
    """Real images scored against the same real images give FD ~ 0; another split a small
    value; uniform noise a far larger one. The records say which stand-in was scored."""
    same = tmp_path / "same"
    assert main(_baseline_argv(tmp_path, "real", same, "--baseline-split", "train")) == 0
    other, noise = tmp_path / "other", tmp_path / "noise"
    assert main(_baseline_argv(tmp_path, "real", other)) == 0
    assert main(_baseline_argv(tmp_path, "noise", noise)) == 0
    capsys.readouterr()
    values = {}
    for name in ("same", "other", "noise"):
        record = json.loads((tmp_path / name / "results.json").read_text())["results"][0]
        values[name] = record["value"]
        assert record["checkpoint"] == f"baseline:{'noise' if name == 'noise' else 'real'}"
        assert record["sampler"] is None and record["steps"] is None
    assert abs(values["same"]) < 1e-6
    assert values["noise"] > 5 * values["other"] > 0
    with safe_open(str(other / "samples_000000.safetensors"), "pt") as f:  # labels kept
        assert f.get_tensor("labels").tolist() == [
            int(it["label"]) for it in _shapes_items("test", 3)
        ]
    # rerun: kept; another baseline in the folder: refused, untouched
    before = _bytes(other)
    assert main(_baseline_argv(tmp_path, "real", other)) == 0
    assert _bytes(other) == before
    assert main(_baseline_argv(tmp_path, "noise", other)) == 2
    assert "other settings" in capsys.readouterr().err and _bytes(other) == before


def _shapes_items(split, n):
    cfg = DataConfig(name="shapes", resolution=8, num_samples=40, style="centered")
    items = SeededItems(build_dataset(cfg, split), cfg.seed, 0)
    return [items[i] for i in range(n)]


@pytest.mark.parametrize(
    "extra, message",
    [(["--ckpt", "x"], "leave out --ckpt"), (["--sample-only"], "leave out --sample-only")],
)
def test_cli_baseline_bad_input(tmp_path, capsys, tiny_extractor_spec, extra, message):
    assert main([*_baseline_argv(tmp_path, "real", tmp_path / "b"), *extra]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "b").exists()
