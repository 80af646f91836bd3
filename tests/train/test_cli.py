"""``zigma train`` on bad input: exit code 2, one line naming the problem, nothing written."""

from __future__ import annotations

import importlib.util
import json

import pytest

from zigma.cli import main
from zigma.train import train

from .conftest import TINY, run_cli, tiny


def _snapshot(folder):
    if not folder.exists():
        return None
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _fails(capsys, args, match, out=None):
    before = _snapshot(out) if out is not None else None
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zigma train: error:") and "\n" not in err, err
    assert match in err, err
    if out is not None:
        assert _snapshot(out) == before  # nothing written or overwritten
    return err


@pytest.mark.parametrize(
    "args, match",
    [
        (["--preset", "dmeo"], "did you mean 'demo'"),
        (["--preset", "demo", "model.hiden_size=64"], "did you mean 'hidden_size'"),
        (["--preset", "demo", "optim.lr=fast"], "optim.lr"),
        (["--preset", "demo", "data.resolution=30", "model.patch_size=4"], "not divisible"),
        (["--preset", "demo", "data.name=folder", "data.data_dir=/no/such/dir"], "/no/such/dir"),
        (["--preset", "fashion-mnist", "data.data_dir=/no/such/dir"], "Fashion-MNIST"),
        (["--preset", "demo", "--config", "/no/such.yaml"], "/no/such.yaml"),
        ([], "--preset"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, args, match):
    out = tmp_path / "run"
    _fails(capsys, [*args, "--out", str(out), "--steps", "2"], match)
    assert not out.exists()


def test_out_is_required(capsys):
    _fails(capsys, ["--preset", "demo"], "--out")


def test_folder_of_someone_elses_files_is_refused(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    for resume in ([], ["--resume"]):
        args = ["--preset", "demo", "--out", str(tmp_path), *resume]
        _fails(capsys, args, "not a zigma run's ('keep.txt')", out=tmp_path)


def test_resume_without_checkpoint_or_preset(tmp_path, capsys):
    _fails(capsys, ["--out", str(tmp_path / "run"), "--resume"], "give --preset")
    assert not (tmp_path / "run").exists()


def test_a_finished_run_is_not_overwritten(finished_run, capsys):
    _fails(
        capsys,
        ["--preset", "demo", "--out", str(finished_run), *TINY],
        "already holds a run (checkpoint step_0000002); pass --resume",
        out=finished_run,
    )


@pytest.fixture
def finished_run(tmp_path):
    out = tmp_path / "run"
    train(tiny(steps=2), out)
    return out


def test_corrupt_checkpoint_on_resume(finished_run, capsys):
    (finished_run / "checkpoints" / "step_0000002" / "model.safetensors").write_bytes(b"\0" * 64)
    _fails(
        capsys,
        ["--out", str(finished_run), "--resume", "--steps", "4"],
        "model.safetensors is not a readable",
        out=finished_run,
    )


def test_foreign_checkpoint_on_resume(finished_run, capsys):
    state = finished_run / "checkpoints" / "step_0000002" / "state.json"
    state.write_text(json.dumps({"model": "a torch.save dict", "step": 2}))
    _fails(
        capsys,
        ["--out", str(finished_run), "--resume"],
        "not a zigma training checkpoint",
        out=finished_run,
    )


def test_weights_that_do_not_fit_the_config(finished_run, capsys):
    cfg = finished_run / "checkpoints" / "step_0000002" / "config.json"
    data = json.loads(cfg.read_text())
    data["model"]["hidden_size"] = 48
    cfg.write_text(json.dumps(data))
    _fails(
        capsys,
        ["--out", str(finished_run), "--resume", "--steps", "4"],
        "does not match its config",
        out=finished_run,
    )


def test_list_presets(capsys):
    assert main(["train", "--list-presets"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("demo", "shapes-s", "fashion-mnist", "ZigMa-S/2"))


def test_divergence_exits_2_in_a_real_process_and_its_advice_works(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--preset", "demo", "--out", str(out), *TINY, "optim.grad_clip=null"]
    proc = run_cli(*args, "optim.lr=1", "max_nonfinite=3", "--steps", "50")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zigma train: error: stopped at step"), lines
    assert "skipped steps in a row" in lines[0] and "no checkpoint yet" in lines[0]
    assert (out / "log.txt").is_file() and not (out / "model").exists()
    # the advice, as printed: the run restarts with the lower learning rate and finishes
    advice = lines[0].split("continue with a lower learning rate: ")[1].split()
    assert advice[:5] == ["zigma", "train", "--out", str(out), "--resume"], advice
    proc = run_cli(*advice[1:], "optim.lr=1e-3", "--steps", "6")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 1e-3
    assert (out / "model" / "model.safetensors").is_file()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="installed")
def test_missing_tracker_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "run"
    _fails(capsys, ["--preset", "demo", "--out", str(out), "tensorboard=true"], "pip install")
    assert not out.exists()


def test_demo_trains_and_writes_a_sample_grid(tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", *TINY]) == 0
    stdout = capsys.readouterr().out
    assert "zigma demo: 6 steps" in stdout and str(out / "samples.png") in stdout
    with Image.open(out / "samples.png") as im:
        # 8 classes per row, 8 rows of 16 px tiles with 2 px padding, enlarged 4x (to 64 px)
        assert im.size == (4 * (8 * 18 + 2), 4 * (8 * 18 + 2))
    assert (out / "model" / "model.safetensors").is_file() and (out / "loss.png").is_file()
    assert main(["demo", "--out", str(out), "--steps", "6", *TINY]) == 2  # never overwrites
    assert "error" in capsys.readouterr().err
