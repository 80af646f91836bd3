"""zigma.generate: the same call gives the same bits, the noise follows the sample and not the
batch, the SDE noise has a stream per sample, guidance, the output stage, condition checks."""

import pytest
import torch
from tests.tiny_models import wake_output_layers

from zigma.evaluate import load_for_sampling
from zigma.generate import generate, grid_conditions, sde_generator, to_images
from zigma.models import ZigMa, ZigMaConfig


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = ZigMa(
        ZigMaConfig(
            input_size=8, in_channels=3, patch_size=2, hidden_size=32, depth=2, num_classes=3
        )
    )
    wake_output_layers(model)  # samples depend on the weights
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def gen(loaded, num, labels=None, **kw):
    """``generate`` of a loaded class-conditional model, classes ``labels``."""
    cond = {"y": labels if labels is not None else torch.arange(num) % 3}
    return generate(loaded.model, loaded.transport, num, cond=cond, **kw)


# Other batch sizes run the matrix kernels on other shapes, which round differently on some
# CPUs (and GPUs): samples agree to rounding, not bit for bit. Measured here: <= 4e-7 after 50
# steps (heun, sde-euler), so 1e-5 leaves a wide margin for other CPUs.
SAME_IMAGES_ATOL = 1e-5


@pytest.mark.parametrize("sampler", ["heun", "sde-euler", "sde-heun"])
def test_same_seed_same_images_any_batch_size(model_dir, sampler):
    loaded = load_for_sampling(model_dir)
    labels = torch.arange(6) % 3
    kw = dict(seed=3, sampler=sampler, steps=4, labels=labels)
    a = gen(loaded, 6, batch_size=6, **kw)
    assert torch.equal(a, gen(loaded, 6, batch_size=6, **kw))  # the same call: same bits
    for batch_size in (4, 1):  # the SDE noise too follows the sample, not the batch
        b = gen(loaded, 6, batch_size=batch_size, **kw)
        torch.testing.assert_close(b, a, rtol=0, atol=SAME_IMAGES_ATOL)
    c = gen(loaded, 6, **{**kw, "seed": 4})
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image changes with the seed
    assert a.shape == (6, 3, 8, 8) and a.min() >= -1 and a.max() <= 1


def test_dopri5_batches_agree_to_its_tolerance(model_dir):
    # dopri5's error control spans the batch, so other batches take other steps
    loaded = load_for_sampling(model_dir)
    kw = dict(seed=3, sampler="dopri5", steps=2, labels=torch.arange(6) % 3)
    a = gen(loaded, 6, batch_size=6, **kw)
    b = gen(loaded, 6, batch_size=4, **kw)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-2)


def test_sde_is_seeded(model_dir):
    loaded = load_for_sampling(model_dir)
    labels = torch.full((4,), 1)
    a = gen(loaded, 4, seed=1, sampler="sde-euler", steps=5, labels=labels)
    b = gen(loaded, 4, seed=1, sampler="sde-euler", steps=5, labels=labels)
    assert torch.equal(a, b)
    # the same starting noise (ODE) but other SDE noise per sample: no two samples alike
    ode = gen(loaded, 4, seed=1, sampler="euler", steps=5, labels=labels)
    assert not torch.allclose(a, ode, atol=0.05)


def test_sde_streams_differ_for_every_seed_and_sample():
    # seed + index would give (0, 1) and (1, 0) the same stream
    pairs = [(seed, i) for seed in (0, 1, -1, 2**63) for i in (0, 1, 2)]
    draws = {tuple(torch.randn(4, generator=sde_generator(*p, "cpu")).tolist()) for p in pairs}
    assert len(draws) == len(pairs)


def test_guidance_changes_samples_and_scale_one_is_conditional(model_dir):
    loaded = load_for_sampling(model_dir)
    labels = torch.arange(4) % 3
    plain = gen(loaded, 4, seed=0, steps=3, labels=labels)
    one = gen(loaded, 4, seed=0, steps=3, labels=labels, guidance_scale=1.0)
    guided = gen(loaded, 4, seed=0, steps=3, labels=labels, guidance_scale=4.0)
    assert torch.equal(plain, one) and not torch.equal(plain, guided)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("sampler", ["heun", "sde-euler", "dopri5"])
def test_cuda_graph_sampling_equals_eager(model_dir, sampler):
    # Replayed graphs run the same kernels: the same images, including a smaller last batch
    # (its own graph) and a sampler that keeps earlier outputs (Heun's two evaluations).
    loaded = load_for_sampling(model_dir, map_location="cuda")
    labels = torch.arange(6) % 3
    kw = dict(seed=2, sampler=sampler, steps=4, labels=labels, batch_size=4, device="cuda")
    eager = gen(loaded, 6, guidance_scale=2.0, **kw)
    graphed = gen(loaded, 6, guidance_scale=2.0, cuda_graphs=True, **kw)
    torch.testing.assert_close(graphed, eager, rtol=0, atol=1e-6)


def test_grid_conditions_spread_or_repeat(model_dir):
    model = load_for_sampling(model_dir).model
    assert grid_conditions(model, 5)["y"].tolist() == [0, 1, 2, 0, 1]
    assert grid_conditions(model, 2, y=2)["y"].tolist() == [2, 2]
    with pytest.raises(ValueError, match="class must be in 0..2"):
        grid_conditions(model, 2, y=3)
    with pytest.raises(ValueError, match="unexpected condition.*text"):
        grid_conditions(model, 2, text="a cat")


def test_conditions_are_checked_before_sampling(model_dir):
    loaded = load_for_sampling(model_dir)
    with pytest.raises(ValueError, match=r"conditions \[\] given; this model takes y="):
        generate(loaded.model, loaded.transport, 2)
    with pytest.raises(ValueError, match="condition y has 3 rows for 2 samples"):
        generate(loaded.model, loaded.transport, 2, cond={"y": torch.arange(3)})
    unconditional = ZigMa(ZigMaConfig(input_size=8, in_channels=3, hidden_size=16, depth=1))
    with pytest.raises(ValueError, match="guidance needs a conditional model"):
        generate(unconditional, loaded.transport, 2, guidance_scale=2.0)


def test_the_output_stage_runs_per_batch(model_dir):
    loaded = load_for_sampling(model_dir)
    seen = []

    def stage(samples):
        seen.append(samples.shape[0])
        return samples * 0

    out = gen(loaded, 5, steps=2, batch_size=2, output=stage)
    assert seen == [2, 2, 1] and not out.any()
    raw = gen(loaded, 5, steps=2, output=lambda s: s)
    torch.testing.assert_close(to_images(raw), gen(loaded, 5, steps=2))
