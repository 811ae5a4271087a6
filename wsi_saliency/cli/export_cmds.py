"""``export``: scan outputs -> files for slide viewers (pyramidal TIFF heatmaps, GeoJSON, XML)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import cli_errors


def export_command(
    folders: Annotated[
        list[Path],
        typer.Argument(
            metavar="FOLDER", help="Scan output folders OUT/<slide>, or OUT itself (every slide)."
        ),
    ],
    threshold: Annotated[
        float | None,
        typer.Option(help="P(metastasis) a region reaches (default: the scan's, 0.5)."),
    ] = None,
    patches: Annotated[
        bool, typer.Option("--patches", help="Also one GeoJSON feature per scored patch.")
    ] = False,
    cell_px: Annotated[
        int | None,
        typer.Option(help="TIFF pixels per heatmap cell side (default: about 4 um per pixel)."),
    ] = None,
) -> None:
    """Write heatmap.tiff, gradcam.tiff (pyramidal, for OpenSlide/QuPath/ASAP), regions.geojson
    (QuPath) and regions.xml (ASAP/Camelyon16) into each slide's scan folder."""
    with cli_errors():
        from wsi_saliency.errors import InputError
        from wsi_saliency.outputs.export import export_slide, find_scan_folders

        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise InputError(f"--threshold must be in [0, 1], got {threshold}")
        if cell_px is not None and cell_px < 1:
            raise InputError(f"--cell-px must be >= 1, got {cell_px}")
        for folder in find_scan_folders(folders):
            written = export_slide(folder, threshold=threshold, patches=patches, cell_px=cell_px)
            typer.echo(f"{folder}: {', '.join(p.name for p in written)}")


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
