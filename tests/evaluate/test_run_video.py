"""zigma eval on video models: FVD-proxy on the shipped moving-shapes video classifier's clip
features and frame-FD on its per-frame features (every frame one row), each with a protocol
record that states frames, stride and clip count; real / noise baselines of clips; the
conditioning accuracy read by the video classifier. World-size independence is the image
path's (tests/evaluate/test_run.py): the shards do not know what they hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from tests.tiny_models import wake_output_layers

from zigma.cli import main
from zigma.data import DataConfig, SeededItems, build_dataset
from zigma.evaluate import load_for_sampling
from zigma.evaluate.classifier import load_classifier, load_frame_features
from zigma.evaluate.metrics import frechet_distance, kernel_distance
from zigma.evaluate.run import (
    Reference,
    SampleSettings,
    evaluate_model,
    features_name,
    read_shard,
    reference_features,
    shard_features,
    to_uint8,
)
from zigma.models import ZigMa, ZigMaConfig

T, SIDE = 8, 16  # the shipped moving-shapes classifier reads 8-frame clips of 16 px
VIDEO = dict(name="moving-shapes", resolution=SIDE, frames=T, num_samples=200)
VIDEO_ARGS = [f"data.{k}={v}" for k, v in VIDEO.items() if k != "name"]


def _save_tiny_video(path, frames=T, num_classes=3):
    """A tiny random-weight video ZigMa (save_pretrained format) drawing [3, frames, 16, 16]."""
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=(frames, SIDE, SIDE), in_channels=3, patch_size=4, hidden_size=16,
            depth=2, num_classes=num_classes, scan_pattern="st",
        )
    )  # fmt: skip
    wake_output_layers(model)  # samples depend on the weights
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def video_model(tmp_path_factory):
    return _save_tiny_video(tmp_path_factory.mktemp("video") / "m")


def _real_clips(split, n):
    cfg = DataConfig(**VIDEO)
    items = SeededItems(build_dataset(cfg, split), cfg.seed, 0)
    rows = [items[i] for i in range(n)]
    return to_uint8(torch.stack([r["image"] for r in rows])), [int(r["label"]) for r in rows]


def test_tiny_video_model_records_fvd_proxy_and_frame_fd(video_model, tmp_path):
    clip_ex, frame_ex = load_classifier("moving-shapes"), load_frame_features("moving-shapes")
    out, cache = tmp_path / "e", tmp_path / "cache"
    settings = SampleSettings(num=7, sampler="euler", steps=2, shard_size=3, seed=2)
    reference = Reference(data=DataConfig(**VIDEO), num=9, cache=cache)
    plan = [("fd", clip_ex), ("fd", frame_ex), ("kd", frame_ex)]
    records = evaluate_model(
        load_for_sampling(video_model), out, settings, plan, reference, batch_size=4,
        kid_subsets=4, kid_subset_size=20,
    )  # fmt: skip
    assert [r.metric for r in records] == [
        "FVD-proxy-moving-shapes", "frame-FD-moving-shapes", "KD-frame-FD-moving-shapes",
    ]  # fmt: skip
    # the values, from every clip's features computed here in one go
    fake = torch.cat([read_shard(out, k)[0] for k in range(3)])
    real, _ = _real_clips("train", 9)
    assert fake.shape == (7, 3, T, SIDE, SIDE)
    fake_frames, real_frames = frame_ex(fake), frame_ex(real)
    assert fake_frames.shape == (7 * T, 64)
    # clip-major rows: clip 1's frames are rows T..2T-1, each that frame's features alone
    torch.testing.assert_close(fake_frames[T : 2 * T], frame_ex(fake[1:2]), rtol=1e-5, atol=1e-5)
    assert records[0].value == pytest.approx(frechet_distance(clip_ex(real), clip_ex(fake)), 1e-4)
    assert records[1].value == pytest.approx(frechet_distance(real_frames, fake_frames), 1e-4)
    kd = kernel_distance(real_frames, fake_frames, subsets=4, subset_size=20, seed=2)
    assert (records[2].value, records[2].std) == pytest.approx(kd, rel=1e-4)
    # the protocol: clips and frames per clip; rows of the statistic (clips, or frames)
    for r in records:
        assert (r.frames, r.stride, r.clips, r.seed) == (T, 1, 7, 2)
        assert (r.sampler, r.steps, r.nfe, r.checkpoint) == ("euler", 2, 2, str(video_model))
    assert (records[0].num_fake, records[0].num_real) == (7, 9)
    assert (records[1].num_fake, records[1].num_real) == (7 * T, 9 * T)
    assert records[2].settings == {"subsets": 4, "subset_size": 20}  # in frames, < 56 fakes
    assert "7 clips of 8 frames, stride 1" in str(records[1])
    # the real side: one cache file per extractor, T rows per clip for the frame features
    shapes = []
    for path in sorted(cache.glob("*.npz")):
        with np.load(path) as z:
            shapes.append(z["features"].shape)
    assert sorted(shapes) == [(9, 128), (9 * T, 64)]
    # per-shard feature files likewise; read back as they are
    with safe_open(str(out / features_name(2, frame_ex)), "pt") as f:
        assert f.get_tensor("features").shape == (1 * T, 64)  # shard 2 holds clip 6 alone
    torch.testing.assert_close(shard_features(out, frame_ex), fake_frames, rtol=1e-5, atol=1e-5)
    saved = json.loads((out / "results.json").read_text())["results"]
    assert [(r["clips"], r["frames"], r["num_fake"]) for r in saved] == [
        (7, T, 7), (7, T, 7 * T), (7, T, 7 * T)
    ]  # fmt: skip


def test_reference_cache_keys_frame_features_apart_from_clip_features(tmp_path):
    clip_ex, frame_ex = load_classifier("moving-shapes"), load_frame_features("moving-shapes")
    data = DataConfig(**VIDEO)
    clips, clip_path, _ = reference_features(data, clip_ex, 5, folder=tmp_path)
    frames, frame_path, hit = reference_features(data, frame_ex, 5, folder=tmp_path)
    assert not hit and frame_path != clip_path
    assert clips.shape == (5, 128) and frames.shape == (5 * T, 64)
    real, _ = _real_clips("train", 5)
    torch.testing.assert_close(frames, frame_ex(real), rtol=1e-5, atol=1e-5)
    again, _, hit = reference_features(data, frame_ex, 5, folder=tmp_path)
    assert hit and torch.equal(again, frames)
    # a statistics file (--ref FILE.npz): the first num clips are num * T rows
    stats = Reference(stats=frame_path, num=3)
    got, where = stats.features(frame_ex, 99)
    assert torch.equal(got, frames[: 3 * T]) and where["split"] == "train"
    assert stats.data_record()["frames"] == T
    with pytest.raises(ValueError, match="hold 5 items, fewer than 6"):
        Reference(stats=frame_path, num=6).features(frame_ex, 6)
    with pytest.raises(ValueError, match="not of FVD-proxy-moving-shapes"):
        Reference(stats=frame_path).features(clip_ex, 5)


def _baseline_argv(tmp_path, kind, out, *extra):
    return [
        "eval", "--baseline", kind, "--num", "12", "--out", str(out), "--ref", "moving-shapes",
        *VIDEO_ARGS, "--shard-size", "5", "--metrics", "fvd-proxy,frame-fd,cond-acc",
        "--cache", str(tmp_path / "cache"), "--device", "cpu", *extra,
    ]  # fmt: skip


def test_cli_video_baselines_bound_both_metrics(tmp_path, capsys):
    """Real clips scored against the same real clips give ~0 on both metrics; uniform noise
    clips a far larger value. The shards are [N, C, T, H, W] clips of the data."""
    same, noise = tmp_path / "same", tmp_path / "noise"
    assert main(_baseline_argv(tmp_path, "real", same, "--baseline-split", "train")) == 0
    assert main(_baseline_argv(tmp_path, "noise", noise, "--metrics", "fvd-proxy,frame-fd")) == 0
    capsys.readouterr()
    real, labels = _real_clips("train", 12)
    shard, shard_labels = read_shard(same, 2)  # clips 10, 11
    assert torch.equal(shard, real[10:]) and shard_labels.tolist() == labels[10:]
    assert read_shard(noise, 0)[0].shape == (5, 3, T, SIDE, SIDE)
    values = {}
    for name in ("same", "noise"):
        saved = json.loads((tmp_path / name / "results.json").read_text())
        for r in saved["results"]:
            values[name, r["metric"]] = r["value"]
            assert (r["frames"], r["stride"], r["clips"]) == (T, 1, 12)
            assert r["sampler"] is None
            assert r["settings"]["baseline"]["kind"] == ("real" if name == "same" else "noise")
    for metric in ("FVD-proxy-moving-shapes", "frame-FD-moving-shapes"):
        assert abs(values["same", metric]) < 1e-3
        assert values["noise", metric] > 100
    # the video classifier reads back the class of each real clip (its held-out accuracy: 1)
    cond = json.loads((same / "results.json").read_text())["conditioning"]
    right = load_classifier("moving-shapes").predict(real)["class"] == torch.tensor(labels)
    assert cond["value"] == pytest.approx(right.float().mean().item()) and cond["value"] > 0.9


def test_cli_video_model_eval(video_model, tmp_path, capsys):
    out = tmp_path / "e"
    argv = [
        "eval", "--ckpt", str(video_model), "--num", "4", "--out", str(out), "--ref",
        "moving-shapes", *VIDEO_ARGS, "--sampler", "euler", "--steps", "2", "--batch-size",
        "4", "--metrics", "fvd-proxy,frame-fd,fd-classifier,cond-acc", "--cache",
        str(tmp_path / "cache"), "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "| FVD-proxy-moving-shapes |" in text and "| frame-FD-moving-shapes |" in text
    assert "4 clips of 8 frames, stride 1" in text and "- cond-acc " in text
    saved = json.loads((out / "results.json").read_text())
    # fd-classifier of clips is the FVD-proxy: one value, not two
    assert [r["metric"] for r in saved["results"]] == [
        "FVD-proxy-moving-shapes", "frame-FD-moving-shapes",
    ]  # fmt: skip
    assert saved["conditioning"]["num_fake"] == 4


@pytest.mark.parametrize(
    "frames, metrics, message",
    [
        (4, "fvd-proxy", "clips have 4 frames; FVD-proxy-moving-shapes reads clips of 8"),
        (4, "cond-acc", "clips have 4 frames"),
        (T, "fid", "FD-shapes-classifier reads images, the samples are videos"),
    ],
)
def test_cli_video_bad_input_before_any_sampling(tmp_path, capsys, frames, metrics, message):
    model = _save_tiny_video(tmp_path / "m", frames=frames)
    out = tmp_path / "e"
    argv = [
        "eval", "--ckpt", str(model), "--num", "4", "--out", str(out), "--ref", "moving-shapes",
        *VIDEO_ARGS, "--metrics", metrics, "--extractors", "classifier:shapes", "--device",
        "cpu", "--cache", str(tmp_path / "c"),
    ]  # fmt: skip
    argv[argv.index(f"data.frames={T}")] = f"data.frames={frames}"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zigma eval: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_cli_video_metrics_refuse_image_samples(tmp_path, capsys):
    from zigma.evaluate.run import classifier_spec

    torch.manual_seed(0)
    ZigMa(ZigMaConfig(input_size=16, in_channels=3, patch_size=4, hidden_size=16, depth=2,
                      num_classes=0)).save_pretrained(tmp_path / "img")  # fmt: skip
    argv = [
        "eval", "--ckpt", str(tmp_path / "img"), "--num", "4", "--out", str(tmp_path / "e"),
        "--ref", "shapes", "data.resolution=16", "--metrics", "frame-fd", "--device", "cpu",
    ]  # fmt: skip
    assert main(argv) == 2
    assert "frame-fd scores video clips; these samples are images" in capsys.readouterr().err
    assert classifier_spec({"name": "moving-shapes"}, True, frames=True) == (
        "frame-classifier:moving-shapes"
    )
    with pytest.raises(ValueError, match="samples are images"):
        classifier_spec({"name": "shapes"}, False, frames=True)


def test_training_logs_video_metrics_next_to_the_loss(tmp_path):
    from zigma.config import ConfigError
    from zigma.train import build_config, train

    overrides = [
        "model.hidden_size=16", "model.depth=2", "data.num_samples=64", "batch_size=4",
        "logging.every=3", "preview.every=0", "eval.every=3", "eval.num=4", "eval.steps=2",
        "eval.sampler=euler", "eval.batch_size=4",
        'eval.metrics=["fvd-proxy","frame-fd","fd-classifier"]',
    ]  # fmt: skip
    bad = build_config("demo", overrides=['eval.metrics=["frame-fd"]', "eval.every=3"], steps=3)
    with pytest.raises(ConfigError, match="eval: frame-fd scores video clips; the run's data"):
        train(bad, tmp_path / "bad")
    run = tmp_path / "run"
    train(build_config("video-demo", overrides=overrides, steps=3), run)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (logged,) = [r for r in lines if "eval/FVD-proxy-moving-shapes" in r]
    assert logged["step"] == 3 and "eval/frame-FD-moving-shapes" in logged
    saved = json.loads((run / "eval" / "step_0000003" / "results.json").read_text())["results"]
    assert [(r["metric"], r["num_fake"], r["clips"]) for r in saved] == [
        ("FVD-proxy-moving-shapes", 4, 4), ("frame-FD-moving-shapes", 4 * T, 4),
    ]  # fmt: skip
