"""Reading alone: patches/s against workers, threads against processes, at three resolutions.

Reads the tissue patches of a region of interest of the largest Camelyon16-like benchmark
slide (``make_large_slides.py``: 98,304 x 221,184 px, 0.243 um/px, JPEG tiles of 512 px,
levels by 2) at PatchCamelyon's 0.972 um/px, three ways:

- ``0.972``: level 2 (0.972 um/px) read as is;
- ``0.486``: level 1 read and resampled by 1/2 (Lanczos, the scan's default);
- ``0.243``: level 0 read and resampled by 1/4 (16x the pixels of the direct read to decode);

each with 1 and 2 workers, as threads and as processes (the scan's ``iter_patch_batches``
with ``processes`` off or on: one OpenSlide handle per thread, or per process with the
patches sent back pickled; the process pool is started in the warm-up round, as a cohort
starts it once), plus the calling thread alone (``workers=0``). No model runs. Rounds are
interleaved (every case once per round); the best of ``--rounds`` is kept. Per-worker rates
and the 2-worker scaling are what the README's 16-core projection is built from. Results go
to ``benchmarks/results/reading.json``.

    python benchmarks/make_large_slides.py        # once: writes the slides into the cache
    python benchmarks/bench_reading.py [--patches 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import (  # noqa: E402
    machine_end,
    machine_start,
    warn_if_contended_at_start,
    write_json_atomic,
)
from make_large_slides import default_cache, require_slide  # noqa: E402

from wsi_saliency.slide import iter_patch_batches, open_slide, plan_resolution, tile_grid  # noqa: E402
from wsi_saliency.slide.loader import plan_regions  # noqa: E402

TARGET_MPP = 0.972
PATCH = 96
REGION = 1024
BATCH = 64
LEVELS = {0.972: 2, 0.486: 1, 0.243: 0}  # source um/px -> level of the benchmark slide


def roi_grid(path: Path, n_patches: int):
    """The tissue patches of the first whole reading regions (row-major) that hold about
    ``n_patches``: a region of interest inside the tissue, the same for every case."""
    from wsi_saliency.slide.tissue import slide_thumbnail, tissue_mask

    with open_slide(path) as reader:
        plan = plan_resolution(reader, TARGET_MPP)
        thumb = slide_thumbnail(reader, l0_mpp=plan.l0_mpp)
        mask = tissue_mask(thumb.image, thumb_mpp=thumb.mpp)
        grid = tile_grid(
            reader.dimensions,
            plan,
            PATCH,
            PATCH,
            mask=mask,
            mask_l0_per_px=thumb.l0_per_px,
            cover_edges=True,
        )
    regions = plan_regions(grid, REGION)
    full = [r for r in regions if len(r.index) >= 90]  # whole 10 x 10 blocks of tissue
    picked, n = [], 0
    for r in full:
        picked.append(r.index)
        n += len(r.index)
        if n >= n_patches:
            break
    return grid.subset(np.sort(np.concatenate(picked)))


def time_reading(path: Path, plan, grid, *, repeat: int, **kwargs) -> tuple[int, float]:
    """``(patches, seconds)``: every patch of ``grid`` read with ``iter_patch_batches`` (no
    model; ``kwargs`` go to it), the best of ``repeat`` runs (``bench_scan.py`` uses it)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        n = 0
        for batch in iter_patch_batches(path, plan, grid, **kwargs):
            n += len(batch)
        best = min(best, time.perf_counter() - t0)
    return n, best


def read_patches(path: Path, level: int, grid, workers: int, processes: bool) -> int:
    """Every patch of ``grid`` through ``iter_patch_batches``, as the scan reads them."""
    with open_slide(path) as reader:
        plan = plan_resolution(reader, TARGET_MPP, force_level=level)
    n, _ = time_reading(
        path,
        plan,
        grid,
        repeat=1,
        batch_size=BATCH,
        region_t=REGION,
        workers=workers,
        processes=processes,
    )
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=default_cache() / "c16-98kx221k.tif")
    ap.add_argument("--patches", type=int, default=2000, help="patches in the region of interest")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best kept")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "reading.json")
    args = ap.parse_args()
    require_slide(args.slide)

    import openslide
    import PIL

    start = machine_start()
    warn_if_contended_at_start(start)
    grid = roi_grid(args.slide, args.patches)
    x0, y0 = grid.l0_xy.min(axis=0)
    x1, y1 = grid.l0_xy.max(axis=0) + round(grid.patch_l0)
    print(f"region of interest: {len(grid)} patches in level-0 ({x0}, {y0})-({x1}, {y1})")

    cases = []
    for src_mpp, level in LEVELS.items():
        cases.append((src_mpp, level, "calling thread", 0))
        for workers in (1, 2):
            cases.append((src_mpp, level, "threads", workers))
            cases.append((src_mpp, level, "processes", workers))
    best: dict[tuple, float] = {}
    main_cpu: dict[tuple, float] = {}  # CPU seconds of this process (its threads included)
    for rnd in range(args.rounds + 1):  # round 0 warms the page cache and starts the pools
        for src_mpp, level, kind, workers in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            n = read_patches(args.slide, level, grid, workers, kind == "processes")
            dt, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert n == len(grid), (n, len(grid))
            if rnd:
                key = (src_mpp, kind, workers)
                if dt < best.get(key, float("inf")):
                    main_cpu[key] = cpu
                best[key] = min(best.get(key, float("inf")), dt)
                print(f"round {rnd}: {src_mpp} um/px {kind} x{workers}: {n / dt:.0f} patches/s")

    results = []
    for (src_mpp, kind, workers), dt in best.items():
        level = LEVELS[src_mpp]
        one = best.get((src_mpp, kind, 1))
        row = {
            "source_mpp": src_mpp,
            "level": level,
            "resampled": level != 2,
            "kind": kind,
            "workers": workers,
            "patches": len(grid),
            "seconds": round(dt, 3),
            "patches_per_s": round(len(grid) / dt, 1),
            "source_megapixels_per_s": round(
                len(grid) * (PATCH * 2 ** (2 - level)) ** 2 / dt / 1e6, 1
            ),
        }
        # with processes, this process only unpickles and batches: its CPU time per patch is
        # the ceiling on what any number of reading processes can deliver through it
        row["this_process_cpu_s"] = round(main_cpu[src_mpp, kind, workers], 3)
        if kind == "processes":
            row["this_process_ceiling_patches_per_s"] = round(
                len(grid) / max(main_cpu[src_mpp, kind, workers], 1e-9), 1
            )
        if workers == 2 and one:
            row["speedup_over_1_worker"] = round(one / dt, 2)
            row["scaling_efficiency"] = round(one / dt / 2, 2)
        results.append(row)
    report = {
        "benchmark": "bench_reading",
        "command": "python benchmarks/bench_reading.py " + " ".join(sys.argv[1:]),
        "slide": str(args.slide),
        "roi_l0_xyxy": [int(x0), int(y0), int(x1), int(y1)],
        "target_mpp": TARGET_MPP,
        "patch_t": PATCH,
        "region_t": REGION,
        "batch_size": BATCH,
        "rounds_best_of": args.rounds,
        "results": results,
        "machine": machine_end(
            start,
            {
                "openslide": openslide.__library_version__,
                "openslide_python": openslide.__version__,
                "pillow": PIL.__version__,
                "numpy": np.__version__,
            },
        ),
    }
    write_json_atomic(args.out, report)
    print(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
