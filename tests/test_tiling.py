"""The patch grid: target-plane layout, level-0 mapping, tissue fractions."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_saliency.errors import InputError
from wsi_saliency.slide.tiling import mask_fraction, tile_grid


def test_grid_layout_and_mapping() -> None:
    g = tile_grid((1000, 800), 2.0, 96, 96)
    # target plane 500 x 400 -> 5 cols, 4 rows of whole patches
    assert g.grid_shape == (4, 5) and len(g) == 20
    assert g.patch_l0 == 192 and g.stride_l0 == 192
    i = np.flatnonzero((g.grid_rc[:, 0] == 1) & (g.grid_rc[:, 1] == 2))[0]
    assert g.t_xy[i].tolist() == [192, 96]
    assert g.l0_xy[i].tolist() == [384, 192]
    assert g.l0_xy.dtype == np.int64 and g.tissue_fraction.dtype == np.float32
    assert (g.tissue_fraction == 1).all()
    assert (g.l0_xy + g.patch_l0 <= np.array([1000, 800])).all()


def test_overlapping_stride_and_cmu_scale() -> None:
    g = tile_grid((2220, 2967), 0.972 / 0.499, 96, 48)
    t_w, t_h = 2220 / g.l0_per_t, 2967 / g.l0_per_t
    assert g.grid_shape == (int((t_h - 96) // 48) + 1, int((t_w - 96) // 48) + 1)
    assert g.patch_l0 == pytest.approx(187, rel=0.01)
    assert np.array_equal(g.l0_xy, np.rint(g.t_xy * g.l0_per_t).astype(np.int64))


def test_cover_edges() -> None:
    g = tile_grid((1000, 800), 2.0, 96, 96, cover_edges=True)
    assert g.grid_shape == (5, 6)
    assert g.l0_xy[:, 0].max() < 1000 and g.l0_xy[:, 0].max() + g.patch_l0 > 1000
    assert tile_grid((100, 100), 2.0).grid_shape == (0, 0)
    assert tile_grid((100, 100), 2.0, cover_edges=True).grid_shape == (1, 1)


def test_mask_fraction_is_exact() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.5
    scale = 16  # level-0 px per mask px
    full = np.kron(mask, np.ones((scale, scale), bool))  # the mask in level-0 px
    xy = rng.integers(0, 30 * 16 - 50, (40, 2))
    xy[:, 1] = rng.integers(0, 20 * 16 - 50, 40)
    got = mask_fraction(mask, xy, 37.0, scale)
    want = [full[y : y + 37, x : x + 37].mean() for x, y in xy]
    np.testing.assert_allclose(got, want, atol=1e-6)
    # outside the mask counts as background
    assert mask_fraction(np.ones((2, 2), bool), np.array([[16, 0]]), 32.0, 16)[0] == pytest.approx(
        0.5
    )


def test_tissue_and_roi_filtering() -> None:
    mask = np.zeros((50, 50), bool)
    mask[:, :25] = True  # left half is tissue
    g = tile_grid((1000, 1000), 2.0, 96, 96, mask=mask, mask_l0_per_px=20.0)
    assert g.grid_shape == (5, 5) and g.n_candidates == 25
    # columns 0, 1 fully in tissue; column 2 spans l0 x 384..576, tissue to 500 -> 116/192
    assert set(g.grid_rc[:, 1].tolist()) == {0, 1, 2}
    assert g.tissue_fraction[g.grid_rc[:, 1] == 2] == pytest.approx(116 / 192)
    assert g.n_skipped_tissue == 10
    strict = tile_grid((1000, 1000), 2.0, mask=mask, min_tissue_fraction=0.7)
    assert set(strict.grid_rc[:, 1].tolist()) == {0, 1}  # default scale from the shapes
    roi = np.zeros((10, 10), bool)
    roi[:4, :] = True  # top 400 level-0 px
    r = tile_grid((1000, 1000), 2.0, mask=mask, roi=roi)
    assert set(r.grid_rc[:, 0].tolist()) == {0, 1}  # row 1 spans 192..384 inside, row 2 half
    assert r.n_skipped_roi == 9 and r.n_skipped_tissue == 10
    sub = r.subset(np.array([0, 2]))
    assert len(sub) == 2 and np.array_equal(sub.l0_xy, r.l0_xy[[0, 2]])


def test_bad_arguments() -> None:
    with pytest.raises(InputError):
        tile_grid((100, 100), 0.0)
    with pytest.raises(InputError):
        tile_grid((100, 100), 1.0, 96, 0)
    with pytest.raises(InputError):
        tile_grid((100, 100), 1.0, min_tissue_fraction=1.5)
    with pytest.raises(InputError):
        tile_grid((100, 100), 1.0, mask=np.zeros((3, 3, 3), bool))


def test_plan_is_accepted() -> None:
    class Plan:
        l0_per_t = 1.948

    g = tile_grid((2220, 2967), Plan())
    assert g.l0_per_t == 1.948 and g.grid_shape == (15, 11)
