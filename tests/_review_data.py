"""Scan outputs for the review tests, written without a model (no TensorFlow: fast).

``make_scan_out(folder)`` writes a small synthetic slide and, as ``wsi-saliency scan`` would,
``OUT/<stem>/scan.h5`` + ``summary.json``, a ``regions.geojson`` and ``OUT/cohort.csv`` with
one scanned slide and one failed slide. The heatmap is a known pattern: probability
rises from left to right (0.05 .. 0.95), so the most suspicious patches are on the right.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SIZE_XY = (1536, 1024)  # level-0 (w, h)
MPP = 0.5
PATCH = 128  # level-0 px per patch and per probability cell
CAM_CELLS = 8  # Grad-CAM map per patch: 8 x 8 -> 16 level-0 px per Grad-CAM cell
MASK_DS = 16  # level-0 px per tissue-mask px
TISSUE = np.array([[100, 100], [1400, 120], [1420, 900], [120, 920]], float)  # level-0 (x, y)


def write_slide(path: Path) -> Path:
    from wsi_saliency.synthetic.slides import write_synthetic_slide

    return write_synthetic_slide(
        path,
        l0_size_xy=SIZE_XY,
        mpp=MPP,
        lesions=[],
        seed=3,
        tile=256,
        levels=(1, 4),
        tissue=[TISSUE],
        pen_mark=False,
        dark_area=False,
    ).path


def write_scan(folder: Path, slide: Path, *, score_shift: float = 0.0) -> dict:
    """``folder/scan.h5`` and ``summary.json`` of ``slide``; returns the arrays written."""
    from wsi_saliency.outputs.h5 import write_scan_h5

    w, h = SIZE_XY
    rows, cols = -(-h // PATCH), -(-w // PATCH)
    mask = np.zeros((h // MASK_DS, w // MASK_DS), np.uint8)
    x0, y0, x1, y1 = 120 // MASK_DS, 120 // MASK_DS, 1400 // MASK_DS, 900 // MASK_DS
    mask[y0:y1, x0:x1] = 1
    heatmap = np.full((rows, cols), np.nan, np.float32)
    coords, grid, prob = [], [], []
    for r in range(rows):
        for c in range(cols):
            x, y = c * PATCH, r * PATCH
            if not (100 <= x + PATCH / 2 <= 1400 and 100 <= y + PATCH / 2 <= 900):
                continue  # glass: not scored
            p = float(np.clip(0.05 + 0.9 * c / (cols - 1) + score_shift, 0.0, 1.0))
            heatmap[r, c] = p
            coords.append((x, y))
            grid.append((r, c))
            prob.append(p)
    n = len(prob)
    rng = np.random.default_rng(0)
    cams = rng.random((n, CAM_CELLS, CAM_CELLS)).astype(np.float32)
    cam_heatmap = np.full((rows * CAM_CELLS, cols * CAM_CELLS), np.nan, np.float32)
    for (r, c), cam in zip(grid, cams, strict=True):
        cam_heatmap[r * CAM_CELLS : (r + 1) * CAM_CELLS, c * CAM_CELLS : (c + 1) * CAM_CELLS] = cam
    result = SimpleNamespace(
        coords=np.asarray(coords, np.int64),
        grid_rc=np.asarray(grid, np.int64),
        prob=np.asarray(prob, np.float32),
        gradcam=cams,
        tissue_fraction=np.ones(n, np.float32),
        heatmap_prob=heatmap,
        heatmap_gradcam=cam_heatmap,
        tissue_mask=mask,
        patch_size_l0=PATCH,
        stride_l0=PATCH,
        heatmap_prob_downsample=PATCH,
        heatmap_gradcam_downsample=PATCH / CAM_CELLS,
        thumbnail_downsample=(MASK_DS, MASK_DS),
        target_mpp=1.0,
        slide_mpp=MPP,
        slide_dimensions=SIZE_XY,
        plan=SimpleNamespace(level=0),
        path=slide,
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_scan_h5(
        folder / "scan.h5", result, model_path="m.keras", model_card={}, config={}, versions={}
    )
    summary = {
        "slide": str(slide),
        "score_max": float(max(prob)),
        "score_top10_mean": float(np.mean(sorted(prob)[-10:])),
        "patches_scored": n,
        "area_above_threshold_mm2": 0.1,
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return {"heatmap": heatmap, "coords": result.coords, "prob": result.prob, "summary": summary}


REGION = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[1152, 256], [1408, 256], [1408, 640], [1152, 640], [1152, 256]]],
            },
            "properties": {
                "classification": {"name": "Tumor", "color": [255, 0, 255]},
                "prob_max": 0.95,
                "prob_mean": 0.9,
                "area_um2": 24576.0,
            },
        }
    ],
}


def make_scan_out(out: Path, slide_dir: Path, *, regions: bool = True) -> dict:
    """A scan folder: slide ``small`` scanned, slide ``broken`` failed; see module doc."""
    slide = write_slide(slide_dir / "small.tif")
    data = write_scan(out / "small", slide)
    if regions:
        (out / "small" / "regions.geojson").write_text(json.dumps(REGION))
    broken = slide_dir / "broken.svs"
    (out / "cohort.csv").write_text(
        "slide,status,score_max,score_topk_mean,patches_scored,seconds,error\n"
        f"{slide},done,{data['summary']['score_max']:.6f},,{len(data['prob'])},1.0,\n"
        f'{broken},failed,,,,0.1,"not a supported slide format: {broken}"\n'
    )
    return {"slide": slide, **data}
