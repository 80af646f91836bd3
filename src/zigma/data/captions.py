"""Captions of an image folder: ``NAME.txt`` sidecars and a root ``captions.jsonl`` /
``captions.csv``, read as hostile input: UTF-8 only, bounded per line and per sidecar, and every
problem a ``ValueError`` naming the file and line.

An image may have several captions (the non-empty lines of a sidecar; the paraphrases of a
class or a scene); ``pick_caption`` draws one per item per epoch from the loader's generator.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Container, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import torch

CAPTION_FILES = ("captions.jsonl", "captions.csv")
MAX_CAPTION_BYTES = 1 << 16  # a sidecar, or one line of an index: captions are sentences


def _lines(f: BinaryIO, path: Path) -> Iterator[str]:
    """The lines of ``f`` decoded as UTF-8, refusing a line longer than MAX_CAPTION_BYTES
    before reading the rest of it (a 100 MB file without a newline is not a caption index)."""
    n = 0
    while raw := f.readline(MAX_CAPTION_BYTES + 1):
        n += 1
        if len(raw) > MAX_CAPTION_BYTES:
            raise ValueError(f"{path}:{n}: line longer than {MAX_CAPTION_BYTES} bytes")
        try:
            yield raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}:{n}: not UTF-8 text (byte {e.start} of the line)") from None


def _read_jsonl(path: Path, wanted: Container[str] | None, out: dict[str, str]) -> None:
    with path.open("rb") as f:
        for n, line in enumerate(_lines(f, path), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                name, caption = rec["file"], rec["caption"]
                if not isinstance(name, str):
                    raise TypeError(f"'file' must be a string, not {type(name).__name__}")
            except (json.JSONDecodeError, KeyError, TypeError, RecursionError) as e:
                what = "too deeply nested" if isinstance(e, RecursionError) else e
                raise ValueError(
                    f"{path}:{n}: expected a JSON object with 'file' and 'caption' ({what}), "
                    f"got {line.strip()[:60]!r}"
                ) from None
            key = Path(name).as_posix()
            if wanted is None or key in wanted:
                out[key] = str(caption).strip()


def _read_csv(path: Path, wanted: Container[str] | None, out: dict[str, str]) -> None:
    with path.open("rb") as f:
        reader = csv.DictReader(_lines(f, path))
        try:
            fields = reader.fieldnames
            if not fields or not {"file", "caption"} <= set(fields):
                raise ValueError(
                    f"{path}: the header must name the columns 'file' and 'caption', got "
                    f"{str(fields)[:80]}"
                )
            for row in reader:
                name, caption = row["file"], row["caption"]
                if name is None or caption is None:
                    raise ValueError(f"{path}:{reader.line_num}: a row without 'file' or 'caption'")
                key = Path(name).as_posix()
                if wanted is None or key in wanted:
                    out[key] = caption.strip()
        except csv.Error as e:  # a field over csv's size limit, a NUL byte, an unclosed quote
            raise ValueError(f"{path}:{reader.line_num}: malformed CSV ({e})") from None


def read_caption_index(root: Path, wanted: Container[str] | None = None) -> dict[str, str]:
    """Captions keyed by path relative to ``root`` (POSIX slashes) from the root's index file.

    ``captions.jsonl``: one ``{"file": "cats/01.png", "caption": "a cat"}`` object per line.
    ``captions.csv``: a header row with ``file`` and ``caption`` columns, then one row per image.
    With ``wanted``, only those keys are kept (the index may list far more files than exist).

    Raises:
        ValueError: a malformed or non-UTF-8 line, a line over MAX_CAPTION_BYTES, or a missing
            column, naming the file and line.
    """
    out: dict[str, str] = {}
    jsonl, csv_path = root / CAPTION_FILES[0], root / CAPTION_FILES[1]
    if jsonl.is_file():
        _read_jsonl(jsonl, wanted, out)
    if csv_path.is_file():
        _read_csv(csv_path, wanted, out)
    return out


def read_sidecar(path: Path) -> str | None:
    """The caption in sidecar ``path`` (stripped), or None if there is no such file.

    Raises:
        ValueError: the sidecar is larger than MAX_CAPTION_BYTES or not UTF-8.
    """
    if not path.is_file():
        return None
    with path.open("rb") as f:
        raw = f.read(MAX_CAPTION_BYTES + 1)
    if len(raw) > MAX_CAPTION_BYTES:
        raise ValueError(f"caption file {path} is larger than {MAX_CAPTION_BYTES} bytes")
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ValueError(f"caption file {path} is not UTF-8 text (byte {e.start})") from None


def split_captions(text: str) -> tuple[str, ...]:
    """The non-empty lines of ``text``, stripped: one caption each."""
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def pick_caption(choices: Sequence[str], generator: torch.Generator | None) -> str:
    """One of ``choices``, drawn from ``generator``; the first without one (``dataset[i]``),
    and "" when there are none.

    Called after an item's random transforms, so adding captions leaves those draws unchanged;
    a single choice draws nothing.
    """
    if not choices:
        return ""
    if generator is None or len(choices) == 1:
        return choices[0]
    return choices[int(torch.randint(len(choices), (), generator=generator))]
