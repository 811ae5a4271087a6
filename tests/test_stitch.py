"""Stitching per-patch values and maps into heatmaps, with hand-computed expectations."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_saliency.errors import InputError
from wsi_saliency.scan.stitch import (
    HeatmapStitcher,
    MapStitcher,
    bilinear_resize_maps,
    gaussian_weights,
)
from wsi_saliency.slide.tiling import tile_grid

nan = np.nan


def test_heatmap_one_cell_per_patch() -> None:
    st = HeatmapStitcher((2, 3))
    st.aggregate(np.array([0.1, 0.9]), np.array([[0, 0], [1, 2]]))
    st.aggregate(np.array([0.5]), np.array([[0, 1]]))
    out = st.finalize()
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, [[0.1, 0.5, nan], [nan, nan, 0.9]], rtol=1e-6)
    assert st.n_patches == 3


def test_heatmap_overlaps_are_averaged() -> None:
    # stride = half a patch: a patch covers 2 x 2 cells, the heatmap is (rows + 1, cols + 1)
    st = HeatmapStitcher((2, 2), 1, patch_cells=2)
    st.aggregate([1.0, 0.0, 0.5], [[0, 0], [0, 1], [1, 1]], patch_cells=2)
    want = [
        [1.0, 0.5, 0.0],
        [1.0, 0.5, 0.25],
        [nan, 0.5, 0.5],
    ]
    np.testing.assert_allclose(st.finalize(), want, rtol=1e-6)
    # the same patch twice counts twice; a NaN score does not count
    st = HeatmapStitcher((1, 1))
    st.aggregate([0.2, 0.6, np.nan], [[0, 0], [0, 0], [0, 0]])
    assert st.finalize()[0, 0] == pytest.approx(0.4)
    with pytest.raises(InputError):
        HeatmapStitcher((1, 1)).aggregate([0.5], [[0, 0]], patch_cells=3)


def test_heatmap_alignment_and_scale() -> None:
    st = HeatmapStitcher((3, 4), cells_per_stride=2, l0_per_stride=187.0)
    st.aggregate([0.7], [[1, 2]])  # lands at cells rows 2..3, cols 4..5
    out = st.finalize()
    assert out.shape == (6, 8)
    assert np.isfinite(out).sum() == 4
    np.testing.assert_allclose(out[2:4, 4:6], 0.7)
    assert st.l0_per_cell == pytest.approx(93.5)


def test_heatmap_from_grid() -> None:
    grid = tile_grid((2000, 1000), 2.0, 96, 48)
    st = HeatmapStitcher.from_grid(grid)
    assert st.patch_cells == 2 and st.stride_cells == 1
    assert st.shape == (grid.grid_shape[0] + 1, grid.grid_shape[1] + 1)
    assert st.l0_per_cell == pytest.approx(96.0)  # level-0 px per cell = the stride
    st.aggregate(np.ones(len(grid)), grid.grid_rc)
    assert np.isfinite(st.finalize()).all()
    with pytest.raises(InputError):
        st.aggregate([1.0], [[grid.grid_shape[0], 0]])
    with pytest.raises(InputError):
        st.aggregate([1.0, 2.0], [[0, 0]])


def test_bilinear_resize_by_hand() -> None:
    up = bilinear_resize_maps(np.array([[[0.0, 1.0], [2.0, 3.0]]]), 4)
    # output centres at -0.25, 0.25, 0.75, 1.25 input px -> clamped 0, 0.25, 0.75, 1
    np.testing.assert_allclose(up[0, 0], [0.0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(up[0, :, 0], [0.0, 0.5, 1.5, 2.0])
    np.testing.assert_allclose(bilinear_resize_maps(np.full((1, 3, 3), 0.3), 12), 0.3)


def test_map_stitcher_overlap_and_no_normalisation() -> None:
    st = MapStitcher((1, 2), cells_per_patch=4, stride_cells=2, l0_per_cell=46.75)
    st.aggregate(np.stack([np.full((3, 3), 0.2), np.full((3, 3), 0.6)]), [[0, 0], [0, 1]])
    out = st.finalize()
    assert out.shape == (4, 6)
    np.testing.assert_allclose(out[:, :2], 0.2)  # not rescaled to [0, 1] per patch
    np.testing.assert_allclose(out[:, 2:4], 0.4)  # overlap averaged
    np.testing.assert_allclose(out[:, 4:], 0.6)
    assert st.l0_per_cell == 46.75


def test_map_stitcher_gaussian_weights() -> None:
    w = gaussian_weights(4, 0.125)
    assert w.shape == (4, 4) and np.allclose(w, w.T) and w.max() == 1.0
    st = MapStitcher((1, 2), 4, 2, sigma_scale=0.125)
    st.aggregate(np.stack([np.zeros((2, 2)), np.ones((2, 2))]), [[0, 0], [0, 1]])
    out = st.finalize()
    # overlap columns 2, 3: patch A's cells 2, 3 and patch B's cells 0, 1
    g = w[0]  # the row profile scaled by the same row weight cancels out
    assert out[0, 2] == pytest.approx(g[0] / (g[2] + g[0]))
    assert out[0, 3] == pytest.approx(g[1] / (g[3] + g[1]))
    assert out[0, 0] == 0.0 and out[0, 5] == 1.0


def test_map_stitcher_from_grid_and_gaps() -> None:
    grid = tile_grid((1000, 1000), 2.0, 96, 48)
    st = MapStitcher.from_grid(grid, cells_per_patch=12)
    assert (st.patch_cells, st.stride_cells) == (12, 6)
    assert st.l0_per_cell == pytest.approx(192 / 12)
    with pytest.raises(InputError):
        MapStitcher.from_grid(grid, cells_per_patch=5)
    # stride larger than the patch leaves unscored gaps
    sparse = MapStitcher((1, 2), cells_per_patch=2, stride_cells=3)
    sparse.aggregate(np.ones((2, 3, 3)), [[0, 0], [0, 1]])
    out = sparse.finalize()
    assert out.shape == (3, 6)
    assert (
        np.isnan(out[:, 2]).all() and np.isnan(out[2]).all() and (out[:2, [0, 1, 3, 4]] == 1).all()
    )
