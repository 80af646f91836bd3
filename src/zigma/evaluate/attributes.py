"""Attribute accuracy: does an image show the colour, kind and position its prompt asked for?

A small CNN is trained on the scene generator's own single-object renders (``zigma.data.scenes``)
to read back an object's colour, kind, cell and size. Generated images for prompts from
``evaluation_prompts`` are then scored against the prompts' specs by ``attribute_accuracy``.
Prompts are drawn uniformly, so chance is known (1/6 colour, 1/3 kind, 1/9 cell), and the
classifier's own held-out accuracy on fresh renders (recorded with its weights) bounds how far
the metric can be trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from zigma.artifacts import atomic_write, read_json_object, write_text_atomic
from zigma.config import ConfigError, from_dict
from zigma.data.scenes import (
    CELLS,
    COLORS,
    KINDS,
    MIN_RESOLUTION,
    SIZES,
    SceneSpec,
    random_scene,
    render_scene,
    scene_captions,
)
from zigma.data.transforms import uint8_to_tensor

logger = logging.getLogger(__name__)

# attribute -> its class names, in the order of the classifier's logits
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS),
    "kind": KINDS,
    "cell": CELLS,
    "size": SIZES,
}
ALL_CORRECT = ("color", "kind", "cell")  # what "all" requires: the prompt's main attributes
CONFIG_FILE = "attributes.json"
WEIGHTS_FILE = "attributes.safetensors"
_MAX_WEIGHTS_BYTES = 64 << 20  # a few hundred kB in practice


@dataclass
class AttributeClassifierConfig:
    """Architecture and the vocabulary it was trained on (checked again on load).

    Args:
        resolution: image side the classifier reads (>= 16).
        width: channels of the first convolutions (the last ones have twice as many).
        classes: attribute -> class names, as in ``ATTRIBUTES`` when trained.
        heldout_accuracy: per-attribute accuracy on fresh renders after training.
    """

    resolution: int = 32
    width: int = 16
    classes: dict[str, list[str]] = field(
        default_factory=lambda: {k: list(v) for k, v in ATTRIBUTES.items()}
    )
    heldout_accuracy: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not MIN_RESOLUTION <= self.resolution <= 1024:
            raise ConfigError(
                f"resolution must be in [{MIN_RESOLUTION}, 1024], got {self.resolution}"
            )
        if not 4 <= self.width <= 256:
            raise ConfigError(f"width must be in [4, 256], got {self.width}")
        expected = {k: list(v) for k, v in ATTRIBUTES.items()}
        if self.classes != expected:
            raise ConfigError(
                "classes do not match this version's scenes (colours, kinds, cells, sizes): "
                "retrain the classifier"
            )


class AttributeClassifier(nn.Module):
    """Conv net with one linear head per attribute; reads images [N, 3, R, R] in [-1, 1].

    Two stride-2 stages bring the image to R/4 (8x8 at 32 px), where each feature sees ~19 px,
    more than any object. The heads read two summaries: the maximum over all positions (what is
    there, wherever it is: colour, kind, size) and a 3x3 average grid (where it is: the cell).
    Batch norm makes the few hundred steps of training enough.
    """

    def __init__(self, config: AttributeClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or AttributeClassifierConfig()
        w = self.config.width

        def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.features = nn.Sequential(
            *block(3, w, 1), *block(w, 2 * w, 2), *block(2 * w, 2 * w, 1), *block(2 * w, 4 * w, 2)
        )
        self.grid = nn.AdaptiveAvgPool2d(3)
        dim = 4 * w * (9 + 1)
        self.heads = nn.ModuleDict(
            {name: nn.Linear(dim, len(names)) for name, names in ATTRIBUTES.items()}
        )

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images)
        z = torch.cat([self.grid(h).flatten(1), h.amax(dim=(2, 3))], dim=1)
        return {name: head(z) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Class indices per attribute, [N] int64 each (``images`` checked as in
        ``attribute_accuracy``)."""
        _check_images(images, self.resolution)
        was_training = self.training
        self.eval()
        param = next(self.parameters())
        outs: dict[str, list[torch.Tensor]] = {k: [] for k in ATTRIBUTES}
        for chunk in images.split(batch_size):
            logits = self(chunk.to(param.device, param.dtype))
            for k, v in logits.items():
                outs[k].append(v.argmax(-1).cpu())
        self.train(was_training)
        return {k: torch.cat(v) for k, v in outs.items()}

    def _weights_bytes(self) -> bytes:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return save_safetensors(state)

    @property
    def weights_hash(self) -> str:
        """sha256 of the weights as ``save`` writes them (the hex digest of that file)."""
        return hashlib.sha256(self._weights_bytes()).hexdigest()

    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``attributes.safetensors`` and ``attributes.json`` into ``folder``, atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = self._weights_bytes()
        atomic_write(folder / WEIGHTS_FILE, lambda p: Path(p).write_bytes(data))
        text = json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n"
        write_text_atomic(folder / CONFIG_FILE, text)
        return folder

    @classmethod
    def load(cls, folder: str | os.PathLike) -> AttributeClassifier:
        """Read a classifier ``save`` wrote.

        Raises:
            FileNotFoundError: a file is missing.
            ValueError: a malformed config, weights too large or not matching the config.
        """
        folder = Path(folder)
        weights = folder / WEIGHTS_FILE
        for p in (folder / CONFIG_FILE, weights):
            if not p.is_file():
                raise FileNotFoundError(f"attribute classifier file {p} does not exist")
        data = read_json_object(folder / CONFIG_FILE, "attribute classifier config")
        try:
            config = from_dict(AttributeClassifierConfig, data)
        except ConfigError as e:
            raise ValueError(f"{folder / CONFIG_FILE}: {e}") from None
        if weights.stat().st_size > _MAX_WEIGHTS_BYTES:
            raise ValueError(f"{weights} is larger than {_MAX_WEIGHTS_BYTES} bytes")
        model = cls(config)
        try:
            state = load_safetensors(weights.read_bytes())
            model.load_state_dict(state)
        except Exception as e:  # safetensors and load_state_dict raise several types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{weights}: not this classifier's weights ({first[:200]})") from None
        return model.eval()


def _check_images(images: torch.Tensor, resolution: int) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [N, 3, H, W], got {shape}")
    if images.shape[2:] != (resolution, resolution):
        raise ValueError(
            f"images are {images.shape[2]}x{images.shape[3]}; the classifier reads "
            f"{resolution}x{resolution} (train one at that resolution)"
        )
    if not images.is_floating_point() or not bool(torch.isfinite(images).all()):
        raise ValueError("images must be finite floating-point values in [-1, 1]")


def _targets(specs: list[SceneSpec]) -> dict[str, torch.Tensor]:
    """Class indices per attribute of single-object specs."""
    objs = [s.objects[0] for s in specs]
    return {
        "color": torch.tensor([ATTRIBUTES["color"].index(o.color) for o in objs]),
        "kind": torch.tensor([KINDS.index(o.kind) for o in objs]),
        "cell": torch.tensor([o.cell for o in objs]),
        "size": torch.tensor([SIZES.index(o.size) for o in objs]),
    }


def _render_batch(specs: list[SceneSpec], resolution: int) -> torch.Tensor:
    return torch.stack([uint8_to_tensor(render_scene(s, resolution)) for s in specs])


def chance_levels() -> dict[str, float]:
    """Accuracy of guessing, for uniformly drawn prompts: 1 / number of classes."""
    out = {k: 1.0 / len(v) for k, v in ATTRIBUTES.items()}
    out["all"] = float(np.prod([out[k] for k in ALL_CORRECT]))
    return out


def attribute_accuracy(
    classifier: AttributeClassifier, images: torch.Tensor, specs: list[SceneSpec]
) -> dict[str, Any]:
    """Per-attribute accuracy of ``images`` [N, 3, H, W] in [-1, 1] against single-object
    ``specs``, the fraction with colour, kind and cell all right (``"all"``), ``"num_images"``
    and ``"chance"`` (the same keys, for uniformly drawn specs).

    Raises:
        ValueError: bad image shape or values, a resolution the classifier was not trained at,
            a count mismatch, or a spec with other than one object.
    """
    _check_images(images, classifier.resolution)
    if len(specs) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {len(specs)} specs")
    if not specs:
        raise ValueError("attribute_accuracy needs at least one image")
    if any(len(s.objects) != 1 for s in specs):
        raise ValueError("attribute_accuracy scores single-object specs only")
    pred = classifier.predict(images)
    truth = _targets(specs)
    right = {k: pred[k] == truth[k] for k in ATTRIBUTES}
    out: dict[str, Any] = {k: float(v.float().mean()) for k, v in right.items()}
    every = torch.stack([right[k] for k in ALL_CORRECT]).all(0)
    out["all"] = float(every.float().mean())
    out["num_images"] = len(specs)
    out["chance"] = chance_levels()
    return out


def evaluation_prompts(
    num: int, seed: int = 0, resolution: int = 32
) -> list[tuple[str, SceneSpec]]:
    """``num`` (prompt, spec) pairs of single-object scenes, every attribute uniform (see
    ``chance_levels``); the prompt is the spec's first, most complete caption.

    The specs do not depend on ``resolution``; it is checked, as the images must be drawn at
    one the classifier reads.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not MIN_RESOLUTION <= resolution <= 1024:
        raise ValueError(f"resolution must be in [{MIN_RESOLUTION}, 1024], got {resolution}")
    rng = np.random.default_rng([seed, 0x5CE7E])  # a stream apart from the datasets' (seed, i)
    specs = [random_scene(rng, max_objects=1) for _ in range(num)]
    return [(scene_captions(s)[0], s) for s in specs]


def train_attribute_classifier(
    resolution: int = 32,
    steps: int = 300,
    seed: int = 0,
    *,
    batch_size: int = 64,
    lr: float = 3e-3,
    width: int = 16,
    heldout: int = 1000,
) -> AttributeClassifier:
    """Train a classifier on fresh single-object renders at ``resolution`` (CPU, seconds).

    Every batch is newly drawn (no image is seen twice), so the training loss already
    estimates the error on new renders; ``heldout`` more, from a separate stream, are scored at
    the end and recorded in ``config.heldout_accuracy`` (logged too).
    """
    if steps < 1 or batch_size < 1 or heldout < 1:
        raise ValueError(
            f"steps, batch_size and heldout must be >= 1, got {steps}, {batch_size}, {heldout}"
        )
    config = AttributeClassifierConfig(resolution=resolution, width=width)
    with torch.random.fork_rng(devices=[]):  # seed the initial weights, not the caller's RNG
        torch.manual_seed(seed)
        model = AttributeClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng([seed, 0xA77])
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        specs = [random_scene(rng, max_objects=1) for _ in range(batch_size)]
        images, truth = _render_batch(specs, resolution), _targets(specs)
        logits = model(images)
        loss = sum(F.cross_entropy(logits[k], truth[k]) for k in ATTRIBUTES)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        sched.step()
    test_rng = np.random.default_rng([seed, 0x7E57])
    specs = [random_scene(test_rng, max_objects=1) for _ in range(heldout)]
    scores = attribute_accuracy(model, _render_batch(specs, resolution), specs)
    config.heldout_accuracy = {k: round(scores[k], 4) for k in (*ATTRIBUTES, "all")}
    logger.info(
        "attribute classifier at %d px: %d steps in %.1f s; held-out accuracy %s",
        resolution, steps, time.perf_counter() - start, config.heldout_accuracy,
    )  # fmt: skip
    return model.eval()


def prompt_following(
    model: nn.Module,
    transport: Any,
    encoder: Any,
    classifier: AttributeClassifier,
    num: int = 200,
    scales: tuple[float, ...] = (1.0, 3.0),
    steps: int = 25,
    seed: int = 0,
    batch_size: int = 64,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Attribute accuracy of a text model's samples against their prompts
    (``evaluation_prompts``), one row per guidance scale, plus a first row for the same model
    given the null text (an unconditional model: its accuracy is the chance level).

    Every row draws from the same noise (``seed``), so rows differ only by the text and scale.
    """
    from zigma.evaluate.prompts import encode_prompts
    from zigma.generate import generate

    pairs = evaluation_prompts(num, seed, classifier.resolution)
    prompts, specs = [p for p, _ in pairs], [s for _, s in pairs]
    text = encode_prompts(encoder, prompts)
    null = model.null_conditions({"text": text})
    rows = []
    for label, cond, scale in [("null text (unconditional)", null, 1.0)] + [
        (f"prompt, cfg {s:g}", {"text": text}, s) for s in scales
    ]:
        images = generate(
            model, transport, num, cond=cond, seed=seed, steps=steps, guidance_scale=scale,
            batch_size=batch_size, device=device,
        )  # fmt: skip
        acc = attribute_accuracy(classifier, images, specs)
        rows.append({"samples": label, "cfg": scale, **acc})
    return rows
