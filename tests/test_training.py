"""Training mechanics on a small generated PCam-format set with the tiny backbone."""

import csv
import json

import numpy as np
import pytest

from wsi_saliency.config import load_config
from wsi_saliency.data.pcam import write_pcam_split
from wsi_saliency.model.io import load_model
from wsi_saliency.training import make_augmenter, plan_phases, train


def _blobs(n, rng):
    """Pink patches with small dark nuclei; positives (odd rows) have large nuclei."""
    x = np.empty((n, 96, 96, 3), np.uint8)
    x[:] = (228, 170, 200)
    x = (x.astype(np.int16) + rng.integers(-15, 16, x.shape)).clip(0, 255).astype(np.uint8)
    y = (np.arange(n) % 2).astype(np.uint8)
    rr, cc = np.mgrid[:96, :96]
    for i in range(n):
        for _ in range(10):
            r0, c0 = rng.integers(10, 86, 2)
            radius = rng.uniform(6, 9) if y[i] else rng.uniform(2, 3.5)
            x[i][(rr - r0) ** 2 + (cc - c0) ** 2 < radius**2] = (110, 60, 150)
    return x, y


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blobs")
    rng = np.random.default_rng(0)
    for split, n in (("train", 256), ("valid", 64)):
        write_pcam_split(folder, split, *_blobs(n, rng))
    return folder


def _cfg(data, *extra):
    return load_config(
        None,
        [
            f"data.path={data}",
            "data.batch_size=32",
            "model.backbone=tiny",
            "model.weights=none",
            "train.head_epochs=3",
            "train.finetune_epochs=0",
            "train.verbose=0",
            "train.lr_schedule=constant",
            "train.early_stopping_patience=0",
            *extra,
        ],
    )


def test_phases_follow_weights():
    cfg = load_config(
        None, ["model.weights=imagenet", "train.head_epochs=2", "train.finetune_epochs=5"]
    )
    phases = plan_phases(cfg)
    assert [(p.name, p.backbone_from, p.epochs) for p in phases] == [
        ("head", None, 2),
        ("finetune", "conv4", 5),
    ]
    assert phases[1].lr < phases[0].lr
    scratch = plan_phases(load_config(None, ["model.weights=none"]))
    assert [(p.name, p.backbone_from) for p in scratch] == [("full", "all")]


def test_augmenter_has_the_study_transforms_and_is_identity_at_inference():
    cfg = load_config(None, ["augment.color_jitter=0.3"]).augment
    aug = make_augmenter(cfg, seed=0)
    names = [layer.name for layer in aug.layers]
    assert names == ["aug_flip", "aug_rotation", "aug_zoom", "aug_translation", "aug_color"]
    rot = aug.get_layer("aug_rotation")
    assert rot.factor == (-0.25, 0.25)  # +-90 degrees as a fraction of a full turn
    x = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(aug(x, training=False)), x)
    assert not np.allclose(np.asarray(aug(x, training=True)), x)


def test_jax_train_step_with_augmentation_is_compiled():
    """Keras runs a model holding its geometric augmentation layers uncompiled (they say
    supports_jit=False for TensorFlow's sake); on JAX that is op-by-op execution, so the
    augmenter declares them compilable there, and the seeds still advance at every step."""
    import keras

    from wsi_saliency.config import AugmentConfig

    aug = make_augmenter(AugmentConfig(), seed=0)
    inputs = keras.Input((96, 96, 3))
    head = keras.layers.Dense(1, activation="sigmoid")
    wrapper = keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(aug(inputs))))
    wrapper.compile(optimizer="adam", loss="binary_crossentropy", jit_compile="auto")
    if keras.backend.backend() != "jax":
        pytest.skip("JAX only (CI runs this file on JAX too)")
    assert wrapper.jit_compile is True
    states = [layer.generator.state for layer in aug.layers if hasattr(layer, "generator")]
    before = [keras.ops.convert_to_numpy(s).copy() for s in states]
    x = np.random.default_rng(0).uniform(0, 255, (4, 96, 96, 3)).astype("float32")
    wrapper.train_on_batch(x, np.array([0, 1, 0, 1], "float32"))
    after = [keras.ops.convert_to_numpy(s) for s in states]
    assert len(states) == 4 and all((a != b).any() for a, b in zip(before, after, strict=True))


def test_train_writes_a_complete_run_folder(blob_data, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(blob_data), out, log=lambda m: None)
    for name in (
        "model.keras",
        "config.yaml",
        "metrics.json",
        "run.json",
        "logs/history.csv",
        "checkpoints/last.keras",
        "checkpoints/state.json",
    ):
        assert (out / name).is_file(), name
    from wsi_saliency.training import _tensorboard_available

    if _tensorboard_available():  # TensorBoard logs need tensorflow + tensorboard
        assert any((out / "logs" / "tensorboard").rglob("events.out.tfevents*"))
    rows = list(csv.DictReader((out / "logs" / "history.csv").open()))
    assert len(rows) == 3
    assert {"loss", "accuracy", "auc", "val_loss", "val_accuracy", "val_auc"} <= set(rows[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 64 and 0 <= metrics["auc"] <= 1
    model, card = load_model(out / "model.keras")
    assert card.backbone == "tiny" and card.patch_mpp == 0.972 and card.seed == 0
    assert card.config["train"]["head_epochs"] == 3 and card.metrics["auc"] == metrics["auc"]
    import keras

    assert card.versions["keras_backend"] == keras.backend.backend()
    # Trained from scratch, BatchNorm learned its statistics (it is frozen only when fine-tuning).
    assert np.abs(np.asarray(model.get_layer("tiny_stage1_bn1").moving_mean)).max() > 1e-3
    assert result.best_valid_auc == metrics["auc"]


def test_resume_after_interruption_continues_from_the_last_epoch(blob_data, tmp_path):
    import keras

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    out = tmp_path / "run"
    cfg = _cfg(blob_data)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, log=lambda m: None, callbacks=(Interrupt(),))
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 2 and not state["finished"]
    assert not (out / "metrics.json").exists()  # nothing looks finished
    result = train(cfg, out, resume=True, log=lambda m: None)
    assert result.resumed_from_epoch == 2
    rows = list(csv.DictReader((out / "logs" / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert json.loads((out / "checkpoints" / "state.json").read_text())["finished"]
    from wsi_saliency.errors import InputError

    with pytest.raises(InputError, match="finished run"):
        train(cfg, out, resume=True, log=lambda m: None)


@pytest.mark.slow
def test_training_learns_the_blob_task(blob_data, tmp_path):
    result = train(
        _cfg(blob_data, "train.head_epochs=6", "train.lr_schedule=cosine"),
        tmp_path / "run",
        log=lambda m: None,
    )
    assert result.metrics["auc"] >= 0.95


def test_precise_batchnorm_uses_raw_train_statistics(blob_data):
    import keras

    from wsi_saliency.config import ModelConfig
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.model.build import build_model
    from wsi_saliency.training import recalibrate_batchnorm

    model = build_model(ModelConfig(backbone="tiny", weights="none"))
    with open_pcam(blob_data, "train") as split:
        assert recalibrate_batchnorm(model, split, 32, 4) == (8, 4)  # (layers, batches)
        x, _ = split.read(slice(0, 256))
    first = model.get_layer("tiny_stage1_bn1")
    assert first.momentum == 0.9  # restored
    conv = keras.Model(model.inputs, model.get_layer("tiny_stage1_conv1").output)
    features = keras.ops.convert_to_numpy(conv(x.astype("float32")))
    # The moving mean is now the mean of the conv output over the raw batches (not 0).
    np.testing.assert_allclose(
        np.asarray(first.moving_mean), features.mean(axis=(0, 1, 2)), rtol=0.15, atol=0.02
    )
    first.trainable = False
    assert recalibrate_batchnorm(model, open_pcam(blob_data, "train"), 32, 1) == (7, 1)
    # Asked for more batches than the split has (256 / 32 = 8): says how many it used.
    assert recalibrate_batchnorm(model, open_pcam(blob_data, "train"), 32, 50) == (7, 8)


@pytest.fixture(scope="module")
def hard_data(tmp_path_factory):
    """Like ``blob_data`` but a fifth of the labels flipped (valid AUC stays below 1) and 96
    valid patches: three batches of 32, so a validation that does not see the split exactly
    once per epoch shows."""
    folder = tmp_path_factory.mktemp("hard")
    rng = np.random.default_rng(3)
    for split, n in (("train", 256), ("valid", 96)):
        x, y = _blobs(n, rng)
        flip = rng.random(n) < 0.2
        write_pcam_split(folder, split, x, np.where(flip, 1 - y, y).astype(np.uint8))
    return folder


def _history(out):
    return list(csv.DictReader((out / "logs" / "history.csv").open()))


def test_logged_valid_metrics_are_those_of_the_kept_model(hard_data, tmp_path):
    """Each epoch's val_auc / val_accuracy are the exact metrics of the model as it is at
    the end of that epoch on the whole valid split; the kept epoch's are metrics.json's."""
    import keras

    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.evaluation import evaluate_split

    seen = []

    class Check(keras.callbacks.Callback):  # runs after the tool's callbacks
        def on_epoch_end(self, epoch, logs=None):
            with open_pcam(hard_data, "valid") as split:
                m = evaluate_split(self.model.layers[-1], split, batch_size=32).metrics
            seen.append((logs["val_auc"], logs["val_accuracy"], m["auc"], m["accuracy"]))

    out, lines = tmp_path / "run", []
    cfg = _cfg(hard_data, "train.head_epochs=2")  # Keras' validation drifted from the 2nd on
    result = train(cfg, out, log=lines.append, callbacks=(Check(),))
    assert len(seen) == 2
    for logged_auc, logged_acc, auc, acc in seen:
        assert (logged_auc, logged_acc) == (auc, acc)
    rows = _history(out)
    metrics = json.loads((out / "metrics.json").read_text())
    kept = rows[metrics["best_epoch"] - 1]
    assert float(kept["val_auc"]) == metrics["auc"] == result.best_valid_auc
    assert float(kept["val_accuracy"]) == metrics["accuracy"]
    assert float(kept["val_auc"]) == max(float(r["val_auc"]) for r in rows)
    assert 0.5 < metrics["auc"] < 1  # not a degenerate case where any AUC agrees
    assert f"kept epoch {metrics['best_epoch']}: valid AUC {metrics['auc']:.4f}" in "\n".join(lines)
    assert any(line.endswith("as logged for that epoch") for line in lines)
    # Precise BN asked for 50 batches; the train split has 256 / 32 = 8.
    assert [line for line in lines if "BatchNorm" in line] == [
        "re-estimating 8 BatchNorm layers on 8 un-augmented train batches (all the train "
        "split has; train.precise_bn_batches=50) before each validation"
    ]
    # Every output follows the umask, the model file included.
    mode = (out / "metrics.json").stat().st_mode & 0o777
    assert (out / "model.keras").stat().st_mode & 0o777 == mode


def test_validation_steps_is_said_when_the_final_metrics_use_more(hard_data, tmp_path):
    lines = []
    train(
        _cfg(hard_data, "train.head_epochs=1", "train.validation_steps=2"),
        tmp_path / "r",
        log=lines.append,
    )
    kept = [line for line in lines if line.startswith("kept epoch 1:")]
    assert len(kept) == 1 and "on all 96 valid patches" in kept[0]
    assert "validated on the first 64 of the 96 valid patches" in kept[0]


def test_resume_after_a_kill_while_checkpointing_logs_each_epoch_once(
    blob_data, tmp_path, monkeypatch
):
    """A kill during the slow end-of-epoch save (after the CSV logger wrote the epoch's row,
    before state.json committed it): the resumed run redoes that epoch and logs it once."""
    import wsi_saliency.training as training

    real, calls = training._atomic_save_keras, []

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:  # the checkpoint of the second epoch
            raise KeyboardInterrupt
        real(obj, path)

    out, cfg = tmp_path / "run", _cfg(blob_data, "train.head_epochs=2")
    monkeypatch.setattr(training, "_atomic_save_keras", save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out, log=lambda m: None)
    assert json.loads((out / "checkpoints" / "state.json").read_text())["epoch"] == 1
    assert [r["epoch"] for r in _history(out)] == ["0", "1"]  # epoch 1 logged, not committed
    result = train(cfg, out, resume=True, log=lambda m: None)
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert [h["epoch"] for h in result.history] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert float(rows[metrics["best_epoch"] - 1]["val_auc"]) == metrics["auc"]


def test_resume_after_a_kill_before_model_keras_restores_the_best_model(
    blob_data, tmp_path, monkeypatch
):
    """Killed after state.json committed a new best epoch, before model.keras was written:
    the resumed run re-publishes that epoch's model from its checkpoint."""
    import wsi_saliency.model.io as model_io

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    out, cfg = tmp_path / "run", _cfg(blob_data, "train.head_epochs=1")
    with monkeypatch.context() as mp:
        mp.setattr(model_io, "save_model", killed)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, out, log=lambda m: None)
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["best_epoch"]) == (1, 0)
    assert not (out / "model.keras").exists()
    lines = []
    result = train(cfg, out, resume=True, log=lines.append)
    assert any(line.startswith("restored ") for line in lines)
    rows = _history(out)
    assert [int(r["epoch"]) for r in rows] == [0] and result.best_epoch == 1
    assert float(rows[0]["val_auc"]) == result.metrics["auc"]
    assert float(rows[0]["val_accuracy"]) == result.metrics["accuracy"]


def test_run_folder_hints_name_only_what_works(tmp_path):
    from wsi_saliency.errors import InputError
    from wsi_saliency.training import check_run_folder

    stray = tmp_path / "stray"
    stray.mkdir()
    (stray / "notes.txt").write_text("x")
    for resume in (False, True):
        with pytest.raises(InputError, match="no run checkpoint") as info:
            check_run_folder(stray, resume=resume, overwrite=False)
        assert "--overwrite" in str(info.value) and "pass --resume" not in str(info.value)
    check_run_folder(stray, resume=False, overwrite=True)
    check_run_folder(tmp_path / "new", resume=False, overwrite=False)
