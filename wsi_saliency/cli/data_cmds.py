"""``download pcam``, ``convert`` and ``inspect-data``: thin commands over the data layer."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import cli_errors

download_app = typer.Typer(
    name="download",
    help="Download public datasets.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _show_progress(quiet: bool) -> bool:
    """Progress bars only for a person watching a terminal."""
    return not quiet and sys.stderr.isatty()


@download_app.command("pcam")
def download_pcam_command(
    dest: Annotated[Path, typer.Argument(help="Folder to put the PCam .h5 files in.")],
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split",
            metavar="SPLIT",
            help="Split to fetch: train, valid or test (repeat; default: all).",
        ),
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(
            "--base-url",
            metavar="URL",
            help="Mirror serving the same file names (default: Zenodo record 2546921, "
            "or $WSI_SALIENCY_PCAM_URL).",
        ),
    ] = None,
    meta: Annotated[
        bool, typer.Option("--meta", help="Also fetch the per-split meta csv files.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Download the official PatchCamelyon files (md5-checked, resumable, gunzipped).

    The full set is about 7.5 GB to download and 8 GB on disk; an interrupted download
    resumes when the command is run again.
    """
    with cli_errors():
        from wsi_saliency.data.download import download_pcam
        from wsi_saliency.data.pcam import SPLITS

        paths = download_pcam(
            dest,
            splits=split or SPLITS,
            base_url=base_url,
            meta=meta,
            progress=_show_progress(quiet),
        )
        typer.echo(f"{len(paths)} PCam files ready in {dest}")
        for path in paths:
            typer.echo(f"  {path.name}")


def convert_command(
    root: Annotated[
        Path, typer.Argument(help="Image folders (SPLIT/0, SPLIT/1) or a Kaggle folder.")
    ],
    out: Annotated[Path, typer.Argument(help="Folder to write the PCam HDF5 files to.")],
    valid_fraction: Annotated[
        float,
        typer.Option(help="Share of train carved out as valid when there is no valid split."),
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Seed of the file shuffle and of the valid carve.")] = 0,
    workers: Annotated[int, typer.Option(help="Threads decoding images.")] = 2,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Convert image folders or Kaggle's layout into PCam HDF5 files (any layout -> PCam)."""
    with cli_errors():
        from wsi_saliency.data.folders import convert_to_pcam

        counts = convert_to_pcam(
            root,
            out,
            valid_fraction=valid_fraction,
            seed=seed,
            workers=workers,
            progress=_show_progress(quiet),
        )
        summary = ", ".join(f"{split} {n}" for split, n in counts.items())
        typer.echo(f"wrote PCam HDF5 to {out}: {summary} patches")


def inspect_data_command(
    data: Annotated[
        Path, typer.Argument(help="PCam HDF5 folder, image-folder root or Kaggle folder.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Show the layout of a dataset and, per split, its patches, positives and negatives.

    PCam files are opened and validated (shape, dtype, labels); image layouts are counted
    without decoding the images.
    """
    with cli_errors():
        from wsi_saliency.data.folders import summarize_data

        summary = summarize_data(data)
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        splits: dict[str, dict[str, int]] = summary["splits"]  # type: ignore[assignment]
        typer.echo(f"{summary['root']}: layout {summary['layout']}")
        typer.echo(f"{'split':<8}{'n':>9}{'positives':>11}{'negatives':>11}{'pos %':>8}")
        for split, c in splits.items():
            share = 100.0 * c["positives"] / c["n"] if c["n"] else 0.0
            typer.echo(
                f"{split:<8}{c['n']:>9}{c['positives']:>11}{c['negatives']:>11}{share:>7.1f}%"
            )


def register(app: typer.Typer) -> None:
    """Add ``download pcam``, ``convert`` and ``inspect-data`` to the ``wsi-saliency`` app."""
    app.add_typer(download_app, name="download")
    app.command("convert")(convert_command)
    app.command("inspect-data")(inspect_data_command)
