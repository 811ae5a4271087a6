"""Colour maps shared by every heatmap writer (PNG overlays, pyramidal TIFFs, the review page).

One function turns a float heatmap [row, col] into RGBA uint8 so that all outputs of a slide
show the same colours for the same values: probabilities on ``jet`` over the fixed range
[0, 1]; Grad-CAM (raw, not normalised per patch) on ``inferno`` over one range per slide,
0 to its 99.5th percentile. Cells that were not scored (NaN) are fully transparent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ColourScale:
    """How values map to colours: ``cmap`` (a matplotlib name) over [vmin, vmax]."""

    cmap: str
    vmin: float
    vmax: float
    label: str

    def describe(self) -> dict:
        return {"cmap": self.cmap, "vmin": self.vmin, "vmax": self.vmax, "label": self.label}


PROBABILITY_SCALE = ColourScale("jet", 0.0, 1.0, "P(metastasis)")


def gradcam_scale(heatmap: np.ndarray) -> ColourScale:
    """Grad-CAM's slide-wide scale: 0 to the 99.5th percentile of the scored cells."""
    finite = heatmap[np.isfinite(heatmap)]
    vmax = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    return ColourScale(
        "inferno", 0.0, vmax if vmax > 0.0 else 1e-6, "Grad-CAM (raw, 0 to 99.5th pct)"
    )


def colourise(heatmap: np.ndarray, scale: ColourScale, *, alpha: float = 1.0) -> np.ndarray:
    """RGBA uint8 [H, W, 4] of ``heatmap`` [H, W]; alpha ``alpha`` where finite, 0 where NaN."""
    from matplotlib import colormaps

    values = np.asarray(heatmap, np.float32)
    finite = np.isfinite(values)
    span = scale.vmax - scale.vmin
    unit = np.clip((np.where(finite, values, scale.vmin) - scale.vmin) / span, 0.0, 1.0)
    rgba = colormaps[scale.cmap](unit, bytes=True)
    rgba[..., 3] = np.where(finite, np.uint8(round(255 * alpha)), np.uint8(0))
    return rgba


def colour_bar(scale: ColourScale, n: int = 256) -> np.ndarray:
    """A horizontal legend strip, RGBA uint8 [16, n, 4], from ``vmin`` (left) to ``vmax``."""
    ramp = np.linspace(scale.vmin, scale.vmax, n, dtype=np.float32)[None, :].repeat(16, axis=0)
    return colourise(ramp, scale)
