"""Selective-scan dispatcher: one entry point over a registry of backends, plus FLOP counting.

Models call ``selective_scan(..., backend="auto")``; backends ("reference", "chunked" and the
Triton kernels, "triton") register a function and an availability test, so new kernels plug
in here without touching any model. Triton is imported only when its backend first runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch

from zigma.ssm.ops._checks import check_scan_inputs
from zigma.ssm.ops.chunked import DEFAULT_CHUNK_SIZE, selective_scan_chunked
from zigma.ssm.ops.reference import selective_scan_ref

__all__ = [
    "AUTO_CUDA_BACKEND",
    "BACKENDS",
    "DEFAULT_CHUNK_SIZE",
    "Backend",
    "ScanFlops",
    "available_backends",
    "count_scan_flops",
    "last_backend",
    "record_scan",
    "register_backend",
    "resolve_backend",
    "scan_flops",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "selective_scan_tokens",
    "selective_scan_triton",
    "triton_available",
]


class ScanFn(Protocol):
    """Signature every backend implements (mamba_ssm ``selective_scan_fn`` semantics)."""

    def __call__(
        self,
        u: torch.Tensor,
        delta: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        D: torch.Tensor | None = None,
        z: torch.Tensor | None = None,
        delta_bias: torch.Tensor | None = None,
        delta_softplus: bool = False,
        return_last_state: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]: ...


@dataclass(frozen=True)
class Backend:
    """A registered scan implementation.

    Attributes:
        name: registry key.
        fn: the scan function (``ScanFn`` signature).
        is_available: whether ``fn`` can run on a given device.
        requires: human-readable requirement, quoted when the backend is unavailable.
    """

    name: str
    fn: ScanFn
    is_available: Callable[[torch.device], bool]
    requires: str = ""


BACKENDS: dict[str, Backend] = {}
# What "auto" runs on CUDA where the triton package imports (benchmarks/scan.py checks it
# against the PyTorch paths at full size on the GPU); "chunked" elsewhere.
AUTO_CUDA_BACKEND = "triton"
_AUTO = "auto"
_last_backend: str | None = None


def _always(device: torch.device) -> bool:
    return True


def register_backend(
    name: str,
    fn: ScanFn,
    is_available: Callable[[torch.device], bool],
    *,
    requires: str = "",
    replace: bool = False,
) -> None:
    """Add a scan backend to the registry.

    Args:
        name: registry key, e.g. ``"triton"`` (which ``"auto"`` prefers when available).
        fn: scan function with the ``ScanFn`` signature.
        is_available: ``device -> bool``; must be cheap and must not raise.
        requires: what the backend needs (e.g. ``"a CUDA device and triton"``), quoted in the
            error raised when it is requested but unavailable.
        replace: allow overwriting an existing registration.

    Raises:
        ValueError: if ``name`` is ``"auto"`` or already registered without ``replace``.
    """
    if name == _AUTO:
        raise ValueError(f"{_AUTO!r} is reserved for automatic backend selection")
    if name in BACKENDS and not replace:
        raise ValueError(f"selective_scan backend {name!r} is already registered")
    BACKENDS[name] = Backend(name, fn, is_available, requires)


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Names of the registered backends that can run on ``device``.

    Args:
        device: the device the scan inputs live on.

    Returns:
        Sorted backend names.
    """
    device = torch.device(device)
    return sorted(name for name, b in BACKENDS.items() if b.is_available(device))


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """Map a requested backend name to the one that will run; never falls back silently.

    ``"auto"`` picks ``AUTO_CUDA_BACKEND`` for CUDA devices where it is registered and
    available, else ``"chunked"`` (never the Triton interpreter on CPU). An explicit name must
    be registered and available.

    Args:
        backend: ``"auto"`` or a registered name.
        device: the device the scan inputs live on.

    Returns:
        The registered backend name.

    Raises:
        ValueError: if ``backend`` is not ``"auto"`` or a registered name.
        RuntimeError: if the requested backend is registered but unavailable on ``device``.
    """
    device = torch.device(device)
    if backend == _AUTO:
        preferred = BACKENDS.get(AUTO_CUDA_BACKEND)
        on_gpu = device.type == "cuda" and preferred is not None and preferred.is_available(device)
        return AUTO_CUDA_BACKEND if on_gpu else "chunked"
    entry = BACKENDS.get(backend)
    if entry is None:
        choices = ", ".join(repr(n) for n in [_AUTO, *sorted(BACKENDS)])
        raise ValueError(f"unknown selective_scan backend {backend!r}; choose from {choices}")
    if not entry.is_available(device):
        why = f"; it requires {entry.requires}" if entry.requires else ""
        raise RuntimeError(
            f"selective_scan backend {backend!r} is registered but not available on device "
            f"{device}{why}"
        )
    return backend


def last_backend() -> str | None:
    """Name of the backend the most recent ``selective_scan`` call ran (``None`` before any)."""
    return _last_backend


def scan_flops(batch: int, dim: int, length: int, d_state: int) -> int:
    """Analytic forward FLOPs of one selective scan: ``E * (7 N + 10)``, ``E = batch*dim*L``.

    Per (b, d, l, n): the multiply delta*A, the exp, the multiply B*(delta u), the state FMA
    ``a h + b`` (2) and the output FMA ``y += C h`` (2), i.e. 7. Per (b, d, l), about 10 for
    the bias and softplus of delta, the product delta*u, the D skip (FMA) and the silu gate.
    Backward is not counted.

    Args:
        batch: batch size.
        dim: channels (d_inner).
        length: sequence length L.
        d_state: state size N.

    Returns:
        The FLOP count.
    """
    return batch * dim * length * (7 * d_state + 10)


@dataclass
class ScanFlops:
    """Accumulator yielded by ``count_scan_flops``.

    Attributes:
        flops: analytic forward FLOPs of the scans run so far.
        calls: number of ``selective_scan`` calls counted.
    """

    flops: int = 0
    calls: int = 0


_counters: list[ScanFlops] = []


@contextmanager
def count_scan_flops() -> Iterator[ScanFlops]:
    """Count the analytic FLOPs (``scan_flops``) of every ``selective_scan`` call inside.

    Contexts nest; every active counter sees every call. Meant to be combined with torch's
    ``FlopCounterMode``, which sees the matmuls but not the scan's elementwise work.

    Yields:
        A ``ScanFlops`` whose ``.flops`` (int) and ``.calls`` grow as scans run.
    """
    counter = ScanFlops()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


def record_scan(backend: str, batch: int, dim: int, length: int, d_state: int) -> None:
    """Note a scan call for ``last_backend`` and every active ``count_scan_flops`` counter.

    Called by every public scan entry point (``selective_scan`` and the token-layout
    ``scan_tokens``) once per call, before it runs.
    """
    global _last_backend
    _last_backend = backend
    for counter in _counters:
        counter.flops += scan_flops(batch, dim, length, d_state)
        counter.calls += 1


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    *,
    backend: str = _AUTO,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan through the chosen backend.

    ``delta += delta_bias``; ``delta = softplus(delta)`` if asked; ``h_t = exp(delta_t A) h_{t-1}
    + delta_t B_t u_t`` (``h_{-1} = 0``); ``y_t = sum_n C_t h_t``; ``y += D u``; ``y *= silu(z)``.
    State and arithmetic are fp32 (fp64 for fp64 inputs).

    Args:
        u: input ``[batch, dim, L]`` (fp16/bf16/fp32/fp64).
        delta: step sizes ``[batch, dim, L]``.
        A: state matrix diagonal ``[dim, N]``, real.
        B: input projection ``[batch, N, L]``.
        C: output projection ``[batch, N, L]``.
        D: optional skip weight ``[dim]``.
        z: optional gate ``[batch, dim, L]``.
        delta_bias: optional ``[dim]``, added to delta in the compute dtype.
        delta_softplus: apply ``softplus`` to delta.
        return_last_state: also return the final state ``[batch, dim, N]``.
        backend: ``"auto"`` or a registered name (see ``available_backends``).

    Returns:
        ``y`` ``[batch, dim, L]`` in u's dtype, or ``(y, last_state)``.

    Raises:
        ValueError: on malformed inputs (before any compute) or an unknown backend.
        RuntimeError: if the requested backend is unavailable on u's device.
    """
    batch, dim, length, d_state = check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    record_scan(name, batch, dim, length, d_state)
    return BACKENDS[name].fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


# find_spec locates the package without importing it (importing zigma never imports triton).
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# The oldest Triton the kernels build with (tl.gather came in 3.3), as in pyproject's extra. An
# older one (such as an older torch brings) counts as absent: "auto" keeps the PyTorch path.
TRITON_MIN = (3, 3)


def _triton_version_ok(version: str) -> bool:
    """Whether a version string like "3.6.0" or "3.4.0+git1a2b" is at least ``TRITON_MIN``;
    an unreadable one (a nightly build under another name) is given the benefit of the doubt."""
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is None or (int(found[1]), int(found[2])) >= TRITON_MIN


def _triton_version() -> str:
    try:
        return importlib.metadata.version("triton")  # reads metadata: triton is not imported
    except importlib.metadata.PackageNotFoundError:
        return ""


# Settled at import (a few ms), so that torch.compile traces a constant.
_TRITON_USABLE = _TRITON_INSTALLED and _triton_version_ok(_triton_version())


def _triton_installed() -> bool:
    return _TRITON_USABLE


def triton_available(device: torch.device | str) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA with triton installed, or CPU
    under the Triton interpreter (``TRITON_INTERPRET=1``, slow; meant for tests).

    Args:
        device: the device the inputs live on.

    Returns:
        ``True`` if the "triton" backend can run there.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return _triton_installed()
    return (
        device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and _triton_installed()
    )


def selective_scan_triton(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The "triton" backend (``[batch, dim, L]`` layout); imports triton on first call.

    See ``zigma.ssm.ops.triton_scan.selective_scan_triton``.
    """
    from zigma.ssm.ops.triton_scan import selective_scan_triton as scan

    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_scan_tokens(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    order: torch.Tensor | None = None,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Token-layout Triton scan with the scan order folded in; imports triton on first call.

    See ``zigma.ssm.ops.triton_scan.selective_scan_tokens`` (``[batch, L, dim]`` inputs,
    strided views welcome, ``order`` an integer ``[L]`` permutation).
    """
    from zigma.ssm.ops.triton_scan import selective_scan_tokens as scan

    return scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, order, return_last_state)


register_backend("reference", selective_scan_ref, _always)
register_backend("chunked", selective_scan_chunked, _always)
register_backend(
    "triton",
    selective_scan_triton,
    triton_available,
    requires=f"the triton package (>= {'.'.join(map(str, TRITON_MIN))}) and a CUDA device "
    "(or TRITON_INTERPRET=1 on CPU)",
)
