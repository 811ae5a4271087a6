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
    """An untrained ``tiny`` model saved with its card (PCam's 96 px at 0.972 um/px). Its
    weights are drawn from a fixed seed, so every run of the suite scans with the same model
    (an unseeded draw once gave a model whose Grad-CAM was zero on every patch of a slide)."""
    import keras

    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import save_model

    keras.utils.set_random_seed(20261130)
    model = build_model(ModelConfig(backbone="tiny", weights="none"))
    return save_model(model, tiny_card(), tmp_path_factory.mktemp("model") / "model.keras")


def write_cohort_slides(folder: Path, mpp: float = 0.486) -> list[Path]:
    """Three small synthetic slides (1024 x 768 px at ``mpp``) with different lesions, so
    different scores: the cohort of tests/test_cohort.py and tests/test_distributed.py."""
    import numpy as np

    from wsi_saliency.synthetic.slides import write_synthetic_slide
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    paths = []
    for i, name in enumerate(("a", "b", "c")):
        rng = np.random.default_rng(i)
        lesion = random_blob_polygon(rng, (500.0, 400.0), 150.0 + 40 * i, n_vertices=32)
        info = write_synthetic_slide(
            folder / f"{name}.tif",
            l0_size_xy=(1024, 768),
            mpp=mpp,
            lesions=[lesion],
            seed=i,
            tile=256,
            levels=(1, 4),
            tissue=[np.array([[80, 80], [950, 100], [930, 700], [100, 680]], float)],
            pen_mark=False,
            dark_area=False,
        )
        paths.append(info.path.resolve())
    return paths
