"""A small line plot drawn with Pillow (matplotlib is not a dependency): axes, ticks, a legend.

The x ticks sit at the data's x values (token counts or scan paths), on a log scale where asked;
the y ticks are round numbers from 0 up.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_COLORS = [
    (31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
]  # fmt: skip
_AXIS, _GRID, _TEXT = (40, 40, 40), (228, 228, 228), (30, 30, 30)


def _y_ticks(hi: float, count: int = 5) -> list[float]:
    hi = hi if hi > 0 else 1.0
    raw = hi / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(hi / step - 1e-9) + 1)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """1-2-5 ticks per decade covering [lo, hi] (both > 0)."""
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    ticks = [m * 10.0**e for e in range(first, last + 1) for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    return [t for t in ticks if below[-1] <= t <= above[0]]


def _label(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e6:
        return str(int(v))  # token counts read better as 38416 than 3.8e+04
    return f"{v:.3g}"


def line_plot(
    series: dict[str, list[tuple[float, float]]],
    path: str | os.PathLike,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_x: bool = False,
    log_y: bool = False,
    size: tuple[int, int] = (820, 500),
) -> Path:
    """Write one line per series (label -> [(x, y), ...], points with y None left out);
    ``log_y`` (positive values only) for quantities spanning decades."""
    series = {k: sorted((x, y) for x, y in v if y is not None) for k, v in series.items()}
    series = {k: v for k, v in series.items() if v}
    xs = sorted({x for pts in series.values() for x, _ in pts}) or [1.0]
    ys = [y for pts in series.values() for _, y in pts] or [1.0]
    font = ImageFont.load_default(size=14)  # the default 10 px face loses its spaces
    legend = max((font.getlength(name) for name in series), default=0.0)
    # the legend sits right of the axes: widen the canvas so the longest label fits
    width, height = max(size[0], int(size[0] - 200 + legend + 60)), size[1]
    left, right, top, bottom = 80, int(max(200, legend + 60)), 40, 60
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)

    fx = (lambda v: math.log(v)) if log_x and xs[0] > 0 else (lambda v: v)
    x_lo, x_hi = fx(xs[0]), fx(xs[-1])
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    log_y = log_y and min(ys) > 0
    y_ticks = _log_ticks(min(ys), max(ys)) if log_y else _y_ticks(max(ys) * 1.05)
    fy = math.log10 if log_y else (lambda v: v)
    y_lo, y_hi = fy(y_ticks[0]) if log_y else 0.0, fy(y_ticks[-1])
    if y_hi == y_lo:
        y_hi = y_lo + 1

    def px(x: float, y: float) -> tuple[float, float]:
        u = left + (fx(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
        v = height - bottom - (fy(y) - y_lo) / (y_hi - y_lo) * (height - top - bottom)
        return u, v

    for y in y_ticks:
        _, v = px(xs[0], y)
        draw.line([(left, v), (width - right, v)], fill=_GRID)
        text = _label(y)
        draw.text((left - 8 - draw.textlength(text, font=font), v - 6), text, fill=_TEXT, font=font)
    for x in xs:
        u, _ = px(x, y_ticks[0])
        draw.line([(u, height - bottom), (u, height - bottom + 5)], fill=_AXIS)
        text = _label(x)
        draw.text((u - draw.textlength(text, font=font) / 2, height - bottom + 8), text,
                  fill=_TEXT, font=font)  # fmt: skip
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)],
              fill=_AXIS, width=2)  # fmt: skip
    draw.text(((width - right + left) / 2 - draw.textlength(title, font=font) / 2, 12), title,
              fill=_TEXT, font=font)  # fmt: skip
    draw.text(((width - right + left) / 2 - draw.textlength(xlabel, font=font) / 2,
               height - 25), xlabel, fill=_TEXT, font=font)  # fmt: skip
    draw.text((8, top - 25), ylabel, fill=_TEXT, font=font)

    for i, (name, pts) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        uv = [px(x, y) for x, y in pts]
        if len(uv) > 1:
            draw.line(uv, fill=color, width=2)
        for u, v in uv:
            draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=color)
        ly = top + 16 * i
        draw.line([(width - right + 15, ly + 6), (width - right + 35, ly + 6)], fill=color, width=3)
        draw.text((width - right + 40, ly), name, fill=_TEXT, font=font)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
