"""ASAP / Camelyon16 XML read/write and polygon rasterisation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon as sk_polygon

from wsi_saliency.data.annotations import (
    Annotation,
    rasterize,
    read_asap_xml,
    write_asap_xml,
)
from wsi_saliency.errors import DataError, InputError

CAMELYON_STYLE = """<?xml version="1.0"?>
<ASAP_Annotations>
\t<Annotations>
\t\t<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="2" X="200" Y="200" />
\t\t\t\t<Coordinate Order="0" X="100" Y="100" />
\t\t\t\t<Coordinate Order="1" X="200,5" Y="100" />
\t\t\t\t<Coordinate Order="3" X="100" Y="200.25" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t\t<Annotation Name="Annotation 1" Type="Spline" PartOfGroup="_2" Color="#64FE2E">
\t\t\t<Coordinates>
\t\t\t\t<Coordinate Order="0" X="140" Y="140" />
\t\t\t\t<Coordinate Order="1" X="160" Y="140" />
\t\t\t\t<Coordinate Order="2" X="160" Y="160" />
\t\t\t\t<Coordinate Order="3" X="140" Y="160" />
\t\t\t</Coordinates>
\t\t</Annotation>
\t</Annotations>
\t<AnnotationGroups>
\t\t<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
\t\t<Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
\t</AnnotationGroups>
</ASAP_Annotations>
"""


def _square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def test_read_camelyon_style_xml(tmp_path):
    path = tmp_path / "Tumor_999.xml"
    path.write_text(CAMELYON_STYLE)
    anns = read_asap_xml(path)
    assert [a.name for a in anns] == ["Annotation 0", "Annotation 1"]
    assert [a.group for a in anns] == ["_0", "_2"]
    assert [a.type for a in anns] == ["Polygon", "Spline"]
    # Vertices sorted by Order; the decimal comma is read as a point.
    np.testing.assert_array_equal(
        anns[0].polygon, [[100, 100], [200.5, 100], [200, 200], [100, 200.25]]
    )
    assert anns[0].polygon.dtype == np.float64
    assert anns[0].is_tumour and not anns[0].is_exclusion
    assert anns[1].is_exclusion and not anns[1].is_tumour


def test_xml_round_trip(tmp_path):
    anns = [
        Annotation("Annotation 0", "_0", _square(10, 20, 300, 400)),
        Annotation("lesion b", "Tumor", np.array([[1.25, 2.5], [1000.125, 3.0], [500.0, 7e4 / 3]])),
        Annotation("hole", "_2", _square(50, 60, 70, 80)),
    ]
    path = tmp_path / "out.xml"
    assert write_asap_xml(path, anns) == path
    back = read_asap_xml(path)
    assert [(a.name, a.group, a.type) for a in back] == [(a.name, a.group, a.type) for a in anns]
    for a, b in zip(anns, back, strict=True):
        np.testing.assert_array_equal(a.polygon, b.polygon)  # exact round trip
    assert [p.name for p in tmp_path.iterdir()] == ["out.xml"]  # no temp file left
    assert path.read_text().startswith("<?xml")


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_asap_xml(tmp_path / "missing.xml")
    bad = tmp_path / "broken.xml"
    bad.write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(DataError, match="broken.xml"):
        read_asap_xml(bad)
    wrong = tmp_path / "wrong.xml"
    wrong.write_text("<svg></svg>")
    with pytest.raises(DataError, match="wrong.xml.*ASAP_Annotations"):
        read_asap_xml(wrong)
    nan = tmp_path / "nan.xml"
    nan.write_text(CAMELYON_STYLE.replace('X="200" Y="200"', 'X="abc" Y="200"'))
    with pytest.raises(DataError, match="nan.xml.*abc"):
        read_asap_xml(nan)


def test_rasterize_known_square():
    sq = [Annotation("a", "_0", _square(100, 100, 200, 200))]
    m = rasterize(sq, (300, 300), 1)
    assert m.dtype == bool and m.shape == (300, 300)
    expected = np.zeros((300, 300), dtype=bool)
    expected[100:200, 100:200] = True  # pixel centres 100.5 .. 199.5 are inside
    np.testing.assert_array_equal(m, expected)
    # Downsample 4: level-0 [100, 200) is output [25, 50).
    m4 = rasterize(sq, (75, 75), 4)
    assert m4.sum() == 25 * 25 and m4[25:50, 25:50].all()
    # A window with an origin (a tile of a slide).
    mt = rasterize(sq, (64, 64), 1, origin_xy=(150, 180))
    assert mt[:20, :50].all() and mt.sum() == 20 * 50


def test_rasterize_subtracts_exclusions_and_takes_bare_polygons():
    anns = [
        Annotation("t", "_1", _square(0, 0, 100, 100)),
        Annotation("x", "Exclusion", _square(40, 40, 60, 60)),
    ]
    m = rasterize(anns, (100, 100), 1)
    assert m.sum() == 100 * 100 - 20 * 20
    assert not m[40:60, 40:60].any()
    bare = rasterize([_square(0, 0, 10, 10)], (20, 20), 1)
    assert bare.sum() == 100
    # Fewer than 3 vertices: nothing.
    assert not rasterize([np.array([[1.0, 1.0], [5.0, 5.0]])], (10, 10)).any()


def test_rasterize_matches_skimage_polygon():
    rng = np.random.default_rng(0)
    for i in range(120):
        h, w = (int(v) for v in rng.integers(5, 120, 2))
        k = int(rng.integers(3, 25))
        poly = np.stack([rng.uniform(-20, w + 20, k), rng.uniform(-20, h + 20, k)], axis=1)
        ds = (1.0, 2.0, 3.7)[i % 3]
        if i % 4 == 0 and ds != 3.7:
            # Integer vertices: pixel centres exactly on the outline count as inside, as in
            # skimage (with ds 3.7 such ties are decided by rounding errors, so not compared).
            poly = np.round(poly)
        ours = rasterize([poly], (h, w), ds)
        ref = np.zeros((h, w), dtype=bool)
        rr, cc = sk_polygon(poly[:, 1] / ds - 0.5, poly[:, 0] / ds - 0.5, (h, w))
        ref[rr, cc] = True
        np.testing.assert_array_equal(ours, ref, err_msg=f"case {i}")


def test_annotation_equality_and_validation():
    a = Annotation("a", "_0", _square(0, 0, 1, 1))
    assert a == Annotation("a", "_0", _square(0, 0, 1, 1).tolist())
    assert a != Annotation("a", "_0", _square(0, 0, 2, 1))
    assert a.bbox_xy == (0.0, 0.0, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"\[K, 2\]"):
        Annotation("bad", "_0", np.zeros((3, 3)))
