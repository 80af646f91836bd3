"""Hostile input to every command but ``train``: model folders, LATEST pointers, numbers,
paths and devices. Each case must end in one line ``zigma CMD: error: ...``, exit code 2, and
leave every file in the test's folder as it was (nothing written, nothing overwritten)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from zigma.models import ZigMa, ZigMaConfig

from .conftest import assert_one_line_error, snapshot

SHIPPED = Path(__file__).resolve().parents[2] / "pretrained" / "shapes-cpu"
QUICK = ["--num", "2", "--steps", "1"]  # should a case not fail, it costs a second, not a minute


def _permissions_enforced() -> bool:
    """Whether a mode-000 file is unreadable here (not so for root with its usual powers)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        probe = Path(d) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return True
        return False


needs_non_root = pytest.mark.skipif(
    not _permissions_enforced(), reason="file permissions are not enforced for this user"
)

# hidden 32, depth 2, 16 px: a run of a few steps takes about a second
TINY_RUN = [
    "model.hidden_size=32",
    "model.depth=2",
    "data.resolution=16",
    "data.num_samples=64",
    "batch_size=8",
    "preview.every=0",
    "logging.every=5",
]


# ---------------------------------------------------------------- fixtures and file surgery


@pytest.fixture
def shipped(tmp_path) -> Path:
    """A copy of pretrained/shapes-cpu to corrupt."""
    return Path(shutil.copytree(SHIPPED, tmp_path / "m"))


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A real run folder of a 4-step training: model/, checkpoints/step_0000004, LATEST."""
    from zigma.train import build_config, train

    out = tmp_path_factory.mktemp("run") / "r"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(build_config("demo", overrides=TINY_RUN, steps=4), out)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def run_dir(trained_run, tmp_path) -> Path:
    """A copy of the run without its export, so sampling goes through checkpoints/LATEST."""
    run = Path(shutil.copytree(trained_run, tmp_path / "r"))
    shutil.rmtree(run / "model")
    return run


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(fn(data)))


def set_config(**fields):
    def edit(folder: Path) -> None:
        def change(meta):
            meta["config"].update(fields)
            return meta

        edit_json(folder / "config.json", change)

    return edit


def rewrite_header(folder: Path, fn) -> None:
    """Rewrite model.safetensors' JSON header through ``fn(header)``, keeping the data bytes."""
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = fn(json.loads(raw[8 : 8 + n]))
    text = json.dumps(header).encode()
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def edit_state(fn):
    def edit(folder: Path) -> None:
        path = folder / "model.safetensors"
        state = load_file(path)
        fn(state)
        save_file(state, path)

    return edit


def transpose_shape(name: str):
    def fn(header):
        header[name]["shape"] = header[name]["shape"][::-1]
        return header

    return lambda folder: rewrite_header(folder, fn)


def retype(name: str, dtype: str):
    def fn(header):
        header[name]["dtype"] = dtype
        return header

    return lambda folder: rewrite_header(folder, fn)


def write(name: str, data: bytes | str):
    def edit(folder: Path) -> None:
        target = folder / name
        target.write_bytes(data.encode() if isinstance(data, str) else data)

    return edit


def sparse(name: str, size: int):
    def edit(folder: Path) -> None:
        with open(folder / name, "r+b") as f:
            f.truncate(size)

    return edit


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def nest_dict(levels: int) -> str:
    text = "1"
    for _ in range(levels):
        text = '{"a": ' + text + "}"
    return text


def nan_in(*names: str):
    def fn(state):
        for name in names or list(state):
            if state[name].is_floating_point():
                state[name] = torch.full_like(state[name], float("nan"))

    return edit_state(fn)


def run_case(cli, tmp_path, argv, command: str, match: str) -> None:
    before = snapshot(tmp_path)
    res = cli(command, *argv)
    assert_one_line_error(res, command, match)
    assert snapshot(tmp_path) == before  # nothing written or changed
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


# ---------------------------------------------------------------- zigma sample: model folders

MODEL_FOLDERS = [
    ("config-is-a-list", write("config.json", "[1, 2]"), "must hold a JSON object, not a list"),
    (
        "class-is-a-list",
        lambda f: edit_json(f / "config.json", lambda m: {**m, "class": ["ZigMa"]}),
        "unknown model class ['ZigMa']",
    ),
    (
        "class-unknown",
        lambda f: edit_json(f / "config.json", lambda m: {**m, "class": "Mamba9"}),
        "unknown model class 'Mamba9'",
    ),
    (
        "config-field-is-a-list",
        lambda f: edit_json(f / "config.json", lambda m: {**m, "config": []}),
        "expected a mapping, got list",
    ),
    ("config-10-levels-deep", write("config.json", nest_dict(10)), "not a zigma model config"),
    ("config-nested-100k-deep", write("config.json", nested(100_000)), "nested too deeply"),
    ("config-50MB", sparse("config.json", 50 << 20), "more than the 16777216"),
    (
        "config-undecodable",
        write("config.json", b'{"class": "\xff\xfe"}'),
        "config.json is not UTF-8",
    ),
    ("config-not-json", write("config.json", "{class: ZigMa"), "is not valid JSON"),
    ("config-empty", write("config.json", ""), "is not valid JSON"),
    ("hidden-size-1e9", set_config(hidden_size=10**9), "says hidden_size 1000000000"),
    ("depth-1e9", set_config(depth=10**9), "says depth 1000000000"),
    ("input-size-65536", set_config(input_size=[65536, 65536]), "scan orders of 16384x16384"),
    ("hidden-size-2e19", set_config(hidden_size=2 * 10**19), "must fit in 64 bits"),
    ("hidden-size-string", set_config(hidden_size="128"), "hidden_size must be an integer"),
    ("hidden-size-64", set_config(hidden_size=64), "has shape [1, 16, 128] in the file"),
    ("depth-0", set_config(depth=0), "depth must be >= 1"),
    ("scan-unknown", set_config(scan="spiral"), "scan must be one of"),
    (
        "dropout-nan",
        write(
            "config.json",
            '{"class": "ZigMa", "zigma_version": "0", "config": {"class_dropout_prob": NaN}}',
        ),
        "finite number",
    ),
    ("weights-torn", sparse("model.safetensors", 2_000_000), "not a readable safetensors file"),
    ("weights-empty", write("model.safetensors", b""), "not a readable safetensors file"),
    (
        "weights-header-too-large",
        write("model.safetensors", b"\xff" * 6 + b"\0\0{}"),
        "not a readable safetensors file",
    ),
    (
        "weights-header-lies-shape",
        transpose_shape("blocks.0.adaLN.linear.weight"),
        "blocks.0.adaLN.linear.weight has shape [128, 384]",
    ),
    ("weights-header-lies-dtype", retype("scan_orders", "F64"), "scan_orders is F64"),
    (
        "weights-missing-tensor",
        edit_state(lambda s: s.pop("final_layer.linear.bias")),
        "missing 'final_layer.linear.bias'",
    ),
    (
        "weights-extra-tensor",
        edit_state(lambda s: s.update(extra=torch.zeros(1))),
        "unexpected 'extra'",
    ),
    (
        "weights-orders-not-permutations",
        edit_state(lambda s: s["scan_orders"].zero_()),
        "orders must be permutations",
    ),
    ("weights-one-nan", nan_in("blocks.1.mixer.D"), "1 of 57 weight tensors hold NaN or Inf"),
    ("weights-all-nan", nan_in(), "56 of 57 weight tensors hold NaN or Inf"),
    (
        "weights-inf",
        edit_state(lambda s: s["pos_embed"].view(-1)[3].fill_(float("inf"))),
        "1 of 57 weight tensors",
    ),
    ("weights-missing", lambda f: (f / "model.safetensors").unlink(), "holds no zigma model"),
    (
        "weights-is-a-folder",
        lambda f: ((f / "model.safetensors").unlink(), (f / "model.safetensors").mkdir()),
        "holds no zigma model",
    ),
    ("transport-is-a-list", write("transport.json", "[]"), "transport config"),
    (
        "transport-unknown-key",
        write("transport.json", '{"pth": "gvp"}'),
        "unknown TransportConfig key 'pth'",
    ),
    ("transport-deep", write("transport.json", nested(50_000)), "nested too deeply"),
    (
        "transport-is-a-folder",
        lambda f: ((f / "transport.json").unlink(), (f / "transport.json").mkdir()),
        "is a folder, not a file",
    ),
]


@pytest.mark.parametrize(
    "corrupt, match", [c[1:] for c in MODEL_FOLDERS], ids=[c[0] for c in MODEL_FOLDERS]
)
def test_sample_refuses_hostile_model_folders(cli, shipped, tmp_path, corrupt, match):
    corrupt(shipped)
    argv = ["--ckpt", shipped, "--out", tmp_path / "o.png", *QUICK]
    run_case(cli, tmp_path, argv, "sample", match)


def test_sample_checks_the_header_before_allocating(cli, shipped, tmp_path):
    # 10**5 is buildable on the meta device (no overflow) but 40 GB as real weights
    set_config(hidden_size=10**5)(shipped)
    import tracemalloc

    tracemalloc.start()
    run_case(
        cli,
        tmp_path,
        ["--ckpt", shipped, "--out", tmp_path / "o.png"],
        "sample",
        "hidden_size 100000",
    )
    assert tracemalloc.get_traced_memory()[1] < 100 << 20
    tracemalloc.stop()


@needs_non_root
@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "transport.json"])
def test_sample_unreadable_files(cli, shipped, tmp_path, name):
    before = snapshot(shipped)
    (shipped / name).chmod(0)
    try:
        res = cli("sample", "--ckpt", shipped, "--out", tmp_path / "out" / "o.png", *QUICK)
    finally:
        (shipped / name).chmod(before[Path(name)][1])
    assert_one_line_error(res, "sample", name)
    assert snapshot(shipped) == before and not (tmp_path / "out").exists()


def _tiny_model(folder: Path, **kw) -> Path:
    cfg = dict(input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_classes=0)
    ZigMa(ZigMaConfig(**{**cfg, **kw})).save_pretrained(folder)
    return folder


def test_sample_refuses_a_latent_model_before_sampling(cli, tmp_path):
    model = _tiny_model(tmp_path / "latent", in_channels=4)
    run_case(
        cli,
        tmp_path,
        ["--ckpt", model, "--out", tmp_path / "o.png"],
        "sample",
        "4-channel samples; PNGs need 1 or 3",
    )


# ---------------------------------------------------------------- zigma sample: LATEST


def _symlinked_step(run: Path) -> None:
    ckpts = run / "checkpoints"
    real = next(p for p in ckpts.iterdir() if p.is_dir())
    outside = run.parent / "elsewhere"
    shutil.move(real, outside)
    os.symlink(outside, ckpts / "step_0000009")
    (ckpts / "LATEST").write_text("step_0000009\n")


def _latest(data: bytes | str):
    def edit(run: Path) -> None:
        path = run / "checkpoints" / "LATEST"
        path.write_bytes(data.encode() if isinstance(data, str) else data)

    return edit


def _latest_symlink(run: Path) -> None:
    (run / "elsewhere.txt").write_text("step_0000004\n")
    (run / "checkpoints" / "LATEST").unlink()
    os.symlink(run / "elsewhere.txt", run / "checkpoints" / "LATEST")


LATEST_CASES = [
    (
        "dotdot",
        _latest("../../x\n"),
        "must name a checkpoint folder like step_0001000, got '../../x'",
    ),
    ("absolute-path", _latest("/tmp\n"), "got '/tmp'"),
    ("step-then-dotdot", _latest("step_0000004/../../..\n"), "must name a checkpoint folder"),
    (
        "symlinked-step-folder",
        _symlinked_step,
        "names step_0000009, which is not a checkpoint folder",
    ),
    ("undecodable", _latest(b"\xff\xfe\x00step"), "undecodable bytes"),
    ("10MB-of-text", _latest("step_0000004" * 900_000), "must name a checkpoint folder"),
    ("empty", _latest(""), "got ''"),
    (
        "missing-folder",
        _latest("step_0000777\n"),
        "names step_0000777, which is not a checkpoint folder",
    ),
    (
        "is-a-folder",
        lambda r: ((r / "checkpoints" / "LATEST").unlink(), (r / "checkpoints" / "LATEST").mkdir()),
        "is not a regular file",
    ),
    ("is-a-symlink", _latest_symlink, "is not a regular file"),
    (
        "no-latest-no-model",
        lambda r: (r / "checkpoints" / "LATEST").unlink(),
        "holds no zigma model",
    ),
]


@pytest.mark.parametrize(
    "corrupt, match", [c[1:] for c in LATEST_CASES], ids=[c[0] for c in LATEST_CASES]
)
def test_sample_refuses_hostile_latest(cli, run_dir, tmp_path, corrupt, match):
    corrupt(run_dir)
    argv = ["--ckpt", run_dir, "--out", tmp_path / "o.png", *QUICK]
    run_case(cli, tmp_path, argv, "sample", match)


def test_sample_follows_a_good_latest(cli, run_dir, tmp_path):
    res = cli(
        "sample", "--ckpt", run_dir, "--out", tmp_path / "o.png", "--num", "2", "--steps", "1"
    )
    assert res.code == 0, res.err
    assert "step_0000004" in res.out


CHECKPOINT_CASES = [
    ("run-config-is-a-list", write("config.json", "[]"), "must hold a JSON object, not a list"),
    ("run-config-missing", lambda c: (c / "config.json").unlink(), "run config"),
    ("transport-not-a-mapping", write("config.json", '{"transport": 3}'), "expected a mapping"),
    (
        "ema-torn",
        sparse("ema.safetensors", 100),
        "ema.safetensors is not a readable safetensors file",
    ),
    ("ema-missing", lambda c: (c / "ema.safetensors").unlink(), "ema.safetensors not found"),
    (
        "ema-nan",
        lambda c: save_file(
            {
                k: v.fill_(float("nan")) if v.is_floating_point() else v
                for k, v in load_file(c / "ema.safetensors").items()
            },
            c / "ema.safetensors",
        ),
        "weight tensors hold NaN or Inf",
    ),
    (
        "model-json-class-list",
        lambda c: edit_json(c / "model.json", lambda m: {**m, "class": []}),
        "unknown model class []",
    ),
]


@pytest.mark.parametrize(
    "corrupt, match", [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES]
)
def test_sample_refuses_hostile_checkpoints(cli, run_dir, tmp_path, corrupt, match):
    ckpt = run_dir / "checkpoints" / "step_0000004"
    corrupt(ckpt)
    argv = ["--ckpt", run_dir, "--out", tmp_path / "o.png", *QUICK]
    run_case(cli, tmp_path, argv, "sample", match)


# ---------------------------------------------------------------- zigma sample: arguments


def _file(rel: str):
    def make(tmp: Path) -> None:
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_text("not a folder")

    return make


def _folder(rel: str):
    return lambda tmp: (tmp / rel).mkdir(parents=True)


SAMPLE_ARGS = [
    ("no-output", None, [], "give --out FILE.png"),
    ("out-jpg", None, ["--out", "x.jpg"], "--out must be a .png file"),
    (
        "out-is-a-folder",
        _folder("d.png"),
        ["--out", "d.png"],
        "--out d.png is a folder, not a file",
    ),
    ("out-parent-is-a-file", _file("f"), ["--out", "f/x.png"], "f is not a folder"),
    ("out-is-dev-null", None, ["--out", "/dev/null"], "exists and is not a regular file"),
    ("out-dir-is-a-file", _file("f"), ["--out-dir", "f"], "--out-dir f is a file, not a folder"),
    ("out-dir-not-empty", _file("d/000000.png"), ["--out-dir", "d"], "--out-dir d is not empty"),
    ("out-dir-under-a-file", _file("f"), ["--out-dir", "f/sub"], "f is not a folder"),
    ("num-0", None, ["--out", "x.png", "--num", "0"], "argument --num: must be >= 1, got 0"),
    ("num-text", None, ["--out", "x.png", "--num", "ten"], "argument --num: expected an integer"),
    ("num-1e12", None, ["--out", "x.png", "--num", str(10**12)], "more than this machine's"),
    ("steps-0", None, ["--out", "x.png", "--steps", "0"], "argument --steps: must be >= 1"),
    ("steps-negative", None, ["--out", "x.png", "--steps", "-5"], "argument --steps: must be >= 1"),
    (
        "batch-size-0",
        None,
        ["--out", "x.png", "--batch-size", "0"],
        "argument --batch-size: must be >= 1, got 0",
    ),
    ("seed-negative", None, ["--out", "x.png", "--seed", "-1"], "argument --seed: must be in 0.."),
    (
        "seed-2**64",
        None,
        ["--out", "x.png", "--seed", str(2**64)],
        "argument --seed: must be in 0..",
    ),
    (
        "cfg-nan",
        None,
        ["--out", "x.png", "--cfg", "nan"],
        "argument --cfg: must be a finite number",
    ),
    (
        "cfg-inf",
        None,
        ["--out", "x.png", "--cfg", "inf"],
        "argument --cfg: must be a finite number",
    ),
    (
        "cfg-negative",
        None,
        ["--out", "x.png", "--cfg", "-1"],
        "argument --cfg: must be a finite number >= 0",
    ),
    ("class-negative", None, ["--out", "x.png", "--class", "-1"], "argument --class: must be >= 0"),
    ("class-too-large", None, ["--out", "x.png", "--class", "8"], "class must be in 0..7, got 8"),
    ("nrow-0", None, ["--out", "x.png", "--nrow", "0"], "argument --nrow: must be >= 1"),
    ("nrow-1e9", None, ["--out", "x.png", "--nrow", str(10**9)], "--nrow must be in 1..--num"),
    ("scale-0", None, ["--out", "x.png", "--scale", "0"], "argument --scale: must be in 1..16"),
    ("scale-17", None, ["--out", "x.png", "--scale", "17"], "argument --scale: must be in 1..16"),
    ("sampler-unknown", None, ["--out", "x.png", "--sampler", "eulr"], "--sampler must be one of"),
    ("device-tpu", None, ["--out", "x.png", "--device", "tpu"], "--device 'tpu' is not a device"),
    ("device-empty", None, ["--out", "x.png", "--device", ""], "is not a device"),
    (
        "device-meta",
        None,
        ["--out", "x.png", "--device", "meta"],
        "zigma runs on cpu or cuda, not meta",
    ),
    ("device-cuda-7", None, ["--out", "x.png", "--device", "cuda:7"], "--device cuda:7"),
    (
        "cuda-graphs-on-cpu",
        None,
        ["--out", "x.png", "--device", "cpu", "--cuda-graphs"],
        "--cuda-graphs needs a CUDA device",
    ),
    ("unknown-flag", None, ["--out", "x.png", "--nmu", "3"], "unrecognized arguments: --nmu"),
    ("ckpt-missing", None, ["--out", "x.png", "--ckpt", "nowhere"], "nowhere does not exist"),
    (
        "ckpt-is-a-file",
        _file("f"),
        ["--out", "x.png", "--ckpt", "f"],
        "f is a file; pass the folder",
    ),
    ("ckpt-empty-folder", _folder("e"), ["--out", "x.png", "--ckpt", "e"], "holds no zigma model"),
]


@pytest.mark.parametrize(
    "setup, argv, match", [c[1:] for c in SAMPLE_ARGS], ids=[c[0] for c in SAMPLE_ARGS]
)
def test_sample_refuses_bad_arguments(cli, tmp_path, monkeypatch, setup, argv, match):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    ckpt = [] if "--ckpt" in argv else ["--ckpt", str(SHIPPED)]
    if "--device" in argv and "cuda:7" in argv and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    run_case(
        cli,
        tmp_path,
        [*ckpt, "--steps", "1", *argv] if "--steps" not in argv else [*ckpt, *argv],
        "sample",
        match,
    )


def test_sample_guidance_needs_a_conditional_model(cli, tmp_path):
    model = _tiny_model(tmp_path / "uncond")
    argv = ["--ckpt", model, "--out", tmp_path / "o.png", "--cfg", "2"]
    run_case(cli, tmp_path, argv, "sample", "guidance needs a conditional model")


@needs_non_root
def test_sample_unwritable_out(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    argv = ["--ckpt", SHIPPED, "--out", locked / "x.png"]
    run_case(cli, tmp_path, argv, "sample", "is not writable")


def test_sample_out_dir_overwrite(cli, tmp_path):
    out = tmp_path / "each"
    out.mkdir()
    (out / "000000.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")
    base = ["sample", "--ckpt", SHIPPED, "--out-dir", out, "--num", "2", "--steps", "1"]
    assert_one_line_error(cli(*base), "sample", "is not empty")
    assert (out / "000000.png").read_bytes() == b"old"
    assert cli(*base, "--overwrite").code == 0
    with Image.open(out / "000000.png") as im:
        assert im.size == (16, 16)
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "notes.txt"]


def test_sample_replaces_an_existing_grid_atomically(cli, tmp_path):
    grid = tmp_path / "grid.png"
    grid.write_bytes(b"an older grid")
    res = cli("sample", "--ckpt", SHIPPED, "--out", grid, "--num", "2", "--steps", "1")
    assert res.code == 0, res.err
    with Image.open(grid) as im:
        assert im.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temp file left


# ---------------------------------------------------------------- info, scans, models


INFO_ARGS = [
    ("unknown-model", ["ZigMa-Q/2"], "unknown model 'ZigMa-Q/2'"),
    ("unknown-key", ["ZigMa-S/2", "hiden_size=3"], "unknown ZigMaConfig key 'hiden_size'"),
    ("not-key-value", ["ZigMa-S/2", "depth"], "not of the form key=value"),
    ("depth-text", ["ZigMa-S/2", "depth=abc"], "depth must be an integer, got 'abc'"),
    ("depth-float", ["ZigMa-S/2", "depth=1.5"], "depth must be an integer, got 1.5"),
    ("depth-list", ["ZigMa-S/2", "depth=[1]"], "depth must be an integer, got [1]"),
    ("hidden-size-2e19", ["ZigMa-S/2", f"hidden_size={2 * 10**19}"], "must fit in 64 bits"),
    ("hidden-size-1e6", ["ZigMa-S/2", "hidden_size=1000000"], "more than this machine's"),
    ("input-size-odd", ["ZigMa-S/2", "input_size=31"], "not a positive multiple of patch_size 2"),
    ("input-size-4d", ["ZigMa-S/2", "input_size=[2,8,8,8]"], "must be (H, W) or (T, H, W)"),
    ("input-size-1e6", ["ZigMa-S/1", "input_size=1000000"], "more than this machine's"),
    ("scan-unknown", ["ZigMa-S/2", "scan=spiral"], "scan must be one of"),
    ("dropout-nan", ["ZigMa-S/2", "class_dropout_prob=NaN"], "finite number"),
    ("deep-value", ["ZigMa-S/2", "depth=" + nested(100_000)], "nested too deeply"),
    ("batch-0", ["ZigMa-S/2", "--batch", "0"], "argument --batch: must be in 1..4096"),
    ("seed-negative", ["ZigMa-S/2", "--seed", "-3"], "argument --seed: must be in 0.."),
]

SCANS_ARGS = [
    ("kind-unknown", ["--kind", "spiral"], "unknown scan kind 'spiral'"),
    ("size-0", ["--size", "0"], "argument --size: must be >= 1"),
    ("size-text", ["--size", "big"], "argument --size: expected an integer"),
    ("width-negative", ["--width", "-1"], "argument --width: must be >= 1"),
    ("frames-0", ["--frames", "0"], "argument --frames: must be >= 1"),
    ("frames-on-2d", ["--frames", "2"], "needs frames == 1"),
    ("num-0", ["--num", "0"], "argument --num: must be >= 1"),
    ("num-9-zigzag", ["--num", "9"], "must be an int in 1..8"),
    ("size-1e5", ["--size", "100000"], "more than the 1048576"),
    ("random-num-1e7", ["--kind", "random", "--num", str(10**7)], "more than the 1048576"),
    ("seed-negative", ["--kind", "random", "--seed", "-1"], "argument --seed: must be in 0.."),
    ("plot-jpg", ["--plot", "x.jpg"], "--plot must be a .png file"),
    ("plot-is-a-folder", ["--plot", "."], "--plot . is a folder, not a file"),
    ("plot-under-a-file", ["--plot", "f/x.png"], "f is not a folder"),
    ("plot-too-many-pixels", ["--size", "256", "--plot", "x.png"], "picture would be"),
]

MODELS_ARGS = [
    ("size-0", ["--size", "0"], "argument --size: must be in 4..1024"),
    ("size-6", ["--size", "6"], "--size must be a multiple of 4"),
    ("size-1e5", ["--size", "100000"], "argument --size: must be in 4..1024"),
    ("channels-0", ["--channels", "0"], "argument --channels: must be in 1..4096"),
    ("channels-text", ["--channels", "rgb"], "argument --channels: expected an integer"),
]


@pytest.mark.parametrize(
    "command, argv, match",
    [("info", *c[1:]) for c in INFO_ARGS]
    + [("scans", *c[1:]) for c in SCANS_ARGS]
    + [("models", *c[1:]) for c in MODELS_ARGS],
    ids=[f"info-{c[0]}" for c in INFO_ARGS]
    + [f"scans-{c[0]}" for c in SCANS_ARGS]
    + [f"models-{c[0]}" for c in MODELS_ARGS],
)
def test_small_commands_refuse_bad_arguments(cli, tmp_path, monkeypatch, command, argv, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "f").write_text("a file")
    run_case(cli, tmp_path, argv, command, match)


# ---------------------------------------------------------------- bench and demo

BENCH_ARGS = [
    ("out-is-a-file", ["--out", "f"], "--out f is a file, not a folder"),
    ("out-under-a-file", ["--out", "f/sub"], "f is not a folder"),
    ("out-csv-is-a-folder", ["--out", "b"], "b/bench.csv is a folder"),
    ("device-tpu", ["--device", "tpu"], "is not a device"),
    ("device-cuda-9", ["--device", "cuda:9"], "--device cuda:9"),
    ("batch-0", ["--batch", "0"], "argument --batch: must be >= 1"),
    ("repeats-0", ["--repeats", "0"], "argument --repeats: must be >= 1"),
    ("warmup-negative", ["--warmup", "-1"], "argument --warmup: must be >= 0"),
    ("tokens-0", ["--tokens", "0"], "--tokens must be positive integers up to 1024"),
    ("tokens-text", ["--tokens", "8,x"], "--tokens must be comma-separated integers"),
    ("tokens-1e5", ["--tokens", "100000"], "--tokens must be positive integers up to 1024"),
    ("models-unknown", ["--models", "ZigMa-Q/1"], "unknown model 'ZigMa-Q/1'"),
    ("models-empty", ["--models", ","], "--models must name at least one preset"),
    ("orders-3", ["--study", "orders", "--orders", "3"], "must be 1, 2, 4 or 8, got 3"),
    ("orders-16", ["--study", "orders", "--orders", "16"], "--orders must be positive integers"),
    (
        "orders-on-dit",
        ["--study", "orders", "--models", "DiT-B/1"],
        "the order study needs a ZigMa preset",
    ),
    ("backend-unknown", ["--backend", "fast"], "unknown selective_scan backend 'fast'"),
    ("width-0", ["--width", "0"], "argument --width: must be in 1..65536"),
    ("depth-0", ["--depth", "0"], "argument --depth: must be in 1..4096"),
    ("uvit-even-depth", ["--models", "U-ViT-B/1", "--depth", "2"], "depth"),
    ("dtype-fp64", ["--dtype", "fp64"], "invalid choice: 'fp64'"),
    (
        "cuda-graphs-on-cpu",
        ["--device", "cpu", "--cuda-graphs"],
        "--cuda-graphs needs a CUDA device",
    ),
]

DEMO_ARGS = [
    (
        "out-not-empty",
        ["--out", "full"],
        "run folder full is not empty; choose another --out or delete full",
    ),
    ("out-is-a-file", ["--out", "f"], "--out f is a file, not a folder"),
    ("out-under-a-file", ["--out", "f/run"], "f is not a folder"),
    ("steps-0", ["--out", "new", "--steps", "0"], "argument --steps: must be >= 1"),
    ("override-unknown", ["--out", "new", "model.hidden=3"], "unknown config key 'model.hidden'"),
    ("override-wrong-type", ["--out", "new", "batch_size=many"], "batch_size must be an integer"),
]


@pytest.mark.parametrize(
    "command, argv, match",
    [("bench", *c[1:]) for c in BENCH_ARGS] + [("demo", *c[1:]) for c in DEMO_ARGS],
    ids=[f"bench-{c[0]}" for c in BENCH_ARGS] + [f"demo-{c[0]}" for c in DEMO_ARGS],
)
def test_bench_and_demo_refuse_bad_arguments(cli, tmp_path, monkeypatch, command, argv, match):
    monkeypatch.chdir(tmp_path)
    if "cuda:9" in argv and torch.cuda.device_count() > 9:
        pytest.skip("this machine has a cuda:9")
    (tmp_path / "f").write_text("a file")
    (tmp_path / "b" / "bench.csv").mkdir(parents=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    run_case(cli, tmp_path, argv, command, match)


# ---------------------------------------------------------------- the top level


@pytest.mark.parametrize(
    "argv, match",
    [([], "the following arguments are required"), (["smaple"], "invalid choice: 'smaple'")],
    ids=["no-command", "unknown-command"],
)
def test_top_level_errors_are_one_line(cli, argv, match):
    res = cli(*argv)
    lines = res.err.strip().splitlines()
    assert res.code == 2 and len(lines) == 1, res.err
    assert lines[0].startswith("zigma: error: ") and match in lines[0]


def test_help_lists_every_command(cli):
    res = cli("--help")
    assert res.code == 0
    for name in ("models", "info", "scans", "sample", "train", "demo", "bench"):
        assert name in res.out
