"""Synthetic whole-slide images: a tiled pyramidal TIFF that OpenSlide opens, plus ASAP XML.

A slide is a few irregular tissue blobs on white glass, rendered tile by tile with
:func:`wsi_saliency.synthetic.tissue.render_tissue` at the slide's level-0 resolution, with
metastatic tumour inside given lesion polygons, and optionally a green pen mark and a dark area
(debris) on the glass that a tissue detector should exclude.

Facts this module relies on (measured with tifffile 2026.3 and OpenSlide 4.0):

- OpenSlide reads a tifffile pyramid as multi-level ``generic-tiff`` only when every level is a
  page of the main IFD chain (reduced levels written as further pages with ``subfiletype=1``);
  written as SubIFDs, only level 0 shows.
- It reports ``openslide.mpp-x/y`` only when ResolutionUnit is CENTIMETER or INCH, so the
  resolution is written as ``1e4 / mpp`` pixels per centimetre.
- ``photometric='rgb', compression='jpeg'`` gives correct colours; ``photometric='ycbcr'``
  silently does not.

Coordinate frames: polygons are level-0 ``(x, y)`` pixels (float ``[K, 2]``); arrays are indexed
``[row, col]``; resolution is microns per pixel (mpp). Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsi_saliency.data.annotations import Annotation, rasterize, write_asap_xml
from wsi_saliency.errors import DataError, InputError
from wsi_saliency.synthetic.tissue import random_blob_polygon, render_tissue

__all__ = [
    "CAMELYON16_MPP",
    "SAMPLE_SLIDE_MPP",
    "SAMPLE_SLIDE_SIZE_XY",
    "SyntheticSlideInfo",
    "make_tissue_polygons",
    "place_lesions",
    "load_camelyon16_polygons",
    "render_slide_tile",
    "write_synthetic_slide",
    "make_sample_slide",
]

CAMELYON16_MPP = 0.243
"""Level-0 microns per pixel of the Camelyon16 slides (and of their annotation polygons)."""
SAMPLE_SLIDE_MPP = 0.486
"""Level-0 mpp of the demo slide (scanning it at PCam's 0.972 needs a 2x downsample)."""
SAMPLE_SLIDE_SIZE_XY = (8000, 6000)
"""Level-0 ``(width, height)`` of the demo slide."""

_PEN_TRANSMITTANCE = np.array([0.30, 0.62, 0.52], dtype=np.float32)  # green-blue marker ink
_DARK_RGB = (28, 26, 32)  # debris / out-of-focus dark area
_MEMMAP_BYTES = 64 * 2**20  # reduced levels larger than this are buffered on disk


@dataclass(frozen=True, eq=False)
class SyntheticSlideInfo:
    """What :func:`write_synthetic_slide` wrote (all polygons level-0 ``(x, y)`` float ``[K, 2]``).

    Attributes:
        path: the pyramidal TIFF.
        xml_path: the lesion outlines as ASAP / Camelyon16 XML (group ``_0``).
        l0_size_xy: level-0 ``(width, height)`` in pixels.
        mpp: level-0 microns per pixel.
        downsamples: downsample of each level relative to level 0 (``(1, 4, 16)``).
        level_sizes_xy: ``(width, height)`` of each level.
        tile: TIFF tile side in pixels.
        seed: the seed it was written with; ``texture_seed`` the texture world of
            :func:`render_tissue` (tile RNGs are ``default_rng([seed, tile_index])``).
        lesions: tumour outlines (tumour = inside a lesion and inside tissue).
        tissue: tissue outlines (everything else is glass).
        pen: outline of the pen mark on the glass, or None.
        dark: outline of the dark area on the glass, or None.
    """

    path: Path
    xml_path: Path
    l0_size_xy: tuple[int, int]
    mpp: float
    downsamples: tuple[int, ...]
    level_sizes_xy: tuple[tuple[int, int], ...]
    tile: int
    seed: int
    texture_seed: int
    lesions: tuple[np.ndarray, ...] = field(repr=False)
    tissue: tuple[np.ndarray, ...] = field(repr=False)
    pen: np.ndarray | None = field(default=None, repr=False)
    dark: np.ndarray | None = field(default=None, repr=False)

    def lesion_annotations(self) -> list[Annotation]:
        """The lesions as :class:`Annotation` objects (group ``_0``), as written to the XML."""
        return [
            Annotation(name=f"Annotation {i}", group="_0", polygon=p)
            for i, p in enumerate(self.lesions)
        ]

    def _shape_at(self, downsample: float) -> tuple[int, int]:
        w, h = self.l0_size_xy
        return max(1, int(math.ceil(h / downsample))), max(1, int(math.ceil(w / downsample)))

    def tissue_mask(self, downsample: float) -> np.ndarray:
        """bool ``[ceil(H/d), ceil(W/d)]``: True on tissue (pen mark and dark area excluded)."""
        shape = self._shape_at(downsample)
        mask = rasterize(list(self.tissue), shape, downsample)
        for art in (self.pen, self.dark):
            if art is not None:
                mask &= ~rasterize([art], shape, downsample)
        return mask

    def tumour_mask(self, downsample: float) -> np.ndarray:
        """bool ``[ceil(H/d), ceil(W/d)]``: True on rendered tumour (lesion and tissue)."""
        shape = self._shape_at(downsample)
        return rasterize(list(self.lesions), shape, downsample) & rasterize(
            list(self.tissue), shape, downsample
        )


# --------------------------------------------------------------------------------------------
# Layout: tissue blobs, lesion placement, Camelyon16 polygons
# --------------------------------------------------------------------------------------------


def make_tissue_polygons(
    slide_size_xy: tuple[int, int],
    rng: np.random.Generator,
    *,
    tissue_fraction: float = 0.5,
    n_blobs: int | None = None,
    margin_fraction: float = 0.04,
) -> list[np.ndarray]:
    """A few irregular tissue blobs covering about ``tissue_fraction`` of the slide.

    Args:
        slide_size_xy: level-0 ``(width, height)``.
        rng: randomness.
        tissue_fraction: target fraction of the slide area covered (0-0.8); reached within a few
            percent by rescaling the blobs.
        n_blobs: number of blobs (default 2-4, the first the largest).
        margin_fraction: blobs stay this fraction of the slide size away from its border.

    Returns:
        Level-0 ``(x, y)`` polygons, float64 ``[K, 2]`` each.
    """
    if not 0.0 < tissue_fraction <= 0.8:
        raise ValueError(f"tissue_fraction must be in (0, 0.8], got {tissue_fraction}")
    w, h = slide_size_xy
    n = int(n_blobs if n_blobs is not None else rng.integers(2, 5))
    weights = np.sort(rng.uniform(0.3, 1.0, n))[::-1]
    weights[0] = max(weights[0], 1.5 * weights[1:].max(initial=0.0))
    mx, my = margin_fraction * w, margin_fraction * h
    # Centres spread over a coarse grid so blobs overlap little.
    centres = []
    for _ in range(n):
        best, best_d = None, -1.0
        for _ in range(30):
            c = np.array([rng.uniform(0.22 * w, 0.78 * w), rng.uniform(0.25 * h, 0.75 * h)])
            d = min((float(np.hypot(*(c - o))) for o in centres), default=1e9)
            if d > best_d:
                best, best_d = c, d
        centres.append(best)
    shapes = [
        random_blob_polygon(
            rng, (0.0, 0.0), 1.0, irregularity=rng.uniform(0.3, 0.5), n_vertices=128
        )
        for _ in range(n)
    ]
    ds = max(1.0, max(w, h) / 512.0)
    scale = math.sqrt(tissue_fraction * w * h / math.pi / float((weights**2).sum()))

    def build(s: float) -> list[np.ndarray]:
        out = []
        for c, shp, wt in zip(centres, shapes, weights, strict=True):
            p = shp * (s * wt)
            # Fit inside the margins: shrink if too big, then shift (never clip the outline).
            ext = p.max(axis=0) - p.min(axis=0)
            p *= min(1.0, (w - 2 * mx) / ext[0], (h - 2 * my) / ext[1])
            lo, hi = p.min(axis=0), p.max(axis=0)
            cx = float(np.clip(c[0], mx - lo[0], w - mx - hi[0]))
            cy = float(np.clip(c[1], my - lo[1], h - my - hi[1]))
            out.append(p + (cx, cy))
        return out

    polys = build(scale)
    shape = (int(math.ceil(h / ds)), int(math.ceil(w / ds)))
    for _ in range(8):
        frac = float(rasterize(polys, shape, ds).mean())
        if frac <= 0 or abs(frac - tissue_fraction) < 0.01:
            break
        scale *= math.sqrt(tissue_fraction / frac)
        polys = build(scale)
    return polys


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def place_lesions(
    polygons: Sequence[np.ndarray | Annotation],
    src_mpp: float,
    dst_mpp: float,
    slide_size_xy: tuple[int, int],
    rng: np.random.Generator,
    *,
    tissue: Sequence[np.ndarray] | None = None,
    rotate: bool = True,
    margin_um: float = 50.0,
    max_tries: int = 400,
) -> list[np.ndarray]:
    """Rescale lesion outlines physically and place them, without overlap, inside the tissue.

    Each outline is scaled by ``src_mpp / dst_mpp`` (same size in microns), optionally rotated
    about its centre, and moved to a random position where every vertex lies inside the tissue
    (or inside the slide, ``margin_um`` from its border, when ``tissue`` is None) and its
    bounding box, grown by ``margin_um``, meets no lesion placed before.

    Args:
        polygons: outlines in source level-0 ``(x, y)`` pixels (float ``[K, 2]``), or
            :class:`Annotation` objects (exclusion outlines are skipped).
        src_mpp: microns per pixel of the source coordinates (Camelyon16: 0.243).
        dst_mpp: level-0 microns per pixel of the synthetic slide.
        slide_size_xy: level-0 ``(width, height)`` of the synthetic slide.
        rng: randomness (rotation and position).
        tissue: tissue outlines of the slide (level-0 ``(x, y)``), e.g. from
            :func:`make_tissue_polygons`.
        rotate: rotate each outline by a random angle.
        margin_um: gap kept between lesions and from the slide border.
        max_tries: random positions tried per lesion.

    Returns:
        The placed outlines, float64 ``[K, 2]`` level-0 ``(x, y)`` at ``dst_mpp``, in input order.

    Raises:
        DataError: a lesion does not fit (names it and its size in microns).
    """
    if src_mpp <= 0 or dst_mpp <= 0:
        raise ValueError("src_mpp and dst_mpp must be > 0 (microns per pixel)")
    w, h = slide_size_xy
    ds = max(1.0, max(w, h) / 2048.0)
    shape = (int(math.ceil(h / ds)), int(math.ceil(w / ds)))
    if tissue is not None:
        inside = rasterize(list(tissue), shape, ds)
    else:
        inside = np.zeros(shape, dtype=bool)
        m = int(math.ceil(margin_um / dst_mpp / ds))
        inside[m : shape[0] - m, m : shape[1] - m] = True
    margin_px = margin_um / dst_mpp
    taken: list[tuple[float, float, float, float]] = []
    out: list[np.ndarray] = []
    for k, item in enumerate(polygons):
        if isinstance(item, Annotation):
            if item.is_exclusion:
                continue
            poly, name = item.polygon, item.name
        else:
            poly, name = np.asarray(item, dtype=np.float64).reshape(-1, 2), f"lesion {k}"
        if len(poly) < 3:
            raise DataError(f"{name}: a lesion outline needs at least 3 vertices, got {len(poly)}")
        c = (poly.min(axis=0) + poly.max(axis=0)) / 2
        p = (poly - c) * (src_mpp / dst_mpp)
        if rotate:
            a = rng.uniform(0, 2 * math.pi)
            rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
            p = p @ rot.T
        lo, hi = p.min(axis=0), p.max(axis=0)
        placed = None
        # Candidate centres: random inside pixels (much likelier to fit than uniform ones).
        free = np.flatnonzero(inside)
        for _ in range(max_tries if free.size and (hi - lo).max() < max(w, h) else 0):
            pick = int(free[rng.integers(free.size)])
            x = (pick % shape[1] + rng.random()) * ds
            y = (pick // shape[1] + rng.random()) * ds
            cand = p + (x, y)
            bb = (
                x + lo[0] - margin_px,
                y + lo[1] - margin_px,
                x + hi[0] + margin_px,
                y + hi[1] + margin_px,
            )
            if any(bb[0] < t[2] and t[0] < bb[2] and bb[1] < t[3] and t[1] < bb[3] for t in taken):
                continue
            # Whole outline inside the tissue: rasterise it over its bounding box only.
            c0, r0 = int(bb[0] / ds), int(bb[1] / ds)
            c1, r1 = int(math.ceil(bb[2] / ds)) + 1, int(math.ceil(bb[3] / ds)) + 1
            c0, r0 = max(c0, 0), max(r0, 0)
            c1, r1 = min(c1, shape[1]), min(r1, shape[0])
            if c1 <= c0 or r1 <= r0:
                continue
            own = rasterize([cand], (r1 - r0, c1 - c0), ds, origin_xy=(c0 * ds, r0 * ds))
            if not own.any() or (own & ~inside[r0:r1, c0:c1]).any():
                continue
            placed, bbox = (
                cand,
                (bb[0] + margin_px, bb[1] + margin_px, bb[2] - margin_px, bb[3] - margin_px),
            )
            break
        if placed is None:
            size = (hi - lo) * dst_mpp
            raise DataError(
                f"{name} ({size[0]:.0f} x {size[1]:.0f} um) does not fit inside the "
                f"tissue of a {w} x {h} px slide at {dst_mpp} mpp without overlapping "
                "other lesions; use a bigger slide, more tissue or fewer lesions"
            )
        taken.append(bbox)
        out.append(placed)
    return out


def load_camelyon16_polygons(json_path: str | os.PathLike[str]) -> list[Annotation]:
    """Read real Camelyon16 lesion outlines in NCRF's JSON form.

    The file (``camelyon16-ncrf/jsons/*.json``) holds ``{"positive": [...], "negative": [...]}``,
    each a list of ``{"name": str, "vertices": [[x, y], ...]}`` in level-0 pixels at 0.243 mpp
    (:data:`CAMELYON16_MPP`).

    Returns:
        Positive outlines as group ``_0`` (tumour), negative ones as group ``_2`` (exclusion);
        float64 ``[K, 2]`` ``(x, y)`` polygons.

    Raises:
        InputError: the file is missing. DataError: it is not in this layout (names the file).
    """
    path = Path(json_path)
    if not path.is_file():
        raise InputError(f"Camelyon16 polygon file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict) or not ({"positive", "negative"} & data.keys()):
        raise DataError(
            f"{path}: expected an object with 'positive' / 'negative' lists "
            "(NCRF Camelyon16 polygon JSON)"
        )
    out: list[Annotation] = []
    for key, group in (("positive", "_0"), ("negative", "_2")):
        for i, item in enumerate(data.get(key, [])):
            try:
                verts = np.asarray(item["vertices"], dtype=np.float64)
                name = str(item.get("name", f"{key} {i}"))
            except (KeyError, TypeError, ValueError) as exc:
                raise DataError(f"{path}: {key}[{i}] has no valid 'vertices' ({exc})") from None
            if verts.ndim != 2 or verts.shape[1] != 2:
                raise DataError(
                    f"{path}: {key}[{i}] vertices must be [[x, y], ...], got shape {verts.shape}"
                )
            out.append(Annotation(name=name, group=group, polygon=verts))
    return out


# --------------------------------------------------------------------------------------------
# Rendering and writing
# --------------------------------------------------------------------------------------------


def _near(
    polys: Sequence[np.ndarray], x0: float, y0: float, x1: float, y1: float
) -> list[np.ndarray]:
    out = []
    for p in polys:
        lo, hi = p.min(axis=0), p.max(axis=0)
        if lo[0] < x1 and hi[0] >= x0 and lo[1] < y1 and hi[1] >= y0:
            out.append(p)
    return out


def render_slide_tile(
    info: SyntheticSlideInfo, origin_xy: tuple[int, int], shape_rc: tuple[int, int], tile_index: int
) -> np.ndarray:
    """Render one level-0 window of a synthetic slide exactly as it was written (before JPEG).

    Args:
        info: the slide's :class:`SyntheticSlideInfo`.
        origin_xy: level-0 ``(x, y)`` of the window's top-left pixel.
        shape_rc: ``(rows, cols)`` of the window.
        tile_index: index of the tile in row-major tile order (seeds the tile RNG).

    Returns:
        uint8 ``[rows, cols, 3]`` RGB.
    """
    x0, y0 = int(origin_xy[0]), int(origin_xy[1])
    h, w = int(shape_rc[0]), int(shape_rc[1])
    x1, y1 = x0 + w, y0 + h
    tissue_polys = _near(info.tissue, x0, y0, x1, y1)
    if tissue_polys:
        tissue = rasterize(tissue_polys, (h, w), 1.0, origin_xy=(x0, y0))
    else:
        tissue = np.zeros((h, w), dtype=bool)
    lesion_polys = _near(info.lesions, x0, y0, x1, y1)
    tumour = None
    if lesion_polys and tissue.any():
        tumour = rasterize(lesion_polys, (h, w), 1.0, origin_xy=(x0, y0)) & tissue
    rng = np.random.default_rng([info.seed, tile_index])
    img = render_tissue(
        (h, w),
        info.mpp,
        tumour,
        rng,
        origin_xy=(x0, y0),
        texture_seed=info.texture_seed,
        tissue_mask=tissue,
    )
    if info.pen is not None and _near([info.pen], x0, y0, x1, y1):
        pen = rasterize([info.pen], (h, w), 1.0, origin_xy=(x0, y0))
        if pen.any():
            img[pen] = np.rint(img[pen] * _PEN_TRANSMITTANCE).astype(np.uint8)
    if info.dark is not None and _near([info.dark], x0, y0, x1, y1):
        dark = rasterize([info.dark], (h, w), 1.0, origin_xy=(x0, y0))
        img[dark] = _DARK_RGB
    return img


def _check_levels(levels: Sequence[int], tile: int) -> tuple[int, ...]:
    lv = tuple(int(d) for d in levels)
    if not lv or lv[0] != 1:
        raise ValueError(f"levels must start with downsample 1, got {levels}")
    if any(b <= a for a, b in zip(lv, lv[1:], strict=False)):
        raise ValueError(f"levels must increase, got {levels}")
    if any(tile % d for d in lv):
        raise ValueError(f"every downsample in {levels} must divide the tile size {tile}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF), got {tile}")
    return lv


def _pen_polygon(
    rng: np.random.Generator, w: int, h: int, mpp: float, tissue: Sequence[np.ndarray]
) -> np.ndarray:
    """A wavy marker stroke (about 1.2 mm long, 90 um wide) on the glass, touching tissue little.

    Tries positions across the slide and keeps the one overlapping the tissue least.
    """
    length = min(1200.0 / mpp, 0.7 * h)
    half_w = min(45.0 / mpp, 0.02 * w)
    t = np.linspace(0, 1, 60)
    ds = max(1.0, max(w, h) / 256.0)
    shape = (int(math.ceil(h / ds)), int(math.ceil(w / ds)))
    tm = rasterize(list(tissue), shape, ds)
    best, best_score = None, math.inf
    for _ in range(40):
        x_c = rng.uniform(0.04, 0.96) * w
        y0 = rng.uniform(0.02 * h, max(0.02 * h, 0.98 * h - length))
        wob = 0.02 * w * np.sin(2 * math.pi * (t * rng.uniform(0.6, 1.2) + rng.uniform(0, 1)))
        x = np.clip(x_c + wob, half_w, w - half_w)
        y = y0 + t * length
        left = np.stack([x - half_w, y], axis=1)
        right = np.stack([x + half_w, y], axis=1)[::-1]
        cand = np.concatenate([left, right])
        score = float((rasterize([cand], shape, ds) & tm).sum()) + 0.01 * rng.random()
        if score < best_score:
            best, best_score = cand, score
    assert best is not None
    return best


def write_synthetic_slide(
    path: str | os.PathLike[str],
    *,
    l0_size_xy: tuple[int, int],
    mpp: float,
    lesions: Sequence[np.ndarray],
    seed: int,
    tile: int = 512,
    levels: Sequence[int] = (1, 4, 16),
    jpeg_quality: int = 85,
    compression: str = "jpeg",
    blank_fraction: float = 0.5,
    tissue: Sequence[np.ndarray] | None = None,
    pen_mark: bool = True,
    dark_area: bool = True,
) -> SyntheticSlideInfo:
    """Write a tiled, JPEG-compressed pyramidal TIFF that OpenSlide opens, and ``<stem>.xml``.

    Level 0 is rendered tile by tile (tile RNG ``default_rng([seed, tile_index])``, texture world
    ``texture_seed = seed``) and streamed to the file; each tile is also area-averaged into the
    reduced levels, which are buffered (in a temporary memory map beside the output when large)
    and written as further pages with ``subfiletype=1``. Memory stays bounded: the level-0 image
    is never held whole.

    Args:
        path: output ``.tif``; the lesion outlines go to the same name with ``.xml``.
        l0_size_xy: level-0 ``(width, height)`` in pixels.
        mpp: level-0 microns per pixel (written as ResolutionUnit CENTIMETER, so OpenSlide
            reports ``openslide.mpp-x/y``).
        lesions: tumour outlines, float ``[K, 2]`` level-0 ``(x, y)``; tumour is rendered where a
            lesion meets tissue.
        seed: determinism: the same arguments give the same pixels.
        tile: TIFF tile side (multiple of 16, divisible by every downsample).
        levels: downsample of each pyramid level, starting with 1.
        jpeg_quality: JPEG quality of every level.
        compression: ``"jpeg"`` (needs imagecodecs) or ``"zlib"`` (deflate, lossless, no
            extra package; larger files). OpenSlide reads both.
        blank_fraction: fraction of the slide left as bare glass when ``tissue`` is generated.
        tissue: tissue outlines; default :func:`make_tissue_polygons` with
            ``default_rng([seed, 1])``.
        pen_mark: draw a green marker stroke on the glass near one side.
        dark_area: draw a dark blob (debris) on the glass.

    Returns:
        :class:`SyntheticSlideInfo`.
    """
    import tifffile

    path = Path(path)
    w, h = int(l0_size_xy[0]), int(l0_size_xy[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"l0_size_xy must be positive, got {l0_size_xy}")
    if mpp <= 0:
        raise ValueError(f"mpp must be > 0, got {mpp}")
    lv = _check_levels(levels, tile)
    layout_rng = np.random.default_rng([seed, 1])
    if tissue is None:
        tissue = make_tissue_polygons((w, h), layout_rng, tissue_fraction=1.0 - blank_fraction)
    tissue_t = tuple(np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in tissue)
    lesions_t = tuple(np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in lesions)
    art_rng = np.random.default_rng([seed, 2])
    pen = _pen_polygon(art_rng, w, h, mpp, tissue_t) if pen_mark else None
    dark = None
    if dark_area:
        # Debris on the glass: the corner farthest from tissue (checked at low resolution).
        ds = max(1.0, max(w, h) / 256.0)
        tm = rasterize(list(tissue_t), (int(math.ceil(h / ds)), int(math.ceil(w / ds))), ds)
        r = 80.0 / mpp
        best, best_score = None, -math.inf
        for _ in range(40):
            c = (art_rng.uniform(0.1 * w, 0.9 * w), art_rng.uniform(0.1 * h, 0.9 * h))
            cand = random_blob_polygon(art_rng, c, r, irregularity=0.5)
            hit = rasterize([cand], tm.shape, ds) & tm
            pen_hit = pen is not None and bool(
                (rasterize([cand], tm.shape, ds) & rasterize([pen], tm.shape, ds)).any()
            )
            score = -float(hit.sum()) - (1e6 if pen_hit else 0.0) + art_rng.random()
            if score > best_score:
                best, best_score = cand, score
        dark = best
    info = SyntheticSlideInfo(
        path=path,
        xml_path=path.with_suffix(".xml"),
        l0_size_xy=(w, h),
        mpp=float(mpp),
        downsamples=lv,
        level_sizes_xy=tuple((max(1, w // d), max(1, h // d)) for d in lv),
        tile=tile,
        seed=int(seed),
        texture_seed=int(seed),
        lesions=lesions_t,
        tissue=tissue_t,
        pen=pen,
        dark=dark,
    )

    ntx, nty = math.ceil(w / tile), math.ceil(h / tile)
    res_cm = 1e4 / mpp
    if compression not in ("jpeg", "zlib"):
        raise ValueError(f"compression must be 'jpeg' or 'zlib', got {compression!r}")
    common = dict(
        photometric="rgb",
        compression=compression,
        compressionargs={"level": int(jpeg_quality) if compression == "jpeg" else 6},
        resolutionunit="CENTIMETER",
        metadata=None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synthslide-") as tmpdir:
        reduced: list[np.ndarray] = []
        for d in lv[1:]:
            shape = (math.ceil(h / d) + 1, math.ceil(w / d) + 1, 3)
            if np.prod(shape) > _MEMMAP_BYTES:
                arr = np.lib.format.open_memmap(
                    Path(tmpdir) / f"level_{d}.npy", mode="w+", dtype=np.uint8, shape=shape
                )
            else:
                arr = np.zeros(shape, dtype=np.uint8)
            reduced.append(arr)

        def level0_tiles() -> Iterator[np.ndarray]:
            for ty in range(nty):
                for tx in range(ntx):
                    img = render_slide_tile(
                        info, (tx * tile, ty * tile), (tile, tile), ty * ntx + tx
                    )
                    for d, arr in zip(lv[1:], reduced, strict=True):
                        t = tile // d
                        small = img.reshape(t, d, t, d, 3).mean(axis=(1, 3))
                        r0, c0 = ty * t, tx * t
                        r1, c1 = min(r0 + t, arr.shape[0]), min(c0 + t, arr.shape[1])
                        arr[r0:r1, c0:c1] = np.rint(small[: r1 - r0, : c1 - c0])
                    yield img

        description = json.dumps(
            {
                "generator": "wsi_saliency.synthetic.slides",
                "seed": int(seed),
                "mpp": float(mpp),
                "lesions": len(lesions_t),
            }
        )
        try:
            with tifffile.TiffWriter(tmp_path, bigtiff=w * h * 3 > 2**31) as tw:
                tw.write(
                    level0_tiles(),
                    shape=(h, w, 3),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    resolution=(res_cm, res_cm),
                    subfiletype=0,
                    description=description,
                    software="wsi-saliency",
                    **common,
                )
                for d, arr, (lw, lh) in zip(lv[1:], reduced, info.level_sizes_xy[1:], strict=True):
                    tw.write(
                        arr[:lh, :lw],
                        tile=(tile, tile),
                        resolution=(res_cm / d, res_cm / d),
                        subfiletype=1,
                        **common,
                    )
            os.replace(tmp_path, path)
        finally:
            reduced.clear()  # release the memory maps before the folder goes
            if tmp_path.exists():
                tmp_path.unlink()
    write_asap_xml(info.xml_path, info.lesion_annotations())
    return info


def make_sample_slide(folder: str | os.PathLike[str], seed: int = 0) -> SyntheticSlideInfo:
    """Write the demo slide ``sample_slide.tif`` (+ ``sample_slide.xml``) into ``folder``.

    8000 x 6000 level-0 px at 0.486 mpp (3.9 x 2.9 mm), levels 1/4/16, JPEG quality 80, about
    half the area tissue (2-4 blobs), a pen mark and a dark area on the glass, and 4 lesions
    placed wholly inside the tissue: about 1.2 mm, 0.8 mm, 0.5 mm and 0.3 mm across.
    """
    folder = Path(folder)
    w, h = SAMPLE_SLIDE_SIZE_XY
    mpp = SAMPLE_SLIDE_MPP
    diameters_um = (1200.0, 800.0, 500.0, 300.0)
    for attempt in range(50):
        # A layout where all lesions fit; the attempt number is part of the seed.
        rng = np.random.default_rng([seed, 1, attempt])
        tissue = make_tissue_polygons((w, h), rng, tissue_fraction=0.4, n_blobs=3)
        shapes = [
            random_blob_polygon(
                rng, (0.0, 0.0), d / 2 / mpp, irregularity=rng.uniform(0.25, 0.45), n_vertices=96
            )
            for d in diameters_um
        ]
        try:
            lesions = place_lesions(shapes, mpp, mpp, (w, h), rng, tissue=tissue, margin_um=60.0)
        except DataError:
            continue
        break
    else:  # pragma: no cover - the layout is fixed by the seed and fits for small seeds
        raise DataError(f"no sample-slide layout fits for seed {seed}; try another seed")
    return write_synthetic_slide(
        folder / "sample_slide.tif",
        l0_size_xy=(w, h),
        mpp=mpp,
        lesions=lesions,
        seed=seed,
        tile=512,
        levels=(1, 4, 16),
        jpeg_quality=65,
        tissue=tissue,
    )
