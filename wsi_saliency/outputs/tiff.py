"""Pyramidal tiled TIFFs of heatmaps that open in slide viewers (OpenSlide "generic-tiff").

Layout: one tiled IFD per pyramid level, full size first, then each level halving (rounded up)
until its longer side is at most 512 px; reduced levels are marked ``NewSubfileType =
reduced-resolution`` (what OpenSlide's generic-tiff reader looks for). Tiles 256 x 256,
deflate compression with horizontal predictor, RGBA uint8 with unassociated alpha: the
heatmap's colours (``wsi_saliency.outputs.colour``), alpha 255 where scored, 0 where not.

Frame and scale: TIFF pixel (0, 0) is the slide's level-0 pixel (0, 0). Each heatmap cell
(d level-0 px) is drawn as ``cell_px`` x ``cell_px`` TIFF pixels (nearest neighbour), so one
TIFF pixel is ``d / cell_px`` level-0 px and ``d * slide_mpp / cell_px`` microns; that is
written as XResolution/YResolution in pixels per centimetre (ResolutionUnit = centimetre),
which OpenSlide reports as ``openslide.mpp-x/-y``. A viewer that aligns images by physical
size therefore lays the TIFF over the slide at the right place and scale, and the integer
upsampling keeps cell edges crisp instead of smearing one cell over its neighbours.
ImageDescription (level 0) is JSON naming the colour map, value range and frame.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.config import usable_cores
from wsi_saliency.outputs.atomic import atomic_path
from wsi_saliency.outputs.colour import ColourScale, colourise

TILE = 256
SMALLEST_LEVEL_SIDE = 512
TARGET_MPP = 4.0  # microns per TIFF pixel aimed at (about a 2.5x objective)
MAX_PIXELS = 1 << 28  # 268 M TIFF pixels at level 0 (about 1 GiB of RGBA before compression)


def choose_cell_px(
    hm_shape: tuple[int, int],
    l0_per_cell: float,
    slide_mpp: float,
    *,
    target_mpp: float = TARGET_MPP,
) -> int:
    """TIFF pixels per heatmap cell side: the integer nearest ``cell microns / target_mpp``
    (at least 1), reduced while the level-0 TIFF would exceed ``MAX_PIXELS``."""
    cell_um = l0_per_cell * slide_mpp
    k = max(1, round(cell_um / target_mpp))
    cells = max(1, hm_shape[0] * hm_shape[1])
    while k > 1 and cells * k * k > MAX_PIXELS:
        k -= 1
    return k


def pyramid_shapes(shape_rc: tuple[int, int]) -> list[tuple[int, int]]:
    """(rows, cols) of each level: halving (rounded up) until the longer side is <= 512."""
    shapes = [(int(shape_rc[0]), int(shape_rc[1]))]
    while max(shapes[-1]) > SMALLEST_LEVEL_SIDE:
        r, c = shapes[-1]
        shapes.append(((r + 1) // 2, (c + 1) // 2))
    return shapes


def _tiles(
    cells_rgba: np.ndarray, cell_px: int, shape_rc: tuple[int, int], step: int
) -> Iterator[np.ndarray]:
    """Tiles (row-major, each [TILE, TILE, 4]) of a level whose pixel is ``step`` level-0 TIFF
    pixels: pixel (r, c) shows the cell under its centre. Made a band of TILE rows at a time
    (one gather per band, RGBA pixels as single uint32s): memory of one band, not the level."""
    rows, cols = shape_rc
    cells = np.ascontiguousarray(cells_rgba, np.uint8).view(np.uint32)[..., 0]  # [H, W]
    cc = np.arange(cols)
    cell_c = np.minimum(((cc + 0.5) * step / cell_px).astype(np.int64), cells.shape[1] - 1)
    for r0 in range(0, rows, TILE):
        rr = np.arange(r0, min(r0 + TILE, rows))
        cell_r = np.minimum(((rr + 0.5) * step / cell_px).astype(np.int64), len(cells) - 1)
        band = np.zeros((TILE, -(-cols // TILE) * TILE), np.uint32)  # new: tiles may be queued
        band[: len(rr), :cols] = cells.take(cell_r, axis=0).take(cell_c, axis=1)
        for c0 in range(0, cols, TILE):
            # a copy: the writer compresses tiles in threads, after this generator moved on
            yield np.array(band[:, c0 : c0 + TILE]).view(np.uint8).reshape(TILE, TILE, 4)


def write_heatmap_tiff(
    path: str | Path,
    heatmap: np.ndarray,
    l0_per_cell: float,
    slide_mpp: float,
    scale: ColourScale,
    *,
    cell_px: int | None = None,
    description: dict[str, Any] | None = None,
) -> Path:
    """Write ``heatmap`` (float [H, W], NaN = not scored) as a pyramidal RGBA TIFF.

    ``l0_per_cell``: level-0 px per heatmap cell; ``slide_mpp``: level-0 microns per pixel;
    ``cell_px``: TIFF pixels per cell side (default :func:`choose_cell_px`). The level-0 TIFF
    is ``W * cell_px`` by ``H * cell_px`` px at ``l0_per_cell * slide_mpp / cell_px`` um/px,
    so it spans exactly the heatmap's level-0 extent. ``description``: extra JSON keys for
    ImageDescription. Written atomically.
    """
    import tifffile

    values = np.asarray(heatmap, np.float32)
    if values.ndim != 2:
        raise ValueError(f"heatmap must be 2-D [rows, cols], got shape {values.shape}")
    if values.size == 0:  # nothing scored: one transparent cell keeps the file valid
        values = np.full((1, 1), np.nan, np.float32)
    k = cell_px or choose_cell_px(values.shape, l0_per_cell, slide_mpp)
    if k < 1:
        raise ValueError(f"cell_px must be >= 1, got {k}")
    cells_rgba = colourise(values, scale)
    mpp = l0_per_cell * slide_mpp / k
    shapes = pyramid_shapes((values.shape[0] * k, values.shape[1] * k))
    meta = {
        "software": "wsi-saliency",
        "content": scale.label,
        "colour_map": scale.describe(),
        "alpha": "255 where scored, 0 where not scored",
        "mpp": mpp,
        "cell_px": k,
        "l0_per_cell": float(l0_per_cell),
        "l0_per_tiff_px": float(l0_per_cell) / k,
        "slide_mpp": float(slide_mpp),
        "heatmap_shape_rc": list(values.shape),
        "frame": "TIFF (x, y) * l0_per_tiff_px = slide level-0 (x, y); origins coincide",
        **(description or {}),
    }
    raw_bytes = sum(r * c * 4 for r, c in shapes)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=raw_bytes > 2**31) as tif:
        for level, shape in enumerate(shapes):
            step = shapes[0][1] / shape[1] if level else 1.0
            px_per_cm = 1e4 / (mpp * step)
            tif.write(
                _tiles(cells_rgba, k, shape, 1 << level),
                shape=(*shape, 4),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                extrasamples=("unassalpha",),
                compression="zlib",
                predictor=True,
                maxworkers=usable_cores(),  # tiles compressed in threads (zlib frees the GIL)
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                description=json.dumps(meta) if level == 0 else None,
                metadata=None,
                software="wsi-saliency",
            )
    return Path(path)
