"""Fixtures and tolerances shared by the selective-scan and Mamba tests."""

from __future__ import annotations

import pytest
import torch

# Chunked vs reference, both computed in the dtype named.
TOL = {
    torch.float64: {"rtol": 1e-10, "atol": 1e-10},
    # fp32 chunked vs the fp64 reference: a different summation order and fp32 state.
    torch.float32: {"rtol": 2e-4, "atol": 2e-4},
}

SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_scan_inputs(
    batch: int,
    dim: int,
    n_state: int,
    length: int,
    *,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    delta_scale: float = 0.5,
    a_max: float = 4.0,
) -> dict[str, torch.Tensor | None]:
    """Random scan inputs in mamba_ssm layout, every tensor a leaf requiring grad.

    ``A`` spans ``-a_max .. -0.1`` and delta is ``delta_scale * randn`` (softplus-able).
    """
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    a = -(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * (a_max - 0.1) + 0.1)
    inputs: dict[str, torch.Tensor | None] = {
        "u": rnd(batch, dim, length),
        "delta": rnd(batch, dim, length, scale=delta_scale),
        "A": a.to(dtype),
        "B": rnd(batch, n_state, length),
        "C": rnd(batch, n_state, length),
        "D": rnd(dim) if with_D else None,
        "z": rnd(batch, dim, length) if with_z else None,
        "delta_bias": rnd(dim, scale=0.5) if with_bias else None,
    }
    for t in inputs.values():
        if t is not None:
            t.requires_grad_(True)
    return inputs


def outputs_and_grads(
    fn, inputs: dict[str, torch.Tensor | None], seed: int = 1, **kwargs
) -> dict[str, torch.Tensor]:
    """Run ``fn`` and backpropagate a fixed random cotangent (into y and the last state).

    Returns ``{"y": ..., "last": ..., "d<name>": ...}`` for every non-None input.
    """
    y, last = fn(**inputs, return_last_state=True, **kwargs)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.dtype)
    glast = torch.randn(last.shape, generator=g, dtype=torch.float64).to(last.dtype)
    leaves = {k: v for k, v in inputs.items() if v is not None}
    grads = torch.autograd.grad((y * gy).sum() + (last * glast).sum(), list(leaves.values()))
    out = {"y": y.detach(), "last": last.detach()}
    out.update({f"d{k}": gr for k, gr in zip(leaves, grads, strict=True)})
    return out


@pytest.fixture
def scan_inputs():
    """Factory fixture for ``make_scan_inputs``."""
    return make_scan_inputs
