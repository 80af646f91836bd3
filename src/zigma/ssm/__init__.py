"""Selective state-space layers for ZigMa: the Mamba-1 mixer and its selective-scan kernels.

``selective_scan`` dispatches to a registered backend ("chunked" on CPU, "reference" as the
oracle, the "triton" kernels for CUDA tensors); ``Mamba`` is the token mixer the
backbones stack, ``ParallelMamba`` its K-orders-at-once baseline.
"""

from zigma.ssm.mamba import Mamba, ParallelMamba
from zigma.ssm.ops import (
    BACKENDS,
    available_backends,
    count_scan_flops,
    last_backend,
    register_backend,
    resolve_backend,
    scan_flops,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)

__all__ = [
    "BACKENDS",
    "Mamba",
    "ParallelMamba",
    "available_backends",
    "count_scan_flops",
    "last_backend",
    "register_backend",
    "resolve_backend",
    "scan_flops",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
]
