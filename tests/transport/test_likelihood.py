"""Log-likelihood through the probability-flow ODE against the analytic Gaussian log-density.

The data covariance is rotated so the velocity's Jacobian is not diagonal: with a diagonal
Jacobian a Rademacher probe gives zᵀ J z = tr J exactly and Hutchinson would not be tested.
"""

import math

import pytest
import torch

from zigma.transport import get_path, likelihood

from .gaussian import GaussianData, rotation

F64 = torch.float64
DATA = GaussianData([1.0, -0.5, 2.0, 0.0], [0.5, 1.0, 0.2, 1.5], rotation(4, seed=0))


def points(n: int = 128) -> torch.Tensor:
    return DATA.sample(n, torch.Generator().manual_seed(1))


@pytest.mark.parametrize("path", ["linear", "gvp"])
@pytest.mark.parametrize(("sampler", "steps", "opts", "tol"), [
    ("dopri5", 4, {"rtol": 1e-7, "atol": 1e-9}, 1e-4),
    ("heun", 200, {}, 3e-3),  # 2nd order: measured 1.4e-3 on gvp
])  # fmt: skip
def test_exact_divergence_matches_analytic(path, sampler, steps, opts, tol):
    x = points()
    ll, x1 = likelihood(DATA.velocity_fn(path), x, path, steps, sampler, divergence="exact",
                        **opts)  # fmt: skip
    assert ll.shape == (128,) and x1.shape == x.shape
    torch.testing.assert_close(ll, DATA.log_prob(x), rtol=0, atol=tol)


def test_vp_up_to_its_prior_and_start_time():
    """On vp, log N(x_1; 0, I) replaces log p_1(x_1) and the flow starts at t = 1e-3: correcting
    both by their closed forms must recover log p_{1e-3}(x) exactly."""
    x = points()
    p = get_path("vp")
    ll, x1 = likelihood(DATA.velocity_fn("vp"), x, "vp", 4, "dopri5", divergence="exact",
                        rtol=1e-7, atol=1e-9)  # fmt: skip

    def log_marginal(y: torch.Tensor, t: float) -> torch.Tensor:
        mean, var = DATA.marginal("vp", t)
        u = (y - mean) @ DATA.q
        return -0.5 * (u**2 / var).sum(1) - 0.5 * torch.log(2 * math.pi * var).sum()

    std_normal = -0.5 * (x1**2).sum(1) - 2 * math.log(2 * math.pi)
    corrected = ll - std_normal + log_marginal(x1, 1.0)
    torch.testing.assert_close(corrected, log_marginal(x, p.sample_eps), rtol=0, atol=1e-4)


def test_hutchinson_is_unbiased_and_probes_reduce_variance():
    x = points(256)
    truth = DATA.log_prob(x)
    spread = []
    for probes in (1, 8):
        g = torch.Generator().manual_seed(2)
        ll, _ = likelihood(DATA.velocity_fn("linear"), x, "linear", 50, "heun", probes, g)
        diff = ll - truth
        # per-point errors are independent (one probe set per point): mean within 4 SE, plus
        # the 50-step Heun bias (< 0.02 with exact divergence).
        assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(len(x)) + 0.02
        spread.append(diff.std())
    assert spread[0] > 0.1  # a real estimate, not the exact trace
    assert spread[1] < spread[0] / 2  # 8 probes: std / √8 in theory


def test_likelihood_reproducible_and_validated():
    x = points(8)
    f = DATA.velocity_fn("linear")
    a, _ = likelihood(f, x, steps=5, generator=torch.Generator().manual_seed(0))
    b, _ = likelihood(f, x, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"sampler must be one of \['euler', 'heun', 'dopri5'\]"):
        likelihood(f, x, sampler="sde-euler")
    with pytest.raises(ValueError, match=r"divergence must be one of \['hutchinson', 'exact'\]"):
        likelihood(f, x, divergence="trace")
    with pytest.raises(ValueError, match="num_probes"):
        likelihood(f, x, num_probes=0)
