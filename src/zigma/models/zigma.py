"""The ZigMa backbone (paper §3.2, Fig. 4): a DiT-style stack whose token mixer is a Mamba
scan, with a per-layer scan order (layer i scans with S_(i mod K)) and adaLN-Zero modulation.

No attention anywhere in the token mixer; the scan order costs no parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zigma.models.layers import (
    AdaLN,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    make_norm,
    modulate,
    sincos_2d,
    unpatchify,
)
from zigma.scan import inverse_orders, scan_orders
from zigma.ssm import Mamba

ScanSchedule = Literal["zigzag", "sweep", "hilbert", "random", "bidirectional"]
SCAN_SCHEDULES: tuple[str, ...] = ("zigzag", "sweep", "hilbert", "random", "bidirectional")

# Default number of orders per schedule; sweep and the bidirectional baseline have one path.
_DEFAULT_NUM_ORDERS = {"zigzag": 8, "hilbert": 8, "random": 8, "sweep": 1, "bidirectional": 1}


@dataclass
class ZigMaConfig:
    """Architecture of a ZigMa model. Presets (``ZigMa-B/2`` ...) fill in width/depth/patch.

    Attributes:
        input_size: (H, W) of the input image or latent the model is built for; with
            ``pos_embed`` "none" or "sincos" other sizes divisible by the patch also run.
        scan: the layer-wise scan schedule. "zigzag" (paper), "hilbert", "random" use
            ``num_orders`` orders, layer i taking order ``i % num_orders``; "sweep" scans every
            layer in raster order; "bidirectional" is the Vision-Mamba baseline (raster order
            forwards and backwards in every block, with a second set of SSM parameters).
        num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1 plus a
            null class ``num_classes`` for classifier-free guidance.
    """

    input_size: tuple[int, int] = (32, 32)
    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels
    patch_size: int = 2
    hidden_size: int = 768
    depth: int = 24
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    scan: ScanSchedule = "zigzag"
    num_orders: int | None = None  # None: 8 for zigzag/hilbert/random, 1 for sweep/bidirectional
    scan_seed: int = 0  # seed of the "random" schedule
    pos_embed: Literal["none", "sincos", "learnable"] = "learnable"
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = (self.input_size, self.input_size)
        self.input_size = tuple(int(s) for s in self.input_size)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        if self.num_orders is None and self.scan in _DEFAULT_NUM_ORDERS:
            self.num_orders = _DEFAULT_NUM_ORDERS[self.scan]
        self.validate()

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        need(
            self.scan in SCAN_SCHEDULES,
            f"scan must be one of {list(SCAN_SCHEDULES)}, got {self.scan!r}",
        )
        need(len(self.input_size) == 2, f"input_size must be (H, W), got {self.input_size}")
        need(self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}")
        for name, s in zip(("height", "width"), self.input_size, strict=True):
            need(
                s >= 1 and s % self.patch_size == 0,
                f"input {name} {s} is not a positive multiple of patch_size {self.patch_size}",
            )
        for name in (
            "in_channels",
            "out_channels",
            "hidden_size",
            "depth",
            "d_state",
            "d_conv",
            "expand",
        ):
            need(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        need(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        need(
            0.0 <= self.class_dropout_prob < 1.0,
            f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}",
        )
        if self.scan in ("zigzag", "hilbert"):
            need(
                self.num_orders in (1, 2, 4, 8),
                f"num_orders for scan={self.scan!r} must be 1, 2, 4 or 8, got {self.num_orders}",
            )
        elif self.scan == "random":
            need(self.num_orders >= 1, f"num_orders must be >= 1, got {self.num_orders}")
        else:
            need(
                self.num_orders == 1,
                f"scan={self.scan!r} has a single order; got num_orders={self.num_orders}",
            )
        if self.pos_embed == "sincos":
            need(
                self.hidden_size % 4 == 0,
                f"sincos pos_embed needs hidden_size % 4 == 0, got {self.hidden_size}",
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """Tokens per side (h, w) at the configured input size."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size


class ZigMaBlock(nn.Module):
    """norm -> adaLN (shift, scale) -> Mamba in this layer's scan order -> gated residual."""

    def __init__(self, config: ZigMaConfig):
        super().__init__()
        d = config.hidden_size
        self.norm = make_norm(config.norm, d)
        self.adaLN = AdaLN(d, 3)
        self.mixer = Mamba(
            d, d_state=config.d_state, d_conv=config.d_conv, expand=config.expand,
            bidirectional=config.scan == "bidirectional",
        )  # fmt: skip

    def forward(self, x, c, order=None, inverse=None):  # x [B, L, D], c [B, D]
        shift, scale, gate = self.adaLN(c)
        h = self.mixer(modulate(self.norm(x), shift, scale), order, inverse)
        return x + gate.unsqueeze(1) * h


class ZigMa(nn.Module):
    """ZigMa denoiser: ``model(x, t, y=None)`` -> prediction with x's shape.

    x is [B, C, H, W] (image or latent), t is [B] (or a scalar) time in [0, 1], y is [B] class
    labels (only for class-conditional models; ``model.null_class`` is the CFG null label).
    """

    def __init__(self, config: ZigMaConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(config.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
            if config.num_classes > 0 else None
        )  # fmt: skip
        h, w = config.grid_size
        if config.pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, h * w, d))
        self.blocks = nn.ModuleList(ZigMaBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, p, config.out_channels, config.norm)
        # Orders for the configured grid are saved with the weights, so a "random" model
        # reloads with exactly the permutations it was trained with, whatever the RNG does.
        orders = self._build_orders(h, w)
        if orders is not None:
            self.register_buffer("scan_orders", orders)
        self._order_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.grad_checkpointing = False
        self.initialize_weights()

    # -- construction -------------------------------------------------------------------------
    def _build_orders(self, h: int, w: int) -> torch.Tensor | None:
        cfg = self.config
        if cfg.scan in ("sweep", "bidirectional"):
            return None  # raster order: no gather at all
        return scan_orders(cfg.scan, h, w, num=cfg.num_orders, seed=cfg.scan_seed)

    def initialize_weights(self) -> None:
        """Every special-case init in one place (Mamba's own dt/A init is kept)."""
        cfg = self.config
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer on flat patches
        nn.init.zeros_(self.x_embedder.proj.bias)
        if cfg.pos_embed == "learnable":  # start from the fixed table when it exists
            if cfg.hidden_size % 4 == 0:
                self.pos_embed.data.copy_(sincos_2d(cfg.hidden_size, *cfg.grid_size)[None])
            else:
                nn.init.normal_(self.pos_embed, std=0.02)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding.weight, std=0.02)
        for block in self.blocks:
            # adaLN-Zero: every block starts as the identity.
            nn.init.zeros_(block.adaLN.linear.weight)
            nn.init.zeros_(block.adaLN.linear.bias)
            # GPT-2/Mamba residual rescale: keep the stream's variance independent of depth.
            block.mixer.out_proj.weight.data.div_(math.sqrt(cfg.depth))
        nn.init.zeros_(self.final_layer.adaLN.linear.weight)
        nn.init.zeros_(self.final_layer.adaLN.linear.bias)
        nn.init.zeros_(self.final_layer.linear.weight)  # untrained model outputs exactly zero
        nn.init.zeros_(self.final_layer.linear.bias)

    # -- helpers ------------------------------------------------------------------------------
    @property
    def null_class(self) -> int | None:
        """Label of the null class used for classifier-free guidance (None if unconditional)."""
        return None if self.y_embedder is None else self.y_embedder.null_class

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

    def _check_inputs(self, x, t, y):
        cfg = self.config
        if x.ndim != 4:
            raise ValueError(f"expected x of shape [B, C, H, W], got {tuple(x.shape)}")
        b, c, hh, ww = x.shape
        if c != cfg.in_channels:
            raise ValueError(
                f"model expects {cfg.in_channels} input channels, got {c} (x {tuple(x.shape)})"
            )
        p = cfg.patch_size
        if hh % p or ww % p:
            raise ValueError(f"input {hh}x{ww} is not divisible by patch_size {p}")
        if cfg.pos_embed == "learnable" and (hh, ww) != cfg.input_size:
            raise ValueError(
                f"this model's learnable positional embedding was built for {cfg.input_size[0]}x"
                f"{cfg.input_size[1]} inputs, got {hh}x{ww}; build it with pos_embed='sincos' or "
                "'none' to run other sizes"
            )
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape [{b}], got {tuple(t.shape)}")
        if self.y_embedder is None:
            if y is not None:
                raise ValueError(
                    "this model is unconditional (num_classes=0) but labels y were given"
                )
        else:
            if y is None:
                raise ValueError(
                    f"this model is class-conditional: pass labels y [B] in 0..{cfg.num_classes}"
                    f" ({cfg.num_classes} = null class)"
                )
            y = torch.as_tensor(y, device=x.device)
            if y.shape != (b,) or y.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"y must be integer labels of shape [{b}], got {y.dtype} {tuple(y.shape)}"
                )
            # Range check only off-GPU: on CUDA it would force a device sync every step.
            if not y.is_cuda and (y.min() < 0 or y.max() > cfg.num_classes):
                raise ValueError(f"labels must be in 0..{cfg.num_classes}, got {y.tolist()}")
        return t, y

    # -- forward ------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        t, y = self._check_inputs(x, t, y)
        p = self.config.patch_size
        h, w = x.shape[2] // p, x.shape[3] // p
        tokens = self.x_embedder(x)  # [B, L, D] raster order
        if self.config.pos_embed == "learnable":
            tokens = tokens + self.pos_embed
        elif self.config.pos_embed == "sincos":
            tokens = tokens + sincos_2d(self.config.hidden_size, h, w).to(tokens)
        c = self.t_embedder(t)  # [B, D]
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        orders, inverse = self.orders_for(h, w, x.device)
        for i, block in enumerate(self.blocks):
            k = i % self.config.num_orders
            args = (tokens, c) if orders is None else (tokens, c, orders[k], inverse[k])
            if self.grad_checkpointing and self.training:
                tokens = checkpoint(block, *args, use_reentrant=False)
            else:
                tokens = block(*args)
        out = self.final_layer(tokens, c)  # [B, L, p*p*C_out]
        return unpatchify(out, h, w, p)

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle)."""
        from zigma.models.io import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls, directory, map_location="cpu") -> ZigMa:
        """Rebuild a model saved with ``save_pretrained`` exactly."""
        from zigma.models.io import from_pretrained

        model = from_pretrained(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
