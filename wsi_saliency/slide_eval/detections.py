"""Lesion detections from a probability heatmap, and the Camelyon16 submission CSV.

Two ways to turn a heatmap into detections (each a probability and a level-0 ``(x, y)``):

- ``components`` (default): 8-connected regions of cells at or above ``threshold``; one
  detection per region at its highest cell, with that cell's probability. One region is one
  detection, so a large false-positive area costs one false positive, and a lesion is found
  as long as one region overlaps it. Regions closer than a cell merge.
- ``maxima``: local maxima at or above ``threshold`` within a disc of ``radius_um`` (what NCRF
  does with non-maximum suppression). A large lesion gets several detections (the extra ones
  are free: only a lesion's best hit counts), but so does a large false-positive area.

On the synthetic Camelyon16 benchmark (``benchmarks/camelyon16_synthetic.py``) both give
FROC 1.0 on the demo model's heatmaps, and on deliberately degraded heatmaps they stay within
one lesion (of six) of each other, neither consistently ahead: at a low threshold noise can
merge a lesion into a large component whose peak lies outside it (a miss that ``maxima``
avoids), while ``maxima`` makes more false positives in total (460 against 350 at 0.5 on
one degraded set). ``components`` at 0.5 is the default: one
detection per suspicious region is what a reader reviews. NaN cells (not scored) count as 0.
Detection ``(x, y)`` is the centre of the cell, rounded to whole level-0 pixels (the
submission format has integer coordinates, and evaluation uses exactly what is written).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_saliency.errors import DataError
from wsi_saliency.outputs.atomic import atomic_path

METHODS = ("components", "maxima")


@dataclass(frozen=True, eq=False)
class Detections:
    """``probs`` float64 ``[N]`` (descending) and ``l0_xy`` int64 ``[N, 2]`` level-0 (x, y)."""

    probs: np.ndarray
    l0_xy: np.ndarray

    def __len__(self) -> int:
        return int(self.probs.size)


def _as_detections(values: np.ndarray, rc: np.ndarray, l0_per_cell: float) -> Detections:
    # float32 heatmap values as the 9 significant digits written to the CSV (which identify
    # a float32 exactly), so that evaluating the CSV files gives the same numbers.
    probs = np.array([float(f"{v:.9g}") for v in np.asarray(values, np.float32).reshape(-1)])
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    l0_xy = np.floor((rc[:, ::-1] + 0.5) * l0_per_cell + 0.5).astype(np.int64)
    order = np.lexsort((l0_xy[:, 0], l0_xy[:, 1], -probs))
    return Detections(probs=probs[order], l0_xy=l0_xy[order])


def extract_detections(
    heatmap: np.ndarray,
    l0_per_cell: float,
    *,
    method: str = "components",
    threshold: float = 0.5,
    slide_mpp: float | None = None,
    radius_um: float = 150.0,
) -> Detections:
    """Detections from a probability heatmap.

    Args:
        heatmap: float ``[rows, cols]``, NaN where not scored; cell ``(r, c)`` covers level-0 x
            in ``[c*d, (c+1)*d)``, y in ``[r*d, (r+1)*d)``, d = ``l0_per_cell``.
        l0_per_cell: level-0 pixels per heatmap cell (``heatmap_prob_downsample``).
        method: ``components`` or ``maxima`` (see the module docstring).
        threshold: cells below it are ignored.
        slide_mpp: level-0 microns per pixel (needed by ``maxima``).
        radius_um: suppression radius of ``maxima``.
    """
    from scipy import ndimage as ndi

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    hm = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0)
    above = hm >= threshold
    empty = Detections(np.zeros(0), np.zeros((0, 2), np.int64))
    if not above.any():
        return empty
    eight = np.ones((3, 3), dtype=bool)
    if method == "components":
        labels, n = ndi.label(above, structure=eight)
        idx = np.arange(1, n + 1)
        rc = np.array(ndi.maximum_position(hm, labels, idx), dtype=np.int64).reshape(-1, 2)
        return _as_detections(hm[rc[:, 0], rc[:, 1]], rc, l0_per_cell)
    if slide_mpp is None or slide_mpp <= 0:
        raise ValueError("method 'maxima' needs slide_mpp (microns per pixel)")
    r = max(1, int(np.floor(radius_um / (l0_per_cell * slide_mpp))))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = yy**2 + xx**2 <= r * r
    peak = above & (hm == ndi.maximum_filter(hm, footprint=disc, mode="constant", cval=0.0))
    # Neighbouring maxima within each other's disc are equal (a plateau): one detection.
    labels, n = ndi.label(peak, structure=disc[r - 1 : r + 2, r - 1 : r + 2])
    rc = np.array(ndi.maximum_position(hm, labels, np.arange(1, n + 1)), np.int64).reshape(-1, 2)
    return _as_detections(hm[rc[:, 0], rc[:, 1]], rc, l0_per_cell)


def write_detections_csv(path: str | Path, detections: Detections) -> Path:
    """Camelyon16 submission format: one row per detection, ``confidence,x,y``, no header."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.writer(f)
        for p, (x, y) in zip(detections.probs, detections.l0_xy, strict=True):
            w.writerow([f"{p:.9g}", int(x), int(y)])
    return Path(path)


def read_detections_csv(path: str | Path) -> Detections:
    """Read a Camelyon16 submission CSV (``confidence,x,y`` rows; a header row is skipped)."""
    path = Path(path)
    probs, xy = [], []
    with path.open(newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                p, x, y = float(row[0]), float(row[1]), float(row[2])
            except (ValueError, IndexError):
                if i == 1:
                    continue  # a header
                raise DataError(
                    f"{path} line {i}: expected confidence,x,y numbers, got {','.join(row)!r}"
                ) from None
            probs.append(p)
            xy.append((int(x), int(y)))
    return Detections(np.asarray(probs, np.float64), np.asarray(xy, np.int64).reshape(-1, 2))
