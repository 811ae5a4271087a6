"""Tissue detection on a slide thumbnail (about 8-16 microns per pixel), and user masks.

Method ("otsu"): HSV saturation thresholded with Otsu's method (over pixels that are not
glass, black or pen); near-white glass, near-black pixels (dust, folds, black ink) and pen
marks are excluded. Pen is told apart from H&E by hue: both eosin (pink) and haematoxylin
(purple) absorb green, so stained tissue has green as its weakest channel, while blue,
green and cyan markers do not. Then a closing, filling small holes and removing small
objects, with sizes given in microns and converted with the thumbnail's mpp.

Masks are bool ``[row, col]`` images of the whole slide; pass the thumbnail's level-0 px
per mask pixel (``Thumbnail.l0_per_px``) to :func:`~wsi_saliency.slide.tiling.tile_grid`.
Pure: scikit-image, scipy and numpy; no OpenSlide import.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.errors import DataError, InputError

__all__ = [
    "THUMBNAIL_MAX_SIDE",
    "Thumbnail",
    "load_mask",
    "pen_mask",
    "slide_thumbnail",
    "thumbnail_downsample",
    "tissue_mask",
]


@dataclass(frozen=True)
class Thumbnail:
    """Whole-slide thumbnail: ``image`` uint8 [H, W, 3], ``mpp``, level-0 px per pixel (x, y)."""

    image: np.ndarray
    mpp: float
    l0_per_px: tuple[float, float]


THUMBNAIL_MAX_SIDE = 8192
"""Largest side of a tissue thumbnail, in pixels (a 65 mm slide at 8 um/px)."""


def thumbnail_downsample(
    l0_size_wh: tuple[int, int],
    l0_mpp: float,
    thumb_mpp: float = 8.0,
    max_side: int = THUMBNAIL_MAX_SIDE,
) -> float:
    """Level-0 px per tissue-thumbnail px: ``thumb_mpp`` or coarser (``max_side``), >= 1."""
    return max(thumb_mpp / l0_mpp, max(l0_size_wh) / max_side, 1.0)


def slide_thumbnail(
    reader: Any, *, l0_mpp: float, thumb_mpp: float = 8.0, max_side: int = THUMBNAIL_MAX_SIDE
) -> Thumbnail:
    """A thumbnail of ``reader`` at about ``thumb_mpp`` (coarser if over ``max_side`` px)."""
    l0_w, l0_h = reader.dimensions
    ds = thumbnail_downsample((l0_w, l0_h), l0_mpp, thumb_mpp, max_side)
    want = (max(1, math.ceil(l0_w / ds)), max(1, math.ceil(l0_h / ds)))
    image = reader.get_thumbnail(want)
    h, w = image.shape[:2]
    l0_per_px = (l0_w / w, l0_h / h)
    return Thumbnail(image, l0_mpp * (l0_per_px[0] + l0_per_px[1]) / 2, l0_per_px)


PEN_MIN_SATURATION = 0.2
PEN_HUE_RANGE = (0.2, 0.66)
_HSV_CHUNK_PX = 1 << 20
"""Thumbnail pixels converted to HSV at once (float64 HSV costs 48 bytes a pixel)."""


def _hsv_chunks(
    rgb: np.ndarray, min_saturation: float, hue_range: tuple[float, float] | None
) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray | None]]:
    """``(rows, saturation, value, pen)`` over row bands of an RGB image: skimage's HSV
    saturation and value (float64) and the :func:`pen_mask` test of each band (None without
    a ``hue_range``: no pen test, no hue computed).

    Saturation and value depend only on a pixel's largest and smallest channel, so they come
    from a 256 x 256 table that ``rgb2hsv`` itself fills; the hue (needed only for the pen
    test) is computed by ``rgb2hsv`` on the few pixels that can pass it: saturated enough, not
    dark, and (for a ``hue_range`` within [1/6, 5/6], as the default) red not strictly the
    largest channel, since those pixels' hues lie outside it.
    Exactly ``rgb2hsv``'s values at a fraction of its cost (4 s -> under 1 s on a 20-megapixel
    thumbnail of a Camelyon16-size slide), with temporaries bounded by ``_HSV_CHUNK_PX``.
    """
    from skimage.color import rgb2hsv

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise InputError(f"a thumbnail must be an RGB image [rows, cols, 3], got shape {rgb.shape}")
    if rgb.dtype != np.uint8:  # floats in [0, 1] as skimage reads them; other integers as is
        from skimage.util import img_as_ubyte

        rgb = img_as_ubyte(rgb) if rgb.dtype.kind == "f" else np.clip(rgb, 0, 255).astype(np.uint8)
    # red strictly the largest: hue in [0, 1/6) or (5/6, 1), so outside such a range
    skip_red = hue_range is not None and hue_range[0] >= 1 / 6 and hue_range[1] <= 5 / 6
    sat_lut, val_lut = _sat_val_tables()
    step = max(1, _HSV_CHUNK_PX // max(1, rgb.shape[1]))
    for r0 in range(0, rgb.shape[0], step):
        rows = slice(r0, min(r0 + step, rgb.shape[0]))
        band = rgb[rows, :, :3]
        r, g, b = band[..., 0], band[..., 1], band[..., 2]
        hi, lo = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
        sat, val = sat_lut[hi, lo], val_lut[hi]
        if hue_range is None:
            yield rows, sat, val, None
            continue
        maybe = (sat >= min_saturation) & (val > 0.1)
        if skip_red:
            maybe &= r < hi
        pen = np.zeros(hi.shape, bool)
        if maybe.any():
            hue = rgb2hsv(band[maybe][None])[0, :, 0]
            pen[maybe] = (hue >= hue_range[0]) & (hue <= hue_range[1])
        yield rows, sat, val, pen


@functools.cache
def _sat_val_tables() -> tuple[np.ndarray, np.ndarray]:
    """skimage's HSV saturation [max, min] and value [max] of uint8 RGB pixels."""
    from skimage.color import rgb2hsv

    hi, lo = np.meshgrid(np.arange(256), np.arange(256), indexing="ij")
    lo = np.minimum(lo, hi)
    hsv = rgb2hsv(np.stack([hi, lo, lo], axis=-1).astype(np.uint8))
    return hsv[..., 1], hsv[:, 0, 2].copy()


def pen_mask(
    thumbnail_rgb: np.ndarray,
    *,
    min_saturation: float = PEN_MIN_SATURATION,
    hue_range: tuple[float, float] = PEN_HUE_RANGE,
) -> np.ndarray:
    """Pixels of blue / green / cyan marker ink: saturated, with a hue H&E never has (bool [H, W]).

    HSV hue in ``hue_range`` (0-1 scale) means green is not the weakest channel relative to
    red; H&E (pink to purple) lies outside it.
    """
    out = np.zeros(np.shape(thumbnail_rgb)[:2], bool)
    for rows, _, _, pen in _hsv_chunks(thumbnail_rgb, min_saturation, hue_range):
        out[rows] = pen
    return out


def _remove_small(mask: np.ndarray, max_px: float, *, holes: bool = False) -> np.ndarray:
    """Drop connected components of at most ``max_px`` pixels (or fill such enclosed holes)."""
    from scipy import ndimage

    if max_px < 1:
        return mask
    target = ~mask if holes else mask
    labels, n = ndimage.label(target)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes <= max_px
    small[0] = False
    if holes:  # background touching the border is not a hole
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        small[border] = False
        return mask | small[labels]
    return mask & ~small[labels]


def tissue_mask(
    thumbnail_rgb: np.ndarray,
    *,
    thumb_mpp: float,
    method: str = "otsu",
    saturation_threshold: float | None = None,
    min_saturation: float = 0.05,
    max_saturation_threshold: float = 0.25,
    white_value: float = 0.92,
    black_value: float = 0.2,
    exclude_pen: bool = True,
    pen_margin_um: float = 16.0,
    pen_min_um2: float = 5_000.0,
    closing_um: float = 20.0,
    min_object_um2: float = 20_000.0,
    hole_um2: float = 10_000.0,
) -> np.ndarray:
    """Tissue mask (bool ``[H, W]``, same grid as the thumbnail) of an H&E thumbnail.

    ``thumb_mpp``: microns per thumbnail pixel (sizes below are in microns). ``method``:
    "otsu" (threshold = Otsu on saturation, clipped to [``min_saturation``,
    ``max_saturation_threshold``]) or "fixed" (``saturation_threshold``, default 0.07).
    Glass: value > ``white_value`` with low saturation; black: value < ``black_value``;
    pen: see :func:`pen_mask`; strokes larger than ``pen_min_um2`` (smaller specks of
    ink or teal debris are left to the saturation test), dilated by ``pen_margin_um``.
    Objects of at most ``min_object_um2`` are dropped, enclosed holes of at most
    ``hole_um2`` are filled.
    """
    from scipy import ndimage
    from skimage.filters import threshold_otsu
    from skimage.morphology import disk

    if not (thumb_mpp and thumb_mpp > 0):
        raise InputError(f"thumbnail resolution must be a positive mpp, got {thumb_mpp!r}")
    shape = np.shape(thumbnail_rgb)[:2]
    sat = np.empty(shape, np.float64)
    black = np.empty(shape, bool)
    glass = np.empty(shape, bool)
    pen = np.zeros(shape, bool)
    pen_hues = PEN_HUE_RANGE if exclude_pen else None
    for rows, s, v, p in _hsv_chunks(thumbnail_rgb, PEN_MIN_SATURATION, pen_hues):
        sat[rows] = s
        black[rows] = v < black_value
        glass[rows] = (v > white_value) & (s < 0.1)
        if exclude_pen:
            pen[rows] = p
    if exclude_pen:
        pen = _remove_small(pen, pen_min_um2 / thumb_mpp**2)
    # Structuring elements never exceed the image: a slide declaring a tiny mpp (a thumbnail
    # of a few nanometres per pixel) would otherwise ask for a disk of millions of pixels.
    largest = max(sat.shape)
    if pen.any() and pen_margin_um > 0:
        margin = min(max(1, round(pen_margin_um / thumb_mpp)), largest)
        pen = ndimage.binary_dilation(pen, disk(margin))
    usable = ~(black | pen)

    if method == "otsu":
        values = sat[usable]
        if values.size == 0 or np.ptp(values) == 0:
            thr = min_saturation
        else:
            thr = float(np.clip(threshold_otsu(values), min_saturation, max_saturation_threshold))
    elif method == "fixed":
        thr = 0.07 if saturation_threshold is None else float(saturation_threshold)
    else:
        raise InputError(f"unknown tissue method {method!r}; use 'otsu' or 'fixed'")

    fg = (sat > thr) & usable & ~glass
    radius = min(round(closing_um / thumb_mpp), largest)
    if radius >= 1:  # pad so the closing does not eat tissue at the image border
        padded = np.pad(fg, radius, mode="edge")
        fg = ndimage.binary_closing(padded, disk(radius))[radius:-radius, radius:-radius]
    px_area = thumb_mpp * thumb_mpp
    fg = _remove_small(fg, hole_um2 / px_area, holes=True)
    fg &= usable  # closing and hole filling must not bring ink or black back
    fg = _remove_small(fg, min_object_um2 / px_area)
    return fg


def load_mask(path: str | Path, shape_rc: tuple[int, int] | None = None) -> np.ndarray:
    """A user mask image (PNG / TIFF / ..., non-zero = inside) as bool ``[H, W]``.

    The mask covers the whole slide. With ``shape_rc`` it is resized onto that grid (the
    thumbnail's): by area when shrinking (a cell is inside when at least half of it is),
    nearest neighbour when enlarging. Of a pyramidal TIFF (a Camelyon16 ``*_mask.tif`` holds
    level 0 of its slide) the coarsest level at least as large as the grid is read, and a
    TIFF is refused before decoding when that level exceeds ``MASK_MAX_PX`` pixels (Pillow
    refuses images over 179 M px itself). ``InputError`` when missing, unreadable, too large
    or when its aspect ratio differs from the grid's by more than 5 %.
    """
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise InputError(f"mask file not found: {p}; give a PNG or TIFF covering the whole slide")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            arr = _read_tiff_mask(p, shape_rc)
        else:
            with Image.open(p) as img:
                img.load()
                arr = np.asarray(img)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder failure is the same user error
        raise DataError(f"cannot read mask {p}: {exc}; save it as an 8-bit PNG or TIFF") from None
    arr = np.squeeze(arr)
    if arr.ndim == 3:  # RGB(A): any non-zero colour channel counts
        arr = arr[..., : min(arr.shape[2], 3)].max(axis=2)
    if arr.ndim != 2 or arr.size == 0:
        raise DataError(f"mask {p} must be a 2-D image, got shape {arr.shape}; save a grey PNG")
    mask = arr > 0
    if shape_rc is None or tuple(shape_rc) == mask.shape:
        return mask
    rows, cols = int(shape_rc[0]), int(shape_rc[1])
    src_aspect, dst_aspect = mask.shape[1] / mask.shape[0], cols / rows
    if abs(src_aspect / dst_aspect - 1) > 0.05:
        raise InputError(
            f"mask {p} is {mask.shape[1]}x{mask.shape[0]} but the slide thumbnail is "
            f"{cols}x{rows} (aspect {src_aspect:.3f} vs {dst_aspect:.3f}); the mask must cover "
            "the whole slide"
        )
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    if rows * cols < mask.size:
        out = np.asarray(img.resize((cols, rows), Image.Resampling.BOX)) >= 128
    else:
        out = np.asarray(img.resize((cols, rows), Image.Resampling.NEAREST)) > 0
    return out


MASK_MAX_PX = 1 << 30
"""Largest TIFF mask level decoded (1 G px: 1 GiB as uint8, several while it is resized)."""


def _read_tiff_mask(path: Path, shape_rc: tuple[int, int] | None) -> np.ndarray:
    """The level of a (pyramidal) TIFF mask to use: the coarsest at least ``shape_rc``."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = list(tif.series[0].levels)

        def rows_cols(level: Any) -> tuple[int, int]:
            axes, shape = level.axes, level.shape
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            return int(shape[0]), (int(shape[1]) if len(shape) > 1 else 1)

        chosen = levels[0]
        if shape_rc is not None:
            rows, cols = int(shape_rc[0]), int(shape_rc[1])
            big = [lv for lv in levels if rows_cols(lv)[0] >= rows and rows_cols(lv)[1] >= cols]
            if big:
                chosen = min(big, key=lambda lv: math.prod(rows_cols(lv)))
        rows, cols = rows_cols(chosen)
        if rows * cols > MASK_MAX_PX:
            raise InputError(
                f"mask {path} is {cols:,} x {rows:,} px (its smallest fitting level), over "
                f"{MASK_MAX_PX:,} px to decode; save it smaller (the tissue grid is "
                f"{'any size' if shape_rc is None else f'{shape_rc[1]} x {shape_rc[0]}'} px) "
                "or as a pyramidal TIFF"
            )
        return np.asarray(chosen.asarray())
