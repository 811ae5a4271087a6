"""Synthetic pyramidal slides: OpenSlide compatibility, pixels, XML, lesion placement."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.data.annotations import rasterize, read_asap_xml
from wsi_saliency.errors import DataError, InputError
from wsi_saliency.synthetic.slides import (
    CAMELYON16_MPP,
    SyntheticSlideInfo,
    load_camelyon16_polygons,
    make_tissue_polygons,
    place_lesions,
    render_slide_tile,
    write_synthetic_slide,
)
from wsi_saliency.synthetic.tissue import render_tissue

openslide = pytest.importorskip("openslide")

REPO = Path(__file__).resolve().parents[1]
SIZE = (1500, 1100)  # not a multiple of the tile: edge tiles are partial
MPP = 0.486
TILE = 256


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _write_small(path: Path, lesions, tissue) -> SyntheticSlideInfo:
    """The ``small_slide`` pyramid (SIZE, MPP, TILE, seed 7, JPEG q90) with these polygons."""
    return write_synthetic_slide(
        path,
        l0_size_xy=SIZE,
        mpp=MPP,
        lesions=lesions,
        seed=7,
        tile=TILE,
        levels=(1, 2, 4),
        jpeg_quality=90,
        tissue=tissue,
    )


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory) -> SyntheticSlideInfo:
    folder = tmp_path_factory.mktemp("slide")
    rng = np.random.default_rng(4)
    tissue = make_tissue_polygons(SIZE, rng, tissue_fraction=0.55, n_blobs=2)
    blob = np.array([[0, 0], [180, -20], [260, 120], [120, 240], [-20, 150]], dtype=np.float64)
    lesions = place_lesions([blob, blob * 0.5], MPP, MPP, SIZE, rng, tissue=tissue)
    return _write_small(folder / "synth.tif", lesions, tissue)


def test_openslide_opens_pyramid_with_mpp(small_slide):
    s = openslide.OpenSlide(str(small_slide.path))
    try:
        assert s.properties["openslide.vendor"] == "generic-tiff"
        assert s.level_count == 3
        assert s.level_dimensions == ((1500, 1100), (750, 550), (375, 275))
        assert [round(d, 3) for d in s.level_downsamples] == [1.0, 2.0, 4.0]
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(MPP, rel=1e-6)
        assert float(s.properties["openslide.mpp-y"]) == pytest.approx(MPP, rel=1e-6)
    finally:
        s.close()
    assert small_slide.level_sizes_xy == ((1500, 1100), (750, 550), (375, 275))


def _tumour_tile(info: SyntheticSlideInfo) -> tuple[int, int]:
    mask = info.tumour_mask(TILE)
    r, c = np.argwhere(mask)[0]
    return int(c), int(r)


def test_level0_pixels_match_render_tissue(small_slide):
    info = small_slide
    tx, ty = _tumour_tile(info)
    x0, y0 = tx * TILE, ty * TILE
    ntx = -(-SIZE[0] // TILE)
    tissue = rasterize(list(info.tissue), (TILE, TILE), 1, origin_xy=(x0, y0))
    tumour = rasterize(list(info.lesions), (TILE, TILE), 1, origin_xy=(x0, y0)) & tissue
    assert tumour.any()
    expected = render_tissue(
        (TILE, TILE),
        MPP,
        tumour,
        np.random.default_rng([info.seed, ty * ntx + tx]),
        origin_xy=(x0, y0),
        texture_seed=info.texture_seed,
        tissue_mask=tissue,
    )
    np.testing.assert_array_equal(
        expected, render_slide_tile(info, (x0, y0), (TILE, TILE), ty * ntx + tx)
    )
    s = openslide.OpenSlide(str(info.path))
    try:
        got = np.asarray(s.read_region((x0, y0), 0, (TILE, TILE)).convert("RGB")).astype(int)
    finally:
        s.close()
    err = np.abs(got - expected)
    assert err.mean() < 6, err.mean()  # JPEG q90
    assert np.abs((got - expected).mean(axis=(0, 1))).max() < 2  # no colour shift


def test_reduced_levels_are_area_averages(small_slide):
    s = openslide.OpenSlide(str(small_slide.path))
    try:
        l0 = np.asarray(s.read_region((0, 0), 0, (1024, 1024)).convert("RGB")).astype(float)
        l2 = np.asarray(s.read_region((0, 0), 2, (256, 256)).convert("RGB")).astype(float)
    finally:
        s.close()
    ref = l0.reshape(256, 4, 256, 4, 3).mean(axis=(1, 3))
    assert np.abs(l2 - ref).mean() < 4


def test_xml_records_lesions(small_slide):
    anns = read_asap_xml(small_slide.xml_path)
    assert small_slide.xml_path == small_slide.path.with_suffix(".xml")
    assert len(anns) == len(small_slide.lesions) == 2
    for a, p in zip(anns, small_slide.lesions, strict=True):
        assert a.group == "_0"
        np.testing.assert_array_equal(a.polygon, p)
    # Lesions lie inside the tissue; the tumour mask is the lesion area.
    tum = small_slide.tumour_mask(4)
    tis = small_slide.tissue_mask(4)
    assert tum.any() and not (tum & ~tis).any()
    assert tum.sum() == rasterize(anns, tum.shape, 4).sum()


def test_pen_mark_and_dark_area_on_glass(small_slide):
    s = openslide.OpenSlide(str(small_slide.path))
    try:
        thumb = np.asarray(s.read_region((0, 0), 2, s.level_dimensions[2]).convert("RGB"))
    finally:
        s.close()
    dark = rasterize([small_slide.dark], thumb.shape[:2], 4)
    pen = rasterize([small_slide.pen], thumb.shape[:2], 4)
    assert dark.sum() > 20 and pen.sum() > 20
    assert thumb[dark].mean() < 60  # near black
    pen_rgb = thumb[pen & ~small_slide.tissue_mask(4)].mean(axis=0)
    assert pen_rgb[1] > pen_rgb[0] + 40  # green-blue ink
    # The tissue mask excludes the artefacts.
    assert not (small_slide.tissue_mask(4) & dark).any()


def test_deterministic_pixels(tmp_path, small_slide):
    info = _write_small(tmp_path / "again.tif", small_slide.lesions, small_slide.tissue)
    a = openslide.OpenSlide(str(info.path))
    b = openslide.OpenSlide(str(small_slide.path))
    try:
        ra = np.asarray(a.read_region((300, 200), 0, (512, 512)))
        rb = np.asarray(b.read_region((300, 200), 0, (512, 512)))
    finally:
        a.close()
        b.close()
    np.testing.assert_array_equal(ra, rb)


def test_reduced_levels_via_memory_map(tmp_path, monkeypatch, small_slide):
    """Big slides buffer reduced levels in a temporary memory map: same pixels, no leftovers."""
    from wsi_saliency.synthetic import slides as synthetic_slide

    monkeypatch.setattr(synthetic_slide, "_MEMMAP_BYTES", 0)
    info = _write_small(tmp_path / "mm.tif", small_slide.lesions, small_slide.tissue)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mm.tif", "mm.xml"]
    a = openslide.OpenSlide(str(info.path))
    b = openslide.OpenSlide(str(small_slide.path))
    try:
        np.testing.assert_array_equal(
            np.asarray(a.read_region((0, 0), 2, (375, 275))),
            np.asarray(b.read_region((0, 0), 2, (375, 275))),
        )
    finally:
        a.close()
        b.close()


def test_bad_levels_rejected(tmp_path):
    with pytest.raises(ValueError, match="divide the tile"):
        write_synthetic_slide(
            tmp_path / "x.tif",
            l0_size_xy=(64, 64),
            mpp=1.0,
            lesions=[],
            seed=0,
            tile=48,
            levels=(1, 32),
        )
    with pytest.raises(ValueError, match="start with downsample 1"):
        write_synthetic_slide(
            tmp_path / "x.tif",
            l0_size_xy=(64, 64),
            mpp=1.0,
            lesions=[],
            seed=0,
            tile=64,
            levels=(2, 4),
        )


def test_make_tissue_polygons_fraction():
    rng = np.random.default_rng(0)
    polys = make_tissue_polygons((4000, 3000), rng, tissue_fraction=0.5)
    frac = rasterize(polys, (300, 400), 10).mean()
    assert 0.45 < frac < 0.55
    for p in polys:  # inside the slide
        assert p[:, 0].min() >= 0 and p[:, 0].max() <= 4000
        assert p[:, 1].min() >= 0 and p[:, 1].max() <= 3000


def test_place_lesions_physical_size_inside_tissue_no_overlap():
    rng = np.random.default_rng(1)
    size = (6000, 5000)
    tissue = make_tissue_polygons(size, rng, tissue_fraction=0.6)
    theta = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    src = [
        np.stack([1000 + r * np.cos(theta), 800 + 0.7 * r * np.sin(theta)], axis=1)
        for r in (900.0, 500.0, 300.0)
    ]  # at 0.243 mpp
    placed = place_lesions(src, CAMELYON16_MPP, 0.972, size, rng, tissue=tissue)
    assert len(placed) == 3
    tis = rasterize(tissue, (500, 600), 10)
    for s, p in zip(src, placed, strict=True):
        um2_src = _polygon_area(s) * CAMELYON16_MPP**2
        um2_dst = _polygon_area(p) * 0.972**2
        assert um2_dst == pytest.approx(um2_src, rel=1e-9)
        own = rasterize([p], (500, 600), 10)
        assert own.any() and not (own & ~tis).any()
    boxes = [(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()) for p in placed]
    for i in range(3):
        for j in range(i + 1, 3):
            a, b = boxes[i], boxes[j]
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
    with pytest.raises(DataError, match="does not fit"):
        place_lesions([src[0] * 20], CAMELYON16_MPP, 0.972, size, rng, tissue=tissue)


def test_load_camelyon16_polygons_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_camelyon16_polygons(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"positive": [{"name": "a", "vertices": [1, 2, 3]}]}))
    with pytest.raises(DataError, match="bad.json"):
        load_camelyon16_polygons(bad)
    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "positive": [{"name": "_0", "vertices": [[0, 0], [5, 0], [5, 5]]}],
                "negative": [{"name": "h", "vertices": [[1, 1], [2, 1], [2, 2]]}],
            }
        )
    )
    anns = load_camelyon16_polygons(good)
    assert [(a.name, a.group) for a in anns] == [("_0", "_0"), ("h", "_2")]


@pytest.mark.realdata
def test_place_real_camelyon16_lesions(shared_data):
    path = shared_data / "camelyon16-ncrf" / "jsons" / "Tumor_001.json"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    anns = load_camelyon16_polygons(path)
    tumour = [a for a in anns if a.is_tumour]
    assert len(tumour) == 2 and all(len(a.polygon) > 100 for a in tumour)
    rng = np.random.default_rng(0)
    size = (12000, 9000)  # 5.8 x 4.4 mm at 0.486 mpp
    tissue = make_tissue_polygons(size, rng, tissue_fraction=0.6)
    placed = place_lesions(anns, CAMELYON16_MPP, 0.486, size, rng, tissue=tissue)
    assert len(placed) == 2  # exclusions are not placed
    for a, p in zip(tumour, placed, strict=True):
        assert _polygon_area(p) * 0.486**2 == pytest.approx(
            _polygon_area(a.polygon) * CAMELYON16_MPP**2, rel=1e-9
        )


def test_committed_sample_slide():
    """The demo slide in sample_data/slide (skipped until it has been generated)."""
    tif = REPO / "sample_data" / "slide" / "sample_slide.tif"
    if not tif.is_file():
        pytest.skip("sample_data/slide/sample_slide.tif not generated")
    s = openslide.OpenSlide(str(tif))
    try:
        assert s.level_count >= 3
        assert s.dimensions == (8000, 6000)
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.486)
    finally:
        s.close()
    anns = read_asap_xml(tif.with_suffix(".xml"))
    assert 3 <= len(anns) <= 5
    sizes_um = sorted(max(np.ptp(a.polygon, axis=0)) * 0.486 for a in anns)
    assert 200 <= sizes_um[0] <= 400 and sizes_um[-1] >= 1000
