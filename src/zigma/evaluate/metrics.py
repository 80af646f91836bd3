"""Distances between two sets of features: Fréchet distance and kernel distance (computed by
torchmetrics, so the numbers are the ones the field computes), precision / recall / density /
coverage (ours), and the name a value is reported under.

Every function takes feature matrices, float tensors ``[N, D]`` (real first, generated second),
as ``zigma.evaluate.features`` extractors return them. Nothing here knows about images.

What torchmetrics does to our inputs (checked in torchmetrics 1.9's ``image/fid.py`` and
``image/kid.py``): with a custom ``feature`` module and ``normalize=False``, ``update(x, real)``
passes ``x`` unchanged to the module; FID casts the features to float64 and accumulates sums and
sums of outer products (the covariance is ``(sum xx^T - n mu mu^T) / (n - 1)``), and its
``compute`` casts the result back to the features' dtype, so we feed float64 to get a float64
value. KID keeps the features as given (we give float64), draws each subset with the *global*
``torch.randperm`` (we seed it inside ``torch.random.fork_rng``, so the caller's RNG state is
untouched), and uses the cubic kernel ``(x.y / D + 1)^3`` and the unbiased MMD^2. Both metrics
would all-reduce their states in ``compute`` under an initialised process group; we pass
``sync_on_compute=False`` because each call already holds the complete sets.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

_EVAL_EXTRA = 'pip install "zigma[eval]"'


def _torchmetrics_image():
    """Import torchmetrics' image metrics or raise a one-line error naming the extra."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.kid import KernelInceptionDistance
    except ImportError as e:
        raise ImportError(f"FID and KID need torchmetrics: {_EVAL_EXTRA} ({e})") from None
    return FrechetInceptionDistance, KernelInceptionDistance


class _Identity(nn.Module):
    """The feature "network" handed to torchmetrics: our features are already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # read by torchmetrics instead of a dummy forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _check_features(
    real: torch.Tensor, fake: torch.Tensor, min_samples: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate two feature matrices; return them as float64 CPU tensors."""
    out = []
    for name, x in (("real", real), ("fake", fake)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(
                f"{what}: {name} features must be a torch.Tensor, got {type(x).__name__}"
            )
        if x.ndim != 2:
            raise ValueError(f"{what}: {name} features must be [N, D], got shape {list(x.shape)}")
        if x.is_complex() or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64)):
            raise ValueError(f"{what}: {name} features must be real numbers, got {x.dtype}")
        if x.shape[0] < min_samples:
            raise ValueError(
                f"{what} needs at least {min_samples} {name} samples, got {x.shape[0]}"
            )
        x = x.detach().to("cpu", torch.float64)
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).any(dim=1).sum())
            raise ValueError(f"{what}: {bad} {name} feature rows hold NaN or inf")
        out.append(x)
    if out[0].shape[1] != out[1].shape[1]:
        raise ValueError(
            f"{what}: real and fake features differ in dimension "
            f"({out[0].shape[1]} vs {out[1].shape[1]}): were they made by the same extractor?"
        )
    return out[0], out[1]


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are
    the Inception's), ``|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))``, with unbiased
    covariances, through torchmetrics' ``FrechetInceptionDistance``, in float64.

    Args:
        real: ``[N, D]`` features of real samples (N >= 2).
        fake: ``[M, D]`` features of generated samples (M >= 2).

    Raises:
        ValueError: a shape, dimension or sample-count problem, or non-finite features.
        ImportError: torchmetrics is missing.
    """
    real, fake = _check_features(real, fake, 2, "frechet_distance")
    fid_cls, _ = _torchmetrics_image()
    metric = fid_cls(feature=_Identity(real.shape[1]), sync_on_compute=False)
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def kernel_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel distance (KID when the features are the Inception's): the unbiased MMD^2 with the
    cubic polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, averaged over ``subsets`` random
    subsets of ``subset_size`` samples from each set, through torchmetrics'
    ``KernelInceptionDistance``. Returns (mean, standard deviation over subsets).

    ``subset_size`` is capped at the smaller set's size (KID's usual 1000 needs 1000 samples
    of each); record the value used, ``min(subset_size, N, M)``, with the result. The subsets
    are drawn from a generator seeded with ``seed``; the caller's global RNG state is restored.

    Raises:
        ValueError: bad shapes, fewer than 2 samples in a set, non-finite features, or
            ``subsets`` / ``subset_size`` below 1.
        ImportError: torchmetrics is missing.
    """
    if not (isinstance(subsets, int) and subsets >= 1):
        raise ValueError(f"kernel_distance: subsets must be an integer >= 1, got {subsets!r}")
    if not (isinstance(subset_size, int) and subset_size >= 2):
        raise ValueError(
            f"kernel_distance: subset_size must be an integer >= 2, got {subset_size!r}"
        )
    real, fake = _check_features(real, fake, 2, "kernel_distance")
    _, kid_cls = _torchmetrics_image()
    size = min(subset_size, real.shape[0], fake.shape[0])
    with warnings.catch_warnings():
        # KID warns that it keeps all features in memory: we hand it matrices we already hold.
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = kid_cls(
            feature=_Identity(real.shape[1]),
            subsets=subsets,
            subset_size=size,
            sync_on_compute=False,
        )
    metric.update(real, real=True)
    metric.update(fake, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def _kth_neighbour_radii(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk], x)
        # The smallest distance is the point itself (0), so the k-th neighbour is value k+1.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def prdc(
    real: torch.Tensor, fake: torch.Tensor, *, k: int = 5, chunk: int = 1024
) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al., ICML 2020, "Reliable Fidelity and
    Diversity Metrics for Generative Models"), from k-nearest-neighbour balls.

    With ``r_i`` the distance from real sample ``i`` to its k-th nearest other real sample,
    and ``s_j`` the same within the generated set (Euclidean distance in float64; "inside" is
    ``distance < radius``, strict, as in the authors' code):

    - precision: the fraction of generated samples inside at least one real ball;
    - recall: the fraction of real samples inside at least one generated ball;
    - density: the number of (generated, real ball) containments / (k * M); about 1 when the
      two sets come from one distribution (exactly 1 for identical sets: each ball holds its
      centre and k - 1 neighbours, the k-th lies on its edge), above 1 where generated samples
      crowd dense areas;
    - coverage: the fraction of real samples whose ball holds at least one generated sample.

    Distances are computed ``chunk`` rows at a time (memory ``O(chunk * N)``) with matrix
    products, so a point exactly on a ball's edge (a duplicate) is decided by float64 rounding.

    Raises:
        ValueError: bad shapes, non-finite features, ``k < 1`` or a set of ``k`` samples or
            fewer (a k-th neighbour needs k others).
    """
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"prdc: k must be an integer >= 1, got {k!r}")
    real, fake = _check_features(real, fake, k + 1, f"prdc with k={k}")
    n_fake = fake.shape[0]
    real_radii = _kth_neighbour_radii(real, k, chunk)  # [N]
    fake_radii = _kth_neighbour_radii(fake, k, chunk)  # [M]

    in_some_real_ball = 0
    containments = 0
    for j in range(0, n_fake, chunk):
        inside = torch.cdist(fake[j : j + chunk], real) < real_radii  # [c, N]
        in_some_real_ball += int(inside.any(dim=1).sum())
        containments += int(inside.sum())

    in_some_fake_ball = 0
    covered = 0
    for i in range(0, real.shape[0], chunk):
        d = torch.cdist(real[i : i + chunk], fake)  # [c, M]
        in_some_fake_ball += int((d < fake_radii).any(dim=1).sum())
        covered += int((d.min(dim=1).values < real_radii[i : i + chunk]).sum())

    n_real = real.shape[0]
    return {
        "precision": in_some_real_ball / n_fake,
        "recall": in_some_fake_ball / n_real,
        "density": containments / (k * n_fake),
        "coverage": covered / n_real,
    }


# Extractor names whose Fréchet / kernel distances have a name of their own in the literature.
_NAMED = {
    "inception-2015-12-05": ("FID", "KID"),
    # pytorch-fid's port of the same graph (file hash checked); its own resize code.
    "pytorch-fid-inception-2015-12-05": ("FID", "KID"),
    "dinov2-vitl14": ("FDD", "KDD"),  # Stein et al. 2023: FD on DINOv2 ViT-L/14 features
    "i3d-kinetics400-stylegan-v": ("FVD", "KVD"),
}
_METRICS = ("fd", "kd", "precision", "recall", "density", "coverage")


_DISTANCE_NAMED = ("FD-", "FVD-proxy-", "frame-FD-")


def metric_label(metric: str, extractor_name: str) -> str:
    """The name a value is reported under: "FID" / "KID" only for the Inception
    (``inception-2015-12-05`` or pytorch-fid's port of it, fp32, hash checked), "FDD" for
    DINOv2 ViT-L/14, "FVD" for the StyleGAN-V I3D, and ``FD-<extractor>`` /
    ``KD-<extractor>`` for every other extractor (an fp16 Inception copy included), so a
    proxy is never reported as FID; a name that starts with "FD-" is not prefixed again.
    Precision, recall, density and coverage read ``precision-<extractor>`` and so on.

    Args:
        metric: "fd" (or "fid"), "kd" (or "kid"), "precision", "recall", "density", "coverage".
        extractor_name: the extractor's ``name``.
    """
    key = {"fid": "fd", "kid": "kd"}.get(metric.lower(), metric.lower())
    if key not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(_METRICS)}")
    if not extractor_name:
        raise ValueError("metric_label needs the extractor's name")
    if key in ("fd", "kd") and extractor_name in _NAMED:
        return _NAMED[extractor_name][0 if key == "fd" else 1]
    # An extractor already named for its distance ("FD-shapes-classifier", "FVD-proxy-..",
    # "frame-FD-..") is reported under that name, not prefixed again.
    if key == "fd" and extractor_name.startswith(_DISTANCE_NAMED):
        return extractor_name
    base = extractor_name.removeprefix("FD-")
    return f"{key.upper()}-{base}" if key in ("fd", "kd") else f"{key}-{base}"
