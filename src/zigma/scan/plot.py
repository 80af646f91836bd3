"""Pictures of scan orders (Pillow only): one panel per order, the path drawn over the grid.

The path is a thick polyline through the cell centres, coloured from start to end, with a
filled circle at the start and a filled square at the end; 3D orders get one row of frames.
"""

from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from zigma.scan.orders import scan_orders

_MAX_PIXELS = 40_000_000  # beyond this a picture is unreadable anyway and costs GBs of RAM
_PER_ROW_2D = 4

_BACKGROUND = (255, 255, 255)
_GRID = (222, 226, 232)
_BORDER = (150, 156, 166)
_TEXT = (35, 38, 45)
_OUTLINE = (30, 30, 35)
# Saturated blue -> violet -> red -> orange: every stop stays dark enough to read on white.
_STOPS = ((40, 80, 200), (130, 60, 190), (215, 45, 110), (240, 135, 20))

_LABELS = {"zigzag": "S", "zigzag3d": "S", "hilbert": "H", "random": "R"}


def render_scan_orders(
    kind: str,
    height: int,
    width: int,
    *,
    frames: int = 1,
    num: int | None = None,
    seed: int = 0,
    cell: int = 28,
) -> Image.Image:
    """Draw every order of `kind` on a height x width grid as an RGB picture.

    2D kinds get one panel per order, 4 per row; 3D kinds get one row per order with the
    frames side by side. `cell` is the side of one grid cell in pixels.
    """
    if not isinstance(cell, int) or isinstance(cell, bool) or cell < 4:
        raise ValueError(f"cell must be an int >= 4 (pixels), got {cell!r}")
    orders = scan_orders(kind, height, width, frames, num=num, seed=seed).tolist()
    scale = _supersampling()
    layout = _Layout(kind, height, width, frames, len(orders), cell, scale)
    out_w, out_h = (side // scale for side in layout.size)
    if out_w * out_h > _MAX_PIXELS:
        raise ValueError(
            f"picture would be {out_w}x{out_h} pixels; pass a smaller cell or a smaller grid"
        )
    image = Image.new("RGB", layout.size, _BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text(
        (layout.margin, layout.margin),
        _header(kind, height, width, frames, seed),
        fill=_TEXT,
        font=layout.title_font,
    )
    for k, order in enumerate(orders):
        _draw_order(draw, layout, k, order, _order_title(kind, k))
    _draw_legend(draw, layout, kind in ("sweep3d", "zigzag3d"))
    return image.resize((out_w, out_h), Image.Resampling.LANCZOS)


def save_scan_plot(path: str | Path, kind: str, height: int, width: int, **kwargs) -> Path:
    """Render with render_scan_orders(kind, height, width, **kwargs) and write a PNG file."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"scan plots are written as PNG; the path must end in .png, got {path}")
    image = render_scan_orders(kind, height, width, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


class _Layout:
    """Pixel geometry of the whole picture: where each panel of each order goes."""

    def __init__(
        self, kind: str, height: int, width: int, frames: int, num: int, cell: int, scale: int
    ):
        # Every length is multiplied by `scale`, so the picture shrinks back to whole pixels.
        self.height, self.width, self.frames = height, width, frames
        self.scale, self.cell = scale, cell * scale
        self.title_font = _font(14 * scale)
        self.font = _font(12 * scale)
        self.margin, self.gap = 14 * scale, 18 * scale
        self.line_h = 20 * scale  # one line of title text
        self.panel_w, self.panel_h = width * self.cell, height * self.cell
        self.is_3d = kind in ("sweep3d", "zigzag3d")
        # 3D: one row per order, the frames side by side, an order title and frame titles.
        self.per_row = frames if self.is_3d else min(_PER_ROW_2D, num)
        n_rows = num if self.is_3d else -(-num // _PER_ROW_2D)
        self.row_h = self.line_h * (2 if self.is_3d else 1) + self.panel_h + self.gap
        self.top = self.margin + self.line_h + 8 * scale
        self.legend_h = self.line_h + 6 * scale
        grid_w = self.per_row * self.panel_w + (self.per_row - 1) * self.gap
        legend_w = (420 if self.is_3d else 260) * scale
        self.size = (
            2 * self.margin + max(grid_w, legend_w),
            self.top + n_rows * self.row_h + self.legend_h + self.margin,
        )

    def panel_origin(self, k: int, frame: int) -> tuple[int, int]:
        """Top-left pixel of the grid of order k (frame `frame` for 3D kinds)."""
        row, col = (k, frame) if self.is_3d else divmod(k, _PER_ROW_2D)
        x = self.margin + col * (self.panel_w + self.gap)
        y = self.top + row * self.row_h + self.line_h * (2 if self.is_3d else 1)
        return x, y

    def centre(self, origin: tuple[int, int], token: int) -> tuple[int, int]:
        # Whole pixels, so the round joints line up exactly with the line edges.
        row, col = divmod(token % (self.height * self.width), self.width)
        half = self.cell // 2
        return origin[0] + col * self.cell + half, origin[1] + row * self.cell + half


def _draw_order(
    draw: ImageDraw.ImageDraw, layout: _Layout, k: int, order: list[int], title: str
) -> None:
    frame_size = layout.height * layout.width
    first_x, first_y = layout.panel_origin(k, 0)
    if layout.is_3d:
        draw.text((first_x, first_y - 2 * layout.line_h), title, fill=_TEXT, font=layout.title_font)
    for frame in range(layout.frames):
        origin = layout.panel_origin(k, frame)
        label = f"t={frame}" if layout.is_3d else title
        draw.text(
            (origin[0], origin[1] - layout.line_h + 2 * layout.scale),
            label,
            fill=_TEXT,
            font=layout.font if layout.is_3d else layout.title_font,
        )
        _draw_grid(draw, layout, origin)
        start = frame * frame_size
        _draw_path(draw, layout, origin, order, start, start + frame_size)


def _draw_grid(draw: ImageDraw.ImageDraw, layout: _Layout, origin: tuple[int, int]) -> None:
    x0, y0 = origin
    x1, y1 = x0 + layout.panel_w, y0 + layout.panel_h
    for col in range(1, layout.width):
        x = x0 + col * layout.cell
        draw.line([(x, y0), (x, y1)], fill=_GRID, width=layout.scale)
    for row in range(1, layout.height):
        y = y0 + row * layout.cell
        draw.line([(x0, y), (x1, y)], fill=_GRID, width=layout.scale)
    draw.rectangle([x0, y0, x1, y1], outline=_BORDER, width=layout.scale)


def _draw_path(
    draw: ImageDraw.ImageDraw,
    layout: _Layout,
    origin: tuple[int, int],
    order: list[int],
    begin: int,
    end: int,
) -> None:
    """Draw positions begin..end-1 of `order` (those that fall in this panel)."""
    last = len(order) - 1
    width = max(2 * layout.scale, layout.cell // 5)
    points = [layout.centre(origin, order[m]) for m in range(begin, end)]
    colours = [_colour(m / max(last, 1)) for m in range(begin, end)]
    jump_width = max(layout.scale, width // 3)
    for i in range(len(points) - 1):
        (x0, y0), (x1, y1) = points[i], points[i + 1]
        # Thin lines for jumps between non-neighbours keep continuous runs easy to follow.
        adjacent = abs(x1 - x0) + abs(y1 - y0) == layout.cell
        draw.line(
            [points[i], points[i + 1]], fill=colours[i], width=width if adjacent else jump_width
        )
    # Round joints: Pillow's per-segment lines would otherwise leave notches at each corner.
    lo, hi = (width - 1) // 2, width // 2  # the pixel rows a `width`-wide line covers
    for (x, y), colour in zip(points, colours, strict=True):
        draw.ellipse([x - lo, y - lo, x + hi, y + hi], fill=colour)
    size = max(3.0 * layout.scale, layout.cell * 0.3)
    first, final = _colour(begin / max(last, 1)), _colour((end - 1) / max(last, 1))
    _marker(draw, points[0], size, first, "circle", layout.scale, filled=begin == 0)
    _marker(draw, points[-1], size, final, "square", layout.scale, filled=end - 1 == last)


def _marker(
    draw: ImageDraw.ImageDraw,
    centre: tuple[float, float],
    size: float,
    colour: tuple[int, int, int],
    shape: str,
    scale: int,
    *,
    filled: bool,
) -> None:
    """Filled markers are the true start/end; hollow ones are where a frame is entered/left."""
    x, y = centre
    box = [x - size, y - size, x + size, y + size]
    fill, outline = (colour, _OUTLINE) if filled else (_BACKGROUND, colour)
    outline_w = 2 * scale
    if shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=outline_w)
    else:
        s = size * 0.85  # a square looks bigger than a circle of the same extent
        draw.rectangle([x - s, y - s, x + s, y + s], fill=fill, outline=outline, width=outline_w)


def _draw_legend(draw: ImageDraw.ImageDraw, layout: _Layout, is_3d: bool) -> None:
    u = layout.scale  # legend geometry is in output pixels times the supersampling factor
    x = layout.margin
    y = layout.size[1] - layout.margin - layout.line_h + 4 * u
    mid = y + 8 * u
    x = _legend_item(draw, layout, x, mid, "circle", _colour(0.0), True, "start")
    bar = 90 * u
    for i in range(bar):
        draw.line([(x + i, mid - 4 * u), (x + i, mid + 4 * u)], fill=_colour(i / (bar - 1)))
    x += bar + 10 * u
    x = _legend_item(draw, layout, x, mid, "square", _colour(1.0), True, "end")
    if is_3d:
        x = _legend_item(draw, layout, x, mid, "circle", _colour(0.5), False, "enters frame")
        _legend_item(draw, layout, x, mid, "square", _colour(0.5), False, "leaves frame")


def _legend_item(
    draw: ImageDraw.ImageDraw,
    layout: _Layout,
    x: float,
    mid: float,
    shape: str,
    colour: tuple[int, int, int],
    filled: bool,
    text: str,
) -> float:
    """Draw a marker and its label at x; return where the next item starts."""
    u = layout.scale
    _marker(draw, (x + 6 * u, mid), 6 * u, colour, shape, u, filled=filled)
    x += 16 * u
    # Centre the label on the marker by its ink box (text anchors need a FreeType font).
    top, bottom = draw.textbbox((0, 0), text, font=layout.font)[1::2]
    draw.text((x, mid - (top + bottom) / 2), text, fill=_TEXT, font=layout.font)
    return x + draw.textlength(text, font=layout.font) + 14 * u


def _colour(fraction: float) -> tuple[int, int, int]:
    """Piecewise-linear colour map over _STOPS for a position fraction in [0, 1]."""
    scaled = min(max(fraction, 0.0), 1.0) * (len(_STOPS) - 1)
    i = min(int(scaled), len(_STOPS) - 2)
    f = scaled - i
    lo, hi = _STOPS[i], _STOPS[i + 1]
    return tuple(round(a + (b - a) * f) for a, b in zip(lo, hi, strict=True))


def _supersampling() -> int:
    """Drawing scale: 2 (drawn at 2x and shrunk, since Pillow does not anti-alias lines).

    Without FreeType the default font is a fixed-size bitmap that cannot grow with the
    drawing and would end up half size, so such installs draw at 1x.
    """
    return 2 if isinstance(_font(12), ImageFont.FreeTypeFont) else 1


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError):
        # Pillow < 10.1 or no FreeType: the fixed-size bitmap default is still legible.
        return ImageFont.load_default()


def _header(kind: str, height: int, width: int, frames: int, seed: int) -> str:
    text = f"{kind} scan orders on {height}x{width}"
    if kind in ("sweep3d", "zigzag3d"):
        text += f", {frames} frame" + ("s" if frames > 1 else "")
    if kind == "random":
        text += f", seed {seed}"
    return text


def _order_title(kind: str, k: int) -> str:
    prefix = _LABELS.get(kind)
    return f"{kind} {prefix}{k}" if prefix else kind
