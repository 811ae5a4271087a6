"""Loading patches: region reads resampled to the target plane, threads, bounds, errors."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_saliency.errors import SlideError
from wsi_saliency.slide.loader import iter_patch_batches, plan_regions
from wsi_saliency.slide.reader import ArrayReader, open_slide
from wsi_saliency.slide.resolution import PCAM_MPP, plan_resolution
from wsi_saliency.slide.tiling import tile_grid

PERIOD = 60.0  # level-0 px of the sine pattern


def _sine_image(h: int = 1100, w: int = 1500) -> np.ndarray:
    """R encodes x, G encodes y (sines of period 60 level-0 px): misplacement shows at once."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 127.5 + 120 * np.sin(2 * np.pi * xx / PERIOD)
    g = 127.5 + 120 * np.sin(2 * np.pi * yy / PERIOD)
    return np.stack([r, g, np.full_like(r, 128)], -1).round().astype(np.uint8)


class CountingReader:
    """Wraps a reader: counts reads (thread-safe), optionally slows down or fails."""

    def __init__(self, inner: ArrayReader, fail_at: int | None = None, delay: float = 0.0):
        self.inner, self.fail_at, self.delay = inner, fail_at, delay
        self.path = inner.path
        self.reads = 0
        self.opened = 0
        self.closed = 0
        self.lock = threading.Lock()

    def open(self) -> CountingReader:
        with self.lock:
            self.opened += 1
        return self

    def read_region(self, l0_xy, level, size_wh):
        with self.lock:
            self.reads += 1
            n = self.reads
        if self.fail_at is not None and n >= self.fail_at:
            raise OSError("decoder exploded")
        if self.delay:
            time.sleep(self.delay)
        return self.inner.read_region(l0_xy, level, size_wh)

    def close(self) -> None:
        with self.lock:
            self.closed += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wsi-saliency-reader")]


@pytest.fixture(scope="module")
def sine_reader() -> ArrayReader:
    return ArrayReader(_sine_image(), 0.499, levels=(1,), name="sine.svs")


@pytest.mark.parametrize("workers", [0, 2])
def test_patches_are_the_target_plane_crops(sine_reader: ArrayReader, workers: int) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)  # CMU-like: resample by 1/1.948
    s = plan.l0_per_t
    grid = tile_grid(sine_reader.dimensions, plan, 96, 96)
    assert grid.patch_l0 == pytest.approx(187, rel=0.01)
    seen = []
    t_w, t_h = sine_reader.dimensions[0] / s, sine_reader.dimensions[1] / s
    for batch in iter_patch_batches(
        lambda: sine_reader, plan, grid, batch_size=7, region_t=400, workers=workers
    ):
        assert batch.patches.dtype == np.uint8 and batch.patches.shape[1:] == (96, 96, 3)
        assert len(batch) <= 7
        for patch, i in zip(batch.patches, batch.index, strict=True):
            tx, ty = grid.t_xy[i]
            t_x = np.arange(96) + tx
            t_y = np.arange(96) + ty
            # target pixel t covers level-0 [t * s, (t + 1) * s): its centre is (t + 0.5) s - 0.5
            ex = 127.5 + 120 * np.sin(2 * np.pi * ((t_x + 0.5) * s - 0.5) / PERIOD)
            ey = 127.5 + 120 * np.sin(2 * np.pi * ((t_y + 0.5) * s - 0.5) / PERIOD)
            inner_x = (t_x >= 3) & (t_x < t_w - 3)  # the slide border is padded with white
            inner_y = (t_y >= 3) & (t_y < t_h - 3)
            err_x = np.abs(patch[:, :, 0] - ex[None, :])[np.ix_(inner_y, inner_x)]
            err_y = np.abs(patch[:, :, 1] - ey[:, None])[np.ix_(inner_y, inner_x)]
            assert err_x.max() < 4.5 and err_y.max() < 4.5, (
                grid.grid_rc[i],
                err_x.max(),
                err_y.max(),
            )
        seen.extend(batch.index.tolist())
    assert sorted(seen) == list(range(len(grid)))


def test_matches_a_whole_image_resample(sine_reader: ArrayReader) -> None:
    """Regions are seamless: patches equal crops of the whole slide resampled at once."""
    plan = plan_resolution(sine_reader, PCAM_MPP)
    s = plan.l0_per_t
    grid = tile_grid(sine_reader.dimensions, plan, 96, 48)
    w, h = sine_reader.dimensions
    t_w, t_h = int(w / s), int(h / s)
    img = Image.fromarray(sine_reader.read_region((0, 0), 0, (w, h)))
    ref = np.asarray(img.resize((t_w, t_h), Image.Resampling.LANCZOS, box=(0, 0, t_w * s, t_h * s)))
    for batch in iter_patch_batches(lambda: sine_reader, plan, grid, region_t=300, workers=2):
        for patch, i in zip(batch.patches, batch.index, strict=True):
            tx, ty = grid.t_xy[i]
            diff = np.abs(patch.astype(int) - ref[ty : ty + 96, tx : tx + 96])
            y0, x0 = (3 if ty == 0 else 0), (3 if tx == 0 else 0)
            assert diff[y0:, x0:].max() <= 2


def test_direct_level_without_resampling() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (1600, 1600, 3), dtype=np.uint8)
    reader = ArrayReader(img, 0.25, levels=(1, 2, 4), name="fortyx.svs")
    plan = plan_resolution(reader, PCAM_MPP)
    assert plan.level == 2 and not plan.needs_resample
    grid = tile_grid(reader.dimensions, plan, 96, 96)
    lv2 = reader.read_region((0, 0), 2, reader.level_dimensions[2])
    n = 0
    for batch in iter_patch_batches(lambda: reader, plan, grid, workers=2):
        for patch, i in zip(batch.patches, batch.index, strict=True):
            tx, ty = grid.t_xy[i]
            assert np.array_equal(patch, lv2[ty : ty + 96, tx : tx + 96])
            n += 1
    assert n == len(grid) == 16


def test_one_read_per_region_and_only_regions_with_patches(sine_reader: ArrayReader) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    mask = np.zeros((11, 15), bool)
    mask[:5, :5] = True  # tissue only in the top-left corner
    grid = tile_grid(sine_reader.dimensions, plan, mask=mask)
    assert 0 < len(grid) < grid.n_candidates
    regions = plan_regions(grid, 200)
    counting = CountingReader(sine_reader)
    got = np.concatenate(
        [b.index for b in iter_patch_batches(counting.open, plan, grid, region_t=200, workers=2)]
    )
    assert sorted(got.tolist()) == list(range(len(grid)))
    assert counting.reads == len(regions) < len(grid)
    assert counting.opened == 2 and counting.closed == 2


def test_memory_is_bounded(sine_reader: ArrayReader) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    grid = tile_grid(sine_reader.dimensions, plan, 96, 96)
    n_regions = len(plan_regions(grid, 96))
    assert n_regions == len(grid) >= 40
    counting = CountingReader(sine_reader)
    gen = iter_patch_batches(
        counting.open, plan, grid, batch_size=1, region_t=96, workers=2, queue_size=2
    )
    next(gen)
    time.sleep(0.3)  # the workers would read everything by now if nothing held them back
    # consumed 1 region; at most 2 queued, 1 in flight per worker, 1 taken by the consumer
    assert counting.reads <= 1 + 2 + 2 + 1
    rest = sum(len(b) for b in gen)
    assert rest == len(grid) - 1 and counting.reads == n_regions
    assert not _reader_threads()


def test_worker_error_reaches_the_consumer(sine_reader: ArrayReader) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    grid = tile_grid(sine_reader.dimensions, plan)
    failing = CountingReader(sine_reader, fail_at=3)
    with pytest.raises(SlideError) as info:
        for _ in iter_patch_batches(failing.open, plan, grid, region_t=200, workers=2):
            pass
    msg = str(info.value)
    assert "sine.svs" in msg and "level-0 (" in msg and "decoder exploded" in msg
    assert "\n" not in msg
    assert not _reader_threads()
    assert failing.closed == failing.opened


@pytest.mark.parametrize("workers", [0, 2])
def test_open_error(sine_reader: ArrayReader, workers: int) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    grid = tile_grid(sine_reader.dimensions, plan)

    def broken():
        raise SlideError("slide not found: gone.svs; check the path")

    with pytest.raises(SlideError, match="gone.svs"):
        list(iter_patch_batches(broken, plan, grid, workers=workers))
    assert not _reader_threads()


def test_early_close_does_not_hang(sine_reader: ArrayReader) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    grid = tile_grid(sine_reader.dimensions, plan, 96, 48)
    slow = CountingReader(sine_reader, delay=0.02)
    gen = iter_patch_batches(
        slow.open, plan, grid, batch_size=4, region_t=150, workers=2, queue_size=1
    )
    first = next(gen)
    assert len(first) == 4
    t0 = time.perf_counter()
    gen.close()
    assert time.perf_counter() - t0 < 2.0
    assert not _reader_threads()
    assert slow.closed == slow.opened == 2


def test_empty_grid(sine_reader: ArrayReader) -> None:
    plan = plan_resolution(sine_reader, PCAM_MPP)
    grid = tile_grid(sine_reader.dimensions, plan, mask=np.zeros((4, 4), bool))
    assert len(grid) == 0
    assert list(iter_patch_batches(lambda: sine_reader, plan, grid)) == []


@pytest.mark.realdata
def test_cmu_patches(cmu_slide: Path) -> None:
    with open_slide(cmu_slide) as r:
        plan = plan_resolution(r, PCAM_MPP)
        grid = tile_grid(r.dimensions, plan)
        got = {}
        for batch in iter_patch_batches(cmu_slide, plan, grid, batch_size=32, workers=2):
            got.update(zip(batch.index.tolist(), batch.patches, strict=True))
        assert sorted(got) == list(range(len(grid))) and len(grid) == 15 * 11
        # a patch is 187 level-0 px of the slide, shrunk to 96 px
        i = len(grid) // 2
        x, y = grid.l0_xy[i]
        direct = Image.fromarray(r.read_region((int(x), int(y)), 0, (187, 187))).resize(
            (96, 96), Image.Resampling.LANCZOS
        )
        diff = np.abs(got[i].astype(int) - np.asarray(direct))
        assert diff.mean() < 6


# -- reading in processes ------------------------------------------------------------------
@pytest.fixture(scope="module")
def sine_tiff(tmp_path_factory) -> Path:
    """The sine image as a tiled pyramidal TIFF OpenSlide reads (processes open slides by path)."""
    import tifffile

    path = tmp_path_factory.mktemp("sine") / "sine.tif"
    image = _sine_image(1100, 1500)
    res = 1e4 / 0.499  # pixels per centimetre
    with tifffile.TiffWriter(path) as tw:
        for i, step in enumerate((1, 2)):
            tw.write(
                np.ascontiguousarray(image[::step, ::step]),
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                subfiletype=1 if i else 0,
                resolution=(res / step, res / step),
                resolutionunit="CENTIMETER",
            )
    return path


def _all_patches(path, plan, grid, **kw) -> dict[int, np.ndarray]:
    got: dict[int, np.ndarray] = {}
    for batch in iter_patch_batches(path, plan, grid, batch_size=7, region_t=300, **kw):
        for i, p in zip(batch.index.tolist(), batch.patches, strict=True):
            assert i not in got, "a patch came twice"
            got[i] = p
    return got


def test_processes_read_the_same_patches_as_threads(sine_tiff: Path) -> None:
    with open_slide(sine_tiff) as r:
        plan = plan_resolution(r, PCAM_MPP)
        grid = tile_grid(r.dimensions, plan, 96, 48)
    threads = _all_patches(sine_tiff, plan, grid, workers=2)
    procs = _all_patches(sine_tiff, plan, grid, workers=2, processes=True)
    again = _all_patches(sine_tiff, plan, grid, workers=2, processes=True)  # the pool, reused
    assert sorted(procs) == sorted(threads) == list(range(len(grid)))
    for i in threads:
        np.testing.assert_array_equal(procs[i], threads[i])
        np.testing.assert_array_equal(again[i], threads[i])


def test_processes_need_a_path_and_report_a_bad_region(sine_tiff: Path, tmp_path) -> None:
    from wsi_saliency.errors import InputError

    with open_slide(sine_tiff) as r:
        plan = plan_resolution(r, PCAM_MPP)
        grid = tile_grid(r.dimensions, plan)
    with pytest.raises(InputError, match="path"):
        list(iter_patch_batches(lambda: open_slide(sine_tiff), plan, grid, processes=True))
    # a file cut short after the scan planned it: the worker's error, one line, with the region
    cut = tmp_path / "cut.tif"
    data = sine_tiff.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideError) as info:
        list(iter_patch_batches(cut, plan, grid, workers=2, processes=True))
    msg = str(info.value)
    assert "cut.tif" in msg and "\n" not in msg


def _report_can_spawn(q) -> None:
    from wsi_saliency.slide.loader import can_spawn

    q.put(can_spawn())


def test_no_reading_processes_inside_a_daemonic_process() -> None:
    """A Dask worker is a daemonic process, which may not have children: it reads in threads."""
    import multiprocessing

    from wsi_saliency.config import ScanConfig
    from wsi_saliency.scan.pipeline import read_in_processes
    from wsi_saliency.slide.loader import can_spawn

    assert can_spawn() and read_in_processes(ScanConfig(reader="processes"))
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_report_can_spawn, args=(q,), daemon=True)
    p.start()
    assert q.get(timeout=60) is False
    p.join(timeout=60)


def test_regions_of_sparse_tissue_read_little_more_than_the_patches(sine_reader) -> None:
    """Two tissue islands in opposite corners of one block: two regions, not the block."""
    plan = plan_resolution(sine_reader, PCAM_MPP)
    mask = np.zeros((11, 15), bool)
    mask[:3, :3] = True
    mask[7:10, 9:12] = True
    grid = tile_grid(sine_reader.dimensions, plan, mask=mask)
    assert len(grid) >= 2
    regions = plan_regions(grid, 4096)  # one block holds the whole grid
    assert len(regions) >= 2
    rows = np.sort(np.concatenate([r.index for r in regions]))
    assert rows.tolist() == list(range(len(grid)))  # every patch once
    read = sum(r.t_wh[0] * r.t_wh[1] for r in regions)
    xs, ys = grid.t_xy[:, 0], grid.t_xy[:, 1]
    block = (xs.max() - xs.min() + grid.patch_t) * (ys.max() - ys.min() + grid.patch_t)
    assert read < block / 2
    for r in regions:  # each region holds its patches
        x, y = grid.t_xy[r.index].T
        assert (x >= r.t_xy[0]).all() and (x + grid.patch_t <= r.t_xy[0] + r.t_wh[0]).all()
        assert (y >= r.t_xy[1]).all() and (y + grid.patch_t <= r.t_xy[1] + r.t_wh[1]).all()
