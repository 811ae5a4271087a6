"""The self-describing model file: one ``.keras`` archive with a ``wsi_saliency.json`` card.

The card carries what scanning needs (patch size, microns per pixel of the training patches,
backbone, Grad-CAM layer, class names, input convention) and how the model was made (training
config, final metrics, versions, seed). Keras ignores the extra archive member, so the file
still opens with plain ``keras.saving.load_model``; ``load_model`` here also checks the card.
Models are always loaded in Keras safe mode.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wsi_saliency import __version__
from wsi_saliency.errors import ModelError

CARD_NAME = "wsi_saliency.json"
CARD_FORMAT = 1


@dataclass
class ModelCard:
    """Metadata stored with the model.

    ``input``: the model takes RGB patches [B, patch_size, patch_size, 3] as float32 with values
    in [0, 255]; its backbone normalisation (``preprocess``) is a layer inside the model.
    """

    backbone: str
    patch_size: int
    patch_mpp: float
    gradcam_layer: str
    preprocess: str
    logit_layer: str = "logit"
    class_names: tuple[str, ...] = ("normal", "metastasis")
    input: str = "RGB float32 [B, H, W, 3] with values in [0, 255] (uint8 pixels)"
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    created: str = ""
    format: int = CARD_FORMAT
    # what the model is, for a model shipped to others (wsi_saliency.model.bundled.ABOUT):
    # data, recipe, validation, what it is not, licence; empty for a user's own run
    about: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return json.dumps(data, indent=2, sort_keys=True, default=str)

    @classmethod
    def for_config(cls, model_cfg, **fields) -> ModelCard:
        """The card of ``build_model(model_cfg)``: backbone, patch size and mpp, Grad-CAM layer
        and preprocessing from the model config; ``fields`` fill the rest (metrics, ...)."""
        from wsi_saliency.model.build import BACKBONE_SPECS, LOGIT_LAYER, gradcam_layer_name

        return cls(
            backbone=model_cfg.backbone,
            patch_size=model_cfg.patch_size,
            patch_mpp=model_cfg.patch_mpp,
            gradcam_layer=gradcam_layer_name(model_cfg),
            preprocess=BACKBONE_SPECS[model_cfg.backbone].preprocess,
            logit_layer=LOGIT_LAYER,
            **fields,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        data = {k: v for k, v in data.items() if k in known}
        data["class_names"] = tuple(data.get("class_names", ("normal", "metastasis")))
        return cls(**data)


def software_versions() -> dict[str, str]:
    """Versions of what made an output: this tool, Keras, its backend, numpy, Python."""
    import keras
    import numpy

    versions = {
        "wsi_saliency": __version__,
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    backend = keras.backend.backend()
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}.get(backend)
    if module:
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # pragma: no cover - backend missing its own version
            pass
    return versions


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``);
    elsewhere set and restored at once (briefly visible to other threads)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_model(model, card: ModelCard, path: str | Path) -> Path:
    """Write ``model`` and its card to ``path`` (``.keras``) atomically: temp name, then rename.

    The file gets the mode every output gets (``0o666`` less the umask), not the ``0o600`` that
    ``mkstemp`` gives the temporary file (Keras writes into it and keeps its mode)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError(f"model file {path} must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".keras", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(CARD_NAME, card.to_json())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_card(path: str | Path) -> ModelCard:
    """Read only the card (fast: no Keras, no weights)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist: pass the model.keras that train wrote")
    try:
        with zipfile.ZipFile(path) as zf:
            if CARD_NAME not in zf.namelist():
                raise ModelError(
                    f"model file {path} has no wsi-saliency metadata ({CARD_NAME}): use a model "
                    "written by 'wsi-saliency train', or add a card with "
                    "wsi_saliency.model.io.save_model"
                )
            return ModelCard.from_json(zf.read(CARD_NAME).decode())
    except zipfile.BadZipFile:
        raise ModelError(
            f"model file {path} is not a .keras archive: pass the model.keras that train wrote"
        ) from None
    except (json.JSONDecodeError, TypeError) as exc:
        raise ModelError(f"model file {path} has unreadable metadata ({exc})") from None


def load_model(path: str | Path, *, dtype_policy: str | None = None):
    """Load ``(model, card)`` in Keras safe mode, without the optimizer.

    With ``dtype_policy`` (``"mixed_float16"`` for inference on a GPU, ``"mixed_bfloat16"`` on
    a CPU with bfloat16 instructions) the model computes under that policy
    (:func:`with_dtype_policy`); a saved model otherwise keeps the float32 policy it was saved
    with.
    """
    import keras

    import wsi_saliency.model.build  # noqa: F401  (registers the custom layers)

    card = read_card(path)
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken archive
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"model file {path} cannot be loaded by Keras: {first}") from None
    check_matches_card(model, card, path)
    if dtype_policy and dtype_policy != "float32":
        model = with_dtype_policy(model, card, dtype_policy)
    return model, card


def last_conv_layer(model) -> str | None:
    """Name of the last layer with a 4-D (feature map) output, or None."""
    for layer in reversed(model.layers):
        shape = getattr(layer, "output", None) is not None and layer.output.shape
        if shape and len(shape) == 4:
            return layer.name
    return None


def missing_layer(model, name: str, what: str, where: str = "the model") -> ModelError:
    """One line for a layer the model lacks (not the list of every layer Keras would give)."""
    hint = last_conv_layer(model)
    return ModelError(
        f"{where} has no layer {name!r} ({what}; the model has {len(model.layers)} "
        "layers" + (f", the last convolutional one {hint!r})" if hint else ")")
    )


def check_matches_card(model, card: ModelCard, path: str | Path) -> None:
    """The model is what its card says: one [B, S, S, 3] input, one probability per patch, and
    the card's Grad-CAM and logit layers exist. One line naming the mismatch otherwise."""
    fix = "use a model written by 'wsi-saliency train' (its card describes it)"
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"model file {path} does not match its card: {len(model.inputs)} inputs and "
            f"{len(model.outputs)} outputs, where one patch input and one probability are "
            f"expected; {fix}"
        )
    in_shape = tuple(model.inputs[0].shape)
    want = (card.patch_size, card.patch_size, 3)
    if len(in_shape) != 4 or any(
        d is not None and d != w for d, w in zip(in_shape[1:], want, strict=True)
    ):
        raise ModelError(
            f"model file {path} does not match its card: input shape {in_shape}, the card "
            f"says patches of {card.patch_size}x{card.patch_size}x3; {fix}"
        )
    out_shape = tuple(model.outputs[0].shape)
    if out_shape[1:] not in ((), (1,)):
        raise ModelError(
            f"model file {path} does not match its card: output shape {out_shape}, where one "
            f"probability per patch (None, 1) is expected; {fix}"
        )
    names = {layer.name for layer in model.layers}
    for name, what in (
        (card.gradcam_layer, "the card's Grad-CAM layer"),
        (card.logit_layer, "the card's logit layer"),
    ):
        if name not in names:
            raise missing_layer(model, name, what, f"model file {path}")


def with_dtype_policy(model, card: ModelCard, dtype_policy: str):
    """A copy of ``model`` computing under ``dtype_policy`` (e.g. ``"mixed_bfloat16"``), with
    the same weights. The logit and the output layers stay float32, as ``build_model`` makes
    them under a mixed policy: a bfloat16 probability would have steps of 1/256 near 1."""
    import keras

    keep = {card.logit_layer, *model.output_names}

    def clone(layer):
        config = layer.get_config()
        if layer.name not in keep and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = dtype_policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
    copy.set_weights(model.get_weights())
    return copy
