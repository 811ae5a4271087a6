"""Evaluate a scanned cohort the Camelyon16 way: slide-level ROC AUC and lesion-level FROC.

``evaluate_slides(scan_dir, reference, annotations)`` reads ``scan_dir/<stem>/scan.h5`` of every
slide in the reference CSV, scores each slide (max or top-k mean patch probability), extracts
lesion detections from its probability heatmap, matches them with the annotated lesions on the
7.776 um evaluation grid (:mod:`wsi_saliency.slide_eval.froc`) and returns a
:class:`SlideEvalResult`; :func:`write_outputs` writes ``metrics.json``, ``roc.png``,
``froc.png``, ``slides.csv`` and ``detections/<stem>.csv`` (Camelyon16 submission format).
Every input is checked before any heavy work, so a bad file fails in seconds, naming it.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.errors import DataError, InputError
from wsi_saliency.outputs.atomic import atomic_path, write_json
from wsi_saliency.slide_eval.detections import (
    METHODS,
    Detections,
    extract_detections,
    write_detections_csv,
)
from wsi_saliency.slide_eval.froc import (
    FP_RATES,
    ITC_MAX_AXIS_UM,
    MASK_UM_PER_PX,
    MERGE_DISTANCE_UM,
    FrocCurve,
    SlideHits,
    evaluation_mask,
    froc_curve,
    match_detections,
)
from wsi_saliency.slide_eval.reference import find_annotation, read_reference, tumour_mask
from wsi_saliency.slide_eval.slide_auc import AucResult, bootstrap_auc

SLIDE_SCORES = ("max", "top-k")


@dataclass(frozen=True)
class EvalConfig:
    """How slides are scored and detections made (recorded in ``metrics.json``)."""

    slide_score: str = "max"  # "max" | "top-k" (mean of the top_k patch probabilities)
    top_k: int = 10
    detection_method: str = "components"  # "components" | "maxima"
    detection_threshold: float = 0.5
    maxima_radius_um: float = 150.0
    n_bootstrap: int = 2000
    seed: int = 0
    official_quirks: bool = False

    def __post_init__(self) -> None:
        if self.slide_score not in SLIDE_SCORES:
            raise InputError(f"--slide-score must be one of {', '.join(SLIDE_SCORES)}")
        if self.top_k < 1:
            raise InputError("--top-k must be >= 1")
        if self.detection_method not in METHODS:
            raise InputError(f"--detections must be one of {', '.join(METHODS)}")
        if not 0.0 <= self.detection_threshold <= 1.0:
            raise InputError("--detection-threshold must be in [0, 1]")
        if self.maxima_radius_um <= 0:
            raise InputError("--radius-um must be > 0")
        if self.n_bootstrap < 0:
            raise InputError("--bootstrap must be >= 0")


@dataclass
class SlideRecord:
    """One slide's score, detections and their matching."""

    stem: str
    is_tumour: bool
    score: float
    detections: Detections
    hits: SlideHits
    slide_mpp: float
    annotation: Path | None

    def row(self) -> dict[str, Any]:
        h = self.hits
        return {
            "slide": self.stem,
            "label": "Tumor" if self.is_tumour else "Normal",
            "score": round(self.score, 6),
            "detections": len(self.detections),
            "lesions": h.n_lesions,
            "lesions_hit": h.n_hit,
            "itc_regions": h.n_itc_regions,
            "false_positives": int(h.fp_probs.size),
            "ignored_on_itc": h.n_ignored,
            "slide_mpp": self.slide_mpp,
            "annotation": str(self.annotation) if self.annotation else "",
        }


@dataclass
class SlideEvalResult:
    """Slide AUC, FROC and everything needed to write and reproduce them."""

    slides: list[SlideRecord]
    auc: AucResult
    froc: FrocCurve
    config: EvalConfig
    inputs: dict[str, str]
    scan_models: list[str]
    versions: dict[str, str]
    warnings: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        sens = self.froc.sensitivity_at(FP_RATES)
        hits = [s.hits for s in self.slides]
        return {
            "slide_auc": self.auc.auc,
            "slide_auc_ci95": list(self.auc.ci95),
            "froc": self.froc.score(FP_RATES),
            "froc_sensitivity": {f"{r:g}": float(v) for r, v in zip(FP_RATES, sens, strict=True)},
            "counts": {
                "slides": len(self.slides),
                "tumour_slides": self.auc.n_tumour,
                "normal_slides": self.auc.n_normal,
                "lesions": self.froc.n_lesions,
                "lesions_hit": self.froc.n_tp,
                "itc_regions": sum(h.n_itc_regions for h in hits),
                "detections": sum(len(s.detections) for s in self.slides),
                "false_positives": self.froc.n_fp,
                "ignored_on_itc": sum(h.n_ignored for h in hits),
            },
            "slide_auc_detail": self.auc.as_dict(),
            "froc_curve": {
                "threshold": self.froc.thresholds,
                "avg_fp_per_slide": self.froc.avg_fp,
                "sensitivity": self.froc.sensitivity,
            },
            "protocol": {
                "name": "Camelyon16 (Evaluation_FROC.py rules; see wsi_saliency.slide_eval.froc)",
                "mask_um_per_px": MASK_UM_PER_PX,
                "merge_distance_um": MERGE_DISTANCE_UM,
                "itc_max_axis_um": ITC_MAX_AXIS_UM,
                "fp_rates": list(FP_RATES),
                "official_quirks": self.config.official_quirks,
            },
            "config": {
                "slide_score": self.config.slide_score,
                "top_k": self.config.top_k,
                "detection_method": self.config.detection_method,
                "detection_threshold": self.config.detection_threshold,
                "maxima_radius_um": self.config.maxima_radius_um,
                "n_bootstrap": self.config.n_bootstrap,
                "seed": self.config.seed,
            },
            "inputs": self.inputs,
            "scan_models": self.scan_models,
            "slides": [s.row() for s in self.slides],
            "warnings": self.warnings,
            "versions": self.versions,
        }


def _slide_score(prob: np.ndarray, cfg: EvalConfig) -> float:
    prob = np.asarray(prob, dtype=np.float64).reshape(-1)
    if prob.size == 0:
        return 0.0
    if cfg.slide_score == "max":
        return float(prob.max())
    return float(np.sort(prob)[-cfg.top_k :].mean())


SCAN_DATASETS = ("heatmap_prob", "prob")


def _read_scan(path: Path) -> dict[str, Any]:
    from wsi_saliency.outputs.h5 import read_scan_h5

    try:
        scan = read_scan_h5(path, SCAN_DATASETS)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable scan.h5 ({exc}); scan the slide again") from None
    missing = [
        k
        for k in (
            "heatmap_prob",
            "heatmap_prob_downsample",
            "slide_mpp",
            "slide_dimensions",
            "prob",
        )
        if k not in scan
    ]
    if missing:
        raise DataError(f"{path}: lacks {', '.join(missing)}; scan the slide again")
    if not (float(scan["slide_mpp"]) > 0):
        raise DataError(f"{path}: slide_mpp is {scan['slide_mpp']}; scan with --slide-mpp")
    return scan


def evaluate_slides(
    scan_dir: str | Path,
    reference: str | Path,
    annotations: str | Path,
    config: EvalConfig | None = None,
    *,
    versions: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> SlideEvalResult:
    """Slide-level AUC and lesion-level FROC of a scan output folder.

    Args:
        scan_dir: ``wsi-saliency scan`` output: ``<stem>/scan.h5`` per slide.
        reference: CSV ``slide,Tumor|Normal`` (Camelyon16 ``reference.csv``).
        annotations: folder of ``<stem>.xml`` (ASAP) or ``<stem>_mask.tif`` / ``<stem>.tif``
            for each tumour slide.
        config: scoring and detection settings.
        versions: software versions to record (default :func:`model.io.software_versions`).
        log: receives one line per warning.

    Raises:
        InputError / DataError: a missing or unreadable input, naming the file.
    """
    cfg = config or EvalConfig()
    scan_dir, reference, annotations = Path(scan_dir), Path(reference), Path(annotations)
    if not scan_dir.is_dir():
        raise InputError(
            f"scan folder {scan_dir} does not exist: pass the --out of wsi-saliency scan"
        )
    if not annotations.is_dir():
        raise InputError(f"annotation folder {annotations} does not exist: pass --annotations DIR")
    rows = read_reference(reference)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if log:
            log(f"warning: {message}")

    # Check every input before any heavy work.
    plan: list[tuple[Any, Path, Path | None]] = []
    for row in rows:
        h5 = scan_dir / row.stem / "scan.h5"
        if not h5.is_file():
            raise InputError(
                f"{h5} not found: slide {row.stem} (line {row.line} of {reference}) has no scan "
                "output; scan it or remove it from the reference"
            )
        ann = find_annotation(annotations, row.stem)
        if row.is_tumour and ann is None:
            raise InputError(
                f"no annotation for tumour slide {row.stem} in {annotations}: expected "
                f"{row.stem}.xml, {row.stem}_mask.tif or {row.stem}.tif"
            )
        if not row.is_tumour and ann is not None:
            warn(f"{ann}: slide {row.stem} is Normal in the reference; annotation ignored")
            ann = None
        plan.append((row, h5, ann))
    listed = {row.stem for row in rows}
    extra = sorted(
        p.name for p in scan_dir.iterdir() if (p / "scan.h5").is_file() and p.name not in listed
    )
    if extra:
        warn(f"{len(extra)} scanned slide(s) not in the reference, not evaluated: {extra[:5]}")

    records: list[SlideRecord] = []
    models: set[str] = set()
    for row, h5, ann in plan:
        scan = _read_scan(h5)
        mpp = float(scan["slide_mpp"])
        dims = (int(scan["slide_dimensions"][0]), int(scan["slide_dimensions"][1]))
        models.add(str(scan.get("model_path", "")))
        dets = extract_detections(
            scan["heatmap_prob"],
            float(scan["heatmap_prob_downsample"]),
            method=cfg.detection_method,
            threshold=cfg.detection_threshold,
            slide_mpp=mpp,
            radius_um=cfg.maxima_radius_um,
        )
        mask = None
        if ann is not None:
            l0_per_px = MASK_UM_PER_PX / mpp
            tumour = tumour_mask(ann, dims, l0_per_px)
            mask = evaluation_mask(tumour, mpp, official_quirks=cfg.official_quirks)
            if not tumour.any():
                warn(f"{ann}: no tumour area in the annotation of tumour slide {row.stem}")
        hits = match_detections(dets.probs, dets.l0_xy, mask)
        records.append(
            SlideRecord(
                stem=row.stem,
                is_tumour=row.is_tumour,
                score=_slide_score(scan["prob"], cfg),
                detections=dets,
                hits=hits,
                slide_mpp=mpp,
                annotation=ann,
            )
        )

    labels = np.array([r.is_tumour for r in records])
    scores = np.array([r.score for r in records])
    auc = bootstrap_auc(labels, scores, n_bootstrap=cfg.n_bootstrap, seed=cfg.seed)
    if math.isnan(auc.auc):
        warn("the reference has only one class (Tumor or Normal): slide AUC is undefined")
    froc = froc_curve([r.hits for r in records], official_quirks=cfg.official_quirks)
    if froc.n_lesions == 0:
        warn("no lesion to detect (every tumour region is ITC or absent): FROC is undefined")
    if versions is None:
        from wsi_saliency.model.io import software_versions

        versions = software_versions()
    return SlideEvalResult(
        slides=records,
        auc=auc,
        froc=froc,
        config=cfg,
        inputs={
            "scan_dir": str(scan_dir),
            "reference": str(reference),
            "annotations": str(annotations),
        },
        scan_models=sorted(models),
        versions=versions,
        warnings=warnings,
    )


def write_outputs(result: SlideEvalResult, out: str | Path) -> dict[str, Path]:
    """Write ``metrics.json``, ``slides.csv``, ``roc.png``, ``froc.png`` and
    ``detections/<stem>.csv`` into ``out``; returns the paths by name."""
    out = Path(out)
    paths: dict[str, Path] = {}
    for rec in result.slides:
        write_detections_csv(out / "detections" / f"{rec.stem}.csv", rec.detections)
    paths["detections"] = out / "detections"
    rows = [rec.row() for rec in result.slides]
    with atomic_path(out / "slides.csv") as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    paths["slides"] = out / "slides.csv"
    paths["roc"] = write_slide_roc_png(out / "roc.png", result)
    paths["froc"] = write_froc_png(out / "froc.png", result)
    paths["metrics"] = write_json(out / "metrics.json", result.metrics())
    return paths


def write_slide_roc_png(path: Path, result: SlideEvalResult) -> Path:
    """Slide-level ROC (the patch ROC plot of :mod:`wsi_saliency.evaluation`, on slide scores)."""
    from wsi_saliency.evaluation import EvalResult, write_roc_png
    from wsi_saliency.metrics import binary_metrics

    labels = np.array([r.is_tumour for r in result.slides], dtype=np.uint8)
    scores = np.array([r.score for r in result.slides], dtype=np.float32)
    lo, hi = result.auc.ci95
    title = f"Slides: {labels.sum()} tumour, {len(labels) - labels.sum()} normal"
    if np.isfinite(lo):
        title += f"\nAUC 95% CI {lo:.3f}-{hi:.3f}"
    er = EvalResult(binary_metrics(labels, scores, 0.5), labels, scores)
    return write_roc_png(path, er, title=title)


def write_froc_png(path: Path, result: SlideEvalResult) -> Path:
    """FROC curve (x: log from 1/8, linear below) with the six operating points and the score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = result.froc
    fp, sens = c.avg_fp[::-1], c.sensitivity[::-1]
    pts = c.sensitivity_at(FP_RATES)
    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    xmax = max(16.0, float(fp.max()) * 1.2)
    # Beyond its last point the curve stays flat (np.interp clamps), drawn dashed.
    ax.plot(fp, sens, lw=2, marker=".", ms=4, label="FROC", clip_on=False, zorder=3)
    if fp.size:
        ax.plot([fp[-1], xmax], [sens[-1], sens[-1]], ls="--", lw=1, c="C0")
    ax.scatter(FP_RATES, pts, c="crimson", zorder=3, label=f"FROC score {c.score():.3f}")
    ax.set_xscale("symlog", linthresh=0.125)  # log from 1/8 up, linear to 0 (0 FPs shows)
    ax.set(
        xlim=(0, xmax),
        ylim=(0, 1.02),
        xlabel="average false positives per slide",
        ylabel="lesion sensitivity",
        title=(
            f"Lesion FROC: {c.n_lesions} lesions, {c.n_slides} slides "
            f"({result.config.detection_method} >= {result.config.detection_threshold:g})"
        ),
    )
    ax.set_xticks([0, *FP_RATES], ["0", *(f"{r:g}" for r in FP_RATES)])
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
