"""Periodic evaluation while training (``eval.every``): a small ``zigma eval`` of the EMA
weights, on rank 0 only, logged next to the loss.

Each evaluation draws ``eval.num`` samples into ``eval/step_XXXXXXX/`` (the shards, their
features and results.json, exactly what ``zigma eval`` writes, so ``zigma eval --samples`` can
rescore them) and logs ``eval/<metric>`` values at that step in metrics.jsonl; ``eval.png``
draws the first metric against the step. The samples' noise is the same at every step (the
run's seed), so the curve follows the weights, not the draw.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zigma.config import ConfigError, from_dict, to_dict
from zigma.data import DataConfig, derive_seed, read_latent_index
from zigma.evaluate.run import (
    Reference,
    SampleSettings,
    classifier_spec,
    evaluate_model,
    sample_shape,
)
from zigma.evaluate.sampling import LoadedModel
from zigma.train.config import TrainConfig
from zigma.train.export import run_autoencoder
from zigma.train.plots import draw_loss_curve

_SEED_EVAL = 4  # the eval samples' seed stream (the previews' is 3)
EVAL_DIR = "eval"
PLOT_NAME = "eval.png"


def real_data(cfg: TrainConfig) -> DataConfig:
    """The real images an eval compares with: the run's data, or for a latent run the image
    data its latents were encoded from (never the latents or their reconstructions)."""
    if cfg.data.name != "latents":
        return cfg.data
    made_from = read_latent_index(str(cfg.data.data_dir)).get("data")
    try:
        return from_dict(DataConfig, made_from, where="the latent index's data")
    except (ConfigError, TypeError) as e:
        raise ConfigError(f"eval: the real images of {cfg.data.data_dir} are unknown: {e}") from e


def eval_autoencoder(cfg: TrainConfig, device: torch.device) -> Any:
    """The autoencoder that decodes a latent run's eval samples (None: a pixel run)."""
    return run_autoencoder(cfg, device, "eval", "eval.every=0")


class PeriodicEval:
    """Rank 0's evaluator, built when the run starts so that a missing extractor or an
    unusable reference fails before the first step.

    Raises (at construction):
        ConfigError: an extractor that cannot be loaded, or real data that does not fit the
            samples (another size, too few items).
    """

    def __init__(self, cfg: TrainConfig, out: Path, device: torch.device, decoder: Any = None):
        from zigma.evaluate.features import load_extractor

        e = cfg.eval
        self.cfg, self.out, self.device, self.decoder = cfg, out, device, decoder
        self.settings = SampleSettings(
            num=e.num, seed=derive_seed(cfg.seed, _SEED_EVAL), sampler=e.sampler,
            steps=e.steps, cfg=e.guidance_scale, shard_size=min(e.num, 1000),
        )  # fmt: skip
        data = real_data(cfg)
        self.reference = Reference(data=data, split=e.split, num=e.num)
        mcfg = cfg.model_config()
        shape = sample_shape(
            {"model": {"config": {"input_size": list(mcfg.input_size),
                                  "in_channels": mcfg.in_channels}},
             "decoder": cfg.vae}
        )  # fmt: skip
        try:
            self.reference.check(shape, e.num)
            specs = []
            for m in e.metrics:
                if m in ("fd-classifier", "fvd-proxy", "frame-fd"):
                    if m != "fd-classifier" and not data.is_video:
                        raise ValueError(f"{m} scores video clips; the run's data are images")
                    spec = classifier_spec(to_dict(data), data.is_video, frames=m == "frame-fd")
                    specs.append(("fd", spec))
                else:
                    name = {"fid": "fd", "kid": "kd"}.get(m, m)
                    specs += [(name, spec) for spec in e.extractors]
            specs = list(dict.fromkeys(specs))  # fd-classifier of clips is the FVD-proxy
            loaded: dict[str, Any] = {}
            for _, spec in specs:
                if spec not in loaded:
                    loaded[spec] = load_extractor(spec, device)
        except (ImportError, OSError, ValueError) as err:
            raise ConfigError(f"eval: {err}") from None
        self.plan = [(m, loaded[spec]) for m, spec in specs]

    def __call__(self, model: nn.Module, step: int) -> dict[str, float]:
        """Evaluate ``model`` (the EMA weights) at ``step``: {"eval/<metric>": value}."""
        was_training = model.training
        loaded = LoadedModel(model, self.cfg.transport, self.out, self.cfg.vae)
        decode = None
        if self.decoder is not None:
            decode = lambda z: self.decoder.decode_in_batches(z)  # noqa: E731
        try:
            records = evaluate_model(
                loaded, self.out / EVAL_DIR / f"step_{step:07d}", self.settings, self.plan,
                self.reference, decode=decode, batch_size=self.cfg.eval.batch_size,
                device=self.device, rank=0, world_size=1,
            )  # fmt: skip
        finally:
            model.train(was_training)
        return {f"eval/{r.metric}": r.value for r in records or []}


def plot_eval(out: Path) -> Path | None:
    """Draw the first ``eval/`` metric of ``out/metrics.jsonl`` against the step."""
    points: dict[str, list[tuple[int, float]]] = {}
    path = out / "metrics.jsonl"
    if not path.is_file():
        return None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        for key, value in record.items() if isinstance(record, dict) else ():
            if key.startswith("eval/") and isinstance(value, (int, float)) and math.isfinite(value):
                points.setdefault(key, []).append((int(record["step"]), float(value)))
    if not points:
        return None
    key, series = next(iter(points.items()))
    steps, values = zip(*series, strict=True)
    title = f"{key.removeprefix('eval/')} of the EMA weights"
    return draw_loss_curve(
        steps, values, out / PLOT_NAME, title=title, ylabel="value", smoothing=0.0
    )
