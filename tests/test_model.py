"""Model build, the self-describing model file, and Grad-CAM against a one-image reference."""

import zipfile

import numpy as np
import pytest
from conftest import tiny_card

from wsi_saliency.config import ModelConfig
from wsi_saliency.errors import InputError, ModelError
from wsi_saliency.model.build import backbone_layers, build_model, set_trainable
from wsi_saliency.model.gradcam import GradCam, gradcam_reference
from wsi_saliency.model.io import CARD_NAME, load_model, read_card, save_model


@pytest.fixture(scope="module")
def tiny():
    return build_model(ModelConfig(backbone="tiny", weights="none"))


def _card(**kw):
    return tiny_card(**{"seed": 3, **kw})


def _patches(n=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3)).astype(np.uint8)


def test_model_takes_raw_pixels_and_outputs_probabilities(tiny):
    p = np.asarray(tiny.predict_on_batch(_patches().astype("float32")))
    assert p.shape == (6, 1) and np.all((p >= 0) & (p <= 1))
    assert tiny.get_layer("logit").dtype == "float32"


def test_backbone_layers_are_reachable_for_gradcam():
    model = build_model(ModelConfig(backbone="resnet50", weights="none"))
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == (3, 3)
    assert model.count_params() > 23_000_000


def test_save_reload_keeps_predictions_and_card(tiny, tmp_path):
    x = _patches().astype("float32")
    before = np.asarray(tiny.predict_on_batch(x))
    path = save_model(tiny, _card(metrics={"auc": 0.97}), tmp_path / "m" / "model.keras")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    model, card = load_model(path)
    np.testing.assert_allclose(np.asarray(model.predict_on_batch(x)), before, atol=1e-6)
    assert card.patch_mpp == 0.972 and card.gradcam_layer == "tiny_stage4_out"
    assert card.metrics["auc"] == 0.97 and card.class_names == ("normal", "metastasis")
    assert read_card(path) == card


def test_model_file_errors(tmp_path, tiny):
    with pytest.raises(ModelError, match="does not exist"):
        read_card(tmp_path / "nope.keras")
    junk = tmp_path / "junk.keras"
    junk.write_text("not a zip")
    with pytest.raises(ModelError, match="not a .keras archive"):
        read_card(junk)
    plain = tmp_path / "plain.keras"
    tiny.save(plain)
    with pytest.raises(ModelError, match="no wsi-saliency metadata"):
        load_model(plain)
    with zipfile.ZipFile(plain) as zf:
        assert CARD_NAME not in zf.namelist()


def test_offline_imagenet_names_the_alternatives(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: None -- offline")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(InputError) as info:
        build_model(ModelConfig(backbone="resnet50", weights="imagenet"))
    assert "--weights none" in str(info.value) and "--weights FILE" in str(info.value)


def test_missing_weights_file_and_bad_gradcam_layer(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_model(ModelConfig(backbone="mobilenetv2", weights=str(tmp_path / "w.h5")))
    with pytest.raises(InputError, match="not a layer"):
        build_model(ModelConfig(backbone="tiny", weights="none", gradcam_layer="conv9"))


def test_backbones_from_scratch_get_batchnorm_that_settles():
    import keras

    model = build_model(ModelConfig(backbone="mobilenetv2", alpha=0.35, weights="none"))
    momenta = {
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    assert momenta == {0.9}  # keras' MobileNetV2 default is 0.999


def test_set_trainable_freezes_backbone_and_batchnorm():
    model = build_model(ModelConfig(backbone="tiny", weights="none"))
    assert set_trainable(model, backbone_from=None) == 0
    assert model.get_layer("logit").trainable
    n_stage4 = set_trainable(model, backbone_from="tiny_stage4")
    assert n_stage4 == 3  # proj, conv1, conv2 (batchnorm stays frozen)
    assert not model.get_layer("tiny_stage4_bn1").trainable
    assert not model.get_layer("tiny_stage3_conv1").trainable
    n_all = set_trainable(model, backbone_from="all", freeze_batchnorm=False)
    assert n_all == sum(1 for layer in backbone_layers(model) if layer.weights)
    with pytest.raises(InputError, match="matches no layer"):
        set_trainable(model, backbone_from="conv4")


def test_batched_gradcam_equals_one_image_reference(tiny):
    x = _patches(5, seed=1)
    gc = GradCam(tiny, "tiny_stage4_out")
    prob, cam = gc(x)
    assert cam.shape == (5, 12, 12) and gc.map_shape == (12, 12)
    np.testing.assert_allclose(
        prob, np.asarray(tiny.predict_on_batch(x.astype("float32"))).ravel(), atol=1e-5
    )
    for i in range(5):
        p_ref, cam_ref = gradcam_reference(tiny, "tiny_stage4_out", x[i])
        assert prob[i] == pytest.approx(p_ref, abs=1e-5)
        scale = max(float(cam_ref.max()), 1e-12)
        np.testing.assert_allclose(cam[i], cam_ref, atol=1e-4 * scale + 1e-9)
    # Batch composition does not change a patch's map (no cross-patch normalisation).
    _, cam_alone = gc(x[2:3])
    np.testing.assert_allclose(cam_alone[0], cam[2], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("jit", [False, True])
def test_a_patchs_numbers_do_not_depend_on_the_batch_it_lands_in(tiny, jit):
    """A slide's last, partial batch is padded to the batch size: threads deliver regions in
    any order, so which patches share a batch varies, and kernels differ by batch size."""
    from wsi_saliency.scan.pipeline import PatchScorer

    x = _patches(7, seed=2)
    scorer = PatchScorer(tiny, _card(), batch_size=4, jit=jit)
    seen = []
    run = scorer.gradcam._fn
    scorer.gradcam._fn = lambda batch: (seen.append(len(batch)), run(batch))[1]
    part, cam_part = scorer(x[4:])  # 3 patches
    full, cam_full = scorer(x[3:])  # the same 3 with another, a full batch
    assert seen == [4, 4] and part.shape == (3,) and cam_part.shape == (3, 12, 12)
    np.testing.assert_array_equal(part, full[1:])
    np.testing.assert_array_equal(cam_part, cam_full[1:])
    prob, cam = GradCam(tiny, "tiny_stage4_out", jit=jit)(x)
    np.testing.assert_allclose(part, prob[4:], atol=1e-5)
    np.testing.assert_allclose(cam_part, cam[4:], rtol=1e-4, atol=1e-6)


def test_a_slide_is_cut_into_equal_batches_where_shapes_cost_nothing(tiny):
    """Uncompiled: equal batches of at most batch_size (no padded tail of wasted work);
    compiled (XLA, jax.jit: one compile per shape): always batch_size."""
    from wsi_saliency.scan.pipeline import PatchScorer

    plain = PatchScorer(tiny, _card(), batch_size=64, jit=False)
    assert [plain.batch_for(n) for n in (1, 64, 65, 81, 128, 129, 1326)] == [
        1, 64, 33, 41, 64, 43, 64,
    ]  # fmt: skip
    assert PatchScorer(tiny, _card(), batch_size=64, jit=True).batch_for(81) == 64
    assert PatchScorer(tiny, _card(), jit=False).batch_for(81) is None  # no size: no padding


def test_gradcam_unknown_layer(tiny):
    with pytest.raises(ModelError, match="Grad-CAM layer"):
        GradCam(tiny, "conv5_block3_out")


def test_reload_under_mixed_precision_keeps_predictions(tmp_path):
    import dataclasses

    import keras

    from wsi_saliency.config import RunConfig

    cfg = dataclasses.replace(RunConfig(), model=ModelConfig(backbone="tiny", weights="none"))
    model = build_model(cfg.model)
    path = save_model(model, _card(config=cfg.to_dict()), tmp_path / "model.keras")
    x = _patches(4).astype("float32")
    mixed, _ = load_model(path, dtype_policy="mixed_bfloat16")
    assert mixed.get_layer("tiny_stage2_conv1").compute_dtype == "bfloat16"
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    np.testing.assert_allclose(
        np.asarray(mixed.predict_on_batch(x), np.float32),
        np.asarray(model.predict_on_batch(x)),
        atol=0.05,
    )
    # the probability stays float32 (bfloat16 has steps of 1/256 near 1)
    assert mixed.get_layer("logit").compute_dtype == "float32"
    assert mixed.get_layer("prob").compute_dtype == "float32"
    # a card without the training config (a model not written by train) converts as well
    bare, _ = load_model(
        save_model(model, _card(), tmp_path / "bare.keras"), dtype_policy="mixed_bfloat16"
    )
    np.testing.assert_array_equal(bare.predict_on_batch(x), mixed.predict_on_batch(x))
