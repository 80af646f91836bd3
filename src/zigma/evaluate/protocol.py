"""The protocol record that goes beside every reported metric value: what was measured, with
which extractor (name, sha256, resize), on how many generated and real samples from where, and
how the samples were drawn. Two numbers are comparable only when their records agree.

A record is a typed dataclass, written as JSON (``to_json`` / ``from_json``, ``write`` /
``read``) and printed as one line (``str(record)``).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zigma import __version__
from zigma.artifacts import read_json_object, write_text_atomic
from zigma.config import ConfigError, from_dict, to_dict

# How generated samples become the uint8 images the extractors read: exactly the PNG conversion
# of ``zigma sample``, applied to ``zigma.generate.generate``'s output in [-1, 1].
SAMPLE_CONVERSION = (
    "uint8 = ((x + 1) * 127.5).round().clamp(0, 255) (zigma sample's PNG conversion)"
)

EXTRACTOR_KEYS = ("name", "sha256", "dim", "resize", "modality")


@dataclass
class Protocol:
    """How one metric value was computed.

    Args:
        metric: the reported name, from ``metrics.metric_label`` ("FID", "KD-...", ...).
        extractor: the extractor's ``describe()``: name, sha256, dim, resize, modality.
        num_fake: generated samples the value is computed from (video: clips; a per-frame
            metric such as frame-FD: frames, ``clips * frames``).
        num_real: real samples the value is computed from (counted the same way).
        real: the real data: a dataset spec (e.g. "shapes", "fashion-mnist") or a statistics
            file; never autoencoder reconstructions.
        real_split: the split the real samples come from ("train", "test", ...).
        seed: the seed of the generated set (and of the real subset, where one is drawn).
        value: the metric value, when the record travels with it.
        std: its standard deviation over subsets (KID), when there is one.
        settings: metric-specific settings (KID ``subsets`` / ``subset_size``, PRDC ``k``).
        checkpoint: the model the samples come from (a path or a name).
        sampler, steps, nfe, guidance: how the samples were drawn; ``nfe`` counts model calls
            per sample (guidance doubling included).
        frames, stride, clips: video only: frames per clip, frame stride of the real clips
            (1: consecutive frames), and the number of generated clips.
        conversion: how samples in [-1, 1] became uint8 images.
        zigma_version: the package version that computed the value.
        commit: the source commit, when known (``source_commit()``).
    """

    metric: str
    extractor: dict[str, Any]
    num_fake: int
    num_real: int
    real: str
    real_split: str
    seed: int
    value: float | None = None
    std: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    sampler: str | None = None
    steps: int | None = None
    nfe: int | None = None
    guidance: float | None = None
    frames: int | None = None
    stride: int | None = None
    clips: int | None = None
    conversion: str = SAMPLE_CONVERSION
    zigma_version: str = __version__
    commit: str | None = None

    def __post_init__(self):
        if not self.metric:
            raise ValueError("Protocol.metric must name the metric")
        if not isinstance(self.extractor, dict):
            raise ValueError("Protocol.extractor must be the extractor's describe() dict")
        missing = [k for k in EXTRACTOR_KEYS if k not in self.extractor]
        if missing:
            raise ValueError(f"Protocol.extractor lacks {', '.join(missing)}")
        for name in ("num_fake", "num_real"):
            if getattr(self, name) < 1:
                raise ValueError(f"Protocol.{name} must be >= 1, got {getattr(self, name)}")
        video = self.extractor["modality"] == "video"
        if not video and any(v is not None for v in (self.frames, self.stride, self.clips)):
            raise ValueError("Protocol.frames / stride / clips are for video extractors only")

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Protocol:
        """Parse a record; unknown keys and wrong types raise ``ConfigError``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"protocol record is not JSON: {e}") from None
        return from_dict(cls, data)

    def write(self, path: str | Path) -> Path:
        """Write the record as JSON, atomically."""
        return write_text_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: str | Path) -> Protocol:
        return from_dict(cls, read_json_object(path, "protocol record"), where=str(path))

    def __str__(self) -> str:
        parts = [self.metric]
        if self.value is not None:
            parts[0] += f" {self.value:.4g}" + (
                f" ± {self.std:.2g}" if self.std is not None else ""
            )
        ex = self.extractor
        parts.append(f"{ex['name']} (sha256 {str(ex['sha256'])[:12]}, {ex['resize']})")
        parts.append(
            f"{self.num_fake} fake vs {self.num_real} real ({self.real}:{self.real_split})"
        )
        if self.frames is not None:
            parts.append(f"{self.clips} clips of {self.frames} frames, stride {self.stride}")
        drawn = [
            f"{name} {getattr(self, key)}"
            for key, name in (("sampler", "sampler"), ("steps", "steps"), ("nfe", "NFE"))
            if getattr(self, key) is not None
        ]
        if self.guidance is not None:
            drawn.append(f"cfg {self.guidance:g}")
        if self.checkpoint is not None:
            drawn.insert(0, self.checkpoint)
        if drawn:
            parts.append(", ".join(drawn))
        parts.append(f"seed {self.seed}")
        if self.settings:
            parts.append(", ".join(f"{k}={v}" for k, v in sorted(self.settings.items())))
        parts.append(
            f"zigma {self.zigma_version}" + (f" @{self.commit[:10]}" if self.commit else "")
        )
        return " | ".join(parts)

    def replace(self, **changes: Any) -> Protocol:
        return dataclasses.replace(self, **changes)


def source_commit() -> str | None:
    """The git commit zigma's source runs from, with "-dirty" appended when tracked files
    differ from it; None when this file is not tracked by a git checkout (an installed wheel,
    even one inside somebody else's repository) or git is not available."""
    here = Path(__file__).resolve()

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", "-C", str(here.parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )

    try:
        if git("ls-files", "--error-unmatch", here.name).returncode != 0:
            return None
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    if head.returncode != 0 or len(commit) != 40:
        return None
    return commit + ("-dirty" if status.returncode != 0 or status.stdout.strip() else "")
