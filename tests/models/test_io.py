"""save_pretrained / from_pretrained: exact round trips, no pickle, clear errors."""

import json

import pytest
import torch

from zigma.models import ZigMa, ZigMaConfig, create_model, from_pretrained


def trained_like(**kw) -> ZigMa:
    torch.manual_seed(0)
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_classes=4)
    cfg.update(kw)
    model = ZigMa(ZigMaConfig(**cfg))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.mark.parametrize("scan", ["zigzag", "random", "bidirectional", "hilbert"])
def test_round_trip_is_exact(tmp_path, scan):
    model = trained_like(scan=scan)
    model.save_pretrained(tmp_path / "m")
    loaded = ZigMa.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 3])
    assert torch.equal(model(x, t, y=y), loaded(x, t, y=y))


def test_files_are_json_and_safetensors(tmp_path):
    trained_like().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["class"] == "ZigMa" and meta["config"]["hidden_size"] == 32
    raw = (tmp_path / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert "blocks.0.mixer.A_log" in header
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_random_orders_come_from_the_file(tmp_path):
    model = trained_like(scan="random")
    with torch.no_grad():
        model.scan_orders.copy_(torch.stack([torch.randperm(16) for _ in range(8)]))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path)
    assert torch.equal(loaded.scan_orders, model.scan_orders)
    x, t, y = torch.randn(1, 3, 8, 8), torch.rand(1), torch.tensor([1])
    assert torch.equal(model(x, t, y=y), loaded.eval()(x, t, y=y))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a zigma model directory"):
        from_pretrained(tmp_path / "missing")
    model = trained_like()
    model.save_pretrained(tmp_path / "a")
    cfg = tmp_path / "a" / "config.json"
    meta = json.loads(cfg.read_text())

    meta["config"]["hiden_size"] = meta["config"].pop("hidden_size")
    cfg.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown ZigMaConfig key 'hiden_size'.*hidden_size"):
        from_pretrained(tmp_path / "a")

    meta["config"]["hidden_size"] = 64
    del meta["config"]["hiden_size"]
    cfg.write_text(json.dumps(meta))
    with pytest.raises(
        ValueError, match="does not match config.json: tensor grid.pos_embed has shape"
    ):
        from_pretrained(tmp_path / "a")

    cfg.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        from_pretrained(tmp_path / "a")
    cfg.write_text(json.dumps({"foo": 1}))
    with pytest.raises(ValueError, match="not a zigma model config"):
        from_pretrained(tmp_path / "a")

    model.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        from_pretrained(tmp_path / "b")


def test_failed_save_keeps_the_previous_files(tmp_path, monkeypatch):
    model = trained_like()
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import zigma.models.io as io

    def broken_save(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(io, "save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_preset_round_trip(tmp_path):
    model = create_model("ZigMa-S/4", input_size=16, num_classes=3, depth=2)
    model.save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).config == model.config


def test_a_half_precision_file_loads_into_float32(tmp_path):
    # export_dtype=fp16 writes F16 weights; any float width matches a float parameter
    model = trained_like()
    model.save_pretrained(tmp_path)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    loaded = from_pretrained(tmp_path)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert torch.equal(loaded.grid.pos_embed, model.grid.pos_embed.half().float())


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("hidden_size", 10**5, "says hidden_size 100000"),
        ("depth", 10**6, "says depth 1000000"),
        ("input_size", [4096, 4096], "scan orders of 2048x2048"),
    ],
)
def test_config_is_checked_against_the_header_first(tmp_path, field, value, match):
    import tracemalloc

    trained_like().save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"][field] = value
    (tmp_path / "config.json").write_text(json.dumps(meta))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=match):
            from_pretrained(tmp_path)
        assert tracemalloc.get_traced_memory()[1] < 50 << 20  # nothing of the model's size
    finally:
        tracemalloc.stop()
