"""Motion statistics of video samples: do objects keep their identity and move smoothly?

A proxy for clips of one or two objects on a plain background (Moving-MNIST, moving shapes),
meant for comparing models of one data set, not across data sets. Per clip it finds the
foreground (pixels far from the background colour, which is the median of the clip's border),
and per frame its mass and centre of mass. From these:

- displacement: how far the centre moves between consecutive frames (in frame sides). The data's
  objects move a few percent of the frame per frame; a model that draws each frame on its own
  jumps. Compared to a reference set of clips by the 1-D Wasserstein distance (W1).
- identity: cosine similarity of consecutive frames' foregrounds once aligned on their centres
  (colour and shape both count). An object that changes colour or shape scores low.
- mass change: (max - min) / mean of the foreground mass over a clip; an object that fades in
  or out, or splits, scores high.

Controls make the numbers interpretable: the same clips with their frames shuffled in time
(same content, no motion: displacement off, identity kept) and with each frame taken from
another clip (motion and identity both off).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

# Foreground weight: 0 below LOW, 1 above HIGH (distance to the background, max over channels,
# on a [-1, 1] scale), linear between: a soft mask is stable under the noise of samples.
LOW, HIGH = 0.25, 0.6
MIN_MASS = 2.0  # pixels of foreground below which a frame counts as empty
CROP = 0.5  # side of the aligned window of the identity score, in frame sides


@dataclass(frozen=True)
class ClipStats:
    """Per-clip, per-frame measurements of N clips of T frames.

    Attributes:
        mass: [N, T] foreground mass in pixels.
        centre: [N, T, 2] centre of mass (y, x) in frame sides (NaN for an empty frame).
        displacement: [N, T-1] centre step length in frame sides (NaN next to an empty frame).
        identity: [N, T-1] aligned cosine similarity of consecutive frames (NaN if either is empty).
    """

    mass: torch.Tensor
    centre: torch.Tensor
    displacement: torch.Tensor
    identity: torch.Tensor


@dataclass(frozen=True)
class MotionSummary:
    """One set of clips in numbers (see the module docstring); ``w1`` is None without a
    reference. ``empty`` is the fraction of frames with no object."""

    clips: int
    displacement: float
    w1: float | None
    identity: float
    mass_change: float
    empty: float

    def as_dict(self) -> dict:
        return asdict(self)


def _check_clips(clips: torch.Tensor) -> torch.Tensor:
    if clips.dim() != 5:
        raise ValueError(f"clips must be [N, C, T, H, W], got shape {list(clips.shape)}")
    n, c, t, h, w = clips.shape
    if n < 1 or t < 2 or c not in (1, 3) or min(h, w) < 4:
        raise ValueError(
            f"clips need N >= 1, 1 or 3 channels, T >= 2 frames and sides >= 4, got "
            f"shape {list(clips.shape)}"
        )
    if not bool(torch.isfinite(clips).all()):
        raise ValueError("clips hold NaN or Inf")
    return clips.detach().float().cpu()


def foreground(clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights [N, T, H, W] in [0, 1], colour offsets [N, C, T, H, W] from the background)."""
    clips = _check_clips(clips)
    border = torch.cat(
        [clips[..., 0, :], clips[..., -1, :], clips[..., :, 0], clips[..., :, -1]], dim=-1
    )  # [N, C, T, 2H + 2W]
    background = border.flatten(2).median(dim=2).values  # [N, C]
    offset = clips - background[:, :, None, None, None]
    distance = offset.abs().amax(dim=1)
    weights = ((distance - LOW) / (HIGH - LOW)).clamp(0, 1)
    return weights, offset * weights[:, None]


def _aligned_crops(features: torch.Tensor, centre: torch.Tensor, side: int) -> torch.Tensor:
    """Windows of ``side`` px of ``features`` [M, C, H, W] around ``centre`` [M, 2] (frame
    sides; NaN: the frame's middle), zero outside the frame. A window starts at a whole pixel
    (ties rounded up, the same way in every frame), so a translated object crops the same."""
    m, c, h, w = features.shape
    centre = torch.nan_to_num(centre, nan=0.5)
    pixel = centre * torch.tensor([h, w]) - 0.5  # the centre in pixel coordinates (row, col)
    start = torch.floor(pixel + 0.5).long() - side // 2 + side  # in the padded frame
    padded = F.pad(features, (side, side, side, side))
    offsets = torch.arange(side)
    rows = (start[:, 0, None] + offsets)[:, :, None]  # [M, side, 1]
    cols = (start[:, 1, None] + offsets)[:, None, :]  # [M, 1, side]
    frames = torch.arange(m)[:, None, None]
    return padded.permute(0, 2, 3, 1)[frames, rows, cols]  # [M, side, side, C]


def clip_stats(clips: torch.Tensor) -> ClipStats:
    """Per-frame mass, centre, displacement and identity of clips [N, C, T, H, W] in [-1, 1].

    Raises:
        ValueError: not [N, C, T, H, W] with 1 or 3 channels and T >= 2, or non-finite values.
    """
    weights, features = foreground(clips)
    n, c, t, h, w = features.shape
    mass = weights.sum(dim=(2, 3))  # [N, T]
    ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
    safe = mass.clamp_min(1e-6)
    centre = torch.stack(
        [(weights.sum(3) * ys).sum(2) / safe, (weights.sum(2) * xs).sum(2) / safe], dim=-1
    )
    empty = mass < MIN_MASS
    centre[empty] = float("nan")
    displacement = (centre[:, 1:] - centre[:, :-1]).norm(dim=-1)  # NaN propagates

    side = max(3, round(CROP * min(h, w)))
    frames = features.permute(0, 2, 1, 3, 4).reshape(n * t, c, h, w)
    crops = _aligned_crops(frames, centre.reshape(n * t, 2), side).reshape(n, t, -1)
    a, b = crops[:, :-1], crops[:, 1:]
    identity = F.cosine_similarity(a, b, dim=-1, eps=1e-8)
    identity[empty[:, :-1] | empty[:, 1:]] = float("nan")
    return ClipStats(mass, centre, displacement, identity)


def wasserstein_1d(a: torch.Tensor, b: torch.Tensor, quantiles: int = 201) -> float:
    """W1 distance between the empirical distributions of the finite values of ``a`` and ``b``
    (the mean gap between their quantile functions on a uniform grid)."""
    a, b = a[torch.isfinite(a)].double(), b[torch.isfinite(b)].double()
    if a.numel() == 0 or b.numel() == 0:
        return float("nan")
    q = torch.linspace(0, 1, quantiles, dtype=torch.float64)
    return float((torch.quantile(a, q) - torch.quantile(b, q)).abs().mean())


def _nanmean(x: torch.Tensor) -> float:
    x = x[torch.isfinite(x)]
    return float(x.mean()) if x.numel() else float("nan")


def summarize(stats: ClipStats, reference: ClipStats | None = None) -> MotionSummary:
    """``stats`` in six numbers; ``w1`` compares its displacements with ``reference``'s."""
    mass = stats.mass
    mean_mass = mass.mean(dim=1)
    change = (mass.amax(dim=1) - mass.amin(dim=1)) / mean_mass.clamp_min(1e-6)
    change[mean_mass < MIN_MASS] = float("nan")  # an empty clip has no object to fade
    w1 = None if reference is None else wasserstein_1d(stats.displacement, reference.displacement)
    return MotionSummary(
        clips=mass.shape[0],
        displacement=_nanmean(stats.displacement),
        w1=w1,
        identity=_nanmean(stats.identity),
        mass_change=_nanmean(change),
        empty=float((mass < MIN_MASS).float().mean()),
    )


def shuffle_frames(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Each clip with its frames in a random order (a new order per clip): the frame-shuffled
    control. A shuffle that leaves a clip as it was is redrawn (T >= 2)."""
    clips = _check_clips(clips)
    g = torch.Generator().manual_seed(seed)
    n, t = clips.shape[0], clips.shape[2]
    out = torch.empty_like(clips)
    for i in range(n):
        perm = torch.randperm(t, generator=g)
        while bool((perm == torch.arange(t)).all()):
            perm = torch.randperm(t, generator=g)
        out[i] = clips[i][:, perm]
    return out


def mix_clips(clips: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Frame t of clip i taken from clip perm_t(i), a new random permutation per frame: the
    clip-mixed control (same frames, no object continuity). Needs N >= 2."""
    clips = _check_clips(clips)
    n, t = clips.shape[0], clips.shape[2]
    if n < 2:
        raise ValueError("mixing clips needs at least 2 clips")
    g = torch.Generator().manual_seed(seed)
    out = torch.empty_like(clips)
    for f in range(t):
        out[:, :, f] = clips[torch.randperm(n, generator=g), :, f]
    return out


def motion_report(
    samples: torch.Tensor, reference: torch.Tensor, seed: int = 0
) -> dict[str, MotionSummary]:
    """Summaries of ``samples``, of ``reference`` (data clips), and of the samples' two controls
    (frames shuffled in time, frames mixed across clips), all against the reference's
    displacements. Both sets must have the same frame size and channel count."""
    samples, reference = _check_clips(samples), _check_clips(reference)
    if samples.shape[1:] != reference.shape[1:]:
        raise ValueError(
            f"samples {list(samples.shape[1:])} and reference {list(reference.shape[1:])} "
            "clips differ in [C, T, H, W]"
        )
    ref = clip_stats(reference)
    out = {
        "reference": summarize(ref, ref),
        "samples": summarize(clip_stats(samples), ref),
        "frames shuffled": summarize(clip_stats(shuffle_frames(samples, seed)), ref),
    }
    if samples.shape[0] >= 2:
        out["clips mixed"] = summarize(clip_stats(mix_clips(samples, seed)), ref)
    return out


def format_report(report: dict[str, MotionSummary]) -> str:
    """A markdown table of ``motion_report``'s rows."""
    lines = [
        "| clips | n | displacement | W1 to data | identity | mass change | empty frames |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in report.items():
        w1 = "-" if s.w1 is None else f"{s.w1:.4f}"
        lines.append(
            f"| {name} | {s.clips} | {s.displacement:.4f} | {w1} | {s.identity:.3f} | "
            f"{s.mass_change:.3f} | {s.empty:.3f} |"
        )
    return "\n".join(lines)
