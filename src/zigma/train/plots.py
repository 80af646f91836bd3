"""The loss curve as a PNG, drawn with Pillow only (no matplotlib dependency).

Raw per-step losses are faint dots; an exponential moving average is the solid line; the
y axis is logarithmic when the losses span more than a factor of ten.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_BG, _AXIS, _GRID = (255, 255, 255), (40, 40, 40), (225, 225, 225)
_RAW, _LINE = (150, 180, 225), (200, 40, 40)


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (TensorBoard's smoothing)."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        avg = weight * avg + (1 - weight) * v
        norm = weight * norm + (1 - weight)
        out.append(avg / norm)
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round-numbered ticks covering [lo, hi] (1-2-5 steps)."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0e}" if v and (abs(v) >= 1e5 or abs(v) < 1e-3) else f"{v:g}"


def draw_loss_curve(
    steps: Sequence[int],
    losses: Sequence[float],
    path: str | os.PathLike,
    *,
    title: str = "training loss",
    size: tuple[int, int] = (800, 450),
    max_points: int = 4000,
    ylabel: str = "loss",
    smoothing: float = 0.9,
) -> Path:
    """Write a loss-vs-step plot to ``path``; non-finite losses are left out, and at most
    about ``max_points`` raw points are drawn (the smoothing still uses every step).
    ``smoothing`` is the moving average's weight (0: the line joins the points)."""
    pts = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    width, height = size
    img = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 70, 20, 35, 50
    pw, ph = width - left - right, height - top - bottom
    draw.text((left, 10), title, fill=_AXIS, font=font)
    if pts:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        positive = min(ys) > 0
        log = positive and max(ys) / min(ys) > 10
        f = (lambda v: math.log10(v)) if log else (lambda v: v)
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = f(min(ys)), f(max(ys))
        pad = (y1 - y0) * 0.05 or 0.5
        y0, y1 = y0 - pad, y1 + pad

        def px(s: float) -> float:
            return left + (s - x0) / (x1 - x0) * pw

        def py(v: float) -> float:
            return top + (1 - (f(v) - y0) / (y1 - y0)) * ph

        for t in nice_ticks(x0, x1):
            x = px(t)
            draw.line([(x, top), (x, top + ph)], fill=_GRID)
            draw.text((x - 3 * len(_fmt(t)), top + ph + 6), _fmt(t), fill=_AXIS, font=font)
        yticks = (
            [10**e for e in range(math.floor(y0), math.ceil(y1) + 1)]
            if log
            else (nice_ticks(y0, y1))
        )
        for t in yticks:
            if y0 <= f(t) <= y1:
                y = py(t)
                draw.line([(left, y), (left + pw, y)], fill=_GRID)
                draw.text((left - 8 - 6 * len(_fmt(t)), y - 6), _fmt(t), fill=_AXIS, font=font)
        stride = max(1, len(pts) // max_points)  # long runs: keep redrawing cheap
        for s, v in pts[::stride]:
            x, y = px(s), py(v)
            draw.rectangle([x - 1, y - 1, x + 1, y + 1], fill=_RAW)
        smoothed = smooth(ys, smoothing)
        line = [(px(xs[i]), py(smoothed[i])) for i in range(0, len(xs), stride)]
        if len(line) > 1:
            draw.line(line, fill=_LINE, width=2)
    draw.rectangle([left, top, left + pw, top + ph], outline=_AXIS)
    draw.text((left + pw // 2 - 12, height - 22), "step", fill=_AXIS, font=font)
    draw.text((8, top + ph // 2 - 6), ylabel, fill=_AXIS, font=font)
    # a plot is redrawn every log step: replaced atomically, but not worth an fsync
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
