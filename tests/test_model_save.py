"""``model.io.save_model``: the file's permissions follow the umask like every other output."""

import os

import pytest


@pytest.fixture(scope="module")
def tiny():
    from wsi_saliency.config import ModelConfig
    from wsi_saliency.model.build import build_model

    return build_model(ModelConfig(backbone="tiny", weights="none"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_saved_model_follows_the_umask(tiny, tmp_path, umask, mode):
    from conftest import tiny_card

    from wsi_saliency.model.io import read_card, save_model

    previous = os.umask(umask)
    try:
        path = save_model(tiny, tiny_card(), tmp_path / "model.keras")
        (tmp_path / "other.json").write_text("{}")  # any plain output, for comparison
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode
    assert (tmp_path / "other.json").stat().st_mode & 0o777 == mode
    assert read_card(path).backbone == "tiny"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
