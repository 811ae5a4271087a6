"""``review`` (scan outputs -> HTML pages) and ``serve`` (those pages, with slide tiles)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wsi_saliency.cli._common import cli_errors

OutArg = Annotated[Path, typer.Argument(help="Scan output folder (the --out of scan).")]


def review_command(
    out: OutArg,
    top_k: Annotated[int, typer.Option(help="Patches in each slide's gallery.")] = 12,
    tiles: Annotated[
        bool | None,
        typer.Option(
            "--tiles/--no-tiles",
            help="Write Deep Zoom tiles so pages work from disk (default: for slides up to "
            "--tiles-limit megapixels; larger ones need 'serve').",
            show_default=False,
        ),
    ] = None,
    tiles_limit: Annotated[
        float, typer.Option(help="Largest slide (level-0 megapixels) that gets tiles by default.")
    ] = 64.0,
    slides: Annotated[
        Path | None,
        typer.Option(help="Folder to look in for slides that moved since the scan (by name)."),
    ] = None,
) -> None:
    """Write OUT/index.html (slides by score) and a zoomable viewer page per slide.

    A slide whose outputs cannot be read (scan.h5, summary.json) is listed as failed on
    OUT/index.html and reported on stderr, one line each; the other pages are still written
    and the command then exits 1. Slides that failed during the scan are listed as failed
    too, without changing the exit code (scan reported them).
    """
    with cli_errors():
        from wsi_saliency.review.site import build_review

        site = build_review(
            out,
            top_k=top_k,
            tiles=tiles,
            tiles_limit_px=int(tiles_limit * 1e6),
            slides_dir=slides,
            log=lambda m: typer.echo(m, err=True),
        )
        served = sum(not p.tiles_written for p in site.pages)
        typer.echo(
            f"{len(site.pages)} slide page{'' if len(site.pages) == 1 else 's'}, "
            f"{len(site.failed)} failed -> {site.index}"
            + (
                f" ({served} without tiles: view them with 'wsi-saliency serve {out}')"
                if served
                else ""
            )
        )
        if site.unbuilt:
            raise typer.Exit(1)


def serve_command(
    out: OutArg,
    port: Annotated[int, typer.Option(help="Port (0 = any free port).")] = 8000,
    host: Annotated[
        str, typer.Option(help="Address to listen on (this machine only by default).")
    ] = "127.0.0.1",
) -> None:
    """Serve the review pages of OUT with slide tiles made on demand (writes the pages first if
    OUT has none). Stop with Ctrl+C."""
    with cli_errors():
        from wsi_saliency.review.server import make_server

        if not (out / "index.html").is_file():
            from wsi_saliency.review.site import build_review

            typer.echo(f"no review pages in {out} yet: writing them (without tiles)", err=True)
            build_review(out, tiles=False, log=lambda m: typer.echo(m, err=True))
        server = make_server(out, host, port, log=lambda m: typer.echo(m, err=True))
        typer.echo(f"serving {out} at {server.url} (Ctrl+C to stop)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            typer.echo("stopped", err=True)
        finally:
            server.server_close()


def register(app: typer.Typer) -> None:
    app.command("review")(review_command)
    app.command("serve")(serve_command)
