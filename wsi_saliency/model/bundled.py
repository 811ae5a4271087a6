"""Models shipped inside the package, usable by name: ``wsi-saliency scan slide.tif`` needs no
``--model``.

A bundled model is an ordinary model file (``wsi_saliency/models/<name>.keras``, loaded in safe
mode like any other) whose card also says what it is (``ModelCard.about``: data, recipe,
validation, what it is not, licence). ``--model`` takes a file path or one of these names;
without ``--model``, ``scan`` uses :data:`DEFAULT_MODEL`.

Publishing one (what made the shipped file; see the README, "The bundled model")::

    wsi-saliency train --config configs/pcam_ai4all_bundled.yaml --out runs/bundled
    python -m wsi_saliency.model.bundled runs/bundled/model.keras

The second step evaluates the model on the valid split of the data it was trained on, writes
the card's ``about`` and the metrics it measured (with and without test-time augmentation) and
places the file in ``wsi_saliency/models/``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from wsi_saliency.errors import InputError

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
DEFAULT_MODEL = "pcam-ai4all"
"""The model ``scan`` and ``evaluate`` use when none is named."""

ABOUT = {
    "data": (
        "PatchCamelyon (PCam) patches, 96 x 96 px at 10x (about 0.972 um/px), H&E, from "
        "Camelyon16 lymph-node sections: the AI4ALL subset, 20,000 train patches (10,000 per "
        "class) and 3,000 validation patches, JPEG re-encoded by vflorenc/AI4ALL-PCam (pixels "
        "differ slightly from the official HDF5). Label 1: tumour in the centre 32 x 32 px."
    ),
    "recipe": (
        "wsi-saliency train --config configs/pcam_ai4all_bundled.yaml (from scratch, no "
        "ImageNet pretraining; augmentation of the original study plus colour jitter); "
        "published with python -m wsi_saliency.model.bundled"
    ),
    "validation": (
        "metrics.valid_*: the 3,000 AI4ALL validation patches, measured when published; "
        "metrics.valid_tta_*: the same with 8-fold dihedral test-time augmentation"
    ),
    "not": (
        "Not a diagnostic device: for research and for trying the tool. Not trained on the "
        "full PCam (262,144 train patches) nor on whole slides; no ImageNet pretraining; not "
        "validated on any slide-level task (Camelyon16 FROC or slide AUC); tissue other than "
        "H&E lymph node at about 10x is out of its domain."
    ),
    "licence": (
        "The weights: same licence as wsi-saliency. Training data: PCam, CC0 1.0 (following "
        "Camelyon16)."
    ),
}


@dataclass(frozen=True)
class BundledModel:
    name: str
    path: Path


def bundled_models() -> dict[str, BundledModel]:
    """The models shipped with this installation, by name (file stem), sorted."""
    if not MODELS_DIR.is_dir():
        return {}
    return {p.stem: BundledModel(p.stem, p) for p in sorted(MODELS_DIR.glob("*.keras"))}


def resolve_model(spec: str | Path | None) -> tuple[Path, str | None]:
    """``(model file, bundled name or None)`` for a ``--model`` value: an existing file, the
    name of a bundled model, or None for :data:`DEFAULT_MODEL`. InputError naming both
    possibilities otherwise."""
    models = bundled_models()
    if spec is None:
        if DEFAULT_MODEL not in models:
            raise InputError(
                f"this installation has no bundled model {DEFAULT_MODEL!r} (looked in "
                f"{MODELS_DIR}): pass --model with a model.keras written by train"
            )
        return models[DEFAULT_MODEL].path, DEFAULT_MODEL
    path = Path(spec)
    if path.is_file():
        return path, None
    if str(spec) in models:
        return models[str(spec)].path, str(spec)
    names = ", ".join(models) or "none"
    if path.suffix == ".keras" or len(path.parts) > 1:  # meant as a file
        raise InputError(
            f"model file {spec} does not exist: pass the model.keras that train wrote, or a "
            f"bundled model's name ({names})"
        )
    raise InputError(
        f"model {spec} is neither a file nor a bundled model (bundled: {names}): pass the "
        "model.keras that train wrote, or a bundled model's name"
    )


def describe(name: str, card) -> str:
    """One line naming a bundled model and what it reached, for ``scan`` and ``info``."""
    m = card.metrics or {}
    auc = m.get("valid_auc")
    tta = m.get("valid_tta_auc")
    parts = [f"bundled model {name!r} ({card.backbone}"]
    parts.append(f", {m['parameters'] / 1e6:.2f} M parameters" if "parameters" in m else "")
    parts.append(")")
    if auc is not None:
        parts.append(f": valid AUC {auc:.3f}")
        if tta is not None:
            parts.append(f" ({tta:.3f} with --tta)")
        parts.append(" on 3,000 PCam patches")
    parts.append("; research use, not a diagnostic device")
    return "".join(parts)


def publish(
    model_path: Path, data: str | None = None, name: str = DEFAULT_MODEL, batch_size: int = 128
) -> Path:
    """Evaluate ``model_path`` on the valid split of ``data`` (default: the data its card names),
    write the card's ``about`` and valid metrics, and save it as bundled model ``name``."""
    from wsi_saliency.data.folders import ensure_pcam
    from wsi_saliency.data.pcam import open_pcam
    from wsi_saliency.evaluation import evaluate_split
    from wsi_saliency.model.io import load_model, save_model

    model, card = load_model(model_path)
    data = data or (card.config.get("data") or {}).get("path")
    if not data:
        raise InputError(f"{model_path}: its card names no data; pass --data")
    folder = ensure_pcam(data)
    metrics = {"parameters": int(model.count_params())}
    for tta in (False, True):
        with open_pcam(folder, "valid") as split:
            result = evaluate_split(model, split, batch_size=batch_size, tta=tta)
        prefix = "valid_tta_" if tta else "valid_"
        for key in ("auc", "accuracy", "sensitivity", "specificity"):
            metrics[prefix + key] = round(float(result.metrics[key]), 6)
        metrics[prefix + "n"] = int(result.metrics.get("n", len(result.labels)))
    card.metrics = {**(card.metrics or {}), **metrics, "training_run": str(model_path)}
    card.about = dict(ABOUT)
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    return save_model(model, card, MODELS_DIR / f"{name}.keras")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Publish a trained model as a bundled model.")
    ap.add_argument("model", type=Path, help="model.keras written by wsi-saliency train")
    ap.add_argument("--data", help="PCam data with a valid split (default: from the card)")
    ap.add_argument("--name", default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    from wsi_saliency.cli._common import prepare_backend

    prepare_backend()
    path = publish(args.model, args.data, args.name)
    from wsi_saliency.model.io import read_card

    print(f"{path}: {describe(args.name, read_card(path))}", file=sys.stderr)


if __name__ == "__main__":
    main()
