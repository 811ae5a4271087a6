"""The ``wsi-saliency`` command line: thin typer commands over library functions.

Each command module defines plain functions and a ``register(app)`` hook; nothing here
imports TensorFlow or OpenSlide at import time, so ``wsi-saliency --help`` stays fast.
"""

from __future__ import annotations

import typer

from wsi_saliency import __version__
from wsi_saliency.cli import _common

app = typer.Typer(
    name="wsi-saliency",
    help=(
        "Find breast-cancer metastases in lymph-node whole-slide images and show where the "
        "model looked. Coordinates are level-0 (x, y) pixels; resolution is microns per pixel."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"wsi-saliency {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    device: str = typer.Option(
        "auto",
        "--device",
        help="auto (a GPU when the backend sees one) | cpu (hide GPUs) | gpu (fail without one).",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    _common.STATE.debug = debug
    if device not in ("auto", "cpu", "gpu"):
        typer.echo(f"error: --device must be auto, cpu or gpu, not {device!r}", err=True)
        raise typer.Exit(2)
    _common.STATE.device = device


def _register_all() -> None:
    from wsi_saliency.cli import (
        data_cmds,
        export_cmds,
        review_cmds,
        scan_cmds,
        slide_eval_cmds,
        train_cmds,
    )

    for module in (data_cmds, train_cmds, scan_cmds, export_cmds, review_cmds, slide_eval_cmds):
        module.register(app)


_register_all()


def main() -> None:
    app()
