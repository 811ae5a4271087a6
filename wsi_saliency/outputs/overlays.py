"""PNG overlays for review: heatmaps on the slide overview, with a colour bar, and the tissue mask.

Heatmaps are drawn in the slide's frame: overview pixel (r, c) shows heatmap cell
(floor((r + 0.5) * oy / d), floor((c + 0.5) * ox / d)) where (ox, oy) are level-0 px per
overview pixel and d is level-0 px per heatmap cell. Cells that were not scored stay clear.

The figure is composed with numpy and Pillow, not drawn by matplotlib: the overview at its own
pixels (enlarged by a whole factor when small), a title, a legend line and, for heatmaps, a
colour bar with ticks and the scale's label. Drawing the same figures with matplotlib cost
about 2.3 s each (Lanczos resampling of the image inside the figure, then a large RGBA PNG);
this costs about a tenth. Text is set in DejaVu Sans, the font matplotlib ships.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from wsi_saliency.outputs.atomic import atomic_path
from wsi_saliency.outputs.colour import ColourScale, colourise

MIN_SIDE = 480  # a smaller overview is enlarged (nearest, by a whole factor) to at least this
MARGIN = 10  # px of white around the figure
TITLE_PX = 14  # font sizes (px)
TEXT_PX = 12
BAR_W = 18  # colour bar: width, gap to the image, its height against the image's
BAR_GAP = 16
BAR_FRACTION = 0.6
BAR_MIN_H = 160
PNG_COMPRESS_LEVEL = 3  # zlib level: 6 (Pillow's default) costs twice the time for 10 % less
TISSUE_EDGE_RGB = (0, 200, 0)


def heatmap_on_grid(
    heatmap: np.ndarray,
    l0_per_cell: float,
    shape_rc: tuple[int, int],
    l0_per_px: tuple[float, float],
) -> np.ndarray:
    """Sample ``heatmap`` [H, W] onto an image grid ``shape_rc`` (nearest cell); NaN outside."""
    rows, cols = _cells_of_pixels(heatmap.shape, l0_per_cell, shape_rc, l0_per_px)
    out = np.full(shape_rc, np.nan, np.float32)
    if heatmap.size == 0:
        return out
    r_ok, c_ok = rows >= 0, cols >= 0
    out[np.ix_(r_ok, c_ok)] = heatmap[np.ix_(rows[r_ok], cols[c_ok])]
    return out


def _cells_of_pixels(
    hm_shape: tuple[int, ...],
    l0_per_cell: float,
    shape_rc: tuple[int, int],
    l0_per_px: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """For each image row and column, the heatmap row / column it shows (int64; -1 outside)."""
    rows = ((np.arange(shape_rc[0]) + 0.5) * l0_per_px[1] / l0_per_cell).astype(np.int64)
    cols = ((np.arange(shape_rc[1]) + 0.5) * l0_per_px[0] / l0_per_cell).astype(np.int64)
    rows[rows >= hm_shape[0]] = -1
    cols[cols >= hm_shape[1]] = -1
    return rows, cols


# ---------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)
def _font_path() -> str | None:
    """DejaVu Sans as matplotlib ships it (found without importing matplotlib), or None."""
    import importlib.util

    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return str(path)
    return None


@functools.lru_cache(maxsize=8)
def _font(size: int):
    from PIL import ImageFont

    path = _font_path()
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size)


@functools.lru_cache(maxsize=4)
def _charmap(font_path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_path).get_charmap())


def drawable(text: str) -> str:
    """``text`` with each character that the overlays' font cannot draw shown as a box (U+25A1),
    instead of a blank or an unlabelled glyph (e.g. a slide named in Japanese: DejaVu Sans has
    no kana). The file names in every other output are untouched."""
    path = _font_path()
    if path is None:
        return text
    codes = _charmap(path)
    return "".join(c if c == "\n" or ord(c) in codes else "\u25a1" for c in text)


def _text_size(text: str, size: int) -> tuple[int, int]:
    """(width, height) px that ``text`` takes in ``_font(size)``, ascent to descent."""
    left, _, right, _ = _font(size).getbbox(text)
    ascent, descent = _font(size).getmetrics()
    return int(math.ceil(right - min(left, 0))), ascent + descent


# ---------------------------------------------------------------- colour bar


def bar_ticks(scale: ColourScale, target: int = 5) -> list[tuple[float, str]]:
    """About ``target`` round values in [vmin, vmax] (steps of 1, 2, 2.5 or 5 x 10^k), each with
    its label, printed to the step's precision (in ``%g`` form when tiny or huge)."""
    span = scale.vmax - scale.vmin
    if not span > 0:
        return [(scale.vmin, f"{scale.vmin:.3g}")]
    power = math.floor(math.log10(span / target))
    mult = next(m for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * 10.0**power >= span / target * 0.999)
    step = mult * 10.0**power
    decimals = max(0, -power - (1 if mult == 10.0 else 0) + (1 if mult == 2.5 else 0))
    first = math.ceil(scale.vmin / step - 1e-9)
    last = math.floor(scale.vmax / step + 1e-9)
    fmt = f".{decimals}f" if -4 <= power <= 4 else ".3g"  # 2e-07, not 0.0000002
    return [(k * step, format(k * step, fmt)) for k in range(first, last + 1)]


def _colour_bar(scale: ColourScale, height: int):
    """The colour bar as an RGB Pillow image: the ramp (vmax at the top, opaque) framed in
    black, tick marks and labels to its right, the scale's label turned 90 degrees beyond."""
    from PIL import Image, ImageDraw

    ticks = bar_ticks(scale)
    label_w = max(_text_size(text, TEXT_PX)[0] for _, text in ticks)
    label_h = _text_size(scale.label, TEXT_PX)
    width = BAR_W + 4 + 2 + label_w + 8 + label_h[1]
    pad = TEXT_PX // 2 + 1  # room for the half of the end labels beyond the ramp
    image = Image.new("RGB", (width, height + 2 * pad), "white")
    values = np.linspace(scale.vmax, scale.vmin, height, dtype=np.float32)
    ramp = colourise(values[:, None], scale)[..., :3]
    image.paste(Image.fromarray(np.ascontiguousarray(ramp.repeat(BAR_W, axis=1))), (0, pad))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, pad, BAR_W - 1, pad + height - 1), outline="black")
    span = scale.vmax - scale.vmin
    for value, text in ticks:
        frac = (scale.vmax - value) / span if span > 0 else 0.0
        y = pad + round(frac * (height - 1))
        draw.line((BAR_W, y, BAR_W + 3, y), fill="black")
        draw.text((BAR_W + 6, y), text, fill="black", font=_font(TEXT_PX), anchor="lm")
    turned = Image.new("RGB", label_h, "white")
    ImageDraw.Draw(turned).text((0, 0), scale.label, fill="black", font=_font(TEXT_PX))
    turned = turned.rotate(90, expand=True)
    image.paste(turned, (width - label_h[1], pad + max(0, (height - turned.height) // 2)))
    return image, pad


# ---------------------------------------------------------------- figure


def _enlargement(shape_rc: tuple[int, int]) -> int:
    """The whole factor that brings a small overview's longer side to ``MIN_SIDE``."""
    return max(1, math.ceil(MIN_SIDE / max(1, max(shape_rc))))


def _enlarge(image: np.ndarray, k: int) -> np.ndarray:
    return image if k == 1 else image.repeat(k, axis=0).repeat(k, axis=1)


def _compose(
    image: np.ndarray,
    title: str,
    legend: list[tuple[tuple[int, int, int] | None, str]],
    bar_scale: ColourScale | None = None,
):
    """The figure as an RGB Pillow image: ``title`` centred on top, ``image`` (uint8 RGB, at
    its own pixels), the colour bar of ``bar_scale`` to its right, and a legend line below
    (each entry a swatch colour, or None for text alone, and its text)."""
    from PIL import Image, ImageDraw

    h, w = image.shape[:2]
    title = drawable(title)
    title_wh = _text_size(title, TITLE_PX)
    bar = pad = None
    if bar_scale is not None:
        bar, pad = _colour_bar(bar_scale, max(BAR_MIN_H, min(h, round(h * BAR_FRACTION))))
    right = BAR_GAP + bar.width if bar is not None else 0
    legend_w = sum(_text_size(text, TEXT_PX)[0] + (22 if rgb else 0) + 18 for rgb, text in legend)
    width = 2 * MARGIN + max(w + right, title_wh[0], legend_w)
    top = MARGIN + title_wh[1] + 8
    height = top + h + 8 + TEXT_PX + 4 + MARGIN
    canvas = Image.new("RGB", (width, height), "white")
    x0 = MARGIN + (width - 2 * MARGIN - w - right) // 2
    canvas.paste(Image.fromarray(np.ascontiguousarray(image)), (x0, top))
    if bar is not None:
        bar_top = top + (h - (bar.height - 2 * pad)) // 2 - pad
        canvas.paste(bar, (x0 + w + BAR_GAP, max(0, bar_top)))
    draw = ImageDraw.Draw(canvas)
    draw.text((width // 2, MARGIN), title, fill="black", font=_font(TITLE_PX), anchor="mt")
    x, y = x0, top + h + 8
    for rgb, text in legend:
        if rgb is not None:
            draw.rectangle((x, y + 1, x + 15, y + TEXT_PX - 1), fill=rgb, outline=(90, 90, 90))
            x += 22
        draw.text((x, y), text, fill=(40, 40, 40), font=_font(TEXT_PX))
        x += _text_size(text, TEXT_PX)[0] + 18
    return canvas


def _save_png(canvas, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="png", compress_level=PNG_COMPRESS_LEVEL)
    return Path(path)


def write_heatmap_png(
    path: str | Path,
    overview: np.ndarray,
    overview_l0_per_px: tuple[float, float],
    heatmap: np.ndarray,
    l0_per_cell: float,
    *,
    title: str,
    scale: ColourScale,
    alpha: float = 0.45,
) -> Path:
    """The overview with ``heatmap`` blended over it on ``scale`` (opacity ``alpha``; cells not
    scored left clear) and a colour bar: the same colours as the TIFFs and the review page."""
    k = _enlargement(overview.shape[:2])
    image = _enlarge(np.asarray(overview)[..., :3], k)
    shape_rc = image.shape[:2]
    l0_per_px = (overview_l0_per_px[0] / k, overview_l0_per_px[1] / k)
    rows, cols = _cells_of_pixels(heatmap.shape, l0_per_cell, shape_rc, l0_per_px)
    if heatmap.size and (rows >= 0).any() and (cols >= 0).any():
        # colour the cells once, then pick each pixel's cell: the cells cover the slide by
        # scaling alone, and a NaN cell (alpha 0) or a pixel beyond the map shows the slide
        cells = colourise(heatmap, scale, alpha=alpha)
        r_ok, c_ok = np.flatnonzero(rows >= 0), np.flatnonzero(cols >= 0)
        rgba = cells[np.ix_(rows[r_ok], cols[c_ok])]
        under = image[r_ok[0] : r_ok[-1] + 1, c_ok[0] : c_ok[-1] + 1].astype(np.float32)
        a = rgba[..., 3:].astype(np.float32) / 255.0
        blended = under * (1.0 - a) + rgba[..., :3].astype(np.float32) * a
        image = image.copy()
        image[r_ok[0] : r_ok[-1] + 1, c_ok[0] : c_ok[-1] + 1] = (blended + 0.5).astype(np.uint8)
    legend = [(None, f"no colour: not scored; colours at {alpha:.0%} opacity over the slide")]
    return _save_png(_compose(image, title, legend, scale), path)


def _outline(mask: np.ndarray) -> np.ndarray:
    """The pixels of ``mask`` [H, W] bool that touch (4-connected) a pixel of the other value,
    on both sides of the edge (skimage is already loaded by the tissue mask: no import cost)."""
    from skimage.segmentation import find_boundaries

    return find_boundaries(mask, connectivity=1, mode="thick")


def write_tissue_png(
    path: str | Path,
    overview: np.ndarray,
    overview_l0_per_px: tuple[float, float],
    mask: np.ndarray,
    mask_l0_per_px: tuple[float, float],
    *,
    title: str,
) -> Path:
    """The overview with the tissue mask's outline (green) and non-tissue dimmed."""
    k = _enlargement(overview.shape[:2])
    image = _enlarge(np.asarray(overview)[..., :3], k)
    h, w = image.shape[:2]
    rows = np.minimum(
        ((np.arange(h) + 0.5) * overview_l0_per_px[1] / k / mask_l0_per_px[1]).astype(np.int64),
        mask.shape[0] - 1,
    )
    cols = np.minimum(
        ((np.arange(w) + 0.5) * overview_l0_per_px[0] / k / mask_l0_per_px[0]).astype(np.int64),
        mask.shape[1] - 1,
    )
    on_overview = mask[np.ix_(rows, cols)].astype(bool)
    shown = image.astype(np.float32)
    shown[~on_overview] = shown[~on_overview] * 0.45 + 255 * 0.55 * 0.3
    shown[_outline(on_overview)] = TISSUE_EDGE_RGB
    legend = [
        (TISSUE_EDGE_RGB, "tissue mask outline"),
        ((157, 157, 157), "not tissue (dimmed)"),
    ]
    canvas = _compose((shown + 0.5).clip(0, 255).astype(np.uint8), title, legend)
    return _save_png(canvas, path)
