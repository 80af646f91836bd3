"""The public scan-order registry: validation, dispatch by kind, caching, inverses, checks.

An order is a gather index over the raster tokens of a grid (token = t*H*W + row*W + col):
position m of the scanned sequence holds token orders[k, m].
"""

import functools
import numbers

import numpy as np
import torch

from zigma.scan.hilbert import hilbert_orders
from zigma.scan.zigzag import zigzag3d_orders, zigzag_orders

SCAN_KINDS: tuple[str, ...] = ("sweep", "zigzag", "hilbert", "random", "sweep3d", "zigzag3d")

_KINDS_3D = ("sweep3d", "zigzag3d")
_MAX_VARIANTS = 8  # zigzag, hilbert and zigzag3d each have 8 variants


def scan_orders(
    kind: str,
    height: int,
    width: int,
    frames: int = 1,
    *,
    num: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Scan orders of `kind` over a frames x height x width grid, int64 of shape [K, T*H*W].

    Kinds: "sweep" (raster, K=1), "zigzag" (official S0..S7, K=num, default 8), "hilbert"
    (continuous generalized Hilbert variants, K=num, default 8), "random" (K=num random
    permutations from `seed`, default 8), "sweep3d" (frame-major raster, K=1) and "zigzag3d"
    (6-neighbour continuous orders over T x H x W, K=num, default 8). The 2D kinds need
    frames == 1. The result is a fresh tensor that the caller may modify.
    """
    key = _validate(kind, height, width, frames, num, seed)
    return torch.from_numpy(_cached_orders(*key).copy())


def _validate(
    kind: str, height: int, width: int, frames: int, num: int | None, seed: int
) -> tuple[str, int, int, int, int, int]:
    """Check every argument up front; return a normalised cache key."""
    if kind not in SCAN_KINDS:
        raise ValueError(f"unknown scan kind {kind!r}; valid choices: {', '.join(SCAN_KINDS)}")
    height = _positive_int("height", height)
    width = _positive_int("width", width)
    frames = _positive_int("frames", frames)
    if frames != 1 and kind not in _KINDS_3D:
        raise ValueError(
            f"scan kind {kind!r} is 2D and needs frames == 1, got frames={frames}; "
            f"use one of {', '.join(_KINDS_3D)} for videos"
        )
    num = _check_num(kind, num)
    if kind != "random":
        seed = 0  # only random orders depend on the seed; keep the cache from splitting
    elif not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    return kind, height, width, frames, num, int(seed)


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_int(name: str, value: object) -> int:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _check_num(kind: str, num: int | None) -> int:
    """Resolve the default number of orders and check it against the kind's range."""
    if kind in ("sweep", "sweep3d"):
        if num is not None and not (_is_int(num) and num == 1):
            raise ValueError(f"scan kind {kind!r} has a single order; num must be None or 1")
        return 1
    if num is None:
        return _MAX_VARIANTS
    if kind == "random":
        if not _is_int(num) or num < 1:
            raise ValueError(f"num for 'random' must be an int >= 1, got {num!r}")
    elif not _is_int(num) or not 1 <= num <= _MAX_VARIANTS:
        raise ValueError(f"num for {kind!r} must be an int in 1..{_MAX_VARIANTS}, got {num!r}")
    return int(num)


@functools.lru_cache(maxsize=32)
def _cached_orders(
    kind: str, height: int, width: int, frames: int, num: int, seed: int
) -> np.ndarray:
    orders = _build(kind, height, width, frames, num, seed)
    orders.flags.writeable = False  # cached and shared: callers only ever see copies
    return orders


def _build(kind: str, height: int, width: int, frames: int, num: int, seed: int) -> np.ndarray:
    length = frames * height * width
    if kind in ("sweep", "sweep3d"):
        return np.arange(length, dtype=np.int64)[None]
    if kind == "zigzag":
        return zigzag_orders(height, width, num)
    if kind == "hilbert":
        return hilbert_orders(height, width, num)
    if kind == "zigzag3d":
        return zigzag3d_orders(frames, height, width, num)
    # torch's CPU generator is a seeded Mersenne Twister: the same permutations everywhere.
    # device="cpu" because models are also built under torch.device("meta") (shapes only),
    # where a bare randperm would make meta tensors, which have no values.
    generator = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(length, generator=generator, device="cpu") for _ in range(num)]
    return torch.stack(perms).numpy()


def inverse_orders(orders: torch.Tensor) -> torch.Tensor:
    """Inverse permutations of a [L] or [K, L] order, so x[..., o][..., inv] == x.

    Raises ValueError if a row is not a permutation of 0..L-1.
    """
    if orders.dim() not in (1, 2) or orders.dtype.is_floating_point or orders.dtype == torch.bool:
        raise ValueError(
            f"expected an integer tensor of shape [L] or [K, L], got {orders.dtype} "
            f"of shape {tuple(orders.shape)}"
        )
    orders = orders.long()
    length = orders.shape[-1]
    if length and (orders.min() < 0 or orders.max() >= length):
        raise ValueError(f"orders must hold indices in 0..{length - 1}")
    positions = torch.arange(length, device=orders.device).expand_as(orders)
    # A duplicate leaves some token unassigned, so the -1 fill doubles as the permutation check.
    inverse = torch.full_like(orders, -1).scatter_(-1, orders, positions)
    if (inverse < 0).any():
        raise ValueError("orders must be permutations (each token exactly once per row)")
    return inverse


def step_lengths(order: torch.Tensor, height: int, width: int, frames: int = 1) -> torch.Tensor:
    """Manhattan distance in (t, row, col) between consecutive positions, shape [..., L-1]."""
    order = order.long()
    if order.numel() and (order.min() < 0 or order.max() >= frames * height * width):
        raise ValueError(f"tokens must lie in 0..{frames * height * width - 1} for this grid")
    t, rest = torch.div(order, height * width, rounding_mode="floor"), order % (height * width)
    row, col = torch.div(rest, width, rounding_mode="floor"), rest % width
    coords = torch.stack([t, row, col], dim=-1)
    return (coords[..., 1:, :] - coords[..., :-1, :]).abs().sum(dim=-1)


def is_continuous(order: torch.Tensor, height: int, width: int, frames: int = 1) -> bool:
    """True if every step of every row moves to a 4-neighbour (6-neighbour across frames)."""
    return bool((step_lengths(order, height, width, frames) == 1).all())
