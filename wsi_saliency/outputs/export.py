"""Viewer files of one scanned slide: pyramidal TIFF heatmaps and region outlines.

Writes into the slide's output folder ``OUT/<slide stem>/``:

- ``heatmap.tiff``: P(metastasis) on ``PROBABILITY_SCALE`` (jet over [0, 1]);
- ``gradcam.tiff``: raw Grad-CAM on ``gradcam_scale`` (inferno, 0 to the 99.5th percentile);
- ``regions.geojson``: regions at or above the threshold (and optionally every patch);
- ``regions.xml``: the same regions as ASAP / Camelyon16 annotations.

``scan`` calls :func:`write_exports` with the in-memory result; ``wsi-saliency export`` calls
:func:`export_slide`, which reads ``scan.h5``. See ``outputs/tiff.py`` and ``outputs/regions.py``
for the formats.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsi_saliency.errors import DataError, InputError

EXPORT_FILES = ("heatmap.tiff", "gradcam.tiff", "regions.geojson", "regions.xml")
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class SlideMaps:
    """What the exports need from a scan, in the frames of ``scan.h5``.

    Heatmaps are float32 [rows, cols] (NaN = not scored) with level-0 px per cell;
    ``coords`` int [N, 2] level-0 (x, y) top-left of each scored patch; ``prob`` [N];
    ``slide_dimensions`` level-0 (width, height); ``slide_mpp`` level-0 microns per pixel;
    ``threshold`` the scan's region threshold.
    """

    slide_name: str
    heatmap_prob: np.ndarray
    prob_downsample: float
    heatmap_gradcam: np.ndarray
    gradcam_downsample: float
    slide_mpp: float
    slide_dimensions: tuple[int, int]
    coords: np.ndarray
    prob: np.ndarray
    patch_size_l0: float
    threshold: float = DEFAULT_THRESHOLD

    @classmethod
    def from_result(cls, result) -> SlideMaps:
        """From a ``wsi_saliency.scan.pipeline.SlideResult``."""
        return cls(
            slide_name=result.path.name,
            heatmap_prob=result.heatmap_prob,
            prob_downsample=float(result.heatmap_prob_downsample),
            heatmap_gradcam=result.heatmap_gradcam,
            gradcam_downsample=float(result.heatmap_gradcam_downsample),
            slide_mpp=float(result.slide_mpp),
            slide_dimensions=(int(result.slide_dimensions[0]), int(result.slide_dimensions[1])),
            coords=np.asarray(result.coords),
            prob=np.asarray(result.prob),
            patch_size_l0=float(result.patch_size_l0),
            threshold=float(result.config.threshold),
        )

    @classmethod
    def from_h5(cls, path: str | Path) -> SlideMaps:
        """From ``scan.h5``; ``DataError`` naming the file when it is unreadable or incomplete."""
        from wsi_saliency.outputs.h5 import read_scan_h5

        path = Path(path)
        try:
            d = read_scan_h5(path, ("heatmap_prob", "heatmap_gradcam", "coords", "prob"))
            dims = np.asarray(d["slide_dimensions"]).tolist()
            return cls(
                slide_name=Path(str(d.get("slide_path", path.parent.name))).name,
                heatmap_prob=np.asarray(d["heatmap_prob"], np.float32),
                prob_downsample=float(d["heatmap_prob_downsample"]),
                heatmap_gradcam=np.asarray(d["heatmap_gradcam"], np.float32),
                gradcam_downsample=float(d["heatmap_gradcam_downsample"]),
                slide_mpp=float(d["slide_mpp"]),
                slide_dimensions=(int(dims[0]), int(dims[1])),
                coords=np.asarray(d["coords"]),
                prob=np.asarray(d["prob"]),
                patch_size_l0=float(d["patch_size_l0"]),
                threshold=float((d.get("config") or {}).get("threshold", DEFAULT_THRESHOLD)),
            )
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(
                f"{path}: not a readable scan.h5 ({type(exc).__name__}: {exc}); "
                "rescan the slide with wsi-saliency scan --overwrite"
            ) from None


def write_exports(
    folder: str | Path,
    maps: SlideMaps,
    *,
    threshold: float | None = None,
    patches: bool = False,
    cell_px: int | None = None,
    timings: dict[str, float] | None = None,
) -> list[Path]:
    """Write ``EXPORT_FILES`` into ``folder`` (each atomically); returns their paths.
    ``timings``: filled with the seconds each file took (by file name), when given.

    ``threshold``: region threshold (default ``maps.threshold``); ``patches``: add one GeoJSON
    feature per scored patch; ``cell_px``: TIFF pixels per heatmap cell side (default: about
    4 um per TIFF pixel, see ``outputs/tiff.py``).
    """
    from wsi_saliency.outputs.colour import PROBABILITY_SCALE, colourise, gradcam_scale
    from wsi_saliency.outputs.regions import (
        find_regions,
        regions_geojson,
        write_regions_geojson,
        write_regions_xml,
    )
    from wsi_saliency.outputs.tiff import write_heatmap_tiff

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    t = maps.threshold if threshold is None else float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InputError(f"region threshold must be in [0, 1], got {t}")
    if cell_px is not None and cell_px < 1:
        raise InputError(f"cell_px (TIFF pixels per heatmap cell) must be >= 1, got {cell_px}")
    about = {"slide": maps.slide_name}
    timings = {} if timings is None else timings
    written = []
    with timed(timings, "heatmap.tiff"):
        written.append(
            write_heatmap_tiff(
                folder / "heatmap.tiff",
                maps.heatmap_prob,
                maps.prob_downsample,
                maps.slide_mpp,
                PROBABILITY_SCALE,
                cell_px=cell_px,
                description=about,
            )
        )
    with timed(timings, "gradcam.tiff"):
        written.append(
            write_heatmap_tiff(
                folder / "gradcam.tiff",
                maps.heatmap_gradcam,
                maps.gradcam_downsample,
                maps.slide_mpp,
                gradcam_scale(maps.heatmap_gradcam),
                cell_px=cell_px,
                description=about,
            )
        )
    with timed(timings, "regions.geojson"):  # finding the regions included
        regions = find_regions(maps.heatmap_prob, maps.prob_downsample, t, maps.slide_dimensions)
        patch_args = colours = None
        if patches:
            patch_args = (maps.coords, maps.prob, maps.patch_size_l0)
            colours = colourise(np.asarray(maps.prob, np.float32)[None, :], PROBABILITY_SCALE)[0]
        collection = regions_geojson(
            regions,
            slide_name=maps.slide_name,
            slide_mpp=maps.slide_mpp,
            slide_dimensions=maps.slide_dimensions,
            threshold=t,
            patches=patch_args,
            patch_colours=colours,
        )
        written.append(write_regions_geojson(folder / "regions.geojson", collection))
    with timed(timings, "regions.xml"):
        written.append(write_regions_xml(folder / "regions.xml", regions))
    return written


@contextmanager
def timed(timings: dict[str, float], key: str) -> Iterator[None]:
    """Add the seconds the ``with`` block takes to ``timings[key]``."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def export_slide(
    folder: str | Path,
    *,
    threshold: float | None = None,
    patches: bool = False,
    cell_px: int | None = None,
) -> list[Path]:
    """Read ``folder/scan.h5`` and write ``EXPORT_FILES`` beside it (see :func:`write_exports`).

    ``threshold`` defaults to the scan's own (``scan.threshold`` in its config, else 0.5).
    """
    folder = Path(folder)
    h5 = folder / "scan.h5"
    if not h5.is_file():
        raise InputError(f"{folder} holds no scan.h5: pass a folder written by wsi-saliency scan")
    return write_exports(
        folder, SlideMaps.from_h5(h5), threshold=threshold, patches=patches, cell_px=cell_px
    )


def find_scan_folders(items: Iterable[str | Path]) -> list[Path]:
    """Slide output folders (holding ``scan.h5``) from folders given by the user: a slide folder
    as is, a scan's ``--out`` folder as its slide subfolders. ``InputError`` otherwise."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if not path.is_dir():
            raise InputError(f"{path} is not a folder: pass OUT/<slide> folders or OUT itself")
        if (path / "scan.h5").is_file():
            found.append(path)
            continue
        inside = sorted(
            p
            for p in path.iterdir()
            if p.is_dir() and not p.name.startswith(".") and (p / "scan.h5").is_file()
        )  # .<stem>.partial folders are scans in progress
        if not inside:
            raise InputError(
                f"{path} holds no scan.h5, nor do its subfolders: "
                "pass a folder written by wsi-saliency scan"
            )
        found.extend(inside)
    return list(dict.fromkeys(p.resolve() for p in found))
