"""Samplers against the exact velocity of Gaussian data: N(0, I) noise must map to N(μ, s²).

ODE samplers get whitened noise (sample mean 0, covariance I exactly); the exact field is affine,
so the output statistics differ from (μ, s²) by discretisation error alone. SDE samplers carry
Monte-Carlo error: the bounds are 4 standard errors (s/√n for a mean, s²·√(2/n) for a
variance) plus an allowance for the O(h) bias of the step counts used.
"""

import math

import pytest
import torch

from zigma.transport import SAMPLERS, as_velocity, get_path, sample
from zigma.transport.samplers import diffusion_coef

from .gaussian import GaussianData, whitened_noise

F64 = torch.float64
DATA = GaussianData([1.0, -0.5, 2.0, 0.0], [0.5, 1.0, 0.2, 1.5])


def prior(path: str, z: torch.Tensor) -> torch.Tensor:
    """Noise at t = 1: N(0, I), except vp, whose x_1 has mean α_1 μ (α_1 ≈ 6.6e-3)."""
    mean, var = DATA.marginal(path, 1.0)
    return mean + z * var.sqrt()


def errors(x: torch.Tensor, path: str = "linear", t: float = 0.0) -> tuple[torch.Tensor, ...]:
    """(|mean − α_t μ|/s, |var/(α_t² s² + σ_t²) − 1|) per dimension: the marginal at t."""
    mean, var = DATA.marginal(path, t)
    mean_err = (x.mean(0) - mean).abs() / DATA.s
    var_err = (x.var(0, unbiased=False) / var - 1).abs()
    return mean_err, var_err


# (sampler, steps, options, bound): bounds are ~2x the error measured at these step counts
# (euler is 1st order, heun 2nd; test_convergence_order pins the orders themselves).
ODE_CASES = [
    ("euler", 400, {}, 3e-2),
    ("heun", 50, {}, 5e-2),
    ("dopri5", 10, {"rtol": 1e-6, "atol": 1e-9}, 2e-3),
]


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
@pytest.mark.parametrize(("sampler", "steps", "opts", "bound"), ODE_CASES)
def test_ode_samplers_reach_data_distribution(path, sampler, steps, opts, bound):
    z = prior(path, whitened_noise(4096, 4, seed=0))
    x = sample(DATA.velocity_fn(path), z, sampler, steps, path, **opts)
    mean_err, var_err = errors(x, path, get_path(path).sample_eps)  # vp stops at t = 1e-3
    assert mean_err.max() < bound and var_err.max() < bound, (mean_err, var_err)


@pytest.mark.parametrize(("sampler", "order"), [("euler", 1), ("heun", 2)])
def test_convergence_order(sampler, order):
    z = whitened_noise(512, 4, seed=1)
    exact = sample(DATA.velocity_fn("linear"), z, "dopri5", 2, rtol=1e-10, atol=1e-12)
    err = [
        (sample(DATA.velocity_fn("linear"), z, sampler, n) - exact).abs().max().item()
        for n in (40, 80)
    ]
    assert err[0] / err[1] == pytest.approx(2**order, rel=0.15)


def test_default_dopri5_reports_nfe_on_output_grid():
    calls, seen = [0], []

    def field(x, t):
        calls[0] += 1
        assert t.shape == (x.shape[0],)
        return DATA.velocity_fn("linear")(x, t)

    z = whitened_noise(256, 4, seed=2)
    sample(field, z, "dopri5", 5, callback=seen.append)
    assert [d["i"] for d in seen] == list(range(5))
    assert [d["t"] for d in seen] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])
    assert seen[-1]["nfe"] == calls[0] > 5


def test_fixed_step_callbacks_and_nfe():
    for sampler, per_step in (("euler", 1), ("heun", 2)):
        seen = []
        sample(DATA.velocity_fn("linear"), torch.zeros(3, 4, dtype=F64), sampler, 4,
               callback=seen.append)  # fmt: skip
        assert [d["nfe"] for d in seen] == [per_step * (i + 1) for i in range(4)]
        assert seen[-1]["t_next"] == 0.0 and seen[0]["t"] == 1.0


SDE_CASES = [
    # (path, sampler, steps, diffusion_form)
    ("linear", "sde-euler", 200, "constant"),
    ("linear", "sde-euler", 200, "sigma"),
    ("linear", "sde-euler", 200, "linear"),
    ("linear", "sde-euler", 200, "decreasing"),
    ("linear", "sde-euler", 200, "increasing-decreasing"),
    ("linear", "sde-heun", 100, "constant"),
    ("linear", "sde-heun", 100, "sigma"),
    ("gvp", "sde-euler", 200, "sigma"),
    ("gvp", "sde-heun", 100, "sigma"),
    # SBDM's w = λ_t blows up at t = 1 on linear/gvp (stiff for EM), so it is tested on vp,
    # where √(2λ) = √β(t) is the VP-SDE's own diffusion.
    ("vp", "sde-euler", 200, "sigma"),
    ("vp", "sde-heun", 100, "sigma"),
    ("vp", "sde-euler", 200, "SBDM"),
    ("vp", "sde-heun", 100, "SBDM"),
]
N_SDE = 20_000


@pytest.mark.parametrize(("path", "sampler", "steps", "form"), SDE_CASES)
def test_sde_samplers_reach_data_distribution(path, sampler, steps, form):
    g = torch.Generator().manual_seed(7)
    z = prior(path, torch.randn(N_SDE, 4, generator=g, dtype=F64))
    # The "euler" last step transports the marginal (the "mean" default trades it for less
    # residual noise, see test_last_steps); a short one keeps its O(δ²) error small.
    x = sample(DATA.velocity_fn(path), z, sampler, steps, path, generator=g, diffusion_form=form,
               last_step="euler", last_step_size=0.005)  # fmt: skip
    mean_err, var_err = errors(x)
    assert (mean_err < 4 / math.sqrt(N_SDE) + 0.02).all(), mean_err
    assert (var_err < 4 * math.sqrt(2 / N_SDE) + 0.03).all(), var_err


def test_sde_without_last_step_runs_to_zero():
    """last_step="none": SDE steps down to t = 0 (sde-heun's final corrector is skipped there)."""
    g = torch.Generator().manual_seed(8)
    z = torch.randn(N_SDE, 4, generator=g, dtype=F64)
    seen = []
    x = sample(DATA.velocity_fn("linear"), z, "sde-heun", 100, generator=g, last_step="none",
               callback=seen.append)  # fmt: skip
    assert seen[-1]["t_next"] == 0.0 and seen[-1]["nfe"] == 2 * 100 - 1
    mean_err, var_err = errors(x)
    assert (mean_err < 4 / math.sqrt(N_SDE) + 0.02).all(), mean_err
    assert (var_err < 4 * math.sqrt(2 / N_SDE) + 0.03).all(), var_err


@pytest.mark.parametrize("path", ["linear", "vp"])
@pytest.mark.parametrize("sampler", ["sde-euler", "sde-heun"])
def test_last_steps(path, sampler):
    """Each last step applied to x at δ, checked against its definition, same noise stream."""
    field, p, delta = DATA.velocity_fn(path), get_path(path), 0.04
    z = torch.randn(64, 4, generator=torch.Generator().manual_seed(9), dtype=F64)
    run = dict(sampler=sampler, steps=20, path=path)
    x_d = sample(field, z, **run, t_end=delta, last_step="none",
                 generator=torch.Generator().manual_seed(1))  # fmt: skip
    td = torch.full((64,), delta, dtype=F64)
    v = field(x_d, td)
    s = p.velocity_to_score(v, x_d, td)
    w = p.sigma(td)[:, None]  # default diffusion "sigma"
    a, sg = p.alpha(td)[:, None], p.sigma(td)[:, None]
    want = {
        "mean": x_d - delta * (v - w * s),
        "euler": x_d - delta * v,
        "tweedie": (x_d + sg**2 * s) / a,
    }
    for kind, expected in want.items():
        got = sample(field, z, **run, last_step=kind, last_step_size=delta,
                     generator=torch.Generator().manual_seed(1))  # fmt: skip
        torch.testing.assert_close(got, expected, msg=kind)
    if path == "linear":  # on the straight path the Euler jump to t = 0 is Tweedie's estimate
        torch.testing.assert_close(want["euler"], want["tweedie"])


def test_zero_diffusion_sde_is_the_euler_ode():
    """With w = 0 the drift v − w·s is v: sde-euler must reproduce the Euler ODE step for step."""
    z = torch.randn(32, 4, generator=torch.Generator().manual_seed(3), dtype=F64)
    f = DATA.velocity_fn("gvp")
    ode = sample(f, z, "euler", 30, "gvp", t_end=0.1)
    sde = sample(f, z, "sde-euler", 30, "gvp", diffusion_norm=0.0, last_step="none", t_end=0.1,
                 generator=torch.Generator())  # fmt: skip
    torch.testing.assert_close(sde, ode)


def test_sde_moves_toward_higher_density():
    """One SDE step from pure noise with w = 1: the score term must contract, not expand."""
    z = torch.randn(20_000, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    zero_v = lambda x, t: torch.zeros_like(x)  # noqa: E731
    # v = 0 means score = −x/σ² at t = 1 (linear), so the drift alone is x + h·w·x/σ², h < 0.
    x = sample(zero_v, z, "sde-euler", 1, t_end=0.9, last_step="none", diffusion_form="constant",
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    # Var = (1 − 0.1)² + 2·1·0.1 = 1.01 exactly in expectation; a wrong sign gives 1.21 + 0.2.
    assert x.var().item() == pytest.approx(1.01, abs=0.03)


@pytest.mark.parametrize("sampler", ["sde-euler", "sde-heun"])
def test_sde_reproducible(sampler):
    z = torch.randn(8, 4, dtype=F64)
    f = DATA.velocity_fn("linear")

    def run(seed):
        return sample(f, z, sampler, 10, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(0), run(0))
    assert not torch.allclose(run(0), run(1))


@pytest.mark.parametrize("sampler", ["sde-euler", "sde-heun"])
def test_sde_noise_per_sample_ignores_the_batch(sampler):
    # one generator per sample: samples 0-4 and 5-7 run apart match the batch of 8
    z = torch.randn(8, 4, dtype=F64)
    f = DATA.velocity_fn("linear")

    def gens(rows):
        return [torch.Generator().manual_seed(100 + i) for i in rows]

    whole = sample(f, z, sampler, 10, generator=gens(range(8)))
    parts = [sample(f, z[r], sampler, 10, generator=gens(r)) for r in (range(5), range(5, 8))]
    torch.testing.assert_close(torch.cat(parts), whole, rtol=0, atol=1e-12)
    assert not torch.allclose(whole, sample(f, z, sampler, 10, generator=gens(range(1, 9))))
    with pytest.raises(ValueError, match="got 7 generators for a batch of 8"):
        sample(f, z, sampler, 10, generator=gens(range(7)))


def test_diffusion_forms_are_sits_at_one_minus_t():
    p = get_path("gvp")
    t = torch.linspace(0.05, 0.95, 10, dtype=F64)
    ts, n = 1 - t, 0.7
    sit = {
        "constant": torch.full_like(t, n),
        "SBDM": n * p.score_coef(t),
        "sigma": n * p.sigma(t),
        "linear": n * (1 - ts),
        "decreasing": 0.25 * (n * torch.cos(math.pi * ts) + 1) ** 2,
        "increasing-decreasing": n * torch.sin(math.pi * ts) ** 2,
    }
    for form, want in sit.items():
        torch.testing.assert_close(diffusion_coef(form, p, t, n), want, msg=form)


@pytest.mark.parametrize("prediction", ["score", "noise"])
def test_as_velocity_samples_score_and_noise_models(prediction):
    p = get_path("linear")
    f = DATA.velocity_fn("linear")
    other = lambda x, t: p.convert(f(x, t), x, t, "velocity", prediction)  # noqa: E731
    z = whitened_noise(256, 4, seed=5)
    kw = dict(sampler="heun", steps=30, t_start=0.999, t_end=0.001)
    torch.testing.assert_close(sample(as_velocity(other, prediction), z, **kw), sample(f, z, **kw))
    assert as_velocity(f, "velocity") is f
    with pytest.raises(ValueError, match=r"prediction must be one of \['velocity', 'score'"):
        as_velocity(f, "eps")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sampler": "eular"}, r"sampler must be one of \['euler', 'heun', 'dopri5', 'sde-euler'"),
        ({"path": "lin"}, r"path must be one of \['linear', 'gvp', 'vp'\]"),
        ({"sampler": "sde-euler", "diffusion_form": "inccreasing-decreasing"},
         r"diffusion_form must be one of \['constant', 'SBDM', 'sigma', 'linear', 'decreasing', "
         r"'increasing-decreasing'\]"),
        ({"sampler": "sde-heun", "last_step": "Mean"},
         r"last_step must be one of \['mean', 'tweedie', 'euler', 'none'\], got 'Mean'"),
        ({"sampler": "euler", "diffusion_form": "sigma"},
         r"unknown option\(s\) \['diffusion_form'\]"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"t_start": 0.5, "t_end": 0.6}, "need 0 <= t_end < t_start <= 1"),
        ({"sampler": "sde-euler", "t_start": 0.03}, "need 0 <= t_end \\+ last_step_size"),
    ],
)  # fmt: skip
def test_errors_before_compute(kwargs, message):
    def never(x, t):
        raise AssertionError("model called before validation")

    with pytest.raises(ValueError, match=message):
        sample(never, torch.zeros(2, 3), **kwargs)


def test_registry():
    assert list(SAMPLERS) == ["euler", "heun", "dopri5", "sde-euler", "sde-heun"]


def test_sbdm_on_linear_starts_inside_and_times_are_fp32():
    seen, t_dtypes = [], set()

    def field(x, t):
        t_dtypes.add(t.dtype)
        return DATA.velocity_fn("linear")(x.double(), t.double()).to(x.dtype)

    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(0)).bfloat16()
    x = sample(field, z, "sde-euler", 10, diffusion_form="SBDM", callback=seen.append,
               generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert seen[0]["t"] == pytest.approx(1 - 1e-3)  # λ_t = t/(1 − t) is infinite at t = 1
    assert t_dtypes == {torch.float32} and torch.isfinite(x).all()
