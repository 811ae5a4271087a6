"""Build the patch classifier: preprocessing layer -> keras.applications backbone -> binary head.

The model takes RGB patches as float32 in [0, 255] (uint8 values, shape [B, P, P, 3]); the
backbone's own input preprocessing is a layer inside the model, so whoever uses the model file
(scan, evaluate, another backend) feeds raw pixels and cannot get the preprocessing wrong.
The backbone is built on the model's own input tensor, so its layers (and the Grad-CAM target
layer) are reachable with ``model.get_layer`` instead of hiding inside a nested model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
from keras import layers, ops

from wsi_saliency.config import ModelConfig
from wsi_saliency.errors import InputError

LOGIT_LAYER = "logit"
PROB_LAYER = "prob"
CLASS_NAMES = ("normal", "metastasis")
BN_MOMENTUM_FROM_SCRATCH = 0.9


@dataclass(frozen=True)
class BackboneSpec:
    """What the tool needs to know about each backbone."""

    preprocess: str  # mode of the Preprocess layer
    gradcam_layer: str  # last convolutional block: where Grad-CAM looks by default
    finetune_from: str  # default first layer (name prefix) unfrozen when fine-tuning
    imagenet_file: str  # the Keras weights file a user can pass with --weights FILE


BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "resnet50": BackboneSpec(
        "caffe", "conv5_block3_out", "conv4", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "densenet169": BackboneSpec(
        "torch", "relu", "conv5", "densenet169_weights_tf_dim_ordering_tf_kernels_notop.h5"
    ),
    "mobilenetv2": BackboneSpec(
        "tf",
        "out_relu",
        "block_13",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5",
    ),
    # A small ResNet-style network for tests and the demo: trains in seconds on a CPU.
    "tiny": BackboneSpec("unit", "tiny_stage4_out", "all", ""),
}


@keras.saving.register_keras_serializable(package="wsi_saliency")
class Preprocess(layers.Layer):
    """The backbone's input normalisation, applied to RGB float input in [0, 255].

    Modes follow ``keras.applications``: ``caffe`` (RGB->BGR, ImageNet mean subtracted; ResNet50),
    ``torch`` (/255, ImageNet mean/std; DenseNet), ``tf`` (scaled to [-1, 1]; MobileNetV2) and
    ``unit`` (/255).
    """

    MODES = ("caffe", "torch", "tf", "unit")

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.MODES:
            raise ValueError(f"unknown preprocessing mode {mode!r}")
        self.mode = mode

    def call(self, x):
        x = ops.cast(x, self.compute_dtype)
        if self.mode == "caffe":
            x = ops.flip(x, axis=-1)
            return x - ops.convert_to_tensor([103.939, 116.779, 123.68], dtype=x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor([0.485, 0.456, 0.406], dtype=x.dtype)
            std = ops.convert_to_tensor([0.229, 0.224, 0.225], dtype=x.dtype)
            return (x / 255.0 - mean) / std
        if self.mode == "tf":
            return x / 127.5 - 1.0
        return x / 255.0

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def _tiny_backbone(x):
    """Four stages of two 3x3 convolutions with a residual shortcut: ~0.2 M parameters.

    BatchNorm momentum 0.9 (not 0.99): a demo-sized run has only a few hundred steps, too few
    for 0.99 moving statistics to settle, and inference would then see the wrong statistics.
    """
    widths = (16, 32, 64, 96)
    for i, width in enumerate(widths, start=1):
        stride = 1 if i == 1 else 2
        shortcut = layers.Conv2D(width, 1, strides=stride, name=f"tiny_stage{i}_proj")(x)
        y = layers.Conv2D(width, 3, strides=stride, padding="same", name=f"tiny_stage{i}_conv1")(x)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM_FROM_SCRATCH, name=f"tiny_stage{i}_bn1")(
            y
        )
        y = layers.Activation("relu", name=f"tiny_stage{i}_relu1")(y)
        y = layers.Conv2D(width, 3, padding="same", name=f"tiny_stage{i}_conv2")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM_FROM_SCRATCH, name=f"tiny_stage{i}_bn2")(
            y
        )
        y = layers.Add(name=f"tiny_stage{i}_add")([y, shortcut])
        x = layers.Activation("relu", name=f"tiny_stage{i}_out")(y)
    return x


def _weights_arg(cfg: ModelConfig) -> str | None:
    weights = cfg.weights
    if weights.lower() == "none":
        return None
    if weights.lower() == "imagenet":
        return "imagenet"
    from pathlib import Path

    if not Path(weights).is_file():
        raise InputError(
            f"weights file {weights} does not exist: pass --weights imagenet, --weights none "
            "or --weights FILE with an existing Keras weights file"
        )
    return weights


def _settle_batchnorm(base) -> None:
    """Trained from scratch, BatchNorm's moving statistics must follow weights that change
    fast. Measured on 20,000 real PCam patches with MobileNetV2: at its default momentum 0.999
    inference predicted a constant after an epoch; at 0.99 inference still lagged training mode
    (train-split accuracy 0.64 in inference mode against 0.86 in training mode after 6 epochs).
    0.9, as in the tiny backbone, tracks the weights within ~10 steps."""
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = min(layer.momentum, BN_MOMENTUM_FROM_SCRATCH)


def build_backbone(cfg: ModelConfig, x):
    """Apply the chosen backbone to tensor ``x`` (already preprocessed); returns its feature map."""
    if cfg.backbone == "tiny":
        if cfg.weights.lower() not in ("none",):
            raise InputError("the tiny backbone has no pretrained weights: use --weights none")
        return _tiny_backbone(x)
    apps = keras.applications
    constructor = {
        "resnet50": apps.ResNet50,
        "densenet169": apps.DenseNet169,
        "mobilenetv2": apps.MobileNetV2,
    }[cfg.backbone]
    kwargs = {"include_top": False, "weights": _weights_arg(cfg), "input_tensor": x}
    if cfg.backbone == "mobilenetv2":
        kwargs["alpha"] = cfg.alpha
    try:
        base = constructor(**kwargs)
        if kwargs["weights"] is None:
            _settle_batchnorm(base)
    except Exception as exc:  # keras raises a bare Exception on download failure
        text = str(exc)
        if kwargs["weights"] == "imagenet" and ("URL fetch failure" in text or "urlopen" in text):
            spec = BACKBONE_SPECS[cfg.backbone]
            raise InputError(
                f"cannot download the ImageNet weights for {cfg.backbone} (offline?): pass "
                f"--weights none to train from scratch, or --weights FILE with a local copy of "
                f"{spec.imagenet_file}"
            ) from None
        if kwargs["weights"] not in (None, "imagenet"):
            raise InputError(
                f"cannot load weights file {cfg.weights} into {cfg.backbone}: "
                f"{text.splitlines()[0]}"
            ) from None
        raise
    return base.output


def build_model(cfg: ModelConfig) -> keras.Model:
    """Preprocess -> backbone -> GAP -> dropout -> (Dense relu) -> Dense(1) logit -> sigmoid.

    Input: float32 RGB [B, P, P, 3] in [0, 255]. Output: P(metastasis) float32 [B, 1].
    The ``logit`` layer (pre-sigmoid, float32) is what Grad-CAM differentiates.
    """
    spec = BACKBONE_SPECS[cfg.backbone]
    inputs = keras.Input((cfg.patch_size, cfg.patch_size, 3), name="patch_rgb")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    features = build_backbone(cfg, x)
    x = layers.GlobalAveragePooling2D(name="head_pool")(features)
    x = layers.Dropout(cfg.dropout, name="head_dropout")(x)
    if cfg.hidden_units:
        x = layers.Dense(cfg.hidden_units, activation="relu", name="head_hidden")(x)
        x = layers.Dropout(cfg.dropout, name="head_hidden_dropout")(x)
    logit = layers.Dense(1, name=LOGIT_LAYER, dtype="float32")(x)
    prob = layers.Activation("sigmoid", name=PROB_LAYER, dtype="float32")(logit)
    model = keras.Model(inputs, prob, name=f"wsi_saliency_{cfg.backbone}")
    layer_name = gradcam_layer_name(cfg)
    try:
        model.get_layer(layer_name)
    except ValueError:
        raise InputError(
            f"model.gradcam_layer {layer_name!r} is not a layer of {cfg.backbone}"
        ) from None
    return model


def gradcam_layer_name(cfg: ModelConfig) -> str:
    return cfg.gradcam_layer or BACKBONE_SPECS[cfg.backbone].gradcam_layer


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers in graph order (everything between the preprocessing and the head)."""
    out = []
    for layer in model.layers:
        if isinstance(layer, (layers.InputLayer, Preprocess)):
            continue
        if layer.name.startswith("head_") or layer.name in (LOGIT_LAYER, PROB_LAYER):
            continue
        out.append(layer)
    return out


def set_trainable(
    model: keras.Model, *, backbone_from: str | None, freeze_batchnorm: bool = True
) -> int:
    """Freeze the backbone up to the first layer named ``backbone_from*`` (``None``: all frozen,
    ``"all"``: none frozen). The head stays trainable. With ``freeze_batchnorm`` BatchNorm layers
    stay frozen, which in Keras 3 also runs them in inference mode (moving statistics kept).

    Returns the number of trainable backbone layers.
    """
    backbone = backbone_layers(model)
    if backbone_from is None:
        start = len(backbone)
    elif backbone_from == "all":
        start = 0
    else:
        matches = [i for i, layer in enumerate(backbone) if layer.name.startswith(backbone_from)]
        if not matches:
            raise InputError(
                f"train.finetune_from {backbone_from!r} matches no layer of the backbone "
                f"(first layers: {', '.join(layer.name for layer in backbone[:3])}, ...)"
            )
        start = matches[0]
    count = 0
    for i, layer in enumerate(backbone):
        train = i >= start
        if freeze_batchnorm and isinstance(layer, layers.BatchNormalization):
            train = False
        layer.trainable = train
        count += int(train and bool(layer.weights))
    return count
