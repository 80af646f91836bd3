"""The zigma command line, run as a user runs it."""

import subprocess
import sys

import pytest
from PIL import Image

from zigma.cli import main


def test_models_lists_every_preset(capsys):
    assert main(["models", "--size", "16"]) == 0
    out = capsys.readouterr().out
    for name in ("ZigMa-S/1", "ZigMa-B/2", "ZigMa-L/4", "ZigMa-XL/2"):
        assert name in out
    line = next(line for line in out.splitlines() if line.startswith("ZigMa-S/2 "))
    assert 30 < float(line.split()[-1].rstrip("M")) < 36  # DiT-S/2 has 33 M parameters


def test_info_builds_and_runs(capsys):
    assert main(["info", "ZigMa-S/4", "input_size=16", "depth=2", "num_classes=10"]) == 0
    out = capsys.readouterr().out
    assert "y=class labels [B] in 0..10 (10 = null class)" in out
    assert "forward pass" in out and "GFLOPs" in out
    assert "-> (2, 4, 16, 16)" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "ZigMa-Q/2"], "unknown model 'ZigMa-Q/2'"),
        (["info", "ZigMa-S/2", "hiden_size=3"], "unknown ZigMaConfig key 'hiden_size'"),
        (["info", "ZigMa-S/2", "input_size=31"], "not a positive multiple of patch_size 2"),
        (["info", "ZigMa-S/2", "depth"], "not of the form key=value"),
        (["scans", "--kind", "spiral"], "spiral"),
        (["scans", "--plot", "x.jpg"], "png"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.lower() in err.lower()
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_scans_plot_and_print(tmp_path, capsys):
    png = tmp_path / "sub" / "zz.png"
    assert main(["scans", "--kind", "zigzag", "--size", "4", "--plot", str(png), "--print"]) == 0
    out = capsys.readouterr().out
    assert "zigzag order 0: 0 1 2 3 7 6 5 4 8 9 10 11 15 14 13 12" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100


def test_console_entry_point_runs():
    res = subprocess.run(
        [sys.executable, "-m", "zigma", "--version"], capture_output=True, text=True
    )
    assert res.returncode == 0 and res.stdout.startswith("zigma ")
