"""Tissue masks: synthetic H&E with ink and a black blob, the CMU-1 slide, user masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from wsi_saliency.errors import InputError
from wsi_saliency.slide.reader import ArrayReader, open_slide
from wsi_saliency.slide.tissue import load_mask, pen_mask, slide_thumbnail, tissue_mask


def _synthetic() -> np.ndarray:
    """200 x 300 thumbnail at 8 um/px: pink tissue with a purple core, a black blob, pen lines."""
    img = Image.new("RGB", (300, 200), (242, 242, 245))
    d = ImageDraw.Draw(img)
    d.ellipse((20, 20, 130, 180), fill=(200, 120, 170))  # eosin-pink tissue
    d.ellipse((60, 60, 100, 120), fill=(120, 70, 150))  # haematoxylin-purple
    d.ellipse((170, 40, 230, 100), fill=(20, 20, 20))  # black blob (dust, ink)
    d.line((140, 180, 290, 150), fill=(40, 70, 200), width=8)  # blue pen on glass
    d.line((150, 10, 290, 30), fill=(30, 150, 60), width=8)  # green pen
    d.line((20, 150, 130, 150), fill=(40, 70, 200), width=6)  # blue pen across the tissue
    noise = np.random.default_rng(0).integers(-6, 7, (200, 300, 3))
    return np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8)


def test_synthetic_tissue_excludes_black_and_pen() -> None:
    img = _synthetic()
    mask = tissue_mask(img, thumb_mpp=8.0)
    assert mask.shape == (200, 300) and mask.dtype == bool
    assert mask[100, 75] and mask[90, 80]  # pink tissue and purple core
    assert mask[40:140, 40:110].mean() > 0.97  # solid tissue, no holes
    assert not mask[40:100, 170:230].any()  # black blob
    assert not mask[140:200, 135:300].any()  # blue pen on glass
    assert not mask[0:45, 145:300].any()  # green pen
    assert not mask[146:155, 40:110].any()  # pen across tissue is cut out
    assert not mask[:, 250:].any() and not mask[:10].any()  # glass
    pen = pen_mask(img)
    assert pen[165, 215] and pen[20, 220] and not pen[100, 75] and not pen[90, 80]


def test_small_objects_and_holes_follow_microns() -> None:
    img = np.full((100, 100, 3), 240, np.uint8)
    img[10:60, 10:60] = (190, 110, 160)  # 50 x 50 px block
    img[30:33, 30:33] = 240  # a 3 x 3 px hole
    img[80:83, 80:83] = (190, 110, 160)  # a 3 x 3 px speck
    at8 = tissue_mask(img, thumb_mpp=8.0)  # speck 576 um2 < 20,000 -> removed, hole filled
    assert at8[31, 31] and not at8[81, 81] and at8[10:60, 10:60].all()
    at100 = tissue_mask(img, thumb_mpp=100.0, closing_um=0)  # speck 90,000 um2 is kept
    assert at100[81, 81] and not at100[31, 31]  # hole of 90,000 um2 stays


def test_blank_glass_has_no_tissue() -> None:
    noise = np.random.default_rng(1).integers(-4, 5, (80, 80, 3))
    glass = np.clip(240 + noise, 0, 255).astype(np.uint8)
    assert not tissue_mask(glass, thumb_mpp=8.0).any()
    with pytest.raises(InputError):
        tissue_mask(glass, thumb_mpp=8.0, method="magic")
    with pytest.raises(InputError):
        tissue_mask(glass, thumb_mpp=0)


def test_slide_thumbnail_of_array_reader() -> None:
    reader = ArrayReader(np.full((1000, 1600, 3), 230, np.uint8), 0.5, levels=(1, 4))
    th = slide_thumbnail(reader, l0_mpp=0.5, thumb_mpp=8.0)
    assert th.image.shape == (63, 100, 3)
    assert th.l0_per_px == pytest.approx((16.0, 1000 / 63))
    assert th.mpp == pytest.approx(0.5 * (16 + 1000 / 63) / 2)


def test_load_mask(tmp_path: Path) -> None:
    arr = np.zeros((40, 60), np.uint8)
    arr[:, :30] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png")
    assert m.shape == (40, 60) and m[:, :30].all() and not m[:, 30:].any()
    small = load_mask(tmp_path / "m.png", (20, 30))
    assert small.shape == (20, 30) and small[:, :15].all() and not small[:, 15:].any()
    big = load_mask(tmp_path / "m.png", (80, 120))
    assert big[:, :60].all() and not big[:, 60:].any()
    import tifffile

    tifffile.imwrite(tmp_path / "m.tif", (arr > 0).astype(np.uint8))
    assert np.array_equal(load_mask(tmp_path / "m.tif"), m)
    Image.fromarray(np.stack([arr] * 3, -1)).save(tmp_path / "rgb.png")
    assert np.array_equal(load_mask(tmp_path / "rgb.png"), m)
    with pytest.raises(InputError, match="aspect"):
        load_mask(tmp_path / "m.png", (60, 40))
    with pytest.raises(InputError, match="not found"):
        load_mask(tmp_path / "none.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="bad.png"):
        load_mask(tmp_path / "bad.png")


@pytest.mark.realdata
def test_cmu_tissue_mask(cmu_slide: Path) -> None:
    # Checked by eye (thumbnail and mask written as PNGs): the mask follows the H&E section,
    # excludes the glass on the left and right, the dust speck right of the tissue and the
    # empty gap inside the top of the section; teal specks at the tissue edge stay tissue.
    with open_slide(cmu_slide) as r:
        th = slide_thumbnail(r, l0_mpp=0.499, thumb_mpp=8.0)
    assert th.image.shape == (186, 139, 3)
    mask = tissue_mask(th.image, thumb_mpp=th.mpp)
    assert 0.30 < mask.mean() < 0.46
    for corner in (mask[:15, :15], mask[:15, -15:], mask[-15:, -10:], mask[-15:, :15]):
        assert not corner.any()
    assert mask[150:180, 60:85].all()  # the dense lower part of the section
    assert mask[80:120, 65:75].all()  # the middle of the section
    assert not mask[85:140, :25].any()  # glass left of the section, below the thin strand


def test_hsv_parts_are_skimages_values() -> None:
    """Saturation, value and the pen test come from tables and a subset: exactly rgb2hsv's."""
    from skimage.color import rgb2hsv

    from wsi_saliency.slide.tissue import PEN_HUE_RANGE, PEN_MIN_SATURATION, _hsv_chunks

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    rgb[:40] = rgb[:40, :, :1]  # greys (no hue)
    rgb[40:60, :, 1] = rgb[40:60, :, 2]  # green and blue tied for largest
    ref = rgb2hsv(rgb)
    hue, sat, val = ref[..., 0], ref[..., 1], ref[..., 2]
    for hue_range in (PEN_HUE_RANGE, (0.0, 0.3)):  # the default, and one that takes reds
        lo, hi = hue_range
        want_pen = (hue >= lo) & (hue <= hi) & (sat >= PEN_MIN_SATURATION) & (val > 0.1)
        got = [np.empty(rgb.shape[:2]) for _ in range(2)] + [np.empty(rgb.shape[:2], bool)]
        for rows, s, v, p in _hsv_chunks(rgb, PEN_MIN_SATURATION, hue_range):
            got[0][rows], got[1][rows], got[2][rows] = s, v, p
        np.testing.assert_array_equal(got[0], sat)
        np.testing.assert_array_equal(got[1], val)
        np.testing.assert_array_equal(got[2], want_pen)
        assert 0.05 < want_pen.mean() < 0.95
