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

Dense Grad-CAM (:class:`DenseGradCam`) computes the same map over a whole region in one pass:
the layers up to the target layer run on the region (they are convolutional, so any size
works), and each patch's map is Grad-CAM of the head applied to the patch's footprint of those
features. With the default head (global average pooling, dropout, one Dense unit: the logit
``z = b + sum_k w_k mean_ij A_k``) the gradient is ``dz/dA_k = w_k / (h w)`` at every cell, so
the map is exactly the class activation map ``ReLU(sum_k w_k A_k) / (h w)`` wherever the
features are computed, the same formula and scale as the per-patch map; what changes is that
the features near a patch border see the neighbouring tissue instead of zero padding. Heads
with hidden layers get each patch's own weights ``alpha_k`` from the gradient at the patch's
pooled footprint features, so their maps stay continuous inside a patch but may step at its
borders.
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


def feature_stride(patch_size: int, map_shape: tuple[int, int]) -> int:
    """Input pixels per cell of the target layer (``patch_size / h``); ModelError when the map
    does not divide the patch into whole cells (dense Grad-CAM needs one lattice)."""
    from wsi_saliency.errors import ModelError

    h, w = (int(v) for v in map_shape)
    if h != w or h < 1 or patch_size % h:
        raise ModelError(
            f"the Grad-CAM layer's map ({h} x {w} per {patch_size}-px patch) does not divide the "
            "patch into whole square cells; dense Grad-CAM needs that (use the per-patch map)"
        )
    return patch_size // h


def receptive_field(model, layer_name: str) -> int:
    """Input pixels (per side) that one cell of ``layer_name`` sees, an upper bound: the sum of
    every convolution's and pooling's extent ``(k - 1) * dilation`` times its input's pixels
    per cell, plus 1. Exact for a chain of layers (the tiny backbone: 47); branches are added,
    not maxed, so a network with parallel wide kernels is over-estimated (never under)."""
    import keras

    patch = int(model.inputs[0].shape[1])
    trunk = keras.Model(model.inputs, model.get_layer(layer_name).output)
    rf = 1.0
    for layer in trunk.layers:
        size = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
        if not size:
            continue
        dilation = getattr(layer, "dilation_rate", (1, 1))
        side_in = layer.input.shape[1]  # the layer's first call: the model's own graph
        if side_in:
            rf += (int(size[0]) - 1) * int(dilation[0]) * patch / int(side_in)
    return int(np.ceil(rf))


def dense_feature_model(model, layer_name: str):
    """The model's own layers (shared, not copied) from the input to ``layer_name``, on input
    of any size: RGB float32 [B, H, W, 3] in [0, 255] -> features [B, H / s, W / s, C] for
    ``H``, ``W`` multiples of the feature stride ``s``. ModelError when a layer on the way
    needs the patch size (a Flatten or Reshape)."""
    import keras

    from wsi_saliency.errors import ModelError

    trunk = keras.Model(model.inputs, model.get_layer(layer_name).output)
    region = keras.Input((None, None, 3), name="region_rgb")
    try:
        clone = keras.models.clone_model(
            trunk, input_tensors=[region], clone_function=lambda layer: layer
        )
    except Exception as exc:  # noqa: BLE001 - any layer that cannot take another size
        raise ModelError(
            f"the layers up to {layer_name!r} do not run on inputs larger than a patch, so the "
            f"slide map cannot be computed densely: {str(exc).splitlines()[0][:200]}"
        ) from None
    return keras.Model(region, clone.outputs[0], name="dense_features")


def head_is_linear(head) -> bool:
    """Whether the head (features -> logit) is global average pooling, dropout and one linear
    Dense unit, so that Grad-CAM equals CAM, ``sum_k w_k A_k / (h w)``."""
    import keras

    kinds = [
        layer
        for layer in head.layers
        if not isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout))
    ]
    return (
        len(kinds) == 2
        and isinstance(kinds[0], keras.layers.GlobalAveragePooling2D)
        and isinstance(kinds[1], keras.layers.Dense)
        and kinds[1].activation is keras.activations.linear
    )


class DenseGradCam:
    """Grad-CAM maps of patches computed on the features of a whole region.

    ``features(region uint8 [H, W, 3]) -> float32 [H / s, W / s, C]``: the target layer over the
    region (``H``, ``W`` multiples of ``stride`` = ``s``); feature cell ``[i, j]`` belongs to
    input pixels ``[i s, (i + 1) s) x [j s, (j + 1) s)``. ``footprint_cams(f [B, h, w, C]) ->
    float32 [B, h, w]``: Grad-CAM of the head on each patch's footprint of those features
    (``h, w`` = ``map_shape``, the per-patch map's size), the formula of :class:`GradCam`.

    On JAX (compiled) every new region shape is compiled once (about a second on a CPU), so
    regions are padded with white at the bottom and right to multiples of ``SHAPE_QUANTUM_JAX``
    px and the features cropped back: few shapes. The slide map reads every region with a
    margin of context (``wsi_saliency.scan.dense``), so the padding changes only cells of the
    margin, which are dropped; where the margin is shorter than half the receptive field
    (ResNet50), the region's edge cells change a little, as at a join of two regions.
    """

    FOOTPRINT_BATCH = 64  # footprints are padded to multiples of this: one compiled shape
    SHAPE_QUANTUM_JAX = 256

    def __init__(self, model, layer_name: str, logit_layer: str = "logit", *, jit: bool = True):
        import keras

        self.layer_name = layer_name
        feature_model, head = split_at(model, layer_name, logit_layer)
        self.patch_size = int(model.inputs[0].shape[1])
        self.map_shape = tuple(int(d) for d in feature_model.outputs[0].shape[1:3])
        self.stride = feature_stride(self.patch_size, self.map_shape)
        self.receptive_field = receptive_field(model, layer_name)
        self.linear_head = head_is_linear(head)
        self.feature_model = dense_feature_model(model, layer_name)
        self._features = forward_fn(self.feature_model, jit=jit)
        compiled_per_shape = jit and keras.backend.backend() == "jax"
        self.shape_quantum = self.SHAPE_QUANTUM_JAX if compiled_per_shape else self.stride
        f_in = keras.Input(tuple(feature_model.outputs[0].shape[1:]), name="footprint")
        footprint = keras.Model(f_in, [keras.layers.Identity()(f_in), head(f_in)])
        self._cams = _build_fn(footprint, head, jit=jit)

    def features(self, region: np.ndarray) -> np.ndarray:
        x = np.asarray(region, np.float32)
        if x.ndim != 3 or x.shape[0] % self.stride or x.shape[1] % self.stride:
            raise ValueError(
                f"a region must be [H, W, 3] with H and W multiples of {self.stride}, got {x.shape}"
            )
        h, w = x.shape[0] // self.stride, x.shape[1] // self.stride
        pad = [-x.shape[0] % self.shape_quantum, -x.shape[1] % self.shape_quantum]
        if any(pad):
            x = np.pad(x, ((0, pad[0]), (0, pad[1]), (0, 0)), constant_values=255.0)
        return np.asarray(self._features(x[None]), np.float32)[0, :h, :w]

    def footprint_cams(self, footprints: np.ndarray) -> np.ndarray:
        f = np.asarray(footprints, np.float32)
        n, size = len(f), self.FOOTPRINT_BATCH
        pad = -n % size
        if pad:
            f = np.concatenate([f, np.zeros((pad, *f.shape[1:]), np.float32)])
        cams = [self._cams(f[i : i + size])[1] for i in range(0, len(f), size)]
        return np.concatenate(cams)[:n].astype(np.float32)


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


def forward_fn(model, *, jit: bool):
    """``call(x float32 [B, H, W, 3]) -> np.ndarray``: ``model`` in inference mode, any batch
    size (and any H, W where the model's input leaves them free, as the dense feature model's).

    TensorFlow runs one graph without XLA (regions differ in size; XLA would compile each
    one); JAX compiles each new shape once with ``jax.jit``; PyTorch runs eagerly."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # One graph for every region size: without the signature TensorFlow retraced the first
        # few sizes (ResNet50 on a 2-core CPU: 4-6 s per region instead of 1.7 s).
        run = tf.function(
            lambda x: tf.cast(model(x, training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)],
        )
        return lambda x: run(tf.convert_to_tensor(x, tf.float32)).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def step(trainable, non_trainable, x):
            out, _ = model.stateless_call(trainable, non_trainable, x, training=False)
            return out.astype(jnp.float32)

        step = jax.jit(step) if jit else step

        def call_jax(x):
            return np.asarray(
                step(
                    [v.value for v in model.trainable_variables],
                    [v.value for v in model.non_trainable_variables],
                    jnp.asarray(x),
                )
            )

        return call_jax
    if backend == "torch":
        import torch

        def call_torch(x):
            with torch.no_grad():
                out = model(keras.ops.convert_to_tensor(x), training=False)
            return keras.ops.convert_to_numpy(out.float())

        return call_torch
    raise NotImplementedError(f"dense Grad-CAM is not implemented for the {backend} backend")


def _gradients_tensorflow(feature_model, head, *, jit: bool):
    import tensorflow as tf

    def body(x):
        features, prob = feature_model(x, training=False)
        with tf.GradientTape() as tape:
            tape.watch(features)
            total = tf.reduce_sum(tf.cast(head(features, training=False), tf.float32))
        grads = tape.gradient(total, features)
        return tf.cast(prob, tf.float32), cam_from_gradients(features, grads)

    if jit:  # XLA compiles each batch shape
        run = tf.function(body, jit_compile=True, reduce_retracing=True)
    else:
        # Traced once for every batch size: a second size cost ResNet50 a 1.3 s retrace on
        # a 2-core CPU, this graph 0.17 s for its first batch of 17.
        spec = tf.TensorSpec([None, *feature_model.inputs[0].shape[1:]], tf.float32)
        run = tf.function(body, input_signature=[spec])

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
