"""Input validation and dtype rules shared by every selective-scan backend.

Checks run on shapes and dtypes only, so they are cheap enough to repeat in each public
entry point and fail before any compute with a message naming the offending argument.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(*tensors: torch.Tensor | None) -> torch.dtype:
    """Dtype the scan state and arithmetic use: fp64 if any input is fp64, else fp32.

    Args:
        *tensors: scan inputs; ``None`` entries are ignored.

    Returns:
        ``torch.float64`` or ``torch.float32``.
    """
    if any(t is not None and t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


def no_autocast(device: torch.device) -> AbstractContextManager[object]:
    """Context that disables autocast on ``device``: scan math must stay in fp32/fp64.

    Under CPU/CUDA autocast, matmul and einsum would otherwise run in bf16/fp16 inside the
    backends, silently dropping the state contraction to low precision.

    Args:
        device: device of the scan inputs.

    Returns:
        A context manager (a no-op where autocast does not exist).
    """
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device.type, enabled=False)
    return nullcontext()


def _fmt(shape: torch.Size | tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
) -> tuple[int, int, int, int]:
    """Validate the arguments of a selective scan (mamba_ssm ``selective_scan_fn`` layout).

    Args:
        u: ``[batch, dim, L]``.
        delta: ``[batch, dim, L]``.
        A: ``[dim, N]``, real.
        B: ``[batch, N, L]``.
        C: ``[batch, N, L]``.
        D: optional ``[dim]``.
        z: optional ``[batch, dim, L]``.
        delta_bias: optional ``[dim]``.

    Returns:
        ``(batch, dim, L, N)``.

    Raises:
        ValueError: on a wrong rank, shape, dtype (complex or integer), L = 0 or mixed devices.
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = _fmt(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be [batch, dim, L], got {got}")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("u must have at least one token (L >= 1), got L = 0")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = _fmt(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be [dim, N] with dim = {dim}, got {got}")
    n_state = A.shape[1]
    expected: dict[str, tuple[torch.Tensor | None, tuple[int, ...], str]] = {
        "delta": (delta, (batch, dim, length), "[batch, dim, L]"),
        "B": (B, (batch, n_state, length), "[batch, N, L]"),
        "C": (C, (batch, n_state, length), "[batch, N, L]"),
        "D": (D, (dim,), "[dim]"),
        "z": (z, (batch, dim, length), "[batch, dim, L]"),
        "delta_bias": (delta_bias, (dim,), "[dim]"),
    }
    for name, (t, shape, layout) in expected.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor or None, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {layout} = {_fmt(shape)}, got {_fmt(t.shape)}")
    named = {"u": u, "A": A, **{k: v[0] for k, v in expected.items()}}
    for name, t in named.items():
        if t is None:
            continue
        if t.dtype not in _FLOATS:
            raise ValueError(
                f"{name} must be a real floating tensor (fp16/bf16/fp32/fp64), got {t.dtype}"
            )
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
    if n_state == 0:
        raise ValueError("A must have at least one state column (N >= 1)")
    return batch, dim, length, n_state


def check_scan_tokens_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    order: torch.Tensor | None = None,
    *,
    dtypes: tuple[torch.dtype, ...] = _FLOATS,
) -> tuple[int, int, int, int]:
    """Validate a token-layout selective scan (``[batch, L, dim]`` activations, strided views).

    Args:
        u: ``[batch, L, dim]``.
        delta: ``[batch, L, dim]``.
        A: ``[dim, N]``, real.
        B: ``[batch, L, N]``.
        C: ``[batch, L, N]``.
        D: optional ``[dim]``.
        z: optional ``[batch, L, dim]``.
        delta_bias: optional ``[dim]``.
        order: optional integer ``[L]`` scan order on u's device.
        dtypes: dtypes allowed for u, delta, z, B and C.

    Returns:
        ``(batch, L, dim, N)``.

    Raises:
        ValueError: on a wrong rank, shape or dtype, L = 0, mixed devices, a bad order, or an
            activation whose last dimension is not contiguous (stride 1).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = _fmt(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be [batch, L, dim], got {got}")
    batch, length, dim = u.shape
    if length == 0:
        raise ValueError("u must have at least one token (L >= 1), got L = 0")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = _fmt(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be [dim, N] with dim = {dim}, got {got}")
    n_state = A.shape[1]
    if n_state == 0:
        raise ValueError("A must have at least one state column (N >= 1)")
    expected: dict[str, tuple[torch.Tensor | None, tuple[int, ...], str]] = {
        "delta": (delta, (batch, length, dim), "[batch, L, dim]"),
        "B": (B, (batch, length, n_state), "[batch, L, N]"),
        "C": (C, (batch, length, n_state), "[batch, L, N]"),
        "D": (D, (dim,), "[dim]"),
        "z": (z, (batch, length, dim), "[batch, L, dim]"),
        "delta_bias": (delta_bias, (dim,), "[dim]"),
    }
    for name, (t, shape, layout) in expected.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor or None, got {type(t).__name__}")
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {layout} = {_fmt(shape)}, got {_fmt(t.shape)}")
    named = {"u": u, "A": A, **{k: v[0] for k, v in expected.items()}}
    for name, t in named.items():
        if t is None:
            continue
        allowed = dtypes if name in ("u", "delta", "z", "B", "C") else _FLOATS
        if t.dtype not in allowed:
            names = "/".join(str(a).removeprefix("torch.") for a in allowed)
            raise ValueError(f"{name} must be a real floating tensor ({names}), got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
        if t.dim() == 3 and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be contiguous in its last dimension (stride 1), got strides "
                f"{tuple(t.stride())}; views such as xz[..., :dim] are fine"
            )
    if order is not None:
        if not isinstance(order, torch.Tensor) or order.dim() != 1 or order.numel() != length:
            got = _fmt(order.shape) if isinstance(order, torch.Tensor) else type(order).__name__
            raise ValueError(f"order must be a [L] = [{length}] index tensor, got {got}")
        if order.dtype.is_floating_point or order.dtype.is_complex or order.dtype == torch.bool:
            raise ValueError(f"order must be an integer tensor, got {order.dtype}")
        if order.device != u.device:
            raise ValueError(f"order is on {order.device} but u is on {u.device}")
    return batch, length, dim, n_state
