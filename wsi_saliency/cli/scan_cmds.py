"""``scan`` (slides -> heatmaps) and ``demo`` (sample model + sample slide, end to end)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import STATE, cli_errors, prepare_backend
from wsi_saliency.errors import InputError


def scan_command(
    slides: Annotated[
        list[str], typer.Argument(metavar="SLIDE", help="Slide files, folders or glob patterns.")
    ],
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            metavar="PATH|NAME",
            help="model.keras written by train, or a bundled model's name (default: the "
            "bundled real-PCam model; see 'wsi-saliency info').",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder (one subfolder per slide).")
    ] = Path("scans"),
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="YAML with a 'scan' section.")
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(help="Grid stride in model pixels (default: patch size; 32 = PCam centre)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Patches per model batch.")] = None,
    slide_mpp: Annotated[
        float | None, typer.Option(help="Level-0 microns per pixel, for slides that do not say.")
    ] = None,
    tissue_threshold: Annotated[
        float | None, typer.Option(help="Minimum tissue fraction of a scored patch.")
    ] = None,
    gradcam: Annotated[
        bool, typer.Option("--gradcam/--no-gradcam", help="Compute Grad-CAM maps.")
    ] = True,
    gradcam_layer: Annotated[
        str | None, typer.Option(help="Layer for Grad-CAM (default: from the model file).")
    ] = None,
    tta: Annotated[
        bool, typer.Option("--tta", help="8-fold dihedral test-time augmentation.")
    ] = False,
    workers: Annotated[int | None, typer.Option(help="Slide-reading threads.")] = None,
    tissue_masks: Annotated[
        Path | None,
        typer.Option(
            help="Folder of your own tissue masks, <slide stem>.png|tif "
            "(whole slide, non-zero = tissue)."
        ),
    ] = None,
    roi: Annotated[
        Path | None,
        typer.Option(help="Folder of regions of interest, <slide stem>.xml (ASAP) or .png|tif."),
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option("--set", metavar="KEY=VALUE", help="Any scan option as scan.key=value."),
    ] = [],  # noqa: B006
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Rescan slides whose outputs are complete.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    cluster: Annotated[
        str | None,
        typer.Option(
            metavar="local|local:N",
            help="Scan on a Dask cluster started here: local (one worker per GPU) or local:N "
            "(N worker processes on the CPUs). Needs the 'dask' extra.",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            metavar="tcp://HOST:PORT",
            help="Scan on the running Dask cluster of this scheduler (OUT must be on a "
            "filesystem every worker sees).",
        ),
    ] = None,
) -> None:
    """Scan slides into metastasis heatmaps with Grad-CAM (OUT/<slide>/scan.h5, PNGs, summary)."""
    with cli_errors():
        from wsi_saliency.scan.distributed import check_cluster_options

        check_cluster_options(cluster, scheduler)  # imports no Dask
        from wsi_saliency.config import load_config
        from wsi_saliency.model.io import read_card
        from wsi_saliency.scan.cohort import expand_slides
        from wsi_saliency.scan.pipeline import check_stride

        options = (
            ("stride", "--stride", stride),
            ("batch_size", "--batch-size", batch_size),
            ("slide_mpp", "--slide-mpp", slide_mpp),
            ("min_tissue_fraction", "--tissue-threshold", tissue_threshold),
            ("gradcam_layer", "--gradcam-layer", gradcam_layer),
            ("workers", "--workers", workers),
        )
        overrides: list = [("scan", k, v) for k, _, v in options if v is not None]
        if not gradcam:
            overrides.append(("scan", "gradcam", False))
        if tta:
            overrides.append(("scan", "tta", True))
        overrides.extend(s if s.startswith("scan.") else f"scan.{s}" for s in set_)
        flags = {f"scan.{k}": flag for k, flag, _ in options}
        cfg = load_config(config, overrides, flags).scan
        from wsi_saliency.model.bundled import describe, resolve_model

        model, bundled_name = resolve_model(model)
        card = read_card(model)
        if bundled_name:
            typer.echo(f"model: {describe(bundled_name, card)}", err=True)
        check_stride(card.patch_size, cfg.stride or card.patch_size, cfg.gradcam_cells)
        paths = expand_slides(slides)
        from wsi_saliency.scan.budget import check_slides_memory

        check_slides_memory(paths, card, cfg)  # one line, exit 2, before any work
        for folder, what in ((tissue_masks, "--tissue-masks"), (roi, "--roi")):
            if folder is not None and not folder.is_dir():
                raise InputError(
                    f"{what} {folder} is not a folder: pass a folder of per-slide files"
                )
        from wsi_saliency.outputs.atomic import ensure_writable_dir

        ensure_writable_dir(out)
        # Keras is imported where the model is loaded: beside the first slide's layout, or
        # only on the workers of a cluster (the client just hands slides out; the workers
        # check --device)
        on_cluster = cluster is not None or scheduler is not None
        prepare_backend(import_now=False, local_device=not on_cluster)
        run = dict(
            overwrite=overwrite,
            progress=not quiet,
            log=lambda m: typer.echo(m, err=True),
            debug=STATE.debug,
            tissue_masks=tissue_masks,
            rois=roi,
        )
        if not on_cluster:
            from wsi_saliency.scan.cohort import scan_cohort

            rows = scan_cohort(paths, model, out, cfg, **run)
        else:
            from wsi_saliency.scan.distributed import cluster_client, scan_cohort_distributed

            with cluster_client(cluster, scheduler, log=run["log"]) as client:
                rows = scan_cohort_distributed(
                    paths, model, out, cfg, client, device=STATE.device, **run
                )
        failed = [r for r in rows if r.status == "failed"]
        done = sum(r.status == "done" for r in rows)
        skipped = sum(r.status == "skipped" for r in rows)
        typer.echo(
            f"{done} scanned, {skipped} skipped (complete), {len(failed)} failed -> "
            f"{out / 'cohort.csv'}"
        )
        if failed:
            raise typer.Exit(1)


def demo_command(
    out: Annotated[Path, typer.Argument(help="Folder for the demo's model and scan.")] = Path(
        "demo_out"
    ),
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train again even if OUT/model exists.")
    ] = False,
) -> None:
    """Train the sample model (or reuse it), scan the sample slide, and report how well the
    heatmap finds the planted lesions."""
    with cli_errors():
        prepare_backend()
        from wsi_saliency.demo import run_demo

        report = run_demo(out, retrain=retrain, log=lambda m: typer.echo(m, err=True))
        typer.echo(report)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan_command)
    app.command("demo")(demo_command)
