"""DiT baseline (Peebles & Xie, 2023; ZigMa paper Table 5, Fig. 6a/b): the ZigMa stack with
self-attention + MLP blocks under adaLN-Zero instead of the Mamba mixer.

Token grid, conditioning, final layer, input checks and save/load are ZigMa's
(``DiffusionBackbone``); attention goes through ``F.scaled_dot_product_attention``. On a video
every token attends to every other (full spatio-temporal attention), unless ``attn_pattern``
factorises it as Latte / Open-Sora's STDiT do: an ``s`` layer attends within each frame, a
``t`` layer across frames at each spatial location, a ``v`` layer over the whole clip. The
layers fold their tokens with the scan plans' folds (``zigma.models.plans``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from zigma.models.backbone import BackboneConfig, DiffusionBackbone, require
from zigma.models.grid import GridShape
from zigma.models.layers import (
    AdaLN,
    Attention,
    CrossAttention,
    FinalLayer,
    Mlp,
    gated_residual,
    make_norm,
    modulate,
    zero_,
)
from zigma.models.plans import check_pattern, fold_tokens, layer_folds, unfold_tokens
from zigma.models.registry import register_family, sized_presets


@dataclass
class DiTConfig(BackboneConfig):
    """Architecture of a DiT. Presets (``DiT-B/2`` ...) fill in width/depth/heads/patch.

    Attributes (besides ``BackboneConfig``'s): ``num_heads`` attention heads (must divide
    ``hidden_size``), ``mlp_ratio`` MLP width / model width, ``attn_pattern`` (video models
    only) the layers' attention as letters repeated over the depth: ``s`` within each frame,
    ``t`` per spatial location across frames, ``v`` over the whole clip; None: full attention
    in every layer (``"v"``), Latte / STDiT: ``"st"``. DiT's default positional embedding is
    the fixed 2-D sin-cos table, which also lets other input sizes run.
    """

    hidden_size: int = 768
    depth: int = 12
    pos_embed: Literal["none", "sincos", "learnable"] = "sincos"
    num_heads: int = 12
    mlp_ratio: float = 4.0
    attn_pattern: str | None = None

    def validate(self) -> None:
        super().validate()
        require(self.num_heads >= 1, f"num_heads must be >= 1, got {self.num_heads}")
        require(
            self.hidden_size % self.num_heads == 0,
            f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
        )
        require(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        check_pattern(self.attn_pattern, self.is_video, name="attn_pattern")


class DiTBlock(nn.Module):
    """adaLN-Zero block: gated attention then gated MLP, each on a modulated norm. A text model
    puts a cross-attention to the text tokens between them, unmodulated, on a plain norm, as
    PixArt-alpha does (its output projection starts at zero: a fresh model ignores the text).

    ``fold`` ("none", "frames" or "locations") groups the tokens the self-attention sees;
    the cross-attention and MLP always see every token.
    """

    def __init__(self, config: DiTConfig):
        super().__init__()
        d = config.hidden_size
        self.norm1 = make_norm("layernorm", d)
        self.attn = Attention(d, config.num_heads, qkv_bias=True)
        self.norm2 = make_norm("layernorm", d)
        self.mlp = Mlp(d, int(d * config.mlp_ratio), approximate="tanh")
        self.adaLN = AdaLN(d, 6)
        if config.has_text:
            self.norm_cross = make_norm("layernorm", d)
            self.cross_attn = CrossAttention(d, config.cross_attn_heads, config.cross_attn_head_dim)

    def forward(
        self,
        x: torch.Tensor,
        c: torch.Tensor,
        fold: str = "none",
        shape: GridShape | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:  # x [B, L, D], c [B, D], context [B, S, D]
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c)
        h = fold_tokens(modulate(self.norm1(x), shift1, scale1), fold, shape)  # [B', L', D]
        x = gated_residual(x, gate1, unfold_tokens(self.attn(h), fold, shape))
        if hasattr(self, "cross_attn"):
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask)
        return gated_residual(x, gate2, self.mlp(modulate(self.norm2(x), shift2, scale2)))


class DiT(DiffusionBackbone):
    """DiT denoiser: ``model(x, t, **cond)`` -> prediction with x's shape (as ``ZigMa``)."""

    config: DiTConfig

    def __init__(self, config: DiTConfig):
        super().__init__(config)  # token grid, time and condition embedders
        d = config.hidden_size
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        # each layer's fold; "v" (full attention) for images and when no pattern is given
        self.folds = [
            f for f, _ in layer_folds(config.attn_pattern or "v", config.depth, config.is_video)
        ]
        self.final_layer = FinalLayer(d, self.grid.patch_volume, config.out_channels, "layernorm")
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier-uniform for every linear layer, zero biases, then the special
        cases. Starts as the zero function: every adaLN output and the final linear are zero."""
        if self.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self._init_embedders()  # xavier patch embed, sin-cos table, N(0, 0.02) time/labels
        for block in self.blocks:
            zero_(block.adaLN.linear)
            if hasattr(block, "cross_attn"):
                zero_(block.cross_attn.proj)
        zero_(self.final_layer.adaLN.linear, self.final_layer.linear)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        shape, tokens, conditioning = self.prepare(x, t, cond)  # tokens [B, L, D]
        c = conditioning.vector  # [B, D]
        context, mask = self.text_context(conditioning)  # [B, S, D], [B, S] or None
        for block, fold in zip(self.blocks, self.folds, strict=True):
            tokens = self.run_block(block, tokens, c, fold, shape, context, mask)  # [B, L, D]
        out = self.final_layer(tokens, c)  # [B, L, pt*p*p*C_out]
        return self.grid.unpatchify(out, shape)


register_family(
    "DiT", DiT, DiTConfig, sized_presets("DiT", {"S": 12, "B": 12, "L": 24, "XL": 28}, heads=True)
)
