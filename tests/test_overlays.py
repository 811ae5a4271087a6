"""The PNG overlays (heatmap.png, gradcam.png, tissue.png) as a user opens them."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from wsi_saliency.outputs.colour import PROBABILITY_SCALE, ColourScale, colourise
from wsi_saliency.outputs.overlays import (
    TISSUE_EDGE_RGB,
    bar_ticks,
    heatmap_on_grid,
    write_heatmap_png,
    write_tissue_png,
)

GREY = (128, 128, 128)


def _find(png: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """(row, col) of the one place where ``image`` appears whole inside ``png``."""
    h, w = image.shape[:2]
    found = []
    for r, c in zip(*np.nonzero((png == image[0, 0]).all(axis=-1)), strict=True):
        if r + h <= png.shape[0] and c + w <= png.shape[1]:
            if np.array_equal(png[r : r + h, c : c + w], image):
                found.append((int(r), int(c)))
    assert len(found) == 1, found
    return found[0]


def _expected_heatmap(overview, l0_per_px, heatmap, l0_per_cell, scale, alpha):
    values = heatmap_on_grid(heatmap, l0_per_cell, overview.shape[:2], l0_per_px)
    rgba = colourise(values, scale, alpha=alpha).astype(np.float32)
    a = rgba[..., 3:] / 255.0
    return (overview * (1 - a) + rgba[..., :3] * a + 0.5).astype(np.uint8)


def test_heatmap_cells_cover_the_slide_by_scaling_and_unscored_cells_stay_clear(tmp_path):
    overview = np.full((600, 800, 3), GREY, np.uint8)  # 4 level-0 px per overview px
    heatmap = np.array([[0.0, 0.5, 1.0], [0.25, np.nan, 0.75]], np.float32)  # 256 l0 px cells
    path = write_heatmap_png(
        tmp_path / "heatmap.png",
        overview,
        (4.0, 4.0),
        heatmap,
        256.0,
        title="slide.svs: P(metastasis)",
        scale=PROBABILITY_SCALE,
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    expected = _expected_heatmap(overview, (4.0, 4.0), heatmap, 256.0, PROBABILITY_SCALE, 0.45)
    r0, c0 = _find(png, expected)  # the overview at its own pixels, unresampled
    shown = png[r0 : r0 + 600, c0 : c0 + 800]
    # each cell spans 64 x 64 overview px from the top-left corner; the map covers 128 x 192
    assert (shown[:64, :64] == shown[0, 0]).all() and (shown[:64, 64] != shown[0, 0]).any()
    assert (shown[64:128, 64:128] == GREY).all()  # NaN: the slide, untouched
    assert (shown[128:] == GREY).all() and (shown[:, 192:] == GREY).all()  # beyond the map
    red = colourise(np.array([[1.0]]), PROBABILITY_SCALE)[0, 0, :3]
    blended = (np.float32(GREY) * 0.55 + red * 0.45 + 0.5).astype(np.uint8)
    assert (shown[0, 128] == blended).all()


def test_the_colour_bar_shows_the_scale_opaque_beside_the_image(tmp_path):
    scale = ColourScale("inferno", 0.0, 0.3, "Grad-CAM (raw)")
    overview = np.full((500, 400, 3), GREY, np.uint8)
    path = write_heatmap_png(
        tmp_path / "gradcam.png",
        overview,
        (2.0, 2.0),
        np.full((4, 4), np.nan, np.float32),
        64.0,
        title="t",
        scale=scale,
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    r0, c0 = _find(png, overview)
    right = png[:, c0 + 400 :]
    ends = colourise(np.array([[scale.vmax, scale.vmin]], np.float32), scale)[0, :, :3]
    for colour in ends:  # the top and bottom of the ramp, at full opacity
        rows, cols = np.nonzero((right == colour).all(axis=-1))
        assert cols.size >= 10 and np.ptp(rows) <= 2
    top = np.nonzero((right == ends[0]).all(axis=-1))[0].min()
    bottom = np.nonzero((right == ends[1]).all(axis=-1))[0].max()
    assert r0 < top < bottom < r0 + 500 and bottom - top >= 0.5 * 500
    text = right[:, 40:]  # tick labels and the scale's label are drawn in dark grey / black
    assert (text.max(axis=-1) < 100).sum() > 50


def test_bar_ticks_are_round_numbers_within_the_scale():
    assert [t for _, t in bar_ticks(PROBABILITY_SCALE)] == [
        "0.0",
        "0.2",
        "0.4",
        "0.6",
        "0.8",
        "1.0",
    ]
    gradcam = bar_ticks(ColourScale("inferno", 0.0, 0.0734, "g"))
    assert [t for _, t in gradcam] == ["0.00", "0.02", "0.04", "0.06"]
    assert bar_ticks(ColourScale("inferno", 0.0, 1e-6, "g"))[-1][1] == "1e-06"


def test_a_small_overview_is_enlarged_by_a_whole_factor(tmp_path):
    overview = np.zeros((30, 40, 3), np.uint8)
    overview[:, :, 0] = np.arange(40, dtype=np.uint8)[None, :] * 5  # each column its own red
    overview[:, :, 1] = np.arange(30, dtype=np.uint8)[:, None] * 5 + 50
    path = write_heatmap_png(
        tmp_path / "h.png",
        overview,
        (8.0, 8.0),
        np.full((1, 1), np.nan, np.float32),
        8.0,
        title="small",
        scale=PROBABILITY_SCALE,
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    _find(png, overview.repeat(12, axis=0).repeat(12, axis=1))  # 480 px: 12 x 40


def test_tissue_png_outlines_the_mask_and_dims_the_rest(tmp_path):
    overview = np.full((480, 640, 3), 200, np.uint8)
    mask = np.zeros((60, 80), bool)  # one mask px = 8 overview px
    mask[10:30, 20:50] = True
    path = write_tissue_png(
        tmp_path / "tissue.png", overview, (2.0, 2.0), mask, (16.0, 16.0), title="tissue"
    )
    png = np.asarray(Image.open(path).convert("RGB"))
    inside = 200
    dimmed = int(200 * 0.45 + 255 * 0.55 * 0.3 + 0.5)
    expected = np.full((480, 640, 3), dimmed, np.uint8)
    expected[80:240, 160:400] = inside
    expected[79:81, 159:401] = expected[239:241, 159:401] = TISSUE_EDGE_RGB
    expected[79:241, 159:161] = expected[79:241, 399:401] = TISSUE_EDGE_RGB
    for r, c in ((79, 159), (79, 400), (240, 159), (240, 400)):  # corners: only diagonal
        expected[r, c] = dimmed
    _find(png, expected)


def test_the_tissue_outline_is_skimages_thick_boundary():
    from skimage.segmentation import find_boundaries

    from wsi_saliency.outputs.overlays import _outline

    rng = np.random.default_rng(0)
    for mask in (rng.random((37, 53)) < 0.5, np.pad(np.ones((5, 9), bool), 3)):
        assert np.array_equal(_outline(mask), find_boundaries(mask, mode="thick"))


@pytest.mark.parametrize("writer", ["heatmap", "tissue"])
def test_writing_the_overlays_does_not_load_pyplot(tmp_path, writer):
    """pyplot's figure machinery is what made each PNG cost seconds; the writers compose the
    image with numpy and Pillow instead."""
    code = f"""
import sys, numpy as np
from wsi_saliency.outputs.colour import PROBABILITY_SCALE
from wsi_saliency.outputs import overlays as o
ov = np.full((100, 80, 3), 200, np.uint8)
if "{writer}" == "heatmap":
    o.write_heatmap_png("{tmp_path}/a.png", ov, (1.0, 1.0), np.ones((3, 3)), 32.0,
                        title="t", scale=PROBABILITY_SCALE)
else:
    o.write_tissue_png("{tmp_path}/a.png", ov, (1.0, 1.0), np.ones((3, 3), bool), (32.0, 32.0),
                       title="t")
assert "matplotlib.pyplot" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)
