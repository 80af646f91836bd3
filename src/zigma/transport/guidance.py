"""Classifier-free guidance (Ho & Salimans 2022) for any named conditions, wrapping a velocity
model: every channel is guided, both branches run in one batched forward call, and guidance
may be limited to a time interval (Kynkäänniemi et al. 2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

ModelFn = Callable[..., Tensor]


# A condition value is a tensor with the batch first, or a tuple of them (text: tokens and their
# mask); these helpers treat both alike, so guidance and generation batch any condition.
def is_batched(value: Any) -> bool:
    """Whether ``value`` is a tensor or a non-empty tuple of tensors (rows along dim 0)."""
    if isinstance(value, Tensor):
        return value.ndim > 0
    return isinstance(value, tuple) and len(value) > 0 and all(isinstance(v, Tensor) for v in value)


def num_rows(value: Any) -> int:
    """The batch size of a batched condition value."""
    return value.shape[0] if isinstance(value, Tensor) else value[0].shape[0]


def take_rows(value: Any, lo: int, hi: int, device: Any = None) -> Any:
    """Rows ``lo:hi`` of a batched value (moved to ``device`` if given); others unchanged."""
    if isinstance(value, Tensor):
        return value[lo:hi].to(device) if device is not None else value[lo:hi]
    if is_batched(value):
        return tuple(take_rows(v, lo, hi, device) for v in value)
    return value


def cat_rows(a: Any, b: Any) -> Any:
    """``a`` and ``b`` stacked along the batch (element-wise for tuples)."""
    if isinstance(a, Tensor):
        return torch.cat([a, b])
    return tuple(cat_rows(x, y) for x, y in zip(a, b, strict=True))


def _check_branches(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> None:
    if set(cond) != set(uncond):
        raise ValueError(
            f"cond_kwargs and uncond_kwargs must have the same keys, got {sorted(cond)} "
            f"and {sorted(uncond)}"
        )
    for key in cond:
        a, b = cond[key], uncond[key]
        if isinstance(a, Tensor) != isinstance(b, Tensor) or is_batched(a) != is_batched(b):
            raise ValueError(f"kwarg {key!r} must be a tensor in both branches or in neither")
        if isinstance(a, Tensor) and (a.ndim == 0 or b.ndim == 0):
            raise ValueError(f"kwarg {key!r} needs a batch dimension, got a scalar")
        if is_batched(a):
            if num_rows(a) != num_rows(b):
                raise ValueError(
                    f"kwarg {key!r} needs a matching batch dimension in both branches, got "
                    f"{num_rows(a)} and {num_rows(b)} rows"
                )
            if isinstance(a, tuple) and [x.shape for x in a] != [y.shape for y in b]:
                raise ValueError(
                    f"kwarg {key!r} needs the same shapes in both branches, got "
                    f"{[tuple(x.shape) for x in a]} and {[tuple(y.shape) for y in b]}"
                )
        elif a != b:
            raise ValueError(f"non-tensor kwarg {key!r} must be equal in both branches")


def cfg_velocity(
    model_fn: ModelFn,
    scale: float,
    cond_kwargs: Mapping[str, Any],
    uncond_kwargs: Mapping[str, Any],
    interval: tuple[float, float] | None = None,
) -> ModelFn:
    """Return ``guided(x, t, **shared)`` = v_u + scale·(v_c − v_u) on every channel.

    v_c = model_fn(x, t, **cond_kwargs, **shared), v_u likewise with ``uncond_kwargs``; one call
    on the batch [x; x] with t and every tensor kwarg concatenated along dim 0 (non-tensor kwargs
    must be equal in both branches and are passed once). ``shared`` kwargs, e.g. a sampler's
    model_kwargs, go to both branches (tensors are duplicated). A condition may also be a tuple
    of tensors (text: tokens and their mask), stacked element-wise.

    Args:
        model_fn: velocity model ``model_fn(x, t, **kw)``.
        scale: guidance scale; 1 returns the conditional model with no unconditional pass.
        cond_kwargs, uncond_kwargs: the condition and its null value, e.g. {"y": labels} and
            {"y": null_labels}; tensors have the batch size of x.
        interval: (t_lo, t_hi): guide only where t_lo <= t <= t_hi (per sample), elsewhere return
            v_c; where no sample of a call is inside, only the conditional pass runs.
    Raises:
        ValueError: mismatched keys or batch sizes, a bad interval or a non-finite scale.
    """
    scale = float(scale)
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    _check_branches(cond_kwargs, uncond_kwargs)
    if interval is not None:
        lo, hi = (float(v) for v in interval)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"interval must satisfy 0 <= t_lo <= t_hi <= 1, got {interval}")
    cond, uncond = dict(cond_kwargs), dict(uncond_kwargs)

    def guided(x: Tensor, t: Tensor, **shared: Any) -> Tensor:
        batch = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(batch) if t.ndim == 0 else t
        if t.shape != (batch,):
            raise ValueError(f"t must have shape ({batch},), got {tuple(t.shape)}")
        clash = sorted(set(shared) & set(cond))
        if clash:
            raise ValueError(f"kwargs {clash} given both as shared and as condition")
        for key, value in cond.items():
            if is_batched(value) and num_rows(value) != batch:
                raise ValueError(
                    f"kwarg {key!r} has batch {num_rows(value)} but x has batch {batch}"
                )
        inside = torch.ones_like(t, dtype=torch.bool)
        if interval is not None:
            inside = (t >= lo) & (t <= hi)
        if scale == 1.0 or not bool(inside.any()):
            return model_fn(x, t, **cond, **shared)

        kwargs = {k: cat_rows(v, uncond[k]) if is_batched(v) else v for k, v in cond.items()}
        for k, v in shared.items():
            kwargs[k] = torch.cat([v, v]) if isinstance(v, Tensor) and v.ndim > 0 else v
        out = model_fn(torch.cat([x, x]), torch.cat([t, t]), **kwargs)
        v_cond, v_uncond = out[:batch], out[batch:]
        v = v_uncond + scale * (v_cond - v_uncond)
        if not bool(inside.all()):
            mask = inside.reshape(-1, *([1] * (x.ndim - 1)))
            v = torch.where(mask, v, v_cond)
        return v

    return guided


def guided(
    model_fn: ModelFn,
    cond: Mapping[str, Any],
    null: Mapping[str, Any],
    scale: float = 1.0,
    interval: tuple[float, float] | None = None,
) -> tuple[ModelFn, dict[str, Any]]:
    """``(model_fn, model_kwargs)`` to hand to ``sample`` for a model with conditions ``cond``.

    With ``scale != 1`` every condition is guided against its null value in ``null`` (the
    model's ``null_conditions(cond)``: the null class, the null text, ...) through
    ``cfg_velocity``; with no conditions ``model_fn`` is returned unchanged.
    """
    if not cond:
        if scale != 1.0:
            raise ValueError("classifier-free guidance needs a conditional model")
        return model_fn, {}
    if scale == 1.0:
        return model_fn, dict(cond)
    return cfg_velocity(model_fn, scale, cond, null, interval), {}
