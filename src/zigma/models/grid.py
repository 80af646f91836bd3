"""The token grid: images [B, C, H, W] or videos [B, C, T, H, W] (pixels or latents) to patch
tokens [B, L, D] and back, with their positional embeddings.

Tokens are numbered frame-major, row-major within a frame (as ``zigma.scan`` numbers them):
token ``(f * h + r) * w + c`` is frame f, row r, column c of the token grid. A video patch may
span ``temporal_patch`` frames; its spatial side is ``patch_size``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from zigma.models.layers import sincos_1d, sincos_2d

POS_EMBEDS: tuple[str, ...] = ("none", "sincos", "learnable")


@dataclass(frozen=True)
class GridShape:
    """Tokens per axis of one input: ``frames`` (1 for an image) x ``height`` x ``width``."""

    frames: int
    height: int
    width: int

    @property
    def spatial(self) -> int:
        """Tokens per frame."""
        return self.height * self.width

    @property
    def length(self) -> int:
        return self.frames * self.height * self.width


class TokenGrid(nn.Module):
    """Patchify / unpatchify and positions for inputs of ``input_size`` (H, W) or (T, H, W).

    Positions are added to the tokens: none, the fixed sin-cos table (2-D over rows and
    columns; for video plus a 1-D table over frames) or learnable tables initialised from it
    (for video a spatial and a temporal table, summed: separable, so a clip's frames share
    the spatial table). Sin-cos and none accept any size divisible by the patch; learnable
    tables fix the size.
    """

    def __init__(
        self,
        input_size: tuple[int, ...],
        in_channels: int,
        hidden_size: int,
        patch_size: int,
        temporal_patch: int = 1,
        pos_embed: str = "learnable",
    ) -> None:
        super().__init__()
        self.input_size = tuple(input_size)
        self.video = len(self.input_size) == 3
        self.patch_size, self.temporal_patch = patch_size, temporal_patch
        self.hidden_size, self.pos_embed_kind = hidden_size, pos_embed
        if temporal_patch == 1:  # a video's frames are patched one by one with the 2-D conv
            self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        else:
            kernel = (temporal_patch, patch_size, patch_size)
            self.proj = nn.Conv3d(in_channels, hidden_size, kernel, stride=kernel)
        self.shape = self.shape_of_size(self.input_size)
        if pos_embed == "learnable":
            self.pos_embed = nn.Parameter(torch.zeros(1, self.shape.spatial, hidden_size))
            if self.video:
                self.temporal_pos_embed = nn.Parameter(
                    torch.zeros(1, self.shape.frames, hidden_size)
                )
        self._sincos: tuple[tuple, torch.Tensor] | None = None  # the last fixed table built

    @property
    def patch_volume(self) -> int:
        """Input pixels (per channel) in one token."""
        return self.temporal_patch * self.patch_size**2

    def shape_of_size(self, size: tuple[int, ...]) -> GridShape:
        frames = size[0] // self.temporal_patch if len(size) == 3 else 1
        return GridShape(frames, size[-2] // self.patch_size, size[-1] // self.patch_size)

    def check(self, x: torch.Tensor) -> GridShape:
        """The token grid of input ``x``; ValueError if ``x`` does not fit this grid."""
        want = "[B, C, T, H, W]" if self.video else "[B, C, H, W]"
        if x.ndim != len(self.input_size) + 2:
            kind = "a video" if self.video else "an image"
            raise ValueError(
                f"this model takes {kind} batch x of shape {want}, got {x.ndim}-D x of shape "
                f"{tuple(x.shape)}"
            )
        c = self.proj.in_channels
        if x.shape[1] != c:
            raise ValueError(f"model expects {c} input channels, got {x.shape[1]} (x {want})")
        size = tuple(x.shape[2:])
        p, pt = self.patch_size, self.temporal_patch
        if size[-2] % p or size[-1] % p:
            raise ValueError(f"input {size[-2]}x{size[-1]} is not divisible by patch_size {p}")
        if self.video and size[0] % pt:
            raise ValueError(f"{size[0]} frames are not divisible by temporal_patch {pt}")
        if self.pos_embed_kind == "learnable" and size != self.input_size:
            built = "x".join(map(str, self.input_size))
            got = "x".join(map(str, size))
            raise ValueError(
                f"this model's learnable positional embedding was built for {built} inputs, "
                f"got {got}; build it with pos_embed='sincos' or 'none' to run other sizes"
            )
        return self.shape_of_size(size)

    def forward(self, x: torch.Tensor, shape: GridShape) -> torch.Tensor:
        """[B, C, (T,) H, W] -> tokens [B, L, D] in frame-major raster order, positions added."""
        if not self.video:
            tokens = rearrange(self.proj(x), "b d h w -> b (h w) d")
        elif self.temporal_patch == 1:
            frames = rearrange(x, "b c t h w -> (b t) c h w")
            tokens = rearrange(self.proj(frames), "(b t) d h w -> b (t h w) d", t=shape.frames)
        else:
            tokens = rearrange(self.proj(x), "b d t h w -> b (t h w) d")
        if self.pos_embed_kind == "learnable":
            tokens = tokens + self._learnable_table(shape)
        elif self.pos_embed_kind == "sincos":
            tokens = tokens + self._sincos_table(shape, tokens)
        return tokens

    def _learnable_table(self, shape: GridShape) -> torch.Tensor:
        if not self.video:
            return self.pos_embed
        table = self.temporal_pos_embed[:, :, None] + self.pos_embed[:, None]  # [1, T, hw, D]
        return table.flatten(1, 2)

    def fixed_table(self, shape: GridShape) -> torch.Tensor:
        """The sin-cos table [L, D] of a grid (the learnable tables start from it)."""
        spatial = sincos_2d(self.hidden_size, shape.height, shape.width)  # [hw, D]
        if not self.video:
            return spatial
        temporal = sincos_1d(self.hidden_size, torch.arange(shape.frames))  # [T, D]
        return (temporal[:, None] + spatial[None]).flatten(0, 1)

    def _sincos_table(self, shape: GridShape, like: torch.Tensor) -> torch.Tensor:
        """The fixed table in ``like``'s dtype and device, kept between calls: building it on
        the host and copying it costs more than a DiT-B layer at 38k tokens, and a CUDA graph
        cannot capture the copy."""
        key = (shape, like.device, like.dtype)
        if self._sincos is None or self._sincos[0] != key:
            self._sincos = (key, self.fixed_table(shape).to(like))
        return self._sincos[1]

    def unpatchify(self, out: torch.Tensor, shape: GridShape) -> torch.Tensor:
        """[B, L, pt*p*p*C] -> [B, C, (T,) H, W]: the inverse of the token layout."""
        p, h, w = self.patch_size, shape.height, shape.width
        if not self.video:
            return rearrange(out, "b (h w) (p q c) -> b c (h p) (w q)", h=h, w=w, p=p, q=p)
        return rearrange(
            out,
            "b (t h w) (r p q c) -> b c (t r) (h p) (w q)",
            t=shape.frames,
            h=h,
            w=w,
            r=self.temporal_patch,
            p=p,
            q=p,
        )

    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The patch projection as a linear layer on flat patches (xavier), zero bias; the
        learnable tables from the sin-cos ones where the width allows, else N(0, 0.02)."""
        w = self.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.proj.bias)
        if self.pos_embed_kind != "learnable":
            return
        if self.hidden_size % 4 == 0:
            self.pos_embed.copy_(sincos_2d(self.hidden_size, self.shape.height, self.shape.width))
            if self.video:
                frames = torch.arange(self.shape.frames)
                self.temporal_pos_embed.copy_(sincos_1d(self.hidden_size, frames)[None])
        else:
            nn.init.normal_(self.pos_embed, std=0.02)
            if self.video:
                nn.init.normal_(self.temporal_pos_embed, std=0.02)
