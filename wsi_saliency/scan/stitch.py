"""Stitch per-patch results into slide heatmaps (pure numpy, MONAI ``AvgMerger`` style).

Both stitchers keep a running weighted sum and a weight per heatmap cell, so patches can
arrive in any order and in batches, overlapping patches are averaged and cells no patch
touched come out NaN. Cells are squares of ``l0_per_cell`` level-0 pixels; heatmap cell
``[r, c]`` covers level-0 ``[c * l0_per_cell, (c + 1) * l0_per_cell)`` in x and likewise in
y, so a heatmap aligns with the slide by scaling alone (its origin is the slide's origin).

- :class:`HeatmapStitcher` (one value per patch, e.g. the tumour probability): one cell
  is ``1 / cells_per_stride`` of a grid stride. When the stride is smaller than the patch,
  a patch covers ``patch_cells`` cells per side; its value goes to every cell it covers and
  overlapping patches are averaged (each patch weighted 1).
- :class:`MapStitcher` (a small map per patch, e.g. a 3x3 Grad-CAM): each map is upsampled
  bilinearly to ``cells_per_patch`` cells per side, optionally weighted by a Gaussian
  centred on the patch (``sigma_scale``, as MONAI's sliding-window "gaussian" mode), and
  overlap-averaged. Maps are never normalised per patch, so values stay comparable.
- :func:`resize_heatmap` resamples a whole heatmap to another cell size (NaN-aware), as the
  dense Grad-CAM map needs when its feature cells are coarser than the heatmap cells.
- :func:`seam_index` measures how much a stitched map shows the patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wsi_saliency.errors import InputError

__all__ = [
    "HeatmapStitcher",
    "MapStitcher",
    "SeamIndex",
    "bilinear_resize_maps",
    "covered_cells",
    "gaussian_weights",
    "resize_heatmap",
    "seam_index",
]


def _check_rc(grid_rc: np.ndarray, n: int, grid_shape: tuple[int, int]) -> np.ndarray:
    rc = np.asarray(grid_rc, dtype=np.int64).reshape(-1, 2)
    if rc.shape[0] != n:
        raise InputError(f"got {n} values but {rc.shape[0]} grid positions; they must match")
    if n and (rc.min() < 0 or (rc >= np.asarray(grid_shape)).any()):
        raise InputError(
            f"grid positions outside the grid {grid_shape}: rows/cols must be in range"
        )
    return rc


def _sizes_from_grid(grid: Any, cells_per_patch: int) -> tuple[int, int]:
    """(patch_cells, stride_cells) for a grid; InputError when the stride is not whole cells."""
    stride_cells = grid.stride_t * cells_per_patch / grid.patch_t
    if abs(stride_cells - round(stride_cells)) > 1e-6 or round(stride_cells) < 1:
        raise InputError(
            f"{cells_per_patch} cells per patch does not divide the stride ({grid.stride_t} of a "
            f"{grid.patch_t}-px patch) into whole cells; choose cells per patch so that "
            "stride * cells / patch is an integer"
        )
    return int(cells_per_patch), int(round(stride_cells))


class _Accumulator:
    def __init__(
        self,
        grid_shape_rc: tuple[int, int],
        patch_cells: int,
        stride_cells: int,
        l0_per_cell: float | None,
    ) -> None:
        rows, cols = int(grid_shape_rc[0]), int(grid_shape_rc[1])
        if rows < 0 or cols < 0 or patch_cells < 1 or stride_cells < 1:
            raise InputError(
                f"bad heatmap geometry: grid {grid_shape_rc}, {patch_cells} cells per patch, "
                f"{stride_cells} per stride; all must be positive"
            )
        self.grid_shape = (rows, cols)
        self.patch_cells = int(patch_cells)
        self.stride_cells = int(stride_cells)
        extra = max(0, self.patch_cells - self.stride_cells)
        self.shape = (
            rows * self.stride_cells + extra if rows else 0,
            cols * self.stride_cells + extra if cols else 0,
        )
        self.l0_per_cell = l0_per_cell
        self._sum = np.zeros(self.shape, np.float64)
        self._weight = np.zeros(self.shape, np.float64)
        self.n_patches = 0

    def _add(self, tiles: np.ndarray, weights: np.ndarray, rc: np.ndarray) -> None:
        """Add ``tiles`` [B, p, p] (already weighted) and ``weights`` [p, p] at grid ``rc``."""
        p, s = self.patch_cells, self.stride_cells
        for (r, c), tile in zip(rc, tiles, strict=True):
            y, x = r * s, c * s
            self._sum[y : y + p, x : x + p] += tile
            self._weight[y : y + p, x : x + p] += weights
        self.n_patches += len(rc)

    def finalize(self) -> np.ndarray:
        """The averaged heatmap: float32 ``[H, W]``, NaN where no patch was scored."""
        out = np.full(self.shape, np.nan, np.float32)
        seen = self._weight > 0
        out[seen] = (self._sum[seen] / self._weight[seen]).astype(np.float32)
        return out


class HeatmapStitcher(_Accumulator):
    """One value per patch -> a heatmap with ``cells_per_stride`` cells per grid stride.

    ``patch_cells``: cells a patch covers per side (default ``cells_per_stride``, i.e.
    stride == patch). ``l0_per_stride``: level-0 px per grid stride, so that
    ``l0_per_cell = l0_per_stride / cells_per_stride``. Output shape: ``rows * k + extra``
    by ``cols * k + extra`` with ``k = cells_per_stride``, ``extra = max(0, patch_cells - k)``.
    """

    def __init__(
        self,
        grid_shape_rc: tuple[int, int],
        cells_per_stride: int = 1,
        *,
        patch_cells: int | None = None,
        l0_per_stride: float | None = None,
    ) -> None:
        k = int(cells_per_stride)
        super().__init__(
            grid_shape_rc,
            k if patch_cells is None else int(patch_cells),
            k,
            None if l0_per_stride is None else float(l0_per_stride) / k,
        )

    @classmethod
    def from_grid(cls, grid: Any, cells_per_stride: int = 1) -> HeatmapStitcher:
        """For a ``TileGrid``: a patch covers ``round(patch_t / stride_t * k)`` cells per side."""
        patch_cells = max(1, round(grid.patch_t / grid.stride_t * cells_per_stride))
        return cls(
            grid.grid_shape, cells_per_stride, patch_cells=patch_cells, l0_per_stride=grid.stride_l0
        )

    def aggregate(
        self, values: np.ndarray, grid_rc: np.ndarray, patch_cells: int | None = None
    ) -> None:
        """Add one value per patch (``values`` [B]) at grid ``(row, col)`` positions [B, 2]."""
        if patch_cells is not None and int(patch_cells) != self.patch_cells:
            raise InputError(
                f"patch covers {patch_cells} cells but this heatmap was made for {self.patch_cells}"
            )
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        rc = _check_rc(grid_rc, v.shape[0], self.grid_shape)
        p = self.patch_cells
        ok = np.isfinite(v)  # a NaN score does not count as scored
        tiles = np.broadcast_to(v[ok, None, None], (int(ok.sum()), p, p))
        self._add(tiles, np.ones((p, p)), rc[ok])


def gaussian_weights(cells: int, sigma_scale: float = 0.125) -> np.ndarray:
    """Gaussian [cells, cells] centred on the patch; sigma = sigma_scale * cells; max 1."""
    centre = (cells - 1) / 2
    sigma = max(sigma_scale * cells, 1e-6)
    g = np.exp(-0.5 * ((np.arange(cells) - centre) / sigma) ** 2)
    w = np.outer(g, g)
    return np.maximum(w / w.max(), 1e-3)  # MONAI clamps too: every covered cell stays scored


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """[n_out, n_in] linear interpolation; pixel centres aligned (align_corners=False)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    pos = np.clip(pos, 0, n_in - 1)
    i0 = np.floor(pos).astype(int)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = pos - i0
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), i0] += 1 - f
    m[np.arange(n_out), i1] += f
    return m


def bilinear_resize_maps(maps: np.ndarray, cells: int) -> np.ndarray:
    """Resize maps [B, h, w] to [B, cells, cells] bilinearly (cell centres aligned)."""
    maps = np.asarray(maps, dtype=np.float64)
    ry = _interp_matrix(cells, maps.shape[1])
    rx = _interp_matrix(cells, maps.shape[2])
    return np.einsum("ij,bjk,lk->bil", ry, maps, rx)


class MapStitcher(_Accumulator):
    """Per-patch maps (e.g. Grad-CAM [B, h, w]) -> a heatmap, ``cells_per_patch`` per patch side.

    ``stride_cells``: cells per grid stride (``stride_t * cells_per_patch / patch_t``).
    ``sigma_scale``: None for flat weights, else Gaussian centre weighting (0.125 like MONAI).
    ``l0_per_cell``: level-0 px per cell (``patch_l0 / cells_per_patch``).
    """

    def __init__(
        self,
        grid_shape_rc: tuple[int, int],
        cells_per_patch: int,
        stride_cells: int,
        *,
        sigma_scale: float | None = None,
        l0_per_cell: float | None = None,
    ) -> None:
        super().__init__(grid_shape_rc, int(cells_per_patch), int(stride_cells), l0_per_cell)
        p = self.patch_cells
        self.weights = np.ones((p, p)) if sigma_scale is None else gaussian_weights(p, sigma_scale)

    @classmethod
    def from_grid(
        cls, grid: Any, cells_per_patch: int = 12, *, sigma_scale: float | None = None
    ) -> MapStitcher:
        """For a ``TileGrid``; the stride must be a whole number of cells."""
        p, s = _sizes_from_grid(grid, cells_per_patch)
        return cls(grid.grid_shape, p, s, sigma_scale=sigma_scale, l0_per_cell=grid.patch_l0 / p)

    def aggregate(self, maps: np.ndarray, grid_rc: np.ndarray) -> None:
        """Add maps [B, h, w] (any small size) of the patches at grid ``(row, col)`` [B, 2]."""
        maps = np.asarray(maps, dtype=np.float64)
        if maps.ndim == 4 and maps.shape[-1] == 1:
            maps = maps[..., 0]
        if maps.ndim != 3:
            raise InputError(f"patch maps must be [batch, h, w], got shape {maps.shape}")
        rc = _check_rc(grid_rc, maps.shape[0], self.grid_shape)
        ok = np.isfinite(maps).all(axis=(1, 2))
        up = bilinear_resize_maps(maps[ok], self.patch_cells)
        self._add(up * self.weights, self.weights, rc[ok])


def covered_cells(grid: Any, cells_per_patch: int) -> tuple[np.ndarray, float]:
    """``(bool [H, W], l0_per_cell)``: the cells of ``MapStitcher.from_grid(grid,
    cells_per_patch)``'s heatmap that a scored patch of ``grid`` covers (the rest come out NaN),
    at one byte per cell; InputError when the stride is not whole cells."""
    p, s = _sizes_from_grid(grid, cells_per_patch)
    rows, cols = (int(v) for v in grid.grid_shape)
    extra = max(0, p - s)
    out = np.zeros((rows * s + extra if rows else 0, cols * s + extra if cols else 0), bool)
    for r, c in np.asarray(grid.grid_rc, np.int64).reshape(-1, 2):
        out[r * s : r * s + p, c * s : c * s + p] = True
    return out, float(grid.patch_l0 / p)


def resize_heatmap(heatmap: np.ndarray, shape_rc: tuple[int, int]) -> np.ndarray:
    """Resample ``heatmap`` [H, W] to ``shape_rc`` over the same extent, bilinearly with cell
    centres aligned (as :func:`bilinear_resize_maps`), ignoring NaN cells: each output cell is
    the weighted mean of its finite neighbours, NaN where it has none. float32 [rows, cols]."""
    values = np.asarray(heatmap, np.float64)
    rows, cols = int(shape_rc[0]), int(shape_rc[1])
    if values.shape == (rows, cols):
        return values.astype(np.float32)
    finite = np.isfinite(values)
    ry = _interp_matrix(rows, values.shape[0])
    rx = _interp_matrix(cols, values.shape[1])
    total = ry @ np.where(finite, values, 0.0) @ rx.T
    weight = ry @ finite.astype(np.float64) @ rx.T
    out = np.full((rows, cols), np.nan, np.float32)
    ok = weight > 1e-9
    out[ok] = (total[ok] / weight[ok]).astype(np.float32)
    return out


@dataclass(frozen=True)
class SeamIndex:
    """:func:`seam_index`'s result: ``index = border_mean / centre_mean`` and its parts."""

    index: float
    border_mean: float
    centre_mean: float
    n_border: int
    n_centre: int


def seam_index(
    heatmap: np.ndarray, cells_per_stride: int, mask: np.ndarray | None = None
) -> SeamIndex:
    """How much a stitched map shows the patch grid: the mean over cells that touch a patch
    border divided by the mean over cells at patch centres (1: no grid; 0: black seams).

    Frames: ``heatmap`` [row, col] of heatmap cells whose origin is the slide's, so the patch
    grid's borders lie at multiples of ``cells_per_stride`` cells (the grid stride in cells;
    with stride == patch this is the cells per patch, 12 by default). With
    ``p = cells_per_stride``, cell ``(r, c)`` touches a border when ``r % p`` or ``c % p`` is
    0 or ``p - 1``; it is a centre cell when both are in the middle (``(p - 1) // 2`` or
    ``p // 2``: the central 2 x 2 cells for even ``p``). Only finite cells where ``mask`` (bool,
    the heatmap's shape; e.g. the inside of the lesions) is True count. ``index`` is NaN when
    either set is empty or the centre mean is not positive.
    """
    values = np.asarray(heatmap, np.float64)
    p = int(cells_per_stride)
    if p < 3:
        raise InputError(f"a seam index needs at least 3 cells per stride, got {p}")
    if values.ndim != 2:
        raise InputError(f"heatmap must be [rows, cols], got shape {values.shape}")
    use = np.isfinite(values)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != values.shape:
            raise InputError(f"mask shape {mask.shape} differs from the heatmap's {values.shape}")
        use &= mask
    r = np.arange(values.shape[0])[:, None] % p
    c = np.arange(values.shape[1])[None, :] % p
    edge = {0, p - 1}
    middle = {(p - 1) // 2, p // 2}
    border = (np.isin(r, list(edge)) | np.isin(c, list(edge))) & use
    centre = np.isin(r, list(middle)) & np.isin(c, list(middle)) & use
    n_b, n_c = int(border.sum()), int(centre.sum())
    b_mean = float(values[border].mean()) if n_b else float("nan")
    c_mean = float(values[centre].mean()) if n_c else float("nan")
    index = b_mean / c_mean if n_b and n_c and c_mean > 0 else float("nan")
    return SeamIndex(index, b_mean, c_mean, n_b, n_c)
