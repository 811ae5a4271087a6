"""The slide side of scanning: readers, resolution plans, tissue masks, patch grids, loading.

Stored coordinates are level-0 ``(x, y)`` pixels; arrays are ``[row, col]``; resolution is
microns per pixel. Importing this package imports neither OpenSlide nor TensorFlow.
"""

from .loader import PatchBatch, Region, iter_patch_batches, plan_regions, read_region_patches
from .reader import ArrayReader, OpenSlideReader, SlideReader, composite_on_white, open_slide
from .resolution import PCAM_MPP, ResolutionPlan, plan_resolution, slide_mpp_of
from .tiling import TileGrid, mask_fraction, tile_grid
from .tissue import Thumbnail, load_mask, pen_mask, slide_thumbnail, tissue_mask

__all__ = [
    "PCAM_MPP",
    "ArrayReader",
    "OpenSlideReader",
    "PatchBatch",
    "Region",
    "ResolutionPlan",
    "SlideReader",
    "Thumbnail",
    "TileGrid",
    "composite_on_white",
    "iter_patch_batches",
    "load_mask",
    "mask_fraction",
    "open_slide",
    "pen_mask",
    "plan_regions",
    "plan_resolution",
    "read_region_patches",
    "slide_mpp_of",
    "slide_thumbnail",
    "tile_grid",
    "tissue_mask",
]
