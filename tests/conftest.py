"""Shared fixtures. Real data lives in ../shared/data beside the project and is never copied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WSI_SALIENCY_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real PCam patches, CMU-1-Small-Region.svs, Camelyon16 polygons)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set WSI_SALIENCY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def cmu_slide(shared_data: Path) -> Path:
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def tiny_card(**kw):
    """The ``tiny`` backbone's ModelCard (PCam's 96 px at 0.972 um/px); ``kw`` adds or overrides
    fields. Also used by test_model.py (``from conftest import tiny_card``)."""
    from wsi_saliency.model.io import ModelCard

    base = dict(
        backbone="tiny",
        patch_size=96,
        patch_mpp=0.972,
        gradcam_layer="tiny_stage4_out",
        preprocess="unit",
    )
    return ModelCard(**{**base, **kw})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """An untrained ``tiny`` model saved with its card (PCam's 96 px at 0.972 um/px)."""
    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import save_model

    model = build_model(ModelConfig(backbone="tiny", weights="none"))
    return save_model(model, tiny_card(), tmp_path_factory.mktemp("model") / "model.keras")
