"""Deep Zoom tiles of a slide, written to disk (small slides) or made on demand (the server).

The pyramid covers the whole level-0 frame (``limit_bounds=False``): Deep Zoom's full-size
level is level 0 pixel for pixel, so the heatmaps, outlines and patches, all in level-0
``(x, y)`` pixels, line up without an offset. Layout (the DZI convention):
``<name>.dzi`` and ``<name>_files/<level>/<col>_<row>.jpeg``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from wsi_saliency.errors import SlideError
from wsi_saliency.outputs.atomic import atomic_path

TILE_SIZE = 254
OVERLAP = 1
FORMAT = "jpeg"
QUALITY = 80
DZI_XMLNS = "http://schemas.microsoft.com/deepzoom/2008"


MAX_TILE_READ_PX = 4096 * 4096
"""Slide pixels a Deep Zoom tile may read at once; larger ones are made from bounded blocks."""


def open_deepzoom(slide_path: str | Path):
    """``openslide.deepzoom.DeepZoomGenerator`` over the whole level-0 frame of the slide.

    A tile of a coarse Deep Zoom level covers much of the slide; OpenSlide reads it from the
    finest level at or below its downsample in one ``read_region``, which for a slide without
    a pyramid is the whole level 0 (40 GB of RGBA for 10^5 x 10^5 px). Such tiles (over
    ``MAX_TILE_READ_PX``) are made by :func:`~wsi_saliency.slide.reader.region_thumbnail`
    instead: the same pixels, from block reads of bounded size (slow on such slides: each
    coarse level reads the whole slide once, but never runs out of memory).
    """
    import openslide
    from openslide.deepzoom import DeepZoomGenerator

    class BoundedDeepZoomGenerator(DeepZoomGenerator):
        def get_tile(self, level: int, address: tuple[int, int]):
            from wsi_saliency.slide.reader import region_thumbnail

            l0_xy, slide_level, l_size = self.get_tile_coordinates(level, address)
            if l_size[0] * l_size[1] <= MAX_TILE_READ_PX:
                return super().get_tile(level, address)
            z_size = self.get_tile_dimensions(level, address)
            return region_thumbnail(slide, l0_xy, slide_level, l_size, z_size)

    path = Path(slide_path)
    if not path.is_file():
        raise SlideError(f"slide not found: {path}; pass --slides FOLDER if it has moved")
    try:
        slide = openslide.open_slide(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise SlideError(f"cannot open slide {path}: {first}") from None
    return BoundedDeepZoomGenerator(slide, tile_size=TILE_SIZE, overlap=OVERLAP, limit_bounds=False)


def dzi_config(width: int, height: int, tiles_url: str) -> dict:
    """The DZI descriptor as OpenSeadragon's inline object (no request for the .dzi XML, which
    Chromium refuses from file://); ``tiles_url`` ends with ``/``."""
    return {
        "Image": {
            "xmlns": DZI_XMLNS,
            "Url": tiles_url,
            "Format": FORMAT,
            "Overlap": str(OVERLAP),
            "TileSize": str(TILE_SIZE),
            "Size": {"Width": str(int(width)), "Height": str(int(height))},
        }
    }


def tile_jpeg(dz, level: int, col: int, row: int) -> bytes:
    """One tile as JPEG bytes; ``ValueError`` when the address is outside the pyramid."""
    import io

    if not 0 <= level < dz.level_count:
        raise ValueError(f"level {level} out of range")
    cols, rows = dz.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        raise ValueError(f"tile {col}_{row} out of range at level {level}")
    tile = dz.get_tile(level, (col, row)).convert("RGB")
    buf = io.BytesIO()
    tile.save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def write_deepzoom(slide_path: str | Path, folder: str | Path, name: str = "slide") -> int:
    """Write ``folder/<name>.dzi`` and ``folder/<name>_files/``; returns the number of tiles.

    The tiles go to a hidden folder that is renamed when complete, and the ``.dzi`` is written
    last, so a page never points at half a pyramid.
    """
    folder = Path(folder)
    dz = open_deepzoom(slide_path)
    final = folder / f"{name}_files"
    partial = folder / f".{name}_files.partial"
    shutil.rmtree(partial, ignore_errors=True)
    count = 0
    try:
        for level in range(dz.level_count):
            level_dir = partial / str(level)
            level_dir.mkdir(parents=True)
            cols, rows = dz.level_tiles[level]
            for row in range(rows):
                for col in range(cols):
                    (level_dir / f"{col}_{row}.{FORMAT}").write_bytes(
                        tile_jpeg(dz, level, col, row)
                    )
                    count += 1
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    with atomic_path(folder / f"{name}.dzi") as tmp:
        tmp.write_text(dz.get_dzi(FORMAT))
    return count
