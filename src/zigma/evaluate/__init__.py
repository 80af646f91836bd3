"""Using trained models: loading them for sampling and writing samples, and the attribute
accuracy of text-to-image samples (``attributes``). Drawing samples is ``zigma.generate``'s,
shared with the trainer's previews."""

from zigma.evaluate.attributes import (
    AttributeClassifier,
    AttributeClassifierConfig,
    attribute_accuracy,
    chance_levels,
    evaluation_prompts,
    train_attribute_classifier,
)
from zigma.evaluate.sampling import LoadedModel, load_for_sampling, nonfinite_tensors, write_samples

__all__ = [
    "AttributeClassifier",
    "AttributeClassifierConfig",
    "LoadedModel",
    "attribute_accuracy",
    "chance_levels",
    "evaluation_prompts",
    "load_for_sampling",
    "nonfinite_tensors",
    "train_attribute_classifier",
    "write_samples",
]
