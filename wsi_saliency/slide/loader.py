"""Patches for the model: read big regions, resample once, cut into patches, in threads.

The kept patches of a :class:`~wsi_saliency.slide.tiling.TileGrid` are grouped into square
blocks of about ``region_t`` target pixels. Each block that holds patches is read with ONE
``read_region`` at the plan's level (covering only the kept patches' bounding box, plus a
few pixels of filter margin), resampled to the target plane with Pillow's anti-aliased
``LANCZOS`` filter (``Image.resize`` with a fractional source ``box``, so every region lands
on exactly the same target-plane lattice), then cut into ``patch_t`` x ``patch_t`` patches.

Reads run on ``workers`` threads, each with its own reader from ``open_reader()`` (OpenSlide
handles are not shared between threads), or on ``workers`` processes (``processes=True``:
each opens the slide by its path once and sends the patches back pickled), and are handed
to the consumer through a bounded queue: at most ``queue_size`` decoded regions wait, plus
one per worker in flight, plus less than one batch in the consumer. Batches come in
completion order; every grid patch comes exactly once. Closing the generator early stops
the workers; a worker's exception reaches the consumer as a ``SlideError`` naming the slide
and the region.

Why processes: reading a level at the model's resolution as is (Camelyon16's level 2)
spends part of its time holding the GIL (Pillow's mode conversions, NumPy copies, cutting
patches: about a quarter of a region's 23 ms outside OpenSlide's decoding), so threads
scale less there: 1.65x on 2 workers against 1.73x for processes, which projects to about
15,000 against 46,000 patches/s on 16 cores (``benchmarks/bench_reading.py``). The process
pool is started once (spawned: the parent may hold TensorFlow's threads) and reused by
every later call with the same number of workers, so a cohort pays its start-up once.
"""

from __future__ import annotations

import atexit
import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.errors import InputError, SlideError

from .reader import SlideReader
from .resolution import ResolutionPlan
from .tiling import TileGrid

__all__ = [
    "RESAMPLE_FILTERS",
    "PatchBatch",
    "Region",
    "iter_patch_batches",
    "plan_regions",
    "read_region_patches",
    "read_target_region",
]

_JOIN_TIMEOUT_S = 60.0
_POLL_S = 0.05
RESAMPLE_FILTERS = ("lanczos", "bicubic", "bilinear", "box")


@dataclass
class PatchBatch:
    """``patches`` uint8 [B, P, P, 3] at the target resolution; ``index`` int64 [B]: grid rows."""

    patches: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.index.shape[0])


@dataclass(frozen=True)
class Region:
    """Grid block read at once: target-plane box ``t_xy``, ``t_wh``; grid rows ``index``."""

    t_xy: tuple[int, int]
    t_wh: tuple[int, int]
    index: np.ndarray

    def l0_box(self, l0_per_t: float) -> tuple[int, int, int, int]:
        """``(x, y, w, h)`` of the region in level-0 px (for messages)."""
        x, y = (round(v * l0_per_t) for v in self.t_xy)
        return x, y, round(self.t_wh[0] * l0_per_t), round(self.t_wh[1] * l0_per_t)


def plan_regions(
    grid: TileGrid,
    region_t: int = 1024,
    *,
    margin_t: int = 0,
    rows: np.ndarray | None = None,
) -> list[Region]:
    """Regions that read every patch of ``grid`` (or its ``rows``) once, reading as few pixels
    as they can.

    The grid is cut into blocks of ``k x k`` positions (``k``: as many strides as fit in
    ``region_t`` with the margins), in row-major order of the blocks; a block's region is the
    bounding box of its patches grown by ``margin_t`` target px on every side (the dense
    Grad-CAM map's context; 0 for the scan's reads). A region is split in two (recursively)
    where that reads fewer pixels, margins included: tissue edges and sparse tissue leave much
    of a block empty (CMU-1-Small-Region tiled 4 x 4: 1.89x the patches' pixels read as
    blocks, 1.05x split). Returns ``Region`` objects (target-plane box ``t_xy``, ``t_wh``;
    grid rows ``index``)."""
    rows = np.arange(len(grid)) if rows is None else np.asarray(rows, np.int64)
    if len(rows) == 0:
        return []
    patch_t, stride_t, m = grid.patch_t, grid.stride_t, int(margin_t)
    k = max(1, (int(region_t) - patch_t - 2 * m) // stride_t + 1)

    def box(idx: np.ndarray) -> tuple[int, int, int, int]:
        """Target-plane (x0, y0, x1, y1) of the patches ``idx`` with their margins."""
        x0, y0 = (int(v) - m for v in grid.t_xy[idx].min(axis=0))
        x1, y1 = (int(v) + patch_t + m for v in grid.t_xy[idx].max(axis=0))
        return x0, y0, x1, y1

    def area(b: tuple[int, int, int, int]) -> int:
        return (b[2] - b[0]) * (b[3] - b[1])

    def split(idx: np.ndarray) -> list[Region]:
        b = box(idx)
        best, parts = area(b), None
        rc = grid.grid_rc[idx]
        for axis in (0, 1):
            for cut in np.unique(rc[:, axis])[1:]:
                low = rc[:, axis] < cut
                cost = area(box(idx[low])) + area(box(idx[~low]))
                if cost < best:
                    best, parts = cost, (idx[low], idx[~low])
        if parts is None:
            return [Region((b[0], b[1]), (b[2] - b[0], b[3] - b[1]), idx)]
        return split(parts[0]) + split(parts[1])

    block_rc = grid.grid_rc[rows] // k
    n_bc = int(block_rc[:, 1].max()) + 1
    keys = block_rc[:, 0] * n_bc + block_rc[:, 1]
    perm = np.argsort(keys, kind="stable")
    order, cuts = rows[perm], np.flatnonzero(np.diff(keys[perm])) + 1
    return [region for idx in np.split(order, cuts) for region in split(idx)]


def read_target_region(
    reader: SlideReader, plan: ResolutionPlan, region: Region, resample: str = "lanczos"
) -> np.ndarray:
    """The region resampled to the target plane: uint8 [t_h, t_w, 3]."""
    tx0, ty0 = region.t_xy
    tw, th = region.t_wh
    ds = plan.lv_downsample
    if not plan.needs_resample:
        l0_xy = (round(tx0 * plan.l0_per_t), round(ty0 * plan.l0_per_t))
        return reader.read_region(l0_xy, plan.level, (tw, th))

    from PIL import Image

    s = plan.lv_per_t  # level px per target px
    lx0, ly0, lx1, ly1 = tx0 * s, ty0 * s, (tx0 + tw) * s, (ty0 + th) * s
    pad = int(math.ceil(3 * max(s, 1.0))) + 1  # the widest (Lanczos) support, in level px
    ix0, iy0 = int(math.floor(lx0)) - pad, int(math.floor(ly0)) - pad
    ix1, iy1 = int(math.ceil(lx1)) + pad, int(math.ceil(ly1)) + pad
    l0_xy = (round(ix0 * ds), round(iy0 * ds))
    read_image = getattr(reader, "read_region_image", None)
    if read_image is not None:  # Pillow image straight from the reader: no array round trip
        lv = read_image(l0_xy, plan.level, (ix1 - ix0, iy1 - iy0))
    else:
        lv = Image.fromarray(reader.read_region(l0_xy, plan.level, (ix1 - ix0, iy1 - iy0)))
    box = (lx0 - ix0, ly0 - iy0, lx1 - ix0, ly1 - iy0)
    return np.asarray(lv.resize((tw, th), Image.Resampling[resample.upper()], box=box))


def read_region_patches(
    reader: SlideReader,
    plan: ResolutionPlan,
    grid: TileGrid,
    region: Region,
    resample: str = "lanczos",
) -> np.ndarray:
    """The patches of ``region`` (grid rows ``region.index``): uint8 [n, P, P, 3]."""
    offsets = grid.t_xy[region.index] - np.asarray(region.t_xy)
    return _cut_patches(read_target_region(reader, plan, region, resample), offsets, grid.patch_t)


def _cut_patches(img: np.ndarray, offsets: np.ndarray, p: int) -> np.ndarray:
    """uint8 [n, p, p, 3]: the patches of ``img`` at target-plane offsets ``(x, y)`` [n, 2]."""
    out = np.empty((len(offsets), p, p, 3), np.uint8)
    for i, (ox, oy) in enumerate(offsets):
        out[i] = img[oy : oy + p, ox : ox + p]
    return out


class _Batcher:
    """Collects (index, patches) chunks and cuts them into batches of ``batch_size``."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, index: np.ndarray, patches: np.ndarray) -> Iterator[PatchBatch]:
        self.chunks.append((index, patches))
        self.count += len(index)
        while self.count >= self.batch_size:
            yield self._take(self.batch_size)

    def flush(self) -> Iterator[PatchBatch]:
        if self.count:
            yield self._take(self.count)

    def _take(self, n: int) -> PatchBatch:
        idx_parts, patch_parts, need = [], [], n
        while need:
            index, patches = self.chunks[0]
            if len(index) <= need:
                self.chunks.pop(0)
                idx_parts.append(index)
                patch_parts.append(patches)
                need -= len(index)
            else:
                idx_parts.append(index[:need])
                patch_parts.append(patches[:need])
                self.chunks[0] = (index[need:], patches[need:])
                need = 0
        self.count -= n
        patches = patch_parts[0] if len(patch_parts) == 1 else np.concatenate(patch_parts)
        return PatchBatch(np.ascontiguousarray(patches), np.concatenate(idx_parts).astype(np.int64))


def _region_error(
    name: str, plan: ResolutionPlan, region: Region | None, exc: BaseException
) -> SlideError:
    where = "while opening it"
    if region is not None:
        x, y, w, h = region.l0_box(plan.l0_per_t)
        where = f"in the region at level-0 ({x}, {y}) size {w}x{h} (level {plan.level})"
    msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return SlideError(f"reading {name} failed {where}: {msg}")


def iter_patch_batches(
    open_reader: Callable[[], SlideReader] | str | Path,
    plan: ResolutionPlan,
    grid: TileGrid,
    *,
    batch_size: int = 64,
    region_t: int = 1024,
    workers: int = 2,
    queue_size: int | None = None,
    resample: str = "lanczos",
    processes: bool = False,
) -> Iterator[PatchBatch]:
    """Every patch of ``grid`` once, at the target resolution, in batches (an iterator).

    Options are checked at the call; reading starts with the first ``next()``.

    ``open_reader`` makes a new reader (called once per worker; a path opens the slide
    with OpenSlide). ``workers=0`` reads in the calling thread (no threads). ``queue_size``
    bounds the decoded regions waiting for the consumer (default: ``2 * workers``, or more
    where regions are small, as on sparse tissue, to hold about two batches).
    ``resample``: Pillow filter used when the plan resamples ("lanczos", "bicubic",
    "bilinear" or "box"; all anti-aliased when shrinking). ``processes``: read on
    ``workers`` processes instead of threads (``open_reader`` must then be the slide's path).
    """
    if batch_size <= 0 or region_t <= 0 or workers < 0:
        raise InputError(
            f"batch size and region size must be positive and workers >= 0, got "
            f"{batch_size}, {region_t}, {workers}"
        )
    if resample not in RESAMPLE_FILTERS:
        raise InputError(f"unknown resampling filter {resample!r}; use one of {RESAMPLE_FILTERS}")
    if processes and not isinstance(open_reader, (str, Path)):
        raise InputError("reading in processes needs the slide's path, not a reader factory")
    slide_path = open_reader
    if isinstance(open_reader, (str, Path)):
        from .reader import open_slide

        open_reader = lambda: open_slide(slide_path)  # noqa: E731
    regions = plan_regions(grid, region_t)
    name_box = {"name": "the slide"}
    if not regions:
        return _no_batches()
    if queue_size is None:  # regions of a few patches each must not starve the model
        queue_size = max(2 * workers, math.ceil(2 * batch_size * len(regions) / len(grid)))
    if workers == 0:
        return _iter_inline(open_reader, plan, grid, regions, batch_size, resample, name_box)
    if processes and can_spawn():
        return _iter_processes(
            str(slide_path), plan, grid, regions, batch_size, resample, workers, queue_size
        )
    return _iter_threaded(
        open_reader,
        plan,
        grid,
        regions,
        batch_size,
        resample,
        workers,
        queue_size,
        name_box,
    )


def _no_batches() -> Iterator[PatchBatch]:
    yield from ()


def _iter_inline(
    open_reader: Callable[[], SlideReader],
    plan: ResolutionPlan,
    grid: TileGrid,
    regions: list[Region],
    batch_size: int,
    resample: str,
    name_box: dict[str, str],
) -> Iterator[PatchBatch]:
    batcher = _Batcher(batch_size)
    region: Region | None = None
    try:
        reader = open_reader()
    except Exception as exc:
        raise _region_error(name_box["name"], plan, None, exc) from exc
    with reader:
        for region in regions:
            try:
                patches = read_region_patches(reader, plan, grid, region, resample)
            except Exception as exc:
                raise _region_error(
                    getattr(reader, "path", "the slide"), plan, region, exc
                ) from exc
            yield from batcher.add(region.index, patches)
    yield from batcher.flush()


def _iter_threaded(
    open_reader: Callable[[], SlideReader],
    plan: ResolutionPlan,
    grid: TileGrid,
    regions: list[Region],
    batch_size: int,
    resample: str,
    workers: int,
    queue_size: int,
    name_box: dict[str, str],
) -> Iterator[PatchBatch]:
    tasks: queue.SimpleQueue[Region] = queue.SimpleQueue()
    for region in regions:
        tasks.put(region)
    out: queue.Queue[tuple[str, Any, Any]] = queue.Queue(maxsize=max(1, queue_size))
    stop = threading.Event()
    n_threads = min(workers, len(regions))

    def put(item: tuple[str, Any, Any]) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        reader: SlideReader | None = None
        region: Region | None = None
        try:
            reader = open_reader()
            name_box["name"] = getattr(reader, "path", name_box["name"])
            while not stop.is_set():
                try:
                    region = tasks.get_nowait()
                except queue.Empty:
                    break
                patches = read_region_patches(reader, plan, grid, region, resample)
                if not put(("ok", region.index, patches)):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            name = getattr(reader, "path", name_box["name"])
            put(("error", exc, _region_error(name, plan, region, exc)))
        finally:
            if reader is not None:
                try:
                    reader.close()
                except Exception:  # noqa: BLE001 - closing must not mask the real outcome
                    pass
            put(("done", None, None))

    threads = [
        threading.Thread(target=work, name=f"wsi-saliency-reader-{i}", daemon=True)
        for i in range(n_threads)
    ]
    for t in threads:
        t.start()
    batcher = _Batcher(batch_size)
    try:
        done = 0
        while done < n_threads:
            kind, a, b = out.get()
            if kind == "done":
                done += 1
            elif kind == "error":
                raise b from a
            else:
                yield from batcher.add(a, b)
        yield from batcher.flush()
    finally:
        stop.set()
        while True:  # drop what is queued so nothing stays referenced
            try:
                out.get_nowait()
            except queue.Empty:
                break
        for t in threads:
            t.join(timeout=_JOIN_TIMEOUT_S)


# -- reading in processes -----------------------------------------------------------------
READER_NICENESS = 5
_pools: dict[int, Any] = {}
_pools_lock = threading.Lock()
_process_reader: dict[str, SlideReader] = {}  # in a pool process: the slide it has open


def reading_pool(workers: int) -> Any:
    """The process pool of ``workers`` readers (started on first use, then reused)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None or getattr(pool, "_broken", False):  # a process died: a new pool
            pool = ProcessPoolExecutor(
                workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_lower_priority,
            )
            _pools[workers] = pool
        return pool


@atexit.register
def shutdown_reading_pools() -> None:
    """Stop the reading processes (at exit; after a pool broke)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


def _lower_priority() -> None:
    """Reading processes yield the cores to the model's threads when both want them: one
    preempted thread of a parallel op stalls the whole op, while reading is far ahead."""
    import os

    try:
        os.nice(READER_NICENESS)
    except OSError:  # not permitted here: read at the same priority
        pass


def can_spawn() -> bool:
    """Whether reading processes can start here: not inside a daemonic process (a Dask
    worker's, by default, may have no children), and the parent's ``__main__`` can be
    imported again by a spawned process (a script read from standard input cannot). Where
    they cannot, reading runs in threads."""
    import multiprocessing
    import sys

    if multiprocessing.current_process().daemon:
        return False
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    return path is None or getattr(main, "__spec__", None) is not None or Path(path).is_file()


def read_target_in_process(
    path: str, plan: ResolutionPlan, region: Region, resample: str = "lanczos"
) -> np.ndarray:
    """Pool task: :func:`read_target_region` from this process's handle on ``path``."""
    reader = _process_reader.get(path)
    if reader is None:
        from .reader import open_slide

        for other in _process_reader.values():  # one slide open at a time
            other.close()
        _process_reader.clear()
        reader = _process_reader[path] = open_slide(path)
    return read_target_region(reader, plan, region, resample)


def _read_in_process(
    path: str, plan: ResolutionPlan, region: Region, offsets: np.ndarray, p: int, resample: str
) -> np.ndarray:
    """Pool task: one region's patches."""
    return _cut_patches(read_target_in_process(path, plan, region, resample), offsets, p)


def _iter_processes(
    path: str,
    plan: ResolutionPlan,
    grid: TileGrid,
    regions: list[Region],
    batch_size: int,
    resample: str,
    workers: int,
    queue_size: int,
) -> Iterator[PatchBatch]:
    from concurrent.futures import FIRST_COMPLETED, wait
    from concurrent.futures.process import BrokenProcessPool

    pool = reading_pool(workers)
    ahead = workers + queue_size  # regions in flight or waiting, at most
    todo = iter(regions)
    pending: dict[Any, Region] = {}
    batcher = _Batcher(batch_size)
    region: Region | None = None

    def submit() -> None:
        for region in todo:
            offsets = grid.t_xy[region.index] - np.asarray(region.t_xy)
            task = pool.submit(
                _read_in_process, path, plan, region, offsets, grid.patch_t, resample
            )
            pending[task] = region
            if len(pending) >= ahead:
                return

    try:
        submit()
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for task in done:
                region = pending.pop(task)
                patches = task.result()
                yield from batcher.add(region.index, patches)
            submit()
        yield from batcher.flush()
    except BrokenProcessPool as exc:
        died = RuntimeError(
            "a reading process died (a script that scans must start it under "
            '`if __name__ == "__main__":`, as spawned processes import it again; '
            "or read in threads: --set scan.reader=threads)"
        )
        raise _region_error(path, plan, region, died) from exc
    except Exception as exc:  # the worker's exception, pickled back
        raise _region_error(path, plan, region, exc) from exc
    finally:
        for task in pending:
            task.cancel()
