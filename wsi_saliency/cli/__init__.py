"""The ``wsi-saliency`` command line: thin typer commands over library functions.

Each command module defines plain functions and a ``register(app)`` hook; nothing here
imports TensorFlow or OpenSlide at import time, so ``wsi-saliency --help`` stays fast.
"""

from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import NoReturn

import typer
import typer.core

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
        metavar="auto|cpu|gpu",
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


# Help that reads as click's: `SLIDE...`, `--model PATH`, `--set KEY=VALUE`, where this typer
# prints Python types (`slides... <list[str]>`, `<path>`) and braces (`{slides}...`). Display
# only: parsing is untouched. A parameter that sets its own metavar keeps it.
_TYPE_WORDS = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}
_plain_display_type = typer.core._TyperParameter.display_type


def _display_type(self: typer.core._TyperParameter, ctx: object) -> str | None:
    label = _plain_display_type(self, ctx)  # e.g. "<list[str]>", "<path>", "<a|b>"
    if not label:
        return label
    inner = label.removeprefix("<").removesuffix(">")
    inner = re.sub(r"^list\[(.*)\]$", r"\1", inner)
    return _TYPE_WORDS.get(inner, inner if "|" in inner else inner.upper())


def _argument_name(self: typer.core.TyperArgument) -> str:
    return self.metavar if self.metavar is not None else (self.name or "").upper()


def _usage_display_name(self: typer.core.TyperArgument) -> str:
    name = self.display_name_raw
    name = name if self.required else f"[{name}]"
    return name + ("..." if self.nargs != 1 else "")


def _click_style_help() -> None:
    core = typer.core
    if not all(
        hasattr(cls, attr)
        for cls, attr in (
            (core._TyperParameter, "display_type"),
            (core.TyperArgument, "display_type_rich"),
            (core.TyperArgument, "_usage_display_name"),
        )
    ):
        return  # another typer: its own help, unpatched
    core._TyperParameter.display_type = _display_type
    core.TyperArgument.display_name_raw = property(_argument_name)
    core.TyperArgument.display_type_rich = lambda self, ctx: None
    core.TyperArgument._usage_display_name = _usage_display_name


_click_style_help()
_register_all()


def main() -> None:
    """The console script (and ``python -m wsi_saliency``): the app, then :func:`exit_now`."""
    try:
        app()  # click ends every run with SystemExit
    except SystemExit as exc:
        exit_now(exc.code)
    exit_now(0)


def exit_now(code: int | str | None) -> NoReturn:
    """Leave the process without the interpreter's teardown: after TensorFlow, leaving
    normally took 0.75 s, this 0.06 s (``benchmarks/results/startup.json``).

    Safe because nothing is left to write: every output file is closed (written to a
    temporary name and renamed) before a command returns. The standard streams are flushed
    and the ``atexit`` handlers run (logging, the reading pools' shutdown). Where a thread
    other than the main one is still running, the normal exit waits for it instead."""
    if code is None:
        code = 0
    elif not isinstance(code, int):  # SystemExit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    if any(
        t.is_alive() and not t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread()
    ):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code)
