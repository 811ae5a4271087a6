"""Write Camelyon16-like benchmark slides (up to 98,304 x 221,184 px) into a cache outside the repo.

Each slide is a JPEG tiled TIFF (512-px tiles) at 0.243 um/px (X/YResolution in pixels per
centimetre, so OpenSlide reports ``openslide.mpp-x`` = 0.243) with about 25 % tissue in five
irregular fragments on glass. Pyramidal slides carry reduced levels, each half the previous
(rounded up), down to the first under 1,024 px, as further pages of the main IFD with
``subfiletype=1`` (what OpenSlide's generic-tiff reader needs, see
``wsi_saliency/synthetic/slides.py``); the ``-flat`` variant has level 0 only.

Writing streams tiles and never holds a level: H&E-like texture comes from a pool of
``--pool`` tiles rendered once with ``render_tissue`` and JPEG-encoded once; a level-0 tile
is the pool's encoded bytes (tissue), the encoded glass tile, or, on a fragment's outline,
a pool tile composited with the outline's mask and encoded. A reduced level's tile is a
mosaic of the pool tiles area-downsampled by the level's factor (outline pieces composited
with the outline rasterised at that level), so every level is computed from tiles.

Slides that exist are skipped; write times and the machine go to ``--json``
(``benchmarks/results/large_slides.json``), merged by slide name:

    python benchmarks/make_large_slides.py                 # all four slides
    python benchmarks/make_large_slides.py --only c16-25k c16-50kx100k-flat
    python benchmarks/make_large_slides.py --cache /data/bench-slides

The cache is ``--cache``, else ``$WSI_SALIENCY_CACHE/bench-slides``, else
``~/.cache/wsi-saliency/bench-slides``. Written as a hidden file, renamed when complete.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _machine import machine_end, machine_start, warn_if_contended_at_start, write_json_atomic

MPP = 0.243
TILE = 512
SMALLEST_SIDE = 1024
JPEG_QUALITY = 90
TISSUE_FRACTION = 0.25
FRAGMENTS = 5
COVERAGE_SAMPLES = 8  # outline test: samples per tile side


@dataclass(frozen=True)
class SlideSpec:
    name: str
    size_wh: tuple[int, int]
    pyramid: bool
    seed: int


SLIDES = (
    SlideSpec("c16-25k", (25_000, 25_000), True, 25),
    SlideSpec("c16-50kx100k", (50_000, 100_000), True, 50),
    SlideSpec("c16-98kx221k", (98_304, 221_184), True, 98),
    SlideSpec("c16-50kx100k-flat", (50_000, 100_000), False, 50),  # same layout as the pyramid
)


def default_cache() -> Path:
    base = os.environ.get("WSI_SALIENCY_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "wsi-saliency"
    return root / "bench-slides"


def require_slide(path: Path) -> Path:
    """``path``, or exit saying how to write it (benchmarks that read a cached slide)."""
    if not path.is_file():
        sys.exit(
            f"skipped: {path} does not exist; write it with "
            "python benchmarks/make_large_slides.py (or pass --slide)"
        )
    return path


def level_sizes(size_wh: tuple[int, int], pyramid: bool) -> list[tuple[int, int]]:
    """``(w, h)`` of every level: halving (rounded up) until the longer side is under 1,024."""
    sizes = [size_wh]
    while pyramid and max(sizes[-1]) >= SMALLEST_SIDE:
        w, h = sizes[-1]
        sizes.append(((w + 1) // 2, (h + 1) // 2))
    return sizes


def _jpeg_common() -> dict:
    return dict(
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": JPEG_QUALITY},
        resolutionunit="CENTIMETER",
        metadata=None,
    )


def encode_tile(tile: np.ndarray) -> bytes:
    """The JPEG bytes tifffile writes for ``tile`` (uint8 [512, 512, 3]) with our options."""
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tw:
        tw.write(tile, tile=(TILE, TILE), **_jpeg_common())
    data = buf.getvalue()
    with tifffile.TiffFile(io.BytesIO(data)) as tf:
        page = tf.pages[0]
        offset, count = page.dataoffsets[0], page.databytecounts[0]
    return data[offset : offset + count]


def area_downsample(tile: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of a [512, 512, 3] tile, rounded to uint8."""
    s = tile.shape[0] // factor
    blocks = tile.reshape(s, factor, s, factor, 3).mean(axis=(1, 3), dtype=np.float32)
    return np.rint(blocks).astype(np.uint8)


class Layout:
    """Where tissue is: per level-0 tile, glass (-1), tissue (a pool index) or outline."""

    def __init__(self, spec: SlideSpec, pool: int) -> None:
        from wsi_saliency.data.annotations import rasterize
        from wsi_saliency.synthetic.slides import make_tissue_polygons

        w, h = spec.size_wh
        rng = np.random.default_rng([spec.seed, 7])
        self.polygons = make_tissue_polygons(
            (w, h), rng, tissue_fraction=TISSUE_FRACTION, n_blobs=FRAGMENTS
        )
        self.boxes = [(p.min(axis=0), p.max(axis=0)) for p in self.polygons]
        self.ntx, self.nty = math.ceil(w / TILE), math.ceil(h / TILE)
        n = COVERAGE_SAMPLES
        cover = rasterize(self.polygons, (self.nty * n, self.ntx * n), TILE / n)
        frac = cover.reshape(self.nty, n, self.ntx, n).mean(axis=(1, 3))
        self.pool_index = rng.integers(0, pool, (self.nty, self.ntx)).astype(np.int32)
        self.pool_index[frac == 0] = -1  # glass
        self.outline = (frac > 0) & (frac < 1)
        self.tissue_fraction = float(frac.sum() * TILE * TILE / (w * h))

    def near(self, x0: float, y0: float, x1: float, y1: float) -> list[np.ndarray]:
        return [
            p
            for p, (lo, hi) in zip(self.polygons, self.boxes, strict=True)
            if lo[0] < x1 and hi[0] > x0 and lo[1] < y1 and hi[1] > y0
        ]

    def outline_mask(self, r: int, c: int, factor: int) -> np.ndarray:
        """bool [512 / factor]^2: tissue in level-0 tile (r, c), rasterised at ``factor``."""
        from wsi_saliency.data.annotations import rasterize

        x0, y0 = c * TILE, r * TILE
        s = TILE // factor
        polys = self.near(x0, y0, x0 + TILE, y0 + TILE)
        return rasterize(polys, (s, s), float(factor), origin_xy=(x0, y0))


def render_pool(n: int, seed: int) -> list[np.ndarray]:
    """``n`` H&E-like tissue tiles (different places of one texture world) at ``MPP``."""
    from wsi_saliency.synthetic.tissue import render_tissue

    rng = np.random.default_rng([seed, 11])
    return [
        render_tissue(
            (TILE, TILE),
            MPP,
            None,
            rng,
            origin_xy=(i * 3 * TILE, (i % 5) * 7 * TILE),
            texture_seed=seed,
        )
        for i in range(n)
    ]


def level0_tiles(layout: Layout, pool: list[np.ndarray], glass: np.ndarray) -> Iterator[bytes]:
    """Encoded level-0 tiles in row-major order (pool and glass bytes reused)."""
    pool_bytes = [encode_tile(t) for t in pool]
    glass_bytes = encode_tile(glass)
    for r in range(layout.nty):
        for c in range(layout.ntx):
            i = int(layout.pool_index[r, c])
            if i < 0:
                yield glass_bytes
            elif not layout.outline[r, c]:
                yield pool_bytes[i]
            else:
                mask = layout.outline_mask(r, c, 1)
                yield encode_tile(np.where(mask[..., None], pool[i], glass))


def reduced_tiles(
    layout: Layout, pool: list[np.ndarray], glass: np.ndarray, level: int, size_wh: tuple[int, int]
) -> Iterator[np.ndarray]:
    """Tiles (uint8 [512, 512, 3], row-major) of the level ``2**level`` times smaller:
    mosaics of downsampled pool tiles, one piece per level-0 tile."""
    f = 1 << level
    s = TILE // f
    if s < 1:
        raise ValueError(f"level {level}: a level-0 tile would be under one pixel")
    pieces = np.stack([area_downsample(t, f) for t in [*pool, glass]])  # glass is the last
    glass_i = len(pool)
    ntx, nty = math.ceil(size_wh[0] / TILE), math.ceil(size_wh[1] / TILE)
    index = np.full((nty * f, ntx * f), glass_i, np.int32)
    outline = np.zeros(index.shape, bool)
    pi = layout.pool_index
    index[: pi.shape[0], : pi.shape[1]] = np.where(pi < 0, glass_i, pi)
    outline[: pi.shape[0], : pi.shape[1]] = layout.outline
    for r in range(nty):
        for c in range(ntx):
            block = index[r * f : (r + 1) * f, c * f : (c + 1) * f]
            mosaic = pieces[block].transpose(0, 2, 1, 3, 4).reshape(TILE, TILE, 3)
            rows, cols = np.nonzero(outline[r * f : (r + 1) * f, c * f : (c + 1) * f])
            for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
                rr, cc = r * f + i, c * f + j
                mask = layout.outline_mask(rr, cc, f)
                piece = np.where(mask[..., None], pieces[index[rr, cc]], pieces[glass_i])
                mosaic[i * s : (i + 1) * s, j * s : (j + 1) * s] = piece
            yield mosaic


def write_slide(spec: SlideSpec, path: Path, pool_size: int, workers: int) -> dict:
    """Write ``spec`` to ``path`` (hidden name, renamed when complete); what was written."""
    import tifffile

    from wsi_saliency.synthetic.tissue import GLASS_RGB

    t0 = time.perf_counter()
    layout = Layout(spec, pool_size)
    pool = render_pool(pool_size, spec.seed)
    glass = np.empty((TILE, TILE, 3), np.uint8)
    glass[:] = GLASS_RGB
    t_layout = time.perf_counter() - t0
    sizes = level_sizes(spec.size_wh, spec.pyramid)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    level_s = []
    res = 1e4 / MPP  # pixels per centimetre
    try:
        with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            for level, (w, h) in enumerate(sizes):
                t = time.perf_counter()
                f = 1 << level
                tiles = (
                    level0_tiles(layout, pool, glass)
                    if level == 0
                    else reduced_tiles(layout, pool, glass, level, (w, h))
                )
                tw.write(
                    tiles,
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(TILE, TILE),
                    resolution=(res / f, res / f),
                    subfiletype=0 if level == 0 else 1,
                    maxworkers=workers,
                    **_jpeg_common(),
                )
                level_s.append(round(time.perf_counter() - t, 2))
                print(f"  {spec.name}: level {level} {w} x {h} in {level_s[-1]} s", flush=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(path),
        "size_wh": list(spec.size_wh),
        "pixels": spec.size_wh[0] * spec.size_wh[1],
        "pyramid": spec.pyramid,
        "levels_wh": [list(s) for s in sizes],
        "mpp": MPP,
        "tile": TILE,
        "jpeg_quality": JPEG_QUALITY,
        "tissue_fraction": round(layout.tissue_fraction, 4),
        "fragments": len(layout.polygons),
        "level0_tiles": {
            "glass": int((layout.pool_index < 0).sum()),
            "tissue": int(((layout.pool_index >= 0) & ~layout.outline).sum()),
            "outline": int(layout.outline.sum()),
        },
        "pool_tiles": pool_size,
        "file_bytes": path.stat().st_size,
        "layout_and_pool_s": round(t_layout, 2),
        "level_write_s": level_s,
        "write_s": round(time.perf_counter() - t0, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=None, help="folder for the slides")
    ap.add_argument("--only", nargs="+", choices=[s.name for s in SLIDES], help="these slides")
    ap.add_argument("--pool", type=int, default=24, help="rendered tissue tiles to reuse")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="JPEG threads")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results/large_slides.json"))
    args = ap.parse_args()
    cache = args.cache or default_cache()
    cache.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    records = dict(previous.get("slides", {}))
    for spec in SLIDES:
        if args.only and spec.name not in args.only:
            continue
        path = cache / f"{spec.name}.tif"
        if path.is_file():
            print(f"{spec.name}: exists ({path}), skipped", flush=True)
            records.setdefault(spec.name, {"path": str(path), "note": "written earlier"})
            continue
        print(f"{spec.name}: writing {path}", flush=True)
        start = machine_start()
        warn_if_contended_at_start(start)
        records[spec.name] = write_slide(spec, path, args.pool, args.workers)
        records[spec.name]["machine"] = machine_end(start, _versions())
        print(f"{spec.name}: {records[spec.name]['write_s']} s", flush=True)
        write_json_atomic(
            args.json, {"benchmark": "make_large_slides", "cache": str(cache), "slides": records}
        )
    write_json_atomic(
        args.json, {"benchmark": "make_large_slides", "cache": str(cache), "slides": records}
    )


def _versions() -> dict:
    import imagecodecs
    import tifffile

    return {"tifffile": tifffile.__version__, "imagecodecs": imagecodecs.__version__}


if __name__ == "__main__":
    sys.exit(main())
