"""Scanning a slide: patch scores and Grad-CAM maps stitched into slide heatmaps.

Importing this package imports neither TensorFlow nor OpenSlide; the modules that run the
model import TensorFlow themselves when called.
"""

from .stitch import HeatmapStitcher, MapStitcher, bilinear_resize_maps, gaussian_weights

__all__ = ["HeatmapStitcher", "MapStitcher", "bilinear_resize_maps", "gaussian_weights"]
