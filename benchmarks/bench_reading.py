"""Benchmark: patches per second of ``iter_patch_batches`` on a synthetic 40x tiled TIFF.

Writes a JPEG-compressed tiled pyramidal TIFF (level 0 at 0.25 um/px, levels 2x and 4x as
reduced pages of the main IFD chain, resolution in pixels per centimetre so OpenSlide's
generic-tiff driver reports ``openslide.mpp-x``), then times loading every 96 x 96 patch at
PatchCamelyon's 0.972 um/px:

- "direct": the 4x level (1.0 um/px, within 5 % of the target) read as is;
- "level0+<filter>": level 0 read and resampled by 1/3.888 (16x the pixels to decode);
- "level1+lanczos": the 2x level resampled by 1/1.944;

each with 1 and 2 reader threads. Results go to ``benchmarks/results/reading.json``.
Not a test: ``python benchmarks/bench_reading.py [--size 12288] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import write_json_atomic  # noqa: E402

from wsi_saliency.slide import iter_patch_batches, open_slide, plan_resolution, tile_grid  # noqa: E402

L0_MPP = 0.25
DOWNSAMPLES = (1, 2, 4)  # pyramid levels written
TARGET_MPP = 0.972
TILE = 256
JPEG_QUALITY = 80
BLOB = 48  # level-0 px per colour blob of the synthetic tissue
PATCH = 96
REGION = 1024
BATCH = 64


def _tiles(field: np.ndarray, size: int, ds: int, seed: int):
    """Tiles (row-major) of one pyramid level of a blobby H&E-like texture."""
    rng = np.random.default_rng(seed)
    n = -(-(size // ds) // TILE)  # tiles per side
    for ty in range(n):
        for tx in range(n):
            yy = (np.arange(TILE) + ty * TILE) * ds // BLOB
            xx = (np.arange(TILE) + tx * TILE) * ds // BLOB
            yy = np.minimum(yy, field.shape[0] - 1)
            xx = np.minimum(xx, field.shape[1] - 1)
            base = field[yy[:, None], xx[None, :]].astype(np.int16)
            noise = rng.integers(-18, 19, (TILE, TILE, 1), dtype=np.int16)
            yield np.clip(base + noise, 0, 255).astype(np.uint8)


def write_slide(path: Path, size: int) -> None:
    """A ``size`` x ``size`` 40x slide with 2x and 4x levels, JPEG tiles of 256 px."""
    import tifffile

    rng = np.random.default_rng(0)
    palette = np.array([[236, 234, 240], [214, 140, 188], [176, 96, 160], [120, 70, 150]], np.uint8)
    field = palette[rng.integers(0, len(palette), (size // BLOB + 2, size // BLOB + 2))]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for i, ds in enumerate(DOWNSAMPLES):
            side = size // ds
            res = 1e4 / (L0_MPP * ds)  # pixels per centimetre
            tw.write(
                _tiles(field, size, ds, seed=i),
                shape=(side, side, 3),
                dtype=np.uint8,
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": JPEG_QUALITY},
                tile=(TILE, TILE),
                subfiletype=0 if i == 0 else 1,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
            )


def time_reading(path: Path, plan, grid, *, repeat: int, **kwargs) -> tuple[int, float]:
    """``(patches, seconds)``: every patch of ``grid`` read with ``iter_patch_batches`` (no
    model; ``kwargs`` go to it), the best of ``repeat`` runs."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = 0
        for batch in iter_patch_batches(lambda: open_slide(path), plan, grid, **kwargs):
            n += len(batch)
        best = min(best, time.perf_counter() - t0)
    return n, best


def run_case(
    path: Path, *, force_level: int | None, workers: int, resample: str, repeat: int
) -> dict:
    with open_slide(path) as reader:
        plan = plan_resolution(reader, TARGET_MPP, force_level=force_level)
        grid = tile_grid(reader.dimensions, plan, PATCH, PATCH)
    n, best = time_reading(
        path,
        plan,
        grid,
        repeat=repeat,
        batch_size=BATCH,
        region_t=REGION,
        workers=workers,
        resample=resample,
    )
    assert n == len(grid)
    lv_px = (grid.patch_t * plan.lv_per_t) ** 2 * n
    return {
        "case": ("direct" if not plan.needs_resample else f"level{plan.level}+{resample}"),
        "level": plan.level,
        "lv_mpp": round(plan.lv_mpp, 4),
        "lv_per_t": round(plan.lv_per_t, 4),
        "needs_resample": plan.needs_resample,
        "resample": resample if plan.needs_resample else None,
        "workers": workers,
        "patches": n,
        "seconds": round(best, 3),
        "patches_per_s": round(n / best, 1),
        "level_megapixels_per_s": round(lv_px / best / 1e6, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=12288, help="level-0 side in px (default 12288)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the best is kept")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reading.json")
    args = ap.parse_args()

    import openslide
    import PIL

    load_before = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "synthetic-40x.tif"
        t0 = time.perf_counter()
        write_slide(path, args.size)
        write_s = time.perf_counter() - t0
        with open_slide(path) as r:
            info = {
                "dimensions": r.dimensions,
                "level_downsamples": r.level_downsamples,
                "mpp": r.mpp,
            }
        print(f"wrote {path.stat().st_size / 1e6:.0f} MB in {write_s:.1f} s: {info}", flush=True)
        cases = [
            (None, 1, "lanczos"),
            (None, 2, "lanczos"),
            (1, 1, "lanczos"),
            (1, 2, "lanczos"),
            (0, 1, "lanczos"),
            (0, 2, "lanczos"),
            (0, 2, "bilinear"),
            (0, 2, "box"),
        ]
        results = []
        for level, workers, resample in cases:
            res = run_case(
                path, force_level=level, workers=workers, resample=resample, repeat=args.repeat
            )
            print(json.dumps(res), flush=True)
            results.append(res)
        file_mb = path.stat().st_size / 1e6

    report = {
        "benchmark": "iter_patch_batches on a synthetic JPEG tiled TIFF (OpenSlide generic-tiff)",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else None,
            "load_average_1_5_15min_at_start": load_before,
            "load_average_1_5_15min_at_end": [round(v, 2) for v in os.getloadavg()],
            "python": platform.python_version(),
            "openslide": openslide.__library_version__,
            "openslide_python": openslide.__version__,
            "pillow": PIL.__version__,
            "numpy": np.__version__,
        },
        "slide": {
            "level0_px": [args.size, args.size],
            "level0_mpp": L0_MPP,
            "level_downsamples": list(DOWNSAMPLES),
            "tile_px": TILE,
            "jpeg_quality": JPEG_QUALITY,
            "file_mb": round(file_mb, 1),
            "write_seconds": round(write_s, 1),
        },
        "target_mpp": TARGET_MPP,
        "patch_t": PATCH,
        "region_t": REGION,
        "batch_size": BATCH,
        "repeat_best_of": args.repeat,
        "results": results,
    }
    write_json_atomic(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
