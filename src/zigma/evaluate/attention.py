"""Per-word cross-attention maps of a text model (``zigma sample --attn-maps DIR``): where in the
image each word of the prompt was looked at, averaged over heads, layers and sampler steps
(recorded by ``zigma.generate.AttentionMaps``), drawn as heat over the sample.

The context of a text model is [null token, the encoder's tokens...]; words are groups of the
encoder's tokens (a fast tokenizer says which token belongs to which word; special tokens such
as [CLS] / [SEP] / </s> belong to none and are left out).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from zigma.artifacts import atomic_write

LABEL_HEIGHT = 12  # pixels under each panel for the word


def word_groups(encoder: Any, prompt: str) -> list[tuple[str, list[int]]]:
    """(word, positions of its tokens in the encoder's output) for each word of ``prompt``."""
    tokenizer = encoder.tokenizer
    enc = tokenizer(prompt, truncation=True, max_length=encoder.max_length)
    if not getattr(enc, "is_fast", False):  # a slow tokenizer cannot map tokens to words
        tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
        special = set(tokenizer.all_special_tokens)
        return [(t, [i]) for i, t in enumerate(tokens) if t not in special]
    groups: dict[int, list[int]] = {}
    for pos, word in enumerate(enc.word_ids()):
        if word is not None:
            groups.setdefault(word, []).append(pos)
    out = []
    for word, positions in groups.items():
        span = enc.word_to_chars(word)
        out.append((prompt[span.start : span.end] if span else str(word), positions))
    return out


def heat_colors(values: np.ndarray) -> np.ndarray:
    """[H, W] in [0, 1] -> [H, W, 3] uint8, dark blue through red to yellow."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    stops = np.array([[0, 0, 80], [40, 40, 220], [230, 30, 30], [255, 230, 40]], np.float64)
    pos = v * (len(stops) - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, len(stops) - 2)
    frac = pos - lo
    rgb = stops[lo[..., 0]] * (1 - frac) + stops[lo[..., 0] + 1] * frac
    return rgb.astype(np.uint8)


def word_map(maps: torch.Tensor, grid: tuple[int, int, int], positions: list[int]) -> torch.Tensor:
    """Attention of every image token to one word, [h, w] (frame 0 of a video), summed over its
    tokens: ``maps`` is one sample's [L_img, 1 + L_text]; context token 0 is the null token."""
    frames, h, w = grid
    cols = [1 + p for p in positions if 1 + p < maps.shape[1]]
    per_token = maps[:, cols].sum(1) if cols else torch.zeros(maps.shape[0])
    return per_token.reshape(frames, h, w)[0]


def render_attention(
    image: torch.Tensor, maps: torch.Tensor, grid: tuple[int, int, int], words, scale: int = 4
) -> Image.Image:
    """One PNG row: the sample, then one heat overlay per word with the word under it.

    Args:
        image: [C, H, W] in [-1, 1] (a video: its first frame).
        maps: one sample's [L_img, 1 + L_text] attention weights.
        words: ``word_groups`` of its prompt.
    """
    if image.ndim == 4:
        image = image[:, 0]
    pic = ((image.float().clamp(-1, 1) + 1) * 127.5).round().byte()
    if pic.shape[0] == 1:
        pic = pic.expand(3, -1, -1)
    size = (pic.shape[1] * scale, pic.shape[2] * scale)
    base = F.interpolate(pic[None].float(), size=size, mode="nearest")[0]
    base_np = base.permute(1, 2, 0).numpy().astype(np.uint8)
    panels = [base_np]
    for _, positions in words:
        m = word_map(maps, grid, positions)[None, None].float()
        m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
        m = (m - m.min()) / max(m.max() - m.min(), 1e-12)  # each word's own range
        blend = 0.45 * base_np.astype(np.float64) + 0.55 * heat_colors(m).astype(np.float64)
        panels.append(blend.astype(np.uint8))
    gap = 2
    width = len(panels) * (size[1] + gap) - gap
    out = Image.new("RGB", (width, size[0] + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(out)
    labels = ["sample"] + [w for w, _ in words]
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x = i * (size[1] + gap)
        out.paste(Image.fromarray(panel), (x, 0))
        draw.text((x + 1, size[0]), label[: max(1, size[1] // 6)], fill=(0, 0, 0))
    return out


def save_attention_maps(
    directory: str | Path,
    images: torch.Tensor,
    maps: torch.Tensor,
    grid: tuple[int, int, int],
    prompts: list[str],
    encoder: Any,
    scale: int = 4,
) -> list[Path]:
    """``DIR/NNNN.png`` per sample (``render_attention``); ``prompts`` has one per sample."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[tuple[str, list[int]]]] = {}
    paths = []
    for i, (image, prompt) in enumerate(zip(images, prompts, strict=True)):
        if prompt not in groups:
            groups[prompt] = word_groups(encoder, prompt)
        picture = render_attention(image, maps[i], grid, groups[prompt], scale)
        path = folder / f"{i:04d}.png"
        atomic_write(path, lambda tmp, pic=picture: pic.save(tmp, format="PNG"))
        paths.append(path)
    return paths
