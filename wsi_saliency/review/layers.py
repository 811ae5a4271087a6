"""What the review page draws over the slide, as plain arrays and lists (no OpenSlide, no I/O).

Frames: every coordinate handed to the page is level-0 ``(x, y)`` pixels; the page divides
by the slide's level-0 width to get OpenSeadragon viewport units. Heatmaps arrive as
``[row, col]`` arrays whose cell ``(r, c)`` covers level-0 ``x in [c*d, (c+1)*d)`` and
``y in [r*d, (r+1)*d)``, ``d`` being level-0 pixels per cell.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_saliency.outputs.colour import ColourScale, colourise


@dataclass(frozen=True)
class OverlayRaster:
    """A heatmap as an RGBA image [h, w, 4] covering level-0 ``(0, 0)`` to ``l0_extent_wh``."""

    rgba: np.ndarray
    l0_extent_wh: tuple[float, float]


def heatmap_raster(
    heatmap: np.ndarray,
    l0_per_cell: float,
    scale: ColourScale,
    *,
    max_side: int = 4096,
    min_side: int = 1024,
) -> OverlayRaster:
    """Colourise ``heatmap`` [H, W] for a browser: blocks averaged (NaN-aware) when it has more
    than ``max_side`` cells on a side, cells repeated (nearest) up to about ``min_side`` pixels
    so that the browser's smoothing only softens the cell edges. Unscored cells stay clear."""
    values = np.asarray(heatmap, np.float32)
    if values.ndim != 2 or values.size == 0:
        raise ValueError(f"heatmap must be a non-empty 2-D array, got shape {values.shape}")
    l0_cell = float(l0_per_cell)
    factor = -(-max(values.shape) // max_side)
    if factor > 1:
        h, w = values.shape
        ph, pw = -(-h // factor) * factor, -(-w // factor) * factor
        padded = np.full((ph, pw), np.nan, np.float32)
        padded[:h, :w] = values
        blocks = padded.reshape(ph // factor, factor, pw // factor, factor)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
            values = np.nanmean(blocks, axis=(1, 3))
        l0_cell *= factor
    h, w = values.shape
    rgba = colourise(values, scale)
    repeat = max(1, min_side // max(h, w))
    if repeat > 1:
        rgba = rgba.repeat(repeat, axis=0).repeat(repeat, axis=1)
    return OverlayRaster(rgba, (w * l0_cell, h * l0_cell))


def tissue_outlines(
    mask: np.ndarray, l0_per_px_xy: tuple[float, float], *, max_points: int = 20000
) -> list[list[list[float]]]:
    """Outlines of ``mask`` [h, w] (non-zero = tissue) as closed rings of level-0 ``[x, y]``.

    A mask pixel ``(r, c)`` covers level-0 ``x in [c*dx, (c+1)*dx)``; contours run through
    pixel centres and are simplified (tolerance grows until at most ``max_points`` remain).
    """
    from skimage.measure import approximate_polygon, find_contours

    binary = np.asarray(mask) > 0
    if not binary.any():
        return []
    # pad so that tissue touching the border still gives closed rings
    contours = find_contours(np.pad(binary, 1).astype(np.float32), 0.5)
    dx, dy = float(l0_per_px_xy[0]), float(l0_per_px_xy[1])
    tolerance = 0.75
    while True:
        rings = [approximate_polygon(c, tolerance) for c in contours if len(c) >= 4]
        if sum(len(r) for r in rings) <= max_points or tolerance > 64:
            break
        tolerance *= 2
    out = []
    for ring in rings:
        if len(ring) < 4:
            continue
        # (row, col) of the padded mask -> level-0 (x, y) of the pixel centre
        xy = np.stack([(ring[:, 1] - 1 + 0.5) * dx, (ring[:, 0] - 1 + 0.5) * dy], axis=1)
        out.append(np.round(xy, 1).tolist())
    return out


def _css_colour(value, default: str = "#00e5ff") -> str:
    """QuPath's ``[r, g, b]`` (or an int, or a CSS string) -> ``#rrggbb``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, tuple)) and len(value) >= 3:
        r, g, b = (int(max(0, min(255, v))) for v in value[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"#{value & 0xFFFFFF:06x}"
    return default


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def read_regions(path: str | Path) -> list[dict]:
    """Polygons of ``regions.geojson`` (level-0 pixel coordinates) for the page.

    Each region: ``rings`` (exterior first, [[x, y], ...]; a MultiPolygon gives one region per
    polygon), ``bbox`` [x0, y0, x1, y1], ``label_xy`` (its topmost vertex), ``name``,
    ``color`` (#rrggbb), ``prob_max``, ``prob_mean``, ``area_um2`` (None when absent).
    ``ValueError`` when the file is not a GeoJSON FeatureCollection; features of other
    geometry types are skipped.
    """
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("features"), list):
        raise ValueError(f"{path} is not a GeoJSON FeatureCollection")
    regions = []
    for feature in doc["features"]:
        if not isinstance(feature, dict):
            continue
        geometry = feature.get("geometry") or {}
        props = feature.get("properties") or {}
        kind = geometry.get("type")
        coords = geometry.get("coordinates") or []
        polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
        cls = props.get("classification") or {}
        for polygon in polygons:
            try:
                rings = [np.asarray(ring, np.float64)[:, :2] for ring in polygon]
            except (ValueError, IndexError):
                continue
            rings = [r for r in rings if r.ndim == 2 and len(r) >= 3 and np.isfinite(r).all()]
            if not rings:
                continue
            outer = rings[0]
            top = np.lexsort((outer[:, 0], outer[:, 1]))[0]  # topmost vertex, leftmost of those
            regions.append(
                {
                    "rings": [np.round(r, 1).tolist() for r in rings],
                    "bbox": [*outer.min(axis=0).tolist(), *outer.max(axis=0).tolist()],
                    "label_xy": outer[top].tolist(),
                    "name": str(cls.get("name") or props.get("name") or "region"),
                    "color": _css_colour(cls.get("color")),
                    "prob_max": _number(props.get("prob_max")),
                    "prob_mean": _number(props.get("prob_mean")),
                    "area_um2": _number(props.get("area_um2")),
                }
            )
    regions.sort(key=lambda r: -(r["prob_max"] if r["prob_max"] is not None else -1.0))
    return regions


def top_patches(l0_xy: np.ndarray, prob: np.ndarray, patch_size_l0: float, k: int) -> list[int]:
    """Indices of the ``k`` most probable patches, most probable first, skipping a patch whose
    centre lies inside one already chosen (with overlapping strides, neighbours would fill
    the gallery with one spot). ``l0_xy`` [N, 2] top-left level-0 (x, y); ``prob`` [N]."""
    chosen: list[int] = []
    if k <= 0 or len(prob) == 0:
        return chosen
    order = np.argsort(-np.nan_to_num(np.asarray(prob, np.float64), nan=-1.0), kind="stable")
    centres = np.asarray(l0_xy, np.float64) + patch_size_l0 / 2.0
    for i in order:
        if not np.isfinite(prob[i]):
            break
        c = centres[i]
        if any(np.all(np.abs(c - centres[j]) < patch_size_l0 / 2.0) for j in chosen):
            continue
        chosen.append(int(i))
        if len(chosen) == k:
            break
    return chosen
