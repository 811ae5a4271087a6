"""Scan many slides: one output folder per slide, resumable, going on past a bad slide.

``OUT/<slide stem>/`` holds ``scan.h5``, ``heatmap.png``, ``gradcam.png``, ``tissue.png``,
the viewer files (``heatmap.tiff``, ``gradcam.tiff``, ``regions.geojson``, ``regions.xml``;
see ``wsi_saliency.outputs.export``) and ``summary.json``. A slide is written into
``OUT/.<stem>.partial/`` (on a Dask worker ``OUT/.<stem>.partial-<attempt>/``, see
``wsi_saliency.scan.distributed``) and renamed when all its files are there, so a folder
``OUT/<stem>/`` is always complete; a rerun skips complete slides (unless ``overwrite``) and
redoes interrupted ones. ``OUT/cohort.csv`` lists every slide with its status (``done`` or
``failed``), scores, patches scored, seconds and error. A slide finished by an earlier run
keeps the row it had then (its figures are read back from its own ``summary.json``), so
``cohort.csv`` after any number of interrupted runs equals that of one uninterrupted run.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wsi_saliency.config import ScanConfig, usable_cores
from wsi_saliency.errors import InputError, WsiSaliencyError
from wsi_saliency.outputs.atomic import atomic_path, write_json
from wsi_saliency.outputs.export import EXPORT_FILES

SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
)
SLIDE_FILES = ("scan.h5", "heatmap.png", "gradcam.png", "tissue.png", *EXPORT_FILES, "summary.json")


def expand_slides(items: Iterable[str]) -> list[Path]:
    """Files, folders (their slide files) and glob patterns -> slide paths, in order, no repeats."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if any(ch in item for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"no file matches {item!r}: check the pattern")
            found.extend(p for p in matches if p.is_file())
        elif path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
            )
            if not inside:
                raise InputError(
                    f"folder {path} holds no slide files ({', '.join(SLIDE_SUFFIXES)})"
                )
            found.extend(inside)
        elif path.is_file():
            found.append(path)
        else:
            raise InputError(f"slide {path} does not exist: pass slide files, folders or globs")
    unique = list(dict.fromkeys(p.resolve() for p in found))
    stems = [p.stem for p in unique]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(
            f"two slides share the name {dupes[0]!r}: outputs would collide; "
            "scan them into different --out folders"
        )
    return unique


def find_mask(folder: Path, slide: Path, what: str, extra: tuple[str, ...] = ()) -> Path:
    """``folder/<slide stem>.{png,tif,tiff[,xml]}``; ``InputError`` naming the slide if absent."""
    suffixes = (".png", ".tif", ".tiff", *extra)
    for suffix in suffixes:
        candidate = folder / f"{slide.stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise InputError(
        f"no {what} for {slide.name} in {folder} (looked for {slide.stem}{{{','.join(suffixes)}}})"
    )


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in SLIDE_FILES)


def write_slide_outputs(
    result,
    folder: Path,
    *,
    model_path: Path,
    card,
    cfg: ScanConfig,
    versions: dict[str, str],
    started: float | None = None,
) -> dict:
    """Write all files of one slide into ``folder`` (created); ``summary.json`` last.

    ``started``: the ``time.perf_counter()`` at which work on the slide began; the summary then
    records ``seconds`` (scan and outputs, the figure ``cohort.csv`` shows)."""
    from dataclasses import asdict

    from wsi_saliency.outputs.colour import PROBABILITY_SCALE, gradcam_scale
    from wsi_saliency.outputs.export import SlideMaps, timed, write_exports
    from wsi_saliency.outputs.h5 import write_scan_h5
    from wsi_saliency.outputs.overlays import write_heatmap_png, write_tissue_png

    folder.mkdir(parents=True, exist_ok=True)
    card_dict = asdict(card)
    seconds: dict[str, float] = {}  # per file written
    with timed(seconds, "scan.h5"):
        write_scan_h5(
            folder / "scan.h5",
            result,
            model_path=str(model_path),
            model_card=card_dict,
            config=asdict(cfg),
            versions=versions,
        )
    name = result.path.name
    layer = cfg.gradcam_layer or card.gradcam_layer  # --gradcam-layer overrides the card's
    pngs = {
        "heatmap.png": lambda: write_heatmap_png(
            folder / "heatmap.png",
            result.overview,
            result.overview_downsample,
            result.heatmap_prob,
            result.heatmap_prob_downsample,
            title=f"{name}: P(metastasis), max {result.score_max():.3f}",
            scale=PROBABILITY_SCALE,
        ),
        "gradcam.png": lambda: write_heatmap_png(
            folder / "gradcam.png",
            result.overview,
            result.overview_downsample,
            result.heatmap_gradcam,
            result.heatmap_gradcam_downsample,
            title=f"{name}: Grad-CAM at {layer} (one scale for the slide)",
            scale=gradcam_scale(result.heatmap_gradcam),
            alpha=0.55,
        ),
        "tissue.png": lambda: write_tissue_png(
            folder / "tissue.png",
            result.overview,
            result.overview_downsample,
            result.tissue_mask,
            result.thumbnail_downsample,
            title=f"{name}: tissue ({result.n_scored} patches scored)",
        ),
    }

    def write_png(key: str) -> None:
        with timed(seconds, key):
            pngs[key]()

    # Side by side: composing and PNG-encoding release the GIL for most of their time.
    with ThreadPoolExecutor(usable_cores(), thread_name_prefix="wsi-saliency-png") as pool:
        for done in [pool.submit(write_png, key) for key in pngs]:
            done.result()
    write_exports(folder, SlideMaps.from_result(result), timings=seconds)
    summary = {
        **result.summary(),
        "output_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "model": str(model_path),
        "model_backbone": card.backbone,
        "model_metrics": card.metrics,
        "config": asdict(cfg),
        "versions": versions,
        "files": list(SLIDE_FILES),
    }
    if started is not None:
        summary["seconds"] = round(time.perf_counter() - started, 2)
    write_json(folder / "summary.json", summary)
    return summary


@dataclass
class CohortRow:
    """One slide of a cohort run. ``status`` is what this run did: ``done`` (scanned now),
    ``skipped`` (complete outputs from an earlier run, figures read back from them) or
    ``failed``. ``cohort.csv`` records the slide's outcome, ``done`` for the first two."""

    slide: str
    status: str  # done | skipped | failed
    score_max: float | None = None
    score_topk: float | None = None
    patches: int | None = None
    seconds: float | None = None
    error: str = ""

    @property
    def outcome(self) -> str:
        return "done" if self.status == "skipped" else self.status


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def row_from_outputs(slide: Path, folder: Path, status: str = "done") -> CohortRow | None:
    """The cohort row of a slide from its own ``summary.json`` (None when it is unreadable):
    the same figures whether the slide was scanned by this run or by an earlier one."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    top_k = (summary.get("config") or {}).get("top_k")
    topk_key = f"score_top{top_k}_mean"
    if topk_key not in summary:  # written under another top_k: the one score_top<k>_mean key
        topk_key = next((k for k in summary if k.startswith("score_top")), topk_key)
    seconds = summary.get("seconds")
    if seconds is None:  # written before summaries recorded it: the scan's own wall time
        seconds = (summary.get("timings_s") or {}).get("total_s")
    patches = summary.get("patches_scored")
    return CohortRow(
        str(slide),
        status,
        _number(summary.get("score_max")),
        _number(summary.get(topk_key)),
        patches if isinstance(patches, int) and not isinstance(patches, bool) else None,
        _number(seconds),
    )


def _write_csv(path: Path, rows: list[CohortRow]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(
        ["slide", "status", "score_max", "score_topk_mean", "patches_scored", "seconds", "error"]
    )
    for r in rows:
        writer.writerow(
            [
                r.slide,
                r.outcome,
                "" if r.score_max is None else f"{r.score_max:.6f}",
                "" if r.score_topk is None else f"{r.score_topk:.6f}",
                "" if r.patches is None else r.patches,
                "" if r.seconds is None else f"{r.seconds:.2f}",
                r.error,
            ]
        )
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


@dataclass
class Scanner:
    """What every slide of a cohort needs from the model file, loaded once: the model, its
    card, the ``PatchScorer`` for the scan config and the software versions to record.
    The serial loop holds one; a Dask worker keeps one for all its slides."""

    model_path: Path
    model: Any
    card: Any
    scorer: Any
    versions: dict[str, str]


def load_scanner(model_path: Path, cfg: ScanConfig) -> Scanner:
    """Load the model at ``model_path`` (under ``cfg.mixed_precision``, its batch norms folded
    with ``cfg.fold_batch_norm``) and its scorer."""
    from wsi_saliency.backend import import_keras_quietly

    import_keras_quietly()  # a no-op once Keras is in
    from wsi_saliency.model.io import load_model, software_versions
    from wsi_saliency.scan.pipeline import PatchScorer

    policy = None
    if cfg.mixed_precision != "off":
        from wsi_saliency.backend import precision_policy

        # the model is converted (load_model): Keras' global policy is left as it is
        policy = precision_policy(cfg.mixed_precision, cpu_bfloat16=True)
    model, card = load_model(model_path, dtype_policy=policy)
    if cfg.fold_batch_norm:
        from wsi_saliency.model.fold import fold_batch_norm

        fold_batch_norm(model)  # this model is the scan's own, for inference only
    scorer = PatchScorer.from_config(model, card, cfg)
    return Scanner(Path(model_path), model, card, scorer, software_versions())


def kept_row(slide: Path, out: Path, *, overwrite: bool = False) -> CohortRow | None:
    """The ``skipped`` row of a slide whose outputs in ``out`` are complete from an earlier
    run (its figures read back from them); None when the slide is to be scanned."""
    final = out / slide.stem
    kept = None if overwrite or not is_complete(final) else row_from_outputs(slide, final)
    if kept is not None:
        kept.status = "skipped"
    return kept


def clear_partials(out: Path, stem: str) -> None:
    """Remove what interrupted attempts at slide ``stem`` left in ``out``: the serial
    ``.<stem>.partial`` and the ``.<stem>.partial-<attempt>`` folders of Dask workers that
    died (never complete: a folder is complete only once renamed to ``<stem>``)."""
    shutil.rmtree(out / f".{stem}.partial", ignore_errors=True)
    for stale in glob.glob(str(out / f"{glob.escape('.' + stem)}.partial-*")):
        shutil.rmtree(stale, ignore_errors=True)


def scan_one(
    slide: Path,
    out: Path,
    scanner: Scanner,
    cfg: ScanConfig,
    *,
    progress: bool = False,
    log: Callable[[str], None] = print,
    debug: bool = False,
    tissue_masks: Path | None = None,
    rois: Path | None = None,
    attempt: str = "",
    layout: Future | None = None,
) -> CohortRow:
    """Scan one slide into ``out/<stem>/`` and return its row (``done`` or ``failed``).

    The body both the serial loop and a Dask worker's task run. The outputs are written into
    ``out/.<stem>.partial`` (``.<stem>.partial-<attempt>`` when ``attempt`` is given, so two
    attempts never share a folder) and renamed when complete. Any exception fails the slide
    (its row carries a one-line error) unless ``debug``, which re-raises it. ``layout``: the
    slide's ``SlideLayout`` being made ahead (:class:`LayoutsAhead`), masks included.
    """
    from wsi_saliency.scan.pipeline import scan_slide

    final = out / slide.stem
    partial = out / (f".{slide.stem}.partial" + (f"-{attempt}" if attempt else ""))
    clear_partials(out, slide.stem)
    t0 = time.perf_counter()
    try:
        if layout is not None:
            stage1 = {"layout": layout.result()}
            t0 -= stage1["layout"].seconds  # the slide's time counts its layout, made ahead
        else:
            stage1 = slide_masks(slide, tissue_masks, rois)
        result = scan_slide(
            slide,
            scanner.model,
            scanner.card,
            cfg,
            scorer=scanner.scorer,
            progress=progress,
            **stage1,
        )
        for note in result.warnings:
            log(f"warning: {note}")
        write_slide_outputs(
            result,
            partial,
            model_path=scanner.model_path,
            card=scanner.card,
            cfg=cfg,
            versions=scanner.versions,
            started=t0,
        )
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        # Read back like a slide finished by an earlier run, so both rows are the same.
        row = row_from_outputs(slide, final)
        if row is None:
            raise WsiSaliencyError(f"{final / 'summary.json'} cannot be read back")
        log(
            f"{slide.name}: score {result.score_max():.3f} (max), {result.n_scored} patches, "
            f"{result.summary()['patches_per_s']} patches/s -> {final}"
        )
        return row
    except WsiSaliencyError as exc:
        if debug:
            raise
        shutil.rmtree(partial, ignore_errors=True)
        log(f"error: {exc}")
        return CohortRow(str(slide), "failed", seconds=time.perf_counter() - t0, error=str(exc))
    except Exception as exc:  # noqa: BLE001 - one bad slide must not stop the cohort
        if debug:
            raise
        shutil.rmtree(partial, ignore_errors=True)
        first = (str(exc).splitlines() or [""])[0]
        message = f"{slide}: {type(exc).__name__}: {first} (rerun with --debug for details)"
        log(f"error: {message}")
        return CohortRow(str(slide), "failed", seconds=time.perf_counter() - t0, error=message)


def slide_masks(slide: Path, tissue_masks: Path | None, rois: Path | None) -> dict:
    """The slide's ``tissue`` and ``roi`` files from the folders given (None where none)."""
    return {
        "tissue": None if tissue_masks is None else find_mask(tissue_masks, slide, "tissue mask"),
        "roi": None if rois is None else find_mask(rois, slide, "region of interest", (".xml",)),
    }


class LayoutsAhead:
    """Lays out slides (``lay_out_slide``: overview, tissue mask, grid; no model) one ahead
    of the model, in a background thread: the first while TensorFlow and the model load, each
    next one while the model works on the one before. ``take(slide)`` hands over the slide's
    future (its exception, if any, is raised by ``result()``, inside ``scan_one``) and starts
    the next; slides are taken in the order given (a slide listed twice is laid out twice).
    At most two layouts are held at once."""

    def __init__(self, slides: list[Path], card, cfg: ScanConfig, masks: Callable[[Path], dict]):
        self._slides = list(slides)
        self._card, self._cfg, self._masks = card, cfg, masks
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="wsi-saliency-layout")
        self._futures: deque[tuple[Path, Future]] = deque()
        self._next = 0
        self._start_next()

    def _lay_out(self, slide: Path):
        from wsi_saliency.scan.pipeline import lay_out_slide

        return lay_out_slide(slide, self._card, self._cfg, **self._masks(slide))

    def _start_next(self) -> None:
        if self._next < len(self._slides):
            slide = self._slides[self._next]
            self._next += 1
            self._futures.append((slide, self._pool.submit(self._lay_out, slide)))

    def take(self, slide: Path) -> Future:
        expected, future = self._futures.popleft()
        if expected != slide:
            raise RuntimeError(f"layouts are taken in order: {expected} is next, not {slide}")
        self._start_next()
        return future

    def close(self) -> None:
        for _, future in self._futures:
            future.cancel()
        self._pool.shutdown(wait=True)


def scan_cohort(
    slides: list[Path],
    model_path: Path,
    out: Path,
    cfg: ScanConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    debug: bool = False,
    tissue_masks: Path | None = None,
    rois: Path | None = None,
) -> list[CohortRow]:
    """Scan ``slides`` with the model at ``model_path`` into ``out``; returns one row per slide.

    ``tissue_masks`` / ``rois``: folders holding, per slide, ``<stem>.png|tif|tiff`` (a mask
    covering the whole slide; ROIs may also be ``<stem>.xml`` ASAP outlines). In this process,
    one slide after the other; ``wsi_saliency.scan.distributed.scan_cohort_distributed`` runs
    the same ``scan_one`` on a Dask cluster.
    """
    from tqdm import tqdm

    from wsi_saliency.model.io import read_card

    kept = {slide: kept_row(slide, out, overwrite=overwrite) for slide in slides}
    ahead = LayoutsAhead(
        [s for s in slides if kept[s] is None],
        read_card(model_path),
        cfg,
        lambda slide: slide_masks(slide, tissue_masks, rois),
    )
    rows: list[CohortRow] = []
    try:
        scanner = load_scanner(model_path, cfg)  # beside the first slide's layout
        bar = tqdm(slides, desc="slides", unit="slide", disable=not progress or len(slides) < 2)
        for slide in bar:
            if kept[slide] is not None:
                rows.append(kept[slide])
                final = out / slide.stem
                log(f"{slide.name}: complete outputs in {final} from an earlier run, skipped")
            else:
                rows.append(
                    scan_one(
                        slide,
                        out,
                        scanner,
                        cfg,
                        progress=progress,
                        log=log,
                        debug=debug,
                        layout=ahead.take(slide),
                    )
                )
            _write_csv(out / "cohort.csv", rows)
    finally:
        ahead.close()
    return rows
