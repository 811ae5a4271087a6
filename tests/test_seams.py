"""The slide Grad-CAM map without the patch grid: dense Grad-CAM (same formula and scale as the
per-patch maps), the seam index, and probabilities that stay exactly the per-patch classifier's.

The model is an untrained tiny one with weights drawn by NumPy (the same on every backend) and
a logit that averages the channels, so that its Grad-CAM is positive wherever the features are:
its per-patch maps already fall off at the patch borders (zero padding; seam index 0.79 on the
lesion slide here, the trained demo model 0.55-0.57 in benchmarks/results/seams.json), which is
what the default map must not show."""

from dataclasses import replace

import numpy as np
import pytest

from wsi_saliency.config import ModelConfig, ScanConfig
from wsi_saliency.errors import InputError
from wsi_saliency.scan.stitch import resize_heatmap, seam_index

MPP = 0.972  # the model's own resolution: no resampling, level-0 px == model px
SIZE = 1248  # 13 x 13 patches
CELLS = 12


def numpy_weights(model, seed: int) -> None:
    """He-normal convolution kernels from NumPy's generator (backend-independent), the logit's
    kernel ``1 / C`` (Grad-CAM then is the mean of the non-negative features), the rest as built."""
    import keras

    rng = np.random.default_rng(seed)
    weights = []
    for v in model.weights:
        shape = tuple(v.shape)
        if v.path.endswith("kernel") and len(shape) == 4:
            weights.append(rng.normal(0.0, (2.0 / np.prod(shape[:3])) ** 0.5, shape))
        elif v.path.startswith("logit") and v.path.endswith("kernel"):
            weights.append(np.full(shape, 1.0 / shape[0]))
        else:
            weights.append(keras.ops.convert_to_numpy(v))
    model.set_weights([np.asarray(w, np.float32) for w in weights])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(model, card)``: the test model (see the module docstring), saved and loaded back."""
    from conftest import tiny_card

    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import load_model, save_model

    model = build_model(ModelConfig(backbone="tiny", weights="none"))
    numpy_weights(model, seed=3)
    path = save_model(model, tiny_card(), tmp_path_factory.mktemp("seams") / "model.keras")
    return load_model(path)


@pytest.fixture(scope="module")
def lesion_slide(tmp_path_factory):
    """A slide with one lesion about 11 patches across: ``(path, lesion outline)``."""
    from wsi_saliency.synthetic.slides import write_synthetic_slide
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    rng = np.random.default_rng(0)
    lesion = random_blob_polygon(rng, (SIZE / 2, SIZE / 2), 0.43 * SIZE, irregularity=0.1)
    tissue = [np.array([[40, 40], [SIZE - 40, 60], [SIZE - 60, SIZE - 40], [60, SIZE - 50]], float)]
    info = write_synthetic_slide(
        tmp_path_factory.mktemp("slide") / "lesion.tif",
        l0_size_xy=(SIZE, SIZE),
        mpp=MPP,
        lesions=[lesion],
        seed=3,
        tile=256,
        levels=(1, 4),
        tissue=tissue,
        pen_mark=False,
        dark_area=False,
    )
    return info.path, lesion


@pytest.fixture(scope="module")
def scans(tiny, lesion_slide):
    """The lesion slide scanned at default settings and with the per-patch map."""
    from wsi_saliency.scan.pipeline import PatchScorer, scan_slide

    model, card = tiny
    scorer = PatchScorer.from_config(model, card, ScanConfig())
    return {
        m: scan_slide(lesion_slide[0], model, card, ScanConfig(gradcam_map=m), scorer=scorer)
        for m in ("dense", "patches")
    }


@pytest.fixture(scope="module")
def pcam_patches():
    """Eight patches of the sample PCam test split (tissue, so Grad-CAM is not all zero)."""
    import h5py
    from conftest import REPO

    path = REPO / "sample_data" / "pcam" / "camelyonpatch_level_2_split_test_x.h5"
    with h5py.File(path) as f:
        return f["x"][:8]


def _roi(rows: slice, cols: slice) -> np.ndarray:
    """A region of interest on the lesion slide: grid positions ``rows`` x ``cols``."""
    roi = np.zeros((SIZE // 96, SIZE // 96), bool)
    roi[rows, cols] = True
    return roi


def _lesion_cells(lesion: np.ndarray, result) -> np.ndarray:
    from skimage.morphology import disk, erosion

    from wsi_saliency.data.annotations import rasterize

    shape = result.heatmap_gradcam.shape
    inside = rasterize([lesion], shape, result.heatmap_gradcam_downsample)
    return erosion(inside, disk(CELLS // 2)).astype(bool)  # whole patches of lesion only


# ---------------------------------------------------------------- the map a user sees


def test_default_gradcam_map_has_no_patch_grid(scans, lesion_slide):
    dense, patches = scans["dense"], scans["patches"]
    assert ScanConfig().gradcam_map == "dense" and dense.gradcam_map == "dense"
    inside = _lesion_cells(lesion_slide[1], dense)
    assert inside.sum() > 100 * 4 * 4  # over 10 x 10 patches, each with 4 x 4 centre cells
    assert seam_index(dense.heatmap_gradcam, CELLS, inside).index >= 0.9
    # The per-patch map (the default until scan.h5 format 2) fails the same check.
    assert seam_index(patches.heatmap_gradcam, CELLS, inside).index < 0.9


def test_probabilities_and_scores_are_bit_identical_to_the_per_patch_path(scans):
    dense, patches = scans["dense"], scans["patches"]
    assert np.array_equal(dense.prob, patches.prob)
    assert np.array_equal(dense.heatmap_prob, patches.heatmap_prob, equal_nan=True)
    assert dense.score_max() == patches.score_max()
    assert dense.score_topk() == patches.score_topk()
    assert dense.area_above_mm2() == patches.area_above_mm2()
    # The per-patch maps (scan.h5 "gradcam") keep their meaning: still each patch alone.
    assert np.array_equal(dense.gradcam, patches.gradcam)


def test_dense_map_has_the_per_patch_map_frame_and_scale(scans):
    dense, patches = scans["dense"], scans["patches"]
    assert dense.heatmap_gradcam.shape == patches.heatmap_gradcam.shape
    assert dense.heatmap_gradcam_downsample == patches.heatmap_gradcam_downsample
    np.testing.assert_array_equal(
        np.isfinite(dense.heatmap_gradcam), np.isfinite(patches.heatmap_gradcam)
    )
    # Patch centres are far enough from the borders (the tiny backbone sees 47 px) that the
    # per-patch features there already are the dense ones: the same values.
    rows, cols = dense.heatmap_gradcam.shape
    r = np.arange(rows)[:, None] % CELLS
    c = np.arange(cols)[None, :] % CELLS
    mid = np.isin(r, (4, 5, 6, 7)) & np.isin(c, (4, 5, 6, 7))
    mid &= np.isfinite(dense.heatmap_gradcam)
    np.testing.assert_allclose(
        dense.heatmap_gradcam[mid], patches.heatmap_gradcam[mid], rtol=1e-4, atol=1e-7
    )


def test_dense_map_with_tta_averages_the_eight_views_like_the_per_patch_maps(tiny, lesion_slide):
    from wsi_saliency.scan.pipeline import PatchScorer, scan_slide

    model, card = tiny
    cfg = ScanConfig(tta=True)
    scorer = PatchScorer.from_config(model, card, cfg)
    roi = _roi(slice(5, 8), slice(5, 8))
    dense, patches = (
        scan_slide(
            lesion_slide[0], model, card, replace(cfg, gradcam_map=m), scorer=scorer, roi=roi
        )
        for m in ("dense", "patches")
    )
    assert dense.gradcam_map == "dense" and np.array_equal(dense.prob, patches.prob)
    # Patch centres see no padding in any view: the same values either way.
    r = np.arange(dense.heatmap_gradcam.shape[0])[:, None] % CELLS
    c = np.arange(dense.heatmap_gradcam.shape[1])[None, :] % CELLS
    mid = np.isin(r, (4, 5, 6, 7)) & np.isin(c, (4, 5, 6, 7)) & np.isfinite(patches.heatmap_gradcam)
    assert mid.sum() == 9 * 16
    np.testing.assert_allclose(
        dense.heatmap_gradcam[mid], patches.heatmap_gradcam[mid], rtol=1e-4, atol=1e-7
    )


def test_scan_h5_records_how_the_gradcam_map_was_made(scans, tmp_path):
    from wsi_saliency.outputs.h5 import FORMAT_VERSION, read_scan_h5, write_scan_h5

    for method, result in scans.items():
        path = write_scan_h5(
            tmp_path / f"{method}.h5", result, model_path="m", model_card={}, config={}, versions={}
        )
        attrs = read_scan_h5(path, ())
        assert attrs["format_version"] == FORMAT_VERSION == 3
        assert attrs["gradcam_map"] == method
        assert attrs["gradcam_map_method"] == result.gradcam_map_method
        assert ("dense" in attrs["gradcam_map_method"]) == (method == "dense")


def test_dense_map_falls_back_to_per_patch_maps_off_the_feature_lattice(tiny, lesion_slide):
    from wsi_saliency.scan.pipeline import scan_slide

    model, card = tiny
    # 36 px is 4.5 of the tiny backbone's 8-px feature cells: no common lattice.
    cfg = ScanConfig(stride=36, gradcam_cells=8)
    result = scan_slide(lesion_slide[0], model, card, cfg, roi=_roi(slice(5, 8), slice(5, 8)))
    assert result.gradcam_map == "patches"
    assert any("not a multiple" in w for w in result.warnings)


# ---------------------------------------------------------------- dense Grad-CAM itself


def test_dense_gradcam_of_one_patch_equals_per_patch_gradcam(tiny, pcam_patches):
    from wsi_saliency.model.gradcam import DenseGradCam, GradCam

    model, card = tiny
    _, cam = GradCam(model, card.gradcam_layer, jit=False)(pcam_patches)
    dense = DenseGradCam(model, card.gradcam_layer, jit=False)
    assert dense.stride == 8 and dense.map_shape == (12, 12) and dense.receptive_field == 47
    feats = np.stack([dense.features(p) for p in pcam_patches])
    assert feats.shape == (8, 12, 12, 96)
    got = dense.footprint_cams(feats)
    assert cam.max() > 0  # the comparison is not between two zero maps
    np.testing.assert_allclose(got, cam, rtol=1e-4, atol=1e-6 * cam.max())


def test_dense_map_is_the_class_activation_map_for_a_gap_dense_head(tiny, pcam_patches):
    from wsi_saliency.model.gradcam import DenseGradCam

    model, card = tiny
    dense = DenseGradCam(model, card.gradcam_layer, jit=False)
    assert dense.linear_head
    region = np.concatenate([np.concatenate(list(pcam_patches[:4]), axis=1)] * 2)  # 192 x 384
    feats = dense.features(region)
    assert feats.shape == (24, 48, 96)
    w = model.get_layer("logit").get_weights()[0][:, 0]
    cam = np.maximum(feats.astype(np.float64) @ w, 0.0) / (12 * 12)  # ReLU(sum_k w_k A_k) / hw
    footprints = np.stack(
        [feats[y : y + 12, x : x + 12] for y in (0, 12) for x in range(0, 48, 12)]
    )
    got = dense.footprint_cams(footprints)
    want = np.stack([cam[y : y + 12, x : x + 12] for y in (0, 12) for x in range(0, 48, 12)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * want.max())


def test_a_head_with_hidden_layers_gets_each_patch_gradient(pcam_patches):
    import keras

    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.gradcam import DenseGradCam, GradCam

    keras.utils.set_random_seed(1)
    model = build_model(ModelConfig(backbone="tiny", weights="none", hidden_units=8))
    numpy_weights(model, seed=1)  # the hidden Dense layer keeps its Keras initialisation
    dense = DenseGradCam(model, "tiny_stage4_out", jit=False)
    assert not dense.linear_head
    _, cam = GradCam(model, "tiny_stage4_out", jit=False)(pcam_patches)
    got = dense.footprint_cams(np.stack([dense.features(p) for p in pcam_patches]))
    np.testing.assert_allclose(got, cam, rtol=1e-4, atol=1e-6 * max(cam.max(), 1e-6))


def test_dense_map_does_not_depend_on_how_the_slide_is_tiled(tiny, lesion_slide):
    """The margins cover the tiny backbone's receptive field: tiles join exactly."""
    from wsi_saliency.scan.pipeline import scan_slide

    model, card = tiny
    roi = _roi(slice(2, 10), slice(3, 10))  # 8 x 7 patches: tiles of 5 x 5 or one tile
    maps = [
        scan_slide(lesion_slide[0], model, card, ScanConfig(region=r), roi=roi).heatmap_gradcam
        for r in (256, 4096)
    ]
    assert np.isfinite(maps[0]).sum() > 50 * CELLS**2
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-4, atol=1e-6 * np.nanmax(maps[1]))


def test_dense_tiles_cover_every_patch_once_on_the_feature_lattice():
    from wsi_saliency.slide.loader import plan_regions
    from wsi_saliency.slide.tiling import TileGrid

    # Two tissue islands on a 12 x 12 grid: a 6 x 6 block and a lone patch far from it.
    rc = [(r, c) for r in range(6) for c in range(6)] + [(10, 10)]
    rc = np.asarray(rc, np.int64)
    grid = TileGrid(
        l0_xy=rc[:, ::-1] * 96,
        t_xy=rc[:, ::-1] * 96,
        grid_rc=rc,
        tissue_fraction=np.ones(len(rc), np.float32),
        grid_shape=(12, 12),
        patch_t=96,
        stride_t=96,
        l0_per_t=1.0,
        l0_size_wh=(1152, 1152),
    )
    tiles = plan_regions(grid, 96 * 3 + 48, margin_t=24)  # blocks of 3 x 3 positions
    index = np.sort(np.concatenate([t.index for t in tiles]))
    np.testing.assert_array_equal(index, np.arange(len(rc)))
    lone = [t for t in tiles if list(t.index) == [len(rc) - 1]]
    assert len(lone) == 1 and lone[0].t_xy == (960 - 24, 960 - 24) and lone[0].t_wh == (144, 144)
    for t in tiles:
        assert t.t_xy[0] % 8 == 0 and t.t_xy[1] % 8 == 0  # on the feature lattice
        assert t.t_wh[0] % 8 == 0 and t.t_wh[1] % 8 == 0
    corner = next(t for t in tiles if 0 in t.index)  # block (0, 0): 3 x 3 patches, margins
    assert corner.t_xy == (-24, -24) and corner.t_wh == (3 * 96 + 48, 3 * 96 + 48)
    # A sparse block is split where that reads fewer pixels: two far corners of one block.
    rc = np.asarray([(0, 0), (2, 2)], np.int64)
    sparse = TileGrid(
        l0_xy=rc[:, ::-1] * 96,
        t_xy=rc[:, ::-1] * 96,
        grid_rc=rc,
        tissue_fraction=np.ones(2, np.float32),
        grid_shape=(3, 3),
        patch_t=96,
        stride_t=96,
        l0_per_t=1.0,
        l0_size_wh=(288, 288),
    )
    tiles = plan_regions(sparse, 96 * 3 + 48, margin_t=24)
    assert sorted(t.t_wh for t in tiles) == [(144, 144), (144, 144)]


def _grid(rc, shape):
    from wsi_saliency.slide.tiling import TileGrid

    rc = np.asarray(rc, np.int64)
    return TileGrid(
        l0_xy=rc[:, ::-1] * 96,
        t_xy=rc[:, ::-1] * 96,
        grid_rc=rc,
        tissue_fraction=np.ones(len(rc), np.float32),
        grid_shape=shape,
        patch_t=96,
        stride_t=96,
        l0_per_t=1.0,
        l0_size_wh=(shape[1] * 96, shape[0] * 96),
    )


def test_dense_rows_are_the_warm_patches_and_their_neighbours():
    from wsi_saliency.scan.dense import dense_rows

    rc = [(r, c) for r in range(8) for c in range(8)]
    grid = _grid(rc, (8, 8))
    cams = np.zeros((64, 3, 3), np.float32)
    cams[rc.index((2, 2))] = 1.0  # one warm patch: 9 of 576 cells, the scale (99.5 %) is 1
    cams[rc.index((2, 3)), 0, 0] = 1.0 / 64  # reaches 1/64 of the scale
    cams[rc.index((6, 6)), 0, 0] = 1.0 / 200  # does not: keeps its per-patch map
    rows = dense_rows(grid, cams, 1 / 64)
    expected = sorted(rc.index((r, c)) for r in (1, 2, 3) for c in (1, 2, 3, 4))
    assert rows.tolist() == expected
    np.testing.assert_array_equal(dense_rows(grid, cams, 0.0), np.arange(64))  # 0: all
    assert len(dense_rows(grid, np.zeros_like(cams), 1 / 64)) == 0  # nothing warm: none
    # one warm cell in the slide: the scale is 0 and every positive cell is saturated (warm);
    # at the slide's edge only the neighbours that exist
    cams[:] = 0
    cams[0, 0, 0] = 1.0
    assert dense_rows(grid, cams, 1 / 64).tolist() == [0, 1, 8, 9]


def test_cold_patches_keep_their_per_patch_maps_in_the_dense_map(tiny, lesion_slide, scans):
    """Patches outside the warm set are not read again: their cells are the per-patch map's;
    the warm ones are the dense map's. Here the test model's maps are warm everywhere, so the
    scan's own per-patch maps are zeroed outside a block to make cold patches."""
    from wsi_saliency.scan.dense import dense_slide_map
    from wsi_saliency.scan.pipeline import PatchScorer, lay_out_slide
    from wsi_saliency.slide import open_slide

    model, card = tiny
    dense_result, patches = scans["dense"], scans["patches"]
    assert dense_result.gradcam_dense_patches == dense_result.n_scored  # warm everywhere
    cams = patches.gradcam.copy()
    rc = patches.grid_rc
    warm = (np.abs(rc[:, 0] - 5) <= 1) & (np.abs(rc[:, 1] - 5) <= 1)
    cams[~warm] = 0.0
    scorer = PatchScorer.from_config(model, card, ScanConfig())
    layout = lay_out_slide(lesion_slide[0], card, ScanConfig(), scorer)
    np.testing.assert_array_equal(layout.grid.grid_rc, rc)
    out = dense_slide_map(
        lambda: open_slide(lesion_slide[0]),
        layout.plan,
        layout.grid,
        scorer.dense(),
        CELLS,
        workers=0,
        patch_cams=cams,
        dense_min=1 / 64,
    )
    near = (np.abs(rc[:, 0] - 5) <= 2) & (np.abs(rc[:, 1] - 5) <= 2)  # warm block + neighbours
    assert out.n_dense == int(near.sum()) == 25
    cell = lambda r, c: (slice(r * CELLS, (r + 1) * CELLS), slice(c * CELLS, (c + 1) * CELLS))  # noqa: E731
    np.testing.assert_allclose(  # the warm centre patch: the dense map
        out.heatmap[cell(5, 5)], dense_result.heatmap_gradcam[cell(5, 5)], rtol=1e-5, atol=1e-7
    )
    far = next(tuple(x) for x in rc if abs(x[0] - 5) > 3 and abs(x[1] - 5) > 3)
    assert np.all(out.heatmap[cell(*far)] == 0.0)  # a cold patch: its (zeroed) per-patch map


# ---------------------------------------------------------------- pure numpy


def test_seam_index_is_border_cells_over_centre_cells_in_the_mask():
    period = 12
    heat = np.ones((48, 60))
    r = np.arange(48)[:, None] % period
    c = np.arange(60)[None, :] % period
    border = np.isin(r, (0, 11)) | np.isin(c, (0, 11))
    heat[border] = 0.25  # dark seams at every patch border
    assert seam_index(np.ones((48, 60)), period).index == pytest.approx(1.0)
    s = seam_index(heat, period)
    assert s.index == pytest.approx(0.25) and s.n_centre == 4 * 4 * 5
    assert s.n_border == int(border.sum())
    # Only finite cells inside the mask count.
    mask = np.zeros_like(heat, bool)
    mask[:12, :12] = True
    heat[12:, :] = np.nan
    s = seam_index(heat, period, mask)
    assert (s.n_centre, s.n_border) == (4, 44) and s.index == pytest.approx(0.25)
    # The grid is in the slide's frame: shifting the map by half a patch moves the seams to
    # where the index looks for centres.
    shifted = np.roll(np.where(border, 0.25, 1.0), 6, axis=(0, 1))
    assert seam_index(shifted, period).index > 1.5
    with pytest.raises(InputError):
        seam_index(heat, 2)


def test_resize_heatmap_keeps_the_extent_and_ignores_nan():
    lattice = np.array([[1.0, 2.0, np.nan], [3.0, 4.0, np.nan]])
    out = resize_heatmap(lattice, (8, 12))  # 4 x 4 cells per lattice cell
    assert out.shape == (8, 12) and out.dtype == np.float32
    assert out[0, 0] == pytest.approx(1.0) and out[-1, 7] == pytest.approx(4.0)
    assert np.isnan(lattice).sum() == 2 and np.isfinite(out[:, :8]).all()
    # cells next to the NaN column take the finite neighbours only (no NaN bleeding in)
    assert out[0, 8] == pytest.approx(2.0)
    np.testing.assert_array_equal(resize_heatmap(lattice, lattice.shape), lattice.astype("f4"))
