"""Grad-CAM for a batch of patches in the same pass as the prediction.

For each patch b: A = the target layer's feature map [h, w, C]; z = the positive-class logit
(pre-sigmoid); alpha_c = mean over (h, w) of dz/dA_c; cam = ReLU(sum_c alpha_c A_c) [h, w].
Patches in a batch are independent (the model runs in inference mode), so the gradient of
sum_b z_b gives every patch's own gradient at once. Maps are NOT normalised per patch: their
raw scale is comparable across the slide, which stitching relies on.

Only the gradient itself is backend-specific (``_gradients_*``); the rest is ``keras.ops``.
"""

from __future__ import annotations

import numpy as np


class GradCam:
    """``GradCam(model, layer_name)(x) -> (prob float32 [B], cam float32 [B, h, w])``.

    ``x``: RGB patches [B, P, P, 3], uint8 or float in [0, 255]. The gradient model is built
    once here (not on every call) and the wrapped model is never modified.
    """

    def __init__(self, model, layer_name: str, logit_layer: str = "logit", *, jit: bool = True):
        import keras

        self.layer_name = layer_name
        try:
            target = model.get_layer(layer_name).output
            logit = model.get_layer(logit_layer).output
        except ValueError as exc:
            from wsi_saliency.errors import ModelError

            raise ModelError(f"Grad-CAM layer not found in the model: {exc}") from None
        self.grad_model = keras.Model(model.inputs, [target, logit, model.output])
        self.map_shape = tuple(int(d) for d in target.shape[1:3])
        self._fn = _build_fn(self.grad_model, jit=jit)

    def __call__(self, x) -> tuple[np.ndarray, np.ndarray]:
        prob, cam = self._fn(np.asarray(x, dtype=np.float32))
        return (np.asarray(prob, dtype=np.float32).reshape(-1),
                np.asarray(cam, dtype=np.float32))


def cam_from_gradients(features, grads):
    """Grad-CAM map [B, h, w] from feature maps and logit gradients, both [B, h, w, C]."""
    from keras import ops

    features = ops.cast(features, "float32")
    grads = ops.cast(grads, "float32")
    alpha = ops.mean(grads, axis=(1, 2), keepdims=True)  # [B, 1, 1, C]
    return ops.relu(ops.sum(alpha * features, axis=-1))


def _build_fn(grad_model, *, jit: bool):
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _gradients_tensorflow(grad_model, jit=jit)
    raise NotImplementedError(f"Grad-CAM is not implemented for the {backend} backend yet")


def _gradients_tensorflow(grad_model, *, jit: bool):
    import tensorflow as tf

    @tf.function(jit_compile=jit, reduce_retracing=True)
    def run(x):
        with tf.GradientTape() as tape:
            features, logit, prob = grad_model(x, training=False)
            total = tf.reduce_sum(tf.cast(logit, tf.float32))
        grads = tape.gradient(total, features)
        cam = cam_from_gradients(features, grads)
        return tf.cast(prob, tf.float32), cam

    def call(x: np.ndarray):
        prob, cam = run(tf.convert_to_tensor(x))
        return prob.numpy(), cam.numpy()

    return call


def gradcam_reference(model, layer_name: str, image: np.ndarray, logit_layer: str = "logit"):
    """Plain one-image Grad-CAM (TensorFlow, no batching, no jit): the test oracle.

    ``image``: [P, P, 3] in [0, 255]. Returns (prob float, cam float32 [h, w]).
    """
    import keras
    import tensorflow as tf

    grad_model = keras.Model(
        model.inputs,
        [model.get_layer(layer_name).output, model.get_layer(logit_layer).output, model.output],
    )
    x = tf.convert_to_tensor(np.asarray(image, np.float32)[None])
    with tf.GradientTape() as tape:
        features, logit, prob = grad_model(x, training=False)
        z = logit[0, 0]
    grads = tape.gradient(z, features)[0].numpy().astype(np.float64)
    fmap = features[0].numpy().astype(np.float64)
    weights = grads.mean(axis=(0, 1))
    cam = np.maximum((fmap * weights).sum(axis=-1), 0.0)
    return float(prob.numpy().ravel()[0]), cam.astype(np.float32)
