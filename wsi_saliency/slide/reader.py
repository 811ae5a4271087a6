"""Slide readers: one interface over OpenSlide files and in-memory arrays.

Frames: ``read_region`` takes the top-left corner in level-0 ``(x, y)`` pixels, a pyramid
level and a size ``(w, h)`` in pixels *of that level*, like ``openslide.OpenSlide``; it
returns an RGB ``uint8`` array indexed ``[row, col, channel]``. Transparent pixels (outside
the scanned area, or outside the slide) come back white.

Thumbnails never decode a whole level: :meth:`OpenSlideReader.get_thumbnail` reads the level
it needs in blocks of ``THUMBNAIL_BLOCK`` px and shrinks each into the result (same pixels as
OpenSlide's ``get_thumbnail``, which on a slide without a pyramid allocates 4 bytes per
level-0 pixel), so its memory is bounded by a block and the thumbnail, whatever the slide.

Only :class:`OpenSlideReader` imports OpenSlide, and only when a slide is opened, so the
pure modules (tiling, stitching, tissue, resolution) never load it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from wsi_saliency.errors import InputError, SlideError

__all__ = [
    "ArrayReader",
    "OpenSlideReader",
    "SlideReader",
    "ThumbnailGeometry",
    "composite_on_white",
    "open_slide",
    "region_thumbnail",
    "thumbnail_geometry",
]


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite non-premultiplied RGBA ``uint8 [h, w, 4]`` onto white -> RGB ``[h, w, 3]``."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)[..., None]
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class SlideReader(ABC):
    """What scanning needs from a slide; coordinates are level-0 ``(x, y)`` pixels."""

    path: str

    @property
    @abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(w, h)`` of every pyramid level, level 0 first."""

    @property
    @abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per level pixel, for every level."""

    @property
    @abstractmethod
    def properties(self) -> Mapping[str, str]:
        """Slide metadata with OpenSlide's key names (``openslide.mpp-x``, ...)."""

    @abstractmethod
    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        """RGB ``uint8 [h, w, 3]``: ``size_wh`` level pixels from level-0 top-left ``l0_xy``."""

    def read_region_image(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> Any:
        """Like :meth:`read_region` but as a Pillow RGB image (saves copies before resizing)."""
        from PIL import Image

        return Image.fromarray(self.read_region(l0_xy, level, size_wh))

    @abstractmethod
    def get_thumbnail(self, max_size_wh: tuple[int, int]) -> np.ndarray:
        """Whole slide as RGB ``uint8 [h, w, 3]`` fitting in ``max_size_wh``, aspect kept."""

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release the slide handle (idempotent)."""

    # -- derived ---------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(w, h)`` in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """Level-0 microns per pixel ``(x, y)`` from ``openslide.mpp-x/y``, or None."""
        mx = _positive_float(self.properties.get("openslide.mpp-x"))
        my = _positive_float(self.properties.get("openslide.mpp-y"))
        if mx is None and my is None:
            return None
        return (mx or my, my or mx)  # type: ignore[return-value]

    @property
    def objective_power(self) -> float | None:
        """Scanner objective magnification (e.g. 20.0), or None."""
        return _positive_float(self.properties.get("openslide.objective-power"))

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        w, h = self.dimensions
        return f"{type(self).__name__}({self.path!r}, {w}x{h}, levels={self.level_count})"


def _positive_float(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


class OpenSlideReader(SlideReader):
    """A slide file read with OpenSlide (SVS, NDPI, MRXS, generic tiled TIFF, ...)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        p = Path(path)
        if not p.is_file():
            raise SlideError(
                f"slide not found: {self.path}; check the path (a whole-slide image file)"
            )
        if p.stat().st_size == 0:
            raise SlideError(f"slide {self.path} is empty (0 bytes); copy it again from its source")
        try:
            import openslide
        except ImportError as exc:  # pragma: no cover - a broken installation
            raise SlideError(
                f"cannot open {self.path}: OpenSlide is not importable ({exc}); "
                "install openslide-python and openslide-bin"
            ) from exc
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise SlideError(
                f"not a supported slide format: {self.path}; give a whole-slide image "
                "OpenSlide can read (SVS, NDPI, MRXS, tiled pyramidal TIFF, ...)"
            ) from None
        except (openslide.OpenSlideError, OSError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideError(
                f"cannot read slide {self.path}: {msg}; the file may be corrupt or truncated"
            ) from None
        self._level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self._properties = dict(self._slide.properties)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        return np.asarray(self.read_region_image(l0_xy, level, size_wh))

    def read_region_image(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> Any:
        import openslide
        from PIL import Image

        slide = self._slide
        if slide is None:
            raise SlideError(f"slide {self.path} is closed; reopen it before reading")
        x, y = int(l0_xy[0]), int(l0_xy[1])
        w, h = int(size_wh[0]), int(size_wh[1])
        level = int(level)
        if not 0 <= level < len(self._level_dimensions):
            raise SlideError(
                f"level {level} out of range for {self.path} ({len(self._level_dimensions)} levels)"
            )
        ds = self._level_downsamples[level]
        lv_w, lv_h = self._level_dimensions[level]
        # read only the part inside the slide; the rest is white (saves decoding and compositing)
        lv_x, lv_y = x / ds, y / ds
        cx0, cy0 = max(0, math.ceil(-lv_x - 1e-9)), max(0, math.ceil(-lv_y - 1e-9))
        cx1 = min(w, math.floor(lv_w - lv_x + 1e-9))
        cy1 = min(h, math.floor(lv_h - lv_y + 1e-9))
        if cx1 <= cx0 or cy1 <= cy0:
            return Image.new("RGB", (max(w, 0), max(h, 0)), (255, 255, 255))
        inner = (cx0, cy0) != (0, 0) or (cx1, cy1) != (w, h)
        try:
            img = slide.read_region(
                (x + round(cx0 * ds), y + round(cy0 * ds)), level, (cx1 - cx0, cy1 - cy0)
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"cannot read region l0=({x}, {y}) level {level} size {w}x{h} of "
                f"{self.path}: {str(exc).splitlines()[0] if str(exc) else exc!r}; "
                "the file may be corrupt"
            ) from None
        alpha = img.getchannel("A")
        rgb = img.convert("RGB")
        if alpha.getextrema()[0] < 255:  # transparent pixels (no scan there) become white
            rgb = Image.composite(rgb, Image.new("RGB", rgb.size, (255, 255, 255)), alpha)
        if not inner:
            return rgb
        canvas = Image.new("RGB", (w, h), (255, 255, 255))
        canvas.paste(rgb, (cx0, cy0))
        return canvas

    def get_thumbnail(self, max_size_wh: tuple[int, int]) -> np.ndarray:
        """Whole slide fitting in ``max_size_wh``, built from block reads of bounded size.

        The level and the output size are OpenSlide's (its ``get_thumbnail``: the coarsest level
        at or finer than the asked downsample, aspect kept as ``PIL.Image.thumbnail`` keeps it),
        except that a level at most 25 % coarser than asked is taken as it is (it holds nearly
        the pixels asked for; the next finer level may hold 16 times more). The pixels are
        OpenSlide's too (see :func:`region_thumbnail`), but peak memory is one block plus an
        intermediate image of a few times the thumbnail, whatever the level's size.
        """
        import openslide

        slide = self._slide
        if slide is None:
            raise SlideError(f"slide {self.path} is closed; reopen it before reading")
        geom = thumbnail_geometry(
            self._level_dimensions,
            self._level_downsamples,
            max_size_wh,
            best_level=slide.get_best_level_for_downsample,
        )
        try:
            img = region_thumbnail(
                slide, (0, 0), geom.level, self._level_dimensions[geom.level], geom.size_wh
            )
        except openslide.OpenSlideError as exc:
            raise SlideError(
                f"cannot read a thumbnail of {self.path}: {exc}; the file may be corrupt"
            ) from None
        return np.asarray(img)

    def close(self) -> None:
        slide = getattr(self, "_slide", None)
        if slide is not None:
            slide.close()
            self._slide = None


THUMBNAIL_BLOCK = 2048
"""Level pixels per side of one block read while building a thumbnail."""
THUMBNAIL_MAX_INTERMEDIATE_PX = 32 * 2**20
"""Above this, a thumbnail's intermediate image is reduced by the whole factor (<= 4x output)."""
THUMBNAIL_SNAP = 1.25
"""A level at most this much coarser than a thumbnail asks for is used as it is."""


@dataclass(frozen=True)
class ThumbnailGeometry:
    """How a thumbnail is made: read ``level`` whole (in blocks), box-reduce it by
    ``reduce_xy`` (integer factors), then resize it (Lanczos) to ``size_wh`` ``(w, h)``."""

    level: int
    size_wh: tuple[int, int]
    reduce_xy: tuple[int, int]


def thumbnail_geometry(
    level_dimensions: Sequence[tuple[int, int]],
    level_downsamples: Sequence[float],
    max_size_wh: tuple[int, int],
    *,
    best_level: Callable[[float], int] | None = None,
    snap: float = THUMBNAIL_SNAP,
    max_intermediate_px: int = THUMBNAIL_MAX_INTERMEDIATE_PX,
) -> ThumbnailGeometry:
    """The level, output size and reduce factors of a thumbnail fitting ``max_size_wh``.

    ``best_level(downsample)``: the slide's choice of level (OpenSlide's
    ``get_best_level_for_downsample``); default: the coarsest level whose downsample is at
    most the asked one. A level at most ``snap`` times coarser than asked is preferred. The
    size and factors are those of ``PIL.Image.thumbnail`` (reducing gap 2) on that level,
    unless its intermediate image would exceed ``max_intermediate_px``; then the reduce
    factors are the whole ratio (the intermediate is then at most 4x the output's pixels).
    """
    max_w, max_h = (max(1, math.floor(v)) for v in max_size_wh)
    l0_w, l0_h = level_dimensions[0]
    ds = max(l0_w / max_w, l0_h / max_h)
    coarser = [i for i, d in enumerate(level_downsamples) if ds < d <= snap * ds]
    if coarser:
        level = min(coarser, key=lambda i: level_downsamples[i])
    elif best_level is not None:
        level = int(best_level(ds))
    else:
        fits = [i for i, d in enumerate(level_downsamples) if d <= ds]
        level = max(fits, key=lambda i: level_downsamples[i]) if fits else 0
    size, reduce_xy = _reduce_plan(level_dimensions[level], (max_w, max_h), max_intermediate_px)
    return ThumbnailGeometry(level, size, reduce_xy)


def _reduce_plan(
    image_wh: tuple[int, int],
    max_wh: tuple[int, int],
    max_intermediate_px: int = THUMBNAIL_MAX_INTERMEDIATE_PX,
) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(size_wh, reduce_xy)`` of ``PIL.Image.thumbnail(max_wh)`` on an image of ``image_wh``:
    its output size and its integer box-reduce factors (reducing gap 2), or the whole ratio
    when the reduced image would exceed ``max_intermediate_px``."""
    w, h = (int(v) for v in image_wh)
    size = _thumbnail_size((w, h), (max(1, int(max_wh[0])), max(1, int(max_wh[1]))))
    if size == (w, h):
        return size, (1, 1)
    rx = int(w / size[0] / 2) or 1  # PIL's resize with reducing_gap=2
    ry = int(h / size[1] / 2) or 1
    if math.ceil(w / rx) * math.ceil(h / ry) > max_intermediate_px:
        rx, ry = max(1, int(w / size[0])), max(1, int(h / size[1]))
    return size, (rx, ry)


def region_thumbnail(
    slide: Any,
    l0_xy: tuple[int, int],
    level: int,
    size_wh: tuple[int, int],
    max_wh: tuple[int, int],
    *,
    block: int | None = None,
    max_intermediate_px: int = THUMBNAIL_MAX_INTERMEDIATE_PX,
) -> Any:
    """A Pillow RGB image of ``size_wh`` level px from level-0 ``l0_xy`` shrunk to fit
    ``max_wh``: what ``PIL.Image.thumbnail(max_wh, LANCZOS)`` makes of that region composited
    onto the slide's background colour (OpenSlide's ``get_thumbnail`` and Deep Zoom tiles),
    read in blocks of about ``block`` (``THUMBNAIL_BLOCK``) level px.

    Each block is composited and box-reduced by the same integer factors as PIL's first step
    and pasted into an intermediate image, which one Lanczos resize (PIL's second step) turns
    into the output: the same pixels as PIL on the whole region (block edges are multiples of
    the factors, and both steps are local), with memory for one block plus the intermediate
    (at most 4x the output's pixels when it would otherwise exceed ``max_intermediate_px``;
    factors are capped at ``block``, so a thumbnail of a few pixels of a huge level has a
    larger intermediate, of ``size_wh / block`` px, and differs from PIL's in the last bit).
    A block with no scanned pixel (absent tiles of a sparse TIFF) is not decoded further.
    ``slide``: an ``openslide.OpenSlide`` (``read_region``, ``level_downsamples``,
    ``properties``). Raises OpenSlide's errors.
    """
    from PIL import Image

    block = int(block or THUMBNAIL_BLOCK)
    lv_w, lv_h = (int(v) for v in size_wh)
    size, (rx, ry) = _reduce_plan((lv_w, lv_h), max_wh, max_intermediate_px)
    # a block is a whole number of reduce steps: factors over the block size (a thumbnail of
    # a few pixels of a huge level) are capped, so a block never exceeds `block` px a side
    rx, ry = min(rx, block), min(ry, block)
    bg = "#" + str(slide.properties.get("openslide.background-color", "ffffff"))
    inter = Image.new("RGB", (math.ceil(lv_w / rx), math.ceil(lv_h / ry)), bg)
    ds = float(slide.level_downsamples[level])
    bw, bh = rx * max(1, block // rx), ry * max(1, block // ry)
    for y in range(0, lv_h, bh):
        for x in range(0, lv_w, bw):
            wh = (min(bw, lv_w - x), min(bh, lv_h - y))
            xy = (int(l0_xy[0]) + round(x * ds), int(l0_xy[1]) + round(y * ds))
            rgba = slide.read_region(xy, level, wh)
            if rgba.getbbox() is None:  # nothing scanned here: background
                continue
            rgb = Image.new("RGB", wh, bg)
            rgb.paste(rgba, None, rgba)
            del rgba
            if (rx, ry) != (1, 1):
                rgb = rgb.reduce((rx, ry))
            inter.paste(rgb, (x // rx, y // ry))
    if inter.size != size:
        box = (0.0, 0.0, lv_w / rx, lv_h / ry)
        inter = inter.resize(size, Image.Resampling.LANCZOS, box=box)
    return inter


def _thumbnail_size(image_wh: tuple[int, int], max_wh: tuple[int, int]) -> tuple[int, int]:
    """``PIL.Image.thumbnail``'s output size for an image of ``image_wh`` fitting ``max_wh``."""
    w, h = image_wh
    x, y = max_wh
    if x >= w and y >= h:
        return w, h

    def round_aspect(number: float, key: Callable[[int], float]) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    aspect = w / h
    if x / y >= aspect:
        x = round_aspect(y * aspect, key=lambda n: abs(aspect - n / y))
    else:
        y = round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))
    return x, y


def _area_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (the trailing partial block is dropped)."""
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, image.shape[2])
    return (blocks.mean(axis=(1, 3), dtype=np.float32) + 0.5).astype(np.uint8)


class ArrayReader(SlideReader):
    """An in-memory slide: an RGB array plus an area-downsampled pyramid (for tests, demos).

    ``mpp`` is level-0 microns per pixel (a float, an ``(x, y)`` pair or None for a slide
    without resolution); ``levels`` are the integer downsample factors of the pyramid.
    """

    def __init__(
        self,
        image: np.ndarray,
        mpp: float | tuple[float, float] | None,
        levels: Sequence[int] = (1, 2, 4),
        *,
        name: str = "array",
        objective_power: float | None = None,
    ) -> None:
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
            raise InputError(
                f"ArrayReader {name}: expected a uint8 [h, w, 3] RGB array, got "
                f"{image.dtype} {image.shape}; convert the image to 8-bit RGB"
            )
        if image.shape[2] == 4:
            image = composite_on_white(image)
        factors = [int(f) for f in levels]
        if (
            not factors
            or factors[0] != 1
            or any(b <= a for a, b in zip(factors, factors[1:], strict=False))
        ):
            raise InputError(
                f"ArrayReader {name}: levels must start at 1 and increase, got {list(levels)}"
            )
        self.path = name
        self._levels: list[np.ndarray] = [np.ascontiguousarray(image)]
        for f in factors[1:]:
            if image.shape[0] // f == 0 or image.shape[1] // f == 0:
                break
            self._levels.append(_area_downsample(image, f))
        self._factors = tuple(float(f) for f in factors[: len(self._levels)])
        props: dict[str, str] = {
            "openslide.vendor": "array",
            "openslide.level-count": str(len(self._levels)),
        }
        if mpp is not None:
            mx, my = (mpp, mpp) if np.isscalar(mpp) else mpp  # type: ignore[misc]
            props["openslide.mpp-x"] = repr(float(mx))
            props["openslide.mpp-y"] = repr(float(my))
        if objective_power is not None:
            props["openslide.objective-power"] = repr(float(objective_power))
        self._properties = props

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((lv.shape[1], lv.shape[0]) for lv in self._levels)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._factors

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    def read_region(
        self, l0_xy: tuple[int, int], level: int, size_wh: tuple[int, int]
    ) -> np.ndarray:
        if not 0 <= level < len(self._levels):
            raise SlideError(
                f"level {level} out of range for {self.path} ({len(self._levels)} levels)"
            )
        src = self._levels[level]
        ds = self._factors[level]
        w, h = int(size_wh[0]), int(size_wh[1])
        lv_x = int(math.floor(l0_xy[0] / ds))
        lv_y = int(math.floor(l0_xy[1] / ds))
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(lv_x, 0), max(lv_y, 0)
        x1, y1 = min(lv_x + w, src.shape[1]), min(lv_y + h, src.shape[0])
        if x1 > x0 and y1 > y0:
            out[y0 - lv_y : y1 - lv_y, x0 - lv_x : x1 - lv_x] = src[y0:y1, x0:x1]
        return out

    def get_thumbnail(self, max_size_wh: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        w, h = self.dimensions
        ds = max(w / max_size_wh[0], h / max_size_wh[1], 1.0)
        # like OpenSlide: the finest level coarse enough, then PIL's thumbnail (same sizes)
        level = 0
        for i, d in enumerate(self._factors):
            if d <= ds:
                level = i
        img = Image.fromarray(self._levels[level])
        img.thumbnail((int(max_size_wh[0]), int(max_size_wh[1])), Image.Resampling.BOX)
        return np.asarray(img)

    def close(self) -> None:
        pass


def open_slide(path: str | Path) -> SlideReader:
    """Open a whole-slide image file with OpenSlide; ``SlideError`` when it cannot be read."""
    return OpenSlideReader(path)
