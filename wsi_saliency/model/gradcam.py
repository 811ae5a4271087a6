"""Grad-CAM for a batch of patches in the same pass as the prediction.

For each patch b: A = the target layer's feature map [h, w, C]; z = the positive-class logit
(pre-sigmoid); alpha_c = mean over (h, w) of dz/dA_c; cam = ReLU(sum_c alpha_c A_c) [h, w].
Patches in a batch are independent (the model runs in inference mode), so the gradient of
sum_b z_b gives every patch's own gradient at once. Maps are NOT normalised per patch: their
raw scale is comparable across the slide, which stitching relies on.

The model is split at the target layer into a feature model (input -> [A, probability]) and
a head (A -> logit), both sharing the model's layers, so the gradient is taken with respect
to a plain input of the head. Only that gradient is backend-specific (``_gradients_*``:
``tf.GradientTape``, ``jax.grad`` over a stateless call, ``torch.autograd``); the rest is
``keras.ops``.
"""

from __future__ import annotations

import numpy as np


def split_at(model, layer_name: str, logit_layer: str = "logit"):
    """``(feature_model, head)``: input -> [target features, probability]; features -> logit."""
    import keras

    from wsi_saliency.errors import ModelError
    from wsi_saliency.model.io import missing_layer

    names = {layer.name for layer in model.layers}
    for name, what in ((layer_name, "the Grad-CAM layer asked for"), (logit_layer, "the logit")):
        if name not in names:
            raise missing_layer(model, name, what)
    target = model.get_layer(layer_name).output
    logit = model.get_layer(logit_layer).output
    feature_model = keras.Model(model.inputs, [target, model.output])
    try:
        head = keras.Model(target, logit)
    except ValueError as exc:
        raise ModelError(
            f"the logit does not depend on {layer_name!r} alone (Grad-CAM needs a layer the "
            f"whole head hangs from, e.g. the last convolutional block): "
            f"{str(exc).splitlines()[0][:200]}"
        ) from None
    return feature_model, head


class GradCam:
    """``GradCam(model, layer_name)(x) -> (prob float32 [B], cam float32 [B, h, w])``.

    ``x``: RGB patches [B, P, P, 3], uint8 or float in [0, 255]. The gradient models are built
    once here (not on every call) and the wrapped model is never modified.
    """

    def __init__(self, model, layer_name: str, logit_layer: str = "logit", *, jit: bool = True):
        self.layer_name = layer_name
        self.feature_model, self.head = split_at(model, layer_name, logit_layer)
        self.map_shape = tuple(int(d) for d in self.feature_model.outputs[0].shape[1:3])
        self._fn = _build_fn(self.feature_model, self.head, jit=jit)

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        prob, cam = self._fn(np.asarray(x, dtype=np.float32))
        return (np.asarray(prob, dtype=np.float32).reshape(-1), np.asarray(cam, dtype=np.float32))


def cam_from_gradients(features, grads):
    """Grad-CAM map [B, h, w] from feature maps and logit gradients, both [B, h, w, C]."""
    from keras import ops

    features = ops.cast(features, "float32")
    grads = ops.cast(grads, "float32")
    alpha = ops.mean(grads, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    return ops.relu(ops.sum(alpha * features, axis=-1))


def _build_fn(feature_model, head, *, jit: bool):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _gradients_tensorflow(feature_model, head, jit=jit)
    if backend == "jax":
        return _gradients_jax(feature_model, head, jit=jit)
    if backend == "torch":
        return _gradients_torch(feature_model, head)
    raise NotImplementedError(f"Grad-CAM is not implemented for the {backend} backend")


def _gradients_tensorflow(feature_model, head, *, jit: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def run(x):
        features, prob = feature_model(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(features)
            total = tf.reduce_sum(tf.cast(head(features, training=False), tf.float32))
        grads = tape.gradient(total, features)
        return tf.cast(prob, tf.float32), cam_from_gradients(features, grads)

    def call(x: np.ndarray):
        prob, cam = run(tf.convert_to_tensor(x))
        return prob.numpy(), cam.numpy()

    return call


def _gradients_jax(feature_model, head, *, jit: bool):
    import jax
    import jax.numpy as jnp

    def state(model):
        return (
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
        )

    def run(f_state, h_state, x):
        (features, prob), _ = feature_model.stateless_call(*f_state, x, training=False)

        def total(f):
            logit, _ = head.stateless_call(*h_state, f, training=False)
            return jnp.sum(logit.astype(jnp.float32))

        grads = jax.grad(total)(features)
        return prob.astype(jnp.float32), cam_from_gradients(features, grads)

    run = jax.jit(run) if jit else run

    def call(x: np.ndarray):
        # Read the variables at every call: Keras' own jitted steps donate their buffers, so
        # arrays captured earlier may have been deleted.
        prob, cam = run(state(feature_model), state(head), jnp.asarray(x))
        return np.asarray(prob), np.asarray(cam)

    return call


def _gradients_torch(feature_model, head):
    import keras
    import torch

    def call(x: np.ndarray):
        with torch.no_grad():
            features, prob = feature_model(keras.ops.convert_to_tensor(x), training=False)
        f = features.detach().requires_grad_(True)
        with torch.enable_grad():
            total = head(f, training=False).float().sum()
            (grads,) = torch.autograd.grad(total, f)
        with torch.no_grad():
            cam = cam_from_gradients(f.detach(), grads)
        return (keras.ops.convert_to_numpy(prob.float()), keras.ops.convert_to_numpy(cam))

    return call


def gradcam_reference(model, layer_name: str, image: np.ndarray, logit_layer: str = "logit"):
    """Plain one-image Grad-CAM, the test oracle: no batching, no jit, the weighting in numpy
    (float64), the gradient by the backend's most direct means.

    ``image``: [P, P, 3] in [0, 255]. Returns (prob float, cam float32 [h, w]).
    """
    import keras

    feature_model, head = split_at(model, layer_name, logit_layer)
    x = np.asarray(image, np.float32)[None]
    features, prob = feature_model(keras.ops.convert_to_tensor(x), training=False)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            tape.watch(features)
            z = head(features, training=False)[0, 0]
        grads = tape.gradient(z, features)
    elif backend == "jax":
        import jax

        grads = jax.grad(lambda f: head(f, training=False)[0, 0])(features)
    else:
        import torch

        f = features.detach().requires_grad_(True)
        with torch.enable_grad():
            (grads,) = torch.autograd.grad(head(f, training=False)[0, 0], f)
    grads = keras.ops.convert_to_numpy(grads)[0].astype(np.float64)
    fmap = keras.ops.convert_to_numpy(features)[0].astype(np.float64)
    cam = np.maximum((fmap * grads.mean(axis=(0, 1))).sum(axis=-1), 0.0)
    return float(keras.ops.convert_to_numpy(prob).ravel()[0]), cam.astype(np.float32)
