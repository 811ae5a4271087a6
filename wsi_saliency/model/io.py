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

    def to_json(self) -> str:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        return json.dumps(data, indent=2, sort_keys=True, default=str)

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


def save_model(model, card: ModelCard, path: str | Path) -> Path:
    """Write ``model`` and its card to ``path`` (``.keras``) atomically: temp name, then rename."""
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

    With ``dtype_policy`` (e.g. ``"mixed_float16"`` for inference on a GPU) the model is rebuilt
    from the training config in its card under that policy and the file's weights are loaded
    into it; a saved model otherwise keeps the float32 policy it was saved with.
    """
    import keras

    import wsi_saliency.model.build  # noqa: F401  (registers the custom layers)

    card = read_card(path)
    if dtype_policy and dtype_policy != "float32":
        return _rebuild(path, card, dtype_policy), card
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for a broken archive
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"model file {path} cannot be loaded by Keras: {first}") from None
    return model, card


def _rebuild(path: str | Path, card: ModelCard, dtype_policy: str):
    import dataclasses

    import keras

    from wsi_saliency.config import config_from_dict
    from wsi_saliency.model.build import build_model

    if not card.config:
        raise ModelError(
            f"model file {path} has no training config in its card: it can only "
            "run in float32 (drop mixed precision)"
        )
    model_cfg = dataclasses.replace(config_from_dict(card.config).model, weights="none")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype_policy)
    try:
        model = build_model(model_cfg)
    finally:
        keras.config.set_dtype_policy(previous)
    model.load_weights(path)
    return model
