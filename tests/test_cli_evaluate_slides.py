"""``wsi-saliency scan`` then ``evaluate-slides`` end to end, on two tiny synthetic slides (one
with a lesion, one without) and a tiny untrained model: every output is there and consistent."""

import csv
import json

import numpy as np
from typer.testing import CliRunner

from wsi_saliency.cli import app

runner = CliRunner()
MPP = 0.486


def _slide(folder, name, lesions, seed):
    from wsi_saliency.synthetic.slides import write_synthetic_slide

    tissue = [np.array([[60, 60], [980, 80], [960, 700], [80, 690]], float)]
    return write_synthetic_slide(
        folder / f"{name}.tif",
        l0_size_xy=(1024, 768),
        mpp=MPP,
        lesions=lesions,
        seed=seed,
        tile=256,
        levels=(1, 4),
        tissue=tissue,
        pen_mark=False,
        dark_area=False,
    )


def test_scan_then_evaluate_slides(tiny_model, tmp_path):
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    slides, ann = tmp_path / "slides", tmp_path / "ann"
    ann.mkdir()
    lesion = random_blob_polygon(
        np.random.default_rng(0), (500.0, 380.0), 280.0, irregularity=0.2, n_vertices=40
    )
    tumour = _slide(slides, "tumour_a", [lesion], seed=1)
    _slide(slides, "normal_a", [], seed=2)
    tumour.xml_path.rename(ann / "tumour_a.xml")
    (slides / "normal_a.xml").unlink()
    scans = tmp_path / "scans"
    result = runner.invoke(
        app,
        ["scan", str(slides), "--model", str(tiny_model), "--out", str(scans), "--quiet"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    ref = tmp_path / "reference.csv"
    ref.write_text("tumour_a.tif,Tumor\nnormal_a.tif,Normal\n")
    result = runner.invoke(
        app,
        [
            "evaluate-slides",
            str(scans),
            "--reference",
            str(ref),
            "--annotations",
            str(ann),
            "--detection-threshold",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    m = json.loads(result.stdout)
    out = scans / "evaluation"
    assert json.loads((out / "metrics.json").read_text())["froc"] == m["froc"]
    # One lesion of ~270 um (grown: ~350 um, not an ITC); the untrained model's detections
    # may or may not hit it (the hand-computed cases in test_froc.py check the matching).
    c = m["counts"]
    assert c["lesions"] == 1 and c["tumour_slides"] == 1 and c["itc_regions"] == 0
    assert c["lesions_hit"] <= 1 and 0 <= m["froc"] <= 1
    assert c["false_positives"] + c["lesions_hit"] <= c["detections"]
    assert m["slide_auc"] in (0.0, 0.5, 1.0) and len(m["slide_auc_ci95"]) == 2
    assert m["inputs"]["reference"] == str(ref) and m["scan_models"] == [str(tiny_model)]
    for name in ("roc.png", "froc.png", "metrics.json", "slides.csv"):
        assert (out / name).stat().st_size > 0, name
    rows = {r["slide"]: r for r in csv.DictReader((out / "slides.csv").open())}
    assert set(rows) == {"tumour_a", "normal_a"} and rows["normal_a"]["lesions"] == "0"
    for stem in rows:
        lines = (out / "detections" / f"{stem}.csv").read_text().splitlines()
        assert len(lines) == int(rows[stem]["detections"]) >= 1
        p, x, y = lines[0].split(",")
        assert 0 <= float(p) <= 1 and 0 <= int(x) < 1024 and 0 <= int(y) < 768
