"""What a scan will allocate, from what the slide file and the options declare, checked first.

A slide file declares its size and resolution, and ``--slide-mpp`` may override the latter;
from those alone follow the sizes of the arrays a scan makes: the patch grid, the probability
and Grad-CAM heatmaps, the tissue thumbnail and one region read per reading thread. A header
declaring 10^7 x 10^7 px, or ``--slide-mpp 1e-9``, would make one of them terabytes, and
numpy or Pillow would fail halfway with a bare ``MemoryError`` (or the machine would swap).
:func:`check_scan_memory` estimates them before any is allocated and raises one
``InputError`` line naming the value and what it would need.

The bytes per element are peaks measured with ``tracemalloc`` (numpy and Pillow report to
it) on this code: the grid's index arrays and tissue fractions, the stitchers' float64 sums
and weights plus ``finalize``'s temporaries, ``tissue_mask`` on a thumbnail (HSV converted in
bands), OpenSlide's RGBA buffer and its RGB copies for a region. The limit is
``WSI_SALIENCY_MAX_MEMORY`` (bytes, or with a K/M/G/T suffix) or else 3/4 of the machine's
physical memory. Pure: no OpenSlide, no TensorFlow.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

from wsi_saliency.errors import InputError

__all__ = [
    "MEMORY_ENV",
    "Allocation",
    "check_scan_memory",
    "check_slides_memory",
    "format_bytes",
    "memory_limit",
    "scan_allocations",
]

MEMORY_ENV = "WSI_SALIENCY_MAX_MEMORY"
MEMORY_FRACTION = 0.75

# Peak bytes per element (see the module docstring; measured, rounded up).
GRID_BYTES_PER_CANDIDATE = 256  # tile_grid: indices, coordinates, fractions of every candidate
HEATMAP_BYTES_PER_CELL = 40  # stitchers: float64 sum + weight, finalize's float32 + temporaries
THUMBNAIL_BYTES_PER_PX = 64  # image, tissue_mask (37 B/px measured), the grid's integral image
READ_BYTES_PER_LEVEL_PX = 16  # OpenSlide's RGBA buffer, its RGB copy, the white composite
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclass(frozen=True)
class Allocation:
    """Arrays a scan will make: ``what`` and ``shape`` in ``unit`` (for messages; ``note``
    follows the shape), and their peak bytes per item."""

    what: str
    shape: tuple[int, ...]
    bytes_per_item: float
    unit: str = ""
    note: str = ""

    @property
    def items(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> float:
        return self.items * self.bytes_per_item

    def describe(self) -> str:
        dims = " x ".join(f"{v:,}" for v in self.shape)
        return f"{self.what} of {dims} {self.unit}{self.note} ({format_bytes(self.nbytes)})"


def format_bytes(n: float) -> str:
    """``17.6 GiB``-style size (binary units up to YiB)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    value, unit = float(n), units[0]
    for unit in units:
        if value < 1024 or unit == units[-1]:
            break
        value /= 1024
    if unit == "B":
        return f"{int(value)} B"
    if value >= 1e4:
        return f"{value:.3g} {unit}"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def _parse_size(text: str) -> int:
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = raw[-1:] if raw[-1:] in _SUFFIXES else ""
    try:
        value = float(raw[: len(raw) - len(suffix)]) * _SUFFIXES[suffix]
    except ValueError:
        value = -1
    if not (math.isfinite(value) and value > 0):
        raise InputError(
            f"{MEMORY_ENV}={text!r} is not a size; give bytes or a number with K, M, G or T "
            "(e.g. 8G)"
        )
    return int(value)


def memory_limit() -> tuple[int, str]:
    """``(bytes, where it comes from)``: ``WSI_SALIENCY_MAX_MEMORY`` or 3/4 of physical memory."""
    env = os.environ.get(MEMORY_ENV)
    if env:
        return _parse_size(env), f"{MEMORY_ENV}={env}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - not Linux/macOS
        total = 16 * 2**30
    limit = int(MEMORY_FRACTION * total)
    source = f"3/4 of this machine's {format_bytes(total)}"
    address_space = _address_space_limit()
    if address_space is not None and address_space // 2 < limit:
        # the backend's libraries reserve much address space: count on half for arrays
        limit = address_space // 2
        source = f"half of the address-space limit {format_bytes(address_space)}"
    return limit, f"{source}; set {MEMORY_ENV} to change"


def _address_space_limit() -> int | None:
    """The soft ``RLIMIT_AS`` (``ulimit -v``) in bytes, or None when unlimited/unknown."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return None
    return None if soft == resource.RLIM_INFINITY or soft <= 0 else int(soft)


def _grid_count(t_len: float, patch_t: int, stride_t: int) -> int:
    """Patches along one side with ``cover_edges`` (as ``tile_grid`` lays them in a scan)."""
    if t_len <= 0:
        return 0
    return int(math.ceil(max(t_len - patch_t, 0.0) / stride_t - 1e-9)) + 1


def scan_allocations(
    l0_size_wh: tuple[int, int],
    plan: Any,
    *,
    patch_t: int,
    cfg: Any,
    map_cells: int | None = None,
) -> list[Allocation]:
    """The arrays a scan of a slide of level-0 ``l0_size_wh`` with ``plan`` and ``cfg`` (a
    ``ScanConfig``) will make, largest first. ``map_cells``: Grad-CAM map cells per patch
    (``h * w`` of the model's map; default ``cfg.gradcam_cells ** 2``). Counts are upper
    bounds: every grid candidate is assumed to hold tissue."""
    from wsi_saliency.slide.tissue import thumbnail_downsample

    l0_w, l0_h = (int(v) for v in l0_size_wh)
    stride_t = int(cfg.stride or patch_t)
    cols = _grid_count(l0_w / plan.l0_per_t, patch_t, stride_t)
    rows = _grid_count(l0_h / plan.l0_per_t, patch_t, stride_t)
    out = [Allocation("a patch grid", (rows, cols), GRID_BYTES_PER_CANDIDATE, "patches")]
    k = max(1, round(patch_t / stride_t))  # probability cells a patch covers (1 per stride)
    extra = max(0, k - 1)
    out.append(
        Allocation(
            "a probability heatmap",
            (rows + extra if rows else 0, cols + extra if cols else 0),
            HEATMAP_BYTES_PER_CELL,
            "cells",
        )
    )
    if cfg.gradcam:
        cells = int(cfg.gradcam_cells)
        s = max(1, round(stride_t * cells / patch_t))
        extra = max(0, cells - s)
        out.append(
            Allocation(
                "a Grad-CAM heatmap",
                (rows * s + extra if rows else 0, cols * s + extra if cols else 0),
                HEATMAP_BYTES_PER_CELL,
                "cells",
            )
        )
        per_patch = cells * cells if map_cells is None else int(map_cells)
        out.append(
            Allocation(
                "Grad-CAM maps", (rows * cols,), 4 * per_patch, "patches", f" of {per_patch} cells"
            )
        )
    t_ds = thumbnail_downsample((l0_w, l0_h), plan.l0_mpp, cfg.thumb_mpp)
    out.append(
        Allocation(
            "a tissue thumbnail",
            (max(1, math.ceil(l0_h / t_ds)), max(1, math.ceil(l0_w / t_ds))),
            THUMBNAIL_BYTES_PER_PX,
            "px",
        )
    )
    # One region read per reading thread: the kept patches of a block of about cfg.region
    # target px (never more than the grid spans), read at the plan's level with the margin
    # of the resampling filter.
    region_t = min(int(cfg.region), (max(cols, rows, 1) - 1) * stride_t + patch_t)
    s = float(plan.lv_per_t)
    pad = 2 * (math.ceil(3 * max(s, 1.0)) + 1) if plan.needs_resample else 0
    side = math.ceil(region_t * s) + pad
    if cfg.workers is None:
        from wsi_saliency.config import default_workers

        workers = default_workers()
    else:
        workers = max(1, int(cfg.workers))
    out.append(
        Allocation(
            "region reads",
            (side, side),
            READ_BYTES_PER_LEVEL_PX * workers,
            "px",
            f" of level {plan.level} on {workers} threads",
        )
    )
    return sorted(out, key=lambda a: a.nbytes, reverse=True)


def check_scan_memory(
    l0_size_wh: tuple[int, int],
    plan: Any,
    *,
    patch_t: int,
    cfg: Any,
    name: str,
    map_cells: int | None = None,
) -> list[Allocation]:
    """``InputError`` (one line) when the scan's arrays would exceed :func:`memory_limit`;
    else the allocations (largest first). ``name``: the slide, for the message."""
    allocations = scan_allocations(l0_size_wh, plan, patch_t=patch_t, cfg=cfg, map_cells=map_cells)
    limit, source = memory_limit()
    total = sum(a.nbytes for a in allocations)
    if total <= limit:
        return allocations
    w, h = (int(v) for v in l0_size_wh)
    biggest = allocations[0]
    if plan.mpp_source == "--slide-mpp":
        cause = f"--slide-mpp {plan.l0_mpp:g}"
        advice = "check --slide-mpp: level-0 microns per pixel, e.g. 0.25 for 40x, 0.5 for 20x"
    else:
        cause = f"{name} ({w:,} x {h:,} px at {plan.l0_mpp:.4g} um/px from {plan.mpp_source})"
        advice = "its header may be wrong (check its size and resolution)"
        if "Grad-CAM" in biggest.what:
            advice += "; --no-gradcam or a smaller --set gradcam_cells=N needs less"
        elif biggest.what == "region reads":
            advice += "; a smaller --set region=N or fewer --workers need less"
    in_all = f", {format_bytes(total)} in all" if biggest.nbytes < 0.99 * total else ""
    raise InputError(
        f"{cause} would make {biggest.describe()}{in_all}, over the limit of "
        f"{format_bytes(limit)} ({source}); {advice}"
    )


def check_slides_memory(paths: list[Any], card: Any, cfg: Any) -> None:
    """:func:`check_scan_memory` for every slide before a cohort starts (headers only: each
    slide is opened with OpenSlide and closed). A failure caused by ``--slide-mpp`` (it applies
    to every slide), or of the only slide, stops here with its one line (exit 2). In a cohort a
    slide whose own header fails is left to the scan, which reports it as failed and goes on,
    as it does with slides that cannot be opened or planned."""
    from wsi_saliency.errors import WsiSaliencyError
    from wsi_saliency.slide import open_slide, plan_resolution

    if len(paths) > 1 and cfg.slide_mpp is None:
        return  # nothing here could stop the cohort: each slide is checked by its own scan
    for path in paths:
        try:
            reader = open_slide(path)
        except WsiSaliencyError:
            continue
        with reader:
            try:
                plan = plan_resolution(
                    reader, card.patch_mpp, slide_mpp=cfg.slide_mpp, tolerance=cfg.mpp_tolerance
                )
            except WsiSaliencyError:
                continue
            try:
                check_scan_memory(
                    reader.dimensions,
                    plan,
                    patch_t=int(card.patch_size),
                    cfg=cfg,
                    name=getattr(path, "name", str(path)),
                )
            except InputError:
                if len(paths) == 1 or plan.mpp_source == "--slide-mpp":
                    raise
