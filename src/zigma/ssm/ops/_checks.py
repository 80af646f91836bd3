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


def check_index(name: str, index: object, length: int, device: torch.device | None = None) -> None:
    """Validate a scan order (or its inverse): an integer ``[L]`` tensor on ``device``.

    Raises:
        ValueError: naming ``name``, on a wrong shape, a non-integer dtype or another device.
    """
    if not isinstance(index, torch.Tensor) or index.dim() != 1 or index.numel() != length:
        got = _fmt(index.shape) if isinstance(index, torch.Tensor) else type(index).__name__
        raise ValueError(f"{name} must be a [L] = [{length}] index tensor, got {got}")
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got {index.dtype}")
    if device is not None and index.device != device:
        raise ValueError(f"{name} is on {index.device} but the inputs are on {device}")


def _check_scan(
    u: object,
    A: object,
    others: dict[str, torch.Tensor | None],
    tokens: bool,
    dtypes: tuple[torch.dtype, ...],
) -> tuple[int, int, int, int]:
    """The checks both layouts share; ``tokens`` selects ``[batch, L, *]`` over
    ``[batch, *, L]`` activations (and then requires a unit last-dim stride).
    Returns ``(batch, dim, L, N)``."""
    layout = "[batch, L, dim]" if tokens else "[batch, dim, L]"
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = _fmt(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"u must be {layout}, got {got}")
    batch, length, dim = u.shape if tokens else (u.shape[0], u.shape[2], u.shape[1])
    if length == 0:
        raise ValueError("u must have at least one token (L >= 1), got L = 0")
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = _fmt(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"A must be [dim, N] with dim = {dim}, got {got}")
    n_state = A.shape[1]
    if n_state == 0:
        raise ValueError("A must have at least one state column (N >= 1)")

    def act(width: int, name: str) -> tuple[tuple[int, ...], str]:  # an activation's shape
        if tokens:
            return (batch, length, width), f"[batch, L, {name}]"
        return (batch, width, length), f"[batch, {name}, L]"

    shapes = {
        "delta": act(dim, "dim"),
        "B": act(n_state, "N"),
        "C": act(n_state, "N"),
        "D": ((dim,), "[dim]"),
        "z": act(dim, "dim"),
        "delta_bias": ((dim,), "[dim]"),
    }
    for name, t in others.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a tensor or None, got {type(t).__name__}")
        shape, label = shapes[name]
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be {label} = {_fmt(shape)}, got {_fmt(t.shape)}")
    for name, t in {"u": u, "A": A, **others}.items():
        if t is None:
            continue
        allowed = dtypes if name in ("u", "delta", "z", "B", "C") else _FLOATS
        if t.dtype not in allowed:
            names = "/".join(str(a).removeprefix("torch.") for a in allowed)
            raise ValueError(f"{name} must be a real floating tensor ({names}), got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"{name} is on {t.device} but u is on {u.device}")
        if tokens and t.dim() == 3 and t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(
                f"{name} must be contiguous in its last dimension (stride 1), got strides "
                f"{tuple(t.stride())}; views such as xz[..., :dim] are fine"
            )
    return batch, dim, length, n_state


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
    others = {"delta": delta, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    return _check_scan(u, A, others, tokens=False, dtypes=_FLOATS)


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
    others = {"delta": delta, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    batch, dim, length, n_state = _check_scan(u, A, others, tokens=True, dtypes=dtypes)
    if order is not None:
        check_index("order", order, length, u.device)
    return batch, length, dim, n_state


def describe_shape(t: object) -> str:
    if not isinstance(t, torch.Tensor):
        return type(t).__name__
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_conv_tokens_args(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    order: torch.Tensor | None,
    activation: str | None,
) -> None:
    """Validate the arguments of a token-layout causal conv (shapes, dtypes, devices only).

    Raises:
        ValueError: naming the offending argument.
    """
    if activation not in ("silu", None):
        raise ValueError(f"activation must be 'silu' or None, got {activation!r}")
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        raise ValueError(f"x must be [batch, L, dim], got {describe_shape(x)}")
    _, length, dim = x.shape
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[0] != dim:
        raise ValueError(
            f"weight must be [dim, width] with dim = {dim}, got {describe_shape(weight)}"
        )
    if weight.shape[1] < 1:
        raise ValueError("weight must have width >= 1")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (dim,)):
        raise ValueError(f"bias must be [dim] = [{dim}] or None, got {describe_shape(bias)}")
    for name, t in (("x", x), ("weight", weight), ("bias", bias)):
        if t is not None and t.dtype not in _FLOATS:
            raise ValueError(f"{name} must be fp16/bf16/fp32/fp64, got {t.dtype}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    if order is not None:
        check_index("order", order, length, x.device)
