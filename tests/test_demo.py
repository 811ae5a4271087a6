"""The sample data really teaches the model, and the scan finds the planted lesions: the demo
end to end through the CLI (about 2 minutes on 2 cores)."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wsi_saliency.cli import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_learns_and_finds_the_planted_lesions(tmp_path):
    result = runner.invoke(app, ["demo", str(tmp_path)])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["auc"] >= 0.95  # valid split of sample_data/pcam

    evaluated = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "model" / "model.keras"),
            str(REPO / "sample_data" / "pcam"),
            "--split",
            "test",
            "--json",
            "--out",
            str(tmp_path / "eval"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    test_metrics = json.loads(evaluated.stdout[evaluated.stdout.index("{") :])
    assert test_metrics["auc"] >= 0.95

    report = json.loads((tmp_path / "demo_report.json").read_text())
    assert report["cell_auc"] >= 0.9  # heatmap vs the ASAP outlines of the planted lesions
    assert all(abs(s) <= 1 for s in report["best_shift_cells"])  # aligned within one patch
    scan = tmp_path / "scan" / "sample_slide"
    for name in ("heatmap.png", "gradcam.png", "tissue.png", "scan.h5", "summary.json"):
        assert (scan / name).is_file()
    # Reusing the trained model on a second run.
    again = runner.invoke(app, ["demo", str(tmp_path)])
    assert again.exit_code == 0 and "reusing" in again.output
