"""One slide's review page: ``OUT/<stem>/review.html`` and its files in ``OUT/<stem>/review/``.

Files: ``overview.jpg`` (whole slide, at most 2048 px; the viewer's picture when no tiles
can be had), ``thumb.jpg`` (for the cohort page), ``prob.png`` / ``gradcam.png`` (heatmaps in
the shared colours, see :mod:`wsi_saliency.outputs.colour`), ``legend_*.png``,
``patch_NN.png`` / ``patch_NN_cam.png`` (the gallery), ``slide.dzi`` + ``slide_files/``
(Deep Zoom tiles, when written) and ``manifest.json`` (what the server needs). Everything
the page draws is in level-0 ``(x, y)`` pixels; the page turns them into viewport units.
"""

from __future__ import annotations

import html
import json
import shutil
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from string import Template
from urllib.parse import quote

import numpy as np

from wsi_saliency.errors import DataError, WsiSaliencyError
from wsi_saliency.outputs.atomic import atomic_path, write_json
from wsi_saliency.outputs.colour import (
    PROBABILITY_SCALE,
    ColourScale,
    colour_bar,
    colourise,
    gradcam_scale,
)
from wsi_saliency.review import deepzoom, layers
from wsi_saliency.scan.cohort import SLIDE_FILES

ASSETS = "review"  # folder beside review.html
OVERVIEW_MAX = 2048
THUMB_MAX = 240
PATCH_PX = 160
CAM_ALPHA = 0.5


@dataclass(frozen=True)
class SlidePage:
    """A written slide page; paths are absolute, ``warnings`` say what the page lacks."""

    stem: str
    slide: str
    page: Path
    thumbnail: Path
    tiles_written: bool
    gallery: int
    regions: int
    warnings: tuple[str, ...] = field(default=())


def template(name: str) -> Template:
    return Template(resources.files("wsi_saliency.review").joinpath("templates", name).read_text())


def script_json(data) -> str:
    """JSON safe inside ``<script type="application/json">`` (no ``</script>`` breakout)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


def _save(path: Path, image, **kwargs) -> Path:
    from PIL import Image

    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    fmt = "JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG"
    with atomic_path(path) as tmp:
        image.save(tmp, fmt, **kwargs)
    return path


def _ticks(scale: ColourScale, n: int) -> list[dict]:
    values = np.linspace(scale.vmin, scale.vmax, n)
    return [{"value": float(v), "text": f"{v:.3g}"} for v in values]


def _resolve_slide(recorded: str, slides_dir: Path | None) -> Path:
    path = Path(recorded)
    if not path.is_file() and slides_dir is not None and (slides_dir / path.name).is_file():
        return slides_dir / path.name
    return path


def _crop(reader, l0_xy, l0_size: float, out_px: int) -> np.ndarray:
    """The patch at level-0 ``l0_xy`` (top-left), ``l0_size`` wide, as RGB [out_px, out_px]."""
    from PIL import Image

    wanted = l0_size / out_px
    level = max(
        (i for i, d in enumerate(reader.level_downsamples) if d <= wanted + 1e-6), default=0
    )
    ds = reader.level_downsamples[level]
    size = max(1, int(np.ceil(l0_size / ds)))
    img = reader.read_region_image((int(l0_xy[0]), int(l0_xy[1])), level, (size, size))
    return np.asarray(img.resize((out_px, out_px), Image.Resampling.LANCZOS))


def _cam_on(crop: np.ndarray, cam: np.ndarray, scale: ColourScale) -> np.ndarray:
    """``cam`` [h, w] (raw Grad-CAM) resized bilinearly onto ``crop`` and blended over it."""
    from PIL import Image

    out_px = crop.shape[0]
    values = np.asarray(
        Image.fromarray(np.asarray(cam, np.float32), mode="F").resize(
            (out_px, out_px), Image.Resampling.BILINEAR
        )
    )
    rgba = colourise(values, scale).astype(np.float32)
    a = rgba[..., 3:4] / 255.0 * CAM_ALPHA
    return (crop * (1 - a) + rgba[..., :3] * a).round().astype(np.uint8)


def _thumbnail(overview: np.ndarray | None, scan: dict, slide_wh) -> np.ndarray:
    """The slide's overview with the probability heatmap over it, at most THUMB_MAX px."""
    from PIL import Image

    from wsi_saliency.outputs.overlays import heatmap_on_grid

    w, h = slide_wh
    if overview is None:
        overview = np.full((max(1, round(THUMB_MAX * h / w)), THUMB_MAX, 3), 235, np.uint8)
    img = Image.fromarray(overview)
    img.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS)
    base = np.asarray(img, np.float32)
    l0_per_px = (w / base.shape[1], h / base.shape[0])
    values = heatmap_on_grid(
        scan["heatmap_prob"], float(scan["heatmap_prob_downsample"]), base.shape[:2], l0_per_px
    )
    rgba = colourise(values, PROBABILITY_SCALE).astype(np.float32)
    a = rgba[..., 3:4] / 255.0 * 0.45
    return (base * (1 - a) + rgba[..., :3] * a).round().astype(np.uint8)


def build_slide_page(
    folder: str | Path,
    *,
    summary: dict,
    static_href: str,
    index_href: str,
    top_k: int = 12,
    tiles: bool | None = None,
    tiles_limit_px: int = 64_000_000,
    slides_dir: Path | None = None,
) -> SlidePage:
    """Write the review page of one scanned slide (``folder`` = ``OUT/<stem>``).

    ``tiles``: write Deep Zoom tiles (True), don't (False), or only when the slide has at most
    ``tiles_limit_px`` level-0 pixels (None). Without tiles the page opened from disk shows
    the overview; served by ``wsi-saliency serve`` it gets tiles on demand. A slide file that
    cannot be opened is a warning, not an error: the page then shows the heatmaps only.
    ``DataError`` when ``scan.h5`` is missing or unreadable.
    """
    from wsi_saliency.outputs.h5 import read_scan_h5

    folder = Path(folder)
    h5_path = folder / "scan.h5"
    try:
        scan = read_scan_h5(h5_path)
        slide_w, slide_h = (int(v) for v in scan["slide_dimensions"])
        heatmap = np.asarray(scan["heatmap_prob"], np.float32)
        d_prob = float(scan["heatmap_prob_downsample"])
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"cannot read {h5_path} ({type(exc).__name__}: {exc}): rescan the slide with "
            "--overwrite"
        ) from None
    stem = folder.name
    assets = folder / ASSETS
    assets.mkdir(exist_ok=True)
    notes: list[str] = []
    slide_path = _resolve_slide(str(scan.get("slide_path", "")), slides_dir)

    reader = None
    try:
        from wsi_saliency.slide.reader import open_slide

        reader = open_slide(slide_path)
    except WsiSaliencyError as exc:
        notes.append(f"{exc} (the page shows the heatmaps without the slide)")

    overview = None
    data_base: dict = {"dzi": None, "tiles_written": False, "overview": None}
    try:
        if reader is not None:
            overview = reader.get_thumbnail((OVERVIEW_MAX, OVERVIEW_MAX))
            _save(assets / "overview.jpg", overview, quality=85)
            data_base["overview"] = f"{ASSETS}/overview.jpg"
            data_base["dzi"] = deepzoom.dzi_config(slide_w, slide_h, f"{ASSETS}/slide_files/")
            want = tiles if tiles is not None else slide_w * slide_h <= tiles_limit_px
            if want:
                deepzoom.write_deepzoom(slide_path, assets, "slide")
                data_base["tiles_written"] = True
            else:
                for stale in (assets / "slide.dzi", assets / "slide_files"):
                    if stale.is_dir():
                        shutil.rmtree(stale)
                    else:
                        stale.unlink(missing_ok=True)

        overlays = []
        prob = layers.heatmap_raster(heatmap, d_prob, PROBABILITY_SCALE)
        _save(assets / "prob.png", prob.rgba, optimize=True)
        _save(assets / "legend_prob.png", colour_bar(PROBABILITY_SCALE))
        overlays.append(
            _overlay("prob", "Probability", prob, PROBABILITY_SCALE, _ticks(PROBABILITY_SCALE, 5))
        )
        cam_heatmap = np.asarray(scan.get("heatmap_gradcam", np.zeros((0, 0))), np.float32)
        cam_scale = None
        if cam_heatmap.size and np.isfinite(cam_heatmap).any():
            cam_scale = gradcam_scale(cam_heatmap)
            cam = layers.heatmap_raster(
                cam_heatmap, float(scan["heatmap_gradcam_downsample"]), cam_scale
            )
            _save(assets / "gradcam.png", cam.rgba, optimize=True)
            _save(assets / "legend_gradcam.png", colour_bar(cam_scale))
            legend = _gradcam_legend(cam_scale, str(scan.get("gradcam_map", "")))
            overlays.append(_overlay("gradcam", "Grad-CAM", cam, legend, _ticks(cam_scale, 3)))
        else:
            notes.append("no Grad-CAM in scan.h5 (scanned with --no-gradcam)")

        mask = scan.get("tissue_mask")
        outlines = []
        if mask is not None and np.size(mask):
            ds = np.atleast_1d(np.asarray(scan["tissue_mask_downsample"], np.float64))
            outlines = layers.tissue_outlines(mask, (float(ds[0]), float(ds[-1])))

        regions: list[dict] = []
        geojson = folder / "regions.geojson"
        if geojson.is_file():
            try:
                regions = layers.read_regions(geojson)
            except ValueError as exc:
                notes.append(f"regions not shown: {exc}")

        gallery = _write_gallery(assets, scan, reader, cam_scale, top_k)
        thumb = _save(
            assets / "thumb.jpg", _thumbnail(overview, scan, (slide_w, slide_h)), quality=85
        )
    finally:
        if reader is not None:
            reader.close()

    write_json(
        assets / "manifest.json",
        {
            "slide_path": str(slide_path),
            "slide_dimensions": [slide_w, slide_h],
            "tiles_written": data_base["tiles_written"],
            "tile_size": deepzoom.TILE_SIZE,
            "overlap": deepzoom.OVERLAP,
            "format": deepzoom.FORMAT,
        },
    )
    mpp = float(scan.get("slide_mpp", float("nan")))
    data = {
        "name": slide_path.name,
        "stem": stem,
        "slide": {
            "width": slide_w,
            "height": slide_h,
            "mpp": mpp if np.isfinite(mpp) else None,
            "available": reader is not None,
        },
        "base": data_base,
        "overlays": overlays,
        "tissue": outlines,
        "regions": regions,
        "gallery": gallery,
        "patch_size_l0": float(scan.get("patch_size_l0", 0.0)),
        "static": static_href,
        "notes": notes,
    }
    page = folder / "review.html"
    _write_page(page, data, summary, index_href, static_href)
    return SlidePage(
        stem=stem,
        slide=str(slide_path),
        page=page,
        thumbnail=thumb,
        tiles_written=data_base["tiles_written"],
        gallery=len(gallery),
        regions=len(regions),
        warnings=tuple(notes),
    )


def _gradcam_legend(scale: ColourScale, method: str) -> ColourScale:
    """The Grad-CAM scale with its legend saying how the slide map was made (``scan.h5``
    attribute ``gradcam_map``; files written before it existed say nothing)."""
    how = {
        "dense": "dense map, no patch grid",
        "patches": "per-patch maps: the patch grid shows",
    }.get(method)
    return replace(scale, label=f"{scale.label}; {how}") if how else scale


def _overlay(key: str, label: str, raster: layers.OverlayRaster, scale: ColourScale, ticks) -> dict:
    return {
        "id": key,
        "label": label,
        "url": f"{ASSETS}/{key}.png",
        "l0_width": raster.l0_extent_wh[0],
        "l0_height": raster.l0_extent_wh[1],
        "legend": {"url": f"{ASSETS}/legend_{key}.png", "label": scale.label, "ticks": ticks},
    }


def _write_gallery(
    assets: Path, scan: dict, reader, cam_scale: ColourScale | None, top_k: int
) -> list[dict]:
    for old in assets.glob("patch_*.png"):
        old.unlink()
    coords = np.asarray(scan.get("coords", np.zeros((0, 2))), np.float64).reshape(-1, 2)
    prob = np.asarray(scan.get("prob", np.zeros(0)), np.float64)
    size = float(scan.get("patch_size_l0", 0.0))
    cams = scan.get("gradcam")
    has_cam = cam_scale is not None and cams is not None and len(cams) == len(prob)
    gallery = []
    for rank, i in enumerate(layers.top_patches(coords, prob, size, top_k), start=1):
        if reader is not None:
            crop = _crop(reader, coords[i], size, PATCH_PX)
        else:
            crop = np.full((PATCH_PX, PATCH_PX, 3), 235, np.uint8)
        item = {
            "rank": rank,
            "x": float(coords[i, 0]),
            "y": float(coords[i, 1]),
            "size": size,
            "prob": float(prob[i]),
            "crop": f"{ASSETS}/patch_{rank:02d}.png",
            "cam": None,
        }
        _save(assets / f"patch_{rank:02d}.png", crop, optimize=True)
        if has_cam:
            _save(assets / f"patch_{rank:02d}_cam.png", _cam_on(crop, cams[i], cam_scale))
            item["cam"] = f"{ASSETS}/patch_{rank:02d}_cam.png"
        gallery.append(item)
    return gallery


def _fmt(value, spec: str = ".3f") -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "–"
    return format(v, spec) if np.isfinite(v) else "–"


def _write_page(page: Path, data: dict, summary: dict, index_href: str, static_href: str):
    topk_key = next((k for k in summary if k.startswith("score_top")), None)
    facts = [
        ("score (max)", _fmt(summary.get("score_max"))),
        (
            topk_key.replace("score_", "").replace("_mean", " mean") if topk_key else "top-k",
            _fmt(summary.get(topk_key)) if topk_key else "–",
        ),
        ("patches scored", str(summary.get("patches_scored", "–"))),
        ("area ≥ threshold", f"{_fmt(summary.get('area_above_threshold_mm2'), '.3f')} mm²"),
        ("slide µm/px", _fmt(data["slide"]["mpp"], ".4g")),
    ]
    facts_html = "".join(
        f"<span class=fact><b>{html.escape(k)}</b> {html.escape(v)}</span>" for k, v in facts
    )
    files = [*SLIDE_FILES[1:], SLIDE_FILES[0]]  # scan.h5, the largest, last
    links = " ".join(
        f'<a href="{quote(f)}">{html.escape(f)}</a>' for f in files if (page.parent / f).exists()
    )
    text = template("slide.html").substitute(
        title=html.escape(f"{data['name']} – wsi-saliency review"),
        name=html.escape(data["name"]),
        static=html.escape(static_href),
        index=html.escape(index_href),
        facts=facts_html,
        files=links,
        data=script_json(data),
    )
    with atomic_path(page) as tmp:
        tmp.write_text(text, encoding="utf-8")
