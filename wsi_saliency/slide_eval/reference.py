"""The ground truth: a Camelyon16-style reference CSV and per-slide lesion annotations.

Reference CSV: one row per slide, ``name,label[,...]`` with label ``Tumor`` or ``Normal``
(any case; ``Tumour`` accepted), as Camelyon16's ``reference.csv`` (no header there; a header
row is recognised and skipped). Further columns (Macro/Micro, ...) are ignored. Names may
carry a slide extension (``Test_001.tif``); they are matched by stem.

Annotations (``DIR``): per tumour slide, ``<stem>.xml`` (ASAP / Camelyon16 XML: groups _0/_1
tumour, _2 exclusion) or a Camelyon16 mask TIFF ``<stem>_mask.tif`` / ``<stem>.tif`` (tumour
pixels nonzero, first channel, at any resolution: its scale comes from its size relative to
the slide's level-0 dimensions; of a pyramid, the coarsest page at least as fine as the
evaluation grid is read). Both become a boolean tumour mask on the evaluation grid (pixel
``(r, c)`` covers level-0 x in ``[c*D, (c+1)*D)``, y in ``[r*D, (r+1)*D)``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_saliency.errors import DataError, InputError

_TUMOUR = {"tumor", "tumour"}
_NORMAL = {"normal"}
_HEADER_NAMES = {"slide", "image", "image name", "image_name", "name", "id", "filename", "file"}
_HEADER_LABELS = {"label", "class", "type", "diagnosis", "tumor/normal", "ground truth"}


@dataclass(frozen=True)
class ReferenceRow:
    """One slide of the reference: ``stem`` (name without extension), ``is_tumour``, ``line``."""

    stem: str
    is_tumour: bool
    line: int


def slide_stem(name: str) -> str:
    """The name without a slide-file extension (``Test_001.tif`` -> ``Test_001``)."""
    from wsi_saliency.scan.cohort import SLIDE_SUFFIXES

    name = name.strip()
    p = Path(name)
    return p.stem if p.suffix.lower() in SLIDE_SUFFIXES else p.name


def read_reference(path: str | Path) -> list[ReferenceRow]:
    """Read the reference CSV. ``DataError`` (naming file and line) on a bad label or repeat."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference file not found: {path}: pass --reference REF.csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the reference CSV ({exc})") from None
    rows: list[ReferenceRow] = []
    seen: dict[str, int] = {}
    for i, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [c.strip() for c in row]
        if not cells or not any(cells):
            continue
        if len(cells) < 2:
            raise DataError(
                f"{path} line {i}: expected 'slide,label' (label Tumor or Normal), "
                f"got {','.join(cells)!r}"
            )
        name, label = cells[0], cells[1].lower()
        if not rows and (name.lower() in _HEADER_NAMES or label in _HEADER_LABELS):
            continue
        if label not in _TUMOUR | _NORMAL:
            raise DataError(
                f"{path} line {i}: label {cells[1]!r} of slide {name!r} is not Tumor or Normal"
            )
        stem = slide_stem(name)
        if stem in seen:
            raise DataError(f"{path} line {i}: slide {stem!r} is listed again (line {seen[stem]})")
        seen[stem] = i
        rows.append(ReferenceRow(stem=stem, is_tumour=label in _TUMOUR, line=i))
    if not rows:
        raise DataError(f"{path}: no slides listed (expected rows 'slide,Tumor|Normal')")
    return rows


def find_annotation(folder: Path, stem: str) -> Path | None:
    """``<stem>.xml``, ``<stem>_mask.tif(f)`` or ``<stem>.tif(f)`` in ``folder``, or None."""
    for name in (f"{stem}.xml", f"{stem}_mask.tif", f"{stem}_mask.tiff", f"{stem}.tif"):
        p = folder / name
        if p.is_file():
            return p
    p = folder / f"{stem}.tiff"
    return p if p.is_file() else None


def grid_shape(slide_dimensions: tuple[int, int], l0_per_px: float) -> tuple[int, int]:
    """``(rows, cols)`` of the evaluation grid covering the whole slide."""
    w, h = slide_dimensions
    return max(1, math.ceil(h / l0_per_px)), max(1, math.ceil(w / l0_per_px))


def tumour_mask_from_xml(
    path: Path, slide_dimensions: tuple[int, int], l0_per_px: float
) -> np.ndarray:
    """bool ``[rows, cols]``: tumour outlines minus exclusions, pixel-centre rule.

    A tumour outline too small to cover any pixel centre still marks the pixel under its
    centre (so a tiny lesion is an ITC region, not empty glass).
    """
    from wsi_saliency.data.annotations import rasterize, read_asap_xml

    annotations = read_asap_xml(path)
    shape = grid_shape(slide_dimensions, l0_per_px)
    mask = rasterize(annotations, shape, l0_per_px)
    tiny = [
        a
        for a in annotations
        if a.is_tumour
        and len(a.polygon)
        and max(a.bbox_xy[2] - a.bbox_xy[0], a.bbox_xy[3] - a.bbox_xy[1]) < 2 * l0_per_px
    ]
    if tiny:
        excluded = rasterize([a for a in annotations if a.is_exclusion], shape, l0_per_px)
        for a in tiny:
            x0, y0, x1, y1 = a.bbox_xy
            r = int(np.clip((y0 + y1) / 2 // l0_per_px, 0, shape[0] - 1))
            c = int(np.clip((x0 + x1) / 2 // l0_per_px, 0, shape[1] - 1))
            mask[r, c] |= not excluded[r, c]
    return mask


def tumour_mask_from_tiff(
    path: Path, slide_dimensions: tuple[int, int], l0_per_px: float
) -> np.ndarray:
    """bool ``[rows, cols]`` from a mask TIFF (nonzero = tumour), sampled at pixel centres."""
    import tifffile

    w, h = slide_dimensions
    try:
        with tifffile.TiffFile(path) as tif:
            pages = []
            for page in tif.pages:
                shape = page.shape
                if len(shape) < 2:
                    continue
                ph, pw = (shape[0], shape[1]) if len(shape) == 2 or shape[-1] <= 4 else shape[-2:]
                ds_x, ds_y = w / pw, h / ph
                # Same aspect as the slide (within a pixel of rounding per side, or 2 %).
                if abs(ds_x - ds_y) <= max(0.02 * ds_x, 2 * ds_x / min(pw, ph)):
                    pages.append((ds_x, ds_y, page))
            if not pages:
                raise DataError(
                    f"{path}: no image in this mask TIFF has the slide's aspect ratio "
                    f"({w} x {h}); is it the mask of this slide?"
                )
            finer = [p for p in pages if p[0] <= l0_per_px * 1.001]
            ds_x, ds_y, page = (
                max(finer, key=lambda p: p[0]) if finer else min(pages, key=lambda p: p[0])
            )
            arr = np.asarray(page.asarray())
    except DataError:
        raise
    except Exception as exc:  # tifffile raises many kinds on a bad file
        raise DataError(f"{path}: not a readable mask TIFF ({exc})") from None
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] <= 4 else arr[0]
    rows, cols = grid_shape(slide_dimensions, l0_per_px)
    r_src = np.minimum(
        ((np.arange(rows) + 0.5) * l0_per_px / ds_y).astype(np.int64), arr.shape[0] - 1
    )
    c_src = np.minimum(
        ((np.arange(cols) + 0.5) * l0_per_px / ds_x).astype(np.int64), arr.shape[1] - 1
    )
    return arr[np.ix_(r_src, c_src)] > 0


def tumour_mask(path: Path, slide_dimensions: tuple[int, int], l0_per_px: float) -> np.ndarray:
    """Tumour mask on the evaluation grid from an XML or mask-TIFF annotation file."""
    if path.suffix.lower() == ".xml":
        return tumour_mask_from_xml(path, slide_dimensions, l0_per_px)
    return tumour_mask_from_tiff(path, slide_dimensions, l0_per_px)
