"""The slide-level Grad-CAM map without the patch grid: Grad-CAM on dense features.

Per-patch Grad-CAM maps, stitched side by side, show the patch grid: near its border a
patch's features see zero padding instead of the neighbouring tissue, so every map falls
toward zero there and a lesion reads as a checkerboard. Here the layers up to the Grad-CAM
layer run once over whole tiles of the slide (blocks of grid patches read with a margin of
context), each scored patch's map is cut from those features (its *footprint*) and weighted as
Grad-CAM weights it (:class:`~wsi_saliency.model.gradcam.DenseGradCam`), and the maps are
stitched on the feature lattice, then resampled to the heatmap cells. With the default head
(GAP + one Dense unit) the result is the class activation map ``ReLU(sum_k w_k A_k) / (h w)``
evaluated densely: the per-patch formula and scale, without the borders.

Probabilities are not touched: they come from the per-patch pass, as before. Tiles are read a
second time (in background threads) and the backbone runs a second time over them, so this
costs about one more forward pass over the scored tissue plus the margins.

Frames: tiles are boxes of the target plane (the model's resolution); feature cell ``[i, j]``
of the slide covers target pixels ``[i s, (i + 1) s) x [j s, (j + 1) s)`` with ``s`` the
feature stride, so every tile's lattice is the slide's (tile origins are multiples of ``s``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wsi_saliency.errors import SlideError

__all__ = [
    "DenseMap",
    "dense_margin",
    "dense_rows",
    "dense_slide_map",
    "dense_tile_side",
    "dense_tiles",
]


class DenseMap(NamedTuple):
    """The slide's dense Grad-CAM map: ``heatmap`` float32 [H, W] ([row, col], NaN where not
    scored) with ``l0_per_cell`` level-0 px per cell, ``timings`` (s), and how many patches
    were computed densely (``n_dense``) in how many tiles (``n_tiles``)."""

    heatmap: np.ndarray
    l0_per_cell: float
    timings: dict[str, float]
    n_dense: int
    n_tiles: int


def dense_margin(receptive_field: int, stride: int, patch_t: int) -> int:
    """Context read around each tile, in target px: half the receptive field (so a feature
    cell at the tile's edge sees the same pixels as inside one big region), capped at half a
    patch (ResNet50's theoretical field is 483 px, its effective one far smaller), rounded up
    to whole feature cells."""
    half = min(math.ceil(receptive_field / 2), math.ceil(patch_t / 2))
    return int(math.ceil(half / stride) * stride)


def dense_tile_side(margin_t: int, region_t: int = 1024) -> int:
    """Target px per side of the blocks tiles are planned in: at least 32 margins, so that the
    context read around a full tile adds at most about 1/8 to its area (the tiny backbone's
    24 px margins: 768 px; ResNet50's 64 px: 2048 px, about 2 GB of activations on a CPU), and
    at least half the read region ``scan.region`` (raise it on a GPU for bigger tiles)."""
    return max(int(region_t) // 2, 32 * int(margin_t))


def dense_tiles(grid, dense, region_t: int = 1024, rows: np.ndarray | None = None) -> list:
    """The tiles :func:`dense_slide_map` reads for ``grid`` (or its ``rows``) with ``dense`` (a
    ``DenseGradCam``): the scan's own reading regions (``wsi_saliency.slide.loader.
    plan_regions``) in blocks of :func:`dense_tile_side`, each grown by a margin from the
    receptive field, so a cell at a tissue edge sees the slide there, glass, not the layers'
    zero padding, and the map does not depend on the tiling. ``grid.stride_t`` and
    ``grid.patch_t`` must be multiples of ``dense.stride`` (checked by the caller), and so is
    the margin: every tile's origin and size are on the slide's feature lattice."""
    from wsi_saliency.slide.loader import plan_regions

    margin = dense_margin(dense.receptive_field, dense.stride, grid.patch_t)
    return plan_regions(grid, dense_tile_side(margin, region_t), margin_t=margin, rows=rows)


def dense_rows(grid, patch_cams: np.ndarray, dense_min: float) -> np.ndarray:
    """The grid rows whose map is computed densely: patches whose own Grad-CAM map reaches
    ``dense_min`` of the slide's scale (the 99.5th percentile of the per-patch map values, as
    the colour scale of ``wsi_saliency.outputs.colour.gradcam_scale``) and their 8 neighbours
    on the grid (a seam lies between two patches; the cold side's border cells can be warm).

    Everywhere else a patch's map is zero or below ``dense_min`` of the scale in every cell, so
    its per-patch map (grid and all) is kept: drawn with the slide's one scale it is black.
    ``dense_min`` 0 selects every patch. A PCam model's map of normal tissue is mostly zero
    (ReLU of negative evidence), so on a slide with small lesions the dense pass reads little."""
    n = len(grid)
    if n == 0 or dense_min <= 0:
        return np.arange(n)
    peak = patch_cams.reshape(n, -1).max(axis=1)
    scale = float(np.percentile(patch_cams, 99.5))
    # a scale of 0 (warm cells under 0.5 %) saturates every positive cell: all of them count
    hot = peak >= dense_min * scale if scale > 0 else peak > 0
    if not hot.any():
        return np.flatnonzero(hot)
    rows_, cols_ = grid.grid_shape
    plane = np.zeros((rows_ + 2, cols_ + 2), bool)
    r, c = grid.grid_rc[hot, 0] + 1, grid.grid_rc[hot, 1] + 1
    for dr in (-1, 0, 1):
        for dc in (-1, 0, 1):
            plane[r + dr, c + dc] = True
    return np.flatnonzero(plane[grid.grid_rc[:, 0] + 1, grid.grid_rc[:, 1] + 1])


def _iter_tile_images(
    open_reader: Callable,
    plan,
    tiles: list,
    workers: int,
    resample: str = "lanczos",
    path: str | None = None,
) -> Iterator[tuple[object, np.ndarray]]:
    """``(tile, uint8 [h, w, 3] target-plane image)`` in tile order; reads run on ``workers``
    threads (each with its own reader), or in the scan's reading processes when the slide's
    ``path`` is given, at most ``2 * workers`` tiles ahead."""
    from wsi_saliency.slide.loader import read_target_in_process, read_target_region, reading_pool

    def error(tile, exc: BaseException) -> SlideError:
        x, y, w, h = tile.l0_box(plan.l0_per_t)
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return SlideError(
            f"reading the region at level-0 ({x}, {y}) size {w}x{h} (level {plan.level}) "
            f"for the Grad-CAM map failed: {msg}"
        )

    if workers <= 0:
        with open_reader() as reader:
            for tile in tiles:
                try:
                    image = read_target_region(reader, plan, tile, resample)
                except Exception as exc:
                    raise error(tile, exc) from exc
                yield tile, image
        return

    local = threading.local()
    readers: list = []
    lock = threading.Lock()

    def read(tile):
        reader = getattr(local, "reader", None)
        if reader is None:
            reader = local.reader = open_reader()
            with lock:
                readers.append(reader)
        return read_target_region(reader, plan, tile, resample)

    if path is None:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-saliency-dense")
        submit = lambda tile: pool.submit(read, tile)  # noqa: E731
    else:  # the pool is shared (started once): not shut down here
        procs = reading_pool(workers)
        submit = lambda tile: procs.submit(read_target_in_process, path, plan, tile, resample)  # noqa: E731
    pending: deque = deque()
    queue = iter(tiles)
    try:
        for tile in queue:
            pending.append((tile, submit(tile)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            tile, future = pending.popleft()
            try:
                image = future.result()
            except Exception as exc:
                raise error(tile, exc) from exc
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, submit(nxt)))
            yield tile, image
    finally:
        for _, future in pending:
            future.cancel()
        if path is None:
            pool.shutdown(wait=True)
        for reader in readers:
            try:
                reader.close()
            except Exception:  # noqa: BLE001, S110 - closing must not mask the real outcome
                pass


def _tile_cams(dense, image: np.ndarray, offsets: np.ndarray, tta: bool) -> np.ndarray:
    """Grad-CAM maps [n, h, w] of the patches at feature-cell ``offsets`` [n, 2] (x, y) of a
    tile; with ``tta`` the mean over the 8 dihedral views of the tile (maps re-aligned)."""
    from wsi_saliency.evaluation import dihedral
    from wsi_saliency.scan.pipeline import undo_dihedral

    h, w = dense.map_shape
    views = range(8) if tta else (0,)
    total = None
    for k in views:
        feats = dense.features(dihedral(image[None], k)[0] if k else image)
        if k:
            feats = undo_dihedral(feats[None], k)[0]
        footprints = np.stack([feats[oy : oy + h, ox : ox + w] for ox, oy in offsets])
        cams = dense.footprint_cams(footprints).astype(np.float64)
        total = cams if total is None else total + cams
    return (total / len(views)).astype(np.float32)


def dense_slide_map(
    open_reader: Callable,
    plan,
    grid,
    dense,
    cells_per_patch: int,
    *,
    region_t: int = 1024,
    workers: int = 2,
    tta: bool = False,
    sigma_scale: float | None = None,
    progress: str | None = None,
    patch_cams: np.ndarray | None = None,
    dense_min: float = 0.0,
    slide_path: str | Path | None = None,
) -> DenseMap:
    """The slide's Grad-CAM heatmap from dense features (a :class:`DenseMap`). The heatmap has
    the shape, frame and cells of the per-patch ``MapStitcher.from_grid(grid, cells_per_patch)``
    map (NaN where no patch was scored).

    ``patch_cams``: the per-patch maps [N, h, w] (grid order) of the scan; with ``dense_min``
    > 0 only the patches :func:`dense_rows` selects are computed densely, the others keep
    these maps. Without them every patch is computed densely.

    ``dense``: a :class:`~wsi_saliency.model.gradcam.DenseGradCam`; ``grid.patch_t`` and
    ``grid.stride_t`` must be multiples of its ``stride``. Overlapping patches (stride < patch)
    are averaged on the feature lattice (with Gaussian weights when ``sigma_scale`` is set).
    ``progress``: a progress bar's label (patches done), or None for none. ``slide_path``:
    read the tiles in the reading processes (``wsi_saliency.slide.loader``) from this file
    instead of in threads from ``open_reader``.
    """
    from tqdm import tqdm

    from wsi_saliency.scan.stitch import MapStitcher, covered_cells, resize_heatmap

    s = dense.stride
    covered, l0_per_cell = covered_cells(grid, cells_per_patch)  # checks the stride first
    rows = np.arange(len(grid))
    if patch_cams is not None:
        rows = dense_rows(grid, patch_cams, dense_min)
    tiles = dense_tiles(grid, dense, region_t, rows)
    lattice = MapStitcher(
        grid.grid_shape,
        dense.map_shape[0],
        grid.stride_t // s,
        sigma_scale=sigma_scale,
        l0_per_cell=grid.l0_per_t * s,
    )
    model_s = 0.0
    t0 = time.perf_counter()
    kept = np.setdiff1d(np.arange(len(grid)), rows)
    if len(kept):  # patches whose map is all but zero: their per-patch maps, as they are
        lattice.aggregate(patch_cams[kept], grid.grid_rc[kept])
    bar = tqdm(total=len(rows), desc=progress, unit="patch", disable=progress is None, leave=False)
    try:
        path = None if slide_path is None else str(slide_path)
        for tile, image in _iter_tile_images(open_reader, plan, tiles, workers, path=path):
            offsets = (grid.t_xy[tile.index] - np.asarray(tile.t_xy)) // s
            tm = time.perf_counter()
            cams = _tile_cams(dense, image, offsets, tta)
            model_s += time.perf_counter() - tm
            rc = grid.grid_rc[tile.index]
            lattice.aggregate(cams, rc)
            bar.update(len(rc))
    finally:
        bar.close()
    heatmap = resize_heatmap(lattice.finalize(), covered.shape)
    heatmap[~covered] = np.nan
    timings = {"gradcam_map_s": time.perf_counter() - t0, "gradcam_map_model_s": model_s}
    return DenseMap(heatmap, l0_per_cell, timings, len(rows), len(tiles))
