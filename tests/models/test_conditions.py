"""Named conditions: a second toy condition added through the family registry and the
conditioner alone (no model code changes) reaches the model, is dropped to its null value at
its configured rate in training, and is guided by classifier-free guidance with the class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from zigma.models import (
    FAMILIES,
    PRESETS,
    ClassCondition,
    Condition,
    ZigMa,
    ZigMaConfig,
    create_model,
    from_pretrained,
    register_family,
    save_pretrained,
)
from zigma.transport import guided


class StyleCondition(Condition):
    """A toy condition: one of ``num_styles`` styles, null style ``num_styles``."""

    name = "style"
    data_key = "style"
    description = "style ids"

    def __init__(self, num_styles: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.num_styles, self.dropout_prob = num_styles, dropout_prob
        self.table = nn.Embedding(num_styles + 1, hidden_size)

    @classmethod
    def from_config(cls, config):
        return cls(config.num_styles, config.hidden_size, config.style_dropout_prob)

    def describe(self) -> str:
        return f"style=ids [B] in 0..{self.num_styles}"

    def check(self, value, batch, device):
        value = torch.as_tensor(value, device=device)
        if value.shape != (batch,):
            raise ValueError(f"style must have shape [{batch}], got {tuple(value.shape)}")
        return value

    def null_like(self, value):
        return torch.full_like(value, self.num_styles)

    def drop(self, value):
        keep = torch.rand(value.shape, device=value.device) >= self.dropout_prob
        return torch.where(keep, value, self.null_like(value))

    def embed(self, value):
        return self.table(value), None

    def example(self, batch, device):
        return torch.zeros(batch, dtype=torch.long, device=device)


@dataclass
class StyledConfig(ZigMaConfig):
    num_styles: int = 4
    style_dropout_prob: float = 0.25


class StyledZigMa(ZigMa):
    condition_types: ClassVar = (ClassCondition, StyleCondition)


@pytest.fixture
def styled():
    family = register_family(
        "StyledZigMa", StyledZigMa, StyledConfig, {"Styled-T/2": {"hidden_size": 16, "depth": 2}}
    )
    yield family
    del FAMILIES[family.name]
    for name in family.presets:
        del PRESETS[name]


def build(**kw) -> StyledZigMa:
    model = create_model("Styled-T/2", input_size=8, in_channels=3, num_classes=3, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "adaLN" in name or "final_layer.linear" in name:
                p.copy_(torch.randn_like(p) * 0.1)
    return model


def test_the_condition_reaches_the_model(styled):
    model = build().eval()
    assert model.condition_names == ("y", "style")
    x, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 1])
    a = model(x, t, y=y, style=torch.tensor([0, 1]))
    b = model(x, t, y=y, style=torch.tensor([0, 2]))
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
    with pytest.raises(ValueError, match="missing condition.*style"):
        model(x, t, y=y)
    with pytest.raises(ValueError, match="unexpected condition.*text"):
        model(x, t, y=y, style=torch.tensor([0, 1]), text=torch.zeros(2))
    batch = {"image": x, "label": y, "style": torch.tensor([3, 1])}
    assert set(model.conditions_from_batch(batch)) == {"y", "style"}
    with pytest.raises(ValueError, match="carries no 'style'"):
        model.conditions_from_batch({"image": x, "label": y})


def test_training_drops_it_to_null_at_its_rate(styled):
    model = build(style_dropout_prob=0.25).train()
    torch.manual_seed(0)
    n = 4000
    style = torch.zeros(n, dtype=torch.long)
    out = model.conditioner(torch.zeros(n), {"y": torch.zeros(n, dtype=torch.long), "style": style})
    null_row = model.conditioner.conditions["style"].table.weight[4]
    dropped = (out.vectors["style"] == null_row).all(dim=1).float().mean().item()
    assert 0.22 < dropped < 0.28
    model.eval()
    out = model.conditioner(torch.zeros(n), {"y": torch.zeros(n, dtype=torch.long), "style": style})
    assert not (out.vectors["style"] == null_row).all(dim=1).any()


def test_guidance_takes_every_condition_to_its_null(styled):
    model = build().eval()
    seen = []

    def velocity(x, t, **cond):
        seen.append({k: v.clone() for k, v in cond.items()})
        return model(x, t, **cond)

    cond = {"y": torch.tensor([0, 2]), "style": torch.tensor([1, 3])}
    fn, kwargs = guided(velocity, cond, model.null_conditions(cond), scale=3.0)
    x, t = torch.randn(2, 3, 8, 8), torch.full((2,), 0.5)
    v = fn(x, t, **kwargs)
    assert seen[0]["y"].tolist() == [0, 2, 3, 3] and seen[0]["style"].tolist() == [1, 3, 4, 4]
    v_c = model(x, t, **cond)
    v_u = model(x, t, **model.null_conditions(cond))
    torch.testing.assert_close(v, v_u + 3.0 * (v_c - v_u))


def test_it_saves_and_loads(styled, tmp_path):
    model = build(num_styles=6)
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert type(loaded) is StyledZigMa and loaded.config.num_styles == 6
    x, t = torch.randn(1, 3, 8, 8), torch.rand(1)
    cond = {"y": torch.tensor([1]), "style": torch.tensor([5])}
    assert torch.equal(model.eval()(x, t, **cond), loaded.eval()(x, t, **cond))


def test_registry_refuses_duplicates(styled):
    with pytest.raises(ValueError, match="already registered"):
        register_family("StyledZigMa", StyledZigMa, StyledConfig, {})
    with pytest.raises(ValueError, match="already registered"):
        register_family("Other", nn.Linear, StyledConfig, {"Styled-T/2": {}})
