"""The review site of a scan folder: ``OUT/index.html`` (the cohort) and one page per slide.

``build_review(OUT)`` reads ``OUT/cohort.csv`` and the complete slide folders
``OUT/<stem>/`` written by ``wsi-saliency scan``, writes each slide's page (see
:mod:`wsi_saliency.review.pages`), copies the static files (OpenSeadragon, script, style)
to ``OUT/_review_static/`` and writes the cohort page last. Pages open from disk
(``file://``) or through ``wsi-saliency serve OUT``.
"""

from __future__ import annotations

import csv
import html
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

from wsi_saliency.errors import DataError, InputError, WsiSaliencyError
from wsi_saliency.outputs.atomic import atomic_path
from wsi_saliency.review.pages import SlidePage, build_slide_page, template

STATIC_DIR = "_review_static"


@dataclass(frozen=True)
class CohortEntry:
    """One slide of the scan folder. ``status``: ``done`` (outputs complete), ``failed`` (the
    scan failed or left no complete outputs) or ``invalid`` (outputs there, but
    ``summary.json`` is malformed); ``error`` says why for the last two."""

    stem: str
    slide: str
    status: str
    score_max: float | None = None
    score_topk: float | None = None
    patches: int | None = None
    error: str = ""
    summary: dict | None = None


@dataclass(frozen=True)
class ReviewSite:
    """What ``build_review`` wrote: the cohort page, the slide pages, and the failed slides
    (failed scans, and slides whose page could not be made, with the reason); ``unbuilt``
    are the latter only."""

    out: Path
    index: Path
    pages: tuple[SlidePage, ...]
    failed: tuple[CohortEntry, ...]
    unbuilt: tuple[CohortEntry, ...] = ()


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _describe(value) -> str:
    """A JSON value for a one-line message: scalars as written, containers by kind."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, dict)):
        return "a list" if isinstance(value, list) else "an object"
    if isinstance(value, str) and len(value) > 40:
        value = value[:40] + "…"
    text = repr(value)  # a str's quotes and escapes keep it on one line
    return text if len(text) <= 60 else text[:60] + "…"


def _summary_problem(summary) -> str | None:
    """What is wrong with a parsed ``summary.json`` for the review, or None when nothing is.

    The review reads ``slide`` (a string), ``score_max``, ``score_top<k>_mean`` and
    ``area_above_threshold_mm2`` (numbers; null, which the scan writes for NaN, shows as
    "–") and ``patches_scored`` (an integer, 0 or more). Each may be absent (shown as "–");
    fields the review does not read are not checked.
    """
    if not isinstance(summary, dict):
        kind = {list: "a list", str: "a string", type(None): "null", bool: "a boolean"}
        return f"expected a JSON object, got {kind.get(type(summary), 'a number')}"
    for key, value in summary.items():
        if key == "slide" and not isinstance(value, str):
            return f"'slide' must be a string, got {_describe(value)}"
        if key == "patches_scored":
            if isinstance(value, bool) or not isinstance(value, int):
                return f"'patches_scored' must be an integer, got {_describe(value)}"
            if value < 0:
                return f"'patches_scored' must be 0 or more, got {value}"
        if key in ("score_max", "area_above_threshold_mm2") or key.startswith("score_top"):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"'{key}' must be a number, got {_describe(value)}"
            if not math.isfinite(value):
                return f"'{key}' must be a finite number, got {_describe(value)}"
    return None


def read_summary(path: str | Path) -> dict:
    """The ``summary.json`` of a scanned slide, checked for what the review reads.

    ``DataError`` with one line naming the file and what is wrong (not UTF-8, not JSON, not an
    object, a field of the wrong type) and what to do.
    """
    path = Path(path)
    fix = "rescan the slide with --overwrite"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); {fix}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not valid UTF-8 (byte {exc.start}); {fix}") from None
    try:
        summary = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4300 digits
        raise DataError(f"{path}: not valid JSON ({exc}); {fix}") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply); {fix}") from None
    problem = _summary_problem(summary)
    if problem:
        raise DataError(f"{path}: {problem}; {fix}")
    return summary


def read_cohort(out: str | Path) -> list[CohortEntry]:
    """The slides of scan folder ``out``: rows of ``cohort.csv`` plus any complete
    ``<stem>/`` folder it does not list (scanned by an earlier run). Scores come from each
    slide's ``summary.json`` (see :func:`read_summary`); a slide whose ``summary.json`` is
    malformed is an ``invalid`` entry with the reason, not an exception. ``InputError`` when
    ``out`` holds no scan outputs."""
    out = Path(out)
    if not out.is_dir():
        raise InputError(f"{out} is not a folder: pass the --out folder of 'wsi-saliency scan'")
    rows: dict[str, dict] = {}
    csv_path = out / "cohort.csv"
    if csv_path.is_file():
        try:
            with csv_path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("slide"):
                        rows[Path(row["slide"]).stem] = row
        except (OSError, csv.Error, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {csv_path} ({exc}): rescan into a new --out") from None
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if folder.name.startswith((".", "_")) or folder.name in rows:
            continue
        if (folder / "scan.h5").is_file() and (folder / "summary.json").is_file():
            rows[folder.name] = {"slide": folder.name, "status": "done"}
    if not rows:
        raise InputError(
            f"{out} holds no scan outputs (no cohort.csv, no <slide>/scan.h5): run "
            f"'wsi-saliency scan SLIDES --model MODEL --out {out}' first"
        )
    entries = []
    for stem, row in rows.items():
        folder = out / stem
        complete = (folder / "scan.h5").is_file() and (folder / "summary.json").is_file()
        status = (row.get("status") or "").strip()
        if status == "failed" or not complete:
            error = (row.get("error") or "").strip() or f"no complete outputs in {folder}"
            entries.append(CohortEntry(stem, row["slide"], "failed", error=error))
            continue
        try:
            summary = read_summary(folder / "summary.json")
        except DataError as exc:
            entries.append(CohortEntry(stem, row["slide"], "invalid", error=str(exc)))
            continue
        topk = next((v for k, v in summary.items() if k.startswith("score_top")), None)
        entries.append(
            CohortEntry(
                stem,
                str(summary.get("slide") or row["slide"]),
                "done",
                _float(summary.get("score_max", row.get("score_max"))),
                _float(topk if topk is not None else row.get("score_topk_mean")),
                summary.get("patches_scored"),
                summary=summary,
            )
        )
    return entries


def copy_static(out: Path) -> Path:
    """Copy the page's script, style and OpenSeadragon into ``out/_review_static``."""
    target = out / STATIC_DIR
    with resources.as_file(resources.files("wsi_saliency.review").joinpath("static")) as src:
        shutil.copytree(src, target, dirs_exist_ok=True)
    return target


def build_review(
    out: str | Path,
    *,
    top_k: int = 12,
    tiles: bool | None = None,
    tiles_limit_px: int = 64_000_000,
    slides_dir: str | Path | None = None,
    log: Callable[[str], None] | None = None,
) -> ReviewSite:
    """Write ``out/index.html`` and a page per scanned slide (``out/<stem>/review.html``).

    ``top_k``: patches in each gallery. ``tiles``: write Deep Zoom tiles (True), never (False),
    or for slides of at most ``tiles_limit_px`` level-0 pixels (None). ``slides_dir``: where to
    look for slide files that moved since the scan (by file name). A slide whose page cannot
    be made (unreadable ``scan.h5``, malformed ``summary.json``) is listed as failed, with the
    reason, instead of stopping the others; those are also in ``ReviewSite.unbuilt`` and are
    reported to ``log`` as ``error: <reason>``, one line each.
    """
    out = Path(out)
    entries = read_cohort(out)
    if top_k < 0:
        raise InputError(f"--top-k must be 0 or more, got {top_k}")
    slides = Path(slides_dir) if slides_dir is not None else None
    if slides is not None and not slides.is_dir():
        raise InputError(f"--slides {slides} is not a folder: pass the folder holding the slides")
    copy_static(out)
    pages: list[SlidePage] = []
    failed: list[CohortEntry] = []
    unbuilt: list[CohortEntry] = []
    for entry in entries:
        if entry.status == "invalid":  # outputs there but malformed: this review failed
            unbuilt.append(_failed(entry, f"review: {entry.error}"))
            failed.append(unbuilt[-1])
            if log:
                log(f"error: {entry.error}")
            continue
        if entry.status != "done":
            failed.append(entry)
            continue
        try:
            page = build_slide_page(
                out / entry.stem,
                summary=entry.summary or {},
                static_href=f"../{STATIC_DIR}/",
                index_href="../index.html",
                top_k=top_k,
                tiles=tiles,
                tiles_limit_px=tiles_limit_px,
                slides_dir=slides,
            )
        except WsiSaliencyError as exc:
            unbuilt.append(_failed(entry, f"review: {exc}"))
            failed.append(unbuilt[-1])
            if log:
                log(f"error: {exc}")
            continue
        pages.append(page)
        if log:
            for note in page.warnings:
                log(f"warning: {entry.stem}: {note}")
    by_stem = {p.stem: p for p in pages}
    shown = [e for e in entries if e.stem in by_stem]
    shown.sort(key=lambda e: (e.score_max is None, -(e.score_max or 0.0), e.stem))
    index = _write_index(out, shown, by_stem, failed)
    return ReviewSite(
        out, index, tuple(by_stem[e.stem] for e in shown), tuple(failed), tuple(unbuilt)
    )


def _failed(entry: CohortEntry, error: str) -> CohortEntry:
    return CohortEntry(entry.stem, entry.slide, "failed", error=error)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _write_index(
    out: Path, shown: list[CohortEntry], pages: dict[str, SlidePage], failed: list[CohortEntry]
) -> Path:
    rows = []
    for rank, e in enumerate(shown, start=1):
        page = pages[e.stem]
        href = f"{quote(e.stem)}/review.html"
        thumb = f"{quote(e.stem)}/{quote(page.thumbnail.parent.name)}/{quote(page.thumbnail.name)}"
        name = html.escape(Path(e.slide).name)
        note = "" if page.tiles_written else " <span class=tag>served tiles</span>"
        warn = "".join(
            f'<div class=warn title="{html.escape(w)}">{html.escape(w)}</div>'
            for w in page.warnings
        )
        rows.append(
            f'<tr class=slide-row data-stem="{html.escape(e.stem)}">'
            f"<td class=num>{rank}</td>"
            f'<td><a href="{href}"><img class=thumb src="{thumb}" alt="{name}"></a></td>'
            f'<td><a class=slide-link href="{href}">{name}</a>{note}{warn}</td>'
            f"<td class=num>{_fmt(e.score_max)}</td><td class=num>{_fmt(e.score_topk)}</td>"
            f"<td class=num>{'–' if e.patches is None else e.patches}</td>"
            f"<td class=num>{page.regions}</td><td>{html.escape(e.status)}</td></tr>"
        )
    failed_rows = "".join(
        f'<tr class=failed-row data-stem="{html.escape(e.stem)}">'
        f"<td>{html.escape(Path(e.slide).name)}</td>"
        f"<td class=error>{html.escape(e.error)}</td></tr>"
        for e in failed
    )
    failed_html = (
        "<section id=failed><h2>Failed slides</h2><table><thead><tr><th>slide</th>"
        f"<th>error</th></tr></thead><tbody>{failed_rows}</tbody></table></section>"
        if failed
        else ""
    )
    text = template("index.html").substitute(
        title=html.escape(f"{out.resolve().name} – wsi-saliency review"),
        heading=html.escape(out.resolve().name),
        static=f"{STATIC_DIR}/",
        count=f"{len(shown)} slide{'s' if len(shown) != 1 else ''} reviewed"
        + (f", {len(failed)} failed" if failed else ""),
        rows="".join(rows),
        failed=failed_html,
    )
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return index
