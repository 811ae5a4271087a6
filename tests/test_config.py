from pathlib import Path

import pytest

from wsi_saliency.config import RunConfig, config_from_dict, dump_yaml, load_config
from wsi_saliency.errors import InputError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load():
    real = load_config(REPO / "configs" / "pcam_resnet50.yaml")
    assert real.model.backbone == "resnet50" and real.model.weights == "imagenet"
    assert real.augment.rotation_deg == 90 and real.augment.zoom == 0.2
    assert real.augment.translate == 0.1 and real.augment.flip_vertical
    sample = load_config(REPO / "configs" / "sample.yaml")
    assert sample.model.backbone == "tiny" and sample.data.path == "sample_data/pcam"


def test_cli_overrides_win_over_file_and_are_typed():
    cfg = load_config(
        REPO / "configs" / "sample.yaml",
        ["train.seed=7", ("data", "batch_size", "16"), "augment.flip_vertical=false"],
    )
    assert cfg.train.seed == 7 and cfg.data.batch_size == 16
    assert cfg.augment.flip_vertical is False


def test_round_trip_through_yaml_and_dict():
    cfg = load_config(None, ["model.backbone=mobilenetv2", "train.steps_per_epoch=5"])
    import yaml

    again = config_from_dict(yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert isinstance(again, RunConfig)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.backbone=vgg16", "model.backbone must be one of"),
        ("train.seed=abc", "train.seed must be a number"),
        ("augment.zoom=1.5", "augment.zoom"),
        ("train.lr_schedule=step", "lr_schedule"),
        ("model.colour=1", "unknown option model.colour"),
        ("nosection.x=1", "unknown section"),
        ("seed=1", "section.key=value"),
    ],
)
def test_bad_options_are_one_line_input_errors(override, fragment):
    with pytest.raises(InputError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("trainer:\n  seed: 1\n")
    with pytest.raises(InputError, match="unknown section 'trainer'"):
        load_config(wrong)


def test_bare_on_and_off_in_yaml_or_set_reach_string_options_as_words(tmp_path):
    """YAML 1.1 reads a bare ``off`` as false: string options still get the word."""
    from wsi_saliency.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("train:\n  mixed_precision: off\n  distribute: off\nscan:\n  jit_compile: on\n")
    cfg = load_config(path, ["scan.mixed_precision=off"])
    assert cfg.train.mixed_precision == "off" and cfg.train.distribute == "off"
    assert cfg.scan.jit_compile == "on" and cfg.scan.mixed_precision == "off"
