"""What every denoiser shares (ZigMa and the DiT / U-ViT baselines): the common config fields,
input checking, patch / time / class embedding, the null class for guidance, unpatchify, gradient
checkpointing and save/load. Subclasses add only their blocks and output head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zigma.models.layers import LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_2d, unpatchify

POS_EMBEDS: tuple[str, ...] = ("none", "sincos", "learnable")


def require(cond: bool, msg: str) -> None:
    """Config validation: raise ``ValueError(msg)`` unless ``cond``."""
    if not cond:
        raise ValueError(msg)


@dataclass
class BackboneConfig:
    """Fields every backbone config has (``ZigMaConfig``, ``DiTConfig``, ``UViTConfig``).

    Attributes:
        input_size: (H, W) of the input image or latent the model is built for; with
            ``pos_embed`` "none" or "sincos" other sizes divisible by the patch also run.
        num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1 plus a
            null class ``num_classes`` for classifier-free guidance.
        pos_embed: positional embedding of the patch tokens: a learnable table (initialised to
            the 2-D sin-cos one), the fixed sin-cos table, or none.
    """

    input_size: tuple[int, int] = (32, 32)
    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels
    patch_size: int = 2
    hidden_size: int = 768
    depth: int = 24
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    pos_embed: Literal["none", "sincos", "learnable"] = "learnable"

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = (self.input_size, self.input_size)
        self.input_size = tuple(int(s) for s in self.input_size)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field; subclasses extend it."""
        require(len(self.input_size) == 2, f"input_size must be (H, W), got {self.input_size}")
        require(self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}")
        for name, s in zip(("height", "width"), self.input_size, strict=True):
            require(
                s >= 1 and s % self.patch_size == 0,
                f"input {name} {s} is not a positive multiple of patch_size {self.patch_size}",
            )
        for name in ("in_channels", "out_channels", "hidden_size", "depth"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        require(self.num_classes >= 0, f"num_classes must be >= 0, got {self.num_classes}")
        require(
            0.0 <= self.class_dropout_prob < 1.0,
            f"class_dropout_prob must be in [0, 1), got {self.class_dropout_prob}",
        )
        require(
            self.pos_embed in POS_EMBEDS,
            f"pos_embed must be one of {list(POS_EMBEDS)}, got {self.pos_embed!r}",
        )
        if self.pos_embed == "sincos":
            require(
                self.hidden_size % 4 == 0,
                f"sincos pos_embed needs hidden_size % 4 == 0, got {self.hidden_size}",
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """Tokens per side (h, w) at the configured input size."""
        return self.input_size[0] // self.patch_size, self.input_size[1] // self.patch_size


ModelT = TypeVar("ModelT", bound="DiffusionBackbone")


class DiffusionBackbone(nn.Module):
    """A denoiser ``model(x, t, y=None)`` -> prediction with x's shape.

    x is [B, C, H, W] (image or latent), t is [B] (or a scalar) time in [0, 1], y is [B] class
    labels (only for class-conditional models; ``model.null_class`` is the CFG null label).

    Builds the patch, time and label embedders and the learnable positional table; a subclass
    adds its blocks and head, then calls its ``initialize_weights`` (which starts with
    ``_init_embedders``) last in ``__init__``.
    """

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        d, p = config.hidden_size, config.patch_size
        self.x_embedder = PatchEmbed(config.in_channels, d, p)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = (
            LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
            if config.num_classes > 0 else None
        )  # fmt: skip
        if config.pos_embed == "learnable":
            h, w = config.grid_size
            self.pos_embed = nn.Parameter(torch.zeros(1, h * w, d))
        self.grad_checkpointing = False
        self._sincos: tuple[tuple, torch.Tensor] | None = None  # the last fixed table built

    @property
    def is_meta(self) -> bool:
        """Built on the meta device: shapes only (e.g. to count parameters), nothing to init."""
        return self.x_embedder.proj.weight.is_meta

    def _init_embedders(self) -> None:
        """The embedders' init (DiT's): patch embedding as a linear layer on flat patches, the
        learnable table from the sin-cos one, N(0, 0.02) for the time MLP and the labels."""
        cfg = self.config
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
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

    # -- helpers ------------------------------------------------------------------------------
    @property
    def null_class(self) -> int | None:
        """Label of the null class used for classifier-free guidance (None if unconditional)."""
        return None if self.y_embedder is None else self.y_embedder.null_class

    def _check_inputs(self, x, t, y):
        """Validate ``(x, t, y)``; return t as [B] and y as a tensor (or None)."""
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

    def token_grid(self, x: torch.Tensor) -> tuple[int, int]:
        """(h, w) tokens per side for input x."""
        p = self.config.patch_size
        return x.shape[2] // p, x.shape[3] // p

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> patch tokens [B, L, D] in raster order, positional embedding added."""
        tokens = self.x_embedder(x)
        if self.config.pos_embed == "learnable":
            tokens = tokens + self.pos_embed
        elif self.config.pos_embed == "sincos":
            tokens = tokens + self._sincos_table(*self.token_grid(x), tokens)
        return tokens

    def _sincos_table(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """The fixed sin-cos table for an h x w grid in ``like``'s dtype and device, kept
        between calls: building it on the host and copying it costs more than a DiT-B layer
        at 38k tokens, and a CUDA graph cannot capture the copy."""
        key = (h, w, like.device, like.dtype)
        if self._sincos is None or self._sincos[0] != key:
            table = sincos_2d(self.config.hidden_size, h, w).to(like)
            self._sincos = (key, table)
        return self._sincos[1]

    def embed_condition(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The adaLN condition c [B, D]: time embedding plus class embedding (if conditional)."""
        c = self.t_embedder(t)
        if self.y_embedder is not None:
            c = c + self.y_embedder(y)
        return c

    def unpatchify(self, out: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, h*w, p*p*C_out] -> [B, C_out, h*p, w*p]."""
        return unpatchify(out, h, w, self.config.patch_size)

    def run_block(self, block: nn.Module, *args) -> torch.Tensor:
        """``block(*args)``, recomputed in the backward pass if ``grad_checkpointing`` is on."""
        if self.grad_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle)."""
        from zigma.models.io import save_pretrained

        save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls: type[ModelT], directory, map_location="cpu") -> ModelT:
        """Rebuild a model saved with ``save_pretrained`` exactly."""
        from zigma.models.io import from_pretrained

        model = from_pretrained(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
