"""The demo: train the sample model (or reuse it), scan the sample slide, and measure how well
the probability heatmap finds the lesions planted in it (their ASAP outlines are known). When
the real slide of ``../shared/data`` is there (CMU-1-Small-Region: skin, no lymph node, so no
metastasis is expected), it is scanned too, with the bundled real-PCam model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONFIG = REPO / "configs" / "sample.yaml"
SHARED_DATA = Path(os.environ.get("WSI_SALIENCY_SHARED_DATA", REPO.parent / "shared" / "data"))
REAL_SLIDE = SHARED_DATA / "slides" / "CMU-1-Small-Region.svs"


def sample_data_dir(out: Path, log: Callable[[str], None]) -> Path:
    """``sample_data/`` of the checkout, or a freshly generated copy in ``out/sample_data``."""
    shipped = REPO / "sample_data"
    if (shipped / "pcam").is_dir() and (shipped / "slide" / "sample_slide.tif").is_file():
        return shipped
    target = out / "sample_data"
    if not (target / "slide" / "sample_slide.tif").is_file():
        log(f"sample_data/ not found beside the package: generating it in {target}")
        from wsi_saliency.synthetic.sample import main as generate

        generate([str(target)])
    return target


def heatmap_vs_annotations(heatmap: np.ndarray, l0_per_cell: float, annotations) -> dict[str, Any]:
    """Cell-level ROC AUC of a probability heatmap against lesion outlines, and the shift
    (in cells, within +-3) that best aligns the heatmap with the lesion mask (0, 0 = aligned).

    Cells are labelled tumour when their centre lies inside an outline; only scored cells
    (finite values) count.
    """
    from wsi_saliency.data.annotations import rasterize
    from wsi_saliency.metrics import roc_auc

    truth = rasterize(annotations, heatmap.shape, downsample=l0_per_cell)
    scored = np.isfinite(heatmap)
    auc = roc_auc(truth[scored], heatmap[scored])
    filled = np.where(scored, heatmap, 0.0)
    best, best_shift = -np.inf, (0, 0)
    t = truth.astype(np.float64) - truth.mean()
    for dr in range(-3, 4):
        for dc in range(-3, 4):
            shifted = np.roll(np.roll(filled, dr, axis=0), dc, axis=1)
            score = float((shifted * t).sum())
            if score > best:
                best, best_shift = score, (dr, dc)
    return {
        "cell_auc": auc,
        "best_shift_cells": best_shift,
        "tumour_cells": int(truth[scored].sum()),
        "scored_cells": int(scored.sum()),
    }


def run_demo(out: str | Path, *, retrain: bool = False, log: Callable[[str], None] = print) -> str:
    """Run the whole demo into ``out``; returns a short report."""
    from wsi_saliency.config import load_config
    from wsi_saliency.data.annotations import read_asap_xml
    from wsi_saliency.scan.cohort import SLIDE_FILES, scan_cohort
    from wsi_saliency.training import train

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = sample_data_dir(out, log)
    if not SAMPLE_CONFIG.is_file():
        raise InputError(f"{SAMPLE_CONFIG} is missing: run the demo from a clone of wsi-saliency")
    cfg = load_config(SAMPLE_CONFIG, [("data", "path", str(data / "pcam"))])
    run = out / "model"
    model_path = run / "model.keras"
    if retrain or not model_path.is_file():
        if run.exists():
            import shutil

            shutil.rmtree(run)
        log(f"training the sample model into {run}")
        train(cfg, run, log=log)
    else:
        log(f"reusing {model_path} (pass --retrain to train again)")
    slide = data / "slide" / "sample_slide.tif"
    scans = out / "scan"
    rows = scan_cohort([slide], model_path, scans, cfg.scan, overwrite=True, log=log)
    if rows[0].status != "done":
        raise InputError(f"scanning {slide} failed: {rows[0].error}")
    from wsi_saliency.outputs.atomic import write_json
    from wsi_saliency.outputs.h5 import read_scan_h5

    scan = read_scan_h5(scans / slide.stem / "scan.h5", ("heatmap_prob",))
    check = heatmap_vs_annotations(
        scan["heatmap_prob"],
        float(scan["heatmap_prob_downsample"]),
        read_asap_xml(slide.with_suffix(".xml")),
    )
    write_json(out / "demo_report.json", {"model": str(model_path), "slide": str(slide), **check})
    folder = scans / slide.stem
    report = (
        f"sample slide: heatmap cell AUC against the planted lesions {check['cell_auc']:.3f}, "
        f"best alignment shift {check['best_shift_cells']} cells; outputs in {folder} "
        f"({', '.join(SLIDE_FILES)}); look at them with `wsi-saliency review {scans}`"
    )
    real = scan_real_slide(out / "scan_real", cfg.scan, log)
    return report if real is None else f"{report}\n{real}"


def scan_real_slide(out: Path, cfg, log: Callable[[str], None]) -> str | None:
    """Scan ``REAL_SLIDE`` with the bundled model into ``out``; a line of report, or None (with
    the reason logged) when the slide or the bundled model is not there."""
    from wsi_saliency.model.bundled import DEFAULT_MODEL, bundled_models, describe
    from wsi_saliency.model.io import read_card
    from wsi_saliency.scan.cohort import scan_cohort

    if not REAL_SLIDE.is_file():
        log(f"no real slide at {REAL_SLIDE}: skipping the real-slide scan")
        return None
    model = bundled_models().get(DEFAULT_MODEL)
    if model is None:
        log(f"no bundled model {DEFAULT_MODEL!r} in this installation: skipping the real slide")
        return None
    log(f"scanning {REAL_SLIDE.name} with the {describe(model.name, read_card(model.path))}")
    rows = scan_cohort([REAL_SLIDE], model.path, out, cfg, overwrite=True, log=log)
    if rows[0].status != "done":
        raise InputError(f"scanning {REAL_SLIDE} failed: {rows[0].error}")
    return (
        f"real slide {REAL_SLIDE.name} (skin, no lymph node: no metastasis expected), bundled "
        f"model {model.name!r}: max P(metastasis) {rows[0].score_max:.3f}, outputs in "
        f"{out / REAL_SLIDE.stem}"
    )
