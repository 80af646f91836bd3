"""Classifier-free guidance wrapper: formula, one batched call per step, scale 1, interval."""

import pytest
import torch

from zigma.transport import cfg_velocity, sample


class LabelModel:
    """v = x·(1 + y) + t, with y a per-sample label (0 plays the null label); counts calls."""

    def __init__(self):
        self.calls, self.batches = 0, []

    def __call__(self, x, t, y, mode="plain"):
        assert mode == "plain"
        self.calls += 1
        self.batches.append(x.shape[0])
        return x * (1 + y[:, None].to(x.dtype)) + t[:, None]


def test_cfg_formula_on_all_channels_in_one_call():
    model = LabelModel()
    x, t = torch.randn(4, 6), torch.rand(4)
    y, null = torch.tensor([1, 2, 3, 4]), torch.zeros(4, dtype=torch.long)
    guided = cfg_velocity(model, 3.0, {"y": y, "mode": "plain"}, {"y": null, "mode": "plain"})
    out = guided(x, t)
    v_c, v_u = model(x, t, y), model(x, t, null)
    torch.testing.assert_close(out, v_u + 3.0 * (v_c - v_u))
    assert model.batches[0] == 8  # both branches concatenated in the first (guided) call


def test_one_forward_call_per_sampler_step():
    model = LabelModel()
    y, null = torch.tensor([1, 2, 3]), torch.zeros(3, dtype=torch.long)
    guided = cfg_velocity(model, 2.0, {"y": y}, {"y": null})
    sample(guided, torch.randn(3, 5), "euler", 7)
    assert model.calls == 7 and set(model.batches) == {6}


def test_scale_one_is_the_conditional_model():
    model = LabelModel()
    x, t, y = torch.randn(3, 2), torch.rand(3), torch.tensor([1, 0, 2])
    out = cfg_velocity(model, 1.0, {"y": y}, {"y": torch.zeros(3, dtype=torch.long)})(x, t)
    assert model.calls == 1 and model.batches == [3]  # no unconditional pass
    torch.testing.assert_close(out, model(x, t, y))


def test_guidance_interval():
    model = LabelModel()
    x = torch.randn(4, 3)
    y, null = torch.tensor([1, 1, 2, 2]), torch.zeros(4, dtype=torch.long)
    guided = cfg_velocity(model, 4.0, {"y": y}, {"y": null}, interval=(0.2, 0.6))
    cond = lambda t: model(x, t, y)  # noqa: E731
    full = lambda t: model(x, t, null) + 4.0 * (model(x, t, y) - model(x, t, null))  # noqa: E731
    outside = torch.full((4,), 0.8)
    model.calls = 0
    torch.testing.assert_close(guided(x, outside), cond(outside))
    assert model.calls == 2  # one conditional-only pass + the reference call above
    inside = torch.full((4,), 0.4)
    torch.testing.assert_close(guided(x, inside), full(inside))
    mixed = torch.tensor([0.1, 0.2, 0.6, 0.9])  # interval ends are inclusive
    out = guided(x, mixed)
    want = torch.stack([cond(mixed)[0], full(mixed)[1], full(mixed)[2], cond(mixed)[3]])
    torch.testing.assert_close(out, want)


def test_shared_kwargs_reach_both_branches():
    seen = []

    def model(x, t, y, scale):
        seen.append(scale.shape[0])
        return x * (y + scale)[:, None]

    x = torch.ones(2, 3)
    g = cfg_velocity(model, 2.0, {"y": torch.tensor([1.0, 2.0])}, {"y": torch.zeros(2)})
    out = g(x, torch.rand(2), scale=torch.tensor([0.5, 0.5]))
    assert seen == [4]
    torch.testing.assert_close(out, torch.tensor([[2.5] * 3, [4.5] * 3]))


def test_bad_inputs_raise():
    model = LabelModel()
    y3, y4 = torch.ones(3, dtype=torch.long), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="matching batch dimension"):
        cfg_velocity(model, 2.0, {"y": y3}, {"y": y4})
    with pytest.raises(ValueError, match="same keys"):
        cfg_velocity(model, 2.0, {"y": y3}, {"label": y3})
    with pytest.raises(ValueError, match="must be equal"):
        cfg_velocity(model, 2.0, {"y": y3, "mode": "a"}, {"y": y3, "mode": "b"})
    with pytest.raises(ValueError, match="tensor in both"):
        cfg_velocity(model, 2.0, {"y": y3}, {"y": 0})
    with pytest.raises(ValueError, match="interval"):
        cfg_velocity(model, 2.0, {"y": y3}, {"y": y3}, interval=(0.7, 0.2))
    with pytest.raises(ValueError, match="finite"):
        cfg_velocity(model, float("nan"), {"y": y3}, {"y": y3})
    guided = cfg_velocity(model, 2.0, {"y": y3}, {"y": y3})
    with pytest.raises(ValueError, match="has batch 3 but x has batch 5"):
        guided(torch.randn(5, 2), torch.rand(5))
    assert model.calls == 0


def test_guided_wraps_any_conditions_for_sample():
    from zigma.transport import guided

    def toy(x, t, y=None, s=None):  # the velocity depends on both conditions
        return x * 0 + (y + 10 * s).float()[:, None]

    x, t = torch.zeros(3, 2), torch.full((3,), 0.5)
    cond = {"y": torch.tensor([1, 2, 3]), "s": torch.tensor([1, 0, 1])}
    null = {"y": torch.zeros(3, dtype=torch.long), "s": torch.zeros(3, dtype=torch.long)}
    fn, kw = guided(toy, {}, {}, 1.0)
    assert fn is toy and kw == {}
    fn, kw = guided(toy, cond, null, 1.0)
    assert fn is toy and torch.equal(kw["y"], cond["y"]) and torch.equal(kw["s"], cond["s"])
    fn, kw = guided(toy, cond, null, 3.0)
    assert kw == {}
    # v_null = 0, so guidance multiplies the conditional velocity by the scale
    want = 3.0 * (cond["y"] + 10 * cond["s"]).float()[:, None].expand(3, 2)
    torch.testing.assert_close(fn(x, t), want)
    with pytest.raises(ValueError, match="needs a conditional model"):
        guided(toy, {}, {}, 2.0)
