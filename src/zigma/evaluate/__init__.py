"""Using trained models: sampling to images (metrics arrive in a later release)."""

from zigma.evaluate.sampling import (
    Sampleable,
    default_labels,
    generate,
    load_for_sampling,
    write_samples,
)

__all__ = ["Sampleable", "default_labels", "generate", "load_for_sampling", "write_samples"]
