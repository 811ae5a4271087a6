"""Scan a large synthetic slide: end-to-end patches/s against model-only patches/s.

Writes a synthetic pyramidal TIFF (tissue blobs, a few lesions) of ``--size`` level-0 pixels
at ``--mpp``, then scans it with ``--model`` (or a freshly built, untrained model of
``--backbone``) and reports, from the scan's own timings: end-to-end patches/s (all stages,
reading and resampling overlapped with the model), model-only patches/s (time inside the
model + Grad-CAM call) and their ratio. Meant for a GPU machine, where the ratio shows whether
the reading threads keep the model busy. Results go to ``--json`` with the machine.

    python benchmarks/bench_scan_large.py --size 30000x24000 --workers 16 --batch-size 256 \
        --model runs/x/model.keras --json benchmarks/results/scan_large.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _machine import write_json_atomic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="12000x9000", help="level-0 WIDTHxHEIGHT")
    ap.add_argument("--mpp", type=float, default=0.486, help="level-0 microns per pixel")
    ap.add_argument("--model", type=Path, help="model.keras (default: an untrained --backbone)")
    ap.add_argument("--backbone", default="tiny")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--region", type=int, default=2048)
    ap.add_argument("--compression", default="zlib", choices=("zlib", "jpeg"))
    ap.add_argument("--mixed-precision", default="off", choices=("off", "on", "auto"))
    ap.add_argument("--no-gradcam", action="store_true")
    ap.add_argument("--slide", type=Path, help="reuse this slide instead of writing one")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/scan_large.json"))
    argv = sys.argv[1:]  # recorded as given (args.model is replaced below when absent)
    args = ap.parse_args(argv)

    import keras

    from wsi_saliency.backend import configure_precision, device_info
    from wsi_saliency.config import ModelConfig, ScanConfig
    from wsi_saliency.model.build import build_model
    from wsi_saliency.model.io import ModelCard, load_model, save_model
    from wsi_saliency.scan.pipeline import PatchScorer, scan_slide
    from wsi_saliency.synthetic.slides import (
        make_tissue_polygons,
        place_lesions,
        write_synthetic_slide,
    )
    from wsi_saliency.synthetic.tissue import random_blob_polygon

    tmp = Path(tempfile.mkdtemp(prefix="bench-scan-large-"))
    w, h = (int(v) for v in args.size.lower().split("x"))
    t0 = time.perf_counter()
    if args.slide:
        slide = args.slide
    else:
        rng = np.random.default_rng(0)
        tissue = make_tissue_polygons((w, h), rng, tissue_fraction=0.5)
        big = min(1500.0, 0.12 * min(w, h) * args.mpp)  # lesion diameters in microns
        shapes = [
            random_blob_polygon(rng, (0.0, 0.0), d / 2 / args.mpp, n_vertices=64)
            for d in (big, big / 2, big / 4)
        ]
        lesions = place_lesions(shapes, args.mpp, args.mpp, (w, h), rng, tissue=tissue)
        slide = write_synthetic_slide(
            tmp / "large.tif",
            l0_size_xy=(w, h),
            mpp=args.mpp,
            lesions=lesions,
            seed=0,
            tile=512,
            tissue=tissue,
            compression=args.compression,
        ).path
    write_s = time.perf_counter() - t0

    policy = configure_precision(args.mixed_precision) if args.mixed_precision != "off" else None
    if args.model is None:
        model_cfg = ModelConfig(backbone=args.backbone, weights="none")
        card = ModelCard.for_config(model_cfg)
        args.model = save_model(build_model(model_cfg), card, tmp / "model.keras")
    model, card = load_model(args.model, dtype_policy=policy)
    cfg = ScanConfig(
        workers=args.workers,
        batch_size=args.batch_size,
        region=args.region,
        gradcam=not args.no_gradcam,
    )
    scorer = PatchScorer(model, card, gradcam=cfg.gradcam, batch_size=args.batch_size)
    # Warm-up (compilation) on a fixed batch, outside the timed scan.
    scorer(np.zeros((args.batch_size, 96, 96, 3), np.uint8))
    result = scan_slide(slide, model, card, cfg, scorer=scorer)
    t = result.timings
    n = result.n_scored
    x = np.random.default_rng(1).integers(0, 256, (args.batch_size, 96, 96, 3), dtype=np.uint8)
    reps = max(3, min(50, 4000 // args.batch_size))
    tm = time.perf_counter()
    for _ in range(reps):
        scorer(x)
    alone = reps * args.batch_size / (time.perf_counter() - tm)
    dev = device_info()
    figures = {
        "slide_l0_size": [w, h],
        "slide_mpp": args.mpp,
        "slide_write_s": round(write_s, 1),
        "read_level": int(result.plan.level),
        "resolution": result.plan.describe(),
        "patches_scored": n,
        "backbone": card.backbone,
        "gradcam": cfg.gradcam,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "region": args.region,
        "dtype_policy": policy or "float32",
        "timings_s": {k: round(v, 3) for k, v in t.items()},
        "end_to_end_patches_per_s": round(n / t["total_s"], 1),
        "inference_loop_patches_per_s": round(n / t["inference_s"], 1),
        "model_in_scan_patches_per_s": round(n / t["model_s"], 1),
        "model_alone_patches_per_s": round(alone, 1),
        "ratio_end_to_end_over_model_alone": round(n / t["total_s"] / alone, 3),
        "ratio_inference_loop_over_model_alone": round(n / t["inference_s"] / alone, 3),
    }
    out = {
        "benchmark": "scan_large",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "devices": dev.describe(),
            "keras": keras.__version__,
        },
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(["python", "benchmarks/bench_scan_large.py", *map(shlex.quote, argv)]),
        "figures": figures,
    }
    write_json_atomic(args.json, out)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
