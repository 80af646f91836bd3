"""U-ViT baseline (Bao et al., 2023; ZigMa paper Table 5, Fig. 6a/b): a ViT that treats time,
class and image patches all as tokens, with long skip connections from the shallow half of the
blocks to the deep half.

Token grid, time and class embedders, input checks and save/load are ZigMa's
(``DiffusionBackbone``); attention goes through ``F.scaled_dot_product_attention``. Differences
from the U-ViT code: the time token comes from ZigMa's timestep MLP, the patch-token positions
may be sin-cos or none, and the learnable table starts from the sin-cos one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zigma.models.backbone import BackboneConfig, DiffusionBackbone, require
from zigma.models.layers import Attention, Mlp
from zigma.models.registry import register_family, sized_presets


@dataclass
class UViTConfig(BackboneConfig):
    """Architecture of a U-ViT. Presets (``U-ViT-B/2`` ...) fill in width/depth/heads/patch.

    Attributes (besides ``BackboneConfig``'s):
        depth: number of transformer blocks, odd: ``depth // 2`` in-blocks, a middle block and
            ``depth // 2`` out-blocks, out-block i taking a long skip from in-block
            ``depth // 2 - 1 - i``.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP width / model width.
        qkv_bias: bias in the query/key/value projection (U-ViT: none).
        final_conv: a 3x3 conv on the unpatchified output, as U-ViT does by default.
    """

    hidden_size: int = 768
    depth: int = 17
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    final_conv: bool = True

    def validate(self) -> None:
        super().validate()
        require(self.depth % 2 == 1, f"U-ViT depth must be odd (in, mid, out), got {self.depth}")
        require(self.num_heads >= 1, f"num_heads must be >= 1, got {self.num_heads}")
        require(
            self.hidden_size % self.num_heads == 0,
            f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}",
        )
        require(self.mlp_ratio > 0, f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        require(
            self.text_dim == 0,
            "U-ViT has no text conditioning in zigma; for text use ZigMa or DiT (text_dim > 0 "
            "adds cross-attention to them)",
        )


class UViTBlock(nn.Module):
    """Pre-norm attention + MLP; an out-block first fuses its long skip: Linear(concat)."""

    def __init__(self, config: UViTConfig, skip: bool = False):
        super().__init__()
        d = config.hidden_size
        self.skip_linear = nn.Linear(2 * d, d) if skip else None
        self.norm1 = nn.LayerNorm(d)
        self.attn = Attention(d, config.num_heads, qkv_bias=config.qkv_bias)
        self.norm2 = nn.LayerNorm(d)
        self.mlp = Mlp(d, int(d * config.mlp_ratio), approximate="none")

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # [B, E+L, D]
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(DiffusionBackbone):
    """U-ViT denoiser: ``model(x, t, **cond)`` -> prediction with x's shape (as ``ZigMa``)."""

    config: UViTConfig

    def __init__(self, config: UViTConfig):
        super().__init__(config)  # token grid, time and condition embedders
        d, c_out = config.hidden_size, config.out_channels
        half = config.depth // 2
        # one condition token each for time and every condition with a vector (the class)
        extra = 1 + len(self.conditioner.names)
        self.extra_pos_embed = nn.Parameter(torch.zeros(1, extra, d))
        self.in_blocks = nn.ModuleList(UViTBlock(config) for _ in range(half))
        self.mid_block = UViTBlock(config)
        self.out_blocks = nn.ModuleList(UViTBlock(config, skip=True) for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, self.grid.patch_volume * c_out)
        conv = nn.Conv3d if config.is_video else nn.Conv2d
        self.final_conv = conv(c_out, c_out, 3, padding=1) if config.final_conv else None
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """U-ViT's init: truncated N(0, 0.02) for linear weights and the condition tokens'
        positions, zero biases, unit LayerNorms; then the shared embedders' init. The final
        conv keeps torch's default. The output is not zero at init (no adaLN-Zero)."""
        if self.is_meta:
            return
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.extra_pos_embed, std=0.02)
        self._init_embedders()  # xavier patch embed, sin-cos table, N(0, 0.02) time/labels

    def forward(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        shape, patches, conditioning = self.prepare(x, t, cond)  # patches [B, L, D]
        extra = [conditioning.time, *conditioning.vectors.values()]  # one token each
        extra = torch.stack(extra, dim=1) + self.extra_pos_embed  # [B, E, D]
        tokens = torch.cat([extra, patches], dim=1)  # [B, E+L, D]
        skips = []
        for block in self.in_blocks:
            tokens = self.run_block(block, tokens)
            skips.append(tokens)
        tokens = self.run_block(self.mid_block, tokens)
        for block in self.out_blocks:
            tokens = self.run_block(block, tokens, skips.pop())
        tokens = self.norm(tokens)[:, extra.shape[1] :]  # drop the condition tokens [B, L, D]
        out = self.grid.unpatchify(self.decoder_pred(tokens), shape)  # [B, C_out, (T,) H, W]
        return out if self.final_conv is None else self.final_conv(out)


register_family(
    "UViT",
    UViT,
    UViTConfig,
    sized_presets("U-ViT", {"S": 17, "B": 17, "L": 35, "XL": 41}, heads=True),
)
