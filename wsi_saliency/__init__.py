"""wsi-saliency: metastasis heatmaps with Grad-CAM for lymph-node whole-slide images.

Coordinate frames used throughout the package:
- stored coordinates are level-0 ``(x, y)`` pixels of the slide (``l0_`` prefix);
- arrays are indexed ``[row, col]``;
- resolution is always microns per pixel (``mpp``), never a bare pyramid level.

Importing this package does not import TensorFlow or OpenSlide.
"""

__version__ = "0.1.0"
