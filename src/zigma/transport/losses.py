"""Training objective of the stochastic interpolant: time sampling and weighted losses (eq. 11-12).

``TransportConfig`` names the path, what the network predicts and how the loss is weighted, and
resolves the eps intervals that keep training and sampling away from singular endpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from zigma.config import short_repr

from .paths import PATHS, check_choice, expand_t, get_path

TrainPrediction = Literal["velocity", "score", "noise"]
LossWeight = Literal["velocity", "likelihood"]
TimeDist = Literal["uniform", "logit-normal"]
TRAIN_PREDICTIONS = ("velocity", "score", "noise")
TIME_DISTS = ("uniform", "logit-normal")
LOSS_WEIGHTS = (None, "velocity", "likelihood")
# Distance from the singular ends for score/noise prediction on linear/gvp (SiT's value).
SCORE_NOISE_EPS = 1e-3


@dataclass
class TransportConfig:
    """How a model is trained on an interpolant, and where it may be sampled.

    Fields:
        path: one of ``PATHS`` ("linear", "gvp", "vp").
        prediction: the network output: "velocity" (eq. 12), "score" (eq. 11) or "noise" (ε).
        loss_weight: for score/noise only: None (unweighted), "velocity" ((λ_t/σ_t)², so the
            loss equals the velocity error of the implied velocity) or "likelihood" (λ_t/σ_t²,
            i.e. λ_t·‖ŝ − s‖², the maximum-likelihood weighting); λ_t is ``Interpolant.score_coef``.
            A velocity model takes None or "velocity" (both mean unweighted).
        train_eps, sample_eps: None resolves to these defaults (SiT's):
            linear/gvp + velocity: 0 and 0, since v = α̇ x_* + σ̇ ε is regular on [0, 1];
            vp (any prediction): 1e-5 and 1e-3, guarding t = 0 where σ̇ = ∞;
            linear/gvp + score/noise: 1e-3 and 1e-3, guarding t = 0 (σ = 0: the score is
            unbounded, ε is not identifiable, the likelihood weight is infinite) and t = 1
            (α = 0: converting to velocity and the velocity weight divide by α).
            Each eps resolves on its own, and an explicit value is always kept.
        time_dist: how training times are drawn on the train interval: "uniform" (SiT) or
            "logit-normal" (t = sigmoid(m + s·n), n ~ N(0, 1); Esser et al. 2024, SD3), which
            spends more steps at mid times, where the velocity is hardest to predict, and
            converges faster on small budgets.
        time_mean, time_std: m and s of the logit-normal.
    """

    path: Literal["linear", "gvp", "vp"] = "linear"
    prediction: TrainPrediction = "velocity"
    loss_weight: LossWeight | None = None
    train_eps: float | None = None
    sample_eps: float | None = None
    time_dist: TimeDist = "uniform"
    time_mean: float = 0.0
    time_std: float = 1.0

    def __post_init__(self) -> None:
        check_choice("path", self.path, PATHS)
        check_choice("time_dist", self.time_dist, TIME_DISTS)
        # sigmoid(m + s n) saturates to 0 or 1 long before these bounds; beyond them the
        # float32 product s * n overflows and a NaN time reaches the loss
        if not -10.0 <= self.time_mean <= 10.0:
            raise ValueError(f"time_mean must be in [-10, 10], got {short_repr(self.time_mean)}")
        if not 0.0 < self.time_std <= 10.0:
            raise ValueError(f"time_std must be in (0, 10], got {short_repr(self.time_std)}")
        check_choice("prediction", self.prediction, TRAIN_PREDICTIONS)
        check_choice("loss_weight", self.loss_weight, LOSS_WEIGHTS)
        if self.prediction == "velocity" and self.loss_weight == "likelihood":
            raise ValueError("loss_weight='likelihood' needs prediction 'score' or 'noise'")
        path_cls = PATHS[self.path]
        if self.prediction == "velocity" or not path_cls.pure_noise_at_one:
            default_train, default_sample = path_cls.train_eps, path_cls.sample_eps
        else:
            default_train = default_sample = SCORE_NOISE_EPS
        if self.train_eps is None:
            self.train_eps = default_train
        if self.sample_eps is None:
            self.sample_eps = default_sample
        for name in ("train_eps", "sample_eps"):
            value = getattr(self, name)
            if not 0.0 <= value < 0.5:
                raise ValueError(f"{name} must be in [0, 0.5), got {short_repr(value)}")

    def _guards(self) -> tuple[bool, bool]:
        """Which ends need an eps: (t = 0 data end, t = 1 noise end)."""
        singular_at_one = self.prediction != "velocity" and PATHS[self.path].pure_noise_at_one
        return True, singular_at_one

    def train_interval(self) -> tuple[float, float]:
        """(t_lo, t_hi) that training times are drawn from, in our time direction."""
        lo, hi = self._guards()
        eps = float(self.train_eps)  # type: ignore[arg-type]
        return (eps if lo else 0.0, 1.0 - eps if hi else 1.0)

    def sample_interval(self) -> tuple[float, float]:
        """(t_start, t_end) for ODE sampling from noise to data; pass them to ``sample``."""
        lo, hi = self._guards()
        eps = float(self.sample_eps)  # type: ignore[arg-type]
        return (1.0 - eps if hi else 1.0, eps if lo else 0.0)


def sample_time(
    batch: int,
    config: TransportConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw training times of shape [batch] on ``config.train_interval()`` = [t_lo, t_hi].

    ``time_dist`` "uniform": t ~ U[t_lo, t_hi]; "logit-normal": u = sigmoid(m + s·n) mapped
    affinely onto [t_lo, t_hi].
    """
    lo, hi = config.train_interval()
    if config.time_dist == "uniform":
        u = torch.rand(batch, generator=generator, device=device, dtype=dtype)
    else:
        n = torch.randn(batch, generator=generator, device=device, dtype=dtype)
        u = torch.sigmoid(config.time_mean + config.time_std * n)
    return lo + (hi - lo) * u


def _mean_flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def loss_weight(config: TransportConfig, t: Tensor) -> Tensor:
    """The per-sample weight of a score/noise loss at time t (1 when unweighted).

    With λ = ``score_coef``, the velocity implied by a score estimate ŝ is v̂ = (α̇/α) x − λ ŝ, so
    ‖v̂ − v‖² = (λ/σ)² ‖σ ŝ + ε‖²: "velocity" makes the score/noise loss a velocity loss.
    "likelihood" gives λ ‖ŝ + ε/σ‖² = (λ/σ²) ‖σ ŝ + ε‖², score matching weighted by the SBDM
    diffusion λ = g²/2 (Song et al. 2021). In SiT's time both read drift_var/σ², drift_var = λ.
    """
    if config.loss_weight is None or config.prediction == "velocity":
        return torch.ones_like(t)
    path = get_path(config.path)
    lam, sigma = path.score_coef(t), path.sigma(t)
    return (lam / sigma) ** 2 if config.loss_weight == "velocity" else lam / sigma**2


def training_loss(
    model_fn: Callable[..., Tensor],
    x_data: Tensor,
    config: TransportConfig,
    *,
    noise: Tensor | None = None,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
) -> Tensor:
    """Per-sample interpolant loss, shape [B]: mean over non-batch dims of the squared error.

    velocity: ‖v̂ − (α̇ x_* + σ̇ ε)‖² (eq. 12); score: w·‖σ ŝ + ε‖² (eq. 11); noise: w·‖ε̂ − ε‖²,
    with w from ``loss_weight``. ``noise`` (default N(0, I)) and ``t`` (default ``sample_time``)
    are drawn in that order from ``generator`` unless given, which makes tests exact.

    Args:
        model_fn: ``model_fn(x_t, t, **model_kwargs)`` with t of shape [B]; returns [B, ...].
        x_data: clean data x_* [B, ...].
        config: the transport configuration.
    """
    model_kwargs = model_kwargs or {}
    path = get_path(config.path)
    batch = x_data.shape[0]
    if noise is None:
        noise = torch.randn(
            x_data.shape, generator=generator, device=x_data.device, dtype=x_data.dtype
        )
    if t is None:
        t = sample_time(batch, config, generator, device=x_data.device, dtype=x_data.dtype)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
    x_t, v_target = path.interpolate(x_data, noise, t)
    out = model_fn(x_t, t, **model_kwargs)
    if out.shape != x_data.shape:
        raise ValueError(f"model output {tuple(out.shape)} != data {tuple(x_data.shape)}")
    if config.prediction == "velocity":
        return _mean_flat((out - v_target) ** 2)
    if config.prediction == "noise":
        err = out - noise
    else:
        err = expand_t(path.sigma(t), out) * out + noise
    return loss_weight(config, t) * _mean_flat(err**2)
