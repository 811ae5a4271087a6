"""Review pages for scan outputs: a cohort page and a zoomable viewer per slide.

``build_review(OUT)`` writes ``OUT/index.html`` and ``OUT/<stem>/review.html`` (with its files
in ``OUT/<stem>/review/``); ``make_server(OUT)`` serves them with slide tiles made on demand.
The viewer is OpenSeadragon, shipped in ``static/openseadragon/`` (see its ``VERSION``).
Importing this package imports neither TensorFlow nor OpenSlide.
"""

from wsi_saliency.review.pages import SlidePage, build_slide_page
from wsi_saliency.review.server import ReviewServer, make_server
from wsi_saliency.review.site import CohortEntry, ReviewSite, build_review, read_cohort

__all__ = [
    "CohortEntry",
    "ReviewServer",
    "ReviewSite",
    "SlidePage",
    "build_review",
    "build_slide_page",
    "make_server",
    "read_cohort",
]
