"""Domain classifiers: Fréchet-distance features and conditioning accuracy for our own datasets.

On 16-32 px data a small classifier trained on the dataset itself says more than Inception
(TF-GAN's MNIST Fréchet distance, the "Fréchet LeNet distance"). We train one per dataset on
its TRAIN split with a fixed seed (``train_classifier``; ``zigma eval-classifier``), record its
held-out accuracy on the TEST split and ship the small weights with a sha256 that loading
checks (``load_classifier``). The penultimate layer gives the features, under names that can
never be mistaken for the Inception numbers:

- ``FD-<dataset>-classifier``: images (``ImageClassifier``) of shapes, fashion-mnist, mnist;
- ``FVD-proxy-<dataset>``: clips (``VideoClassifier``) of moving-shapes, moving-fashion-mnist
  (data name moving-mnist with digits_from=fashion-mnist), moving-mnist;
- ``frame-FD-<dataset>``: the video classifier's per-frame encoder, every frame one sample
  (``FrameFeatures``), so frame quality is measured apart from motion.

Every extractor takes uint8 input ([N, C, H, W] or [N, C, T, H, W], C 1 or 3, any device),
returns float32 [rows, dim] on the CPU and describes its exact preprocessing in ``resize``.
``conditioning_accuracy`` scores class-conditional samples against the labels they were drawn
for. MNIST weights are not shipped (the data is not bundled): build them with
``zigma eval-classifier --data mnist --data-dir DIR --out FILE``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from zigma.artifacts import atomic_write, read_json_object, write_text_atomic
from zigma.config import ConfigError, from_dict
from zigma.data.idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, fashion_mnist, mnist
from zigma.data.scenes import KINDS
from zigma.data.shapes import CLASS_NAMES, ShapesDataset
from zigma.data.video import SPEED, MovingMNIST, MovingShapes, direction_word
from zigma.evaluate.features import register_extractor

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_MAX_WEIGHTS_BYTES = 16 << 20  # the shipped files are a few hundred kB
_IDX_SIDE = 28  # MNIST-style images; zigma pads them to 29-32 px (zigma.data.idx)
# Motion targets of the video classifiers: the compass word of the initial velocity (as in the
# captions) and whether its speed is above the middle of the data's speed range.
DIRECTIONS = ("right", "up-right", "up", "up-left", "left", "down-left", "down", "down-right")
SPEEDS = ("slow", "fast")
# The shapes classifier sees all three styles, so it serves the centred CPU models and the
# full-style GPU models alike (its held-out accuracy is recorded per style).
SHAPE_STYLES = ("centered", "simple", "full")


@dataclass(frozen=True)
class DatasetSpec:
    """What a classifier of one dataset reads and predicts, and how it is trained by default."""

    modality: str  # "image" or "video"
    resolution: int  # side the network reads; other sizes are resized (see ``resize_note``)
    channels: int  # 3: RGB data (1-channel input repeated); 1: gray (3 channels averaged)
    classes: tuple[str, ...]
    frames: int = 0  # video: clip length T the clip features need
    steps: int = 1500
    train_items: int = 20_000  # items of the TRAIN split drawn from (shapes: per style)
    test_items: int = 2_000  # items of the TEST split scored after training
    shipped: bool = True  # weights in WEIGHTS_DIR (MNIST: built by the user)


DATASETS: dict[str, DatasetSpec] = {
    # the shipped shapes models (pretrained/shapes-cpu and shapes-gpu, the demo) sample 16 px
    "shapes": DatasetSpec("image", 16, 3, CLASS_NAMES),
    "fashion-mnist": DatasetSpec(
        "image", 28, 1, FASHION_MNIST_CLASSES, train_items=60_000, test_items=10_000
    ),
    "mnist": DatasetSpec(
        "image", 28, 1, MNIST_CLASSES, train_items=60_000, test_items=10_000, shipped=False
    ),
    # the video demo's setting (pretrained/video-demo): 8 frames of 16 px
    "moving-shapes": DatasetSpec("video", 16, 3, KINDS, frames=8, steps=1200),
    # benchmarks/video_quality.py's Moving Fashion-MNIST: 16 frames of 32 px
    "moving-fashion-mnist": DatasetSpec("video", 32, 1, FASHION_MNIST_CLASSES, frames=16),
    "moving-mnist": DatasetSpec("video", 32, 1, MNIST_CLASSES, frames=16, shipped=False),
}


def dataset_spec(dataset: str) -> DatasetSpec:
    """The ``DATASETS`` entry of ``dataset``.

    Raises:
        ValueError: an unknown dataset (the message lists the known ones).
    """
    if dataset not in DATASETS:
        raise ValueError(f"no domain classifier for dataset {dataset!r}; known: {list(DATASETS)}")
    return DATASETS[dataset]


@dataclass
class ClassifierConfig:
    """A trained classifier's architecture, vocabulary and record (the JSON beside its weights).

    Args:
        dataset: a ``DATASETS`` key.
        resolution, channels, frames: what the network reads (as in ``DatasetSpec``).
        width: channels of the first convolutions.
        classes: the object classes, in the order of the class logits (the dataset's labels).
        heldout_accuracy: accuracy per head on TEST-split items after training.
        recipe: how it was trained (command, steps, seed, batch size, lr, torch version, ...).
        sha256: of the weights file (empty until saved); loading checks it.
    """

    dataset: str
    resolution: int
    channels: int
    frames: int = 0
    width: int = 24
    classes: list[str] = field(default_factory=list)
    heldout_accuracy: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def __post_init__(self) -> None:
        spec = DATASETS.get(self.dataset)
        if spec is None:
            raise ConfigError(f"dataset must be one of {list(DATASETS)}, got {self.dataset!r}")
        if list(spec.classes) != list(self.classes):
            raise ConfigError(
                f"classes do not match this version's {self.dataset} classes: retrain it"
            )
        if not 8 <= self.resolution <= 256:
            raise ConfigError(f"resolution must be in [8, 256], got {self.resolution}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels}")
        if spec.modality == "video" and not 2 <= self.frames <= 256:
            raise ConfigError(
                f"frames must be in [2, 256] for a video classifier, got {self.frames}"
            )
        if not 4 <= self.width <= 128:
            raise ConfigError(f"width must be in [4, 128], got {self.width}")

    @property
    def modality(self) -> str:
        return DATASETS[self.dataset].modality


# ---------------------------------------------------------------- preprocessing


def resize_note(config: ClassifierConfig) -> str:
    """The exact preprocessing of a frame, as the ``resize`` of the extractors states it."""
    r = config.resolution
    if config.channels == 3:
        chan = "1 channel repeated to 3"
    else:
        chan = "3 channels averaged to 1 (plain mean)"
    if config.dataset in ("fashion-mnist", "mnist"):
        size = (
            f"29-32 px images centre-cropped to {r} (undoing zigma's MNIST padding), other sizes "
            f"resized to {r}x{r}"
        )
    else:
        size = f"resized to {r}x{r} when another size"
    return (
        f"uint8 -> float; {chan}; {size} by torch bilinear interpolation (antialias=True, "
        "align_corners=False) on 0..255 values; scaled to [-1, 1]"
    )


def _frames_to_input(x: torch.Tensor, config: ClassifierConfig) -> torch.Tensor:
    """uint8 [M, C, H, W] -> float32 [M, channels, R, R] in [-1, 1] (see ``resize_note``)."""
    x = x.float()
    if x.shape[1] != config.channels:
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x.mean(dim=1, keepdim=True)
    r, side = config.resolution, x.shape[-1]
    if config.dataset in ("fashion-mnist", "mnist") and r == _IDX_SIDE < side <= _IDX_SIDE + 4:
        pad = (side - _IDX_SIDE) // 2  # as IdxDataset pads: the odd pixel goes bottom/right
        x = x[..., pad : pad + r, pad : pad + r]
    elif side != r:
        x = F.interpolate(x, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    return x.div(127.5).sub(1.0)


def _check_uint8(x: Any, ndim: int, what: str) -> None:
    layout = "[N, C, H, W]" if ndim == 4 else "[N, C, T, H, W]"
    if not isinstance(x, torch.Tensor) or x.ndim != ndim or x.dtype != torch.uint8:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"{what} must be a uint8 tensor {layout}, got {got} (convert samples in [-1, 1] "
            "with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))"
        )
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{what} must have 1 or 3 channels (dim 1), got {x.shape[1]}")
    if x.shape[-1] != x.shape[-2] or x.shape[-1] < 8:
        raise ValueError(f"{what} must be square frames of at least 8 px, got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{what} holds no items")


# ---------------------------------------------------------------- networks


def _block(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.BatchNorm2d(c_out), nn.ReLU()]


class _SavedModule(nn.Module):
    """Weights <-> safetensors bytes, their sha256, and the extractor attributes."""

    config: ClassifierConfig
    name: str
    dim: int
    modality: str

    def _weights_bytes(self) -> bytes:
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        return save_safetensors(state)

    @property
    def sha256(self) -> str:
        """The recorded hash of the weights file, or that of the current weights if unsaved."""
        return self.config.sha256 or hashlib.sha256(self._weights_bytes()).hexdigest()

    @property
    def resize(self) -> str:
        return resize_note(self.config)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "dim": self.dim,
            "resize": self.resize,
            "modality": self.modality,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights to ``path`` (``.safetensors``) and the config with its sha256 and
        record beside it (same name, ``.json``), each atomically; returns the weights path."""
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"classifier weights go to a .safetensors file, got {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self._weights_bytes()
        self.config.sha256 = hashlib.sha256(data).hexdigest()
        atomic_write(path, lambda p: Path(p).write_bytes(data))
        text = json.dumps(asdict(self.config), indent=2, sort_keys=True) + "\n"
        write_text_atomic(path.with_suffix(".json"), text)
        return path

    def _param(self) -> torch.Tensor:
        return next(self.parameters())


class ImageClassifier(_SavedModule):
    """A small CNN (VGG-like: two 3x3 conv blocks per stage, batch norm) over [N, C, R, R].

    Two max-pool stages bring 16 px to 4x4 (28 px to 7x7); a 2x2 average grid keeps where the
    object is (a model that draws it off-centre moves the features), then one hidden layer of
    128 units, ReLU: the features (penultimate layer), and a linear class head.
    """

    dim = 128
    modality = "image"

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        if config.modality != "image":
            raise ValueError(f"{config.dataset} is a video dataset: use VideoClassifier")
        self.config = config
        w, c = config.width, config.channels
        self.body = nn.Sequential(
            *_block(c, w), *_block(w, w), nn.MaxPool2d(2),
            *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(16 * w, self.dim), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(self.dim, len(config.classes))
        self.name = f"FD-{config.dataset}-classifier"

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        _check_uint8(images, 4, "images")
        p = self._param()
        return _frames_to_input(images.to(p.device), self.config).to(p.dtype)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(features, {"class": logits}) of prepared input (float in [-1, 1])."""
        h = self.body(x)
        return h, {"class": self.head(h)}

    @torch.no_grad()
    def forward(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Penultimate features: uint8 [N, C, H, W] -> float32 [N, 128] on the CPU."""
        return _eval_batches(self, images, batch_size, lambda x: self.heads(self._prepare(x))[0])

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Predicted class per image: {"class": int64 [N]}."""
        out = _eval_batches(
            self, images, batch_size, lambda x: self.heads(self._prepare(x))[1]["class"]
        )
        return {"class": out.argmax(-1)}


class VideoClassifier(_SavedModule):
    """A per-frame CNN and a temporal convolution over its frame embeddings.

    The frame encoder (first convolution of stride R/16, so every frame is worked on at 16 px)
    keeps a 4x4 grid of where things are, so consecutive embeddings differ by the motion; its
    64-d ReLU output is the frame feature (``FrameFeatures``) and has its own class head. Two
    1-d convolutions over time, an average down to 4 time steps and a 128-unit ReLU layer give
    the clip feature (penultimate), read by heads for the object class, the initial direction
    (8 compass words) and the speed (slow / fast).
    """

    dim = 128
    frame_dim = 64
    modality = "video"

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        if config.modality != "video":
            raise ValueError(f"{config.dataset} is an image dataset: use ImageClassifier")
        self.config = config
        w, c = config.width, config.channels
        stem = max(1, config.resolution // 16)
        self.frame_encoder = nn.Sequential(
            *_block(c, w, stem), nn.MaxPool2d(2), *_block(w, 2 * w), nn.MaxPool2d(2),
            *_block(2 * w, 2 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(32 * w, self.frame_dim), nn.ReLU(),
        )  # fmt: skip
        self.frame_head = nn.Linear(self.frame_dim, len(config.classes))
        e = self.frame_dim
        self.temporal = nn.Sequential(
            nn.Conv1d(e, e, 3, 1, 1), nn.ReLU(), nn.Conv1d(e, e, 3, 1, 1), nn.ReLU(),
            nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(4 * e, self.dim), nn.ReLU(),
        )  # fmt: skip
        self.class_head = nn.Linear(self.dim, len(config.classes))
        self.direction_head = nn.Linear(self.dim, len(DIRECTIONS))
        self.speed_head = nn.Linear(self.dim, len(SPEEDS))
        self.name = f"FVD-proxy-{config.dataset}"

    def _prepare(self, clips: torch.Tensor, *, any_length: bool = False) -> torch.Tensor:
        """uint8 [N, C, T, H, W] -> float [N, T, channels, R, R] on the weights' device."""
        _check_uint8(clips, 5, "clips")
        if not any_length and clips.shape[2] != self.config.frames:
            raise ValueError(
                f"clips have {clips.shape[2]} frames; {self.name} reads clips of "
                f"{self.config.frames} (train one with --frames {clips.shape[2]})"
            )
        p = self._param()
        n, c, t, h, w = clips.shape
        frames = clips.to(p.device).transpose(1, 2).reshape(n * t, c, h, w)
        x = _frames_to_input(frames, self.config).to(p.dtype)
        return x.reshape(n, t, *x.shape[1:])

    def frame_features(self, x: torch.Tensor) -> torch.Tensor:
        """Prepared [N, T, C, R, R] -> frame features [N, T, 64]."""
        n, t = x.shape[:2]
        return self.frame_encoder(x.flatten(0, 1)).reshape(n, t, -1)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(clip features, logits of "class", "direction", "speed" and "frame_class" [N, T, K])
        of prepared input."""
        f = self.frame_features(x)
        h = self.temporal(f.transpose(1, 2))
        logits = {
            "class": self.class_head(h),
            "direction": self.direction_head(h),
            "speed": self.speed_head(h),
            "frame_class": self.frame_head(f),
        }
        return h, logits

    @torch.no_grad()
    def forward(self, clips: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Clip features: uint8 [N, C, T, H, W] -> float32 [N, 128] on the CPU."""
        return _eval_batches(self, clips, batch_size, lambda x: self.heads(self._prepare(x))[0])

    @torch.no_grad()
    def predict(self, clips: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Predicted "class", "direction" and "speed" per clip (int64 [N])."""
        _check_uint8(clips, 5, "clips")
        out: dict[str, list[torch.Tensor]] = {"class": [], "direction": [], "speed": []}
        was = self.training
        self.eval()
        try:
            for chunk in clips.split(batch_size):
                logits = self.heads(self._prepare(chunk))[1]
                for k in out:
                    out[k].append(logits[k].argmax(-1).cpu())
        finally:
            self.train(was)
        return {k: torch.cat(v) for k, v in out.items()}


class FrameFeatures(nn.Module):
    """``frame-FD-<dataset>``: a video classifier's frame encoder on every frame of every clip.

    Takes uint8 [N, C, T, H, W] of any T and returns float32 [N * T, 64] (clip-major: the rows
    of clip i are i*T .. i*T + T-1): each frame is one sample of the frame-level FD.
    """

    modality = "video"
    rows_per_frame = True  # N * T rows, not N: each frame is a sample

    def __init__(self, video: VideoClassifier) -> None:
        super().__init__()
        self.video = video
        self.name = f"frame-FD-{video.config.dataset}"
        self.dim = video.frame_dim

    @property
    def sha256(self) -> str:
        return self.video.sha256

    @property
    def resize(self) -> str:
        return self.video.resize + "; every frame one sample (N * T rows)"

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "dim": self.dim,
            "resize": self.resize,
            "modality": self.modality,
        }

    @torch.no_grad()
    def forward(self, clips: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        v = self.video

        def run(x: torch.Tensor) -> torch.Tensor:
            return v.frame_features(v._prepare(x, any_length=True)).flatten(0, 1)

        return _eval_batches(v, clips, batch_size, run)


def _eval_batches(
    model: nn.Module, x: torch.Tensor, batch_size: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """``fn`` over chunks of ``x`` in eval mode, concatenated as float32 on the CPU."""
    _check_uint8(x, 4 if isinstance(model, ImageClassifier) else 5, "input")
    was = model.training
    model.eval()
    try:
        return torch.cat([fn(chunk).float().cpu() for chunk in x.split(batch_size)])
    finally:
        model.train(was)


Classifier = ImageClassifier | VideoClassifier


def build_classifier(config: ClassifierConfig) -> Classifier:
    return ImageClassifier(config) if config.modality == "image" else VideoClassifier(config)


# ---------------------------------------------------------------- loading


def shipped_weights(dataset: str) -> Path:
    """Where the shipped weights of ``dataset`` are (whether or not they exist)."""
    dataset_spec(dataset)
    return WEIGHTS_DIR / f"{dataset}.safetensors"


def load_classifier(spec: str | os.PathLike, device: str | torch.device = "cpu") -> Classifier:
    """A classifier from its dataset name (the shipped weights) or a ``.safetensors`` file
    written by ``zigma eval-classifier`` (its ``.json`` beside it), in eval mode.

    Raises:
        FileNotFoundError: no such file, or a dataset whose weights are not shipped (mnist):
            the message gives the command that builds them.
        ValueError: an unknown dataset, a malformed config, or weights whose sha256 differs
            from the recorded one or that do not fit the config.
    """
    text = str(spec)
    if text in DATASETS:
        path = shipped_weights(text)
        if not path.is_file():
            raise FileNotFoundError(
                f"no shipped {text} classifier ({path} does not exist): build it with `zigma "
                f"eval-classifier --data {text} --data-dir DIR --out FILE.safetensors` and load "
                "FILE.safetensors"
            )
    elif text.endswith(".safetensors") or os.sep in text or "/" in text:
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"classifier weights {path} do not exist")
    else:
        raise ValueError(
            f"unknown classifier {text!r}: give a dataset {list(DATASETS)} or a .safetensors file"
        )
    config_path = path.with_suffix(".json")
    if not config_path.is_file():
        raise FileNotFoundError(f"classifier config {config_path} does not exist")
    try:
        config = from_dict(ClassifierConfig, read_json_object(config_path, "classifier config"))
    except ConfigError as e:
        raise ValueError(f"{config_path}: {e}") from None
    if path.stat().st_size > _MAX_WEIGHTS_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_WEIGHTS_BYTES} bytes")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != config.sha256:
        raise ValueError(
            f"{path}: sha256 {digest} differs from the {config.sha256 or '(none)'} recorded in "
            f"{config_path}; the file is damaged or not this classifier's"
        )
    model = build_classifier(config)
    try:
        model.load_state_dict(load_safetensors(data))
    except Exception as e:  # safetensors and load_state_dict raise several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{path}: weights do not fit its config ({first[:200]})") from None
    return model.to(device).eval()


def load_frame_features(
    spec: str | os.PathLike, device: str | torch.device = "cpu"
) -> FrameFeatures:
    """``FrameFeatures`` of the video classifier ``load_classifier(spec)``.

    Raises:
        ValueError: ``spec`` names an image classifier (and see ``load_classifier``).
    """
    model = load_classifier(spec, device)
    if not isinstance(model, VideoClassifier):
        raise ValueError(f"frame features need a video classifier; {spec} is an image one")
    return FrameFeatures(model)


# ---------------------------------------------------------------- conditioning accuracy


def conditioning_accuracy(
    classifier: Classifier, images: torch.Tensor, labels: torch.Tensor | Sequence[int]
) -> dict[str, Any]:
    """How often the classifier reads back the class a sample was drawn for.

    Args:
        classifier: an image or video classifier (video: its clip "class" head).
        images: uint8 [N, C, H, W] (video: [N, C, T, H, W]).
        labels: the N class labels the samples were conditioned on.

    Returns:
        {"accuracy", "chance" (1 / classes), "num_images", "per_class": accuracy per class
        (None for a class with no sample), "classifier_heldout": its own held-out accuracy}.

    Raises:
        ValueError: bad images, a label count mismatch, or labels outside the classes.
    """
    labels = torch.as_tensor(labels)
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integers [N], got {labels.dtype} {tuple(labels.shape)}")
    if not isinstance(images, torch.Tensor) or images.shape[0] != labels.shape[0]:
        n = images.shape[0] if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{n} images but {labels.shape[0]} labels")
    k = len(classifier.config.classes)
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < k:
        raise ValueError(f"labels must lie in [0, {k - 1}] ({classifier.config.dataset} classes)")
    right = classifier.predict(images)["class"] == labels.long().cpu()
    per_class = [
        float(right[labels == c].float().mean()) if bool((labels == c).any()) else None
        for c in range(k)
    ]
    return {
        "accuracy": float(right.float().mean()),
        "chance": 1.0 / k,
        "num_images": int(labels.numel()),
        "per_class": per_class,
        "classifier_heldout": dict(classifier.config.heldout_accuracy),
    }


# ---------------------------------------------------------------- training data


Split = Literal["train", "test"]


class _Split:
    """Items of one split of a dataset as uint8 tensors plus integer targets per head."""

    def __init__(
        self, dataset: str, split: Split, count: int, data_dir: str | None, frames: int = 0
    ) -> None:
        self.dataset, self.split = dataset, split
        spec = self.spec = dataset_spec(dataset)
        self.clips: MovingShapes | MovingMNIST | None = None
        if dataset == "shapes":
            self.sources = [
                ShapesDataset(count, spec.resolution, 3, 0, split, style) for style in SHAPE_STYLES
            ]
            self.count = count * len(SHAPE_STYLES)
        elif dataset in ("fashion-mnist", "mnist"):
            make = fashion_mnist if dataset == "fashion-mnist" else mnist
            source = make(split, data_dir=data_dir)
            self.images = torch.from_numpy(source.images)
            self.labels = torch.from_numpy(source.labels)
            self.count = min(count, len(source))
        elif dataset == "moving-shapes":
            self.clips = MovingShapes(count, spec.resolution, frames, 1, 0, split)
            self.count = count
        else:
            make = fashion_mnist if dataset == "moving-fashion-mnist" else mnist
            source = make(split, data_dir=data_dir)  # at the files' own 28 px, as the data
            self.clips = MovingMNIST(source, count, spec.resolution, frames, 1, 0, split)
            self.count = count

    def style_of(self, i: int) -> str:
        return SHAPE_STYLES[i % len(SHAPE_STYLES)]

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(uint8 [B, C, H, W] or [B, C, T, H, W], {head: int64 [B]})."""
        if self.dataset == "shapes":
            imgs, labels = [], []
            for i in indices:
                ds = self.sources[i % len(SHAPE_STYLES)]
                scene = ds.scene(i // len(SHAPE_STYLES))
                imgs.append(torch.from_numpy(np.asarray(ds.render(scene)).copy()))
                labels.append(scene.label)
            return torch.stack(imgs).permute(0, 3, 1, 2), {"class": torch.tensor(labels)}
        if self.spec.modality == "image":
            idx = torch.as_tensor(list(indices))
            return self.images[idx].unsqueeze(1), {"class": self.labels[idx]}
        clips, targets = [], {"class": [], "direction": [], "speed": []}
        mid = (SPEED[0] + SPEED[1]) / 2
        for i in indices:
            if isinstance(self.clips, MovingShapes):
                looks, sprites = self.clips.specs(i)
                clip = torch.from_numpy(self.clips.render(looks, sprites)).permute(3, 0, 1, 2)
                unit = 1.0  # MovingShapes velocities are in box sides per frame
            else:
                assert self.clips is not None
                sprites = self.clips.sprites(i)
                clip = torch.from_numpy(self.clips.render(sprites)).unsqueeze(0)
                unit = float(self.spec.resolution)  # MovingMNIST's are in pixels
            s = sprites[0]
            clips.append(clip)
            targets["class"].append(s.label)
            targets["direction"].append(DIRECTIONS.index(direction_word(s.vx, s.vy)))
            targets["speed"].append(int(math.hypot(s.vx, s.vy) / unit >= mid))
        return torch.stack(clips), {k: torch.tensor(v) for k, v in targets.items()}


def heldout_accuracy(
    model: Classifier, data: _Split, indices: Sequence[int], batch_size: int = 256
) -> dict[str, float]:
    """Accuracy per head on ``data``'s items ``indices`` (shapes: also per style)."""
    right: dict[str, list[torch.Tensor]] = {}
    styles: list[str] = []
    was = model.training
    model.eval()
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            chunk = list(indices[start : start + batch_size])
            x, truth = data.batch(chunk)
            _, logits = model.heads(model._prepare(x))
            for k, v in truth.items():
                right.setdefault(k, []).append(logits[k].argmax(-1).cpu() == v)
            if "frame_class" in logits:
                frame_truth = truth["class"][:, None].expand(-1, x.shape[2])
                got = logits["frame_class"].argmax(-1).cpu() == frame_truth
                right.setdefault("frame_class", []).append(got.flatten())
            if data.dataset == "shapes":
                styles += [data.style_of(i) for i in chunk]
    model.train(was)
    out = {k: round(float(torch.cat(v).float().mean()), 4) for k, v in right.items()}
    if styles:
        ok = torch.cat(right["class"])
        for style in SHAPE_STYLES:
            mask = torch.tensor([s == style for s in styles])
            out[f"class_{style}"] = round(float(ok[mask].float().mean()), 4)
    return out


# ---------------------------------------------------------------- training


def train_classifier(
    dataset: str,
    *,
    steps: int | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    lr: float = 3e-3,
    data_dir: str | None = None,
    train_items: int | None = None,
    test_items: int | None = None,
    width: int | None = None,
    frames: int | None = None,
) -> Classifier:
    """Train the domain classifier of ``dataset`` on its TRAIN split (CPU, minutes).

    Batches are drawn from the first ``train_items`` items of the TRAIN split (data seed 0, as
    the training presets use) by a generator seeded with ``seed``; the initial weights come from
    ``seed`` too, so the same arguments give the same weights on the same machine and thread
    count. Fashion-MNIST is flipped left-right at random (it is mirror-safe; digits are not).
    Afterwards the first ``test_items`` items of the TEST split are scored, recorded in
    ``config.heldout_accuracy`` and logged.

    Raises:
        ValueError: an unknown dataset or an argument out of range.
        FileNotFoundError: the MNIST / Fashion-MNIST files are not found (see zigma.data.idx).
    """
    spec = dataset_spec(dataset)
    steps = spec.steps if steps is None else steps
    train_items = spec.train_items if train_items is None else train_items
    test_items = spec.test_items if test_items is None else test_items
    frames = spec.frames if frames is None else frames
    batch_size = (64 if spec.modality == "image" else 32) if batch_size is None else batch_size
    width = (24 if spec.modality == "image" else 16) if width is None else width
    if min(steps, batch_size, train_items, test_items) < 1 or not lr > 0:
        raise ValueError(
            "steps, batch_size, train_items, test_items must be >= 1 and lr > 0, got "
            f"{steps}, {batch_size}, {train_items}, {test_items}, {lr}"
        )
    config = ClassifierConfig(
        dataset, spec.resolution, spec.channels, frames, width, list(spec.classes)
    )
    train = _Split(dataset, "train", train_items, data_dir, frames)
    test = _Split(dataset, "test", test_items, data_dir, frames)
    with torch.random.fork_rng(devices=[]):  # seed the weights, not the caller's RNG
        torch.manual_seed(seed)
        model = build_classifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    rng = np.random.default_rng([seed, 0xC1A5])
    flip = dataset == "fashion-mnist"
    start = time.perf_counter()
    model.train()
    for step in range(steps):
        idx = rng.integers(0, train.count, batch_size).tolist()
        x, truth = train.batch(idx)
        if flip:
            mirror = torch.from_numpy(rng.random(batch_size) < 0.5)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        _, logits = model.heads(model._prepare(x))
        loss = sum(F.cross_entropy(logits[k], v) for k, v in truth.items())
        if "frame_class" in logits:
            frame_truth = truth["class"][:, None].expand(-1, logits["frame_class"].shape[1])
            loss = loss + F.cross_entropy(
                logits["frame_class"].flatten(0, 1), frame_truth.flatten()
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        opt.step()
        sched.step()
        if (step + 1) % 200 == 0:
            logger.info(
                "%s classifier step %d/%d loss %.4f", dataset, step + 1, steps, float(loss.detach())
            )
    seconds = time.perf_counter() - start
    config.heldout_accuracy = heldout_accuracy(model, test, range(test.count))
    config.recipe = {
        "command": f"zigma eval-classifier --data {dataset} --steps {steps} --seed {seed} "
        f"--batch-size {batch_size} --out FILE",
        "steps": steps,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": "AdamW (weight decay 1e-4), one-cycle lr (15% warm-up)",
        "train": f"TRAIN split items 0..{train.count - 1} (data seed 0)"
        + (f", styles {list(SHAPE_STYLES)} interleaved" if dataset == "shapes" else "")
        + (", random left-right flips" if flip else ""),
        "heldout": f"TEST split items 0..{test.count - 1}",
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    logger.info(
        "%s classifier: %d steps in %.1f s; held-out accuracy %s",
        dataset, steps, seconds, config.heldout_accuracy,
    )  # fmt: skip
    return model.eval()


# The domain classifiers as feature extractors of ``zigma.evaluate.features``:
# "classifier:DATA" (FD-<data>-classifier), "video-classifier:DATA" (FVD-proxy-<data>) and
# "frame-classifier:DATA" (frame-FD-<data>: every frame of every clip is one sample). DATA is a
# dataset name (its shipped weights) or a .safetensors file.
def _image_extractor(arg: str, device: torch.device) -> ImageClassifier:
    model = load_classifier(arg, device)
    if not isinstance(model, ImageClassifier):
        raise ValueError(f"classifier:{arg} is a video classifier: use video-classifier:{arg}")
    return model


def _video_extractor(arg: str, device: torch.device) -> VideoClassifier:
    model = load_classifier(arg, device)
    if not isinstance(model, VideoClassifier):
        raise ValueError(f"video-classifier:{arg} is an image classifier: use classifier:{arg}")
    return model


register_extractor("classifier", _image_extractor)
register_extractor("video-classifier", _video_extractor)
register_extractor("frame-classifier", lambda arg, device: load_frame_features(arg, device))
