"""Bundled models: the model shipped in the package, used by name or when no --model is given.

The library tests run on a stand-in (an untrained tiny model published into a temporary models
folder); the tests named ``shipped`` check the file that really ships, and the real-data ones
its stated AUC on ../shared/data."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, tiny_card

from wsi_saliency.errors import InputError
from wsi_saliency.model import bundled

SHIPPED = bundled.MODELS_DIR / f"{bundled.DEFAULT_MODEL}.keras"


@pytest.fixture
def models_dir(tmp_path, monkeypatch, tiny_model):
    """A models folder holding the untrained tiny model as the default bundled model."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / f"{bundled.DEFAULT_MODEL}.keras").write_bytes(Path(tiny_model).read_bytes())
    monkeypatch.setattr(bundled, "MODELS_DIR", folder)
    return folder


def test_resolve_model_takes_files_names_and_nothing(models_dir, tiny_model):
    default = models_dir / f"{bundled.DEFAULT_MODEL}.keras"
    assert bundled.resolve_model(None) == (default, bundled.DEFAULT_MODEL)
    assert bundled.resolve_model(bundled.DEFAULT_MODEL) == (default, bundled.DEFAULT_MODEL)
    assert bundled.resolve_model(str(tiny_model)) == (Path(tiny_model), None)
    with pytest.raises(InputError, match=r"neither a file nor a bundled model \(bundled: pcam"):
        bundled.resolve_model("no-such-model")
    with pytest.raises(InputError, match=r"model file runs/x/model.keras does not exist"):
        bundled.resolve_model("runs/x/model.keras")


def test_no_bundled_model_says_to_pass_one(tmp_path, monkeypatch):
    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "absent")
    assert bundled.bundled_models() == {}
    with pytest.raises(InputError, match="has no bundled model .* pass --model"):
        bundled.resolve_model(None)
    with pytest.raises(InputError, match=r"\(bundled: none\)"):
        bundled.resolve_model("pcam-ai4all")


def test_describe_names_the_model_its_auc_and_what_it_is_not():
    card = tiny_card(metrics={"valid_auc": 0.9312, "valid_tta_auc": 0.9401, "parameters": 410208})
    line = bundled.describe("pcam-ai4all", card)
    assert line == (
        "bundled model 'pcam-ai4all' (tiny, 0.41 M parameters): valid AUC 0.931 (0.940 with "
        "--tta) on 3,000 PCam patches; research use, not a diagnostic device"
    )


def test_publish_measures_the_valid_split_and_writes_the_card(tmp_path, monkeypatch, tiny_model):
    """``publish`` on the sample PCam data: the card's AUC is the one evaluate computes, the
    ``about`` is written and the file loads in safe mode."""
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.evaluation import evaluate_split
    from wsi_saliency.model.io import load_model, read_card

    monkeypatch.setattr(bundled, "MODELS_DIR", tmp_path / "models")
    path = bundled.publish(Path(tiny_model), str(REPO / "sample_data" / "pcam"), name="stand-in")
    assert path == tmp_path / "models" / "stand-in.keras"
    card = read_card(path)
    assert set(card.about) == {"data", "recipe", "validation", "not", "licence"}
    model, _ = load_model(path)
    with open_pcam(REPO / "sample_data" / "pcam", "valid") as split:
        expected = evaluate_split(model, split).metrics
    assert card.metrics["valid_auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert card.metrics["valid_n"] == expected["n"]
    assert {"valid_tta_auc", "parameters", "training_run"} <= set(card.metrics)


# ---------------------------------------------------------------- the file that ships


def test_shipped_model_is_small_safe_and_says_what_it_is():
    from wsi_saliency.model.io import load_model

    assert SHIPPED.is_file(), f"{SHIPPED} is missing: see the README, 'The bundled model'"
    assert SHIPPED.stat().st_size < 5 * 2**20
    with zipfile.ZipFile(SHIPPED) as zf:  # a plain .keras archive, nothing executable
        assert {"config.json", "model.weights.h5", "wsi_saliency.json"} <= set(zf.namelist())
    model, card = load_model(SHIPPED)  # safe mode
    assert set(card.about) == {"data", "recipe", "validation", "not", "licence"}
    assert "not a diagnostic device" in card.about["not"].lower()
    assert card.patch_size == 96 and card.patch_mpp == pytest.approx(0.972)
    assert card.metrics["parameters"] == model.count_params()
    assert card.metrics["valid_n"] == 3000


@pytest.mark.realdata
@pytest.mark.slow
def test_shipped_model_reaches_its_stated_auc_on_the_real_valid_patches(shared_data):
    from wsi_saliency.data.folders import ensure_pcam
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.evaluation import evaluate_split
    from wsi_saliency.model.io import load_model

    model, card = load_model(SHIPPED)
    with open_pcam(ensure_pcam(str(shared_data / "pcam-ai4all")), "valid") as split:
        metrics = evaluate_split(model, split).metrics
    assert metrics["n"] == 3000
    assert abs(metrics["auc"] - card.metrics["valid_auc"]) <= 1e-3
    assert np.isfinite(metrics["accuracy"])


# ---------------------------------------------------------------- the commands


def _cli(*args):
    from typer.testing import CliRunner

    from wsi_saliency.cli import app

    return CliRunner().invoke(app, list(args))


def test_scan_without_model_uses_the_bundled_one_and_says_so(tmp_path):
    import json

    slide = REPO / "sample_data" / "slide" / "sample_slide.tif"
    result = _cli("scan", str(slide), "--out", str(tmp_path / "out"), "--quiet")
    assert result.exit_code == 0, result.output
    assert "model: bundled model 'pcam-ai4all' (tiny, 0.22 M parameters)" in result.output
    assert "not a diagnostic device" in result.output
    summary = json.loads((tmp_path / "out" / "sample_slide" / "summary.json").read_text())
    assert summary["model"] == str(SHIPPED) and summary["model_backbone"] == "tiny"


def test_model_names_work_in_evaluate_and_unknown_names_are_usage_errors(tmp_path):
    import json

    out = tmp_path / "eval"
    result = _cli(
        "evaluate", "pcam-ai4all", str(REPO / "sample_data" / "pcam"), "--split", "valid",
        "--out", str(out),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["n"] > 0
    slide = REPO / "sample_data" / "slide" / "sample_slide.tif"
    result = _cli("scan", str(slide), "--model", "pcam-nothing", "--out", str(tmp_path / "o"))
    assert result.exit_code == 2
    assert "model pcam-nothing is neither a file nor a bundled model (bundled: pcam-ai4all)" in (
        result.output
    )


def test_info_lists_the_bundled_model():
    result = _cli("info")
    assert result.exit_code == 0, result.output
    line = "bundled model 'pcam-ai4all' (tiny, 0.22 M parameters): valid AUC"
    assert line in result.output
    assert "[default]" in result.output


@pytest.mark.realdata
def test_bundled_model_scans_the_real_slide(cmu_slide, tmp_path):
    import json

    result = _cli("scan", str(cmu_slide), "--out", str(tmp_path), "--quiet")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / cmu_slide.stem / "summary.json").read_text())
    assert summary["patches_scored"] > 50
    assert 0.0 <= summary["score_max"] <= 1.0
