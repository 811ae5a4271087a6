"""The patch grid: where the model looks, in the target plane and in level-0 pixels.

The grid is laid out in the target plane (the model's resolution): patch ``(row, col)`` has
its top-left at ``t_xy = (col * stride_t, row * stride_t)`` target pixels, which maps to
``l0_xy = round(t_xy * l0_per_t)`` level-0 pixels. A patch covers ``patch_t * l0_per_t``
level-0 pixels on a side. Only patches with enough tissue (and inside an optional region of
interest) are kept; their fraction is measured on the mask with an integral image, with
exact fractional-pixel areas. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wsi_saliency.errors import InputError

__all__ = ["TileGrid", "mask_fraction", "tile_grid"]


@dataclass
class TileGrid:
    """Kept patches of a slide. ``N`` rows; row ``i`` of every array is one patch.

    l0_xy: int64 [N, 2] top-left ``(x, y)`` in level-0 px. t_xy: int64 [N, 2] top-left in
    target px. grid_rc: int64 [N, 2] ``(row, col)`` in the stride grid. tissue_fraction:
    float32 [N] (1.0 without a mask). grid_shape: ``(rows, cols)`` of the full stride grid.
    patch_l0 / stride_l0: level-0 px per patch side / per stride step.
    """

    l0_xy: np.ndarray
    t_xy: np.ndarray
    grid_rc: np.ndarray
    tissue_fraction: np.ndarray
    grid_shape: tuple[int, int]
    patch_t: int
    stride_t: int
    l0_per_t: float
    l0_size_wh: tuple[int, int]
    n_candidates: int = 0
    n_skipped_tissue: int = 0
    n_skipped_roi: int = 0
    roi_fraction: np.ndarray | None = field(default=None, repr=False)

    @property
    def patch_l0(self) -> float:
        return self.patch_t * self.l0_per_t

    @property
    def stride_l0(self) -> float:
        return self.stride_t * self.l0_per_t

    def __len__(self) -> int:
        return int(self.l0_xy.shape[0])

    def subset(self, index: np.ndarray) -> TileGrid:
        """The grid restricted to rows ``index`` (counts of skipped patches kept)."""
        index = np.asarray(index)
        return TileGrid(
            l0_xy=self.l0_xy[index],
            t_xy=self.t_xy[index],
            grid_rc=self.grid_rc[index],
            tissue_fraction=self.tissue_fraction[index],
            grid_shape=self.grid_shape,
            patch_t=self.patch_t,
            stride_t=self.stride_t,
            l0_per_t=self.l0_per_t,
            l0_size_wh=self.l0_size_wh,
            n_candidates=self.n_candidates,
            n_skipped_tissue=self.n_skipped_tissue,
            n_skipped_roi=self.n_skipped_roi,
            roi_fraction=None if self.roi_fraction is None else self.roi_fraction[index],
        )


def _grid_count(t_len: float, patch_t: int, stride_t: int, cover_edges: bool) -> int:
    if cover_edges:
        if t_len <= 0:
            return 0
        return int(np.ceil(max(t_len - patch_t, 0.0) / stride_t - 1e-9)) + 1
    if t_len < patch_t:
        return 0
    return int(np.floor((t_len - patch_t) / stride_t + 1e-9)) + 1


def _pair(value: float | tuple[float, float]) -> tuple[float, float]:
    if np.isscalar(value):
        return float(value), float(value)  # type: ignore[arg-type]
    x, y = value  # type: ignore[misc]
    return float(x), float(y)


def mask_fraction(
    mask: np.ndarray,
    l0_xy: np.ndarray,
    l0_size: float,
    mask_l0_per_px: float | tuple[float, float],
) -> np.ndarray:
    """Fraction of each level-0 square ``[x, x + l0_size)`` covered by ``mask`` (float32 [N]).

    ``mask`` is bool ``[H, W]`` whose pixel ``[r, c]`` covers level-0
    ``[c * sx, (c + 1) * sx) x [r * sy, (r + 1) * sy)``; area outside the mask counts as 0.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise InputError(
            f"a tissue/region mask must be a non-empty 2-D [rows, cols] image, got {mask.shape}"
        )
    sx, sy = _pair(mask_l0_per_px)
    l0_xy = np.asarray(l0_xy, dtype=np.float64).reshape(-1, 2)
    if l0_xy.shape[0] == 0:
        return np.zeros(0, np.float32)
    h, w = mask.shape
    sat = np.zeros((h + 1, w + 1), np.float64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1, out=sat[1:, 1:])

    def integral(mx: np.ndarray, my: np.ndarray) -> np.ndarray:
        # the integral of a piecewise-constant image is bilinear inside each pixel
        mx = np.clip(mx, 0.0, w)
        my = np.clip(my, 0.0, h)
        c0 = np.minimum(np.floor(mx).astype(np.int64), w - 1)
        r0 = np.minimum(np.floor(my).astype(np.int64), h - 1)
        fx, fy = mx - c0, my - r0
        return (
            sat[r0, c0] * (1 - fx) * (1 - fy)
            + sat[r0, c0 + 1] * fx * (1 - fy)
            + sat[r0 + 1, c0] * (1 - fx) * fy
            + sat[r0 + 1, c0 + 1] * fx * fy
        )

    x0, y0 = l0_xy[:, 0] / sx, l0_xy[:, 1] / sy
    x1, y1 = (l0_xy[:, 0] + l0_size) / sx, (l0_xy[:, 1] + l0_size) / sy
    area = integral(x1, y1) - integral(x0, y1) - integral(x1, y0) + integral(x0, y0)
    return np.clip(area / ((x1 - x0) * (y1 - y0)), 0.0, 1.0).astype(np.float32)


def tile_grid(
    l0_size_wh: tuple[int, int],
    plan_or_l0_per_t: Any,
    patch_t: int = 96,
    stride_t: int = 96,
    *,
    mask: np.ndarray | None = None,
    mask_l0_per_px: float | tuple[float, float] | None = None,
    min_tissue_fraction: float = 0.25,
    roi: np.ndarray | None = None,
    roi_l0_per_px: float | tuple[float, float] | None = None,
    min_roi_fraction: float = 0.5,
    cover_edges: bool = False,
) -> TileGrid:
    """Lay a stride grid of ``patch_t``-pixel patches over a slide of level-0 size ``l0_size_wh``.

    ``plan_or_l0_per_t``: a ``ResolutionPlan`` or level-0 px per target px. ``mask`` (tissue)
    and ``roi`` (user region) are bool ``[H, W]`` images of the whole slide with level-0 px
    per mask pixel ``mask_l0_per_px`` / ``roi_l0_per_px`` (default: slide size / mask size).
    A patch is kept when its tissue fraction >= ``min_tissue_fraction`` and its region
    fraction >= ``min_roi_fraction``. Without ``cover_edges`` only patches lying wholly
    inside the slide are laid; with it the last row/column may hang over the edge.
    """
    l0_per_t = float(getattr(plan_or_l0_per_t, "l0_per_t", plan_or_l0_per_t))
    if not (np.isfinite(l0_per_t) and l0_per_t > 0):
        raise InputError(f"level-0 px per target px must be positive, got {l0_per_t!r}")
    if int(patch_t) <= 0 or int(stride_t) <= 0:
        raise InputError(
            f"patch size and stride must be positive target pixels, got {patch_t}, {stride_t}"
        )
    for label, value in (("min tissue", min_tissue_fraction), ("min region", min_roi_fraction)):
        if not 0.0 <= value <= 1.0:
            raise InputError(f"{label} fraction must be in [0, 1], got {value!r}")
    patch_t, stride_t = int(patch_t), int(stride_t)
    l0_w, l0_h = int(l0_size_wh[0]), int(l0_size_wh[1])
    cols = _grid_count(l0_w / l0_per_t, patch_t, stride_t, cover_edges)
    rows = _grid_count(l0_h / l0_per_t, patch_t, stride_t, cover_edges)

    rr, cc = np.meshgrid(
        np.arange(rows, dtype=np.int64), np.arange(cols, dtype=np.int64), indexing="ij"
    )
    grid_rc = np.stack([rr.ravel(), cc.ravel()], axis=1)
    t_xy = grid_rc[:, ::-1] * stride_t
    l0_xy = np.rint(t_xy * l0_per_t).astype(np.int64)
    patch_l0 = patch_t * l0_per_t
    n_candidates = len(grid_rc)
    keep = np.ones(n_candidates, bool)

    tissue = np.ones(n_candidates, np.float32)
    if mask is not None:
        scale = mask_l0_per_px or (l0_w / np.shape(mask)[1], l0_h / np.shape(mask)[0])
        tissue = mask_fraction(mask, l0_xy, patch_l0, scale)
        keep &= tissue >= min_tissue_fraction
    n_skipped_tissue = int(n_candidates - keep.sum())

    roi_frac = None
    if roi is not None:
        scale = roi_l0_per_px or (l0_w / np.shape(roi)[1], l0_h / np.shape(roi)[0])
        roi_frac = mask_fraction(roi, l0_xy, patch_l0, scale)
        in_roi = roi_frac >= min_roi_fraction
        n_skipped_roi = int((keep & ~in_roi).sum())
        keep &= in_roi
    else:
        n_skipped_roi = 0

    return TileGrid(
        l0_xy=l0_xy[keep],
        t_xy=t_xy[keep],
        grid_rc=grid_rc[keep],
        tissue_fraction=tissue[keep],
        grid_shape=(rows, cols),
        patch_t=patch_t,
        stride_t=stride_t,
        l0_per_t=l0_per_t,
        l0_size_wh=(l0_w, l0_h),
        n_candidates=n_candidates,
        n_skipped_tissue=n_skipped_tissue,
        n_skipped_roi=n_skipped_roi,
        roi_fraction=None if roi_frac is None else roi_frac[keep],
    )
