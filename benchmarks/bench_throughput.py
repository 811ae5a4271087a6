"""Throughput on the largest Camelyon16-like slide: end to end against model-only, and every
fixed per-slide cost.

The slide is ``make_large_slides.py``'s 98,304 x 221,184 px (0.243 um/px, levels by 2: its
level 2 is at the model's 0.972 um/px and is read as is). Cases, each in this one process:

- ``tiny``: the bundled model (``pcam-ai4all``, trained, 0.22 M parameters) on the whole
  slide, Grad-CAM on (the default dense map), reading in threads and in processes;
- ``resnet50``: ResNet50 with random weights (seed 0) and Grad-CAM, the dense map computed
  for every patch (``gradcam_dense_min=0``: the worst case), on a region of interest of about
  ``--roi-patches`` patches of tissue: the whole slide would take about 15 minutes per case
  on this CPU.

End to end is ``scan_slide`` from opening the slide to the finished heatmaps (reading,
resampling, the model, Grad-CAM, the dense map, stitching), without the output files.
Model-only is the same model's work on the same patches with nothing else running in the
process: the scorer (probability + per-patch Grad-CAM) on an in-memory batch of the scan's
batch size, and the dense Grad-CAM pass over every one of the scan's own tiles (each read
first, untimed, then computed, timed), both after their first (compiling) call;
``model_only_s = patches / scorer rate + dense patches / dense rate``.
The ratio is ``model_only_s / end_to_end_s`` (1.0: reading and the rest are fully hidden
behind the model).

Fixed costs: importing Keras and the backend, loading the model, the first (compiling) call
of the scorer and of the dense pass, opening the slide, the overview and thumbnail, the
tissue mask, tiling, each output file (``summary.json`` ``output_seconds``) and the review
page (``build_review``; Deep Zoom tiles are served by ``wsi-saliency serve`` for a slide
this size, not written).

    python benchmarks/make_large_slides.py      # once
    python benchmarks/bench_throughput.py [--roi-patches 2000] [--readers threads processes]
        [--batch-size 64] [--region 1024]           # on a GPU: --batch-size 256 --region 2048
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import (  # noqa: E402
    keras_versions,
    machine_end,
    machine_start,
    warn_if_contended_at_start,
    write_json_atomic,
)
from make_large_slides import default_cache, require_slide  # noqa: E402


def roi_mask(path: Path, n_patches: int) -> tuple[np.ndarray, list[int]]:
    """A region of interest holding about ``n_patches`` tissue patches: a bool mask of the
    whole slide at 1/64 of level 0 ([row, col]), and its level-0 box (x0, y0, x1, y1)."""
    from wsi_saliency.slide import open_slide, plan_resolution, tile_grid
    from wsi_saliency.slide.tissue import slide_thumbnail, tissue_mask

    with open_slide(path) as reader:
        w, h = reader.dimensions
        plan = plan_resolution(reader, 0.972)
        thumb = slide_thumbnail(reader, l0_mpp=plan.l0_mpp)
    mask = tissue_mask(thumb.image, thumb_mpp=thumb.mpp)
    grid = tile_grid((w, h), plan, 96, 96, mask=mask, mask_l0_per_px=thumb.l0_per_px)
    # a square window around the middle tissue patch, grown until it holds enough patches
    cx, cy = grid.l0_xy[len(grid) // 2]
    side = grid.patch_l0 * 8
    while True:
        inside = (np.abs(grid.l0_xy[:, 0] - cx) < side) & (np.abs(grid.l0_xy[:, 1] - cy) < side)
        if inside.sum() >= n_patches:
            break
        side *= 1.1
    box = [int(max(0, cx - side)), int(max(0, cy - side)), int(cx + side), int(cy + side)]
    roi = np.zeros((-(-h // 64), -(-w // 64)), bool)
    roi[box[1] // 64 : box[3] // 64, box[0] // 64 : box[2] // 64] = True
    return roi, box


def model_only_rates(scanner, cfg, grid, dense_rows_n: int, slide: Path, plan) -> dict:
    """Scorer patches/s on an in-memory batch, and dense-pass patches/s on in-memory tiles."""
    from wsi_saliency.scan.dense import _tile_cams, dense_tiles
    from wsi_saliency.slide import open_slide
    from wsi_saliency.slide.loader import read_target_region

    scorer = scanner.scorer
    bs = scorer.batch_size or cfg.batch_size
    x = np.random.default_rng(1).integers(0, 256, (bs, 96, 96, 3), dtype=np.uint8)
    scorer(x)
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 8.0:
        scorer(x)
        reps += 1
    out = {"scorer_patches_per_s": reps * bs / (time.perf_counter() - t0), "scorer_calls": reps}
    if dense_rows_n:
        # The dense pass's work is its tiles, which differ in size (tissue edges leave smaller
        # ones with the same margins): all of the scan's own tiles, each read first (untimed)
        # and then computed (timed), so nothing else runs while the model does.
        dense = scorer.dense()
        assert dense_rows_n == len(grid), "this assumes every patch was computed densely"
        tiles = dense_tiles(grid, dense, cfg.region)
        s = dense.stride
        with open_slide(slide) as reader:
            first = read_target_region(reader, plan, tiles[0])
            _tile_cams(dense, first, np.zeros((1, 2), int), False)
            spent = 0.0
            for tile in tiles:
                image = read_target_region(reader, plan, tile)
                off = (grid.t_xy[tile.index] - np.asarray(tile.t_xy)) // s
                t0 = time.perf_counter()
                _tile_cams(dense, image, off, False)
                spent += time.perf_counter() - t0
        out["dense_patches_per_s"] = len(grid) / spent
        out["dense_tiles"] = len(tiles)
    return out


def scored_grid(result):
    """The scan's grid (its scored patches), rebuilt from the result's grid positions."""
    from wsi_saliency.slide import tile_grid

    full = tile_grid(result.slide_dimensions, result.plan, 96, 96, cover_edges=True)
    rc = result.grid_rc
    grid = full.subset(rc[:, 0] * full.grid_shape[1] + rc[:, 1])
    assert np.array_equal(grid.l0_xy, result.coords), "grid rebuilt differently"
    return grid


def run_case(name: str, slide: Path, model: str, cfg, out: Path, roi=None, roi_box=None) -> dict:
    from wsi_saliency.model.bundled import resolve_model
    from wsi_saliency.review.site import build_review
    from wsi_saliency.scan.cohort import load_scanner, write_slide_outputs
    from wsi_saliency.scan.pipeline import read_in_processes, scan_slide

    fixed: dict[str, float] = {}
    t = time.perf_counter()
    model_path, _ = resolve_model(model)
    scanner = load_scanner(model_path, cfg)
    fixed["model_load_s"] = time.perf_counter() - t
    t = time.perf_counter()
    scanner.scorer(np.zeros((scanner.scorer.batch_size or cfg.batch_size, 96, 96, 3), np.uint8))
    fixed["first_scorer_call_s"] = time.perf_counter() - t
    try:
        dense = scanner.scorer.dense()
        t = time.perf_counter()
        dense.features(np.zeros((1120, 1120, 3), np.uint8))
        fixed["first_dense_call_s"] = time.perf_counter() - t
    except Exception as exc:  # noqa: BLE001 - a model without a dense map: recorded
        fixed["first_dense_call_s"] = None
        print(f"{name}: no dense map ({exc})")

    t0 = time.perf_counter()
    result = scan_slide(slide, scanner.model, scanner.card, cfg, scorer=scanner.scorer, roi=roi)
    e2e_s = time.perf_counter() - t0
    tm = result.timings
    for key in ("open_s", "thumbnail_s", "tissue_s", "tiling_s"):
        fixed[key] = tm.get(key)
    folder = out / f"{name}-{cfg.reader}" / slide.stem
    t = time.perf_counter()
    summary = write_slide_outputs(
        result,
        folder,
        model_path=scanner.model_path,
        card=scanner.card,
        cfg=cfg,
        versions=scanner.versions,
    )
    fixed["outputs_total_s"] = time.perf_counter() - t
    for file, seconds in summary["output_seconds"].items():
        fixed[f"write {file}"] = seconds
    t = time.perf_counter()
    build_review(folder.parent)
    fixed["review_page_s"] = time.perf_counter() - t

    n, n_dense = result.n_scored, max(0, result.gradcam_dense_patches)
    rates = model_only_rates(scanner, cfg, scored_grid(result), n_dense, slide, result.plan)
    model_only_s = n / rates["scorer_patches_per_s"]
    if n_dense:
        model_only_s += n_dense / rates["dense_patches_per_s"]
    row = {
        "case": name,
        "model": str(model),
        "backbone": scanner.card.backbone,
        "reader": cfg.reader,
        "reads_in_processes": read_in_processes(cfg),
        "workers": cfg.workers,
        "batch_size": scanner.scorer.batch_size or cfg.batch_size,
        "region": cfg.region,
        "roi_l0_xyxy": roi_box,
        "read_level": int(result.plan.level),
        "resolution": result.plan.describe(),
        "patches_scored": n,
        "gradcam_dense_patches": result.gradcam_dense_patches,
        "score_max": round(result.score_max(), 4),
        "end_to_end_s": round(e2e_s, 2),
        "scan_timings_s": {k: round(v, 3) for k, v in tm.items()},
        "end_to_end_patches_per_s": round(n / e2e_s, 1),
        "model_only": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in rates.items()},
        "model_only_s": round(model_only_s, 2),
        "model_only_patches_per_s": round(n / model_only_s, 1),
        "ratio_end_to_end_over_model_only": round(model_only_s / e2e_s, 3),
        # the part that grows with the tissue: reading + model, and the dense map
        "streaming_s": round(tm["inference_s"] + tm.get("gradcam_map_s", 0.0), 2),
        "ratio_streaming_over_model_only": round(
            model_only_s / (tm["inference_s"] + tm.get("gradcam_map_s", 0.0)), 3
        ),
        "fixed_costs_s": {k: (None if v is None else round(v, 3)) for k, v in fixed.items()},
        "output_folder": str(folder),
    }
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=default_cache() / "c16-98kx221k.tif")
    ap.add_argument(
        "--roi-patches", type=int, default=2000, help="ResNet50's region of interest (0: whole)"
    )
    ap.add_argument("--readers", nargs="+", default=["threads", "processes"])
    ap.add_argument("--cases", nargs="+", default=["tiny", "resnet50"])
    ap.add_argument("--workers", type=int, default=None, help="reading workers (default: cores)")
    ap.add_argument("--batch-size", type=int, default=64, help="scan.batch_size (GPU: 256)")
    ap.add_argument("--region", type=int, default=1024, help="scan.region, px (GPU: 2048)")
    ap.add_argument("--keep", type=Path, help="keep the outputs in this folder")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/throughput.json")
    args = ap.parse_args()
    require_slide(args.slide)
    start = machine_start()
    warn_if_contended_at_start(start)
    from wsi_saliency.cli._common import prepare_backend

    t = time.perf_counter()
    prepare_backend()
    import keras

    import_s = time.perf_counter() - t
    from wsi_saliency.config import ModelConfig, ScanConfig, default_workers
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, save_model

    workers = args.workers or default_workers()
    out = args.keep or Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    rows = []
    try:
        if "tiny" in args.cases:
            for reader in args.readers:
                cfg = ScanConfig(
                    workers=workers, reader=reader, batch_size=args.batch_size, region=args.region
                )
                rows.append(run_case("tiny", args.slide, "pcam-ai4all", cfg, out))
        if "resnet50" in args.cases:
            keras.utils.set_random_seed(0)  # the same random weights every run
            model_cfg = ModelConfig(backbone="resnet50", weights="none")
            path = save_model(
                build_model(model_cfg),
                ModelCard.for_config(model_cfg),
                out / "resnet50-random.keras",
            )
            roi = roi_box = None  # --roi-patches 0: the whole slide
            if args.roi_patches > 0:
                roi, roi_box = roi_mask(args.slide, args.roi_patches)
            for reader in args.readers:
                # every patch's map computed densely: the worst case, whatever the weights
                cfg = ScanConfig(
                    workers=workers,
                    reader=reader,
                    gradcam_dense_min=0.0,
                    batch_size=args.batch_size,
                    region=args.region,
                )
                rows.append(
                    run_case("resnet50", args.slide, str(path), cfg, out, roi=roi, roi_box=roi_box)
                )
    finally:
        if args.keep is None:
            shutil.rmtree(out, ignore_errors=True)
    whole = next((r["patches_scored"] for r in rows if r["roi_l0_xyxy"] is None), None)
    for r in rows:
        if r["roi_l0_xyxy"] is None or whole is None:
            continue
        # the ROI's per-patch costs over the whole slide's patches, plus the per-slide costs
        f = whole / r["patches_scored"]
        per_slide = sum(
            r["scan_timings_s"][k] for k in ("open_s", "thumbnail_s", "tissue_s", "tiling_s")
        )
        e2e = per_slide + f * r["streaming_s"]
        r["whole_slide_projection"] = {
            "patches": whole,
            "end_to_end_s": round(e2e, 1),
            "model_only_s": round(f * r["model_only_s"], 1),
            "ratio_end_to_end_over_model_only": round(f * r["model_only_s"] / e2e, 3),
        }
    report = {
        "benchmark": "bench_throughput",
        "command": "python benchmarks/bench_throughput.py " + " ".join(sys.argv[1:]),
        "slide": str(args.slide),
        "import_keras_and_backend_s": round(import_s, 2),
        "cases": rows,
        "machine": machine_end(start, keras_versions({"keras": keras.__version__})),
    }
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
