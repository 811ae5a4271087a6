"""``train.distribute=auto``: data parallel over two virtual CPU devices, in a subprocess each
(TensorFlow: two logical CPU devices; JAX: ``--xla_force_host_platform_device_count=2``),
since devices are fixed when the framework starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsi_saliency.config import load_config
from wsi_saliency.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_AUC_TOLERANCE = 0.05
"""How far the two-device run's valid AUC may fall below the single-device run's on the
sample data (128 valid patches; the runs differ in augmentation draws and in BatchNorm
statistics of half batches)."""

CHILD = r"""
import json, os, sys
if os.environ["KERAS_BACKEND"] == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from wsi_saliency.config import load_config
from wsi_saliency.training import train
out, modes, overrides = sys.argv[1], sys.argv[2].split(","), sys.argv[3:]
results = {}
for mode in modes:
    logs = []
    cfg = load_config(None, [*overrides, f"train.distribute={mode}"])
    result = train(cfg, os.path.join(out, mode), log=logs.append)
    results[mode] = {"auc": result.metrics["auc"], "log": logs}
print("RESULT " + json.dumps(results))
"""


def _train_in_child(backend: str, out: Path, modes: str, *overrides: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if backend == "jax":
        pytest.importorskip("jax")
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(out), modes, *overrides],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    from test_training import _blobs

    from wsi_saliency.data.pcam import write_pcam_split

    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("valid", 48)):
        write_pcam_split(folder, split, *_blobs(n, rng))
    return folder


def _quick(data: Path) -> list[str]:
    return [
        f"data.path={data}",
        "data.batch_size=32",
        "model.backbone=tiny",
        "model.weights=none",
        "train.head_epochs=1",
        "train.finetune_epochs=0",
        "train.steps_per_epoch=2",
        "train.precise_bn_batches=2",
        "train.verbose=0",
        "train.early_stopping_patience=0",
    ]


def _check_two_device_run(run: Path, strategy: str, log: list[str]) -> None:
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import load_model

    record = json.loads((run / "run.json").read_text())["distribute"]
    assert record["mode"] == "auto" and record["strategy"] == strategy
    assert len(record["devices"]) == record["replicas"] == 2
    assert record["global_batch_size"] == 32 and record["per_replica_batch_size"] == 16
    assert any(line.startswith(f"data parallel ({strategy}) over 2 devices") for line in log)
    # Validation scored the model as it is saved: the logged numbers are the final ones.
    assert any("as logged for that epoch" in line for line in log), log
    # The model file is a single-device model file: it loads without any strategy, with the
    # variables a single-device build has.
    model, card = load_model(run / "model.keras")
    plain = build_model(load_config(None, ["model.backbone=tiny", "model.weights=none"]).model)
    assert [(w.path, tuple(w.shape)) for w in model.weights] == [
        (w.path, tuple(w.shape)) for w in plain.weights
    ]
    assert card.config["train"]["distribute"] == "auto"
    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype("float32")
    assert np.isfinite(np.asarray(model.predict_on_batch(x))).all()


def _short_sample_recipe() -> list[str]:
    """The sample recipe (configs/sample.yaml), cut to 2 epochs of 8 steps."""
    return [
        "data.path=sample_data/pcam",
        "data.batch_size=32",
        "model.backbone=tiny",
        "model.weights=none",
        "model.dropout=0.2",
        "train.head_epochs=2",
        "train.finetune_epochs=0",
        "train.steps_per_epoch=8",
        "train.precise_bn_batches=4",
        "train.head_lr=2e-3",
        "train.lr_schedule=constant",
        "train.early_stopping_patience=0",
        "train.verbose=0",
    ]


def test_tensorflow_two_devices_reach_the_one_device_auc(tmp_path):
    """Two logical CPU devices: the run trains on both, as run.json records, writes a
    single-device model file, and its valid AUC on the sample data is within
    ``SAMPLE_AUC_TOLERANCE`` of the one-device run's (the full recipe, 6 epochs, on both
    backends: ``benchmarks/bench_train_distribute.py``)."""
    results = _train_in_child("tensorflow", tmp_path, "off,auto", *_short_sample_recipe())
    _check_two_device_run(tmp_path / "auto", "MirroredStrategy", results["auto"]["log"])
    one, two = results["off"]["auc"], results["auto"]["auc"]
    assert two >= one - SAMPLE_AUC_TOLERANCE, (one, two)
    off = json.loads((tmp_path / "off" / "run.json").read_text())["distribute"]
    assert off["strategy"] == "none" and off["replicas"] == 1


def test_jax_trains_on_two_devices(blob_data, tmp_path):
    results = _train_in_child("jax", tmp_path, "auto", *_quick(blob_data))
    _check_two_device_run(tmp_path / "auto", "DataParallel", results["auto"]["log"])


def test_distribute_is_auto_or_off():
    assert load_config(None, ["train.distribute=off"]).train.distribute == "off"
    with pytest.raises(InputError, match="train.distribute must be auto .* or off, got 'on'"):
        load_config(None, ["train.distribute=on"])


def test_torch_says_it_has_no_data_parallel(monkeypatch):
    import keras

    from wsi_saliency.training import data_parallel

    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(InputError, match="not supported on the torch backend.*distribute=off"):
        data_parallel("auto", 32)
    assert data_parallel("off", 32).strategy == "none"


def test_one_device_trains_alone(monkeypatch):
    """``auto`` with a single device: said once, nothing distributed."""
    from wsi_saliency.training import data_parallel

    told: list[str] = []
    parallel = data_parallel("auto", 32, log=told.append)
    if len(parallel.devices) != 1:
        pytest.skip("this process sees more than one device")
    assert parallel.strategy == "none" and parallel.record(32)["replicas"] == 1
    assert told and "one device" in told[0]


def test_train_command_takes_distribute(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    import wsi_saliency.training as training
    from wsi_saliency.cli import app

    seen = {}

    def fake_train(cfg, out, **kw):
        seen["distribute"] = cfg.train.distribute
        raise InputError("stop here")

    monkeypatch.setattr(training, "train", fake_train)
    args = ["train", "--data", "sample_data/pcam", "--out", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--distribute", "auto"])
    assert result.exit_code == 2 and seen["distribute"] == "auto", result.output
    bad = CliRunner().invoke(app, [*args, "--distribute", "sideways"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ")
    assert len(bad.output.strip().splitlines()) == 1
