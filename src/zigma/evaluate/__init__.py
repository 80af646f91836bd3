"""Using trained models: loading them for sampling and writing samples, and the attribute
accuracy of text-to-image samples (``attributes``); sample quality: feature extractors with
names and hashes (``features``), FD / KD / PRDC on their features (``metrics``) and the
protocol record of each value (``protocol``), domain classifiers for FD-<data>-classifier,
FVD-proxy-<data> and conditioning accuracy (``classifier``). Drawing samples is
``zigma.generate``'s, shared with the trainer's previews."""

from zigma.evaluate.attributes import (
    AttributeClassifier,
    AttributeClassifierConfig,
    attribute_accuracy,
    chance_levels,
    evaluation_prompts,
    train_attribute_classifier,
)
from zigma.evaluate.classifier import (
    conditioning_accuracy,
    load_classifier,
    load_frame_features,
    train_classifier,
)
from zigma.evaluate.features import (
    Extractor,
    clip_score,
    export_inception_fp16,
    extractor_specs,
    load_extractor,
    register_extractor,
)
from zigma.evaluate.metrics import frechet_distance, kernel_distance, metric_label, prdc
from zigma.evaluate.protocol import Protocol, source_commit
from zigma.evaluate.sampling import LoadedModel, load_for_sampling, nonfinite_tensors, write_samples

__all__ = [
    "AttributeClassifier",
    "AttributeClassifierConfig",
    "Extractor",
    "LoadedModel",
    "Protocol",
    "attribute_accuracy",
    "chance_levels",
    "conditioning_accuracy",
    "clip_score",
    "evaluation_prompts",
    "export_inception_fp16",
    "extractor_specs",
    "frechet_distance",
    "kernel_distance",
    "load_classifier",
    "load_frame_features",
    "load_extractor",
    "load_for_sampling",
    "metric_label",
    "nonfinite_tensors",
    "prdc",
    "register_extractor",
    "source_commit",
    "train_classifier",
    "train_attribute_classifier",
    "write_samples",
]
