"""A denoiser's forward replayed as one CUDA graph.

At batch 1 a ZigMa-B forward is about a thousand small kernels; below ~16k tokens launching
them from Python takes longer than running them (BENCHMARKS.md has the figures). A graph
records the launches once and replays them in one call. Shapes, dtypes and
the device are fixed at capture; the inputs are copied into the graph's own buffers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn


def _tree(value, fn):
    """``fn`` over a condition value: a tensor, a tuple of tensors (text), or None."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(fn(v) for v in value)
    return fn(value)


def _pairs(buf, new, name: str) -> list[tuple]:
    """(captured buffer, new input, name) for each tensor of a condition value."""
    if isinstance(buf, tuple) and isinstance(new, tuple) and len(buf) == len(new):
        return [(b, n, f"{name}[{i}]") for i, (b, n) in enumerate(zip(buf, new, strict=True))]
    if isinstance(buf, tuple) or isinstance(new, tuple):
        raise ValueError(f"{name} does not have the structure the graph was captured with")
    return [(buf, new, name)]


class GraphedForward:
    """``model(x, t, **cond)`` under ``torch.no_grad()`` (and bf16/fp16 autocast if ``dtype`` is
    given), captured for the shapes of the example inputs.

    Calling it copies ``x``, ``t`` and every condition tensor into the captured input buffers
    and replays the graph. The
    returned tensor is the graph's output buffer: the next call overwrites it (clone it to
    keep it). The model's weights are read in place, so weight updates are seen; a change of
    shapes, dtype or device needs a new capture.

    Args:
        model: the denoiser (``DiffusionBackbone`` or any ``model(x, t, **cond)``), on a CUDA
            device, in the mode it should run in (``eval()`` for sampling).
        x, t: example inputs.
        cond: example conditions by name (tensors, tuples of tensors such as text's
            (tokens, mask), or None for an absent optional one).
        dtype: autocast dtype, or None to run in the weights' dtype.
        warmup: eager calls on a side stream before the capture (Triton compiles, cuBLAS
            picks its kernels, caches fill).

    Raises:
        ValueError: if the inputs are not CUDA tensors.
    """

    def __init__(
        self,
        model: nn.Module | Callable,
        x: torch.Tensor,
        t: torch.Tensor,
        cond: dict[str, torch.Tensor | None] | None = None,
        dtype: torch.dtype | None = None,
        warmup: int = 2,
    ) -> None:
        if x.device.type != "cuda" or t.device != x.device:
            raise ValueError(f"CUDA graphs need CUDA inputs, got x on {x.device}, t on {t.device}")
        if cond is not None and not isinstance(cond, dict):
            raise TypeError(f"cond must be a dict of named conditions, got {type(cond).__name__}")
        self.model, self.dtype = model, dtype
        self.inputs = {"x": x.clone(), "t": t.clone()}
        self.cond = {k: _tree(v, torch.Tensor.clone) for k, v in (cond or {}).items()}
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream(x.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self._run()

    def _run(self) -> torch.Tensor:
        # Autocast's cache of cast weights must stay off: a graph would keep reading cast copies
        # that the cache frees when the autocast region ends.
        cast = (
            torch.autocast("cuda", dtype=self.dtype, cache_enabled=False)
            if self.dtype not in (None, torch.float32)
            else contextlib.nullcontext()
        )
        with torch.no_grad(), cast:
            return self.model(self.inputs["x"], self.inputs["t"], **self.cond)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        if set(cond) != set(self.cond):
            raise ValueError(
                f"conditions {sorted(cond)} but the graph was captured with {sorted(self.cond)}"
            )
        pairs = [(self.inputs["x"], x, "x"), (self.inputs["t"], t, "t")]
        for k in self.cond:
            pairs += _pairs(self.cond[k], cond[k], k)
        for buf, new, name in pairs:
            if (buf is None) != (new is None) or (
                buf is not None and (new.shape != buf.shape or new.device != buf.device)
            ):
                want = None if buf is None else tuple(buf.shape)
                got = None if new is None else tuple(new.shape)
                raise ValueError(f"{name} is {got} but the graph was captured for {want}")
        for buf, new, _ in pairs:
            if buf is not None:
                buf.copy_(new)
        self.graph.replay()
        return self.output


class GraphCache:
    """``model(x, t, **cond)`` through CUDA graphs: one ``GraphedForward`` per set of input shapes
    (a sampler calls the model with the same shapes at every step; a last, smaller batch gets
    its own graph). Returns a copy of the output, so callers may keep it across calls.

    Args:
        model: the denoiser, on a CUDA device, in eval mode.
        dtype: autocast dtype, or None for the weights' dtype.
    """

    def __init__(self, model: nn.Module | Callable, dtype: torch.dtype | None = None) -> None:
        self.model, self.dtype = model, dtype
        self.graphs: dict[tuple, GraphedForward] = {}

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, **cond) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        key = (tuple(x.shape), x.dtype, tuple(t.shape), t.dtype) + tuple(
            (k, _tree(v, lambda a: (tuple(a.shape), a.dtype))) for k, v in sorted(cond.items())
        )
        graphed = self.graphs.get(key)
        if graphed is None:
            graphed = self.graphs[key] = GraphedForward(self.model, x, t, cond, dtype=self.dtype)
        return graphed(x, t, **cond).clone()
