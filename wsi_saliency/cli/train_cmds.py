"""``train``, ``evaluate`` and ``info``: thin commands over ``training`` and ``evaluation``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import cli_errors, prepare_backend
from wsi_saliency.errors import InputError


def train_command(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML config (configs/*.yaml).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write.")] = Path(
        "runs/latest"
    ),
    data: Annotated[
        str | None, typer.Option(help="PCam HDF5 folder, image-folder root or Kaggle folder.")
    ] = None,
    backbone: Annotated[
        str | None, typer.Option(help="resnet50 | densenet169 | mobilenetv2 | tiny.")
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="imagenet | none | FILE (Keras weights for the backbone).")
    ] = None,
    head_epochs: Annotated[
        int | None, typer.Option(help="Epochs on the head with the backbone frozen.")
    ] = None,
    finetune_epochs: Annotated[int | None, typer.Option(help="Epochs of fine-tuning.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Patches per batch.")] = None,
    steps_per_epoch: Annotated[
        int | None, typer.Option(help="Steps per epoch (default: one pass).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set",
            metavar="KEY=VALUE",
            help="Any option as section.key=value, e.g. --set augment.zoom=0.1.",
        ),
    ] = [],  # noqa: B006
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run in --out.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace what --out holds.")
    ] = False,
    distribute: Annotated[
        str | None,
        typer.Option(
            metavar="auto|off",
            help="auto: data parallel over every local GPU (--batch-size is the global batch); "
            "off: one device (train.distribute).",
        ),
    ] = None,
) -> None:
    """Train the patch classifier (transfer learning, binary head) on PCam-format data."""
    with cli_errors():
        from wsi_saliency.config import load_config

        overrides: list = []
        for section, key, value in (
            ("data", "path", data),
            ("model", "backbone", backbone),
            ("model", "weights", weights),
            ("train", "head_epochs", head_epochs),
            ("train", "finetune_epochs", finetune_epochs),
            ("data", "batch_size", batch_size),
            ("train", "steps_per_epoch", steps_per_epoch),
            ("train", "seed", seed),
            ("train", "distribute", distribute),
        ):
            if value is not None:
                overrides.append((section, key, value))
        overrides.extend(set_)
        cfg = load_config(config, overrides)
        if not Path(cfg.data.path).exists():
            raise InputError(
                f"data {cfg.data.path} does not exist: pass --data with a PCam HDF5 folder, an "
                "image-folder root (SPLIT/0, SPLIT/1) or a Kaggle folder"
            )
        from wsi_saliency.training import check_run_folder

        check_run_folder(out, resume=resume, overwrite=overwrite)
        if overwrite and not resume:
            import shutil

            shutil.rmtree(out)
        prepare_backend()
        from wsi_saliency.training import train

        result = train(cfg, out, resume=resume, log=lambda m: typer.echo(m, err=True))
        m = result.metrics
        typer.echo(
            f"wrote {result.model_path} (best epoch {result.best_epoch}; valid AUC {m['auc']:.4f}, "
            f"accuracy {m['accuracy']:.4f}) in {result.wall_s:.0f} s"
        )


def evaluate_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL", help="model.keras written by train, or a bundled model's name."
        ),
    ],
    data: Annotated[
        str, typer.Argument(help="PCam HDF5 folder, image-folder root or Kaggle folder.")
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    threshold: Annotated[float, typer.Option(help="Probability threshold for accuracy etc.")] = 0.5,
    tta: Annotated[
        bool, typer.Option("--tta", help="8-fold dihedral test-time augmentation.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Patches per batch.")] = 128,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Folder for metrics.json and roc.png (default: beside the model, eval-SPLIT; "
            "for a bundled model ./eval-NAME-SPLIT)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a model on a PCam-format split: AUC, accuracy, sensitivity, specificity, ROC."""
    with cli_errors():
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"--threshold must be in [0, 1], got {threshold}")
        if batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        from wsi_saliency.model.bundled import resolve_model
        from wsi_saliency.model.io import read_card

        model, bundled_name = resolve_model(model)
        card = read_card(model)  # fails fast, before TensorFlow is imported
        if bundled_name and out is None:  # not beside the model: inside the installed package
            out = Path(f"eval-{bundled_name}-{split}")
        if not Path(data).exists():
            raise InputError(f"data {data} does not exist: pass a PCam folder or image-folder root")
        prepare_backend()
        from wsi_saliency.data.folders import ensure_pcam
        from wsi_saliency.data.pcam import open_pcam
        from wsi_saliency.evaluation import evaluate_split, write_metrics_json, write_roc_png
        from wsi_saliency.model.io import load_model, software_versions

        folder = ensure_pcam(data)
        with open_pcam(folder, split) as pcam_split:
            keras_model, card = load_model(model)
            result = evaluate_split(
                keras_model,
                pcam_split,
                batch_size=batch_size,
                threshold=threshold,
                tta=tta,
                progress=not as_json,
            )
        out = out or Path(model).parent / f"eval-{split}"
        out.mkdir(parents=True, exist_ok=True)
        metrics = {
            **result.metrics,
            "model": str(model),
            "data": str(data),
            "split": split,
            "backbone": card.backbone,
            "versions": software_versions(),
        }
        write_metrics_json(out / "metrics.json", metrics)
        write_roc_png(out / "roc.png", result, title=f"{Path(model).name} on {split}")
        if as_json:
            typer.echo(json.dumps(metrics, indent=2, default=str))
        else:
            cm = metrics["confusion_matrix"]
            typer.echo(
                f"{split}: n={metrics['n']} AUC={metrics['auc']:.4f} "
                f"accuracy={metrics['accuracy']:.4f} sensitivity={metrics['sensitivity']:.4f} "
                f"specificity={metrics['specificity']:.4f} "
                f"(tp {cm['tp']}, fp {cm['fp']}, tn {cm['tn']}, fn {cm['fn']}) -> {out}"
            )


def info_command() -> None:
    """Print the version, the Keras backend and the devices it sees."""
    with cli_errors():
        prepare_backend()
        from wsi_saliency import __version__
        from wsi_saliency.backend import device_info
        from wsi_saliency.model.bundled import DEFAULT_MODEL, bundled_models, describe
        from wsi_saliency.model.io import read_card

        typer.echo(f"wsi-saliency {__version__}")
        typer.echo(device_info().describe())
        for name, bundled in bundled_models().items():
            default = " [default]" if name == DEFAULT_MODEL else ""
            typer.echo(f"{describe(name, read_card(bundled.path))}{default}: {bundled.path}")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("info")(info_command)
