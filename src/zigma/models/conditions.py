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
