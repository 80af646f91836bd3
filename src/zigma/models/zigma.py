"""The ZigMa backbone (paper §3.2, Fig. 4): a DiT-style stack whose token mixer is a Mamba
scan, with a per-layer scan order (layer i scans with S_(i mod K)) and adaLN-Zero modulation.

No attention anywhere in the token mixer; the scan order costs no parameters. The same class
builds the Mamba baselines: sweep, Vision-Mamba bidirectional and the K-direction parallel scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zigma.models.backbone import BackboneConfig, DiffusionBackbone, require
from zigma.models.layers import AdaLN, FinalLayer, gated_residual, make_norm, modulate, zero_
from zigma.scan import inverse_orders, scan_orders
from zigma.ssm import Mamba, ParallelMamba

ScanSchedule = Literal["zigzag", "sweep", "hilbert", "random", "bidirectional"]
SCAN_SCHEDULES: tuple[str, ...] = ("zigzag", "sweep", "hilbert", "random", "bidirectional")
SCAN_MODES: tuple[str, ...] = ("layerwise", "parallel")

# Default number of orders per schedule; sweep and the bidirectional baseline have one path.
_DEFAULT_NUM_ORDERS = {"zigzag": 8, "hilbert": 8, "random": 8, "sweep": 1, "bidirectional": 1}


@dataclass
class ZigMaConfig(BackboneConfig):
    """Architecture of a ZigMa model. Presets (``ZigMa-B/2`` ...) fill in width/depth/patch.

    Attributes (besides ``BackboneConfig``'s):
        scan: the scan schedule. "zigzag" (paper), "hilbert", "random" use ``num_orders``
            orders; "sweep" scans every layer in raster order; "bidirectional" is the
            Vision-Mamba baseline (raster order forwards and backwards in every block, with a
            second set of SSM parameters).
        scan_mode: "layerwise" (paper): layer i scans with order ``i % num_orders``.
            "parallel": the K-direction parallel baseline (paper Fig. 6c/d): every layer scans
            all ``num_orders`` orders at once with its own SSM parameters per order and averages
            them (``zigma.ssm.ParallelMamba``), so parameters grow with ``num_orders``.
    """

    scan: ScanSchedule = "zigzag"
    num_orders: int | None = None  # None: 8 for zigzag/hilbert/random, 1 for sweep/bidirectional
    scan_seed: int = 0  # seed of the "random" schedule
    scan_mode: Literal["layerwise", "parallel"] = "layerwise"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def __post_init__(self) -> None:
        if self.num_orders is None and self.scan in _DEFAULT_NUM_ORDERS:
            self.num_orders = _DEFAULT_NUM_ORDERS[self.scan]
        super().__post_init__()

    def validate(self) -> None:
        require(
            self.scan in SCAN_SCHEDULES,
            f"scan must be one of {list(SCAN_SCHEDULES)}, got {self.scan!r}",
        )
        super().validate()
        for name in ("d_state", "d_conv", "expand"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.scan in ("zigzag", "hilbert"):
            require(
                self.num_orders in (1, 2, 4, 8),
                f"num_orders for scan={self.scan!r} must be 1, 2, 4 or 8, got {self.num_orders}",
            )
        elif self.scan == "random":
            require(self.num_orders >= 1, f"num_orders must be >= 1, got {self.num_orders}")
        else:
            require(
                self.num_orders == 1,
                f"scan={self.scan!r} has a single order; got num_orders={self.num_orders}",
            )
        require(
            self.scan_mode in SCAN_MODES,
            f"scan_mode must be one of {list(SCAN_MODES)}, got {self.scan_mode!r}",
        )
        require(
            self.scan_mode == "layerwise" or self.scan in ("zigzag", "hilbert", "random"),
            f"scan_mode='parallel' needs a multi-order scan (zigzag, hilbert, random), "
            f"got scan={self.scan!r}",
        )


class ZigMaBlock(nn.Module):
    """norm -> adaLN (shift, scale) -> Mamba in this layer's scan order -> gated residual.

    In the parallel scan mode the mixer is a ``ParallelMamba`` and ``order``/``inverse`` hold
    all K orders ([K, L]) instead of one ([L]).
    """

    def __init__(self, config: ZigMaConfig):
        super().__init__()
        d = config.hidden_size
        self.norm = make_norm(config.norm, d)
        self.adaLN = AdaLN(d, 3)
        mamba = {"d_state": config.d_state, "d_conv": config.d_conv, "expand": config.expand}
        if config.scan_mode == "parallel":
            self.mixer = ParallelMamba(d, config.num_orders, **mamba)
        else:
            self.mixer = Mamba(d, bidirectional=config.scan == "bidirectional", **mamba)

    def forward(self, x, c, order=None, inverse=None):  # x [B, L, D], c [B, D]
        shift, scale, gate = self.adaLN(c)
        h = self.mixer(modulate(self.norm(x), shift, scale), order, inverse)
        return gated_residual(x, gate, h)


class ZigMa(DiffusionBackbone):
    """ZigMa denoiser: ``model(x, t, y=None)`` -> prediction with x's shape.

    x is [B, C, H, W] (image or latent), t is [B] (or a scalar) time in [0, 1], y is [B] class
    labels (only for class-conditional models; ``model.null_class`` is the CFG null label).
    """

    config: ZigMaConfig

    def __init__(self, config: ZigMaConfig):
        super().__init__(config)  # patch / time / label embedders, learnable positions
        d, p = config.hidden_size, config.patch_size
        self.blocks = nn.ModuleList(ZigMaBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, p, config.out_channels, config.norm)
        # Orders for the configured grid are saved with the weights, so a "random" model
        # reloads with exactly the permutations it was trained with, whatever the RNG does.
        orders = self._build_orders(*config.grid_size)
        if orders is not None:
            self.register_buffer("scan_orders", orders)
        self._order_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.initialize_weights()

    # -- construction -------------------------------------------------------------------------
    def _build_orders(self, h: int, w: int) -> torch.Tensor | None:
        cfg = self.config
        if cfg.scan in ("sweep", "bidirectional"):
            return None  # raster order: no gather at all
        return scan_orders(cfg.scan, h, w, num=cfg.num_orders, seed=cfg.scan_seed)

    def initialize_weights(self) -> None:
        """Every special-case init in one place (Mamba's own dt/A init is kept)."""
        if self.is_meta:
            return
        self._init_embedders()  # xavier patch embed, sin-cos table, N(0, 0.02) time/labels
        for block in self.blocks:
            zero_(block.adaLN.linear)  # adaLN-Zero: every block starts as the identity
            # GPT-2/Mamba residual rescale: keep the stream's variance independent of depth.
            block.mixer.out_proj.weight.data.div_(math.sqrt(self.config.depth))
        # untrained model outputs exactly zero
        zero_(self.final_layer.adaLN.linear, self.final_layer.linear)

    # -- helpers ------------------------------------------------------------------------------
    def orders_for(self, h: int, w: int, device: torch.device):
        """(orders [K, L], inverse [K, L]) for an h×w token grid, or (None, None) for raster."""
        if self.config.scan in ("sweep", "bidirectional"):
            return None, None
        key = (h, w, str(device))
        if key not in self._order_cache:
            same = (h, w) == self.config.grid_size
            orders = (self.scan_orders if same else self._build_orders(h, w)).cpu()
            # inverse computed (and validated) once on the CPU, then moved; cached per device
            self._order_cache[key] = (orders.to(device), inverse_orders(orders).to(device))
        return self._order_cache[key]

    def _load_from_state_dict(self, *args, **kwargs):
        self._order_cache.clear()  # loaded orders replace the cached ones
        super()._load_from_state_dict(*args, **kwargs)

    def set_scan_backend(self, backend: str) -> None:
        """Select the selective-scan backend ("auto", "reference", "chunked", ...) everywhere."""
        for block in self.blocks:
            block.mixer.backend = backend

    @property
    def recompute_scans(self) -> bool:
        """Whether training keeps only each scan branch's inputs and reruns the branch (conv,
        projections, scan) in the backward: about half a Mamba layer's activation memory for
        a second scan forward. A lighter form of ``grad_checkpointing``, which reruns whole
        blocks; not saved with the weights."""
        return self.blocks[0].mixer.recompute_branches if len(self.blocks) else False

    @recompute_scans.setter
    def recompute_scans(self, on: bool) -> None:
        for block in self.blocks:
            block.mixer.recompute_branches = bool(on)

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, y = self._check_inputs(x, t, y)
        h, w = self.token_grid(x)
        tokens = self.embed_patches(x)  # [B, L, D] raster order
        c = self.embed_condition(t, y)  # [B, D]
        orders, inverse = self.orders_for(h, w, x.device)
        parallel = self.config.scan_mode == "parallel"
        for i, block in enumerate(self.blocks):
            if orders is None:
                args = (tokens, c)
            elif parallel:  # every layer scans all K orders
                args = (tokens, c, orders, inverse)
            else:  # layer i scans order i mod K
                k = i % self.config.num_orders
                args = (tokens, c, orders[k], inverse[k])
            tokens = self.run_block(block, *args)
        out = self.final_layer(tokens, c)  # [B, L, p*p*C_out]
        return self.unpatchify(out, h, w)
