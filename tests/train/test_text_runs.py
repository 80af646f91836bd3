"""Text-to-image runs end to end with tiny random-weight encoders in the real on-disk format:
training records the encoder and resumes exactly, a feature cache replaces the encoder,
``zigma sample --prompt`` draws one row per prompt (and attention maps), bad input is one line,
and a briefly trained text model follows colour and position words."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from tests.text.tiny import save_encoder
from tests.train.conftest import tiny

from zigma.cli import main
from zigma.data.scenes import CELLS, COLORS, KINDS, SIZES
from zigma.evaluate import load_for_sampling
from zigma.generate import generate
from zigma.models import from_pretrained
from zigma.train import train

pytest.importorskip("transformers")

SCENE_WORDS = sorted(
    {"a", "an", "the", "in", "at", "on", "of", "to", "and", "is", "with", ","}
    | set(COLORS)
    | set(KINDS)
    | set(SIZES)
    | {w for c in CELLS for w in c.split()}
)
TEXT = [
    "data.name=scenes",
    "data.max_objects=1",
    "model.num_classes=0",
    "model.cross_attn_heads=2",
    "model.cross_attn_head_dim=8",
]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_encoder("bert", tmp_path_factory.mktemp("enc") / "bert", SCENE_WORDS)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, bert):
    out = tmp_path_factory.mktemp("runs") / "text"
    train(tiny(*TEXT, f"text.encoder={bert}", steps=6), out)
    return out


def _weights(run, step):
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step_{step:07d}" / "model.safetensors")


def test_a_text_run_records_its_encoder_and_resumes_exactly(tmp_path, bert, text_run):
    from zigma.text import HFTextEncoder

    saved = json.loads((text_run / "config.json").read_text())
    encoder = HFTextEncoder.from_directory(bert)
    assert saved["model"]["text_dim"] == encoder.dim == 32
    assert saved["model"]["text_encoder_hash"] == encoder.weights_hash
    assert from_pretrained(text_run / "model").config.text_encoder == str(bert)
    part = tmp_path / "part"
    train(tiny(*TEXT, f"text.encoder={bert}", steps=3, ckpt_every=3), part)
    train(tiny(*TEXT, f"text.encoder={bert}", steps=6, ckpt_every=3), part, resume=True)
    a, b = _weights(text_run, 6), _weights(part, 6)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_feature_cache_stands_in_for_the_encoder(tmp_path, bert, text_run):
    import shutil

    cache = tmp_path / "cache"
    args = [*TEXT, f"text.encoder={bert}", "data.resolution=16", "data.num_samples=256"]
    assert main(["text-cache", "--preset", "demo", "--out", str(cache), *args]) == 0
    # the encoder moves away: every caption is cached, so the run needs only the cache
    moved = shutil.copytree(bert, tmp_path / "elsewhere")
    shutil.rmtree(bert)
    try:
        out = tmp_path / "cached"
        train(tiny(*TEXT, f"text.encoder={bert}", f"text.cache={cache}", steps=6), out)
        a, b = _weights(text_run, 6), _weights(out, 6)
        # fp16 features in the cache: close to the encoder's, not equal
        assert all(torch.allclose(a[k], b[k], atol=1e-3) for k in a)
    finally:
        shutil.copytree(moved, bert)
    other = save_encoder("bert", tmp_path / "other", SCENE_WORDS, seed=99)
    code = main(["text-cache", "--preset", "demo", "--out", str(cache), *args[:-3],
                 f"text.encoder={other}"])  # fmt: skip
    assert code == 2  # the cache was written by another encoder: refused, nothing changed


def test_sample_draws_one_row_per_prompt_and_attention_maps(tmp_path, text_run):
    prompts = ["a large red circle in the top left", "a small blue square at the bottom"]
    out, maps = tmp_path / "grid.png", tmp_path / "maps"
    args = ["sample", "--ckpt", str(text_run / "model"), "--steps", "2", "--num", "3"]
    args += ["--prompt", prompts[0], "--prompt", prompts[1], "--out", str(out)]
    assert main([*args, "--attn-maps", str(maps), "--scale", "1"]) == 0
    grid = Image.open(out)
    assert grid.size == (3 * 18 + 2, 2 * 18 + 2)  # 3 columns, one row per prompt, 2 px gaps
    pictures = sorted(maps.iterdir())
    assert len(pictures) == 6
    words = len(prompts[0].split())  # each word its own panel, after the sample
    assert Image.open(pictures[0]).width == (1 + words) * (16 * 4 + 2) - 2
    file = tmp_path / "prompts.txt"
    file.write_text("# two prompts\n" + "\n".join(prompts) + "\n\n")
    again = tmp_path / "again.png"
    assert main([*args[:7], "--prompts-file", str(file), "--out", str(again), "--scale", "1"]) == 0
    assert Image.open(again).tobytes() == grid.tobytes()


def test_prompts_steer_the_same_noise(text_run):
    loaded = load_for_sampling(text_run / "model")
    from zigma.evaluate.prompts import encode_prompts, load_prompt_encoder

    encoder = load_prompt_encoder(loaded.model.config)
    red = encode_prompts(encoder, ["a large red circle"] * 2)
    blue = encode_prompts(encoder, ["a large blue square"] * 2)
    a = generate(loaded.model, loaded.transport, 2, cond={"text": red}, steps=2)
    b = generate(loaded.model, loaded.transport, 2, cond={"text": blue}, steps=2)
    assert (a - b).abs().max() > 0


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--prompt", "  "], "empty prompt"),
        (["--prompts-file", "/nonexistent/prompts.txt"], "does not exist"),
        (["--attn-maps", "{tmp}/maps"], "needs --prompt"),
        (["--prompt", "red", "--text-encoder", "{other}"], "trained with"),
        (["--prompt", "red", "--text-encoder", "{gpt}"], "model_type"),
    ],
)
def test_bad_prompts_and_encoders_are_one_line_errors(
    tmp_path, capsys, text_run, bert, extra, match
):
    other = save_encoder("bert", tmp_path / "other", SCENE_WORDS, seed=99)
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text('{"model_type": "gpt2"}')
    extra = [e.format(tmp=tmp_path, other=other, gpt=gpt) for e in extra]
    out = tmp_path / "x.png"
    code = main(["sample", "--ckpt", str(text_run / "model"), "--out", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_class_model_given_a_prompt_and_text_model_without_one(tmp_path, capsys, text_run):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "pretrained" / "shapes-cpu"
    out = tmp_path / "x.png"
    assert main(["sample", "--ckpt", str(shipped), "--prompt", "red", "--out", str(out)]) == 2
    assert "not a text model" in capsys.readouterr().err
    code = main(["sample", "--ckpt", str(text_run / "model"), "--steps", "1", "--num", "2",
                 "--out", str(out)])  # fmt: skip
    assert code == 0 and "null text" in capsys.readouterr().err


def test_text_config_refusals():
    from zigma.config import ConfigError

    with pytest.raises(ConfigError, match="text.prompts need a text model"):
        tiny('text.prompts=["a red circle"]')
    with pytest.raises(ConfigError, match="model.text_dim is set but text.encoder"):
        tiny("model.text_dim=32")
    with pytest.raises(ConfigError, match="neither 'minilm' nor an existing folder"):
        tiny("text.encoder=/nonexistent/encoder")


def test_a_prompt_over_the_encoder_limit_is_cut_with_one_warning_line(tmp_path, capsys, text_run):
    long = " ".join(["red circle"] * 20)  # 40 words: over the tiny BERT's 16 tokens
    out = tmp_path / "x.png"
    args = ["sample", "--ckpt", str(text_run / "model"), "--steps", "1", "--num", "1"]
    assert main([*args, "--prompt", long, "--out", str(out)]) == 0
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [
        "zigma sample: warning: 1 of 1 captions are longer than bert's limit of 16 tokens and "
        "were truncated"
    ]


def test_a_cache_of_another_encoder_is_refused_before_training(tmp_path, bert):
    from zigma.config import ConfigError

    cache = tmp_path / "cache"
    args = [*TEXT, "data.resolution=16", "data.num_samples=64"]
    assert main(["text-cache", "--preset", "demo", "--out", str(cache), *args,
                 f"text.encoder={bert}"]) == 0  # fmt: skip
    other = save_encoder("bert", tmp_path / "other", SCENE_WORDS, seed=99)
    with pytest.raises(ConfigError, match="holds features of"):
        train(tiny(*TEXT, f"text.encoder={other}", f"text.cache={cache}", steps=2), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_text_features_survive_forgetting_mid_batch(monkeypatch, bert):
    """Over the memo's limit everything is forgotten, the batch's own captions included, and
    each batch still gets the encoder's features of its captions."""
    from zigma.text import HFTextEncoder
    from zigma.train import text as text_module

    monkeypatch.setattr(text_module, "MEMO_LIMIT", 3)
    features = text_module.TextFeatures(str(bert))
    encoder = HFTextEncoder.from_directory(bert)
    batches = [["a red circle", "a blue square"], ["a red circle", "a green triangle", "the top"]]
    for captions in batches:
        tokens, mask = features(captions)
        want, want_mask = encoder.encode(captions)
        assert torch.equal(mask, want_mask)
        torch.testing.assert_close(tokens, want)


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    from zigma.evaluate.attributes import train_attribute_classifier

    folder = tmp_path_factory.mktemp("clf") / "classifier"
    train_attribute_classifier(16, steps=5, seed=0, heldout=16).save(folder)
    return folder


def test_attributes_scores_every_guidance_scale_beside_the_null_text(
    tmp_path, text_run, classifier_dir
):
    out = tmp_path / "scores.json"
    args = ["attributes", "--ckpt", str(text_run), "--num", "4", "--steps", "1"]
    assert (
        main([*args, "--cfg", "1,2", "--classifier", str(classifier_dir), "--out", str(out)]) == 0
    )
    rows = json.loads(out.read_text())["rows"]
    assert [r["samples"] for r in rows] == [
        "null text (unconditional)",
        "prompt, cfg 1",
        "prompt, cfg 2",
    ]
    assert all(0.0 <= r["all"] <= 1.0 and r["num_images"] == 4 for r in rows)


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--cfg", "one,two"], "--cfg takes guidance scales"),
        (["--cfg", "-1"], "--cfg takes guidance scales"),
        (["--cfg", "nan"], "--cfg takes guidance scales"),
        (["--out", "{tmp}"], "--out"),
        (["--classifier", "{tmp}/none"], "none"),
    ],
)
def test_attributes_bad_input_is_one_line(tmp_path, capsys, text_run, extra, match):
    extra = [e.format(tmp=tmp_path) for e in extra]
    code = main(["attributes", "--ckpt", str(text_run), "--num", "2", "--steps", "1", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0]


def test_attributes_refuses_a_class_model(capsys):
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[2] / "pretrained" / "shapes-cpu"
    assert main(["attributes", "--ckpt", str(shipped), "--num", "2"]) == 2
    assert "not an RGB text model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "holds no prompt"),
        (b"# only a comment\n\n", "holds no prompt"),
        (b"a red \xff circle\n", "not UTF-8"),
        (b"a" * (1 << 20) + b"\n", "larger than"),
    ],
)
def test_bad_prompts_files_are_one_line(tmp_path, capsys, text_run, content, match):
    file = tmp_path / "prompts.txt"
    file.write_bytes(content)
    out = tmp_path / "x.png"
    code = main(["sample", "--ckpt", str(text_run), "--prompts-file", str(file), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and match in err[0] and not out.exists()
