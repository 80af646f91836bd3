"""Using trained models: loading them for sampling and writing samples (metrics come next).
Drawing samples is ``zigma.generate``'s, shared with the trainer's previews."""

from zigma.evaluate.sampling import LoadedModel, load_for_sampling, nonfinite_tensors, write_samples

__all__ = ["LoadedModel", "load_for_sampling", "nonfinite_tensors", "write_samples"]
