"""PNG overlays for review: heatmaps on the slide overview, with a colour bar, and the tissue mask.

Heatmaps are drawn in the slide's frame: overview pixel (r, c) shows heatmap cell
(floor((r + 0.5) * oy / d), floor((c + 0.5) * ox / d)) where (ox, oy) are level-0 px per
overview pixel and d is level-0 px per heatmap cell. Cells that were not scored stay clear.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from wsi_saliency.outputs.atomic import atomic_path
from wsi_saliency.outputs.colour import ColourScale


def heatmap_on_grid(
    heatmap: np.ndarray,
    l0_per_cell: float,
    shape_rc: tuple[int, int],
    l0_per_px: tuple[float, float],
) -> np.ndarray:
    """Sample ``heatmap`` [H, W] onto an image grid ``shape_rc`` (nearest cell); NaN outside."""
    rows = ((np.arange(shape_rc[0]) + 0.5) * l0_per_px[1] / l0_per_cell).astype(np.int64)
    cols = ((np.arange(shape_rc[1]) + 0.5) * l0_per_px[0] / l0_per_cell).astype(np.int64)
    out = np.full(shape_rc, np.nan, np.float32)
    if heatmap.size == 0:
        return out
    r_ok = rows < heatmap.shape[0]
    c_ok = cols < heatmap.shape[1]
    out[np.ix_(r_ok, c_ok)] = heatmap[np.ix_(rows[r_ok], cols[c_ok])]
    return out


@functools.lru_cache(maxsize=4)
def _charmap(font_path: str) -> frozenset[int]:
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_path).get_charmap())


def drawable(text: str) -> str:
    """``text`` with each character that matplotlib's font cannot draw shown as a box (U+25A1),
    instead of a blank and a "Glyph ... missing" warning each (e.g. a slide named in Japanese
    on a machine with only DejaVu fonts). The file names in every other output are untouched."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(), fallback_to_default=True)
    codes = _charmap(path)
    return "".join(c if c == "\n" or ord(c) in codes else "\u25a1" for c in text)


def _figure(image: np.ndarray, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape[:2]
    width_in = min(14.0, max(5.0, w / 110))
    height_in = width_in * h / w + 0.6
    fig, ax = plt.subplots(figsize=(width_in * 1.12, height_in), dpi=110)
    ax.imshow(image, interpolation="lanczos")
    ax.set_title(drawable(title), fontsize=9)
    ax.set_axis_off()
    return fig, ax, plt


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
    """The overview with ``heatmap`` blended over it on ``scale`` and a colour bar (the same
    colours as the TIFFs and the review page)."""
    values = heatmap_on_grid(heatmap, l0_per_cell, overview.shape[:2], overview_l0_per_px)
    fig, ax, plt = _figure(overview, title)
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(
        masked,
        cmap=scale.cmap,
        vmin=scale.vmin,
        vmax=scale.vmax,
        alpha=alpha,
        interpolation="nearest",
    )
    bar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
    bar.solids.set_alpha(1.0)
    bar.set_label(scale.label, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


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
    from skimage.segmentation import find_boundaries

    h, w = overview.shape[:2]
    rows = np.minimum(
        ((np.arange(h) + 0.5) * overview_l0_per_px[1] / mask_l0_per_px[1]).astype(np.int64),
        mask.shape[0] - 1,
    )
    cols = np.minimum(
        ((np.arange(w) + 0.5) * overview_l0_per_px[0] / mask_l0_per_px[0]).astype(np.int64),
        mask.shape[1] - 1,
    )
    on_overview = mask[np.ix_(rows, cols)]
    shown = overview.astype(np.float32)
    shown[~on_overview] = shown[~on_overview] * 0.45 + 255 * 0.55 * 0.3
    edge = find_boundaries(on_overview, mode="thick")
    shown[edge] = (0, 200, 0)
    fig, _, plt = _figure(shown.clip(0, 255).astype(np.uint8), title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
