"""TransportConfig defaults, time sampling and the weighted losses, against hand computation."""

import dataclasses

import pytest
import torch

from zigma.config import from_dict, to_dict
from zigma.transport import TransportConfig, as_velocity, get_path, sample_time, training_loss

from .gaussian import GaussianData

F64 = torch.float64


@pytest.mark.parametrize(
    ("path", "prediction", "train", "sample", "train_iv", "sample_iv"),
    [
        ("linear", "velocity", 0.0, 0.0, (0.0, 1.0), (1.0, 0.0)),
        ("gvp", "velocity", 0.0, 0.0, (0.0, 1.0), (1.0, 0.0)),
        ("vp", "velocity", 1e-5, 1e-3, (1e-5, 1.0), (1.0, 1e-3)),
        ("vp", "noise", 1e-5, 1e-3, (1e-5, 1.0), (1.0, 1e-3)),
        ("linear", "score", 1e-3, 1e-3, (1e-3, 1 - 1e-3), (1 - 1e-3, 1e-3)),
        ("gvp", "noise", 1e-3, 1e-3, (1e-3, 1 - 1e-3), (1 - 1e-3, 1e-3)),
    ],
)
def test_config_defaults(path, prediction, train, sample, train_iv, sample_iv):
    cfg = TransportConfig(path=path, prediction=prediction)
    assert (cfg.train_eps, cfg.sample_eps) == (train, sample)
    assert cfg.train_interval() == pytest.approx(train_iv)
    assert cfg.sample_interval() == pytest.approx(sample_iv)


def test_config_keeps_explicit_eps_and_round_trips():
    # SiT left sample_eps unset when train_eps was given (it tested train_eps); not here.
    cfg = TransportConfig(path="vp", train_eps=1e-4)
    assert (cfg.train_eps, cfg.sample_eps) == (1e-4, 1e-3)
    assert TransportConfig(sample_eps=0.01).sample_eps == 0.01  # kept for velocity too
    assert from_dict(TransportConfig, to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "Linear"}, r"path must be one of \['linear', 'gvp', 'vp'\], got 'Linear'"),
        ({"prediction": "eps"}, r"prediction must be one of \['velocity', 'score', 'noise'\]"),
        ({"prediction": "score", "loss_weight": "lik"}, r"loss_weight must be one of \[None"),
        ({"loss_weight": "likelihood"}, "needs prediction 'score' or 'noise'"),
        ({"train_eps": 0.5}, r"train_eps must be in \[0, 0.5\)"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TransportConfig(**kwargs)


def test_sample_time_range_and_reproducibility():
    cfg = TransportConfig(path="linear", prediction="noise", train_eps=0.1)
    t = sample_time(10_000, cfg, torch.Generator().manual_seed(0))
    assert t.shape == (10_000,) and t.min() >= 0.1 and t.max() <= 0.9
    assert t.min() < 0.1005 and t.max() > 0.8995  # fills the interval
    t2 = sample_time(10_000, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(t, t2)
    vp = sample_time(10_000, TransportConfig(path="vp", train_eps=0.1), torch.Generator())
    assert vp.min() >= 0.1 and vp.max() > 0.999  # vp's noise end is regular


@pytest.mark.parametrize(("mean", "std", "eps"), [(0.0, 1.0, 0.0), (-0.5, 0.7, 0.1)])
def test_logit_normal_times_follow_the_closed_form_cdf(mean, std, eps):
    # P(t <= q) for t = lo + (hi - lo) sigmoid(m + s n): Phi((logit((q - lo)/(hi - lo)) - m) / s)
    cfg = TransportConfig(
        path="linear",
        prediction="noise",
        train_eps=eps,
        time_dist="logit-normal",
        time_mean=mean,
        time_std=std,
    )
    t = sample_time(200_000, cfg, torch.Generator().manual_seed(0), dtype=F64)
    lo, hi = cfg.train_interval()
    assert t.min() > lo and t.max() < hi
    q = torch.linspace(lo + 0.05, hi - 0.05, 9, dtype=F64)
    u = (q - lo) / (hi - lo)
    cdf = 0.5 * (1 + torch.erf((torch.log(u / (1 - u)) - mean) / (std * 2**0.5)))
    empirical = (t[:, None] <= q).double().mean(0)
    assert torch.allclose(empirical, cdf, atol=5e-3)  # ~4.5 binomial std at n = 200k
    uniform = sample_time(200_000, TransportConfig(train_eps=eps), torch.Generator(), dtype=F64)
    assert not torch.allclose((uniform[:, None] <= q).double().mean(0), cdf, atol=5e-3)


def test_time_dist_errors():
    with pytest.raises(ValueError, match="time_dist must be one of"):
        TransportConfig(time_dist="beta")
    with pytest.raises(ValueError, match=r"time_std must be in \(0, 10\]"):
        TransportConfig(time_dist="logit-normal", time_std=0.0)


@pytest.mark.parametrize("prediction", ["velocity", "score", "noise"])
@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
def test_perfect_predictor_has_zero_loss(path, prediction):
    cfg = TransportConfig(path=path, prediction=prediction, loss_weight=None)
    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(2, 6, 2, 3, 3, generator=g, dtype=F64)
    t = torch.rand(6, generator=g, dtype=F64) * 0.9 + 0.05
    p = get_path(path)

    def oracle(x_t, tt):
        assert torch.equal(tt, t)
        x_t2, v = p.interpolate(x, e, tt)
        assert torch.equal(x_t, x_t2)
        return {"velocity": v, "noise": e, "score": -e / p.sigma(tt)[:, None, None, None]}[
            prediction
        ]

    loss = training_loss(oracle, x, cfg, noise=e, t=t)
    assert loss.shape == (6,)
    torch.testing.assert_close(loss, torch.zeros(6, dtype=F64), atol=1e-20, rtol=0)


def test_losses_by_hand_on_linear_path():
    """Linear path: λ = t/(1−t), so weights are 1/(1−t)² (velocity) and 1/(t(1−t)) (likelihood)."""
    x = torch.tensor([[1.0, 2.0], [-1.0, 0.5]], dtype=F64)
    e = torch.tensor([[0.5, -0.5], [1.0, 2.0]], dtype=F64)
    t = torch.tensor([0.25, 0.5], dtype=F64)
    out = torch.tensor([[0.1, 0.2], [0.3, -0.4]], dtype=F64)
    model = lambda x_t, tt: out  # noqa: E731
    # noise: mean((out − ε)²)
    noise_err = torch.tensor(
        [(0.1 - 0.5) ** 2 + (0.2 + 0.5) ** 2, (0.3 - 1) ** 2 + (-0.4 - 2) ** 2]
    )
    noise_mse = noise_err.to(F64) / 2
    for weight, w in [(None, [1, 1]), ("velocity", [1 / 0.75**2, 4]), ("likelihood", [16 / 3, 4])]:
        cfg = TransportConfig(prediction="noise", loss_weight=weight)
        got = training_loss(model, x, cfg, noise=e, t=t)
        torch.testing.assert_close(got, torch.tensor(w, dtype=F64) * noise_mse)
    # score: mean((σ·out + ε)²), σ = t
    score_err = [(0.025 + 0.5) ** 2 + (0.05 - 0.5) ** 2, (0.15 + 1) ** 2 + (-0.2 + 2) ** 2]
    cfg = TransportConfig(prediction="score")
    got = training_loss(model, x, cfg, noise=e, t=t)
    torch.testing.assert_close(got, torch.tensor(score_err, dtype=F64) / 2)
    # velocity: mean((out − (ε − x))²)
    v = e - x
    cfg = TransportConfig()
    torch.testing.assert_close(training_loss(model, x, cfg, noise=e, t=t), ((out - v) ** 2).mean(1))


@pytest.mark.parametrize("prediction", ["score", "noise"])
@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
def test_velocity_weight_equals_velocity_loss_of_implied_velocity(path, prediction):
    g = torch.Generator().manual_seed(4)
    x, e = torch.randn(2, 32, 5, generator=g, dtype=F64)
    t = torch.rand(32, generator=g, dtype=F64) * 0.9 + 0.05
    weight = torch.randn(5, 5, generator=g, dtype=F64)
    model = lambda x_t, tt: x_t @ weight + tt[:, None]  # noqa: E731
    cfg = TransportConfig(path=path, prediction=prediction, loss_weight="velocity")
    weighted = training_loss(model, x, cfg, noise=e, t=t)
    as_v = training_loss(as_velocity(model, prediction, path), x, TransportConfig(path=path),
                         noise=e, t=t)  # fmt: skip
    torch.testing.assert_close(weighted, as_v)


@pytest.mark.parametrize("path", ["linear", "gvp", "vp"])
def test_exact_velocity_loss_is_irreducible_variance(path):
    """E‖v − v*(x_t)‖² = Var(ẋ_t | x_t) = (ασ̇ − α̇σ)² s² / (α² s² + σ²) per dimension."""
    data = GaussianData([1.0, -1.0, 0.0], [0.5, 1.0, 2.0])
    p = get_path(path)
    n, t0 = 200_000, 0.3
    g = torch.Generator().manual_seed(5)
    x = data.sample(n, g)
    t = torch.full((n,), t0, dtype=F64)
    loss = training_loss(data.velocity_fn(path), x, TransportConfig(path=path), t=t, generator=g)
    tt = torch.tensor(t0, dtype=F64)
    a, s, da, ds = p.alpha(tt), p.sigma(tt), p.d_alpha(tt), p.d_sigma(tt)
    per_dim = (a * ds - da * s) ** 2 * data.s**2 / (a**2 * data.s**2 + s**2)
    # The per-sample loss is a mean of squared Gaussians: compare within 5 standard errors.
    se = loss.std() / n**0.5
    assert abs(loss.mean() - per_dim.mean()) < 5 * se


def test_training_loss_checks_shapes_and_draws_from_generator():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="model output"):
        training_loss(lambda x_t, t: x_t[:, :2], x, TransportConfig())
    with pytest.raises(ValueError, match="t must have shape"):
        training_loss(lambda x_t, t: x_t, x, TransportConfig(), t=torch.rand(3))
    a = training_loss(lambda x_t, t: x_t, x, TransportConfig(), generator=torch.Generator())
    b = training_loss(lambda x_t, t: x_t, x, TransportConfig(), generator=torch.Generator())
    assert torch.equal(a, b)
    assert dataclasses.asdict(TransportConfig())["loss_weight"] is None
