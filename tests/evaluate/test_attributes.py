import hashlib
import json
import re

import numpy as np
import pytest
import torch

from zigma.data.scenes import CELLS, COLORS, KINDS, SIZES, make_object, make_scene, render_scene
from zigma.data.transforms import uint8_to_tensor
from zigma.evaluate.attributes import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    AttributeClassifier,
    attribute_accuracy,
    chance_levels,
    evaluation_prompts,
    train_attribute_classifier,
)

RES = 32


@pytest.fixture(scope="module")
def classifier():
    # ~10 s on one core; the one slow fixture of this file, shared by its tests
    return train_attribute_classifier(RES, steps=200, seed=0)


def _images(specs, resolution=RES):
    return torch.stack([uint8_to_tensor(render_scene(s, resolution)) for s in specs])


@pytest.fixture(scope="module")
def fresh():
    """Renders the classifier never saw: evaluation prompts of another seed."""
    specs = [spec for _, spec in evaluation_prompts(900, seed=123, resolution=RES)]
    return _images(specs), specs


def test_heldout_accuracy_is_high_on_fresh_renders(classifier, fresh):
    images, specs = fresh
    scores = attribute_accuracy(classifier, images, specs)
    for k in ("color", "kind", "cell", "size"):
        assert scores[k] > 0.97, scores
    assert scores["all"] > 0.95 and scores["num_images"] == 900
    assert all(v > 0.97 for v in classifier.config.heldout_accuracy.values())


def test_every_combination_of_attributes_is_read_back(classifier):
    # all 6 x 3 x 9 x 2 combinations, pushed to a corner of their cell: a brute-force sweep
    specs = [
        make_scene([make_object(k, c, cell, s, offset=(1.0, -1.0))])
        for k in KINDS
        for c in COLORS
        for cell in range(len(CELLS))
        for s in SIZES
    ]
    scores = attribute_accuracy(classifier, _images(specs), specs)
    assert scores["all"] > 0.97, scores


def test_shuffled_pairs_score_near_chance(classifier, fresh):
    images, specs = fresh
    perm = np.random.default_rng(0).permutation(len(specs))
    scores = attribute_accuracy(classifier, images, [specs[i] for i in perm])
    chance = chance_levels()
    assert scores["chance"] == chance
    for k in ("color", "kind", "cell", "size"):
        assert abs(scores[k] - chance[k]) < 0.06, (k, scores[k], chance[k])
    assert scores["all"] < 0.03


def test_chance_levels_are_one_over_classes():
    c = chance_levels()
    assert c["color"] == pytest.approx(1 / 6) and c["kind"] == pytest.approx(1 / 3)
    assert c["cell"] == pytest.approx(1 / 9) and c["all"] == pytest.approx(1 / 162)


def test_evaluation_prompts_are_seeded_uniform_and_name_their_spec():
    a = evaluation_prompts(3000, seed=5, resolution=32)
    assert a == evaluation_prompts(3000, seed=5, resolution=64)
    assert a != evaluation_prompts(3000, seed=6, resolution=32)
    for prompt, spec in a[:200]:
        (o,) = spec.objects
        assert re.fullmatch(rf"an? {o.size} {o.color} {o.kind} {o.location}", prompt)
    objs = [spec.objects[0] for _, spec in a]
    for attr, names in (("color", COLORS), ("kind", KINDS), ("position", CELLS)):
        counts = np.array([sum(getattr(o, attr) == n for o in objs) for n in names])
        expected = len(objs) / len(names)
        # within ~4.5 standard deviations of a uniform draw
        assert np.abs(counts - expected).max() < 4.5 * np.sqrt(expected), (attr, counts)
    with pytest.raises(ValueError, match="num"):
        evaluation_prompts(0)
    with pytest.raises(ValueError, match="resolution"):
        evaluation_prompts(4, resolution=8)


def test_save_load_round_trip_and_hash(classifier, fresh, tmp_path):
    images, specs = fresh
    classifier.save(tmp_path)
    data = (tmp_path / WEIGHTS_FILE).read_bytes()
    assert classifier.weights_hash == hashlib.sha256(data).hexdigest()
    loaded = AttributeClassifier.load(tmp_path)
    assert loaded.weights_hash == classifier.weights_hash
    assert loaded.config.heldout_accuracy == classifier.config.heldout_accuracy
    p1, p2 = classifier.predict(images[:64]), loaded.predict(images[:64])
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
    other = train_attribute_classifier(16, steps=1, seed=1, heldout=8)
    assert other.weights_hash != classifier.weights_hash


def test_load_refuses_hostile_files(classifier, tmp_path):
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        AttributeClassifier.load(tmp_path)
    classifier.save(tmp_path)
    (tmp_path / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        AttributeClassifier.load(tmp_path)
    classifier.save(tmp_path)
    cfg = json.loads((tmp_path / CONFIG_FILE).read_text())
    cfg["width"] = 8  # weights of another shape
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        AttributeClassifier.load(tmp_path)
    cfg["classes"]["color"] = ["red"]
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="retrain"):
        AttributeClassifier.load(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match=CONFIG_FILE):
        AttributeClassifier.load(tmp_path)


def test_attribute_accuracy_refuses_bad_input(classifier, fresh):
    images, specs = fresh
    with pytest.raises(ValueError, match="16x16"):
        attribute_accuracy(classifier, images[:2, :, :16, :16], specs[:2])
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        attribute_accuracy(classifier, images[0], specs[:1])
    with pytest.raises(ValueError, match="2 images but 3 specs"):
        attribute_accuracy(classifier, images[:2], specs[:3])
    bad = images[:2].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        attribute_accuracy(classifier, bad, specs[:2])
    two = make_scene([make_object("circle", "red", 0), make_object("square", "blue", 8)])
    with pytest.raises(ValueError, match="single-object"):
        attribute_accuracy(classifier, images[:1], [two])
