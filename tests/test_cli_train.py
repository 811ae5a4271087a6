"""`wsi-saliency` top level, `train`, `evaluate` and `info` through typer's CliRunner."""

import json
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from wsi_saliency.cli import app
from wsi_saliency.data.pcam import write_pcam_split

runner = CliRunner()


def test_help_lists_commands_without_importing_tensorflow():
    code = (
        "import sys; from wsi_saliency.cli import app; "
        "print('tensorflow' in sys.modules, 'openslide' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "evaluate", "download", "convert", "info"):
        assert command in result.output


def test_version_and_module_entry_point():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("wsi-saliency ")
    out = subprocess.run(
        [sys.executable, "-m", "wsi_saliency", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "wsi-saliency" in out.stdout


def _train(data, out, *extra):
    """``wsi-saliency train --config configs/sample.yaml --data DATA --out OUT EXTRA...``."""
    argv = ["--config", "configs/sample.yaml", "--data", data, "--out", out, *extra]
    return runner.invoke(app, ["train", *map(str, argv)])


def _evaluate(run, data, out, *extra):
    """``wsi-saliency evaluate RUN/model.keras DATA EXTRA... --out OUT``."""
    return runner.invoke(
        app, ["evaluate", *map(str, [run / "model.keras", data, *extra, "--out", out])]
    )


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pcam")
    rng = np.random.default_rng(1)
    for split, n in (("train", 64), ("valid", 32), ("test", 32)):
        x = rng.integers(0, 256, (n, 96, 96, 3), dtype=np.uint8)
        y = (np.arange(n) % 2).astype(np.uint8)
        x[y == 1, 32:64, 32:64] //= 3  # positives: a dark centre
        write_pcam_split(folder, split, x, y)
    return folder


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    result = _train(
        tiny_data, out, "--head-epochs", "1", "--batch-size", "16", "--set", "train.verbose=0"
    )
    assert result.exit_code == 0, result.output
    return out


def test_train_cli_writes_model_and_resolved_config(trained, tiny_data):
    assert (trained / "model.keras").is_file()
    import yaml

    cfg = yaml.safe_load((trained / "config.yaml").read_text())
    assert cfg["data"]["path"] == str(tiny_data) and cfg["data"]["batch_size"] == 16
    assert cfg["train"]["head_epochs"] == 1 and cfg["model"]["backbone"] == "tiny"


def test_train_refuses_to_mix_runs(trained, tiny_data):
    result = _train(tiny_data, trained)
    assert result.exit_code == 2
    assert "already holds a finished run" in result.output and "Traceback" not in result.output


def test_a_finished_run_gets_one_hint_with_or_without_resume(trained, tiny_data):
    """Neither answer may send the user to the other: a finished run has nothing to resume."""
    plain, resumed = _train(tiny_data, trained), _train(tiny_data, trained, "--resume")
    assert plain.exit_code == resumed.exit_code == 2
    assert "nothing to resume" in resumed.output
    for result in (plain, resumed):
        assert "pass --overwrite to train again, or another --out" in result.output
        assert "--resume" not in result.output


def test_evaluate_json_prints_auc(trained, tiny_data, tmp_path):
    result = _evaluate(trained, tiny_data, tmp_path, "--split", "test", "--json")
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout[result.stdout.index("{") :])
    assert 0 <= metrics["auc"] <= 1 and metrics["n"] == 32 and metrics["split"] == "test"
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "roc.png").stat().st_size > 1000


def test_evaluate_with_tta(trained, tiny_data, tmp_path):
    result = _evaluate(trained, tiny_data, tmp_path, "--split", "valid", "--tta")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "metrics.json").read_text())["tta"] is True


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--data", "/nonexistent/pcam"], "does not exist"),
        (
            ["train", "--config", "/nonexistent.yaml"],
            "config file /nonexistent.yaml does not exist",
        ),
        (["train", "--backbone", "vgg"], "model.backbone must be one of"),
        (["train", "--set", "train.seed"], "section.key=value"),
        (["evaluate", "/nonexistent/model.keras", "."], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment, tmp_path):
    result = runner.invoke(
        app, [*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args
    )
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1


def test_evaluate_rejects_a_keras_file_without_card(tmp_path, tiny_data):
    import keras

    plain = tmp_path / "plain.keras"
    keras.Sequential(
        [keras.Input((96, 96, 3)), keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(1)]
    ).save(plain)
    result = runner.invoke(app, ["evaluate", str(plain), str(tiny_data)])
    assert result.exit_code == 2 and "no wsi-saliency metadata" in result.output


def test_info_reports_backend():
    import keras

    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0 and f"backend {keras.backend.backend()}" in result.output


def test_device_gpu_without_gpu_is_one_line(monkeypatch):
    from wsi_saliency.backend import DeviceInfo

    monkeypatch.setattr(
        "wsi_saliency.backend.device_info", lambda: DeviceInfo("tensorflow", "2.x", ())
    )
    result = runner.invoke(app, ["--device", "gpu", "info"])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[-1].startswith("error: --device gpu was asked for but the tensorflow backend")
    assert "Traceback" not in result.output


def test_device_gpu_with_gpu_runs(monkeypatch):
    from wsi_saliency.backend import DeviceInfo

    gpu = DeviceInfo("tensorflow", "2.x", ("/physical_device:GPU:0",))
    monkeypatch.setattr("wsi_saliency.backend.device_info", lambda: gpu)
    result = runner.invoke(app, ["--device", "gpu", "info"])
    assert result.exit_code == 0 and "GPU:0" in result.output


def test_device_must_be_known():
    result = runner.invoke(app, ["--device", "xpu", "info"])
    assert result.exit_code == 2 and "--device must be auto, cpu or gpu" in result.output
