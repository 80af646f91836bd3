"""Conditions of a denoiser ``model(x, t, **cond)``: the time embedding plus named conditions,
each owning its check, its embedding, its training dropout and its null value for
classifier-free guidance (paper §3.2: the condition modulates every block through adaLN).

A ``Condition`` turns its value into a vector [B, D] added to the time embedding (the adaLN
input) and, where it has one, context tokens for cross-attention. The ``Conditioner`` holds the
time embedder and the model's conditions by name; models never touch a condition directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from zigma.models.layers import TimestepEmbedder

TEXT_NULLS: tuple[str, ...] = ("learned", "zero")


@dataclass
class Conditioning:
    """What the conditions give the blocks.

    Attributes:
        time: the time embedding [B, D].
        vectors: each condition's adaLN vector [B, D], by name, in the conditioner's order.
        context: context tokens [B, S, D_ctx] and their padding mask [B, S] (True = keep) by
            condition name, for cross-attention; empty without such conditions.
    """

    time: torch.Tensor
    vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    context: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = field(default_factory=dict)

    @property
    def vector(self) -> torch.Tensor:
        """The adaLN input c [B, D]: the time embedding plus every condition's vector."""
        c = self.time
        for v in self.vectors.values():
            c = c + v
        return c


class Condition(nn.Module):
    """One named condition. Subclasses set ``name`` (the keyword the model takes), ``data_key``
    (what a dataset item carries it under) and ``description``, and implement the methods.

    ``from_config`` builds the condition a model config asks for, or returns None (a model
    without class labels has no class condition).
    """

    name: ClassVar[str]
    data_key: ClassVar[str]
    description: ClassVar[str]
    dropout_prob: float = 0.0

    @classmethod
    def from_config(cls, config: Any) -> Condition | None:
        raise NotImplementedError

    def check(self, value: Any, batch: int, device: torch.device) -> Any:
        """``value`` as this condition's tensor(s) for a batch of ``batch``; ValueError if not."""
        raise NotImplementedError

    def null_like(self, value: Any) -> Any:
        """The null value (the "unconditional" input of guidance) shaped like ``value``."""
        raise NotImplementedError

    def drop(self, value: Any) -> Any:
        """``value`` with each sample replaced by the null value with ``dropout_prob``."""
        raise NotImplementedError

    def embed(self, value: Any) -> tuple[torch.Tensor | None, Any]:
        """(adaLN vector [B, D] or None, context (tokens, mask) or None) of a checked value."""
        raise NotImplementedError

    def example(self, batch: int, device: torch.device) -> Any:
        """A valid value for a batch (shapes only matter: counting, benchmarks, graphs)."""
        raise NotImplementedError

    def describe(self) -> str:
        """What a caller passes, e.g. ``y=labels [B] in 0..9 (9 = null class)``."""
        raise NotImplementedError

    def spread(self, num: int) -> Any:
        """``num`` values spread over the condition (a preview grid: classes in turn)."""
        raise NotImplementedError

    def repeat(self, value: Any, num: int) -> Any:
        """One value, checked, for ``num`` samples (``zigma sample --class 3``)."""
        raise NotImplementedError


class ClassCondition(Condition):
    """Class labels ``y`` [B] in 0..num_classes-1, with a learned null class ``num_classes``
    that training drops labels to with ``dropout_prob`` (classifier-free guidance)."""

    name = "y"
    data_key = "label"
    description = "class labels"

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding = nn.Embedding(num_classes + 1, hidden_size)

    @classmethod
    def from_config(cls, config: Any) -> ClassCondition | None:
        if config.num_classes == 0:
            return None
        return cls(config.num_classes, config.hidden_size, config.class_dropout_prob)

    @property
    def null_class(self) -> int:
        return self.num_classes

    def describe(self) -> str:
        return f"y=class labels [B] in 0..{self.num_classes} ({self.num_classes} = null class)"

    def check(self, value: Any, batch: int, device: torch.device) -> torch.Tensor:
        y = torch.as_tensor(value, device=device)
        if y.shape != (batch,) or y.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"y must be integer labels of shape [{batch}], got {y.dtype} {tuple(y.shape)}"
            )
        # Range check only off-GPU: on CUDA it would force a device sync every step.
        if not y.is_cuda and (y.min() < 0 or y.max() > self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes}, got {y.tolist()}")
        return y

    def null_like(self, value: torch.Tensor) -> torch.Tensor:
        return torch.full_like(value, self.null_class)

    def drop(self, value: torch.Tensor) -> torch.Tensor:
        drop = torch.rand(value.shape, device=value.device) < self.dropout_prob
        return torch.where(drop, self.null_like(value), value)

    def embed(self, value: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.embedding(value), None

    def example(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.arange(batch, device=device) % self.num_classes

    def spread(self, num: int) -> torch.Tensor:
        return torch.arange(num) % self.num_classes

    def repeat(self, value: Any, num: int) -> torch.Tensor:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"a class label is an integer, got {value!r}")
        if not 0 <= value < self.num_classes:
            raise ValueError(f"class must be in 0..{self.num_classes - 1}, got {value}")
        return torch.full((num,), value, dtype=torch.long)


class TextCondition(Condition):
    """Text ``text=(tokens, mask)``: a text encoder's token features [B, L, text_dim] and their
    padding mask [B, L] (True = a real token), e.g. from ``zigma.text``.

    The tokens are projected to the model width (a two-layer MLP, as PixArt's caption
    projection); their masked mean is the adaLN vector and the sequence is the cross-attention
    context. The null text, what guidance and caption dropout use, is the all-False mask: its
    adaLN vector is ``null_vector`` and its context the single ``null_token`` that leads every
    context (so a query always has a key to attend to). ``null`` "learned" trains both; "zero"
    keeps them zero.
    """

    name = "text"
    data_key = "text"
    description = "text tokens"

    def __init__(
        self, text_dim: int, hidden_size: int, dropout_prob: float, null: str = "learned"
    ) -> None:
        super().__init__()
        if null not in TEXT_NULLS:
            raise ValueError(f"text_null must be one of {list(TEXT_NULLS)}, got {null!r}")
        self.text_dim, self.null = text_dim, null
        self.dropout_prob = dropout_prob
        self.proj = nn.Sequential(
            nn.Linear(text_dim, hidden_size),
            nn.GELU(approximate="tanh"),
            nn.Linear(hidden_size, hidden_size),
        )
        if null == "learned":
            self.null_vector = nn.Parameter(torch.zeros(hidden_size))
            self.null_token = nn.Parameter(torch.zeros(hidden_size))
        else:
            self.register_buffer("null_vector", torch.zeros(hidden_size))
            self.register_buffer("null_token", torch.zeros(hidden_size))

    @classmethod
    def from_config(cls, config: Any) -> TextCondition | None:
        if not getattr(config, "text_dim", 0):
            return None
        return cls(config.text_dim, config.hidden_size, config.text_dropout_prob, config.text_null)

    def describe(self) -> str:
        return (
            f"text=(tokens [B, L, {self.text_dim}] float, mask [B, L] bool) "
            "(an all-False mask = null text)"
        )

    def check(self, value: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        if isinstance(value, torch.Tensor):
            value = (value, None)
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(
                f"text must be a pair (tokens [B, L, {self.text_dim}], mask [B, L]), got "
                f"{type(value).__name__}"
            )
        tokens, mask = value
        tokens = torch.as_tensor(tokens, device=device)
        if (
            tokens.ndim != 3
            or tokens.shape[0] != batch
            or tokens.shape[1] < 1
            or tokens.shape[2] != self.text_dim
            or not tokens.is_floating_point()
        ):
            raise ValueError(
                f"text tokens must be float [{batch}, L >= 1, {self.text_dim}], got "
                f"{tokens.dtype} {tuple(tokens.shape)}"
            )
        if mask is None:
            mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=device)
        mask = torch.as_tensor(mask, device=device)
        if mask.shape != tokens.shape[:2] or mask.dtype != torch.bool:
            raise ValueError(
                f"text mask must be bool {list(tokens.shape[:2])}, got {mask.dtype} "
                f"{tuple(mask.shape)}"
            )
        return tokens, mask

    def null_like(self, value: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = value
        return torch.zeros_like(tokens), torch.zeros_like(mask)

    def drop(self, value: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = value
        keep = torch.rand(mask.shape[0], device=mask.device) >= self.dropout_prob
        return tokens, mask & keep[:, None]

    def embed(self, value: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, Any]:
        tokens, mask = value
        h = self.proj(tokens.to(self.proj[0].weight.dtype))  # [B, L, D]
        weights = mask.to(h.dtype).unsqueeze(-1)
        count = weights.sum(1)  # [B, 1]
        mean = (h * weights).sum(1) / count.clamp(min=1)
        vector = torch.where(count > 0, mean, self.null_vector.to(h.dtype))
        b = h.shape[0]
        lead = self.null_token.to(h.dtype).expand(b, 1, -1)
        context = torch.cat([lead, h], dim=1)  # [B, 1 + L, D]
        keep = torch.cat([mask.new_ones(b, 1), mask], dim=1)
        return vector, (context, keep)

    def example(self, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.randn(batch, 8, self.text_dim, device=device)
        return tokens, torch.ones(batch, 8, dtype=torch.bool, device=device)

    def spread(self, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Text has no natural spread: without prompts a grid shows the null text.
        return torch.zeros(num, 1, self.text_dim), torch.zeros(num, 1, dtype=torch.bool)

    def repeat(self, value: Any, num: int) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, mask = self.check(value, 1, torch.device("cpu"))
        return tokens.expand(num, -1, -1).clone(), mask.expand(num, -1).clone()


class Conditioner(nn.Module):
    """The time embedder and the model's named conditions.

    ``check`` validates a call's conditions (unknown or missing names raise, naming what the
    model takes); ``forward`` embeds them, dropping each to its null value in training.
    """

    def __init__(self, hidden_size: int, conditions: list[Condition]) -> None:
        super().__init__()
        self.time = TimestepEmbedder(hidden_size)
        self.conditions = nn.ModuleDict({c.name: c for c in conditions})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.conditions)

    def describe(self) -> str:
        if not self.conditions:
            return "no conditions (unconditional)"
        return "; ".join(c.describe() for c in self.conditions.values())

    def check(self, cond: dict[str, Any], batch: int, device: torch.device) -> dict[str, Any]:
        """The conditions of a call, checked; raises ValueError naming the model's conditions.
        A condition given as None counts as not given."""
        cond = {k: v for k, v in cond.items() if v is not None}
        unknown = sorted(set(cond) - set(self.conditions))
        missing = [n for n in self.conditions if cond.get(n) is None]
        if unknown or missing:
            takes = f"this model takes {self.describe()}"
            if unknown:
                raise ValueError(f"unexpected condition(s) {', '.join(unknown)}: {takes}")
            raise ValueError(f"missing condition(s) {', '.join(missing)}: {takes}")
        return {n: c.check(cond[n], batch, device) for n, c in self.conditions.items()}

    def example(self, batch: int, device: torch.device) -> dict[str, Any]:
        """A valid set of conditions for a batch (for counting, benchmarks and graphs)."""
        return {n: c.example(batch, device) for n, c in self.conditions.items()}

    def null(self, cond: dict[str, Any]) -> dict[str, Any]:
        """The null value of every condition in ``cond`` (guidance's unconditional branch)."""
        return {n: self.conditions[n].null_like(v) for n, v in cond.items()}

    def from_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The model's conditions from a dataset batch, found by each condition's data key."""
        out = {}
        for name, c in self.conditions.items():
            if c.data_key not in batch:
                raise ValueError(
                    f"the model needs {c.description} ({name}) but the data carries no "
                    f"{c.data_key!r}; it carries {', '.join(sorted(batch))}"
                )
            out[name] = batch[c.data_key]
        return out

    def forward(self, t: torch.Tensor, cond: dict[str, Any]) -> Conditioning:
        """Embed ``t`` [B] and the checked conditions (dropped to null in training)."""
        out = Conditioning(self.time(t))
        for name, c in self.conditions.items():
            value = cond[name]
            if self.training and c.dropout_prob > 0:
                value = c.drop(value)
            vector, context = c.embed(value)
            if vector is not None:
                out.vectors[name] = vector
            if context is not None:
                out.context[name] = context
        return out
