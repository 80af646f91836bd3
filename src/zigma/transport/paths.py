"""Interpolation paths x_t = α_t·x_* + σ_t·ε of the stochastic-interpolant framework (paper §3.3):
coefficients, training pairs (eq. 12) and prediction conversions (eq. 9-10).

Time convention, used everywhere in ``zigma.transport`` (the paper's, eq. 13): t = 0 is data
(α_0 = 1, σ_0 = 0), t = 1 is noise, ε ~ N(0, I); the velocity is v = dx_t/dt = α̇_t·x_* + σ̇_t·ε
and sampling integrates from t = 1 down to t = 0. SiT and the official ZigMa code run time the
other way (t = 0 noise, t = 1 data): t_ours = 1 − t_SiT, v_ours = −v_SiT; α, σ, score, noise and
data are unchanged, and SiT's ``drift_var`` equals our ``Interpolant.score_coef``.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal, get_args

import torch
from torch import Tensor

Prediction = Literal["velocity", "score", "noise", "data"]
PREDICTIONS: tuple[str, ...] = get_args(Prediction)


def check_choice(kind: str, value: object, choices: object) -> None:
    """Raise ValueError naming the valid options unless ``value`` is one of ``choices``."""
    options = list(choices)  # type: ignore[call-overload]
    if value not in options:
        raise ValueError(f"{kind} must be one of {options}, got {value!r}")


def time_dtype(x: Tensor) -> torch.dtype:
    """The dtype for times and path coefficients next to ``x``: float64 stays, others use fp32."""
    return torch.promote_types(x.dtype, torch.float32)


def expand_t(t: Tensor | float, x: Tensor) -> Tensor:
    """Return ``t`` as a tensor broadcastable against ``x``: a [B] vector becomes [B, 1, ...].

    Its dtype is at least float32: in bf16, t = 0.999 would round to 1, where α = 0.
    """
    t = torch.as_tensor(t, dtype=time_dtype(x), device=x.device)
    if t.ndim == 1 and x.ndim > 1 and t.shape[0] == x.shape[0]:
        t = t.reshape(-1, *([1] * (x.ndim - 1)))
    return t


class Interpolant:
    """Base class: subclasses define ``alpha``, ``sigma``, ``d_alpha``, ``d_sigma`` of a tensor t.

    ``train_eps`` / ``sample_eps`` are the default distances from a singular endpoint used when a
    velocity model is trained / sampled on this path (see ``TransportConfig``).

    Endpoints: nothing is clamped (a clamp would return wrong finite values). Conversions that
    divide by α_t (from score/noise to velocity or data; α_1 = 0 on linear/gvp) or by σ_t (to
    the score, from data; σ_0 = 0) give inf/nan there. Velocity ↔ noise ↔ data divide only by
    D_t = α_t σ̇_t − α̇_t σ_t, which is 1 (linear) or π/2 (gvp), so they are finite on [0, 1].
    VP has σ̇_0 = ∞ (σ_t ~ √t), so whatever involves σ̇ is inf/nan at t = 0; its
    α_1 = e^{-5.025} ≈ 6.6e-3 is not 0, so x_1 is only nearly pure noise.
    """

    name: ClassVar[str]
    train_eps: ClassVar[float] = 0.0
    sample_eps: ClassVar[float] = 0.0
    # True when α_1 = 0 exactly, i.e. x_1 is pure noise and 1/α_1 is singular.
    pure_noise_at_one: ClassVar[bool] = True

    def alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_alpha(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def d_sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def score_coef(self, t: Tensor) -> Tensor:
        """λ_t = σ_t(α_t σ̇_t − α̇_t σ_t)/α_t ≥ 0, so that v = (α̇_t/α_t)·x − λ_t·score.

        It is SiT's ``drift_var``, the SBDM diffusion coefficient, and the weight relating
        score and velocity errors (see ``losses.py``).
        """
        a, s = self.alpha(t), self.sigma(t)
        return s * (a * self.d_sigma(t) - self.d_alpha(t) * s) / a

    def interpolate(
        self, x_data: Tensor, noise: Tensor, t: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """Return x_t = α_t x_* + σ_t ε and the target v = α̇_t x_* + σ̇_t ε (eq. 12).

        Args:
            x_data: x_*, any shape [B, ...].
            noise: ε, same shape.
            t: [B] or anything broadcastable to ``x_data``.
        """
        if x_data.shape != noise.shape:
            raise ValueError(f"x_data {tuple(x_data.shape)} and noise {tuple(noise.shape)} differ")
        t = expand_t(t, x_data)
        x_t = self.alpha(t) * x_data + self.sigma(t) * noise
        v = self.d_alpha(t) * x_data + self.d_sigma(t) * noise
        return x_t, v

    def convert(
        self, pred: Tensor, x_t: Tensor, t: Tensor | float, source: Prediction, target: Prediction
    ) -> Tensor:
        """Convert a prediction at (x_t, t) from one parameterisation to another.

        Every prediction is first mapped to the pair (x̂_*, ε̂) of posterior means, which satisfy
        x_t = α x̂_* + σ ε̂ (eq. 9), then to the target: velocity = α̇ x̂_* + σ̇ ε̂ (eq. 8),
        score = −ε̂/σ, noise = ε̂, data = x̂_*. Velocity → score reproduces eq. 10.

        Args:
            pred: the prediction, shape of ``x_t``.
            x_t: the current state [B, ...].
            t: [B] or broadcastable to ``x_t``.
            source, target: one of ``PREDICTIONS``.
        """
        check_choice("source prediction", source, PREDICTIONS)
        check_choice("target prediction", target, PREDICTIONS)
        if source == target:
            return pred
        t = expand_t(t, x_t)
        a, s = self.alpha(t), self.sigma(t)
        if source == "velocity":
            # Solve the 2x2 system {x_t = a x + s e, v = ȧ x + ṡ e}; D > 0 on the open interval.
            da, ds = self.d_alpha(t), self.d_sigma(t)
            det = a * ds - da * s
            data, noise = (ds * x_t - s * pred) / det, (a * pred - da * x_t) / det
        elif source == "score":
            noise = -s * pred
            data = (x_t - s * noise) / a
        elif source == "noise":
            noise = pred
            data = (x_t - s * noise) / a
        else:
            data = pred
            noise = (x_t - a * data) / s
        if target == "velocity":
            return self.d_alpha(t) * data + self.d_sigma(t) * noise
        if target == "score":
            return -noise / s
        return noise if target == "noise" else data

    def velocity_to_score(self, v: Tensor, x_t: Tensor, t: Tensor | float) -> Tensor:
        """Score from velocity, eq. 10: s = (α̇ x − α v) / (σ (α σ̇ − α̇ σ))."""
        return self.convert(v, x_t, t, "velocity", "score")


class LinearInterpolant(Interpolant):
    """α_t = 1 − t, σ_t = t (eq. 13): the straight path ZigMa trains with."""

    name = "linear"

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - t

    def sigma(self, t: Tensor) -> Tensor:
        return t

    def d_alpha(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -1.0)

    def d_sigma(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class GVPInterpolant(Interpolant):
    """Generalised variance-preserving path: α_t = cos(πt/2), σ_t = sin(πt/2), α² + σ² = 1."""

    name = "gvp"

    # α is written sin(π(1 − t)/2) so that α_1 is exactly 0: cos(π/2) rounds to −4e-8 in fp32.
    def alpha(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * (1 - t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sin(0.5 * math.pi * t)

    def d_alpha(self, t: Tensor) -> Tensor:
        return -0.5 * math.pi * self.sigma(t)

    def d_sigma(self, t: Tensor) -> Tensor:
        return 0.5 * math.pi * self.alpha(t)


class VPInterpolant(Interpolant):
    """SiT's variance-preserving path (β_min = 0.1, β_max = 20) in our time direction.

    log α_t = −¼ t² (β_max − β_min) − ½ t β_min, σ_t = √(1 − α_t²). σ̇_t = −α_t α̇_t/σ_t is
    infinite at t = 0, hence the non-zero default eps (SiT's 1e-5 train / 1e-3 sample).
    """

    name = "vp"
    train_eps = 1e-5
    sample_eps = 1e-3
    pure_noise_at_one = False

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min, self.beta_max = beta_min, beta_max

    def __repr__(self) -> str:
        return f"VPInterpolant(beta_min={self.beta_min}, beta_max={self.beta_max})"

    def _log_alpha(self, t: Tensor) -> Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self._log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        # expm1 keeps 1 − α² accurate for small t, where α is within 1e-7 of 1.
        return torch.sqrt(-torch.expm1(2 * self._log_alpha(t)))

    def d_alpha(self, t: Tensor) -> Tensor:
        return self.alpha(t) * (-0.5 * t * (self.beta_max - self.beta_min) - 0.5 * self.beta_min)

    def d_sigma(self, t: Tensor) -> Tensor:
        return -self.alpha(t) * self.d_alpha(t) / self.sigma(t)


PATHS: dict[str, type[Interpolant]] = {
    "linear": LinearInterpolant,
    "gvp": GVPInterpolant,
    "vp": VPInterpolant,
}


def get_path(path: str | Interpolant) -> Interpolant:
    """Return a path instance by name (one of ``PATHS``); a ``Path`` instance passes through."""
    if isinstance(path, Interpolant):
        return path
    check_choice("path", path, PATHS)
    return PATHS[path]()
