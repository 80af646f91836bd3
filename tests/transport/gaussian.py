"""Closed forms for Gaussian data x_* ~ N(μ, Q diag(s²) Qᵀ): the exact reference for every test.

x_t = α x_* + σ ε is Gaussian with mean α μ and covariance Q diag(α² s² + σ²) Qᵀ, so the exact
velocity E[ẋ_t | x_t = x] is affine in x: v = α̇ μ + Q diag(c) Qᵀ (x − α μ) with
c = (α α̇ s² + σ σ̇) / (α² s² + σ²), and the score is −Q diag(1/(α² s² + σ²)) Qᵀ (x − α μ).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from zigma.transport.paths import Interpolant, get_path


class GaussianData:
    def __init__(self, mu: list[float], s: list[float], rotation: Tensor | None = None):
        self.mu = torch.tensor(mu, dtype=torch.float64)
        self.s = torch.tensor(s, dtype=torch.float64)
        dim = len(mu)
        self.q = torch.eye(dim, dtype=torch.float64) if rotation is None else rotation
        self.cov = self.q @ torch.diag(self.s**2) @ self.q.T

    def _coefs(self, path: Interpolant, t: Tensor, x: Tensor):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])[:, None]
        return path.alpha(t), path.sigma(t), path.d_alpha(t), path.d_sigma(t)

    def velocity_fn(self, path: str | Interpolant):
        p = get_path(path)

        def v(x: Tensor, t: Tensor) -> Tensor:
            a, sg, da, ds = self._coefs(p, t, x)
            var = a**2 * self.s**2 + sg**2
            c = (a * da * self.s**2 + sg * ds) / var
            return da * self.mu + ((x - a * self.mu) @ self.q * c) @ self.q.T

        return v

    def score(self, path: str | Interpolant, x: Tensor, t: Tensor) -> Tensor:
        a, sg, _, _ = self._coefs(get_path(path), t, x)
        var = a**2 * self.s**2 + sg**2
        return -(((x - a * self.mu) @ self.q) / var) @ self.q.T

    def marginal(self, path: str | Interpolant, t: float) -> tuple[Tensor, Tensor]:
        """Mean [D] and per-eigendirection variance [D] of x_t."""
        p = get_path(path)
        tt = torch.tensor(t, dtype=torch.float64)
        a, sg = p.alpha(tt), p.sigma(tt)
        return a * self.mu, a**2 * self.s**2 + sg**2

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, len(self.mu), generator=generator, dtype=torch.float64)
        return self.mu + (z * self.s) @ self.q.T

    def log_prob(self, x: Tensor) -> Tensor:
        y = (x - self.mu) @ self.q / self.s
        dim = len(self.mu)
        return -0.5 * (y**2).sum(1) - torch.log(self.s).sum() - 0.5 * dim * math.log(2 * math.pi)


def whitened_noise(n: int, dim: int, seed: int) -> Tensor:
    """N(0, I) draws transformed to have exactly zero sample mean and identity sample covariance.

    Deterministic samplers map the exact affine field's x_1 affinely, so with this noise the
    output's sample mean/covariance differ from the target only by discretisation error.
    """
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim, generator=g, dtype=torch.float64)
    z = z - z.mean(0)
    cov = z.T @ z / n
    return z @ torch.linalg.inv(torch.linalg.cholesky(cov)).T


def rotation(dim: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q
