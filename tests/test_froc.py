"""Camelyon16 slide evaluation: evaluation mask, ITC rule, hit matching, FROC (hand-computed),
slide AUC bootstrap, detections, reference/annotation reading, and ``evaluate-slides``."""

import json

import h5py
import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.data.annotations import Annotation, write_asap_xml
from wsi_saliency.errors import DataError
from wsi_saliency.slide_eval.detections import (
    extract_detections,
    read_detections_csv,
    write_detections_csv,
)
from wsi_saliency.slide_eval.froc import (
    MASK_UM_PER_PX,
    evaluation_mask,
    froc_curve,
    major_axis_lengths,
    match_detections,
)
from wsi_saliency.slide_eval.reference import read_reference, tumour_mask
from wsi_saliency.slide_eval.slide_auc import bootstrap_auc

runner = CliRunner()
MPP = 0.243  # Camelyon16: 32 level-0 px per 7.776 um mask pixel
D = 32


def _l0(row: int, col: int) -> tuple[int, int]:
    """Level-0 (x, y) of the centre of evaluation-mask pixel (row, col) at 0.243 um/px."""
    return col * D + D // 2, row * D + D // 2


def _hand_case_mask() -> np.ndarray:
    """A 200 x 200 mask: lesion A (40 x 40 px, 311 um), lesion C (30 x 30 px) and a 2 x 2 px
    (15.6 um) isolated-tumour-cell region B."""
    m = np.zeros((200, 200), bool)
    m[20:60, 20:60] = True  # A
    m[20:50, 80:110] = True  # C
    m[150:152, 150:152] = True  # B (ITC)
    return m


# Hand computation (shared by the library test and the CLI test):
#   tumour slide: d1 0.9 in A, d2 0.6 in A (second hit on A: ignored), d3 0.8 in B (ITC:
#   ignored), d4 0.7 outside (FP), d5 0.3 in C; normal slide: 0.4 and 0.2 (both FP).
#   Lesions A (best 0.9) and C (0.3): 2; false positives 0.7, 0.4, 0.2 over 2 slides.
#   threshold  FPs  avg FP  lesions hit  sensitivity
#   0.2        3    1.5     2            1.0
#   0.3        2    1.0     2            1.0
#   0.4        2    1.0     1            0.5
#   0.7        1    0.5     1            0.5
#   0.9        0    0.0     1            0.5
#   (+ the point (0, 0))
#   Sensitivity at 1/4, 1/2 FP: 0.5 (flat from 0 to 1 FP at 0.5); at 1 FP: 1.0 (the best
#   point at 1 FP); at 2, 4, 8: 1.0 (beyond the last point the curve stays flat).
#   FROC = (0.5 + 0.5 + 1 + 1 + 1 + 1) / 6 = 5/6.
HAND_FROC = 5 / 6
HAND_SENS = [0.5, 0.5, 1.0, 1.0, 1.0, 1.0]


def test_hand_computed_froc():
    mask = evaluation_mask(_hand_case_mask(), MPP)
    assert mask.l0_per_px == pytest.approx(32.0) and mask.n_regions == 3
    assert mask.n_lesions == 2 and mask.n_itc == 1
    probs = [0.9, 0.6, 0.8, 0.7, 0.3]
    xy = [_l0(41, 41), _l0(51, 51), _l0(151, 151), _l0(121, 21), _l0(31, 91)]
    tumour = match_detections(probs, xy, mask)
    assert sorted(tumour.lesion_probs) == [0.3, 0.9]
    assert tumour.fp_probs.tolist() == [0.7] and tumour.n_ignored == 1 and tumour.n_hit == 2
    normal = match_detections([0.4, 0.2], [_l0(10, 10), _l0(50, 50)], None)
    assert normal.fp_probs.tolist() == [0.4, 0.2]
    curve = froc_curve([tumour, normal])
    np.testing.assert_allclose(curve.thresholds[:-1], [0.2, 0.3, 0.4, 0.7, 0.9])
    np.testing.assert_allclose(curve.avg_fp, [1.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    np.testing.assert_allclose(curve.sensitivity, [1.0, 1.0, 0.5, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(curve.sensitivity_at(), HAND_SENS)
    assert curve.score() == pytest.approx(HAND_FROC)
    # The official script's bookkeeping (float32 lesion probabilities, zeros for missed/ITC
    # lesions, lowest distinct value dropped) gives the same here: the ITC region's 0 is dropped.
    assert froc_curve([tumour, normal], official_quirks=True).score() == pytest.approx(HAND_FROC)


def test_official_quirk_drops_the_lowest_probability_only_when_asked():
    # One lesion found at 0.9, nothing else: a perfect detector.
    mask = evaluation_mask(_hand_case_mask()[:100, :70], MPP)  # lesion A only
    hits = match_detections([0.9], [_l0(30, 30)], mask)
    assert froc_curve([hits]).score() == pytest.approx(1.0)
    # Evaluation_FROC.py thresholds at all_probs[1:] = [] here: only the point (0, 0) is left.
    assert froc_curve([hits], official_quirks=True).score() == pytest.approx(0.0)


# Ties between a lesion hit and a false positive, worked through Evaluation_FROC.py by hand.
# compute_FP_TP_Probs keeps false positives as Python floats and each lesion's best hit in a
# float32 array (TP_probs, 0 = missed); computeFROC takes the thresholds all_probs[1:] of the
# sorted distinct values of both and counts, at each threshold t, the false positives with
# fp >= t (float64) and the lesions with TP >= t compared in float32 (a float32 array against
# a Python float), then appends the point (0, 0). float32(0.7) = 0.699999988 < 0.7;
# float32(0.99999994) = 0.9999999404 > 0.99999994.
#
# tie_07: one lesion hit at 0.7, one false positive at 0.7 (one slide).
#   all_probs = [0.699999988, 0.7] -> thresholds [0.7]; at 0.7: 1 FP, and
#   0.699999988 >= float32(0.7) = 0.699999988: 1 lesion. Curve (FP, sens): (1, 1), (0, 0).
#   interp at 1/4, 1/2, 1, 2, 4, 8: 0.25, 0.5, 1, 1, 1, 1 -> 4.75 / 6 = 0.7917.
#   (The old official_quirks code compared 0.699999988 with 0.7 in float64: 0 lesions, 0.0.)
# float32_equal: the hit at 0.70000001 (float32 0.699999988 too), the false positive at 0.7:
#   the same float32 array and thresholds as tie_07 -> 0.7917. (The old default mode compared
#   in float64: a point (0 FP, 1 lesion) at 0.70000001 -> 1.0.)
# saturated: lesion A hit at 0.99999994, lesion C missed (0), a false positive at 0.99999994.
#   all_probs = [0, 0.99999994, 0.9999999404] -> thresholds [0.99999994, 0.9999999404];
#   at 0.99999994: 1 FP, float32(0.99999994) = 0.9999999404 <= 0.9999999404: 1 of 2 lesions;
#   at 0.9999999404: 0 FP (0.99999994 < 0.9999999404), 1 of 2. Curve (1, .5), (0, .5), (0, 0):
#   0.5 at every rate -> 0.5. (The old default mode compared in float64: only (1, .5) and
#   (0, 0) -> 0.125, 0.25, 0.5, 0.5, 0.5, 0.5 -> 0.3958.)
# The default mode (no dropped threshold) gives the same curves: tie_07 and float32_equal also
# have the threshold 0.699999988 (1 FP, 1 lesion: the same point again); in saturated the
# dropped lowest value is the missed lesion's 0.
TIE_CASES = {
    "tie_07": (0.7, 0.7, [0.25, 0.5, 1, 1, 1, 1]),
    "float32_equal": (0.70000001, 0.7, [0.25, 0.5, 1, 1, 1, 1]),
    "saturated": (0.99999994, 0.99999994, [0.5] * 6),
}


@pytest.mark.parametrize("case", sorted(TIE_CASES))
@pytest.mark.parametrize("official_quirks", [False, True])
def test_tied_lesion_hit_and_false_positive_count_together(case, official_quirks):
    hit, fp, sens = TIE_CASES[case]
    # tie cases: lesion A only; saturated: lesions A and C (C is missed).
    m = _hand_case_mask()[:100, :] if case == "saturated" else _hand_case_mask()[:100, :70]
    mask = evaluation_mask(m, MPP)
    hits = match_detections([hit, fp], [_l0(41, 41), _l0(90, 10)], mask)
    assert hits.fp_probs.tolist() == [fp] and hits.n_hit == 1
    assert hits.n_lesions == (2 if case == "saturated" else 1)
    curve = froc_curve([hits], official_quirks=official_quirks)
    np.testing.assert_allclose(curve.sensitivity_at(), sens)
    assert curve.score() == pytest.approx(np.mean(sens))


def test_empty_tumour_mask_makes_the_official_corner_itc_only_under_quirks():
    empty = np.zeros((100, 70), bool)
    assert evaluation_mask(empty, MPP).n_regions == 0
    # Evaluation_FROC.py: distance_transform_edt of an image without a zero (no tumour pixel)
    # is hypot(r + 1, c) in scipy (a virtual zero at row -1, col 0); kept where below
    # 75 / (7.776 * 2) = 4.82 px, i.e. (r + 1)^2 + c^2 < 23.26: rows 0..3 with cols 0..4, 0..4,
    # 0..3, 0..2 (17 px), one region whose major axis (~5.6 px) is under 35.37 px: an ITC.
    mask = evaluation_mask(empty, MPP, official_quirks=True)
    expected = np.zeros((100, 70), np.int32)
    for r, n in enumerate((5, 5, 4, 3)):
        expected[r, :n] = 1
    np.testing.assert_array_equal(mask.labels, expected)
    assert mask.n_itc == 1 and mask.n_lesions == 0
    xy = [_l0(1, 1), _l0(50, 50)]
    quirky = match_detections([0.95, 0.6], xy, mask)
    assert quirky.n_ignored == 1 and quirky.fp_probs.tolist() == [0.6]
    plain = match_detections([0.95, 0.6], xy, evaluation_mask(empty, MPP))
    assert plain.n_ignored == 0 and plain.fp_probs.tolist() == [0.95, 0.6]
    # With a slide whose lesion A is hit at 0.9 and the empty-mask slide with 0.95 in the
    # corner: the script has no false positive, TP_probs [0.9] and [0] (the ITC), thresholds
    # [0.9] (the ITC's 0 dropped): 0 FP, 1 of 1 lesion -> curve (0, 1), (0, 0): 1.0 at every
    # rate. (Without the corner region 0.95 is a false positive and the dropped lowest value
    # is 0.9: only (0.5, 0) at 0.95 -> 0.0.)
    lesion = match_detections(
        [0.9], [_l0(30, 30)], evaluation_mask(_hand_case_mask()[:100, :70], MPP)
    )
    corner = match_detections([0.95], [_l0(1, 1)], mask)
    assert froc_curve([lesion, corner], official_quirks=True).score() == pytest.approx(1.0)


def test_lesions_closer_than_75um_merge_and_holes_fill():
    # Edge pixel centres 9 px (70 um) apart merge; 11 px (85.5 um) apart stay separate.
    m = np.zeros((60, 120), bool)
    m[10:50, 10:40] = True
    m[10:50, 48:70] = True  # 8 empty pixels (40..47): edge centres 9 px = 70 um apart
    m[10:50, 80:110] = True  # 10 empty pixels (70..79): 11 px = 85.5 um apart
    mask = evaluation_mask(m, MPP)
    assert mask.n_regions == 2
    assert mask.labels[30, 20] == mask.labels[30, 60] != mask.labels[30, 90]
    ring = np.zeros((80, 80), bool)
    ring[10:70, 10:70] = True
    ring[25:55, 25:55] = False  # a 233 um hole: filled, a detection there hits the lesion
    mask = evaluation_mask(ring, MPP)
    assert mask.n_regions == 1 and mask.labels[40, 40] == 1
    hits = match_detections([0.5], [_l0(40, 40)], mask)
    assert hits.n_hit == 1 and hits.fp_probs.size == 0


def test_itc_rule_uses_275um_major_axis_at_any_slide_resolution():
    # A thin lesion 1 px wide: grown by 4 px each way; major axis ~ length + 9 px.
    threshold_px = 275 / MASK_UM_PER_PX  # 35.37
    for length, itc in ((20, True), (34, False)):
        m = np.zeros((60, 80), bool)
        m[30, 10 : 10 + length] = True
        for mpp in (0.243, 0.5):  # the grid is 7.776 um per pixel whatever the slide's mpp
            mask = evaluation_mask(m, mpp)
            assert mask.n_regions == 1
            assert bool(mask.is_itc[1]) is itc, (length, mask.major_axis_um[1] / MASK_UM_PER_PX)
            assert mask.l0_per_px == pytest.approx(MASK_UM_PER_PX / mpp)
    assert threshold_px == pytest.approx(35.36, abs=0.01)


def test_major_axis_matches_skimage_regionprops():
    from scipy import ndimage as ndi
    from skimage.measure import regionprops

    rng = np.random.default_rng(3)
    blobs = ndi.gaussian_filter(rng.random((120, 150)), 3) > 0.52
    labels, n = ndi.label(blobs, structure=np.ones((3, 3)))
    ours = major_axis_lengths(labels, n)
    theirs = [p.axis_major_length for p in regionprops(labels)]
    assert n > 5
    np.testing.assert_allclose(ours[1:], theirs, rtol=1e-9, atol=1e-9)


def test_detections_outside_the_grid_or_on_a_normal_slide_are_false_positives():
    mask = evaluation_mask(_hand_case_mask(), MPP)
    hits = match_detections([0.5, 0.6], [(10**7, 10), _l0(41, 41)], mask)
    assert hits.fp_probs.tolist() == [0.5] and hits.n_hit == 1
    empty = froc_curve([match_detections([], np.zeros((0, 2)), None)])
    assert np.isnan(empty.score()) and empty.n_lesions == 0


def test_bootstrap_auc_is_seeded_and_brackets_the_auc():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(20, bool), np.zeros(30, bool)]
    scores = np.r_[rng.normal(1, 1, 20), rng.normal(0, 1, 30)]
    a = bootstrap_auc(labels, scores, n_bootstrap=500, seed=1)
    b = bootstrap_auc(labels, scores, n_bootstrap=500, seed=1)
    assert a == b and a.ci95[0] < a.auc < a.ci95[1]
    # The vectorised bootstrap equals a plain loop over the same resamples.
    from wsi_saliency.metrics import roc_auc

    r = np.random.default_rng(1)
    pos, neg = scores[labels], scores[~labels]
    cp = r.multinomial(20, np.full(20, 1 / 20), size=500)
    cn = r.multinomial(30, np.full(30, 1 / 30), size=500)
    loop = [
        roc_auc(
            np.r_[np.ones(20), np.zeros(30)],
            np.r_[np.repeat(pos, cp[i]), np.repeat(neg, cn[i])],
        )
        for i in range(500)
    ]
    np.testing.assert_allclose(np.percentile(loop, [2.5, 97.5]), a.ci95)
    one_class = bootstrap_auc(np.ones(3, bool), [0.1, 0.2, 0.3])
    assert np.isnan(one_class.auc) and np.isnan(one_class.ci95[0])


def test_components_and_maxima_detections(tmp_path):
    hm = np.full((20, 30), np.nan, np.float32)
    hm[2:6, 2:6] = 0.6
    hm[3, 4] = 0.95  # the peak of blob 1
    hm[10:12, 20:25] = 0.7
    hm[15, 5] = 0.3  # below threshold
    dets = extract_detections(hm, 64.0, threshold=0.5)
    assert dets.probs.tolist() == pytest.approx([0.95, 0.7])
    # Cell (3, 4) centre: x = 4.5 * 64 = 288, y = 3.5 * 64 = 224.
    assert dets.l0_xy[0].tolist() == [288, 224]
    maxima = extract_detections(hm, 64.0, method="maxima", slide_mpp=0.5, radius_um=40.0)
    # radius 40 um = 1.25 cells: the 0.6 plateau cells farther than 1 cell from the peak
    # are maxima too (several detections on one blob).
    assert len(maxima) > 2 and maxima.probs[0] == pytest.approx(0.95)
    path = write_detections_csv(tmp_path / "s.csv", dets)
    assert path.read_text().splitlines()[0] == "0.949999988,288,224"
    back = read_detections_csv(path)
    np.testing.assert_array_equal(back.probs, dets.probs)
    np.testing.assert_array_equal(back.l0_xy, dets.l0_xy)


def test_reference_csv_with_or_without_header(tmp_path):
    ref = tmp_path / "reference.csv"
    ref.write_text("Test_001,Tumor,Macro,Primary\nTest_002.tif,Normal\nTest_003,tumor,Micro\n")
    rows = read_reference(ref)
    assert [(r.stem, r.is_tumour) for r in rows] == [
        ("Test_001", True),
        ("Test_002", False),
        ("Test_003", True),
    ]
    ref.write_text("image,label\nA.svs,Normal\n")
    assert [(r.stem, r.is_tumour) for r in read_reference(ref)] == [("A", False)]
    ref.write_text("A,Tumor\nA.tif,Normal\n")
    with pytest.raises(DataError, match="listed again"):
        read_reference(ref)


def test_tumour_mask_from_xml_and_from_a_mask_tiff_at_any_level(tmp_path):
    dims = (4096, 3072)  # level-0 (width, height) at 0.243 um/px: a 128 x 96 mask grid
    square = np.array([[512, 512], [1536, 512], [1536, 1024], [512, 1024]], float)
    excl = np.array([[600, 600], [700, 600], [700, 700], [600, 700]], float)
    tiny = np.array([[3000, 2000], [3010, 2000], [3010, 2010]], float)  # 2.4 um
    write_asap_xml(
        tmp_path / "s.xml",
        [
            Annotation("a", "_0", square),
            Annotation("b", "_2", excl),
            Annotation("c", "_1", tiny),
        ],
    )
    from_xml = tumour_mask(tmp_path / "s.xml", dims, D)
    assert from_xml.shape == (96, 128)
    expected = np.zeros((96, 128), bool)
    expected[16:32, 16:48] = True
    expected[19:22, 19:22] = False  # the exclusion (pixel centres 624..688 in 600..700)
    expected[62, 93] = True  # the tiny lesion keeps the pixel under its centre (3005, 2005)
    np.testing.assert_array_equal(from_xml, expected)
    # A two-page mask TIFF (downsample 8 and 64, values 255): the finer-than-32 page is read.
    level8 = np.zeros((384, 512), np.uint8)
    level8[64:128, 64:192] = 255
    with tifffile.TiffWriter(tmp_path / "s_mask.tif") as tw:
        tw.write(level8)
        tw.write(np.zeros((48, 64), np.uint8))
    from_tiff = tumour_mask(tmp_path / "s_mask.tif", dims, D)
    expected = np.zeros((96, 128), bool)
    expected[16:32, 16:48] = True
    np.testing.assert_array_equal(from_tiff, expected)
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    with pytest.raises(DataError, match="bad.tif"):
        tumour_mask(tmp_path / "bad.tif", dims, D)


# ------------------------------------------------------------------------- through the CLI


def _fake_scan(folder, stem, heatmap, l0_per_cell, mpp, dims):
    """A minimal scan.h5 with what evaluate-slides reads (as wsi-saliency scan writes it)."""
    d = folder / stem
    d.mkdir(parents=True)
    with h5py.File(d / "scan.h5", "w") as f:
        f["heatmap_prob"] = heatmap.astype(np.float32)
        f["prob"] = heatmap[np.isfinite(heatmap)].astype(np.float32)
        f["coords"] = np.zeros((0, 2), np.int64)
        f.attrs["heatmap_prob_downsample"] = float(l0_per_cell)
        f.attrs["slide_mpp"] = float(mpp)
        f.attrs["slide_dimensions"] = np.asarray(dims, np.int64)
        f.attrs["model_path"] = "fake.keras"


def _hand_case_files(tmp_path):
    """The hand case as scan outputs (heatmaps at 64 level-0 px per cell, i.e. cell (r, c)
    lands on mask pixel (2r + 1, 2c + 1)), an ASAP XML and a reference CSV."""
    scans, ann = tmp_path / "scans", tmp_path / "ann"
    ann.mkdir()
    dims = (6400, 6400)
    hm = np.full((100, 100), np.nan, np.float32)
    hm[40:60, 40:60] = 0.05  # scored tissue below the threshold
    for (r, c), p in {
        (20, 20): 0.9,  # mask (41, 41): lesion A
        (25, 25): 0.6,  # mask (51, 51): A again
        (75, 75): 0.8,  # mask (151, 151): the ITC region
        (60, 10): 0.7,  # mask (121, 21): nothing: a false positive
        (15, 45): 0.3,  # mask (31, 91): lesion C
    }.items():
        hm[r, c] = p
    _fake_scan(scans, "tumour_1", hm, 64, MPP, dims)
    normal = np.full((100, 100), 0.01, np.float32)
    normal[10, 10], normal[50, 50] = 0.4, 0.2
    _fake_scan(scans, "normal_1", normal, 64, MPP, dims)

    def sq(x0, y0, x1, y1):
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)

    write_asap_xml(
        ann / "tumour_1.xml",
        [
            Annotation("A", "_0", sq(640, 640, 1920, 1920)),  # mask px 20..59
            Annotation("C", "_0", sq(2560, 640, 3520, 1600)),  # rows 20..49, cols 80..109
            Annotation("B", "_1", sq(4800, 4800, 4864, 4864)),  # 2 x 2 px: ITC
        ],
    )
    ref = tmp_path / "reference.csv"
    ref.write_text("tumour_1.tif,Tumor,Macro\nnormal_1,Normal\n")
    return scans, ann, ref


def test_cli_reproduces_the_hand_computed_froc(tmp_path):
    scans, ann, ref = _hand_case_files(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate-slides", str(scans), "-r", str(ref), "-a", str(ann), "--out", str(out)]
    result = runner.invoke(app, [*args, "--detection-threshold", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    assert m["froc"] == pytest.approx(HAND_FROC)
    assert list(m["froc_sensitivity"].values()) == pytest.approx(HAND_SENS)
    assert m["slide_auc"] == 1.0 and m["slide_auc_ci95"] == [1.0, 1.0]
    c = m["counts"]
    assert (c["lesions"], c["lesions_hit"], c["itc_regions"]) == (2, 2, 1)
    assert (c["false_positives"], c["ignored_on_itc"], c["detections"]) == (3, 1, 7)
    assert m["config"]["seed"] == 0 and "keras" in m["versions"]
    assert json.loads((out / "metrics.json").read_text())["froc"] == pytest.approx(HAND_FROC)
    for name in ("roc.png", "froc.png", "slides.csv"):
        assert (out / name).stat().st_size > 0
    rows = (out / "detections" / "tumour_1.csv").read_text().splitlines()
    assert rows[0] == "0.899999976,1312,1312" and len(rows) == 5
    # The default threshold (0.5) loses lesion C's detection: A only, FPs 0.7 -> lower FROC.
    result = runner.invoke(app, [*args, "--json"])
    assert json.loads(result.stdout)["froc"] < HAND_FROC


def test_cli_official_quirks_gives_an_empty_tumour_mask_its_corner_itc(tmp_path):
    scans, ann, ref = _hand_case_files(tmp_path)
    hm = np.full((100, 100), 0.01, np.float32)
    hm[0, 0] = 0.95  # level-0 (32, 32): mask pixel (1, 1), in the official corner region
    _fake_scan(scans, "tumour_2", hm, 64, MPP, (6400, 6400))
    # Only an exclusion: no tumour pixel.
    excl = np.array([[640, 640], [1280, 640], [1280, 1280], [640, 1280]], float)
    write_asap_xml(ann / "tumour_2.xml", [Annotation("x", "_2", excl)])
    ref.write_text(ref.read_text() + "tumour_2,Tumor\n")
    args = ["evaluate-slides", str(scans), "-r", str(ref), "-a", str(ann), "--json"]
    args += ["--out", str(tmp_path / "eval"), "--detection-threshold", "0.1", "--bootstrap", "0"]
    counts = {}
    for quirks in (False, True):
        result = runner.invoke(app, args + ["--official-quirks"] * quirks)
        assert result.exit_code == 0, result.output
        m = json.loads(result.stdout)
        assert any("no tumour area" in w and "tumour_2" in w for w in m["warnings"])
        c = m["counts"]
        counts[quirks] = (c["itc_regions"], c["ignored_on_itc"], c["false_positives"])
    assert counts == {False: (1, 1, 4), True: (2, 2, 3)}


def _run_bad(args):
    result = runner.invoke(app, ["evaluate-slides", *map(str, args)])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_bad_inputs_fail_with_one_line_naming_the_file(tmp_path):
    scans, ann, ref = _hand_case_files(tmp_path)
    # An annotation file that does not parse.
    (ann / "tumour_1.xml").write_text("<ASAP_Annotations><Annotations>")
    line = _run_bad([scans, "-r", ref, "-a", ann])
    assert "tumour_1.xml" in line
    (ann / "tumour_1.xml").unlink()
    # A tumour slide without annotation.
    assert "tumour_1" in _run_bad([scans, "-r", ref, "-a", ann])
    # A slide in the reference with no scan output.
    ref2 = tmp_path / "ref2.csv"
    ref2.write_text("normal_1,Normal\nmissing_7,Normal\n")
    line = _run_bad([scans, "-r", ref2, "-a", ann])
    assert "missing_7" in line and "scan.h5" in line
    # A label other than Tumor/Normal.
    ref2.write_text("normal_1,Normal\ntumour_1,Suspicious\n")
    line = _run_bad([scans, "-r", ref2, "-a", ann])
    assert "ref2.csv" in line and "Suspicious" in line
    # Options and folders.
    assert "annotation folder" in _run_bad([scans, "-r", ref, "-a", tmp_path / "nope"])
    assert "--slide-score" in _run_bad([scans, "-r", ref, "-a", ann, "--slide-score", "mean"])
