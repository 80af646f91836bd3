"""Layers shared by every backbone: sin-cos tables, the timestep embedding, adaLN modulation,
the final layer (DiT-style; paper §3.2, Fig. 4), the cross-attention of text models, and the
attention and MLP of the transformer baselines.

Baselines (DiT, U-ViT, Vision-Mamba) reuse these so that only the token mixer differs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with per-sample shift/scale [B, D] over x [B, L, D]
    (one fused kernel over x, not a multiply then an add)."""
    return torch.addcmul(shift.unsqueeze(1), x, 1 + scale.unsqueeze(1))


def gated_residual(x: torch.Tensor, gate: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``x + gate * h`` with a per-sample gate [B, D] over [B, L, D], as one kernel."""
    return torch.addcmul(x, gate.unsqueeze(1), h)


def make_norm(kind: str, dim: int, eps: float = 1e-6) -> nn.Module:
    """Norm without learnable affine: adaLN supplies the scale and shift."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, elementwise_affine=False, eps=eps)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, elementwise_affine=False, eps=eps)
    raise ValueError(f"unknown norm {kind!r}; choose 'layernorm' or 'rmsnorm'")


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """[len(positions), dim] sin/cos features at geometric frequencies 1 .. 1/10000."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even width, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, h: int, w: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table [h*w, dim] in raster order: half the width codes the row,
    half the column (MAE/DiT convention)."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a width divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, rows.flatten()), sincos_1d(dim // 2, cols.flatten())], 1)


class TimestepEmbedder(nn.Module):
    """Continuous time t in [0, 1] -> [B, D]: sinusoid of (t * t_scale), then a 2-layer MLP.

    t is scaled by 1000 as in the official ZigMa/SiT code, so frequencies cover the usual
    DDPM timestep range.
    """

    def __init__(self, hidden_size: int, freq_dim: int = 256, t_scale: float = 1000.0):
        super().__init__()
        self.freq_dim = freq_dim
        self.t_scale = t_scale
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def frequency_features(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, device=t.device) / half)
        args = (t.float() * self.t_scale)[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.frequency_features(t)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class AdaLN(nn.Module):
    """SiLU -> Linear(D -> n*D) producing n modulation vectors from the condition c [B, D].
    Zero-initialised by the model, so every modulated branch starts switched off."""

    def __init__(self, hidden_size: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(hidden_size, n * hidden_size)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(nn.functional.silu(c)).chunk(self.n, dim=-1)


class FinalLayer(nn.Module):
    """norm -> adaLN (shift, scale) -> Linear to the output pixels of a token
    (``patch_volume`` = pt*p*p of them, times ``out_channels``)."""

    def __init__(
        self, hidden_size: int, patch_volume: int, out_channels: int, norm: str = "layernorm"
    ):
        super().__init__()
        self.norm = make_norm(norm, hidden_size)
        self.adaLN = AdaLN(hidden_size, 2)
        self.linear = nn.Linear(hidden_size, patch_volume * out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c)
        return self.linear(modulate(self.norm(x), shift, scale))


class Attention(nn.Module):
    """Multi-head self-attention [B, L, D] -> [B, L, D] through
    ``F.scaled_dot_product_attention``, so FlashAttention / memory-efficient kernels run where
    available (no mask, no dropout)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"width {dim} is not divisible into {num_heads} heads")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(self.qkv(x), "b l (three h e) -> three b h l e", three=3, h=self.num_heads)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # [B, heads, L, D/heads]
        return self.proj(rearrange(out, "b h l e -> b l (h e)"))


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x [B, L, D], keys and values from a context
    [B, S, D] with a padding mask [B, S] (True = attend), through SDPA.

    ``recorder``, when set, is called with the attention weights averaged over heads [B, L, S]
    (computed explicitly then, for attention maps; SDPA does not return them).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        if num_heads < 1 or head_dim < 1:
            raise ValueError(f"cross-attention needs heads and head width >= 1, got "
                             f"{num_heads} x {head_dim}")  # fmt: skip
        inner = num_heads * head_dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, inner)
        self.kv = nn.Linear(dim, 2 * inner)
        self.proj = nn.Linear(inner, dim)
        self.recorder = None

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = rearrange(self.q(x), "b l (h e) -> b h l e", h=self.num_heads)
        k, v = rearrange(self.kv(context), "b s (two h e) -> two b h s e", two=2, h=self.num_heads)
        keep = mask[:, None, None, :]  # [B, 1, 1, S], broadcast over heads and queries
        if self.recorder is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        else:
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = scores.masked_fill(~keep, float("-inf")).softmax(-1)  # [B, H, L, S]
            self.recorder(weights.mean(1))
            out = weights @ v
        return self.proj(rearrange(out, "b h l e -> b l (h e)"))


class Mlp(nn.Module):
    """Token-wise Linear -> GELU -> Linear (DiT uses the tanh GELU, U-ViT the exact one)."""

    def __init__(self, dim: int, hidden: int, approximate: str = "tanh"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate=approximate)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def zero_(*layers: nn.Linear) -> None:
    """Zero the weight and bias of each layer (adaLN-Zero outputs, the zero-init final layer)."""
    for layer in layers:
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
