"""The video model shipped in pretrained/video-demo: its sampled objects move between frames
like the data's (frame-to-frame centre displacement) and keep more of their identity than
frames mixed across clips, far from the frame-shuffled control. Thresholds hold the part the
small CPU model learned (see pretrained/video-demo/README.md), not the data's own values."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zigma.data import DataConfig, build_dataset
from zigma.evaluate import load_for_sampling
from zigma.evaluate.motion import motion_report
from zigma.generate import generate, grid_conditions

SHIPPED = Path(__file__).resolve().parents[2] / "pretrained" / "video-demo"
NUM = 48


@pytest.fixture(scope="module")
def report():
    loaded = load_for_sampling(SHIPPED)
    frames, size, _ = loaded.model.config.input_size
    data = build_dataset(
        DataConfig(name="moving-shapes", frames=frames, resolution=size, num_samples=NUM), "test"
    )
    reference = torch.stack([data[i]["image"] for i in range(NUM)])
    samples = generate(
        loaded.model, loaded.transport, NUM, cond=grid_conditions(loaded.model, NUM), seed=0,
        steps=20, batch_size=NUM,
    )  # fmt: skip
    return motion_report(samples, reference, seed=0)


def test_shipped_video_model_is_small_and_a_video_model():
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 4 << 20
    cfg = load_for_sampling(SHIPPED).model.config
    assert cfg.is_video and cfg.scan_pattern == "st" and cfg.input_size == (8, 16, 16)


def test_sampled_objects_move_like_the_data(report):
    samples, shuffled = report["samples"], report["frames shuffled"]
    assert samples.w1 < 0.06
    assert shuffled.w1 > 2 * samples.w1  # not like frames drawn in any order
    assert samples.empty < 0.25


def test_sampled_objects_keep_some_identity(report):
    assert report["samples"].identity > report["clips mixed"].identity + 0.15
