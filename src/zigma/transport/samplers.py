"""Samplers over a velocity model: probability-flow ODE, reverse-time SDE (eq. 7) and likelihood.

Each sampler is a plain function over ``model_fn(x, t, **kw) -> velocity`` (our convention, see
``paths.py``) and a time grid (decreasing when sampling); ``sample`` builds it and dispatches.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .paths import PREDICTIONS, Interpolant, check_choice, get_path, time_dtype

ModelFn = Callable[..., Tensor]
Callback = Callable[[dict[str, Any]], None]
# One stream for the batch, or one per sample (a sample's noise then ignores its batch).
Generators = torch.Generator | Sequence[torch.Generator] | None
DiffusionForm = Literal[
    "constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing"
]
LastStep = Literal["mean", "tweedie", "euler", "none"]
DIFFUSION_FORMS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("mean", "tweedie", "euler", "none")
# SBDM's diffusion λ_t = σ(ασ̇ − α̇σ)/α is infinite where α_1 = 0 (linear, gvp): start there.
SBDM_START_EPS = 1e-3


def _tvec(t: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), t, dtype=time_dtype(x), device=x.device)


def _gaussian(x: Tensor, generator: Generators) -> Tensor:
    """N(0, I) noise shaped like ``x``, row ``i`` from ``generator[i]`` when given one per row."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], generator=g, device=x.device, dtype=x.dtype) for g in generator]
    )


def _report(callback: Callback | None, **info: Any) -> None:
    if callback is not None:
        callback(info)


def as_velocity(model_fn: ModelFn, prediction: str, path: str | Interpolant = "linear") -> ModelFn:
    """Wrap a score/noise/data model so that it returns the velocity (``Interpolant.convert``).

    Converting from score or noise divides by α_t, which is 0 at t = 1 on linear/gvp: sample such
    models on ``TransportConfig.sample_interval()``.
    """
    check_choice("prediction", prediction, PREDICTIONS)
    if prediction == "velocity":
        return model_fn
    p = get_path(path)

    def velocity_fn(x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return p.convert(model_fn(x, t, **kwargs), x, t, prediction, "velocity")  # type: ignore[arg-type]

    return velocity_fn


# ---------------------------------------------------------------- ODE samplers


@torch.no_grad()
def sample_euler(
    model_fn: ModelFn,
    x: Tensor,
    ts: Sequence[float],
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler's method for the probability-flow ODE dx/dt = v(x, t) over the grid ``ts``."""
    kw = model_kwargs or {}
    for i in tqdm(range(len(ts) - 1), disable=not progress):
        t, t_next = float(ts[i]), float(ts[i + 1])
        v = model_fn(x, _tvec(t, x), **kw)
        x = x + (t_next - t) * v
        _report(callback, i=i, t=t, t_next=t_next, x=x, v=v, nfe=i + 1)
    return x


@torch.no_grad()
def sample_heun(
    model_fn: ModelFn,
    x: Tensor,
    ts: Sequence[float],
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Heun's 2nd-order method (explicit trapezoid; Karras et al. 2022, Alg. 1) for dx/dt = v.

    Every step makes both evaluations, the last included: the velocity is regular on the
    default intervals (vp stops at t = 1e-3), unlike the SDE drift (see ``sample_sde_heun``).
    """
    kw = model_kwargs or {}
    for i in tqdm(range(len(ts) - 1), disable=not progress):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        v = model_fn(x, _tvec(t, x), **kw)
        v_next = model_fn(x + h * v, _tvec(t_next, x), **kw)
        x = x + 0.5 * h * (v + v_next)
        _report(callback, i=i, t=t, t_next=t_next, x=x, v=v, nfe=2 * (i + 1))
    return x


@torch.no_grad()
def sample_dopri5(
    model_fn: ModelFn,
    x: Tensor,
    ts: Sequence[float],
    *,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
    atol: float = 1e-6,
    rtol: float = 1e-3,
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) (``torchdiffeq.odeint``) for dx/dt = v(x, t).

    The solver picks its own steps to meet ``atol``/``rtol`` (the official defaults); ``ts`` is
    only the output grid, reported through ``callback`` after the solve with the total NFE.
    ``progress`` is accepted for a uniform signature and ignored.
    """
    from torchdiffeq import odeint  # imports scipy (~0.4 s): only dopri5 pays for it

    kw = model_kwargs or {}
    nfe = 0

    def func(t: Tensor, y: Tensor) -> Tensor:
        nonlocal nfe
        nfe += 1
        return model_fn(y, _tvec(float(t), y), **kw)

    grid = torch.as_tensor([float(s) for s in ts], dtype=x.dtype, device=x.device)
    traj = odeint(func, x, grid, method="dopri5", atol=atol, rtol=rtol)
    for i in range(len(grid) - 1):
        _report(callback, i=i, t=float(grid[i]), t_next=float(grid[i + 1]), x=traj[i + 1], nfe=nfe)
    return traj[-1]


# ---------------------------------------------------------------- SDE samplers


def diffusion_coef(form: str, path: Interpolant, t: Tensor, norm: float = 1.0) -> Tensor:
    """The diffusion coefficient w_t of the reverse SDE, in our time (t = 1 noise, t = 0 data).

    Forms keep SiT's names (which describe w along sampling, i.e. as t goes from 1 to 0); with
    n = ``norm``: constant n; SBDM n·λ_t (``Interpolant.score_coef``; on vp λ_t = β(t)/2, so √(2w)
    is the VP-SDE's √β); sigma n·σ_t; linear n·t; decreasing ¼(1 − n·cos πt)² (1 at noise,
    0 at data for n = 1); increasing-decreasing n·sin²(πt). Each is SiT's form at 1 − t.
    """
    check_choice("diffusion_form", form, DIFFUSION_FORMS)
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "SBDM":
        return norm * path.score_coef(t)
    if form == "sigma":
        return norm * path.sigma(t)
    if form == "linear":
        return norm * t
    if form == "decreasing":
        return 0.25 * (1 - norm * torch.cos(math.pi * t)) ** 2
    return norm * torch.sin(math.pi * t) ** 2


def _sde_parts(
    model_fn: ModelFn, path: Interpolant, form: str, norm: float, kw: dict[str, Any]
) -> tuple[Callable[[Tensor, float], tuple[Tensor, Tensor]], Callable[[float, Tensor], Tensor]]:
    """Return drift(x, t) -> (v − w·s, v) and w(t) for the reverse-time SDE.

    Integrating with dt < 0, dx = (v − w s) dt + √(2w) dW̄ keeps the interpolant's marginals
    p_t: its Fokker-Planck equation is ∂p/∂t = −∇·(p v) for every w ≥ 0. In sampling time
    τ = 1 − t this is dx = (−v + w s) dτ + √(2w) dW: the score pulls toward high density.
    """

    def diffusion(t: float, x: Tensor) -> Tensor:
        return diffusion_coef(
            form, path, torch.tensor(t, dtype=time_dtype(x), device=x.device), norm
        )

    def drift(x: Tensor, t: float) -> tuple[Tensor, Tensor]:
        tv = _tvec(t, x)
        v = model_fn(x, tv, **kw)
        score = path.velocity_to_score(v, x, tv)  # eq. 10
        return v - diffusion(t, x) * score, v

    return drift, diffusion


def _last_step(
    kind: str, drift: Callable, path: Interpolant, x: Tensor, t: float, t_end: float
) -> tuple[Tensor, Tensor]:
    """The final, noise-free step from t to t_end; returns (x_end, velocity at t).

    mean: the SDE step without its noise, x + (t_end − t)(v − w s) (SiT's default "Mean"); it
    removes the residual noise but its score term over-contracts unless w·|t_end − t| is small
    against the data variance (e.g. w = 1 collapses a 0.2-std dimension); euler: the ODE step
    x + (t_end − t) v, which transports the marginal; tweedie: jump along the posterior means,
    x_end = α_end x̂_* + σ_end ε̂, which at t_end = 0 is Tweedie's x̂_* = (x + σ² s)/α (on the
    linear path it coincides with euler).
    """
    f, v = drift(x, t)
    h = t_end - t
    if kind == "mean":
        return x + h * f, v
    if kind == "euler":
        return x + h * v, v
    tv, te = _tvec(t, x), torch.tensor(t_end, dtype=time_dtype(x), device=x.device)
    data = path.convert(v, x, tv, "velocity", "data")
    noise = path.convert(v, x, tv, "velocity", "noise")
    return path.alpha(te) * data + path.sigma(te) * noise, v


def _check_sde(form: str, norm: float, last_step: str) -> None:
    check_choice("diffusion_form", form, DIFFUSION_FORMS)
    check_choice("last_step", last_step, LAST_STEPS)
    if norm < 0:
        raise ValueError(f"diffusion_norm must be >= 0, got {norm}")


@torch.no_grad()
def sample_sde_euler(
    model_fn: ModelFn,
    x: Tensor,
    ts: Sequence[float],
    *,
    path: str | Interpolant = "linear",
    diffusion_form: DiffusionForm = "sigma",
    diffusion_norm: float = 1.0,
    last_step: LastStep = "mean",
    generator: Generators = None,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Euler-Maruyama for the reverse-time SDE of eq. 7 (with w = paper's w/2) over ``ts``.

    x ← x + h (v − w s) + √(2 w |h|) z, h = t_next − t < 0, z ~ N(0, I) from ``generator``.
    Unless ``last_step`` is "none", the final interval of ``ts`` is a noise-free last step.
    """
    _check_sde(diffusion_form, diffusion_norm, last_step)
    p = get_path(path)
    drift, diffusion = _sde_parts(model_fn, p, diffusion_form, diffusion_norm, model_kwargs or {})
    n_sde = len(ts) - 1 - (last_step != "none")
    for i in tqdm(range(len(ts) - 1), disable=not progress):
        t, t_next = float(ts[i]), float(ts[i + 1])
        if i == n_sde:
            x, v = _last_step(last_step, drift, p, x, t, t_next)
        else:
            h = t_next - t
            f, v = drift(x, t)
            z = _gaussian(x, generator)
            x = x + h * f + torch.sqrt(2 * diffusion(t, x) * -h) * z
        _report(callback, i=i, t=t, t_next=t_next, x=x, v=v, nfe=i + 1)
    return x


@torch.no_grad()
def sample_sde_heun(
    model_fn: ModelFn,
    x: Tensor,
    ts: Sequence[float],
    *,
    path: str | Interpolant = "linear",
    diffusion_form: DiffusionForm = "sigma",
    diffusion_norm: float = 1.0,
    last_step: LastStep = "mean",
    generator: Generators = None,
    model_kwargs: dict[str, Any] | None = None,
    callback: Callback | None = None,
    progress: bool = False,
) -> Tensor:
    """Stochastic Heun: the predictor-corrector (improved Euler) scheme for additive noise.

    ξ = √((w_t + w_{t+h}) |h|) z (trapezoid rule for the variance ∫ 2w dt of the step),
    x̃ = x + h f(x, t) + ξ, x ← x + h/2 (f(x, t) + f(x̃, t + h)) + ξ, with f = v − w s.
    SiT's Heun instead adds the noise first and then takes a Heun step of the drift; that split
    is biased for large w near the data (−21% variance at 100 steps, constant w, s = 0.2).
    Where σ_{t+h} = 0 the score is singular: that step is Euler-Maruyama. The final interval
    is the last step as in ``sample_sde_euler``.
    """
    _check_sde(diffusion_form, diffusion_norm, last_step)
    p = get_path(path)
    drift, diffusion = _sde_parts(model_fn, p, diffusion_form, diffusion_norm, model_kwargs or {})
    n_sde = len(ts) - 1 - (last_step != "none")
    nfe = 0
    for i in tqdm(range(len(ts) - 1), disable=not progress):
        t, t_next = float(ts[i]), float(ts[i + 1])
        h = t_next - t
        if i == n_sde:
            x, v = _last_step(last_step, drift, p, x, t, t_next)
            nfe += 1
        else:
            z = _gaussian(x, generator)
            f, v = drift(x, t)
            nfe += 1
            if float(p.sigma(torch.tensor(t_next, dtype=torch.float64))) > 0:
                noise = torch.sqrt((diffusion(t, x) + diffusion(t_next, x)) * -h) * z
                f_next, _ = drift(x + h * f + noise, t_next)
                x = x + 0.5 * h * (f + f_next) + noise
                nfe += 1
            else:
                x = x + h * f + torch.sqrt(2 * diffusion(t, x) * -h) * z
        _report(callback, i=i, t=t, t_next=t_next, x=x, v=v, nfe=nfe)
    return x


SAMPLERS: dict[str, Callable[..., Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "dopri5": sample_dopri5,
    "sde-euler": sample_sde_euler,
    "sde-heun": sample_sde_heun,
}
ODE_SAMPLERS = ("euler", "heun", "dopri5")
_OPTIONS = {
    "euler": (),
    "heun": (),
    "dopri5": ("atol", "rtol"),
    "sde-euler": ("diffusion_form", "diffusion_norm", "last_step", "last_step_size"),
    "sde-heun": ("diffusion_form", "diffusion_norm", "last_step", "last_step_size"),
}


def _check_interval(t_start: float, t_end: float, end_name: str) -> None:
    if not 0.0 <= t_end < t_start <= 1.0:
        raise ValueError(f"need 0 <= {end_name} < t_start <= 1, got {t_end} and {t_start}")


def sample(
    model_fn: ModelFn,
    noise: Tensor,
    sampler: str = "euler",
    steps: int = 50,
    path: str | Interpolant = "linear",
    *,
    model_kwargs: dict[str, Any] | None = None,
    t_start: float | None = None,
    t_end: float | None = None,
    generator: Generators = None,
    callback: Callback | None = None,
    progress: bool = False,
    **kw: Any,
) -> Tensor:
    """Map noise at t_start (≈1) to a sample at t_end (≈0) with a named sampler.

    Args:
        model_fn: ``model_fn(x, t, **model_kwargs)`` -> velocity, t of shape [B]; wrap other
            predictions with ``as_velocity``.
        noise: x at t_start, [B, ...] (N(0, I); vp's exact prior has α_1 ≈ 6.6e-3, see paths).
        sampler: one of ``SAMPLERS``.
        steps: uniform steps from t_start to t_end; for dopri5 only the output grid (accuracy
            comes from atol/rtol); for SDE samplers the SDE steps, plus one last step.
        path: the interpolant the model was trained on (used by the SDE samplers and defaults).
        t_start, t_end: default 1 and ``path.sample_eps`` (0; 1e-3 for vp) for ODEs; for SDEs
            1 (1 − 1e-3 for SBDM on linear/gvp, where w_1 = ∞) and 0. For score/noise models
            use ``TransportConfig.sample_interval()``.
        generator: source of the SDE noise (on the device of ``noise``), or one generator per
            sample, so that a sample's noise does not depend on the batch it is in; the same
            seeds give bit-identical samples.
        callback: called after every step with a dict (i, t, t_next, x, v, nfe).
        **kw: dopri5: atol (1e-6), rtol (1e-3). SDE: diffusion_form ("sigma"), diffusion_norm
            (1.0), last_step ("mean"), last_step_size (0.04): the SDE runs from t_start to
            t_end + last_step_size and a last step (see ``_last_step``) covers the rest.

    Returns:
        x at t_end, shape of ``noise``.
    """
    check_choice("sampler", sampler, SAMPLERS)
    unknown = sorted(set(kw) - set(_OPTIONS[sampler]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for sampler {sampler!r}; valid: {list(_OPTIONS[sampler])}"
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    p = get_path(path)
    if sampler in ODE_SAMPLERS:
        t_start = 1.0 if t_start is None else t_start
        t_end = p.sample_eps if t_end is None else t_end
        _check_interval(t_start, t_end, "t_end")
        ts = torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()
        return SAMPLERS[sampler](
            model_fn, noise, ts, model_kwargs=model_kwargs, callback=callback,
            progress=progress, **kw,
        )  # fmt: skip

    form = kw.setdefault("diffusion_form", "sigma")
    last_step = kw.setdefault("last_step", "mean")
    _check_sde(form, kw.get("diffusion_norm", 1.0), last_step)
    size = float(kw.pop("last_step_size", 0.04)) if last_step != "none" else 0.0
    kw.pop("last_step_size", None)  # meaningless without a last step
    if t_start is None:
        t_start = 1.0 - SBDM_START_EPS if form == "SBDM" and p.pure_noise_at_one else 1.0
    t_end = 0.0 if t_end is None else t_end
    if last_step != "none" and size <= 0:
        raise ValueError(f"last_step_size must be > 0, got {size}")
    _check_interval(t_start, t_end + size, "t_end + last_step_size")
    ts = torch.linspace(t_start, t_end + size, steps + 1, dtype=torch.float64).tolist()
    if last_step != "none":
        ts.append(t_end)
    return SAMPLERS[sampler](
        model_fn, noise, ts, path=p, generator=generator, model_kwargs=model_kwargs,
        callback=callback, progress=progress, **kw,
    )  # fmt: skip


# ---------------------------------------------------------------- likelihood


def _divergence(v: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    """div_x v per sample: exact (one backward pass per dimension) or Hutchinson with probes.

    Both assume samples do not interact in ``model_fn`` (no batch statistics).
    """
    if probes is None:
        flat = v.reshape(v.shape[0], -1)
        div = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
        for d in range(flat.shape[1]):
            (g,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)
            div = div + g.reshape(g.shape[0], -1)[:, d]
        return div
    est = torch.zeros(v.shape[0], dtype=v.dtype, device=v.device)
    for k, z in enumerate(probes):
        (zj,) = torch.autograd.grad(v, x, z, retain_graph=k < len(probes) - 1)
        est = est + (zj * z).reshape(z.shape[0], -1).sum(dim=1)
    return est / len(probes)


def likelihood(
    model_fn: ModelFn,
    x_data: Tensor,
    path: str | Interpolant = "linear",
    steps: int = 100,
    sampler: str = "heun",
    num_probes: int = 1,
    generator: torch.Generator | None = None,
    model_kwargs: dict[str, Any] | None = None,
    *,
    divergence: Literal["hutchinson", "exact"] = "hutchinson",
    t_start: float | None = None,
    callback: Callback | None = None,
    **kw: Any,
) -> tuple[Tensor, Tensor]:
    """Log-likelihood in nats (summed over all dims) through the probability-flow ODE.

    Integrates dx/dt = v and dℓ/dt = div v from data at t_start (default ``path.sample_eps``)
    to t = 1. Since d log p_t(x_t)/dt = −div v along the flow (continuity equation),
    log p(x) = log N(x_1; 0, I) + ∫ div v dt. ``divergence="hutchinson"`` estimates div v with
    ``num_probes`` Rademacher probes z (E[zᵀ J z] = tr J) drawn once from ``generator`` and kept
    for the whole solve; "exact" costs one backward pass per dimension. On vp the N(0, I)
    prior ignores α_1 ≈ 6.6e-3 and the result is log p at t_start = 1e-3.

    Args:
        model_fn: velocity model, as for ``sample``.
        x_data: [B, ...] data points.
        sampler: "euler", "heun" or "dopri5" (``kw``: atol, rtol).
    Returns:
        (log_likelihood [B], prior_noise x_1 [B, ...]).
    """
    check_choice("sampler", sampler, ODE_SAMPLERS)
    check_choice("divergence", divergence, ("hutchinson", "exact"))
    unknown = sorted(set(kw) - set(_OPTIONS[sampler]))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for sampler {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if divergence == "hutchinson" and num_probes < 1:
        raise ValueError(f"num_probes must be >= 1, got {num_probes}")
    p = get_path(path)
    t_start = p.sample_eps if t_start is None else t_start
    mk = model_kwargs or {}
    shape, batch = x_data.shape, x_data.shape[0]
    probes = None
    if divergence == "hutchinson":
        bits = torch.randint(0, 2, (num_probes, *shape), generator=generator, device=x_data.device)
        probes = (2 * bits - 1).to(x_data.dtype)

    def augmented(state: Tensor, t: Tensor) -> Tensor:
        with torch.enable_grad():
            x = state[:, :-1].reshape(shape).detach().requires_grad_(True)
            v = model_fn(x, t, **mk)
            div = _divergence(v, x, probes)
        return torch.cat([v.detach().reshape(batch, -1), div.detach()[:, None]], dim=1)

    state = torch.cat([x_data.reshape(batch, -1), x_data.new_zeros(batch, 1)], dim=1)
    ts = torch.linspace(t_start, 1.0, steps + 1, dtype=torch.float64).tolist()
    state = SAMPLERS[sampler](augmented, state, ts, callback=callback, **kw)
    x1, integral = state[:, :-1], state[:, -1]
    dim = x1.shape[1]
    prior = -0.5 * (x1**2).sum(dim=1) - 0.5 * dim * math.log(2 * math.pi)
    return prior + integral, x1.reshape(shape)
