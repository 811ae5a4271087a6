"""`wsi-saliency export`: pyramidal TIFF heatmaps (opened with OpenSlide), GeoJSON regions
(checked against RFC 7946's structure and the slide's bounds) and ASAP XML, from a small
hand-made scan.h5 (no model, no slide)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.data.annotations import Annotation, rasterize, read_asap_xml
from wsi_saliency.outputs.colour import PROBABILITY_SCALE, colourise
from wsi_saliency.outputs.export import EXPORT_FILES, export_slide
from wsi_saliency.outputs.h5 import write_scan_h5
from wsi_saliency.outputs.regions import find_regions, regions_geojson, signed_area
from wsi_saliency.outputs.tiff import pyramid_shapes

runner = CliRunner()
D = 100.0  # level-0 px per heatmap cell
MPP = 0.5  # level-0 um per px
DIMS = (1050, 820)  # level-0 (width, height): the 11 x 9 cell heatmap overhangs the slide


def _heatmap() -> np.ndarray:
    """11 x 9 cells: a ring with a hole, two cells touching at a corner, an edge region."""
    hm = np.full((9, 11), 0.1, np.float32)
    hm[0, :] = np.nan  # not scored
    hm[:, 0] = np.nan
    hm[1:4, 1:4] = 0.9  # ring around a low cell: one region with one hole
    hm[2, 2] = 0.2
    hm[1, 2] = 0.95  # its maximum
    hm[5, 5] = 0.7  # two cells touching at a corner: two regions
    hm[6, 6] = 0.6
    hm[7:9, 9:11] = 0.8  # overhangs the slide's right and bottom edges: clipped
    return hm


def _write_scan(folder, hm=None, threshold=0.5):
    hm = _heatmap() if hm is None else hm
    rows, cols = np.nonzero(np.isfinite(hm))
    coords = np.stack([cols * D, rows * D], axis=1).astype(np.int64)
    result = SimpleNamespace(
        coords=coords,
        grid_rc=np.stack([rows, cols], 1),
        prob=hm[rows, cols],
        gradcam=np.zeros((len(rows), 4, 4), np.float32),
        tissue_fraction=np.ones(len(rows), np.float32),
        heatmap_prob=hm,
        heatmap_gradcam=np.repeat(np.repeat(hm, 4, 0), 4, 1),  # 4 x 4 Grad-CAM cells per cell
        tissue_mask=np.ones((9, 11), np.uint8),
        patch_size_l0=D,
        stride_l0=D,
        heatmap_prob_downsample=D,
        heatmap_gradcam_downsample=D / 4,
        thumbnail_downsample=(D, D),
        target_mpp=1.0,
        slide_mpp=MPP,
        slide_dimensions=DIMS,
        plan=SimpleNamespace(level=0),
        path=folder / "slide.svs",
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_scan_h5(
        folder / "scan.h5",
        result,
        model_path="model.keras",
        model_card={},
        config={"threshold": threshold},
        versions={},
    )
    return folder


def _expected_mask(hm, threshold, sub=2):
    """Cells >= threshold on a grid ``sub`` times finer, cut at the slide's edges."""
    mask = np.nan_to_num(hm, nan=-1) >= threshold
    fine = np.repeat(np.repeat(mask, sub, 0), sub, 1)
    step = D / sub
    inside_x = (np.arange(fine.shape[1]) + 0.5) * step < DIMS[0]
    inside_y = (np.arange(fine.shape[0]) + 0.5) * step < DIMS[1]
    return fine & inside_y[:, None] & inside_x[None, :]


def validate_geojson(doc, bounds):
    """RFC 7946 structure for Polygon features, QuPath's properties and the slide's bounds;
    also validated by geojson-pydantic (RFC 7946 models) and shapely (OGC-valid polygons)
    where they are installed (the ``dev`` extra)."""
    try:
        from geojson_pydantic import FeatureCollection
    except ImportError:
        pass
    else:
        FeatureCollection.model_validate(doc)
    try:
        from shapely.geometry import shape
    except ImportError:
        pass
    else:
        for f in doc["features"]:
            polygon = shape(f["geometry"])
            assert polygon.is_valid and polygon.area > 0, f["properties"]
    assert doc["type"] == "FeatureCollection" and isinstance(doc["features"], list)
    assert "crs" not in doc  # removed in RFC 7946
    json.dumps(doc, allow_nan=False)  # no NaN/inf: valid JSON
    width, height = bounds
    for f in doc["features"]:
        assert f["type"] == "Feature" and isinstance(f["properties"], dict)
        assert isinstance(f.get("id", ""), (str, int))
        geom = f["geometry"]
        assert geom["type"] == "Polygon" and len(geom["coordinates"]) >= 1
        for k, ring in enumerate(geom["coordinates"]):
            ring = np.asarray(ring, np.float64)
            assert ring.ndim == 2 and ring.shape[1] == 2 and len(ring) >= 4
            assert np.array_equal(ring[0], ring[-1]), "linear rings are closed"
            assert len({tuple(p) for p in ring[:-1]}) == len(ring) - 1, "no repeated vertex"
            area = signed_area(ring)
            assert area > 0 if k == 0 else area < 0, "exterior counter-clockwise, holes clockwise"
            assert ring[:, 0].min() >= 0 and ring[:, 0].max() <= width
            assert ring[:, 1].min() >= 0 and ring[:, 1].max() <= height
        props = f["properties"]
        assert props["objectType"] in ("annotation", "detection")
        cls = props["classification"]
        assert isinstance(cls["name"], str) and len(cls["color"]) == 3
        assert all(isinstance(v, int) and 0 <= v <= 255 for v in cls["color"])
        assert all(isinstance(v, float) for v in props.get("measurements", {}).values())


def _polygons_mask(features, sub=2, shape_rc=(9, 11)):
    annotations = []
    for f in features:
        exterior, *holes = f["geometry"]["coordinates"]
        annotations.append(Annotation("r", "_0", np.asarray(exterior)[:-1]))
        annotations += [Annotation("h", "_2", np.asarray(h)[:-1]) for h in holes]
    return rasterize(annotations, (shape_rc[0] * sub, shape_rc[1] * sub), D / sub)


def test_heatmap_tiff_opens_in_openslide_at_the_slide_scale(tmp_path):
    openslide = pytest.importorskip("openslide")
    folder = _write_scan(tmp_path / "slide")
    export_slide(folder, cell_px=64)
    slide = openslide.OpenSlide(folder / "heatmap.tiff")
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    shapes = pyramid_shapes((9 * 64, 11 * 64))
    assert len(shapes) == 2  # 704 x 576, then 352 x 288 (<= 512)
    assert slide.level_dimensions == tuple((c, r) for r, c in shapes)
    mpp = float(slide.properties["openslide.mpp-x"])
    assert mpp == pytest.approx(D * MPP / 64) == float(slide.properties["openslide.mpp-y"])
    # The TIFF spans exactly the heatmap's level-0 extent, in microns.
    assert slide.dimensions[0] * mpp == pytest.approx(11 * D * MPP)
    # A pixel inside cell (1, 2) (P = 0.95) has the shared colour scale's colour, opaque.
    hm = _heatmap()
    expected = colourise(hm, PROBABILITY_SCALE)
    l0_px = D / 64  # level-0 slide px per TIFF px
    x, y = int((2.5 * D) / l0_px), int((1.5 * D) / l0_px)
    pixel = np.asarray(slide.read_region((x, y), 0, (1, 1)))[0, 0]
    assert tuple(pixel) == tuple(expected[1, 2]) and pixel[3] == 255
    # The level below shows the same cell; cells that were not scored are transparent.
    low = np.asarray(slide.read_region((x, y), 1, (1, 1)))[0, 0]
    assert tuple(low) == tuple(expected[1, 2])
    assert np.asarray(slide.read_region((10, 10), 0, (1, 1)))[0, 0, 3] == 0
    description = json.loads(slide.properties["openslide.comment"])
    assert description["colour_map"] == PROBABILITY_SCALE.describe()
    assert description["cell_px"] == 64 and description["l0_per_cell"] == D
    with tifffile.TiffFile(folder / "heatmap.tiff") as tif:
        pages = tif.pages
        assert [p.is_tiled for p in pages] == [True, True]
        assert pages[0].tilewidth == 256 and pages[0].compression == 8  # deflate
        assert pages[1].subfiletype == 1  # reduced-resolution image
        assert pages[0].tags["ResolutionUnit"].value == 3  # centimetre
    slide.close()
    cam = openslide.OpenSlide(folder / "gradcam.tiff")
    assert cam.dimensions[0] * float(cam.properties["openslide.mpp-x"]) == pytest.approx(
        11 * D * MPP
    )
    cam.close()


def test_regions_geojson_is_valid_in_bounds_and_covers_the_cells(tmp_path):
    folder = _write_scan(tmp_path / "slide")
    written = export_slide(folder)
    assert [p.name for p in written] == list(EXPORT_FILES)
    doc = json.loads((folder / "regions.geojson").read_text())
    validate_geojson(doc, DIMS)
    assert doc["properties"]["threshold"] == 0.5 and "level-0" in doc["properties"]["frame"]
    features = doc["features"]
    assert len(features) == 4  # ring, two corner-touching cells, edge region
    ring = features[0]
    assert ring["properties"]["prob_max"] == pytest.approx(0.95)
    assert ring["properties"]["prob_mean"] == pytest.approx((7 * 0.9 + 0.95) / 8)
    assert ring["properties"]["classification"]["name"] == "Metastasis"
    assert ring["properties"]["objectType"] == "annotation"
    assert len(ring["geometry"]["coordinates"]) == 2  # exterior + hole
    assert signed_area(np.asarray(ring["geometry"]["coordinates"][1])) == pytest.approx(-D * D)
    assert ring["properties"]["n_cells"] == 8
    assert ring["properties"]["area_um2"] == pytest.approx(8 * (D * MPP) ** 2)
    (edge,) = [f for f in features if f["properties"]["n_cells"] == 4]
    # 2 x 2 cells from (900, 700), cut at (1050, 820): 150 x 120 level-0 px.
    assert edge["properties"]["area_um2"] == pytest.approx(150 * 120 * MPP**2)
    assert (_polygons_mask(features) == _expected_mask(_heatmap(), 0.5)).all()


def test_regions_xml_round_trips_and_rasterises_to_the_same_cells(tmp_path):
    folder = _write_scan(tmp_path / "slide")
    export_slide(folder, threshold=0.65)  # drops the 0.6 cell
    annotations = read_asap_xml(folder / "regions.xml")
    groups = [a.group for a in annotations]
    assert groups.count("_0") == 3 and groups.count("_2") == 1  # one hole
    mask = rasterize(annotations, (18, 22), D / 2)
    assert (mask == _expected_mask(_heatmap(), 0.65)).all()
    doc = json.loads((folder / "regions.geojson").read_text())
    assert doc["properties"]["threshold"] == 0.65 and len(doc["features"]) == 3


def test_island_inside_a_hole_is_its_own_region():
    hm = np.zeros((7, 7), np.float32)
    hm[1:6, 1:6] = 0.9
    hm[2:5, 2:5] = 0.0
    hm[3, 3] = 0.8
    regions = find_regions(hm, D, 0.5)
    assert [(len(r.holes), r.n_cells) for r in regions] == [(1, 16), (0, 1)]
    outer, island = regions
    assert outer.area_l0 == pytest.approx(16 * D * D) and island.area_l0 == pytest.approx(D * D)
    assert signed_area(outer.holes[0]) == pytest.approx(-9 * D * D)


def test_holes_touching_at_corners_give_simple_rings():
    """Holes touching each other and the outside at a corner: valid rings, exact area."""
    hm = np.zeros((7, 7), np.float32)
    hm[1:6, 1:6] = 0.9
    for rc in ((2, 2), (3, 3), (4, 4), (5, 5)):  # (5, 5) is outside; the rest are holes
        hm[rc] = 0.0
    regions = find_regions(hm, D, 0.5)
    assert len(regions) == 1 and len(regions[0].holes) == 3 and regions[0].n_cells == 21
    assert regions[0].area_l0 == pytest.approx(21 * D * D)
    doc = regions_geojson(
        regions, slide_name="s", slide_mpp=MPP, slide_dimensions=(700, 700), threshold=0.5
    )
    validate_geojson(doc, (700, 700))  # includes: no vertex repeated within a ring
    mask = _polygons_mask(doc["features"], shape_rc=(7, 7))
    sub = 2
    assert (mask == np.repeat(np.repeat(hm >= 0.5, sub, 0), sub, 1)).all()


def test_threshold_defaults_to_the_scans_and_patches_are_optional(tmp_path):
    folder = _write_scan(tmp_path / "slide", threshold=0.75)
    export_slide(folder, patches=True)
    doc = json.loads((folder / "regions.geojson").read_text())
    validate_geojson(doc, DIMS)
    regions = [f for f in doc["features"] if f["properties"]["objectType"] == "annotation"]
    patches = [f for f in doc["features"] if f["properties"]["objectType"] == "detection"]
    assert doc["properties"]["threshold"] == 0.75 and len(regions) == 2
    assert len(patches) == int(np.isfinite(_heatmap()).sum())
    p = patches[0]["properties"]
    assert p["classification"]["name"] == "Patch" and 0 <= p["prob"] <= 1
    assert len(p["color"]) == 3


def test_nothing_scored_gives_empty_but_valid_files(tmp_path):
    openslide = pytest.importorskip("openslide")
    folder = _write_scan(tmp_path / "blank", hm=np.full((3, 4), np.nan, np.float32))
    export_slide(folder)
    doc = json.loads((folder / "regions.geojson").read_text())
    validate_geojson(doc, DIMS)
    assert doc["features"] == [] and read_asap_xml(folder / "regions.xml") == []
    with openslide.OpenSlide(folder / "heatmap.tiff") as slide:
        region = np.asarray(slide.read_region((0, 0), 0, slide.dimensions))
        assert (region[..., 3] == 0).all()


def test_cli_exports_every_slide_of_an_out_folder(tmp_path):
    out = tmp_path / "out"
    _write_scan(out / "a")
    _write_scan(out / "b")
    (out / ".c.partial").mkdir()  # a scan in progress is left alone
    result = runner.invoke(app, ["export", str(out), "--threshold", "0.7", "--cell-px", "8"])
    assert result.exit_code == 0, result.output
    for name in ("a", "b"):
        for file in EXPORT_FILES:
            assert (out / name / file).is_file(), (name, file)
    assert f"{out / 'a'}: heatmap.tiff" in result.output
    assert not list((out / ".c.partial").iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["{empty}"], "holds no scan.h5"),
        (["{missing}"], "is not a folder"),
        (["{slide}", "--threshold", "1.5"], "--threshold must be in [0, 1]"),
        (["{slide}", "--cell-px", "0"], "--cell-px must be >= 1"),
    ],
)
def test_cli_usage_errors_exit_2_with_one_line(tmp_path, args, message):
    paths = {
        "empty": tmp_path / "empty",
        "missing": tmp_path / "missing",
        "slide": _write_scan(tmp_path / "slide"),
    }
    paths["empty"].mkdir()
    result = runner.invoke(app, ["export", *(a.format(**paths) for a in args)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "slide" / "heatmap.tiff").exists()


def test_unreadable_scan_h5_is_a_data_error(tmp_path):
    folder = tmp_path / "slide"
    folder.mkdir()
    (folder / "scan.h5").write_text("not hdf5")
    result = runner.invoke(app, ["export", str(folder)])
    assert result.exit_code == 2 and "not a readable scan.h5" in result.output


@pytest.mark.realdata
def test_real_aperio_scan_exports_open_and_validate(cmu_slide, tiny_model, tmp_path):
    """CMU-1-Small-Region.svs scanned for real: the TIFFs open in OpenSlide at the slide's
    physical scale, and the regions (at the median probability, so there are some) and one
    feature per patch are valid GeoJSON inside the slide's bounds."""
    openslide = pytest.importorskip("openslide")
    out = tmp_path / "out"
    args = ["scan", str(cmu_slide), "--model", str(tiny_model), "--out", str(out), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    folder = out / cmu_slide.stem
    with openslide.OpenSlide(cmu_slide) as s:
        dims, slide_mpp = s.dimensions, float(s.properties["openslide.mpp-x"])
    from wsi_saliency.outputs.h5 import read_scan_h5

    scan = read_scan_h5(folder / "scan.h5")
    median = float(np.median(scan["prob"]))
    result = runner.invoke(app, ["export", str(folder), "--threshold", str(median), "--patches"])
    assert result.exit_code == 0, result.output
    for name, key in (("heatmap.tiff", "heatmap_prob"), ("gradcam.tiff", "heatmap_gradcam")):
        with openslide.OpenSlide(folder / name) as tif:
            assert tif.properties["openslide.vendor"] == "generic-tiff"
            extent_um = tif.dimensions[0] * float(tif.properties["openslide.mpp-x"])
            cells = scan[key].shape[1] * float(scan[f"{key}_downsample"])
            assert extent_um == pytest.approx(cells * slide_mpp, rel=1e-6)
    doc = json.loads((folder / "regions.geojson").read_text())
    validate_geojson(doc, dims)
    kinds = [f["properties"]["objectType"] for f in doc["features"]]
    assert kinds.count("detection") == len(scan["prob"]) and kinds.count("annotation") >= 1


def test_heatmap_tiff_levels_show_the_cell_under_each_pixel_centre(tmp_path):
    """Every level, read back, is the nearest-cell upsampling of the heatmap, pixel for pixel
    (tiles are made a band at a time and compressed in threads: no tile may be reused)."""
    from wsi_saliency.outputs.tiff import write_heatmap_tiff

    rng = np.random.default_rng(3)
    hm = rng.random((90, 30)).astype(np.float32)
    hm[rng.random(hm.shape) < 0.3] = np.nan
    k = 13  # 1170 x 390 px at level 0: 5 x 2 tiles, then levels of one tile column
    path = write_heatmap_tiff(tmp_path / "h.tiff", hm, 100.0, 0.25, PROBABILITY_SCALE, cell_px=k)
    cells = colourise(hm, PROBABILITY_SCALE)
    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        assert [p.shape[:2] for p in pages] == pyramid_shapes((90 * k, 30 * k))
        assert pages[-1].shape[1] < 256 < pages[0].shape[1]
        for level, page in enumerate(pages):
            rows, cols = page.shape[:2]
            step = 1 << level
            r = np.minimum(((np.arange(rows) + 0.5) * step / k).astype(int), hm.shape[0] - 1)
            c = np.minimum(((np.arange(cols) + 0.5) * step / k).astype(int), hm.shape[1] - 1)
            np.testing.assert_array_equal(page.asarray(), cells[np.ix_(r, c)])
