"""Benchmark: how many pixels a scan reads for the patches it scores (no model, no timing).

For each slide at hand, the scan's layout (default ``ScanConfig``, 96 px patches at
0.972 um/px) and three plans of what is read, as target-plane pixels over the scored patches'
pixels (1.0: nothing but the patches):

- ``blocks``: one region per block of ``scan.region`` (1,024) px, the bounding box of its
  patches (how the scan read before regions were split);
- ``regions``: ``plan_regions`` as the scan reads now (blocks split where that reads fewer
  pixels);
- ``dense_resnet50``: the dense Grad-CAM map's tiles for ResNet50 (64 px margins of context,
  blocks of 2,048 px), every patch computed densely.

Slides: the repository's sample slide, ``../shared/data/slides/CMU-1-Small-Region.svs``
(skipped with a reason when absent) and the benchmark slides cached by ``bench_peers.py``
(the CMU region tiled 4 x 4) and ``make_large_slides.py`` (25k x 25k), when written.
Results go to ``benchmarks/results/regions.json``.

    python benchmarks/bench_regions.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _machine import machine_end, machine_start, write_json_atomic  # noqa: E402

CACHE = Path.home() / ".cache" / "wsi-saliency" / "bench-slides"
SLIDES = {
    "sample_slide": REPO / "sample_data" / "slide" / "sample_slide.tif",
    "CMU-1-Small-Region": REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs",
    "CMU-1-Small-Region tiled 4 x 4": CACHE / "CMU-1-Small-Region-4x4.svs",
    "c16-25k": CACHE / "c16-25k.tif",
}
RESNET50_MARGIN = 64  # dense_margin of ResNet50's conv5 at 96 px patches (stride 32)


def block_pixels(grid, region_t: int) -> tuple[int, int]:
    """Blocks and the pixels they read with one bounding box each (no splitting)."""
    k = max(1, (region_t - grid.patch_t) // grid.stride_t + 1)
    keys = grid.grid_rc // k
    blocks = np.unique(keys, axis=0)
    total = 0
    for key in blocks:
        xy = grid.t_xy[(keys == key).all(axis=1)]
        w, h = xy.max(axis=0) + grid.patch_t - xy.min(axis=0)
        total += int(w) * int(h)
    return len(blocks), total


def measure(path: Path) -> dict:
    from wsi_saliency.config import ScanConfig
    from wsi_saliency.model.bundled import resolve_model
    from wsi_saliency.model.io import read_card
    from wsi_saliency.scan.dense import dense_tile_side
    from wsi_saliency.scan.pipeline import lay_out_slide
    from wsi_saliency.slide.loader import plan_regions

    cfg = ScanConfig()
    grid = lay_out_slide(path, read_card(resolve_model(None)[0]), cfg).grid
    patch_px = len(grid) * grid.patch_t**2
    regions = plan_regions(grid, cfg.region)
    dense = plan_regions(
        grid, dense_tile_side(RESNET50_MARGIN, cfg.region), margin_t=RESNET50_MARGIN
    )

    def ratio(px: int) -> float:
        return round(px / patch_px, 3)

    n_blocks, block_px = block_pixels(grid, cfg.region)
    return {
        "patches": len(grid),
        "blocks": {"n": n_blocks, "read_over_patch_px": ratio(block_px)},
        "regions": {
            "n": len(regions),
            "read_over_patch_px": ratio(sum(r.t_wh[0] * r.t_wh[1] for r in regions)),
        },
        "dense_resnet50": {
            "n": len(dense),
            "read_over_patch_px": ratio(sum(r.t_wh[0] * r.t_wh[1] for r in dense)),
        },
    }


def main() -> None:
    start = machine_start()
    slides, skipped = {}, {}
    for name, path in SLIDES.items():
        if not path.is_file():
            skipped[name] = f"no {path}"
            print(f"skipped {name}: no {path}")
            continue
        slides[name] = {"path": str(path), **measure(path)}
        print(name, json.dumps(slides[name]))
    out = REPO / "benchmarks" / "results" / "regions.json"
    write_json_atomic(
        out,
        {
            "benchmark": "pixels read over pixels scored: blocks, split regions, dense tiles",
            "command": "python benchmarks/bench_regions.py",
            "slides": slides,
            "skipped": skipped,
            "machine": machine_end(start, {}),
        },
    )
    print(f"-> {out}")


if __name__ == "__main__":
    main()
