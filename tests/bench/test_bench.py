"""``zigma bench`` on CPU with tiny models: files, columns, FLOPs, OOM rows, bad input."""

import csv
import json

import pytest
import torch
from PIL import Image

from zigma.bench import BenchCase, BenchSettings, run_suite, tiny_overrides, token_sweep
from zigma.bench.runner import build_model
from zigma.cli import main
from zigma.models import count_flops, create_model

FAST = ["--repeats", "1", "--warmup", "0", "--width", "32", "--depth", "3"]


def _csv(path):
    with path.open() as f:
        return list(csv.DictReader(f))


def test_token_sweep_cli_writes_csv_json_png(tmp_path, capsys):
    out = tmp_path / "b"
    argv = ["bench", "--models", "ZigMa-B/1,DiT-B/1", "--tokens", "4,8", "--train", "--out"]
    assert main([*argv, str(out), *FAST, "--dtype", "fp32", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "DiT-B/1" in printed and "fwd_ms" in printed and "train_ms" in printed
    rows = _csv(out / "bench.csv")
    assert [(r["label"], r["tokens"]) for r in rows] == [
        ("ZigMa-B/1", "16"), ("ZigMa-B/1", "64"), ("DiT-B/1", "16"), ("DiT-B/1", "64"),
    ]  # fmt: skip
    for r in rows:
        assert r["status"] == "ok" and float(r["fwd_ms"]) > 0 and float(r["train_fps"]) > 0
        assert r["fwd_peak_mib"] == ""  # memory is CUDA-only
    doc = json.loads((out / "bench.json").read_text())
    assert doc["settings"]["train"] is True and len(doc["rows"]) == 4
    # the FLOPs column is zigma.models.count_flops of the measured model
    dit = create_model("DiT-B/1", input_size=8, **tiny_overrides("DiT-B/1", 32, 3))
    assert float(rows[3]["gflops"]) == pytest.approx(count_flops(dit, 1, (8, 8)).total / 1e9)
    for name in ("tokens_ms.png", "tokens_fps.png"):
        with Image.open(out / name) as im:
            assert im.format == "PNG" and im.width > 400


def test_order_study_cli(tmp_path):
    out = tmp_path / "o"
    argv = ["bench", "--study", "orders", "--tokens", "4", "--orders", "1,2,4", "--out"]
    assert main([*argv, str(out), *FAST, "--device", "cpu"]) == 0
    rows = _csv(out / "bench.csv")
    assert [r["scan_paths"] for r in rows] == ["1", "2", "4"] * 2
    assert {r["preset"] for r in rows} == {"ZigMa-B/1"}
    flops = [float(r["gflops"]) for r in rows]
    assert len(set(flops[:3])) == 1  # zigzag-K: one order per layer, same cost for every K
    assert flops[3] < flops[4] < flops[5]  # parallel-K: every layer scans K orders
    assert (out / "orders_fps.png").is_file()


class _OutOfMemory(torch.nn.Module):
    """A backbone stand-in whose forward runs out of CUDA memory."""

    def __init__(self, model):
        super().__init__()
        self.config, self.conditioner = model.config, model.conditioner

    def forward(self, x, t, **cond):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")


def test_oom_is_a_row_not_a_crash():
    cases = token_sweep(["DiT-B/1", "ZigMa-B/1"], [4], {
        "DiT-B/1": {"hidden_size": 32, "depth": 1, "num_heads": 2},
        "ZigMa-B/1": {"hidden_size": 32, "depth": 1},
    })  # fmt: skip

    def build(case: BenchCase):
        model = build_model(case)
        return _OutOfMemory(model) if case.preset == "DiT-B/1" else model

    rows = run_suite(cases, BenchSettings(warmup=0, repeats=1, train=True), build=build)
    assert [r.status for r in rows] == ["OOM", "ok"]
    assert rows[0].fwd_ms is None and rows[0].train_ms is None and rows[0].gflops > 0
    assert rows[1].fwd_ms > 0 and rows[1].train_ms > 0


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "ZigMa-Q/1"], "unknown model 'ZigMa-Q/1'"),
        (["--tokens", "8,x"], "--tokens must be comma-separated integers"),
        (["--tokens", "0"], "--tokens must be positive"),
        (["--models", "DiT-B/1", "--study", "orders"], "the order study needs a ZigMa preset"),
        (["--repeats", "0"], "--repeats"),
        (["--cuda-graphs"], "--cuda-graphs needs a CUDA device"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert main(["bench", *argv, "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.lower() in err.lower()
    assert not out.exists()


def test_cuda_graph_forward_needs_cuda_inputs():
    from zigma.models import GraphedForward

    model = create_model("ZigMa-S/2", hidden_size=32, depth=2, input_size=8)
    x, t = torch.randn(1, 4, 8, 8), torch.rand(1)
    with pytest.raises(ValueError, match="CUDA graphs need CUDA inputs"):
        GraphedForward(model, x, t)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_forward_matches_eager():
    from zigma.models import GraphedForward

    model = create_model("ZigMa-S/2", depth=2, input_size=16, num_classes=10).cuda().eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(2, 4, 16, 16, device="cuda", generator=g)
    t, y = torch.rand(2, device="cuda", generator=g), torch.tensor([1, 3], device="cuda")
    graphed = GraphedForward(model, x, t, {"y": y}, dtype=torch.bfloat16)
    for _ in range(2):  # new inputs are copied in; the output buffer is rewritten
        x, t = torch.randn_like(x), torch.rand_like(t)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            want = model(x, t, y=y)
        torch.testing.assert_close(graphed(x, t, y=y), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="captured for"):
        graphed(x[:1], t[:1], y=y[:1])
    with pytest.raises(ValueError, match="conditions"):
        graphed(x, t)
