"""The denoiser contract every backbone keeps (ZigMa and the DiT / U-ViT baselines):
``model(x, t, **cond)`` -> a prediction shaped like ``x``.

``x`` is [B, C, H, W] or [B, C, T, H, W] (pixels or latents), ``t`` is [B] (or a scalar) time in
[0, 1], and ``cond`` holds the model's named conditions (``y`` for class labels). The token grid
(``grid``) owns patches and positions, the conditioner (``conditioner``) owns time and the
conditions; a subclass adds only its blocks and head.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from zigma.models import io
from zigma.models.conditions import (
    TEXT_NULLS,
    ClassCondition,
    Condition,
    Conditioner,
    Conditioning,
    TextCondition,
)
from zigma.models.grid import POS_EMBEDS, GridShape, TokenGrid


def require(cond: bool, msg: str) -> None:
    """Config validation: raise ``ValueError(msg)`` unless ``cond``."""
    if not cond:
        raise ValueError(msg)


@dataclass
class BackboneConfig:
    """Fields every backbone config has (``ZigMaConfig``, ``DiTConfig``, ``UViTConfig``).

    Attributes:
        input_size: (H, W) of the image or latent the model is built for, or (T, H, W) for a
            video; with ``pos_embed`` "none" or "sincos" other sizes divisible by the patch
            also run.
        temporal_patch: frames per token of a video model (1: every frame its own tokens).
        num_classes: 0 for an unconditional model; otherwise labels 0..num_classes-1 plus a
            null class ``num_classes`` for classifier-free guidance.
        pos_embed: positional embedding of the patch tokens: a learnable table (initialised to
            the sin-cos one), the fixed sin-cos table, or none.
        text_dim: width of a text encoder's token features; 0 for a model without text. A text
            model takes ``text=(tokens, mask)`` and adds cross-attention to every block.
        text_dropout_prob: caption dropout: the probability a training sample gets the null text.
        text_null: the null text's vector and context token: "learned" or "zero".
        cross_attn_heads, cross_attn_head_dim: the cross-attention's heads and their width (the
            official ZigMa's default: 8 x 64).
        text_encoder, text_encoder_hash: the encoder the model was trained with ("minilm" or a
            directory) and the sha256 of its weights, so prompts are encoded the same way later.
    """

    # Whether the token mixer is a scan (a Mamba model): the one place this is asked.
    uses_scan: ClassVar[bool] = False

    input_size: tuple[int, ...] = (32, 32)
    in_channels: int = 4
    out_channels: int | None = None  # None: same as in_channels
    patch_size: int = 2
    temporal_patch: int = 1
    hidden_size: int = 768
    depth: int = 24
    num_classes: int = 0
    class_dropout_prob: float = 0.1
    pos_embed: Literal["none", "sincos", "learnable"] = "learnable"
    text_dim: int = 0
    text_dropout_prob: float = 0.1
    text_null: Literal["learned", "zero"] = "learned"
    cross_attn_heads: int = 8
    cross_attn_head_dim: int = 64
    text_encoder: str = ""
    text_encoder_hash: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.input_size, int):
            self.input_size = (self.input_size, self.input_size)
        self.input_size = tuple(int(s) for s in self.input_size)
        if self.out_channels is None:
            self.out_channels = self.in_channels
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field; subclasses extend it."""
        require(
            len(self.input_size) in (2, 3),
            f"input_size must be (H, W) or (T, H, W), got {self.input_size}",
        )
        require(self.patch_size >= 1, f"patch_size must be >= 1, got {self.patch_size}")
        require(self.temporal_patch >= 1, f"temporal_patch must be >= 1, got {self.temporal_patch}")
        require(
            self.temporal_patch == 1 or self.is_video,
            "temporal_patch applies to video models (input_size (T, H, W))",
        )
        for name, s in zip(("height", "width"), self.input_size[-2:], strict=True):
            require(
                s >= 1 and s % self.patch_size == 0,
                f"input {name} {s} is not a positive multiple of patch_size {self.patch_size}",
            )
        if self.is_video:
            frames = self.input_size[0]
            require(
                frames >= 1 and frames % self.temporal_patch == 0,
                f"{frames} frames are not a positive multiple of temporal_patch "
                f"{self.temporal_patch}",
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
        require(self.text_dim >= 0, f"text_dim must be >= 0, got {self.text_dim}")
        require(
            0.0 <= self.text_dropout_prob < 1.0,
            f"text_dropout_prob must be in [0, 1), got {self.text_dropout_prob}",
        )
        require(
            self.text_null in TEXT_NULLS,
            f"text_null must be one of {list(TEXT_NULLS)}, got {self.text_null!r}",
        )
        for name in ("cross_attn_heads", "cross_attn_head_dim"):
            require(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pos_embed == "sincos":
            require(
                self.hidden_size % 4 == 0,
                f"sincos pos_embed needs hidden_size % 4 == 0, got {self.hidden_size}",
            )

    @property
    def has_text(self) -> bool:
        return self.text_dim > 0

    @property
    def is_video(self) -> bool:
        return len(self.input_size) == 3

    @property
    def grid_size(self) -> tuple[int, int]:
        """Tokens per frame side (h, w) at the configured input size."""
        return self.input_size[-2] // self.patch_size, self.input_size[-1] // self.patch_size

    @property
    def grid_shape(self) -> GridShape:
        """Tokens per axis (frames, h, w) at the configured input size."""
        frames = self.input_size[0] // self.temporal_patch if self.is_video else 1
        return GridShape(frames, *self.grid_size)


ModelT = TypeVar("ModelT", bound="DiffusionBackbone")

# The optimizer's parameter order of the layout before the token grid and the conditioner
# (the model's own parameters first, then its children's): version-1 checkpoints store
# optimizer states by that position.
_LEGACY_FIRST = ("grid.pos_embed", "extra_pos_embed", "grid.proj.", "conditioner.")


class DiffusionBackbone(nn.Module):
    """A denoiser ``model(x, t, **cond)`` -> prediction with x's shape (see the module doc).

    Builds the token grid and the conditioner; a subclass adds its blocks and head, then calls
    its ``initialize_weights`` (which starts with ``_init_embedders``) last in ``__init__``.
    """

    # the conditions a model of this class understands; its config decides which it has
    condition_types: ClassVar[tuple[type[Condition], ...]] = (ClassCondition, TextCondition)

    def __init__(self, config: BackboneConfig):
        super().__init__()
        self.config = config
        self.grid = TokenGrid(
            config.input_size,
            config.in_channels,
            config.hidden_size,
            config.patch_size,
            config.temporal_patch,
            config.pos_embed,
        )
        conditions = [c.from_config(config) for c in self.condition_types]
        self.conditioner = Conditioner(config.hidden_size, [c for c in conditions if c])
        self.grad_checkpointing = False
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    @property
    def is_meta(self) -> bool:
        """Built on the meta device: shapes only (e.g. to count parameters), nothing to init."""
        return self.grid.proj.weight.is_meta

    def _init_embedders(self) -> None:
        """The embedders' init (DiT's): the token grid's, N(0, 0.02) for the time MLP and the
        class embedding."""
        self.grid.initialize_weights()
        time = self.conditioner.time
        for lin in (time.mlp[0], time.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        if "y" in self.conditioner.conditions:
            nn.init.normal_(self.conditioner.conditions["y"].embedding.weight, std=0.02)
        text = self.conditioner.conditions["text"] if self.config.has_text else None
        if text is not None:
            for lin in (text.proj[0], text.proj[2]):
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)
            if text.null == "learned":
                nn.init.normal_(text.null_vector, std=0.02)
                nn.init.normal_(text.null_token, std=0.02)

    # -- the contract -------------------------------------------------------------------------
    @property
    def condition_names(self) -> tuple[str, ...]:
        """The keyword conditions ``forward`` takes (all required)."""
        return self.conditioner.names

    def null_conditions(self, cond: dict[str, Any]) -> dict[str, Any]:
        """The null value of each condition in ``cond``: the unconditional branch of guidance."""
        return self.conditioner.null(cond)

    def conditions_from_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The model's conditions from a data batch (by each condition's data key)."""
        return self.conditioner.from_batch(batch)

    def prepare(
        self, x: torch.Tensor, t: torch.Tensor | float, cond: dict[str, Any]
    ) -> tuple[GridShape, torch.Tensor, Conditioning]:
        """Check a call; return its token grid shape, the tokens [B, L, D] with positions and
        the embedded conditions."""
        shape = self.grid.check(x)
        b = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(b)
        if t.shape != (b,):
            raise ValueError(f"t must be a scalar or have shape [{b}], got {tuple(t.shape)}")
        cond = self.conditioner.check(cond, b, x.device)
        return shape, self.grid(x, shape), self.conditioner(t, cond)

    @staticmethod
    def text_context(conditioning: Conditioning) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The cross-attention context (tokens [B, S, D], mask [B, S]) of a text model, else
        (None, None)."""
        return conditioning.context.get("text", (None, None))

    def run_block(self, block: nn.Module, *args) -> torch.Tensor:
        """``block(*args)``, recomputed in the backward pass if ``grad_checkpointing`` is on."""
        if self.grad_checkpointing and self.training:
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def legacy_parameter_order(self) -> list[str]:
        """Parameter names in the order the layout before the token grid and conditioner
        listed them (the order of optimizer states in version-1 checkpoints)."""
        names = [n for n, _ in self.named_parameters()]

        def group(name: str) -> int:
            for i, prefix in enumerate(_LEGACY_FIRST):
                if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                    return i
            return len(_LEGACY_FIRST)

        return sorted(names, key=group)  # stable: keeps the order within a group

    def check_loaded(self) -> None:
        """Raise ValueError if loaded weights or buffers are unusable (subclasses extend it)."""

    # -- persistence --------------------------------------------------------------------------
    def save_pretrained(self, directory) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (no pickle)."""
        io.save_pretrained(self, directory)

    @classmethod
    def from_pretrained(cls: type[ModelT], directory, map_location="cpu") -> ModelT:
        """Rebuild a model saved with ``save_pretrained`` exactly."""
        model = io.from_pretrained(directory, map_location=map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + io.rename_legacy_key(key[len(prefix) :])
        if new != key and new not in state_dict:
            state_dict[new] = state_dict.pop(key)
