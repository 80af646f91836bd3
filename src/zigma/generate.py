"""Generation: noise -> guidance over the model's conditions -> sampler -> output stage.

One function serves ``zigma sample``, the preview grids during training and evaluation, so a
sample means the same thing everywhere: the starting noise comes from ``seed`` alone, each
sample's SDE noise from ``(seed, sample index)``, conditions are guided against the model's
own null values, and the output stage (``to_images``: clamp to [-1, 1]) runs per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from zigma.models import GraphCache
from zigma.models.layers import CrossAttention
from zigma.transport import (
    SAMPLERS,
    TransportConfig,
    as_velocity,
    guided,
    num_rows,
    sample,
    take_rows,
)

OutputStage = Callable[[torch.Tensor], torch.Tensor]


def to_images(samples: torch.Tensor) -> torch.Tensor:
    """The output stage of a pixel-space model: images in [-1, 1]."""
    return samples.clamp(-1, 1)


def as_sampled(samples: torch.Tensor) -> torch.Tensor:
    """The output stage of a latent model: the latents as sampled. Scaled latents spread past
    [-1, 1] (unit variance), so clamping them would change the picture; the decoder clamps the
    decoded images instead."""
    return samples


def initial_noise(num: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The starting noise [num, *shape] of ``seed`` (on the CPU: the same on every device)."""
    return torch.randn(num, *shape, generator=torch.Generator().manual_seed(seed))


def sde_generator(seed: int, index: int, device: torch.device | str) -> torch.Generator:
    """The SDE noise stream of sample ``index``: numpy's SeedSequence mixes (seed, index) into
    a seed that no other pair shares by accident (seed + index would)."""
    mixed = np.random.SeedSequence(seed % 2**64, spawn_key=(index,)).generate_state(1, np.uint64)
    return torch.Generator(device=device).manual_seed(int(mixed[0]))


def grid_conditions(model: nn.Module, num: int, **given: Any) -> dict[str, Any]:
    """Conditions for ``num`` samples: ``given`` ones (a single value is repeated), the others
    spread over their values (classes in turn: one per column of a grid)."""
    out = {}
    for name, condition in model.conditioner.conditions.items():
        value = given.pop(name, None)
        out[name] = condition.spread(num) if value is None else condition.repeat(value, num)
    if given:
        raise ValueError(
            f"unexpected condition(s) {', '.join(sorted(given))}: this model takes "
            f"{model.conditioner.describe()}"
        )
    return out


class AttentionMaps:
    """Cross-attention weights of a text model recorded while ``generate`` samples: for each
    sample, the attention of every image token to every context token, averaged over heads,
    layers and sampler steps (the conditional branch only, under guidance).

    Pass one to ``generate(..., attention=maps)``; afterwards ``maps.maps`` is
    [num, L_img, 1 + L_text] (context token 0 is the null token that leads every context) and
    ``maps.grid`` the (frames, h, w) of the image tokens, in the token grid's numbering.
    """

    def __init__(self) -> None:
        self.maps: torch.Tensor | None = None
        self.grid: tuple[int, int, int] | None = None
        self._parts: list[torch.Tensor] = []
        self._sum: torch.Tensor | None = None
        self._calls = 0
        self._rows = 0

    def _record(self, weights: torch.Tensor) -> None:  # [B or 2B, L, S]
        w = weights[: self._rows].float()
        self._sum = w if self._sum is None else self._sum + w
        self._calls += 1

    @contextlib.contextmanager
    def attached(self, model: nn.Module, rows: int):
        """Record every cross-attention of ``model`` for a batch of ``rows`` samples."""
        layers = [m for m in model.modules() if isinstance(m, CrossAttention)]
        if not layers:
            raise ValueError("attention maps need a text model (one with cross-attention)")
        self._sum, self._calls, self._rows = None, 0, rows
        for layer in layers:
            layer.recorder = self._record
        try:
            yield
        finally:
            for layer in layers:
                layer.recorder = None
        if self._sum is not None:
            self._parts.append((self._sum / self._calls).cpu())

    def finish(self, grid: tuple[int, int, int]) -> None:
        self.maps = torch.cat(self._parts) if self._parts else None
        self.grid = grid


def _batch(cond: Mapping[str, Any], lo: int, hi: int, device) -> dict[str, Any]:
    return {k: take_rows(v, lo, hi, device) for k, v in cond.items()}


@torch.no_grad()
def generate(
    model: nn.Module,
    transport: TransportConfig,
    num: int,
    *,
    cond: Mapping[str, Any] | None = None,
    seed: int = 0,
    sampler: str = "heun",
    steps: int = 50,
    guidance_scale: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    autocast: torch.dtype | None = None,
    cuda_graphs: bool = False,
    progress: bool = False,
    output: OutputStage = to_images,
    attention: AttentionMaps | None = None,
    **sampler_kw: Any,
) -> torch.Tensor:
    """Draw ``num`` samples of ``model`` (left in eval mode on ``device``), on the CPU.

    Args:
        cond: the model's conditions for all ``num`` samples (tensors with ``num`` rows; see
            ``grid_conditions``); guided against ``model.null_conditions`` when
            ``guidance_scale != 1``.
        seed: the starting noise and the SDE noise are functions of it (and the sample index).
        autocast: run the model under autocast in this dtype (None: the weights' dtype).
        cuda_graphs: replay each model call as a captured CUDA graph (CUDA only).
        output: applied to each batch of samples (``to_images`` clamps to [-1, 1]).
        attention: records a text model's cross-attention maps (``AttentionMaps``); the model
            then runs its attention explicitly, without SDPA's fused kernels (and no graphs).

    The same call on the same machine gives the same bits, whatever ``progress`` says. The
    noise does not depend on ``batch_size``; other batch sizes still differ by rounding, as
    matrix kernels round differently for different batch sizes (by about 1e-6 with the fixed
    step samplers; dopri5 picks its steps per batch, so there only to its tolerance).

    Raises:
        ValueError: a bad argument or condition, before any sampling.
    """
    if num < 1 or batch_size < 1 or steps < 1:
        raise ValueError(
            f"num, batch_size and steps must be >= 1, got {num}, {batch_size}, {steps}"
        )
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, got {sampler!r}")
    if not guidance_scale >= 0:
        raise ValueError(f"guidance scale must be >= 0, got {guidance_scale}")
    device = torch.device(device)
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs needs a CUDA device, got {device}")
    if cuda_graphs and attention is not None:
        raise ValueError("attention maps are recorded eagerly: turn cuda_graphs off")
    cond = dict(cond or {})
    names = set(model.condition_names)
    if set(cond) != names:
        raise ValueError(
            f"conditions {sorted(cond)} given; this model takes {model.conditioner.describe()}"
        )
    if guidance_scale != 1.0 and not names:
        raise ValueError("classifier-free guidance needs a conditional model")
    for name, value in cond.items():
        rows = num_rows(value) if isinstance(value, (torch.Tensor, tuple)) else len(value)
        if rows != num:
            raise ValueError(f"condition {name} has {rows} rows for {num} samples")
    model = model.to(device).eval()
    cfg = model.config
    noise = initial_noise(num, (cfg.in_channels, *cfg.input_size), seed)
    sde = sampler.startswith("sde")

    call = GraphCache(model, autocast) if cuda_graphs else model
    cast = (
        (lambda: torch.autocast(device.type, dtype=autocast))
        if autocast not in (None, torch.float32) and not cuda_graphs
        else contextlib.nullcontext
    )
    velocity = as_velocity(call, transport.prediction, transport.path)
    t_start, t_end = (None, None) if sde else transport.sample_interval()
    out = []
    for lo in range(0, num, batch_size):
        x = noise[lo : lo + batch_size].to(device)
        part = _batch(cond, lo, lo + len(x), device)
        fn, kwargs = guided(
            velocity, part, model.null_conditions(part), guidance_scale, guidance_interval
        )
        gens = [sde_generator(seed, i, device) for i in range(lo, lo + len(x))] if sde else None
        record = attention.attached(model, len(x)) if attention else contextlib.nullcontext()
        with cast(), record:
            samples = sample(
                fn, x, sampler, steps, transport.path, model_kwargs=kwargs, t_start=t_start,
                t_end=t_end, generator=gens, progress=progress, **sampler_kw,
            )  # fmt: skip
        out.append(output(samples.float()).cpu())
    if attention is not None:
        g = model.grid.shape_of_size(tuple(noise.shape[2:]))
        attention.finish((g.frames, g.height, g.width))
    return torch.cat(out)
