"""``zigma bench --study video``: the cases, a tiny CPU run through the CLI, bad input."""

import csv
import json

import pytest

from zigma.bench import drop_full_attention, is_full_attention, tiny_overrides, video_study
from zigma.bench.suites import VIDEO_MODELS
from zigma.cli import main
from zigma.models import count_flops, create_model, preset_config

FAST = ["--repeats", "1", "--warmup", "0", "--width", "32", "--depth", "3"]


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_default_study_is_the_four_variants_and_full_attention_at_b2():
    cases = video_study()  # the CUDA default: B/2 presets, 16 frames of 32^2 and 64^2
    assert [(c.label, c.frames, c.side) for c in cases] == [
        (m, 16, s) for m in VIDEO_MODELS for s in (32, 64)
    ]
    want = {
        "ZigMa-B/2:sst": ("ZigMa-B/2", {"scan_pattern": "sst"}),
        "ZigMa-B/2:v": ("ZigMa-B/2", {"scan_pattern": "v"}),
        "Vim-B/2:v": ("Vim-B/2", {"scan_pattern": "v"}),
        "DiT-B/2:st": ("DiT-B/2", {"attn_pattern": "st"}),
        "DiT-B/2:v": ("DiT-B/2", {"attn_pattern": "v"}),
    }
    for c in cases:
        preset, fields = want[c.label]
        assert c.preset == preset and c.suite == "video"
        assert c.overrides == {"input_size": (16, c.side, c.side), **fields}
        # patch 2: (side / 2)^2 tokens a frame; 4096 = the paper's UCF101 latent grid
        assert c.tokens == 16 * (c.side // 2) ** 2 == {32: 4096, 64: 16384}[c.side]
        cfg = preset_config(c.preset, **c.overrides)  # builds at B size, nothing estimated
        assert cfg.hidden_size == 768 and cfg.input_size == (16, c.side, c.side)
    scans = {c.label: preset_config(c.preset, **c.overrides).scan for c in cases[:6]}
    assert scans == {
        "ZigMa-B/2:sst": "zigzag",
        "ZigMa-B/2:v": "zigzag",
        "Vim-B/2:v": "bidirectional",
    }


def test_full_attention_is_dropped_only_above_the_limit():
    cases = video_study(frames=(16,), sides=(32, 64, 96))
    assert [is_full_attention(c) for c in cases[::3]] == [False, False, False, False, True]
    kept, dropped = drop_full_attention(cases, 16384)
    # only DiT:v at 16 x 48^2 = 36864 tokens goes; the factorised DiT runs at every size
    assert [(c.label, c.side) for c in dropped] == [("DiT-B/2:v", 96)]
    assert len(kept) == len(cases) - 1
    uvit = video_study(["U-ViT-B/2"], (4,), (8,))[0]
    assert is_full_attention(uvit) and uvit.overrides == {"input_size": (4, 8, 8)}


def test_tiny_video_study_through_the_cli(tmp_path, capsys):
    out = tmp_path / "v"
    argv = ["bench", "--study", "video", "--frames", "2", "--tokens", "8", "--train", "--out"]
    assert main([*argv, str(out), *FAST, "--dtype", "fp32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "2x8x8" in printed and "clips/s" in printed
    rows = _csv(out / "bench.csv")
    assert [r["label"] for r in rows] == list(VIDEO_MODELS)
    for r in rows:
        assert r["status"] == "ok" and r["suite"] == "video"
        assert (r["frames"], r["side"], r["tokens"]) == ("2", "8", str(2 * 4 * 4))
        assert float(r["fwd_fps"]) > 0 and float(r["train_fps"]) > 0
    doc = json.loads((out / "bench.json").read_text())
    assert [r["frames"] for r in doc["rows"]] == [2] * len(VIDEO_MODELS)
    # FLOPs are those of the measured model, a factorised DiT on a 2x8x8 clip
    fields = {"input_size": (2, 8, 8), "attn_pattern": "st", **tiny_overrides("DiT-B/2", 32, 3)}
    dit = create_model("DiT-B/2", **fields)
    assert float(rows[3]["gflops"]) == pytest.approx(count_flops(dit, 1, (2, 8, 8)).total / 1e9)
    # the 3-D zigzag and the factorised scan cost the same (only the orders differ)
    assert rows[0]["gflops"] == rows[1]["gflops"]
    assert (out / "video_fps.png").is_file() and (out / "video_ms.png").is_file()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--study", "video", "--frames", "0"], "--frames must be positive"),
        (["--study", "video", "--frames", "4,x"], "--frames must be comma-separated integers"),
        (["--frames", "4"], "--frames applies to --study video"),
        (["--study", "orders", "--frames", "4"], "--frames applies to --study video"),
        (
            ["--study", "video", "--models", "ZigMa-par4-B/2"],
            "ZigMa-par4-B/2 as a 4x8x8 video model: scan_mode='parallel' is an image baseline",
        ),
        (["--study", "video", "--models", "ZigMa-B/2:sx"], "scan_pattern must be letters s"),
        (["--study", "video", "--models", "U-ViT-B/2:st"], "U-ViT-B/2 has no layer pattern"),
        (["--study", "video", "--models", "Zigma-B/2:v"], "unknown model 'Zigma-B/2'"),
        (["--study", "video", "--tokens", "9"], "not a positive multiple of patch_size 2"),
    ],
)
def test_bad_video_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["bench", *argv, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.lower() in err.lower()
    assert not out.exists()
