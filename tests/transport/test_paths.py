"""Paths: endpoint values, derivatives, interpolation targets and prediction conversions.

References: finite differences, SiT's formulas mapped through t -> 1 - t, and the closed-form
posterior of Gaussian data (gaussian.py).
"""

import math

import pytest
import torch

from zigma.transport import PATHS, get_path
from zigma.transport.paths import PREDICTIONS, expand_t

from .gaussian import GaussianData

NAMES = list(PATHS)
F64 = torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_endpoints(name):
    p = get_path(name)
    zero, one = torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    assert p.alpha(zero) == 1 and p.sigma(zero) == 0  # t = 0 is data
    if name == "vp":
        # α_1 = exp(-(β_max - β_min)/4 - β_min/2): x_1 is not exactly pure noise.
        assert p.alpha(one).item() == pytest.approx(math.exp(-19.9 / 4 - 0.05), rel=1e-12)
        assert p.sigma(one).item() == pytest.approx(math.sqrt(1 - math.exp(-19.9 / 2 - 0.1)))
    else:
        assert p.alpha(one) == 0 and p.sigma(one) == 1  # t = 1 is noise
    # α decreasing, σ increasing (paper, below eq. 8)
    t = torch.linspace(0, 1, 101, dtype=F64)
    assert (p.alpha(t).diff() < 0).all() and (p.sigma(t).diff() > 0).all()


def test_gvp_alpha_exactly_zero_in_fp32():
    p = get_path("gvp")
    assert p.alpha(torch.tensor(1.0)) == 0.0 and p.sigma(torch.tensor(0.0)) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_derivatives_match_finite_differences(name):
    p = get_path(name)
    t = torch.linspace(0.01, 0.99, 50, dtype=F64)
    h = 1e-6
    for f, df in ((p.alpha, p.d_alpha), (p.sigma, p.d_sigma)):
        fd = (f(t + h) - f(t - h)) / (2 * h)
        torch.testing.assert_close(df(t), fd, rtol=1e-6, atol=1e-8)


def test_paths_are_sit_paths_with_time_reversed():
    """Our coefficients at t equal SiT's (notes §4) at 1 - t; derivatives flip sign."""
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    ts = 1 - t
    log_mean = -0.25 * (1 - ts) ** 2 * (20 - 0.1) - 0.5 * (1 - ts) * 0.1
    sit = {
        "linear": (ts, 1 - ts),
        "gvp": (torch.sin(math.pi * ts / 2), torch.cos(math.pi * ts / 2)),
        "vp": (torch.exp(log_mean), torch.sqrt(1 - torch.exp(2 * log_mean))),
    }
    for name, (a, s) in sit.items():
        p = get_path(name)
        torch.testing.assert_close(p.alpha(t), a)
        torch.testing.assert_close(p.sigma(t), s)


@pytest.mark.parametrize("name", NAMES)
def test_interpolate_target_is_time_derivative(name):
    p = get_path(name)
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 8, 3, 4, 4, generator=g, dtype=F64)
    t = torch.rand(8, generator=g, dtype=F64) * 0.9 + 0.05
    x_t, v = p.interpolate(x, e, t)
    assert x_t.shape == x.shape
    h = 1e-6
    fd = (p.interpolate(x, e, t + h)[0] - p.interpolate(x, e, t - h)[0]) / (2 * h)
    torch.testing.assert_close(v, fd, rtol=1e-6, atol=1e-7)
    tb = expand_t(t, x)
    torch.testing.assert_close(x_t, p.alpha(tb) * x + p.sigma(tb) * e)


@pytest.mark.parametrize("name", NAMES)
def test_conversions_round_trip(name):
    p = get_path(name)
    g = torch.Generator().manual_seed(1)
    x_t, pred = torch.randn(2, 16, 5, generator=g, dtype=F64)
    t = torch.rand(16, generator=g, dtype=F64) * 0.9 + 0.05
    for src in PREDICTIONS:
        for dst in PREDICTIONS:
            back = p.convert(p.convert(pred, x_t, t, src, dst), x_t, t, dst, src)
            torch.testing.assert_close(back, pred, msg=f"{src} -> {dst} -> {src}")


@pytest.mark.parametrize("name", NAMES)
def test_conversions_of_true_pair_are_consistent(name):
    """From the (x_*, ε) that generated x_t, every parameterisation recovers the others."""
    p = get_path(name)
    g = torch.Generator().manual_seed(2)
    x, e = torch.randn(2, 10, 6, generator=g, dtype=F64)
    t = torch.rand(10, generator=g, dtype=F64) * 0.9 + 0.05
    x_t, v = p.interpolate(x, e, t)
    sig = expand_t(t, x).expand_as(x)
    truth = {"velocity": v, "data": x, "noise": e, "score": -e / p.sigma(sig)}
    for src, val in truth.items():
        for dst, want in truth.items():
            torch.testing.assert_close(p.convert(val, x_t, t, src, dst), want)


@pytest.mark.parametrize("name", NAMES)
def test_score_from_velocity_matches_gaussian_marginal(name):
    """Eq. 10 applied to the exact velocity gives −(x − αμ)/(α²s² + σ²) and E[x_*|x_t]."""
    data = GaussianData([1.0, -2.0, 0.5], [0.3, 1.0, 2.0])
    p = get_path(name)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(64, 3, generator=g, dtype=F64) * 2
    t = torch.rand(64, generator=g, dtype=F64) * 0.98 + 0.01
    v = data.velocity_fn(name)(x, t)
    torch.testing.assert_close(p.velocity_to_score(v, x, t), data.score(name, x, t))
    a, s = p.alpha(t)[:, None], p.sigma(t)[:, None]
    post_mean = data.mu + data.s**2 * a / (a**2 * data.s**2 + s**2) * (x - a * data.mu)
    torch.testing.assert_close(p.convert(v, x, t, "velocity", "data"), post_mean)


def test_endpoint_behaviour_is_as_documented():
    p = get_path("linear")
    x, v = torch.ones(2, 3, dtype=F64), torch.full((2, 3), 0.5, dtype=F64)
    for t in (0.0, 1.0):
        tt = torch.full((2,), t, dtype=F64)
        for dst in ("noise", "data"):
            assert torch.isfinite(p.convert(v, x, tt, "velocity", dst)).all()
    t0 = torch.zeros(2, dtype=F64)
    assert not torch.isfinite(p.convert(v, x, t0, "velocity", "score")).all()
    t1 = torch.ones(2, dtype=F64)
    assert not torch.isfinite(p.convert(v, x, t1, "noise", "velocity")).all()


@pytest.mark.parametrize("name", NAMES)
def test_score_coef_is_sit_drift_var(name):
    """λ_t equals SiT's drift_var = σ²·α̇/α − σσ̇ evaluated in SiT's own time direction."""
    p = get_path(name)
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    a, s = p.alpha(t), p.sigma(t)
    da_sit, ds_sit = -p.d_alpha(t), -p.d_sigma(t)  # d/dt_SiT = −d/dt
    drift_var = s**2 * da_sit / a - s * ds_sit
    torch.testing.assert_close(p.score_coef(t), drift_var)
    assert (p.score_coef(t) > 0).all()
    if name == "vp":  # λ = β(t)/2 on vp
        torch.testing.assert_close(p.score_coef(t), 0.5 * (0.1 + t * (20 - 0.1)))


def test_unknown_names_raise_listing_choices():
    with pytest.raises(
        ValueError, match=r"path must be one of \['linear', 'gvp', 'vp'\], got 'lin'"
    ):
        get_path("lin")
    with pytest.raises(ValueError, match="source prediction must be one of"):
        get_path("linear").convert(torch.zeros(1, 1), torch.zeros(1, 1), 0.5, "eps", "score")
    assert get_path(get_path("vp")).name == "vp"
