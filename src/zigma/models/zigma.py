"""The ZigMa backbone (paper §3.2, Fig. 4): a DiT-style stack whose token mixer is a Mamba
scan, with a per-layer scan plan (images: layer i scans with S_(i mod K); videos: spatial,
temporal and volume layers, ``zigma.models.plans``) and adaLN-Zero modulation.

No attention anywhere in the token mixer; the scan order costs no parameters. The same class
builds the Mamba baselines: sweep, Vision-Mamba bidirectional and the K-direction parallel scan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from zigma.models.backbone import BackboneConfig, DiffusionBackbone, require
from zigma.models.grid import GridShape
from zigma.models.layers import (
    AdaLN,
    CrossAttention,
    FinalLayer,
    gated_residual,
    make_norm,
    modulate,
    zero_,
)
from zigma.models.plans import (
    LayerPlan,
    build_plans,
    check_pattern,
    fold_tokens,
    layer_folds,
    spatial_orders,
    unfold_tokens,
    volume_orders,
)
from zigma.models.registry import register_family, sized_presets
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
        scan_pattern: video models only: the layers' kinds as letters repeated over the depth,
            s (spatial), t (temporal) and v (volume); None: "sst" (``zigma.models.plans``).
    """

    uses_scan: ClassVar[bool] = True

    scan: ScanSchedule = "zigzag"
    num_orders: int | None = None  # None: 8 for zigzag/hilbert/random, 1 for sweep/bidirectional
    scan_seed: int = 0  # seed of the "random" schedule
    scan_mode: Literal["layerwise", "parallel"] = "layerwise"
    scan_pattern: str | None = None
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
        require(
            self.scan_mode == "layerwise" or not self.is_video,
            "scan_mode='parallel' is an image baseline; video models scan layerwise",
        )
        check_pattern(self.scan_pattern, self.is_video)
        if self.is_video and "v" in (self.scan_pattern or ""):
            require(
                self.scan != "hilbert",
                "scan='hilbert' has no 3-D orders for volume (v) layers of scan_pattern",
            )


class ZigMaBlock(nn.Module):
    """norm -> adaLN (shift, scale) -> Mamba over this layer's plan -> gated residual; a text
    model then adds norm -> adaLN -> cross-attention to the text tokens -> gated residual
    (paper §3.2, Fig. 4), with its own shift, scale and gate.

    The plan folds frames or spatial locations into the batch where the layer scans them on
    their own, gathers the tokens into the layer's order, and undoes both afterwards; in the
    parallel scan mode the mixer is a ``ParallelMamba`` and the plan holds all K orders.
    """

    def __init__(self, config: ZigMaConfig):
        super().__init__()
        d = config.hidden_size
        self.norm = make_norm(config.norm, d)
        self.adaLN = AdaLN(d, 6 if config.has_text else 3)
        mamba = {"d_state": config.d_state, "d_conv": config.d_conv, "expand": config.expand}
        if config.scan_mode == "parallel":
            self.mixer = ParallelMamba(d, config.num_orders, **mamba)
        else:
            self.mixer = Mamba(d, bidirectional=config.scan == "bidirectional", **mamba)
        if config.has_text:
            self.norm2 = make_norm(config.norm, d)
            self.cross_attn = CrossAttention(d, config.cross_attn_heads, config.cross_attn_head_dim)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        plan: LayerPlan,
        shape: GridShape,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # x [B, L, D], c [B, D], context [B, S, D]
        mods = self.adaLN(c)
        shift, scale, gate = mods[:3]
        h = fold_tokens(modulate(self.norm(x), shift, scale), plan.fold, shape)  # [B', L', D]
        h = self.mixer(h, plan.order, plan.inverse)
        x = gated_residual(x, gate, unfold_tokens(h, plan.fold, shape))
        if len(mods) == 3:
            return x
        shift, scale, gate = mods[3:]
        h = self.cross_attn(modulate(self.norm2(x), shift, scale), context, context_mask)
        return gated_residual(x, gate, h)


class ZigMa(DiffusionBackbone):
    """ZigMa denoiser: ``model(x, t, **cond)`` -> prediction with x's shape.

    x is [B, C, H, W] or [B, C, T, H, W] (pixels or latents), t is [B] (or a scalar) time in
    [0, 1], ``cond`` the model's conditions (``y`` [B] class labels for a class-conditional
    model, ``text=(tokens, mask)`` for a text model; ``model.null_conditions`` gives their null
    values for guidance).
    """

    config: ZigMaConfig

    def __init__(self, config: ZigMaConfig):
        super().__init__(config)  # token grid, time and condition embedders
        d = config.hidden_size
        self.blocks = nn.ModuleList(ZigMaBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, self.grid.patch_volume, config.out_channels, config.norm)
        self.folds = layer_folds(config.scan_pattern, config.depth, config.is_video)
        # Orders for the configured grid are saved with the weights, so a "random" model
        # reloads with exactly the permutations it was trained with, whatever the RNG does.
        tables = self._order_tables(config.grid_shape)
        spatial = tables.get("frames" if config.is_video else "none")
        if spatial is not None:
            self.register_buffer("scan_orders", spatial)
        if tables.get("none") is not None and config.is_video:
            self.register_buffer("volume_orders", tables["none"])
        self._plan_cache: dict[tuple, list[LayerPlan]] = {}
        self.initialize_weights()

    # -- construction -------------------------------------------------------------------------
    def _order_tables(self, shape: GridShape) -> dict[str, torch.Tensor | None]:
        """The K orders of each fold the schedule uses, built for grid ``shape``."""
        cfg = self.config
        args = (cfg.scan, cfg.num_orders, cfg.scan_seed, shape)
        used = {fold for fold, _ in self.folds}
        tables: dict[str, torch.Tensor | None] = {}
        if not cfg.is_video:
            tables["none"] = spatial_orders(*args)
            return tables
        if "frames" in used:
            tables["frames"] = spatial_orders(*args)
        if "none" in used:
            tables["none"] = volume_orders(*args)
        return tables

    def initialize_weights(self) -> None:
        """Every special-case init in one place (Mamba's own dt/A init is kept)."""
        if self.is_meta:
            return
        config = self.config
        self._init_embedders()  # xavier patch embed, sin-cos table, N(0, 0.02) time/labels
        for block in self.blocks:
            # adaLN-Zero: every block starts as the identity (a fresh text model as the
            # unconditional one: the cross-attention's gate is zero too)
            zero_(block.adaLN.linear)
            if config.has_text:
                for lin in (block.cross_attn.q, block.cross_attn.kv, block.cross_attn.proj):
                    nn.init.xavier_uniform_(lin.weight)
                    nn.init.zeros_(lin.bias)
            # GPT-2/Mamba residual rescale: keep the stream's variance independent of depth.
            block.mixer.out_proj.weight.data.div_(math.sqrt(self.config.depth))
        # untrained model outputs exactly zero
        zero_(self.final_layer.adaLN.linear, self.final_layer.linear)

    # -- helpers ------------------------------------------------------------------------------
    def plans(self, shape: GridShape, device: torch.device) -> list[LayerPlan]:
        """Every layer's scan plan for token grid ``shape`` on ``device`` (cached)."""
        key = (shape, str(device))
        if key not in self._plan_cache:
            cfg = self.config
            if shape == cfg.grid_shape:  # the stored orders (a random schedule's own)
                tables = {"frames" if cfg.is_video else "none": self._buffers.get("scan_orders")}
                if cfg.is_video:
                    tables["none"] = self._buffers.get("volume_orders")
                tables = {k: v.cpu() if v is not None else None for k, v in tables.items()}
            else:
                tables = self._order_tables(shape)
            parallel = cfg.scan_mode == "parallel"
            self._plan_cache[key] = build_plans(self.folds, tables, shape, parallel, device)
        return self._plan_cache[key]

    def check_loaded(self) -> None:
        """Saved scan orders must be permutations: building the plans checks them."""
        self._plan_cache.clear()
        self.plans(self.config.grid_shape, torch.device("cpu"))

    def _load_from_state_dict(self, *args, **kwargs):
        self._plan_cache.clear()  # loaded orders replace the cached ones
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
    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        shape, tokens, conditioning = self.prepare(x, t, cond)  # tokens [B, L, D]
        c = conditioning.vector  # [B, D]
        context, mask = self.text_context(conditioning)  # [B, S, D], [B, S] or None
        for block, plan in zip(self.blocks, self.plans(shape, x.device), strict=True):
            tokens = self.run_block(block, tokens, c, plan, shape, context, mask)
        out = self.final_layer(tokens, c)  # [B, L, pt*p*p*C_out]
        return self.grid.unpatchify(out, shape)


_MAMBA_DEPTHS = {"S": 24, "B": 24, "L": 48, "XL": 56}
register_family(
    "ZigMa",
    ZigMa,
    ZigMaConfig,
    {
        **sized_presets("ZigMa", _MAMBA_DEPTHS),
        **sized_presets("Sweep", _MAMBA_DEPTHS, {"scan": "sweep"}),
        **sized_presets("Vim", {"S": 23, "B": 23, "L": 46, "XL": 54}, {"scan": "bidirectional"}),
        **sized_presets(
            "ZigMa-par4",
            {"S": 21, "B": 21, "L": 43, "XL": 50},
            {"scan_mode": "parallel", "num_orders": 4},
        ),
        **sized_presets(
            "ZigMa-par8",
            {"S": 17, "B": 19, "L": 38, "XL": 44},
            {"scan_mode": "parallel", "num_orders": 8},
        ),
    },
)
