"""Batch normalisation folded into convolutions: same outputs, fewer operations, and only what
can be folded is."""

import keras
import numpy as np
import pytest
from conftest import tiny_card

from wsi_saliency.config import ModelConfig
from wsi_saliency.model.build import build_model
from wsi_saliency.model.fold import (
    FoldedIdentity,
    FoldedShift,
    fold_batch_norm,
    folded_count,
)
from wsi_saliency.model.gradcam import GradCam


def _with_running_stats(model, seed=0):
    """Random (not identity) moving statistics and affine parameters in every BN layer: an
    untrained model's BN is close to the identity, which would hide a wrong fold."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, c).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, c).astype("float32"))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.5, 1.5, c).astype("float32"))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.3, c).astype("float32"))
    return model


def _patches(n=5, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, 96, 96, 3)).astype("float32")


def test_folded_tiny_model_gives_the_same_probabilities_and_gradcam():
    model = _with_running_stats(build_model(ModelConfig(backbone="tiny", weights="none")))
    x = _patches()
    card = tiny_card()
    prob0, cam0 = GradCam(model, card.gradcam_layer, jit=False)(x)
    bns = sum(isinstance(la, keras.layers.BatchNormalization) for la in model.layers)

    n = fold_batch_norm(model)
    prob1, cam1 = GradCam(model, card.gradcam_layer, jit=False)(x)

    assert n == folded_count(model) and n > 0
    # every BN of the tiny backbone follows a Conv2D with a bias
    assert n == bns and all(
        type(la) is FoldedIdentity
        for la in model.layers
        if isinstance(la, keras.layers.BatchNormalization)
    )
    np.testing.assert_allclose(prob1, prob0, atol=2e-5)
    np.testing.assert_allclose(cam1, cam0, rtol=1e-4, atol=1e-4 * float(np.abs(cam0).max()))
    assert fold_batch_norm(model) == 0  # folded ones are not folded again


def _small(conv, *, bn_kwargs=None, extra_reader=False, activation=None, shared=False):
    inp = keras.Input((12, 12, 4))
    if conv == "depthwise":
        y = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="c")(inp)
    else:
        layer = keras.layers.Conv2D(
            6, 3, padding="same", use_bias=conv == "bias", activation=activation, name="c"
        )
        y = layer(inp)
    z = keras.layers.BatchNormalization(name="bn", **(bn_kwargs or {}))(y)
    out = keras.layers.Concatenate()([z, y]) if extra_reader else z
    if shared:  # the same convolution (weights) applied again, its output not normalised
        out = [out, layer(keras.layers.Identity()(inp))]
    return _with_running_stats(keras.Model(inp, out), seed=3)


@pytest.mark.parametrize(
    ("conv", "bn_kwargs", "kind"),
    [
        ("bias", None, FoldedIdentity),
        ("nobias", None, FoldedShift),  # the shift is left in beta, a bias add
        ("nobias", {"scale": False}, FoldedShift),
        ("depthwise", None, FoldedIdentity),  # [kh, kw, in, multiplier] kernel
    ],
)
def test_each_foldable_pair_keeps_the_models_output(conv, bn_kwargs, kind):
    model = _small(conv, bn_kwargs=bn_kwargs)
    x = np.random.default_rng(2).normal(0, 1, (3, 12, 12, 4)).astype("float32")
    before = keras.ops.convert_to_numpy(model(x, training=False))
    assert fold_batch_norm(model) == 1
    assert type(model.get_layer("bn")) is kind and model.get_layer("bn").name == "bn"
    after = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    [
        "no_variable_for_the_shift",
        "conv_output_read_twice",
        "activation_inside_the_conv",
        "conv_applied_twice",
    ],
)
def test_what_cannot_be_folded_is_left_as_it_is(case):
    model = {
        "no_variable_for_the_shift": lambda: _small("nobias", bn_kwargs={"center": False}),
        "conv_output_read_twice": lambda: _small("bias", extra_reader=True),
        "activation_inside_the_conv": lambda: _small("bias", activation="relu"),
        "conv_applied_twice": lambda: _small("bias", shared=True),
    }[case]()
    kernel = keras.ops.convert_to_numpy(model.get_layer("c").kernel).copy()
    assert fold_batch_norm(model) == 0
    assert type(model.get_layer("bn")) is keras.layers.BatchNormalization
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("c").kernel), kernel)
