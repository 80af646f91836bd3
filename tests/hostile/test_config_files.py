"""``--config FILE``: YAML and JSON a hostile user hands us, and the YAML users really write.

Every bad file ends in one line naming it, exit 2, nothing in --out, within a second or two
(a few hundred bytes of YAML aliases expand to billions of values if anything walks them).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import pytest

from zigma.config import ConfigError
from zigma.train import build_config, read_config_file

from .conftest import assert_one_line_error

yaml = pytest.importorskip("yaml")


def laughs(levels=9):
    """YAML's "billion laughs": 9 ** levels strings from a few hundred bytes."""
    text = 'a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
    for i in range(1, levels):
        text += f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n"
    return text + f"model:\n  depth: *a{levels - 1}\n"


def nested_json(levels):
    return '{"a": ' * levels + "1" + "}" * levels


# (id, file name, content, the one-line error); every error names the file
BAD = [
    ("yaml-list", "c.yaml", "- 1\n- 2\n", "must hold a mapping of config keys, not a list"),
    ("yaml-scalar", "c.yaml", "hello\n", "must hold a mapping of config keys, not a string"),
    ("json-list", "c.json", "[1, 2]", "must hold a mapping of config keys, not a list"),
    ("json-scalar", "c.json", "3", "must hold a mapping of config keys, not a number"),
    ("json-10MB", "c.json", '{"x": "' + "a" * (10 << 20) + '"}', "more than the 1048576"),
    ("yaml-10MB", "c.yaml", "x: " + "a" * (10 << 20), "more than the 1048576"),
    ("json-10000-levels", "c.json", "[" * 10_000 + "]" * 10_000, "nested too deeply"),
    ("json-40-levels", "c.json", nested_json(40), "nested more than 32 levels deep"),
    ("yaml-10000-levels-flow", "c.yaml", "[" * 10_000 + "]" * 10_000,
     "nested more than 32 levels deep"),
    ("yaml-10000-levels-block", "c.yaml", "- " * 10_000 + "x\n", "nested more than 32 levels"),
    ("yaml-indented-levels", "c.yaml", "".join(" " * i + f"k{i}:\n" for i in range(40)),
     "nested more than 32 levels"),
    ("yaml-billion-laughs", "c.yaml", laughs(), "more than 10000 values (aliases expanded)"),
    ("yaml-self-alias", "c.yaml", "a: &a [*a]\n", "nested more than 32 levels deep"),
    ("yaml-60000-keys", "c.yaml", "".join(f"k{i}: {i}\n" for i in range(60_000)),
     "holds more than 10000 values"),
    ("yaml-python-object", "c.yaml", "steps: !!python/object/apply:os.system ['echo hi']\n",
     "could not determine a constructor for the tag"),
    ("yaml-python-name", "c.yaml", "steps: !!python/name:os.system\n", "python/name:os.system"),
    ("yaml-bad-int-tag", "c.yaml", "steps: !!int abc\n", "is not valid YAML"),
    ("yaml-5000-digits", "c.yaml", "steps: " + "9" * 5000 + "\n", "is not valid YAML"),
    ("json-5000-digits", "c.json", '{"steps": ' + "9" * 5000 + "}", "is not valid JSON"),
    ("yaml-syntax", "c.yaml", "a: [1, 2\n", "is not valid YAML"),
    ("json-syntax", "c.json", "{not json", "is not valid JSON"),
    ("json-empty", "c.json", "", "is not valid JSON"),
    ("yaml-latin-1", "c.yaml", b"wandb_project: caf\xe9\n", "is not UTF-8 text (byte 18)"),
    ("json-utf-16", "c.json", '{"steps": 1}'.encode("utf-16"), "is not UTF-8 text (byte 0)"),
    ("toml", "c.toml", "steps = 1\n", "must end in .json, .yaml or .yml"),
]  # fmt: skip


@pytest.mark.parametrize("name, content, match", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_files_stop_with_one_line_naming_the_file(cli, tmp_path, name, content, match):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    out = tmp_path / "run"
    start = time.perf_counter()
    res = cli("train", "--preset", "demo", "--config", path, "--out", out)
    line = assert_one_line_error(res, "train", match)
    assert str(path) in line and not out.exists()
    assert time.perf_counter() - start < 2


def test_yaml_tags_run_nothing(cli, tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "c.yaml"
    path.write_text(f"steps: !!python/object/apply:builtins.open [{str(marker)!r}, w]\n")
    res = cli("train", "--preset", "demo", "--config", path, "--out", tmp_path / "run")
    assert_one_line_error(res, "train", "could not determine a constructor")
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: p.mkdir(), "is a folder, not a file"),
        (lambda p: os.symlink(p.name, p), "Too many levels of symbolic links"),
        (lambda p: None, "not found"),
    ],
    ids=["folder", "symlink-loop", "missing"],
)
def test_config_paths_that_are_not_files(cli, tmp_path, make, match):
    path = tmp_path / "c.yaml"
    make(path)
    res = cli("train", "--preset", "demo", "--config", path, "--out", tmp_path / "run")
    assert str(path) in assert_one_line_error(res, "train", match)
    assert not (tmp_path / "run").exists()


def test_unreadable_config_file(cli, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads a chmod 000 file anyway")
    path = tmp_path / "c.json"
    path.write_text("{}")
    path.chmod(0)
    res = cli("train", "--preset", "demo", "--config", path, "--out", tmp_path / "run")
    assert str(path) in assert_one_line_error(res, "train", "Permission denied")


def test_missing_pyyaml_names_the_extra(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # what `import yaml` sees without PyYAML
    path = tmp_path / "c.yaml"
    path.write_text("steps: 3\n")
    res = cli("train", "--preset", "demo", "--config", path, "--out", tmp_path / "run")
    assert_one_line_error(res, "train", "needs PyYAML: pip install 'zigma[yaml]'")
    json_path = tmp_path / "c.json"
    json_path.write_text('{"steps": 3}')
    assert read_config_file(json_path) == {"steps": 3}  # JSON needs no extra


# ---- what users write: YAML 1.2's core schema, the one JSON agrees with

NUMBERS = [
    ("1e-3", 1e-3), ("1E-3", 1e-3), (".5", 0.5), ("-1e-4", -1e-4), ("+2.5e+2", 250.0),
    ("3.", 3.0), ("1.0", 1.0), ("-.5E2", -50.0), ("10", 10), ("-7", -7), ("012", 12),
    ("0o17", 15), ("0x1F", 31), (".inf", math.inf), ("-.Inf", -math.inf),
    ("true", True), ("False", False), ("null", None), ("~", None), ("", None),
]  # fmt: skip
STRINGS = [
    "yes", "no", "on", "off", "y", "n", "1_000", "0b101", "1:30", "2024-01-01", "1e3x",
    "e5", "1.2.3", ".", "0x", "+", "1e", ".e5", "0o8", "=", "<<x", "NaN", "inf",
]  # fmt: skip


@pytest.mark.parametrize("text, value", NUMBERS, ids=[t or "empty" for t, _ in NUMBERS])
def test_yaml_numbers_booleans_and_nulls(tmp_path, text, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"x: {text}\n")
    got = read_config_file(path)["x"]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("text", STRINGS)
def test_yaml_strings_stay_strings(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(f"x: {text}\n")
    assert read_config_file(path) == {"x": text}


def test_yaml_nan_is_a_float(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("x: .nan\n")
    assert math.isnan(read_config_file(path)["x"])


def test_scientific_learning_rate_from_yaml(tmp_path):
    # PyYAML's YAML 1.1 rules read 1e-3 as the string "1e-3", which the config refused
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 1e-3\n  eps: 1E-8\nema:\n  decay: .5\nsteps: 012\n")
    cfg = build_config("demo", path)
    assert (cfg.optim.lr, cfg.optim.eps, cfg.ema.decay, cfg.steps) == (1e-3, 1e-8, 0.5, 12)
    path.write_text("grad_checkpointing: yes\n")  # a string now: refused, not silently True
    with pytest.raises(ConfigError, match="grad_checkpointing must be true or false, got 'yes'"):
        build_config("demo", path)


def test_anchors_and_merge_keys_within_limits(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("base: &b {lr: 2e-4, eps: 1e-7}\noptim:\n  <<: *b\n  lr: 3e-4\n")
    assert read_config_file(path)["optim"] == {"lr": 3e-4, "eps": 1e-7}


def test_json_and_yaml_agree(tmp_path):
    cfg = {"optim": {"lr": 1e-3, "betas": [0.9, 0.99]}, "steps": 5, "wandb_project": "x"}
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cfg))
    assert read_config_file(tmp_path / "c.json") == read_config_file(tmp_path / "c.yml") == cfg
