"""``evaluate-slides``: Camelyon16 slide AUC and lesion FROC of a scan output folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import cli_errors, prepare_backend
from wsi_saliency.errors import InputError


def evaluate_slides_command(
    scans: Annotated[Path, typer.Argument(help="Output folder of wsi-saliency scan.")],
    reference: Annotated[
        Path,
        typer.Option(
            "--reference", "-r", help="CSV slide,Tumor|Normal (Camelyon16 reference.csv)."
        ),
    ],
    annotations: Annotated[
        Path,
        typer.Option(
            "--annotations",
            "-a",
            help="Folder of <slide>.xml (ASAP) or <slide>_mask.tif lesion annotations.",
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Folder for the results (default: SCANS/evaluation)."),
    ] = None,
    slide_score: Annotated[
        str, typer.Option(help="Slide score: max | top-k (mean of the top-k patches).")
    ] = "max",
    top_k: Annotated[int, typer.Option(help="k for --slide-score top-k.")] = 10,
    detections: Annotated[
        str,
        typer.Option(help="Lesion detections: components (of the heatmap) | maxima (local)."),
    ] = "components",
    detection_threshold: Annotated[
        float, typer.Option(help="Heatmap probability a detection needs.")
    ] = 0.5,
    radius_um: Annotated[
        float, typer.Option(help="Suppression radius of --detections maxima, microns.")
    ] = 150.0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the AUC CI.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    official_quirks: Annotated[
        bool,
        typer.Option(
            "--official-quirks",
            help="Reproduce Evaluation_FROC.py bit for bit (drops its lowest threshold).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Slide-level ROC AUC (bootstrap 95% CI) and lesion-level FROC, Camelyon16 protocol."""
    with cli_errors():
        from wsi_saliency.outputs.atomic import ensure_writable_dir
        from wsi_saliency.slide_eval import EvalConfig, evaluate_slides, write_outputs

        cfg = EvalConfig(
            slide_score=slide_score,
            top_k=top_k,
            detection_method=detections,
            detection_threshold=detection_threshold,
            maxima_radius_um=radius_um,
            n_bootstrap=bootstrap,
            seed=seed,
            official_quirks=official_quirks,
        )
        if not scans.is_dir():
            raise InputError(
                f"scan folder {scans} does not exist: pass the --out of wsi-saliency scan"
            )
        out = out or scans / "evaluation"
        ensure_writable_dir(out)
        prepare_backend()  # software_versions() imports Keras
        result = evaluate_slides(
            scans, reference, annotations, cfg, log=lambda m: typer.echo(m, err=True)
        )
        write_outputs(result, out)
        metrics = result.metrics()
        if as_json:
            from wsi_saliency.outputs.atomic import _plain

            typer.echo(json.dumps(_plain(metrics), indent=2))
            return
        c = metrics["counts"]
        lo, hi = metrics["slide_auc_ci95"]
        sens = ", ".join(f"{k}: {v:.3f}" for k, v in metrics["froc_sensitivity"].items())
        typer.echo(
            f"slide AUC {metrics['slide_auc']:.4f} (95% CI {lo:.4f}-{hi:.4f}; "
            f"{c['tumour_slides']} tumour, {c['normal_slides']} normal)\n"
            f"FROC {metrics['froc']:.4f} (sensitivity at FPs/slide {sens}; "
            f"{c['lesions_hit']}/{c['lesions']} lesions hit, {c['false_positives']} false "
            f"positives, {c['itc_regions']} ITC regions) -> {out}"
        )


def register(app: typer.Typer) -> None:
    app.command("evaluate-slides")(evaluate_slides_command)
