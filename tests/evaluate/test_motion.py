"""Motion statistics of video clips: exact on hand-made clips (a square moved by whole pixels),
separating data from its frame-shuffled and clip-mixed controls, and the `zigma motion` CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from zigma.cli import main
from zigma.data import DataConfig, build_dataset
from zigma.evaluate.motion import (
    clip_stats,
    format_report,
    mix_clips,
    motion_report,
    shuffle_frames,
    summarize,
    wasserstein_1d,
)

SIDE = 24


def _square_clip(path, side=SIDE, size=4, color=(1.0, 1.0, 1.0), frames=None) -> torch.Tensor:
    """A [3, T, side, side] clip on a -1 background with a size x size square whose top-left
    corner is at ``path[t]`` (row, col) in frame t."""
    frames = frames or len(path)
    clip = -torch.ones(3, frames, side, side)
    for t, (r, c) in enumerate(path):
        for ch in range(3):
            clip[ch, t, r : r + size, c : c + size] = color[ch]
    return clip


def test_a_translated_square_moves_its_exact_step_and_keeps_its_identity():
    path = [(2 + 2 * t, 3 + t) for t in range(6)]  # 2 px down and 1 px right per frame
    stats = clip_stats(_square_clip(path)[None])
    assert torch.allclose(stats.mass, torch.full((1, 6), 16.0))
    centre = torch.tensor([[(r + 2) / SIDE, (c + 2) / SIDE] for r, c in path])
    assert torch.allclose(stats.centre[0], centre, atol=1e-6)
    assert torch.allclose(stats.displacement, torch.full((1, 5), math.sqrt(5) / SIDE), atol=1e-6)
    assert torch.allclose(stats.identity, torch.ones(1, 5), atol=1e-5)
    s = summarize(stats)
    assert s.mass_change == pytest.approx(0.0) and s.empty == 0.0 and s.w1 is None


def test_a_colour_change_lowers_identity_and_a_fade_raises_mass_change():
    path = [(5, 5)] * 4
    red, blue = _square_clip(path, color=(1, -1, -1)), _square_clip(path, color=(-1, -1, 1))
    swapped = torch.cat([red[:, :2], blue[:, 2:]], dim=1)  # red, red, blue, blue
    identity = clip_stats(swapped[None]).identity[0]
    assert identity[0] == pytest.approx(1.0) and identity[2] == pytest.approx(1.0)
    assert identity[1] == pytest.approx(0.0, abs=1e-6)  # orthogonal colour offsets
    fading = _square_clip(path)
    fading[:, 2:] = -1  # the object vanishes after two frames
    s = summarize(clip_stats(fading[None]))
    assert s.empty == 0.5 and s.mass_change == pytest.approx(2.0)  # (16 - 0) / 8
    assert math.isnan(clip_stats(fading[None]).displacement[0, 2])  # no centre to step from


def test_wasserstein_of_shifted_samples_is_the_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5000, generator=g)
    assert wasserstein_1d(a, a + 0.3) == pytest.approx(0.3, abs=1e-6)  # float32 rounding
    assert wasserstein_1d(a, a) == 0.0
    # quantile functions of U(0, 1) and U(0, 2) differ by q: W1 = 1/2
    assert wasserstein_1d(torch.linspace(0, 1, 4001), torch.linspace(0, 2, 4001)) == pytest.approx(
        0.5, abs=1e-3
    )
    assert math.isnan(wasserstein_1d(torch.tensor([float("nan")]), a))


def test_controls_shuffle_time_or_mix_clips():
    clips = torch.arange(4 * 5, dtype=torch.float32).view(4, 1, 5, 1, 1).expand(4, 1, 5, 4, 4)
    clips = clips / 20 - 0.5
    shuffled = shuffle_frames(clips, seed=1)
    for i in range(4):
        got = shuffled[i, 0, :, 0, 0]
        assert sorted(got.tolist()) == sorted(clips[i, 0, :, 0, 0].tolist())
        assert not torch.equal(got, clips[i, 0, :, 0, 0])
    mixed = mix_clips(clips, seed=1)
    for t in range(5):  # each frame index keeps its frames, from permuted clips
        assert sorted(mixed[:, 0, t, 0, 0].tolist()) == sorted(clips[:, 0, t, 0, 0].tolist())
    with pytest.raises(ValueError, match="at least 2 clips"):
        mix_clips(clips[:1])


def _clips(cfg: DataConfig, n: int, split: str) -> torch.Tensor:
    ds = build_dataset(cfg, split)
    return torch.stack([ds[i]["image"] for i in range(n)])


def test_data_matches_itself_and_its_controls_do_not():
    cfg = DataConfig(name="moving-shapes", resolution=16, frames=8, num_samples=256)
    train, test = _clips(cfg, 128, "train"), _clips(cfg, 128, "test")
    report = motion_report(test, train, seed=0)
    data, shuffled, mixed = report["samples"], report["frames shuffled"], report["clips mixed"]
    assert data.w1 < 0.01 and data.empty == 0.0
    assert shuffled.w1 > 5 * data.w1 + 0.03  # frames out of order jump
    assert shuffled.identity == pytest.approx(data.identity, abs=0.05)  # same objects
    assert mixed.identity < data.identity - 0.2  # other clips' objects
    assert mixed.mass_change > data.mass_change + 0.2
    table = format_report(report)
    assert table.count("\n") == 5 and "| frames shuffled | 128 |" in table


def test_bad_clips_are_refused():
    with pytest.raises(ValueError, match=r"\[N, C, T, H, W\]"):
        clip_stats(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="T >= 2"):
        clip_stats(torch.zeros(2, 3, 1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        clip_stats(torch.full((1, 1, 2, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="differ"):
        motion_report(torch.zeros(2, 1, 4, 8, 8), torch.zeros(2, 1, 3, 8, 8))


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
    from tests.train.conftest import tiny

    from zigma.train import train

    out = tmp_path_factory.mktemp("motion") / "run"
    train(tiny("data.name=moving-shapes", "data.frames=4", "model.scan_pattern=st", steps=2), out)
    return out


def test_zigma_motion_scores_a_run_against_its_data(video_run, tmp_path, capsys):
    out = tmp_path / "motion.json"
    args = ["motion", "--ckpt", str(video_run), "--num", "4", "--steps", "2", "--device", "cpu"]
    assert main([*args, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "against 4 test clips of moving-shapes" in text and "| clips mixed | 4 |" in text
    record = json.loads(out.read_text())
    assert set(record["rows"]) == {"reference", "samples", "frames shuffled", "clips mixed"}
    assert record["rows"]["reference"]["w1"] == 0.0
    # the reference data must be the model's clips
    assert main([*args, "data.frames=5"]) == 2
    assert "not the model's clips" in capsys.readouterr().err
    assert main([*args, "optim.lr=1"]) == 2
    assert "data.key=value" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cfg", "-1"], "guidance scale >= 0"),
        (["--cfg", "nan"], "guidance scale >= 0"),
        (["--num", "1"], "--num"),
        (["--num", "100000"], "fewer than --num"),
    ],
)
def test_zigma_motion_bad_numbers_are_one_line(video_run, capsys, extra, message):
    assert main(["motion", "--ckpt", str(video_run), "--device", "cpu", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_zigma_motion_needs_a_video_model_and_a_model(tmp_path, capsys):
    import json as _json

    from zigma.models import ZigMa, ZigMaConfig

    image = tmp_path / "image"
    ZigMa(ZigMaConfig(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2)
          ).save_pretrained(image)  # fmt: skip
    (image / "transport.json").write_text(_json.dumps({"path": "linear"}))
    assert main(["motion", "--ckpt", str(image), "--device", "cpu"]) == 2
    assert "image model" in capsys.readouterr().err
    assert main(["motion", "--ckpt", str(tmp_path / "missing"), "--device", "cpu"]) == 2
    assert "does not exist" in capsys.readouterr().err
