"""Batch normalisation folded into the convolution before it, for inference.

In inference a BatchNormalization layer is an affine map per channel,
``y = s * (x - mean) + beta`` with ``s = gamma / sqrt(var + eps)``, so after a convolution
``x = W * in + b`` it is the convolution ``(s W) * in + (s b + beta - s mean)``. Folding it
there is what inference engines do (TensorRT, OpenVINO, ``torch.fx``'s ``fuse``; WSInfer's
``--speedup`` calls ``torch.jit.freeze`` on its TorchScript model, which folds them too): the
graph loses one layer of element-wise work per convolution, and TensorFlow fuses what is left
(convolution, bias, ReLU) into one oneDNN call. For ResNet50 on a 2-core CPU the first
Grad-CAM call (its trace) took 0.89 s instead of 1.50 s, for 0.17 s of folding, and the pass
ran 1.11x as many patches per second (``benchmarks/bench_fold.py``). Probabilities and maps
move in the sixth or seventh decimal place (float32 rounding, not a change of model).

:func:`fold_batch_norm` changes a loaded model in place: convolution kernels (and biases)
take the scale, and each folded BatchNormalization layer keeps its name, its place in the
graph and its variables, but computes ``x`` (when the convolution has a bias to hold the
shift) or ``x + beta`` with ``beta`` the shift (when it has none). The model is then for
inference only: training it, or saving it as the trained model, would be wrong, which is why
only the scan's own loader (``load_scanner``, ``scan.fold_batch_norm``) calls this.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class FoldedIdentity(keras.layers.BatchNormalization):
    """A BatchNormalization folded into the convolution before it (which holds the shift)."""

    def call(self, inputs, training=None, mask=None):
        return inputs


class FoldedShift(keras.layers.BatchNormalization):
    """A BatchNormalization folded into a convolution without bias: only the shift is left,
    held in ``beta``."""

    def call(self, inputs, training=None, mask=None):
        return ops.add(inputs, ops.cast(self.beta, inputs.dtype))


FOLDED = (FoldedIdentity, FoldedShift)


def folded_count(model) -> int:
    """How many BatchNormalization layers of ``model`` are folded."""
    return sum(isinstance(layer, FOLDED) for layer in _all_layers(model))


def fold_batch_norm(model) -> int:
    """Fold, in place, every BatchNormalization whose input is the output of a Conv2D or a
    DepthwiseConv2D (channels last, no activation, called once, nothing else reading it); the
    number folded.
    The model must be in inference use from then on (see the module's docstring)."""
    folded = 0
    for bn in _all_layers(model):
        conv = _foldable_into(bn)
        if conv is None:
            continue
        scale, shift = _affine(bn)
        kernel = ops.convert_to_numpy(conv.kernel)
        if isinstance(conv, keras.layers.DepthwiseConv2D):  # [kh, kw, in, multiplier]
            scale_k = scale.reshape(kernel.shape[2], kernel.shape[3])
        else:  # Conv2D: [kh, kw, in / groups, out]
            scale_k = scale
        conv.kernel.assign((kernel * scale_k).astype(kernel.dtype))
        if conv.use_bias:
            bias = ops.convert_to_numpy(conv.bias)
            conv.bias.assign((bias * scale + shift).astype(bias.dtype))
            bn.__class__ = FoldedIdentity
        else:
            bn.beta.assign(shift.astype(np.float32))
            bn.__class__ = FoldedShift
        folded += 1
    return folded


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer


def _foldable_into(bn):
    """The convolution ``bn`` can be folded into, or None."""
    if type(bn) is not keras.layers.BatchNormalization or len(bn._inbound_nodes) != 1:
        return None
    axis = bn.axis if isinstance(bn.axis, int) else (bn.axis[0] if len(bn.axis) == 1 else None)
    conv = getattr(bn.input, "_keras_history", (None,))[0]
    if type(conv) not in (keras.layers.Conv2D, keras.layers.DepthwiseConv2D):
        return None
    channels_last = conv.data_format == "channels_last"
    if not channels_last or axis not in (-1, 3):
        return None
    if len(conv._inbound_nodes) != 1 or len(conv._outbound_nodes) != 1:  # shared, or read twice
        return None
    if conv.activation not in (None, keras.activations.linear):
        return None
    if getattr(conv, "quantization_mode", None) or getattr(conv, "lora_enabled", False):
        return None
    if not conv.use_bias and not bn.center:  # no variable would hold the shift
        return None
    return conv


def _affine(bn) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` per channel, float64: inference BN is ``x * scale + shift``."""
    mean = ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
    var = ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    gamma = ops.convert_to_numpy(bn.gamma).astype(np.float64) if bn.scale else 1.0
    beta = ops.convert_to_numpy(bn.beta).astype(np.float64) if bn.center else 0.0
    scale = gamma / np.sqrt(var + bn.epsilon)
    return scale, beta - mean * scale
