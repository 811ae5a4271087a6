"""Regions where the probability heatmap reaches a threshold, as GeoJSON and ASAP XML.

A region is a 4-connected group of heatmap cells whose probability is at or above the
threshold (cells that were not scored never count). Its outline follows the cell edges
exactly (rectilinear), so a region's area is its cells' area and the regions of a slide add up
to ``area_above_threshold_mm2`` in ``summary.json`` (less any part of an edge cell beyond the
slide, which is clipped away). High cells touching only at a corner are separate regions; low
cells that cannot reach the outside through edge-adjacent low cells are holes. Every ring is
simple; a hole may touch its exterior or another hole at one corner, as OGC simple features
allow, so the polygons are valid for JTS/QuPath and shapely.

Frame: level-0 (x, y) pixels of the slide, origin top-left, y down (QuPath's and ASAP's
frame). Rings are closed (first vertex repeated); exteriors have positive signed area
computed on the (x, y) numbers (counter-clockwise in RFC 7946's sense, i.e. with the y axis
taken as pointing up) and holes negative. Every vertex lies in [0, width] x [0, height].
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_saliency.outputs.atomic import atomic_path

REGION_CLASS = {"name": "Metastasis", "color": [200, 0, 0]}
PATCH_CLASS = {"name": "Patch", "color": [128, 128, 128]}
TUMOUR_GROUP = "_0"  # Camelyon16 group for tumour outlines
EXCLUSION_GROUP = "_2"  # Camelyon16 group for non-tumour holes inside them
FRAME = (
    "level-0 (x, y) pixels of the slide, origin at the top-left corner, y down; "
    "multiply by slide_mpp for microns"
)


@dataclass(frozen=True, eq=False)
class Region:
    """One region: closed rings of level-0 (x, y) float64 ``[K, 2]`` vertices.

    ``exterior`` has positive signed (shoelace) area, each of ``holes`` negative;
    ``area_l0`` is in level-0 px^2 (exterior minus holes); ``n_cells`` heatmap cells.
    """

    exterior: np.ndarray = field(repr=False)
    holes: tuple[np.ndarray, ...] = field(repr=False)
    prob_max: float
    prob_mean: float
    n_cells: int
    area_l0: float

    def area_um2(self, slide_mpp: float) -> float:
        return self.area_l0 * slide_mpp * slide_mpp


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a ring [K, 2] (x, y) (closed or not): > 0 counter-clockwise, y up."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def _cell_edge_ring(contour: np.ndarray) -> np.ndarray:
    """A marching-squares contour of a 0/1 mask -> its rectilinear outline along cell edges.

    ``contour`` [N, 2] (row, col), closed, every point the midpoint between two cell centres
    (one coordinate integer, the other half-integer). Where consecutive midpoints lie on
    perpendicular edges the outline turns at the cell corner between them (both coordinates
    half-integer); those corners are the vertices. Returns closed (row, col) corners.
    """
    v = np.round(contour * 2.0) / 2.0
    row_half = (v[:, 0] % 1.0) != 0.0
    a, b = v[:-1], v[1:]
    a_half, b_half = row_half[:-1], row_half[1:]
    turn = a_half != b_half
    corners = np.stack(
        [np.where(a_half, a[:, 0], b[:, 0]), np.where(a_half, b[:, 1], a[:, 1])], axis=1
    )[turn]
    return np.vstack([corners, corners[:1]])


def _rings(
    mask: np.ndarray, sl: tuple[slice, slice], l0_per_cell: float, width: float, height: float
) -> list[np.ndarray]:
    """Outlines of the 4-connected parts of ``mask`` (a crop at ``sl`` of the heatmap) as closed
    level-0 (x, y) rings with positive signed area, clipped to ``width`` x ``height``."""
    from skimage.measure import find_contours

    rings = []
    # fully_connected="low": cells touching at a corner get separate outlines.
    for contour in find_contours(np.pad(mask, 1).astype(np.float32), 0.5, fully_connected="low"):
        rc = _cell_edge_ring(contour)
        # Padded corner (row, col) -> cell-edge index -> level-0, clipped to the slide.
        x = np.minimum((rc[:, 1] - 0.5 + sl[1].start) * l0_per_cell, width)
        y = np.minimum((rc[:, 0] - 0.5 + sl[0].start) * l0_per_cell, height)
        ring = np.stack([x, y], axis=1)
        rings.append(ring if signed_area(ring) > 0 else ring[::-1])
    return rings


def _rectangle(sl: tuple[slice, slice], l0_per_cell: float, width: float, height: float):
    x0, x1 = sl[1].start * l0_per_cell, min(sl[1].stop * l0_per_cell, width)
    y0, y1 = sl[0].start * l0_per_cell, min(sl[0].stop * l0_per_cell, height)
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], np.float64)


def find_regions(
    heatmap: np.ndarray,
    l0_per_cell: float,
    threshold: float,
    slide_dimensions: tuple[int, int] | None = None,
) -> list[Region]:
    """Regions of ``heatmap`` (float [H, W], NaN = not scored) at or above ``threshold``.

    Cell (r, c) covers level-0 x in [c*d, (c+1)*d), y in [r*d, (r+1)*d), d = ``l0_per_cell``.
    With ``slide_dimensions`` (level-0 width, height) cells starting beyond the slide are
    dropped and outlines are clipped to it. Sorted by ``prob_max``, then area, descending.
    """
    from scipy import ndimage

    values = np.asarray(heatmap, np.float32)
    if values.size == 0:
        return []
    mask = np.nan_to_num(values, nan=-np.inf) >= threshold
    width = height = np.inf
    if slide_dimensions is not None:
        width, height = float(slide_dimensions[0]), float(slide_dimensions[1])
        mask[np.arange(values.shape[0]) * l0_per_cell >= height, :] = False
        mask[:, np.arange(values.shape[1]) * l0_per_cell >= width] = False
    labels, _ = ndimage.label(mask)  # 4-connected
    regions: list[Region] = []
    for i, sl in enumerate(ndimage.find_objects(labels)):
        if sl is None:
            continue
        component = labels[sl] == i + 1
        # Holes: low cells not 4-connected to the outside. Filling them first leaves an outer
        # boundary without pinch points, so every ring is simple (OGC-valid); a hole may touch
        # the exterior or another hole at one corner, which simple features allow.
        if component.all():  # a rectangle (most often one cell): no contour tracing needed
            exterior, holes = _rectangle(sl, l0_per_cell, width, height), ()
        else:
            filled = ndimage.binary_fill_holes(component)
            (exterior,) = _rings(filled, sl, l0_per_cell, width, height)
            holes = tuple(
                ring[::-1] for ring in _rings(filled & ~component, sl, l0_per_cell, width, height)
            )
        cell_values = values[sl][component]
        regions.append(
            Region(
                exterior=exterior,
                holes=holes,
                prob_max=float(cell_values.max()),
                prob_mean=float(cell_values.mean()),
                n_cells=int(component.sum()),
                area_l0=signed_area(exterior) + sum(signed_area(h) for h in holes),
            )
        )
    regions.sort(key=lambda r: (-r.prob_max, -r.area_l0))
    return regions


def _ring_json(ring: np.ndarray) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in ring]


def _feature_id(slide: str, kind: str, index: int) -> str:
    # Deterministic UUIDs: QuPath keeps them as object IDs; reruns give the same IDs.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"wsi-saliency:{slide}:{kind}:{index}"))


def patch_squares(
    coords: np.ndarray, patch_size_l0: float, slide_dimensions: tuple[int, int]
) -> np.ndarray:
    """Closed square rings [N, 5, 2] of each patch (level-0 top-left ``coords`` [N, 2] (x, y)),
    clipped to the slide, with positive signed area."""
    xy0 = np.asarray(coords, np.float64).reshape(-1, 2)
    xy1 = np.minimum(xy0 + patch_size_l0, np.asarray(slide_dimensions, np.float64))
    x0, y0, x1, y1 = xy0[:, 0], xy0[:, 1], xy1[:, 0], xy1[:, 1]
    return np.stack(
        [
            np.stack([x0, y0], 1),
            np.stack([x1, y0], 1),
            np.stack([x1, y1], 1),
            np.stack([x0, y1], 1),
            np.stack([x0, y0], 1),
        ],
        axis=1,
    )


def regions_geojson(
    regions: Sequence[Region],
    *,
    slide_name: str,
    slide_mpp: float,
    slide_dimensions: tuple[int, int],
    threshold: float,
    patches: tuple[np.ndarray, np.ndarray, float] | None = None,
    patch_colours: np.ndarray | None = None,
) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (RFC 7946 structure, QuPath's feature properties).

    One ``annotation`` feature per region (classification ``Metastasis``) with ``prob_max``,
    ``prob_mean``, ``area_um2``, ``n_cells`` (also as QuPath ``measurements``). ``patches``
    ``(coords [N, 2], prob [N], patch_size_l0)`` adds one ``detection`` feature per scored
    patch (classification ``Patch``, property ``prob``, ``color`` from ``patch_colours``
    uint8 [N, 3] when given). Coordinates are level-0 pixels (see the module docstring).
    """
    features: list[dict[str, Any]] = []
    for i, r in enumerate(regions, start=1):
        area_um2 = r.area_um2(slide_mpp)
        stats = {
            "prob_max": round(r.prob_max, 6),
            "prob_mean": round(r.prob_mean, 6),
            "area_um2": round(area_um2, 3),
            "n_cells": r.n_cells,
        }
        features.append(
            {
                "type": "Feature",
                "id": _feature_id(slide_name, "region", i),
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [_ring_json(r.exterior), *map(_ring_json, r.holes)],
                },
                "properties": {
                    "objectType": "annotation",
                    "name": f"Region {i}",
                    "classification": dict(REGION_CLASS),
                    **stats,
                    "measurements": {k: float(v) for k, v in stats.items()},
                },
            }
        )
    if patches is not None:
        coords, prob, size = patches
        squares = patch_squares(coords, size, slide_dimensions)
        for j, (ring, p) in enumerate(zip(squares, np.asarray(prob, np.float64), strict=True)):
            props: dict[str, Any] = {
                "objectType": "detection",
                "name": f"Patch {j}",
                "classification": dict(PATCH_CLASS),
                "prob": round(float(p), 6),
                "measurements": {"prob": round(float(p), 6)},
            }
            if patch_colours is not None:
                props["color"] = [int(v) for v in patch_colours[j][:3]]
            features.append(
                {
                    "type": "Feature",
                    "id": _feature_id(slide_name, "patch", j),
                    "geometry": {"type": "Polygon", "coordinates": [_ring_json(ring)]},
                    "properties": props,
                }
            )
    return {
        "type": "FeatureCollection",
        "properties": {
            "software": "wsi-saliency",
            "slide": slide_name,
            "frame": FRAME,
            "slide_mpp": float(slide_mpp),
            "slide_dimensions": [int(v) for v in slide_dimensions],
            "threshold": float(threshold),
            "rule": "regions: 4-connected heatmap cells with P(metastasis) >= threshold",
            "n_regions": len(regions),
        },
        "features": features,
    }


def write_regions_geojson(path: str | Path, collection: dict[str, Any]) -> Path:
    """Write a FeatureCollection from :func:`regions_geojson` atomically: compact JSON, one
    feature per line (files with a feature per patch stay small); NaN is refused."""
    head = {k: v for k, v in collection.items() if k != "features"}
    lines = [json.dumps(f, separators=(",", ":"), allow_nan=False) for f in collection["features"]]
    text = json.dumps(head, allow_nan=False)[:-1] + ', "features": ['
    text += ("\n" + ",\n".join(lines) + "\n" if lines else "") + "]}\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_regions_xml(path: str | Path, regions: Sequence[Region]) -> Path:
    """The regions as ASAP / Camelyon16 XML: outlines in group ``_0``, holes in ``_2``.

    ASAP rings are not closed (the last vertex is not repeated). Camelyon16 semantics subtract
    every ``_2`` outline from the union of ``_0`` outlines, so a region lying inside another
    region's hole is lost when the XML is rasterised (the GeoJSON keeps it).
    """
    from wsi_saliency.data.annotations import Annotation, write_asap_xml

    annotations = []
    for i, r in enumerate(regions, start=1):
        annotations.append(Annotation(f"Region {i}", TUMOUR_GROUP, r.exterior[:-1]))
        for j, hole in enumerate(r.holes, start=1):
            annotations.append(Annotation(f"Region {i} hole {j}", EXCLUSION_GROUP, hole[:-1]))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_asap_xml(path, annotations)
