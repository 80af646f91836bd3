"""Prompts for a text model: its text encoder (the one it was trained with, checked by the
weights' hash), prompt files, and prompts turned into the ``text`` condition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

MAX_PROMPTS_FILE_BYTES = 1 << 20  # a prompt list, not a corpus


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per line (UTF-8); blank lines and lines starting with ``#`` are skipped.

    Raises:
        ValueError: not UTF-8, larger than MAX_PROMPTS_FILE_BYTES, or no prompt in it.
        FileNotFoundError: no such file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    with path.open("rb") as f:
        raw = f.read(MAX_PROMPTS_FILE_BYTES + 1)
    if len(raw) > MAX_PROMPTS_FILE_BYTES:
        raise ValueError(f"prompts file {path} is larger than {MAX_PROMPTS_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"prompts file {path} is not UTF-8 text (byte {e.start})") from None
    prompts = [ln.strip() for ln in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise ValueError(f"prompts file {path} holds no prompt (one per line)")
    return prompts


def load_prompt_encoder(config: Any, override: str | None = None, device: str = "cpu") -> Any:
    """The text encoder of a text model's ``config``: ``override`` (``--text-encoder DIR``) or
    the one recorded at training, refused if its weights are not the ones trained with.

    Raises:
        ValueError: not a text model, no encoder recorded and none given, or other weights.
        FileNotFoundError / ImportError: from ``zigma.text.load_text_encoder``.
    """
    from zigma.text import load_text_encoder

    if not getattr(config, "text_dim", 0):
        raise ValueError("this model has no text conditioning (it was not trained with text)")
    spec = override or config.text_encoder
    if not spec:
        raise ValueError("the model does not record its text encoder: pass --text-encoder DIR")
    try:
        encoder = load_text_encoder(spec, device=device)
    except FileNotFoundError as e:
        if override:
            raise
        raise FileNotFoundError(
            f"{e}; the model was trained with text encoder {spec!r}: pass --text-encoder DIR "
            "to say where it is now"
        ) from None
    want = config.text_encoder_hash
    if want and encoder.weights_hash != want:
        raise ValueError(
            f"text encoder {spec} has weights {encoder.weights_hash[:12]}..., but the model was "
            f"trained with {want[:12]}... ({config.text_encoder}); give the encoder it was "
            "trained with"
        )
    if encoder.dim != config.text_dim:
        raise ValueError(
            f"text encoder {spec} gives {encoder.dim}-d features; the model takes "
            f"{config.text_dim}-d"
        )
    return encoder


def prompt_rows(prompts: list[str], per_prompt: int) -> list[str]:
    """Each prompt ``per_prompt`` times in a row: the rows of a prompt grid."""
    return [p for p in prompts for _ in range(per_prompt)]


def encode_prompts(encoder: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``text`` condition (tokens [N, L, D] on the CPU, mask [N, L]) of ``prompts``."""
    distinct = list(dict.fromkeys(prompts))
    tokens, mask = encoder.encode(distinct)
    index = torch.tensor([distinct.index(p) for p in prompts])
    return tokens.float().cpu()[index], mask.cpu()[index]
